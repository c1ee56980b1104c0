use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use vq_data::BatchConfig;
use vq_model::DeviceChoice;
use vq_train::{smoke_run, SmokeConfig};

/// Train a VQ-VAE on CIFAR-10. (Until the model lands: a smoke run of the data pipeline.)
#[derive(Parser)]
#[command(name = "vq-train", version)]
struct Args {
    /// The cifar-10-batches-bin folder (`cargo xtask download-cifar` fills it).
    #[arg(long, default_value = "datasets/cifar-10-batches-bin")]
    data: PathBuf,
    /// Batches to draw.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// LibTorch CPU threads (default: LibTorch's choice).
    #[arg(long)]
    threads: Option<i32>,
}

fn main() {
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
    if let Some(n) = args.threads {
        tch::set_num_threads(n);
    }
    let report = smoke_run(&SmokeConfig {
        data: args.data,
        steps: args.steps,
        batch: BatchConfig {
            batch_size: args.batch_size,
            seed: args.seed,
            ..BatchConfig::default()
        },
        device: args.device,
    })?;
    println!(
        "smoke run: {} train / {} test images, {} batches, {:.0} images/s to the device, mean input {:.4}",
        report.train_images, report.test_images, report.steps, report.images_per_second, report.mean
    );
    println!("(the VQ-VAE model and its training loop arrive with issue 4)");
    Ok(())
}
