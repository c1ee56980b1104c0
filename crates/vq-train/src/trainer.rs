//! The training loop: data, model, k-means codebook initialisation, Adam with warm-up and
//! cosine decay, evaluation, checkpoints, exact resume.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ndarray::{Array1, Array4};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use serde_json::json;
use tch::{nn, Device, Tensor};
use vq_data::{gather, BatchConfig, BatchIndices, Batcher, Cifar10, LoadOptions, Split};
use vq_model::{evaluate, images_to_tensor, save_grid, Evaluation, VqVae};

use crate::adam::Adam;
use crate::average::WeightAverage;
use crate::checkpoint::{self, RunState};
use crate::config::TrainConfig;

/// The run folder's record of the dataset it trained on ([`vq_data::DatasetInfo`]).
pub const DATASET_FILE: &str = "dataset.json";

/// What a finished run reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    pub steps: usize,
    pub final_eval: Evaluation,
    pub best_psnr: f64,
    pub best_step: usize,
    pub train_seconds: f64,
    pub images_per_second: f64,
}

/// Per-step seed of LibTorch's generator (dead-code restarts draw from it), so that a resumed
/// run draws exactly what the uninterrupted one would have.
fn step_seed(seed: u64, step: usize) -> i64 {
    let mixed = (seed ^ 0x9E37_79B9_7F4A_7C15)
        .wrapping_mul(0xBF58_476D_1CE4_E5B9)
        .wrapping_add(step as u64);
    (mixed >> 1) as i64
}

/// Starts a new run in `run_dir` (which must not hold one already).
pub fn train(config: TrainConfig, run_dir: &Path) -> Result<RunSummary> {
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    if run_dir.join(checkpoint::CONFIG_FILE).exists() {
        bail!(
            "{} already holds a run; continue it with --resume {} or choose another --run-dir",
            run_dir.display(),
            run_dir.display()
        );
    }
    let created = !run_dir.exists();
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    checkpoint::save_config(run_dir, &config)?;
    let result = run(config, run_dir, None);
    if result.is_err() && created && checkpoint::last(run_dir).is_none() {
        // Nothing worth keeping (bad data, say): leave no half-made run folder behind.
        let _ = std::fs::remove_dir_all(run_dir);
    }
    result
}

/// Continues the run in `run_dir` from its last checkpoint, with its saved configuration.
pub fn resume(run_dir: &Path) -> Result<RunSummary> {
    let config: TrainConfig = checkpoint::read_json(&run_dir.join(checkpoint::CONFIG_FILE))?;
    let last = checkpoint::last(run_dir);
    if last.is_none() {
        tracing::warn!(
            "{} has no checkpoint yet: starting it from the beginning",
            run_dir.display()
        );
    }
    run(config, run_dir, last)
}

fn load_split(config: &TrainConfig, split: Split) -> Result<Cifar10> {
    let options = LoadOptions {
        records_per_file: if config.any_record_count {
            None
        } else {
            LoadOptions::default().records_per_file
        },
    };
    vq_data::load_split(&config.data, split, &options)
        .with_context(|| format!("loading the {split} split"))
}

fn run(config: TrainConfig, run_dir: &Path, from: Option<PathBuf>) -> Result<RunSummary> {
    if let Some(n) = config.threads {
        tch::set_num_threads(n);
    }
    let device = config.device.resolve()?;
    tracing::info!(
        "device {device:?}, {} LibTorch threads",
        tch::get_num_threads()
    );
    let train_set = load_split(&config, Split::Train)?;
    let test_set = load_split(&config, Split::Test)?;
    // Which dataset and resolution this run trains on, for whoever uses its checkpoints.
    let dataset = vq_data::describe(&config.data)
        .with_context(|| format!("reading the dataset {}", config.data.display()))?;
    checkpoint::write_json(&run_dir.join(DATASET_FILE), &dataset)?;
    tracing::info!(
        "{} {}×{}: {} train, {} test images from {}; convolutions in {:?}",
        dataset.kind,
        dataset.side,
        dataset.side,
        train_set.len(),
        test_set.len(),
        config.data.display(),
        config.model.compute.kind()
    );

    tch::manual_seed(config.seed as i64);
    let mut vs = nn::VarStore::new(device);
    let mut model = VqVae::new(vs.root(), &config.model);
    let mut adam = Adam::new(&vs);
    let range = config.model.input_range;
    let batch_config = BatchConfig {
        batch_size: config.batch_size,
        seed: config.seed,
        hflip: config.hflip,
        range,
    };

    let mut average = None;
    let mut state = match &from {
        Some(dir) => {
            let state: RunState = checkpoint::read_json(&dir.join(checkpoint::STATE_FILE))?;
            let training = dir.join(checkpoint::TRAINING_FILE);
            if config.weight_ema > 0.0 {
                // model.safetensors holds the average; the trained weights are beside it.
                vq_model::load_weights(&mut vs, &training)?;
                let mut avg = WeightAverage::new(&vs, &config.model, config.weight_ema)?;
                avg.load(&dir.join(checkpoint::MODEL_FILE))?;
                average = Some(avg);
            } else {
                vq_model::load_weights(&mut vs, &dir.join(checkpoint::MODEL_FILE))?;
            }
            adam.load(&dir.join(checkpoint::OPTIMIZER_FILE), state.adam_steps)?;
            tracing::info!("resuming from {} (step {})", dir.display(), state.step);
            state
        }
        None => {
            if config.kmeans_init_images > 0 {
                init_codebook(&mut model, &train_set, &config, device)?;
            }
            if config.weight_ema > 0.0 {
                average = Some(WeightAverage::new(&vs, &config.model, config.weight_ema)?);
            }
            RunState {
                step: 0,
                batcher: Default::default(),
                adam_steps: 0,
                best_psnr: None,
                best_step: None,
                elapsed_s: 0.0,
            }
        }
    };
    let mut batcher = Batcher::restore(train_set.len(), batch_config, state.batcher)?;
    if from.is_some() {
        rewind_metrics(&run_dir.join("metrics.jsonl"), state.step)?;
    }
    let mut metrics = checkpoint::MetricsLog::open(run_dir)?;
    let bar = checkpoint::progress_bar(config.steps, state.step);
    let unit_mse = |mse: f64| mse / (range.scale_offset().0 as f64 * 255.0).powi(2);
    let mut window = Window::default();
    let mut clock = Instant::now();
    let mut last_eval = None;

    while state.step < config.steps {
        let step = state.step;
        tch::manual_seed(step_seed(config.seed, step));
        let batch = batcher.next_batch(train_set.images.view(), &train_set.labels);
        let xs = images_to_tensor(&batch.images, device)?;
        let Some((out, restarted)) =
            train_step(&mut model, &mut adam, &xs, config.lr_at(step), step)
        else {
            bar.abandon();
            return Err(checkpoint::non_finite_loss(run_dir, step));
        };
        if let Some(avg) = &mut average {
            avg.update(adam.steps);
        }
        let loss = out.loss.double_value(&[]);
        state.step += 1;
        state.batcher = batcher.state();
        state.adam_steps = adam.steps;

        window.add(
            unit_mse(out.reconstruction_loss.double_value(&[])),
            loss,
            out.quantized.perplexity(),
            out.quantized.codes_used(),
            restarted,
        );
        bar.inc(1);
        if state.step % config.log_every == 0 || state.step == config.steps {
            let seconds = clock.elapsed().as_secs_f64();
            state.elapsed_s += seconds;
            clock = Instant::now();
            let line = window.flush(
                state.step,
                config.lr_at(step),
                config.batch_size,
                seconds,
                state.elapsed_s,
            );
            bar.set_message(format!(
                "loss {:.4} psnr {:.2} dB ppl {:.0} {:.0} img/s",
                line["loss"].as_f64().unwrap_or(0.0),
                line["psnr"].as_f64().unwrap_or(0.0),
                line["perplexity"].as_f64().unwrap_or(0.0),
                line["images_per_s"].as_f64().unwrap_or(0.0),
            ));
            tracing::debug!("{line}");
            metrics.append(&line)?;
        }
        let final_step = state.step == config.steps;
        if state.step % config.eval_every == 0 || final_step {
            state.elapsed_s += clock.elapsed().as_secs_f64();
            let count = if final_step {
                test_set.len()
            } else {
                config.eval_images.min(test_set.len())
            };
            if let Some(avg) = &mut average {
                avg.sync();
            }
            let served = average.as_ref().map_or(&model, |a| &a.model);
            let eval = evaluate(
                served,
                &test_set,
                count,
                device,
                state.step,
                state.elapsed_s,
            )?;
            save_grid_for(
                served,
                &test_set,
                device,
                &run_dir.join(format!("recon-step-{:06}.png", state.step)),
            )?;
            bar.println(format!(
                "step {}: test PSNR {:.2} dB, SSIM {:.4}, perplexity {:.1}, {} / {} codes used ({} images)",
                eval.step, eval.psnr, eval.ssim, eval.perplexity, eval.codes_used, eval.codebook_size, eval.images
            ));
            metrics.append(&json!({ "eval": eval }))?;
            let best = state.best_psnr.is_none_or(|b| eval.psnr > b);
            if best {
                state.best_psnr = Some(eval.psnr);
                state.best_step = Some(state.step);
            }
            save_checkpoint(run_dir, &vs, average.as_ref(), &adam, &state, &config, best)?;
            last_eval = Some(eval);
            clock = Instant::now();
        } else if state.step % config.checkpoint_every == 0 {
            state.elapsed_s += clock.elapsed().as_secs_f64();
            clock = Instant::now();
            if let Some(avg) = &mut average {
                avg.sync();
            }
            save_checkpoint(
                run_dir,
                &vs,
                average.as_ref(),
                &adam,
                &state,
                &config,
                false,
            )?;
        }
    }
    bar.finish_and_clear();
    drop(metrics);
    crate::curves::plot(&run_dir.join("metrics.jsonl"), &run_dir.join("curves.png"))?;

    let final_eval = match last_eval {
        Some(e) => e,
        None => evaluate(
            average.as_ref().map_or(&model, |a| &a.model),
            &test_set,
            test_set.len(),
            device,
            state.step,
            state.elapsed_s,
        )?,
    };
    // elapsed_s carries over a resume, so the rate is over all steps, not just this session's.
    let summary = RunSummary {
        run_dir: run_dir.to_path_buf(),
        steps: state.step,
        best_psnr: state.best_psnr.unwrap_or(final_eval.psnr),
        best_step: state.best_step.unwrap_or(state.step),
        final_eval,
        train_seconds: state.elapsed_s,
        images_per_second: (state.step * config.batch_size) as f64 / state.elapsed_s.max(1e-9),
    };
    let text = serde_json::to_string_pretty(&summary)?;
    vq_data::write_atomic(&run_dir.join("summary.json"), |w| {
        w.write_all(text.as_bytes())
    })?;
    Ok(summary)
}

/// A checkpoint of the trained weights `vs`, or, when they are averaged, of the average (as the
/// model) and the trained weights beside it.
fn save_checkpoint(
    run_dir: &Path,
    vs: &nn::VarStore,
    average: Option<&WeightAverage>,
    adam: &Adam,
    state: &RunState,
    config: &TrainConfig,
    best: bool,
) -> Result<()> {
    match average {
        Some(avg) => checkpoint::save(run_dir, &avg.vs, Some(vs), adam, state, &config.model, best),
        None => checkpoint::save(run_dir, vs, None, adam, state, &config.model, best),
    }?;
    Ok(())
}

/// One optimisation step on the batch `xs` (0-based `step`): forward, backward, Adam, then the
/// codebook's EMA update and dead-code restarts. Returns the forward pass and the number of
/// codes restarted, or `None` (nothing updated) when the loss is not finite.
pub fn train_step(
    model: &mut VqVae,
    adam: &mut Adam,
    xs: &Tensor,
    lr: f64,
    step: usize,
) -> Option<(vq_model::VqVaeOutput, i64)> {
    let out = model.forward(xs);
    if !out.loss.double_value(&[]).is_finite() {
        return None;
    }
    adam.zero_grad();
    out.loss.backward();
    adam.step(lr);
    let restarted = model.quantizer.update(&out.quantized, step as i64 + 1);
    Some((out, restarted))
}

/// Drops the metric lines written after the checkpoint a resume starts from, so that the file
/// reads as one uninterrupted run.
pub(crate) fn rewind_metrics(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|line| {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                return false; // a line cut short by the crash
            };
            let at = v["step"]
                .as_u64()
                .or_else(|| v["eval"]["step"].as_u64())
                .unwrap_or(0);
            at as usize <= step
        })
        .map(|l| format!("{l}\n"))
        .collect();
    vq_data::write_atomic(path, |w| w.write_all(kept.as_bytes()))?;
    Ok(())
}

/// Running means over a logging window.
#[derive(Default)]
struct Window {
    n: usize,
    mse: f64,
    loss: f64,
    perplexity: f64,
    codes_used: i64,
    restarted: i64,
}

impl Window {
    fn add(&mut self, mse: f64, loss: f64, perplexity: f64, codes_used: i64, restarted: i64) {
        self.n += 1;
        self.mse += mse;
        self.loss += loss;
        self.perplexity += perplexity;
        self.codes_used = codes_used;
        self.restarted += restarted;
    }

    fn flush(
        &mut self,
        step: usize,
        lr: f64,
        batch: usize,
        seconds: f64,
        elapsed: f64,
    ) -> serde_json::Value {
        let n = self.n.max(1) as f64;
        let mse = self.mse / n;
        let line = json!({
            "step": step,
            "loss": self.loss / n,
            "mse": mse,
            "psnr": -10.0 * mse.max(1e-10).log10(),
            "perplexity": self.perplexity / n,
            "codes_used": self.codes_used,
            "restarted_codes": self.restarted,
            "lr": lr,
            "images_per_s": (self.n * batch) as f64 / seconds.max(1e-9),
            "elapsed_s": elapsed,
        });
        *self = Window::default();
        line
    }
}

/// Encodes `kmeans_init_images` training images (a seeded sample) and loads k-means centroids
/// of their encoder outputs as the codebook.
fn init_codebook(
    model: &mut VqVae,
    train: &Cifar10,
    config: &TrainConfig,
    device: Device,
) -> Result<()> {
    let count = config.kmeans_init_images.min(train.len());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(config.seed ^ 0x6b6d);
    let mut indices: Vec<usize> = (0..train.len()).collect();
    indices.shuffle(&mut rng);
    indices.truncate(count);
    let batch = BatchIndices {
        flips: vec![false; count],
        indices,
    };
    let images = images_to_tensor(
        &gather(train.images.view(), &batch, config.model.input_range),
        device,
    )?;
    let started = Instant::now();
    let kmeans = vq_kmeans::KMeansConfig::new(config.model.codebook_size as usize)
        .seed(config.seed)
        .max_iters(config.kmeans_iters)
        .tol(1e-4);
    let fit = model.init_codebook_kmeans(&images, 256, &kmeans)?;
    let empty = fit.cluster_sizes.iter().filter(|&&s| s == 0).count();
    tracing::info!(
        "codebook from k-means on {} encoder outputs of {count} images: {} iterations, inertia {:.4e}, {empty} empty clusters, {:.1} s",
        fit.assignments.len(),
        fit.iterations,
        fit.inertia,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The first 32 test images, in rows of 8, each row followed by its reconstructions.
fn save_grid_for(model: &VqVae, test: &Cifar10, device: Device, path: &Path) -> Result<()> {
    let _guard = tch::no_grad_guard();
    let n = 32.min(test.len());
    let range = model.config.input_range;
    let batch = BatchIndices {
        indices: (0..n).collect(),
        flips: vec![false; n],
    };
    let xs = images_to_tensor(&gather(test.images.view(), &batch, range), device)?;
    let recon = model.forward(&xs).reconstruction;
    let mut rows = Vec::new();
    for r in 0..n.div_ceil(8) as i64 {
        let len = 8.min(n as i64 - r * 8);
        rows.push(xs.narrow(0, r * 8, len));
        rows.push(recon.narrow(0, r * 8, len));
    }
    let refs: Vec<&Tensor> = rows.iter().collect();
    save_grid(&refs, 8, range, path)?;
    Ok(())
}

/// Builds a small CIFAR-10-shaped dataset with smooth, learnable images (tests and demos).
pub fn synthetic_split(n: usize, seed: u64) -> Cifar10 {
    use rand::Rng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let params: Vec<[f32; 6]> = (0..n)
        .map(|_| std::array::from_fn(|_| rng.random::<f32>()))
        .collect();
    let images = Array4::from_shape_fn((n, 3, 32, 32), |(i, c, y, x)| {
        let p = params[i];
        let v = 0.5
            + 0.5
                * ((x as f32 * p[0] * 0.4
                    + y as f32 * p[1] * 0.4
                    + c as f32 * p[2] * 2.0
                    + p[3] * 6.0)
                    .sin());
        (v * 255.0 * (0.5 + 0.5 * p[4])) as u8
    });
    let labels = Array1::from_shape_fn(n, |i| (i % 10) as u8);
    Cifar10 {
        images,
        labels,
        class_names: vq_data::CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
    }
}
