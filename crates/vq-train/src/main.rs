use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use vq_model::DeviceChoice;
use vq_train::{checkpoint, resume, train, TrainConfig};

/// Train a VQ-VAE on CIFAR-10. With no arguments: the default recipe on
/// datasets/cifar-10-batches-bin, into runs/run-<time>/. `vq-train prior` trains the code prior.
#[derive(Parser)]
#[command(name = "vq-train", version, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// A JSON file with any TrainConfig fields (the rest take their defaults); flags below
    /// override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The run folder [default: runs/run-<unix time>].
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Continue the run in this folder from its last checkpoint, exactly.
    #[arg(long, conflicts_with_all = ["config", "run_dir"])]
    resume: Option<PathBuf>,
    #[command(flatten)]
    common: CommonArgs,
    /// Codebook size K.
    #[arg(long)]
    codebook_size: Option<i64>,
    /// 4 (8×8 codes) or 2 (16×16 codes).
    #[arg(long)]
    downsample: Option<i64>,
    /// Number type of the convolutions: auto (bf16 where the CPU has AMX bf16 tiles, else f32), f32 or bf16.
    #[arg(long)]
    compute: Option<vq_model::ComputeKind>,
    /// Gradient through the code lookup: straight_through (default) or rotation.
    #[arg(long)]
    gradient: Option<vq_model::GradientEstimator>,
    /// Reconstruction loss: per_image_log (the gradient of mean PSNR) or mse.
    #[arg(long)]
    reconstruction_loss: Option<vq_model::ReconstructionLoss>,
    /// Weight of the commitment loss β.
    #[arg(long)]
    commitment_cost: Option<f64>,
    /// Train images used for the k-means codebook initialisation (0: random codebook).
    #[arg(long)]
    kmeans_init_images: Option<usize>,
}

/// Flags shared by the VQ-VAE and the prior runs.
#[derive(clap::Args)]
struct CommonArgs {
    /// The cifar-10-batches-bin folder (`cargo xtask download-cifar` fills it).
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    /// auto, cpu or cuda.
    #[arg(long)]
    device: Option<DeviceChoice>,
    /// LibTorch CPU threads.
    #[arg(long)]
    threads: Option<i32>,
    #[arg(long)]
    eval_every: Option<usize>,
    #[arg(long)]
    checkpoint_every: Option<usize>,
}

/// Overrides the fields of a config (TrainConfig or PriorTrainConfig) that the common flags set.
macro_rules! apply_common {
    ($config:ident, $common:expr) => {{
        let c = $common;
        if let Some(v) = c.data {
            $config.data = v;
        }
        if let Some(v) = c.steps {
            $config.steps = v;
        }
        if let Some(v) = c.batch_size {
            $config.batch_size = v;
        }
        if let Some(v) = c.lr {
            $config.lr = v;
        }
        if let Some(v) = c.seed {
            $config.seed = v;
        }
        if let Some(v) = c.device {
            $config.device = v;
        }
        if c.threads.is_some() {
            $config.threads = c.threads;
        }
        if let Some(v) = c.eval_every {
            $config.eval_every = v;
        }
        if let Some(v) = c.checkpoint_every {
            $config.checkpoint_every = v;
        }
    }};
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Train the PixelCNN prior over a trained VQ-VAE's codes (encodes CIFAR-10 once, cached).
    Prior(PriorArgs),
}

#[derive(clap::Args)]
struct PriorArgs {
    /// The VQ-VAE: a run folder or checkpoint folder [default: the bundled model].
    #[arg(long)]
    vqvae: Option<PathBuf>,
    /// A JSON file with any PriorTrainConfig fields; flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The run folder [default: runs/prior-<unix time>].
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Continue the prior run in this folder from its last checkpoint, exactly.
    #[arg(long, conflicts_with_all = ["config", "run_dir", "vqvae"])]
    resume: Option<PathBuf>,
    #[command(flatten)]
    common: CommonArgs,
}

fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn run_prior(args: PriorArgs) -> Result<()> {
    let summary = if let Some(dir) = &args.resume {
        vq_train::resume_prior(dir)?
    } else {
        let mut config: vq_train::PriorTrainConfig = match &args.config {
            Some(path) => checkpoint::read_json(path)
                .with_context(|| format!("reading the config {}", path.display()))?,
            None => Default::default(),
        };
        if let Some(v) = args.vqvae {
            config.vqvae = v;
        }
        apply_common!(config, args.common);
        let run_dir = args
            .run_dir
            .unwrap_or_else(|| PathBuf::from(format!("runs/prior-{}", unix_time())));
        vq_train::train_prior(config, &run_dir)?
    };
    let e = &summary.final_eval;
    println!(
        "{}: {} steps in {:.0} s; test NLL {:.4} bits/code, {:.4} bits/dim ({} grids)",
        summary.run_dir.display(),
        summary.steps,
        summary.train_seconds,
        e.bits_per_code,
        e.bits_per_dim,
        e.grids
    );
    Ok(())
}

fn main() {
    // Training allocates the same buffers every step: keep them instead of re-faulting pages.
    vq_model::retain_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(mut args: Args) -> Result<()> {
    if let Some(Sub::Prior(prior)) = args.command.take() {
        return run_prior(prior);
    }
    let summary = if let Some(dir) = &args.resume {
        resume(dir)?
    } else {
        let mut config: TrainConfig = match &args.config {
            Some(path) => checkpoint::read_json(path)
                .with_context(|| format!("reading the config {}", path.display()))?,
            None => TrainConfig::default(),
        };
        macro_rules! set {
            ($($field:ident).+ <- $value:expr) => {
                if let Some(v) = $value { config.$($field).+ = v; }
            };
        }
        apply_common!(config, args.common);
        set!(model.codebook_size <- args.codebook_size);
        set!(model.downsample <- args.downsample);
        set!(model.compute <- args.compute);
        set!(model.gradient <- args.gradient);
        set!(model.reconstruction_loss <- args.reconstruction_loss);
        set!(model.commitment_cost <- args.commitment_cost);
        set!(kmeans_init_images <- args.kmeans_init_images);
        let run_dir = args
            .run_dir
            .unwrap_or_else(|| PathBuf::from(format!("runs/run-{}", unix_time())));
        train(config, &run_dir)?
    };
    let e = &summary.final_eval;
    println!(
        "{}: {} steps in {:.0} s ({:.0} images/s); test PSNR {:.2} dB, SSIM {:.4}, MSE {:.5}, perplexity {:.1}, {} / {} codes used; best PSNR {:.2} dB at step {}",
        summary.run_dir.display(),
        summary.steps,
        summary.train_seconds,
        summary.images_per_second,
        e.psnr,
        e.ssim,
        e.mse,
        e.perplexity,
        e.codes_used,
        e.codebook_size,
        summary.best_psnr,
        summary.best_step
    );
    Ok(())
}
