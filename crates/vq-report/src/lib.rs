//! What vqvae-rs's commands report, as types: each report is one struct, shown as text (its
//! `Display`) or as one JSON object (`--json`, its `Serialize`), and read back (`Deserialize`)
//! by the programs that run the commands (xtask, the benchmarks), so that renaming a field
//! breaks their build, not their run. No LibTorch: the build tools depend on this crate.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use vq_data::Split;

/// A command's result, printable both ways.
pub trait Report: Serialize + fmt::Display {}

impl<T: Serialize + fmt::Display> Report for T {}

/// Prints `report` as text or as one line of JSON.
pub fn print(report: &impl Report, json: bool) {
    if json {
        match serde_json::to_string(report) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("error: cannot print the report as JSON: {e}"),
        }
    } else {
        println!("{report}");
    }
}

/// Prints an error: `error: …` on standard error, or with `--json` one JSON object
/// `{"error": "…"}` on standard output, where the reports go, so that a program reading them
/// reads the failures too.
pub fn print_error(message: &str, json: bool) {
    if json {
        println!("{}", serde_json::json!({ "error": message }));
    } else {
        eprintln!("error: {message}");
    }
}

/// How much a command prints, and how: `--json`, `-q`, `-v`, the same in every binary and
/// accepted on either side of a subcommand.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct OutputArgs {
    /// Print each result as one JSON object on standard output (an error as
    /// `{"error": "..."}`) [default: text]
    #[arg(long, global = true)]
    pub json: bool,
    /// Only errors: no progress bars, no log lines
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// More logging: -v debug, -vv trace [default: info]
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl OutputArgs {
    /// The `tracing` level these flags ask for (`RUST_LOG` overrides it).
    pub fn log_level(&self) -> &'static str {
        match (self.quiet, self.verbose) {
            (true, _) => "warn",
            (false, 0) => "info",
            (false, 1) => "debug",
            (false, _) => "trace",
        }
    }

    /// Sends `tracing`'s log lines to standard error at [`Self::log_level`] (or `RUST_LOG`'s).
    pub fn init_logging(&self) {
        init_logging(self.log_level());
    }
}

/// Sends `tracing`'s log lines to standard error at `level`, unless `RUST_LOG` says otherwise.
pub fn init_logging(level: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Rows of `label  value`, labels padded to one width: how reports show themselves as tables.
pub fn table(f: &mut fmt::Formatter<'_>, rows: &[(&str, String)]) -> fmt::Result {
    let width = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0)
        + 3;
    for (i, (label, value)) in rows.iter().enumerate() {
        if i > 0 {
            writeln!(f)?;
        }
        write!(f, "{label:<width$}{value}")?;
    }
    Ok(())
}

/// Kernel inception distance: the mean and standard deviation over random subsets.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Kid {
    pub mean: f64,
    pub std: f64,
    pub subsets: usize,
    pub subset_size: usize,
}

/// One side of an FID measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FidSide {
    pub source: String,
    pub images: i64,
}

/// FID and KID of the first `images` of a set of samples against the same other side (the
/// figures of a shorter run, from a longer one).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FirstSamples {
    pub images: i64,
    pub fid: f64,
    pub kid: Kid,
}

/// FID and KID of two sets (`vq-cli fid`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FidReport {
    pub fid: f64,
    pub kid: Kid,
    /// The same of the first samples (`--report-at`), when A is samples.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub first: Vec<FirstSamples>,
    pub a: FidSide,
    pub b: FidSide,
    /// Seconds of the whole measurement.
    pub seconds: f64,
    /// Images put through the network per second (cached sides and resumed parts cost nothing).
    pub images_per_second: f64,
}

impl fmt::Display for FidReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kid = |k: &Kid| {
            format!(
                "{:.5} ± {:.5} ({} subsets of {})",
                k.mean, k.std, k.subsets, k.subset_size
            )
        };
        let mut rows = vec![
            ("FID".to_string(), format!("{:.3}", self.fid)),
            ("KID".to_string(), kid(&self.kid)),
        ];
        for first in &self.first {
            let of = format!("first {}", first.images);
            rows.push((format!("FID, {of}"), format!("{:.3}", first.fid)));
            rows.push((format!("KID, {of}"), kid(&first.kid)));
        }
        rows.push((
            "A".into(),
            format!("{} ({} images)", self.a.source, self.a.images),
        ));
        rows.push((
            "B".into(),
            format!("{} ({} images)", self.b.source, self.b.images),
        ));
        rows.push((
            "time".into(),
            format!(
                "{:.1} s ({:.1} images/s through the network)",
                self.seconds, self.images_per_second
            ),
        ));
        let rows: Vec<(&str, String)> = rows.iter().map(|(l, v)| (l.as_str(), v.clone())).collect();
        table(f, &rows)
    }
}

/// Perplexity and distinct codes used of one level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelUsage {
    pub perplexity: f64,
    pub codes_used: i64,
}

/// How hard a decoder-aware code search looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeSearch {
    /// Codes tried at each position: the quantizer's own choice and its next `candidates − 1`
    /// by the quantizer's ranking (1: no search).
    pub candidates: i64,
    /// Passes over every position and level.
    pub sweeps: usize,
}

impl Default for CodeSearch {
    /// The setting measured in docs/experiments.md: 4 candidates, 2 sweeps.
    fn default() -> Self {
        CodeSearch {
            candidates: 4,
            sweeps: 2,
        }
    }
}

/// Reconstruction figures of a VQ-VAE over a split (what training evaluates and `vq-cli eval`
/// reports).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub step: usize,
    pub images: i64,
    pub mse: f64,
    /// Mean over images of the per-image PSNR of all three channels, on `[0, 1]` pixels.
    pub psnr: f64,
    pub ssim: f64,
    /// Mean over images of the per-image PSNR of the luma alone (BT.601 Y: pyiqa's `psnr`
    /// with `test_y_channel=True`, the figure recent papers' tables give). 0 in evaluations
    /// recorded before it existed.
    #[serde(default)]
    pub psnr_y: f64,
    /// `exp(entropy)` of the (first level's) code usage over all evaluated images.
    pub perplexity: f64,
    pub codes_used: i64,
    pub codebook_size: i64,
    /// Perplexity and codes used of each level (one for a single codebook).
    #[serde(default)]
    pub levels: Vec<LevelUsage>,
    /// Training seconds when it was taken.
    pub elapsed_s: f64,
}

impl fmt::Display for Evaluation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "test PSNR {:.2} dB, SSIM {:.4}, perplexity {:.1}, {} / {} codes used ({} images)",
            self.psnr, self.ssim, self.perplexity, self.codes_used, self.codebook_size, self.images
        )
    }
}

/// Test-split likelihood of a code prior.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriorEvaluation {
    pub step: usize,
    pub grids: i64,
    /// Mean negative log-likelihood of one code, in bits.
    pub bits_per_code: f64,
    /// Bits of a whole image's code grid divided by its sub-pixels.
    pub bits_per_dim: f64,
    /// Bits per code of the test codes under their training-split frequencies alone (a
    /// unigram model): what the prior gains over code frequencies is the difference.
    #[serde(default)]
    pub unigram_bits_per_code: f64,
    pub elapsed_s: f64,
}

impl fmt::Display for PriorEvaluation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "test NLL {:.4} bits/code (code frequencies alone: {:.4}), {:.4} bits/dim ({} grids)",
            self.bits_per_code, self.unigram_bits_per_code, self.bits_per_dim, self.grids
        )
    }
}

/// What a finished training run reports (`summary.json`, `vq-train --json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary<E> {
    pub run_dir: PathBuf,
    pub steps: usize,
    /// What a training item is ("images", "grids"); absent in summaries written before it.
    #[serde(default)]
    pub items: String,
    pub final_eval: E,
    /// The best evaluation's score and step.
    pub best_score: f64,
    pub best_step: usize,
    pub train_seconds: f64,
    /// Training items (images, code grids) per second over all steps.
    pub items_per_second: f64,
    /// FID and KID, when the config asks for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<serde_json::Value>,
}

impl<E: fmt::Display> fmt::Display for RunSummary<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} steps in {:.0} s ({:.0} {}/s); {}; best at step {}",
            self.run_dir.display(),
            self.steps,
            self.train_seconds,
            self.items_per_second,
            self.items,
            self.final_eval,
            self.best_step
        )
    }
}

/// Reconstruction figures over a dataset split (`vq-cli eval`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub checkpoint: String,
    pub model_id: String,
    pub split: Split,
    /// MSE, PSNR (RGB and luma), SSIM, perplexity and codes used, overall and per level.
    #[serde(flatten)]
    pub evaluation: Evaluation,
    /// The code search the codes were chosen by (`--search`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<CodeSearch>,
    /// FID of the reconstructions against the split (`--fid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rfid: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rkid: Option<Kid>,
    pub seconds: f64,
}

impl fmt::Display for EvalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.evaluation;
        let split = match self.split {
            Split::Train => "train",
            Split::Test => "test",
        };
        let mut rows = vec![
            ("checkpoint", self.checkpoint.clone()),
            ("images", format!("{} ({split} split)", e.images)),
            ("MSE", format!("{:.6}", e.mse)),
            ("PSNR", format!("{:.2} dB (RGB, mean over images)", e.psnr)),
            (
                "PSNR of the luma",
                format!(
                    "{:.2} dB (BT.601 Y, mean over images: pyiqa's test_y_channel)",
                    e.psnr_y
                ),
            ),
            ("SSIM", format!("{:.4}", e.ssim)),
            ("perplexity", format!("{:.1}", e.perplexity)),
            (
                "codes used",
                format!("{} of {}", e.codes_used, e.codebook_size),
            ),
        ];
        if e.levels.len() > 1 {
            for (l, level) in e.levels.iter().enumerate() {
                rows.push((
                    "level",
                    format!(
                        "{}: perplexity {:.1}, {} of {} codes used",
                        l + 1,
                        level.perplexity,
                        level.codes_used,
                        e.codebook_size
                    ),
                ));
            }
        }
        if let Some(search) = self.search {
            rows.push((
                "codes",
                format!(
                    "searched: {} candidates a position, {} sweeps",
                    search.candidates, search.sweeps
                ),
            ));
        }
        if let (Some(fid), Some(kid)) = (self.rfid, self.rkid) {
            rows.push((
                "rFID",
                format!(
                    "{fid:.3} (KID {:.5} ± {:.5}), against the whole split",
                    kid.mean, kid.std
                ),
            ));
        }
        rows.push((
            "time",
            format!(
                "{:.1} s ({:.0} images/s)",
                self.seconds,
                e.images as f64 / self.seconds.max(1e-9)
            ),
        ));
        table(f, &rows)
    }
}

/// What `--help` must say of every flag of `command` and its subcommands: the default of each
/// option that takes a value (clap's own `[default: …]` or one written in the help text), and
/// enum values in kebab-case like the flags. Returns the flags that do not, for the binaries'
/// tests.
pub fn help_gaps(command: &clap::Command) -> Vec<String> {
    fn walk(command: &clap::Command, path: &str, gaps: &mut Vec<String>) {
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help"
                || id == "version"
                || !arg.get_action().takes_values()
                || arg.is_required_set()
            {
                continue;
            }
            let help = arg
                .get_long_help()
                .or(arg.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default();
            let name = format!("{path} --{}", arg.get_long().unwrap_or(id));
            if arg.get_default_values().is_empty() && !help.contains("[default:") {
                gaps.push(format!("{name}: no default in its help"));
            }
            for value in arg.get_possible_values() {
                let v = value.get_name();
                if v.contains('_') || v.chars().any(|c| c.is_ascii_uppercase()) {
                    gaps.push(format!("{name}: value {v} is not kebab-case"));
                }
            }
        }
        for sub in command.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), gaps);
        }
    }
    let mut gaps = Vec::new();
    walk(command, command.get_name(), &mut gaps);
    gaps
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report read back from its JSON is the report (what xtask and the benchmarks rely on),
    /// and summaries written before `items` existed still read.
    #[test]
    fn reports_read_back_from_their_json() {
        let fid = FidReport {
            fid: 12.5,
            kid: Kid {
                mean: 0.01,
                std: 0.001,
                subsets: 10,
                subset_size: 100,
            },
            first: vec![FirstSamples {
                images: 2,
                fid: 20.0,
                kid: Kid {
                    mean: 0.02,
                    std: 0.002,
                    subsets: 10,
                    subset_size: 2,
                },
            }],
            a: FidSide {
                source: "a".into(),
                images: 3,
            },
            b: FidSide {
                source: "b".into(),
                images: 4,
            },
            seconds: 1.0,
            images_per_second: 7.0,
        };
        let back: FidReport = serde_json::from_str(&serde_json::to_string(&fid).unwrap()).unwrap();
        assert_eq!(back, fid);
        let shown = fid.to_string();
        assert!(shown.contains("FID, first 2   20.000"), "{shown}");
        // Reports without first samples (and those written before them) leave them out.
        let plain = FidReport {
            first: Vec::new(),
            ..fid.clone()
        };
        let json = serde_json::to_string(&plain).unwrap();
        assert!(!json.contains("first"), "{json}");
        assert_eq!(serde_json::from_str::<FidReport>(&json).unwrap(), plain);
        let old = r#"{"run_dir": "r", "steps": 3, "final_eval": {"step": 3, "grids": 2,
            "bits_per_code": 6.5, "bits_per_dim": 0.1, "elapsed_s": 1.0}, "best_score": -6.5,
            "best_step": 3, "train_seconds": 1.0, "items_per_second": 2.0}"#;
        let summary: RunSummary<PriorEvaluation> = serde_json::from_str(old).unwrap();
        assert_eq!((summary.steps, summary.final_eval.bits_per_code), (3, 6.5));
        assert!(summary.to_string().contains("test NLL 6.5000"));
    }

    #[test]
    fn help_gaps_names_a_flag_without_its_default_and_a_snake_case_value() {
        let command = clap::Command::new("x")
            .arg(clap::Arg::new("size").long("size"))
            .arg(clap::Arg::new("n").long("n").default_value("3"))
            .arg(
                clap::Arg::new("kind")
                    .long("kind")
                    .help("[default: a]")
                    .value_parser(["a", "b_c"]),
            );
        assert_eq!(
            help_gaps(&command),
            [
                "x --size: no default in its help",
                "x --kind: value b_c is not kebab-case"
            ]
        );
    }
}
