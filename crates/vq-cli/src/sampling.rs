//! New images from a code prior: sample code grids, decode them with the prior's VQ-VAE.

use anyhow::Context;
use tch::{Device, Tensor};
use vq_model::ComputeKind;
use vq_prior::SampleOptions;
use vqvae::{Decoder, Prior, Tokenizer};

use crate::session::Session;

/// How samples are drawn: the flags of `vq-cli sample` and `vq-cli fid --samples`. A flag not
/// given takes the prior's own setting (its config's `"sampling"`, the settings measured best
/// for it), else the default.
#[derive(Debug, Clone, clap::Args)]
pub struct SamplingArgs {
    /// Divides the logits: below 1 is more conservative, above 1 more varied [default: the
    /// prior's, else 1]
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Draw only among the K most likely codes (0: all) [default: the prior's, else 0]
    #[arg(long)]
    pub top_k: Option<i64>,
    /// Draw only among the most likely codes that make up this probability (1: all)
    /// [default: the prior's, else 1]
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Classifier-free guidance (a prior trained with a null class, such as the transformer):
    /// 1 is the conditional model, more follows the class more closely [default: the prior's,
    /// else 1]
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Guide only the first N codes of a grid in raster order (those that lay out the
    /// picture); the rest are drawn from the conditional model, and skipping their
    /// unconditional passes makes sampling faster. 64 or more guides all of an 8 × 8 grid
    /// [default: the prior's, else all]
    #[arg(long, value_name = "N")]
    pub guided_codes: Option<i64>,
    /// Which bundled decoder turns the codes into pixels: `sharp` (models/cifar10-sharp, a
    /// decoder trained adversarially for the bundled model's codes; `tuned` is another name for
    /// it) or `plain` (the bundled model's own). Not with --checkpoint, whose decoder is used
    /// [default: sharp]
    #[arg(long, value_enum)]
    pub decoder: Option<DecoderChoice>,
    /// Number type of the transformer prior's matrix products while it samples: `auto` (bf16
    /// where the hardware runs it natively, else f32), `f32`, `bf16` (faster on CPUs with AMX
    /// or AVX-512 BF16 and on recent GPUs) or `int8` (on a CPU: weights and each row of
    /// activations quantized to 8 bits, products summed exactly); bf16's and int8's draws
    /// differ from f32's, as a rounded probability moves a draw [default: auto]
    #[arg(long, value_enum)]
    pub compute: Option<SamplingCompute>,
    /// Draw every sample with the null class: a class-conditional prior trained with class
    /// dropout (the transformer) then samples its unconditional model, as a prior trained
    /// without labels would; guidance does not apply [default: class-conditional where the
    /// prior is]
    #[arg(long)]
    pub unconditional: bool,
}

/// The number type of a prior's products while it samples (`--compute`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SamplingCompute {
    /// bf16 where the hardware runs it natively (see `vq_model::native_bf16`), else f32.
    #[default]
    Auto,
    F32,
    /// bfloat16 products: faster on CPUs with AMX or AVX-512 BF16 and on recent GPUs.
    Bf16,
    /// int8 products on a CPU: each weight channel and each row of activations scaled to
    /// −127..127, products summed exactly in int32, rescaled to f32.
    Int8,
}

/// The bundled decoders the prior's codes can be decoded with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DecoderChoice {
    /// The sharp decoder trained for the bundled model's codes (models/cifar10-sharp).
    #[value(alias = "tuned")]
    Sharp,
    /// The bundled model's own decoder (models/cifar10-default).
    Plain,
}

/// The VQ-VAE whose decoder draws the pixels: `--checkpoint`'s, else the bundled model with
/// the decoder `choice` picks (`default` when none is given).
pub fn open_decoder(
    session: &Session,
    choice: Option<DecoderChoice>,
    default: DecoderChoice,
) -> anyhow::Result<Tokenizer> {
    match (&session.checkpoint, choice) {
        (Some(path), Some(_)) => anyhow::bail!(
            "--decoder picks one of the bundled decoders; with --checkpoint {} its own decoder is used, so drop --decoder",
            path.display()
        ),
        (Some(_), None) => session.tokenizer(),
        (None, choice) => match choice.unwrap_or(default) {
            DecoderChoice::Plain => session.tokenizer(),
            DecoderChoice::Sharp => session.tokenizer()?.with_decoder(Decoder::Sharp).context(
                "opening the bundled sharp decoder, models/cifar10-sharp (--decoder plain uses the bundled model's own)",
            ),
        },
    }
}

impl SamplingArgs {
    /// The VQ-VAE whose decoder renders the samples: `--checkpoint`'s, else the bundled model
    /// with the decoder `--decoder` picks (the sharp one by default).
    pub fn open_decoder(&self, session: &Session) -> anyhow::Result<Tokenizer> {
        open_decoder(session, self.decoder, DecoderChoice::Sharp)
    }

    /// Puts the prior in the number type `--compute` asks for; a bf16 or int8 request the
    /// prior cannot honour (the PixelCNN) is an error, `auto` then stays f32, and int8 runs on
    /// a CPU only. Returns the number type used.
    pub fn set_compute(&self, prior: &mut Prior, device: Device) -> anyhow::Result<&'static str> {
        let asked = self.compute.unwrap_or_default();
        let (kind, name) = match asked {
            SamplingCompute::Auto => match ComputeKind::Auto.kind(device) {
                tch::Kind::Float => (tch::Kind::Float, "f32"),
                other => (other, "bf16"),
            },
            SamplingCompute::F32 => (tch::Kind::Float, "f32"),
            SamplingCompute::Bf16 => (tch::Kind::BFloat16, "bf16"),
            SamplingCompute::Int8 if device != Device::Cpu => {
                anyhow::bail!(
                    "--compute int8 runs on a CPU only: give --device cpu, or bf16 on a GPU"
                )
            }
            SamplingCompute::Int8 => (tch::Kind::Int8, "int8"),
        };
        if kind == tch::Kind::Float {
            return Ok("f32");
        }
        if prior.set_sampling_kind(kind) {
            return Ok(name);
        }
        if asked == SamplingCompute::Auto {
            return Ok("f32");
        }
        anyhow::bail!(
            "{}: --compute {name} needs a transformer prior (this one samples in f32 only)",
            prior.checkpoint().origin()
        )
    }

    /// The options, checked (guidance only where the prior has an unconditional model).
    pub fn options(&self, prior: &Prior) -> anyhow::Result<SampleOptions> {
        let base = prior.default_options();
        let options = SampleOptions {
            temperature: self.temperature.unwrap_or(base.temperature),
            top_k: self.top_k.unwrap_or(base.top_k),
            top_p: self.top_p.unwrap_or(base.top_p),
            guidance: self.guidance.unwrap_or(base.guidance),
            guided_codes: self.guided_codes.or(base.guided_codes),
        };
        options.validate().map_err(|e| anyhow::anyhow!("--{e}"))?;
        if self.unconditional {
            if self.guidance.is_some_and(|g| g != 1.0) || self.guided_codes.is_some() {
                anyhow::bail!("--guidance and --guided-codes steer towards a class: drop them with --unconditional");
            }
            // Guidance mixes in the class-conditional model, which unconditional samples lack.
            return Ok(SampleOptions {
                guidance: 1.0,
                guided_codes: None,
                ..options
            });
        }
        if options.guidance != 1.0 && !prior.checkpoint().model.supports_guidance() {
            anyhow::bail!(
                "{}: this prior has no unconditional model, so --guidance must be 1",
                prior.checkpoint().origin()
            );
        }
        Ok(options)
    }
}

/// The sampling settings in words, for reports: guidance always, the others where they are
/// not the plain distribution.
pub fn describe(options: &SampleOptions) -> String {
    let mut words = format!("guidance {}", options.guidance);
    if let Some(n) = options.guided_codes {
        words += &format!(" on the first {n} codes");
    }
    if options.temperature != 1.0 {
        words += &format!(", temperature {}", options.temperature);
    }
    if options.top_k > 0 {
        words += &format!(", top-k {}", options.top_k);
    }
    if options.top_p < 1.0 {
        words += &format!(", top-p {}", options.top_p);
    }
    words
}

/// What sampling produced and how long each half took.
#[derive(Debug)]
pub struct Samples {
    /// `(n, 3, H, W)` in the VQ-VAE's input range.
    pub images: Tensor,
    /// `(n, h, w)` code grids.
    pub codes: Tensor,
    /// Seconds drawing the codes from the prior.
    pub sampling_seconds: f64,
    /// Seconds decoding them into images.
    pub decoding_seconds: f64,
}

/// `n` new images with their code grids: the library's [`Prior::sample_codes`], then
/// [`Tokenizer::decode_tensor`].
pub fn sample_images(
    prior: &Prior,
    tokenizer: &Tokenizer,
    labels: Option<&Tensor>,
    n: i64,
    options: &SampleOptions,
) -> Samples {
    let start = std::time::Instant::now();
    let codes = prior.sample_codes(n, labels, options);
    let sampling_seconds = start.elapsed().as_secs_f64();
    let start = std::time::Instant::now();
    let images = tokenizer.decode_tensor(&codes);
    Samples {
        images,
        codes,
        sampling_seconds,
        decoding_seconds: start.elapsed().as_secs_f64(),
    }
}
