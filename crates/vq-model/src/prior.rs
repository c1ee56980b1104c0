//! The code prior: a gated PixelCNN (van den Oord et al., 2016) over the grid of code indices,
//! optionally conditioned on the class label, from which new code grids (and so new images) are
//! sampled one code at a time in raster order.
//!
//! Causality without masks and without the original PixelCNN's blind spot: the *vertical*
//! stack's features at row `i` see only input rows `≤ i` (its kernel covers the rows above and
//! the current one), and reach the *horizontal* stack only shifted down by one row, so as rows
//! `< i`; the horizontal stack sees columns `≤ j` of its own row, and its first layer reads the
//! input shifted right by one column, so the code at `(i, j)` itself is never seen.

use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};

/// The prior's shape, saved as JSON next to every prior checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// A misspelt setting is an error, not silently the default.
#[serde(default, deny_unknown_fields)]
pub struct PriorConfig {
    /// K of the VQ-VAE whose codes it models.
    pub codebook_size: i64,
    /// Feature channels of both stacks.
    pub channels: i64,
    /// Gated layers.
    pub layers: usize,
    /// Odd kernel width (the vertical kernel is `kernel / 2 + 1` rows by `kernel` columns).
    pub kernel: i64,
    /// Number of classes to condition on (0: unconditional).
    pub classes: i64,
    /// Model id (hex) of the VQ-VAE whose codes it was trained on; a prior is used only with
    /// that VQ-VAE.
    pub vqvae_model_id: String,
    /// Side of the code grids it was trained on (8 for 32 × 32 images at 4× downsampling).
    pub grid_side: i64,
    /// Side of the images behind those grids (for bits per dimension).
    pub image_side: i64,
    /// Names of the classes, by label (empty: CIFAR-10's).
    pub class_names: Vec<String>,
}

impl Default for PriorConfig {
    fn default() -> Self {
        PriorConfig {
            codebook_size: 512,
            channels: 64,
            layers: 8,
            kernel: 3,
            classes: 10,
            vqvae_model_id: String::new(),
            grid_side: 8,
            image_side: 32,
            class_names: Vec::new(),
        }
    }
}

impl PriorConfig {
    /// The name of each class label (CIFAR-10's unless the config lists its own).
    pub fn class_names(&self) -> Vec<String> {
        if self.class_names.is_empty() {
            vq_data::CLASS_NAMES.iter().map(|s| s.to_string()).collect()
        } else {
            self.class_names.clone()
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.codebook_size < 2 || self.channels < 1 || self.layers < 1 {
            return Err("codebook_size ≥ 2, channels ≥ 1 and layers ≥ 1 are needed".into());
        }
        if self.kernel < 3 || self.kernel % 2 == 0 {
            return Err(format!(
                "kernel must be odd and at least 3, not {}",
                self.kernel
            ));
        }
        if self.classes < 0 {
            return Err("classes must not be negative".into());
        }
        if self.grid_side < 1 || self.image_side < self.grid_side {
            return Err(format!(
                "grid_side {} and image_side {} must be positive, the image at least the grid",
                self.grid_side, self.image_side
            ));
        }
        if !self.class_names.is_empty() && self.class_names.len() as i64 != self.classes {
            return Err(format!(
                "{} class names for {} classes",
                self.class_names.len(),
                self.classes
            ));
        }
        Ok(())
    }
}

/// Pads `[left, right, top, bottom]` with zeros.
fn pad(x: &Tensor, left: i64, right: i64, top: i64, bottom: i64) -> Tensor {
    x.constant_pad_nd([left, right, top, bottom])
}

/// Row `i` takes row `i − 1` (zeros in the first row).
fn shift_down(x: &Tensor) -> Tensor {
    let h = x.size()[2];
    pad(x, 0, 0, 1, 0).narrow(2, 0, h)
}

/// Column `j` takes column `j − 1` (zeros in the first column).
fn shift_right(x: &Tensor) -> Tensor {
    let w = x.size()[3];
    pad(x, 1, 0, 0, 0).narrow(3, 0, w)
}

fn gate(x: &Tensor) -> Tensor {
    let halves = x.chunk(2, 1);
    halves[0].tanh() * halves[1].sigmoid()
}

#[derive(Debug)]
struct GatedLayer {
    vertical: nn::Conv2D,
    horizontal: nn::Conv2D,
    vertical_to_horizontal: nn::Conv2D,
    horizontal_out: nn::Conv2D,
    class_vertical: Option<nn::Embedding>,
    class_horizontal: Option<nn::Embedding>,
    kernel: i64,
    residual: bool,
}

impl GatedLayer {
    fn new(vs: nn::Path<'_>, cfg: &PriorConfig, residual: bool) -> Self {
        let (c, k) = (cfg.channels, cfg.kernel);
        let conv = |name: &str, i, o, ks: [i64; 2]| {
            nn::conv(
                &vs / name,
                i,
                o,
                ks,
                nn::ConvConfigND::<[i64; 2]>::default(),
            )
        };
        let class = |name: &str| {
            (cfg.classes > 0).then(|| {
                nn::embedding(
                    &vs / name,
                    cfg.classes,
                    2 * c,
                    nn::EmbeddingConfig::default(),
                )
            })
        };
        GatedLayer {
            vertical: conv("vertical", c, 2 * c, [k / 2 + 1, k]),
            horizontal: conv("horizontal", c, 2 * c, [1, k / 2 + 1]),
            vertical_to_horizontal: conv("vertical_to_horizontal", 2 * c, 2 * c, [1, 1]),
            horizontal_out: conv("horizontal_out", c, c, [1, 1]),
            class_vertical: class("class_vertical"),
            class_horizontal: class("class_horizontal"),
            kernel: k,
            residual,
        }
    }

    fn forward(&self, v: &Tensor, h: &Tensor, labels: Option<&Tensor>) -> (Tensor, Tensor) {
        let half = self.kernel / 2;
        let class_bias = |e: &Option<nn::Embedding>| -> Option<Tensor> {
            Some(e.as_ref()?.forward(labels?).unsqueeze(-1).unsqueeze(-1))
        };
        // Rows i − half ..= i.
        let mut v_pre = self.vertical.forward(&pad(v, half, half, half, 0));
        // Columns j − half ..= j.
        let mut h_pre = self.horizontal.forward(&pad(h, half, 0, 0, 0))
            + self.vertical_to_horizontal.forward(&shift_down(&v_pre));
        if let Some(b) = class_bias(&self.class_vertical) {
            v_pre += b;
        }
        if let Some(b) = class_bias(&self.class_horizontal) {
            h_pre += b;
        }
        let v_out = gate(&v_pre);
        let h_out = self.horizontal_out.forward(&gate(&h_pre));
        let h_out = if self.residual { h_out + h } else { h_out };
        (v_out, h_out)
    }
}

/// Gated PixelCNN over `(B, h, w)` code grids.
#[derive(Debug)]
pub struct PixelCnnPrior {
    pub config: PriorConfig,
    embedding: nn::Embedding,
    layers: Vec<GatedLayer>,
    head_hidden: nn::Conv2D,
    head_out: nn::Conv2D,
}

impl PixelCnnPrior {
    pub fn new(vs: nn::Path<'_>, cfg: &PriorConfig) -> Self {
        let c = cfg.channels;
        let layers = (0..cfg.layers)
            .map(|i| GatedLayer::new(&vs / format!("layer{i}"), cfg, i > 0))
            .collect();
        let one = |name: &str, i, o| {
            nn::conv(
                &vs / name,
                i,
                o,
                [1, 1],
                nn::ConvConfigND::<[i64; 2]>::default(),
            )
        };
        PixelCnnPrior {
            config: cfg.clone(),
            embedding: nn::embedding(&vs / "embedding", cfg.codebook_size, c, Default::default()),
            layers,
            head_hidden: one("head_hidden", c, c),
            head_out: one("head_out", c, cfg.codebook_size),
        }
    }

    /// `(B, K, h, w)` logits of each code given the codes before it in raster order (and the
    /// class, when conditional: `labels` is `(B,)` i64).
    pub fn forward(&self, codes: &Tensor, labels: Option<&Tensor>) -> Tensor {
        let labels = if self.config.classes > 0 {
            labels
        } else {
            None
        };
        let x = self.embedding.forward(codes).permute([0, 3, 1, 2]);
        let mut v = x.shallow_clone();
        let mut h = shift_right(&x);
        for layer in &self.layers {
            (v, h) = layer.forward(&v, &h, labels);
        }
        self.head_out
            .forward(&self.head_hidden.forward(&h.relu()).relu())
    }

    /// Mean negative log-likelihood per code, in nats.
    pub fn nll(&self, codes: &Tensor, labels: Option<&Tensor>) -> Tensor {
        let logits = self.forward(codes, labels);
        logits.cross_entropy_loss::<Tensor>(codes, None, tch::Reduction::Mean, -100, 0.0)
    }

    /// Samples `n` grids of `side × side` codes, one position at a time; `temperature` divides
    /// the logits (1: the model's distribution). Uses LibTorch's generator (seed it with
    /// `tch::manual_seed` for reproducible samples).
    pub fn sample(
        &self,
        n: i64,
        side: (i64, i64),
        labels: Option<&Tensor>,
        temperature: f64,
        device: tch::Device,
    ) -> Tensor {
        let _guard = tch::no_grad_guard();
        let (h, w) = side;
        let codes = Tensor::zeros([n, h, w], (Kind::Int64, device));
        for i in 0..h {
            for j in 0..w {
                // Only the rows up to i matter for position (i, j): crop the rest away.
                let visible = codes.narrow(1, 0, i + 1);
                let logits = self.forward(&visible, labels).select(2, i).select(2, j);
                let probs =
                    (logits.to_kind(Kind::Float) / temperature.max(1e-6)).softmax(-1, Kind::Float);
                let next = probs.multinomial(1, true).squeeze_dim(1);
                codes.select(1, i).select(1, j).copy_(&next);
            }
        }
        codes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn tiny(classes: i64) -> PriorConfig {
        PriorConfig {
            codebook_size: 7,
            channels: 8,
            layers: 4,
            kernel: 3,
            classes,
            ..PriorConfig::default()
        }
    }

    #[test]
    fn a_code_never_sees_itself_or_later_codes_and_sees_all_earlier_ones() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let prior = PixelCnnPrior::new(vs.root(), &tiny(0));
        let (h, w) = (6, 6);
        let codes = Tensor::randint(7, [1, h, w], (Kind::Int64, Device::Cpu));
        let base = prior.forward(&codes, None);
        for (pi, pj) in [(0, 0), (2, 3), (3, 0), (5, 5), (1, 5)] {
            let changed = codes.copy();
            let old = changed.int64_value(&[0, pi, pj]);
            let _ = changed.get(0).get(pi).get(pj).fill_((old + 1) % 7);
            let out = prior.forward(&changed, None);
            for i in 0..h {
                for j in 0..w {
                    let diff = (out.get(0).select(1, i).select(1, j)
                        - base.get(0).select(1, i).select(1, j))
                    .abs()
                    .max()
                    .double_value(&[]);
                    let earlier_or_same = (i, j) <= (pi, pj);
                    if earlier_or_same {
                        assert_eq!(
                            diff, 0.0,
                            "changing ({pi},{pj}) moved the logits at ({i},{j})"
                        );
                    }
                    // The old PixelCNN's blind spot: the code up and to the right. With 4
                    // layers of 3-wide kernels, (pi + 1, pj - 1) is well within reach.
                    if (i, j) == (pi + 1, pj.wrapping_sub(1)) && pj >= 1 && pi + 1 < h {
                        assert!(diff > 0.0, "({i},{j}) does not see ({pi},{pj})");
                    }
                    if (i, j) == (pi, pj + 1) && pj + 1 < w {
                        assert!(diff > 0.0, "({i},{j}) does not see its left neighbour");
                    }
                }
            }
        }
    }

    #[test]
    fn class_conditioning_changes_the_logits_and_sampling_is_reproducible() {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let prior = PixelCnnPrior::new(vs.root(), &tiny(3));
        let codes = Tensor::randint(7, [2, 4, 4], (Kind::Int64, Device::Cpu));
        let a = prior.forward(&codes, Some(&Tensor::from_slice(&[0i64, 0])));
        let b = prior.forward(&codes, Some(&Tensor::from_slice(&[2i64, 2])));
        assert!((a - b).abs().max().double_value(&[]) > 0.0);
        let labels = Tensor::from_slice(&[1i64, 2, 0]);
        tch::manual_seed(42);
        let s1 = prior.sample(3, (4, 4), Some(&labels), 1.0, Device::Cpu);
        tch::manual_seed(42);
        let s2 = prior.sample(3, (4, 4), Some(&labels), 1.0, Device::Cpu);
        assert_eq!(s1, s2);
        assert_eq!(s1.size(), vec![3, 4, 4]);
        assert!(s1.min().int64_value(&[]) >= 0 && s1.max().int64_value(&[]) < 7);
        let nll = prior.nll(&s1, Some(&labels)).double_value(&[]);
        assert!(nll.is_finite() && nll > 0.0);
    }
}
