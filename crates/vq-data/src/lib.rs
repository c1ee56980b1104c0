//! CIFAR-10 in its binary format, image folders imported into a like format, and the batches
//! that training draws from them.
//!
//! ```no_run
//! use vq_data::{Cifar10, Split};
//! let train = Cifar10::load("datasets/cifar-10-batches-bin", Split::Train)?;
//! assert_eq!(train.images.dim(), (50_000, 3, 32, 32));
//! # Ok::<(), vq_data::DataError>(())
//! ```

mod archive;
mod batch;
mod cifar;
mod error;
pub mod folder;
mod fsutil;
pub mod image_file;

pub use archive::{unpack_archive, unpack_reader, UnpackReport};
pub use batch::{gather, Batch, BatchConfig, BatchIndices, Batcher, BatcherState, PixelRange};
pub use cifar::{
    parse_records, read_batch_files, read_class_names, write_batch_file, write_class_names,
    Cifar10, DatasetSummary, LoadOptions, Split, CHANNELS, DIR_NAME, FILE_BYTES, IMAGE_BYTES,
    META_FILE, NUM_CLASSES, RECORDS_PER_FILE, RECORD_BYTES, SIDE, TEST_FILES, TRAIN_FILES,
};
pub use error::DataError;
pub use fsutil::write_atomic;

/// The class names of CIFAR-10, in label order, as `batches.meta.txt` lists them.
pub const CLASS_NAMES: [&str; NUM_CLASSES] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Loads a split of either kind of dataset folder: an imported image set (`dataset.json`, see
/// [`folder`]) or CIFAR-10's binary files (checked against `options`).
pub fn load_split(
    dir: impl AsRef<std::path::Path>,
    split: Split,
    options: &LoadOptions,
) -> Result<Cifar10, DataError> {
    let dir = dir.as_ref();
    if folder::is_image_set(dir) {
        folder::load_image_set(dir, split)
    } else {
        Cifar10::load_with(dir, split, options)
    }
}

/// The files that hold `split` of the dataset folder `dir` (either kind): what its identity is
/// computed from.
pub fn split_files(dir: impl AsRef<std::path::Path>, split: Split) -> Vec<std::path::PathBuf> {
    let dir = dir.as_ref();
    if folder::is_image_set(dir) {
        vec![folder::split_file(dir, split)]
    } else {
        split.file_names().iter().map(|f| dir.join(f)).collect()
    }
}

/// What a dataset folder holds, as a run folder records it (`RUN/dataset.json`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DatasetInfo {
    pub path: std::path::PathBuf,
    /// `cifar-10` or `image-set`.
    pub kind: String,
    /// Images are `side` × `side` pixels.
    pub side: usize,
    pub class_names: Vec<String>,
}

/// Describes the dataset folder `dir` without loading its images.
pub fn describe(dir: impl AsRef<std::path::Path>) -> Result<DatasetInfo, DataError> {
    let dir = dir.as_ref();
    let path = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    if folder::is_image_set(dir) {
        let report_path = dir.join(folder::DATASET_FILE);
        let text =
            std::fs::read_to_string(&report_path).map_err(|e| DataError::io(&report_path, e))?;
        let report: folder::ImportReport =
            serde_json::from_str(&text).map_err(|e| DataError::BadMeta {
                path: report_path.clone(),
                reason: format!("not an import report: {e}"),
            })?;
        Ok(DatasetInfo {
            path,
            kind: "image-set".into(),
            side: report.side,
            class_names: report.classes,
        })
    } else {
        Ok(DatasetInfo {
            path,
            kind: "cifar-10".into(),
            side: SIDE,
            class_names: read_class_names(&dir.join(META_FILE))?,
        })
    }
}
