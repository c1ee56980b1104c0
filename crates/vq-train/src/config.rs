//! The settings every run shares (data, schedule, runtime), and the VQ-VAE run's config.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vq_model::{DeviceChoice, VqVaeConfig};
use vq_store::ConfigFile;

/// The dataset a run reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// A `cifar-10-batches-bin` folder or an imported image set.
    pub path: PathBuf,
    /// Accept batch files of any whole number of records (small test datasets), not only the
    /// official 10,000.
    pub any_record_count: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            path: PathBuf::from("datasets/cifar-10-batches-bin"),
            any_record_count: false,
        }
    }
}

impl DataConfig {
    pub fn load_options(&self) -> vq_data::LoadOptions {
        vq_data::LoadOptions {
            records_per_file: if self.any_record_count {
                None
            } else {
                vq_data::LoadOptions::default().records_per_file
            },
        }
    }
}

/// Steps, batches, learning rate and the cadence of logs, evaluations and checkpoints: the same
/// fields for every kind of run (each kind has its own defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub steps: usize,
    pub batch_size: usize,
    /// Peak learning rate, reached after `warmup_steps` and decayed by a cosine to
    /// `lr * final_lr_fraction` at the last step.
    pub lr: f64,
    pub warmup_steps: usize,
    pub final_lr_fraction: f64,
    /// Seeds the initial weights, the batches and every random draw of a step.
    pub seed: u64,
    /// Training figures are logged every this many steps.
    pub log_every: usize,
    /// Evaluate every this many steps (and at the last step).
    pub eval_every: usize,
    /// Checkpoint every this many steps (and at every evaluation).
    pub checkpoint_every: usize,
}

impl Schedule {
    /// Checks what every schedule needs: steps, a batch, a finite positive learning rate and
    /// positive logging / evaluation / checkpoint intervals.
    pub fn validate(&self) -> Result<(), String> {
        if self.steps == 0 || self.batch_size == 0 {
            return Err("steps and batch_size must be positive".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(format!("lr must be positive, not {}", self.lr));
        }
        if !(0.0..=1.0).contains(&self.final_lr_fraction) {
            return Err(format!(
                "final_lr_fraction must be in [0, 1], not {}",
                self.final_lr_fraction
            ));
        }
        if self.log_every == 0 || self.eval_every == 0 || self.checkpoint_every == 0 {
            return Err("log_every, eval_every and checkpoint_every must be positive".into());
        }
        Ok(())
    }

    /// Learning rate at `step` (0-based): linear warm-up, then cosine decay.
    pub fn lr_at(&self, step: usize) -> f64 {
        warmup_cosine(
            step,
            self.steps,
            self.warmup_steps,
            self.lr,
            self.final_lr_fraction,
        )
    }
}

/// `lr` reached linearly over `warmup` steps, then decayed by a cosine to
/// `lr * final_fraction` at step `steps`.
pub fn warmup_cosine(
    step: usize,
    steps: usize,
    warmup: usize,
    lr: f64,
    final_fraction: f64,
) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let span = (steps.saturating_sub(warmup)).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    let floor = lr * final_fraction;
    floor + (lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// Where and how a run computes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Runtime {
    /// LibTorch CPU threads (`None`: LibTorch's default, one per core).
    pub threads: Option<i32>,
    pub device: DeviceChoice,
}

/// What the training loop needs of any run's config.
pub trait RunConfig: ConfigFile + Clone {
    fn data(&self) -> &DataConfig;
    fn data_mut(&mut self) -> &mut DataConfig;
    fn schedule(&self) -> &Schedule;
    fn schedule_mut(&mut self) -> &mut Schedule;
    fn runtime(&self) -> &Runtime;
    fn runtime_mut(&mut self) -> &mut Runtime;
    /// Checks the whole config.
    fn check(&self) -> Result<(), String> {
        self.schedule().validate()?;
        ConfigFile::validate(self)
    }
}

/// Implements [`RunConfig`] for a config struct with `data`, `schedule` and `runtime` fields.
macro_rules! run_config {
    ($t:ty) => {
        impl $crate::config::RunConfig for $t {
            fn data(&self) -> &$crate::config::DataConfig {
                &self.data
            }
            fn data_mut(&mut self) -> &mut $crate::config::DataConfig {
                &mut self.data
            }
            fn schedule(&self) -> &$crate::config::Schedule {
                &self.schedule
            }
            fn schedule_mut(&mut self) -> &mut $crate::config::Schedule {
                &mut self.schedule
            }
            fn runtime(&self) -> &$crate::config::Runtime {
                &self.runtime
            }
            fn runtime_mut(&mut self) -> &mut $crate::config::Runtime {
                &mut self.runtime
            }
        }
    };
}
pub(crate) use run_config;

/// Everything a VQ-VAE run depends on; saved as `config.json` in the run folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// A misspelt setting is an error, not silently the default.
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub model: VqVaeConfig,
    pub data: DataConfig,
    pub schedule: Schedule,
    pub runtime: Runtime,
    /// Decay of the exponential moving average of the weights that evaluations and
    /// checkpoints use (Polyak averaging); 0 evaluates the trained weights themselves.
    pub weight_ema: f64,
    /// Random left-right flips of training images.
    pub hflip: bool,
    /// Train images encoded for the quantizer's k-means initialisation (0: none).
    pub kmeans_init_images: usize,
    pub kmeans_iters: usize,
    /// Test images of each evaluation but the last (which uses the whole test split).
    pub eval_images: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: VqVaeConfig::default(),
            data: DataConfig::default(),
            schedule: Schedule {
                steps: 36_000,
                batch_size: 32,
                lr: 2e-3,
                warmup_steps: 200,
                final_lr_fraction: 0.05,
                seed: 0,
                log_every: 50,
                eval_every: 2000,
                checkpoint_every: 500,
            },
            runtime: Runtime::default(),
            weight_ema: 0.997,
            hflip: true,
            kmeans_init_images: 4096,
            kmeans_iters: 20,
            eval_images: 2000,
        }
    }
}

run_config!(TrainConfig);

impl ConfigFile for TrainConfig {
    const WHAT: &'static str = "a VQ-VAE training config";
    const FORMAT: u64 = 2;

    fn from_legacy(fields: serde_json::Value) -> Option<Result<Self, String>> {
        Some(
            serde_json::from_value::<LegacyTrainConfig>(fields)
                .map_err(|e| e.to_string())
                .and_then(TrainConfig::try_from),
        )
    }

    fn validate(&self) -> Result<(), String> {
        self.model.validate()?;
        if !(0.0..1.0).contains(&self.weight_ema) {
            return Err(format!(
                "weight_ema must be in [0, 1), not {}",
                self.weight_ema
            ));
        }
        Ok(())
    }
}

/// A run's `config.json` before format 2: the schedule, data and runtime settings at the top
/// level, the model's flat format-1 config under `model`.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct LegacyTrainConfig {
    model: serde_json::Value,
    data: PathBuf,
    any_record_count: bool,
    steps: usize,
    batch_size: usize,
    lr: f64,
    warmup_steps: usize,
    final_lr_fraction: f64,
    seed: u64,
    weight_ema: f64,
    hflip: bool,
    kmeans_init_images: usize,
    kmeans_iters: usize,
    log_every: usize,
    eval_every: usize,
    eval_images: usize,
    checkpoint_every: usize,
    threads: Option<i32>,
    device: DeviceChoice,
}

impl Default for LegacyTrainConfig {
    fn default() -> Self {
        let c = TrainConfig::default();
        let s = c.schedule;
        LegacyTrainConfig {
            model: serde_json::json!({}),
            data: c.data.path,
            any_record_count: c.data.any_record_count,
            steps: s.steps,
            batch_size: s.batch_size,
            lr: s.lr,
            warmup_steps: s.warmup_steps,
            final_lr_fraction: s.final_lr_fraction,
            seed: s.seed,
            weight_ema: c.weight_ema,
            hflip: c.hflip,
            kmeans_init_images: c.kmeans_init_images,
            kmeans_iters: c.kmeans_iters,
            log_every: s.log_every,
            eval_every: s.eval_every,
            eval_images: c.eval_images,
            checkpoint_every: s.checkpoint_every,
            threads: c.runtime.threads,
            device: c.runtime.device,
        }
    }
}

impl TryFrom<LegacyTrainConfig> for TrainConfig {
    type Error = String;
    fn try_from(c: LegacyTrainConfig) -> Result<Self, String> {
        let model = vq_store::parse_config::<VqVaeConfig>(&c.model.to_string())
            .map_err(|e| format!("model: {e}"))?;
        Ok(TrainConfig {
            model,
            data: DataConfig {
                path: c.data,
                any_record_count: c.any_record_count,
            },
            schedule: Schedule {
                steps: c.steps,
                batch_size: c.batch_size,
                lr: c.lr,
                warmup_steps: c.warmup_steps,
                final_lr_fraction: c.final_lr_fraction,
                seed: c.seed,
                log_every: c.log_every,
                eval_every: c.eval_every,
                checkpoint_every: c.checkpoint_every,
            },
            runtime: Runtime {
                threads: c.threads,
                device: c.device,
            },
            weight_ema: c.weight_ema,
            hflip: c.hflip,
            kmeans_init_images: c.kmeans_init_images,
            kmeans_iters: c.kmeans_iters,
            eval_images: c.eval_images,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vq_store::parse_config;

    #[test]
    fn schedule_warms_up_then_decays() {
        let s = Schedule {
            steps: 1000,
            warmup_steps: 100,
            lr: 1e-3,
            final_lr_fraction: 0.1,
            ..TrainConfig::default().schedule
        };
        assert!((s.lr_at(0) - 1e-5).abs() < 1e-12);
        assert!((s.lr_at(99) - 1e-3).abs() < 1e-12);
        assert!((s.lr_at(100) - 1e-3).abs() < 1e-12);
        assert!((s.lr_at(550) - 0.55e-3).abs() < 1e-9);
        assert!((s.lr_at(1000) - 1e-4).abs() < 1e-12);
        let mut last = f64::INFINITY;
        for step in 100..1000 {
            assert!(s.lr_at(step) <= last);
            last = s.lr_at(step);
        }
    }

    #[test]
    fn partial_json_takes_this_runs_defaults() {
        let cfg: TrainConfig = parse_config(
            r#"{"format": 2, "schedule": {"steps": 5}, "model": {"quantizer": {"codebook_size": 64}}}"#,
        )
        .unwrap();
        assert_eq!(cfg.schedule.steps, 5);
        assert_eq!(cfg.schedule.batch_size, 32);
        assert_eq!(cfg.model.code_space().vocabulary, 64);
        assert!(cfg.check().is_ok());
        let nan = TrainConfig {
            schedule: Schedule {
                lr: f64::NAN,
                ..cfg.schedule.clone()
            },
            ..cfg
        };
        assert!(nan.check().is_err());
    }

    #[test]
    fn format_1_run_configs_read_as_the_same_run() {
        let v1: TrainConfig = parse_config(
            r#"{"steps": 5, "batch_size": 16, "data": "d", "any_record_count": true, "threads": 1,
                "model": {"codebook_size": 32, "code_dim": 8}}"#,
        )
        .unwrap();
        assert_eq!(v1.schedule.steps, 5);
        assert_eq!(v1.schedule.batch_size, 16);
        assert_eq!(v1.schedule.lr, 2e-3);
        assert_eq!(v1.data.path, PathBuf::from("d"));
        assert!(v1.data.any_record_count);
        assert_eq!(v1.runtime.threads, Some(1));
        assert_eq!(v1.model.code_space().vocabulary, 32);
        assert_eq!(v1.model.quantizer.latent_dim(), 8);
        let err = parse_config::<TrainConfig>(r#"{"learning_rate": 0.1}"#).unwrap_err();
        assert!(err.contains("unknown field `learning_rate`"), "{err}");
        let err = parse_config::<TrainConfig>(r#"{"model": {"codebok_size": 64}}"#).unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
    }
}
