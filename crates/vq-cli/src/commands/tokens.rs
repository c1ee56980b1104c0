//! Tokens out and in: the codes of many images as one `(N, L, h, w)` integer array in NumPy's
//! `.npy` format (or JSON), with the images' names (and a dataset split's labels) beside it,
//! and such an array decoded back to images. `vq-cli encode --codes` and `vq-cli decode A.npy`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use vq_data::Split;
use vqvae::Tokenizer;

use super::files::{encode_images, load_images_at, SearchArgs};
use crate::codec::CodeGrid;
use crate::session::Session;
pub use vqvae::{sidecars, ArrayFormat, CodeArray};

/// Inputs per network pass when encoding a dataset split or a list of images.
const CHUNK: usize = 1024;

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
    let tokenizer = session.tokenizer()?;
    let ckpt = tokenizer.checkpoint();
    let search = search.code_search();
    super::files::check_search(ckpt, search.as_ref())?;
    let codec = tokenizer.codec();
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
    drop(paths);
    let array = CodeArray::from_grids(&grids, names, labels)?;
    let shape = array.shape;
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
    tokenizer: &Tokenizer,
) -> Result<ImagesReport> {
    let ckpt = tokenizer.checkpoint();
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
    let f = ckpt.config.downsample as usize;
    if h.max(w) * f > crate::MAX_IMAGE_SIDE as usize {
        bail!(
            "{}: {h}×{w} code grids make images larger than vq-cli writes (at most {} pixels a side)",
            input.display(),
            crate::MAX_IMAGE_SIDE
        );
    }
    let (width, height) = ((w * f) as u32, (h * f) as u32);
    let codec = tokenizer.decoding_codec();
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
            let path = dir.join(name);
            vq_data::write_atomic(&path, |w| w.write_all(&png))
                .with_context(|| format!("writing {}", path.display()))?;
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
        decoder: tokenizer.decoding_checkpoint().origin(),
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
