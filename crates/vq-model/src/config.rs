use serde::{Deserialize, Serialize};
use vq_data::PixelRange;
use vq_store::ConfigFile;

use crate::nets::{DecoderConfig, EncoderConfig, ResidualStackConfig, StagedDecoderConfig};
use crate::quantizer::{
    CodeSpace, CodebookConfig, CodebookUpdate, GradientEstimator, QuantizerConfig, VqConfig,
};

/// What the reconstruction term of the loss measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "kebab-case")]
pub enum ReconstructionLoss {
    /// Mean squared error over the whole batch.
    #[default]
    Mse,
    /// Each image's squared error weighted by `batch MSE / that image's MSE` (weights held
    /// constant): the gradient of the batch's mean PSNR, i.e. of the mean of `ln MSE_i`,
    /// rescaled to the size of a plain MSE gradient so that the commitment loss keeps its
    /// weight. A plain MSE spends the model on the hardest (most textured) images, whose errors
    /// dominate the sum; mean PSNR counts a halved error the same on every image. Measured no
    /// better on CIFAR-10 (docs/experiments.md).
    #[value(alias = "per_image_log")]
    PerImageLog,
}

/// The number type of the convolutions. Weights, losses and codebook distances stay f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
#[value(rename_all = "lowercase")]
pub enum ComputeKind {
    /// bf16 where the hardware runs it natively: on a CUDA GPU of compute capability 8.0 or
    /// more, on a CPU with AMX bf16 tiles or an AMD CPU with AVX-512 BF16 (see
    /// [`native_bf16`]); f32 elsewhere.
    #[default]
    Auto,
    F32,
    /// bfloat16 products: several times the f32 matrix throughput on CPUs with AMX and on
    /// recent GPUs (slower than f32 with AVX-512 BF16 alone).
    Bf16,
}

impl ComputeKind {
    /// The number type of the convolutions on `device`.
    pub fn kind(self, device: tch::Device) -> tch::Kind {
        let native = match device {
            tch::Device::Cuda(i) => crate::cuda::device_info(i).is_some_and(|d| d.native_bf16()),
            _ => native_bf16(),
        };
        match self {
            ComputeKind::Auto if native => tch::Kind::BFloat16,
            ComputeKind::Auto => tch::Kind::Float,
            ComputeKind::F32 => tch::Kind::Float,
            ComputeKind::Bf16 => tch::Kind::BFloat16,
        }
    }
}

/// Whether bf16 convolutions beat f32 ones on this CPU: with AMX tiles (Intel, from Sapphire
/// Rapids), and with AVX-512 BF16 on AMD (Zen 4 on: its bf16 dot products run at twice the f32
/// rate, and training measured 1.4-1.7× f32). Not with AVX-512 BF16 alone on Intel (Cooper Lake:
/// measured slower than f32). Read from the kernel's CPU flags (Linux); elsewhere f32. See
/// docs/experiments.md for the measurements.
pub fn native_bf16() -> bool {
    static NATIVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *NATIVE.get_or_init(|| {
        std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| bf16_pays_off(&info))
    })
}

/// [`native_bf16`]'s rule on the text of `/proc/cpuinfo`.
fn bf16_pays_off(cpuinfo: &str) -> bool {
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim())
            .unwrap_or("")
    };
    let flags: Vec<&str> = field("flags").split_whitespace().collect();
    let amd = field("vendor_id") == "AuthenticAMD";
    flags.contains(&"amx_bf16") || (amd && flags.contains(&"avx512_bf16"))
}

/// The VQ-VAE's shape and quantizer, saved as `config.json` next to every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// A misspelt setting is an error, not silently the default.
#[serde(default, deny_unknown_fields)]
pub struct VqVaeConfig {
    pub in_channels: i64,
    pub hidden_channels: i64,
    /// The residual stacks of the encoder and decoder.
    pub residual: ResidualStackConfig,
    /// 4 (two stride-2 convolutions: 32×32 → 8×8) or 2 (one: 32×32 → 16×16).
    pub downsample: i64,
    pub quantizer: QuantizerConfig,
    /// What the reconstruction term of the training loss measures.
    pub reconstruction_loss: ReconstructionLoss,
    /// The range the images are scaled to before the encoder.
    pub input_range: PixelRange,
    /// Number type of the convolutions.
    pub compute: ComputeKind,
    /// Set on a decoder fine-tuned for another model's codes (`vq-train decoder`): that model's
    /// id (hex). Its encoder and codebook are that model's, so its `.vqz` files and priors are
    /// this one's too. Absent: the codes are this model's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub codes_of: Option<String>,
    /// The decoder's own shape (a decoder trained for a frozen model's codes, `vq-train
    /// decoder --decoder-stages`). Absent: the encoder's mirror.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decoder: Option<StagedDecoderConfig>,
}

impl Default for VqVaeConfig {
    fn default() -> Self {
        VqVaeConfig {
            in_channels: 3,
            hidden_channels: 128,
            residual: ResidualStackConfig::default(),
            downsample: 4,
            quantizer: QuantizerConfig::default(),
            reconstruction_loss: ReconstructionLoss::default(),
            input_range: PixelRange::MinusHalfToHalf,
            compute: ComputeKind::Auto,
            codes_of: None,
            decoder: None,
        }
    }
}

impl ConfigFile for VqVaeConfig {
    const WHAT: &'static str = "a VQ-VAE model config";
    const FORMAT: u64 = 2;

    fn from_legacy(fields: serde_json::Value) -> Option<Result<Self, String>> {
        Some(
            serde_json::from_value::<LegacyVqVaeConfig>(fields)
                .map(VqVaeConfig::from)
                .map_err(|e| e.to_string()),
        )
    }

    fn validate(&self) -> Result<(), String> {
        VqVaeConfig::validate(self)
    }
}

impl VqVaeConfig {
    /// Checks the settings that would otherwise fail deep inside LibTorch.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(id) = &self.codes_of {
            if vq_store::parse_hex_id(id).is_none() {
                return Err(format!(
                    "codes_of must be a model id of 32 hex digits, not {id:?}"
                ));
            }
        }
        if ![2, 4].contains(&self.downsample) {
            return Err(format!(
                "downsample must be 2 or 4, not {}",
                self.downsample
            ));
        }
        if self.hidden_channels < 2 || self.residual.hidden_channels < 1 || self.in_channels < 1 {
            return Err("channel counts must be positive (hidden_channels at least 2)".into());
        }
        if let Some(decoder) = &self.decoder {
            decoder.validate(self.downsample)?;
        }
        self.quantizer.validate()
    }

    /// Side of the latent grid for square images of side `image_side`.
    pub fn grid_side(&self, image_side: i64) -> i64 {
        image_side / self.downsample
    }

    pub fn code_space(&self) -> CodeSpace {
        self.quantizer.code_space()
    }

    pub fn encoder(&self) -> EncoderConfig {
        EncoderConfig {
            in_channels: self.in_channels,
            hidden_channels: self.hidden_channels,
            residual: self.residual.clone(),
            downsample: self.downsample,
            out_channels: self.quantizer.latent_dim(),
            compute: self.compute,
        }
    }

    pub fn decoder(&self) -> DecoderConfig {
        DecoderConfig {
            in_channels: self.quantizer.latent_dim(),
            hidden_channels: self.hidden_channels,
            residual: self.residual.clone(),
            upsample: self.downsample,
            out_channels: self.in_channels,
            compute: self.compute,
            staged: self.decoder.clone(),
        }
    }

    /// The vector quantizer's settings, for flags that only apply to it.
    pub fn vq_mut(&mut self) -> Option<&mut VqConfig> {
        match &mut self.quantizer {
            QuantizerConfig::Vq(c) => Some(c),
            _ => None,
        }
    }
}

/// `config.json` before format 2: every setting at the top level.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct LegacyVqVaeConfig {
    in_channels: i64,
    hidden_channels: i64,
    residual_hidden_channels: i64,
    residual_layers: usize,
    downsample: i64,
    codebook_size: i64,
    code_dim: i64,
    commitment_cost: f64,
    codebook_update: CodebookUpdate,
    gradient: GradientEstimator,
    reconstruction_loss: ReconstructionLoss,
    dead_code_steps: usize,
    input_range: PixelRange,
    compute: ComputeKind,
}

impl Default for LegacyVqVaeConfig {
    /// The defaults of today's settings (format 1 had the same ones).
    fn default() -> Self {
        let (m, q) = (VqVaeConfig::default(), VqConfig::default());
        LegacyVqVaeConfig {
            in_channels: m.in_channels,
            hidden_channels: m.hidden_channels,
            residual_hidden_channels: m.residual.hidden_channels,
            residual_layers: m.residual.layers,
            downsample: m.downsample,
            codebook_size: q.codebook.codebook_size,
            code_dim: q.code_dim,
            commitment_cost: q.codebook.commitment_cost,
            codebook_update: q.codebook.update,
            gradient: q.gradient,
            reconstruction_loss: m.reconstruction_loss,
            dead_code_steps: q.codebook.dead_code_steps,
            input_range: m.input_range,
            compute: m.compute,
        }
    }
}

impl From<LegacyVqVaeConfig> for VqVaeConfig {
    fn from(c: LegacyVqVaeConfig) -> Self {
        VqVaeConfig {
            in_channels: c.in_channels,
            hidden_channels: c.hidden_channels,
            residual: ResidualStackConfig {
                hidden_channels: c.residual_hidden_channels,
                layers: c.residual_layers,
            },
            downsample: c.downsample,
            quantizer: QuantizerConfig::Vq(VqConfig {
                codebook: CodebookConfig {
                    codebook_size: c.codebook_size,
                    commitment_cost: c.commitment_cost,
                    update: c.codebook_update,
                    dead_code_steps: c.dead_code_steps,
                },
                code_dim: c.code_dim,
                gradient: c.gradient,
            }),
            reconstruction_loss: c.reconstruction_loss,
            input_range: c.input_range,
            compute: c.compute,
            codes_of: None,
            decoder: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vq_store::parse_config;

    #[test]
    fn bf16_is_native_with_amx_or_on_amd_with_avx512_bf16() {
        let cpu = |vendor: &str, flags: &str| {
            format!("processor\t: 0\nvendor_id\t: {vendor}\nflags\t\t: fpu sse {flags}\n")
        };
        assert!(bf16_pays_off(&cpu(
            "GenuineIntel",
            "avx512f avx512_bf16 amx_bf16 amx_tile"
        )));
        assert!(!bf16_pays_off(&cpu("GenuineIntel", "avx512f avx512_bf16")));
        assert!(bf16_pays_off(&cpu("AuthenticAMD", "avx512f avx512_bf16")));
        assert!(!bf16_pays_off(&cpu("AuthenticAMD", "avx2 fma")));
        assert!(!bf16_pays_off(""));
    }

    #[test]
    fn compute_kind_on_each_device() {
        use tch::{Device, Kind};
        for device in [Device::Cpu, Device::Cuda(0)] {
            assert_eq!(ComputeKind::F32.kind(device), Kind::Float);
            assert_eq!(ComputeKind::Bf16.kind(device), Kind::BFloat16);
        }
        let cpu_auto = if native_bf16() {
            Kind::BFloat16
        } else {
            Kind::Float
        };
        assert_eq!(ComputeKind::Auto.kind(Device::Cpu), cpu_auto);
        // On CUDA the GPU decides, not the CPU's flags.
        let gpu_auto = match crate::cuda::device_info(0) {
            Some(info) if info.native_bf16() => Kind::BFloat16,
            _ => Kind::Float,
        };
        assert_eq!(ComputeKind::Auto.kind(Device::Cuda(0)), gpu_auto);
    }

    #[test]
    fn validation_defaults_and_round_trip() {
        assert!(VqVaeConfig::default().validate().is_ok());
        let bad = VqVaeConfig {
            downsample: 3,
            ..VqVaeConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("downsample"));
        let partial: VqVaeConfig =
            parse_config(r#"{"quantizer": {"codebook_size": 1024}}"#).unwrap();
        assert_eq!(partial.code_space().vocabulary, 1024);
        assert_eq!(partial.quantizer.latent_dim(), 64);
        let json = serde_json::to_string(&VqVaeConfig::default()).unwrap();
        assert_eq!(
            parse_config::<VqVaeConfig>(&json).unwrap(),
            VqVaeConfig::default()
        );
        let err =
            parse_config::<VqVaeConfig>(r#"{"quantizer": {"kind": "vq", "codebok_size": 3}}"#)
                .unwrap_err();
        assert!(err.contains("unknown field `codebok_size`"), "{err}");
    }

    #[test]
    fn format_1_files_read_as_the_same_model() {
        // The bundled model's config.json as written before format 2.
        let v1 = r#"{
          "in_channels": 3, "hidden_channels": 128, "residual_hidden_channels": 32,
          "residual_layers": 2, "downsample": 4, "codebook_size": 512, "code_dim": 64,
          "commitment_cost": 0.25, "codebook_update": {"kind": "ema", "decay": 0.99, "epsilon": 1e-05},
          "gradient": "straight_through", "reconstruction_loss": "mse", "dead_code_steps": 50,
          "input_range": "minus_half_to_half", "compute": "auto"}"#;
        assert_eq!(
            parse_config::<VqVaeConfig>(v1).unwrap(),
            VqVaeConfig::default()
        );
        let small: VqVaeConfig = parse_config(r#"{"codebook_size": 16, "code_dim": 4}"#).unwrap();
        assert_eq!(small.code_space().vocabulary, 16);
        assert_eq!(small.quantizer.latent_dim(), 4);
        assert!(parse_config::<VqVaeConfig>(r#"{"codebook_size": 1}"#).is_err());
    }
}
