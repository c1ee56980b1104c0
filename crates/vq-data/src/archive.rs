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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    /// A gzip-compressed tar holding `entries` (name, contents); `None` contents make a folder.
    fn archive(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut header = tar::Header::new_gnu();
            match data {
                Some(bytes) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(bytes.len() as u64);
                    header.set_mode(0o644);
                    // `set_path` refuses `..`; write the raw name as a hostile archive would.
                    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
                    header.set_cksum();
                    tar.append(&header, *bytes).unwrap();
                }
                None => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    header.set_mode(0o755);
                    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
                    header.set_cksum();
                    tar.append(&header, std::io::empty()).unwrap();
                }
            }
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar.into_inner().unwrap()).unwrap();
        gz.finish().unwrap()
    }

    fn valid() -> Vec<u8> {
        let record: Vec<u8> = std::iter::once(3)
            .chain((0..3072).map(|i| i as u8))
            .collect();
        archive(&[
            ("cifar-10-batches-bin", None),
            ("cifar-10-batches-bin/batches.meta.txt", Some(b"a\nb\n")),
            ("cifar-10-batches-bin/test_batch.bin", Some(&record)),
            ("cifar-10-batches-bin/extra.txt", Some(b"not ours")),
            ("other/file", Some(b"x")),
        ])
    }

    /// Everything under `dest`, as paths relative to it; panics on anything but plain files and
    /// folders.
    fn tree(dest: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dest.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let meta = std::fs::symlink_metadata(&path).unwrap();
                assert!(
                    meta.is_file() || meta.is_dir(),
                    "{path:?}: not a plain file"
                );
                if meta.is_dir() {
                    stack.push(path.clone());
                }
                out.push(path.strip_prefix(dest).unwrap().to_path_buf());
            }
        }
        out.sort();
        out
    }

    fn unpack(bytes: &[u8]) -> (tempfile::TempDir, Result<UnpackReport, DataError>) {
        let dir = tempfile::tempdir().unwrap();
        let result = unpack_reader(bytes, Path::new("in.tar.gz"), dir.path());
        (dir, result)
    }

    #[test]
    fn unpacks_only_the_dataset_files() {
        let (dir, result) = unpack(&valid());
        let report = result.unwrap();
        assert_eq!(
            report.skipped,
            vec!["cifar-10-batches-bin/extra.txt", "other/file"]
        );
        assert_eq!(
            tree(dir.path()),
            ["", "/batches.meta.txt", "/test_batch.bin"]
                .map(|f| PathBuf::from(format!("{DIR_NAME}{f}")))
        );
        let batch = std::fs::read(dir.path().join(DIR_NAME).join("test_batch.bin")).unwrap();
        assert_eq!(batch.len(), 3073);
        assert_eq!(batch[0], 3);
    }

    #[test]
    fn hostile_and_broken_archives_are_named_errors() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                archive(&[("cifar-10-batches-bin/../../evil", Some(b"x"))]),
                "leaves the archive's folder",
            ),
            (
                archive(&[("/etc/cifar-10-batches-bin", Some(b"x"))]),
                "leaves the archive's folder",
            ),
            (archive(&[("other/file", Some(b"x"))]), "holds no"),
            (valid()[..valid().len() / 2].to_vec(), "in.tar.gz"),
            (b"not an archive at all".to_vec(), "in.tar.gz"),
            (Vec::new(), "in.tar.gz"),
        ];
        for (bytes, expected) in cases {
            let (dir, result) = unpack(&bytes);
            let err = result.expect_err(expected).to_string();
            assert!(err.contains(expected), "{err:?} should say {expected:?}");
            assert!(err.contains("in.tar.gz"), "{err:?} names no file");
            assert!(!dir.path().join("evil").exists());
            tree(dir.path());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The fuzz target's property, bounded: any bytes give a report or an error, and only
        /// plain files inside the dataset folder are ever written.
        #[test]
        fn random_bytes_never_panic_or_escape(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let (dir, _) = unpack(&bytes);
            for path in tree(dir.path()) {
                prop_assert!(path.starts_with(DIR_NAME));
            }
        }

        #[test]
        fn a_changed_byte_never_panics_or_escapes(at in any::<prop::sample::Index>(), value in any::<u8>()) {
            let mut bytes = valid();
            let i = at.index(bytes.len());
            bytes[i] = value;
            let (dir, _) = unpack(&bytes);
            for path in tree(dir.path()) {
                prop_assert!(path.starts_with(DIR_NAME));
            }
        }
    }
}
