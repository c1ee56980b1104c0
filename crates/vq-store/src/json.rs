use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::StoreError;

/// Reads `path` as JSON of type `T`; `what` names the kind of file in errors ("a run state").
pub fn read_json<T: DeserializeOwned>(path: &Path, what: &'static str) -> Result<T, StoreError> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => StoreError::Missing(path.to_path_buf()),
        _ => StoreError::io(path, e),
    })?;
    serde_json::from_str(&text).map_err(|e| StoreError::Malformed {
        path: path.to_path_buf(),
        what,
        reason: e.to_string(),
    })
}

/// Writes `value` as pretty JSON (and a final newline), atomically.
pub fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), StoreError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| StoreError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })? + "\n";
    vq_data::write_atomic(path, |w| w.write_all(text.as_bytes()))?;
    Ok(())
}
