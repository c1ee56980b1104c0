//! The focal frequency loss (Jiang et al., ICCV 2021): the squared error between the 2-D
//! Fourier spectra of the reconstructions and of the images, each frequency weighted by its own
//! error (raised to `alpha`, divided by the largest of its image and channel, not
//! differentiated). A pixel loss spends its gradient where errors are largest in pixel terms,
//! which for a blurry decoder leaves the weak high frequencies unlearned; this weighting moves
//! the effort to the frequencies the decoder gets most wrong, without a network of its own.

use tch::{Kind, Tensor};

/// `mean(w · |F(recon) − F(target)|²)` over images, channels and frequencies, with `F` the
/// orthonormal 2-D FFT over the last two axes and `w = (|F(recon) − F(target)| ^ alpha) / max`
/// (per image and channel, in [0, 1], detached). With `alpha = 0` every weight is 1 and the
/// loss is the mean squared error itself (Parseval).
pub fn focal_frequency_loss(recon: &Tensor, target: &Tensor, alpha: f64) -> Tensor {
    let spectrum = |x: &Tensor| {
        x.to_kind(Kind::Float)
            .fft_fft2(None::<&[i64]>, [-2i64, -1].as_slice(), "ortho")
    };
    let diff = spectrum(recon) - spectrum(target);
    let distance = diff.abs().square();
    let weight = {
        let _guard = tch::no_grad_guard();
        let magnitude = distance.sqrt().pow_tensor_scalar(alpha);
        let peak = magnitude.amax([-2i64, -1].as_slice(), true);
        // A channel reconstructed exactly has peak 0: its weights are 0, not NaN.
        (magnitude / peak.clamp_min(1e-12)).clamp(0.0, 1.0)
    };
    (weight * distance).mean(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Reduction};

    fn images(seed: i64) -> Tensor {
        tch::manual_seed(seed);
        Tensor::rand([2, 3, 8, 8], (Kind::Float, Device::Cpu))
    }

    #[test]
    fn with_alpha_zero_it_is_the_mean_squared_error() {
        let _rng = crate::seeded(0);
        let (a, b) = (images(1), images(2));
        let ffl = focal_frequency_loss(&a, &b, 0.0).double_value(&[]);
        let mse = a.mse_loss(&b, Reduction::Mean).double_value(&[]);
        assert!((ffl - mse).abs() < 1e-6 * mse, "{ffl} vs {mse}");
    }

    #[test]
    fn zero_for_equal_images_and_weights_lower_the_loss_below_the_mse() {
        let _rng = crate::seeded(0);
        let a = images(3);
        assert_eq!(focal_frequency_loss(&a, &a, 1.0).double_value(&[]), 0.0);
        let b = images(4);
        let ffl = focal_frequency_loss(&a, &b, 1.0).double_value(&[]);
        let mse = a.mse_loss(&b, Reduction::Mean).double_value(&[]);
        assert!(ffl > 0.0 && ffl < mse, "{ffl} vs {mse}");
    }

    #[test]
    fn the_gradient_favours_the_frequency_that_is_most_wrong() {
        // The target is a flat image plus a checkerboard (the highest frequency); the
        // reconstruction misses most of the checkerboard and a little of the mean.
        let signs: Vec<f32> = (0..64)
            .map(|i| if (i / 8 + i % 8) % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let checker = Tensor::from_slice(&signs).view([1, 1, 8, 8]);
        let target = &checker * 0.5 + 0.5;
        let recon = (&checker * 0.1 + 0.45).set_requires_grad(true);
        let focal = focal_frequency_loss(&recon, &target, 1.0);
        let focal_grad = Tensor::run_backward(&[&focal], &[&recon], false, false).remove(0);
        let plain = focal_frequency_loss(&recon, &target, 0.0);
        let plain_grad = Tensor::run_backward(&[&plain], &[&recon], false, false).remove(0);
        // Projections of the gradients on the checkerboard and on the mean.
        let on = |g: &Tensor, x: &Tensor| (g * x).sum(Kind::Float).double_value(&[]).abs();
        let ones = Tensor::ones_like(&target);
        let focal_ratio = on(&focal_grad, &checker) / on(&focal_grad, &ones);
        let plain_ratio = on(&plain_grad, &checker) / on(&plain_grad, &ones);
        assert!(
            focal_ratio > 2.0 * plain_ratio,
            "focal {focal_ratio}, plain {plain_ratio}"
        );
    }
}
