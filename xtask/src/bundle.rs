//! `cargo xtask bundle-model RUN_DIR` / `bundle-prior RUN_DIR`: copies a finished run's last
//! checkpoint (weights, config, state), its full-test-split figures and its pictures into
//! models/cifar10-default/ (the VQ-VAE `vq-cli` uses when no --checkpoint is given) or
//! models/cifar10-prior/ (the prior `vq-cli sample` uses). The optimizer state stays behind.

use std::path::Path;

use anyhow::{bail, Context, Result};

pub const MODEL_DIR: &str = "models/cifar10-default";
pub const PRIOR_DIR: &str = "models/cifar10-prior";

/// Bundles the VQ-VAE run `run_dir` (or, with `prior`, the prior run) into the models folder.
pub fn run(root: &Path, run_dir: &Path, prior: bool) -> Result<()> {
    let bundle_dir = if prior { PRIOR_DIR } else { MODEL_DIR };
    let summary_path = run_dir.join("summary.json");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).with_context(|| {
            format!("reading {} (is the run finished?)", summary_path.display())
        })?)
        .with_context(|| format!("{}: not JSON", summary_path.display()))?;
    let eval = summary
        .get("final_eval")
        .with_context(|| format!("{}: no final_eval", summary_path.display()))?;
    let step = eval["step"].as_u64().context("final_eval has no step")?;
    let checkpoint = run_dir.join(format!("checkpoints/step-{step:06}"));
    if !checkpoint.join("model.safetensors").is_file() {
        bail!(
            "{}: the final step's checkpoint is missing",
            checkpoint.display()
        );
    }
    let dest = root.join(bundle_dir);
    let staging = root.join(format!("{bundle_dir}.tmp"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    for name in ["model.safetensors", "config.json", "state.json"] {
        std::fs::copy(checkpoint.join(name), staging.join(name))
            .with_context(|| format!("copying {}", checkpoint.join(name).display()))?;
    }
    std::fs::write(
        staging.join("eval.json"),
        serde_json::to_string_pretty(eval)? + "\n",
    )?;
    std::fs::copy(
        run_dir.join("config.json"),
        staging.join("train-config.json"),
    )?;
    std::fs::copy(run_dir.join("summary.json"), staging.join("summary.json"))?;
    let grid = run_dir.join(format!("recon-step-{step:06}.png"));
    if grid.is_file() {
        std::fs::copy(&grid, staging.join("recon.png"))?;
    }
    if run_dir.join("curves.png").is_file() {
        std::fs::copy(run_dir.join("curves.png"), staging.join("curves.png"))?;
    }
    if run_dir.join("dataset.json").is_file() {
        std::fs::copy(run_dir.join("dataset.json"), staging.join("dataset.json"))?;
    }
    if run_dir.join("metrics.jsonl").is_file() {
        std::fs::copy(run_dir.join("metrics.jsonl"), staging.join("metrics.jsonl"))?;
    }
    if dest.exists() {
        std::fs::remove_dir_all(&dest)?;
    }
    std::fs::rename(&staging, &dest)?;
    if prior {
        tracing::info!(
            "bundled step {step} of {} into {} (test NLL {:.4} bits/code, {:.4} bits/dim)",
            run_dir.display(),
            dest.display(),
            eval["bits_per_code"].as_f64().unwrap_or(f64::NAN),
            eval["bits_per_dim"].as_f64().unwrap_or(f64::NAN)
        );
    } else {
        tracing::info!(
            "bundled step {step} of {} into {} (test PSNR {:.2} dB, SSIM {:.4})",
            run_dir.display(),
            dest.display(),
            eval["psnr"].as_f64().unwrap_or(f64::NAN),
            eval["ssim"].as_f64().unwrap_or(f64::NAN)
        );
    }
    Ok(())
}
