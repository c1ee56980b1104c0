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

/// The numbers of a log line or an evaluation as TensorBoard scalars `GROUP/KEY` (nested
/// objects as `GROUP/KEY/SUBKEY`; the step itself and lists left out).
pub fn scalars(group: &str, value: &Value) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    if let Value::Object(fields) = value {
        for (key, v) in fields {
            match v {
                Value::Number(n) if key != "step" => {
                    if let Some(x) = n.as_f64() {
                        out.push((format!("{group}/{key}"), x));
                    }
                }
                Value::Object(_) => out.extend(scalars(&format!("{group}/{key}"), v)),
                _ => {}
            }
        }
    }
    out
}

/// The pictures an evaluation at `step` wrote into the run folder (`NAME-step-NNNNNN.png`), as
/// `(NAME, width, height, PNG bytes)`.
pub fn pictures_of_step(run: &vq_store::RunDir, step: usize) -> Vec<(String, u32, u32, Vec<u8>)> {
    let suffix = format!("-step-{step:06}.png");
    let Ok(entries) = std::fs::read_dir(run.path()) else {
        return Vec::new();
    };
    let mut out: Vec<(String, u32, u32, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let tag = name.strip_suffix(&suffix)?.to_string();
            let (width, height) = image::image_dimensions(e.path()).ok()?;
            Some((tag, width, height, std::fs::read(e.path()).ok()?))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
