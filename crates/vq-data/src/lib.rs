//! CIFAR-10 in its binary format, and the batches that training draws from it.
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
mod fsutil;

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
