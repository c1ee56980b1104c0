//! `vq-cli export --pytorch DIR`: the model (and the bundled sharp decoder, and the prior) as
//! safetensors under their documented names, their configs, and a self-contained Python module
//! (torch only) that defines the same networks.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use tch::nn;

use crate::session::Session;

/// The Python module: `load(DIR)` gives the model in PyTorch.
pub const PYTHON_MODULE: &str = include_str!("../../python/vqvae_rs.py");
/// Its file name in the export.
pub const PYTHON_FILE: &str = "vqvae_rs.py";

/// `vq-cli export`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// Write the model (`model/`), the bundled sharp decoder when the model is the bundled one
    /// (`sharp/`), the prior (`prior/`), each as config.json + model.safetensors, and
    /// vqvae_rs.py, a module that loads them in PyTorch (torch only), into this folder
    #[arg(long, value_name = "DIR")]
    pub pytorch: PathBuf,
    /// The prior to export beside the model [default: the bundled prior, for the bundled
    /// model]
    #[arg(long)]
    pub prior: Option<PathBuf>,
    /// Leave the prior out [default: export it]
    #[arg(long, conflicts_with = "prior")]
    pub no_prior: bool,
}

/// What `export` wrote.
#[derive(Debug, Serialize)]
pub struct ExportReport {
    pub output: PathBuf,
    /// The folders written, each a config.json and a model.safetensors.
    pub parts: Vec<String>,
    pub module: PathBuf,
}

impl fmt::Display for ExportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} and {} (in Python: import vqvae_rs; model = vqvae_rs.load({:?}))",
            self.output.display(),
            self.parts.join(", "),
            self.module.display(),
            self.output.display().to_string()
        )
    }
}

/// Writes `vs`'s variables and `config` (as JSON) into `dir`; returns the tensor names and
/// shapes, for the README.
fn write_part(dir: &Path, vs: &nn::VarStore, config: &impl Serialize) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    vq_store::weights::save(vs, &dir.join("model.safetensors"))?;
    let mut json = serde_json::to_value(config)?;
    if let serde_json::Value::Object(fields) = &mut json {
        fields.insert("format".into(), 2.into());
    }
    let text = serde_json::to_string_pretty(&json)?;
    vq_data::write_atomic(&dir.join("config.json"), |w| w.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", dir.join("config.json").display()))?;
    let mut names: Vec<String> = vs
        .variables()
        .into_iter()
        .map(|(name, t)| format!("`{name}` {:?}", t.size()))
        .collect();
    names.sort();
    Ok(names)
}

/// `vq-cli export --pytorch DIR`.
pub fn run(session: &Session, args: &ExportArgs) -> Result<ExportReport> {
    let out = &args.pytorch;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let tokenizer = session.tokenizer()?;
    let ckpt = tokenizer.checkpoint();
    let mut parts = Vec::new();
    let mut readme = format!(
        "# vqvae-rs model for PyTorch\n\nWritten by `vq-cli export --pytorch` ({}). Load it with the \
         module beside this file (it needs torch only):\n\n```python\nimport vqvae_rs\nmodel = \
         vqvae_rs.load(\"{}\")\ncodes = model.encode(images)  # (N, 3, H, W) uint8 -> (N, L, h, w) int64\n\
         pixels = model.decode(codes)  # -> (N, 3, H, W) floats, [0, 1] unclamped\n```\n\nEach folder holds \
         `config.json` (the networks' shapes, vqvae-rs config format 2) and `model.safetensors`, \
         whose tensors are named as below (PyTorch layouts: convolutions `(out, in, kh, kw)`, \
         transposed convolutions `(in, out, kh, kw)`, codebooks `(K, D)`; `ema_*` and \
         `last_used` are training statistics).\n",
        ckpt.origin(),
        out.display()
    );
    let mut section = |title: &str, names: Vec<String>| {
        readme += &format!("\n## {title}\n\n");
        for n in names {
            readme += &format!("- {n}\n");
        }
    };
    section(
        &format!("model/: {}", ckpt.origin()),
        write_part(&out.join("model"), &ckpt.vs, &ckpt.config)?,
    );
    parts.push("model/".to_string());
    if ckpt.bundled {
        let sharp = vq_model::Checkpoint::bundled_tuned_decoder(tch::Device::Cpu)
            .context("opening the bundled sharp decoder")?;
        section(
            &format!("sharp/: {} (load(DIR, decoder=\"sharp\"))", sharp.origin()),
            write_part(&out.join("sharp"), &sharp.vs, &sharp.config)?,
        );
        parts.push("sharp/".to_string());
    }
    if !args.no_prior && (args.prior.is_some() || ckpt.bundled) {
        let prior =
            crate::prior::open_prior_on(args.prior.as_deref(), &tokenizer, tch::Device::Cpu)?;
        let prior = prior.checkpoint();
        let runs = match prior.config.arch {
            vq_prior::PriorArch::Transformer(_) => {
                "`prior = vqvae_rs.load_prior(DIR)`: `prior.logits(codes, labels)`, `prior.sample(n, labels, guidance=...)`"
            }
            vq_prior::PriorArch::PixelCnn(_) => {
                "weights only: the module runs the transformer prior, not this PixelCNN"
            }
        };
        section(
            &format!("prior/: {} ({runs})", prior.origin()),
            write_part(&out.join("prior"), &prior.vs, &prior.config)?,
        );
        parts.push("prior/".to_string());
    }
    // Parts an earlier export left that this one did not write would load as this model's.
    for stale in ["sharp", "prior"] {
        let dir = out.join(stale);
        if !parts.contains(&format!("{stale}/")) && dir.join("model.safetensors").is_file() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("removing the earlier export's {}", dir.display()))?;
        }
    }
    let module = out.join(PYTHON_FILE);
    vq_data::write_atomic(&module, |w| w.write_all(PYTHON_MODULE.as_bytes()))
        .with_context(|| format!("writing {}", module.display()))?;
    vq_data::write_atomic(&out.join("README.md"), |w| w.write_all(readme.as_bytes()))
        .with_context(|| format!("writing {}", out.join("README.md").display()))?;
    Ok(ExportReport {
        output: out.clone(),
        parts,
        module,
    })
}
