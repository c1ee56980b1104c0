//! `vq-bench scaling`: data-parallel training on this machine, one rank with every core
//! against two ranks with half the cores each (`vq-train --nproc 2`), for the default VQ-VAE
//! and the default prior: images (grids) per second of the global batch, and what the ranks
//! all-reduce a step (bytes, and the time of the calls). The prior trains on the bundled model's
//! codes of the training split (`vq-cli encode --codes`, made once) and evaluates on the 5% of
//! them it holds out; the VQ-VAE evaluates on the first 500 test images, so that the runs stay
//! short.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::benches::{machine, median};
use crate::cmd;

/// The two tasks measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    VqVae,
    Prior,
}

impl Task {
    fn name(self) -> &'static str {
        match self {
            Task::VqVae => "vqvae",
            Task::Prior => "prior",
        }
    }

    /// The rate key of its log lines.
    fn rate(self) -> &'static str {
        match self {
            Task::VqVae => "images_per_s",
            Task::Prior => "grids_per_s",
        }
    }
}

/// What one run logged in its last window.
#[derive(Debug, Clone, Copy)]
struct Window {
    rate: f64,
    bytes_per_step: Option<f64>,
    ms_per_step: Option<f64>,
}

/// `vq-bench scaling`.
pub fn scaling(root: &Path, data: &Path, steps: usize, rounds: usize) -> Result<()> {
    if steps < 4 || steps % 2 == 1 {
        bail!("--steps must be even and at least 4 (the rate is that of the second half)");
    }
    let m = machine();
    let cores = m["cores"].as_u64().unwrap_or(1) as usize;
    if cores < 2 {
        bail!("two ranks need two cores; this machine has {cores}");
    }
    println!(
        "machine: {} ({}), {cores} cores",
        m["cpu"].as_str().unwrap_or("?"),
        m["flags"]
    );
    cmd::run(cmd::cargo(root).args(["build", "--release", "-q", "-p", "vq-train", "-p", "vq-cli"]))
        .context("building vq-train and vq-cli")?;
    let bin = |name: &str| root.join("target/release").join(name);
    let work = root.join("target/bench-scaling");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let bench_data = short_test_split(data, &work)?;
    let (codes, labels) = train_codes(&bin("vq-cli"), data, &work)?;

    let mut results = Vec::new();
    for task in [Task::VqVae, Task::Prior] {
        let base = base_config(&bin("vq-train"), task, &bench_data, steps, &work)?;
        let variants = [(1usize, cores), (2, cores / 2)];
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
        let mut reduce = (Vec::new(), Vec::new());
        for round in 1..=rounds.max(1) {
            for (v, &(ranks, threads)) in variants.iter().enumerate() {
                let run = work.join(format!("{}-{ranks}x{threads}", task.name()));
                let _ = std::fs::remove_dir_all(&run);
                let config = work.join(format!("{}-{threads}-threads.json", task.name()));
                let mut json = base.clone();
                json["runtime"]["threads"] = json!(threads);
                std::fs::write(&config, serde_json::to_string_pretty(&json)?)?;
                let mut command = std::process::Command::new(bin("vq-train"));
                if task == Task::Prior {
                    command
                        .arg("prior")
                        .arg("--codes")
                        .arg(&codes)
                        .arg("--labels")
                        .arg(&labels);
                }
                command
                    .arg("--config")
                    .arg(&config)
                    .arg("--run-dir")
                    .arg(&run)
                    .arg("-q");
                if ranks > 1 {
                    command.args(["--nproc", &ranks.to_string()]);
                }
                cmd::run(&mut command).with_context(|| format!("{} × {ranks}", task.name()))?;
                let w = last_window(&run, task)?;
                eprintln!(
                    "{}, round {round}: {ranks} rank(s) × {threads} thread(s): {:.1} {}{}",
                    task.name(),
                    w.rate,
                    task.rate(),
                    match (w.bytes_per_step, w.ms_per_step) {
                        (Some(b), Some(ms)) =>
                            format!(", all-reduce {:.2} MB and {ms:.1} ms a step", b / 1e6),
                        _ => String::new(),
                    }
                );
                rates[v].push(w.rate);
                if let (Some(b), Some(ms)) = (w.bytes_per_step, w.ms_per_step) {
                    reduce.0.push(b);
                    reduce.1.push(ms);
                }
            }
        }
        let ratios: Vec<f64> = rates[1].iter().zip(&rates[0]).map(|(b, a)| b / a).collect();
        let batch = base["schedule"]["batch_size"].as_u64().unwrap_or(0);
        println!(
            "\n{} (default config, global batch {batch}, {steps} steps, the second half timed; medians of {} rounds)",
            task.name(),
            rounds.max(1)
        );
        println!(
            "{:<28} {:>12} {:>10} {:>14} {:>12}",
            "",
            task.rate(),
            "ratio",
            "MB/step",
            "ms/step"
        );
        println!(
            "{:<28} {:>12.1} {:>10.2} {:>14} {:>12}",
            format!("1 rank × {cores} threads"),
            median(&rates[0]),
            1.0,
            "-",
            "-"
        );
        println!(
            "{:<28} {:>12.1} {:>10.2} {:>14.3} {:>12.1}",
            format!("2 ranks × {} thread(s)", cores / 2),
            median(&rates[1]),
            median(&ratios),
            median(&reduce.0) / 1e6,
            median(&reduce.1)
        );
        results.push(json!({
            "task": task.name(),
            "global_batch_size": batch,
            "one_rank_threads": cores,
            "two_ranks_threads_each": cores / 2,
            "one_rank_rates": rates[0],
            "two_rank_rates": rates[1],
            "ratio": median(&ratios),
            "allreduce_bytes_per_step": median(&reduce.0),
            "allreduce_ms_per_step": median(&reduce.1),
        }));
    }
    println!(
        "{}",
        json!({"bench": "scaling", "machine": m, "steps": steps, "rounds": rounds, "results": results})
    );
    Ok(())
}

/// A copy of `data` whose test split is its first 500 images (the training split linked), so
/// that every run's evaluations take seconds.
fn short_test_split(data: &Path, work: &Path) -> Result<PathBuf> {
    let dir = work.join("data");
    std::fs::create_dir_all(&dir)?;
    let test = vq_data::load_split(data, vq_data::Split::Test, &Default::default())
        .with_context(|| format!("reading {}", data.display()))?;
    let n = test.len().min(500);
    let short = vq_data::Cifar10 {
        images: test.images.slice(ndarray::s![..n, .., .., ..]).to_owned(),
        labels: test.labels.slice(ndarray::s![..n]).to_owned(),
        class_names: test.class_names.clone(),
    };
    short.save(&dir, vq_data::Split::Test)?;
    for file in vq_data::Split::Train.file_names() {
        let link = dir.join(file);
        if !link.exists() {
            let target = std::path::absolute(data.join(file))?;
            std::os::unix::fs::symlink(&target, &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
    }
    Ok(dir)
}

/// The bundled model's codes of the training split and their labels (made once).
fn train_codes(vq_cli: &Path, data: &Path, work: &Path) -> Result<(PathBuf, PathBuf)> {
    let codes = work.join("train.npy");
    let labels = work.join("train.labels.npy");
    if !(codes.is_file() && labels.is_file()) {
        eprintln!("encoding the training split for the prior (once)");
        cmd::run(
            std::process::Command::new(vq_cli)
                .args(["-q", "encode", "--codes"])
                .arg(&codes)
                .arg(format!("{}:train", data.display())),
        )
        .context("encoding the training split")?;
    }
    Ok((codes, labels))
}

/// The task's default config (`--print-config`), with a log line at the half and at the end,
/// one evaluation and no FID.
fn base_config(
    vq_train: &Path,
    task: Task,
    data: &Path,
    steps: usize,
    work: &Path,
) -> Result<Value> {
    let mut command = std::process::Command::new(vq_train);
    if task == Task::Prior {
        let (codes, labels) = (work.join("train.npy"), work.join("train.labels.npy"));
        command
            .arg("prior")
            .arg("--codes")
            .arg(codes)
            .arg("--labels")
            .arg(labels);
    }
    let out = command
        .arg("--data")
        .arg(data)
        .args(["--steps", &steps.to_string(), "--print-config"])
        .output()
        .context("starting vq-train --print-config")?;
    if !out.status.success() {
        bail!(
            "vq-train --print-config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut json: Value = serde_json::from_slice(&out.stdout).context("vq-train --print-config")?;
    let schedule = &mut json["schedule"];
    schedule["log_every"] = json!(steps / 2);
    schedule["eval_every"] = json!(steps);
    schedule["checkpoint_every"] = json!(steps);
    json["runtime"]["device"] = json!("cpu");
    json["data"]["any_record_count"] = json!(true);
    match task {
        Task::VqVae => {
            json["fid"] = json!(false);
            json["eval_images"] = json!(500);
        }
        Task::Prior => json["fid_samples"] = json!(0),
    }
    Ok(json)
}

/// The rate and all-reduce figures of the run's last training log line.
fn last_window(run: &Path, task: Task) -> Result<Window> {
    let path = run.join("metrics.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let line = text
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v.get(task.rate()).is_some())
        .with_context(|| format!("{}: no training line", path.display()))?;
    Ok(Window {
        rate: line[task.rate()].as_f64().unwrap_or(f64::NAN),
        bytes_per_step: line["allreduce_bytes_per_step"].as_f64(),
        ms_per_step: line["allreduce_ms_per_step"].as_f64(),
    })
}
