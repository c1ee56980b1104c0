//! The seam between the training loop and what it trains: a [`Task`] supplies one training
//! step, one evaluation and what goes into a checkpoint; the loop ([`crate::runner`]) does the
//! rest (threads, device, seeds, batches, logs, evaluations, `best`, checkpoints, exact resume,
//! curves, summary) the same way for every task.

use std::path::Path;

use anyhow::Result;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tch::Device;
use vq_data::BatchIndices;
use vq_store::RunDir;

use crate::config::RunConfig;
use crate::runner::RunState;

/// How the values of one figure over a logging window become one logged value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    Mean,
    /// The window's last value.
    Last,
    Sum,
}

/// A figure of one training step, logged under `name`.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: &'static str,
    pub value: f64,
    pub agg: Agg,
}

impl Metric {
    pub fn mean(name: &'static str, value: f64) -> Self {
        Metric {
            name,
            value,
            agg: Agg::Mean,
        }
    }
    pub fn last(name: &'static str, value: f64) -> Self {
        Metric {
            name,
            value,
            agg: Agg::Last,
        }
    }
    pub fn sum(name: &'static str, value: f64) -> Self {
        Metric {
            name,
            value,
            agg: Agg::Sum,
        }
    }
}

/// What one training step reports.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// The value the optimizer minimised (logged as `loss`, averaged over the window).
    pub loss: f64,
    pub metrics: Vec<Metric>,
}

/// An evaluation's figures.
///
/// Its `Display` is the one line the person watching the run reads.
pub trait Evaluation:
    Serialize + DeserializeOwned + Clone + std::fmt::Debug + std::fmt::Display
{
    /// Higher is better: the evaluation with the highest score is the run's `best`.
    fn score(&self) -> f64;
}

/// Where a curve's points come from in `metrics.jsonl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A field of the logged training lines.
    Train(&'static str),
    /// A field of the `{"eval": ...}` lines.
    Eval(&'static str),
}

/// One curve of a panel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Curve {
    pub label: &'static str,
    pub source: Source,
}

impl Curve {
    /// A curve of the training lines' `key`.
    pub fn train(label: &'static str, key: &'static str) -> Self {
        Curve {
            label,
            source: Source::Train(key),
        }
    }

    /// A curve of the evaluations' `key`.
    pub fn eval(label: &'static str, key: &'static str) -> Self {
        Curve {
            label,
            source: Source::Eval(key),
        }
    }
}

/// One panel of `curves.png`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panel {
    pub title: &'static str,
    /// A logarithmic y axis, for figures that fall by orders of magnitude (a loss).
    pub log_y: bool,
    pub curves: Vec<Curve>,
}

/// Something the training loop can train.
pub trait Task: Sized {
    /// The run's `config.json`.
    type Config: RunConfig;
    type Eval: Evaluation;
    /// What one training item is called in logs ("images", "grids").
    const ITEMS: &'static str;
    /// How its runs are shown ([`crate::view`]).
    const KIND: crate::view::RunKind;

    /// Builds the task for the run in `run`: data, model, optimizer. A new run (`fresh`) also
    /// does its data-driven initialisation; a resumed one is then loaded from its checkpoint.
    fn build(config: &Self::Config, run: &RunDir, device: Device, fresh: bool) -> Result<Self>;

    /// Number of training items the batches are drawn from.
    fn train_len(&self) -> usize;

    /// Whether batches flip items left-right at random.
    fn flips(&self) -> bool {
        false
    }

    /// One training step on `batch` (0-based `step`) at learning rate `lr`. `None`: the loss
    /// was not finite, and nothing was updated.
    fn step(&mut self, step: usize, lr: f64, batch: &BatchIndices) -> Result<Option<StepReport>>;

    /// Adds figures derived from the window's aggregated ones to a log line (e.g. a PSNR from
    /// a mean squared error).
    fn finish_log_line(&self, _line: &mut serde_json::Map<String, serde_json::Value>) {}

    /// Evaluates the model after `step` steps (`last`: the run's final evaluation, over the
    /// whole test split); may write pictures into the run folder.
    fn evaluate(
        &mut self,
        run: &RunDir,
        step: usize,
        last: bool,
        elapsed_s: f64,
    ) -> Result<Self::Eval>;

    /// Writes the task's files of a checkpoint (weights, optimizer state, the model's
    /// `config.json`) into `dir`, a folder being written; the loop adds `state.json`.
    fn save(&mut self, dir: &Path) -> Result<()>;

    /// Optimizer updates applied so far (saved in `state.json`).
    fn optimizer_steps(&self) -> i64;

    /// Every tensor of the task's state that must be the same on every rank of a data-parallel
    /// job (weights, codebook statistics, averages): rank 0's are broadcast at the start.
    /// Empty: the task does not train data-parallel.
    fn replicated(&self) -> Vec<tch::Tensor> {
        Vec::new()
    }

    /// Restores the task from the checkpoint folder `dir` that `state` was read from.
    fn load(&mut self, dir: &Path, state: &RunState) -> Result<()>;

    /// Figures measured once at the end of a run, when its config asks for them (FID costs
    /// minutes on a CPU); they go into `summary.json` as `"generation"`.
    fn generation_figures(&mut self, _run: &RunDir) -> Result<Option<serde_json::Value>> {
        Ok(None)
    }
}

/// Adds the PSNR of a log line's mean squared error (on `[0, 1]` pixels) to it.
pub fn add_psnr(line: &mut serde_json::Map<String, serde_json::Value>) {
    let mse = line["mse"].as_f64().unwrap_or(f64::NAN);
    line.insert("psnr".into(), (-10.0 * mse.max(1e-10).log10()).into());
}
