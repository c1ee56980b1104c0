//! The Fréchet distance between two Gaussians, and the kernel inception distance.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::{Kind, Tensor};
pub use vq_report::Kid;

use crate::stats::FeatureStats;
use crate::FidError;

/// `A^½` of a symmetric positive semi-definite `A` (negative eigenvalues from rounding count as
/// zero).
fn psd_sqrt(a: &Tensor) -> Tensor {
    let (values, vectors) = a.linalg_eigh("L");
    let roots = values.clamp_min(0.0).sqrt();
    (&vectors * roots.unsqueeze(0)).matmul(&vectors.tr())
}

/// FID: `‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½)`, in f64.
///
/// `Tr((Σ₁Σ₂)^½)` is computed as the sum of the square roots of the eigenvalues of the symmetric
/// `Σ₁^½ Σ₂ Σ₁^½`, which has the same eigenvalues as `Σ₁Σ₂` (scipy's `sqrtm` of the product,
/// which pytorch-fid uses, reaches the same trace by a Schur decomposition).
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> Result<f64, FidError> {
    if a.mu.size() != b.mu.size() {
        return Err(FidError::Invalid(format!(
            "feature sizes differ: {:?} and {:?}",
            a.mu.size(),
            b.mu.size()
        )));
    }
    let (s1, s2) = (a.sigma.to_kind(Kind::Double), b.sigma.to_kind(Kind::Double));
    let mean_term = (&a.mu - &b.mu).square().sum(Kind::Double).double_value(&[]);
    let root1 = psd_sqrt(&s1);
    let inner = root1.matmul(&s2).matmul(&root1);
    // Symmetrise away rounding before the eigen-solver.
    let inner = (&inner + inner.tr()) / 2.0;
    let tr_sqrt = inner
        .linalg_eigvalsh("L")
        .clamp_min(0.0)
        .sqrt()
        .sum(Kind::Double)
        .double_value(&[]);
    let trace = |s: &Tensor| s.trace().double_value(&[]);
    Ok(mean_term + trace(&s1) + trace(&s2) - 2.0 * tr_sqrt)
}

/// KID (Bińkowski et al., 2018, as torch-fidelity and clean-fid compute it): the unbiased MMD²
/// with the kernel `k(x, y) = (x·y / d + 1)³`, averaged over `subsets` random subsets of
/// `subset_size` features from each side (the subset shrinks to the smaller side when needed).
pub fn kernel_inception_distance(
    a: &Tensor,
    b: &Tensor,
    subsets: usize,
    subset_size: usize,
    seed: u64,
) -> Result<Kid, FidError> {
    let (na, nb) = (a.size()[0], b.size()[0]);
    let m = (subset_size as i64).min(na).min(nb);
    if m < 2 {
        return Err(FidError::Invalid(format!(
            "KID needs at least 2 feature vectors on each side, got {na} and {nb}"
        )));
    }
    let d = a.size()[1] as f64;
    let a = a.to_kind(Kind::Double);
    let b = b.to_kind(Kind::Double);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut pick = |n: i64| {
        let mut idx: Vec<i64> = (0..n).collect();
        idx.shuffle(&mut rng);
        idx.truncate(m as usize);
        Tensor::from_slice(&idx)
    };
    let kernel = |x: &Tensor, y: &Tensor| (x.matmul(&y.tr()) / d + 1.0).pow_tensor_scalar(3);
    let mut values = Vec::with_capacity(subsets);
    for _ in 0..subsets.max(1) {
        let x = a.index_select(0, &pick(na));
        let y = b.index_select(0, &pick(nb));
        let (kxx, kyy, kxy) = (kernel(&x, &x), kernel(&y, &y), kernel(&x, &y));
        let off_diagonal = |k: &Tensor| {
            (k.sum(Kind::Double) - k.diagonal(0, 0, 1).sum(Kind::Double)).double_value(&[])
        };
        let mf = m as f64;
        let mmd = (off_diagonal(&kxx) + off_diagonal(&kyy)) / (mf * (mf - 1.0))
            - 2.0 * kxy.sum(Kind::Double).double_value(&[]) / (mf * mf);
        values.push(mmd);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    Ok(Kid {
        mean,
        std,
        subsets: values.len(),
        subset_size: m as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn stats(mu: Vec<f64>, sigma: Tensor) -> FeatureStats {
        FeatureStats {
            count: 100,
            mu: Tensor::from_slice(&mu),
            sigma,
            sample: Tensor::zeros([1, 1], (Kind::Float, Device::Cpu)),
        }
    }

    #[test]
    fn a_set_against_itself_is_zero() {
        let _rng = vq_model::seeded(0);
        let x = Tensor::randn([300, 16], (Kind::Float, Device::Cpu)) * 0.3 + 0.1;
        let s = FeatureStats::from_features(&x).unwrap();
        let fid = frechet_distance(&s, &s).unwrap();
        assert!(fid.abs() < 1e-8, "{fid}");
    }

    #[test]
    fn known_gaussians_give_the_known_distance() {
        let _rng = vq_model::seeded(0);
        // Diagonal covariances: FID = ‖μ₁ − μ₂‖² + Σ (√a − √b)².
        let d = 64;
        let a: Vec<f64> = (0..d).map(|i| 0.5 + i as f64 * 0.01).collect();
        let b: Vec<f64> = (0..d).map(|i| 1.5 - i as f64 * 0.005).collect();
        let mu1: Vec<f64> = (0..d).map(|i| (i as f64).sin()).collect();
        let mu2: Vec<f64> = (0..d).map(|i| (i as f64).cos()).collect();
        let expected: f64 = mu1
            .iter()
            .zip(&mu2)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f64>()
            + a.iter()
                .zip(&b)
                .map(|(x, y)| (x.sqrt() - y.sqrt()).powi(2))
                .sum::<f64>();
        let diag = |v: &[f64]| Tensor::from_slice(v).diag(0);
        let s1 = stats(mu1, diag(&a));
        let s2 = stats(mu2, diag(&b));
        let fid = frechet_distance(&s1, &s2).unwrap();
        assert!(
            (fid - expected).abs() < 1e-9 * expected.max(1.0),
            "{fid} vs {expected}"
        );
        // A rotated pair: the same distance whatever the basis.
        let q = Tensor::linalg_qr(
            &Tensor::randn([d, d], (Kind::Double, Device::Cpu)),
            "reduced",
        )
        .0;
        let rot = |s: &FeatureStats| {
            stats(
                Vec::<f64>::try_from(q.matmul(&s.mu)).unwrap(),
                q.matmul(&s.sigma).matmul(&q.tr()),
            )
        };
        let fid_rot = frechet_distance(&rot(&s1), &rot(&s2)).unwrap();
        assert!(
            (fid_rot - expected).abs() < 1e-8 * expected.max(1.0),
            "{fid_rot}"
        );
    }

    #[test]
    fn kid_is_near_zero_for_one_distribution_and_grows_with_a_shift() {
        let _rng = vq_model::seeded(1);
        let x = Tensor::randn([2000, 32], (Kind::Float, Device::Cpu));
        let y = Tensor::randn([2000, 32], (Kind::Float, Device::Cpu));
        let same = kernel_inception_distance(&x, &y, 20, 500, 0).unwrap();
        assert!(same.mean.abs() < 3.0 * same.std.max(1e-3), "{same:?}");
        let shifted = kernel_inception_distance(&x, &(&y + 0.5), 20, 500, 0).unwrap();
        assert!(
            shifted.mean > 10.0 * same.mean.abs().max(1e-4),
            "{shifted:?} vs {same:?}"
        );
        assert_eq!((shifted.subsets, shifted.subset_size), (20, 500));
        // The same seed gives the same subsets.
        assert_eq!(
            kernel_inception_distance(&x, &y, 5, 100, 3).unwrap(),
            kernel_inception_distance(&x, &y, 5, 100, 3).unwrap()
        );
        assert!(kernel_inception_distance(&x.narrow(0, 0, 1), &y, 5, 100, 3).is_err());
    }
}
