//! Versioned configuration files.
//!
//! A config file is a JSON object with a `"format"` number and the fields of its type. Reading
//! one lays the file's fields over the type's defaults (nested objects merged field by field, so
//! a partial `"schedule": {"steps": 5}` keeps the other schedule settings of *this* kind of run),
//! then refuses any field the type does not know. Files without `"format"` that do not read as
//! the current format are read by the type's legacy reader, if it has one: the flat layout of
//! format 1, which the bundled model, the bundled prior and older run folders use.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::StoreError;

/// A configuration type stored as a versioned JSON file.
pub trait ConfigFile: Serialize + DeserializeOwned + Default {
    /// What the file holds, for messages ("a model config").
    const WHAT: &'static str;
    /// The format this build writes (and the newest it reads).
    const FORMAT: u64;

    /// Reads the fields of a file written before formats were numbered (format 1), if this kind
    /// of file existed then.
    fn from_legacy(_fields: Value) -> Option<Result<Self, String>> {
        None
    }

    /// Checks the settings that would otherwise fail deep inside a run.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// `over` laid over `base`: objects merge key by key (recursively), anything else replaces. An
/// object whose `"kind"` differs from the base's replaces it whole, since the other kind has
/// other fields.
pub fn merge_over(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            let other_kind = match (base.get("kind"), over.get("kind")) {
                (Some(a), Some(b)) => a != b,
                _ => false,
            };
            if other_kind {
                *base = over;
                return;
            }
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(slot) => merge_over(slot, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

/// Parses the text of a config file of type `T` and validates it.
pub fn parse_config<T: ConfigFile>(text: &str) -> Result<T, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let Value::Object(mut fields) = value else {
        return Err("expected a JSON object".into());
    };
    let config = match fields.remove("format") {
        Some(format) => {
            let format = format
                .as_u64()
                .ok_or_else(|| format!("\"format\" must be a number, not {format}"))?;
            if format > T::FORMAT {
                return Err(format!(
                    "format {format} is newer than this build reads (up to {}); update vqvae-rs",
                    T::FORMAT
                ));
            }
            if format < T::FORMAT {
                let legacy = T::from_legacy(Value::Object(fields))
                    .ok_or_else(|| format!("format {format} is not readable as {}", T::WHAT))?;
                legacy?
            } else {
                current::<T>(fields)?
            }
        }
        None => match current::<T>(fields.clone()) {
            Ok(config) => config,
            Err(error) => match T::from_legacy(Value::Object(fields)) {
                Some(Ok(config)) => config,
                // The current format's complaint is the one to show: that is what users write.
                _ => return Err(error),
            },
        },
    };
    config.validate()?;
    Ok(config)
}

fn current<T: ConfigFile>(fields: Map<String, Value>) -> Result<T, String> {
    let mut value = serde_json::to_value(T::default()).map_err(|e| e.to_string())?;
    merge_over(&mut value, Value::Object(fields));
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// Reads and validates the config file `path`.
pub fn read_config<T: ConfigFile>(path: &Path) -> Result<T, StoreError> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => StoreError::Missing(path.to_path_buf()),
        _ => StoreError::io(path, e),
    })?;
    parse_config(&text).map_err(|reason| StoreError::Malformed {
        path: path.to_path_buf(),
        what: T::WHAT,
        reason,
    })
}

/// Writes `config` with its format number first, atomically.
pub fn write_config<T: ConfigFile>(path: &Path, config: &T) -> Result<(), StoreError> {
    let invalid = |reason: String| StoreError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let fields = serde_json::to_string_pretty(config).map_err(|e| invalid(e.to_string()))?;
    // The format leads, whatever order serde_json keeps the other keys in.
    let Some(rest) = fields.strip_prefix("{\n") else {
        return Err(invalid(format!(
            "{} is not a non-empty JSON object",
            T::WHAT
        )));
    };
    let text = format!("{{\n  \"format\": {},\n{rest}\n", T::FORMAT);
    vq_data::write_atomic(path, |w| w.write_all(text.as_bytes()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        a: u32,
        b: u32,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
    enum Shape {
        Square { side: u32 },
        Circle { radius: u32 },
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        name: String,
        inner: Inner,
        shape: Shape,
    }

    impl Default for Outer {
        fn default() -> Self {
            Outer {
                name: "x".into(),
                inner: Inner { a: 1, b: 2 },
                shape: Shape::Square { side: 3 },
            }
        }
    }

    /// Format 1 was flat: `{"name", "a", "b"}`.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Flat {
        name: String,
        a: u32,
        b: u32,
    }

    impl ConfigFile for Outer {
        const WHAT: &'static str = "a test config";
        const FORMAT: u64 = 2;
        fn from_legacy(fields: Value) -> Option<Result<Self, String>> {
            Some(
                serde_json::from_value::<Flat>(fields)
                    .map(|f| Outer {
                        name: f.name,
                        inner: Inner { a: f.a, b: f.b },
                        ..Outer::default()
                    })
                    .map_err(|e| e.to_string()),
            )
        }
        fn validate(&self) -> Result<(), String> {
            if self.inner.a == 0 {
                return Err("a must be positive".into());
            }
            Ok(())
        }
    }

    #[test]
    fn partial_nested_fields_keep_the_other_defaults() {
        let c: Outer = parse_config(r#"{"format": 2, "inner": {"b": 7}}"#).unwrap();
        assert_eq!(c.inner, Inner { a: 1, b: 7 });
        assert_eq!(c.name, "x");
        // Without a format number too.
        let c: Outer = parse_config(r#"{"inner": {"a": 5}}"#).unwrap();
        assert_eq!(c.inner, Inner { a: 5, b: 2 });
    }

    #[test]
    fn another_kind_replaces_the_default_whole() {
        let c: Outer = parse_config(r#"{"shape": {"kind": "circle", "radius": 4}}"#).unwrap();
        assert_eq!(c.shape, Shape::Circle { radius: 4 });
        let c: Outer = parse_config(r#"{"shape": {"side": 9}}"#).unwrap();
        assert_eq!(c.shape, Shape::Square { side: 9 });
        let err = parse_config::<Outer>(r#"{"shape": {"kind": "circle", "side": 4}}"#);
        assert!(err.unwrap_err().contains("unknown field"));
    }

    #[test]
    fn legacy_files_unknown_fields_newer_formats_and_validation() {
        let c: Outer = parse_config(r#"{"name": "old", "a": 3, "b": 4}"#).unwrap();
        assert_eq!(c.inner, Inner { a: 3, b: 4 });
        assert_eq!(c.name, "old");
        // A misspelt field is the current format's error, naming the field.
        let err = parse_config::<Outer>(r#"{"nmae": "old"}"#).unwrap_err();
        assert!(err.contains("unknown field `nmae`"), "{err}");
        let err = parse_config::<Outer>(r#"{"format": 3}"#).unwrap_err();
        assert!(err.contains("newer"), "{err}");
        let err = parse_config::<Outer>(r#"{"format": 1, "name": "old", "a": 0, "b": 4}"#);
        assert!(err.unwrap_err().contains("positive"));
        assert!(parse_config::<Outer>("[1]").is_err());
        assert!(parse_config::<Outer>("{").is_err());
    }

    #[test]
    fn written_files_read_back_with_their_format_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let c = Outer {
            shape: Shape::Circle { radius: 8 },
            ..Outer::default()
        };
        write_config(&path, &c).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("{\n  \"format\": 2,"), "{text}");
        assert_eq!(read_config::<Outer>(&path).unwrap(), c);
        std::fs::write(&path, r#"{"inner": {"a": 0}}"#).unwrap();
        let err = read_config::<Outer>(&path).unwrap_err().to_string();
        assert!(
            err.contains("c.json") && err.contains("a test config"),
            "{err}"
        );
        let err = read_config::<Outer>(&dir.path().join("none.json")).unwrap_err();
        assert!(err.to_string().contains("none.json"), "{err}");
    }
}
