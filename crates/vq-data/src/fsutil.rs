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
    let io = |e| DataError::io(path, e);
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
