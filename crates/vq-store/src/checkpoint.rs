//! Where a model comes from: a checkpoint folder, a run folder's best (else last) checkpoint, or
//! a model embedded in the binary.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::names::{BEST, CHECKPOINTS_DIR, CONFIG_FILE, EVAL_FILE, LAST, MODEL_FILE, STATE_FILE};
use crate::StoreError;

/// The checkpoint folder for `path`: itself, or a run folder's best (else last) checkpoint.
pub fn resolve(path: &Path) -> Result<PathBuf, StoreError> {
    if !path.exists() {
        return Err(StoreError::Missing(path.to_path_buf()));
    }
    if path.join(MODEL_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    for link in [BEST, LAST] {
        let dir = path.join(CHECKPOINTS_DIR).join(link);
        if dir.join(MODEL_FILE).is_file() {
            return Ok(dir);
        }
    }
    Err(StoreError::NotACheckpoint(path.to_path_buf()))
}

/// A checkpoint compiled into the binary (`include_bytes!` of a folder under `models/`), so that
/// an installed binary has its default model wherever it runs.
#[derive(Debug)]
pub struct Bundled {
    /// Where the files live in the repository (`models/cifar10-default`).
    pub name: &'static str,
    pub config: &'static str,
    pub weights: &'static [u8],
    pub state: Option<&'static str>,
    pub eval: Option<&'static str>,
}

/// Where a checkpoint is read from.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// A checkpoint folder or a run folder.
    Path(&'a Path),
    Bundled(&'static Bundled),
}

impl fmt::Display for Source<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Path(p) => write!(f, "{}", p.display()),
            Source::Bundled(b) => write!(f, "{} (bundled)", b.name),
        }
    }
}

/// What a checkpoint says about how it was trained, where it knows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// Training steps behind these weights.
    pub step: Option<u64>,
    /// Evaluation figures of these weights (`eval.json`, or the run's final evaluation when
    /// it was taken at this step).
    pub eval: Option<serde_json::Value>,
}

/// Step and figures from `state.json` / `eval.json` beside the weights of checkpoint folder
/// `dir`, or the run's `summary.json` two folders up; absent or unreadable files are no error.
pub fn read_info(dir: &Path) -> CheckpointInfo {
    let read = |p: PathBuf| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
    };
    let step = read(dir.join(STATE_FILE)).and_then(|v| v.get("step")?.as_u64());
    let eval = read(dir.join(EVAL_FILE)).or_else(|| {
        let run = dir.canonicalize().ok()?.parent()?.parent()?.to_path_buf();
        let eval = read(run.join(crate::names::SUMMARY_FILE))?
            .get("final_eval")?
            .clone();
        (eval.get("step")?.as_u64() == step).then_some(eval)
    });
    CheckpointInfo { step, eval }
}

impl Bundled {
    /// What its `state.json` and `eval.json` say.
    pub fn info(&self) -> CheckpointInfo {
        let parse = |t: Option<&str>| serde_json::from_str::<serde_json::Value>(t?).ok();
        CheckpointInfo {
            step: parse(self.state).and_then(|v| v.get("step")?.as_u64()),
            eval: parse(self.eval),
        }
    }

    /// The path its config would have in the repository (for messages).
    pub fn config_path(&self) -> PathBuf {
        Path::new(self.name).join(CONFIG_FILE)
    }

    /// The path its weights would have in the repository (for messages).
    pub fn weights_path(&self) -> PathBuf {
        Path::new(self.name).join(MODEL_FILE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_checkpoint_and_run_folders() {
        let tmp = tempfile::tempdir().unwrap();
        let ckpt = tmp.path().join("ckpt");
        std::fs::create_dir_all(&ckpt).unwrap();
        std::fs::write(ckpt.join(MODEL_FILE), b"x").unwrap();
        assert_eq!(resolve(&ckpt).unwrap(), ckpt);

        let run = tmp.path().join("run");
        let step = run.join("checkpoints/step-000002");
        std::fs::create_dir_all(&step).unwrap();
        std::fs::write(step.join(MODEL_FILE), b"x").unwrap();
        std::os::unix::fs::symlink("step-000002", run.join("checkpoints/last")).unwrap();
        assert_eq!(resolve(&run).unwrap(), run.join("checkpoints/last"));

        let err = resolve(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("neither a checkpoint folder"), "{err}");
        let err = resolve(&tmp.path().join("nowhere"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nowhere: no such file"), "{err}");
    }

    #[test]
    fn info_comes_from_state_and_eval_or_the_run_summary() {
        let tmp = tempfile::tempdir().unwrap();
        let step = tmp.path().join("run/checkpoints/step-000007");
        std::fs::create_dir_all(&step).unwrap();
        std::fs::write(step.join(STATE_FILE), r#"{"step": 7}"#).unwrap();
        std::fs::write(
            tmp.path().join("run/summary.json"),
            r#"{"final_eval": {"step": 7, "psnr": 20.5}}"#,
        )
        .unwrap();
        let info = read_info(&step);
        assert_eq!(info.step, Some(7));
        assert_eq!(info.eval.unwrap()["psnr"], 20.5);
        std::fs::write(step.join(EVAL_FILE), r#"{"step": 7, "psnr": 21.0}"#).unwrap();
        assert_eq!(read_info(&step).eval.unwrap()["psnr"], 21.0);
        assert_eq!(read_info(tmp.path()), CheckpointInfo::default());
    }
}
