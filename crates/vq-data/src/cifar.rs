//! The CIFAR-10 binary format: each `.bin` file is a run of 3,073-byte records, one label byte
//! (0..=9) followed by 3,072 pixel bytes (1,024 R, 1,024 G, 1,024 B, each a 32×32 row-major
//! plane). We keep the file's CHW layout so that loading is a plain scatter of byte runs.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use ndarray::{Array1, Array4, ArrayView4};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::fsutil::write_atomic;

pub const CHANNELS: usize = 3;
pub const SIDE: usize = 32;
pub const IMAGE_BYTES: usize = CHANNELS * SIDE * SIDE;
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
pub const RECORDS_PER_FILE: usize = 10_000;
pub const FILE_BYTES: u64 = (RECORD_BYTES * RECORDS_PER_FILE) as u64;
pub const NUM_CLASSES: usize = 10;
/// The folder the official archive unpacks to.
pub const DIR_NAME: &str = "cifar-10-batches-bin";
pub const META_FILE: &str = "batches.meta.txt";
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
pub const TEST_FILES: [&str; 1] = ["test_batch.bin"];

/// How many records are staged per read: about 1 MB, so the staging buffer stays in cache and
/// the scatter into the output costs little beyond the read itself.
const STAGE_RECORDS: usize = 341;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn file_names(self) -> &'static [&'static str] {
        match self {
            Split::Train => &TRAIN_FILES,
            Split::Test => &TEST_FILES,
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Test => "test",
        })
    }
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "train" => Ok(Split::Train),
            "test" => Ok(Split::Test),
            other => Err(format!("unknown split {other:?} (expected train or test)")),
        }
    }
}

/// Options for [`Cifar10::load_with`]. The defaults describe the official files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Records each batch file must hold; `None` accepts any whole number of records
    /// (small synthetic datasets in tests).
    pub records_per_file: Option<usize>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            records_per_file: Some(RECORDS_PER_FILE),
        }
    }
}

/// One split of CIFAR-10 in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Cifar10 {
    /// `(N, 3, 32, 32)` pixels in the file's CHW order.
    pub images: Array4<u8>,
    /// `N` labels, each in `0..10`.
    pub labels: Array1<u8>,
    /// The ten class names from `batches.meta.txt`.
    pub class_names: Vec<String>,
}

impl Cifar10 {
    /// Loads a split of the official layout (10,000 records per file) from `dir`, the
    /// `cifar-10-batches-bin` folder.
    pub fn load(dir: impl AsRef<Path>, split: Split) -> Result<Self, DataError> {
        Self::load_with(dir, split, &LoadOptions::default())
    }

    pub fn load_with(
        dir: impl AsRef<Path>,
        split: Split,
        options: &LoadOptions,
    ) -> Result<Self, DataError> {
        let dir = dir.as_ref();
        let class_names = read_class_names(&dir.join(META_FILE))?;
        let paths: Vec<PathBuf> = split.file_names().iter().map(|f| dir.join(f)).collect();
        let (images, labels) = read_batch_files(&paths, options)?;
        Ok(Cifar10 {
            images,
            labels,
            class_names,
        })
    }

    /// The structural check of a whole dataset folder: every file of both splits present with
    /// the official size, every label in range, ten class names. Returns what it found.
    pub fn verify_dir(dir: impl AsRef<Path>) -> Result<DatasetSummary, DataError> {
        let dir = dir.as_ref();
        let train = Self::load(dir, Split::Train)?;
        let test = Self::load(dir, Split::Test)?;
        let mut train_per_class = [0usize; NUM_CLASSES];
        for &l in &train.labels {
            train_per_class[l as usize] += 1;
        }
        let mut test_per_class = [0usize; NUM_CLASSES];
        for &l in &test.labels {
            test_per_class[l as usize] += 1;
        }
        Ok(DatasetSummary {
            class_names: train.class_names,
            train_per_class,
            test_per_class,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Writes this split into `dir` in the official layout: its records spread evenly over the
    /// split's files, plus `batches.meta.txt`. Every file is written to a temporary name and
    /// renamed, so a crash never leaves a half-written batch behind.
    pub fn save(&self, dir: impl AsRef<Path>, split: Split) -> Result<(), DataError> {
        let dir = dir.as_ref();
        let files = split.file_names();
        if !self.len().is_multiple_of(files.len()) {
            return Err(DataError::BadWrite {
                path: dir.to_path_buf(),
                what: "CIFAR-10 split",
                reason: format!(
                    "{} records do not split evenly over {} files",
                    self.len(),
                    files.len()
                ),
            });
        }
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        let per_file = self.len() / files.len();
        for (i, name) in files.iter().enumerate() {
            let range = i * per_file..(i + 1) * per_file;
            write_batch_file(
                &dir.join(name),
                self.images.slice(ndarray::s![range.clone(), .., .., ..]),
                &self.labels.slice(ndarray::s![range]).to_vec(),
            )?;
        }
        write_class_names(&dir.join(META_FILE), &self.class_names)
    }
}

/// What [`Cifar10::verify_dir`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatasetSummary {
    pub class_names: Vec<String>,
    pub train_per_class: [usize; NUM_CLASSES],
    pub test_per_class: [usize; NUM_CLASSES],
}

/// Reads `batches.meta.txt`: the class names, one a line (blank lines ignored).
pub fn read_class_names(path: &Path) -> Result<Vec<String>, DataError> {
    let text = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let text = String::from_utf8(text).map_err(|_| DataError::BadMeta {
        path: path.to_path_buf(),
        reason: "not UTF-8 text".into(),
    })?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if names.len() != NUM_CLASSES {
        return Err(DataError::BadMeta {
            path: path.to_path_buf(),
            reason: format!("lists {} class names, expected {NUM_CLASSES}", names.len()),
        });
    }
    Ok(names)
}

pub fn write_class_names(path: &Path, names: &[String]) -> Result<(), DataError> {
    let mut text = names.join("\n");
    text.push('\n');
    write_atomic(path, |w| w.write_all(text.as_bytes()))
}

/// Reads several batch files into one array, in parallel (one task per file), checking sizes
/// and labels on the way.
pub fn read_batch_files(
    paths: &[PathBuf],
    options: &LoadOptions,
) -> Result<(Array4<u8>, Array1<u8>), DataError> {
    // Sizes first (cheap), so that every file's place in the output is known before reading.
    let mut counts = Vec::with_capacity(paths.len());
    for path in paths {
        let len = std::fs::metadata(path)
            .map_err(|e| DataError::io(path, e))?
            .len();
        counts.push(record_count(path, len, options)?);
    }
    let total: usize = counts.iter().sum();
    let mut images = vec![0u8; total * IMAGE_BYTES];
    let mut labels = vec![0u8; total];

    // Split the outputs into one disjoint slice per file.
    let mut jobs = Vec::with_capacity(paths.len());
    let (mut img_rest, mut lab_rest) = (images.as_mut_slice(), labels.as_mut_slice());
    for (path, &n) in paths.iter().zip(&counts) {
        let (img, ir) = img_rest.split_at_mut(n * IMAGE_BYTES);
        let (lab, lr) = lab_rest.split_at_mut(n);
        img_rest = ir;
        lab_rest = lr;
        jobs.push((path, img, lab));
    }
    jobs.into_par_iter().try_for_each(|(path, img, lab)| {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        read_records_into(file, path, img, lab)?;
        Ok::<_, DataError>(())
    })?;

    let images = Array4::from_shape_vec((total, CHANNELS, SIDE, SIDE), images)
        .expect("buffer length is total * IMAGE_BYTES by construction");
    Ok((images, Array1::from_vec(labels)))
}

fn record_count(path: &Path, len: u64, options: &LoadOptions) -> Result<usize, DataError> {
    let record = RECORD_BYTES as u64;
    if !len.is_multiple_of(record) {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            len,
            record_bytes: RECORD_BYTES,
            complete_records: len / record,
            trailing: len % record,
        });
    }
    let found = len / record;
    if let Some(expected) = options.records_per_file {
        if found != expected as u64 {
            return Err(DataError::WrongCount {
                path: path.to_path_buf(),
                found,
                expected: expected as u64,
            });
        }
    }
    usize::try_from(found).map_err(|_| DataError::WrongCount {
        path: path.to_path_buf(),
        found,
        expected: options.records_per_file.unwrap_or(0) as u64,
    })
}

/// Parses CIFAR-10 records held in memory (any whole number of them).
pub fn parse_records(bytes: &[u8], path: &Path) -> Result<(Array4<u8>, Array1<u8>), DataError> {
    let n = record_count(
        path,
        bytes.len() as u64,
        &LoadOptions {
            records_per_file: None,
        },
    )?;
    let mut images = vec![0u8; n * IMAGE_BYTES];
    let mut labels = vec![0u8; n];
    read_records_into(bytes, path, &mut images, &mut labels)?;
    let images = Array4::from_shape_vec((n, CHANNELS, SIDE, SIDE), images)
        .expect("buffer length is n * IMAGE_BYTES by construction");
    Ok((images, Array1::from_vec(labels)))
}

/// Streams exactly `labels.len()` records from `reader` into the output slices. The reader must
/// end right there: a short or a long source means the file changed since its size was taken.
fn read_records_into(
    mut reader: impl Read,
    path: &Path,
    images: &mut [u8],
    labels: &mut [u8],
) -> Result<(), DataError> {
    let n = labels.len();
    debug_assert_eq!(images.len(), n * IMAGE_BYTES);
    let changed = || DataError::ChangedWhileReading {
        path: path.to_path_buf(),
        expected: (n * RECORD_BYTES) as u64,
    };
    let mut stage = vec![0u8; STAGE_RECORDS.min(n.max(1)) * RECORD_BYTES];
    let mut done = 0;
    while done < n {
        let take = STAGE_RECORDS.min(n - done);
        let buf = &mut stage[..take * RECORD_BYTES];
        reader.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                changed()
            } else {
                DataError::io(path, e)
            }
        })?;
        let img_out = &mut images[done * IMAGE_BYTES..(done + take) * IMAGE_BYTES];
        for (i, (record, img)) in buf
            .chunks_exact(RECORD_BYTES)
            .zip(img_out.chunks_exact_mut(IMAGE_BYTES))
            .enumerate()
        {
            let label = record[0];
            if label as usize >= NUM_CLASSES {
                return Err(DataError::BadLabel {
                    path: path.to_path_buf(),
                    record: done + i,
                    label,
                });
            }
            labels[done + i] = label;
            img.copy_from_slice(&record[1..]);
        }
        done += take;
    }
    let mut probe = [0u8; 1];
    match reader.read(&mut probe) {
        Ok(0) => Ok(()),
        Ok(_) => Err(changed()),
        Err(e) => Err(DataError::io(path, e)),
    }
}

/// Writes `(N, 3, 32, 32)` images and their labels as one CIFAR-10 batch file (atomically).
pub fn write_batch_file(
    path: &Path,
    images: ArrayView4<'_, u8>,
    labels: &[u8],
) -> Result<(), DataError> {
    let bad = |reason: String| DataError::BadWrite {
        path: path.to_path_buf(),
        what: "CIFAR-10 batch",
        reason,
    };
    let shape = images.shape();
    if shape[1..] != [CHANNELS, SIDE, SIDE] {
        return Err(bad(format!(
            "images have shape {shape:?}, expected (N, 3, 32, 32)"
        )));
    }
    if shape[0] != labels.len() {
        return Err(bad(format!(
            "{} images but {} labels",
            shape[0],
            labels.len()
        )));
    }
    if let Some((i, &l)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= NUM_CLASSES)
    {
        return Err(bad(format!("label {l} of record {i} is not in 0..=9")));
    }
    write_atomic(path, |w| {
        for (image, &label) in images.outer_iter().zip(labels) {
            w.write_all(&[label])?;
            match image.as_slice() {
                Some(bytes) => w.write_all(bytes)?,
                None => w.write_all(&image.iter().copied().collect::<Vec<u8>>())?,
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn random_split(n: usize, seed: u64) -> Cifar10 {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let pixels: Vec<u8> = (0..n * IMAGE_BYTES).map(|_| rng.random()).collect();
        let labels: Vec<u8> = (0..n).map(|_| rng.random_range(0..10)).collect();
        Cifar10 {
            images: Array4::from_shape_vec((n, 3, 32, 32), pixels).unwrap(),
            labels: Array1::from_vec(labels),
            class_names: crate::CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn small() -> LoadOptions {
        LoadOptions {
            records_per_file: None,
        }
    }

    #[test]
    fn record_layout_is_label_then_chw() {
        let mut bytes = vec![0u8; 2 * RECORD_BYTES];
        bytes[0] = 7;
        bytes[1] = 11; // R(0,0)
        bytes[1 + 1024] = 22; // G(0,0)
        bytes[1 + 2048 + 32 * 5 + 3] = 33; // B(5,3)
        bytes[RECORD_BYTES] = 2;
        bytes[2 * RECORD_BYTES - 1] = 44; // B(31,31) of the second image
        let (images, labels) = parse_records(&bytes, Path::new("mem.bin")).unwrap();
        assert_eq!(images.dim(), (2, 3, 32, 32));
        assert_eq!(labels.to_vec(), vec![7, 2]);
        assert_eq!(images[[0, 0, 0, 0]], 11);
        assert_eq!(images[[0, 1, 0, 0]], 22);
        assert_eq!(images[[0, 2, 5, 3]], 33);
        assert_eq!(images[[1, 2, 31, 31]], 44);
        assert_eq!(
            images.iter().map(|&v| v as u32).sum::<u32>(),
            11 + 22 + 33 + 44
        );
    }

    #[test]
    fn save_then_load_is_exact_and_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let train = random_split(25, 1);
        let test = random_split(3, 2);
        train.save(dir.path(), Split::Train).unwrap();
        test.save(dir.path(), Split::Test).unwrap();
        assert_eq!(
            std::fs::metadata(dir.path().join("data_batch_3.bin"))
                .unwrap()
                .len(),
            5 * RECORD_BYTES as u64
        );
        assert_eq!(
            Cifar10::load_with(dir.path(), Split::Train, &small()).unwrap(),
            train
        );
        assert_eq!(
            Cifar10::load_with(dir.path(), Split::Test, &small()).unwrap(),
            test
        );
    }

    #[test]
    fn errors_name_the_file_and_record() {
        let dir = tempfile::tempdir().unwrap();
        random_split(5, 3).save(dir.path(), Split::Train).unwrap();

        // The official layout wants 10,000 records a file.
        let err = Cifar10::load(dir.path(), Split::Train).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::WrongCount {
                    found: 1,
                    expected: 10_000,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("data_batch_1.bin"), "{err}");

        // A label above 9 in the third record of the fourth file.
        let path = dir.path().join("data_batch_4.bin");
        let mut bytes = std::fs::read(&path).unwrap();
        let first = bytes[..RECORD_BYTES].to_vec();
        bytes.extend_from_slice(&first);
        bytes.extend_from_slice(&first);
        bytes[2 * RECORD_BYTES] = 10;
        std::fs::write(&path, &bytes).unwrap();
        let err = Cifar10::load_with(dir.path(), Split::Train, &small()).unwrap_err();
        match &err {
            DataError::BadLabel {
                path: p,
                record: 2,
                label: 10,
            } => assert_eq!(p, &path),
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("record 2"), "{err}");

        // A truncated file.
        std::fs::write(&path, &bytes[..RECORD_BYTES + 100]).unwrap();
        let err = Cifar10::load_with(dir.path(), Split::Train, &small()).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::Truncated {
                    complete_records: 1,
                    trailing: 100,
                    ..
                }
            ),
            "{err}"
        );

        // A missing file.
        std::fs::remove_file(&path).unwrap();
        let err = Cifar10::load_with(dir.path(), Split::Train, &small()).unwrap_err();
        assert!(
            matches!(&err, DataError::Missing { path: p } if p == &path),
            "{err}"
        );
        assert!(err.to_string().contains("download-cifar"), "{err}");

        // A meta file with the wrong number of classes.
        std::fs::write(dir.path().join(META_FILE), "cat\ndog\n").unwrap();
        let err = Cifar10::load_with(dir.path(), Split::Test, &small()).unwrap_err();
        assert!(matches!(err, DataError::BadMeta { .. }), "{err}");
    }

    #[test]
    fn a_file_that_grows_while_read_is_caught() {
        let bytes = vec![1u8; 2 * RECORD_BYTES + 1];
        let mut images = vec![0u8; IMAGE_BYTES];
        let mut labels = vec![0u8; 1];
        let err = read_records_into(&bytes[..], Path::new("x.bin"), &mut images, &mut labels)
            .unwrap_err();
        assert!(
            matches!(err, DataError::ChangedWhileReading { .. }),
            "{err}"
        );
        let err = read_records_into(&bytes[..10], Path::new("x.bin"), &mut images, &mut labels)
            .unwrap_err();
        assert!(
            matches!(err, DataError::ChangedWhileReading { .. }),
            "{err}"
        );
    }

    #[test]
    fn writer_refuses_bad_shapes_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.bin");
        let images = Array4::<u8>::zeros((2, 3, 32, 32));
        assert!(write_batch_file(&path, images.view(), &[1]).is_err());
        assert!(write_batch_file(&path, images.view(), &[1, 10]).is_err());
        let wrong = Array4::<u8>::zeros((2, 3, 16, 16));
        assert!(write_batch_file(&path, wrong.view(), &[1, 2]).is_err());
        assert!(!path.exists());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any bytes at all: an error or a parse, never a panic; and a parse only when the
        /// length is whole records with valid labels.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4 * RECORD_BYTES)) {
            let result = parse_records(&bytes, Path::new("fuzz.bin"));
            let valid = bytes.len().is_multiple_of(RECORD_BYTES)
                && bytes.chunks(RECORD_BYTES).all(|r| r[0] < 10);
            prop_assert_eq!(result.is_ok(), valid);
        }

        /// Records written then read back are identical, and any truncation of the file is an
        /// error naming it.
        #[test]
        fn round_trip_and_truncation(n in 1usize..6, seed in any::<u64>(), cut in 1usize..RECORD_BYTES * 6) {
            let split = random_split(n, seed);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("data_batch_1.bin");
            write_batch_file(&path, split.images.view(), split.labels.as_slice().unwrap()).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            let (images, labels) = parse_records(&bytes, &path).unwrap();
            prop_assert_eq!(&images, &split.images);
            prop_assert_eq!(&labels, &split.labels);

            let cut = cut.min(bytes.len());
            let truncated = &bytes[..bytes.len() - cut];
            std::fs::write(&path, truncated).unwrap();
            let result = read_batch_files(std::slice::from_ref(&path), &small());
            if truncated.len().is_multiple_of(RECORD_BYTES) {
                let (images, _) = result.unwrap();
                prop_assert_eq!(images.view(), split.images.slice(ndarray::s![..truncated.len() / RECORD_BYTES, .., .., ..]));
            } else {
                let err = result.unwrap_err();
                prop_assert!(err.to_string().contains("data_batch_1.bin"), "{}", err);
            }
        }
    }
}
