//! Feature statistics: mean and covariance in f64, and a sample of the features for KID; saved
//! as a safetensors file so that a dataset split's statistics are computed once.

use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::{Device, Kind, Tensor};

use crate::{FidError, FEATURES};

/// How many features a statistics file keeps for KID (its subsets are of 1,000).
pub const KID_SAMPLE: i64 = 10_000;

/// What FID and KID need of a set of images.
#[derive(Debug)]
pub struct FeatureStats {
    /// Images behind the statistics.
    pub count: i64,
    /// `(D,)` f64 mean.
    pub mu: Tensor,
    /// `(D, D)` f64 covariance (unbiased, as numpy's `cov`).
    pub sigma: Tensor,
    /// `(M, D)` f32: up to [`KID_SAMPLE`] of the features (a seeded sample), for KID.
    pub sample: Tensor,
}

impl FeatureStats {
    /// Statistics of `(N, D)` features (N ≥ 2).
    pub fn from_features(features: &Tensor) -> Result<Self, FidError> {
        let size = features.size();
        if size.len() != 2 || size[0] < 2 {
            return Err(FidError::Invalid(format!(
                "statistics need at least 2 feature vectors, got shape {size:?}"
            )));
        }
        let n = size[0];
        let x = features.to_device(Device::Cpu).to_kind(Kind::Double);
        let mu = x.mean_dim(0, false, Kind::Double);
        let centred = &x - mu.unsqueeze(0);
        let sigma = centred.tr().matmul(&centred) / (n - 1) as f64;
        let sample = if n > KID_SAMPLE {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x6b_6964);
            let mut idx: Vec<i64> = (0..n).collect();
            idx.shuffle(&mut rng);
            idx.truncate(KID_SAMPLE as usize);
            idx.sort_unstable();
            features.index_select(0, &Tensor::from_slice(&idx))
        } else {
            features.shallow_clone()
        };
        Ok(FeatureStats {
            count: n,
            mu,
            sigma,
            sample: sample
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous(),
        })
    }

    /// Writes the statistics (atomically).
    pub fn save(&self, path: &Path) -> Result<(), FidError> {
        let count = Tensor::from_slice(&[self.count]);
        vq_store::weights::save_tensors(
            &[
                ("count", &count),
                ("mu", &self.mu),
                ("sigma", &self.sigma),
                ("sample", &self.sample),
            ],
            path,
        )?;
        Ok(())
    }

    /// Reads statistics written by [`FeatureStats::save`], checking their shapes and values.
    pub fn load(path: &Path) -> Result<Self, FidError> {
        let mut t = vq_store::weights::load_tensors(path)?;
        let bad = |reason: String| FidError::Unreadable {
            path: path.to_path_buf(),
            reason: format!("not a FID statistics file: {reason}"),
        };
        let mut take = |name: &str| t.remove(name).ok_or_else(|| bad(format!("no {name}")));
        let (count, mu, sigma, sample) =
            (take("count")?, take("mu")?, take("sigma")?, take("sample")?);
        if count.size() != [1] || count.kind() != Kind::Int64 {
            return Err(bad("count must be one integer".into()));
        }
        let d = FEATURES;
        if mu.size() != [d] || sigma.size() != [d, d] || sample.dim() != 2 || sample.size()[1] != d
        {
            return Err(bad(format!(
                "shapes mu {:?}, sigma {:?}, sample {:?} (expected [{d}], [{d}, {d}], [M, {d}])",
                mu.size(),
                sigma.size(),
                sample.size()
            )));
        }
        for (name, x) in [("mu", &mu), ("sigma", &sigma), ("sample", &sample)] {
            if x.isfinite().all().int64_value(&[]) != 1 {
                return Err(bad(format!("{name} holds NaN or infinite values")));
            }
        }
        Ok(FeatureStats {
            count: count.int64_value(&[0]),
            mu: mu.to_kind(Kind::Double),
            sigma: sigma.to_kind(Kind::Double),
            sample: sample.to_kind(Kind::Float),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_covariance_and_a_file_round_trip() {
        let _rng = vq_model::seeded(0);
        let x = Tensor::randn([50, FEATURES], (Kind::Float, Device::Cpu));
        let s = FeatureStats::from_features(&x).unwrap();
        assert_eq!(s.count, 50);
        let x64 = x.to_kind(Kind::Double);
        let mean0 = x64.select(1, 0).mean(Kind::Double).double_value(&[]);
        assert!((s.mu.double_value(&[0]) - mean0).abs() < 1e-12);
        // Unbiased variance of feature 3 and covariance of features 3 and 5.
        let (a, b) = (x64.select(1, 3), x64.select(1, 5));
        let (ma, mb) = (a.mean(Kind::Double), b.mean(Kind::Double));
        let var = (&a - &ma).square().sum(Kind::Double).double_value(&[]) / 49.0;
        let cov = ((&a - &ma) * (&b - &mb))
            .sum(Kind::Double)
            .double_value(&[])
            / 49.0;
        assert!((s.sigma.double_value(&[3, 3]) - var).abs() < 1e-10);
        assert!((s.sigma.double_value(&[3, 5]) - cov).abs() < 1e-10);
        assert!((s.sigma.double_value(&[5, 3]) - cov).abs() < 1e-10);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.fidstats");
        s.save(&path).unwrap();
        let back = FeatureStats::load(&path).unwrap();
        assert_eq!(back.count, 50);
        assert_eq!(back.mu, s.mu);
        assert_eq!(back.sigma, s.sigma);
        assert_eq!(back.sample, x);

        std::fs::write(&path, b"junk").unwrap();
        let err = FeatureStats::load(&path).unwrap_err().to_string();
        assert!(err.contains("s.fidstats"), "{err}");
        assert!(FeatureStats::from_features(&x.narrow(0, 0, 1)).is_err());
    }
}
