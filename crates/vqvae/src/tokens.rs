//! Token ids as arrays: the codes of many images as one `(N, L, h, w)` integer array in
//! NumPy's `.npy` format (or JSON), with the images' names (and a dataset split's labels) in
//! files beside it, readable by `numpy.load` and `torch.from_numpy` without this crate.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vq_codes::npy::{Array, Dtype};

use crate::codec::CodeGrid;
use crate::error::{Error, Result};
use vq_model::checkpoint::Checkpoint;

/// How an array of codes is stored: its file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArrayFormat {
    Npy,
    Json,
}

impl ArrayFormat {
    /// The format `path`'s extension names.
    pub fn of(path: &Path) -> Result<ArrayFormat> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("npy") => Ok(ArrayFormat::Npy),
            Some("json") => Ok(ArrayFormat::Json),
            _ => Err(Error::Invalid(format!(
                "{}: codes are written as .npy (NumPy) or .json; name the file so",
                path.display()
            ))),
        }
    }
}

/// The files beside an array: `NAME.names.json` (the images' names, in order) and, for a
/// dataset split, `NAME.labels.npy` (their classes).
pub fn sidecars(path: &Path) -> (PathBuf, PathBuf) {
    let stem = path.with_extension("");
    let with = |suffix: &str| PathBuf::from(format!("{}.{suffix}", stem.display()));
    (with("names.json"), with("labels.npy"))
}

/// The JSON form of a code array (`--codes X.json`).
#[derive(Debug, Serialize, Deserialize)]
struct CodesJson {
    /// `[N, L, h, w]`.
    shape: Vec<usize>,
    names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    labels: Option<Vec<i64>>,
    /// Nested `N × L × h × w`.
    codes: serde_json::Value,
}

/// A set of code grids of one shape, with what each was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeArray {
    /// `[N, L, h, w]`.
    pub shape: [usize; 4],
    /// `N · L · h · w` codes in C order.
    pub codes: Vec<i64>,
    pub names: Vec<String>,
    pub labels: Option<Vec<i64>>,
}

impl CodeArray {
    /// The array of `grids` (all of one shape), named by `names`, with `labels` if any.
    pub fn from_grids(
        grids: &[CodeGrid],
        names: Vec<String>,
        labels: Option<Vec<i64>>,
    ) -> Result<CodeArray> {
        let first = grids
            .first()
            .ok_or_else(|| invalid("no code grids to put in an array".into()))?;
        if let Some(i) = grids.iter().position(|g| g.shape() != first.shape()) {
            return Err(invalid(format!(
                "{} gives codes of shape {:?}, {} of {:?}: one array holds grids of one shape (resize the images first)",
                names.first().map(String::as_str).unwrap_or("grid 0"),
                first.shape(),
                names.get(i).map(String::as_str).unwrap_or("another"),
                grids[i].shape()
            )));
        }
        if names.len() != grids.len() || labels.as_ref().is_some_and(|l| l.len() != grids.len()) {
            return Err(invalid(format!(
                "{} grids, {} names and {} labels",
                grids.len(),
                names.len(),
                labels.as_ref().map_or(0, Vec::len)
            )));
        }
        let [l, h, w] = first.shape();
        Ok(CodeArray {
            shape: [grids.len(), l, h, w],
            codes: grids
                .iter()
                .flat_map(|g| g.codes.iter().map(|&c| c as i64))
                .collect(),
            names,
            labels,
        })
    }

    /// Writes the array to `path` (.npy or .json) and its sidecars, each atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let (names_path, labels_path) = sidecars(path);
        match ArrayFormat::of(path)? {
            ArrayFormat::Npy => {
                let (lo, hi) = min_max(&self.codes);
                let array = Array::new(
                    self.shape.to_vec(),
                    self.codes.clone(),
                    Dtype::smallest_signed(lo, hi),
                )
                .map_err(|source| npy_error(path, source))?;
                write_bytes(path, &array.to_bytes())?;
                write_bytes(&names_path, &json_bytes(&self.names, true))?;
                if self.labels.is_none() && labels_path.exists() {
                    // An earlier array's labels would be read as this one's.
                    std::fs::remove_file(&labels_path).map_err(|e| Error::io(&labels_path, e))?;
                }
                if let Some(labels) = &self.labels {
                    let (lo, hi) = min_max(labels);
                    let array = Array::new(
                        vec![labels.len()],
                        labels.clone(),
                        Dtype::smallest_signed(lo, hi),
                    )
                    .map_err(|source| npy_error(&labels_path, source))?;
                    write_bytes(&labels_path, &array.to_bytes())?;
                }
            }
            ArrayFormat::Json => {
                let [n, l, h, w] = self.shape;
                let nested: Vec<Vec<Vec<&[i64]>>> = (0..n)
                    .map(|i| {
                        (0..l)
                            .map(|j| {
                                (0..h)
                                    .map(|y| {
                                        let at = ((i * l + j) * h + y) * w;
                                        &self.codes[at..at + w]
                                    })
                                    .collect()
                            })
                            .collect()
                    })
                    .collect();
                let json = CodesJson {
                    shape: self.shape.to_vec(),
                    names: self.names.clone(),
                    labels: self.labels.clone(),
                    codes: serde_json::to_value(nested).expect("integers are JSON"),
                };
                write_bytes(path, &json_bytes(&json, false))?;
            }
        }
        Ok(())
    }

    /// Reads an array written by [`CodeArray::write`], by NumPy (`(N, L, h, w)`, or
    /// `(N, h, w)` for one level) or by hand in the JSON form; names come from the sidecar when
    /// there is one, else `00000`, `00001`, ...
    pub fn read(path: &Path) -> Result<CodeArray> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let (shape, codes, names, labels) = match ArrayFormat::of(path)? {
            ArrayFormat::Npy => {
                let array = Array::from_bytes(&bytes).map_err(|source| npy_error(path, source))?;
                let (names_path, labels_path) = sidecars(path);
                let names = match std::fs::read(&names_path) {
                    Ok(b) => Some(serde_json::from_slice::<Vec<String>>(&b).map_err(|e| {
                        invalid(format!(
                            "{}: not a JSON list of names: {e}",
                            names_path.display()
                        ))
                    })?),
                    Err(_) => None,
                };
                let labels = match std::fs::read(&labels_path) {
                    Ok(b) => Some(
                        Array::from_bytes(&b)
                            .map_err(|source| npy_error(&labels_path, source))?
                            .data,
                    ),
                    Err(_) => None,
                };
                (array.shape, array.data, names, labels)
            }
            ArrayFormat::Json => {
                let json: CodesJson = serde_json::from_slice(&bytes).map_err(|e| {
                    invalid(format!("{}: not a JSON code array: {e}", path.display()))
                })?;
                let codes: Vec<i64> = flatten(&json.codes).ok_or_else(|| {
                    invalid(format!(
                        "{}: \"codes\" is not nested integers",
                        path.display()
                    ))
                })?;
                (json.shape, codes, Some(json.names), json.labels)
            }
        };
        let shape: [usize; 4] = match shape.as_slice() {
            &[n, l, h, w] => [n, l, h, w],
            &[n, h, w] => [n, 1, h, w],
            other => return Err(invalid(format!(
                "{}: codes of shape {other:?}; a code array is (N, L, h, w), or (N, h, w) for one level",
                path.display()
            ))),
        };
        if shape.contains(&0) {
            return Err(invalid(format!(
                "{}: codes of shape {shape:?}: an array of code grids has no empty dimension",
                path.display()
            )));
        }
        if shape.iter().product::<usize>() != codes.len() {
            return Err(invalid(format!(
                "{}: shape {shape:?} but {} codes",
                path.display(),
                codes.len()
            )));
        }
        let names = names.unwrap_or_else(|| (0..shape[0]).map(|i| format!("{i:05}")).collect());
        if names.len() != shape[0] {
            return Err(invalid(format!(
                "{}: {} names for {} code grids",
                path.display(),
                names.len(),
                shape[0]
            )));
        }
        if let Some(labels) = &labels {
            if labels.len() != shape[0] {
                return Err(invalid(format!(
                    "{}: {} labels for {} code grids",
                    path.display(),
                    labels.len(),
                    shape[0]
                )));
            }
        }
        Ok(CodeArray {
            shape,
            codes,
            names,
            labels,
        })
    }

    /// Checks the codes against a model's code space: its depth (at most; fewer levels of a
    /// residual model decode a coarser image), its vocabulary, and the grid of `image_side`.
    pub fn check(&self, path: &Path, ckpt: &Checkpoint) -> Result<()> {
        let space = ckpt.config.code_space();
        let [_, l, h, w] = self.shape;
        if l == 0 || l as i64 > space.depth {
            return Err(invalid(format!(
                "{}: {l} level(s) of codes, but {} has {} level(s)",
                path.display(),
                ckpt.origin(),
                space.depth
            )));
        }
        if h == 0 || w == 0 {
            return Err(invalid(format!(
                "{}: an empty code grid ({h}×{w})",
                path.display()
            )));
        }
        if let Some((i, &c)) = self
            .codes
            .iter()
            .enumerate()
            .find(|(_, &c)| c < 0 || c >= space.vocabulary)
        {
            return Err(invalid(format!(
                "{}: code {c} (grid {}) is outside {}'s vocabulary of {}",
                path.display(),
                i / (l * h * w),
                ckpt.origin(),
                space.vocabulary
            )));
        }
        Ok(())
    }

    /// Grid `i`.
    pub fn grid(&self, i: usize) -> CodeGrid {
        let [_, l, h, w] = self.shape;
        let per = l * h * w;
        CodeGrid {
            width: w as u32,
            height: h as u32,
            depth: l as u32,
            codes: self.codes[i * per..(i + 1) * per]
                .iter()
                .map(|&c| c as u32)
                .collect(),
        }
    }
}

fn min_max(values: &[i64]) -> (i64, i64) {
    values
        .iter()
        .fold((0, 0), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

fn flatten(value: &serde_json::Value) -> Option<Vec<i64>> {
    match value {
        serde_json::Value::Array(items) => {
            let mut out = Vec::new();
            for item in items {
                out.extend(flatten(item)?);
            }
            Some(out)
        }
        v => v.as_i64().map(|c| vec![c]),
    }
}

fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(vq_data::write_atomic(path, |w| w.write_all(bytes))?)
}

fn json_bytes(value: &impl Serialize, pretty: bool) -> Vec<u8> {
    let bytes = if pretty {
        serde_json::to_vec_pretty(value)
    } else {
        serde_json::to_vec(value)
    };
    bytes.expect("names and integers are JSON")
}

fn npy_error(path: &Path, source: vq_codes::npy::NpyError) -> Error {
    Error::Npy {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(message: String) -> Error {
    Error::Invalid(message)
}
