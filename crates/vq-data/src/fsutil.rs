use std::io::{BufWriter, Write};
use std::path::Path;

use crate::error::DataError;

/// Writes a file through a temporary sibling and renames it into place once it is complete and
/// synced, so readers see either the old file or the whole new one, never a torn write.
pub fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), DataError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Not `DataError::io`: a missing folder here is no missing dataset file.
    let io = |e| DataError::Io {
        path: path.to_path_buf(),
        error: without_temp_path(e),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".tmp-");
    // tempfile's default mode is 0600; outputs are meant to be shared like any other file.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
    let tmp = builder.tempfile_in(dir).map_err(io)?;
    let mut writer = BufWriter::with_capacity(1 << 20, tmp);
    fill(&mut writer).map_err(io)?;
    writer.flush().map_err(io)?;
    let tmp = writer.into_inner().map_err(|e| io(e.into_error()))?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// tempfile wraps I/O errors with the temporary file's path ("... at path .tmp-x1y2"), which
/// means nothing to a user told about `path`: keep the operating system's error alone.
fn without_temp_path(e: std::io::Error) -> std::io::Error {
    let message = e.to_string();
    match message.find(" at path \"") {
        Some(cut) => std::io::Error::new(e.kind(), &message[..cut]),
        None => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_target_not_the_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-folder/out.bin");
        let err = write_atomic(&path, |w| w.write_all(b"x"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing-folder"), "{err}");
        assert!(!err.contains(".tmp-"), "{err}");
        assert!(!err.contains("download-cifar"), "{err}");
        // A failing writer leaves neither the target nor a temporary behind.
        let path = dir.path().join("out.bin");
        let err = write_atomic(&path, |_| Err(std::io::Error::other("disk on fire")));
        assert!(err.unwrap_err().to_string().contains("disk on fire"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
