//! What every command shares: the device, the model, how much to print.

use std::path::PathBuf;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use tch::Device;
use vqvae::Tokenizer;

use crate::report;

/// What every command shares: the device, the model, how much to print.
#[derive(Debug, Clone)]
pub struct Session {
    pub device: Device,
    /// A checkpoint or run folder; `None`: the bundled model.
    pub checkpoint: Option<PathBuf>,
    /// Only errors.
    pub quiet: bool,
    /// Reports as JSON.
    pub json: bool,
}

impl Session {
    /// The VQ-VAE the commands use, through the library's [`vqvae::Tokenizer`] as any other
    /// program would open it.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        let context = match &self.checkpoint {
            Some(_) => "opening the checkpoint",
            None => "opening the bundled model (pass --checkpoint RUN_DIR to use your own)",
        };
        Tokenizer::open_or_bundled(self.checkpoint.as_deref(), self.device).context(context)
    }

    pub(crate) fn print(&self, bar: &ProgressBar, report: &impl report::Report) {
        if !self.quiet {
            bar.suspend(|| report::print(report, self.json));
        }
    }

    /// A progress bar over `total` images (hidden when quiet or printing JSON).
    pub fn bar(&self, total: u64, what: &str) -> ProgressBar {
        if self.quiet || self.json {
            return ProgressBar::hidden();
        }
        ProgressBar::new(total).with_style(
            ProgressStyle::with_template(&format!(
                "{{bar:30}} {{pos}}/{{len}} {what} [{{elapsed}} < {{eta}}]"
            ))
            .expect("valid template"),
        )
    }
}
