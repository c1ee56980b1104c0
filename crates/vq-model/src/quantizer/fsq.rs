//! Finite scalar quantization (Mentzer et al., 2023): each of the latent's few channels is
//! bounded by a tanh and rounded to one of its `levels[i]` values; the code is the mixed-radix
//! number of the rounded values. No codebook, no commitment loss, nothing to update.

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use super::{CodeSpace, Quantized, Quantizer};

/// Settings of FSQ (`"kind": "fsq"`): the number of values of each channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FsqConfig {
    /// Values per channel, e.g. `[8, 8, 8]` (512 codes) or `[8, 5, 5, 5]` (1,000); the latent
    /// has one channel per entry.
    pub levels: Vec<i64>,
}

impl Default for FsqConfig {
    fn default() -> Self {
        FsqConfig {
            levels: vec![8, 8, 8],
        }
    }
}

impl FsqConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.levels.is_empty() || self.levels.iter().any(|&l| l < 2) {
            return Err(format!(
                "FSQ levels must be one or more counts of at least 2, not {:?}",
                self.levels
            ));
        }
        let vocabulary = self
            .levels
            .iter()
            .try_fold(1i64, |acc, &l| acc.checked_mul(l))
            .filter(|&v| v <= i64::from(vq_codes::MAX_CODEBOOK));
        if vocabulary.is_none() {
            return Err(format!(
                "FSQ levels {:?} make more than {} codes",
                self.levels,
                vq_codes::MAX_CODEBOOK
            ));
        }
        Ok(())
    }

    /// Number of codes: the product of the levels.
    pub fn vocabulary(&self) -> i64 {
        self.levels.iter().product()
    }
}

/// The quantizer. It has no variables.
impl super::QuantizerKind for FsqConfig {
    /// One latent channel per level count: no projection needed.
    fn latent_dim(&self) -> i64 {
        self.levels.len() as i64
    }

    fn code_space(&self) -> CodeSpace {
        CodeSpace {
            depth: 1,
            vocabulary: self.vocabulary(),
        }
    }

    fn validate(&self) -> Result<(), String> {
        FsqConfig::validate(self)
    }

    fn build(&self, vs: nn::Path<'_>) -> Box<dyn Quantizer> {
        Box::new(FiniteScalarQuantizer::new(vs, self))
    }

    fn describe(&self) -> String {
        format!(
            "finite scalar quantizer, levels {:?}: {} codes",
            self.levels,
            self.vocabulary()
        )
    }
}

#[derive(Debug)]
pub struct FiniteScalarQuantizer {
    levels: Vec<i64>,
}

impl FiniteScalarQuantizer {
    pub fn new(_vs: nn::Path<'_>, config: &FsqConfig) -> Self {
        FiniteScalarQuantizer {
            levels: config.levels.clone(),
        }
    }

    fn per_channel(&self, values: impl Fn(i64) -> f64, device: Device) -> Tensor {
        let v: Vec<f64> = self.levels.iter().map(|&l| values(l)).collect();
        Tensor::from_slice(&v)
            .to_kind(Kind::Float)
            .to_device(device)
            .view([1, -1, 1, 1])
    }

    /// `z` bounded so that rounding gives `levels[i]` values: `tanh(z + shift)·h − offset` with
    /// `h = (L − 1)/2` (slightly widened so the ends are reached) and, for an even `L`, a
    /// half-step offset (as the paper's reference code does it).
    fn bound(&self, z: &Tensor) -> Tensor {
        let eps = 1e-3;
        let device = z.device();
        let half = self.per_channel(|l| (l - 1) as f64 * (1.0 + eps) / 2.0, device);
        let offset = self.per_channel(|l| if l % 2 == 0 { 0.5 } else { 0.0 }, device);
        let shift = (&offset / &half).atanh();
        (z + shift).tanh() * half - offset
    }

    /// Rounded values `(B, C, h, w)` (integers from `−⌊L/2⌋`) → codes `(B, 1, h, w)`.
    fn indices(&self, rounded: &Tensor) -> Tensor {
        let device = rounded.device();
        let half_width = self.per_channel(|l| (l / 2) as f64, device);
        let digits = (rounded + half_width).round().to_kind(Kind::Int64);
        let mut basis = Vec::with_capacity(self.levels.len());
        let mut b = 1i64;
        for &l in &self.levels {
            basis.push(b);
            b *= l;
        }
        let basis = Tensor::from_slice(&basis)
            .to_device(device)
            .view([1, -1, 1, 1]);
        (digits * basis).sum_dim_intlist(1, true, Kind::Int64)
    }
}

impl Quantizer for FiniteScalarQuantizer {
    fn forward(&self, z: &Tensor) -> Quantized {
        let device = z.device();
        let bounded = self.bound(z);
        let rounded = bounded.round();
        // Straight through: the value is the rounded one, the gradient that of `bounded`.
        let quantized_int = &bounded + (&rounded - &bounded).detach();
        let half_width = self.per_channel(|l| (l / 2) as f64, device);
        let quantized = quantized_int / &half_width;
        let codes = self.indices(&rounded.detach());
        let vocabulary: i64 = self.levels.iter().product();
        let counts = {
            let _guard = tch::no_grad_guard();
            codes
                .flatten(0, -1)
                .bincount::<Tensor>(None, vocabulary)
                .to_kind(Kind::Float)
                .unsqueeze(0)
        };
        Quantized {
            quantized,
            codes,
            aux_loss: Tensor::zeros([], (Kind::Float, device)),
            counts,
            saved: Vec::new(),
        }
    }

    fn embed(&self, codes: &Tensor) -> Tensor {
        let device = codes.device();
        let codes = codes.select(1, 0);
        let channels: Vec<Tensor> = {
            let mut rest = codes.shallow_clone();
            self.levels
                .iter()
                .map(|&l| {
                    let digit = rest.remainder(l);
                    rest = rest.floor_divide_scalar(l);
                    digit.to_kind(Kind::Float) - (l / 2) as f64
                })
                .collect()
        };
        let rounded = Tensor::stack(&channels, 1);
        let half_width = self.per_channel(|l| (l / 2) as f64, device);
        rounded / half_width
    }

    fn code_space(&self) -> CodeSpace {
        CodeSpace {
            depth: 1,
            vocabulary: self.levels.iter().product(),
        }
    }

    fn parameters(&self) -> Vec<Tensor> {
        Vec::new()
    }

    fn statistics(&self) -> Vec<Tensor> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fsq(levels: &[i64]) -> FiniteScalarQuantizer {
        let vs = nn::VarStore::new(crate::test_device());
        FiniteScalarQuantizer::new(
            vs.root(),
            &FsqConfig {
                levels: levels.to_vec(),
            },
        )
    }

    #[test]
    fn index_and_code_are_a_bijection_over_the_whole_vocabulary() {
        for levels in [vec![8, 8, 8], vec![8, 5, 5, 5], vec![2, 3], vec![7]] {
            let q = fsq(&levels);
            let v: i64 = levels.iter().product();
            let all = Tensor::arange(v, (Kind::Int64, crate::test_device())).view([1, 1, 1, v]);
            let embedded = q.embed(&all);
            assert_eq!(embedded.size(), vec![1, levels.len() as i64, 1, v]);
            // Embedded values lie on each channel's grid, in [-1, 1].
            assert!(embedded.abs().max().double_value(&[]) <= 1.0 + 1e-6);
            // The grid values index back to the same code: no two codes coincide.
            let rounded =
                (&embedded * q.per_channel(|l| (l / 2) as f64, crate::test_device())).round();
            assert_eq!(q.indices(&rounded), all, "{levels:?}");
        }
    }

    #[test]
    fn outputs_lie_on_the_grid_and_gradients_pass_straight_through() {
        let _rng = crate::seeded(0);
        let q = fsq(&[8, 5, 5, 5]);
        let z = (Tensor::randn([2, 4, 3, 3], (Kind::Float, crate::test_device())) * 2.0)
            .set_requires_grad(true);
        let out = q.forward(&z);
        assert_eq!(out.codes.size(), vec![2, 1, 3, 3]);
        assert!(out.codes.min().int64_value(&[]) >= 0 && out.codes.max().int64_value(&[]) < 1000);
        // The output is the embedding of its codes, exactly.
        assert_eq!(out.quantized.detach(), q.embed(&out.codes));
        let half = q.per_channel(|l| (l / 2) as f64, crate::test_device());
        let steps = &out.quantized.detach() * &half;
        assert_eq!(steps.round(), steps, "values are whole steps of the grid");
        // Straight through the rounding: the gradient is that of the bound, divided by the
        // half width, as if there were no rounding.
        out.quantized.sum(Kind::Float).backward();
        let z2 = z.detach().set_requires_grad(true);
        (q.bound(&z2) / &half).sum(Kind::Float).backward();
        let (g, expected) = (z.grad(), z2.grad());
        assert!(g.abs().sum(Kind::Float).double_value(&[]) > 0.0);
        assert!((&g - &expected).abs().max().double_value(&[]) < 1e-6);
        assert_eq!(out.aux_loss.double_value(&[]), 0.0);
        assert_eq!(out.counts.size(), vec![1, 1000]);
        assert_eq!(out.counts.sum(Kind::Float).double_value(&[]), 18.0);
    }
}
