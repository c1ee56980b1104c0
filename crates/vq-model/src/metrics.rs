//! Image-quality figures on `[0, 1]` pixels: MSE, PSNR and SSIM (Wang et al. 2004: 11×11
//! Gaussian window, σ = 1.5, K1 = 0.01, K2 = 0.03, per channel, averaged).

use tch::{Kind, Tensor};

/// Per-image sums that add up over batches.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QualitySums {
    pub images: i64,
    /// Sum over images of the per-image MSE.
    pub mse: f64,
    /// Sum over images of the per-image PSNR (dB).
    pub psnr: f64,
    /// Sum over images of the per-image SSIM.
    pub ssim: f64,
    /// Sum over images of the per-image PSNR of the luma alone ([`luma`]).
    pub psnr_y: f64,
}

impl QualitySums {
    pub fn add(&mut self, other: &QualitySums) {
        self.images += other.images;
        self.mse += other.mse;
        self.psnr += other.psnr;
        self.ssim += other.ssim;
        self.psnr_y += other.psnr_y;
    }

    pub fn mean_mse(&self) -> f64 {
        self.mse / self.images.max(1) as f64
    }
    /// Mean of per-image PSNRs (the usual way image-reconstruction papers report it).
    pub fn mean_psnr(&self) -> f64 {
        self.psnr / self.images.max(1) as f64
    }
    pub fn mean_ssim(&self) -> f64 {
        self.ssim / self.images.max(1) as f64
    }
    /// Mean of per-image luma PSNRs: what recent papers' tables report (pyiqa's `psnr` with
    /// `test_y_channel=True`), several dB above the RGB figure.
    pub fn mean_psnr_y(&self) -> f64 {
        self.psnr_y / self.images.max(1) as f64
    }
}

/// `(B, 1, H, W)` luma of `(B, C, H, W)` images in `[0, 1]`: ITU-R BT.601's Y of studio swing,
/// `(65.481 R + 128.553 G + 24.966 B + 16) / 255` (as pyiqa and BasicSR compute it); a
/// one-channel image is its own luma.
pub fn luma(images: &Tensor) -> Tensor {
    if images.size()[1] != 3 {
        return images.narrow(1, 0, 1);
    }
    let weights = Tensor::from_slice(&[65.481f32, 128.553, 24.966])
        .to_device(images.device())
        .view([1, 3, 1, 1]);
    ((images * weights).sum_dim_intlist(1, true, Kind::Float) + 16.0) / 255.0
}

/// `(B,)` PSNR of each image (on `[0, 1]` values) from its `(B, ...)` differences.
fn psnr_per_image(difference: &Tensor) -> Tensor {
    let mse = difference
        .square()
        .flatten(1, -1)
        .mean_dim(1, false, Kind::Float);
    mse.clamp_min(1e-10).log10() * -10.0
}

/// MSE, PSNR and SSIM of `recon` against `target`, both `(B, C, H, W)` in `[0, 1]`
/// (`recon` is clamped to it first).
pub fn quality(recon: &Tensor, target: &Tensor) -> QualitySums {
    let _guard = tch::no_grad_guard();
    let recon = recon.to_kind(Kind::Float).clamp(0.0, 1.0);
    let target = target.to_kind(Kind::Float);
    let b = target.size()[0];
    let mse = (&recon - &target)
        .square()
        .flatten(1, -1)
        .mean_dim(1, false, Kind::Float);
    let psnr = mse.clamp_min(1e-10).log10() * -10.0;
    let ssim = ssim_per_image(&recon, &target);
    let psnr_y = psnr_per_image(&(luma(&recon) - luma(&target)));
    QualitySums {
        images: b,
        mse: mse.sum(Kind::Double).double_value(&[]),
        psnr: psnr.sum(Kind::Double).double_value(&[]),
        ssim: ssim.sum(Kind::Double).double_value(&[]),
        psnr_y: psnr_y.sum(Kind::Double).double_value(&[]),
    }
}

fn gaussian_window(channels: i64, device: tch::Device) -> Tensor {
    let size = 11;
    let sigma = 1.5f64;
    let coords: Vec<f32> = (0..size)
        .map(|i| {
            let x = (i - size / 2) as f64;
            (-(x * x) / (2.0 * sigma * sigma)).exp() as f32
        })
        .collect();
    let g = Tensor::from_slice(&coords).to_device(device);
    let g = &g / g.sum(Kind::Float);
    let w = g.unsqueeze(1).matmul(&g.unsqueeze(0));
    w.expand([channels, 1, size, size], false).contiguous()
}

/// `(B,)` SSIM, the mean of the SSIM map over valid positions and channels.
pub fn ssim_per_image(x: &Tensor, y: &Tensor) -> Tensor {
    let c = x.size()[1];
    let w = gaussian_window(c, x.device());
    let filter = |t: &Tensor| t.conv2d(&w, None::<Tensor>, [1, 1], [0, 0], [1, 1], c);
    let (mu_x, mu_y) = (filter(x), filter(y));
    let (mu_x2, mu_y2, mu_xy) = (mu_x.square(), mu_y.square(), &mu_x * &mu_y);
    let sigma_x = filter(&x.square()) - &mu_x2;
    let sigma_y = filter(&y.square()) - &mu_y2;
    let sigma_xy = filter(&(x * y)) - &mu_xy;
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let map = ((&mu_xy * 2.0 + c1) * (sigma_xy * 2.0 + c2))
        / ((mu_x2 + mu_y2 + c1) * (sigma_x + sigma_y + c2));
    map.flatten(1, -1).mean_dim(1, false, Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn identical_images_score_perfectly() {
        let _rng = crate::seeded(0);
        let x = Tensor::rand([3, 3, 32, 32], (Kind::Float, Device::Cpu));
        let q = quality(&x, &x);
        assert_eq!(q.images, 3);
        assert_eq!(q.mean_mse(), 0.0);
        assert!((q.mean_ssim() - 1.0).abs() < 1e-5, "{}", q.mean_ssim());
        assert!(q.mean_psnr() >= 99.0);
    }

    #[test]
    fn psnr_matches_its_definition() {
        let x = Tensor::full([2, 3, 16, 16], 0.5, (Kind::Float, Device::Cpu));
        let y = &x + 0.1; // MSE 0.01 → 20 dB
        let q = quality(&y, &x);
        assert!((q.mean_psnr() - 20.0).abs() < 1e-3, "{}", q.mean_psnr());
        assert!((q.mean_mse() - 0.01).abs() < 1e-6);
        // A constant shift keeps structure: SSIM stays high but below 1.
        assert!(
            q.mean_ssim() < 1.0 && q.mean_ssim() > 0.9,
            "{}",
            q.mean_ssim()
        );
    }

    #[test]
    fn luma_psnr_is_pyiqas_test_y_channel_figure() {
        // A grey shift of 0.1 in every channel moves Y by 0.1 · 219 / 255.
        let x = Tensor::full([2, 3, 16, 16], 0.5, (Kind::Float, Device::Cpu));
        let q = quality(&(&x + 0.1), &x);
        let expected = -20.0 * (0.1f64 * 219.0 / 255.0).log10();
        assert!(
            (q.mean_psnr_y() - expected).abs() < 1e-3,
            "{}",
            q.mean_psnr_y()
        );
        // Pure white is Y = 235 / 255; an error in blue alone counts a tenth of one in green.
        let white = Tensor::ones([1, 3, 2, 2], (Kind::Float, Device::Cpu));
        let y = luma(&white).double_value(&[0, 0, 0, 0]);
        assert!((y - 235.0 / 255.0).abs() < 1e-6, "{y}");
        let shifted = |c: i64| {
            let y = x.copy();
            let _ = y.narrow(1, c, 1).fill_(0.6);
            quality(&y, &x).mean_psnr_y()
        };
        assert!(shifted(2) > shifted(1) + 10.0);
        // RGB and luma PSNR of the same reconstruction differ.
        let _rng = crate::seeded(0);
        let noisy =
            (&x + Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu)) * 0.05).clamp(0.0, 1.0);
        let q = quality(&noisy, &x);
        assert!(q.mean_psnr_y() > q.mean_psnr() + 1.0, "{q:?}");
    }

    #[test]
    fn noise_lowers_ssim() {
        let _rng = crate::seeded(0);
        let x = Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let noisy =
            (&x + Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu)) * 0.2).clamp(0.0, 1.0);
        let slightly =
            (&x + Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu)) * 0.02).clamp(0.0, 1.0);
        let (a, b) = (quality(&noisy, &x), quality(&slightly, &x));
        assert!(a.mean_ssim() < b.mean_ssim());
        assert!(a.mean_psnr() < b.mean_psnr());
    }
}
