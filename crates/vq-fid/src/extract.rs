//! Features of many images, in batches: a dataset split (with its statistics cached under the
//! split's identity), a folder of image files, or image tensors made on the fly.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};
use vq_data::Split;

use crate::inception::InceptionV3;
use crate::stats::FeatureStats;
use crate::{FidError, WEIGHTS_SHA256};

/// Images per network pass: small batches ran fastest on the 2-core CPU, about 1.4 times
/// batches of 50 (`cargo bench -p vq-fid --bench features`, docs/experiments.md); the features
/// do not depend on it.
pub const BATCH: i64 = 5;

/// Features of `(N, 3, H, W)` 8-bit images, `BATCH` at a time; `progress` gets the number done.
pub fn features_of(
    net: &InceptionV3,
    images: &Tensor,
    progress: &mut dyn FnMut(usize),
) -> Result<Tensor, FidError> {
    let n = images.size()[0];
    let mut parts = Vec::new();
    for start in (0..n).step_by(BATCH as usize) {
        let len = BATCH.min(n - start);
        parts.push(net.features(&images.narrow(0, start, len))?);
        progress((start + len) as usize);
    }
    if parts.is_empty() {
        return Err(FidError::Invalid("no images".into()));
    }
    Ok(Tensor::cat(&parts, 0))
}

/// A dataset split's identity for the statistics cache: the SHA-256 of its files, of the
/// network and of this pipeline's version.
pub fn split_identity(dir: &Path, split: Split) -> Result<String, FidError> {
    let mut hasher = Sha256::new();
    hasher.update(b"vqvae-rs fid statistics v1 nv_bilinear\n");
    hasher.update(WEIGHTS_SHA256.as_bytes());
    for file in vq_data::split_files(dir, split) {
        let bytes = std::fs::read(&file).map_err(|e| FidError::Unreadable {
            path: file.clone(),
            reason: e.to_string(),
        })?;
        hasher.update(Sha256::digest(&bytes));
    }
    Ok(hasher
        .finalize()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Where the statistics of `split` of the dataset `dir` are cached.
pub fn cache_path(dir: &Path, split: Split, identity: &str) -> PathBuf {
    dir.join("fid").join(format!("{split}-{identity}.fidstats"))
}

/// What a computation that reads back finished work made, and how many of its items went
/// through the network in this run (the others were read back: a cache, finished parts).
#[derive(Debug)]
pub struct Resumed<T> {
    /// The features or statistics.
    pub value: T,
    /// Items computed now, not read back.
    pub computed: usize,
}

/// The statistics of a dataset split: from the cache when they were computed before for the
/// same files and network, else computed (all of the split's images) and cached. A dataset
/// folder that cannot be written to only loses the cache.
pub fn split_stats(
    net: &InceptionV3,
    dir: &Path,
    split: Split,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Resumed<FeatureStats>, FidError> {
    let identity = split_identity(dir, split)?;
    let path = cache_path(dir, split, &identity);
    if path.is_file() {
        return Ok(Resumed {
            value: FeatureStats::load(&path)?,
            computed: 0,
        });
    }
    let set =
        vq_data::load_split(dir, split, &Default::default()).map_err(|e| FidError::Unreadable {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
    let n = set.len();
    let images = Tensor::from_slice(set.images.as_slice().unwrap_or(&[]))
        .view([
            n as i64,
            3,
            set.images.dim().2 as i64,
            set.images.dim().3 as i64,
        ])
        .to_kind(Kind::Uint8);
    let parts = parts_dir(&path);
    let features = resumable_features(&parts, n, PART, progress, &mut |start, len| {
        features_of(
            net,
            &images.narrow(0, start as i64, len as i64),
            &mut |_| {},
        )
    })?;
    let stats = FeatureStats::from_features(&features.value)?;
    let saved = path
        .parent()
        .map(std::fs::create_dir_all)
        .transpose()
        .map_err(|e| e.to_string())
        .and_then(|_| stats.save(&path).map_err(|e| e.to_string()));
    match saved {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&parts);
        }
        Err(e) => tracing::warn!("could not cache the statistics in {}: {e}", path.display()),
    }
    Ok(Resumed {
        value: stats,
        computed: features.computed,
    })
}

/// Images in each saved part of a split's features while its statistics are computed: the
/// 50,000 training images take hours on a 2-core CPU, and a computation that is stopped resumes
/// from its last finished part (a multiple of [`BATCH`], so the network sees the same batches).
pub const PART: usize = 1000;

/// Where the finished parts of the statistics cached at `cache` wait until the statistics are
/// written (named after the same identity, so parts of other files are never mixed in).
pub fn parts_dir(cache: &Path) -> PathBuf {
    cache.with_extension("parts")
}

/// Features of `n` items, `part` at a time: `compute(start, len)` gives the `(len, FEATURES)`
/// features of items `start..start + len`; each part is saved in `dir` as it is finished
/// (atomically) and read back instead of computed when it is there, so an interrupted run loses
/// at most one part. A part file that cannot be read, or holds the wrong shape or non-finite
/// values, is computed again. A `dir` that cannot be written to only loses the resumption.
pub fn resumable_features(
    dir: &Path,
    n: usize,
    part: usize,
    progress: &mut dyn FnMut(usize, usize),
    compute: &mut dyn FnMut(usize, usize) -> Result<Tensor, FidError>,
) -> Result<Resumed<Tensor>, FidError> {
    if n == 0 || part == 0 {
        return Err(FidError::Invalid("no images".into()));
    }
    let mut writable = std::fs::create_dir_all(dir)
        .map_err(|e| tracing::warn!("{}: cannot keep finished parts: {e}", dir.display()))
        .is_ok();
    let mut parts = Vec::new();
    let mut resumed = 0;
    for start in (0..n).step_by(part) {
        let len = part.min(n - start);
        let file = dir.join(format!("part-{start:07}-{len}.safetensors"));
        let kept = if file.is_file() {
            match read_part(&file, len) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!("computing a part again: {e}");
                    None
                }
            }
        } else {
            None
        };
        let features = match kept {
            Some(t) => {
                resumed += len;
                t
            }
            None => {
                let t = compute(start, len)?.to_kind(Kind::Float).contiguous();
                if writable {
                    if let Err(e) = vq_store::weights::save_tensors(&[("features", &t)], &file) {
                        tracing::warn!("cannot keep finished parts: {e}");
                        writable = false;
                    }
                }
                t
            }
        };
        parts.push(features);
        progress(start + len, n);
    }
    if resumed > 0 {
        tracing::info!(
            "resumed {resumed} of {n} images' features from {}",
            dir.display()
        );
    }
    Ok(Resumed {
        value: Tensor::cat(&parts, 0),
        computed: n - resumed,
    })
}

/// The file in a folder of parts naming what the parts are features of.
pub const PARTS_IDENTITY: &str = "identity.txt";

/// Makes `dir` the folder of parts of features described by `identity` (any text naming
/// everything the features depend on): creates it and writes the identity there, or, when it
/// already holds parts, checks they are of the same `identity`, so that a resumed run never
/// mixes in features of other images.
pub fn claim_parts(dir: &Path, identity: &str) -> Result<(), FidError> {
    let file = dir.join(PARTS_IDENTITY);
    let unwritable = |e: std::io::Error| FidError::Unreadable {
        path: dir.to_path_buf(),
        reason: format!("cannot keep features there: {e}"),
    };
    match std::fs::read_to_string(&file) {
        Ok(found) if found == identity => return Ok(()),
        Ok(found) => {
            return Err(FidError::Invalid(format!(
                "{}: holds the features of other images ({}): give another folder, or remove it",
                dir.display(),
                differences(&found, identity)
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(FidError::Unreadable {
                path: file,
                reason: e.to_string(),
            })
        }
    }
    std::fs::create_dir_all(dir).map_err(unwritable)?;
    let stray = std::fs::read_dir(dir)
        .map_err(unwritable)?
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with("part-"));
    if stray {
        return Err(FidError::Invalid(format!(
            "{}: holds parts of features without {PARTS_IDENTITY}: give another folder, or \
             remove it",
            dir.display()
        )));
    }
    let tmp = dir.join(format!(".{PARTS_IDENTITY}.tmp"));
    std::fs::write(&tmp, identity).map_err(unwritable)?;
    std::fs::rename(&tmp, &file).map_err(unwritable)
}

/// How identity `found` differs from `wanted`, line by line, on one line: `there: X, here: Y`
/// for each line that differs.
fn differences(found: &str, wanted: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (found.lines().collect(), wanted.lines().collect());
    (0..a.len().max(b.len()))
        .filter_map(|i| {
            let (x, y) = (
                a.get(i).copied().unwrap_or(""),
                b.get(i).copied().unwrap_or(""),
            );
            (x != y).then(|| format!("there: {x:?}, here: {y:?}"))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A part written by [`resumable_features`]: `(len, FEATURES)` finite f32 features.
fn read_part(file: &Path, len: usize) -> Result<Tensor, FidError> {
    let bad = |reason: String| FidError::Unreadable {
        path: file.to_path_buf(),
        reason,
    };
    let t = vq_store::weights::load_tensors(file)?
        .remove("features")
        .ok_or_else(|| bad("no features tensor".into()))?;
    if t.size() != [len as i64, crate::FEATURES] || t.kind() != Kind::Float {
        return Err(bad(format!(
            "features of shape {:?} ({:?}), expected [{len}, {}] f32",
            t.size(),
            t.kind(),
            crate::FEATURES
        )));
    }
    if t.isfinite().all().int64_value(&[]) != 1 {
        return Err(bad("features hold NaN or infinite values".into()));
    }
    Ok(t)
}

/// Features of image files (any size, any format `vq-data` reads): consecutive images of one
/// size go through the network together.
pub fn files_features(
    net: &InceptionV3,
    files: &[PathBuf],
    progress: &mut dyn FnMut(usize),
) -> Result<Tensor, FidError> {
    let mut parts = Vec::new();
    let mut pending: Vec<Tensor> = Vec::new();
    let flush = |pending: &mut Vec<Tensor>, parts: &mut Vec<Tensor>| -> Result<(), FidError> {
        if !pending.is_empty() {
            parts.push(net.features(&Tensor::stack(pending, 0))?);
            pending.clear();
        }
        Ok(())
    };
    for (i, file) in files.iter().enumerate() {
        let img = vq_data::image_file::read_image(file).map_err(|e| FidError::Unreadable {
            path: file.clone(),
            reason: e.to_string(),
        })?;
        let (w, h) = img.rgb.dimensions();
        let t = Tensor::from_slice(img.rgb.as_raw())
            .view([h as i64, w as i64, 3])
            .permute([2, 0, 1]);
        if pending.first().is_some_and(|p| p.size() != t.size()) || pending.len() as i64 == BATCH {
            flush(&mut pending, &mut parts)?;
        }
        pending.push(t);
        progress(i + 1);
    }
    flush(&mut pending, &mut parts)?;
    if parts.is_empty() {
        return Err(FidError::Invalid("no images".into()));
    }
    Ok(Tensor::cat(&parts, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FEATURES;
    use tch::Device;

    /// Deterministic stand-in features: item `i`'s vector is `i + j / FEATURES`.
    fn fake(start: usize, len: usize) -> Tensor {
        let items = Tensor::arange_start(
            start as i64,
            (start + len) as i64,
            (Kind::Float, Device::Cpu),
        );
        let cols = Tensor::arange(FEATURES, (Kind::Float, Device::Cpu)) / FEATURES as f64;
        items.unsqueeze(1) + cols.unsqueeze(0)
    }

    #[test]
    fn an_interrupted_computation_resumes_from_its_finished_parts() {
        let dir = tempfile::tempdir().unwrap();
        let parts = dir.path().join("s.parts");
        let whole = fake(0, 11);

        // Stopped while computing the third part (items 6..9): two parts stay on disk.
        let mut calls = Vec::new();
        let err = resumable_features(&parts, 11, 3, &mut |_, _| {}, &mut |start, len| {
            calls.push(start);
            if start == 6 {
                return Err(FidError::Invalid("stopped".into()));
            }
            Ok(fake(start, len))
        })
        .unwrap_err();
        assert!(err.to_string().contains("stopped"));
        assert_eq!(calls, [0, 3, 6]);
        assert_eq!(std::fs::read_dir(&parts).unwrap().count(), 2);

        // The second run computes only the parts that are missing, and reports the whole count.
        let mut calls = Vec::new();
        let mut seen = Vec::new();
        let got = resumable_features(
            &parts,
            11,
            3,
            &mut |done, total| seen.push((done, total)),
            &mut |start, len| {
                calls.push((start, len));
                Ok(fake(start, len))
            },
        )
        .unwrap();
        assert_eq!(calls, [(6, 3), (9, 2)]);
        assert_eq!(seen, [(3, 11), (6, 11), (9, 11), (11, 11)]);
        assert_eq!(got.value, whole);
        assert_eq!(got.computed, 5);

        // A damaged part is computed again rather than trusted.
        std::fs::write(parts.join("part-0000003-3.safetensors"), b"junk").unwrap();
        let mut calls = Vec::new();
        let got = resumable_features(&parts, 11, 3, &mut |_, _| {}, &mut |start, len| {
            calls.push(start);
            Ok(fake(start, len))
        })
        .unwrap();
        assert_eq!(calls, [3]);
        assert_eq!(got.value, whole);
        assert_eq!(got.computed, 3);

        // A part of the wrong shape (another part size) is not mixed in either.
        let t = fake(0, 2);
        vq_store::weights::save_tensors(
            &[("features", &t)],
            &parts.join("part-0000000-3.safetensors"),
        )
        .unwrap();
        let err = read_part(&parts.join("part-0000000-3.safetensors"), 3).unwrap_err();
        assert!(err.to_string().contains("part-0000000-3"), "{err}");
        assert!(
            resumable_features(&parts, 0, 3, &mut |_, _| {}, &mut |s, l| Ok(fake(s, l))).is_err()
        );
    }

    #[test]
    fn a_folder_of_parts_belongs_to_one_identity() {
        let dir = tempfile::tempdir().unwrap();
        let parts = dir.path().join("samples");
        claim_parts(&parts, "prior a\nseed 0\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(parts.join(PARTS_IDENTITY)).unwrap(),
            "prior a\nseed 0\n"
        );
        // The same identity again (a resumed run) is accepted, another one refused by name.
        claim_parts(&parts, "prior a\nseed 0\n").unwrap();
        let err = claim_parts(&parts, "prior a\nseed 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("samples"), "{err}");
        assert!(err.contains(r#"there: "seed 0", here: "seed 1""#), "{err}");
        assert!(!err.contains("prior a"), "only what differs: {err}");
        // A folder of parts that names nothing is not claimed either.
        let bare = dir.path().join("bare");
        std::fs::create_dir_all(&bare).unwrap();
        std::fs::write(bare.join("part-0000000-3.safetensors"), b"x").unwrap();
        let err = claim_parts(&bare, "x").unwrap_err().to_string();
        assert!(
            err.contains("bare") && err.contains(PARTS_IDENTITY),
            "{err}"
        );
        // An empty existing folder is fine.
        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        claim_parts(&empty, "x").unwrap();
    }
}
