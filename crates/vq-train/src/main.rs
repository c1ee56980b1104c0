use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use vq_model::DeviceChoice;
use vq_prior::PriorArch;
use vq_train::decoder::PixelLoss;
use vq_train::{
    resume, train, DecoderTask, DecoderTrainConfig, PriorTask, PriorTrainConfig, RunConfig,
    RunSummary, Task, TrainConfig, VqVaeTask,
};

/// Train a VQ-VAE. With no arguments: the default recipe on datasets/cifar-10-batches-bin, into
/// runs/run-<time>/. `vq-train prior` trains a code prior.
#[derive(Parser)]
#[command(name = "vq-train", version, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    run: RunArgs,
    /// The quantizer (its other settings take their defaults unless set by the flags below).
    #[arg(long, value_enum, conflicts_with = "resume")]
    quantizer: Option<QuantizerKind>,
    /// Codebook size K (vq, cosine, residual; every level of a residual quantizer).
    #[arg(long, conflicts_with = "resume")]
    codebook_size: Option<i64>,
    /// Dimension of the codes: the projected dimension of cosine codes (e.g. 8, 16, 32).
    #[arg(long, conflicts_with = "resume")]
    code_dim: Option<i64>,
    /// FSQ: values per latent channel, e.g. 8,8,8 (512 codes) or 8,5,5,5 (1,000).
    #[arg(long, value_delimiter = ',', conflicts_with = "resume")]
    fsq_levels: Option<Vec<i64>>,
    /// Residual VQ: number of codebooks in sequence.
    #[arg(long, conflicts_with = "resume")]
    depth: Option<i64>,
    /// Residual VQ: train each step on a random number of levels, so that the model decodes
    /// at every depth.
    #[arg(long, conflicts_with = "resume")]
    quantizer_dropout: bool,
    /// 4 (8×8 codes) or 2 (16×16 codes).
    #[arg(long, conflicts_with = "resume")]
    downsample: Option<i64>,
    /// Number type of the convolutions (auto: bf16 where the CPU has AMX bf16 tiles).
    #[arg(long, value_enum, conflicts_with = "resume")]
    compute: Option<vq_model::ComputeKind>,
    /// Gradient through the code lookup.
    #[arg(long, value_enum, conflicts_with = "resume")]
    gradient: Option<vq_model::GradientEstimator>,
    /// Reconstruction loss.
    #[arg(long, value_enum, conflicts_with = "resume")]
    reconstruction_loss: Option<vq_model::ReconstructionLoss>,
    /// Weight of the commitment loss β.
    #[arg(long, conflicts_with = "resume")]
    commitment_cost: Option<f64>,
    /// Train images used for the quantizer's k-means initialisation (0: none).
    #[arg(long, conflicts_with = "resume")]
    kmeans_init_images: Option<usize>,
    /// End with the FID of the reconstructions of the test split (minutes on a CPU).
    #[arg(long, conflicts_with = "resume")]
    fid: bool,
}

/// `--quantizer`: the kinds of `"quantizer": {"kind": ...}`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum QuantizerKind {
    Vq,
    Cosine,
    Fsq,
    Residual,
}

/// Applies the quantizer flags to `model`.
fn set_quantizer(model: &mut vq_model::VqVaeConfig, args: &Args) -> Result<()> {
    use vq_model::QuantizerConfig as Q;
    if let Some(kind) = args.quantizer {
        let latent = model.quantizer.latent_dim();
        model.quantizer = match kind {
            QuantizerKind::Vq => Q::Vq(Default::default()),
            QuantizerKind::Cosine => Q::Cosine(vq_model::CosineConfig {
                latent_dim: latent,
                ..Default::default()
            }),
            QuantizerKind::Fsq => Q::Fsq(Default::default()),
            QuantizerKind::Residual => Q::Residual(Default::default()),
        };
    }
    let kind = |q: &Q| match q {
        Q::Vq(_) => "vq",
        Q::Cosine(_) => "cosine",
        Q::Fsq(_) => "fsq",
        Q::Residual(_) => "residual",
    };
    let wrong =
        |flag: &str, q: &Q| anyhow::anyhow!("{flag} does not apply to the {} quantizer", kind(q));
    if let Some(k) = args.codebook_size {
        match &mut model.quantizer {
            Q::Vq(c) => c.codebook_size = k,
            Q::Cosine(c) => c.codebook_size = k,
            Q::Residual(c) => c.codebook_size = k,
            q => return Err(wrong("--codebook-size", q)),
        }
    }
    if let Some(d) = args.code_dim {
        match &mut model.quantizer {
            Q::Vq(c) => c.code_dim = d,
            Q::Cosine(c) => c.code_dim = d,
            Q::Residual(c) => c.code_dim = d,
            q => return Err(wrong("--code-dim", q)),
        }
    }
    if let Some(levels) = &args.fsq_levels {
        match &mut model.quantizer {
            Q::Fsq(c) => c.levels = levels.clone(),
            q => return Err(wrong("--fsq-levels", q)),
        }
    }
    if args.depth.is_some() || args.quantizer_dropout {
        match &mut model.quantizer {
            Q::Residual(c) => {
                c.depth = args.depth.unwrap_or(c.depth);
                c.dropout |= args.quantizer_dropout;
            }
            q => return Err(wrong("--depth and --quantizer-dropout", q)),
        }
    }
    if let Some(v) = args.commitment_cost {
        match &mut model.quantizer {
            Q::Vq(c) => c.commitment_cost = v,
            Q::Cosine(c) => c.commitment_cost = v,
            Q::Residual(c) => c.commitment_cost = v,
            q => return Err(wrong("--commitment-cost", q)),
        }
    }
    if let Some(v) = args.gradient {
        model
            .vq_mut()
            .context("--gradient applies to the vector quantizer")?
            .gradient = v;
    }
    model
        .quantizer
        .validate()
        .map_err(|e| anyhow::anyhow!("quantizer settings: {e}"))
}

/// Flags of every kind of run.
#[derive(clap::Args)]
struct RunArgs {
    /// A JSON file with any of the run's settings (the rest take their defaults); flags
    /// override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The run folder [default: runs/<kind>-<unix time>].
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Continue the run in this folder from its last checkpoint, exactly, with the settings it
    /// recorded: a flag that would change them (or the data, device or threads) is refused.
    #[arg(long, conflicts_with_all = ["config", "run_dir"])]
    resume: Option<PathBuf>,
    /// The dataset: a cifar-10-batches-bin folder (`cargo xtask download-cifar` fills it) or
    /// an imported image set.
    #[arg(long, conflicts_with = "resume")]
    data: Option<PathBuf>,
    #[arg(long, conflicts_with = "resume")]
    steps: Option<usize>,
    #[arg(long, conflicts_with = "resume")]
    batch_size: Option<usize>,
    #[arg(long, conflicts_with = "resume")]
    lr: Option<f64>,
    #[arg(long, conflicts_with = "resume")]
    seed: Option<u64>,
    #[arg(long, value_enum, conflicts_with = "resume")]
    device: Option<DeviceChoice>,
    /// LibTorch CPU threads.
    #[arg(long, conflicts_with = "resume")]
    threads: Option<i32>,
    #[arg(long, conflicts_with = "resume")]
    eval_every: Option<usize>,
    #[arg(long, conflicts_with = "resume")]
    checkpoint_every: Option<usize>,
}

impl RunArgs {
    /// The config file (or the defaults), with the flags laid over it.
    fn config<C: RunConfig>(&self) -> Result<C> {
        let mut config: C = match &self.config {
            Some(path) => vq_store::read_config(path)?,
            None => C::default(),
        };
        macro_rules! set {
            ($target:expr, $flag:expr) => {
                if let Some(v) = $flag.clone() {
                    $target = v;
                }
            };
        }
        set!(config.data_mut().path, self.data);
        let s = config.schedule_mut();
        set!(s.steps, self.steps);
        set!(s.batch_size, self.batch_size);
        set!(s.lr, self.lr);
        set!(s.seed, self.seed);
        set!(s.eval_every, self.eval_every);
        set!(s.checkpoint_every, self.checkpoint_every);
        let r = config.runtime_mut();
        set!(r.device, self.device);
        if self.threads.is_some() {
            r.threads = self.threads;
        }
        Ok(config)
    }

    fn run_dir(&self, kind: &str) -> PathBuf {
        self.run_dir.clone().unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            PathBuf::from(format!("runs/{kind}-{now}"))
        })
    }
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Train a code prior over a trained VQ-VAE's codes (encodes the dataset once, cached).
    Prior(Box<PriorArgs>),
    /// Tune a trained VQ-VAE's decoder for sharper images (reconstruction + hinge GAN loss
    /// from a patch discriminator). The encoder and codebook stay frozen: the result decodes
    /// the same codes, .vqz files and priors.
    Decoder(Box<DecoderArgs>),
    /// Draw (again) the curves of a run's metrics log, e.g. of a run made by an older version.
    Curves {
        /// A `metrics.jsonl`, or a run folder holding one.
        metrics: PathBuf,
        /// What kind of run wrote it.
        #[arg(long, value_enum, default_value = "vqvae")]
        kind: Kind,
        /// The picture [default: curves.png beside the metrics].
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Arch {
    Pixelcnn,
    Transformer,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Kind {
    Vqvae,
    Prior,
    Decoder,
}

#[derive(clap::Args)]
struct DecoderArgs {
    /// The VQ-VAE: a run folder or checkpoint folder [default: the bundled model].
    #[arg(long, conflicts_with = "resume")]
    vqvae: Option<PathBuf>,
    /// Weight of the adversarial term: a factor on VQGAN's adaptive weight, or with
    /// --fixed-weight the weight itself.
    #[arg(long, conflicts_with = "resume")]
    adversarial_weight: Option<f64>,
    /// A fixed adversarial weight instead of the adaptive one.
    #[arg(long, conflicts_with = "resume")]
    fixed_weight: bool,
    /// Steps of reconstruction loss alone before the discriminator starts.
    #[arg(long, conflicts_with = "resume")]
    disc_start: Option<usize>,
    /// Weight of the feature-matching term (the discriminator's hidden activations on real
    /// images against those on their reconstructions).
    #[arg(long, conflicts_with = "resume")]
    feature_matching: Option<f64>,
    /// Weight of the focal frequency loss added to the reconstruction term (the spectra's
    /// squared error, each frequency weighted by how wrong it is).
    #[arg(long, conflicts_with = "resume")]
    frequency_weight: Option<f64>,
    /// The reconstruction term.
    #[arg(long, value_enum, conflicts_with = "resume")]
    reconstruction: Option<PixelLoss>,
    /// Train a new decoder of this shape on the frozen codes instead of tuning the model's own:
    /// CHANNELSxBLOCKS of each stage from the code grid up, e.g. 256x4,128x2,64x2 (a config
    /// file's "decoder" sets the rest).
    #[arg(long, value_name = "STAGES", conflicts_with = "resume")]
    decoder_stages: Option<String>,
    /// Start the discriminator from this decoder run's (or checkpoint's): with --vqvae naming
    /// the same run, a longer adversarial run continues where it ended.
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "resume")]
    discriminator_from: Option<PathBuf>,
    /// End with the FID of the reconstructions of the test split (minutes on a CPU).
    #[arg(long, conflicts_with = "resume")]
    fid: bool,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
struct PriorArgs {
    /// The VQ-VAE: a run folder or checkpoint folder [default: the bundled model].
    #[arg(long, conflicts_with = "resume")]
    vqvae: Option<PathBuf>,
    /// The architecture, with its default shape (a config file sets the shape).
    #[arg(long, value_enum, conflicts_with = "resume")]
    arch: Option<Arch>,
    /// Decoupled weight decay (AdamW) of the matrices and embeddings.
    #[arg(long, conflicts_with = "resume")]
    weight_decay: Option<f64>,
    /// Also train on the codes of the mirrored training images (half the grids mirrored).
    #[arg(long, conflicts_with = "resume")]
    hflip: bool,
    /// Number type of the transformer's linear layers in training (auto: bf16 where the
    /// hardware runs it natively); evaluation and sampling stay f32.
    #[arg(long, value_enum, conflicts_with = "resume")]
    compute: Option<vq_model::ComputeKind>,
    /// End with the FID of N class-balanced samples against the training split (minutes on a
    /// CPU).
    #[arg(long, value_name = "N", conflicts_with = "resume")]
    fid_samples: Option<i64>,
    #[command(flatten)]
    run: RunArgs,
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

fn run(args: Args) -> Result<()> {
    match args.command {
        Some(Sub::Prior(prior)) => run_prior(*prior),
        Some(Sub::Decoder(decoder)) => run_decoder(*decoder),
        Some(Sub::Curves {
            metrics,
            kind,
            output,
        }) => {
            let metrics = if metrics.is_dir() {
                vq_store::RunDir::new(&metrics).metrics()
            } else {
                metrics
            };
            let output = output.unwrap_or_else(|| metrics.with_file_name("curves.png"));
            let panels = match kind {
                Kind::Vqvae => <VqVaeTask as Task>::panels(),
                Kind::Prior => <PriorTask as Task>::panels(),
                Kind::Decoder => <DecoderTask as Task>::panels(),
            };
            vq_train::plot_curves(&metrics, &panels, &output)?;
            println!("{}", output.display());
            Ok(())
        }
        None => run_vqvae(args),
    }
}

fn run_vqvae(args: Args) -> Result<()> {
    let summary: RunSummary<vq_model::Evaluation> = match &args.run.resume {
        Some(dir) => resume::<VqVaeTask>(dir)?,
        None => {
            let mut config: TrainConfig = args.run.config()?;
            set_quantizer(&mut config.model, &args)?;
            let model = &mut config.model;
            if let Some(v) = args.downsample {
                model.downsample = v;
            }
            if let Some(v) = args.compute {
                model.compute = v;
            }
            if let Some(v) = args.reconstruction_loss {
                model.reconstruction_loss = v;
            }
            if let Some(v) = args.kmeans_init_images {
                config.kmeans_init_images = v;
            }
            config.fid |= args.fid;
            train::<VqVaeTask>(config, &args.run.run_dir("run"))?
        }
    };
    let e = &summary.final_eval;
    println!(
        "{}: {} steps in {:.0} s ({:.0} images/s); test PSNR {:.2} dB, SSIM {:.4}, MSE {:.5}, perplexity {:.1}, {} / {} codes used; best PSNR {:.2} dB at step {}",
        summary.run_dir.display(),
        summary.steps,
        summary.train_seconds,
        summary.items_per_second,
        e.psnr,
        e.ssim,
        e.mse,
        e.perplexity,
        e.codes_used,
        e.codebook_size,
        summary.best_score,
        summary.best_step
    );
    Ok(())
}

fn run_decoder(args: DecoderArgs) -> Result<()> {
    let summary = match &args.run.resume {
        Some(dir) => resume::<DecoderTask>(dir)?,
        None => {
            let mut config: DecoderTrainConfig = args.run.config()?;
            if let Some(v) = args.vqvae {
                config.vqvae = Some(v);
            }
            if let Some(v) = args.adversarial_weight {
                config.adversarial_weight = v;
            }
            if args.fixed_weight {
                config.adaptive_weight = false;
            }
            if let Some(v) = args.disc_start {
                config.disc_start = v;
            }
            if let Some(v) = args.feature_matching {
                config.feature_matching = v;
            }
            if let Some(v) = args.frequency_weight {
                config.frequency_weight = v;
            }
            if let Some(v) = args.reconstruction {
                config.reconstruction = v;
            }
            if let Some(text) = args.decoder_stages {
                let stages = vq_model::StagedDecoderConfig::parse_stages(&text)
                    .map_err(|e| anyhow::anyhow!("--decoder-stages: {e}"))?;
                config.decoder.get_or_insert_with(Default::default).stages = stages;
            }
            if let Some(v) = args.discriminator_from {
                config.discriminator_from = Some(v);
            }
            config.fid |= args.fid;
            train::<DecoderTask>(config, &args.run.run_dir("decoder"))?
        }
    };
    let e = &summary.final_eval.eval;
    println!(
        "{}: {} steps in {:.0} s ({:.0} images/s); test PSNR {:.2} dB, SSIM {:.4}, MSE {:.5}",
        summary.run_dir.display(),
        summary.steps,
        summary.train_seconds,
        summary.items_per_second,
        e.psnr,
        e.ssim,
        e.mse,
    );
    Ok(())
}

fn run_prior(args: PriorArgs) -> Result<()> {
    let summary = match &args.run.resume {
        Some(dir) => resume::<PriorTask>(dir)?,
        None => {
            let mut config: PriorTrainConfig = args.run.config()?;
            if let Some(v) = args.vqvae {
                config.vqvae = Some(v);
            }
            if args.hflip {
                config.hflip = true;
            }
            if let Some(v) = args.weight_decay {
                config.weight_decay = v;
            }
            if let Some(v) = args.compute {
                config.compute = v;
            }
            if let Some(v) = args.fid_samples {
                config.fid_samples = v;
            }
            match (args.arch, &config.prior) {
                (Some(Arch::Pixelcnn), PriorArch::PixelCnn(_))
                | (Some(Arch::Transformer), PriorArch::Transformer(_))
                | (None, _) => {}
                (Some(Arch::Pixelcnn), _) => config.prior = PriorArch::PixelCnn(Default::default()),
                (Some(Arch::Transformer), _) => {
                    config.prior = PriorArch::Transformer(Default::default())
                }
            }
            train::<PriorTask>(config, &args.run.run_dir("prior"))?
        }
    };
    let e = &summary.final_eval;
    println!(
        "{}: {} steps in {:.0} s ({:.0} grids/s); test NLL {:.4} bits/code, {:.4} bits/dim ({} grids)",
        summary.run_dir.display(),
        summary.steps,
        summary.train_seconds,
        summary.items_per_second,
        e.bits_per_code,
        e.bits_per_dim,
        e.grids
    );
    Ok(())
}
