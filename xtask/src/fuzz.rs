//! `cargo xtask fuzz`: runs each libFuzzer target (fuzz/fuzz_targets) for a bounded time with
//! cargo-fuzz on the nightly toolchain. The seed corpora in fuzz/corpus/ stay as they are: what
//! libFuzzer learns goes into a temporary folder, so the repository keeps only the small seeds.
//! A crash stops the command with the input saved under fuzz/artifacts/.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

pub const TARGETS: [&str; 5] = ["cifar_records", "archive", "vqz", "npy", "tfevents"];

pub fn run(root: &Path, targets: &[String], seconds: u64) -> Result<()> {
    let version = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .current_dir(root)
        .stderr(Stdio::null())
        .output();
    if !version.is_ok_and(|o| o.status.success()) {
        bail!(
            "cargo-fuzz on a nightly toolchain is needed: `rustup toolchain install nightly` \
             and `cargo install cargo-fuzz`"
        );
    }
    let chosen: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!("unknown fuzz target {t:?} (one of {})", TARGETS.join(", "));
            }
        }
        targets.iter().map(String::as_str).collect()
    };
    let mut results = Vec::new();
    for target in chosen {
        let scratch = tempfile::tempdir()?;
        let seeds = root.join("fuzz/corpus").join(target);
        tracing::info!("fuzzing {target} for {seconds} s");
        let out = Command::new("cargo")
            .args(["+nightly", "fuzz", "run", target])
            .arg(scratch.path())
            .arg(&seeds)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-rss_limit_mb=2048",
                "-max_len=65536",
            ])
            .current_dir(root)
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("running cargo fuzz for {target}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            eprintln!("{log}");
            bail!(
                "fuzz target {target} failed: see the crash input under fuzz/artifacts/{target}/"
            );
        }
        // libFuzzer's last line: "Done 123456 runs in 60 second(s)".
        let runs = log
            .lines()
            .rev()
            .find_map(|l| {
                l.strip_prefix("Done ")?
                    .split(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0);
        let corpus = std::fs::read_dir(scratch.path())?.count();
        println!(
            "{target:>14}: {runs} runs in {seconds} s ({:.0}/s), no crash; {corpus} new corpus inputs",
            runs as f64 / seconds.max(1) as f64
        );
        results.push(serde_json::json!({
            "target": target, "runs": runs, "seconds": seconds, "crashes": 0,
        }));
    }
    println!("{}", serde_json::json!({ "fuzz": results }));
    Ok(())
}
