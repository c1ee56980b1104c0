//! Low-dimensional cosine codes (Yu et al., 2022, "Vector-quantized image modeling with
//! improved VQGAN"): the encoder output is projected to a few dimensions by a 1×1 convolution,
//! normalised to unit length, matched to a unit-length codebook by cosine similarity, and
//! projected back. A small, normalised code space keeps far more of the codebook in use.

use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};
use vq_kmeans::KMeansConfig;

use super::vq::l2_normalize;
use super::{
    CodeSpace, CodebookConfig, InitReport, Quantized, Quantizer, VectorQuantizer, VqConfig,
};
use crate::ModelError;

/// Settings of the cosine quantizer (`"kind": "cosine"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CosineConfig {
    /// The codebook (its β weighs the commitment between unit vectors).
    #[serde(flatten)]
    pub codebook: CodebookConfig,
    /// Dimension of the codes (after the projection): small, e.g. 8, 16 or 32.
    pub code_dim: i64,
    /// Channels of the encoder output (and of the decoder input).
    pub latent_dim: i64,
}

impl Default for CosineConfig {
    fn default() -> Self {
        CosineConfig {
            codebook: CodebookConfig::default(),
            code_dim: 16,
            latent_dim: VqConfig::default().code_dim,
        }
    }
}

impl CosineConfig {
    /// The codebook's own settings (over the projected, normalised vectors).
    fn codebook(&self) -> VqConfig {
        VqConfig::of(&self.codebook, self.code_dim)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.latent_dim < 1 {
            return Err(format!(
                "latent_dim must be at least 1, not {}",
                self.latent_dim
            ));
        }
        if self.code_dim < 2 {
            return Err(format!(
                "code_dim of cosine codes must be at least 2 (one dimension has only two unit \
                 vectors), not {}",
                self.code_dim
            ));
        }
        self.codebook.validate(self.code_dim)
    }
}

impl super::QuantizerKind for CosineConfig {
    fn latent_dim(&self) -> i64 {
        self.latent_dim
    }

    fn code_space(&self) -> CodeSpace {
        CodeSpace {
            depth: 1,
            vocabulary: self.codebook.codebook_size,
        }
    }

    fn validate(&self) -> Result<(), String> {
        CosineConfig::validate(self)
    }

    fn build(&self, vs: nn::Path<'_>) -> Box<dyn Quantizer> {
        Box::new(CosineQuantizer::new(vs, self))
    }

    fn describe(&self) -> String {
        format!(
            "cosine quantizer, K = {} unit codes of dimension {} (projected from {})",
            self.codebook.codebook_size, self.code_dim, self.latent_dim
        )
    }

    fn codebook_mut(&mut self) -> Option<(&mut CodebookConfig, &mut i64)> {
        Some((&mut self.codebook, &mut self.code_dim))
    }

    /// Cosine codes project the encoder's output: keep its width.
    fn fresh(latent_dim: i64) -> Self {
        CosineConfig {
            latent_dim,
            ..Default::default()
        }
    }
}

/// Projection in, unit-length codebook, projection out. Its variables are `in_proj.*`,
/// `out_proj.*` and the codebook's (`codebook`, `ema_count`, `ema_sum`, `last_used`).
#[derive(Debug)]
pub struct CosineQuantizer {
    in_proj: nn::Conv2D,
    out_proj: nn::Conv2D,
    codebook: VectorQuantizer,
}

impl CosineQuantizer {
    pub fn new(vs: nn::Path<'_>, config: &CosineConfig) -> Self {
        let conv = |name: &str, i, o| nn::conv2d(&vs / name, i, o, 1, Default::default());
        CosineQuantizer {
            in_proj: conv("in_proj", config.latent_dim, config.code_dim),
            out_proj: conv("out_proj", config.code_dim, config.latent_dim),
            codebook: VectorQuantizer::with_unit_codes(vs, &config.codebook()),
        }
    }

    /// `(B, latent, h, w)` → unit-length `(B, code_dim, h, w)`.
    fn project(&self, z: &Tensor) -> Tensor {
        l2_normalize(&self.in_proj.forward(&z.to_kind(Kind::Float)), 1)
    }

    /// The unit-length codebook, `(K, code_dim)`.
    pub fn codes(&self) -> &Tensor {
        &self.codebook.codebook
    }
}

impl Quantizer for CosineQuantizer {
    fn forward(&self, z: &Tensor) -> Quantized {
        let mut pass = self.codebook.forward(&self.project(z));
        pass.quantized = self.out_proj.forward(&pass.quantized);
        pass
    }

    fn embed(&self, codes: &Tensor) -> Tensor {
        self.out_proj.forward(&self.codebook.embed(codes))
    }

    /// By cosine: the nearest unit codes to the projected, normalised vector.
    fn ranked_codes(&self, z: &Tensor, count: i64) -> Option<Tensor> {
        self.codebook.ranked_codes(&self.project(z), count)
    }

    fn code_space(&self) -> CodeSpace {
        self.codebook.code_space()
    }

    fn after_step(&mut self, pass: &Quantized, step: i64) -> i64 {
        self.codebook.after_step(pass, step)
    }

    /// Spherical k-means on the projected, normalised encoder outputs.
    fn init_from_data(
        &mut self,
        vectors: &Tensor,
        kmeans: &KMeansConfig,
    ) -> Result<Option<InitReport>, ModelError> {
        let projected = {
            let _guard = tch::no_grad_guard();
            let n = vectors.size()[0];
            let as_map = vectors.view([n, -1, 1, 1]);
            self.project(&as_map).flatten(1, -1)
        };
        self.codebook.init_from_data(&projected, kmeans)
    }

    fn parameters(&self) -> Vec<Tensor> {
        let mut p = vec![self.in_proj.ws.shallow_clone()];
        p.extend(self.in_proj.bs.iter().map(|b| b.shallow_clone()));
        p.extend(self.codebook.parameters());
        p.push(self.out_proj.ws.shallow_clone());
        p.extend(self.out_proj.bs.iter().map(|b| b.shallow_clone()));
        p
    }

    fn statistics(&self) -> Vec<Tensor> {
        self.codebook.statistics()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine() -> (nn::VarStore, CosineQuantizer) {
        let vs = nn::VarStore::new(crate::test_device());
        let q = CosineQuantizer::new(
            vs.root(),
            &CosineConfig {
                codebook: CodebookConfig {
                    codebook_size: 32,
                    dead_code_steps: 0,
                    ..Default::default()
                },
                code_dim: 4,
                latent_dim: 6,
            },
        );
        (vs, q)
    }

    fn unit_norm_error(t: &Tensor, dim: i64) -> f64 {
        (t.norm_scalaropt_dim(2, [dim], false) - 1.0)
            .abs()
            .max()
            .double_value(&[])
    }

    #[test]
    fn codes_and_inputs_are_unit_and_the_lookup_is_the_argmax_of_the_cosine() {
        let _rng = crate::seeded(5);
        let (_vs, mut q) = cosine();
        let z = Tensor::randn([3, 6, 4, 4], (Kind::Float, crate::test_device()));
        assert!(unit_norm_error(q.codes(), 1) < 1e-5);
        let pass = q.forward(&z);
        let inputs = VectorQuantizer::inputs_of(&pass);
        assert!(unit_norm_error(inputs, 1) < 1e-5);
        // Exact argmax of the cosine between the projected input and every code.
        let cosine = inputs.matmul(&q.codes().tr())
            / (inputs.norm_scalaropt_dim(2, [1], true)
                * q.codes().norm_scalaropt_dim(2, [1], false).unsqueeze(0));
        assert_eq!(pass.codes.flatten(0, -1), cosine.argmax(1, false));
        // The decoder input is the back-projection of exactly those codes.
        assert_eq!(pass.quantized.detach(), q.embed(&pass.codes));
        // After an EMA update the codes are unit length again.
        q.after_step(&pass, 1);
        assert!(unit_norm_error(q.codes(), 1) < 1e-5);
        // Spherical k-means initialisation keeps them unit.
        let vectors = Tensor::randn([300, 6], (Kind::Float, crate::test_device()));
        let report = q
            .init_from_data(&vectors, &KMeansConfig::new(32).seed(2))
            .unwrap()
            .unwrap();
        assert_eq!(report.points, 300);
        assert!(unit_norm_error(q.codes(), 1) < 1e-5);
    }

    #[test]
    fn gradients_reach_the_encoder_and_both_projections() {
        let _rng = crate::seeded(6);
        let (vs, q) = cosine();
        let z = Tensor::randn([2, 6, 3, 3], (Kind::Float, crate::test_device()))
            .set_requires_grad(true);
        let pass = q.forward(&z);
        (pass.quantized.square().sum(Kind::Float) + &pass.aux_loss).backward();
        assert!(z.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
        for name in ["in_proj.weight", "out_proj.weight"] {
            let g = vs.variables()[name].grad();
            assert!(g.abs().sum(Kind::Float).double_value(&[]) > 0.0, "{name}");
        }
        assert!(!vs.variables()["codebook"].requires_grad(), "EMA codebook");
        assert_eq!(q.parameters().len(), 5);
    }
}
