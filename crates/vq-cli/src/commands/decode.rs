//! `vq-cli decode`: `.vqz` code files to images.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tch::Device;
use vq_codes::CodeFile;

use super::files::*;
use crate::codec::{self};
use crate::session::Session;

/// `vq-cli decode`'s inputs and options.
#[derive(Debug, Clone, clap::Args)]
pub struct DecodeArgs {
    #[command(flatten)]
    pub files: FilesArgs,
    /// The prior of arithmetic-coded files [default: the bundled prior]
    #[arg(long)]
    pub prior: Option<PathBuf>,
    /// Decode only the first L levels of a residual code file (a coarser image at a lower
    /// rate) [default: all the file holds]
    #[arg(long)]
    pub levels: Option<usize>,
    /// Which bundled decoder draws the pixels: `plain` (the bundled model's own: a file decodes
    /// to exactly what `reconstruct` wrote) or `sharp` (models/cifar10-sharp, trained
    /// adversarially for the same codes). Not with --checkpoint [default: plain]
    #[arg(long, value_enum)]
    pub decoder: Option<crate::sampling::DecoderChoice>,
}

/// `vq-cli decode`: write each `.vqz` file's image as `NAME.decoded.png`.
pub fn run(session: &Session, args: &DecodeArgs) -> Result<Decoded> {
    let tokenizer = crate::sampling::open_decoder(
        session,
        args.decoder,
        crate::sampling::DecoderChoice::Plain,
    )?;
    let ckpt = tokenizer.checkpoint();
    if let [input] = args.files.inputs.as_slice() {
        if super::tokens::is_array(input) {
            if args.levels.is_some() {
                bail!("--levels applies to .vqz files; slice the array instead");
            }
            return Ok(Decoded::Array(super::tokens::decode_array(
                session,
                input,
                args.files.output.as_deref(),
                &tokenizer,
            )?));
        }
    }
    if args.levels == Some(0) {
        bail!("--levels must be at least 1");
    }
    // The priors opened so far, by the id the files name: many files coded with one prior
    // open it once.
    use std::collections::hash_map::{Entry, HashMap};
    let mut priors: HashMap<Vec<u8>, vqvae::EntropyCoder> = HashMap::new();
    each_input(session, &args.files, "decoded.png", |input, dest| {
        if !input.is_file() {
            bail!("{}: no such file", input.display());
        }
        let bytes = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
        let mut file = CodeFile::from_bytes(&bytes)
            .with_context(|| format!("{}: not a valid .vqz code file", input.display()))?;
        if file.width.max(file.height) > crate::MAX_IMAGE_SIDE {
            bail!(
                "{}: a {}×{} image, larger than vq-cli reads or writes (at most {} pixels a side)",
                input.display(),
                file.width,
                file.height,
                crate::MAX_IMAGE_SIDE
            );
        }
        crate::check_code_file(input, &file, ckpt)?;
        file.resolve_vocabulary(ckpt.config.code_space().vocabulary as u32);
        if let Some(prior_id) = file.entropy.as_ref().map(|c| c.prior_id.clone()) {
            if let Entry::Vacant(vacant) = priors.entry(prior_id.clone()) {
                let prior = match args.prior.as_deref() {
                    Some(path) => crate::prior::open_prior_on(Some(path), &tokenizer, Device::Cpu),
                    None => vqvae::Prior::bundled_coded_as(&tokenizer, &prior_id)
                        .context("opening the bundled prior"),
                }
                .with_context(|| format!("{}: arithmetic-coded with a prior", input.display()))?;
                let opened = prior.checkpoint();
                if !opened.model_id.starts_with(&prior_id) {
                    bail!(
                        "{}: coded with prior {}, but {} is prior {}; decode it with the prior that encoded it (--prior)",
                        input.display(),
                        vq_store::hex(&prior_id),
                        opened.origin(),
                        vq_store::hex(&opened.model_id[..prior_id.len()])
                    );
                }
                vacant.insert(prior.into_coder());
            }
            vqvae::decode_entropy(input, &mut file, &priors[&prior_id])?;
        }
        if let Some(levels) = args.levels {
            if levels > file.depth() {
                bail!(
                    "{}: --levels {levels}, but the file holds {} level(s)",
                    input.display(),
                    file.depth()
                );
            }
            file.truncate_levels(levels);
        }
        let grid = crate::CodeGrid {
            width: file.grid_width,
            height: file.grid_height,
            depth: file.depth() as u32,
            codes: file.codes.clone(),
        };
        let img = tokenizer.decode_to(&grid, file.width, file.height);
        write_file(dest, &codec::encode_png(&img, file.colour)?)?;
        // A decoded file reports its files and size.
        Ok(FileHead::new(input, dest, file.width, file.height))
    })
    .map(Decoded::Files)
}

/// What `decode` did: `.vqz` files, or an array of codes.
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
pub enum Decoded {
    Files(FilesReport),
    Array(super::tokens::ImagesReport),
}

impl Decoded {
    /// Worth printing after the files' own lines (an array's report is the only one).
    pub fn is_summary(&self) -> bool {
        match self {
            Decoded::Files(f) => f.is_summary(),
            Decoded::Array(_) => true,
        }
    }
}

impl std::fmt::Display for Decoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decoded::Files(r) => r.fmt(f),
            Decoded::Array(r) => r.fmt(f),
        }
    }
}
