//! # vqvae: VQ-VAE tokenizers in Rust
//!
//! The library behind `vq-cli`: open a VQ-VAE (the bundled CIFAR-10 model, or one trained with
//! `vq-train`), turn images into grids of token ids and back, draw new grids from a code prior,
//! compress images to `.vqz` files, save many images' token ids as one NumPy array, and
//! measure FID. It runs on LibTorch (CPU or CUDA); `cargo xtask setup` in the repository
//! installs it, and binaries find it by their rpath.
//!
//! ## Token ids in five lines
//!
//! ```
//! # fn main() -> Result<(), vqvae::Error> {
//! # let photo = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/picture.png");
//! let tokenizer = vqvae::Tokenizer::bundled()?;
//! let image = vqvae::read_image(photo)?;
//! let codes = tokenizer.encode(&image);
//! println!("{:?} codes: {:?}", codes.shape(), &codes.ids()[..8]);
//! let again = tokenizer.decode_to(&codes, image.width(), image.height());
//! # assert_eq!(again.dimensions(), image.dimensions());
//! # Ok(())
//! # }
//! ```
//!
//! A [`CodeGrid`] holds `depth` levels of `height` × `width` ids (one level unless the model
//! quantizes residuals), each below [`Tokenizer::vocabulary`]. A 32 × 32 image is 8 × 8 ids with
//! the bundled model (4× downsampling, 512 codes); an image of any other size is padded by its
//! edge pixels to a multiple of 4 and encoded in tiles that give the same ids as one pass.
//!
//! ## Many images as one array
//!
//! [`CodeArray`] is `(N, L, h, w)` ids, written as NumPy's `.npy` (what `numpy.load` and
//! `torch.from_numpy` read) with the images' names beside it:
//!
//! ```
//! # fn main() -> Result<(), vqvae::Error> {
//! let tokenizer = vqvae::Tokenizer::bundled()?;
//! let images: Vec<image::RgbImage> = (0..3)
//!     .map(|i| image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([(x * 8) as u8, (y * 8) as u8, i * 80])))
//!     .collect();
//! let grids = tokenizer.encode_all(&images.iter().collect::<Vec<_>>());
//! let names = vec!["a".to_string(), "b".to_string(), "c".to_string()];
//! let array = vqvae::CodeArray::from_grids(&grids, names, None)?;
//! let dir = tempfile::tempdir().unwrap();
//! array.write(&dir.path().join("codes.npy"))?;
//! let back = vqvae::CodeArray::read(&dir.path().join("codes.npy"))?;
//! assert_eq!((back.shape, back.grid(2)), ([3, 1, 8, 8], grids[2].clone()));
//! # Ok(())
//! # }
//! ```
//!
//! ## New images from a prior
//!
//! A [`Prior`] draws code grids (class-conditional for the bundled one); the tokenizer decodes
//! them, best with the sharp decoder ([`Decoder::Sharp`]):
//!
//! ```
//! # fn main() -> Result<(), vqvae::Error> {
//! let tokenizer = vqvae::Tokenizer::bundled()?.with_decoder(vqvae::Decoder::Sharp)?;
//! let prior = vqvae::Prior::bundled(&tokenizer)?;
//! let grids = prior.sample(4, prior.class("ship"), 0)?;
//! let pictures: Vec<image::RgbImage> = grids.iter().map(|g| tokenizer.decode(g)).collect();
//! assert_eq!(pictures.len(), 4);
//! # Ok(())
//! # }
//! ```
//!
//! ## Compressing a photo
//!
//! [`compress`] writes the bytes of a `.vqz` file arithmetic-coded with the prior, decodable
//! on any machine; [`decompress`] reads them back to the image `vq-cli reconstruct` makes:
//!
//! ```
//! # fn main() -> Result<(), vqvae::Error> {
//! # let photo = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/picture.png");
//! let tokenizer = vqvae::Tokenizer::bundled()?;
//! let prior = vqvae::Prior::bundled(&tokenizer)?;
//! let image = vqvae::read_image(photo)?;
//! let bytes = vqvae::compress(&tokenizer, &prior, &image)?;
//! let back = vqvae::decompress(&tokenizer, Some(&prior), &bytes)?;
//! assert_eq!(back.dimensions(), image.dimensions());
//! # Ok(())
//! # }
//! ```
//!
//! ## FID
//!
//! [`fid()`] compares two folders of images with the field's Inception network (installed by
//! `cargo xtask setup`); it takes minutes for thousands of images on a CPU.
//!
//! ## Errors
//!
//! Every fallible call returns [`Error`], which names the file or setting at fault.
//!
//! `examples/` holds whole programs: `encode_folder` (a folder to one `.npy` array),
//! `sample_grid` (a picture of samples), `compress_photo` (a photo to `.vqz` and back). Run
//! one with `cargo run --release -p vqvae --example encode_folder -- DIR out.npy`.

pub mod codec;
mod compress;
mod error;
mod fid;
pub mod files;
mod prior;
mod tokenizer;
mod tokens;

#[cfg(test)]
mod tests;

pub use codec::{CodeGrid, Codec, LoadedImage, Tiling};
pub use compress::{code_file, compress, decode_entropy, decompress, EntropyCoder};
pub use error::{Error, Result};
pub use fid::{fid, FidScore};
pub use prior::Prior;
pub use tch::Device;
pub use tokenizer::{Decoder, Tokenizer};
pub use tokens::{sidecars, ArrayFormat, CodeArray};
pub use vq_model::checkpoint::Checkpoint;
pub use vq_prior::SampleOptions;

/// Reads an image file of any format `vq-cli` reads (PNG, JPEG, GIF, BMP, TIFF, WebP, ...) as
/// RGB (transparency over white, gray as RGB).
pub fn read_image(path: impl AsRef<std::path::Path>) -> Result<image::RgbImage> {
    Ok(files::load_image(path.as_ref())?.rgb)
}
