use anyhow::Result;
use clap::{Parser, Subcommand};
use vq_model::DeviceChoice;

/// The vqvae-rs command-line tool.
#[derive(Parser)]
#[command(name = "vq-cli", version)]
struct Cli {
    /// auto, cpu or cuda.
    #[arg(long, global = true, default_value = "auto")]
    device: DeviceChoice,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// What this build links and which device it would use.
    Info,
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Info => {
            let device = cli.device.resolve()?;
            println!("device: {device:?}");
            println!("cuda available: {}", tch::Cuda::is_available());
            println!("cuda devices: {}", tch::Cuda::device_count());
            println!("LibTorch CPU threads: {}", tch::get_num_threads());
        }
    }
    Ok(())
}
