//! `cargo xtask download-cifar`: fetch, check and unpack CIFAR-10 so that nothing half-done is
//! ever left where the training code looks.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use md5::{Digest, Md5};
use vq_data::{Cifar10, DIR_NAME};

pub const OFFICIAL_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
pub const OFFICIAL_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
const ARCHIVE_NAME: &str = "cifar-10-binary.tar.gz";

#[derive(Debug, Clone)]
pub struct Options {
    /// `None`: the official archive. Otherwise a local file or an http(s) URL.
    pub from: Option<String>,
    /// The folder that receives `cifar-10-batches-bin/` (the workspace's `datasets/`).
    pub dest: PathBuf,
    /// Attempts per download before giving up on transient errors.
    pub retries: u32,
}

enum Source {
    Url { url: String, official: bool },
    File(PathBuf),
}

pub fn run(opts: &Options) -> Result<PathBuf> {
    let final_dir = opts.dest.join(DIR_NAME);
    if final_dir.exists() {
        match Cifar10::verify_dir(&final_dir) {
            Ok(_) => {
                tracing::info!("CIFAR-10 is already at {} and valid", final_dir.display());
                return Ok(final_dir);
            }
            Err(e) => tracing::warn!(
                "the copy at {} is not valid ({e}); fetching it again",
                final_dir.display()
            ),
        }
    }
    std::fs::create_dir_all(&opts.dest)
        .with_context(|| format!("creating {}", opts.dest.display()))?;

    let source = match &opts.from {
        None => Source::Url {
            url: OFFICIAL_URL.into(),
            official: true,
        },
        Some(s) if s.starts_with("http://") || s.starts_with("https://") => Source::Url {
            url: s.clone(),
            official: false,
        },
        Some(s) => Source::File(PathBuf::from(s)),
    };

    // The archive lands beside the dataset: `<name>.part` while it downloads (kept for resuming),
    // renamed when complete, deleted once unpacked.
    let (archive, downloaded, must_be_official) = match &source {
        Source::File(path) => {
            if !path.is_file() {
                bail!("{}: no such archive", path.display());
            }
            (path.clone(), false, false)
        }
        Source::Url { url, official } => {
            let archive = opts.dest.join(ARCHIVE_NAME);
            let part = opts.dest.join(format!("{ARCHIVE_NAME}.part"));
            fetch(url, &part, opts.retries)?;
            std::fs::rename(&part, &archive)
                .with_context(|| format!("renaming {} to {}", part.display(), archive.display()))?;
            (archive, true, *official)
        }
    };

    let result = check_and_unpack(&archive, &opts.dest, &final_dir, must_be_official);
    if downloaded {
        // A good archive is no longer needed; a bad one must not be resumed from next time.
        let _ = std::fs::remove_file(&archive);
    }
    result?;
    Ok(final_dir)
}

fn check_and_unpack(
    archive: &Path,
    dest: &Path,
    final_dir: &Path,
    must_be_official: bool,
) -> Result<()> {
    let md5 = md5_file(archive)?;
    let official = md5 == OFFICIAL_MD5;
    if official {
        tracing::info!("{}: md5 {md5} is the official archive's", archive.display());
    } else if must_be_official {
        bail!(
            "{}: md5 {md5} is not the official {OFFICIAL_MD5}: the download is corrupt or was altered",
            archive.display()
        );
    } else {
        tracing::warn!(
            "{}: md5 {md5} is not the official archive's ({OFFICIAL_MD5}); accepting it only if its files pass the structural check",
            archive.display()
        );
    }

    // Unpack into a temporary folder beside the target; it vanishes on any error.
    let staging = tempfile::Builder::new()
        .prefix(".tmp-unpack-")
        .tempdir_in(dest)
        .with_context(|| format!("creating a temporary folder in {}", dest.display()))?;
    let report = vq_data::unpack_archive(archive, staging.path())?;
    for skipped in &report.skipped {
        tracing::info!("skipped archive entry {skipped} (not part of the dataset)");
    }
    let unpacked = staging.path().join(DIR_NAME);
    let summary = Cifar10::verify_dir(&unpacked).with_context(|| {
        format!(
            "{}: the unpacked files fail the structural check",
            archive.display()
        )
    })?;

    // Swap into place. A previous invalid copy is moved aside first, then removed.
    if final_dir.exists() {
        let old = staging.path().join("previous");
        std::fs::rename(final_dir, &old)
            .with_context(|| format!("moving the old {} aside", final_dir.display()))?;
    }
    std::fs::rename(&unpacked, final_dir)
        .with_context(|| format!("moving the dataset into {}", final_dir.display()))?;
    File::open(dest).and_then(|d| d.sync_all()).ok();
    let train: usize = summary.train_per_class.iter().sum();
    let test: usize = summary.test_per_class.iter().sum();
    tracing::info!(
        "CIFAR-10 ready at {}: {train} train and {test} test images, classes {}{}",
        final_dir.display(),
        summary.class_names.join(", "),
        if official {
            ""
        } else {
            " (NOT the official archive: structurally valid, pixels unverified)"
        }
    );
    Ok(())
}

fn md5_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// What went wrong in one attempt, and whether another attempt may help.
enum Failure {
    Transient(anyhow::Error),
    Permanent(anyhow::Error),
}

/// Downloads `url` into `part`, continuing from what `part` already holds (HTTP Range), retrying
/// transient failures (connection errors, 5xx, a transfer cut short) with back-off.
fn fetch(url: &str, part: &Path, retries: u32) -> Result<()> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(60))
        .build();
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message("downloading CIFAR-10");
    let mut failures = 0;
    loop {
        let before = part.metadata().map(|m| m.len()).unwrap_or(0);
        let outcome = fetch_once(&agent, url, part, &bar);
        let after = part.metadata().map(|m| m.len()).unwrap_or(0);
        match outcome {
            Ok(()) => {
                bar.finish_and_clear();
                return Ok(());
            }
            Err(Failure::Permanent(e)) => {
                bar.abandon();
                return Err(e);
            }
            Err(Failure::Transient(e)) => {
                // Progress resets the count: a flaky but moving connection still finishes.
                failures = if after > before { 1 } else { failures + 1 };
                if failures > retries {
                    bar.abandon();
                    let resume = if after > 0 {
                        format!("; run the command again to resume from {}", part.display())
                    } else {
                        String::new()
                    };
                    return Err(e.context(format!("giving up after {retries} attempts{resume}")));
                }
                let wait = Duration::from_millis(250 * (1 << failures.min(6)));
                tracing::warn!("{e:#}; retrying in {:.1} s", wait.as_secs_f32());
                std::thread::sleep(wait);
            }
        }
    }
}

fn fetch_once(
    agent: &ureq::Agent,
    url: &str,
    part: &Path,
    bar: &ProgressBar,
) -> Result<(), Failure> {
    let have = part.metadata().map(|m| m.len()).unwrap_or(0);
    let mut request = agent.get(url);
    if have > 0 {
        request = request.set("Range", &format!("bytes={have}-"));
    }
    let response = match request.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(416, _)) if have > 0 => {
            // Our partial file does not fit the server's: start over.
            let _ = std::fs::remove_file(part);
            return Err(Failure::Transient(anyhow::anyhow!(
                "{url}: server refused to resume"
            )));
        }
        Err(ureq::Error::Status(code, r)) => {
            let e = anyhow::anyhow!("{url}: HTTP {code} {}", r.status_text());
            return Err(if code >= 500 || code == 429 || code == 408 {
                Failure::Transient(e)
            } else {
                Failure::Permanent(e)
            });
        }
        Err(e) => return Err(Failure::Transient(anyhow::anyhow!("{e}"))),
    };
    let length: Option<u64> = response
        .header("Content-Length")
        .and_then(|v| v.parse().ok());
    let (append, total) = if response.status() == 206 {
        let range = response.header("Content-Range").unwrap_or("");
        match parse_content_range(range) {
            Some((start, total)) if start == have => (true, total.or(length.map(|l| l + have))),
            _ => {
                let _ = std::fs::remove_file(part);
                return Err(Failure::Transient(anyhow::anyhow!(
                    "{url}: server resumed at the wrong offset ({range:?})"
                )));
            }
        }
    } else {
        (false, length)
    };
    let io = |e: std::io::Error| Failure::Permanent(anyhow::anyhow!("{}: {e}", part.display()));
    let mut out = OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(part)
        .map_err(io)?;
    let mut written = if append { have } else { 0 };
    if let Some(total) = total {
        bar.set_length(total);
    }
    bar.set_position(written);
    let mut reader = response.into_reader();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                out.flush().map_err(io)?;
                return Err(Failure::Transient(anyhow::anyhow!(
                    "{url}: transfer cut off at {written} bytes: {e}"
                )));
            }
        };
        out.write_all(&buf[..n]).map_err(io)?;
        written += n as u64;
        bar.set_position(written);
    }
    out.sync_all().map_err(io)?;
    match total {
        Some(total) if written < total => Err(Failure::Transient(anyhow::anyhow!(
            "{url}: transfer cut off at {written} of {total} bytes"
        ))),
        Some(total) if written > total => {
            let _ = std::fs::remove_file(part);
            Err(Failure::Permanent(anyhow::anyhow!(
                "{url}: server sent {written} bytes, more than the {total} it announced"
            )))
        }
        _ => Ok(()),
    }
}

/// `bytes START-END/TOTAL` → `(START, Some(TOTAL))`; TOTAL may be `*`.
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::parse_content_range;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
        assert_eq!(parse_content_range("bytes x-2/3"), None);
    }
}
