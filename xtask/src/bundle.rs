//! `cargo xtask bundle-model RUN_DIR` / `bundle-prior RUN_DIR` / `bundle-sharp RUN_DIR`: copies a
//! finished run's final checkpoint (weights, config, state), its full-test-split figures and its
//! pictures into models/cifar10-default/ (the VQ-VAE `vq-cli` uses when no --checkpoint is
//! given), models/cifar10-prior/ (the prior `vq-cli sample` uses) or models/cifar10-sharp/ (the
//! bundled model with its decoder tuned by `vq-train decoder`). The optimizer state stays
//! behind. The binaries build these folders in, so rebuild them after bundling.

use std::path::Path;

use anyhow::{bail, Context, Result};
use vq_store::names::{
    CONFIG_FILE, CURVES_FILE, DATA_FILE, EVAL_FILE, LEGACY_DATA_FILE, METRICS_FILE, MODEL_FILE,
    STATE_FILE, SUMMARY_FILE,
};
use vq_store::RunDir;

pub const MODEL_DIR: &str = "models/cifar10-default";
pub const PRIOR_DIR: &str = "models/cifar10-prior";
pub const SHARP_DIR: &str = "models/cifar10-sharp";

/// What a run is bundled as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bundle {
    Model,
    Prior,
    /// A `vq-train decoder` run for the bundled model's codes.
    Sharp,
}

/// Bundles the run `run_dir` into its models folder.
pub fn run(root: &Path, run_dir: &Path, kind: Bundle) -> Result<()> {
    let prior = kind == Bundle::Prior;
    let bundle_dir = match kind {
        Bundle::Model => MODEL_DIR,
        Bundle::Prior => PRIOR_DIR,
        Bundle::Sharp => SHARP_DIR,
    };
    let run = RunDir::new(run_dir);
    // Either kind of final evaluation: both record their step.
    let summary: vq_report::RunSummary<serde_json::Value> =
        vq_store::read_json(&run.summary(), "a run summary").context("is the run finished?")?;
    let eval = &summary.final_eval;
    let step = eval["step"].as_u64().context("final_eval has no step")?;
    let checkpoint = run.checkpoints().join(format!("step-{step:06}"));
    if !checkpoint.join(MODEL_FILE).is_file() {
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
    let copy = |from: &Path, name: &str| -> Result<()> {
        std::fs::copy(from, staging.join(name))
            .with_context(|| format!("copying {}", from.display()))?;
        Ok(())
    };
    for name in [MODEL_FILE, CONFIG_FILE, STATE_FILE] {
        copy(&checkpoint.join(name), name)?;
    }
    if kind == Bundle::Sharp {
        // It must decode the bundled model's codes, or it is not the bundled model's sharp twin.
        let config: serde_json::Value =
            vq_store::read_json(&checkpoint.join(CONFIG_FILE), "a VQ-VAE config")?;
        let bundled = vq_store::model_id(&std::fs::read(root.join(MODEL_DIR).join(MODEL_FILE))?);
        if config["codes_of"].as_str() != Some(vq_store::hex(&bundled).as_str()) {
            bail!(
                "{}: decodes the codes of {}, not of the bundled model {}",
                checkpoint.display(),
                config["codes_of"],
                vq_store::hex(&bundled)
            );
        }
        let compare = run_dir.join("compare.png");
        if compare.is_file() {
            copy(&compare, "compare.png")?;
        }
    }
    vq_store::write_json(&staging.join(EVAL_FILE), eval)?;
    copy(&run.config(), "train-config.json")?;
    copy(&run.summary(), SUMMARY_FILE)?;
    let picture = run.picture("recon", step as usize);
    if picture.is_file() {
        copy(&picture, "recon.png")?;
    }
    let optional = [
        (run.curves(), CURVES_FILE),
        (run.data(), DATA_FILE),
        (run_dir.join(LEGACY_DATA_FILE), DATA_FILE),
        (run.metrics(), METRICS_FILE),
    ];
    for (from, name) in optional {
        if from.is_file() {
            copy(&from, name)?;
        }
    }
    if dest.exists() {
        std::fs::remove_dir_all(&dest)?;
    }
    std::fs::rename(&staging, &dest)?;
    let figures = if prior {
        serde_json::from_value::<vq_report::PriorEvaluation>(eval.clone())
            .context("the prior run's final evaluation")?
            .to_string()
    } else {
        serde_json::from_value::<vq_report::Evaluation>(eval.clone())
            .context("the run's final evaluation")?
            .to_string()
    };
    tracing::info!(
        "bundled step {step} of {} into {} ({figures})",
        run_dir.display(),
        dest.display()
    );
    Ok(())
}

/// The bundled prior's default sampling settings (measure them first with `vq-cli fid
/// --samples`); each one given replaces the recorded one, the others stay.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SamplingDefaults {
    /// The classifier-free guidance its samples are drawn with by default.
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Guide only the first N codes of a grid (the others drawn unguided, faster).
    #[arg(long, value_name = "N")]
    pub guided_codes: Option<i64>,
    /// The default sampling temperature.
    #[arg(long)]
    pub temperature: Option<f64>,
}

/// Records the bundled prior's default sampling settings in its `config.json` (`"sampling"`),
/// which `vq-cli sample` and `vq-cli fid --samples` use when no flag is given. The weights, and
/// so the prior's id, are untouched.
pub fn set_sampling(root: &Path, defaults: &SamplingDefaults) -> Result<()> {
    let given: Vec<(&str, serde_json::Value)> = [
        ("guidance", defaults.guidance.map(Into::into)),
        ("guided_codes", defaults.guided_codes.map(Into::into)),
        ("temperature", defaults.temperature.map(Into::into)),
    ]
    .into_iter()
    .filter_map(|(name, value)| Some((name, value?)))
    .collect();
    if given.is_empty() {
        return Ok(());
    }
    // The checks of vq-prior's `SampleOptions::validate` (xtask builds before LibTorch exists,
    // so it cannot link vq-prior); `vq-cli` checks them again when it reads them.
    if defaults
        .guidance
        .is_some_and(|g| !(g.is_finite() && g >= 0.0))
        || defaults.guided_codes.is_some_and(|n| n < 0)
        || defaults
            .temperature
            .is_some_and(|t| !(t.is_finite() && t > 0.0))
    {
        anyhow::bail!("guidance must be 0 or more, guided codes 0 or more, temperature positive");
    }
    let path = root.join(PRIOR_DIR).join(CONFIG_FILE);
    let mut config: serde_json::Value = vq_store::read_json(&path, "a prior config")?;
    let object = config
        .as_object_mut()
        .with_context(|| format!("{}: not a JSON object", path.display()))?;
    let sampling = object
        .entry("sampling")
        .or_insert_with(|| serde_json::Map::new().into());
    let sampling = sampling
        .as_object_mut()
        .with_context(|| format!("{}: \"sampling\" is not a JSON object", path.display()))?;
    for (name, value) in given {
        sampling.insert(name.into(), value);
    }
    vq_store::write_json(&path, &config)?;
    tracing::info!("{}: sampling {}", path.display(), config["sampling"]);
    Ok(())
}
