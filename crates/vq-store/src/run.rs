//! Run folders: their files, crash-safe checkpoints with `last` / `best` links, the metrics log.

use std::path::{Path, PathBuf};

use crate::names::{
    BEST, CHECKPOINTS_DIR, CODES_DIR, CONFIG_FILE, CURVES_FILE, DATA_FILE, LAST, METRICS_FILE,
    STATE_FILE, SUMMARY_FILE,
};
use crate::StoreError;

/// A run folder (see the crate documentation for its layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RunDir { root: root.into() }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }

    pub fn data(&self) -> PathBuf {
        self.root.join(DATA_FILE)
    }

    pub fn metrics(&self) -> PathBuf {
        self.root.join(METRICS_FILE)
    }

    pub fn summary(&self) -> PathBuf {
        self.root.join(SUMMARY_FILE)
    }

    pub fn curves(&self) -> PathBuf {
        self.root.join(CURVES_FILE)
    }

    pub fn codes(&self) -> PathBuf {
        self.root.join(CODES_DIR)
    }

    pub fn checkpoints(&self) -> PathBuf {
        self.root.join(CHECKPOINTS_DIR)
    }

    /// `RUN/NAME-step-NNNNNN.png`: a picture of the evaluation at `step`.
    pub fn picture(&self, name: &str, step: usize) -> PathBuf {
        self.root.join(format!("{name}-step-{step:06}.png"))
    }

    /// Whether a run was started here (its config is written first).
    pub fn holds_run(&self) -> bool {
        self.config().exists()
    }

    /// Makes the folder of a new run; refuses one that holds a run already. Returns whether the
    /// folder itself was created (and so may be removed again if the start fails).
    pub fn create(&self) -> Result<bool, StoreError> {
        if self.holds_run() {
            return Err(StoreError::RunExists(self.root.clone()));
        }
        let created = !self.root.exists();
        std::fs::create_dir_all(&self.root).map_err(|e| StoreError::Io {
            path: self.root.clone(),
            error: e,
        })?;
        Ok(created)
    }

    /// The checkpoint `last` points to, if any.
    pub fn last(&self) -> Option<PathBuf> {
        self.linked(LAST)
    }

    /// The checkpoint `best` points to, if any.
    pub fn best(&self) -> Option<PathBuf> {
        self.linked(BEST)
    }

    fn linked(&self, link: &str) -> Option<PathBuf> {
        let dir = self.checkpoints();
        link_target(&dir, link)
            .map(|t| dir.join(t))
            .filter(|p| p.join(STATE_FILE).is_file())
    }

    /// Writes `checkpoints/step-NNNNNN/` completely (`fill` writes its files into the folder it
    /// is given; every file there is synced), then points `last` (and `best` if asked) at it and
    /// removes the checkpoints no link points to.
    pub fn save_checkpoint(
        &self,
        step: usize,
        best: bool,
        fill: impl FnOnce(&Path) -> Result<(), StoreError>,
    ) -> Result<PathBuf, StoreError> {
        let dir = self.checkpoints();
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        let name = format!("step-{step:06}");
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".tmp-{name}-"))
            .tempdir_in(&dir)
            .map_err(|e| StoreError::io(&dir, e))?;
        fill(tmp.path())?;
        for entry in std::fs::read_dir(tmp.path()).map_err(|e| StoreError::io(tmp.path(), e))? {
            let path = entry.map_err(|e| StoreError::io(tmp.path(), e))?.path();
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| StoreError::io(&path, e))?;
        }
        let final_dir = dir.join(&name);
        if final_dir.exists() {
            // A folder of this step from before a crash (written, but `last` not yet moved to
            // it): moved aside in one rename, so that a crash now cannot leave it half deleted.
            let old = dir.join(format!(".tmp-old-{name}-{}", std::process::id()));
            std::fs::rename(&final_dir, &old).map_err(|e| StoreError::io(&final_dir, e))?;
            std::fs::remove_dir_all(&old).map_err(|e| StoreError::io(&old, e))?;
        }
        let tmp = tmp.keep();
        std::fs::rename(&tmp, &final_dir).map_err(|e| StoreError::io(&final_dir, e))?;
        point(&dir, LAST, &name)?;
        if best {
            point(&dir, BEST, &name)?;
        }
        prune(&dir, &name)?;
        Ok(final_dir)
    }

    /// Drops the metric lines written after `step` (where a resume starts), so that the file
    /// reads as one uninterrupted run; a line cut short by a crash goes too.
    pub fn rewind_metrics(&self, step: usize) -> Result<(), StoreError> {
        let path = self.metrics();
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let kept: String = text
            .lines()
            .filter(|line| {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    return false;
                };
                let at = v["step"]
                    .as_u64()
                    .or_else(|| v["eval"]["step"].as_u64())
                    .unwrap_or(0);
                at as usize <= step
            })
            .map(|l| format!("{l}\n"))
            .collect();
        vq_data::write_atomic(&path, |w| w.write_all(kept.as_bytes()))?;
        Ok(())
    }

    /// The metrics log, opened for appending.
    pub fn metrics_log(&self) -> Result<MetricsLog, StoreError> {
        let path = self.metrics();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        Ok(MetricsLog { file, path })
    }
}

/// A run's `metrics.jsonl`, opened for appending: one JSON object per line.
#[derive(Debug)]
pub struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
}

impl MetricsLog {
    /// Appends `line` in one write, so that a crash cuts at most the last line (which a resume
    /// drops).
    pub fn append(&mut self, line: &serde_json::Value) -> Result<(), StoreError> {
        use std::io::Write;
        self.file
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|e| StoreError::io(&self.path, e))
    }
}

#[cfg(unix)]
fn point(dir: &Path, link: &str, target: &str) -> Result<(), StoreError> {
    let tmp = dir.join(format!(".tmp-{link}-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(|e| StoreError::io(&tmp, e))?;
    let path = dir.join(link);
    std::fs::rename(&tmp, &path).map_err(|e| StoreError::io(&path, e))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).ok();
    Ok(())
}

#[cfg(not(unix))]
fn point(dir: &Path, _link: &str, _target: &str) -> Result<(), StoreError> {
    Err(StoreError::Invalid {
        path: dir.to_path_buf(),
        reason: "run folders need symlinks (Linux, macOS)".into(),
    })
}

fn link_target(dir: &Path, link: &str) -> Option<String> {
    std::fs::read_link(dir.join(link))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// Removes step folders that neither `last` nor `best` points to, and stale temporaries.
fn prune(dir: &Path, newest: &str) -> Result<(), StoreError> {
    let keep: Vec<String> = [LAST, BEST]
        .iter()
        .filter_map(|l| link_target(dir, l))
        .chain([newest.to_string()])
        .collect();
    for entry in std::fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))? {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale_step = name.starts_with("step-") && !keep.contains(&name);
        // One process writes a run: any temporary (a checkpoint folder, a link) is a crash leftover.
        if name.starts_with(".tmp-") {
            let _ = std::fs::remove_dir_all(entry.path());
            let _ = std::fs::remove_file(entry.path());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> Result<(), StoreError> {
        crate::write_json(&dir.join(name), &serde_json::json!({ "text": text }))
    }

    #[test]
    fn checkpoints_link_last_and_best_and_prune_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::new(tmp.path().join("run"));
        assert!(run.create().unwrap());
        crate::write_json(&run.config(), &serde_json::json!({})).unwrap();
        assert!(matches!(run.create(), Err(StoreError::RunExists(_))));
        for (step, best) in [(1, true), (2, false), (3, true), (4, false)] {
            run.save_checkpoint(step, best, |d| write(d, STATE_FILE, "s"))
                .unwrap();
        }
        assert_eq!(run.last().unwrap(), run.checkpoints().join("step-000004"));
        assert_eq!(run.best().unwrap(), run.checkpoints().join("step-000003"));
        let mut names: Vec<String> = std::fs::read_dir(run.checkpoints())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["best", "last", "step-000003", "step-000004"]);
        // A failing fill leaves the previous checkpoint linked and no step folder.
        let err = run.save_checkpoint(5, true, |_| {
            Err(StoreError::Invalid {
                path: "x".into(),
                reason: "disk on fire".into(),
            })
        });
        assert!(err.is_err());
        assert_eq!(run.last().unwrap(), run.checkpoints().join("step-000004"));
        assert!(!run.checkpoints().join("step-000005").exists());
    }

    #[test]
    fn rewinding_drops_later_and_cut_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::new(tmp.path());
        let mut log = run.metrics_log().unwrap();
        for step in 1..=4 {
            log.append(&serde_json::json!({ "step": step })).unwrap();
        }
        log.append(&serde_json::json!({"eval": {"step": 4}}))
            .unwrap();
        drop(log);
        let mut text = std::fs::read_to_string(run.metrics()).unwrap();
        text.push_str("{\"step\": 5, \"lo");
        std::fs::write(run.metrics(), text).unwrap();
        run.rewind_metrics(2).unwrap();
        let text = std::fs::read_to_string(run.metrics()).unwrap();
        assert_eq!(text, "{\"step\":1}\n{\"step\":2}\n");
    }
}
