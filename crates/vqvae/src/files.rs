//! Image files in and out, and `.vqz` files made from code grids: what encoding and decoding
//! need around the networks.

use std::path::{Path, PathBuf};

use image::RgbImage;
use tch::{Kind, Tensor};
use vq_codes::{CodeFile, Colour};

use crate::codec::{CodeGrid, LoadedImage};
use vq_model::checkpoint::Checkpoint;

pub use vq_data::image_file::{ImageFileError as InputError, IMAGE_EXTENSIONS, MAX_IMAGE_SIDE};

/// Reads an image file: format from its content, size checked from the header before decoding
/// (see [`vq_data::image_file::read_image`]).
pub fn load_image(path: &Path) -> Result<LoadedImage, InputError> {
    let img = vq_data::image_file::read_image(path)?;
    Ok(LoadedImage {
        rgb: img.rgb,
        colour: if img.gray { Colour::Gray } else { Colour::Rgb },
        had_alpha: img.had_alpha,
    })
}

/// PSNR (dB, on `[0, 1]` pixels) and SSIM of `output` against `original`; SSIM needs at least
/// 11 pixels a side (its window) and is `None` below that.
pub fn compare(original: &RgbImage, output: &RgbImage) -> (f64, Option<f64>) {
    compare_batch(&[original], &[output])
        .pop()
        .expect("one figure pair per image")
}

/// [`compare`] for pairs of images all of one size, in one pass of tensor arithmetic.
///
/// # Panics
/// If the images differ in size or the slices in length.
pub fn compare_batch(originals: &[&RgbImage], outputs: &[&RgbImage]) -> Vec<(f64, Option<f64>)> {
    assert_eq!(originals.len(), outputs.len());
    let Some(first) = originals.first() else {
        return Vec::new();
    };
    let (w, h) = first.dimensions();
    assert!(
        originals
            .iter()
            .chain(outputs)
            .all(|i| i.dimensions() == (w, h)),
        "compare_batch takes images of one size"
    );
    let _guard = tch::no_grad_guard();
    let to_tensor = |imgs: &[&RgbImage]| {
        let bytes: Vec<u8> = imgs
            .iter()
            .flat_map(|i| i.as_raw().iter().copied())
            .collect();
        Tensor::from_slice(&bytes)
            .view([imgs.len() as i64, h as i64, w as i64, 3])
            .permute([0, 3, 1, 2])
            .to_kind(Kind::Float)
            / 255.0
    };
    let (a, b) = (to_tensor(originals), to_tensor(outputs));
    let mse = (&a - &b)
        .square()
        .flatten(1, -1)
        .mean_dim(1, false, Kind::Double);
    let psnr =
        Vec::<f64>::try_from(mse.clamp_min(1e-10).log10() * -10.0).expect("a CPU f64 tensor");
    let ssim: Vec<Option<f64>> = if w >= 11 && h >= 11 {
        Vec::<f64>::try_from(vq_model::ssim_per_image(&b, &a).to_kind(Kind::Double))
            .expect("a CPU f64 tensor")
            .into_iter()
            .map(Some)
            .collect()
    } else {
        vec![None; originals.len()]
    };
    psnr.into_iter().zip(ssim).collect()
}

/// The `.vqz` file for `grid`, made by `checkpoint` from a `width` × `height` image.
pub fn code_file(
    checkpoint: &Checkpoint,
    grid: &CodeGrid,
    width: u32,
    height: u32,
    colour: Colour,
) -> Result<CodeFile, CodeFileMismatch> {
    let space = checkpoint.config.code_space();
    if grid.depth as i64 != space.depth || grid.depth as usize > vq_codes::MAX_DEPTH {
        return Err(CodeFileMismatch::Depth(grid.depth));
    }
    Ok(CodeFile {
        version: vq_codes::VERSION,
        // A fine-tuned decoder writes the files of the model whose codes it shares.
        model_id: checkpoint.codes_id()[..vq_codes::v3::MODEL_ID_LEN].to_vec(),
        colour,
        downsample: checkpoint.config.downsample as u8,
        width,
        height,
        grid_width: grid.width,
        grid_height: grid.height,
        vocabularies: vec![space.vocabulary as u32; grid.depth as usize],
        codes: grid.codes.clone(),
        entropy: None,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum CodeFileMismatch {
    #[error("{file}: made by model {file_model}, but the checkpoint {checkpoint} is model {checkpoint_model}; decode it with the checkpoint that encoded it (--checkpoint)")]
    OtherModel {
        file: PathBuf,
        file_model: String,
        checkpoint: String,
        checkpoint_model: String,
    },
    #[error("codes of depth {0} do not fit this model or a .vqz file (1 to 64 levels)")]
    Depth(u32),
    #[error("{file}: holds {file_depth} levels of codes, more than this model's {model_depth}")]
    TooDeep {
        file: PathBuf,
        file_depth: usize,
        model_depth: i64,
    },
    #[error("{file}: codes of a {file_factor}× downsampling model, but this model downsamples {model_factor}×")]
    Downsampling {
        file: PathBuf,
        file_factor: u8,
        model_factor: i64,
    },
}

/// Refuses a code file made by another model.
pub fn check_code_file(
    path: &Path,
    file: &CodeFile,
    checkpoint: &Checkpoint,
) -> Result<(), CodeFileMismatch> {
    // Version 3 keeps the id's first bytes; its entropy-coded files name only the prior, which
    // is opened for this model's codes or refused.
    let named_by_prior = file.version >= 3 && file.entropy.is_some();
    if !named_by_prior
        && (file.model_id.is_empty() || !checkpoint.codes_id().starts_with(&file.model_id))
    {
        return Err(CodeFileMismatch::OtherModel {
            file: path.to_path_buf(),
            file_model: vq_store::hex(&file.model_id),
            checkpoint: checkpoint.origin(),
            checkpoint_model: vq_store::hex(&checkpoint.codes_id()),
        });
    }
    // Same weights imply the same K and downsampling. A file may hold fewer levels than the
    // model (a residual file cut to a lower rate), never more.
    // A version-3 entropy-coded file's model is known only through its prior: its grid must
    // at least be this model's.
    if file.downsample as i64 != checkpoint.config.downsample {
        return Err(CodeFileMismatch::Downsampling {
            file: path.to_path_buf(),
            file_factor: file.downsample,
            model_factor: checkpoint.config.downsample,
        });
    }
    // (An entropy-coded version-3 file takes the model's vocabulary once its prior is opened.)
    debug_assert!(
        file.vocabularies.is_empty()
            || file.codebook_size() as i64 == checkpoint.config.code_space().vocabulary
    );
    let model_depth = checkpoint.config.code_space().depth;
    if file.depth() as i64 > model_depth {
        return Err(CodeFileMismatch::TooDeep {
            file: path.to_path_buf(),
            file_depth: file.depth(),
            model_depth,
        });
    }
    Ok(())
}

/// An input file, and where under the folder it was found in it lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub path: PathBuf,
    /// Its folder relative to the folder argument that it was found under (`a/b` for
    /// `DIR/a/b/x.png` from `DIR`); empty for a file given directly. An output folder mirrors
    /// it, so that `DIR/a/x.png` and `DIR/b/x.png` do not write the same output.
    pub sub: PathBuf,
}

/// Collects the images to process: files as given, folders searched recursively for image
/// extensions (skipping this tool's own `.recon.png` outputs).
pub fn collect_inputs(paths: &[PathBuf]) -> Result<Vec<Input>, InputError> {
    let mut out = Vec::new();
    for path in paths {
        let found = collect(std::slice::from_ref(path), true)?;
        for file in found {
            let sub = if path.is_dir() {
                file.parent()
                    .and_then(|p| p.strip_prefix(path).ok())
                    .map(Path::to_path_buf)
                    .unwrap_or_default()
            } else {
                PathBuf::new()
            };
            out.push(Input { path: file, sub });
        }
    }
    Ok(out)
}

/// Every image in the folders (recursively) and the files given, sorted by path within each
/// folder: what FID measures.
pub fn collect_images(paths: &[PathBuf]) -> Result<Vec<PathBuf>, InputError> {
    collect(paths, false)
}

fn collect(paths: &[PathBuf], skip_outputs: bool) -> Result<Vec<PathBuf>, InputError> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found = Vec::new();
            walk(path, skip_outputs, &mut found)?;
            found.sort();
            out.extend(found);
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, skip_outputs: bool, out: &mut Vec<PathBuf>) -> Result<(), InputError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| InputError::Unreadable(dir.to_path_buf(), e.to_string()))?;
    for entry in entries {
        let path = entry
            .map_err(|e| InputError::Unreadable(dir.to_path_buf(), e.to_string()))?
            .path();
        if path.is_dir() {
            walk(&path, skip_outputs, out)?;
            continue;
        }
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_lowercase();
        let is_image = path
            .extension()
            .map(|e| IMAGE_EXTENSIONS.contains(&e.to_string_lossy().to_lowercase().as_str()))
            .unwrap_or(false);
        if is_image && !(skip_outputs && name.ends_with(".recon.png")) {
            out.push(path);
        }
    }
    Ok(())
}

/// `dir/SUB/NAME.suffix` for input `NAME.ext` found in sub-folder `SUB` (beside the input
/// when `dir` is `None`).
pub fn output_path(input: &Input, dir: Option<&Path>, suffix: &str) -> PathBuf {
    let stem = input.path.file_stem().unwrap_or_default().to_string_lossy();
    let name = format!("{stem}.{suffix}");
    match dir {
        Some(d) => d.join(&input.sub).join(name),
        None => input.path.with_file_name(name),
    }
}

/// Whether `a` and `b` name the same file (both must exist to be the same).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}
