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

/// The VQ-VAE's shape and quantizer settings, saved as JSON next to every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
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
    /// Codes unused for this many training steps are re-seeded from recent encoder outputs
    /// (0 disables the restart).
    pub dead_code_steps: usize,
    /// The range the images are scaled to before the encoder.
    pub input_range: PixelRange,
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
            dead_code_steps: 200,
            input_range: PixelRange::MinusHalfToHalf,
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
