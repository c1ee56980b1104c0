//! The bodies of `vq-cli`'s commands; `main` only parses flags and dispatches here.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;
use tch::{Device, Tensor};
use vq_codes::CodeFile;
use vq_data::Split;
use vq_model::checkpoint::{Checkpoint, TrainingInfo};
use vq_model::VqVaeConfig;
use vq_prior::portable::PortableTransformer;

use crate::codec::{self, CodeGrid, Codec, Tiling};
use crate::report::{self, table};

/// What every command shares: the device, the model, how much to print.
#[derive(Debug, Clone)]
pub struct Session {
    pub device: Device,
    /// A checkpoint or run folder; `None`: the bundled model.
    pub checkpoint: Option<PathBuf>,
    /// Only errors.
    pub quiet: bool,
    /// Reports as JSON.
    pub json: bool,
}

impl Session {
    /// The VQ-VAE the commands use.
    pub fn open(&self) -> Result<Checkpoint> {
        match &self.checkpoint {
            Some(path) => Checkpoint::open(path, self.device).context("opening the checkpoint"),
            None => Checkpoint::bundled(self.device)
                .context("opening the bundled model (pass --checkpoint RUN_DIR to use your own)"),
        }
    }

    fn print(&self, bar: &ProgressBar, report: &impl report::Report) {
        if !self.quiet {
            bar.suspend(|| report::print(report, self.json));
        }
    }
}

/// Images or code files in, one output each.
#[derive(Debug, Clone, clap::Args)]
pub struct FilesArgs {
    /// Files, or folders (searched recursively).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output file (one input) or folder [default: beside each input].
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

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

/// `vq-cli reconstruct`'s inputs and options.
#[derive(Debug, Clone, clap::Args)]
pub struct ReconstructArgs {
    #[command(flatten)]
    pub files: FilesArgs,
    #[command(flatten)]
    pub search: SearchArgs,
}

/// Decoder-aware code search (`encode`, `reconstruct`, `eval`).
#[derive(Debug, Clone, clap::Args)]
pub struct SearchArgs {
    /// Choose each code among the quantizer's N best by the decoded image's error instead of
    /// taking the nearest (same bits, a higher PSNR, encoding about 100× slower; with
    /// `encode --entropy`, by error and bits: see --lambda; 4 is a good setting; vq, cosine and
    /// residual quantizers)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(1..=64))]
    pub search: Option<i64>,
    /// Passes of --search over the code grid
    #[arg(long, default_value_t = 2, requires = "search")]
    pub search_sweeps: usize,
}

impl SearchArgs {
    pub fn code_search(&self) -> Option<vq_model::CodeSearch> {
        self.search.map(|candidates| vq_model::CodeSearch {
            candidates,
            sweeps: self.search_sweeps,
        })
    }
}

/// `vq-cli decode`'s inputs and options.
#[derive(Debug, Clone, clap::Args)]
pub struct DecodeArgs {
    #[command(flatten)]
    pub files: FilesArgs,
    /// The prior of arithmetic-coded files [default: the bundled prior]
    #[arg(long)]
    pub prior: Option<PathBuf>,
    /// Decode only the first L levels of a residual code file (a coarser image at a lower
    /// rate) [default: all the file holds]
    #[arg(long)]
    pub levels: Option<usize>,
}

/// Runs `work(input, output)` over every input (folders expanded), with a progress bar when
/// there are several; a failure is reported and the others go on; any failure fails the command.
fn each_input<R: report::Report>(
    session: &Session,
    args: &FilesArgs,
    suffix: &str,
    mut work: impl FnMut(&Path, &Path) -> Result<R>,
) -> Result<()> {
    each_input_batched(session, args, suffix, 1, |jobs| {
        jobs.iter().map(|job| work(job.input, &job.dest)).collect()
    })
}

/// One input and the file it is written to.
struct Job<'a> {
    input: &'a Path,
    dest: PathBuf,
}

/// Inputs read together and run through the network in large passes (see [`by_size`]).
const BATCH_INPUTS: usize = 256;
/// Pixels per network pass: 1,024 images of 32 × 32, 16 of 256 × 256.
const BATCH_PIXELS: u64 = 1 << 20;

/// The loop over inputs of `reconstruct`, `encode` and `decode`: outputs named, inputs never
/// overwritten, a progress bar, each report printed in input order, failures counted (one bad
/// file does not stop the others). `work` takes `batch` inputs at a time and returns one result
/// per input.
fn each_input_batched<R: report::Report>(
    session: &Session,
    args: &FilesArgs,
    suffix: &str,
    batch: usize,
    mut work: impl FnMut(&[Job<'_>]) -> Vec<Result<R>>,
) -> Result<()> {
    let files = crate::collect_inputs(&args.inputs)?;
    if files.is_empty() {
        bail!("no images found in {}", display_list(&args.inputs));
    }
    let output = args.output.as_deref();
    let single_file_output = files.len() == 1 && output.is_some_and(|o| !o.is_dir());
    if let (Some(dir), false) = (output, single_file_output) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the output folder {}", dir.display()))?;
    }
    let bar = if files.len() > 1 && !session.quiet {
        ProgressBar::new(files.len() as u64).with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {wide_msg} [{elapsed} < {eta}]")
                .expect("valid template"),
        )
    } else {
        ProgressBar::hidden()
    };
    let mut failed = 0;
    // Where each output goes; a second input with the same output is refused, never allowed to
    // overwrite the first one's (`x.png` and `x.jpg` in one folder both make `x.recon.png`).
    let mut claimed: std::collections::HashMap<PathBuf, &Path> = Default::default();
    for chunk in files.chunks(batch.max(1)) {
        bar.set_message(chunk[0].path.display().to_string());
        let mut jobs = Vec::with_capacity(chunk.len());
        let mut refused: Vec<Option<anyhow::Error>> = Vec::with_capacity(chunk.len());
        for file in chunk {
            let input = file.path.as_path();
            let dest = if single_file_output {
                output.expect("checked above").to_path_buf()
            } else {
                crate::output_path(file, output, suffix)
            };
            let refusal = if crate::same_file(input, &dest) {
                Some(anyhow::anyhow!(
                    "{}: the output would overwrite the input; choose another -o",
                    input.display()
                ))
            } else if let Some(first) = claimed.get(&dest) {
                Some(anyhow::anyhow!(
                    "{}: its output {} is already the output of {}; give them separate -o folders",
                    input.display(),
                    dest.display(),
                    first.display()
                ))
            } else if let Err(e) = dest.parent().map_or(Ok(()), std::fs::create_dir_all) {
                Some(anyhow::anyhow!(
                    "{}: creating the folder of {}: {e}",
                    input.display(),
                    dest.display()
                ))
            } else {
                None
            };
            match refusal {
                Some(e) => refused.push(Some(e)),
                None => {
                    claimed.insert(dest.clone(), input);
                    refused.push(None);
                    jobs.push(Job { input, dest });
                }
            }
        }
        let mut results = work(&jobs).into_iter();
        for refusal in refused {
            let result = match refusal {
                Some(e) => Err(e),
                None => results
                    .next()
                    .unwrap_or_else(|| Err(anyhow::anyhow!("no result for an input"))),
            };
            match result {
                Ok(report) => session.print(&bar, &report),
                Err(e) => {
                    failed += 1;
                    bar.suspend(|| report::print_error(&e, session.json));
                }
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    if failed > 0 {
        bail!("{failed} of {} inputs failed", files.len());
    }
    Ok(())
}

/// Indices of the items of each size, in runs of at most [`BATCH_PIXELS`] pixels (at least
/// one item each): the groups that go through the network together. Items without a size (not
/// loaded) are left out.
fn by_size(sizes: &[Option<(u32, u32)>]) -> Vec<Vec<usize>> {
    let mut groups: Vec<((u32, u32), Vec<usize>)> = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let Some(size) = *size else { continue };
        let pixels = size.0 as u64 * size.1 as u64;
        match groups
            .iter_mut()
            .rev()
            .find(|(s, g)| *s == size && (g.len() as u64 + 1) * pixels <= BATCH_PIXELS.max(pixels))
        {
            Some((_, g)) => g.push(i),
            None => groups.push((size, vec![i])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// Each loaded image's code grid, the images of one size encoded together (by `search`, if
/// given).
///
/// With `bar`, a search of a lone image shows a bar once it has taken a second.
fn encode_images(
    codec: &Codec<'_>,
    images: &[Result<crate::LoadedImage>],
    search: Option<&vq_model::CodeSearch>,
    rate: Option<(&dyn vq_model::CodeRate, f64)>,
    bar: bool,
) -> Result<Vec<Option<CodeGrid>>> {
    let start = Instant::now();
    let progress = ProgressBar::hidden();
    progress.set_length(1000);
    progress.set_style(
        ProgressStyle::with_template("searching codes {bar:30} {percent}% {elapsed} (eta {eta})")
            .expect("a valid template"),
    );
    let show = |share: f64| {
        if progress.is_hidden() && start.elapsed().as_secs_f64() > 1.0 {
            progress.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        progress.set_position((share * 1000.0) as u64);
    };
    let bar = bar && images.len() == 1;
    let sizes: Vec<Option<(u32, u32)>> = images
        .iter()
        .map(|i| i.as_ref().ok().map(|i| i.rgb.dimensions()))
        .collect();
    let mut grids: Vec<Option<CodeGrid>> = vec![None; images.len()];
    for group in by_size(&sizes) {
        let imgs: Vec<&image::RgbImage> = group
            .iter()
            .map(|&i| &images[i].as_ref().expect("sized, so loaded").rgb)
            .collect();
        let encoded = match search {
            Some(search) => codec
                .encode_batch_searched(&imgs, search, rate, &|share| {
                    if bar {
                        show(share)
                    }
                })
                .context("searching the codes")?,
            None => codec.encode_batch(&imgs),
        };
        for (i, grid) in group.iter().zip(encoded) {
            grids[*i] = Some(grid);
        }
    }
    progress.finish_and_clear();
    Ok(grids)
}

/// Fails every job of a batch with the same error (a batch that could not be encoded).
fn all_failed<R>(jobs: &[Job<'_>], error: &anyhow::Error) -> Vec<Result<R>> {
    jobs.iter()
        .map(|job| Err(anyhow::anyhow!("{}: {error:#}", job.input.display())))
        .collect()
}

/// Checks before any work that the model's quantizer can be searched.
fn check_search(ckpt: &Checkpoint, search: Option<&vq_model::CodeSearch>) -> Result<()> {
    if search.is_some() {
        vq_model::search::check(&ckpt.model).context("--search")?;
    }
    Ok(())
}

fn display_list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn codec(ckpt: &Checkpoint, device: Device) -> Codec<'_> {
    Codec {
        model: &ckpt.model,
        device,
        tiling: Tiling::for_model(&ckpt.model),
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    vq_data::write_atomic(path, |w| w.write_all(bytes)).context("writing the output")
}

/// What every per-file report starts with: the files and the image size.
#[derive(Debug, Serialize)]
pub struct FileHead {
    pub input: PathBuf,
    pub output: PathBuf,
    pub width: u32,
    pub height: u32,
}

impl FileHead {
    fn new(input: &Path, output: &Path, width: u32, height: u32) -> Self {
        FileHead {
            input: input.to_path_buf(),
            output: output.to_path_buf(),
            width,
            height,
        }
    }

    fn pixels(&self) -> f64 {
        self.width as f64 * self.height as f64
    }
}

impl fmt::Display for FileHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {}: {}×{}",
            self.input.display(),
            self.output.display(),
            self.width,
            self.height
        )
    }
}

/// One reconstructed image.
#[derive(Debug, Serialize)]
pub struct ReconstructReport {
    #[serde(flatten)]
    pub file: FileHead,
    pub grid_width: u32,
    pub grid_height: u32,
    pub bits_per_pixel: f64,
    pub psnr: f64,
    /// `None` under 11 pixels a side (SSIM's window).
    pub ssim: Option<f64>,
    pub had_alpha: bool,
    pub seconds: f64,
}

impl fmt::Display for ReconstructReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, {}×{} codes, {:.4} bits/pixel, PSNR {:.2} dB, SSIM {}{}, {:.2} s",
            self.file,
            self.grid_width,
            self.grid_height,
            self.bits_per_pixel,
            self.psnr,
            self.ssim
                .map(|s| format!("{s:.4}"))
                .unwrap_or_else(|| "n/a (under 11 px)".into()),
            if self.had_alpha {
                " (transparency shown over white)"
            } else {
                ""
            },
            self.seconds
        )
    }
}

/// `vq-cli reconstruct`: encode and decode each image, write `NAME.recon.png`.
pub fn reconstruct(session: &Session, args: &ReconstructArgs) -> Result<()> {
    let ckpt = session.open()?;
    let search = args.search.code_search();
    check_search(&ckpt, search.as_ref())?;
    let codec = codec(&ckpt, session.device);
    let bits_per_code = ckpt.config.code_space().bits_per_code() as f64;
    each_input_batched(session, &args.files, "recon.png", BATCH_INPUTS, |jobs| {
        let start = Instant::now();
        let images = load_images(jobs);
        let grids = match encode_images(
            &codec,
            &images,
            search.as_ref(),
            None,
            !(session.quiet || session.json),
        ) {
            Ok(grids) => grids,
            Err(e) => return all_failed(jobs, &e),
        };
        let sizes: Vec<Option<(u32, u32)>> = images
            .iter()
            .map(|i| i.as_ref().ok().map(|i| i.rgb.dimensions()))
            .collect();
        let mut recons: Vec<Option<image::RgbImage>> = vec![None; jobs.len()];
        let mut figures: Vec<(f64, Option<f64>)> = vec![(0.0, None); jobs.len()];
        for group in by_size(&sizes) {
            let (w, h) = sizes[group[0]].expect("grouped, so sized");
            let gs: Vec<&CodeGrid> = group
                .iter()
                .map(|&i| grids[i].as_ref().expect("loaded, so encoded"))
                .collect();
            let decoded = codec.decode_batch(&gs, w, h);
            // Compared as written: a grayscale input is written back as grayscale.
            let (originals, outputs): (Vec<_>, Vec<_>) = group
                .iter()
                .zip(&decoded)
                .map(|(&i, recon)| {
                    let colour = images[i].as_ref().expect("sized, so loaded").colour;
                    let original = &images[i].as_ref().expect("sized, so loaded").rgb;
                    (
                        codec::as_written(original, colour),
                        codec::as_written(recon, colour),
                    )
                })
                .unzip();
            let group_figures = crate::compare_batch(
                &originals.iter().collect::<Vec<_>>(),
                &outputs.iter().collect::<Vec<_>>(),
            );
            for ((&i, recon), f) in group.iter().zip(decoded).zip(group_figures) {
                recons[i] = Some(recon);
                figures[i] = f;
            }
        }
        // PNG encoding and writing, on all cores.
        let written: Vec<Result<()>> = jobs
            .par_iter()
            .zip(&images)
            .zip(&recons)
            .map(|((job, img), recon)| match (img, recon) {
                (Ok(img), Some(recon)) => {
                    write_file(&job.dest, &codec::encode_png(recon, img.colour)?)
                }
                _ => Ok(()),
            })
            .collect();
        // The batch's time shared out over its images.
        let seconds = start.elapsed().as_secs_f64() / jobs.len().max(1) as f64;
        images
            .into_iter()
            .zip(grids)
            .zip(figures)
            .zip(written)
            .zip(jobs)
            .map(|((((img, grid), (psnr, ssim)), written), job)| {
                let img = img?;
                written?;
                let grid = grid.expect("loaded, so encoded");
                let (w, h) = img.rgb.dimensions();
                let file = FileHead::new(job.input, &job.dest, w, h);
                Ok(ReconstructReport {
                    bits_per_pixel: grid.codes.len() as f64 * bits_per_code / file.pixels(),
                    file,
                    grid_width: grid.width,
                    grid_height: grid.height,
                    psnr,
                    ssim,
                    had_alpha: img.had_alpha,
                    seconds,
                })
            })
            .collect()
    })
}

/// The inputs decoded, on all cores.
fn load_images(jobs: &[Job<'_>]) -> Vec<Result<crate::LoadedImage>> {
    jobs.par_iter()
        .map(|job| crate::load_image(job.input).map_err(anyhow::Error::from))
        .collect()
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
pub fn encode(session: &Session, args: &EncodeArgs) -> Result<()> {
    let ckpt = session.open()?;
    // Entropy coding reads the prior's probabilities from its portable forward pass.
    let prior = if args.entropy {
        let prior = crate::fid::open_prior_on(args.prior.as_deref(), &ckpt, Device::Cpu)?;
        if ckpt.config.code_space().depth != 1 {
            bail!(
                "--entropy: priors model one code per position; this model's codes have depth {}",
                ckpt.config.code_space().depth
            );
        }
        let Some(portable) = prior.model.portable() else {
            bail!(
                "--entropy: {} is a PixelCNN prior, which has no portable forward pass for coding; use a transformer prior (`vq-train prior --arch transformer`)",
                prior.origin()
            );
        };
        Some((prior, portable))
    } else {
        None
    };
    let search = args.search.code_search();
    check_search(&ckpt, search.as_ref())?;
    // With --entropy, the search weighs each code's bits under the prior (the null class's:
    // the class is chosen after the search).
    let rate = match (&prior, &search) {
        (Some((prior, _)), Some(_)) => Some(vq_prior::entropy::PriorRate {
            prior: prior.model.as_ref(),
            class: None,
        }),
        _ => None,
    };
    let lambda = args.lambda.unwrap_or(DEFAULT_LAMBDA);
    let rate = rate
        .as_ref()
        .filter(|_| lambda > 0.0)
        .map(|r| (r as &dyn vq_model::CodeRate, lambda));
    let codec = codec(&ckpt, session.device);
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
                write_code_file(&ckpt, prior.as_ref().map(|(p, t)| (p, t)), job, &img, &grid)
            })
            .collect()
    })
}

/// One image's `.vqz` file, entropy-coded with `prior` if given.
fn write_code_file(
    ckpt: &Checkpoint,
    prior: Option<(&vq_prior::PriorCheckpoint, &PortableTransformer)>,
    job: &Job<'_>,
    img: &crate::LoadedImage,
    grid: &CodeGrid,
) -> Result<EncodeReport> {
    let (input, dest) = (job.input, job.dest.as_path());
    let (w, h) = img.rgb.dimensions();
    let mut file = crate::code_file(ckpt, grid, w, h, img.colour)
        .with_context(|| format!("{}: building the code file", input.display()))?;
    if let Some((prior, portable)) = prior {
        let codes = vq_prior::entropy::Grid {
            width: grid.width as usize,
            height: grid.height as usize,
            codes: grid.codes.clone(),
        };
        let class = vq_prior::entropy::best_class(prior.model.as_ref(), &codes);
        let payload = vq_prior::entropy::encode_portable(portable, &codes, class);
        // The prior names the model.
        file.model_id.clear();
        file.entropy = Some(vq_codes::EntropyCoding {
            prior_id: prior.model_id[..vq_codes::v3::PRIOR_ID_LEN].to_vec(),
            class: None,
            codes_crc: vq_codes::v3::codes_check(&file.codes),
            payload,
        });
    }
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

/// A prior that decodes files, with its portable forward pass when it has one.
struct OpenPrior {
    prior: vq_prior::PriorCheckpoint,
    portable: Option<PortableTransformer>,
}

/// `vq-cli decode`: write each `.vqz` file's image as `NAME.decoded.png`.
pub fn decode(session: &Session, args: &DecodeArgs) -> Result<()> {
    let ckpt = session.open()?;
    if args.levels == Some(0) {
        bail!("--levels must be at least 1");
    }
    // The priors opened so far, by the id the files name: many files coded with one prior
    // open it once.
    use std::collections::hash_map::{Entry, HashMap};
    let mut priors: HashMap<Vec<u8>, OpenPrior> = HashMap::new();
    each_input(session, &args.files, "decoded.png", |input, dest| {
        if !input.is_file() {
            bail!("{}: no such file", input.display());
        }
        let bytes = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
        let mut file = CodeFile::from_bytes(&bytes)
            .with_context(|| format!("{}: not a valid .vqz code file", input.display()))?;
        if file.width.max(file.height) > crate::MAX_IMAGE_SIDE {
            bail!(
                "{}: a {}×{} image, larger than vq-cli reads or writes (at most {} pixels a side)",
                input.display(),
                file.width,
                file.height,
                crate::MAX_IMAGE_SIDE
            );
        }
        crate::check_code_file(input, &file, &ckpt)?;
        file.resolve_vocabulary(ckpt.config.code_space().vocabulary as u32);
        if let Some(coding) = &file.entropy {
            if let Entry::Vacant(vacant) = priors.entry(coding.prior_id.clone()) {
                let prior = match args.prior.as_deref() {
                    Some(path) => crate::fid::open_prior_on(Some(path), &ckpt, Device::Cpu),
                    None => crate::fid::open_bundled_prior_coded_as(&ckpt, &coding.prior_id),
                }
                .with_context(|| format!("{}: arithmetic-coded with a prior", input.display()))?;
                if !prior.model_id.starts_with(&coding.prior_id) {
                    bail!(
                        "{}: coded with prior {}, but {} is prior {}; decode it with the prior that encoded it (--prior)",
                        input.display(),
                        vq_store::hex(&coding.prior_id),
                        prior.origin(),
                        vq_store::hex(&prior.model_id[..coding.prior_id.len()])
                    );
                }
                let portable = prior.model.portable();
                vacant.insert(OpenPrior { prior, portable });
            }
            let open = &priors[&coding.prior_id];
            let (width, height) = (file.grid_width as usize, file.grid_height as usize);
            let grid = if file.version >= 3 {
                let Some(portable) = &open.portable else {
                    bail!(
                        "{}: coded with prior {}, which is a PixelCNN: version-3 files are coded by transformer priors only",
                        input.display(),
                        open.prior.origin()
                    );
                };
                vq_prior::entropy::decode_portable(portable, &coding.payload, width, height).0
            } else {
                vq_prior::entropy::decode(
                    open.prior.model.as_ref(),
                    &coding.payload,
                    width,
                    height,
                    coding.class.map(i64::from),
                )
            };
            file.codes = grid.codes;
            file.validate().with_context(|| {
                format!("{}: decoding the arithmetic-coded codes", input.display())
            })?;
        }
        if let Some(levels) = args.levels {
            if levels > file.depth() {
                bail!(
                    "{}: --levels {levels}, but the file holds {} level(s)",
                    input.display(),
                    file.depth()
                );
            }
            file.truncate_levels(levels);
        }
        let grid = crate::CodeGrid {
            width: file.grid_width,
            height: file.grid_height,
            depth: file.depth() as u32,
            codes: file.codes.clone(),
        };
        let img = codec(&ckpt, session.device).decode(&grid, file.width, file.height);
        write_file(dest, &codec::encode_png(&img, file.colour)?)?;
        // A decoded file reports its files and size.
        Ok(FileHead::new(input, dest, file.width, file.height))
    })
}

/// Which split of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitArg {
    Train,
    Test,
}

impl From<SplitArg> for Split {
    fn from(s: SplitArg) -> Split {
        match s {
            SplitArg::Train => Split::Train,
            SplitArg::Test => Split::Test,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    #[arg(long, value_enum, default_value = "test")]
    pub split: SplitArg,
    /// The dataset: a cifar-10-batches-bin folder or an imported image set.
    #[arg(long, default_value = "datasets/cifar-10-batches-bin")]
    pub data: PathBuf,
    /// Evaluate only the first N images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Decode with only the first L levels of a residual quantizer's codes (its lower rates)
    /// [default: all]
    #[arg(long)]
    pub levels: Option<i64>,
    #[command(flatten)]
    pub search: SearchArgs,
    /// Also the FID (and KID) of the reconstructions against the whole split ("rFID"; the
    /// split's statistics are computed once and cached beside the dataset).
    #[arg(long)]
    pub fid: bool,
    #[command(flatten)]
    pub fid_options: crate::fid::FidOptions,
}

/// Reconstruction figures over a dataset split.
#[derive(Debug, Serialize)]
pub struct EvalReport {
    pub checkpoint: String,
    pub model_id: String,
    pub split: SplitArg,
    pub images: i64,
    pub mse: f64,
    /// Mean of per-image RGB PSNRs.
    pub psnr: f64,
    /// Mean of per-image luma PSNRs (BT.601 Y, as pyiqa's `psnr` with `test_y_channel`).
    pub psnr_y: f64,
    pub ssim: f64,
    pub perplexity: f64,
    pub codes_used: i64,
    pub codebook_size: i64,
    /// Perplexity and codes used of each level (one for a single codebook).
    pub levels: Vec<vq_model::quantizer::LevelUsage>,
    /// The code search the codes were chosen by (`--search`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<vq_model::CodeSearch>,
    /// FID of the reconstructions against the split (`--fid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rfid: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rkid: Option<vq_fid::Kid>,
    pub seconds: f64,
}

impl fmt::Display for EvalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let split = match self.split {
            SplitArg::Train => "train",
            SplitArg::Test => "test",
        };
        let mut rows = vec![
            ("checkpoint", self.checkpoint.clone()),
            ("images", format!("{} ({split} split)", self.images)),
            ("MSE", format!("{:.6}", self.mse)),
            (
                "PSNR",
                format!("{:.2} dB (RGB, mean over images)", self.psnr),
            ),
            (
                "PSNR of the luma",
                format!(
                    "{:.2} dB (BT.601 Y, mean over images: pyiqa's test_y_channel)",
                    self.psnr_y
                ),
            ),
            ("SSIM", format!("{:.4}", self.ssim)),
            ("perplexity", format!("{:.1}", self.perplexity)),
            (
                "codes used",
                format!("{} of {}", self.codes_used, self.codebook_size),
            ),
        ];
        if self.levels.len() > 1 {
            for (l, level) in self.levels.iter().enumerate() {
                rows.push((
                    "level",
                    format!(
                        "{}: perplexity {:.1}, {} of {} codes used",
                        l + 1,
                        level.perplexity,
                        level.codes_used,
                        self.codebook_size
                    ),
                ));
            }
        }
        if let Some(search) = self.search {
            rows.push((
                "codes",
                format!(
                    "searched: {} candidates a position, {} sweeps",
                    search.candidates, search.sweeps
                ),
            ));
        }
        if let (Some(fid), Some(kid)) = (self.rfid, self.rkid) {
            rows.push((
                "rFID",
                format!(
                    "{fid:.3} (KID {:.5} ± {:.5}), against the whole split",
                    kid.mean, kid.std
                ),
            ));
        }
        rows.push((
            "time",
            format!(
                "{:.1} s ({:.0} images/s)",
                self.seconds,
                self.images as f64 / self.seconds.max(1e-9)
            ),
        ));
        table(f, &rows)
    }
}

/// `vq-cli eval`: MSE, PSNR, SSIM, perplexity and codes used over a split.
pub fn eval(session: &Session, args: &EvalArgs) -> Result<EvalReport> {
    let ckpt = session.open()?;
    let images = vq_data::load_split(&args.data, args.split.into(), &Default::default())
        .with_context(|| {
            format!(
                "loading the dataset {} (run `cargo xtask download-cifar`, or pass --data)",
                args.data.display()
            )
        })?;
    let count = args.limit.unwrap_or(images.len()).min(images.len());
    let depth = ckpt.config.code_space().depth;
    if let Some(levels) = args.levels {
        if !(1..=depth).contains(&levels) {
            bail!("--levels {levels}: this model's codes have {depth} level(s)");
        }
    }
    let scope = vq_model::EvalScope {
        count,
        levels: args.levels,
        search: args.search.code_search(),
    };
    check_search(&ckpt, scope.search.as_ref())?;
    let bar = if session.json || session.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(count as u64).with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} images [{elapsed} < {eta}]")
                .expect("valid template"),
        )
    };
    let start = Instant::now();
    let step = ckpt.info.step.unwrap_or(0) as usize;
    let e = vq_model::evaluate_with_progress(
        &ckpt.model,
        &images,
        scope,
        session.device,
        step,
        0.0,
        |n| bar.set_position(n as u64),
    )?;
    bar.finish_and_clear();
    let (rfid, rkid) = if args.fid {
        let net = args.fid_options.network(session.device)?;
        let split: Split = args.split.into();
        let reference = {
            let bar = crate::fid::bar(session, 0, "images of the split (cached afterwards)");
            let stats = vq_fid::split_stats(&net, &args.data, split, &mut |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            })?;
            bar.finish_and_clear();
            stats
        };
        let bar = crate::fid::bar(session, count as u64, "reconstructions");
        let features = vq_fid::models::reconstruction_features(
            &net,
            &ckpt.model,
            &images,
            scope,
            session.device,
            &mut |done| bar.set_position(done as u64),
        )?;
        bar.finish_and_clear();
        let ours = vq_fid::FeatureStats::from_features(&features)?;
        let kid = vq_fid::kernel_inception_distance(
            &ours.sample,
            &reference.sample,
            args.fid_options.kid_subsets,
            args.fid_options.kid_subset_size,
            0,
        )?;
        (
            Some(vq_fid::frechet_distance(&ours, &reference)?),
            Some(kid),
        )
    } else {
        (None, None)
    };
    Ok(EvalReport {
        checkpoint: ckpt.origin(),
        model_id: vq_store::hex(&ckpt.model_id),
        split: args.split,
        images: e.images,
        mse: e.mse,
        psnr: e.psnr,
        psnr_y: e.psnr_y,
        ssim: e.ssim,
        perplexity: e.perplexity,
        codes_used: e.codes_used,
        codebook_size: e.codebook_size,
        levels: e.levels.clone(),
        search: scope.search,
        rfid,
        rkid,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// A model's configuration, size, training and the device.
#[derive(Debug, Serialize)]
pub struct InfoReport {
    pub checkpoint: String,
    pub model_id: String,
    pub parameters: i64,
    pub config: VqVaeConfig,
    pub training: TrainingInfo,
    pub device: String,
    pub cuda_available: bool,
    pub threads: i32,
}

impl fmt::Display for InfoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let space = c.code_space();
        let quantizer = match &c.quantizer {
            vq_model::QuantizerConfig::Vq(q) => format!(
                "vector quantizer, K = {} codes of dimension {} ({} bits a code; a 32×32 image is {}×{} codes)",
                q.codebook_size,
                q.code_dim,
                space.bits_per_code(),
                32 / c.downsample,
                32 / c.downsample
            ),
            vq_model::QuantizerConfig::Cosine(q) => format!(
                "cosine quantizer, K = {} unit codes of dimension {} (projected from {}; {} bits a code)",
                q.codebook_size,
                q.code_dim,
                q.latent_dim,
                space.bits_per_code()
            ),
            vq_model::QuantizerConfig::Fsq(q) => format!(
                "finite scalar quantizer, levels {:?}: {} codes ({} bits a code)",
                q.levels,
                space.vocabulary,
                space.bits_per_code()
            ),
            vq_model::QuantizerConfig::Residual(q) => format!(
                "residual vector quantizer, {} levels of K = {} codes of dimension {} ({} bits a position at full depth){}",
                q.depth,
                q.codebook_size,
                q.code_dim,
                q.depth * i64::from(space.bits_per_code()),
                if q.dropout { ", trained with quantizer dropout" } else { "" }
            ),
        };
        let mut decoder = match &c.decoder {
            None => "the encoder's mirror".to_string(),
            Some(d) => format!(
                "its own shape: {} (channels x residual blocks, from the code grid up)",
                d.stages
                    .iter()
                    .map(|s| format!("{}x{}", s.channels, s.blocks))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        if let Some(id) = &c.codes_of {
            decoder.push_str(&format!("; trained for the codes of model {id}"));
        }
        table(
            f,
            &[
                ("checkpoint", self.checkpoint.clone()),
                ("model id", self.model_id.clone()),
                (
                    "model",
                    format!(
                        "{} parameters; {} hidden channels, {} residual layers of {}, {}× downsampling",
                        self.parameters,
                        c.hidden_channels,
                        c.residual.layers,
                        c.residual.hidden_channels,
                        c.downsample
                    ),
                ),
                ("quantizer", quantizer),
                ("decoder", decoder),
                (
                    "trained",
                    match self.training.step {
                        Some(step) => format!("{step} steps"),
                        None => "(no state.json: steps unknown)".into(),
                    },
                ),
                (
                    "test split",
                    match &self.training.eval {
                        Some(e) => format!(
                            "PSNR {:.2} dB, SSIM {:.4}, MSE {:.5}, perplexity {:.1}, {} of {} codes used ({} images)",
                            e.psnr, e.ssim, e.mse, e.perplexity, e.codes_used, e.codebook_size, e.images
                        ),
                        None => "(no figures stored; run `vq-cli eval`)".into(),
                    },
                ),
                (
                    "device",
                    format!(
                        "{} (CUDA available: {}, {} LibTorch CPU threads)",
                        self.device, self.cuda_available, self.threads
                    ),
                ),
            ],
        )
    }
}

/// `vq-cli info`.
pub fn info(session: &Session) -> Result<InfoReport> {
    let ckpt = session.open()?;
    Ok(InfoReport {
        checkpoint: ckpt.origin(),
        model_id: vq_store::hex(&ckpt.model_id),
        parameters: ckpt.parameter_count(),
        config: ckpt.config.clone(),
        training: ckpt.info.clone(),
        device: format!("{:?}", session.device),
        cuda_available: tch::Cuda::is_available(),
        threads: tch::get_num_threads(),
    })
}

#[derive(Debug, Clone, clap::Args)]
pub struct SampleArgs {
    /// Number of images [default: one row of 8 per class, every class (80 for CIFAR-10); 64
    /// with --class or an unconditional prior]
    #[arg(short)]
    pub n: Option<i64>,
    /// Only this class (name, e.g. cat, or number 0-9).
    #[arg(long)]
    pub class: Option<String>,
    #[command(flatten)]
    pub sampling: crate::sample::SamplingArgs,
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
    /// The prior's number type while sampling (`f32` or `bf16`).
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
pub fn sample(session: &Session, args: &SampleArgs) -> Result<SampleReport> {
    if let Some(n) = args.n {
        if !(1..=4096).contains(&n) {
            bail!("-n must be 1 to 4096, not {n}");
        }
    }
    let ckpt = args.sampling.open_decoder(session)?;
    let mut prior = crate::fid::open_prior(session, args.prior.as_deref(), &ckpt)?;
    let compute = args.sampling.set_compute(&mut prior, session.device)?;
    let options = args.sampling.options(&prior)?;
    let provenance = prior.model.provenance();
    let classes = provenance.classes;
    let n = match (args.n, &args.class) {
        (Some(n), _) => n,
        (None, None) if classes > 0 => 8 * classes,
        (None, _) => 64,
    };
    let labels: Option<Vec<i64>> = match (&args.class, classes) {
        (Some(_), 0) => bail!("this prior is not class-conditional; drop --class"),
        (Some(name), _) => {
            let names = provenance.class_names();
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
    let samples =
        crate::sample::sample_images(&prior, &ckpt, labels.as_ref(), n, &options, session.device);
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
        ckpt.config.input_range,
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
        decoder: ckpt.origin(),
        compute: compute.to_string(),
    })
}
