//! `vq-train prior --vqvae RUN_DIR`: the PixelCNN prior over a trained VQ-VAE's codes.
//!
//! The CIFAR-10 splits are encoded once with the VQ-VAE and cached in the run folder
//! (`codes/{train,test}.safetensors`, with the VQ-VAE's model id); training then reads only codes.
//! The run folder follows the VQ-VAE's conventions: `config.json`, `metrics.jsonl`,
//! `checkpoints/step-N` with `last` and `best` links, `curves.png`, `summary.json`, and an exact
//! `--resume` (batches are a pure function of the step, Adam's state is saved).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{nn, Device, Kind, Tensor};
use vq_data::{gather, BatchIndices, Cifar10, LoadOptions, Split};
use vq_model::checkpoint::{hex, Checkpoint};
use vq_model::{images_to_tensor, DeviceChoice, PixelCnnPrior, PriorConfig};

use crate::adam::Adam;
use crate::checkpoint::{self, HasStep};
use crate::config::{validate_schedule, warmup_cosine};

/// Everything a prior run depends on; saved as `config.json` in its run folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// A misspelt setting is an error, not silently the default.
#[serde(default, deny_unknown_fields)]
pub struct PriorTrainConfig {
    /// The prior's shape (its `codebook_size` and `vqvae_model_id` are taken from the VQ-VAE).
    pub prior: PriorConfig,
    /// The VQ-VAE: a checkpoint folder or a run folder (its best checkpoint).
    pub vqvae: PathBuf,
    pub data: PathBuf,
    pub any_record_count: bool,
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub warmup_steps: usize,
    pub final_lr_fraction: f64,
    pub seed: u64,
    pub log_every: usize,
    pub eval_every: usize,
    pub checkpoint_every: usize,
    pub threads: Option<i32>,
    pub device: DeviceChoice,
}

impl Default for PriorTrainConfig {
    fn default() -> Self {
        PriorTrainConfig {
            prior: PriorConfig::default(),
            vqvae: vq_model::checkpoint::bundled_dir(),
            data: PathBuf::from("datasets/cifar-10-batches-bin"),
            any_record_count: false,
            steps: 4000,
            batch_size: 128,
            lr: 1e-3,
            warmup_steps: 200,
            final_lr_fraction: 0.05,
            seed: 0,
            log_every: 50,
            eval_every: 1000,
            checkpoint_every: 500,
            threads: None,
            device: DeviceChoice::Auto,
        }
    }
}

impl PriorTrainConfig {
    pub fn validate(&self) -> Result<(), String> {
        self.prior.validate()?;
        validate_schedule(
            self.steps,
            self.batch_size,
            self.lr,
            [self.log_every, self.eval_every, self.checkpoint_every],
        )
    }

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

/// Where a prior run stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriorState {
    pub step: usize,
    pub adam_steps: i64,
    /// Lowest test NLL so far (bits per code) and its step.
    pub best_bits_per_code: Option<f64>,
    pub best_step: Option<usize>,
    pub elapsed_s: f64,
}

impl HasStep for PriorState {
    fn step(&self) -> usize {
        self.step
    }
}

/// Test-split likelihood of the prior.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriorEvaluation {
    pub step: usize,
    pub grids: i64,
    /// Mean negative log-likelihood of one code, in bits.
    pub bits_per_code: f64,
    /// Bits of a whole image's code grid divided by its 3,072 sub-pixels.
    pub bits_per_dim: f64,
    pub elapsed_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PriorSummary {
    pub run_dir: PathBuf,
    pub steps: usize,
    pub final_eval: PriorEvaluation,
    pub train_seconds: f64,
}

/// The code grids and labels of one split.
#[derive(Debug)]
pub struct CodeSet {
    /// `(N, h, w)` i64.
    pub codes: Tensor,
    /// `(N,)` i64.
    pub labels: Tensor,
}

impl CodeSet {
    pub fn len(&self) -> usize {
        self.codes.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Encodes `images` with the VQ-VAE in chunks (no flips).
pub fn encode_split(vqvae: &Checkpoint, images: &Cifar10, device: Device) -> Result<CodeSet> {
    let _guard = tch::no_grad_guard();
    let range = vqvae.config.input_range;
    let mut parts = Vec::new();
    for start in (0..images.len()).step_by(500) {
        let end = (start + 500).min(images.len());
        let batch = BatchIndices {
            indices: (start..end).collect(),
            flips: vec![false; end - start],
        };
        let xs = images_to_tensor(&gather(images.images.view(), &batch, range), device)?;
        parts.push(vqvae.model.encode(&xs).to_device(Device::Cpu));
    }
    let labels: Vec<i64> = images.labels.iter().map(|&l| l as i64).collect();
    Ok(CodeSet {
        codes: Tensor::cat(&parts, 0),
        labels: Tensor::from_slice(&labels),
    })
}

fn cache_path(run_dir: &Path, split: Split) -> PathBuf {
    run_dir.join("codes").join(format!("{split}.safetensors"))
}

/// The split's codes from the run's cache, or encoded now and cached (written atomically).
fn cached_codes(
    run_dir: &Path,
    split: Split,
    vqvae: &Checkpoint,
    config: &PriorTrainConfig,
    device: Device,
) -> Result<CodeSet> {
    let path = cache_path(run_dir, split);
    let id_path = path.with_extension("model-id");
    let id = hex(&vqvae.model_id);
    if path.is_file() && std::fs::read_to_string(&id_path).ok().as_deref() == Some(id.as_str()) {
        let tensors = Tensor::read_safetensors(&path)
            .with_context(|| format!("reading the code cache {}", path.display()))?;
        let get = |name: &str| {
            tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.to_kind(Kind::Int64))
                .with_context(|| format!("{}: no {name} tensor", path.display()))
        };
        tracing::info!("{split} codes from the cache {}", path.display());
        return Ok(CodeSet {
            codes: get("codes")?,
            labels: get("labels")?,
        });
    }
    let options = LoadOptions {
        records_per_file: if config.any_record_count {
            None
        } else {
            LoadOptions::default().records_per_file
        },
    };
    let images = vq_data::load_split(&config.data, split, &options)
        .with_context(|| format!("loading the {split} split"))?;
    let started = Instant::now();
    let set = encode_split(vqvae, &images, device)?;
    tracing::info!(
        "encoded {} {split} images in {:.1} s",
        set.len(),
        started.elapsed().as_secs_f64()
    );
    std::fs::create_dir_all(path.parent().expect("cache path has a folder"))?;
    let tmp = path.with_extension("tmp.safetensors");
    Tensor::write_safetensors(
        &[
            ("codes", &set.codes.to_kind(Kind::Int16)),
            ("labels", &set.labels),
        ],
        &tmp,
    )
    .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path)?;
    vq_data::write_atomic(&id_path, |w| w.write_all(id.as_bytes()))?;
    Ok(set)
}

/// The batch of step `step`: epochs are seeded permutations, so a batch depends on nothing but
/// the step (which makes resuming exact without saving any sampler state).
fn batch_indices(n: usize, batch: usize, seed: u64, step: usize) -> Vec<i64> {
    let permutation = |epoch: usize| {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x0070_7269_6f72);
        rng.set_stream(epoch as u64);
        let mut p: Vec<i64> = (0..n as i64).collect();
        p.shuffle(&mut rng);
        p
    };
    let start = step * batch;
    let mut out = Vec::with_capacity(batch);
    let mut epoch = start / n;
    let mut perm = permutation(epoch);
    for k in start..start + batch {
        if k / n != epoch {
            epoch = k / n;
            perm = permutation(epoch);
        }
        out.push(perm[k % n]);
    }
    out
}

/// Test NLL of `prior` over `set`.
pub fn evaluate_prior(
    prior: &PixelCnnPrior,
    set: &CodeSet,
    device: Device,
    step: usize,
    elapsed_s: f64,
) -> PriorEvaluation {
    let _guard = tch::no_grad_guard();
    let n = set.len() as i64;
    let mut total = 0.0;
    for start in (0..n).step_by(500) {
        let len = 500.min(n - start);
        let codes = set.codes.narrow(0, start, len).to_device(device);
        let labels = set.labels.narrow(0, start, len).to_device(device);
        total += prior.nll(&codes, Some(&labels)).double_value(&[]) * len as f64;
    }
    let size = set.codes.size();
    let per_grid = (size[1] * size[2]) as f64;
    let bits_per_code = total / n.max(1) as f64 / std::f64::consts::LN_2;
    PriorEvaluation {
        step,
        grids: n,
        bits_per_code,
        bits_per_dim: bits_per_code * per_grid / (3.0 * (prior.config.image_side as f64).powi(2)),
        elapsed_s,
    }
}

/// Starts a prior run in `run_dir` (which must not hold one).
pub fn train_prior(mut config: PriorTrainConfig, run_dir: &Path) -> Result<PriorSummary> {
    config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    if run_dir.join(checkpoint::CONFIG_FILE).exists() {
        bail!(
            "{} already holds a run; use --resume to continue it or another --run-dir",
            run_dir.display()
        );
    }
    let device = config.device.resolve()?;
    let vqvae = Checkpoint::open(&config.vqvae, device)
        .with_context(|| format!("opening the VQ-VAE {}", config.vqvae.display()))?;
    config.prior.codebook_size = vqvae.config.codebook_size;
    config.prior.vqvae_model_id = hex(&vqvae.model_id);
    let data = vq_data::describe(&config.data)
        .with_context(|| format!("reading the dataset {}", config.data.display()))?;
    config.prior.image_side = data.side as i64;
    config.prior.grid_side = vqvae.config.grid_side(data.side as i64);
    if config.prior.classes > 0 {
        config.prior.classes = data.class_names.len() as i64;
        config.prior.class_names = data.class_names;
    }
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    checkpoint::write_json(&run_dir.join(checkpoint::CONFIG_FILE), &config)?;
    run(config, vqvae, run_dir, None)
}

/// Continues the prior run in `run_dir` from its last checkpoint.
pub fn resume_prior(run_dir: &Path) -> Result<PriorSummary> {
    let config: PriorTrainConfig = checkpoint::read_json(&run_dir.join(checkpoint::CONFIG_FILE))?;
    let device = config.device.resolve()?;
    let vqvae = Checkpoint::open(&config.vqvae, device)
        .with_context(|| format!("opening the VQ-VAE {}", config.vqvae.display()))?;
    if hex(&vqvae.model_id) != config.prior.vqvae_model_id {
        bail!(
            "{} is model {}, but this prior was trained on model {}",
            vqvae.dir.display(),
            hex(&vqvae.model_id),
            config.prior.vqvae_model_id
        );
    }
    let last = checkpoint::last(run_dir);
    run(config, vqvae, run_dir, last)
}

fn run(
    config: PriorTrainConfig,
    vqvae: Checkpoint,
    run_dir: &Path,
    from: Option<PathBuf>,
) -> Result<PriorSummary> {
    if let Some(n) = config.threads {
        tch::set_num_threads(n);
    }
    let device = config.device.resolve()?;
    let train = cached_codes(run_dir, Split::Train, &vqvae, &config, device)?;
    let test = cached_codes(run_dir, Split::Test, &vqvae, &config, device)?;
    drop(vqvae);

    tch::manual_seed(config.seed as i64);
    let mut vs = nn::VarStore::new(device);
    let prior = PixelCnnPrior::new(vs.root(), &config.prior);
    let mut adam = Adam::new(&vs);
    let mut state = match &from {
        Some(dir) => {
            let state: PriorState = checkpoint::read_json(&dir.join(checkpoint::STATE_FILE))?;
            vq_model::load_weights(&mut vs, &dir.join(checkpoint::MODEL_FILE))?;
            adam.load(&dir.join(checkpoint::OPTIMIZER_FILE), state.adam_steps)?;
            tracing::info!("resuming from {} (step {})", dir.display(), state.step);
            crate::trainer::rewind_metrics(&run_dir.join("metrics.jsonl"), state.step)?;
            state
        }
        None => PriorState {
            step: 0,
            adam_steps: 0,
            best_bits_per_code: None,
            best_step: None,
            elapsed_s: 0.0,
        },
    };
    let mut metrics = checkpoint::MetricsLog::open(run_dir)?;
    let bar = checkpoint::progress_bar(config.steps, state.step);
    let mut clock = Instant::now();
    let (mut window_loss, mut window_n) = (0.0, 0usize);
    let mut last_eval = None;
    while state.step < config.steps {
        let step = state.step;
        let idx = Tensor::from_slice(&batch_indices(
            train.len(),
            config.batch_size,
            config.seed,
            step,
        ));
        let codes = train.codes.index_select(0, &idx).to_device(device);
        let labels = train.labels.index_select(0, &idx).to_device(device);
        let loss = prior.nll(&codes, Some(&labels));
        let value = loss.double_value(&[]);
        if !value.is_finite() {
            bar.abandon();
            return Err(checkpoint::non_finite_loss(run_dir, step));
        }
        adam.zero_grad();
        loss.backward();
        adam.step(config.lr_at(step));
        state.step += 1;
        state.adam_steps = adam.steps;
        window_loss += value;
        window_n += 1;
        bar.inc(1);
        if state.step % config.log_every == 0 || state.step == config.steps {
            let seconds = clock.elapsed().as_secs_f64();
            state.elapsed_s += seconds;
            clock = Instant::now();
            let bits = window_loss / window_n as f64 / std::f64::consts::LN_2;
            let line = json!({
                "step": state.step,
                "bits_per_code": bits,
                "lr": config.lr_at(step),
                "grids_per_s": (window_n * config.batch_size) as f64 / seconds.max(1e-9),
                "elapsed_s": state.elapsed_s,
            });
            bar.set_message(format!("{bits:.3} bits/code"));
            metrics.append(&line)?;
            (window_loss, window_n) = (0.0, 0);
        }
        let final_step = state.step == config.steps;
        if state.step % config.eval_every == 0 || final_step {
            state.elapsed_s += clock.elapsed().as_secs_f64();
            clock = Instant::now();
            let eval = evaluate_prior(&prior, &test, device, state.step, state.elapsed_s);
            bar.println(format!(
                "step {}: test NLL {:.4} bits/code, {:.4} bits/dim",
                eval.step, eval.bits_per_code, eval.bits_per_dim
            ));
            metrics.append(&json!({ "eval": eval }))?;
            let best = state
                .best_bits_per_code
                .is_none_or(|b| eval.bits_per_code < b);
            if best {
                state.best_bits_per_code = Some(eval.bits_per_code);
                state.best_step = Some(state.step);
            }
            checkpoint::save(run_dir, &vs, None, &adam, &state, &config.prior, best)?;
            last_eval = Some(eval);
        } else if state.step % config.checkpoint_every == 0 {
            state.elapsed_s += clock.elapsed().as_secs_f64();
            clock = Instant::now();
            checkpoint::save(run_dir, &vs, None, &adam, &state, &config.prior, false)?;
        }
    }
    bar.finish_and_clear();
    drop(metrics);
    crate::curves::plot_prior(&run_dir.join("metrics.jsonl"), &run_dir.join("curves.png"))?;
    let final_eval = match last_eval {
        Some(e) => e,
        None => evaluate_prior(&prior, &test, device, state.step, state.elapsed_s),
    };
    let summary = PriorSummary {
        run_dir: run_dir.to_path_buf(),
        steps: state.step,
        final_eval,
        train_seconds: state.elapsed_s,
    };
    checkpoint::write_json(&run_dir.join("summary.json"), &summary)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_each_epoch_once_and_depend_only_on_the_step() {
        let (n, b) = (50, 8);
        let mut seen = Vec::new();
        for step in 0..25 {
            seen.extend(batch_indices(n, b, 3, step));
        }
        for epoch in seen.chunks(n).take(4) {
            let mut e = epoch.to_vec();
            e.sort();
            assert_eq!(e, (0..n as i64).collect::<Vec<_>>());
        }
        assert_eq!(batch_indices(n, b, 3, 17), batch_indices(n, b, 3, 17));
        assert_ne!(batch_indices(n, b, 3, 0), batch_indices(n, b, 4, 0));
    }
}
