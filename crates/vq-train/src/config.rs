use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vq_model::{DeviceChoice, VqVaeConfig};

/// Everything a training run depends on; saved as `config.json` in the run folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// A misspelt setting is an error, not silently the default.
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub model: VqVaeConfig,
    /// The `cifar-10-batches-bin` folder.
    pub data: PathBuf,
    /// Accept batch files of any whole number of records (small test datasets), not only the
    /// official 10,000.
    pub any_record_count: bool,
    pub steps: usize,
    pub batch_size: usize,
    /// Peak learning rate, reached after `warmup_steps` and decayed by a cosine to
    /// `lr * final_lr_fraction` at the last step.
    pub lr: f64,
    pub warmup_steps: usize,
    pub final_lr_fraction: f64,
    pub seed: u64,
    /// Decay of the exponential moving average of the weights that evaluations and
    /// checkpoints use (Polyak averaging); 0 evaluates the trained weights themselves.
    pub weight_ema: f64,
    /// Random left-right flips of training images.
    pub hflip: bool,
    /// Train images encoded for the k-means codebook initialisation (0: random codebook).
    pub kmeans_init_images: usize,
    pub kmeans_iters: usize,
    /// Training figures are logged every this many steps.
    pub log_every: usize,
    /// Evaluate on `eval_images` test images (and write a reconstruction grid) every this many
    /// steps; the final evaluation uses the whole test split.
    pub eval_every: usize,
    pub eval_images: usize,
    pub checkpoint_every: usize,
    /// LibTorch CPU threads (`None`: LibTorch's default).
    pub threads: Option<i32>,
    pub device: DeviceChoice,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: VqVaeConfig::default(),
            data: PathBuf::from("datasets/cifar-10-batches-bin"),
            any_record_count: false,
            steps: 36_000,
            batch_size: 32,
            lr: 2e-3,
            warmup_steps: 200,
            final_lr_fraction: 0.05,
            seed: 0,
            weight_ema: 0.997,
            hflip: true,
            kmeans_init_images: 4096,
            kmeans_iters: 20,
            log_every: 50,
            eval_every: 2000,
            eval_images: 2000,
            checkpoint_every: 500,
            threads: None,
            device: DeviceChoice::Auto,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<(), String> {
        self.model.validate()?;
        if !(0.0..1.0).contains(&self.weight_ema) {
            return Err(format!(
                "weight_ema must be in [0, 1), not {}",
                self.weight_ema
            ));
        }
        validate_schedule(
            self.steps,
            self.batch_size,
            self.lr,
            [self.log_every, self.eval_every, self.checkpoint_every],
        )
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

/// Checks what every training schedule needs: steps, a batch, a finite positive learning rate
/// and positive logging / evaluation / checkpoint intervals.
pub fn validate_schedule(
    steps: usize,
    batch_size: usize,
    lr: f64,
    [log_every, eval_every, checkpoint_every]: [usize; 3],
) -> Result<(), String> {
    if steps == 0 || batch_size == 0 {
        return Err("steps and batch_size must be positive".into());
    }
    if !(lr > 0.0 && lr.is_finite()) {
        return Err(format!("lr must be positive, not {lr}"));
    }
    if log_every == 0 || eval_every == 0 || checkpoint_every == 0 {
        return Err("log_every, eval_every and checkpoint_every must be positive".into());
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays() {
        let cfg = TrainConfig {
            steps: 1000,
            warmup_steps: 100,
            lr: 1e-3,
            final_lr_fraction: 0.1,
            ..TrainConfig::default()
        };
        assert!((cfg.lr_at(0) - 1e-5).abs() < 1e-12);
        assert!((cfg.lr_at(99) - 1e-3).abs() < 1e-12);
        assert!((cfg.lr_at(100) - 1e-3).abs() < 1e-12);
        assert!((cfg.lr_at(550) - 0.55e-3).abs() < 1e-9);
        assert!((cfg.lr_at(1000) - 1e-4).abs() < 1e-12);
        let mut last = f64::INFINITY;
        for s in 100..1000 {
            assert!(cfg.lr_at(s) <= last);
            last = cfg.lr_at(s);
        }
    }

    #[test]
    fn partial_json_takes_defaults() {
        let cfg: TrainConfig =
            serde_json::from_str(r#"{"steps": 5, "model": {"codebook_size": 64}}"#).unwrap();
        assert_eq!(cfg.steps, 5);
        assert_eq!(cfg.model.codebook_size, 64);
        assert_eq!(cfg.batch_size, 32);
        assert!(cfg.validate().is_ok());
        assert!(TrainConfig {
            lr: f64::NAN,
            ..cfg
        }
        .validate()
        .is_err());
    }
}
