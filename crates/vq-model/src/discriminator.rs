//! A patch discriminator for adversarial decoder training (VQGAN's, Esser et al. 2021, after
//! pix2pix's PatchGAN): strided 4×4 convolutions with leaky ReLUs, ending in one logit per patch.
//! On a 32 × 32 image the default gives 6 × 6 overlapping patches of about 22 pixels.
//!
//! No normalisation layer, unlike taming-transformers' BatchNorm: batch statistics would mix
//! the real and the generated halves of a step and behave differently in evaluation, and
//! spectral normalisation would need a power iteration and its vectors in every checkpoint. The
//! hinge loss bounds what the discriminator gains from growing its logits, which is what keeps
//! it in check here (measured stable in docs/experiments.md).

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::Tensor;

use crate::config::ComputeKind;
use crate::nets::Conv;

/// The discriminator's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscriminatorConfig {
    pub in_channels: i64,
    /// Channels of the first convolution, doubled by each stride-2 one after it.
    pub channels: i64,
    /// Stride-2 convolutions after the first (each halves the size).
    pub layers: usize,
    pub compute: ComputeKind,
}

impl Default for DiscriminatorConfig {
    fn default() -> Self {
        DiscriminatorConfig {
            in_channels: 3,
            channels: 64,
            layers: 1,
            compute: ComputeKind::Auto,
        }
    }
}

impl DiscriminatorConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.channels < 1 || self.layers > 4 || self.in_channels < 1 {
            return Err(format!(
                "discriminator: channels must be at least 1 and layers at most 4, not {} and {}",
                self.channels, self.layers
            ));
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct PatchDiscriminator {
    convs: Vec<Conv>,
    to_logit: Conv,
}

/// Leaky ReLU with pix2pix's slope, as 0.2 x + 0.8 relu(x): tch's `leaky_relu` has no slope
/// argument, and `maximum(x, 0.2 x)`, the same function, has a backward pass of masks and
/// divisions that made the discriminator's training pass 1.6× slower in bf16
/// (docs/experiments.md).
fn leaky(x: Tensor) -> Tensor {
    &x * 0.2 + x.relu() * 0.8
}

impl PatchDiscriminator {
    pub fn new(vs: nn::Path<'_>, cfg: &DiscriminatorConfig) -> Self {
        let kind = cfg.compute.kind(vs.device());
        let mut convs = Vec::new();
        let mut c = cfg.channels;
        convs.push(Conv::new(
            &vs / "conv0",
            cfg.in_channels,
            c,
            4,
            2,
            1,
            true,
            kind,
        ));
        for i in 0..cfg.layers {
            convs.push(Conv::new(
                &vs / format!("conv{}", i + 1),
                c,
                c * 2,
                4,
                2,
                1,
                true,
                kind,
            ));
            c *= 2;
        }
        // Then one stride-1 layer and the logits, as in PatchGAN.
        let last = cfg.layers + 1;
        convs.push(Conv::new(
            &vs / format!("conv{last}"),
            c,
            c * 2,
            4,
            1,
            1,
            true,
            kind,
        ));
        let to_logit = Conv::new(&vs / "to_logit", c * 2, 1, 4, 1, 1, true, kind);
        PatchDiscriminator { convs, to_logit }
    }

    pub fn parameters(&self) -> Vec<Tensor> {
        let mut p: Vec<Tensor> = self.convs.iter().flat_map(Conv::parameters).collect();
        p.extend(self.to_logit.parameters());
        p
    }
}

impl PatchDiscriminator {
    /// The logits and the activations of every hidden layer (after its leaky ReLU), for a
    /// feature-matching loss.
    pub fn forward_features(&self, xs: &Tensor) -> (Tensor, Vec<Tensor>) {
        let mut x = crate::nets::channels_last(xs);
        let mut features = Vec::with_capacity(self.convs.len());
        for conv in &self.convs {
            x = leaky(conv.forward(&x));
            features.push(x.shallow_clone());
        }
        (
            self.to_logit.forward(&x).to_kind(tch::Kind::Float),
            features,
        )
    }
}

impl Module for PatchDiscriminator {
    /// `(B, C, H, W)` images in the model's input range → `(B, 1, h, w)` f32 logits, one per
    /// patch (positive: real).
    fn forward(&self, xs: &Tensor) -> Tensor {
        self.forward_features(xs).0
    }
}

/// pix2pixHD's feature-matching loss: the mean absolute difference between the
/// discriminator's activations on real images and on reconstructions of the same images, layer
/// by layer, averaged over the layers. The real side is a fixed target (no gradient).
pub fn feature_matching_loss(real: &[Tensor], fake: &[Tensor]) -> Tensor {
    let losses: Vec<Tensor> = real
        .iter()
        .zip(fake)
        .map(|(r, f)| {
            (f.to_kind(tch::Kind::Float) - r.detach().to_kind(tch::Kind::Float))
                .abs()
                .mean(tch::Kind::Float)
        })
        .collect();
    Tensor::stack(&losses, 0).mean(tch::Kind::Float)
}

/// The hinge loss of the discriminator: `mean(relu(1 − D(real))) + mean(relu(1 + D(fake)))`,
/// halved as in taming-transformers.
pub fn hinge_discriminator_loss(real_logits: &Tensor, fake_logits: &Tensor) -> Tensor {
    let real = (real_logits.neg() + 1.0).relu().mean(tch::Kind::Float);
    let fake = (fake_logits + 1.0).relu().mean(tch::Kind::Float);
    (real + fake) * 0.5
}

/// The generator's side of the hinge GAN: `−mean(D(fake))`.
pub fn generator_loss(fake_logits: &Tensor) -> Tensor {
    -fake_logits.mean(tch::Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn patches_of_a_cifar_image_and_gradients_to_every_weight() {
        let _rng = crate::seeded(0);
        let vs = nn::VarStore::new(crate::test_device());
        let d = PatchDiscriminator::new(
            vs.root(),
            &DiscriminatorConfig {
                channels: 8,
                compute: ComputeKind::F32,
                ..Default::default()
            },
        );
        let x = Tensor::rand([2, 3, 32, 32], (Kind::Float, vs.device())) - 0.5;
        let logits = d.forward(&x);
        // 32 → 16 → 8 (stride 2), → 7 → 6 (stride 1, 4×4, padding 1).
        assert_eq!(logits.size(), vec![2, 1, 6, 6]);
        generator_loss(&logits).backward();
        for p in d.parameters() {
            let g = p.grad();
            assert!(g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0);
        }
    }

    #[test]
    fn feature_matching_is_zero_on_the_same_images_and_reaches_only_the_fake_side() {
        let _rng = crate::seeded(0);
        let vs = nn::VarStore::new(crate::test_device());
        let d = PatchDiscriminator::new(
            vs.root(),
            &DiscriminatorConfig {
                channels: 4,
                compute: ComputeKind::F32,
                ..Default::default()
            },
        );
        let real = Tensor::rand([2, 3, 32, 32], (Kind::Float, vs.device())) - 0.5;
        let (_, fr) = d.forward_features(&real);
        assert_eq!(fr.len(), 3);
        let (_, same) = d.forward_features(&real);
        assert_eq!(feature_matching_loss(&fr, &same).double_value(&[]), 0.0);
        let fake = (Tensor::rand([2, 3, 32, 32], (Kind::Float, vs.device())) - 0.5)
            .set_requires_grad(true);
        let (_, ff) = d.forward_features(&fake);
        let loss = feature_matching_loss(&fr, &ff);
        assert!(loss.double_value(&[]) > 0.0);
        loss.backward();
        assert!(fake.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }

    #[test]
    fn leaky_relu_has_slope_one_fifth_below_zero() {
        let x = Tensor::from_slice(&[-2.5f32, -0.5, 0.0, 0.75, 3.0]).set_requires_grad(true);
        let y = leaky(x.shallow_clone());
        let want = Tensor::from_slice(&[-0.5f32, -0.1, 0.0, 0.75, 3.0]);
        assert!(y.allclose(&want, 1e-6, 1e-7, false), "{y}");
        y.sum(Kind::Float).backward();
        let slopes = Tensor::from_slice(&[0.2f32, 0.2, 0.2, 1.0, 1.0]);
        assert!(
            x.grad().allclose(&slopes, 1e-6, 1e-7, false),
            "{}",
            x.grad()
        );
        // In bf16, as the discriminator computes: within its rounding of the exact values.
        let y16 = leaky(x.detach().to_kind(Kind::BFloat16)).to_kind(Kind::Float);
        assert!(y16.allclose(&want, 1e-2, 1e-3, false), "{y16}");
    }

    #[test]
    fn hinge_losses_are_zero_only_past_the_margins() {
        let t = |v: &[f32]| Tensor::from_slice(v).to_device(Device::Cpu);
        // Confident and right on both sides: nothing to learn.
        let l = hinge_discriminator_loss(&t(&[1.5, 2.0]), &t(&[-1.0, -3.0]));
        assert_eq!(l.double_value(&[]), 0.0);
        // Inside the margins: (0.5 + 0) / 2 for the real half, (1.5 + 1) / 2 for the fake.
        let l = hinge_discriminator_loss(&t(&[0.5, 1.0]), &t(&[0.5, 0.0]));
        assert!((l.double_value(&[]) - 0.5 * (0.25 + 1.25)).abs() < 1e-6);
        assert!((generator_loss(&t(&[1.0, 3.0])).double_value(&[]) + 2.0).abs() < 1e-6);
    }
}
