//! Run folders and crash-safe checkpoints.
//!
//! ```text
//! RUN/config.json            the resolved TrainConfig
//! RUN/metrics.jsonl          one JSON object per log line or evaluation
//! RUN/recon-step-NNNNNN.png  test images (odd rows) above their reconstructions (even rows)
//! RUN/curves.png             loss, PSNR and perplexity against steps
//! RUN/checkpoints/step-NNNNNN/{model.safetensors, optimizer.safetensors, state.json, config.json}
//!                                 (+ training.safetensors when the weights are averaged)
//! RUN/checkpoints/last -> step-NNNNNN    (symlink, replaced atomically)
//! RUN/checkpoints/best -> step-NNNNNN
//! ```
//! A checkpoint folder is written under a temporary name and renamed when complete; the `last`
//! and `best` links are swapped by renaming a new link over the old one. A crash at any point
//! leaves the previous checkpoint intact and linked.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tch::nn;
use vq_data::BatcherState;

use crate::adam::Adam;
use crate::config::TrainConfig;

pub const MODEL_FILE: &str = "model.safetensors";
/// The weights being trained, when `model.safetensors` holds their average instead.
pub const TRAINING_FILE: &str = "training.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "state.json";
pub const CONFIG_FILE: &str = "config.json";

/// Where training stands; with the weights and the optimizer moments, all a resume needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Steps completed.
    pub step: usize,
    pub batcher: BatcherState,
    pub adam_steps: i64,
    /// Best evaluation PSNR so far (dB) and its step.
    pub best_psnr: Option<f64>,
    pub best_step: Option<usize>,
    /// Training wall-clock seconds so far (across resumes).
    pub elapsed_s: f64,
}

/// What a checkpoint's state knows: the steps done (its folder is named after them).
pub trait HasStep {
    fn step(&self) -> usize;
}

impl HasStep for RunState {
    fn step(&self) -> usize {
        self.step
    }
}

/// The run's `metrics.jsonl`, opened for appending: one JSON object per line.
#[derive(Debug)]
pub struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
}

impl MetricsLog {
    pub fn open(run: &Path) -> Result<Self> {
        let path = run.join("metrics.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(MetricsLog { file, path })
    }

    /// Appends `line` (one write, so a crash cuts at most the last line, which a resume drops).
    pub fn append(&mut self, line: &serde_json::Value) -> Result<()> {
        use std::io::Write;
        self.file
            .write_all(format!("{line}\n").as_bytes())
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

/// The progress bar of a run of `steps` steps, `done` of them already done.
pub fn progress_bar(steps: usize, done: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(steps as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template"),
    );
    bar.set_position(done as u64);
    bar
}

/// The error that stops a run whose loss is not finite at 0-based `step`; it names the last good
/// checkpoint, which is kept.
pub fn non_finite_loss(run: &Path, step: usize) -> anyhow::Error {
    let kept = last(run)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "none yet".into());
    anyhow::anyhow!(
        "the loss became NaN or infinite at step {}; stopping (last good checkpoint: {kept})",
        step + 1
    )
}

pub fn checkpoints_dir(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    vq_data::write_atomic(path, |w| w.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: not a valid file of its kind", path.display()))
}

pub fn save_config(run: &Path, config: &TrainConfig) -> Result<()> {
    write_json(&run.join(CONFIG_FILE), config)
}

/// Writes `checkpoints/step-NNNNNN/` completely, then points `last` (and `best` if asked) at it,
/// and removes checkpoints no link points to (keeping the newest). `vs` is the model users get
/// (`model.safetensors`); `training`, when given, the weights being trained, if they differ (the
/// model is their average).
#[allow(clippy::too_many_arguments)]
pub fn save<S: Serialize + HasStep, C: Serialize>(
    run: &Path,
    vs: &nn::VarStore,
    training: Option<&nn::VarStore>,
    adam: &Adam,
    state: &S,
    model_config: &C,
    best: bool,
) -> Result<PathBuf> {
    let dir = checkpoints_dir(run);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = format!("step-{:06}", state.step());
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".tmp-{name}-"))
        .tempdir_in(&dir)
        .with_context(|| format!("creating a temporary folder in {}", dir.display()))?;
    vs.save(tmp.path().join(MODEL_FILE))
        .with_context(|| format!("writing the weights into {}", tmp.path().display()))?;
    let mut written = vec![MODEL_FILE, OPTIMIZER_FILE];
    if let Some(training) = training {
        training
            .save(tmp.path().join(TRAINING_FILE))
            .with_context(|| format!("writing the weights into {}", tmp.path().display()))?;
        written.push(TRAINING_FILE);
    }
    adam.save(&tmp.path().join(OPTIMIZER_FILE))?;
    write_json(&tmp.path().join(STATE_FILE), state)?;
    write_json(&tmp.path().join(CONFIG_FILE), model_config)?;
    for f in written {
        std::fs::File::open(tmp.path().join(f)).and_then(|f| f.sync_all())?;
    }
    let final_dir = dir.join(&name);
    if final_dir.exists() {
        // A folder of this step from before a crash (written, but `last` not yet moved to it):
        // moved aside in one rename, so that a crash now cannot leave it half deleted.
        let old = dir.join(format!(".tmp-old-{name}-{}", std::process::id()));
        std::fs::rename(&final_dir, &old)
            .with_context(|| format!("moving the old {} aside", final_dir.display()))?;
        std::fs::remove_dir_all(&old)?;
    }
    let tmp = tmp.keep();
    std::fs::rename(&tmp, &final_dir)
        .with_context(|| format!("renaming {} to {}", tmp.display(), final_dir.display()))?;
    point(&dir, "last", &name)?;
    if best {
        point(&dir, "best", &name)?;
    }
    prune(&dir, &name)?;
    Ok(final_dir)
}

#[cfg(unix)]
fn point(dir: &Path, link: &str, target: &str) -> Result<()> {
    let tmp = dir.join(format!(".tmp-{link}-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .with_context(|| format!("linking {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(link))
        .with_context(|| format!("updating {}/{link}", dir.display()))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).ok();
    Ok(())
}

#[cfg(not(unix))]
fn point(_dir: &Path, _link: &str, _target: &str) -> Result<()> {
    anyhow::bail!("run folders need symlinks (Linux, macOS)")
}

fn link_target(dir: &Path, link: &str) -> Option<String> {
    std::fs::read_link(dir.join(link))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// Removes step folders that neither `last` nor `best` points to, and stale temporaries.
fn prune(dir: &Path, newest: &str) -> Result<()> {
    let keep: Vec<String> = ["last", "best"]
        .iter()
        .filter_map(|l| link_target(dir, l))
        .chain([newest.to_string()])
        .collect();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale_step = name.starts_with("step-") && !keep.contains(&name);
        // One process writes a run: any temporary (a checkpoint folder, a link) is a crash leftover.
        let stale_tmp = name.starts_with(".tmp-");
        if stale_tmp {
            let _ = std::fs::remove_dir_all(entry.path());
        } else if stale_step {
            // Renamed first, so that a crash during the removal leaves no half checkpoint
            // under a step name, only a temporary that the next prune removes.
            let doomed = dir.join(format!(".tmp-pruned-{name}"));
            if std::fs::rename(entry.path(), &doomed).is_ok() {
                let _ = std::fs::remove_dir_all(&doomed);
            }
        }
    }
    Ok(())
}

/// The checkpoint `last` points to, if any.
pub fn last(run: &Path) -> Option<PathBuf> {
    let dir = checkpoints_dir(run);
    link_target(&dir, "last")
        .map(|t| dir.join(t))
        .filter(|p| p.join(STATE_FILE).is_file())
}
