//! The on-disk format of vqvae-rs, in one place: run folders, checkpoint folders and their
//! `last` / `best` links, versioned config files, JSON records and (with the `tch` feature) the
//! weights files. Every other crate reads and writes these files through this one.
//!
//! ```text
//! RUN/config.json              the run's configuration (versioned: "format": 2)
//! RUN/data.json                the dataset the run trained on (older runs: dataset.json)
//! RUN/metrics.jsonl            one JSON object per log line, {"eval": ...} per evaluation
//! RUN/summary.json             written when the run ends
//! RUN/curves.png               the metrics against steps
//! RUN/recon-step-NNNNNN.png    pictures of an evaluation (a VQ-VAE run's reconstructions)
//! RUN/codes/                   caches a task keeps (a prior run's encoded splits)
//! RUN/checkpoints/step-NNNNNN/ model.safetensors   the model users get (weights, buffers)
//!                              config.json         the model's configuration (versioned)
//!                              state.json          where training stands (step, batches, best)
//!                              optimizer.safetensors, training.safetensors (when the model is
//!                              an average of the trained weights)
//! RUN/checkpoints/last -> step-NNNNNN   (symlinks, replaced atomically)
//! RUN/checkpoints/best -> step-NNNNNN
//! ```
//!
//! A checkpoint folder (and a bundled model such as `models/cifar10-default/`) is
//! `model.safetensors` + `config.json`, optionally with `state.json` and `eval.json`. The id of a
//! model is the first 16 bytes of the SHA-256 of its weights file: `.vqz` code files and priors
//! record it.
//!
//! Crash safety: every file is written under a temporary name and renamed into place; a checkpoint
//! folder is complete (and its files synced) before it is renamed to `step-N`, and the links are
//! swapped by renaming a new link over the old one. A crash at any moment leaves the previous
//! checkpoint whole and linked.

mod checkpoint;
mod config;
mod error;
mod json;
mod run;
pub mod tensorboard;
#[cfg(feature = "tch")]
pub mod weights;

pub use checkpoint::{read_info, resolve, Bundled, CheckpointInfo, Source};
pub use config::{merge_over, parse_config, read_config, write_config, ConfigFile};
pub use error::StoreError;
pub use json::{read_json, write_json};
pub use run::{MetricsLog, RunDir};

/// File and folder names of run and checkpoint folders.
pub mod names {
    /// The weights users get (a checkpoint's model, the average when weights are averaged).
    pub const MODEL_FILE: &str = "model.safetensors";
    /// The weights being trained, when `model.safetensors` holds their average.
    pub const TRAINING_FILE: &str = "training.safetensors";
    pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
    pub const STATE_FILE: &str = "state.json";
    pub const CONFIG_FILE: &str = "config.json";
    /// Evaluation figures stored beside a bundled checkpoint.
    pub const EVAL_FILE: &str = "eval.json";
    pub const METRICS_FILE: &str = "metrics.jsonl";
    pub const SUMMARY_FILE: &str = "summary.json";
    pub const CURVES_FILE: &str = "curves.png";
    /// The run's record of its dataset ([`vq_data::DatasetInfo`]).
    pub const DATA_FILE: &str = "data.json";
    /// What runs before format 2 called [`DATA_FILE`] (the same name as an imported image
    /// set's own `dataset.json`, a different file).
    pub const LEGACY_DATA_FILE: &str = "dataset.json";
    pub const CHECKPOINTS_DIR: &str = "checkpoints";
    pub const CODES_DIR: &str = "codes";
    pub const LAST: &str = "last";
    pub const BEST: &str = "best";
}

/// First 16 bytes of the SHA-256 of a weights file: the id `.vqz` files and priors record.
pub fn model_id(weights_file: &[u8]) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(weights_file);
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

/// A 16-byte model id from its 32 hex digits ([`hex`]'s inverse); `None` for anything else.
pub fn parse_hex_id(text: &str) -> Option<[u8; 16]> {
    if text.len() != 32 || !text.is_ascii() {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(id)
}

/// Lower-case hex of `bytes` (model ids in messages and files).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
