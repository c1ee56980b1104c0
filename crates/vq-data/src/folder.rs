//! Your own images as a dataset: an image folder imported once into a compact binary cache that
//! loads as fast as CIFAR-10.
//!
//! Accepted layouts (extensions png, jpg, jpeg, webp, bmp; anything else is ignored):
//! ```text
//! ROOT/train/<class>/*.png  ROOT/test/<class>/*.png   splits and classes
//! ROOT/train/*.png          ROOT/test/*.png           splits, no classes
//! ROOT/<class>/*.png                                  classes; a seeded 10% becomes the test split
//! ROOT/*.png                                          a flat folder; the same hold-out
//! ```
//! Each image is decoded (in parallel), resized so that its shorter side is the chosen size and
//! centre-cropped to a square. The cache folder holds `train.bin` and `test.bin` (a 16-byte
//! header, then CIFAR-10-style records: a label byte and the CHW pixels), `classes.txt` and
//! `dataset.json` (what was imported, and every file skipped with the reason).
//!
//! Image-set file header (little-endian):
//! ```text
//! 0..4   magic  "VQDS"
//! 4      version 1
//! 5      channels (3)
//! 6..8   reserved, 0
//! 8..12  side (pixels; images are side × side)
//! 12..16 record count
//! ```

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ndarray::{Array1, Array4, ArrayView4};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::fsutil::write_atomic;
use crate::image_file::read_image;
use crate::{Cifar10, Split};

pub const MAGIC: &[u8; 4] = b"VQDS";
pub const VERSION: u8 = 1;
pub const HEADER_BYTES: usize = 16;
/// Sides an imported dataset may have.
pub const MAX_SIDE: usize = 1024;
pub const CLASSES_FILE: &str = "classes.txt";
/// Marks a folder as an imported image set (and describes it).
pub const DATASET_FILE: &str = "dataset.json";
/// Extensions taken from an image folder: every format `vq-cli` reads.
pub const FOLDER_EXTENSIONS: &[&str] = crate::image_file::IMAGE_EXTENSIONS;
/// Images decoded at once: bounds memory (128 × 128 images: 12 MB a chunk) while keeping both
/// cores busy.
const CHUNK: usize = 256;

/// The file of `split` in an image-set folder.
pub fn split_file(dir: &Path, split: Split) -> PathBuf {
    dir.join(format!("{split}.bin"))
}

/// Whether `dir` holds an imported image set (rather than CIFAR-10's files).
pub fn is_image_set(dir: &Path) -> bool {
    dir.join(DATASET_FILE).is_file()
}

fn record_bytes(side: usize) -> usize {
    1 + 3 * side * side
}

fn header(side: usize, count: usize) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[..4].copy_from_slice(MAGIC);
    h[4] = VERSION;
    h[5] = 3;
    h[8..12].copy_from_slice(&(side as u32).to_le_bytes());
    h[12..16].copy_from_slice(&(count as u32).to_le_bytes());
    h
}

/// Parses an image-set file held in memory; every label must be below `classes`.
pub fn parse_image_set(
    bytes: &[u8],
    path: &Path,
    classes: usize,
) -> Result<(Array4<u8>, Array1<u8>), DataError> {
    let bad = |reason: String| DataError::BadHeader {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < HEADER_BYTES {
        return Err(bad(format!(
            "{} bytes, shorter than the {HEADER_BYTES}-byte header",
            bytes.len()
        )));
    }
    if &bytes[..4] != MAGIC {
        return Err(bad("not an image-set file (no VQDS magic)".into()));
    }
    if bytes[4] != VERSION {
        return Err(bad(format!(
            "version {} (this build reads {VERSION})",
            bytes[4]
        )));
    }
    if bytes[5] != 3 || bytes[6..8] != [0, 0] {
        return Err(bad(format!(
            "{} channels, reserved {:?} (expected 3 and 0)",
            bytes[5],
            &bytes[6..8]
        )));
    }
    let side = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
    let count = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
    if !(1..=MAX_SIDE).contains(&side) {
        return Err(bad(format!("side {side} (expected 1 to {MAX_SIDE})")));
    }
    let record = record_bytes(side);
    let body = bytes.len() - HEADER_BYTES;
    if body as u64 != count as u64 * record as u64 {
        return Err(DataError::WrongCount {
            path: path.to_path_buf(),
            found: (body / record) as u64,
            expected: count as u64,
        });
    }
    let mut images = Vec::with_capacity(count * (record - 1));
    let mut labels = Vec::with_capacity(count);
    for (i, rec) in bytes[HEADER_BYTES..].chunks_exact(record).enumerate() {
        if rec[0] as usize >= classes {
            return Err(DataError::BadLabel {
                path: path.to_path_buf(),
                record: i,
                label: rec[0],
            });
        }
        labels.push(rec[0]);
        images.extend_from_slice(&rec[1..]);
    }
    let images = Array4::from_shape_vec((count, 3, side, side), images)
        .expect("count × 3 × side × side pixels by construction");
    Ok((images, Array1::from_vec(labels)))
}

/// Writes `(N, 3, S, S)` images and their labels as an image-set file (atomically).
pub fn write_image_set(
    path: &Path,
    images: ArrayView4<'_, u8>,
    labels: &[u8],
) -> Result<(), DataError> {
    let (n, c, h, w) = images.dim();
    if c != 3 || h != w || !(1..=MAX_SIDE).contains(&h) || n != labels.len() {
        return Err(DataError::BadWrite {
            path: path.to_path_buf(),
            what: "image set",
            reason: format!(
                "images of shape {:?} with {} labels (expected (N, 3, S, S), S ≤ {MAX_SIDE}, N labels)",
                images.shape(),
                labels.len()
            ),
        });
    }
    write_atomic(path, |out| {
        out.write_all(&header(h, n))?;
        for (image, &label) in images.outer_iter().zip(labels) {
            out.write_all(&[label])?;
            out.write_all(&image.iter().copied().collect::<Vec<u8>>())?;
        }
        Ok(())
    })
}

/// Loads one split of an imported image set.
pub fn load_image_set(dir: &Path, split: Split) -> Result<Cifar10, DataError> {
    let class_names = read_classes(&dir.join(CLASSES_FILE))?;
    let path = split_file(dir, split);
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| DataError::io(&path, e))?;
    let (images, labels) = parse_image_set(&bytes, &path, class_names.len())?;
    Ok(Cifar10 {
        images,
        labels,
        class_names,
    })
}

fn read_classes(path: &Path) -> Result<Vec<String>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let names: Vec<String> = text.lines().map(str::to_owned).collect();
    if names.is_empty() || names.len() > 256 {
        return Err(DataError::BadMeta {
            path: path.to_path_buf(),
            reason: format!("lists {} classes (expected 1 to 256)", names.len()),
        });
    }
    Ok(names)
}

/// How to import an image folder.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ImportOptions {
    /// Side of the square images written (e.g. 32, 64, 128).
    pub side: usize,
    /// Share of the images held out as the test split when the folder has no `test/`.
    pub test_fraction: f64,
    /// Seed of that hold-out.
    pub seed: u64,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            side: 64,
            test_fraction: 0.1,
            seed: 0,
        }
    }
}

/// A file that was not imported, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// What an import did; saved as `dataset.json` in the cache folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportReport {
    pub source: PathBuf,
    pub side: usize,
    pub classes: Vec<String>,
    pub train: usize,
    pub test: usize,
    /// Images per class in the train and test splits.
    pub train_per_class: Vec<usize>,
    pub test_per_class: Vec<usize>,
    /// Whether the test split was held out of the training images (no `test/` folder).
    pub held_out_test: bool,
    pub skipped: Vec<Skipped>,
    pub seconds: f64,
}

/// One image to import.
#[derive(Debug, Clone)]
struct Source {
    path: PathBuf,
    label: u8,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .map(|e| FOLDER_EXTENSIONS.contains(&e.to_string_lossy().to_lowercase().as_str()))
        .unwrap_or(false)
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        entries.push(entry.map_err(|e| DataError::io(dir, e))?.path());
    }
    entries.sort();
    Ok(entries)
}

/// Image files under `dir`, recursively, sorted.
fn images_under(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    for path in read_dir_sorted(dir)? {
        if path.is_dir() {
            out.extend(images_under(&path)?);
        } else if is_image(&path) {
            out.push(path);
        }
    }
    Ok(out)
}

/// Class folders of `dir` (sorted) and the images lying directly in it.
fn classes_and_loose(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), DataError> {
    let (mut classes, mut loose) = (Vec::new(), Vec::new());
    for path in read_dir_sorted(dir)? {
        if path.is_dir() {
            classes.push(path);
        } else if is_image(&path) {
            loose.push(path);
        }
    }
    Ok((classes, loose))
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// What [`discover`] found in an image folder.
struct Found {
    train: Vec<Source>,
    test: Vec<Source>,
    classes: Vec<String>,
    held_out_test: bool,
}

/// Finds the images of each split and the class names.
fn discover(root: &Path, options: &ImportOptions) -> Result<Found, DataError> {
    let bad = |reason: String| DataError::BadMeta {
        path: root.to_path_buf(),
        reason,
    };
    if !root.is_dir() {
        return Err(DataError::Missing {
            path: root.to_path_buf(),
        });
    }
    let (train_dir, test_dir) = (root.join("train"), root.join("test"));
    let split_dirs: Vec<&PathBuf> = [&train_dir, &test_dir]
        .into_iter()
        .filter(|d| d.is_dir())
        .collect();
    // Per split: (class name, files) pairs; "" for images without a class folder.
    let mut per_split: Vec<Vec<(String, Vec<PathBuf>)>> = Vec::new();
    if split_dirs.is_empty() {
        let (classes, loose) = classes_and_loose(root)?;
        let mut groups: Vec<(String, Vec<PathBuf>)> = Vec::new();
        for class in &classes {
            groups.push((name_of(class), images_under(class)?));
        }
        if !loose.is_empty() {
            groups.push((String::new(), loose));
        }
        per_split.push(groups);
    } else {
        if !train_dir.is_dir() {
            return Err(bad("has a test/ folder but no train/ folder".into()));
        }
        for dir in [&train_dir, &test_dir] {
            let mut groups = Vec::new();
            if dir.is_dir() {
                let (classes, loose) = classes_and_loose(dir)?;
                for class in &classes {
                    groups.push((name_of(class), images_under(class)?));
                }
                if !loose.is_empty() {
                    groups.push((String::new(), loose));
                }
            }
            per_split.push(groups);
        }
    }
    let mut names: Vec<String> = per_split
        .iter()
        .flatten()
        .filter(|(_, files)| !files.is_empty())
        .map(|(name, _)| name.clone())
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Err(bad(format!(
            "holds no images ({})",
            FOLDER_EXTENSIONS.join(", ")
        )));
    }
    if names.len() > 256 {
        return Err(bad(format!(
            "has {} classes; a label byte holds at most 256",
            names.len()
        )));
    }
    if names.len() > 1 && names.iter().any(String::is_empty) {
        return Err(bad(
            "mixes images in class folders with images outside any class folder".into(),
        ));
    }
    let sources = |groups: &[(String, Vec<PathBuf>)]| -> Vec<Source> {
        groups
            .iter()
            .flat_map(|(name, files)| {
                let label = names.iter().position(|n| n == name).expect("listed") as u8;
                files.iter().map(move |p| Source {
                    path: p.clone(),
                    label,
                })
            })
            .collect()
    };
    let mut train = sources(&per_split[0]);
    let held_out = per_split.len() == 1 || per_split[1].iter().all(|(_, f)| f.is_empty());
    let test = if held_out {
        if train.len() < 2 {
            return Err(bad(
                "needs at least 2 images to hold one out for testing".into()
            ));
        }
        let n_test = ((train.len() as f64 * options.test_fraction).round() as usize)
            .clamp(1, train.len() - 1);
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(options.seed));
        let mut is_test = vec![false; train.len()];
        for &i in &order[..n_test] {
            is_test[i] = true;
        }
        let (test, kept): (Vec<_>, Vec<_>) = train.into_iter().zip(is_test).partition(|(_, t)| *t);
        train = kept.into_iter().map(|(s, _)| s).collect();
        test.into_iter().map(|(s, _)| s).collect()
    } else {
        sources(&per_split[1])
    };
    let classes = names
        .into_iter()
        .map(|n| if n.is_empty() { "all".to_string() } else { n })
        .collect();
    Ok(Found {
        train,
        test,
        classes,
        held_out_test: held_out,
    })
}

/// Decodes one image and makes it `side` × `side`: resized so that its shorter side is `side`
/// (Catmull-Rom, which also filters when shrinking), then centre-cropped. CHW bytes.
pub fn square_pixels(path: &Path, side: usize) -> Result<Vec<u8>, String> {
    let img = read_image(path).map_err(|e| {
        // The error names the path already; the report lists it beside the path.
        let text = e.to_string();
        let prefix = format!("{}: ", path.display());
        text.strip_prefix(&prefix).unwrap_or(&text).to_string()
    })?;
    let side32 = side as u32;
    let square = image::DynamicImage::ImageRgb8(img.rgb)
        .resize_to_fill(side32, side32, image::imageops::FilterType::CatmullRom)
        .to_rgb8();
    let plane = side * side;
    let mut chw = vec![0u8; 3 * plane];
    for (i, px) in square.pixels().enumerate() {
        for c in 0..3 {
            chw[c * plane + i] = px.0[c];
        }
    }
    Ok(chw)
}

/// Decodes `sources` in parallel chunks and streams the records into `path`; returns the
/// labels written and the files skipped. `progress` is called once per file.
fn import_split(
    sources: &[Source],
    side: usize,
    path: &Path,
    progress: &(dyn Fn() + Sync),
) -> Result<(Vec<u8>, Vec<Skipped>), DataError> {
    use std::io::{Seek, SeekFrom};
    let mut labels = Vec::new();
    let mut skipped = Vec::new();
    let io = |e| DataError::io(path, e);
    // `path` lies in the import's staging folder, which is renamed into place only when whole,
    // so the file is written in place: the header's count, known only at the end, is patched.
    let file = std::fs::File::create(path).map_err(io)?;
    let mut out = std::io::BufWriter::new(file);
    out.write_all(&header(side, 0)).map_err(io)?;
    for chunk in sources.chunks(CHUNK) {
        let decoded: Vec<Result<Vec<u8>, String>> = chunk
            .par_iter()
            .map(|s| {
                let r = square_pixels(&s.path, side);
                progress();
                r
            })
            .collect();
        for (source, result) in chunk.iter().zip(decoded) {
            match result {
                Ok(pixels) => {
                    out.write_all(&[source.label])
                        .and_then(|_| out.write_all(&pixels))
                        .map_err(io)?;
                    labels.push(source.label);
                }
                Err(reason) => skipped.push(Skipped {
                    path: source.path.clone(),
                    reason,
                }),
            }
        }
    }
    let mut file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.write_all(&header(side, labels.len())))
        .and_then(|_| file.sync_all())
        .map_err(io)?;
    Ok((labels, skipped))
}

/// Imports the image folder `root` into the cache folder `out` (which must not hold anything
/// yet). Unreadable images are skipped and listed in the report, never silently. `progress` is
/// called with the total number of images first, then once per image.
pub fn import_image_folder(
    root: &Path,
    out: &Path,
    options: &ImportOptions,
    progress: &(dyn Fn(Option<u64>) + Sync),
) -> Result<ImportReport, DataError> {
    let started = std::time::Instant::now();
    if !(1..=MAX_SIDE).contains(&options.side) {
        return Err(DataError::BadWrite {
            path: out.to_path_buf(),
            what: "image set",
            reason: format!("size {} (expected 1 to {MAX_SIDE})", options.side),
        });
    }
    if !(options.test_fraction > 0.0 && options.test_fraction < 1.0) {
        return Err(DataError::BadWrite {
            path: out.to_path_buf(),
            what: "image set",
            reason: format!(
                "test fraction {} (expected between 0 and 1)",
                options.test_fraction
            ),
        });
    }
    if out.exists()
        && std::fs::read_dir(out)
            .map_err(|e| DataError::io(out, e))?
            .next()
            .is_some()
    {
        return Err(DataError::BadWrite {
            path: out.to_path_buf(),
            what: "image set",
            reason: "the folder is not empty; choose another --out or remove it".into(),
        });
    }
    let Found {
        train,
        test,
        classes,
        held_out_test,
    } = discover(root, options)?;
    progress(Some((train.len() + test.len()) as u64));
    // Built beside `out` and renamed into place once complete.
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| DataError::io(&parent, e))?;
    let staging = tempfile::Builder::new()
        .prefix(".tmp-import-")
        .tempdir_in(&parent)
        .map_err(|e| DataError::io(&parent, e))?;
    let tick = || progress(None);
    let (train_labels, mut skipped) = import_split(
        &train,
        options.side,
        &split_file(staging.path(), Split::Train),
        &tick,
    )?;
    let (test_labels, test_skipped) = import_split(
        &test,
        options.side,
        &split_file(staging.path(), Split::Test),
        &tick,
    )?;
    skipped.extend(test_skipped);
    let count = |labels: &[u8]| {
        let mut per = vec![0usize; classes.len()];
        for &l in labels {
            per[l as usize] += 1;
        }
        per
    };
    if train_labels.is_empty() || test_labels.is_empty() {
        return Err(DataError::BadMeta {
            path: root.to_path_buf(),
            reason: format!(
                "no readable images left in the {} split ({} files skipped, e.g. {})",
                if train_labels.is_empty() {
                    "train"
                } else {
                    "test"
                },
                skipped.len(),
                skipped
                    .first()
                    .map(|s| format!("{}: {}", s.path.display(), s.reason))
                    .unwrap_or_default()
            ),
        });
    }
    let report = ImportReport {
        source: root.to_path_buf(),
        side: options.side,
        train_per_class: count(&train_labels),
        test_per_class: count(&test_labels),
        train: train_labels.len(),
        test: test_labels.len(),
        classes,
        held_out_test,
        skipped,
        seconds: started.elapsed().as_secs_f64(),
    };
    let classes_text: String = report.classes.iter().map(|c| format!("{c}\n")).collect();
    write_atomic(&staging.path().join(CLASSES_FILE), |w| {
        w.write_all(classes_text.as_bytes())
    })?;
    let json = serde_json::to_string_pretty(&report).expect("a report serialises");
    write_atomic(&staging.path().join(DATASET_FILE), |w| {
        w.write_all(json.as_bytes())
    })?;
    if out.exists() {
        std::fs::remove_dir(out).map_err(|e| DataError::io(out, e))?; // empty, checked above
    }
    let staged = staging.keep();
    std::fs::rename(&staged, out).map_err(|e| DataError::io(out, e))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn save(path: &Path, img: image::DynamicImage) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        img.save(path).unwrap();
    }

    fn solid(w: u32, h: u32, rgb: [u8; 3]) -> image::DynamicImage {
        image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(w, h, image::Rgb(rgb)))
    }

    #[test]
    fn a_folder_with_splits_and_classes_imports_exactly() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("photos");
        save(&root.join("train/cat/a.png"), solid(37, 23, [200, 10, 30]));
        save(
            &root.join("train/cat/b.jpg"),
            solid(64, 64, [128, 128, 128]),
        );
        save(
            &root.join("train/dog/c.bmp"),
            image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(9, 50, image::Luma([77]))),
        );
        save(
            &root.join("train/dog/deep/d.webp"),
            solid(20, 20, [0, 255, 0]),
        );
        std::fs::write(
            root.join("train/dog/broken.png"),
            b"\x89PNG\r\n\x1a\nnot really",
        )
        .unwrap();
        std::fs::write(root.join("train/dog/notes.txt"), b"ignored").unwrap();
        save(&root.join("test/cat/e.png"), solid(16, 16, [1, 2, 3]));
        let out = tmp.path().join("cache");
        let ticks = std::sync::atomic::AtomicUsize::new(0);
        let report = import_image_folder(
            &root,
            &out,
            &ImportOptions {
                side: 8,
                ..ImportOptions::default()
            },
            &|n| {
                if n.is_none() {
                    ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            },
        )
        .unwrap();
        assert_eq!(ticks.into_inner(), 6, "one tick per image file");
        assert_eq!(report.classes, ["cat", "dog"]);
        assert_eq!((report.train, report.test), (4, 1));
        assert_eq!(report.train_per_class, [2, 2]);
        assert!(!report.held_out_test);
        assert_eq!(report.skipped.len(), 1);
        assert!(report.skipped[0].path.ends_with("train/dog/broken.png"));
        assert!(
            report.skipped[0].reason.contains("damaged"),
            "{:?}",
            report.skipped
        );

        assert!(is_image_set(&out));
        let train = load_image_set(&out, Split::Train).unwrap();
        assert_eq!(train.images.dim(), (4, 3, 8, 8));
        assert_eq!(train.labels.to_vec(), [0, 0, 1, 1]);
        assert_eq!(train.class_names, ["cat", "dog"]);
        // Solid colours survive resizing and cropping exactly (PNG, BMP are lossless).
        assert!(train
            .images
            .slice(ndarray::s![0, 0, .., ..])
            .iter()
            .all(|&v| v == 200));
        assert!(train
            .images
            .slice(ndarray::s![0, 2, .., ..])
            .iter()
            .all(|&v| v == 30));
        // Grayscale becomes three equal channels.
        assert!(train
            .images
            .slice(ndarray::s![2, .., .., ..])
            .iter()
            .all(|&v| v == 77));
        let test = load_image_set(&out, Split::Test).unwrap();
        assert_eq!(test.images.dim(), (1, 3, 8, 8));
        let saved: ImportReport =
            serde_json::from_str(&std::fs::read_to_string(out.join(DATASET_FILE)).unwrap())
                .unwrap();
        assert_eq!(saved, report);

        // A second import into the same folder is refused, the first left as it was.
        let again = import_image_folder(&root, &out, &ImportOptions::default(), &|_| {});
        assert!(again.unwrap_err().to_string().contains("not empty"));
        assert_eq!(load_image_set(&out, Split::Train).unwrap(), train);
    }

    #[test]
    fn a_flat_folder_holds_out_a_seeded_test_split() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("flat");
        for i in 0..20u8 {
            save(
                &root.join(format!("{i:02}.png")),
                solid(40, 30, [i * 10, 0, 0]),
            );
        }
        let import = |name: &str| {
            let out = tmp.path().join(name);
            let report = import_image_folder(
                &root,
                &out,
                &ImportOptions {
                    side: 4,
                    ..ImportOptions::default()
                },
                &|_| {},
            )
            .unwrap();
            (report, load_image_set(&out, Split::Test).unwrap())
        };
        let (report, test) = import("a");
        assert_eq!((report.train, report.test), (18, 2));
        assert!(report.held_out_test);
        assert_eq!(report.classes, ["all"]);
        assert_eq!(import("b").1, test, "the hold-out is seeded");
    }

    #[test]
    fn bad_folders_are_named_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = ImportOptions::default();
        let none = |root: &Path| {
            import_image_folder(root, &tmp.path().join("out"), &opts, &|_| {})
                .unwrap_err()
                .to_string()
        };
        assert!(none(&tmp.path().join("missing")).contains("missing"));
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(none(&empty).contains("holds no images"));
        let only_bad = tmp.path().join("bad");
        std::fs::create_dir(&only_bad).unwrap();
        std::fs::write(only_bad.join("a.png"), b"").unwrap();
        std::fs::write(only_bad.join("b.jpg"), b"nope").unwrap();
        let err = none(&only_bad);
        assert!(
            err.contains("no readable images") && err.contains("a.png"),
            "{err}"
        );
        assert!(!tmp.path().join("out").exists(), "nothing left behind");
    }

    proptest! {
        #[test]
        fn image_sets_round_trip_and_bad_bytes_are_errors(
            n in 1usize..5, side in 1usize..6, seed in any::<u64>(), cut in 0usize..400, flip in 0usize..16,
        ) {
            use rand::Rng;
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let images = Array4::from_shape_fn((n, 3, side, side), |_| rng.random::<u8>());
            let labels: Vec<u8> = (0..n).map(|_| rng.random_range(0..3)).collect();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("train.bin");
            write_image_set(&path, images.view(), &labels).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            let (back, back_labels) = parse_image_set(&bytes, &path, 3).unwrap();
            prop_assert_eq!(back, images);
            prop_assert_eq!(back_labels.to_vec(), labels);
            // Any cut is an error; so is any change to the header but its reserved bytes' use.
            if cut < bytes.len() {
                prop_assert!(parse_image_set(&bytes[..cut], &path, 3).is_err());
            }
            let mut changed = bytes.clone();
            changed[flip] ^= 0x5a;
            prop_assert!(parse_image_set(&changed, &path, 3).is_err());
            // Random bytes never panic.
            let noise: Vec<u8> = (0..cut).map(|_| rng.random()).collect();
            let _ = parse_image_set(&noise, &path, 3);
        }
    }
}
