//! The logic behind `vq-cli`: its commands and their reports, reading images, tiled encoding
//! and decoding, and the `.vqz` files.

pub mod commands;
pub mod prior;
pub mod report;
pub mod sampling;
pub mod session;

pub use vq_model::checkpoint::{self, Checkpoint};
pub use vqvae::codec::{self, CodeGrid, Codec, LoadedImage, Tiling};
pub use vqvae::files::*;
