//! Opening a trained model: a checkpoint folder, a run folder, or the bundled default.

use std::path::{Path, PathBuf};

use crate::{Evaluation, VqVae, VqVaeConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{nn, Device};

pub const MODEL_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const STATE_FILE: &str = "state.json";
/// Evaluation figures stored beside a bundled checkpoint.
pub const EVAL_FILE: &str = "eval.json";

/// The model this repository ships (`vq-cli`'s default), found through the source tree this
/// crate was built from.
pub fn bundled_dir() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/cifar10-default");
    path.canonicalize().unwrap_or(path)
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{0}: no such file or folder")]
    Missing(PathBuf),
    #[error("{0}: neither a checkpoint folder ({MODEL_FILE} + {CONFIG_FILE}) nor a run folder (checkpoints/best or checkpoints/last)")]
    NotACheckpoint(PathBuf),
    #[error("{0}: {1}")]
    Unreadable(PathBuf, String),
    #[error("{path}: the weights do not fit the model described by {CONFIG_FILE} ({reason})")]
    Mismatch { path: PathBuf, reason: String },
    #[error(transparent)]
    Model(#[from] crate::ModelError),
}

/// What a checkpoint says about how it was trained, where it knows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainingInfo {
    /// Training steps behind these weights.
    pub step: Option<u64>,
    /// Test-split figures of these weights.
    pub eval: Option<Evaluation>,
}

/// A loaded model and where it came from.
#[derive(Debug)]
pub struct Checkpoint {
    /// The folder holding the weights.
    pub dir: PathBuf,
    pub config: VqVaeConfig,
    pub model: VqVae,
    pub vs: nn::VarStore,
    /// First 16 bytes of the SHA-256 of the weights file: what `.vqz` files record.
    pub model_id: [u8; 16],
    pub info: TrainingInfo,
}

/// The folder holding the weights for `path`: itself, or a run folder's best (else last)
/// checkpoint.
pub fn resolve(path: &Path) -> Result<PathBuf, CheckpointError> {
    if !path.exists() {
        return Err(CheckpointError::Missing(path.to_path_buf()));
    }
    if path.join(MODEL_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    for link in ["best", "last"] {
        let dir = path.join("checkpoints").join(link);
        if dir.join(MODEL_FILE).is_file() {
            return Ok(dir);
        }
    }
    Err(CheckpointError::NotACheckpoint(path.to_path_buf()))
}

pub fn model_id_of(weights: &Path) -> Result<[u8; 16], CheckpointError> {
    let bytes = std::fs::read(weights)
        .map_err(|e| CheckpointError::Unreadable(weights.to_path_buf(), e.to_string()))?;
    let digest = Sha256::digest(&bytes);
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    Ok(id)
}

pub fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the `config.json` of the checkpoint folder `dir` as `what` and validates it.
pub fn read_config<T: DeserializeOwned>(
    dir: &Path,
    what: &str,
    validate: impl FnOnce(&T) -> Result<(), String>,
) -> Result<T, CheckpointError> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| CheckpointError::Unreadable(path.clone(), e.to_string()))?;
    let config: T = serde_json::from_str(&text)
        .map_err(|e| CheckpointError::Unreadable(path.clone(), format!("not {what}: {e}")))?;
    validate(&config).map_err(|e| CheckpointError::Unreadable(path.clone(), e))?;
    Ok(config)
}

/// Loads `weights` into `vs` (built from the checkpoint's config), telling weights that do not
/// fit that config apart from unreadable or non-finite ones.
pub fn load_into(vs: &mut nn::VarStore, weights: &Path) -> Result<(), CheckpointError> {
    crate::load_weights(vs, weights).map_err(|e| match e {
        crate::ModelError::Mismatch(path, reason) => CheckpointError::Mismatch { path, reason },
        other => CheckpointError::Model(other),
    })
}

impl Checkpoint {
    pub fn open(path: &Path, device: Device) -> Result<Self, CheckpointError> {
        let dir = resolve(path)?;
        let config: VqVaeConfig = read_config(&dir, "a model config", VqVaeConfig::validate)?;
        let weights = dir.join(MODEL_FILE);
        let mut vs = nn::VarStore::new(device);
        let model = VqVae::new(vs.root(), &config);
        load_into(&mut vs, &weights)?;
        let model_id = model_id_of(&weights)?;
        Ok(Checkpoint {
            info: read_info(&dir),
            dir,
            config,
            model,
            vs,
            model_id,
        })
    }

    /// Weights and codebook entries (the EMA statistics and usage counters excluded).
    pub fn parameter_count(&self) -> i64 {
        self.vs
            .variables()
            .iter()
            .filter(|(name, _)| !name.contains("ema_") && !name.contains("last_used"))
            .map(|(_, t)| t.numel() as i64)
            .sum()
    }
}

/// Step and figures from `state.json` / `eval.json` beside the weights, or the run's
/// `summary.json` two folders up; absent files are no error.
fn read_info(dir: &Path) -> TrainingInfo {
    let read = |p: PathBuf| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
    };
    let step = read(dir.join(STATE_FILE)).and_then(|v| v.get("step")?.as_u64());
    let eval = read(dir.join(EVAL_FILE))
        .and_then(|v| serde_json::from_value::<Evaluation>(v).ok())
        .or_else(|| {
            let run = dir.canonicalize().ok()?.parent()?.parent()?.to_path_buf();
            let summary = read(run.join("summary.json"))?;
            let eval: Evaluation =
                serde_json::from_value(summary.get("final_eval")?.clone()).ok()?;
            (Some(eval.step as u64) == step).then_some(eval)
        });
    TrainingInfo { step, eval }
}
