//! A code prior: new code grids, and the probabilities that arithmetic-code `.vqz` files.

use std::path::Path;

use tch::{Device, Tensor};
use vq_prior::{PriorCheckpoint, SampleOptions};
use vq_store::Source;

use crate::codec::CodeGrid;
use crate::compress::EntropyCoder;
use crate::error::Result;
use crate::Tokenizer;

/// A prior over a tokenizer's codes (the bundled transformer, or one `vq-train prior` made).
///
/// ```
/// # fn main() -> Result<(), vqvae::Error> {
/// let tokenizer = vqvae::Tokenizer::bundled()?;
/// let prior = vqvae::Prior::bundled(&tokenizer)?;
/// let cat = prior.class("cat").expect("a CIFAR-10 class");
/// let grids = prior.sample(2, Some(cat), 7)?;
/// assert_eq!(grids.len(), 2);
/// let picture = tokenizer.decode(&grids[0]);
/// assert_eq!(picture.dimensions(), (32, 32));
/// # Ok(())
/// # }
/// ```
pub struct Prior {
    coder: EntropyCoder,
    device: Device,
}

impl std::fmt::Debug for Prior {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prior")
            .field("prior", &self.coder.prior.origin())
            .field("device", &self.device)
            .finish()
    }
}

impl Prior {
    /// The bundled prior, for the bundled model's codes.
    pub fn bundled(tokenizer: &Tokenizer) -> Result<Self> {
        Self::open_source(Source::Bundled(&vq_prior::BUNDLED), tokenizer)
    }

    /// A prior trained by `vq-train prior` (a checkpoint or run folder), checked against the
    /// tokenizer's codes.
    pub fn open(path: impl AsRef<Path>, tokenizer: &Tokenizer) -> Result<Self> {
        Self::open_source(Source::Path(path.as_ref()), tokenizer)
    }

    /// The prior at `path` when given, else the bundled one, checked against the tokenizer's
    /// codes, on `device` (entropy coding runs on the CPU whatever the tokenizer's device):
    /// what `vq-cli --prior` opens.
    pub fn open_or_bundled(
        path: Option<&Path>,
        tokenizer: &Tokenizer,
        device: Device,
    ) -> Result<Self> {
        let source = match path {
            Some(p) => Source::Path(p),
            None => Source::Bundled(&vq_prior::BUNDLED),
        };
        Self::open_source_on(source, tokenizer, device)
    }

    /// The bundled prior whose model id begins with `prior_id` (what a coded `.vqz` file
    /// records of its prior), on the CPU: the current one, else a retired one
    /// (`vq_prior::RETIRED`) that older files were coded with; the current one when none
    /// matches, so that the caller's mismatch error can name it.
    pub fn bundled_coded_as(tokenizer: &Tokenizer, prior_id: &[u8]) -> Result<Self> {
        let current =
            Self::open_source_on(Source::Bundled(&vq_prior::BUNDLED), tokenizer, Device::Cpu)?;
        if current.checkpoint().model_id.starts_with(prior_id) {
            return Ok(current);
        }
        for retired in vq_prior::RETIRED {
            // A retired prior of another VQ-VAE is not this file's.
            if let Ok(prior) =
                Self::open_source_on(Source::Bundled(retired), tokenizer, Device::Cpu)
            {
                if prior.checkpoint().model_id.starts_with(prior_id) {
                    return Ok(prior);
                }
            }
        }
        Ok(current)
    }

    fn open_source(source: Source<'_>, tokenizer: &Tokenizer) -> Result<Self> {
        Self::open_source_on(source, tokenizer, tokenizer.device())
    }

    fn open_source_on(source: Source<'_>, tokenizer: &Tokenizer, device: Device) -> Result<Self> {
        let ckpt = tokenizer.checkpoint();
        let prior = PriorCheckpoint::open_for(
            source,
            &ckpt.origin(),
            &vq_store::hex(&ckpt.codes_id()),
            device,
        )?;
        Ok(Prior {
            coder: EntropyCoder::new(prior),
            device,
        })
    }

    /// The coder, for [`crate::code_file`] and [`crate::decode_entropy`].
    pub fn into_coder(self) -> EntropyCoder {
        self.coder
    }

    /// Samples with the transformer's matrix products in `kind` (`tch::Kind::BFloat16` is
    /// faster where the CPU or GPU runs it natively, `tch::Kind::Int8` quantizes weights and
    /// activations to 8 bits on a CPU; their draws differ from f32's). False when the prior
    /// cannot (the PixelCNN samples in f32 only; no other kinds).
    pub fn set_sampling_kind(&mut self, kind: tch::Kind) -> bool {
        self.coder.prior.set_sampling_kind(kind)
    }

    /// `n` new `(n, h, w)` code grids (on the prior's device), of `labels` (`(n,)` classes)
    /// when given, drawn with `options` from LibTorch's current random state. On the CPU the
    /// grids are drawn in as many independent streams as LibTorch has threads, each on one
    /// thread with its own copy of the prior
    /// ([`vq_prior::PriorCheckpoint::sample_in_streams`]): the same draws for a seed and a
    /// thread count.
    ///
    /// # Panics
    /// As [`Prior::sample_with`], and if the prior's weights cannot be copied for a stream.
    pub fn sample_codes(&self, n: i64, labels: Option<&Tensor>, options: &SampleOptions) -> Tensor {
        let streams = match self.device {
            tch::Device::Cpu => tch::get_num_threads().max(1) as usize,
            _ => 1,
        };
        self.coder
            .prior
            .sample_in_streams(n, labels, options, streams)
            .expect("copying the prior's weights for a sampling stream")
    }

    /// The checkpoint: its config and weights.
    pub fn checkpoint(&self) -> &PriorCheckpoint {
        &self.coder.prior
    }

    /// What arithmetic-codes `.vqz` files with this prior.
    pub fn coder(&self) -> &EntropyCoder {
        &self.coder
    }

    /// The class names it is conditioned on (empty: unconditional).
    pub fn class_names(&self) -> Vec<String> {
        let provenance = self.coder.prior.model.provenance();
        // The provenance names CIFAR-10's classes when it lists none, even for an
        // unconditional prior: only as many as the prior has classes are its own.
        let mut names = provenance.class_names();
        names.truncate(provenance.classes.max(0) as usize);
        names
    }

    /// The index of the class `name`.
    pub fn class(&self, name: &str) -> Option<usize> {
        self.class_names().iter().position(|c| c == name)
    }

    /// The sampling settings the prior was measured best with (its config's `"sampling"`).
    pub fn default_options(&self) -> SampleOptions {
        self.coder.prior.config.sampling.unwrap_or_default()
    }

    /// `n` new code grids of `class` (or, for a conditional prior, `None`: the classes in turn;
    /// an unconditional prior takes `None`), with the prior's own settings, drawn from `seed`.
    pub fn sample(&self, n: usize, class: Option<usize>, seed: u64) -> Result<Vec<CodeGrid>> {
        let classes = self.class_names().len();
        let labels: Option<Vec<i64>> = match (class, classes) {
            (Some(_), 0) => {
                return Err(crate::Error::Invalid(
                    "this prior is not class-conditional: sample it without a class".into(),
                ))
            }
            (Some(c), k) if c >= k => {
                return Err(crate::Error::Invalid(format!(
                    "class {c}: this prior has classes 0 to {}",
                    k - 1
                )))
            }
            (Some(c), _) => Some(vec![c as i64; n]),
            (None, 0) => None,
            (None, k) => Some((0..n as i64).map(|i| i % k as i64).collect()),
        };
        Ok(self.sample_with(n, labels.as_deref(), &self.default_options(), seed))
    }

    /// `n` new code grids, of `labels` (one a grid) when given, drawn with `options`.
    ///
    /// # Panics
    /// If a label is not one of the prior's classes, or `labels` is given to an unconditional
    /// prior ([`Prior::sample`] checks both).
    pub fn sample_with(
        &self,
        n: usize,
        labels: Option<&[i64]>,
        options: &SampleOptions,
        seed: u64,
    ) -> Vec<CodeGrid> {
        tch::manual_seed(seed as i64);
        let labels = labels.map(|l| Tensor::from_slice(l).to_device(self.device));
        let codes = self
            .sample_codes(n as i64, labels.as_ref(), options)
            .to_device(Device::Cpu);
        let size = codes.size();
        let (h, w) = (size[1] as u32, size[2] as u32);
        let flat = Vec::<i64>::try_from(codes.flatten(0, -1)).expect("integer codes");
        flat.chunks((h * w) as usize)
            .map(|ids| CodeGrid {
                width: w,
                height: h,
                depth: 1,
                codes: ids.iter().map(|&c| c as u32).collect(),
            })
            .collect()
    }
}
