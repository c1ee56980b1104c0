//! The training loop, once for every [`Task`]: threads and device, a new run or an exact resume,
//! seeded batches, the step, logs and progress, evaluations, `best`, checkpoints, curves and the
//! summary.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tch::Device;
use vq_data::{BatchConfig, Batcher, BatcherState};
use vq_store::names::STATE_FILE;
use vq_store::RunDir;

use crate::config::RunConfig;
use crate::task::{Agg, Evaluation, Metric, StepReport, Task};

/// Where training stands; with the task's checkpoint files, all a resume needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Steps completed.
    pub step: usize,
    /// Where the batches stand (a function of the step; kept for a check on resume).
    #[serde(default)]
    pub batcher: BatcherState,
    /// Optimizer updates applied.
    pub adam_steps: i64,
    /// Best evaluation score so far (higher is better) and its step. Format-1 VQ-VAE states
    /// called the score `best_psnr`.
    #[serde(default, alias = "best_psnr")]
    pub best_score: Option<f64>,
    #[serde(default)]
    pub best_step: Option<usize>,
    /// Training wall-clock seconds so far (across resumes).
    pub elapsed_s: f64,
    /// A format-1 prior state's best test NLL (bits per code); its score is the negative.
    #[serde(default, skip_serializing)]
    best_bits_per_code: Option<f64>,
}

impl RunState {
    fn new() -> Self {
        RunState {
            step: 0,
            batcher: BatcherState::default(),
            adam_steps: 0,
            best_score: None,
            best_step: None,
            elapsed_s: 0.0,
            best_bits_per_code: None,
        }
    }

    /// Reads a checkpoint's `state.json` (either format).
    pub fn read(checkpoint: &Path) -> Result<Self> {
        let mut state: RunState = vq_store::read_json(&checkpoint.join(STATE_FILE), "a run state")?;
        if let (None, Some(bits)) = (state.best_score, state.best_bits_per_code.take()) {
            state.best_score = Some(-bits);
        }
        Ok(state)
    }
}

pub use vq_report::RunSummary;

/// Starts a new run of `T` in `run_dir` (which must not hold one already). If the start fails
/// before the first checkpoint, a run folder this call created is removed again.
pub fn train<T: Task>(config: T::Config, run_dir: &Path) -> Result<RunSummary<T::Eval>> {
    config
        .check()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let run = RunDir::new(run_dir);
    if !crate::dist::Dist::current()?.is_main() {
        // Rank 0 makes the folder and writes its files; the others only train.
        return run_loop::<T>(&config, &run, None);
    }
    let created = run.create()?;
    let result = vq_store::write_config(&run.config(), &config)
        .map_err(anyhow::Error::from)
        .and_then(|()| run_loop::<T>(&config, &run, None));
    if result.is_err() && run.last().is_none() {
        // Nothing worth keeping (bad data, say): leave no half-made run behind.
        if created {
            let _ = std::fs::remove_dir_all(run_dir);
        } else {
            let _ = std::fs::remove_file(run.config());
        }
    }
    result
}

/// Continues the run of `T` in `run_dir` from its last checkpoint, with its saved configuration.
pub fn resume<T: Task>(run_dir: &Path) -> Result<RunSummary<T::Eval>> {
    resume_to::<T>(run_dir, None)
}

/// [`resume`], and with `extend_to` train on to that step in all: the run's recorded step
/// count is raised first (its `config.json` rewritten), so its learning-rate schedule stretches
/// to the new end from the step it resumes at.
pub fn resume_to<T: Task>(run_dir: &Path, extend_to: Option<usize>) -> Result<RunSummary<T::Eval>> {
    let run = RunDir::new(run_dir);
    let mut config: T::Config = vq_store::read_config(&run.config())?;
    if let Some(steps) = extend_to {
        let recorded = config.schedule().steps;
        if steps < recorded {
            anyhow::bail!(
                "--extend-to {steps}: {} already runs to step {recorded}; a run is extended, never shortened",
                run_dir.display()
            );
        }
        if steps > recorded {
            config.schedule_mut().steps = steps;
            if crate::dist::Dist::current()?.is_main() {
                vq_store::write_config(&run.config(), &config)?;
            }
            tracing::info!(
                "{}: extended from {recorded} to {steps} steps",
                run_dir.display()
            );
        }
    }
    let last = run.last();
    if last.is_none() {
        tracing::warn!(
            "{} has no checkpoint yet: starting it from the beginning",
            run_dir.display()
        );
    }
    run_loop::<T>(&config, &run, last)
}

/// Per-step seed of LibTorch's generator (dead-code restarts, dropout draw from it), so that a
/// resumed run draws exactly what the uninterrupted one would have.
fn step_seed(seed: u64, step: usize) -> i64 {
    let mixed = (seed ^ 0x9E37_79B9_7F4A_7C15)
        .wrapping_mul(0xBF58_476D_1CE4_E5B9)
        .wrapping_add(step as u64);
    (mixed >> 1) as i64
}

fn run_loop<T: Task>(
    config: &T::Config,
    run: &RunDir,
    from: Option<PathBuf>,
) -> Result<RunSummary<T::Eval>> {
    let dist = crate::dist::Dist::current()?;
    let main = dist.is_main();
    let runtime = config.runtime();
    let schedule = config.schedule().clone();
    if let Some(n) = runtime.threads {
        tch::set_num_threads(n);
    } else if let Some(n) = std::env::var("VQVAE_RANK_THREADS")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    {
        // A rank `vq-train --nproc` started: its share of the machine's cores.
        tch::set_num_threads(n.max(1));
    }
    let device: Device = dist.rank_device(runtime.device.resolve()?);
    let backend = dist.connect(device)?;
    tracing::info!(
        "device {device:?}, {} LibTorch threads",
        tch::get_num_threads()
    );
    // Which dataset and resolution this run trains on, for whoever uses its checkpoints.
    let data = &config.data().path;
    if config.reads_dataset() {
        let dataset = vq_data::describe(data)
            .with_context(|| format!("reading the dataset {}", data.display()))?;
        if main {
            vq_store::write_json(&run.data(), &dataset)?;
        }
    }
    if let Some(backend) = backend {
        if main {
            vq_store::write_json(
                &run.path().join("distributed.json"),
                &json!({
                    "world_size": dist.world_size,
                    "engine": crate::dist::engine(backend),
                    "backend": backend.name(),
                    "global_batch_size": schedule.batch_size,
                }),
            )?;
        }
    }

    tch::manual_seed(schedule.seed as i64);
    let mut task = T::build(config, run, device, from.is_none())?;
    let mut state = match &from {
        Some(dir) => {
            let state = RunState::read(dir)?;
            task.load(dir, &state)?;
            if main {
                run.rewind_metrics(state.step)?;
            }
            tracing::info!("resuming from {} (step {})", dir.display(), state.step);
            state
        }
        None => RunState::new(),
    };
    // Every rank starts from rank 0's state (its k-means codebook, or the checkpoint all read).
    if dist.world_size > 1 {
        let replicated = task.replicated();
        dist.broadcast(&replicated)?;
        tracing::info!(
            "rank {} of {}: state {} after the broadcast",
            dist.rank,
            dist.world_size,
            crate::dist::Dist::digest(&replicated)
        );
    }
    let batch_config = BatchConfig {
        batch_size: schedule.batch_size,
        seed: schedule.seed,
        hflip: task.flips(),
        ..BatchConfig::default()
    };
    let mut batcher = Batcher::restore(task.train_len(), batch_config, state.batcher)?;
    // Rank 0 writes the logs; with `None` the other ranks write nothing.
    let mut metrics = main.then(|| run.metrics_log()).transpose()?;
    // The same figures for TensorBoard (`tensorboard --logdir runs/`), and the pictures.
    let mut board = main
        .then(|| vq_store::tensorboard::EventWriter::create(run.path()))
        .transpose()?;
    let bar = crate::view::progress_bar(schedule.steps, state.step);
    let mut window = Window::default();
    let mut clock = Instant::now();
    let mut last_eval = None;
    // Data-parallel: the all-reduces' bytes and time at the last log line.
    let mut reduced_at_log = (vq_model::collective::all_reduce_totals(), state.step);

    while state.step < schedule.steps {
        let step = state.step;
        // Each rank draws its own dropout masks (rank 0 the ones one process draws); what must
        // agree across ranks (dead-code restarts) is broadcast from rank 0.
        tch::manual_seed(step_seed(schedule.seed, step).wrapping_add(dist.rank as i64));
        let batch = dist.shard(batcher.next_indices())?;
        let lr = schedule.lr_at(step);
        let Some(report) = task.step(step, lr, &batch)? else {
            bar.abandon();
            return Err(non_finite_loss(run, step));
        };
        dist.check()?;
        state.step += 1;
        state.batcher = batcher.state();
        state.adam_steps = task.optimizer_steps();
        window.add(report);
        bar.inc(1);

        let last_step = state.step == schedule.steps;
        if state.step % schedule.log_every == 0 || last_step {
            let seconds = clock.elapsed().as_secs_f64();
            state.elapsed_s += seconds;
            clock = Instant::now();
            let mut line = window.flush();
            line.insert("step".into(), json!(state.step));
            line.insert("lr".into(), json!(lr));
            let rate = line["items"].as_f64().unwrap_or(0.0) * schedule.batch_size as f64;
            line.remove("items");
            line.insert(
                format!("{}_per_s", T::ITEMS),
                json!(rate / seconds.max(1e-9)),
            );
            line.insert("elapsed_s".into(), json!(state.elapsed_s));
            if dist.world_size > 1 {
                // What the ranks exchanged per step since the last line (gradients, codebook
                // statistics, flags; an evaluation's sums land in the next line), and the time
                // spent in the calls, waiting for the slowest rank included.
                let ((bytes, seconds), step) = reduced_at_log;
                let now = vq_model::collective::all_reduce_totals();
                let steps = (state.step - step).max(1) as f64;
                line.insert(
                    "allreduce_bytes_per_step".into(),
                    json!((now.0 - bytes) as f64 / steps),
                );
                line.insert(
                    "allreduce_ms_per_step".into(),
                    json!((now.1 - seconds) * 1e3 / steps),
                );
                reduced_at_log = (now, state.step);
            }
            task.finish_log_line(&mut line);
            bar.set_message(format!(
                "{} {:.0} {}/s",
                T::KIND.progress_message(&line),
                rate / seconds.max(1e-9),
                T::ITEMS
            ));
            let line = Value::Object(line);
            tracing::debug!("{line}");
            if let (Some(metrics), Some(board)) = (&mut metrics, &mut board) {
                metrics.append(&line)?;
                board.scalars(state.step as i64, &crate::view::scalars("train", &line))?;
            }
        }
        let evaluate = state.step % schedule.eval_every == 0 || last_step;
        if evaluate || state.step % schedule.checkpoint_every == 0 {
            state.elapsed_s += clock.elapsed().as_secs_f64();
            let mut best = false;
            if evaluate {
                let eval = task.evaluate(run, state.step, last_step, state.elapsed_s)?;
                // A rank lost during the evaluation's all-reduce.
                dist.check()?;
                bar.println(format!("step {}: {}", state.step, eval));
                if let (Some(metrics), Some(board)) = (&mut metrics, &mut board) {
                    metrics.append(&json!({ "eval": eval }))?;
                    board.scalars(
                        state.step as i64,
                        &crate::view::scalars("eval", &serde_json::to_value(&eval)?),
                    )?;
                    for (tag, width, height, png) in crate::view::pictures_of_step(run, state.step)
                    {
                        board.image(&tag, state.step as i64, width, height, png)?;
                    }
                }
                best = state.best_score.is_none_or(|b| eval.score() > b);
                if best {
                    state.best_score = Some(eval.score());
                    state.best_step = Some(state.step);
                }
                last_eval = Some(eval);
            }
            if main {
                run.save_checkpoint(state.step, best, |dir| {
                    task.save(dir).map_err(|e| vq_store::StoreError::Invalid {
                        path: dir.to_path_buf(),
                        reason: format!("{e:#}"),
                    })?;
                    vq_store::write_json(&dir.join(STATE_FILE), &state)
                })?;
            }
            clock = Instant::now();
        }
    }
    bar.finish_and_clear();
    drop(metrics);
    if dist.world_size > 1 {
        tracing::info!(
            "rank {} of {}: final state {}",
            dist.rank,
            dist.world_size,
            crate::dist::Dist::digest(&task.replicated())
        );
    }
    if main {
        crate::curves::plot(&run.metrics(), &T::KIND.panels(), &run.curves())?;
    }

    let final_eval = match last_eval {
        Some(e) => e,
        // A resume of a finished run: nothing trained, evaluate once more for the summary.
        None => {
            let eval = task.evaluate(run, state.step, true, state.elapsed_s)?;
            dist.check()?;
            eval
        }
    };
    let generation = task.generation_figures(run)?;
    let summary = RunSummary {
        generation,
        run_dir: run.path().to_path_buf(),
        steps: state.step,
        items: T::ITEMS.to_string(),
        best_score: state.best_score.unwrap_or(final_eval.score()),
        best_step: state.best_step.unwrap_or(state.step),
        final_eval,
        train_seconds: state.elapsed_s,
        // elapsed_s carries over a resume, so the rate is over all steps.
        items_per_second: (state.step * schedule.batch_size) as f64 / state.elapsed_s.max(1e-9),
    };
    if main {
        vq_store::write_json(&run.summary(), &summary)?;
    }
    Ok(summary)
}

/// The error that stops a run whose loss is not finite at 0-based `step`; it names the last good
/// checkpoint, which is kept.
fn non_finite_loss(run: &RunDir, step: usize) -> anyhow::Error {
    let kept = run
        .last()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "none yet".into());
    anyhow::anyhow!(
        "the loss became NaN or infinite at step {}; stopping (last good checkpoint: {kept})",
        step + 1
    )
}

/// `x` as a JSON integer when it is one.
fn whole(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// The step reports of one logging window.
#[derive(Default)]
struct Window {
    reports: Vec<StepReport>,
}

impl Window {
    fn add(&mut self, report: StepReport) {
        self.reports.push(report);
    }

    /// The window's aggregated figures (`loss`, each metric, and `items`: the number of steps),
    /// and a fresh window.
    fn flush(&mut self) -> Map<String, Value> {
        let reports = std::mem::take(&mut self.reports);
        let n = reports.len().max(1) as f64;
        let mut line = Map::new();
        line.insert(
            "loss".into(),
            json!(reports.iter().map(|r| r.loss).sum::<f64>() / n),
        );
        let mut order: Vec<&'static str> = Vec::new();
        let mut values: std::collections::HashMap<&'static str, (Agg, Vec<f64>)> =
            Default::default();
        for Metric { name, value, agg } in reports.iter().flat_map(|r| r.metrics.iter()) {
            let entry = values.entry(name).or_insert_with(|| {
                order.push(name);
                (*agg, Vec::new())
            });
            entry.1.push(*value);
        }
        for name in order {
            let (agg, v) = &values[name];
            let value = match agg {
                Agg::Mean => json!(v.iter().sum::<f64>() / v.len().max(1) as f64),
                // Counts stay whole numbers in the log.
                Agg::Last => whole(*v.last().unwrap_or(&f64::NAN)),
                Agg::Sum => whole(v.iter().sum()),
            };
            line.insert(name.into(), value);
        }
        line.insert("items".into(), json!(reports.len()));
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_means_lasts_and_sums_its_steps() {
        let mut w = Window::default();
        for (loss, used, restarted) in [(1.0, 10.0, 1.0), (3.0, 12.0, 2.0)] {
            w.add(StepReport {
                loss,
                metrics: vec![
                    Metric::mean("mse", loss / 10.0),
                    Metric::last("codes_used", used),
                    Metric::sum("restarted_codes", restarted),
                ],
            });
        }
        let line = w.flush();
        assert_eq!(line["loss"], json!(2.0));
        assert!((line["mse"].as_f64().unwrap() - 0.2).abs() < 1e-12);
        assert_eq!(line["codes_used"], json!(12));
        assert_eq!(line["restarted_codes"], json!(3));
        assert_eq!(line["items"], json!(2));
        assert_eq!(w.flush()["items"], json!(0), "a fresh window");
    }

    #[test]
    fn states_of_both_formats_read_with_their_best_score() {
        let dir = tempfile::tempdir().unwrap();
        let write = |text: &str| std::fs::write(dir.path().join(STATE_FILE), text).unwrap();
        // A format-1 VQ-VAE state: the score was the PSNR.
        write(
            r#"{"step": 7, "batcher": {"epoch": 1, "position": 64}, "adam_steps": 7,
                "best_psnr": 21.5, "best_step": 6, "elapsed_s": 3.0}"#,
        );
        let s = RunState::read(dir.path()).unwrap();
        assert_eq!(
            (s.step, s.best_score, s.best_step),
            (7, Some(21.5), Some(6))
        );
        assert_eq!(
            s.batcher,
            BatcherState {
                epoch: 1,
                position: 64
            }
        );
        // A format-1 prior state: no batcher, the best NLL in bits (lower is better).
        write(
            r#"{"step": 3000, "adam_steps": 3000, "best_bits_per_code": 7.08,
                "best_step": 3000, "elapsed_s": 1.0}"#,
        );
        let s = RunState::read(dir.path()).unwrap();
        assert_eq!(s.best_score, Some(-7.08));
        assert_eq!(s.batcher, BatcherState::default());
        // What this build writes reads back the same.
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("bits"), "{json}");
        write(&json);
        assert_eq!(RunState::read(dir.path()).unwrap(), s);
        write("{\"step\": ");
        let err = RunState::read(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("state.json") && err.contains("not a run state"),
            "{err}"
        );
    }
}
