//! Opening the code prior: one given by path, or the bundled one, checked against the VQ-VAE.

use std::path::Path;

use anyhow::{Context, Result};
use tch::Device;
use vq_prior::PriorCheckpoint;
use vq_store::Source;

use crate::session::Session;

/// The prior for `--samples`: the one given, or the bundled one, checked against the VQ-VAE.
pub fn open_prior(
    session: &Session,
    path: Option<&Path>,
    ckpt: &vq_model::Checkpoint,
) -> Result<PriorCheckpoint> {
    open_prior_on(path, ckpt, session.device)
}

/// [`open_prior`] on `device`.
pub fn open_prior_on(
    path: Option<&Path>,
    ckpt: &vq_model::Checkpoint,
    device: tch::Device,
) -> Result<PriorCheckpoint> {
    let source = match path {
        Some(p) => Source::Path(p),
        None => Source::Bundled(&vq_prior::BUNDLED),
    };
    PriorCheckpoint::open_for(
        source,
        &ckpt.origin(),
        &vq_store::hex(&ckpt.codes_id()),
        device,
    )
    .context("opening the prior (train one with `vq-train prior`)")
}

/// The bundled prior whose id begins with `prior_id` (a coded file's record of its prior): the
/// current one, else a retired one (`vq_prior::RETIRED`); the current one when none matches, so
/// that the caller's mismatch error names it.
pub fn open_bundled_prior_coded_as(
    ckpt: &vq_model::Checkpoint,
    prior_id: &[u8],
) -> Result<PriorCheckpoint> {
    let current = open_prior_on(None, ckpt, Device::Cpu)?;
    if current.model_id.starts_with(prior_id) {
        return Ok(current);
    }
    for retired in vq_prior::RETIRED {
        let prior = PriorCheckpoint::open_for(
            Source::Bundled(retired),
            &ckpt.origin(),
            &vq_store::hex(&ckpt.codes_id()),
            Device::Cpu,
        );
        // A retired prior of another VQ-VAE is not this file's.
        if let Ok(prior) = prior {
            if prior.model_id.starts_with(prior_id) {
                return Ok(prior);
            }
        }
    }
    Ok(current)
}
