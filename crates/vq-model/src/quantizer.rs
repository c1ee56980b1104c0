//! The vector quantizer: nearest code by the GEMM form of the distance, straight-through
//! gradients, commitment loss, EMA or codebook-loss updates, and dead-code restarts.

use tch::{nn, Kind, Reduction, Tensor};

use crate::config::{CodebookUpdate, GradientEstimator, VqVaeConfig};

#[derive(Debug)]
pub struct Quantizer {
    /// `(K, D)`; trained by the optimizer only with [`CodebookUpdate::Loss`].
    pub codebook: Tensor,
    /// EMA statistics (non-trainable, saved with the weights).
    ema_count: Tensor,
    ema_sum: Tensor,
    /// Training step at which each code was last chosen (non-trainable, saved).
    last_used: Tensor,
    update: CodebookUpdate,
    gradient: GradientEstimator,
    commitment_cost: f64,
    dead_code_steps: usize,
}

/// What one pass through the quantizer gives.
#[derive(Debug)]
pub struct Quantized {
    /// `(B, D, h, w)` with straight-through gradients to the encoder.
    pub quantized: Tensor,
    /// `(B, h, w)` code indices (i64).
    pub codes: Tensor,
    /// `β‖z − sg[e]‖²`.
    pub commitment_loss: Tensor,
    /// `‖sg[z] − e‖²` in codebook-loss mode, zero with EMA.
    pub codebook_loss: Tensor,
    /// Encoder outputs as `(B·h·w, D)`, detached: what the EMA update and restarts use.
    pub flat_inputs: Tensor,
    /// Times each code was chosen in this batch, `(K,)` f32.
    pub counts: Tensor,
}

impl Quantized {
    /// `exp(entropy)` of the batch's code usage: K when all codes are used evenly.
    pub fn perplexity(&self) -> f64 {
        let p = &self.counts / self.counts.sum(Kind::Float).clamp_min(1.0);
        let entropy = -(&p * (&p + 1e-10).log()).sum(Kind::Float);
        entropy.exp().double_value(&[])
    }

    /// Number of distinct codes used in this batch.
    pub fn codes_used(&self) -> i64 {
        self.counts.gt(0.0).sum(Kind::Int64).int64_value(&[])
    }
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

impl Quantizer {
    pub fn new(vs: nn::Path<'_>, cfg: &VqVaeConfig) -> Self {
        let (k, d) = (cfg.codebook_size, cfg.code_dim);
        let bound = 1.0 / k as f64;
        let mut codebook = vs.var(
            "codebook",
            &[k, d],
            nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        );
        if matches!(cfg.codebook_update, CodebookUpdate::Ema { .. }) {
            codebook = codebook.set_requires_grad(false);
        }
        let ema_count = vs.ones_no_train("ema_count", &[k]);
        let ema_sum = vs.zeros_no_train("ema_sum", &[k, d]);
        {
            let _guard = tch::no_grad_guard();
            let mut ema_sum = ema_sum.shallow_clone();
            ema_sum.copy_(&codebook);
        }
        Quantizer {
            codebook,
            ema_count,
            ema_sum,
            last_used: vs.zeros_no_train("last_used", &[k]),
            update: cfg.codebook_update,
            gradient: cfg.gradient,
            commitment_cost: cfg.commitment_cost,
            dead_code_steps: cfg.dead_code_steps,
        }
    }

    pub fn codebook_size(&self) -> i64 {
        self.codebook.size()[0]
    }

    /// The nearest code of each row of `flat` (`(N, D)`): argmin of `‖e‖² − 2·z·e`.
    pub fn nearest(&self, flat: &Tensor) -> Tensor {
        let _guard = tch::no_grad_guard();
        let cb = self.codebook.to_kind(flat.kind());
        let norms = cb.square().sum_dim_intlist(1, false, Kind::Float);
        let scores = norms.unsqueeze(0) - flat.matmul(&cb.tr()) * 2.0;
        scores.argmin(1, false)
    }

    /// Embeds `(B, h, w)` codes as `(B, D, h, w)`.
    pub fn embed(&self, codes: &Tensor) -> Tensor {
        let size = codes.size();
        self.codebook
            .index_select(0, &codes.flatten(0, -1))
            .view([size[0], size[1], size[2], -1])
            .permute([0, 3, 1, 2])
    }

    /// Quantizes `(B, D, h, w)` encoder outputs.
    pub fn forward(&self, z: &Tensor) -> Quantized {
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
            z.mse_loss(&quantized.detach(), Reduction::Mean) * self.commitment_cost;
        let codebook_loss = match self.update {
            CodebookUpdate::Loss => quantized.mse_loss(&z.detach(), Reduction::Mean),
            CodebookUpdate::Ema { .. } => Tensor::zeros([], (Kind::Float, z.device())),
        };
        let counts = {
            let _guard = tch::no_grad_guard();
            Tensor::zeros([self.codebook_size()], (Kind::Float, z.device())).index_add(
                0,
                &codes_flat,
                &Tensor::ones([codes_flat.size()[0]], (Kind::Float, z.device())),
            )
        };
        let quantized = match self.gradient {
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
            codes: codes_flat.view([b, h, w]),
            commitment_loss,
            codebook_loss,
            flat_inputs: flat.detach(),
            counts,
        }
    }

    /// After an optimizer step: the EMA codebook update (EMA mode) and the restart of codes
    /// unused for `dead_code_steps` steps. Returns the number of codes restarted.
    pub fn update(&mut self, q: &Quantized, step: i64) -> i64 {
        let _guard = tch::no_grad_guard();
        let codes = q.codes.flatten(0, -1);
        if let CodebookUpdate::Ema { decay, epsilon } = self.update {
            let k = self.codebook_size();
            let sums = Tensor::zeros_like(&self.ema_sum).index_add(
                0,
                &codes,
                &q.flat_inputs.to_kind(Kind::Float),
            );
            self.ema_count
                .copy_(&(&self.ema_count * decay + &q.counts * (1.0 - decay)));
            self.ema_sum
                .copy_(&(&self.ema_sum * decay + sums * (1.0 - decay)));
            let n = self.ema_count.sum(Kind::Float);
            let smoothed = (&self.ema_count + epsilon) / (&n + k as f64 * epsilon) * &n;
            self.codebook
                .copy_(&(&self.ema_sum / smoothed.unsqueeze(1)));
        }
        let used = q.counts.gt(0.0);
        let now = Tensor::full_like(&self.last_used, step as f64);
        self.last_used
            .copy_(&now.where_self(&used, &self.last_used));
        if self.dead_code_steps == 0 {
            return 0;
        }
        let dead = (&now - &self.last_used)
            .ge(self.dead_code_steps as f64)
            .nonzero()
            .flatten(0, -1);
        let n_dead = dead.size()[0];
        if n_dead == 0 {
            return 0;
        }
        // Re-seed each dead code with a random encoder output of this batch.
        let rows = q.flat_inputs.size()[0];
        let pick = Tensor::randint(rows, [n_dead], (Kind::Int64, q.flat_inputs.device()));
        let fresh = q.flat_inputs.index_select(0, &pick).to_kind(Kind::Float);
        self.set_codes(&dead, &fresh, step);
        n_dead
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
