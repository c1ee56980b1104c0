//! New images from a code prior: sample code grids, decode them with the prior's VQ-VAE.

use std::path::{Path, PathBuf};

use tch::{nn, Device, Tensor};
use vq_model::checkpoint::{self, Checkpoint, MODEL_FILE};
use vq_model::{PixelCnnPrior, PriorConfig};

/// The prior `sample` uses when none is given.
pub fn bundled_prior_dir() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/cifar10-prior");
    path.canonicalize().unwrap_or(path)
}

#[derive(Debug, thiserror::Error)]
pub enum PriorError {
    #[error(transparent)]
    Checkpoint(#[from] vq_model::CheckpointError),
    #[error("{prior}: this prior was trained on the codes of model {prior_model}, but the VQ-VAE {vqvae} is model {vqvae_model}; pass the matching --checkpoint or --prior")]
    OtherVqVae {
        prior: PathBuf,
        prior_model: String,
        vqvae: PathBuf,
        vqvae_model: String,
    },
}

/// A loaded prior.
#[derive(Debug)]
pub struct Prior {
    pub dir: PathBuf,
    pub model: PixelCnnPrior,
    pub vs: nn::VarStore,
}

impl Prior {
    /// Opens a prior checkpoint (or run folder) and checks that it belongs to `vqvae`.
    pub fn open(path: &Path, vqvae: &Checkpoint, device: Device) -> Result<Self, PriorError> {
        let dir = checkpoint::resolve(path)?;
        let config: PriorConfig =
            checkpoint::read_config(&dir, "a prior config", PriorConfig::validate)?;
        let vqvae_model = checkpoint::hex(&vqvae.model_id);
        if config.vqvae_model_id != vqvae_model {
            return Err(PriorError::OtherVqVae {
                prior: dir,
                prior_model: config.vqvae_model_id,
                vqvae: vqvae.dir.clone(),
                vqvae_model,
            });
        }
        let mut vs = nn::VarStore::new(device);
        let model = PixelCnnPrior::new(vs.root(), &config);
        checkpoint::load_into(&mut vs, &dir.join(MODEL_FILE))?;
        Ok(Prior { dir, model, vs })
    }

    /// `n` new images as a `(n, 3, 32, 32)` model-range tensor, with their code grids.
    pub fn sample_images(
        &self,
        vqvae: &Checkpoint,
        labels: Option<&Tensor>,
        n: i64,
        temperature: f64,
        device: Device,
    ) -> (Tensor, Tensor) {
        let side = self.model.config.grid_side;
        let codes = self
            .model
            .sample(n, (side, side), labels, temperature, device);
        let _guard = tch::no_grad_guard();
        let images = vqvae.model.decode(&codes);
        (images, codes)
    }
}
