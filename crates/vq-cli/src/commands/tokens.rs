//! Tokens out and in: the codes of many images as one `(N, L, h, w)` integer array in NumPy's
//! `.npy` format (or JSON), with the images' names (and a dataset split's labels) beside it,
//! and such an array decoded back to images. `vq-cli encode --codes` and `vq-cli decode A.npy`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use vq_codes::npy::{Array, Dtype};
use vq_data::Split;
use vq_model::checkpoint::Checkpoint;

use super::files::{codec, encode_images, load_images_at, SearchArgs};
use crate::codec::CodeGrid;
use crate::session::Session;

/// Inputs per network pass when encoding a dataset split or a list of images.
const CHUNK: usize = 1024;

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
            _ => bail!(
                "{}: codes are written as .npy (NumPy) or .json; name the file so",
                path.display()
            ),
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
                )?;
                write_bytes(path, &array.to_bytes())?;
                write_bytes(&names_path, &serde_json::to_vec_pretty(&self.names)?)?;
                if let Some(labels) = &self.labels {
                    let (lo, hi) = min_max(labels);
                    let array = Array::new(
                        vec![labels.len()],
                        labels.clone(),
                        Dtype::smallest_signed(lo, hi),
                    )?;
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
                    codes: serde_json::to_value(nested)?,
                };
                write_bytes(path, &serde_json::to_vec(&json)?)?;
            }
        }
        Ok(())
    }

    /// Reads an array written by [`CodeArray::write`], by NumPy (`(N, L, h, w)`, or
    /// `(N, h, w)` for one level) or by hand in the JSON form; names come from the sidecar when
    /// there is one, else `00000`, `00001`, ...
    pub fn read(path: &Path) -> Result<CodeArray> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let (shape, codes, names, labels) = match ArrayFormat::of(path)? {
            ArrayFormat::Npy => {
                let array = Array::from_bytes(&bytes)
                    .with_context(|| format!("{}: not a code array", path.display()))?;
                let (names_path, labels_path) = sidecars(path);
                let names = match std::fs::read(&names_path) {
                    Ok(b) => {
                        Some(serde_json::from_slice::<Vec<String>>(&b).with_context(|| {
                            format!("{}: not a JSON list of names", names_path.display())
                        })?)
                    }
                    Err(_) => None,
                };
                let labels = match std::fs::read(&labels_path) {
                    Ok(b) => Some(
                        Array::from_bytes(&b)
                            .with_context(|| format!("{}: not labels", labels_path.display()))?
                            .data,
                    ),
                    Err(_) => None,
                };
                (array.shape, array.data, names, labels)
            }
            ArrayFormat::Json => {
                let json: CodesJson = serde_json::from_slice(&bytes)
                    .with_context(|| format!("{}: not a JSON code array", path.display()))?;
                let codes: Vec<i64> = flatten(&json.codes).with_context(|| {
                    format!("{}: \"codes\" is not nested integers", path.display())
                })?;
                (json.shape, codes, Some(json.names), json.labels)
            }
        };
        let shape: [usize; 4] = match shape.as_slice() {
            &[n, l, h, w] => [n, l, h, w],
            &[n, h, w] => [n, 1, h, w],
            other => bail!(
                "{}: codes of shape {other:?}; a code array is (N, L, h, w), or (N, h, w) for one level",
                path.display()
            ),
        };
        if shape.iter().product::<usize>() != codes.len() {
            bail!(
                "{}: shape {shape:?} but {} codes",
                path.display(),
                codes.len()
            );
        }
        let names = names.unwrap_or_else(|| (0..shape[0]).map(|i| format!("{i:05}")).collect());
        if names.len() != shape[0] {
            bail!(
                "{}: {} names for {} code grids",
                path.display(),
                names.len(),
                shape[0]
            );
        }
        if let Some(labels) = &labels {
            if labels.len() != shape[0] {
                bail!(
                    "{}: {} labels for {} code grids",
                    path.display(),
                    labels.len(),
                    shape[0]
                );
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
            bail!(
                "{}: {l} level(s) of codes, but {} has {} level(s)",
                path.display(),
                ckpt.origin(),
                space.depth
            );
        }
        if h == 0 || w == 0 {
            bail!("{}: an empty code grid ({h}×{w})", path.display());
        }
        if let Some((i, &c)) = self
            .codes
            .iter()
            .enumerate()
            .find(|(_, &c)| c < 0 || c >= space.vocabulary)
        {
            bail!(
                "{}: code {c} (grid {}) is outside {}'s vocabulary of {}",
                path.display(),
                i / (l * h * w),
                ckpt.origin(),
                space.vocabulary
            );
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
    vq_data::write_atomic(path, |w| w.write_all(bytes))
        .with_context(|| format!("writing {}", path.display()))
}

/// A dataset split named as `cifar10:test` or `DIR:train`.
pub fn parse_split(text: &str) -> Option<(PathBuf, Split)> {
    let (name, split) = text.rsplit_once(':')?;
    let split = match split {
        "train" => Split::Train,
        "test" => Split::Test,
        _ => return None,
    };
    let dir = match name {
        "cifar10" => PathBuf::from("datasets/cifar-10-batches-bin"),
        other => PathBuf::from(other),
    };
    Some((dir, split))
}

/// What `encode --codes` wrote.
#[derive(Debug, Serialize)]
pub struct CodesReport {
    pub output: PathBuf,
    /// `[N, L, h, w]`.
    pub shape: [usize; 4],
    pub vocabulary: i64,
    pub names: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<PathBuf>,
    pub seconds: f64,
}

impl fmt::Display for CodesReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [n, l, h, w] = self.shape;
        write!(
            f,
            "{}: codes of {n} images, ({n}, {l}, {h}, {w}), vocabulary {}; names in {}{} ({:.1} s)",
            self.output.display(),
            self.vocabulary,
            self.names.display(),
            match &self.labels {
                Some(l) => format!(", labels in {}", l.display()),
                None => String::new(),
            },
            self.seconds
        )
    }
}

/// `vq-cli encode --codes OUT INPUTS`: the codes of image files and folders, or of one dataset
/// split (`cifar10:train`, `DIR:test`, with its labels), as one array.
pub fn encode_to_array(
    session: &Session,
    inputs: &[PathBuf],
    search: &SearchArgs,
    out: &Path,
) -> Result<CodesReport> {
    ArrayFormat::of(out)?;
    let start = Instant::now();
    let ckpt = session.open()?;
    let search = search.code_search();
    super::files::check_search(&ckpt, search.as_ref())?;
    let codec = codec(&ckpt, session.device);
    let split = match inputs {
        [one] => one.to_str().and_then(parse_split),
        _ => None,
    };
    let (paths, labels, names): (Vec<PathBuf>, Option<Vec<i64>>, Vec<String>);
    let mut grids: Vec<CodeGrid> = Vec::new();
    let bar = session.bar(0, "images encoded");
    if let Some((dir, split)) = split {
        let set = vq_data::load_split(&dir, split, &Default::default()).with_context(|| {
            format!(
                "loading {}:{split} (CIFAR-10 comes from `cargo xtask download-cifar`)",
                dir.display()
            )
        })?;
        let n = set.len();
        bar.set_length(n as u64);
        let side = set.images.dim().2 as u32;
        for start in (0..n).step_by(CHUNK) {
            let images: Vec<image::RgbImage> = (start..(start + CHUNK).min(n))
                .map(|i| {
                    let px = &set.images;
                    image::RgbImage::from_fn(side, side, |x, y| {
                        let (x, y) = (x as usize, y as usize);
                        image::Rgb([px[[i, 0, y, x]], px[[i, 1, y, x]], px[[i, 2, y, x]]])
                    })
                })
                .collect();
            let refs: Vec<&image::RgbImage> = images.iter().collect();
            grids.extend(encode_grids(&codec, &refs, search.as_ref())?);
            bar.set_position(grids.len() as u64);
        }
        labels = Some(set.labels.iter().map(|&l| l as i64).collect());
        names = (0..n)
            .map(|i| format!("{}:{split}/{i:05}", dir.display()))
            .collect();
        paths = Vec::new();
    } else {
        let files = crate::collect_images(inputs)?;
        if files.is_empty() {
            bail!("no images found in the inputs");
        }
        bar.set_length(files.len() as u64);
        for chunk in files.chunks(CHUNK) {
            let loaded = load_images_at(chunk);
            let mut images = Vec::with_capacity(loaded.len());
            for (path, image) in chunk.iter().zip(loaded) {
                images.push(image.with_context(|| format!("reading {}", path.display()))?);
            }
            let refs: Vec<&image::RgbImage> = images.iter().map(|i| &i.rgb).collect();
            grids.extend(encode_grids(&codec, &refs, search.as_ref())?);
            bar.set_position(grids.len() as u64);
        }
        labels = None;
        names = files.iter().map(|p| p.display().to_string()).collect();
        paths = files;
    }
    bar.finish_and_clear();
    let first = grids.first().context("no images to encode")?;
    let shape = [
        grids.len(),
        first.depth as usize,
        first.height as usize,
        first.width as usize,
    ];
    if let Some(i) = grids
        .iter()
        .position(|g| (g.width, g.height) != (first.width, first.height))
    {
        bail!(
            "{} gives a {}×{} code grid, {} a {}×{} one: one array holds grids of one size (resize the images first)",
            names[0],
            first.width,
            first.height,
            names[i],
            grids[i].width,
            grids[i].height
        );
    }
    drop(paths);
    let array = CodeArray {
        shape,
        codes: grids
            .iter()
            .flat_map(|g| g.codes.iter().map(|&c| c as i64))
            .collect(),
        names,
        labels,
    };
    array.write(out)?;
    let (names_path, labels_path) = sidecars(out);
    let json = ArrayFormat::of(out)? == ArrayFormat::Json;
    Ok(CodesReport {
        output: out.to_path_buf(),
        shape,
        vocabulary: ckpt.config.code_space().vocabulary,
        names: if json { out.to_path_buf() } else { names_path },
        labels: match (&array.labels, json) {
            (Some(_), false) => Some(labels_path),
            (Some(_), true) => Some(out.to_path_buf()),
            (None, _) => None,
        },
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Each image's code grid, searched if asked.
fn encode_grids(
    codec: &crate::codec::Codec<'_>,
    images: &[&image::RgbImage],
    search: Option<&vq_model::CodeSearch>,
) -> Result<Vec<CodeGrid>> {
    let loaded: Vec<Result<crate::LoadedImage>> = images
        .iter()
        .map(|rgb| {
            Ok(crate::LoadedImage {
                rgb: (*rgb).clone(),
                colour: vq_codes::Colour::Rgb,
                had_alpha: false,
            })
        })
        .collect();
    Ok(encode_images(codec, &loaded, search, None, false)?
        .into_iter()
        .map(|g| g.expect("every image loaded"))
        .collect())
}

/// What `decode CODES.npy` wrote.
#[derive(Debug, Serialize)]
pub struct ImagesReport {
    pub input: PathBuf,
    pub output: PathBuf,
    pub images: usize,
    pub width: u32,
    pub height: u32,
    /// The VQ-VAE whose decoder drew them.
    pub decoder: String,
    pub seconds: f64,
}

impl fmt::Display for ImagesReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {}: {} images of {}×{}, decoded by {} ({:.1} s)",
            self.input.display(),
            self.output.display(),
            self.images,
            self.width,
            self.height,
            self.decoder,
            self.seconds
        )
    }
}

/// The file name an array's image `name` is written as: its last path part without its
/// extension, `.png`, made unique among the others by its index when it is not.
fn image_name(name: &str, index: usize, taken: &mut std::collections::HashSet<String>) -> String {
    let base = Path::new(name.rsplit(['/', ':']).next().unwrap_or(name))
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{index:05}"));
    let mut file = format!("{base}.png");
    if !taken.insert(file.clone()) {
        file = format!("{base}-{index:05}.png");
        taken.insert(file.clone());
    }
    file
}

/// `vq-cli decode CODES.npy -o DIR`: every grid of an array to `DIR/NAME.png`, by `decoder`.
pub fn decode_array(
    session: &Session,
    input: &Path,
    output: Option<&Path>,
    ckpt: &Checkpoint,
    decoder: &Checkpoint,
) -> Result<ImagesReport> {
    let start = Instant::now();
    let array = CodeArray::read(input)?;
    array.check(input, ckpt)?;
    let dir = match output {
        Some(dir) => dir.to_path_buf(),
        None => input.with_extension(""),
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the output folder {}", dir.display()))?;
    let [n, _, h, w] = array.shape;
    let f = ckpt.config.downsample as u32;
    let (width, height) = (w as u32 * f, h as u32 * f);
    let codec = codec(decoder, session.device);
    let bar = session.bar(n as u64, "images decoded");
    let mut taken = std::collections::HashSet::new();
    for chunk_start in (0..n).step_by(CHUNK) {
        let grids: Vec<CodeGrid> = (chunk_start..(chunk_start + CHUNK).min(n))
            .map(|i| array.grid(i))
            .collect();
        let refs: Vec<&CodeGrid> = grids.iter().collect();
        let images = codec.decode_batch(&refs, width, height);
        for (offset, img) in images.iter().enumerate() {
            let i = chunk_start + offset;
            let name = image_name(&array.names[i], i, &mut taken);
            let png = crate::codec::encode_png(img, vq_codes::Colour::Rgb)?;
            write_bytes(&dir.join(name), &png)?;
        }
        bar.set_position((chunk_start + grids.len()) as u64);
    }
    bar.finish_and_clear();
    Ok(ImagesReport {
        input: input.to_path_buf(),
        output: dir,
        images: n,
        width,
        height,
        decoder: decoder.origin(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Whether `path` names a code array rather than `.vqz` files.
pub fn is_array(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("npy") | Some("json")
    )
}
