//! How runs are shown to the person watching them: the panels of `curves.png`, the progress
//! bar's message and the final summary's text. Apart from [`crate::Task`], which trains: a task
//! names its [`RunKind`] and this module does the rest.

use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Map, Value};

use crate::task::{Curve, Panel};

/// What a run trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    VqVae,
    Prior,
    Decoder,
}

impl RunKind {
    /// The panels of `curves.png`.
    pub fn panels(self) -> Vec<Panel> {
        let panel = |title, log_y, curves| Panel {
            title,
            log_y,
            curves,
        };
        let psnr = || {
            panel(
                "PSNR (dB)",
                false,
                vec![Curve::train("train", "psnr"), Curve::eval("test", "psnr")],
            )
        };
        let loss = |title| panel(title, true, vec![Curve::train("loss", "loss")]);
        match self {
            RunKind::VqVae => vec![
                loss("training loss"),
                psnr(),
                panel(
                    "perplexity",
                    false,
                    vec![
                        Curve::train("train batch", "perplexity"),
                        Curve::eval("test", "perplexity"),
                    ],
                ),
            ],
            RunKind::Decoder => vec![
                loss("decoder loss"),
                psnr(),
                panel(
                    "adversarial",
                    false,
                    vec![
                        Curve::train("discriminator hinge", "disc_loss"),
                        Curve::train("decoder −D(fake)", "adversarial"),
                    ],
                ),
            ],
            RunKind::Prior => vec![
                panel(
                    "NLL (bits per code)",
                    false,
                    vec![
                        Curve::train("train", "bits_per_code"),
                        Curve::eval("test", "bits_per_code"),
                    ],
                ),
                panel(
                    "test bits/dim",
                    false,
                    vec![Curve::eval("test", "bits_per_dim")],
                ),
            ],
        }
    }

    /// The progress bar's message for a log line of `metrics.jsonl`.
    pub fn progress_message(self, line: &Map<String, Value>) -> String {
        let get = |k: &str| line.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
        match self {
            RunKind::VqVae => format!(
                "loss {:.4} psnr {:.2} dB ppl {:.0}",
                get("loss"),
                get("psnr"),
                get("perplexity")
            ),
            RunKind::Decoder => format!(
                "loss {:.4} psnr {:.2} dB D {:.3} adv {:.3}",
                get("loss"),
                get("psnr"),
                get("disc_loss"),
                get("adversarial")
            ),
            RunKind::Prior => format!("{:.3} bits/code", get("bits_per_code")),
        }
    }
}

/// Whether progress bars are hidden (`vq-train -q` or `--json`).
static QUIET: AtomicBool = AtomicBool::new(false);

/// Hides every progress bar made after this (`true`), for quiet or machine-read output.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// The progress bar of a run of `steps` steps, `done` of them already done (hidden when quiet).
pub fn progress_bar(steps: usize, done: usize) -> indicatif::ProgressBar {
    if QUIET.load(Ordering::Relaxed) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(steps as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template"),
    );
    bar.set_position(done as u64);
    bar
}
