use std::path::PathBuf;

use crate::names::{CONFIG_FILE, MODEL_FILE};

/// What can be wrong with a file or folder of the on-disk format. Each variant names the path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}: no such file or folder")]
    Missing(PathBuf),
    #[error("{0}: neither a checkpoint folder ({MODEL_FILE} + {CONFIG_FILE}) nor a run folder (checkpoints/best or checkpoints/last)")]
    NotACheckpoint(PathBuf),
    #[error("{0} already holds a run; continue it with --resume {0} or choose another --run-dir")]
    RunExists(PathBuf),
    /// The cause is in the message, not chained as a source, so that `{:#}` prints it once.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: not {what}: {reason}")]
    Malformed {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: the weights do not fit the model described by {CONFIG_FILE} ({reason})")]
    Mismatch { path: PathBuf, reason: String },
    #[error("{path}: variable {name} holds NaN or infinite values")]
    NonFinite { path: PathBuf, name: String },
    #[error(transparent)]
    Data(#[from] vq_data::DataError),
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            error,
        }
    }
}
