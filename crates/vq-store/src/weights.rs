//! Weights files (safetensors) to and from a LibTorch `VarStore`, checked name by name, shape by
//! shape and for NaN / infinity; and other named tensors (optimizer moments, code caches).

use std::collections::BTreeMap;
use std::path::Path;

use tch::{nn, Tensor};

use crate::StoreError;

/// Saves every variable of `vs` (weights and buffers such as a codebook's statistics) through a
/// temporary file renamed into place.
pub fn save(vs: &nn::VarStore, path: &Path) -> Result<(), StoreError> {
    let named: Vec<(String, Tensor)> = {
        let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    save_tensors(&named, path)
}

/// Writes named tensors as safetensors through a temporary file renamed into place.
pub fn save_tensors<S: AsRef<str>, T: AsRef<Tensor>>(
    tensors: &[(S, T)],
    path: &Path,
) -> Result<(), StoreError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".tmp-{}-{name}", std::process::id()));
    let result = Tensor::write_safetensors(tensors, &tmp)
        .map_err(|e| torch_error(path, &e))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| StoreError::io(path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads all tensors of a safetensors file, by name.
pub fn load_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>, StoreError> {
    let bytes = read_file(path)?;
    tensors_from_bytes(&bytes, path)
}

/// Reads a weights file, `NotFound` as [`StoreError::Missing`].
pub fn read_file(path: &Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => StoreError::Missing(path.to_path_buf()),
        _ => StoreError::io(path, e),
    })
}

/// The tensors of safetensors `bytes` (`path` names them in errors).
pub fn tensors_from_bytes(
    bytes: &[u8],
    path: &Path,
) -> Result<BTreeMap<String, Tensor>, StoreError> {
    let unreadable = |reason: String| StoreError::Malformed {
        path: path.to_path_buf(),
        what: "a safetensors file",
        reason,
    };
    let file =
        safetensors::SafeTensors::deserialize(bytes).map_err(|e| unreadable(format!("{e:?}")))?;
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let tensor = Tensor::try_from(view)
                .map_err(|e| unreadable(format!("{name}: {}", first_line(&e))))?;
            Ok((name, tensor))
        })
        .collect()
}

/// Loads the weights file `path` into `vs`: every variable must be there with its shape and
/// finite values, and the file must hold nothing else (`VarStore::load` would silently ignore
/// extra tensors, i.e. load part of another model).
pub fn load(vs: &mut nn::VarStore, path: &Path) -> Result<(), StoreError> {
    let bytes = read_file(path)?;
    load_bytes(vs, &bytes, path)
}

/// [`load`] from the bytes of a weights file (an embedded model); `path` names it in errors.
pub fn load_bytes(vs: &mut nn::VarStore, bytes: &[u8], path: &Path) -> Result<(), StoreError> {
    let file = tensors_from_bytes(bytes, path)?;
    let mismatch = |reason: String| StoreError::Mismatch {
        path: path.to_path_buf(),
        reason,
    };
    let variables = vs.variables();
    let extra: Vec<&String> = file
        .keys()
        .filter(|k| !variables.contains_key(*k))
        .collect();
    if let Some(name) = extra.first() {
        return Err(mismatch(format!(
            "the file holds {} tensor(s) the model lacks, e.g. {name}",
            extra.len()
        )));
    }
    let mut names: Vec<&String> = variables.keys().collect();
    names.sort();
    let _guard = tch::no_grad_guard();
    for name in names {
        let Some(saved) = file.get(name) else {
            return Err(mismatch(format!("the file has no tensor {name}")));
        };
        let mut var = variables[name].shallow_clone();
        if saved.size() != var.size() {
            return Err(mismatch(format!(
                "{name} has shape {:?} in the file, the model needs {:?}",
                saved.size(),
                var.size()
            )));
        }
        if saved.is_floating_point() && saved.isfinite().all().int64_value(&[]) != 1 {
            return Err(StoreError::NonFinite {
                path: path.to_path_buf(),
                name: name.clone(),
            });
        }
        var.f_copy_(saved)
            .map_err(|e| mismatch(format!("{name}: {}", first_line(&e))))?;
    }
    Ok(())
}

fn torch_error(path: &Path, e: &tch::TchError) -> StoreError {
    StoreError::Invalid {
        path: path.to_path_buf(),
        reason: first_line(e),
    }
}

/// LibTorch errors carry a C++ backtrace after the first line; users need only the first.
fn first_line(e: &impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or("").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn store(shape: &[i64]) -> nn::VarStore {
        let vs = nn::VarStore::new(Device::Cpu);
        let a = vs.root() / "a";
        let _ = a.var(
            "w",
            shape,
            nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        );
        let _ = a.zeros_no_train("count", &[3]);
        vs
    }

    #[test]
    fn round_trips_and_refuses_other_shapes_names_and_nan() {
        tch::manual_seed(0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let vs = store(&[2, 3]);
        save(&vs, &path).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
        let mut other = store(&[2, 3]);
        load(&mut other, &path).unwrap();
        assert_eq!(
            other.variables()["a.w"],
            vs.variables()["a.w"],
            "the values came back"
        );
        // From bytes, as an embedded model is read.
        let mut again = store(&[2, 3]);
        load_bytes(&mut again, &std::fs::read(&path).unwrap(), &path).unwrap();
        assert_eq!(again.variables()["a.w"], vs.variables()["a.w"]);

        let err = load(&mut store(&[3, 3]), &path).unwrap_err().to_string();
        assert!(err.contains("in the file, the model needs"), "{err}");
        let mut bigger = store(&[2, 3]);
        let _ = bigger.root().var("b", &[1], nn::Init::Const(0.0));
        let err = load(&mut bigger, &path).unwrap_err().to_string();
        assert!(err.contains("has no tensor b"), "{err}");
        let smaller = nn::VarStore::new(Device::Cpu);
        let _ = (smaller.root() / "a").var("w", &[2, 3], nn::Init::Const(0.0));
        let mut smaller = smaller;
        let err = load(&mut smaller, &path).unwrap_err().to_string();
        assert!(err.contains("the model lacks, e.g. a.count"), "{err}");

        {
            let _g = tch::no_grad_guard();
            let _ = vs.variables()["a.w"].shallow_clone().get(0).fill_(f64::NAN);
        }
        save(&vs, &path).unwrap();
        let err = load(&mut store(&[2, 3]), &path).unwrap_err().to_string();
        assert!(err.contains("a.w holds NaN"), "{err}");

        std::fs::write(&path, b"not safetensors").unwrap();
        let err = load(&mut store(&[2, 3]), &path).unwrap_err().to_string();
        assert!(
            err.contains("model.safetensors: not a safetensors file"),
            "{err}"
        );
        let err = load(&mut store(&[2, 3]), &dir.path().join("gone.safetensors"));
        assert!(err.unwrap_err().to_string().contains("gone.safetensors"));
    }

    #[test]
    fn named_tensors_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let a = Tensor::from_slice(&[1i16, 2, 3]);
        let b = Tensor::ones([2, 2], (Kind::Float, Device::Cpu));
        save_tensors(&[("a", &a), ("b", &b)], &path).unwrap();
        let back = load_tensors(&path).unwrap();
        assert_eq!(back["a"], a);
        assert_eq!(back["b"], b);
    }
}
