//! `vq-cli sample`: new images from the code prior.

use std::fmt;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tch::Tensor;

use crate::session::Session;

#[derive(Debug, Clone, clap::Args)]
pub struct SampleArgs {
    /// Number of images [default: one row of 8 per class, every class (80 for CIFAR-10); 64
    /// with --class or an unconditional prior]
    #[arg(short)]
    pub n: Option<i64>,
    /// Only this class (name, e.g. cat, or number 0-9) [default: every class, a row each]
    #[arg(long, conflicts_with = "unconditional")]
    pub class: Option<String>,
    #[command(flatten)]
    pub sampling: crate::sampling::SamplingArgs,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The prior: a prior run or checkpoint folder [default: the bundled prior].
    #[arg(long)]
    pub prior: Option<PathBuf>,
    #[arg(short, long, default_value = "samples.png")]
    pub output: PathBuf,
}

/// Samples written as a picture.
#[derive(Debug, Serialize)]
pub struct SampleReport {
    pub output: PathBuf,
    pub samples: i64,
    pub seconds: f64,
    pub images_per_second: f64,
    /// Of `seconds`: drawing the codes, and decoding them.
    pub sampling_seconds: f64,
    pub decoding_seconds: f64,
    pub temperature: f64,
    pub guidance: f64,
    /// Guidance on the first this many codes only (absent: all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guided_codes: Option<i64>,
    pub seed: u64,
    /// The VQ-VAE whose decoder drew the pixels.
    pub decoder: String,
    /// The prior's number type while sampling (`f32`, `bf16` or `int8`).
    pub compute: String,
}

impl fmt::Display for SampleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} samples in {:.2} s ({:.1} images/s; codes {:.2} s, decoding {:.2} s), temperature {}, guidance {}{}, seed {}, prior in {}, decoded by {}",
            self.output.display(),
            self.samples,
            self.seconds,
            self.images_per_second,
            self.sampling_seconds,
            self.decoding_seconds,
            self.temperature,
            self.guidance,
            match self.guided_codes {
                Some(n) => format!(" on the first {n} codes"),
                None => String::new(),
            },
            self.seed,
            self.compute,
            self.decoder
        )
    }
}

/// `vq-cli sample`: new images from the code prior, as a grid (one row of 8 per class when no
/// class is given), enlarged to be seen.
pub fn run(session: &Session, args: &SampleArgs) -> Result<SampleReport> {
    if let Some(n) = args.n {
        if !(1..=4096).contains(&n) {
            bail!("-n must be 1 to 4096, not {n}");
        }
    }
    let tokenizer = args.sampling.open_decoder(session)?;
    let mut prior = crate::prior::open_prior(session, args.prior.as_deref(), &tokenizer)?;
    let compute = args.sampling.set_compute(&mut prior, session.device)?;
    let options = args.sampling.options(&prior)?;
    let provenance = prior.checkpoint().model.provenance();
    let names = provenance.class_names();
    // Unconditional samples: the null class, as for a prior without classes.
    let classes = if args.sampling.unconditional {
        0
    } else {
        provenance.classes
    };
    let n = match (args.n, &args.class) {
        (Some(n), _) => n,
        (None, None) if classes > 0 => 8 * classes,
        (None, _) => 64,
    };
    let labels: Option<Vec<i64>> = match (&args.class, classes) {
        (Some(_), 0) => bail!("this prior is not class-conditional; drop --class"),
        (Some(name), _) => {
            let index = names
                .iter()
                .position(|c| c == name)
                .map(|i| i as i64)
                .or_else(|| name.parse::<i64>().ok())
                .filter(|&i| (0..classes).contains(&i))
                .with_context(|| {
                    format!(
                        "unknown class {name:?} (one of {} or 0-{})",
                        names.join(", "),
                        classes - 1
                    )
                })?;
            Some(vec![index; n as usize])
        }
        // One row of 8 per class, in order.
        (None, k) if k > 0 => Some((0..n).map(|i| (i / 8) % k).collect()),
        (None, _) => None,
    };
    let labels = labels.map(|l| Tensor::from_slice(&l).to_device(session.device));
    tch::manual_seed(args.seed as i64);
    let start = Instant::now();
    let samples = crate::sampling::sample_images(&prior, &tokenizer, labels.as_ref(), n, &options);
    let seconds = start.elapsed().as_secs_f64();
    let images = &samples.images;
    let rows: Vec<Tensor> = (0..(n + 7) / 8)
        .map(|r| images.narrow(0, r * 8, 8.min(n - r * 8)))
        .collect();
    let refs: Vec<&Tensor> = rows.iter().collect();
    vq_model::save_grid(
        &refs,
        8,
        vq_model::VIEW_SCALE,
        tokenizer.decoding_checkpoint().config.input_range,
        &args.output,
    )
    .context("writing the samples")?;
    Ok(SampleReport {
        output: args.output.clone(),
        samples: n,
        seconds,
        images_per_second: n as f64 / seconds.max(1e-9),
        sampling_seconds: samples.sampling_seconds,
        decoding_seconds: samples.decoding_seconds,
        temperature: options.temperature,
        guidance: options.guidance,
        guided_codes: options.guided_codes,
        seed: args.seed,
        decoder: tokenizer.decoding_checkpoint().origin(),
        compute: compute.to_string(),
    })
}
