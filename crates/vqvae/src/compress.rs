//! `.vqz` files: code grids packed at ⌈log₂ K⌉ bits a code, or arithmetic-coded with a
//! transformer prior's probabilities (format 3, which decodes the same on every machine).

use std::path::Path;

use image::RgbImage;
use vq_codes::{CodeFile, Colour};
use vq_model::checkpoint::Checkpoint;
use vq_prior::portable::PortableTransformer;
use vq_prior::PriorCheckpoint;

use crate::codec::CodeGrid;
use crate::error::{Error, Result};

/// A prior that arithmetic-codes files: the checkpoint, and its portable forward pass (the
/// probabilities every machine computes the same).
pub struct EntropyCoder {
    pub prior: PriorCheckpoint,
    /// `None` for a PixelCNN prior: it decodes the version-2 files it coded, codes no new ones.
    pub portable: Option<PortableTransformer>,
}

impl std::fmt::Debug for EntropyCoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntropyCoder")
            .field("prior", &self.prior.origin())
            .field("portable", &self.portable.is_some())
            .finish()
    }
}

impl EntropyCoder {
    /// Wraps an opened prior.
    pub fn new(prior: PriorCheckpoint) -> Self {
        let portable = prior.model.portable();
        EntropyCoder { prior, portable }
    }
}

/// The `.vqz` file of `grid` (the codes of a `width` × `height` image by `checkpoint`),
/// arithmetic-coded with `coder` when given (the class the prior likes best is chosen and
/// recorded).
pub fn code_file(
    checkpoint: &Checkpoint,
    grid: &CodeGrid,
    width: u32,
    height: u32,
    colour: Colour,
    coder: Option<&EntropyCoder>,
) -> Result<CodeFile> {
    let mut file = crate::files::code_file(checkpoint, grid, width, height, colour)?;
    if let Some(coder) = coder {
        let portable = coder.portable.as_ref().ok_or_else(|| {
            Error::Invalid(format!(
                "{} is a PixelCNN prior, which has no portable forward pass for coding; use a transformer prior",
                coder.prior.origin()
            ))
        })?;
        if grid.depth != 1 {
            return Err(Error::Invalid(format!(
                "priors model one code per position; these codes have depth {}",
                grid.depth
            )));
        }
        let codes = vq_prior::entropy::Grid {
            width: grid.width as usize,
            height: grid.height as usize,
            codes: grid.codes.clone(),
        };
        let class = vq_prior::entropy::best_class(coder.prior.model.as_ref(), &codes);
        let payload = vq_prior::entropy::encode_portable(portable, &codes, class);
        // The prior names the model.
        file.model_id.clear();
        file.entropy = Some(vq_codes::EntropyCoding {
            prior_id: coder.prior.model_id[..vq_codes::v3::PRIOR_ID_LEN].to_vec(),
            class: None,
            codes_crc: vq_codes::v3::codes_check(&file.codes),
            payload,
        });
    }
    Ok(file)
}

/// Decodes the arithmetic-coded codes of `file` (read from `path`) with `coder` in place; the
/// file must name the coder's prior.
pub fn decode_entropy(path: &Path, file: &mut CodeFile, coder: &EntropyCoder) -> Result<()> {
    let Some(coding) = &file.entropy else {
        return Ok(());
    };
    if !coder.prior.model_id.starts_with(&coding.prior_id) {
        return Err(Error::Invalid(format!(
            "{}: coded with prior {}, but {} is prior {}; decode it with the prior that encoded it",
            path.display(),
            vq_store::hex(&coding.prior_id),
            coder.prior.origin(),
            vq_store::hex(&coder.prior.model_id[..coding.prior_id.len()])
        )));
    }
    let (width, height) = (file.grid_width as usize, file.grid_height as usize);
    let grid = if file.version >= 3 {
        let portable = coder.portable.as_ref().ok_or_else(|| {
            Error::Invalid(format!(
                "{}: coded with prior {}, which is a PixelCNN: version-3 files are coded by transformer priors only",
                path.display(),
                coder.prior.origin()
            ))
        })?;
        vq_prior::entropy::decode_portable(portable, &coding.payload, width, height).0
    } else {
        vq_prior::entropy::decode(
            coder.prior.model.as_ref(),
            &coding.payload,
            width,
            height,
            coding.class.map(i64::from),
        )
    };
    file.codes = grid.codes;
    file.validate().map_err(|source| Error::Vqz {
        path: path.to_path_buf(),
        source,
    })
}

/// Compresses `image` to the bytes of a `.vqz` file: its codes by `tokenizer`, arithmetic-coded
/// with `prior`.
pub fn compress(
    tokenizer: &crate::Tokenizer,
    prior: &crate::Prior,
    image: &RgbImage,
) -> Result<Vec<u8>> {
    let grid = tokenizer.encode(image);
    let file = code_file(
        tokenizer.checkpoint(),
        &grid,
        image.width(),
        image.height(),
        Colour::Rgb,
        Some(prior.coder()),
    )?;
    file.to_bytes().map_err(|source| Error::Vqz {
        path: "(the new file)".into(),
        source,
    })
}

/// The image of `.vqz` bytes (packed, or arithmetic-coded with `prior`), decoded by
/// `tokenizer` at the size the file records.
pub fn decompress(
    tokenizer: &crate::Tokenizer,
    prior: Option<&crate::Prior>,
    bytes: &[u8],
) -> Result<RgbImage> {
    let path = Path::new("(the .vqz bytes)");
    let mut file = CodeFile::from_bytes(bytes).map_err(|source| Error::Vqz {
        path: path.to_path_buf(),
        source,
    })?;
    let ckpt = tokenizer.checkpoint();
    crate::files::check_code_file(path, &file, ckpt)?;
    file.resolve_vocabulary(ckpt.config.code_space().vocabulary as u32);
    if file.entropy.is_some() {
        let prior = prior.ok_or_else(|| {
            Error::Invalid("an arithmetic-coded file: decompress it with its prior".into())
        })?;
        decode_entropy(path, &mut file, prior.coder())?;
    }
    let grid = CodeGrid {
        width: file.grid_width,
        height: file.grid_height,
        depth: file.depth() as u32,
        codes: file.codes.clone(),
    };
    Ok(tokenizer.decode_to(&grid, file.width, file.height))
}
