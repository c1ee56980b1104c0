//! Residual vector quantization (Zeghidour et al., 2021, SoundStream; Défossez et al., 2022,
//! EnCodec): L codebooks in sequence, each quantizing what the previous ones left, so that a
//! position's code is a stack of L indices and decoding fewer of them gives a coarser image.
//! With quantizer dropout a training step uses a random number of levels, so that one model
//! decodes well at every depth.

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};
use vq_kmeans::KMeansConfig;

use super::{
    CodeSpace, CodebookConfig, InitReport, Quantized, Quantizer, VectorQuantizer, VqConfig,
};
use crate::ModelError;

/// Settings of residual VQ (`"kind": "residual"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResidualConfig {
    /// L: number of codebooks in sequence.
    pub depth: i64,
    /// The codebook of every level.
    #[serde(flatten)]
    pub codebook: CodebookConfig,
    /// D: dimension of the codes (and of the encoder output).
    pub code_dim: i64,
    /// Quantizer dropout: each training step quantizes with the first `n` levels only, `n`
    /// drawn uniformly from 1..=L.
    pub dropout: bool,
}

impl Default for ResidualConfig {
    fn default() -> Self {
        ResidualConfig {
            depth: 4,
            codebook: CodebookConfig::default(),
            code_dim: VqConfig::default().code_dim,
            dropout: false,
        }
    }
}

/// Upper bound on the depth (a `.vqz` stores it in one byte).
pub const MAX_DEPTH: i64 = 64;

impl ResidualConfig {
    fn level(&self) -> VqConfig {
        VqConfig::of(&self.codebook, self.code_dim)
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_DEPTH).contains(&self.depth) {
            return Err(format!(
                "residual depth must be 1 to {MAX_DEPTH}, not {}",
                self.depth
            ));
        }
        self.codebook.validate(self.code_dim)
    }
}

impl super::QuantizerKind for ResidualConfig {
    fn latent_dim(&self) -> i64 {
        self.code_dim
    }

    fn code_space(&self) -> CodeSpace {
        CodeSpace {
            depth: self.depth,
            vocabulary: self.codebook.codebook_size,
        }
    }

    fn validate(&self) -> Result<(), String> {
        ResidualConfig::validate(self)
    }

    fn build(&self, vs: nn::Path<'_>) -> Box<dyn Quantizer> {
        Box::new(ResidualQuantizer::new(vs, self))
    }

    fn describe(&self) -> String {
        format!(
            "residual vector quantizer, {} levels of K = {} codes of dimension {}{}",
            self.depth,
            self.codebook.codebook_size,
            self.code_dim,
            if self.dropout {
                ", trained with quantizer dropout"
            } else {
                ""
            }
        )
    }

    fn codebook_mut(&mut self) -> Option<(&mut CodebookConfig, &mut i64)> {
        Some((&mut self.codebook, &mut self.code_dim))
    }
}

/// L vector quantizers; level `i`'s variables are `level{i}.codebook` and its statistics.
#[derive(Debug)]
pub struct ResidualQuantizer {
    levels: Vec<VectorQuantizer>,
    dropout: bool,
}

impl ResidualQuantizer {
    pub fn new(vs: nn::Path<'_>, config: &ResidualConfig) -> Self {
        let level = config.level();
        ResidualQuantizer {
            levels: (0..config.depth)
                .map(|i| VectorQuantizer::new(&vs / format!("level{i}"), &level))
                .collect(),
            dropout: config.dropout,
        }
    }

    /// The quantizer of each level, first to last.
    pub fn levels(&self) -> &[VectorQuantizer] {
        &self.levels
    }

    /// Quantizes with the first `depth` levels: the sum of their codes (with the gradient
    /// passed straight through to `z`), their codes `(B, depth, h, w)`, the sum of their
    /// commitment losses, and `(L, K)` counts (zero for the levels not used).
    fn quantize(&self, z: &Tensor, depth: usize) -> Quantized {
        let k = self.levels[0].codebook_size();
        let mut residual = z.shallow_clone();
        let mut sum = Tensor::zeros_like(z);
        let mut codes = Vec::with_capacity(depth);
        let mut aux_loss = Tensor::zeros([], (Kind::Float, z.device()));
        let counts = Tensor::zeros([self.levels.len() as i64, k], (Kind::Float, z.device()));
        let mut saved = Vec::with_capacity(depth);
        for (i, level) in self.levels.iter().take(depth).enumerate() {
            let pass = level.forward(&residual);
            let code_values = pass.quantized.detach();
            // Each level's commitment pulls `z` minus the codes before it toward its code.
            // Not in place: `residual` starts as `z` itself.
            aux_loss = &aux_loss + pass.aux_loss;
            residual = &residual - &code_values;
            sum = &sum + code_values;
            codes.push(pass.codes);
            {
                let _guard = tch::no_grad_guard();
                let mut row = counts.get(i as i64);
                row.copy_(&pass.counts.get(0));
            }
            saved.extend(pass.saved);
        }
        Quantized {
            // The value is the codes' sum exactly; the gradient reaches `z` unchanged.
            quantized: &sum + (z - z.detach()),
            codes: Tensor::cat(&codes, 1),
            aux_loss,
            counts,
            saved,
        }
    }
}

impl Quantizer for ResidualQuantizer {
    fn forward(&self, z: &Tensor) -> Quantized {
        self.quantize(z, self.levels.len())
    }

    fn forward_t(&self, z: &Tensor, train: bool) -> Quantized {
        let depth = if train && self.dropout {
            // Drawn from LibTorch's generator, so a seeded run repeats it.
            1 + Tensor::randint(
                self.levels.len() as i64,
                [1],
                (Kind::Int64, tch::Device::Cpu),
            )
            .int64_value(&[0]) as usize
        } else {
            self.levels.len()
        };
        self.quantize(z, depth)
    }

    /// Codes `(B, l, h, w)` with `l` up to L: the sum of the first `l` levels' codes, the
    /// coarser image a shorter stack stands for.
    fn embed(&self, codes: &Tensor) -> Tensor {
        let depth = codes.size()[1];
        let mut sum: Option<Tensor> = None;
        for (i, level) in self.levels.iter().take(depth as usize).enumerate() {
            let e = level.embed(&codes.narrow(1, i as i64, 1));
            sum = Some(match sum {
                Some(s) => s + e,
                None => e,
            });
        }
        sum.expect("codes have at least one level")
    }

    /// Level by level along the quantizer's own path: each level's ranking is for the residual
    /// that the first choices of the levels before it leave.
    fn ranked_codes(&self, z: &Tensor, count: i64) -> Option<Tensor> {
        let _guard = tch::no_grad_guard();
        let mut residual = z.shallow_clone();
        let mut ranked = Vec::with_capacity(self.levels.len());
        for level in &self.levels {
            let level_ranked = level.ranked_codes(&residual, count)?;
            residual = &residual - level.embed(&level_ranked.select(4, 0));
            ranked.push(level_ranked);
        }
        Some(Tensor::cat(&ranked, 1))
    }

    fn code_space(&self) -> CodeSpace {
        CodeSpace {
            depth: self.levels.len() as i64,
            vocabulary: self.levels[0].codebook_size(),
        }
    }

    /// Each level used in the pass updates from its own codes and residuals.
    fn after_step(&mut self, pass: &Quantized, step: i64) -> i64 {
        let used = pass.codes.size()[1] as usize;
        let mut restarted = 0;
        for (i, level) in self.levels.iter_mut().take(used).enumerate() {
            let codes = pass.codes.select(1, i as i64).flatten(0, -1);
            restarted += level.update(&codes, &pass.saved[i], &pass.counts.get(i as i64), step);
        }
        restarted
    }

    /// k-means level by level: each level's codebook from the residuals the levels before it
    /// leave.
    fn init_from_data(
        &mut self,
        vectors: &Tensor,
        kmeans: &KMeansConfig,
    ) -> Result<Option<InitReport>, ModelError> {
        let mut residual = vectors.to_kind(Kind::Float);
        let mut total: Option<InitReport> = None;
        for level in &mut self.levels {
            let report = level
                .init_from_data(&residual, kmeans)?
                .expect("a codebook initialises from data");
            let _guard = tch::no_grad_guard();
            let nearest = level.nearest(&residual);
            residual = &residual - level.codebook.index_select(0, &nearest);
            total = Some(match total {
                None => report,
                Some(t) => InitReport {
                    points: t.points,
                    iterations: t.iterations + report.iterations,
                    // The last level's inertia: what the whole stack leaves unexplained.
                    inertia: report.inertia,
                    empty_clusters: t.empty_clusters + report.empty_clusters,
                },
            });
        }
        Ok(total)
    }

    fn parameters(&self) -> Vec<Tensor> {
        self.levels.iter().flat_map(|l| l.parameters()).collect()
    }

    fn statistics(&self) -> Vec<Tensor> {
        self.levels.iter().flat_map(|l| l.statistics()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn residual(depth: i64, dropout: bool) -> (nn::VarStore, ResidualQuantizer) {
        let vs = nn::VarStore::new(crate::test_device());
        let q = ResidualQuantizer::new(
            vs.root(),
            &ResidualConfig {
                codebook: CodebookConfig {
                    codebook_size: 16,
                    dead_code_steps: 0,
                    ..Default::default()
                },
                depth,
                code_dim: 4,
                dropout,
            },
        );
        (vs, q)
    }

    #[test]
    fn with_later_codebooks_zero_the_output_is_the_first_level_alone() {
        let _rng = crate::seeded(7);
        let (_vs, mut q) = residual(3, false);
        for level in &mut q.levels[1..] {
            let zeros = Tensor::zeros([16, 4], (Kind::Float, crate::test_device()));
            level.set_codebook(&zeros);
        }
        let z = Tensor::randn([2, 4, 3, 3], (Kind::Float, crate::test_device())) * 0.1;
        let all = q.forward(&z);
        let first = q.levels[0].forward(&z);
        assert_eq!(all.codes.size(), vec![2, 3, 3, 3]);
        assert_eq!(all.codes.narrow(1, 0, 1), first.codes);
        assert_eq!(all.quantized.detach(), first.quantized.detach());
        assert_eq!(q.embed(&all.codes), q.embed(&all.codes.narrow(1, 0, 1)));
    }

    #[test]
    fn each_level_lowers_the_error_after_kmeans_and_dropout_decodes_at_every_depth() {
        let _rng = crate::seeded(8);
        let (_vs, mut q) = residual(4, true);
        let vectors = Tensor::randn([400, 4], (Kind::Float, crate::test_device()));
        q.init_from_data(&vectors, &KMeansConfig::new(16).seed(3))
            .unwrap()
            .unwrap();
        let z = vectors
            .view([4, 10, 10, 4])
            .permute([0, 3, 1, 2])
            .contiguous();
        let codes = q.forward(&z).codes;
        let mut last = f64::INFINITY;
        for depth in 1..=4 {
            let decoded = q.embed(&codes.narrow(1, 0, depth));
            let err = (&decoded - &z).square().mean(Kind::Float).double_value(&[]);
            assert!(err <= last, "depth {depth}: {err} after {last}");
            last = err;
        }
        // Quantizer dropout: training passes use 1..=4 levels, each seen, and every pass's
        // output is the embedding of its own codes.
        let mut seen = [false; 4];
        for step in 1..=40 {
            let pass = q.forward_t(&z, true);
            let depth = pass.codes.size()[1] as usize;
            seen[depth - 1] = true;
            assert_eq!(pass.quantized.detach(), q.embed(&pass.codes));
            let unused = pass.counts.narrow(0, depth as i64, 4 - depth as i64);
            assert_eq!(unused.sum(Kind::Float).double_value(&[]), 0.0);
            q.after_step(&pass, step);
        }
        assert_eq!(seen, [true; 4]);
        // Evaluation always uses every level.
        assert_eq!(q.forward_t(&z, false).codes.size()[1], 4);
    }
}
