//! What can go wrong, by what it is: each variant names the file or the setting at fault.

use std::path::PathBuf;

/// An error of the library: a model, prior or file that cannot be used, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model or prior checkpoint that cannot be opened.
    #[error(transparent)]
    Store(#[from] vq_store::StoreError),
    #[error(transparent)]
    Prior(#[from] vq_prior::PriorError),
    #[error(transparent)]
    Model(#[from] vq_model::ModelError),
    /// An image file that cannot be read.
    #[error(transparent)]
    Image(#[from] vq_data::image_file::ImageFileError),
    /// A `.vqz` file that does not fit the model.
    #[error(transparent)]
    CodeFile(#[from] crate::files::CodeFileMismatch),
    /// Bytes that are not a `.vqz` file.
    #[error("{path}: not a valid .vqz code file")]
    Vqz {
        path: PathBuf,
        #[source]
        source: vq_codes::CodeFileError,
    },
    /// A `.npy` file that is not an integer array.
    #[error("{path}: not an integer array this reads")]
    Npy {
        path: PathBuf,
        #[source]
        source: vq_codes::npy::NpyError,
    },
    #[error(transparent)]
    Fid(#[from] vq_fid::FidError),
    /// A dataset or an output file that cannot be read or written.
    #[error(transparent)]
    Data(#[from] vq_data::DataError),
    #[error("{path}: cannot read or write it")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Codes, images or settings that do not fit each other (the message says how).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
