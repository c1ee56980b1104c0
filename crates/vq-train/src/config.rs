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
    /// Whether the run reads its dataset's images (a prior on codes made elsewhere does not).
    fn reads_dataset(&self) -> bool;
    /// Checks the whole config.
    fn check(&self) -> Result<(), String> {
        self.schedule().validate()?;
        ConfigFile::validate(self)
    }
}

/// Implements [`RunConfig`] for a config struct with `data`, `schedule` and `runtime` fields.
macro_rules! run_config {
    ($t:ty) => {
        $crate::config::run_config!($t, |_config: &$t| true);
    };
    ($t:ty, $reads_dataset:expr) => {
        impl $crate::config::RunConfig for $t {
            fn reads_dataset(&self) -> bool {
                let reads: fn(&$t) -> bool = $reads_dataset;
                reads(self)
            }
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
    /// At the end, the FID (and KID) of the reconstructions of the whole test split against it
    /// (minutes on a CPU), into `summary.json`.
    pub fid: bool,
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
            fid: false,
        }
    }
}

run_config!(TrainConfig);

impl ConfigFile for TrainConfig {
    const WHAT: &'static str = "a VQ-VAE training config";
    const FORMAT: u64 = 2;

    fn from_legacy(fields: serde_json::Value) -> Option<Result<Self, String>> {
        Some(from_legacy_run(
            fields,
            "model",
            |model, config: &mut Self| {
                config.model = vq_store::parse_config(&model.to_string())?;
                Ok(())
            },
        ))
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

/// Reads a run's `config.json` of format 1, where the data, schedule and runtime settings stood
/// at the top level (`"data"` was the dataset's path) beside the task's own, and `section` (the
/// model or the prior) was a format-1 config of its own, which `convert` reads into the config.
pub(crate) fn from_legacy_run<C: RunConfig>(
    fields: serde_json::Value,
    section: &str,
    convert: impl FnOnce(serde_json::Value, &mut C) -> Result<(), String>,
) -> Result<C, String> {
    use serde_json::Value;
    let Value::Object(mut fields) = fields else {
        return Err("expected a JSON object".into());
    };
    let defaults = C::default();
    let mut value = serde_json::to_value(&defaults).map_err(|e| e.to_string())?;
    if let Some(path) = fields.remove("data") {
        value["data"]["path"] = path;
    }
    if let Some(any) = fields.remove("any_record_count") {
        value["data"]["any_record_count"] = any;
    }
    // The schedule's and runtime's fields, under their format-2 names.
    for group in ["schedule", "runtime"] {
        let keys: Vec<String> = value[group]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        for key in keys {
            if let Some(v) = fields.remove(&key) {
                value[group][&key] = v;
            }
        }
    }
    let own = fields.remove(section);
    // What is left has the same names in both formats.
    vq_store::merge_over(&mut value, Value::Object(fields));
    let mut config: C = serde_json::from_value(value).map_err(|e| e.to_string())?;
    if let Some(own) = own {
        convert(own, &mut config).map_err(|e| format!("{section}: {e}"))?;
    }
    Ok(config)
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
    fn the_documented_recipes_are_valid_configs() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/recipes");
        let mut read = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            if let Some(kind) = name.strip_suffix(".json") {
                let text = std::fs::read_to_string(&path).unwrap();
                let checked = if kind.starts_with("sharp-decoder") {
                    parse_config::<crate::DecoderTrainConfig>(&text).and_then(|c| c.check())
                } else if kind.starts_with("prior") {
                    parse_config::<crate::PriorTrainConfig>(&text).and_then(|c| c.check())
                } else {
                    parse_config::<TrainConfig>(&text).and_then(|c| c.check())
                };
                assert!(checked.is_ok(), "{name}: {checked:?}");
                read += 1;
            }
        }
        assert!(read >= 3, "{read} recipes in {}", dir.display());
    }

    /// What users copy to reproduce a result must use their machine's cores: the recipes and
    /// the bundled models' training configs leave the thread count unset.
    #[test]
    fn shipped_configs_do_not_pin_the_thread_count() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(root.join("docs/recipes"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        for model in ["cifar10-default", "cifar10-prior", "cifar10-sharp"] {
            files.push(root.join("models").join(model).join("train-config.json"));
        }
        for path in files {
            let text = std::fs::read_to_string(&path).unwrap();
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            // Format 2 keeps it under "runtime"; a format-1 config at the top level.
            let threads = value
                .get("runtime")
                .map_or(&value["threads"], |runtime| &runtime["threads"]);
            assert!(threads.is_null(), "{}: threads {threads}", path.display());
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
