use serde::{Deserialize, Serialize};
use vq_data::PixelRange;

/// How the codebook learns.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum CodebookUpdate {
    /// Exponential moving averages of the assigned encoder outputs (no gradient to the codebook).
    Ema {
        decay: f64,
        /// Laplace smoothing of the cluster counts.
        epsilon: f64,
    },
    /// A codebook loss `‖sg[z] − e‖²` trained by the optimizer, as in the original paper.
    Loss,
}

impl Default for CodebookUpdate {
    fn default() -> Self {
        CodebookUpdate::Ema {
            decay: 0.99,
            epsilon: 1e-5,
        }
    }
}

/// How gradients pass from the decoder through the (non-differentiable) code lookup to the
/// encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GradientEstimator {
    /// `z + sg[e − z]`: the decoder's gradient is copied to the encoder unchanged.
    #[default]
    StraightThrough,
    /// The rotation trick (Fifty et al., 2024): `e` is produced as a fixed rotation and scaling
    /// of `z`, so the gradient reaching the encoder is rotated the same way. It carries how far
    /// and in which direction `z` sits from its code, which the straight-through copy loses.
    /// Measured worse than straight-through on our CIFAR-10 default (21.49 vs 22.32 dB test
    /// PSNR after 1,000 of 2,000 steps), so not the default.
    Rotation,
}

impl std::str::FromStr for GradientEstimator {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "straight_through" | "straight-through" | "ste" => {
                Ok(GradientEstimator::StraightThrough)
            }
            "rotation" => Ok(GradientEstimator::Rotation),
            other => Err(format!(
                "unknown gradient estimator {other:?} (expected straight_through or rotation)"
            )),
        }
    }
}

/// What the reconstruction term of the loss measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReconstructionLoss {
    /// Mean squared error over the whole batch.
    #[default]
    Mse,
    /// Each image's squared error weighted by `batch MSE / that image's MSE` (weights held
    /// constant): the gradient of the batch's mean PSNR, i.e. of the mean of `ln MSE_i`,
    /// rescaled to the size of a plain MSE gradient so that the commitment loss keeps its
    /// weight. A plain MSE spends the model on the hardest (most textured) images, whose errors
    /// dominate the sum; mean PSNR counts a halved error the same on every image. Measured no
    /// better on CIFAR-10: 24.43 vs 24.45 dB after 4,000 steps of the default run.
    PerImageLog,
}

impl std::str::FromStr for ReconstructionLoss {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mse" => Ok(ReconstructionLoss::Mse),
            "per_image_log" | "per-image-log" => Ok(ReconstructionLoss::PerImageLog),
            other => Err(format!(
                "unknown reconstruction loss {other:?} (expected mse or per_image_log)"
            )),
        }
    }
}

/// The number type of the convolutions. Weights, losses and codebook distances stay f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeKind {
    /// bf16 where the CPU has AMX bf16 tiles (see [`native_bf16`]), f32 elsewhere.
    #[default]
    Auto,
    F32,
    /// bfloat16 products: several times the f32 matrix throughput on CPUs with AMX and on
    /// recent GPUs (slower than f32 with AVX-512 BF16 alone).
    Bf16,
}

impl std::str::FromStr for ComputeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(ComputeKind::Auto),
            "f32" => Ok(ComputeKind::F32),
            "bf16" => Ok(ComputeKind::Bf16),
            other => Err(format!(
                "unknown compute kind {other:?} (expected f32 or bf16)"
            )),
        }
    }
}

impl ComputeKind {
    pub fn kind(self) -> tch::Kind {
        match self {
            ComputeKind::Auto if native_bf16() => tch::Kind::BFloat16,
            ComputeKind::Auto => tch::Kind::Float,
            ComputeKind::F32 => tch::Kind::Float,
            ComputeKind::Bf16 => tch::Kind::BFloat16,
        }
    }
}

/// Whether bf16 convolutions beat f32 ones on this CPU: only with AMX tiles. AVX-512 BF16
/// alone is not enough: on a 2-core AVX-512 BF16 Xeon without AMX, `cargo xtask bench train`
/// measured 503 images/s in bf16 against 797 in f32, while an earlier machine whose bf16 matrix
/// products ran about 4× its f32 ones (as AMX gives) trained 1.36× faster in bf16. Read from
/// the kernel's CPU flags (Linux); elsewhere f32.
pub fn native_bf16() -> bool {
    static AMX: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AMX.get_or_init(|| {
        std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
            info.lines()
                .find(|l| l.starts_with("flags"))
                .is_some_and(|flags| flags.split_whitespace().any(|f| f == "amx_bf16"))
        })
    })
}

/// The VQ-VAE's shape and quantizer settings, saved as JSON next to every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// A misspelt setting is an error, not silently the default.
#[serde(default, deny_unknown_fields)]
pub struct VqVaeConfig {
    pub in_channels: i64,
    pub hidden_channels: i64,
    pub residual_hidden_channels: i64,
    pub residual_layers: usize,
    /// 4 (two stride-2 convolutions: 32×32 → 8×8) or 2 (one: 32×32 → 16×16).
    pub downsample: i64,
    /// K: number of codes.
    pub codebook_size: i64,
    /// D: dimension of each code.
    pub code_dim: i64,
    /// β: weight of the commitment loss.
    pub commitment_cost: f64,
    pub codebook_update: CodebookUpdate,
    /// How the encoder gets gradients through the code lookup.
    pub gradient: GradientEstimator,
    /// What the reconstruction term of the training loss measures.
    pub reconstruction_loss: ReconstructionLoss,
    /// Codes unused for this many training steps are re-seeded from recent encoder outputs
    /// (0 disables the restart).
    pub dead_code_steps: usize,
    /// The range the images are scaled to before the encoder.
    pub input_range: PixelRange,
    /// Number type of the convolutions.
    pub compute: ComputeKind,
}

impl Default for VqVaeConfig {
    fn default() -> Self {
        VqVaeConfig {
            in_channels: 3,
            hidden_channels: 128,
            residual_hidden_channels: 32,
            residual_layers: 2,
            downsample: 4,
            codebook_size: 512,
            code_dim: 64,
            commitment_cost: 0.25,
            codebook_update: CodebookUpdate::default(),
            gradient: GradientEstimator::default(),
            reconstruction_loss: ReconstructionLoss::default(),
            dead_code_steps: 50,
            input_range: PixelRange::MinusHalfToHalf,
            compute: ComputeKind::Auto,
        }
    }
}

impl VqVaeConfig {
    /// Checks the settings that would otherwise fail deep inside LibTorch.
    pub fn validate(&self) -> Result<(), String> {
        if ![2, 4].contains(&self.downsample) {
            return Err(format!(
                "downsample must be 2 or 4, not {}",
                self.downsample
            ));
        }
        if self.codebook_size < 2 || self.code_dim < 1 {
            return Err(format!(
                "codebook_size must be at least 2 and code_dim at least 1 (got {} and {})",
                self.codebook_size, self.code_dim
            ));
        }
        if self.hidden_channels < 2 || self.residual_hidden_channels < 1 || self.in_channels < 1 {
            return Err("channel counts must be positive (hidden_channels at least 2)".into());
        }
        if let CodebookUpdate::Ema { decay, epsilon } = self.codebook_update {
            if !(0.0..1.0).contains(&decay) || epsilon <= 0.0 {
                return Err(format!(
                    "EMA decay must be in [0, 1) and epsilon positive (got {decay}, {epsilon})"
                ));
            }
        }
        if self.commitment_cost.is_nan() || self.commitment_cost < 0.0 {
            return Err(format!(
                "commitment_cost must be non-negative, not {}",
                self.commitment_cost
            ));
        }
        Ok(())
    }

    /// Side of the latent grid for square images of side `image_side`.
    pub fn grid_side(&self, image_side: i64) -> i64 {
        image_side / self.downsample
    }
}
