use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use vq_cli::commands::{self, DecodeArgs, EncodeArgs, EvalArgs, SampleArgs};
use vq_cli::report;
use vq_cli::session::Session;
use vq_model::DeviceChoice;

/// Reconstruct, encode and decode images with a trained VQ-VAE, sample new ones from its code
/// prior, and evaluate it.
#[derive(Parser)]
#[command(name = "vq-cli", version)]
struct Cli {
    #[arg(long, global = true, value_enum, default_value = "auto")]
    device: DeviceChoice,
    /// LibTorch CPU threads [default: LibTorch's choice, one per core].
    #[arg(long, global = true)]
    threads: Option<i32>,
    /// A checkpoint folder or a run folder (its best checkpoint) [default: the bundled
    /// CIFAR-10 model, built into this binary].
    #[arg(long, global = true, env = "VQVAE_CHECKPOINT")]
    checkpoint: Option<PathBuf>,
    #[command(flatten)]
    output: vq_report::OutputArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Encode and decode images; writes NAME.recon.png and prints PSNR, SSIM and bits per pixel.
    Reconstruct(commands::ReconstructArgs),
    /// Encode images to .vqz code files (--entropy: arithmetic-coded with the prior).
    Encode(EncodeArgs),
    /// Decode .vqz code files to PNG images.
    Decode(DecodeArgs),
    /// New images from the code prior: a PNG grid (one row of 8 per class when no --class).
    Sample(SampleArgs),
    /// Reconstruction quality over a dataset split: MSE, PSNR, SSIM, perplexity, codes used
    /// (and the reconstructions' FID with --fid).
    Eval(EvalArgs),
    /// FID and KID between two sets of images (folders, dataset splits, statistics files), or
    /// of the prior's samples (--samples N) against a dataset split.
    Fid(commands::fid::FidArgs),
    /// An image folder (a sub-folder per class) into a dataset folder for `vq-train --data`
    /// and `vq-cli eval --data`.
    Import(commands::import::ImportArgs),
    /// The model (and the bundled sharp decoder and prior) for PyTorch: safetensors under
    /// documented names and a self-contained Python module (torch only) defining the networks.
    Export(commands::export::ExportArgs),
    /// The model's configuration, size, training steps and figures, and the device in use.
    Info,
    /// The devices LibTorch sees (CUDA GPUs with their compute capability), and the bundled
    /// model run on each, in f32 and bf16, against the CPU's answers.
    Device,
}

fn main() {
    let cli = Cli::parse();
    cli.output.init_logging();
    let json = cli.output.json;
    if let Err(e) = run(cli) {
        report::print_error(&e, json);
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
    let session = Session {
        device: cli.device.resolve()?,
        checkpoint: cli.checkpoint,
        quiet: cli.output.quiet,
        json: cli.output.json,
    };
    let json = session.json;
    match cli.command {
        Command::Reconstruct(args) => {
            print_files(&commands::reconstruct::run(&session, &args)?, &session)
        }
        Command::Encode(args) => {
            let report = commands::encode::run(&session, &args)?;
            if report.is_summary() && !session.quiet {
                report::print(&report, json);
            }
        }
        Command::Decode(args) => {
            let report = commands::decode::run(&session, &args)?;
            if report.is_summary() && !session.quiet {
                report::print(&report, json);
            }
        }
        Command::Sample(args) => report::print(&commands::sample::run(&session, &args)?, json),
        Command::Eval(args) => report::print(&commands::eval::run(&session, &args)?, json),
        Command::Fid(args) => report::print(&commands::fid::run(&session, &args)?, json),
        Command::Import(args) => report::print(&commands::import::run(&session, &args)?, json),
        Command::Device => report::print(&commands::device::run()?, json),
        Command::Info => report::print(&commands::info::run(&session)?, json),
        Command::Export(args) => report::print(&commands::export::run(&session, &args)?, json),
    }
    Ok(())
}

/// The summary of a command over files, after each file's own line: only for several files.
fn print_files(files: &commands::FilesReport, session: &Session) {
    if files.is_summary() && !session.quiet {
        report::print(files, session.json);
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_flag_says_its_default_and_values_are_kebab_case() {
        let gaps = vq_report::help_gaps(&super::Cli::command());
        assert!(gaps.is_empty(), "{}", gaps.join("\n"));
    }
}
