//! FID and KID as the field computes them (TF Inception-v3 pool3 features, as pytorch-fid and
//! TTUR), between two sets of image files.

use std::path::Path;

use tch::Device;
use vq_fid::{FeatureStats, InceptionV3, Kid};

use crate::error::Result;

/// Fréchet inception distance and KID of two sets of images.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FidScore {
    pub fid: f64,
    pub kid: Kid,
    /// Images in each set.
    pub images: (usize, usize),
}

/// FID and KID between the images in folders (or files) `a` and `b`, with the Inception
/// network that `cargo xtask setup` installs (or `VQVAE_INCEPTION`). Minutes for thousands of
/// images on a CPU.
pub fn fid(a: &Path, b: &Path, device: Device) -> Result<FidScore> {
    let net = InceptionV3::load(&vq_fid::default_weights(), device)?;
    let features = |side: &Path| -> Result<tch::Tensor> {
        let files = crate::files::collect_images(&[side.to_path_buf()])?;
        Ok(vq_fid::files_features(&net, &files, &mut |_| {})?)
    };
    let (fa, fb) = (features(a)?, features(b)?);
    let (sa, sb) = (
        FeatureStats::from_features(&fa)?,
        FeatureStats::from_features(&fb)?,
    );
    let (na, nb) = (fa.size()[0] as usize, fb.size()[0] as usize);
    let subset = na.min(nb).min(1000);
    let kid = vq_fid::kernel_inception_distance(&sa.sample, &sb.sample, 100, subset, 0)?;
    Ok(FidScore {
        fid: vq_fid::frechet_distance(&sa, &sb)?,
        kid,
        images: (na, nb),
    })
}
