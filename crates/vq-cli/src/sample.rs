//! New images from a code prior: sample code grids, decode them with the prior's VQ-VAE.

use tch::{Device, Tensor};
use vq_model::checkpoint::Checkpoint;
use vq_prior::PriorCheckpoint;

/// `n` new images as a `(n, 3, H, W)` model-range tensor, with their `(n, h, w)` code grids.
pub fn sample_images(
    prior: &PriorCheckpoint,
    vqvae: &Checkpoint,
    labels: Option<&Tensor>,
    n: i64,
    temperature: f64,
    device: Device,
) -> (Tensor, Tensor) {
    let codes = prior.model.sample(n, labels, temperature, device);
    let _guard = tch::no_grad_guard();
    // One code level: the depth axis the decoder takes.
    let images = vqvae.model.decode(&codes.unsqueeze(1));
    (images, codes)
}
