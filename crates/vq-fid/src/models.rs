//! FID of what the toolkit's models make: a VQ-VAE's reconstructions (rFID) and a prior's
//! samples decoded by its VQ-VAE.

use std::path::Path;

use tch::{Device, Tensor};
use vq_data::{gather, BatchIndices, Cifar10, PixelRange};
use vq_model::{images_to_tensor, to_bytes, VqVae};
use vq_prior::{CodePrior, SampleOptions};

use crate::extract::{Resumed, BATCH};
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

/// Code grids sampled at once, each chunk from its own seed ([`chunk_seed`]): sampling runs the
/// prior once per code position, so a big batch shares those passes; the network then takes
/// the decoded images `BATCH` at a time. Seeding each chunk alone makes the first `k · 500`
/// samples of a run the very samples a run of `k · 500` draws, and lets a stopped run resume.
pub const SAMPLE_CHUNK: i64 = 500;

/// Which samples to draw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Number of images.
    pub n: i64,
    /// How codes are drawn.
    pub options: SampleOptions,
    /// Seeds LibTorch's generator before each chunk of samples ([`chunk_seed`]).
    pub seed: u64,
    /// Draw every sample with the null class (a conditional prior's unconditional model)
    /// instead of class-balanced labels.
    pub unconditional: bool,
}

/// What makes the samples: the prior's draw and the decoder.
pub struct Generator<'a> {
    /// The prior's classes (0: a prior without labels); a conditional prior gets
    /// class-balanced labels unless the sampling is unconditional.
    pub classes: i64,
    /// The decoder's pixel range.
    pub range: PixelRange,
    /// `sample(n, labels)` draws `n` `(n, h, w)` code grids (of `labels` when given).
    pub sample: &'a mut dyn FnMut(i64, Option<&Tensor>) -> Tensor,
    /// Turns code grids into pixels in `range`.
    pub decode: &'a dyn Fn(&Tensor) -> Tensor,
}

impl std::fmt::Debug for Generator<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("classes", &self.classes)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

/// The seed of LibTorch's generator for the chunk of samples starting at sample `start` of a
/// run seeded with `seed` (SplitMix64 of both, so nearby seeds and chunks share nothing).
pub fn chunk_seed(seed: u64, start: i64) -> i64 {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    // LibTorch takes the seed as a signed number; every bit pattern is a valid one.
    mix(mix(seed) ^ start as u64) as i64
}

/// Features of `spec.n` images sampled from `prior` (class-balanced when it is conditional) and
/// decoded by `vqvae`, on the calling thread.
pub fn sample_features(
    net: &InceptionV3,
    vqvae: &VqVae,
    prior: &dyn CodePrior,
    spec: Sampling,
    progress: &dyn Fn(usize),
) -> Result<Tensor, FidError> {
    let device = net.device();
    let options = spec.options;
    sample_features_with(
        net,
        spec,
        Generator {
            classes: prior.provenance().classes,
            range: vqvae.config.input_range,
            sample: &mut |n, labels| prior.sample(n, labels, &options, device),
            decode: &|codes| vqvae.decode(&codes.unsqueeze(1)),
        },
        None,
        progress,
    )
    .map(|made| made.value)
}

/// [`sample_features`] with the sampling and the decoding given, [`SAMPLE_CHUNK`] grids at a
/// time. With `parts`, each chunk's features are saved in that folder as they are finished and
/// read back instead of made again when they are there (see [`crate::resumable_features`]):
/// the caller makes sure the folder holds features of the same sampling ([`crate::claim_parts`]).
/// `computed` counts the samples drawn by this run.
pub fn sample_features_with(
    net: &InceptionV3,
    spec: Sampling,
    generator: Generator<'_>,
    parts: Option<&Path>,
    progress: &dyn Fn(usize),
) -> Result<Resumed<Tensor>, FidError> {
    chunked_sample_features(net, spec, SAMPLE_CHUNK, generator, parts, progress)
}

fn chunked_sample_features(
    net: &InceptionV3,
    spec: Sampling,
    chunk: i64,
    generator: Generator<'_>,
    parts: Option<&Path>,
    progress: &dyn Fn(usize),
) -> Result<Resumed<Tensor>, FidError> {
    let Sampling {
        n,
        seed,
        unconditional,
        ..
    } = spec;
    if n < 1 {
        return Err(FidError::Invalid("no samples".into()));
    }
    let Generator {
        classes,
        range,
        sample,
        decode,
    } = generator;
    let device = net.device();
    let labels = if unconditional {
        None
    } else {
        balanced_labels(n, classes)
    };
    let mut make = |start: usize, len: usize| -> Result<Tensor, FidError> {
        let (start, len) = (start as i64, len as i64);
        tch::manual_seed(chunk_seed(seed, start));
        let chunk_labels = labels.as_ref().map(|l| {
            Tensor::from_slice(&l[start as usize..(start + len) as usize]).to_device(device)
        });
        let codes = sample(len, chunk_labels.as_ref());
        let images = to_bytes(&decode(&codes), range);
        crate::features_of(net, &images, &mut |done| progress(start as usize + done))
    };
    match parts {
        Some(dir) => crate::resumable_features(
            dir,
            n as usize,
            chunk as usize,
            &mut |done, _| progress(done),
            &mut make,
        ),
        None => {
            let mut features = Vec::new();
            for start in (0..n).step_by(chunk as usize) {
                features.push(make(start as usize, chunk.min(n - start) as usize)?);
            }
            Ok(Resumed {
                value: Tensor::cat(&features, 0),
                computed: n as usize,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use tch::Kind;

    /// What each call to the sampler was asked: how many grids, of which labels.
    type Draws = RefCell<Vec<(i64, Option<Vec<i64>>)>>;

    /// Features of `n` stand-in samples in chunks of 2 (the real network, tiny images): each
    /// grid is random codes from LibTorch's generator, decoded as flat colours of the codes.
    fn features(
        net: &InceptionV3,
        n: i64,
        seed: u64,
        parts: Option<&Path>,
        drawn: &Draws,
    ) -> Resumed<Tensor> {
        let spec = Sampling {
            n,
            options: SampleOptions::default(),
            seed,
            unconditional: false,
        };
        let mut sample = |count: i64, labels: Option<&Tensor>| {
            drawn
                .borrow_mut()
                .push((count, labels.map(|l| Vec::<i64>::try_from(l).unwrap())));
            Tensor::randint(4, [count, 2, 2], (Kind::Int64, Device::Cpu))
        };
        let decode = |codes: &Tensor| {
            (codes.to_kind(Kind::Float) / 3.0)
                .unsqueeze(1)
                .repeat([1, 3, 4, 4])
        };
        let generator = Generator {
            classes: 3,
            range: PixelRange::ZeroOne,
            sample: &mut sample,
            decode: &decode,
        };
        chunked_sample_features(net, spec, 2, generator, parts, &|_| {}).unwrap()
    }

    #[test]
    fn the_first_samples_of_a_run_are_a_shorter_runs_and_a_stopped_run_resumes() {
        let _rng = vq_model::seeded(0);
        let net = InceptionV3::load(&crate::default_weights(), Device::Cpu).unwrap();
        let drawn = RefCell::new(Vec::new());
        let five = features(&net, 5, 7, None, &drawn).value;
        assert_eq!(five.size(), vec![5, crate::FEATURES]);
        // Chunks of 2, 2 and 1, class-balanced over 3 classes across chunks.
        assert_eq!(
            drawn.take(),
            [
                (2, Some(vec![0, 1])),
                (2, Some(vec![2, 0])),
                (1, Some(vec![1]))
            ]
        );
        // The first 4 of 5 samples are the samples of a run of 4 with the same seed (chunks
        // drawn in order from one seed would give that too; the resumption below needs each
        // chunk's own seed).
        let four = features(&net, 4, 7, None, &drawn).value;
        assert_eq!(four, five.narrow(0, 0, 4));
        assert_ne!(features(&net, 4, 8, None, &drawn).value, four);

        // With a folder of parts, a second run draws nothing it already has.
        let dir = tempfile::tempdir().unwrap();
        drawn.take();
        let kept = features(&net, 4, 7, Some(dir.path()), &drawn);
        assert_eq!((kept.value, kept.computed), (four, 4));
        assert_eq!(drawn.take().len(), 2);
        let resumed = features(&net, 5, 7, Some(dir.path()), &drawn);
        assert_eq!((resumed.value, resumed.computed), (five, 1));
        assert_eq!(drawn.take(), [(1, Some(vec![1]))]);
    }
}
