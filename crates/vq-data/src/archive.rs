//! Unpacking `cifar-10-binary.tar.gz` defensively: only the known files of
//! `cifar-10-batches-bin/`, only regular files, no paths outside the target, no entry larger
//! than the official one. Anything else in the archive is reported, never written.

use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crate::cifar::{DIR_NAME, FILE_BYTES, META_FILE, TEST_FILES, TRAIN_FILES};
use crate::error::DataError;

/// Largest non-batch file we accept (`batches.meta.txt`, `readme.html`).
const SMALL_FILE_LIMIT: u64 = 1 << 20;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackReport {
    /// Files written, relative to the destination.
    pub written: Vec<PathBuf>,
    /// Entries of the archive that are not part of the dataset and were skipped.
    pub skipped: Vec<String>,
}

fn size_limit(name: &str) -> Option<u64> {
    if TRAIN_FILES.contains(&name) || TEST_FILES.contains(&name) {
        Some(FILE_BYTES)
    } else if name == META_FILE || name == "readme.html" {
        Some(SMALL_FILE_LIMIT)
    } else {
        None
    }
}

/// Unpacks the gzip-compressed tar at `archive` into `dest` (which must exist), creating
/// `dest/cifar-10-batches-bin/`. On error, `dest` may hold a partial tree: callers unpack into a
/// temporary folder and move the result into place only after it passes [`crate::Cifar10::verify_dir`].
pub fn unpack_archive(archive: &Path, dest: &Path) -> Result<UnpackReport, DataError> {
    let file = File::open(archive).map_err(|e| DataError::io(archive, e))?;
    unpack_reader(std::io::BufReader::new(file), archive, dest)
}

/// As [`unpack_archive`], from any reader; `archive` only names the source in errors.
pub fn unpack_reader(
    reader: impl Read,
    archive: &Path,
    dest: &Path,
) -> Result<UnpackReport, DataError> {
    let corrupt = |reason: String| DataError::Archive {
        path: archive.to_path_buf(),
        reason,
    };
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(reader));
    let out_dir = dest.join(DIR_NAME);
    std::fs::create_dir_all(&out_dir).map_err(|e| DataError::io(&out_dir, e))?;
    let mut report = UnpackReport::default();
    let entries = tar
        .entries()
        .map_err(|e| corrupt(format!("not a tar.gz archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| corrupt(format!("unreadable entry: {e}")))?;
        let raw = entry
            .path()
            .map_err(|e| corrupt(format!("entry with a bad path: {e}")))?
            .into_owned();
        let parts: Vec<&std::ffi::OsStr> = raw
            .components()
            .filter(|c| !matches!(c, Component::CurDir))
            .map(|c| match c {
                Component::Normal(s) => Ok(s),
                _ => Err(corrupt(format!(
                    "entry {} leaves the archive's folder",
                    raw.display()
                ))),
            })
            .collect::<Result<_, _>>()?;
        let shown = raw.display().to_string();
        let kind = entry.header().entry_type();
        match parts.as_slice() {
            [dir] if *dir == DIR_NAME && kind.is_dir() => continue,
            [dir, name] if *dir == DIR_NAME => {
                let name = name.to_str().unwrap_or("");
                let Some(limit) = size_limit(name) else {
                    report.skipped.push(shown);
                    continue;
                };
                if !kind.is_file() {
                    return Err(corrupt(format!(
                        "entry {shown} is a {kind:?}, expected a regular file"
                    )));
                }
                let declared = entry.header().size().unwrap_or(u64::MAX);
                if declared > limit {
                    return Err(corrupt(format!(
                        "entry {shown} declares {declared} bytes, more than the {limit} expected"
                    )));
                }
                let target = out_dir.join(name);
                let mut out = File::create(&target).map_err(|e| DataError::io(&target, e))?;
                let copied = std::io::copy(&mut (&mut entry).take(limit), &mut out)
                    .map_err(|e| corrupt(format!("entry {shown} is cut off or corrupt: {e}")))?;
                if copied != declared {
                    return Err(corrupt(format!(
                        "entry {shown} holds {copied} bytes, its header says {declared}"
                    )));
                }
                out.sync_all().map_err(|e| DataError::io(&target, e))?;
                report.written.push(Path::new(DIR_NAME).join(name));
            }
            _ => report.skipped.push(shown),
        }
    }
    // The gzip stream must also end cleanly (a truncated archive can still list whole entries).
    let mut rest = tar.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink())
        .map_err(|e| corrupt(format!("archive is cut off or corrupt: {e}")))?;
    if report.written.is_empty() {
        return Err(corrupt(format!("holds no {DIR_NAME}/ files")));
    }
    Ok(report)
}
