//! FID of what the toolkit's models make: a VQ-VAE's reconstructions (rFID) and a prior's
//! samples decoded by its VQ-VAE.

use tch::{Device, Tensor};
use vq_data::{gather, BatchIndices, Cifar10, PixelRange};
use vq_model::{images_to_tensor, to_bytes, VqVae};
use vq_prior::{CodePrior, SampleOptions};

use crate::extract::BATCH;
use crate::inception::InceptionV3;
use crate::FidError;

/// Features of the reconstructions of the first `count` images of `set` (8-bit, as a PNG of
/// them would hold).
pub fn reconstruction_features(
    net: &InceptionV3,
    vqvae: &VqVae,
    set: &Cifar10,
    scope: vq_model::EvalScope,
    device: Device,
    progress: &mut dyn FnMut(usize),
) -> Result<Tensor, FidError> {
    let range = vqvae.config.input_range;
    let count = scope.count;
    let mut parts = Vec::new();
    for start in (0..count).step_by(BATCH as usize) {
        let end = (start + BATCH as usize).min(count);
        let batch = BatchIndices {
            indices: (start..end).collect(),
            flips: vec![false; end - start],
        };
        let xs = images_to_tensor(&gather(set.images.view(), &batch, range), device)
            .map_err(|e| FidError::Invalid(e.to_string()))?;
        let recon = {
            let _guard = tch::no_grad_guard();
            let codes = scope
                .codes(vqvae, &xs)
                .map_err(|e| FidError::Invalid(e.to_string()))?;
            scope.decode(vqvae, &codes)
        };
        parts.push(net.features(&to_bytes(&recon, range))?);
        progress(end);
    }
    if parts.is_empty() {
        return Err(FidError::Invalid("no images to reconstruct".into()));
    }
    Ok(Tensor::cat(&parts, 0))
}

/// Labels of `n` class-balanced samples over `classes` classes (none when unconditional):
/// class `i % classes` for sample `i`.
pub fn balanced_labels(n: i64, classes: i64) -> Option<Vec<i64>> {
    (classes > 0).then(|| (0..n).map(|i| i % classes).collect())
}

/// Code grids sampled at once: sampling runs the prior once per code position, so a big batch
/// shares those passes; the network then takes the decoded images `BATCH` at a time.
const SAMPLE_CHUNK: i64 = 500;

/// Which samples to draw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Number of images.
    pub n: i64,
    /// How codes are drawn.
    pub options: SampleOptions,
    /// Seeds LibTorch's generator before the first sample.
    pub seed: u64,
    /// Draw every sample with the null class (a conditional prior's unconditional model)
    /// instead of class-balanced labels.
    pub unconditional: bool,
}

/// Features of `spec.n` images sampled from `prior` (class-balanced when it is conditional) and
/// decoded by `vqvae`, on the calling thread.
pub fn sample_features(
    net: &InceptionV3,
    vqvae: &VqVae,
    prior: &dyn CodePrior,
    spec: Sampling,
    progress: &mut dyn FnMut(usize),
) -> Result<Tensor, FidError> {
    let device = net.device();
    let options = spec.options;
    sample_features_with(
        net,
        spec,
        prior.provenance().classes,
        vqvae.config.input_range,
        &mut |n, labels| prior.sample(n, labels, &options, device),
        &|codes| vqvae.decode(&codes.unsqueeze(1)),
        progress,
    )
}

/// [`sample_features`] with the sampling and the decoding given: `sample(n, labels)` draws `n`
/// `(n, h, w)` grids (of `labels` when given) and `decode` turns them into pixels in `range`;
/// a prior with `classes` classes gets class-balanced labels unless `spec` is unconditional.
/// LibTorch's generator is seeded with `spec.seed` first.
pub fn sample_features_with(
    net: &InceptionV3,
    spec: Sampling,
    classes: i64,
    range: PixelRange,
    sample: &mut dyn FnMut(i64, Option<&Tensor>) -> Tensor,
    decode: &dyn Fn(&Tensor) -> Tensor,
    progress: &mut dyn FnMut(usize),
) -> Result<Tensor, FidError> {
    let Sampling {
        n,
        seed,
        unconditional,
        ..
    } = spec;
    let device = net.device();
    tch::manual_seed(seed as i64);
    let labels = if unconditional {
        None
    } else {
        balanced_labels(n, classes)
    };
    let mut parts = Vec::new();
    for start in (0..n).step_by(SAMPLE_CHUNK as usize) {
        let len = SAMPLE_CHUNK.min(n - start);
        let chunk_labels = labels.as_ref().map(|l| {
            Tensor::from_slice(&l[start as usize..(start + len) as usize]).to_device(device)
        });
        let codes = sample(len, chunk_labels.as_ref());
        let images = to_bytes(&decode(&codes), range);
        parts.push(crate::features_of(net, &images, &mut |done| {
            progress(start as usize + done)
        })?);
    }
    if parts.is_empty() {
        return Err(FidError::Invalid("no samples".into()));
    }
    Ok(Tensor::cat(&parts, 0))
}
