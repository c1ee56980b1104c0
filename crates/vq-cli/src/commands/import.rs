//! `vq-cli import ROOT -o DIR`: an image folder (one sub-folder per class, optionally under
//! `train/` and `test/`) into the dataset folder `vq-train --data` and `vq-cli eval --data`
//! read ([`vq_data::folder`]), so that a user of an installed `vq-cli` needs no checkout.

use std::fmt;
use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use vq_data::folder::{import_image_folder, ImportOptions, ImportReport};

use crate::session::Session;

/// `vq-cli import`'s inputs and options.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// The image folder: ROOT/CLASS/*.png, or ROOT/train/CLASS/… and ROOT/test/CLASS/…
    /// (PNG, JPEG, GIF, BMP, TIFF, WebP).
    pub root: PathBuf,
    /// The dataset folder to create (it must not exist or be empty), e.g. datasets/NAME.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Side of the square images (each image resized and centre-cropped).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Share of the images held out as the test split when ROOT has no test/ folder.
    #[arg(long, default_value_t = 0.1)]
    pub test_fraction: f64,
    /// Seed of that hold-out.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// What an import made.
#[derive(Debug, Serialize)]
pub struct ImportSummary {
    pub output: PathBuf,
    #[serde(flatten)]
    pub report: ImportReport,
}

impl fmt::Display for ImportSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.report;
        let images = r.train + r.test + r.skipped.len();
        writeln!(
            f,
            "{}: {} train + {} test images of {s}×{s}, {} classes ({}){}, {} skipped; {:.1} s = {:.0} images/s",
            self.output.display(),
            r.train,
            r.test,
            r.classes.len(),
            r.classes.iter().take(8).cloned().collect::<Vec<_>>().join(", "),
            if r.held_out_test { ", the test split held out of the images" } else { "" },
            r.skipped.len(),
            r.seconds,
            images as f64 / r.seconds.max(1e-9),
            s = r.side,
        )?;
        for skipped in &r.skipped {
            writeln!(f, "skipped {}: {}", skipped.path.display(), skipped.reason)?;
        }
        Ok(())
    }
}

/// `vq-cli import`: the folder imported, with a progress bar.
pub fn run(session: &Session, args: &ImportArgs) -> Result<ImportSummary> {
    let bar: OnceLock<ProgressBar> = OnceLock::new();
    let show = !(session.quiet || session.json);
    let options = ImportOptions {
        side: args.size,
        test_fraction: args.test_fraction,
        seed: args.seed,
    };
    let report = import_image_folder(&args.root, &args.output, &options, &|event| match event {
        Some(total) if show => {
            let _ = bar.set(
                ProgressBar::new(total).with_style(
                    ProgressStyle::with_template(
                        "{bar:30} {pos}/{len} images [{elapsed} < {eta}] {per_sec}",
                    )
                    .expect("a valid template"),
                ),
            );
        }
        Some(_) => {}
        None => {
            if let Some(b) = bar.get() {
                b.inc(1);
            }
        }
    })
    .with_context(|| format!("importing {}", args.root.display()))?;
    if let Some(b) = bar.get() {
        b.finish_and_clear();
    }
    Ok(ImportSummary {
        output: args.output.clone(),
        report,
    })
}
