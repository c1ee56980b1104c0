//! Opening a trained VQ-VAE: a checkpoint folder, a run folder, or the bundled model. The files
//! themselves are vq-store's.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{nn, Device};
use vq_store::names::{CONFIG_FILE, MODEL_FILE};
use vq_store::{Bundled, Source, StoreError};

use crate::{Evaluation, VqVae, VqVaeConfig};

/// What a checkpoint says about how it was trained, where it knows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainingInfo {
    /// Training steps behind these weights.
    pub step: Option<u64>,
    /// Test-split figures of these weights.
    pub eval: Option<Evaluation>,
}

impl From<vq_store::CheckpointInfo> for TrainingInfo {
    fn from(info: vq_store::CheckpointInfo) -> Self {
        TrainingInfo {
            step: info.step,
            eval: info.eval.and_then(|v| serde_json::from_value(v).ok()),
        }
    }
}

/// Codes (grid positions, all levels counted once) a CPU decoding pass of
/// [`Checkpoint::decode_in_streams`] takes: 32 grids of 8 × 8, whose activations stay in the
/// caches where one pass over hundreds of pictures streams them through memory
/// (docs/experiments.md, 2026-12-08).
pub const DECODE_PASS_CODES: i64 = 2048;

/// `model.decode` of `(N, L, h, w)` codes in passes of about `pass_codes` positions (at least
/// one grid, all passes of one shape), one after another.
fn decode_in_passes(model: &VqVae, codes: &tch::Tensor, pass_codes: i64) -> tch::Tensor {
    let size = codes.size();
    let (n, area) = match size.as_slice() {
        [n, _, h, w] => (*n, (h * w).max(1)),
        _ => return model.decode(codes),
    };
    let per_pass = (pass_codes / area).max(1);
    if n <= per_pass {
        return model.decode(codes);
    }
    // The last pass is filled up with copies of the last grid: every pass then has one shape,
    // so the first-call work LibTorch does for each new shape (docs/experiments.md,
    // 2026-12-08) is done once.
    let filled = (n + per_pass - 1) / per_pass * per_pass;
    let codes = if filled > n {
        let last = codes.narrow(0, n - 1, 1);
        let mut rest = size.clone();
        rest[0] = filled - n;
        tch::Tensor::cat(
            &[codes.shallow_clone(), last.expand(rest.as_slice(), false)],
            0,
        )
    } else {
        codes.shallow_clone()
    };
    let passes: Vec<tch::Tensor> = codes
        .split(per_pass, 0)
        .iter()
        .map(|pass| model.decode(pass))
        .collect();
    tch::Tensor::cat(&passes, 0).narrow(0, 0, n)
}

/// A loaded model and where it came from.
#[derive(Debug)]
pub struct Checkpoint {
    /// The folder holding the weights (for the bundled model, its folder in the repository).
    pub dir: PathBuf,
    /// Read from the copy compiled into the binary.
    pub bundled: bool,
    pub config: VqVaeConfig,
    pub model: VqVae,
    pub vs: nn::VarStore,
    /// First 16 bytes of the SHA-256 of the weights file: what `.vqz` files record.
    pub model_id: [u8; 16],
    pub info: TrainingInfo,
}

impl Checkpoint {
    /// `(N, L, h, w)` codes → `(N, 3, H, W)` pixels as [`VqVae::decode`], in `streams` threads
    /// on the CPU: each decodes a contiguous share with its own copy of the model and one
    /// LibTorch thread (LibTorch's thread count is set to 1 meanwhile and restored after),
    /// which keeps each core busier than LibTorch's own threads on one batch do
    /// (docs/experiments.md). On the CPU each stream, or the calling thread for one stream,
    /// decodes its share in passes of about [`DECODE_PASS_CODES`] code positions (32 grids of
    /// 8 × 8), whose activations stay in the caches. The pixels depend on `streams` as a
    /// decode depends on its batch (rounding). Another device: one pass on the calling thread.
    pub fn decode_in_streams(
        &self,
        codes: &tch::Tensor,
        streams: usize,
    ) -> Result<tch::Tensor, tch::TchError> {
        self.decode_in_streams_by(codes, streams, DECODE_PASS_CODES)
    }

    /// [`Checkpoint::decode_in_streams`] with CPU passes of about `pass_codes` code positions
    /// (`i64::MAX`: each stream's share in one pass), for the decoding bench to compare.
    pub fn decode_in_streams_by(
        &self,
        codes: &tch::Tensor,
        streams: usize,
        pass_codes: i64,
    ) -> Result<tch::Tensor, tch::TchError> {
        let device = self.vs.device();
        let n = codes.size().first().copied().unwrap_or(0);
        let streams = (streams.max(1) as i64).min(n.max(1));
        if device != Device::Cpu {
            return Ok(self.model.decode(codes));
        }
        if streams == 1 {
            return Ok(decode_in_passes(&self.model, codes, pass_codes));
        }
        let (config, source) = (&self.model.config, &self.vs);
        crate::streams::in_streams(
            n,
            streams as usize,
            |start, len| codes.narrow(0, start, len),
            |mine| {
                let mut vs = nn::VarStore::new(device);
                let model = VqVae::new(vs.root(), config);
                vs.copy(source)?;
                Ok(decode_in_passes(&model, &mine, pass_codes))
            },
        )
    }

    /// A checkpoint folder or a run folder (its best checkpoint, else its last).
    pub fn open(path: &Path, device: Device) -> Result<Self, StoreError> {
        Self::open_source(Source::Path(path), device)
    }

    /// The bundled model.
    pub fn bundled(device: Device) -> Result<Self, StoreError> {
        Self::open_source(Source::Bundled(&crate::BUNDLED), device)
    }

    /// The bundled model with its tuned decoder (`models/cifar10-sharp`): the same codes as
    /// [`Checkpoint::bundled`], decoded by the fine-tuned decoder.
    pub fn bundled_tuned_decoder(device: Device) -> Result<Self, StoreError> {
        Self::open_source(Source::Bundled(&crate::BUNDLED_TUNED_DECODER), device)
    }

    pub fn open_source(source: Source<'_>, device: Device) -> Result<Self, StoreError> {
        match source {
            Source::Path(path) => {
                let dir = vq_store::resolve(path)?;
                let config: VqVaeConfig = vq_store::read_config(&dir.join(CONFIG_FILE))?;
                let weights_path = dir.join(MODEL_FILE);
                let weights = vq_store::weights::read_file(&weights_path)?;
                let (model, vs) = build(&config, &weights, &weights_path, device)?;
                Ok(Checkpoint {
                    info: vq_store::read_info(&dir).into(),
                    dir,
                    bundled: false,
                    config,
                    model,
                    vs,
                    model_id: vq_store::model_id(&weights),
                })
            }
            Source::Bundled(b) => Self::from_bundled(b, device),
        }
    }

    fn from_bundled(b: &'static Bundled, device: Device) -> Result<Self, StoreError> {
        let config: VqVaeConfig =
            vq_store::parse_config(b.config).map_err(|reason| StoreError::Malformed {
                path: b.config_path(),
                what: "a VQ-VAE model config",
                reason,
            })?;
        let (model, vs) = build(&config, b.weights, &b.weights_path(), device)?;
        Ok(Checkpoint {
            dir: PathBuf::from(b.name),
            bundled: true,
            config,
            model,
            vs,
            model_id: vq_store::model_id(b.weights),
            info: b.info().into(),
        })
    }

    /// The id of the model whose codes this one reads and writes: its own, or for a fine-tuned
    /// decoder the model it was tuned from (`config.codes_of`). `.vqz` files and priors match
    /// against this.
    pub fn codes_id(&self) -> [u8; 16] {
        self.config
            .codes_of
            .as_deref()
            .and_then(vq_store::parse_hex_id)
            .unwrap_or(self.model_id)
    }

    /// Where it came from, for messages.
    pub fn origin(&self) -> String {
        if self.bundled && self.config.codes_of.is_some() {
            // A decoder for another model's codes (models/cifar10-sharp), not a model of its own.
            format!("the bundled sharp decoder ({})", self.dir.display())
        } else if self.bundled {
            format!("the bundled model ({})", self.dir.display())
        } else {
            self.dir.display().to_string()
        }
    }

    /// Weights and codebook entries (training statistics excluded).
    pub fn parameter_count(&self) -> i64 {
        self.model.parameter_count()
    }
}

/// The model for inference. `"compute": "auto"` means f32 here: bf16 is worth its rounding when
/// training, but a checkpoint's outputs (reconstructions, `.vqz` codes, decoded images) must not
/// depend on whether this CPU has bf16 units, or a file encoded on one machine would decode
/// differently on another. An explicit `"bf16"` is kept.
fn build(
    config: &VqVaeConfig,
    weights: &[u8],
    path: &Path,
    device: Device,
) -> Result<(VqVae, nn::VarStore), StoreError> {
    let mut vs = nn::VarStore::new(device);
    let mut config = config.clone();
    if config.compute == crate::ComputeKind::Auto {
        config.compute = crate::ComputeKind::F32;
    }
    let model = VqVae::new(vs.root(), &config);
    vq_store::weights::load_bytes(&mut vs, weights, path)?;
    Ok((model, vs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tch::Tensor;

    #[test]
    fn decoding_in_streams_gives_one_pass_pixels_and_restores_the_thread_count() {
        let plain = Checkpoint::bundled(Device::Cpu).unwrap();
        let _rng = crate::seeded(5);
        let codes = Tensor::randint(512, [7, 1, 8, 8], (tch::Kind::Int64, Device::Cpu));
        let threads = tch::get_num_threads();
        let one = plain.decode_in_streams(&codes, 1).unwrap();
        let three = plain.decode_in_streams(&codes, 3).unwrap();
        assert_eq!(tch::get_num_threads(), threads);
        assert_eq!(three.size(), vec![7, 3, 32, 32]);
        // The same images, in their order; only a product's rounding may differ with its batch.
        let diff = (&one - &three).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "{diff}");
    }

    #[test]
    fn decoding_in_passes_gives_one_pass_pixels_in_order() {
        let plain = Checkpoint::bundled(Device::Cpu).unwrap();
        let _rng = crate::seeded(6);
        // 75 grids of 8 × 8 in passes of 2 grids (128 codes): 38 passes, the last one grid
        // filled up with a copy.
        let codes = Tensor::randint(512, [75, 1, 8, 8], (tch::Kind::Int64, Device::Cpu));
        let whole = plain.decode_in_streams_by(&codes, 1, i64::MAX).unwrap();
        for streams in [1, 2] {
            let passes = plain.decode_in_streams_by(&codes, streams, 128).unwrap();
            assert_eq!(passes.size(), vec![75, 3, 32, 32]);
            let diff = (&whole - &passes).abs().max().double_value(&[]);
            assert!(diff < 1e-4, "{streams} streams: {diff}");
        }
        // A pass smaller than one grid still decodes a grid a pass.
        let tiny = plain
            .decode_in_streams_by(&codes.narrow(0, 0, 3), 1, 1)
            .unwrap();
        let diff = (whole.narrow(0, 0, 3) - tiny).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "{diff}");
    }

    /// The bundled tuned decoder is the bundled model's twin: it declares the bundled model's
    /// codes, and its encoder and codebook are the bundled model's, bit for bit, so it reads and
    /// writes the same codes; only the decoder differs.
    #[test]
    fn the_bundled_tuned_decoder_keeps_the_bundled_codes() {
        let plain = Checkpoint::bundled(Device::Cpu).unwrap();
        let tuned = Checkpoint::bundled_tuned_decoder(Device::Cpu).unwrap();
        assert_eq!(tuned.codes_id(), plain.model_id);
        assert_ne!(tuned.model_id, plain.model_id);
        let (plain_vars, tuned_vars) = (plain.vs.variables(), tuned.vs.variables());
        let names_outside_the_decoder = |vars: &HashMap<String, Tensor>| {
            vars.keys()
                .filter(|name| !name.starts_with("decoder."))
                .cloned()
                .collect::<std::collections::BTreeSet<_>>()
        };
        let kept = names_outside_the_decoder(&plain_vars);
        assert!(kept.contains("quantizer.codebook"), "{kept:?}");
        assert_eq!(kept, names_outside_the_decoder(&tuned_vars));
        for name in &kept {
            assert!(
                plain_vars[name].equal(&tuned_vars[name]),
                "{name} differs between the bundled model and its tuned twin"
            );
        }
        // The decoder is another one: another shape, or other values.
        let decoder_changed = plain_vars
            .iter()
            .filter(|(name, _)| name.starts_with("decoder."))
            .any(|(name, value)| tuned_vars.get(name).is_none_or(|t| !value.equal(t)))
            || tuned_vars.len() != plain_vars.len();
        assert!(decoder_changed, "the tuned decoder equals the plain one");
    }
}
