//! `vq-bench WHICH`: one benchmark, in the checkout it was built in, on a CIFAR-10 folder that
//! is already there (`cargo xtask bench WHICH` also installs and downloads what it needs).

use std::path::PathBuf;

use clap::Parser;

/// vqvae-rs's benchmarks against their peers, side by side in one run.
#[derive(Parser)]
#[command(name = "vq-bench")]
struct Args {
    /// The CIFAR-10 folder (cifar-10-batches-bin) [default: the checkout's datasets/]
    #[arg(long, global = true)]
    data: Option<PathBuf>,
    #[command(subcommand)]
    which: vq_bench::Which,
}

fn main() {
    vq_report::init_logging("info");
    let args = Args::parse();
    let root = vq_bench::checkout();
    let data = args
        .data
        .unwrap_or_else(|| root.join("datasets/cifar-10-batches-bin"));
    if let Err(e) = vq_bench::run(&root, &data, &args.which) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
