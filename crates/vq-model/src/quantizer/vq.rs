//! The vector quantizer: nearest code by the GEMM form of the distance, straight-through (or
//! rotation-trick) gradients, commitment loss, EMA or codebook-loss updates, dead-code restarts
//! and k-means initialisation.

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Reduction, Tensor};
use vq_kmeans::{KMeans, KMeansConfig};

use super::{CodeSpace, InitReport, Quantized, Quantizer};
use crate::ModelError;

/// How the codebook learns.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum CodebookUpdate {
    /// Exponential moving averages of the assigned encoder outputs (no gradient to the codebook).
    Ema {
        decay: f64,
        /// Laplace smoothing of the cluster counts.
        epsilon: f64,
    },
    /// A codebook loss `‖sg[z] − e‖²` trained by the optimizer, as in the original paper.
    Loss,
}

impl Default for CodebookUpdate {
    fn default() -> Self {
        CodebookUpdate::Ema {
            decay: 0.99,
            epsilon: 1e-5,
        }
    }
}

/// How gradients pass from the decoder through the (non-differentiable) code lookup to the
/// encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "kebab-case")]
pub enum GradientEstimator {
    /// `z + sg[e − z]`: the decoder's gradient is copied to the encoder unchanged.
    #[default]
    #[value(alias = "straight_through")]
    StraightThrough,
    /// The rotation trick (Fifty et al., 2024): `e` is produced as a fixed rotation and scaling
    /// of `z`, so the gradient reaching the encoder is rotated the same way. It carries how far
    /// and in which direction `z` sits from its code, which the straight-through copy loses.
    /// Measured worse than straight-through on the CIFAR-10 default (docs/experiments.md), so
    /// not the default.
    Rotation,
}

/// The settings every kind with a codebook shares (vq, cosine, residual; the codebook of each
/// level of a residual quantizer). They sit beside the kind's own fields in `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CodebookConfig {
    /// K: number of codes.
    pub codebook_size: i64,
    /// β: weight of the commitment loss.
    pub commitment_cost: f64,
    pub update: CodebookUpdate,
    /// Codes unused for this many training steps are re-seeded from recent encoder outputs
    /// (0 disables the restart).
    pub dead_code_steps: usize,
}

impl Default for CodebookConfig {
    fn default() -> Self {
        CodebookConfig {
            codebook_size: 512,
            commitment_cost: 0.25,
            update: CodebookUpdate::default(),
            dead_code_steps: 50,
        }
    }
}

impl CodebookConfig {
    /// Checks the codebook of vectors of dimension `code_dim`.
    pub fn validate(&self, code_dim: i64) -> Result<(), String> {
        if self.codebook_size < 2 || code_dim < 1 {
            return Err(format!(
                "codebook_size must be at least 2 and code_dim at least 1 (got {} and {code_dim})",
                self.codebook_size
            ));
        }
        if self.codebook_size > i64::from(vq_codes::MAX_CODEBOOK) {
            return Err(format!(
                "codebook_size must be at most {}, not {}",
                vq_codes::MAX_CODEBOOK,
                self.codebook_size
            ));
        }
        if let CodebookUpdate::Ema { decay, epsilon } = self.update {
            if !(0.0..1.0).contains(&decay) || epsilon <= 0.0 {
                return Err(format!(
                    "EMA decay must be in [0, 1) and epsilon positive (got {decay}, {epsilon})"
                ));
            }
        }
        if self.commitment_cost.is_nan() || self.commitment_cost < 0.0 {
            return Err(format!(
                "commitment_cost must be non-negative, not {}",
                self.commitment_cost
            ));
        }
        Ok(())
    }
}

/// Settings of the vector quantizer (`"kind": "vq"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VqConfig {
    #[serde(flatten)]
    pub codebook: CodebookConfig,
    /// D: dimension of each code (and of the encoder output).
    pub code_dim: i64,
    /// How the encoder gets gradients through the code lookup.
    pub gradient: GradientEstimator,
}

impl Default for VqConfig {
    fn default() -> Self {
        VqConfig {
            codebook: CodebookConfig::default(),
            code_dim: 64,
            gradient: GradientEstimator::default(),
        }
    }
}

impl VqConfig {
    /// The settings of a plain codebook of `code_dim`-dimensional vectors.
    pub fn of(codebook: &CodebookConfig, code_dim: i64) -> Self {
        VqConfig {
            codebook: codebook.clone(),
            code_dim,
            gradient: GradientEstimator::default(),
        }
    }
}

#[cfg(test)]
impl VqConfig {
    /// The tests' codebook: 16 codes of 4 dimensions, no dead-code restarts.
    pub(crate) fn tiny(update: CodebookUpdate) -> Self {
        VqConfig {
            codebook: CodebookConfig {
                codebook_size: 16,
                update,
                dead_code_steps: 0,
                ..Default::default()
            },
            code_dim: 4,
            ..VqConfig::default()
        }
    }
}

impl super::QuantizerKind for VqConfig {
    fn latent_dim(&self) -> i64 {
        self.code_dim
    }

    fn code_space(&self) -> CodeSpace {
        CodeSpace {
            depth: 1,
            vocabulary: self.codebook.codebook_size,
        }
    }

    fn validate(&self) -> Result<(), String> {
        self.codebook.validate(self.code_dim)
    }

    fn build(&self, vs: nn::Path<'_>) -> Box<dyn Quantizer> {
        Box::new(VectorQuantizer::new(vs, self))
    }

    fn describe(&self) -> String {
        format!(
            "vector quantizer, K = {} codes of dimension {}",
            self.codebook.codebook_size, self.code_dim
        )
    }

    fn codebook_mut(&mut self) -> Option<(&mut CodebookConfig, &mut i64)> {
        Some((&mut self.codebook, &mut self.code_dim))
    }
}

/// One codebook of K vectors of dimension D.
#[derive(Debug)]
pub struct VectorQuantizer {
    /// `(K, D)`; trained by the optimizer only with [`CodebookUpdate::Loss`].
    pub codebook: Tensor,
    /// EMA statistics (non-trainable, saved with the weights).
    ema_count: Tensor,
    ema_sum: Tensor,
    /// Training step at which each code was last chosen (non-trainable, saved).
    last_used: Tensor,
    config: VqConfig,
    /// Codes kept at unit length (the cosine quantizer's codebook): inputs must be unit too.
    unit_codes: bool,
}

/// Rows (or the channel axis, `dim`) scaled to unit length.
pub(crate) fn l2_normalize(t: &Tensor, dim: i64) -> Tensor {
    t / t.norm_scalaropt_dim(2, [dim], true).clamp_min(1e-12)
}

/// `λ·R·z` for each row: `R` is the rotation taking the direction of `z` onto that of `e` (a
/// Householder reflection through their bisector followed by one through `e`), `λ = ‖e‖/‖z‖`.
/// `R` and `λ` are constants to autograd, so `∂L/∂z = λ·Rᵀ·∂L/∂e`.
fn rotate_onto(z: &Tensor, e: &Tensor) -> Tensor {
    const TINY: f64 = 1e-6;
    let (r, e_dir, z_dir, scale) = {
        let _guard = tch::no_grad_guard();
        let z = z.detach().to_kind(Kind::Float);
        let e = e.detach().to_kind(Kind::Float);
        let z_norm = z.norm_scalaropt_dim(2, [1], true).clamp_min(TINY);
        let e_norm = e.norm_scalaropt_dim(2, [1], true).clamp_min(TINY);
        let z_dir = &z / &z_norm;
        let e_dir = &e / &e_norm;
        let bisector = &z_dir + &e_dir;
        let r = &bisector / bisector.norm_scalaropt_dim(2, [1], true).clamp_min(TINY);
        (r, e_dir, z_dir, e_norm / z_norm)
    };
    let z = z.to_kind(Kind::Float);
    let along_r = (&z * &r).sum_dim_intlist(1, true, Kind::Float);
    let along_z = (&z * &z_dir).sum_dim_intlist(1, true, Kind::Float);
    (&z - r * along_r * 2.0 + e_dir * along_z * 2.0) * scale
}

impl VectorQuantizer {
    /// The variables are `codebook`, `ema_count`, `ema_sum` and `last_used` under `vs`.
    pub fn new(vs: nn::Path<'_>, config: &VqConfig) -> Self {
        let (k, d) = (config.codebook.codebook_size, config.code_dim);
        let bound = 1.0 / k as f64;
        let mut codebook = vs.var(
            "codebook",
            &[k, d],
            nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        );
        if matches!(config.codebook.update, CodebookUpdate::Ema { .. }) {
            codebook = codebook.set_requires_grad(false);
        }
        let ema_count = vs.ones_no_train("ema_count", &[k]);
        let ema_sum = vs.zeros_no_train("ema_sum", &[k, d]);
        {
            let _guard = tch::no_grad_guard();
            let mut ema_sum = ema_sum.shallow_clone();
            ema_sum.copy_(&codebook);
        }
        VectorQuantizer {
            codebook,
            ema_count,
            ema_sum,
            last_used: vs.zeros_no_train("last_used", &[k]),
            config: config.clone(),
            unit_codes: false,
        }
    }

    /// A codebook of unit vectors for unit-length inputs: the nearest code is the one of
    /// largest cosine, and the codes are renormalised after every update.
    pub fn with_unit_codes(vs: nn::Path<'_>, config: &VqConfig) -> Self {
        let mut q = Self::new(vs, config);
        q.unit_codes = true;
        let unit = l2_normalize(&q.codebook.detach(), 1);
        q.set_codebook(&unit);
        q
    }

    pub fn codebook_size(&self) -> i64 {
        self.codebook.size()[0]
    }

    /// The nearest code of each row of `flat` (`(N, D)`): argmin of `‖e‖² − 2·z·e`.
    pub fn nearest(&self, flat: &Tensor) -> Tensor {
        let _guard = tch::no_grad_guard();
        self.scores(flat).argmin(1, false)
    }

    /// `(N, K)` distances of each row of `flat` to every code, up to the row's own `‖z‖²`.
    fn scores(&self, flat: &Tensor) -> Tensor {
        let cb = self.codebook.to_kind(flat.kind());
        let norms = cb.square().sum_dim_intlist(1, false, Kind::Float);
        norms.unsqueeze(0) - flat.matmul(&cb.tr()) * 2.0
    }

    /// The `count` nearest codes of each row of `flat` (`(N, D)`), nearest first: `(N, count)`.
    /// The first column is [`VectorQuantizer::nearest`]'s choice even where distances tie.
    pub fn ranked(&self, flat: &Tensor, count: i64) -> Tensor {
        let _guard = tch::no_grad_guard();
        let scores = self.scores(flat);
        let (_, ranked) = scores.topk(count.min(self.codebook_size()), 1, false, true);
        ranked.narrow(1, 0, 1).copy_(&scores.argmin(1, true));
        ranked
    }

    /// `(B, D, h, w)` vectors → `(B, 1, h, w, count)` codes, nearest first.
    fn ranked_map(&self, z: &Tensor, count: i64) -> Tensor {
        let size = z.size();
        let (b, d, h, w) = (size[0], size[1], size[2], size[3]);
        let flat = z.permute([0, 2, 3, 1]).reshape([-1, d]);
        self.ranked(&flat, count).view([b, 1, h, w, -1])
    }

    /// The encoder outputs of the last forward pass, `(B·h·w, D)`, detached.
    pub fn inputs_of(pass: &Quantized) -> &Tensor {
        &pass.saved[0]
    }

    /// Replaces the codes at `indices` (and their EMA statistics) with `values`.
    fn set_codes(&mut self, indices: &Tensor, values: &Tensor, step: i64) {
        let _guard = tch::no_grad_guard();
        let _ = self.codebook.index_copy_(0, indices, values);
        let _ = self.ema_sum.index_copy_(0, indices, values);
        let ones = Tensor::ones([indices.size()[0]], (Kind::Float, values.device()));
        let _ = self.ema_count.index_copy_(0, indices, &ones);
        let _ = self
            .last_used
            .index_copy_(0, indices, &(ones * step as f64));
    }

    /// The after-step update from one pass's `(N,)` codes, `(N, D)` inputs and `(K,)` counts:
    /// the EMA codebook update (EMA mode) and the restart of codes unused for
    /// `dead_code_steps` steps. Returns the number of codes restarted.
    pub(crate) fn update(
        &mut self,
        codes: &Tensor,
        inputs: &Tensor,
        counts: &Tensor,
        step: i64,
    ) -> i64 {
        let _guard = tch::no_grad_guard();
        let ema = matches!(self.config.codebook.update, CodebookUpdate::Ema { .. });
        let sums = ema.then(|| {
            Tensor::zeros_like(&self.ema_sum).index_add(0, codes, &inputs.to_kind(Kind::Float))
        });
        // Data-parallel: every rank updates with the whole global batch's statistics, so the
        // codebooks stay the same (one process: nothing happens).
        match &sums {
            Some(sums) => crate::collective::all_reduce_sum(&[counts, sums]),
            None => crate::collective::all_reduce_sum(&[counts]),
        }
        if let (CodebookUpdate::Ema { decay, epsilon }, Some(sums)) =
            (self.config.codebook.update, sums)
        {
            let k = self.codebook_size();
            self.ema_count
                .copy_(&(&self.ema_count * decay + counts * (1.0 - decay)));
            self.ema_sum
                .copy_(&(&self.ema_sum * decay + sums * (1.0 - decay)));
            let n = self.ema_count.sum(Kind::Float);
            let smoothed = (&self.ema_count + epsilon) / (&n + k as f64 * epsilon) * &n;
            let means = &self.ema_sum / smoothed.unsqueeze(1);
            if self.unit_codes {
                self.codebook.copy_(&l2_normalize(&means, 1));
            } else {
                self.codebook.copy_(&means);
            }
        }
        let used = counts.gt(0.0);
        let now = Tensor::full_like(&self.last_used, step as f64);
        self.last_used
            .copy_(&now.where_self(&used, &self.last_used));
        if self.config.codebook.dead_code_steps == 0 {
            return 0;
        }
        let dead = (&now - &self.last_used)
            .ge(self.config.codebook.dead_code_steps as f64)
            .nonzero()
            .flatten(0, -1);
        let n_dead = dead.size()[0];
        if n_dead == 0 {
            return 0;
        }
        // Re-seed each dead code with a random encoder output of this batch.
        let rows = inputs.size()[0];
        let pick = Tensor::randint(rows, [n_dead], (Kind::Int64, inputs.device()));
        let fresh = inputs.index_select(0, &pick).to_kind(Kind::Float);
        self.set_codes(&dead, &fresh, step);
        // Each rank drew from its own part of the batch: rank 0's choice stands everywhere.
        crate::collective::broadcast(
            &[
                &self.codebook,
                &self.ema_count,
                &self.ema_sum,
                &self.last_used,
            ],
            0,
        );
        n_dead
    }

    /// Loads a whole codebook (e.g. k-means centroids), resetting the EMA statistics to it.
    pub fn set_codebook(&mut self, centroids: &Tensor) {
        let k = self.codebook_size();
        let all = Tensor::arange(k, (Kind::Int64, self.codebook.device()));
        self.set_codes(
            &all,
            &centroids
                .to_device(self.codebook.device())
                .to_kind(Kind::Float),
            0,
        );
    }
}

impl Quantizer for VectorQuantizer {
    fn forward(&self, z: &Tensor) -> Quantized {
        let size = z.size();
        let (b, d, h, w) = (size[0], size[1], size[2], size[3]);
        let flat = z.permute([0, 2, 3, 1]).reshape([-1, d]);
        let codes_flat = self.nearest(&flat);
        let quantized = self
            .codebook
            .index_select(0, &codes_flat)
            .view([b, h, w, d])
            .permute([0, 3, 1, 2]);
        let commitment_loss =
            z.mse_loss(&quantized.detach(), Reduction::Mean) * self.config.codebook.commitment_cost;
        let aux_loss = match self.config.codebook.update {
            CodebookUpdate::Loss => {
                commitment_loss + quantized.mse_loss(&z.detach(), Reduction::Mean)
            }
            // Plus zero, as before the seam, so that the loss is bit for bit what it was.
            CodebookUpdate::Ema { .. } => {
                commitment_loss + Tensor::zeros([], (Kind::Float, z.device()))
            }
        };
        let counts = {
            let _guard = tch::no_grad_guard();
            Tensor::zeros([self.codebook_size()], (Kind::Float, z.device())).index_add(
                0,
                &codes_flat,
                &Tensor::ones([codes_flat.size()[0]], (Kind::Float, z.device())),
            )
        };
        let quantized = match self.config.gradient {
            // `z − sg[z]` is exactly zero, so the forward value is the code bit for bit (the
            // textbook `z + sg[e − z]` is off by rounding).
            GradientEstimator::StraightThrough => quantized.detach() + (z - z.detach()),
            GradientEstimator::Rotation => {
                let rotated = rotate_onto(&flat, &quantized.permute([0, 2, 3, 1]).reshape([-1, d]));
                let rotated = rotated.view([b, h, w, d]).permute([0, 3, 1, 2]);
                // The forward value is the code itself, bit for bit; only the gradient is
                // the rotation's.
                &rotated - rotated.detach() + quantized.detach()
            }
        };
        Quantized {
            quantized,
            codes: codes_flat.view([b, 1, h, w]),
            aux_loss,
            counts: counts.unsqueeze(0),
            saved: vec![flat.detach()],
        }
    }

    fn embed(&self, codes: &Tensor) -> Tensor {
        let size = codes.size();
        self.codebook
            .index_select(0, &codes.flatten(0, -1))
            .view([size[0], size[2], size[3], -1])
            .permute([0, 3, 1, 2])
    }

    fn ranked_codes(&self, z: &Tensor, count: i64) -> Option<Tensor> {
        Some(self.ranked_map(z, count))
    }

    fn code_space(&self) -> CodeSpace {
        CodeSpace {
            depth: 1,
            vocabulary: self.codebook_size(),
        }
    }

    /// The EMA codebook update (EMA mode) and the restart of codes unused for `dead_code_steps`
    /// steps.
    fn after_step(&mut self, pass: &Quantized, step: i64) -> i64 {
        self.update(
            &pass.codes.flatten(0, -1),
            Self::inputs_of(pass),
            &pass.counts.get(0),
            step,
        )
    }

    /// k-means on the vectors; the centroids become the codebook.
    fn init_from_data(
        &mut self,
        vectors: &Tensor,
        kmeans: &KMeansConfig,
    ) -> Result<Option<InitReport>, ModelError> {
        let d = self.config.code_dim;
        let flat = vectors
            .to_kind(Kind::Float)
            .to_device(Device::Cpu)
            .contiguous();
        let rows = flat.size()[0] as usize;
        let values = Vec::<f32>::try_from(flat.flatten(0, -1))?;
        let points = ndarray::Array2::from_shape_vec((rows, d as usize), values)
            .map_err(|e| ModelError::Shape(e.to_string()))?;
        let mut config = kmeans.clone();
        config.k = self.codebook_size() as usize;
        config.spherical |= self.unit_codes;
        let fit = KMeans::fit(points.view(), &config)?;
        let centroids =
            Tensor::from_slice(fit.centroids.as_slice().unwrap_or(&[])).view([config.k as i64, d]);
        self.set_codebook(&centroids);
        Ok(Some(InitReport {
            points: rows,
            iterations: fit.iterations,
            inertia: fit.inertia,
            empty_clusters: fit.cluster_sizes.iter().filter(|&&s| s == 0).count(),
        }))
    }

    fn parameters(&self) -> Vec<Tensor> {
        vec![self.codebook.shallow_clone()]
    }

    fn statistics(&self) -> Vec<Tensor> {
        vec![
            self.ema_count.shallow_clone(),
            self.ema_sum.shallow_clone(),
            self.last_used.shallow_clone(),
        ]
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn vq(update: CodebookUpdate) -> VqConfig {
        VqConfig::tiny(update)
    }

    #[test]
    fn nearest_is_the_exact_argmin() {
        let _rng = crate::seeded(1);
        let vs = nn::VarStore::new(crate::test_device());
        let q = VectorQuantizer::new(vs.root(), &vq(CodebookUpdate::default()));
        let z = Tensor::randn([200, 4], (Kind::Float, crate::test_device())) * 0.1;
        let exact = (z.unsqueeze(1) - q.codebook.unsqueeze(0))
            .square()
            .sum_dim_intlist(2, false, Kind::Float)
            .argmin(1, false);
        assert_eq!(q.nearest(&z), exact);
    }

    #[test]
    fn rotation_trick_gives_the_code_forward_and_a_rotated_gradient_back() {
        let _rng = crate::seeded(9);
        for gradient in [
            GradientEstimator::StraightThrough,
            GradientEstimator::Rotation,
        ] {
            let vs = nn::VarStore::new(crate::test_device());
            let cfg = VqConfig {
                gradient,
                ..vq(CodebookUpdate::default())
            };
            let q = VectorQuantizer::new(vs.root(), &cfg);
            let z = (Tensor::randn([2, 4, 3, 3], (Kind::Float, crate::test_device())) * 0.1)
                .set_requires_grad(true);
            let out = q.forward(&z);
            let codes = q.embed(&out.codes);
            // Forward: exactly the chosen codes.
            assert_eq!(out.quantized.detach(), codes);
            // Backward with the codes themselves as the upstream gradient.
            (&out.quantized * &codes).sum(Kind::Float).backward();
            let grad = z.grad();
            let expected = match gradient {
                GradientEstimator::StraightThrough => codes.shallow_clone(),
                // λ·Rᵀ·e = ‖e‖²/‖z‖² · z: R maps z's direction onto e's and is orthogonal.
                GradientEstimator::Rotation => {
                    let e2 = codes.square().sum_dim_intlist(1, true, Kind::Float);
                    let z2 = z.detach().square().sum_dim_intlist(1, true, Kind::Float);
                    z.detach() * e2 / z2
                }
            };
            let err = (&grad - &expected).abs().max().double_value(&[]);
            let scale = expected.abs().max().double_value(&[]);
            assert!(err <= 1e-4 * scale, "{gradient:?}: {err} vs {scale}");
        }
    }

    #[test]
    fn ema_with_no_memory_moves_codes_to_their_means() {
        let _rng = crate::seeded(3);
        let vs = nn::VarStore::new(crate::test_device());
        let mut q = VectorQuantizer::new(
            vs.root(),
            &vq(CodebookUpdate::Ema {
                decay: 0.0,
                epsilon: 1e-9,
            }),
        );
        let z = Tensor::randn([2, 4, 8, 8], (Kind::Float, crate::test_device())) * 0.1;
        let out = q.forward(&z);
        q.after_step(&out, 1);
        let codes = out.codes.flatten(0, -1);
        for k in 0..16 {
            let mask = codes.eq(k);
            let n = mask.sum(Kind::Int64).int64_value(&[]);
            if n == 0 {
                continue;
            }
            let mean = VectorQuantizer::inputs_of(&out)
                .index_select(0, &mask.nonzero().flatten(0, -1))
                .mean_dim(0, false, Kind::Float);
            let diff = (q.codebook.get(k) - mean).abs().max().double_value(&[]);
            assert!(diff < 1e-4, "code {k}: {diff}");
        }
        assert!(out.perplexity() >= 1.0 && out.perplexity() <= 16.0);
        assert_eq!(
            out.codes_used(),
            out.counts.gt(0.0).sum(Kind::Int64).int64_value(&[])
        );
    }

    #[test]
    fn dead_codes_restart_from_encoder_outputs() {
        let _rng = crate::seeded(4);
        let vs = nn::VarStore::new(crate::test_device());
        let mut cfg = vq(CodebookUpdate::default());
        cfg.codebook.dead_code_steps = 3;
        let mut q = VectorQuantizer::new(vs.root(), &cfg);
        // All inputs equal: one code wins, the others stay unused.
        let z = Tensor::ones([1, 4, 8, 8], (Kind::Float, crate::test_device())) * 0.3;
        let mut restarted = 0;
        for step in 1..=3 {
            let out = q.forward(&z);
            restarted += q.after_step(&out, step);
        }
        assert_eq!(
            restarted, 15,
            "all unused codes restart once they are 3 steps old"
        );
        let rows_equal_input = (&q.codebook - 0.3)
            .abs()
            .max_dim(1, false)
            .0
            .lt(1e-5)
            .sum(Kind::Int64)
            .int64_value(&[]);
        assert!(rows_equal_input >= 15, "{rows_equal_input}");
    }
}
