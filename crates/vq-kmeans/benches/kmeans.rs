//! Our k-means on the benchmark workloads: `cargo xtask bench kmeans` runs this, then the
//! Python peers (scikit-learn, faiss) on the same data files, and prints them side by side.
//!
//! Writes `<out>/<workload>.f32` (the points, little-endian f32, row-major) and prints one JSON
//! line per workload with our figures.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vq_kmeans::{KMeans, KMeansConfig};

#[derive(Parser)]
struct Args {
    /// Folder for the data files shared with the peers [default: target/bench/kmeans in the
    /// workspace].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Lloyd iterations (the same for every peer).
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Workloads as NAME:N:D:K, comma-separated.
    #[arg(
        long,
        default_value = "blobs-262144x64-k512:262144:64:512,blobs-50000x64-k256:50000:64:256"
    )]
    workloads: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// `cargo bench` passes this; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Gaussian blobs: 2·K centres in [-10, 10]^D, unit-variance noise (Box-Muller).
fn blobs(n: usize, d: usize, centres: usize, seed: u64) -> Array2<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let truth = Array2::from_shape_fn((centres, d), |_| rng.random_range(-10.0..10.0f32));
    let labels: Vec<usize> = (0..n).map(|_| rng.random_range(0..centres)).collect();
    Array2::from_shape_fn((n, d), |(i, j)| {
        let u1: f32 = rng.random_range(f32::EPSILON..1.0);
        let u2: f32 = rng.random();
        let normal = (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos();
        truth[[labels[i], j]] + normal
    })
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../target/bench/kmeans"
        ))
    });
    std::fs::create_dir_all(&out)?;
    for spec in args.workloads.split(',') {
        let parts: Vec<&str> = spec.split(':').collect();
        let [name, n, d, k] = parts[..] else {
            panic!("workload {spec:?} is not NAME:N:D:K");
        };
        let (n, d, k): (usize, usize, usize) =
            (n.parse().unwrap(), d.parse().unwrap(), k.parse().unwrap());
        let points = blobs(n, d, 2 * k, args.seed);
        let path = out.join(format!("{name}.f32"));
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        for v in points.iter() {
            file.write_all(&v.to_le_bytes())?;
        }
        file.flush()?;

        let config = KMeansConfig::new(k)
            .seed(args.seed)
            .max_iters(args.iters)
            .tol(0.0);
        let started = Instant::now();
        let fit = KMeans::fit(points.view(), &config).expect("valid workload");
        let total = started.elapsed().as_secs_f64();
        let ours = out.join(format!("{name}.ours.f32"));
        let mut file = std::io::BufWriter::new(std::fs::File::create(&ours)?);
        for v in fit.centroids.iter() {
            file.write_all(&v.to_le_bytes())?;
        }
        file.flush()?;
        let iters = fit.timings.iterations.len().max(1);
        let per_iter = fit.timings.iterations.iter().sum::<f64>() / iters as f64;
        let first_iter = fit.timings.iterations.first().copied().unwrap_or(0.0);
        // One assignment over all points against all centroids: 2·N·K·D flops.
        let gflop = 2.0 * n as f64 * k as f64 * d as f64 / 1e9;
        let recomputed = fit.recomputed_fraction[1..].iter().sum::<f64>() / iters as f64;
        println!(
            "{{\"workload\":\"{name}\",\"n\":{n},\"d\":{d},\"k\":{k},\"iters\":{},\"data\":\"{}\",\"centroids\":\"{}\",\"seed_s\":{:.4},\"iter_s\":{per_iter:.5},\"first_iter_s\":{first_iter:.5},\"total_s\":{total:.4},\"inertia\":{:.6e},\"gflop_per_assignment\":{gflop:.3},\"effective_gflops\":{:.1},\"recomputed_fraction\":{recomputed:.4},\"threads\":{}}}",
            fit.iterations,
            path.display(),
            ours.display(),
            fit.timings.seeding,
            fit.inertia,
            gflop / per_iter,
            rayon::current_num_threads(),
        );
    }
    Ok(())
}
