//! The feature network and its input pipeline.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tch::{CModule, Device, Kind, Tensor};

use crate::{FidError, WEIGHTS_SHA256};

/// Pool3 features per image.
pub const FEATURES: i64 = 2048;
/// The network's input side.
pub const INPUT_SIDE: i64 = 299;

/// Where `cargo xtask setup` keeps the network, unless `VQVAE_INCEPTION` says otherwise.
pub fn default_weights() -> PathBuf {
    match std::env::var_os("VQVAE_INCEPTION") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("VQ_LIBTORCH_HOME")).join("fid/default_1.pt"),
    }
}

/// Resizes `(N, C, H, W)` f32 images to `side` × `side` the way the TF / StyleGAN pipeline does
/// (NVIDIA's `nv_bilinear`, fid-helper's `nv_bilinear_float`): `grid_sample` on an affine grid
/// shifted so that output pixel `j` samples input coordinate `j · in / out` (TF's legacy
/// `resize_bilinear`), bilinear, edge pixels repeated at the border.
pub fn resize_bilinear(x: &Tensor, side: i64) -> Tensor {
    let size = x.size();
    let (n, c, h, w) = (size[0], size[1], size[2], size[3]);
    if h == side && w == side {
        return x.shallow_clone();
    }
    // The affine grid of the identity, shifted by half an input pixel minus half an output
    // pixel, as nv_bilinear builds it.
    let tx = 1.0 / w as f64 - 1.0 / side as f64;
    let ty = 1.0 / h as f64 - 1.0 / side as f64;
    let theta = Tensor::from_slice(&[1.0f32, 0.0, tx as f32, 0.0, 1.0, ty as f32])
        .view([1, 2, 3])
        .to_device(x.device())
        .to_kind(x.kind())
        .repeat([n, 1, 1]);
    let grid = Tensor::affine_grid_generator(&theta, [n, c, side, side], false);
    // 0: bilinear, 1: border padding.
    x.grid_sampler(&grid, 0, 1, false)
}

fn read(path: &Path) -> Result<Vec<u8>, FidError> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => FidError::MissingWeights(path.to_path_buf()),
        _ => FidError::Unreadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
    })
}

/// TF Inception-v3, pool3 output.
#[derive(Debug)]
pub struct InceptionV3 {
    module: CModule,
    device: Device,
    path: PathBuf,
}

impl InceptionV3 {
    /// Loads the network after checking its SHA-256.
    pub fn load(path: &Path, device: Device) -> Result<Self, FidError> {
        let bytes = read(path)?;
        let found: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if found != WEIGHTS_SHA256 {
            return Err(FidError::WrongWeights {
                path: path.to_path_buf(),
                found,
                expected: WEIGHTS_SHA256,
            });
        }
        Self::from_bytes(path, bytes, device)
    }

    /// Loads any TorchScript file of the same interface without the checksum: for timing a
    /// stand-in of the same graph (the GPU bundle carries one with zeroed weights, since the
    /// real file is too big to carry). Its features are not FID features.
    pub fn load_for_timing(path: &Path, device: Device) -> Result<Self, FidError> {
        Self::from_bytes(path, read(path)?, device)
    }

    fn from_bytes(path: &Path, bytes: Vec<u8>, device: Device) -> Result<Self, FidError> {
        let mut module = CModule::load_data_on_device(&mut std::io::Cursor::new(bytes), device)
            .map_err(|e| FidError::Unreadable {
                path: path.to_path_buf(),
                reason: e.to_string().lines().next().unwrap_or("").to_string(),
            })?;
        module.set_eval();
        Ok(InceptionV3 {
            module,
            device,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// `(N, 2048)` f32 features of `(N, 3, H, W)` images whose values are 8-bit pixels (`u8`, or
    /// floats in `[0, 255]`), any size.
    pub fn features(&self, images: &Tensor) -> Result<Tensor, FidError> {
        let size = images.size();
        if size.len() != 4 || size[1] != 3 {
            return Err(FidError::Invalid(format!(
                "images must be (N, 3, H, W), not {size:?}"
            )));
        }
        let _guard = tch::no_grad_guard();
        let x = images.to_device(self.device).to_kind(Kind::Float);
        let x = resize_bilinear(&x, INPUT_SIDE);
        // fid-helper's INPUT_RANGE_TF: [0, 1] mapped onto [−1, 0.9921875], i.e. (x − 128) / 128.
        let x = ((x / 255.0).clamp(0.0, 1.0) * 1.9921875 - 1.0).clamp(-1.0, 0.9921875);
        let out = self.module.forward_ts(&[x])?;
        let out = if out.dim() > 2 {
            out.flatten(2, -1).mean_dim(2, false, Kind::Float)
        } else {
            out
        };
        if out.size() != [size[0], FEATURES] {
            return Err(FidError::Invalid(format!(
                "{}: the network gave features of shape {:?}, expected [{}, {FEATURES}]",
                self.path.display(),
                out.size(),
                size[0]
            )));
        }
        Ok(out.to_device(Device::Cpu))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resizing_keeps_constants_and_matches_half_pixel_bilinear() {
        let _rng = vq_model::seeded(0);
        let x = Tensor::full([1, 3, 8, 8], 77.0, (Kind::Float, vq_model::test_device()));
        let y = resize_bilinear(&x, 20);
        assert_eq!(y.size(), vec![1, 3, 20, 20]);
        assert!((y - 77.0).abs().max().double_value(&[]) < 1e-4);
        // A horizontal ramp 0..7: output column j of 16 samples input coordinate j · 8 / 16,
        // the last ones clamped to the border.
        let ramp = Tensor::arange(8, (Kind::Float, vq_model::test_device()))
            .view([1, 1, 1, 8])
            .repeat([1, 1, 4, 1]);
        let y = resize_bilinear(&ramp, 16).get(0).get(0).get(0);
        for j in 0..16 {
            let expected = (j as f64 * 0.5).min(7.0);
            let got = y.double_value(&[j]);
            assert!(
                (got - expected).abs() < 1e-4,
                "column {j}: {got} vs {expected}"
            );
        }
        // The network's own size passes through untouched.
        let z = Tensor::rand([2, 3, 299, 299], (Kind::Float, vq_model::test_device()));
        assert_eq!(resize_bilinear(&z, 299), z);
    }

    #[test]
    fn missing_and_modified_weights_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("default_1.pt");
        let err = InceptionV3::load(&missing, vq_model::test_device()).unwrap_err();
        assert!(matches!(err, FidError::MissingWeights(_)), "{err}");
        assert!(
            err.to_string().contains("default_1.pt")
                && err.to_string().contains("cargo xtask setup")
        );
        std::fs::write(&missing, b"not a network").unwrap();
        let err = InceptionV3::load(&missing, vq_model::test_device())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("default_1.pt") && err.contains("SHA-256"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod network_tests {
    use super::*;

    /// The real network on a handful of images (`cargo xtask setup` installs it).
    #[test]
    fn the_network_gives_2048_features_per_image_of_any_size() {
        let _rng = vq_model::seeded(0);
        let net = InceptionV3::load(&default_weights(), vq_model::test_device()).unwrap();
        tch::manual_seed(0);
        let small =
            (Tensor::rand([3, 3, 32, 32], (Kind::Float, vq_model::test_device())) * 255.0).round();
        let f = net.features(&small).unwrap();
        assert_eq!(f.size(), vec![3, FEATURES]);
        assert_eq!(f.isfinite().all().int64_value(&[]), 1);
        // Pool3 features follow ReLUs: non-negative, and not all zero.
        assert!(f.min().double_value(&[]) >= 0.0);
        assert!(f.mean(Kind::Float).double_value(&[]) > 0.01);
        // Different images, different features; the same image, the same features, alone or
        // in a batch, as u8 or as floats.
        assert!((f.get(0) - f.get(1)).abs().max().double_value(&[]) > 1e-3);
        let alone = net
            .features(&small.narrow(0, 1, 1).to_kind(Kind::Uint8))
            .unwrap();
        let diff = (alone.get(0) - f.get(1)).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "{diff}");
        // Another size is resized to the network's.
        let wide =
            (Tensor::rand([1, 3, 40, 64], (Kind::Float, vq_model::test_device())) * 255.0).round();
        assert_eq!(net.features(&wide).unwrap().size(), vec![1, FEATURES]);
        assert!(net
            .features(&Tensor::zeros(
                [2, 1, 8, 8],
                (Kind::Float, vq_model::test_device())
            ))
            .is_err());
    }
}
