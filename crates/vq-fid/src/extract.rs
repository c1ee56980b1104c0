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

/// The statistics of a dataset split: from the cache when they were computed before for the
/// same files and network, else computed (all of the split's images) and cached. A dataset
/// folder that cannot be written to only loses the cache.
pub fn split_stats(
    net: &InceptionV3,
    dir: &Path,
    split: Split,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<FeatureStats, FidError> {
    let identity = split_identity(dir, split)?;
    let path = cache_path(dir, split, &identity);
    if path.is_file() {
        return FeatureStats::load(&path);
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
    let features = features_of(net, &images, &mut |done| progress(done, n))?;
    let stats = FeatureStats::from_features(&features)?;
    let saved = path
        .parent()
        .map(std::fs::create_dir_all)
        .transpose()
        .map_err(|e| e.to_string())
        .and_then(|_| stats.save(&path).map_err(|e| e.to_string()));
    if let Err(e) = saved {
        tracing::warn!("could not cache the statistics in {}: {e}", path.display());
    }
    Ok(stats)
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
