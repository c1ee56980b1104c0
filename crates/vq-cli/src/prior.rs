//! Opening the code prior: one given by path, or the bundled one, checked against the VQ-VAE
//! (through the library's [`vqvae::Prior`]).

use std::path::Path;

use anyhow::{Context, Result};
use vqvae::{Prior, Tokenizer};

use crate::session::Session;

/// The prior for `--samples`: the one given, or the bundled one, checked against the VQ-VAE.
pub fn open_prior(session: &Session, path: Option<&Path>, tokenizer: &Tokenizer) -> Result<Prior> {
    open_prior_on(path, tokenizer, session.device)
}

/// [`open_prior`] on `device`.
pub fn open_prior_on(
    path: Option<&Path>,
    tokenizer: &Tokenizer,
    device: tch::Device,
) -> Result<Prior> {
    Prior::open_or_bundled(path, tokenizer, device)
        .context("opening the prior (train one with `vq-train prior`)")
}
