//! `vq-cli encode`: images to `.vqz` code files.

use std::fmt;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tch::Device;
use vq_model::checkpoint::Checkpoint;

use super::files::*;
use crate::codec::CodeGrid;
use crate::session::Session;

/// `vq-cli encode`'s inputs and options.
#[derive(Debug, Clone, clap::Args)]
pub struct EncodeArgs {
    #[command(flatten)]
    pub files: FilesArgs,
    /// Arithmetic-code the codes with the prior's probabilities (the file then costs about the
    /// prior's NLL instead of ⌈log2 K⌉ bits a code, and decoding needs the same prior)
    #[arg(long)]
    pub entropy: bool,
    /// The prior for --entropy [default: the bundled prior]
    #[arg(long, requires = "entropy")]
    pub prior: Option<PathBuf>,
    #[command(flatten)]
    pub search: SearchArgs,
    /// With --entropy and --search: weigh each code's bits under the prior against the decoded
    /// error, keeping a change when it lowers squared error + λ · bits (squared error of [0, 1]
    /// pixels summed over the channels); 0 searches for the error alone [default: 0.02]
    #[arg(long, value_name = "λ", requires_all = ["entropy", "search"], value_parser = non_negative)]
    pub lambda: Option<f64>,
    /// Write the codes of every input as one (N, L, h, w) integer array instead of .vqz files:
    /// OUT.npy (NumPy; the images' names in OUT.names.json beside it) or OUT.json. An input
    /// may also be one dataset split, `cifar10:train` or `DIR:test`, whose labels go to
    /// OUT.labels.npy [default: .vqz files]
    #[arg(long, value_name = "OUT", conflicts_with_all = ["entropy", "output"])]
    pub codes: Option<PathBuf>,
}

/// λ of a rate–distortion search when `--lambda` is not given (docs/experiments.md has the
/// points it was chosen from).
pub const DEFAULT_LAMBDA: f64 = 0.02;

fn non_negative(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a finite number of 0 or more")),
    }
}

/// One encoded image.
#[derive(Debug, Serialize)]
pub struct EncodeReport {
    #[serde(flatten)]
    pub file: FileHead,
    pub grid_width: u32,
    pub grid_height: u32,
    /// Codes per grid cell (levels of a residual quantizer).
    pub depth: usize,
    pub bits_per_code: u8,
    pub bytes: usize,
}

impl fmt::Display for EncodeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, {}×{}{} codes of {} bits, {} bytes ({:.4} bits/pixel with the header)",
            self.file,
            self.grid_width,
            self.grid_height,
            if self.depth > 1 {
                format!("×{}", self.depth)
            } else {
                String::new()
            },
            self.bits_per_code,
            self.bytes,
            self.bytes as f64 * 8.0 / self.file.pixels()
        )
    }
}

/// `vq-cli encode`: write each image's codes as `NAME.vqz`.
pub fn run(session: &Session, args: &EncodeArgs) -> Result<Encoded> {
    if let Some(out) = &args.codes {
        return Ok(Encoded::Array(super::tokens::encode_to_array(
            session,
            &args.files.inputs,
            &args.search,
            out,
        )?));
    }
    let tokenizer = session.tokenizer()?;
    let ckpt = tokenizer.checkpoint();
    // Entropy coding reads the prior's probabilities from its portable forward pass.
    let prior = if args.entropy {
        let prior = crate::prior::open_prior_on(args.prior.as_deref(), &tokenizer, Device::Cpu)?;
        if ckpt.config.code_space().depth != 1 {
            bail!(
                "--entropy: priors model one code per position; this model's codes have depth {}",
                ckpt.config.code_space().depth
            );
        }
        let coder = prior.into_coder();
        if coder.portable.is_none() {
            bail!(
                "--entropy: {} is a PixelCNN prior, which has no portable forward pass for coding; use a transformer prior (`vq-train prior --arch transformer`)",
                coder.prior.origin()
            );
        }
        Some(coder)
    } else {
        None
    };
    let search = args.search.code_search();
    check_search(ckpt, search.as_ref())?;
    // With --entropy, the search weighs each code's bits under the prior (the null class's:
    // the class is chosen after the search).
    let rate = match (&prior, &search) {
        (Some(coder), Some(_)) => Some(vq_prior::entropy::PriorRate {
            prior: coder.prior.model.as_ref(),
            class: None,
        }),
        _ => None,
    };
    let lambda = args.lambda.unwrap_or(DEFAULT_LAMBDA);
    let rate = rate
        .as_ref()
        .filter(|_| lambda > 0.0)
        .map(|r| (r as &dyn vq_model::CodeRate, lambda));
    let codec = tokenizer.codec();
    each_input_batched(session, &args.files, "vqz", BATCH_INPUTS, |jobs| {
        let images = load_images(jobs);
        let grids = match encode_images(
            &codec,
            &images,
            search.as_ref(),
            rate,
            !(session.quiet || session.json),
        ) {
            Ok(grids) => grids,
            Err(e) => return all_failed(jobs, &e),
        };
        images
            .into_iter()
            .zip(grids)
            .zip(jobs)
            .map(|((img, grid), job)| {
                let img = img?;
                let grid = grid.expect("loaded, so encoded");
                write_code_file(ckpt, prior.as_ref(), job, &img, &grid)
            })
            .collect()
    })
    .map(Encoded::Files)
}

/// One image's `.vqz` file, entropy-coded with `coder` if given.
fn write_code_file(
    ckpt: &Checkpoint,
    coder: Option<&vqvae::EntropyCoder>,
    job: &Job<'_>,
    img: &crate::LoadedImage,
    grid: &CodeGrid,
) -> Result<EncodeReport> {
    let (input, dest) = (job.input, job.dest.as_path());
    let (w, h) = img.rgb.dimensions();
    let file = vqvae::code_file(ckpt, grid, w, h, img.colour, coder)
        .with_context(|| format!("{}: building the code file", input.display()))?;
    let bytes = file
        .to_bytes()
        .with_context(|| format!("{}: building the code file", input.display()))?;
    write_file(dest, &bytes)?;
    Ok(EncodeReport {
        file: FileHead::new(input, dest, w, h),
        grid_width: grid.width,
        grid_height: grid.height,
        depth: file.depth(),
        bits_per_code: vq_codes::bits_per_code(file.codebook_size()),
        bytes: bytes.len(),
    })
}

/// What `encode` did: `.vqz` files, or one array of codes (`--codes`).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Encoded {
    Files(FilesReport),
    Array(super::tokens::CodesReport),
}

impl Encoded {
    /// Worth printing after the files' own lines (an array's report is the only one).
    pub fn is_summary(&self) -> bool {
        match self {
            Encoded::Files(f) => f.is_summary(),
            Encoded::Array(_) => true,
        }
    }
}

impl fmt::Display for Encoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Encoded::Files(r) => r.fmt(f),
            Encoded::Array(r) => r.fmt(f),
        }
    }
}
