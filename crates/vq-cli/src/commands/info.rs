//! `vq-cli info`: the model, its training and the device.

use std::fmt;

use anyhow::Result;
use serde::Serialize;
use vq_model::checkpoint::TrainingInfo;
use vq_model::VqVaeConfig;

use crate::report::table;
use crate::session::Session;

/// A model's configuration, size, training and the device.
#[derive(Debug, Serialize)]
pub struct InfoReport {
    pub checkpoint: String,
    pub model_id: String,
    pub parameters: i64,
    pub config: VqVaeConfig,
    pub training: TrainingInfo,
    pub device: String,
    pub cuda_available: bool,
    pub threads: i32,
}

impl fmt::Display for InfoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let space = c.code_space();
        let quantizer = format!(
            "{} ({} bits a code{})",
            c.quantizer.describe(),
            space.bits_per_code(),
            if space.depth > 1 {
                format!(
                    ", {} a position at full depth",
                    space.depth * i64::from(space.bits_per_code())
                )
            } else {
                format!("; a 32×32 image is {0}×{0} codes", 32 / c.downsample)
            }
        );
        let mut decoder = match &c.decoder {
            None => "the encoder's mirror".to_string(),
            Some(d) => format!(
                "its own shape: {} (channels x residual blocks, from the code grid up)",
                d.stages
                    .iter()
                    .map(|s| format!("{}x{}", s.channels, s.blocks))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        if let Some(id) = &c.codes_of {
            decoder.push_str(&format!("; trained for the codes of model {id}"));
        }
        table(
            f,
            &[
                ("checkpoint", self.checkpoint.clone()),
                ("model id", self.model_id.clone()),
                (
                    "model",
                    format!(
                        "{} parameters; {} hidden channels, {} residual layers of {}, {}× downsampling",
                        self.parameters,
                        c.hidden_channels,
                        c.residual.layers,
                        c.residual.hidden_channels,
                        c.downsample
                    ),
                ),
                ("quantizer", quantizer),
                ("decoder", decoder),
                (
                    "trained",
                    match self.training.step {
                        Some(step) => format!("{step} steps"),
                        None => "(no state.json: steps unknown)".into(),
                    },
                ),
                (
                    "test split",
                    match &self.training.eval {
                        Some(e) => format!(
                            "PSNR {:.2} dB, SSIM {:.4}, MSE {:.5}, perplexity {:.1}, {} of {} codes used ({} images)",
                            e.psnr, e.ssim, e.mse, e.perplexity, e.codes_used, e.codebook_size, e.images
                        ),
                        None => "(no figures stored; run `vq-cli eval`)".into(),
                    },
                ),
                (
                    "device",
                    format!(
                        "{} (CUDA available: {}, {} LibTorch CPU threads)",
                        self.device, self.cuda_available, self.threads
                    ),
                ),
            ],
        )
    }
}

/// `vq-cli info`.
pub fn run(session: &Session) -> Result<InfoReport> {
    let tokenizer = session.tokenizer()?;
    let ckpt = tokenizer.checkpoint();
    Ok(InfoReport {
        checkpoint: ckpt.origin(),
        model_id: vq_store::hex(&ckpt.model_id),
        parameters: ckpt.parameter_count(),
        config: ckpt.config.clone(),
        training: ckpt.info.clone(),
        device: format!("{:?}", session.device),
        cuda_available: tch::Cuda::is_available(),
        threads: tch::get_num_threads(),
    })
}
