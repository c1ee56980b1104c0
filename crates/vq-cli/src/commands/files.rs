//! What the commands over files share: inputs and outputs, the loop over them, code search.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;
use vq_model::checkpoint::Checkpoint;

use crate::codec::{CodeGrid, Codec};
use crate::report::{self};
use crate::session::Session;

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

/// Decoder-aware code search (`encode`, `reconstruct`, `eval`).
#[derive(Debug, Clone, clap::Args)]
pub struct SearchArgs {
    /// Choose each code among the quantizer's N best by the decoded image's error instead of
    /// taking the nearest (same bits, a higher PSNR, encoding about 100× slower; with
    /// `encode --entropy`, by error and bits: see --lambda; 4 is a good setting; vq, cosine and
    /// residual quantizers) [default: the nearest code, no search]
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

/// Runs `work(input, output)` over every input (folders expanded), with a progress bar when
/// there are several; a failure is reported and the others go on; any failure fails the command.
pub(crate) fn each_input<R: report::Report>(
    session: &Session,
    args: &FilesArgs,
    suffix: &str,
    mut work: impl FnMut(&Path, &Path) -> Result<R>,
) -> Result<FilesReport> {
    each_input_batched(session, args, suffix, 1, |jobs| {
        jobs.iter().map(|job| work(job.input, &job.dest)).collect()
    })
}

/// One input and the file it is written to.
pub(crate) struct Job<'a> {
    pub(crate) input: &'a Path,
    pub(crate) dest: PathBuf,
}

/// Inputs read together and run through the network in large passes (see [`by_size`]).
pub(crate) const BATCH_INPUTS: usize = 256;
/// Pixels per network pass: 1,024 images of 32 × 32, 16 of 256 × 256.
pub(crate) const BATCH_PIXELS: u64 = 1 << 20;

/// The loop over inputs of `reconstruct`, `encode` and `decode`: outputs named, inputs never
/// overwritten, a progress bar, each report printed in input order, failures counted (one bad
/// file does not stop the others). `work` takes `batch` inputs at a time and returns one result
/// per input.
pub(crate) fn each_input_batched<R: report::Report>(
    session: &Session,
    args: &FilesArgs,
    suffix: &str,
    batch: usize,
    mut work: impl FnMut(&[Job<'_>]) -> Vec<Result<R>>,
) -> Result<FilesReport> {
    let start = Instant::now();
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
    Ok(FilesReport {
        inputs: files.len(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// What a command over files did as a whole, after each file's own report: every input was
/// written (a failure fails the command instead).
#[derive(Debug, Serialize)]
pub struct FilesReport {
    pub inputs: usize,
    pub seconds: f64,
}

impl FilesReport {
    /// Worth printing: a lone file's own report already says everything.
    pub fn is_summary(&self) -> bool {
        self.inputs > 1
    }
}

impl fmt::Display for FilesReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} files written in {:.1} s ({:.1} a second)",
            self.inputs,
            self.seconds,
            self.inputs as f64 / self.seconds.max(1e-9)
        )
    }
}

/// Indices of the items of each size, in runs of at most [`BATCH_PIXELS`] pixels (at least
/// one item each): the groups that go through the network together. Items without a size (not
/// loaded) are left out.
pub(crate) fn by_size(sizes: &[Option<(u32, u32)>]) -> Vec<Vec<usize>> {
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
pub(crate) fn encode_images(
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
pub(crate) fn all_failed<R>(jobs: &[Job<'_>], error: &anyhow::Error) -> Vec<Result<R>> {
    jobs.iter()
        .map(|job| Err(anyhow::anyhow!("{}: {error:#}", job.input.display())))
        .collect()
}

/// Checks before any work that the model's quantizer can be searched.
pub(crate) fn check_search(ckpt: &Checkpoint, search: Option<&vq_model::CodeSearch>) -> Result<()> {
    if search.is_some() {
        vq_model::search::check(&ckpt.model).context("--search")?;
    }
    Ok(())
}

pub(crate) fn display_list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
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
    pub(crate) fn new(input: &Path, output: &Path, width: u32, height: u32) -> Self {
        FileHead {
            input: input.to_path_buf(),
            output: output.to_path_buf(),
            width,
            height,
        }
    }

    pub(crate) fn pixels(&self) -> f64 {
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

/// The inputs decoded, on all cores.
pub(crate) fn load_images(jobs: &[Job<'_>]) -> Vec<Result<crate::LoadedImage>> {
    jobs.par_iter()
        .map(|job| crate::load_image(job.input).map_err(anyhow::Error::from))
        .collect()
}

/// The images at `paths` decoded, on all cores.
pub(crate) fn load_images_at(paths: &[PathBuf]) -> Vec<Result<crate::LoadedImage>> {
    paths
        .par_iter()
        .map(|path| crate::load_image(path).map_err(anyhow::Error::from))
        .collect()
}
