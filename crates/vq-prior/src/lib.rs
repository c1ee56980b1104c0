//! Code priors: autoregressive models over the code grids of a trained VQ-VAE, from which new
//! grids (and so new images) are sampled.
//!
//! The seam is [`CodePrior`]: logits for a batch of grids, their negative log-likelihood, and
//! sampling (a raster-order loop by default; a model with a cache overrides it). A prior's
//! `config.json` ([`PriorConfig`]) is its architecture ([`PriorArch`], tagged by `"kind"`) plus
//! its provenance ([`Provenance`]: the VQ-VAE whose codes it models, their code space, the image
//! size, the classes).

pub mod entropy;
mod pixelcnn;
pub mod portable;
mod transformer;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};
use vq_model::CodeSpace;
use vq_store::names::{CONFIG_FILE, MODEL_FILE};
use vq_store::{Bundled, ConfigFile, Source, StoreError};

pub use pixelcnn::{PixelCnnConfig, PixelCnnPrior};
pub use transformer::{TransformerConfig, TransformerPrior};

/// The prior this repository ships (`models/cifar10-prior/`), for the bundled VQ-VAE.
pub static BUNDLED: Bundled = Bundled {
    name: "models/cifar10-prior",
    config: include_str!("../../../models/cifar10-prior/config.json"),
    weights: include_bytes!("../../../models/cifar10-prior/model.safetensors"),
    state: Some(include_str!("../../../models/cifar10-prior/state.json")),
    eval: Some(include_str!("../../../models/cifar10-prior/eval.json")),
};

/// Priors bundled before the current one, for the same VQ-VAE, newest first. A file
/// arithmetic-coded with the prior names it by id, and its codes can only be read back with
/// that prior's exact probabilities: these keep such files decodable after the bundled prior
/// changes (`vq-cli decode` picks the one a file names).
pub static RETIRED: &[Bundled] = &[Bundled {
    name: "models/retired/cifar10-prior-2026-12-04",
    config: include_str!("../../../models/retired/cifar10-prior-2026-12-04/config.json"),
    weights: include_bytes!("../../../models/retired/cifar10-prior-2026-12-04/model.safetensors"),
    state: None,
    eval: None,
}];

/// A prior's architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PriorArch {
    /// The gated PixelCNN (van den Oord et al., 2016), without blind spot.
    #[serde(rename = "pixelcnn")]
    PixelCnn(PixelCnnConfig),
    /// A decoder-only transformer with a class token (and a null class for guidance).
    Transformer(TransformerConfig),
}

impl Default for PriorArch {
    fn default() -> Self {
        PriorArch::PixelCnn(PixelCnnConfig::default())
    }
}

impl PriorArch {
    pub fn validate(&self) -> Result<(), String> {
        match self {
            PriorArch::PixelCnn(c) => c.validate(),
            PriorArch::Transformer(c) => c.validate(),
        }
    }
}

/// What codes a prior models, and of which data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Provenance {
    /// Model id (hex) of the VQ-VAE whose codes it was trained on; the prior is used only with
    /// that VQ-VAE.
    pub vqvae_model_id: String,
    pub codes: CodeSpace,
    /// Side of the code grids it was trained on (8 for 32 × 32 images at 4× downsampling).
    pub grid_side: i64,
    /// Side of the images behind those grids (for bits per dimension).
    pub image_side: i64,
    /// Number of classes it is conditioned on (0: unconditional).
    pub classes: i64,
    /// Names of the classes, by label (empty: CIFAR-10's).
    pub class_names: Vec<String>,
}

impl Default for Provenance {
    fn default() -> Self {
        Provenance {
            vqvae_model_id: String::new(),
            codes: CodeSpace {
                depth: 1,
                vocabulary: 512,
            },
            grid_side: 8,
            image_side: 32,
            classes: 10,
            class_names: Vec::new(),
        }
    }
}

impl Provenance {
    /// The name of each class label (CIFAR-10's unless the provenance lists its own).
    pub fn class_names(&self) -> Vec<String> {
        if self.class_names.is_empty() {
            vq_data::CLASS_NAMES.iter().map(|s| s.to_string()).collect()
        } else {
            self.class_names.clone()
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.codes.vocabulary < 2 {
            return Err("the code vocabulary must be at least 2".into());
        }
        if self.codes.depth != 1 {
            return Err(format!(
                "priors model one code per position; these codes have depth {}",
                self.codes.depth
            ));
        }
        if self.classes < 0 {
            return Err("classes must not be negative".into());
        }
        if self.grid_side < 1 || self.image_side < self.grid_side {
            return Err(format!(
                "grid_side {} and image_side {} must be positive, the image at least the grid",
                self.grid_side, self.image_side
            ));
        }
        if !self.class_names.is_empty() && self.class_names.len() as i64 != self.classes {
            return Err(format!(
                "{} class names for {} classes",
                self.class_names.len(),
                self.classes
            ));
        }
        Ok(())
    }

    /// Bits of a code grid per image sub-pixel, from bits per code.
    pub fn bits_per_dim(&self, bits_per_code: f64) -> f64 {
        bits_per_code * (self.grid_side as f64).powi(2) / (3.0 * (self.image_side as f64).powi(2))
    }
}

/// A prior checkpoint's `config.json`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PriorConfig {
    pub arch: PriorArch,
    pub provenance: Provenance,
    /// How `vq-cli sample` and `vq-cli fid --samples` draw from it when no flag says otherwise
    /// (the settings measured best for this prior); absent: [`SampleOptions::default`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling: Option<SampleOptions>,
}

impl ConfigFile for PriorConfig {
    const WHAT: &'static str = "a prior config";
    const FORMAT: u64 = 2;

    fn from_legacy(fields: serde_json::Value) -> Option<Result<Self, String>> {
        Some(
            serde_json::from_value::<LegacyPriorConfig>(fields)
                .map(PriorConfig::from)
                .map_err(|e| e.to_string()),
        )
    }

    fn validate(&self) -> Result<(), String> {
        self.arch.validate()?;
        self.provenance.validate()
    }
}

/// A prior's `config.json` before format 2: every setting at the top level.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct LegacyPriorConfig {
    codebook_size: i64,
    channels: i64,
    layers: usize,
    kernel: i64,
    classes: i64,
    vqvae_model_id: String,
    grid_side: i64,
    image_side: i64,
    class_names: Vec<String>,
}

impl Default for LegacyPriorConfig {
    fn default() -> Self {
        let (p, a) = (Provenance::default(), PixelCnnConfig::default());
        LegacyPriorConfig {
            codebook_size: p.codes.vocabulary,
            channels: a.channels,
            layers: a.layers,
            kernel: a.kernel,
            classes: p.classes,
            vqvae_model_id: p.vqvae_model_id,
            grid_side: p.grid_side,
            image_side: p.image_side,
            class_names: p.class_names,
        }
    }
}

impl From<LegacyPriorConfig> for PriorConfig {
    fn from(c: LegacyPriorConfig) -> Self {
        PriorConfig {
            arch: PriorArch::PixelCnn(PixelCnnConfig {
                channels: c.channels,
                layers: c.layers,
                kernel: c.kernel,
            }),
            provenance: Provenance {
                vqvae_model_id: c.vqvae_model_id,
                codes: CodeSpace {
                    depth: 1,
                    vocabulary: c.codebook_size,
                },
                grid_side: c.grid_side,
                image_side: c.image_side,
                classes: c.classes,
                class_names: c.class_names,
            },
            sampling: None,
        }
    }
}

/// How codes are drawn from a prior's distribution.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SampleOptions {
    /// Divides the logits: below 1 is more conservative, above 1 more varied.
    pub temperature: f64,
    /// Keep only the `top_k` most likely codes (0: all).
    pub top_k: i64,
    /// Keep the fewest most likely codes whose probabilities reach `top_p` (1: all).
    pub top_p: f64,
    /// Classifier-free guidance: logits `u + g·(c − u)` from the conditional (`c`) and the
    /// unconditional (`u`) model; 1 is the conditional model itself.
    pub guidance: f64,
    /// Guide only the first codes of a grid in raster order (those that lay out the picture);
    /// the rest are drawn from the conditional model alone, so the unconditional passes stop
    /// there and sampling costs less. Absent: every code is guided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guided_codes: Option<i64>,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            guidance: 1.0,
            guided_codes: None,
        }
    }
}

impl SampleOptions {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(format!(
                "temperature must be positive, not {}",
                self.temperature
            ));
        }
        if self.top_k < 0 {
            return Err(format!("top-k must not be negative, not {}", self.top_k));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top-p must be in (0, 1], not {}", self.top_p));
        }
        if !(self.guidance.is_finite() && self.guidance >= 0.0) {
            return Err(format!("guidance must be 0 or more, not {}", self.guidance));
        }
        if let Some(n) = self.guided_codes.filter(|&n| n < 0) {
            return Err(format!("guided-codes must not be negative, not {n}"));
        }
        Ok(())
    }

    /// How many leading codes of a grid of `length` get the unconditional logits too: all of
    /// them when guided (or the first `guided_codes`), none otherwise.
    pub fn guided_positions(&self, guided: bool, length: i64) -> i64 {
        match (guided && self.guidance != 1.0, self.guided_codes) {
            (false, _) => 0,
            (true, Some(n)) => n.min(length),
            (true, None) => length,
        }
    }
}

/// One code per row from `(B, V)` logits: guidance (when `unconditional` logits are given),
/// temperature, top-k, top-p, then a draw from LibTorch's generator. Every sampler goes
/// through here, so cached and uncached sampling draw alike.
pub fn draw(
    conditional: &Tensor,
    unconditional: Option<&Tensor>,
    options: &SampleOptions,
) -> Tensor {
    draw_with(conditional, unconditional, options, None)
}

/// [`draw`] with the `(B,)` uniform numbers in [0, 1) given (`None`: drawn from LibTorch's
/// generator here), so that samplers on several threads draw what the numbers say, not what
/// the threads' turns at the shared generator would give.
pub fn draw_with(
    conditional: &Tensor,
    unconditional: Option<&Tensor>,
    options: &SampleOptions,
    uniforms: Option<&Tensor>,
) -> Tensor {
    let logits = conditional.to_kind(Kind::Float);
    let logits = match unconditional {
        // Guidance 1 is the conditional model exactly (no round trip through u + (c − u)).
        Some(u) if options.guidance != 1.0 => {
            let u = u.to_kind(Kind::Float);
            &u + (&logits - &u) * options.guidance
        }
        _ => logits,
    };
    let mut logits = logits / options.temperature.max(1e-6);
    let vocabulary = logits.size()[1];
    if options.top_k > 0 && options.top_k < vocabulary {
        let kth = logits
            .topk(options.top_k, 1, true, true)
            .0
            .narrow(1, options.top_k - 1, 1);
        logits = logits.masked_fill(&logits.lt_tensor(&kth), f64::NEG_INFINITY);
    }
    if options.top_p < 1.0 {
        let (sorted, order) = logits.sort(1, true);
        let probs = sorted.softmax(1, Kind::Float);
        // Drop a code when the codes ranked above it already reach top_p.
        let before = probs.cumsum(1, Kind::Float) - &probs;
        let drop_sorted = before.ge(options.top_p);
        let drop = drop_sorted.scatter(1, &order, &drop_sorted);
        logits = logits.masked_fill(&drop, f64::NEG_INFINITY);
    }
    draw_from(&logits.softmax(-1, Kind::Float), uniforms)
}

/// One index per row of `(B, V)` probabilities, by inverse transform sampling: one uniform
/// number per row against the row's cumulative sum. LibTorch's `multinomial` draws an
/// exponential number for every entry (`V` per row), which was a tenth of sampling's time;
/// this needs one. An entry of probability zero is never drawn: the first index whose
/// cumulative sum exceeds `u · total` always has a positive probability.
fn draw_from(probs: &Tensor, uniforms: Option<&Tensor>) -> Tensor {
    let (b, v) = probs.size2().expect("(B, V) probabilities");
    let cdf = probs.cumsum(1, Kind::Float);
    let total = cdf.narrow(1, v - 1, 1);
    let u = match uniforms {
        Some(u) => u.to_device(probs.device()).view([b, 1]),
        None => Tensor::rand([b, 1], (Kind::Float, probs.device())),
    } * total;
    u.searchsorted(&cdf, false, true, "right", None::<Tensor>)
        .clamp_max(v - 1)
        .squeeze_dim(1)
}

/// Raster-order stepping without a cache: the whole model runs on the rows filled so far for
/// every code. `choose` gets each position's `(n, V)` conditional logits (and the unconditional
/// ones for the first `guided` positions) and returns the `(n,)` codes to place there.
pub fn step_uncached(
    prior: &(impl CodePrior + ?Sized),
    n: i64,
    labels: Option<&Tensor>,
    guided: i64,
    device: Device,
    choose: &mut dyn FnMut(&Tensor, Option<&Tensor>) -> Tensor,
) -> Tensor {
    let _guard = tch::no_grad_guard();
    let side = prior.provenance().grid_side;
    let codes = Tensor::zeros([n, side, side], (Kind::Int64, device));
    for i in 0..side {
        for j in 0..side {
            let visible = codes.narrow(1, 0, i + 1);
            let at = |labels: Option<&Tensor>| {
                prior
                    .logits(&visible, labels, false)
                    .select(2, i)
                    .select(2, j)
            };
            let unconditional = (i * side + j < guided).then(|| at(None));
            let next = choose(&at(labels), unconditional.as_ref());
            codes.select(1, i).select(1, j).copy_(&next);
        }
    }
    codes
}

/// Sampling by [`step_uncached`]: what [`CodePrior::sample`] does for a model without a cache.
pub fn sample_uncached(
    prior: &(impl CodePrior + ?Sized),
    n: i64,
    labels: Option<&Tensor>,
    options: &SampleOptions,
    device: Device,
) -> Tensor {
    let guided = options.guided_positions(
        labels.is_some() && prior.supports_guidance(),
        prior.provenance().grid_side.pow(2),
    );
    step_uncached(prior, n, labels, guided, device, &mut |c, u| {
        draw(c, u, options)
    })
}

/// An autoregressive model of code grids in raster order.
pub trait CodePrior: std::fmt::Debug {
    fn provenance(&self) -> &Provenance;

    /// `(B, V, h, w)` logits of each code of `(B, h, w)` grids given the codes before it in
    /// raster order (and the class, when conditional: `labels` is `(B,)` i64). `train` turns on
    /// what only training uses (dropout).
    fn logits(&self, codes: &Tensor, labels: Option<&Tensor>, train: bool) -> Tensor;

    /// Mean negative log-likelihood per code, in nats.
    fn nll(&self, codes: &Tensor, labels: Option<&Tensor>, train: bool) -> Tensor {
        self.logits(codes, labels, train)
            .cross_entropy_loss::<Tensor>(codes, None, tch::Reduction::Mean, -100, 0.0)
    }

    /// Whether it has an unconditional model for classifier-free guidance.
    fn supports_guidance(&self) -> bool {
        false
    }

    /// Computes the products of training passes (`train: true`) in `kind` (bf16 where the
    /// hardware runs it natively); evaluation, sampling and entropy coding stay f32, so a
    /// checkpoint's probabilities do not depend on how it was trained or on this CPU. Returns
    /// whether the model supports it (the transformer does; the PixelCNN stays f32).
    fn set_training_kind(&mut self, _kind: Kind) -> bool {
        false
    }

    /// Computes the matrix products of [`CodePrior::step`] (sampling) in `kind`: bf16 where the
    /// hardware runs it natively, or int8 (weights per output channel and activations per row
    /// quantized symmetrically, products summed in int32; CPU only), the layer norms, the
    /// residual stream and the logits staying f32. Returns whether the model supports it (the
    /// transformer does f32, bf16 and, on a CPU, int8; the PixelCNN stays f32). Entropy coding
    /// keeps f32: a `.vqz` file's probabilities are part of its format.
    fn set_sampling_kind(&mut self, _kind: Kind) -> bool {
        false
    }

    /// The weights in the portable forward pass that entropy coding runs
    /// ([`portable::PortableTransformer`]), for a model that has one (the transformer).
    fn portable(&self) -> Option<portable::PortableTransformer> {
        None
    }

    /// Runs the model over `n` grids in raster order, one code at a time: `choose` gets each
    /// position's `(n, V)` conditional logits (and, for the first `guided` positions in raster
    /// order, the unconditional ones) and returns the `(n,)` codes placed there, which the
    /// next positions then read. Sampling draws them; entropy coding reads them from a file.
    /// The default runs the whole model for every code ([`step_uncached`]); a model with a
    /// cache overrides it. The same calls give the same logits bit for bit on the same build,
    /// device and thread count, which is what lets an entropy decoder see the encoder's
    /// probabilities.
    fn step(
        &self,
        n: i64,
        labels: Option<&Tensor>,
        guided: i64,
        device: Device,
        choose: &mut dyn FnMut(&Tensor, Option<&Tensor>) -> Tensor,
    ) -> Tensor {
        step_uncached(self, n, labels, guided, device, choose)
    }

    /// Samples `n` grids (`labels`: their classes, when conditional), one code at a time in
    /// raster order, drawn from LibTorch's generator (seed it with `tch::manual_seed` for
    /// reproducible samples).
    fn sample(
        &self,
        n: i64,
        labels: Option<&Tensor>,
        options: &SampleOptions,
        device: Device,
    ) -> Tensor {
        let guided = options.guided_positions(
            labels.is_some() && self.supports_guidance(),
            self.provenance().grid_side.pow(2),
        );
        self.step(n, labels, guided, device, &mut |c, u| draw(c, u, options))
    }
}

/// Builds the prior `config` describes under `vs`.
pub fn build(vs: nn::Path<'_>, config: &PriorConfig) -> Box<dyn CodePrior> {
    match &config.arch {
        PriorArch::PixelCnn(arch) => Box::new(PixelCnnPrior::new(vs, arch, &config.provenance)),
        PriorArch::Transformer(arch) => {
            Box::new(TransformerPrior::new(vs, arch, &config.provenance))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PriorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{prior}: this prior was trained on the codes of model {prior_model}, but the VQ-VAE {vqvae} is model {vqvae_model}; pass the matching --checkpoint or --prior")]
    OtherVqVae {
        prior: String,
        prior_model: String,
        vqvae: String,
        vqvae_model: String,
    },
}

/// A loaded prior and where it came from.
#[derive(Debug)]
pub struct PriorCheckpoint {
    /// The folder holding the weights (for the bundled prior, its folder in the repository).
    pub dir: PathBuf,
    pub bundled: bool,
    pub config: PriorConfig,
    pub model: Box<dyn CodePrior>,
    pub vs: nn::VarStore,
    /// The first 16 bytes of the SHA-256 of its weights file (what an entropy-coded `.vqz`
    /// names).
    pub model_id: [u8; 16],
    /// The number type its sampler's products use ([`PriorCheckpoint::set_sampling_kind`]),
    /// for the copies [`PriorCheckpoint::sample_in_streams`] makes.
    sampling_kind: Kind,
}

impl PriorCheckpoint {
    /// Draw samples with the matrix products in `kind`: f32, or bf16 or int8 (on a CPU) for the
    /// transformer prior (its linear layers then run in bf16 or int8, while the weights, layer
    /// norms, residual stream, key/value cache and logits stay f32: faster where the CPU or GPU
    /// has bf16 arithmetic, int8 where it has not, and the draws differ from f32's, since a
    /// rounded probability moves a draw and the rest of the grid follows). Returns false,
    /// changing nothing, for the PixelCNN, which samples in f32 only, and for other kinds. For
    /// sampling only: entropy coding and evaluation need f32, the probabilities of a `.vqz`
    /// file being part of its format.
    pub fn set_sampling_kind(&mut self, kind: Kind) -> bool {
        let supported = self.model.set_sampling_kind(kind);
        if supported {
            self.sampling_kind = kind;
        }
        supported || kind == Kind::Float
    }

    /// `n` grids as [`CodePrior::sample`] draws them, in `streams` threads on the CPU: each
    /// thread samples a contiguous share of the grids with its own copy of the model and one
    /// LibTorch thread (LibTorch's thread count is set to 1 meanwhile and restored after). On
    /// a CPU the sampler's many small products use LibTorch's threads poorly, while
    /// independent streams keep every core busy (docs/experiments.md). The uniform numbers the
    /// draws use are drawn first, on the calling thread, from LibTorch's generator, so the
    /// grids depend on its seed, not on the threads' timing; each row gets the same numbers
    /// whatever `streams` is (its grid then differs only where rounding, which depends on the
    /// batch a product runs in, moves a draw across a boundary). One stream, or a device other
    /// than the CPU, is [`CodePrior::sample`] on the calling thread with those numbers.
    pub fn sample_in_streams(
        &self,
        n: i64,
        labels: Option<&Tensor>,
        options: &SampleOptions,
        streams: usize,
    ) -> Result<Tensor, tch::TchError> {
        let device = self.vs.device();
        let model = &self.model;
        let guided = options.guided_positions(
            labels.is_some() && model.supports_guidance(),
            model.provenance().grid_side.pow(2),
        );
        let positions = model.provenance().grid_side.pow(2);
        let uniforms = Tensor::rand([n, positions.max(1)], (Kind::Float, Device::Cpu));
        // What each stream runs: `model` over the rows whose uniform numbers are `mine`.
        let run = |model: &dyn CodePrior, mine: Tensor, labels: Option<&Tensor>| {
            let mut at = 0;
            model.step(mine.size()[0], labels, guided, device, &mut |c, u| {
                let column = mine.select(1, at);
                at += 1;
                draw_with(c, u, options, Some(&column))
            })
        };
        let streams = (streams.max(1) as i64).min(n.max(1));
        if streams == 1 || device != Device::Cpu {
            return Ok(run(model.as_ref(), uniforms, labels));
        }
        let (config, source, kind) = (&self.config, &self.vs, self.sampling_kind);
        vq_model::streams::in_streams(
            n,
            streams as usize,
            |start, len| {
                let labels = labels.map(|l| l.narrow(0, start, len));
                (uniforms.narrow(0, start, len), labels)
            },
            |(mine, labels)| {
                let mut vs = nn::VarStore::new(device);
                let mut copy = build(vs.root(), config);
                vs.copy(source)?;
                copy.set_sampling_kind(kind);
                Ok(run(copy.as_ref(), mine, labels.as_ref()))
            },
        )
    }

    /// Opens a prior (checkpoint folder, run folder or the bundled one).
    pub fn open(source: Source<'_>, device: Device) -> Result<Self, StoreError> {
        let (dir, bundled, config, weights, weights_path) = match source {
            Source::Path(path) => {
                let dir = vq_store::resolve(path)?;
                let config: PriorConfig = vq_store::read_config(&dir.join(CONFIG_FILE))?;
                let weights_path = dir.join(MODEL_FILE);
                let weights = vq_store::weights::read_file(&weights_path)?;
                (dir, false, config, weights, weights_path)
            }
            Source::Bundled(b) => {
                let config: PriorConfig =
                    vq_store::parse_config(b.config).map_err(|reason| StoreError::Malformed {
                        path: b.config_path(),
                        what: PriorConfig::WHAT,
                        reason,
                    })?;
                (
                    PathBuf::from(b.name),
                    true,
                    config,
                    b.weights.to_vec(),
                    b.weights_path(),
                )
            }
        };
        let mut vs = nn::VarStore::new(device);
        let model = build(vs.root(), &config);
        vq_store::weights::load_bytes(&mut vs, &weights, &weights_path)?;
        Ok(PriorCheckpoint {
            dir,
            bundled,
            config,
            model,
            vs,
            model_id: vq_store::model_id(&weights),
            sampling_kind: Kind::Float,
        })
    }

    /// Opens a prior and checks that it models the codes of the VQ-VAE `vqvae_model_id` (hex),
    /// described as `vqvae` in the error.
    pub fn open_for(
        source: Source<'_>,
        vqvae: &str,
        vqvae_model_id: &str,
        device: Device,
    ) -> Result<Self, PriorError> {
        let prior = Self::open(source, device)?;
        let prior_model = &prior.config.provenance.vqvae_model_id;
        if prior_model != vqvae_model_id {
            return Err(PriorError::OtherVqVae {
                prior: prior.origin(),
                prior_model: prior_model.clone(),
                vqvae: vqvae.to_string(),
                vqvae_model: vqvae_model_id.to_string(),
            });
        }
        Ok(prior)
    }

    /// Where it came from, for messages.
    pub fn origin(&self) -> String {
        if self.bundled {
            format!("the bundled prior ({})", self.dir.display())
        } else {
            self.dir.display().to_string()
        }
    }
}

/// The config file of a prior checkpoint folder (for tools that only need its provenance).
pub fn read_config(dir: &Path) -> Result<PriorConfig, StoreError> {
    vq_store::read_config(&dir.join(CONFIG_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_format_1_config_reads_as_its_provenance_and_arch() {
        // The PixelCNN bundled before format 2 (now a test fixture).
        let config: PriorConfig = vq_store::parse_config(include_str!(
            "../../../tests/fixtures/pixelcnn-format1/config.json"
        ))
        .unwrap();
        assert_eq!(
            config.arch,
            PriorArch::PixelCnn(PixelCnnConfig {
                channels: 64,
                layers: 8,
                kernel: 3
            })
        );
        let p = &config.provenance;
        assert_eq!(p.vqvae_model_id, "44edb453f42c4f592c84cbfa10c71318");
        assert_eq!(
            p.codes,
            CodeSpace {
                depth: 1,
                vocabulary: 512
            }
        );
        assert_eq!((p.grid_side, p.image_side, p.classes), (8, 32, 10));
        assert_eq!(p.class_names()[3], "cat");
        // And a format-2 file of the same says the same.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        vq_store::write_config(&path, &config).unwrap();
        assert_eq!(vq_store::read_config::<PriorConfig>(&path).unwrap(), config);
    }

    #[test]
    fn draws_follow_the_probabilities_and_never_pick_an_impossible_code() {
        let _rng = vq_model::seeded(11);
        let probs = Tensor::from_slice(&[0.0f32, 0.5, 0.0, 0.25, 0.25, 0.0])
            .view([1, 6])
            .repeat([20_000, 1]);
        let drawn = draw_from(&probs, None);
        assert_eq!(drawn.size(), vec![20_000]);
        let counts: Vec<i64> = (0..6)
            .map(|c| drawn.eq(c).sum(Kind::Int64).int64_value(&[]))
            .collect();
        assert_eq!((counts[0], counts[2], counts[5]), (0, 0, 0), "{counts:?}");
        for (c, p) in [(1usize, 0.5), (3, 0.25), (4, 0.25)] {
            let f = counts[c] as f64 / 20_000.0;
            assert!((f - p).abs() < 0.02, "code {c}: {f} vs {p} ({counts:?})");
        }
        // A point mass at the last code.
        let last = Tensor::from_slice(&[0.0f32, 0.0, 1.0])
            .view([1, 3])
            .repeat([50, 1]);
        assert_eq!(
            draw_from(&last, None),
            Tensor::full([50], 2, (Kind::Int64, Device::Cpu))
        );
    }

    #[test]
    fn streams_draw_the_same_grids_for_a_seed_and_restore_the_thread_count() {
        let prior = PriorCheckpoint::open(Source::Bundled(&BUNDLED), Device::Cpu).unwrap();
        let labels = Tensor::arange(24, (Kind::Int64, Device::Cpu)).remainder(10);
        let options = prior.config.sampling.unwrap_or_default();
        let threads = tch::get_num_threads();
        let draw = |streams: usize, seed: i64| {
            let _rng = vq_model::seeded(seed);
            prior
                .sample_in_streams(24, Some(&labels), &options, streams)
                .unwrap()
        };
        let two = draw(2, 3);
        assert_eq!(tch::get_num_threads(), threads);
        assert_eq!(two.size(), vec![24, 8, 8]);
        assert!(two.min().int64_value(&[]) >= 0 && two.max().int64_value(&[]) < 512);
        // The numbers are drawn before the threads start: the same seed, the same grids.
        assert_eq!(two, draw(2, 3));
        assert_ne!(two, draw(2, 4));
        // Every row gets the same numbers in any number of streams: the first code of each
        // grid (from its class alone) is the same in one stream, where the products run in a
        // batch of 24 rather than 12, unless rounding moves a draw across a boundary.
        let one = draw(1, 3);
        let first = |g: &Tensor| g.select(1, 0).select(1, 0);
        let agree = first(&one)
            .eq_tensor(&first(&two))
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[]);
        assert!(agree >= 0.9, "{agree}");
    }

    #[test]
    fn deep_codes_and_bad_class_lists_are_refused() {
        let mut p = Provenance::default();
        assert!(p.validate().is_ok());
        p.codes.depth = 4;
        assert!(p.validate().unwrap_err().contains("depth 4"));
        let p = Provenance {
            class_names: vec!["a".into()],
            ..Provenance::default()
        };
        assert!(p
            .validate()
            .unwrap_err()
            .contains("1 class names for 10 classes"));
    }
}
