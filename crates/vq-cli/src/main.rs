use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use tch::Tensor;
use vq_cli::{codec, Codec, Tiling};
use vq_codes::CodeFile;
use vq_data::Split;
use vq_model::checkpoint::{self, Checkpoint};
use vq_model::DeviceChoice;

/// Reconstruct, encode and decode images with a trained VQ-VAE, and evaluate it.
#[derive(Parser)]
#[command(name = "vq-cli", version)]
struct Cli {
    /// auto, cpu or cuda.
    #[arg(long, global = true, default_value = "auto")]
    device: DeviceChoice,
    /// LibTorch CPU threads [default: LibTorch's choice, one per core].
    #[arg(long, global = true)]
    threads: Option<i32>,
    /// A checkpoint folder or a run folder (its best checkpoint) [default: the bundled
    /// CIFAR-10 model in models/cifar10-default].
    #[arg(long, global = true, env = "VQVAE_CHECKPOINT")]
    checkpoint: Option<PathBuf>,
    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// More logging (-vv for debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Encode and decode images; writes NAME.recon.png and prints PSNR, SSIM and bits per pixel.
    Reconstruct {
        /// Image files or folders (searched recursively).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Output file (one input) or folder [default: beside each input].
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Encode images to .vqz code files.
    Encode {
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Output file (one input) or folder [default: NAME.vqz beside each input].
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Decode .vqz code files to PNG images.
    Decode {
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Output file (one input) or folder [default: NAME.decoded.png beside each input].
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// New images from the code prior: a PNG grid (one row of 8 per class when no --class).
    Sample {
        /// Number of images.
        #[arg(short, default_value_t = 64)]
        n: i64,
        /// Only this class (name, e.g. cat, or number 0-9).
        #[arg(long)]
        class: Option<String>,
        /// Divides the logits: below 1 is more conservative, above 1 more varied.
        #[arg(long, default_value_t = 1.0)]
        temperature: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The prior: a prior run or checkpoint folder [default: models/cifar10-prior].
        #[arg(long)]
        prior: Option<PathBuf>,
        #[arg(short, long, default_value = "samples.png")]
        output: PathBuf,
    },
    /// Reconstruction quality over a CIFAR-10 split: MSE, PSNR, SSIM, perplexity, codes used.
    Eval {
        #[arg(long, value_enum, default_value = "test")]
        split: SplitArg,
        /// The cifar-10-batches-bin folder [default: datasets/cifar-10-batches-bin].
        #[arg(long)]
        data: Option<PathBuf>,
        /// Evaluate only the first N images.
        #[arg(long)]
        limit: Option<usize>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The model's configuration, size, training steps and figures, and the device in use.
    Info {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum SplitArg {
    Train,
    Test,
}

fn main() {
    let cli = Cli::parse();
    let default_level = if cli.quiet {
        "warn"
    } else if cli.verbose >= 2 {
        "debug"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Some(n) = cli.threads {
        if n < 1 {
            bail!("--threads must be at least 1");
        }
        tch::set_num_threads(n);
    }
    let device = cli.device.resolve()?;
    let checkpoint_path = cli
        .checkpoint
        .clone()
        .unwrap_or_else(checkpoint::bundled_dir);
    let open = || {
        Checkpoint::open(&checkpoint_path, device).with_context(|| {
            if cli.checkpoint.is_none() {
                "opening the bundled model (pass --checkpoint RUN_DIR to use your own)".to_string()
            } else {
                "opening the checkpoint".to_string()
            }
        })
    };
    let out = Output { quiet: cli.quiet };
    match cli.command {
        Command::Reconstruct { inputs, output } => {
            let ckpt = open()?;
            each_input(
                &inputs,
                output.as_deref(),
                "recon.png",
                &out,
                |input, dest| reconstruct(&ckpt, device, input, dest),
            )
        }
        Command::Encode { inputs, output } => {
            let ckpt = open()?;
            each_input(&inputs, output.as_deref(), "vqz", &out, |input, dest| {
                encode(&ckpt, device, input, dest)
            })
        }
        Command::Decode { inputs, output } => {
            let ckpt = open()?;
            each_input(
                &inputs,
                output.as_deref(),
                "decoded.png",
                &out,
                |input, dest| decode(&ckpt, device, input, dest),
            )
        }
        Command::Eval {
            split,
            data,
            limit,
            json,
        } => eval(&open()?, device, split, data, limit, json),
        Command::Info { json } => info(&open()?, device, json),
        Command::Sample {
            n,
            class,
            temperature,
            seed,
            prior,
            output,
        } => {
            let ckpt = open()?;
            let prior_path = prior.unwrap_or_else(vq_cli::sample::bundled_prior_dir);
            sample(
                &ckpt,
                &prior_path,
                device,
                n,
                class,
                temperature,
                seed,
                &output,
            )
        }
    }
}

struct Output {
    quiet: bool,
}

impl Output {
    fn line(&self, bar: &ProgressBar, text: String) {
        if !self.quiet {
            bar.suspend(|| println!("{text}"));
        }
    }
}

/// Runs `work(input, output)` over every input (folders expanded), with a progress bar when
/// there are several; a failure is reported and the others go on; any failure fails the command.
fn each_input(
    inputs: &[PathBuf],
    output: Option<&Path>,
    suffix: &str,
    out: &Output,
    mut work: impl FnMut(&Path, &Path) -> Result<String>,
) -> Result<()> {
    let files = vq_cli::collect_inputs(inputs)?;
    if files.is_empty() {
        bail!("no images found in {}", display_list(inputs));
    }
    let single_file_output = files.len() == 1 && output.is_some_and(|o| !o.is_dir());
    if let (Some(dir), false) = (output, single_file_output) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the output folder {}", dir.display()))?;
    }
    let bar = if files.len() > 1 && !out.quiet {
        ProgressBar::new(files.len() as u64).with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {wide_msg} [{elapsed} < {eta}]")
                .expect("valid template"),
        )
    } else {
        ProgressBar::hidden()
    };
    let mut failed = 0;
    for input in &files {
        bar.set_message(input.display().to_string());
        let dest = if single_file_output {
            output.expect("checked above").to_path_buf()
        } else {
            vq_cli::output_path(input, output, suffix)
        };
        let result = if vq_cli::same_file(input, &dest) {
            Err(anyhow::anyhow!(
                "{}: the output would overwrite the input; choose another -o",
                input.display()
            ))
        } else {
            work(input, &dest)
        };
        match result {
            Ok(text) => out.line(&bar, text),
            Err(e) => {
                failed += 1;
                bar.suspend(|| eprintln!("error: {e:#}"));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if failed > 0 {
        bail!("{failed} of {} inputs failed", files.len());
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

fn codec<'a>(ckpt: &'a Checkpoint, device: tch::Device) -> Codec<'a> {
    Codec {
        model: &ckpt.model,
        device,
        tiling: Tiling::default(),
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    vq_data::write_atomic(path, |w| w.write_all(bytes)).context("writing the output")
}

fn reconstruct(
    ckpt: &Checkpoint,
    device: tch::Device,
    input: &Path,
    dest: &Path,
) -> Result<String> {
    let start = Instant::now();
    let img = vq_cli::load_image(input)?;
    let (w, h) = img.rgb.dimensions();
    let codec = codec(ckpt, device);
    let grid = codec.encode(&img.rgb);
    let recon = codec.decode(&grid, w, h);
    write_file(dest, &codec::encode_png(&recon, img.colour)?)?;
    let written = codec::as_written(&recon, img.colour);
    let original = codec::as_written(&img.rgb, img.colour);
    let (psnr, ssim) = vq_cli::compare(&original, &written);
    let file = vq_cli::code_file(ckpt, &grid, w, h, img.colour);
    Ok(format!(
        "{} -> {}: {w}×{h}, {}×{} codes, {:.4} bits/pixel, PSNR {psnr:.2} dB, SSIM {}{}, {:.2} s",
        input.display(),
        dest.display(),
        grid.width,
        grid.height,
        file.bits_per_pixel(),
        ssim.map(|s| format!("{s:.4}"))
            .unwrap_or_else(|| "n/a (under 11 px)".into()),
        if img.had_alpha {
            " (transparency shown over white)"
        } else {
            ""
        },
        start.elapsed().as_secs_f64()
    ))
}

fn encode(ckpt: &Checkpoint, device: tch::Device, input: &Path, dest: &Path) -> Result<String> {
    let img = vq_cli::load_image(input)?;
    let (w, h) = img.rgb.dimensions();
    let grid = codec(ckpt, device).encode(&img.rgb);
    let file = vq_cli::code_file(ckpt, &grid, w, h, img.colour);
    let bytes = file
        .to_bytes()
        .with_context(|| format!("{}: building the code file", input.display()))?;
    write_file(dest, &bytes)?;
    Ok(format!(
        "{} -> {}: {w}×{h}, {}×{} codes of {} bits, {} bytes ({:.4} bits/pixel with the header)",
        input.display(),
        dest.display(),
        grid.width,
        grid.height,
        vq_codes::bits_per_code(file.codebook_size),
        bytes.len(),
        bytes.len() as f64 * 8.0 / (w as f64 * h as f64)
    ))
}

fn decode(ckpt: &Checkpoint, device: tch::Device, input: &Path, dest: &Path) -> Result<String> {
    if !input.is_file() {
        bail!("{}: no such file", input.display());
    }
    let bytes = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    let file = CodeFile::from_bytes(&bytes)
        .with_context(|| format!("{}: not a valid .vqz code file", input.display()))?;
    vq_cli::check_code_file(input, &file, ckpt)?;
    let grid = vq_cli::CodeGrid {
        width: file.grid_width,
        height: file.grid_height,
        codes: file.codes.clone(),
    };
    let img = codec(ckpt, device).decode(&grid, file.width, file.height);
    write_file(dest, &codec::encode_png(&img, file.colour)?)?;
    Ok(format!(
        "{} -> {}: {}×{}",
        input.display(),
        dest.display(),
        file.width,
        file.height
    ))
}

fn data_dir(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| {
        let local = PathBuf::from("datasets/cifar-10-batches-bin");
        if local.exists() {
            return local;
        }
        let in_tree =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/cifar-10-batches-bin");
        if in_tree.exists() {
            in_tree
        } else {
            local
        }
    })
}

fn eval(
    ckpt: &Checkpoint,
    device: tch::Device,
    split: SplitArg,
    data: Option<PathBuf>,
    limit: Option<usize>,
    json: bool,
) -> Result<()> {
    let dir = data_dir(data);
    let split = match split {
        SplitArg::Train => Split::Train,
        SplitArg::Test => Split::Test,
    };
    let images = vq_data::load_split(&dir, split, &Default::default()).with_context(|| {
        format!(
            "loading the dataset {} (run `cargo xtask download-cifar`, or pass --data)",
            dir.display()
        )
    })?;
    let count = limit.unwrap_or(images.len()).min(images.len());
    let bar = if json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(count as u64).with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} images [{elapsed} < {eta}]")
                .expect("valid template"),
        )
    };
    let start = Instant::now();
    let step = ckpt.info.step.unwrap_or(0) as usize;
    let e =
        vq_model::evaluate_with_progress(&ckpt.model, &images, count, device, step, 0.0, |n| {
            bar.set_position(n as u64)
        })?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    if json {
        let value = serde_json::json!({
            "checkpoint": ckpt.dir,
            "model_id": checkpoint::hex(&ckpt.model_id),
            "split": match split { Split::Train => "train", Split::Test => "test" },
            "images": e.images,
            "mse": e.mse,
            "psnr": e.psnr,
            "ssim": e.ssim,
            "perplexity": e.perplexity,
            "codes_used": e.codes_used,
            "codebook_size": e.codebook_size,
            "seconds": seconds,
        });
        println!("{value}");
    } else {
        println!("checkpoint   {}", ckpt.dir.display());
        println!(
            "images       {} ({} split)",
            e.images,
            match split {
                Split::Train => "train",
                Split::Test => "test",
            }
        );
        println!("MSE          {:.6}", e.mse);
        println!("PSNR         {:.2} dB", e.psnr);
        println!("SSIM         {:.4}", e.ssim);
        println!("perplexity   {:.1}", e.perplexity);
        println!("codes used   {} of {}", e.codes_used, e.codebook_size);
        println!(
            "time         {seconds:.1} s ({:.0} images/s)",
            e.images as f64 / seconds
        );
    }
    Ok(())
}

fn info(ckpt: &Checkpoint, device: tch::Device, json: bool) -> Result<()> {
    let c = &ckpt.config;
    if json {
        let value = serde_json::json!({
            "checkpoint": ckpt.dir,
            "model_id": checkpoint::hex(&ckpt.model_id),
            "parameters": ckpt.parameter_count(),
            "config": c,
            "training": ckpt.info,
            "device": format!("{device:?}"),
        });
        println!("{value}");
        return Ok(());
    }
    println!("checkpoint   {}", ckpt.dir.display());
    println!("model id     {}", checkpoint::hex(&ckpt.model_id));
    println!(
        "model        {} parameters; {} hidden channels, {} residual layers of {}, {}× downsampling",
        ckpt.parameter_count(),
        c.hidden_channels,
        c.residual_layers,
        c.residual_hidden_channels,
        c.downsample
    );
    println!(
        "codebook     K = {} codes of dimension {} ({} bits a code; a 32×32 image is {}×{} codes)",
        c.codebook_size,
        c.code_dim,
        vq_codes::bits_per_code(c.codebook_size as u32),
        32 / c.downsample,
        32 / c.downsample
    );
    match ckpt.info.step {
        Some(step) => println!("trained      {step} steps"),
        None => println!("trained      (no state.json: steps unknown)"),
    }
    match &ckpt.info.eval {
        Some(e) => println!(
            "test split   PSNR {:.2} dB, SSIM {:.4}, MSE {:.5}, perplexity {:.1}, {} of {} codes used ({} images)",
            e.psnr, e.ssim, e.mse, e.perplexity, e.codes_used, e.codebook_size, e.images
        ),
        None => println!("test split   (no figures stored; run `vq-cli eval`)"),
    }
    println!(
        "device       {device:?} (CUDA available: {}, {} LibTorch CPU threads)",
        tch::Cuda::is_available(),
        tch::get_num_threads()
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn sample(
    ckpt: &Checkpoint,
    prior_path: &Path,
    device: tch::Device,
    n: i64,
    class: Option<String>,
    temperature: f64,
    seed: u64,
    output: &Path,
) -> Result<()> {
    if !(1..=4096).contains(&n) {
        bail!("-n must be 1 to 4096, not {n}");
    }
    if !(temperature > 0.0 && temperature.is_finite()) {
        bail!("--temperature must be positive, not {temperature}");
    }
    let prior = vq_cli::sample::Prior::open(prior_path, ckpt, device)
        .context("opening the prior (train one with `vq-train prior`)")?;
    let classes = prior.model.config.classes;
    let labels: Option<Vec<i64>> = match (&class, classes) {
        (Some(_), 0) => bail!("this prior is not class-conditional; drop --class"),
        (Some(name), _) => {
            let names = prior.model.config.class_names();
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
    let labels = labels.map(|l| Tensor::from_slice(&l).to_device(device));
    tch::manual_seed(seed as i64);
    let start = Instant::now();
    let (images, _codes) = prior.sample_images(ckpt, labels.as_ref(), n, temperature, device);
    let seconds = start.elapsed().as_secs_f64();
    let rows: Vec<Tensor> = (0..(n + 7) / 8)
        .map(|r| images.narrow(0, r * 8, 8.min(n - r * 8)))
        .collect();
    let refs: Vec<&Tensor> = rows.iter().collect();
    vq_model::save_grid(&refs, 8, ckpt.config.input_range, output)
        .context("writing the samples")?;
    println!(
        "{}: {n} samples in {seconds:.2} s ({:.1} images/s), temperature {temperature}, seed {seed}",
        output.display(),
        n as f64 / seconds
    );
    Ok(())
}
