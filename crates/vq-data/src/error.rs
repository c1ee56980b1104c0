use std::path::PathBuf;

/// Everything that can be wrong with a dataset on disk. Each variant names the file, and the
/// record where one is at fault, so that a user can find the problem without a debugger.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: file is missing (run `cargo xtask download-cifar` to fetch CIFAR-10)")]
    Missing { path: PathBuf },

    // The cause is shown in the message and deliberately not chained as a `source`, so that
    // `{:#}` error reports do not print it twice.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    #[error(
        "{path}: size {len} bytes is not a whole number of {record_bytes}-byte records \
         (record {complete_records} is cut off after {trailing} bytes)"
    )]
    Truncated {
        path: PathBuf,
        len: u64,
        record_bytes: usize,
        complete_records: u64,
        trailing: u64,
    },

    #[error("{path}: record {record}: label {label} is not a CIFAR-10 class (expected 0..=9)")]
    BadLabel {
        path: PathBuf,
        record: usize,
        label: u8,
    },

    #[error("{path}: holds {found} records, expected {expected}")]
    WrongCount {
        path: PathBuf,
        found: u64,
        expected: u64,
    },

    #[error("{path}: changed size while it was being read (expected {expected} bytes)")]
    ChangedWhileReading { path: PathBuf, expected: u64 },

    #[error("{path}: {reason}")]
    BadMeta { path: PathBuf, reason: String },

    #[error("{path}: bad header: {reason}")]
    BadHeader { path: PathBuf, reason: String },

    #[error("{path}: {reason}")]
    Archive { path: PathBuf, reason: String },

    #[error("batch size {batch_size} must be between 1 and the dataset's {records} records")]
    BadBatchSize { batch_size: usize, records: usize },

    #[error("{path}: cannot write {what}: {reason}")]
    BadWrite {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        let path = path.into();
        if error.kind() == std::io::ErrorKind::NotFound {
            DataError::Missing { path }
        } else {
            DataError::Io { path, error }
        }
    }
}
