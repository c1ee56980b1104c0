use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches};
use serde::{Serialize, Serializer};
use serde_json::Value;
use vq_model::{ComputeKind, DeviceChoice, QuantizerArgs};
use vq_prior::PriorArch;
use vq_train::decoder::PixelLoss;
use vq_train::{
    DecoderTask, DecoderTrainConfig, PriorTask, PriorTrainConfig, RunConfig, RunKind, Task,
    TrainConfig, VqVaeTask,
};

/// Train a VQ-VAE. With no arguments: the default recipe on datasets/cifar-10-batches-bin, into
/// runs/run-<time>/. `vq-train prior` trains a code prior, `vq-train decoder` a sharper decoder
/// for a trained VQ-VAE's codes.
///
/// A setting comes from its flag, else the --config file, else the recipe's default:
/// `--print-config` shows every setting a run would use, defaults included.
#[derive(clap::Parser)]
#[command(name = "vq-train", version)]
struct Args {
    #[command(flatten)]
    output: vq_report::OutputArgs,
    /// Where and how a run computes: accepted before or after the subcommand.
    #[command(flatten)]
    runtime: RuntimeFlags,
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    quantizer: QuantizerArgs,
    #[command(flatten)]
    settings: VqVaeFlags,
}

/// Serializes `true` as itself and `false` as "not given", so that a switch left off keeps the
/// config file's value.
fn true_or_absent<S: Serializer>(value: &bool, s: S) -> Result<S::Ok, S::Error> {
    value.then_some(true).serialize(s)
}

/// The VQ-VAE's own settings (the quantizer's are [`QuantizerArgs`]), laid over `"model"` and
/// the run's config by name.
#[derive(clap::Args, Serialize)]
struct VqVaeFlags {
    #[command(flatten)]
    model: ModelFlags,
    /// Train images used for the quantizer's k-means initialisation (0: none) [default: 4096]
    #[arg(long, conflicts_with = "resume")]
    kmeans_init_images: Option<usize>,
    /// End with the FID of the reconstructions of the test split (minutes on a CPU)
    #[arg(long, conflicts_with = "resume")]
    #[serde(serialize_with = "true_or_absent")]
    fid: bool,
}

#[derive(clap::Args, Serialize)]
struct ModelFlags {
    /// 4 (8×8 codes) or 2 (16×16 codes) [default: 4]
    #[arg(long, conflicts_with = "resume")]
    downsample: Option<i64>,
    /// Number type of the convolutions (auto: bf16 where the hardware runs it natively: a GPU
    /// of compute capability 8.0 or more, a CPU with AMX, an AMD CPU with AVX-512 BF16)
    /// [default: auto]
    #[arg(long, value_enum, conflicts_with = "resume")]
    compute: Option<ComputeKind>,
    /// Reconstruction loss [default: mse]
    #[arg(long, value_enum, conflicts_with = "resume")]
    reconstruction_loss: Option<vq_model::ReconstructionLoss>,
}

/// Flags of every kind of run.
#[derive(clap::Args, Serialize)]
struct RunArgs {
    /// A JSON file with any of the run's settings (the rest take their defaults); flags
    /// override it [default: none]
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// The run folder [default: runs/<kind>-<unix time>]
    #[arg(long)]
    #[serde(skip)]
    run_dir: Option<PathBuf>,
    /// Continue the run in this folder from its last checkpoint, exactly, with the settings it
    /// recorded: a flag that would change them (or the data, device or threads) is refused
    /// [default: none, a new run]
    #[arg(long, conflicts_with_all = ["config", "run_dir"])]
    #[serde(skip)]
    resume: Option<PathBuf>,
    /// With --resume: train on to step N in all, a longer run than the one recorded (its
    /// learning-rate schedule is stretched to the new end from the step it resumes at, so the
    /// result differs from a run started with --steps N) [default: the recorded steps]
    #[arg(long, value_name = "N", requires = "resume")]
    #[serde(skip)]
    extend_to: Option<usize>,
    /// Train data-parallel in N local processes (ranks), each on 1/N of every global batch, as
    /// `torchrun --nproc-per-node N --no-python vq-train ...` does; a job torchrun (or another
    /// launcher) started is joined by its RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
    /// [default: 1, one process]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    #[serde(skip)]
    nproc: Option<u16>,
    /// Print the settings the run would use (the config with every default and flag applied)
    /// as JSON, and stop
    #[arg(long, conflicts_with = "resume")]
    #[serde(skip)]
    print_config: bool,
    #[command(flatten)]
    data: DataFlags,
    #[command(flatten)]
    schedule: ScheduleFlags,
}

#[derive(clap::Args, Serialize)]
struct DataFlags {
    /// The dataset: a cifar-10-batches-bin folder (`cargo xtask download-cifar` fills it) or
    /// an imported image set [default: datasets/cifar-10-batches-bin]
    #[arg(long = "data", conflicts_with = "resume")]
    path: Option<PathBuf>,
}

#[derive(clap::Args, Serialize)]
struct ScheduleFlags {
    /// Training steps [default: the recipe's: --print-config shows it]
    #[arg(long, conflicts_with = "resume")]
    steps: Option<usize>,
    /// Items (images, code grids) a step [default: the recipe's]
    #[arg(long, conflicts_with = "resume")]
    batch_size: Option<usize>,
    /// Peak learning rate [default: the recipe's]
    #[arg(long, conflicts_with = "resume")]
    lr: Option<f64>,
    /// Seeds the weights, the batches and every random draw [default: 0]
    #[arg(long, conflicts_with = "resume")]
    seed: Option<u64>,
    /// Evaluate every N steps and at the end [default: the recipe's]
    #[arg(long, value_name = "N", conflicts_with = "resume")]
    eval_every: Option<usize>,
    /// Checkpoint every N steps and at every evaluation [default: the recipe's]
    #[arg(long, value_name = "N", conflicts_with = "resume")]
    checkpoint_every: Option<usize>,
}

#[derive(clap::Args, Serialize)]
struct RuntimeFlags {
    /// Where to train [default: auto, a CUDA GPU if there is one]
    #[arg(long, value_enum, global = true, conflicts_with = "resume")]
    device: Option<DeviceChoice>,
    /// LibTorch CPU threads [default: one per core]
    #[arg(long, global = true, conflicts_with = "resume")]
    threads: Option<i32>,
}

/// The runtime flags as the config's `"runtime"` section, for laying over it.
#[derive(Serialize)]
struct RuntimeSection<'a> {
    runtime: &'a RuntimeFlags,
}

/// Lays `over` onto `base`: each field `over` gives (not null) replaces the same field of
/// `base`, objects field by field.
fn lay_over(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(slot) => lay_over(slot, value),
                    None if !value.is_null() => {
                        base.insert(key, value);
                    }
                    None => {}
                }
            }
        }
        (_, Value::Null) => {}
        (slot, value) => *slot = value,
    }
}

impl RunArgs {
    /// The config file (or the kind's defaults) with every flag of `flags` laid over it by
    /// name; each flag struct's shape is the config's, so a flag is one field, not a copy.
    fn config<C: RunConfig>(&self, flags: &[Value]) -> Result<C> {
        let config: C = match &self.config {
            Some(path) => vq_store::read_config(path)?,
            None => C::default(),
        };
        let mut value = serde_json::to_value(&config).context("the config as JSON")?;
        lay_over(&mut value, serde_json::to_value(self)?);
        for f in flags {
            lay_over(&mut value, f.clone());
        }
        serde_json::from_value(value).context("the settings with the flags applied")
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

    /// Trains (or resumes, or prints the config of) a run of `T`, the config adjusted by
    /// `adjust` after the flags are laid over it.
    fn train<T: Task>(
        &self,
        flags: &[Value],
        kind: &str,
        adjust: impl FnOnce(&mut T::Config) -> Result<()>,
        output: &vq_report::OutputArgs,
    ) -> Result<()> {
        let summary = match &self.resume {
            Some(dir) => vq_train::runner::resume_to::<T>(dir, self.extend_to)?,
            None => {
                let mut config: T::Config = self.config(flags)?;
                adjust(&mut config)?;
                if self.print_config {
                    println!("{}", serde_json::to_string_pretty(&config)?);
                    return Ok(());
                }
                vq_train::train::<T>(config, &self.run_dir(kind))?
            }
        };
        // Rank 0 speaks for the job.
        if vq_train::dist::Dist::current()?.is_main() {
            vq_report::print(&summary, output.json);
        }
        Ok(())
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
        /// What kind of run wrote it
        #[arg(long, value_enum, default_value = "vqvae")]
        kind: KindArg,
        /// The picture [default: curves.png beside the metrics]
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
enum KindArg {
    Vqvae,
    Prior,
    Decoder,
}

impl From<KindArg> for RunKind {
    fn from(k: KindArg) -> RunKind {
        match k {
            KindArg::Vqvae => RunKind::VqVae,
            KindArg::Prior => RunKind::Prior,
            KindArg::Decoder => RunKind::Decoder,
        }
    }
}

/// The VQ-VAE whose codes a prior or decoder run trains on.
#[derive(clap::Args, Serialize)]
struct VqVaeChoice {
    /// The VQ-VAE: a checkpoint folder or a run folder (its best checkpoint), as `vq-cli
    /// --checkpoint` takes [default: the bundled model]
    #[arg(long = "checkpoint", alias = "vqvae", conflicts_with = "resume")]
    vqvae: Option<PathBuf>,
}

#[derive(clap::Args, Serialize)]
struct DecoderArgs {
    #[command(flatten)]
    #[serde(flatten)]
    checkpoint: VqVaeChoice,
    /// Weight of the adversarial term: a factor on VQGAN's adaptive weight, or with
    /// --fixed-weight the weight itself [default: the recipe's]
    #[arg(long, conflicts_with = "resume")]
    adversarial_weight: Option<f64>,
    /// A fixed adversarial weight instead of the adaptive one [default: adaptive]
    #[arg(long = "fixed-weight", action = clap::ArgAction::SetFalse, conflicts_with = "resume")]
    #[serde(serialize_with = "false_or_absent")]
    adaptive_weight: bool,
    /// Steps of reconstruction loss alone before the discriminator starts [default: the
    /// recipe's]
    #[arg(long, conflicts_with = "resume")]
    disc_start: Option<usize>,
    /// Weight of the feature-matching term (the discriminator's hidden activations on real
    /// images against those on their reconstructions) [default: 0]
    #[arg(long, conflicts_with = "resume")]
    feature_matching: Option<f64>,
    /// Weight of the focal frequency loss added to the reconstruction term (the spectra's
    /// squared error, each frequency weighted by how wrong it is) [default: 0]
    #[arg(long, conflicts_with = "resume")]
    frequency_weight: Option<f64>,
    /// The reconstruction term [default: the recipe's]
    #[arg(long, value_enum, conflicts_with = "resume")]
    reconstruction: Option<PixelLoss>,
    /// Train a new decoder of this shape on the frozen codes instead of tuning the model's own:
    /// CHANNELSxBLOCKS of each stage from the code grid up, e.g. 256x4,128x2,64x2 (a config
    /// file's "decoder" sets the rest) [default: tune the model's own]
    #[arg(long, value_name = "STAGES", conflicts_with = "resume")]
    #[serde(skip)]
    decoder_stages: Option<String>,
    /// Start the discriminator from this decoder run's (or checkpoint's): with --checkpoint
    /// naming the same run, a longer adversarial run continues where it ended [default: a new
    /// discriminator]
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "resume")]
    discriminator_from: Option<PathBuf>,
    /// End with the FID of the reconstructions of the test split (minutes on a CPU)
    #[arg(long, conflicts_with = "resume")]
    #[serde(serialize_with = "true_or_absent")]
    fid: bool,
    #[command(flatten)]
    #[serde(skip)]
    run: RunArgs,
}

/// Serializes `false` as itself and `true` as "not given" (a switch that turns a setting off).
fn false_or_absent<S: Serializer>(value: &bool, s: S) -> Result<S::Ok, S::Error> {
    (!*value).then_some(false).serialize(s)
}

#[derive(clap::Args, Serialize)]
struct PriorArgs {
    #[command(flatten)]
    #[serde(flatten)]
    checkpoint: VqVaeChoice,
    /// The architecture, with its default shape (a config file's "prior" sets the shape)
    /// [default: transformer]
    #[arg(long, value_enum, conflicts_with = "resume")]
    #[serde(skip)]
    arch: Option<Arch>,
    /// Decoupled weight decay (AdamW) of the matrices and embeddings [default: the recipe's]
    #[arg(long, conflicts_with = "resume")]
    weight_decay: Option<f64>,
    /// Also train on the codes of the mirrored training images (half the grids mirrored)
    /// [default: off]
    #[arg(long, conflicts_with = "resume")]
    #[serde(serialize_with = "true_or_absent")]
    hflip: bool,
    /// Number type of the transformer's linear layers in training (auto: bf16 where the
    /// hardware runs it natively); evaluation and sampling stay f32 [default: f32]
    #[arg(long, value_enum, conflicts_with = "resume")]
    compute: Option<ComputeKind>,
    /// End with the FID of N class-balanced samples against the training split (minutes on a
    /// CPU) [default: 0, none]
    #[arg(long, value_name = "N", conflicts_with = "resume")]
    fid_samples: Option<i64>,
    /// Train on these codes instead of the dataset's: an (N, L, h, w) or (N, h, w) integer
    /// .npy (`vq-cli encode --codes`, or NumPy), checked against the VQ-VAE's vocabulary and
    /// grid [default: the dataset's codes]
    #[arg(long, value_name = "NPY", conflicts_with = "resume")]
    #[serde(skip)]
    codes: Option<PathBuf>,
    /// With --codes: each grid's class, an (N,) integer .npy [default: unconditional]
    #[arg(long, value_name = "NPY", requires = "codes")]
    #[serde(skip)]
    labels: Option<PathBuf>,
    /// With --codes: the grids to measure the test NLL on [default: the last 5% of --codes,
    /// held out]
    #[arg(long, value_name = "NPY", requires = "codes")]
    #[serde(skip)]
    test_codes: Option<PathBuf>,
    /// With --test-codes: their classes [default: none]
    #[arg(long, value_name = "NPY", requires = "test_codes")]
    #[serde(skip)]
    test_labels: Option<PathBuf>,
    #[command(flatten)]
    #[serde(skip)]
    run: RunArgs,
}

fn main() {
    // Training allocates the same buffers every step: keep them instead of re-faulting pages.
    vq_model::retain_freed_memory();
    let matches = Args::command().get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    check_usage(&args, &matches);
    if let Some(n) = launch_ranks(&args) {
        std::process::exit(launch(n));
    }
    let output = &args.output;
    output.init_logging();
    // A rank other than 0 of a data-parallel job shows no progress and reports its errors as
    // text on standard error: rank 0 speaks for the job.
    let rank0 = std::env::var("RANK").map_or(true, |r| r.trim() == "0");
    vq_train::view::set_quiet(output.quiet || output.json || !rank0);
    let json = output.json && rank0;
    if let Err(e) = run(args) {
        vq_report::print_error(&format!("{e:#}"), json);
        std::process::exit(1);
    }
}

/// What clap cannot say: a VQ-VAE flag given with a subcommand (it would be ignored), and
/// `--extend-to` without `--resume`. Exits with a usage error (2) like clap's own.
fn check_usage(args: &Args, matches: &clap::ArgMatches) {
    let mut command = Args::command();
    if let Some((name, _)) = matches.subcommand() {
        let given: Vec<String> = command
            .get_arguments()
            .filter(|a| !a.is_global_set())
            .filter(|a| {
                matches.value_source(a.get_id().as_str())
                    == Some(clap::parser::ValueSource::CommandLine)
            })
            .map(|a| format!("--{}", a.get_long().unwrap_or(a.get_id().as_str())))
            .collect();
        if !given.is_empty() {
            command
                .error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!(
                        "{} before `{name}`: a subcommand's flags go after its name (`vq-train {name} ...`)",
                        given.join(", ")
                    ),
                )
                .exit();
        }
    }
    let run = match &args.command {
        Some(Sub::Prior(p)) => &p.run,
        Some(Sub::Decoder(d)) => &d.run,
        _ => &args.run,
    };
    // The runtime flags are global (either side of the subcommand), so clap's own conflict
    // with --resume does not see them across levels.
    if run.resume.is_some() {
        let given: Vec<&str> = [
            ("--device", args.runtime.device.is_some()),
            ("--threads", args.runtime.threads.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        if !given.is_empty() {
            command
                .error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!(
                        "the argument '--resume <RESUME>' cannot be used with '{}': a resumed run keeps the settings it recorded",
                        given.join("', '")
                    ),
                )
                .exit();
        }
    }
    if run.extend_to.is_some() && run.resume.is_none() {
        command
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--extend-to N goes with --resume RUN (a new run takes --steps N)",
            )
            .exit();
    }
}

/// Serializes a flag struct for [`RunArgs::config`].
fn flags(value: &impl Serialize) -> Result<Value> {
    serde_json::to_value(value).context("the flags as JSON")
}

fn run(args: Args) -> Result<()> {
    let output = &args.output;
    let runtime = flags(&RuntimeSection {
        runtime: &args.runtime,
    })?;
    match args.command {
        Some(Sub::Prior(prior)) => {
            let arch = prior.arch;
            let codes = prior
                .codes
                .clone()
                .map(|train| vq_train::prior::ExternalCodes {
                    train,
                    labels: prior.labels.clone(),
                    test: prior.test_codes.clone(),
                    test_labels: prior.test_labels.clone(),
                });
            prior.run.train::<PriorTask>(
                &[flags(&prior)?, runtime.clone()],
                "prior",
                |config: &mut PriorTrainConfig| {
                    if codes.is_some() {
                        config.codes = codes;
                    }
                    config.prior = match (arch, &config.prior) {
                        (Some(Arch::Pixelcnn), PriorArch::PixelCnn(_))
                        | (Some(Arch::Transformer), PriorArch::Transformer(_))
                        | (None, _) => return Ok(()),
                        (Some(Arch::Pixelcnn), _) => PriorArch::PixelCnn(Default::default()),
                        (Some(Arch::Transformer), _) => PriorArch::Transformer(Default::default()),
                    };
                    Ok(())
                },
                output,
            )
        }
        Some(Sub::Decoder(decoder)) => {
            let stages = decoder.decoder_stages.as_deref();
            decoder.run.train::<DecoderTask>(
                &[flags(&decoder)?, runtime.clone()],
                "decoder",
                |config: &mut DecoderTrainConfig| {
                    if let Some(text) = stages {
                        config.decoder.get_or_insert_with(Default::default).stages =
                            vq_model::StagedDecoderConfig::parse_stages(text)
                                .map_err(|e| anyhow::anyhow!("--decoder-stages: {e}"))?;
                    }
                    Ok(())
                },
                output,
            )
        }
        Some(Sub::Curves {
            metrics,
            kind,
            output: picture,
        }) => curves(&metrics, kind.into(), picture),
        None => {
            let quantizer = &args.quantizer;
            args.run.train::<VqVaeTask>(
                &[flags(&args.settings)?, runtime.clone()],
                "run",
                |config: &mut TrainConfig| {
                    quantizer
                        .apply(&mut config.model.quantizer)
                        .map_err(|e| anyhow::anyhow!("quantizer settings: {e}"))
                },
                output,
            )
        }
    }
}

/// `vq-train curves`.
fn curves(metrics: &Path, kind: RunKind, picture: Option<PathBuf>) -> Result<()> {
    let metrics = if metrics.is_dir() {
        vq_store::RunDir::new(metrics).metrics()
    } else {
        metrics.to_path_buf()
    };
    let picture = picture.unwrap_or_else(|| metrics.with_file_name("curves.png"));
    vq_train::plot_curves(&metrics, &kind.panels(), &picture)?;
    println!("{}", picture.display());
    Ok(())
}

/// The `--nproc N` of whichever run kind was chosen, when it asks for several ranks and this
/// process is not already one of a job.
fn launch_ranks(args: &Args) -> Option<u16> {
    let run = match &args.command {
        Some(Sub::Prior(p)) => &p.run,
        Some(Sub::Decoder(d)) => &d.run,
        Some(Sub::Curves { .. }) => return None,
        None => &args.run,
    };
    let n = run.nproc.filter(|&n| n > 1)?;
    (std::env::var_os("WORLD_SIZE").is_none() && !run.print_config).then_some(n)
}

/// Starts `n` ranks of this command on this machine (torchrun's variables, a free port on the
/// loopback), each with its share of the cores; waits for them. The first to fail stops the
/// others; its exit code is the job's.
fn launch(n: u16) -> i32 {
    let port = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(e) => {
            eprintln!("error: no free port for the rendezvous: {e}");
            return 1;
        }
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("error: cannot find this program to start its ranks: {e}");
            return 1;
        }
    };
    // The arguments without `--nproc N` / `--nproc=N`.
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    let mut skip = false;
    for a in std::env::args_os().skip(1) {
        if skip {
            skip = false;
            continue;
        }
        match a.to_str() {
            Some("--nproc") => skip = true,
            Some(s) if s.starts_with("--nproc=") => {}
            _ => args.push(a),
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let threads = (cores / n as usize).max(1);
    let mut children = Vec::new();
    for rank in 0..n {
        let child = std::process::Command::new(&exe)
            .args(&args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("VQVAE_RANK_THREADS", threads.to_string())
            .spawn();
        match child {
            Ok(c) => children.push(c),
            Err(e) => {
                eprintln!("error: starting rank {rank}: {e}");
                for mut c in children {
                    let _ = c.kill();
                }
                return 1;
            }
        }
    }
    let mut code = 0;
    loop {
        let mut running = 0;
        for (rank, child) in children.iter_mut().enumerate() {
            match child.try_wait() {
                Ok(Some(status)) if !status.success() && code == 0 => {
                    code = status.code().unwrap_or(1);
                    eprintln!("error: rank {rank} failed ({status}); stopping the others");
                }
                Ok(Some(_)) => {}
                _ => running += 1,
            }
        }
        if running == 0 {
            return code;
        }
        if code != 0 {
            for c in children.iter_mut() {
                let _ = c.kill();
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_flag_says_its_default_and_values_are_kebab_case() {
        let gaps = vq_report::help_gaps(&<super::Args as clap::CommandFactory>::command());
        assert!(gaps.is_empty(), "{}", gaps.join("\n"));
    }
}
