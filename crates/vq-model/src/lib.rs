//! The LibTorch-backed VQ-VAE: encoder, vector quantizer, decoder, with the device choice and
//! the hand-over of data batches to LibTorch.

mod bundled;
pub mod checkpoint;
pub mod collective;
mod config;
pub mod cuda;
pub mod discriminator;
mod eval;
pub mod frequency;
mod metrics;
mod model;
mod nets;
mod picture;
pub mod quantizer;
pub mod search;
pub mod streams;

pub use bundled::{BUNDLED, BUNDLED_TUNED_DECODER};
pub use checkpoint::Checkpoint;
pub use config::{native_bf16, ComputeKind, ReconstructionLoss, VqVaeConfig};
pub use discriminator::{DiscriminatorConfig, PatchDiscriminator};
pub use eval::{evaluate, evaluate_with_progress, to_bytes, to_unit, EvalScope, Evaluation};
pub use frequency::focal_frequency_loss;
pub use metrics::{quality, ssim_per_image, QualitySums};
pub use model::{reconstruction_objective, VqVae, VqVaeOutput};
pub use nets::{
    channels_last, Decoder, DecoderConfig, DecoderStage, Encoder, EncoderConfig, ResidualStack,
    ResidualStackConfig, StagedDecoderConfig,
};
pub use picture::{save_grid, save_png, upscale, VIEW_SCALE};
pub use quantizer::{
    CodeSpace, CodebookConfig, CodebookUpdate, CosineConfig, FsqConfig, GradientEstimator,
    LevelUsage, Quantized, Quantizer, QuantizerArgs, QuantizerChoice, QuantizerConfig,
    QuantizerKind, ResidualConfig, VectorQuantizer, VqConfig,
};
pub use search::{CodeRate, CodeSearch, RateDistortion};
pub use vq_store::StoreError;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Which device to compute on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
#[value(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when a GPU is usable, the CPU otherwise.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("--device cuda was asked for, but LibTorch sees no CUDA GPU (run `cargo xtask setup --cuda` on a machine with one)")]
    NoCuda,
    #[error("LibTorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("{0}: {1}")]
    Io(PathBuf, String),
    #[error(transparent)]
    Data(#[from] vq_data::DataError),
    #[error(transparent)]
    Store(#[from] vq_store::StoreError),
    #[error("shape: {0}")]
    Shape(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("k-means codebook initialisation: {0}")]
    KMeans(#[from] vq_kmeans::KMeansError),
}

impl DeviceChoice {
    pub fn resolve(self) -> Result<Device, ModelError> {
        match self {
            DeviceChoice::Auto => Ok(Device::cuda_if_available()),
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
            DeviceChoice::Cuda => Err(ModelError::NoCuda),
        }
    }
}

/// The device the test suites build their models on: CUDA device 0 when `VQ_TEST_DEVICE=cuda`
/// (scripts/gpu-check.sh sets it on the GPU machine), the CPU otherwise. Tests that compare
/// against figures computed on the CPU, or that need bit-exact determinism, keep `Device::Cpu`.
#[doc(hidden)]
pub fn test_device() -> Device {
    match std::env::var("VQ_TEST_DEVICE").as_deref() {
        Ok("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    }
}

/// For tests: seeds LibTorch's generator and holds it until the guard drops. The generator is
/// global, so a test that draws from it (building a model draws its initial weights) takes
/// this first, and the tests of one binary that draw run one at a time; otherwise another
/// test's draws would change theirs.
#[doc(hidden)]
pub fn seeded(seed: i64) -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    guard
}

/// Makes the C allocator keep freed memory for reuse rather than hand it back to the kernel.
///
/// Why: every training step allocates and frees the same few-megabyte activation buffers. With
/// glibc's defaults they are mapped and unmapped each time, and the kernel zero-fills every page
/// again. With these settings steps fault far fewer pages and train measurably faster
/// (docs/experiments.md). Memory then stays at its peak until the process ends, which suits a
/// training run.
/// Call it first thing in `main`, before other threads start. No-op off Linux/glibc.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only sets two allocator thresholds; it is called before other threads
    // allocate, and any value is valid (glibc refuses out-of-range ones by returning 0).
    unsafe {
        // Blocks up to 32 MiB (glibc's largest threshold) come from the heap, not mmap...
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        // ...and the heap is not trimmed unless 1 GiB at its top is free.
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// A `(B, C, H, W)` float batch from `vq-data` as a LibTorch tensor on `device`.
pub fn images_to_tensor(
    images: &ndarray::Array4<f32>,
    device: Device,
) -> Result<Tensor, ModelError> {
    let standard = images.as_standard_layout();
    let data = standard.as_slice().expect("standard layout is contiguous");
    let dims: Vec<i64> = images.shape().iter().map(|&d| d as i64).collect();
    Ok(Tensor::f_from_slice(data)?
        .f_reshape(&dims)?
        .f_to_device(device)?
        .f_to_kind(Kind::Float)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vq_data::{gather, BatchIndices, PixelRange};

    #[test]
    fn batch_reaches_libtorch_with_its_values() {
        let images = ndarray::Array4::from_shape_fn((3, 3, 4, 5), |(n, c, h, w)| {
            (n * 60 + c * 20 + h * 5 + w) as u8
        });
        let batch = BatchIndices {
            indices: vec![2, 0],
            flips: vec![true, false],
        };
        let floats = gather(images.view(), &batch, PixelRange::MinusHalfToHalf);
        let t = images_to_tensor(&floats, Device::Cpu).unwrap();
        assert_eq!(t.size(), vec![2, 3, 4, 5]);
        assert_eq!(t.kind(), Kind::Float);
        // Image 2, channel 1, row 3, flipped: column 0 holds source column 4.
        let v = t.double_value(&[0, 1, 3, 0]) as f32;
        assert_eq!(
            v,
            PixelRange::MinusHalfToHalf.from_byte((2 * 60 + 20 + 15 + 4) as u8)
        );
        let sum = t.sum(Kind::Double).double_value(&[]);
        let expect: f64 = floats.iter().map(|&x| x as f64).sum();
        assert!((sum - expect).abs() < 1e-3, "{sum} vs {expect}");
    }

    #[test]
    fn device_choice_parses_and_cpu_always_resolves() {
        use clap::ValueEnum;
        assert_eq!(
            DeviceChoice::from_str("cpu", false).unwrap(),
            DeviceChoice::Cpu
        );
        assert!(DeviceChoice::from_str("gpu", false).is_err());
        assert_eq!(DeviceChoice::Cpu.resolve().unwrap(), Device::Cpu);
        let auto = DeviceChoice::Auto.resolve().unwrap();
        assert_eq!(auto.is_cuda(), tch::Cuda::is_available());
    }
}
