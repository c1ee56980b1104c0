//! The quantizer seam: what sits between the encoder and the decoder and turns continuous
//! vectors into codes. The model holds a `Box<dyn Quantizer>` built from the tagged
//! [`QuantizerConfig`] (`{"kind": "vq", ...}` in `config.json`); nothing outside a quantizer
//! reaches into its tensors.

mod cosine;
mod fsq;
mod residual;
mod vq;

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};
use vq_kmeans::KMeansConfig;

pub use cosine::{CosineConfig, CosineQuantizer};
pub use fsq::{FiniteScalarQuantizer, FsqConfig};
pub use residual::{ResidualConfig, ResidualQuantizer, MAX_DEPTH};
pub use vq::{CodebookConfig, CodebookUpdate, GradientEstimator, VectorQuantizer, VqConfig};

mod args;
pub use args::QuantizerArgs;

use crate::ModelError;
pub use vq_report::LevelUsage;

/// The codes a quantizer produces: `depth` codes per grid position (one for plain VQ, one per
/// level for residual VQ), each below `vocabulary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeSpace {
    pub depth: i64,
    pub vocabulary: i64,
}

impl CodeSpace {
    /// Bits of one code packed at a whole number of bits.
    pub fn bits_per_code(&self) -> u8 {
        vq_codes::bits_per_code(self.vocabulary as u32)
    }
}

/// What a kind of quantizer says of itself, from its settings alone. Each kind implements it
/// in its own file; [`QuantizerConfig`] dispatches to it.
pub trait QuantizerKind {
    /// Channels of the encoder output the quantizer takes (and of the decoder input it gives).
    fn latent_dim(&self) -> i64;
    fn code_space(&self) -> CodeSpace;
    fn validate(&self) -> Result<(), String>;
    /// Builds the quantizer under `vs`.
    fn build(&self, vs: nn::Path<'_>) -> Box<dyn Quantizer>;
    /// One line for people: the kind and its shape (`vq-cli info`).
    fn describe(&self) -> String;
    /// The codebook settings and the code dimension, for a kind that has a codebook.
    fn codebook_mut(&mut self) -> Option<(&mut CodebookConfig, &mut i64)> {
        None
    }

    /// Its default settings for an encoder of `latent_dim` channels, when `--quantizer`
    /// switches a model to this kind (most kinds set their own width and ignore it).
    fn fresh(_latent_dim: i64) -> Self
    where
        Self: Sized + Default,
    {
        Self::default()
    }
}

/// Declares [`QuantizerConfig`], one variant per kind, and its dispatch to [`QuantizerKind`]:
/// a new kind is its own file plus one line here.
macro_rules! quantizer_kinds {
    ($($(#[$doc:meta])* $variant:ident($config:ty) = $name:literal,)*) => {
        /// Which quantizer, with its settings.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "kind", rename_all = "snake_case")]
        pub enum QuantizerConfig {
            $($(#[$doc])* $variant($config),)*
        }

        /// `--quantizer`: the kinds of `"quantizer": {"kind": ...}`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
        #[value(rename_all = "kebab-case")]
        pub enum QuantizerChoice {
            $($variant,)*
        }

        impl QuantizerConfig {
            /// The default settings of `kind` for an encoder of `latent_dim` channels.
            pub fn fresh(kind: QuantizerChoice, latent_dim: i64) -> Self {
                match kind {
                    $(QuantizerChoice::$variant => {
                        QuantizerConfig::$variant(<$config as QuantizerKind>::fresh(latent_dim))
                    })*
                }
            }

            /// Its `"kind"` in `config.json`.
            pub fn kind_name(&self) -> &'static str {
                match self {
                    $(QuantizerConfig::$variant(_) => $name,)*
                }
            }

            /// Its settings, as what every kind says of itself.
            pub fn kind(&self) -> &dyn QuantizerKind {
                match self {
                    $(QuantizerConfig::$variant(c) => c,)*
                }
            }

            /// [`Self::kind`], to change.
            pub fn kind_mut(&mut self) -> &mut dyn QuantizerKind {
                match self {
                    $(QuantizerConfig::$variant(c) => c,)*
                }
            }
        }
    };
}

quantizer_kinds! {
    /// One codebook, nearest code by Euclidean distance (van den Oord et al., 2017).
    Vq(VqConfig) = "vq",
    /// Low-dimensional, unit-length codes matched by cosine similarity (Yu et al., 2022).
    Cosine(CosineConfig) = "cosine",
    /// Finite scalar quantization (Mentzer et al., 2023): no codebook.
    Fsq(FsqConfig) = "fsq",
    /// L codebooks in sequence on the residual (SoundStream, EnCodec).
    Residual(ResidualConfig) = "residual",
}

impl Default for QuantizerConfig {
    fn default() -> Self {
        QuantizerConfig::Vq(VqConfig::default())
    }
}

impl QuantizerConfig {
    /// Channels of the encoder output the quantizer takes (and of the decoder input it gives).
    pub fn latent_dim(&self) -> i64 {
        self.kind().latent_dim()
    }

    pub fn code_space(&self) -> CodeSpace {
        self.kind().code_space()
    }

    pub fn validate(&self) -> Result<(), String> {
        self.kind().validate()
    }

    /// Builds the quantizer under `vs`.
    pub fn build(&self, vs: nn::Path<'_>) -> Box<dyn Quantizer> {
        self.kind().build(vs)
    }

    /// One line for people: the kind and its shape.
    pub fn describe(&self) -> String {
        self.kind().describe()
    }
}

/// What one pass through a quantizer gives.
#[derive(Debug)]
pub struct Quantized {
    /// `(B, D, h, w)` decoder input, with the quantizer's gradient path to the encoder.
    pub quantized: Tensor,
    /// `(B, L, h, w)` code indices (i64), `L` the depth of the code space.
    pub codes: Tensor,
    /// The quantizer's own loss terms (commitment, codebook), added to the training loss.
    pub aux_loss: Tensor,
    /// `(L, V)` f32: times each code of each level was chosen in this batch.
    pub counts: Tensor,
    /// What the quantizer keeps from the forward pass for its after-step update.
    pub(crate) saved: Vec<Tensor>,
}

impl Quantized {
    /// `exp(entropy)` of the first level's code usage in this batch: V when all codes are used
    /// evenly.
    pub fn perplexity(&self) -> f64 {
        perplexity(&self.counts.get(0))
    }

    /// Distinct codes of the first level used in this batch.
    pub fn codes_used(&self) -> i64 {
        self.counts.get(0).gt(0.0).sum(Kind::Int64).int64_value(&[])
    }
}

/// [`LevelUsage`] of each row of `(L, V)` counts.
pub fn level_usage(counts: &Tensor) -> Vec<LevelUsage> {
    (0..counts.size()[0])
        .map(|l| {
            let c = counts.get(l);
            LevelUsage {
                perplexity: perplexity(&c),
                codes_used: c.gt(0.0).sum(Kind::Int64).int64_value(&[]),
            }
        })
        .collect()
}

/// `exp(entropy)` of a histogram of code counts.
pub fn perplexity(counts: &Tensor) -> f64 {
    let p = counts / counts.sum(Kind::Float).clamp_min(1.0);
    (-(&p * (&p + 1e-10).log()).sum(Kind::Float))
        .exp()
        .double_value(&[])
}

/// Figures of a data-driven initialisation.
#[derive(Debug, Clone, PartialEq)]
pub struct InitReport {
    pub points: usize,
    pub iterations: usize,
    pub inertia: f64,
    pub empty_clusters: usize,
}

/// A quantizer: continuous `(B, D, h, w)` vectors in, codes and their embeddings out.
pub trait Quantizer: std::fmt::Debug {
    /// Quantizes `(B, D, h, w)` encoder outputs.
    fn forward(&self, z: &Tensor) -> Quantized;

    /// [`Quantizer::forward`] in training (`train`) or evaluation: the same unless the
    /// quantizer behaves differently while training (residual VQ's quantizer dropout).
    fn forward_t(&self, z: &Tensor, _train: bool) -> Quantized {
        self.forward(z)
    }

    /// `(B, L, h, w)` codes → the `(B, D, h, w)` decoder input they stand for. A residual
    /// quantizer also takes fewer levels than its depth.
    fn embed(&self, codes: &Tensor) -> Tensor;

    /// The `count` best codes of each position by this quantizer's own lookup, best first:
    /// `(B, L, h, w, count)`, whose first entry is what [`Quantizer::forward`] picks (a residual
    /// quantizer ranks each level's codes for the residual its first choices leave). `None` when
    /// the quantizer has no ranking to offer (FSQ). [`crate::VqVae::encode_searched`] tries them.
    fn ranked_codes(&self, _z: &Tensor, _count: i64) -> Option<Tensor> {
        None
    }

    fn code_space(&self) -> CodeSpace;

    /// After an optimizer step (`step` counts from 1): updates that are not gradient steps,
    /// such as a codebook's moving averages and dead-code restarts. Returns the number of codes
    /// restarted.
    fn after_step(&mut self, _pass: &Quantized, _step: i64) -> i64 {
        0
    }

    /// Data-driven initialisation from `(N, D)` encoder outputs (k-means for a codebook);
    /// `None` when the quantizer has nothing to initialise.
    fn init_from_data(
        &mut self,
        _vectors: &Tensor,
        _kmeans: &KMeansConfig,
    ) -> Result<Option<InitReport>, ModelError> {
        Ok(None)
    }

    /// The tensors that define the mapping from vectors to codes and back (a codebook): counted
    /// as parameters and averaged with the weights.
    fn parameters(&self) -> Vec<Tensor>;

    /// Training-only state (moving-average statistics, usage counters): saved with the weights
    /// so that a run resumes exactly, but neither averaged nor counted as parameters.
    fn statistics(&self) -> Vec<Tensor>;
}
