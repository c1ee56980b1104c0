//! A gated PixelCNN (van den Oord et al., 2016) over the grid of code indices, optionally
//! conditioned on the class label.
//!
//! Causality without masks and without the original PixelCNN's blind spot: the *vertical*
//! stack's features at row `i` see only input rows `≤ i` (its kernel covers the rows above and
//! the current one), and reach the *horizontal* stack only shifted down by one row, so as rows
//! `< i`; the horizontal stack sees columns `≤ j` of its own row, and its first layer reads the
//! input shifted right by one column, so the code at `(i, j)` itself is never seen.

use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Tensor};

use crate::{CodePrior, Provenance};

/// The PixelCNN's shape (`"kind": "pixelcnn"` in a prior's config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PixelCnnConfig {
    /// Feature channels of both stacks.
    pub channels: i64,
    /// Gated layers.
    pub layers: usize,
    /// Odd kernel width (the vertical kernel is `kernel / 2 + 1` rows by `kernel` columns).
    pub kernel: i64,
}

impl Default for PixelCnnConfig {
    fn default() -> Self {
        PixelCnnConfig {
            channels: 64,
            layers: 8,
            kernel: 3,
        }
    }
}

impl PixelCnnConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.channels < 1 || self.layers < 1 {
            return Err("channels ≥ 1 and layers ≥ 1 are needed".into());
        }
        if self.kernel < 3 || self.kernel % 2 == 0 {
            return Err(format!(
                "kernel must be odd and at least 3, not {}",
                self.kernel
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
    fn new(vs: nn::Path<'_>, cfg: &PixelCnnConfig, classes: i64, residual: bool) -> Self {
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
            (classes > 0)
                .then(|| nn::embedding(&vs / name, classes, 2 * c, nn::EmbeddingConfig::default()))
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

/// Gated PixelCNN over `(B, h, w)` code grids. Its variables are `embedding`, `layer{i}.*`,
/// `head_hidden` and `head_out`.
#[derive(Debug)]
pub struct PixelCnnPrior {
    provenance: Provenance,
    embedding: nn::Embedding,
    layers: Vec<GatedLayer>,
    head_hidden: nn::Conv2D,
    head_out: nn::Conv2D,
}

impl PixelCnnPrior {
    pub fn new(vs: nn::Path<'_>, cfg: &PixelCnnConfig, provenance: &Provenance) -> Self {
        let c = cfg.channels;
        let vocabulary = provenance.codes.vocabulary;
        let layers = (0..cfg.layers)
            .map(|i| GatedLayer::new(&vs / format!("layer{i}"), cfg, provenance.classes, i > 0))
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
            provenance: provenance.clone(),
            embedding: nn::embedding(&vs / "embedding", vocabulary, c, Default::default()),
            layers,
            head_hidden: one("head_hidden", c, c),
            head_out: one("head_out", c, vocabulary),
        }
    }
}

impl CodePrior for PixelCnnPrior {
    fn provenance(&self) -> &Provenance {
        &self.provenance
    }

    /// The network has no dropout: `train` changes nothing.
    fn logits(&self, codes: &Tensor, labels: Option<&Tensor>, _train: bool) -> Tensor {
        let labels = if self.provenance.classes > 0 {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;
    use vq_model::CodeSpace;

    fn tiny(vs: &nn::VarStore, classes: i64, side: i64) -> PixelCnnPrior {
        let arch = PixelCnnConfig {
            channels: 8,
            layers: 4,
            kernel: 3,
        };
        let provenance = Provenance {
            codes: CodeSpace {
                depth: 1,
                vocabulary: 7,
            },
            grid_side: side,
            classes,
            ..Provenance::default()
        };
        PixelCnnPrior::new(vs.root(), &arch, &provenance)
    }

    #[test]
    fn a_code_never_sees_itself_or_later_codes_and_sees_all_earlier_ones() {
        let _rng = vq_model::seeded(0);
        let vs = nn::VarStore::new(vq_model::test_device());
        let prior = tiny(&vs, 0, 6);
        let (h, w) = (6, 6);
        let codes = Tensor::randint(7, [1, h, w], (Kind::Int64, vq_model::test_device()));
        let base = prior.logits(&codes, None, false);
        for (pi, pj) in [(0, 0), (2, 3), (3, 0), (5, 5), (1, 5)] {
            let changed = codes.copy();
            let old = changed.int64_value(&[0, pi, pj]);
            let _ = changed.get(0).get(pi).get(pj).fill_((old + 1) % 7);
            let out = prior.logits(&changed, None, false);
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
        let _rng = vq_model::seeded(1);
        let vs = nn::VarStore::new(vq_model::test_device());
        let prior = tiny(&vs, 3, 4);
        let codes = Tensor::randint(7, [2, 4, 4], (Kind::Int64, vq_model::test_device()));
        let a = prior.logits(&codes, Some(&Tensor::from_slice(&[0i64, 0])), false);
        let b = prior.logits(&codes, Some(&Tensor::from_slice(&[2i64, 2])), false);
        assert!((a - b).abs().max().double_value(&[]) > 0.0);
        let labels = Tensor::from_slice(&[1i64, 2, 0]);
        tch::manual_seed(42);
        let s1 = prior.sample(
            3,
            Some(&labels),
            &crate::SampleOptions::default(),
            vq_model::test_device(),
        );
        tch::manual_seed(42);
        let s2 = prior.sample(
            3,
            Some(&labels),
            &crate::SampleOptions::default(),
            vq_model::test_device(),
        );
        assert_eq!(s1, s2);
        assert_eq!(s1.size(), vec![3, 4, 4]);
        assert!(s1.min().int64_value(&[]) >= 0 && s1.max().int64_value(&[]) < 7);
        let nll = prior.nll(&s1, Some(&labels), false).double_value(&[]);
        assert!(nll.is_finite() && nll > 0.0);
    }
}
