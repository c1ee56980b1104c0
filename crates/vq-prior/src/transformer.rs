//! A decoder-only transformer over the raster-ordered codes of a grid (minGPT's shape: pre-norm
//! blocks, causal self-attention, learned positions), whose first token is the class. A null
//! class, put in place of the true one at random during training, makes one model both
//! conditional and unconditional, which classifier-free guidance needs. Sampling keeps each
//! layer's keys and values, so every new code costs one position, not a pass over the grid.

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use crate::portable::{Dense, Layer, Norm, PortableTransformer};
use crate::{CodePrior, Provenance};

/// The transformer's shape (`"kind": "transformer"` in a prior's config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransformerConfig {
    /// Width of the residual stream.
    pub width: i64,
    pub layers: usize,
    pub heads: i64,
    /// Key/value heads (grouped-query attention; Ainslie et al. 2023): each serves
    /// `heads / kv_heads` query heads, so sampling's key/value cache, which every new code
    /// reads in full, is that many times smaller. Absent: one per query head (classic
    /// multi-head attention, the shape of every prior trained before it existed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_heads: Option<i64>,
    /// Dropout of the embeddings, the attention weights and each block's outputs (training).
    pub dropout: f64,
    /// Probability that a training grid's class is replaced by the null class.
    pub class_dropout: f64,
}

impl Default for TransformerConfig {
    fn default() -> Self {
        TransformerConfig {
            width: 256,
            layers: 6,
            heads: 8,
            kv_heads: None,
            dropout: 0.1,
            class_dropout: 0.1,
        }
    }
}

impl TransformerConfig {
    /// Key/value heads: `kv_heads`, or one per query head.
    pub fn key_value_heads(&self) -> i64 {
        self.kv_heads.unwrap_or(self.heads)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.width < 1 || self.heads < 1 || self.layers < 1 || self.width % self.heads != 0 {
            return Err(format!(
                "width ({}) must be a positive multiple of heads ({}), with at least one layer",
                self.width, self.heads
            ));
        }
        if let Some(kv) = self.kv_heads {
            if kv < 1 || self.heads % kv != 0 {
                return Err(format!(
                    "kv_heads ({kv}) must be a positive divisor of heads ({})",
                    self.heads
                ));
            }
        }
        for (name, p) in [
            ("dropout", self.dropout),
            ("class_dropout", self.class_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("{name} must be in [0, 1), not {p}"));
            }
        }
        Ok(())
    }
}

/// `x · Wᵀ + b`, initialised as minGPT does (N(0, 0.02), zero bias).
#[derive(Debug)]
struct Linear {
    ws: Tensor,
    bs: Tensor,
}

impl Linear {
    fn new(vs: nn::Path<'_>, i: i64, o: i64) -> Self {
        Linear {
            ws: vs.randn("weight", &[o, i], 0.0, 0.02),
            bs: vs.zeros("bias", &[o]),
        }
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Tensor {
        // One fused product-and-bias (addmm) rather than a product and a second pass.
        xs.linear(&self.ws, Some(&self.bs))
    }
}

impl Linear {
    /// The weights in `kind` (the same tensors when they already are), converted once for a
    /// whole pass or sampling call instead of at every product. The weights themselves stay
    /// f32: the optimizer updates them, and a checkpoint holds them.
    fn cast(&self, kind: Kind) -> Linear {
        Linear {
            ws: self.ws.to_kind(kind),
            bs: self.bs.to_kind(kind),
        }
    }
}

/// The keys and values of one layer for the positions seen so far: `(B, heads, T, head_dim)`
/// each, filled up to `len`.
#[derive(Debug)]
struct LayerCache {
    keys: Tensor,
    values: Tensor,
}

/// A linear layer as one pass computes it.
enum PassLinear {
    /// Weights and bias in the products' number type (f32 or bf16).
    Cast(Linear),
    /// int8 products: the weights quantized once per output channel (symmetric, `(I, O)` for
    /// `_int_mm`), each input row quantized as it comes (symmetric, its own scale), products
    /// summed exactly in int32 and scaled back to f32, the bias added in f32.
    Int8 {
        weights: Tensor,
        scales: Tensor,
        bias: Tensor,
    },
}

/// The largest magnitude of a symmetric int8 code (−127..=127: −128 is left out so that a
/// value and its negation quantize alike).
const INT8_LEVELS: f64 = 127.0;

impl PassLinear {
    fn new(linear: &Linear, kind: Kind) -> Self {
        if kind != Kind::Int8 {
            return PassLinear::Cast(linear.cast(kind));
        }
        // Per output channel: row o of the weights is scaled by its own largest magnitude.
        let scales =
            (linear.ws.abs().amax([1], true) / INT8_LEVELS).clamp_min(f32::MIN_POSITIVE as f64);
        let weights = (&linear.ws / &scales)
            .round()
            .to_kind(Kind::Int8)
            .transpose(0, 1)
            .contiguous();
        PassLinear::Int8 {
            weights,
            scales: scales.view([1, -1]),
            bias: linear.bs.shallow_clone(),
        }
    }
}

/// A block's linear layers as one pass computes them: cast to `kind`, the number type of
/// their products (f32, bf16 where the CPU or GPU runs it natively, or int8 for sampling). The
/// layer norms, the residual stream and the logits stay f32.
struct Products {
    qkv: PassLinear,
    proj: PassLinear,
    fc1: PassLinear,
    fc2: PassLinear,
    /// Whether a product's result stays in `kind` (sampling: GELU then runs in bf16 too, and
    /// the residual additions and the key/value cache widen it) or is widened to f32 at once
    /// (training, whose bf16 passes keep the rest in f32). int8 products always give f32.
    low_results: bool,
}

impl Products {
    /// `x · Wᵀ + b` with `linear` (one of this struct's) in its number type.
    fn apply(&self, linear: &PassLinear, xs: &Tensor) -> Tensor {
        match linear {
            PassLinear::Cast(linear) if linear.ws.kind() == Kind::Float => linear.forward(xs),
            PassLinear::Cast(linear) => {
                let product = xs.to_kind(linear.ws.kind()).apply(linear);
                if self.low_results {
                    product
                } else {
                    product.to_kind(Kind::Float)
                }
            }
            PassLinear::Int8 {
                weights,
                scales,
                bias,
            } => {
                let mut shape = xs.size();
                let inputs = *shape
                    .last()
                    .expect("a linear layer's input has a last dimension");
                let rows = xs.to_kind(Kind::Float).reshape([-1, inputs]);
                let row_scales =
                    (rows.abs().amax([1], true) / INT8_LEVELS).clamp_min(f32::MIN_POSITIVE as f64);
                let codes = (&rows / &row_scales).round().to_kind(Kind::Int8);
                let sums = codes.internal_int_mm(weights).to_kind(Kind::Float);
                let out = sums * (row_scales * scales) + bias;
                *shape.last_mut().expect("checked above") = out.size()[1];
                out.view(shape.as_slice())
            }
        }
    }
}

#[derive(Debug)]
struct Block {
    ln1: nn::LayerNorm,
    qkv: Linear,
    proj: Linear,
    ln2: nn::LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: i64,
    kv_heads: i64,
    dropout: f64,
    /// The number type of the linear layers' products in training (f32 unless the trainer
    /// asks for bf16); evaluation always uses f32, sampling the prior's `sample_kind`.
    train_kind: Kind,
}

impl Block {
    fn new(vs: nn::Path<'_>, cfg: &TransformerConfig) -> Self {
        let d = cfg.width;
        let kv_width = cfg.key_value_heads() * (d / cfg.heads);
        Block {
            ln1: nn::layer_norm(&vs / "ln1", vec![d], Default::default()),
            // Queries, then keys, then values: `3 d` outputs with a key/value head per query head.
            qkv: Linear::new(&vs / "qkv", d, d + 2 * kv_width),
            proj: Linear::new(&vs / "proj", d, d),
            ln2: nn::layer_norm(&vs / "ln2", vec![d], Default::default()),
            fc1: Linear::new(&vs / "fc1", d, 4 * d),
            fc2: Linear::new(&vs / "fc2", 4 * d, d),
            heads: cfg.heads,
            kv_heads: cfg.key_value_heads(),
            dropout: cfg.dropout,
            train_kind: Kind::Float,
        }
    }

    /// The linear layers cast for products in `kind`.
    fn products(&self, kind: Kind, low_results: bool) -> Products {
        Products {
            qkv: PassLinear::new(&self.qkv, kind),
            proj: PassLinear::new(&self.proj, kind),
            fc1: PassLinear::new(&self.fc1, kind),
            fc2: PassLinear::new(&self.fc2, kind),
            low_results,
        }
    }

    /// `(B, T, D)` → queries `(B, heads, T, D / heads)`, keys and values `(B, kv_heads, T,
    /// D / heads)`.
    fn qkv(&self, x: &Tensor, p: &Products) -> (Tensor, Tensor, Tensor) {
        let (b, t, d) = x.size3().expect("(B, T, D) activations");
        let head_dim = d / self.heads;
        let parts = p.apply(&p.qkv, &x.apply(&self.ln1));
        let split = |start: i64, heads: i64| {
            parts
                .narrow(2, start, heads * head_dim)
                .view([b, t, heads, head_dim])
                .transpose(1, 2)
        };
        let kv_width = self.kv_heads * head_dim;
        (
            split(0, self.heads),
            split(d, self.kv_heads),
            split(d + kv_width, self.kv_heads),
        )
    }

    /// Query heads per key/value head.
    fn group(&self) -> i64 {
        self.heads / self.kv_heads
    }

    /// The rest of the block after attention: projection, residual, MLP.
    fn finish(&self, x: &Tensor, attended: &Tensor, train: bool, p: &Products) -> Tensor {
        let (b, t, d) = x.size3().expect("(B, T, D) activations");
        let y = attended.transpose(1, 2).contiguous().view([b, t, d]);
        let x = x + p.apply(&p.proj, &y).dropout(self.dropout, train);
        let h = p.apply(&p.fc1, &x.apply(&self.ln2)).gelu("none");
        let h = p.apply(&p.fc2, &h).dropout(self.dropout, train);
        x + h
    }

    /// The linear layers' number type: `train_kind` in training, f32 otherwise.
    fn kind(&self, train: bool) -> Kind {
        if train {
            self.train_kind
        } else {
            Kind::Float
        }
    }

    /// All positions at once, each attending to itself and those before it.
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let products = self.products(self.kind(train), false);
        let (q, k, v) = self.qkv(x, &products);
        // Query head `h` reads key/value head `h / group`.
        let (k, v) = match self.group() {
            1 => (k, v),
            g => (
                k.repeat_interleave_self_int(g, Some(1), None::<i64>),
                v.repeat_interleave_self_int(g, Some(1), None::<i64>),
            ),
        };
        let p = if train { self.dropout } else { 0.0 };
        let attended =
            Tensor::scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, p, true, None, false);
        self.finish(x, &attended, train, &products)
    }

    /// One new position `t` (`x`: `(B, 1, D)`), attending to the cached positions and itself;
    /// its key and value join the cache. The query heads that share a key/value head are laid
    /// out as that head's queries (`(B, kv_heads, group, D / heads)`), so the cache is read once
    /// per key/value head, not once per query head.
    /// The cache and attention stay f32 with bf16 products too: LibTorch's CPU attention
    /// kernel ran slower on a bf16 cache than on an f32 one (docs/experiments.md).
    fn step(&self, x: &Tensor, t: i64, cache: &mut LayerCache, p: &Products) -> Tensor {
        let (q, k, v) = self.qkv(x, p);
        cache.keys.narrow(2, t, 1).copy_(&k);
        cache.values.narrow(2, t, 1).copy_(&v);
        let (keys, values) = (
            cache.keys.narrow(2, 0, t + 1),
            cache.values.narrow(2, 0, t + 1),
        );
        let (b, heads, _, head_dim) = q.size4().expect("(B, heads, 1, head_dim) queries");
        let grouped = q
            .reshape([b, self.kv_heads, self.group(), head_dim])
            .to_kind(keys.kind());
        let attended = Tensor::scaled_dot_product_attention::<Tensor>(
            &grouped, &keys, &values, None, 0.0, false, None, false,
        )
        .reshape([b, heads, 1, head_dim]);
        self.finish(x, &attended, false, p)
    }
}

/// The transformer prior. Its variables are `codes`, `classes`, `positions`, `block{i}.*`,
/// `ln_f` and `head`.
#[derive(Debug)]
pub struct TransformerPrior {
    provenance: Provenance,
    config: TransformerConfig,
    codes: nn::Embedding,
    /// One row per class and a last one for the null class (the only one when unconditional).
    classes: nn::Embedding,
    /// `(T, D)`: one row per position of the grid.
    positions: Tensor,
    blocks: Vec<Block>,
    ln_f: nn::LayerNorm,
    head: Linear,
    /// The number type of the blocks' products while stepping (sampling): f32 unless a caller
    /// asks for bf16.
    sample_kind: Kind,
}

impl TransformerPrior {
    pub fn new(vs: nn::Path<'_>, cfg: &TransformerConfig, provenance: &Provenance) -> Self {
        let d = cfg.width;
        let length = provenance.grid_side * provenance.grid_side;
        let embedding = nn::EmbeddingConfig {
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
            ..Default::default()
        };
        TransformerPrior {
            provenance: provenance.clone(),
            config: cfg.clone(),
            codes: nn::embedding(&vs / "codes", provenance.codes.vocabulary, d, embedding),
            classes: nn::embedding(&vs / "classes", provenance.classes + 1, d, embedding),
            positions: vs.randn("positions", &[length, d], 0.0, 0.02),
            blocks: (0..cfg.layers)
                .map(|i| Block::new(&vs / format!("block{i}"), cfg))
                .collect(),
            ln_f: nn::layer_norm(&vs / "ln_f", vec![d], Default::default()),
            head: Linear::new(&vs / "head", d, provenance.codes.vocabulary),
            sample_kind: Kind::Float,
        }
    }

    /// The null class's row.
    fn null_class(&self) -> i64 {
        self.provenance.classes
    }

    /// The class rows of a batch of `b`: the labels, the null class where there are none (or
    /// where training drops them).
    fn class_rows(&self, labels: Option<&Tensor>, b: i64, device: Device, train: bool) -> Tensor {
        let null = Tensor::full([b], self.null_class(), (Kind::Int64, device));
        match labels {
            Some(labels) if self.provenance.classes > 0 => {
                let labels = labels.to_device(device).to_kind(Kind::Int64);
                if train && self.config.class_dropout > 0.0 {
                    let dropped =
                        Tensor::rand([b], (Kind::Float, device)).lt(self.config.class_dropout);
                    null.where_self(&dropped, &labels)
                } else {
                    labels
                }
            }
            _ => null,
        }
    }

    fn logits_of(&self, hidden: &Tensor) -> Tensor {
        hidden.apply(&self.ln_f).apply(&self.head)
    }

    /// A copy of the weights for the portable forward pass that entropy coding runs.
    pub fn portable(&self) -> PortableTransformer {
        fn values(t: &Tensor) -> Vec<f32> {
            Vec::<f32>::try_from(
                t.to_device(Device::Cpu)
                    .to_kind(Kind::Float)
                    .contiguous()
                    .view([-1]),
            )
            .expect("a float tensor")
        }
        fn norm(ln: &nn::LayerNorm) -> Norm {
            Norm {
                gain: values(ln.ws.as_ref().expect("an affine layer norm")),
                bias: values(ln.bs.as_ref().expect("an affine layer norm")),
                // Every layer norm here is built with the default configuration.
                eps: nn::LayerNormConfig::default().eps as f32,
            }
        }
        fn dense(l: &Linear) -> Dense {
            let (outputs, inputs) = l.ws.size2().expect("a 2-d weight");
            Dense::from_torch(
                &values(&l.ws),
                &values(&l.bs),
                inputs as usize,
                outputs as usize,
            )
        }
        PortableTransformer {
            width: self.config.width as usize,
            heads: self.config.heads as usize,
            kv_heads: self.config.key_value_heads() as usize,
            codes: values(&self.codes.ws),
            classes: values(&self.classes.ws),
            positions: values(&self.positions),
            layers: self
                .blocks
                .iter()
                .map(|b| Layer {
                    ln1: norm(&b.ln1),
                    qkv: dense(&b.qkv),
                    proj: dense(&b.proj),
                    ln2: norm(&b.ln2),
                    fc1: dense(&b.fc1),
                    fc2: dense(&b.fc2),
                })
                .collect(),
            ln_f: norm(&self.ln_f),
            head: dense(&self.head),
            vocabulary: self.provenance.codes.vocabulary as usize,
            class_count: self.provenance.classes as usize,
            side: self.provenance.grid_side as usize,
            baseline: false,
        }
    }
}

impl CodePrior for TransformerPrior {
    fn provenance(&self) -> &Provenance {
        &self.provenance
    }

    fn supports_guidance(&self) -> bool {
        self.provenance.classes > 0
    }

    fn set_training_kind(&mut self, kind: Kind) -> bool {
        for block in &mut self.blocks {
            block.train_kind = kind;
        }
        true
    }

    fn set_sampling_kind(&mut self, kind: Kind) -> bool {
        // int8 products (`_int_mm`) run on the CPU only: CUDA's has shape limits a batch's
        // last rows may not meet.
        let supported = match kind {
            Kind::Float | Kind::BFloat16 => true,
            Kind::Int8 => self.positions.device() == Device::Cpu,
            _ => false,
        };
        if supported {
            self.sample_kind = kind;
        }
        supported
    }

    fn portable(&self) -> Option<PortableTransformer> {
        Some(TransformerPrior::portable(self))
    }

    fn logits(&self, codes: &Tensor, labels: Option<&Tensor>, train: bool) -> Tensor {
        let (b, h, w) = codes.size3().expect("(B, h, w) code grids");
        let t = h * w;
        let device = codes.device();
        let flat = codes.view([b, t]);
        // Position i reads the class (i = 0) or code i − 1, and predicts code i.
        let start = self
            .classes
            .forward(&self.class_rows(labels, b, device, train))
            .unsqueeze(1);
        let x = if t > 1 {
            Tensor::cat(&[start, self.codes.forward(&flat.narrow(1, 0, t - 1))], 1)
        } else {
            start
        };
        let mut x = (x + self.positions.narrow(0, 0, t)).dropout(self.config.dropout, train);
        for block in &self.blocks {
            x = block.forward(&x, train);
        }
        self.logits_of(&x).view([b, h, w, -1]).permute([0, 3, 1, 2])
    }

    /// Raster-order stepping with a key/value cache; with guidance, the conditional and the
    /// unconditional halves of one doubled batch advance together for the first `guided`
    /// positions, after which the unconditional half (its rows of the cache too) is dropped.
    fn step(
        &self,
        n: i64,
        labels: Option<&Tensor>,
        guided: i64,
        device: Device,
        choose: &mut dyn FnMut(&Tensor, Option<&Tensor>) -> Tensor,
    ) -> Tensor {
        let _guard = tch::no_grad_guard();
        let side = self.provenance.grid_side;
        let length = side * side;
        let guided_until = if labels.is_some() && self.supports_guidance() {
            guided.clamp(0, length)
        } else {
            0
        };
        let mut guided = guided_until > 0;
        let rows = if guided { 2 * n } else { n };
        let mut classes = self.class_rows(labels, n, device, false);
        if guided {
            let null = Tensor::full([n], self.null_class(), (Kind::Int64, device));
            classes = Tensor::cat(&[classes, null], 0);
        }
        let head_dim = self.config.width / self.config.heads;
        let products: Vec<Products> = self
            .blocks
            .iter()
            .map(|block| block.products(self.sample_kind, true))
            .collect();
        let mut caches: Vec<LayerCache> = self
            .blocks
            .iter()
            .map(|_| {
                let zeros = || {
                    // Never read beyond the positions written so far: no need to clear it.
                    Tensor::empty(
                        [rows, self.config.key_value_heads(), length, head_dim],
                        (Kind::Float, device),
                    )
                };
                LayerCache {
                    keys: zeros(),
                    values: zeros(),
                }
            })
            .collect();
        let codes = Tensor::zeros([n, length], (Kind::Int64, device));
        let mut x = self.classes.forward(&classes).unsqueeze(1);
        for t in 0..length {
            if guided && t == guided_until {
                // Rows n.. are the unconditional half: the first n rows of a contiguous tensor
                // are a contiguous view, so the cache keeps being written in place.
                guided = false;
                x = x.narrow(0, 0, n);
                for cache in &mut caches {
                    cache.keys = cache.keys.narrow(0, 0, n);
                    cache.values = cache.values.narrow(0, 0, n);
                }
            }
            x += self.positions.narrow(0, t, 1);
            for ((block, cache), p) in self.blocks.iter().zip(caches.iter_mut()).zip(&products) {
                x = block.step(&x, t, cache, p);
            }
            let logits = self.logits_of(&x).squeeze_dim(1);
            let next = if guided {
                choose(&logits.narrow(0, 0, n), Some(&logits.narrow(0, n, n)))
            } else {
                choose(&logits, None)
            };
            codes.narrow(1, t, 1).copy_(&next.unsqueeze(1));
            let fed = if guided {
                Tensor::cat(&[&next, &next], 0)
            } else {
                next
            };
            x = self.codes.forward(&fed).unsqueeze(1);
        }
        codes.view([n, side, side])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{draw, sample_uncached, SampleOptions};
    use vq_model::CodeSpace;

    fn tiny(vs: &nn::VarStore, classes: i64) -> TransformerPrior {
        tiny_with(vs, classes, None)
    }

    /// With `kv_heads`, 4 query heads sharing that many key/value heads; without, 2 heads.
    fn tiny_with(vs: &nn::VarStore, classes: i64, kv_heads: Option<i64>) -> TransformerPrior {
        let cfg = TransformerConfig {
            width: 16,
            layers: 2,
            heads: if kv_heads.is_some() { 4 } else { 2 },
            kv_heads,
            dropout: 0.1,
            class_dropout: 0.1,
        };
        let provenance = Provenance {
            codes: CodeSpace {
                depth: 1,
                vocabulary: 11,
            },
            grid_side: 4,
            classes,
            ..Provenance::default()
        };
        TransformerPrior::new(vs.root(), &cfg, &provenance)
    }

    /// bf16 training passes: evaluation stays f32 bit for bit (a checkpoint's probabilities
    /// must not depend on how it trains), training logits move by bf16's rounding only, and
    /// the f32 weights get finite gradients.
    #[test]
    fn bf16_training_passes_leave_evaluation_in_f32() {
        let _rng = vq_model::seeded(0);
        let vs = nn::VarStore::new(vq_model::test_device());
        let mut prior = tiny(&vs, 3);
        prior.config.dropout = 0.0;
        for block in &mut prior.blocks {
            block.dropout = 0.0;
        }
        prior.config.class_dropout = 0.0;
        let codes = Tensor::randint(11, [2, 4, 4], (Kind::Int64, vq_model::test_device()));
        let labels = Tensor::from_slice(&[1i64, 2]);
        let eval_f32 = prior.logits(&codes, Some(&labels), false);
        let train_f32 = prior.logits(&codes, Some(&labels), true);
        assert!(
            train_f32.equal(&eval_f32),
            "without dropout, training is the same pass"
        );
        assert!(prior.set_training_kind(Kind::BFloat16));
        assert!(prior.logits(&codes, Some(&labels), false).equal(&eval_f32));
        let train_bf16 = prior.logits(&codes, Some(&labels), true);
        assert_eq!(train_bf16.kind(), Kind::Float);
        let diff = (&train_bf16 - &train_f32).abs().max().double_value(&[]);
        assert!(diff > 0.0 && diff < 0.05, "bf16 moved the logits by {diff}");
        prior.nll(&codes, Some(&labels), true).backward();
        for (name, var) in vs.variables() {
            let grad = var.grad();
            assert_eq!(grad.kind(), Kind::Float, "{name}");
            assert!(grad.isfinite().all().int64_value(&[]) == 1, "{name}");
        }
    }

    #[test]
    fn a_later_code_changes_no_earlier_logit() {
        let _rng = vq_model::seeded(0);
        for kv_heads in [None, Some(1), Some(2)] {
            let vs = nn::VarStore::new(vq_model::test_device());
            later_codes_change_no_earlier_logit(&tiny_with(&vs, 3, kv_heads));
        }
    }

    fn later_codes_change_no_earlier_logit(prior: &TransformerPrior) {
        let codes = Tensor::randint(11, [2, 4, 4], (Kind::Int64, vq_model::test_device()));
        let labels = Tensor::from_slice(&[1i64, 2]);
        let base = prior.logits(&codes, Some(&labels), false).view([2, 11, 16]);
        for changed_at in [0i64, 5, 15] {
            let changed = codes.copy().view([2, 16]);
            let old = changed.int64_value(&[0, changed_at]);
            let _ = changed.get(0).get(changed_at).fill_((old + 1) % 11);
            let out = prior
                .logits(&changed.view([2, 4, 4]), Some(&labels), false)
                .view([2, 11, 16]);
            for t in 0..16 {
                let diff = (out.get(0).select(1, t) - base.get(0).select(1, t))
                    .abs()
                    .max()
                    .double_value(&[]);
                if t <= changed_at {
                    assert_eq!(diff, 0.0, "code {changed_at} moved the logits at {t}");
                } else if t == changed_at + 1 {
                    assert!(diff > 0.0, "position {t} does not see code {changed_at}");
                }
            }
            // The other grid of the batch is untouched.
            assert_eq!(out.get(1), base.get(1));
        }
        // The class is seen; the null class is another input.
        let other = prior.logits(&codes, Some(&Tensor::from_slice(&[0i64, 0])), false);
        assert!(
            (other - prior.logits(&codes, Some(&labels), false))
                .abs()
                .max()
                .double_value(&[])
                > 0.0
        );
    }

    /// bf16 sampling products: the logits sampling sees stay f32 and move by bf16's rounding
    /// only, the weights stay f32, and f32 sampling afterwards is bit for bit what it was.
    #[test]
    fn bf16_sampling_products_keep_the_weights_and_logits_f32() {
        let _rng = vq_model::seeded(6);
        let device = vq_model::test_device();
        let vs = nn::VarStore::new(device);
        let mut prior = tiny_with(&vs, 3, Some(1));
        let labels = Tensor::from_slice(&[0i64, 2]);
        // Teacher-forced codes, so that both number types see the same grids.
        let forced = Tensor::randint(11, [2, 16], (Kind::Int64, device));
        let logits_seen = |prior: &TransformerPrior| {
            let mut seen = Vec::new();
            let codes = prior.step(2, Some(&labels), 16, device, &mut |c, u| {
                let u = u.expect("guided positions get unconditional logits");
                seen.push(Tensor::cat(&[c, u], 0));
                forced.select(1, seen.len() as i64 - 1)
            });
            assert_eq!(codes.view([2, 16]), forced);
            Tensor::stack(&seen, 0)
        };
        let f32_logits = logits_seen(&prior);
        // bf16 rounds to 8 bits of mantissa; int8 to 127 levels of each row's and each weight
        // channel's largest magnitude.
        for (kind, bound) in [(Kind::BFloat16, 0.05), (Kind::Int8, 0.1)] {
            assert!(prior.set_sampling_kind(kind));
            let logits = logits_seen(&prior);
            assert_eq!(logits.kind(), Kind::Float);
            assert_eq!(logits.size(), vec![16, 4, 11]);
            let diff = (&logits - &f32_logits).abs().max().double_value(&[]);
            assert!(
                diff > 0.0 && diff < bound,
                "{kind:?} moved the logits by {diff}"
            );
            for (name, var) in vs.variables() {
                assert_eq!(var.kind(), Kind::Float, "{name}");
            }
        }
        assert!(!prior.set_sampling_kind(Kind::Half));
        assert!(prior.set_sampling_kind(Kind::Float));
        assert_eq!(logits_seen(&prior), f32_logits);
    }

    /// An int8 product is the f32 product up to the quantization of both sides: within a few
    /// steps of the two scales, for any leading shape.
    #[test]
    fn int8_products_approximate_f32_products() {
        let _rng = vq_model::seeded(9);
        let linear = Linear {
            ws: Tensor::randn([40, 24], (Kind::Float, Device::Cpu)) * 0.1,
            bs: Tensor::rand([40], (Kind::Float, Device::Cpu)) * 0.2 - 0.1,
        };
        let xs = Tensor::randn([3, 5, 24], (Kind::Float, Device::Cpu));
        let exact = linear.forward(&xs);
        let int8 = Products {
            qkv: PassLinear::new(&linear, Kind::Int8),
            proj: PassLinear::new(&linear, Kind::Float),
            fc1: PassLinear::new(&linear, Kind::Float),
            fc2: PassLinear::new(&linear, Kind::Float),
            low_results: true,
        };
        let got = int8.apply(&int8.qkv, &xs);
        assert_eq!(got.size(), vec![3, 5, 40]);
        assert_eq!(got.kind(), Kind::Float);
        let err = (&got - &exact).abs().max().double_value(&[]);
        let scale = exact.abs().max().double_value(&[]);
        assert!(err > 0.0 && err < 0.02 * scale, "{err} of {scale}");
        // A row of zeros stays zero (plus the bias), not NaN.
        let zeros = Tensor::zeros([2, 24], (Kind::Float, Device::Cpu));
        let bias = int8.apply(&int8.qkv, &zeros);
        assert_eq!(bias, linear.bs.unsqueeze(0).expand([2, 40], false));
    }

    #[test]
    fn cached_sampling_draws_exactly_what_uncached_sampling_draws() {
        let _rng = vq_model::seeded(1);
        for kv_heads in [None, Some(1), Some(2)] {
            let vs = nn::VarStore::new(vq_model::test_device());
            cached_equals_uncached(&tiny_with(&vs, 3, kv_heads));
        }
    }

    fn cached_equals_uncached(prior: &TransformerPrior) {
        let labels = Tensor::from_slice(&[0i64, 1, 2, 2, 1]);
        for options in [
            SampleOptions::default(),
            SampleOptions {
                guidance: 2.5,
                temperature: 0.9,
                ..SampleOptions::default()
            },
            SampleOptions {
                top_k: 4,
                top_p: 0.8,
                ..SampleOptions::default()
            },
        ] {
            tch::manual_seed(42);
            let cached = prior.sample(5, Some(&labels), &options, vq_model::test_device());
            tch::manual_seed(42);
            let uncached =
                sample_uncached(prior, 5, Some(&labels), &options, vq_model::test_device());
            assert_eq!(cached.size(), vec![5, 4, 4]);
            assert_eq!(cached, uncached, "{options:?}");
            assert!(cached.min().int64_value(&[]) >= 0 && cached.max().int64_value(&[]) < 11);
        }
        // Unconditional sampling from the same model.
        tch::manual_seed(7);
        let a = prior.sample(3, None, &SampleOptions::default(), vq_model::test_device());
        tch::manual_seed(7);
        let b = sample_uncached(
            prior,
            3,
            None,
            &SampleOptions::default(),
            vq_model::test_device(),
        );
        assert_eq!(a, b);
    }

    /// Guidance on the first codes only: the cached sampler (which drops the unconditional half
    /// of its batch there) still draws what the uncached one draws; those first codes are the
    /// fully guided draws and the later ones are not; none guided is the conditional model, and
    /// a count of the whole grid or more is full guidance.
    #[test]
    fn guiding_only_the_first_codes() {
        let _rng = vq_model::seeded(4);
        let device = vq_model::test_device();
        let labels = Tensor::from_slice(&[0i64, 1, 2, 2, 1]);
        for kv_heads in [None, Some(1)] {
            let vs = nn::VarStore::new(device);
            let prior = tiny_with(&vs, 3, kv_heads);
            let draw_with = |options: SampleOptions, cached: bool| {
                tch::manual_seed(9);
                let codes = if cached {
                    prior.sample(5, Some(&labels), &options, device)
                } else {
                    sample_uncached(&prior, 5, Some(&labels), &options, device)
                };
                codes.view([5, 16])
            };
            // A random tiny model's classes barely move its logits; strong guidance shows it.
            let full = SampleOptions {
                guidance: 30.0,
                ..SampleOptions::default()
            };
            let first = |n| SampleOptions {
                guided_codes: Some(n),
                ..full
            };
            let all = draw_with(full, true);
            let six = draw_with(first(6), true);
            assert_eq!(six, draw_with(first(6), false), "{kv_heads:?}");
            assert_eq!(six.narrow(1, 0, 6), all.narrow(1, 0, 6));
            assert_ne!(six, all, "the codes after the sixth are drawn unguided");
            let conditional = draw_with(SampleOptions::default(), true);
            assert_eq!(draw_with(first(0), true), conditional);
            assert_eq!(draw_with(first(0), false), conditional);
            assert_eq!(draw_with(first(16), true), all);
            assert_eq!(draw_with(first(100), true), all);
        }
        assert!(first_negative_is_refused());
    }

    fn first_negative_is_refused() -> bool {
        let options = SampleOptions {
            guided_codes: Some(-1),
            ..SampleOptions::default()
        };
        options
            .validate()
            .is_err_and(|e| e.contains("guided-codes"))
    }

    #[test]
    fn guidance_one_is_the_conditional_model_and_more_moves_the_draws() {
        let _rng = vq_model::seeded(2);
        let conditional = Tensor::randn([400, 11], (Kind::Float, vq_model::test_device()));
        let unconditional = Tensor::randn([400, 11], (Kind::Float, vq_model::test_device()));
        let draw_with = |g: f64, u: Option<&Tensor>| {
            tch::manual_seed(5);
            let options = SampleOptions {
                guidance: g,
                ..SampleOptions::default()
            };
            draw(&conditional, u, &options)
        };
        assert_eq!(draw_with(1.0, Some(&unconditional)), draw_with(1.0, None));
        assert_ne!(draw_with(3.0, Some(&unconditional)), draw_with(1.0, None));
        // top-k 1 and a tiny top-p are the argmax.
        let argmax = conditional.argmax(1, false);
        for options in [
            SampleOptions {
                top_k: 1,
                ..SampleOptions::default()
            },
            SampleOptions {
                top_p: 1e-6,
                ..SampleOptions::default()
            },
        ] {
            assert_eq!(draw(&conditional, None, &options), argmax, "{options:?}");
        }
    }

    #[test]
    fn training_mode_drops_classes_and_dropout_changes_the_logits() {
        let _rng = vq_model::seeded(3);
        let vs = nn::VarStore::new(vq_model::test_device());
        let prior = tiny(&vs, 3);
        let codes = Tensor::randint(11, [64, 4, 4], (Kind::Int64, vq_model::test_device()));
        let labels = Tensor::full([64], 1, (Kind::Int64, vq_model::test_device()));
        let rows = prior.class_rows(Some(&labels), 64, vq_model::test_device(), true);
        let nulls = rows.eq(3).sum(Kind::Int64).int64_value(&[]);
        assert!(
            nulls > 0 && nulls < 30,
            "{nulls} of 64 classes dropped at p = 0.1"
        );
        let eval_a = prior.logits(&codes, Some(&labels), false);
        let eval_b = prior.logits(&codes, Some(&labels), false);
        assert_eq!(eval_a, eval_b, "evaluation is deterministic");
        let train = prior.logits(&codes, Some(&labels), true);
        assert!((train - eval_a).abs().max().double_value(&[]) > 0.0);
        let nll = prior.nll(&codes, Some(&labels), true).double_value(&[]);
        assert!(nll.is_finite() && nll > 0.0);
    }

    /// Grouped-query attention: the query heads of a group read one key/value head, so the
    /// block's projection is narrower, a group of one is the classic shape with the same
    /// variables (old checkpoints), and a configuration's JSON without `kv_heads` is unchanged.
    #[test]
    fn grouped_query_heads_share_keys_and_values() {
        let _rng = vq_model::seeded(3);
        let vs = nn::VarStore::new(vq_model::test_device());
        let _prior = tiny_with(&vs, 3, Some(1));
        let qkv = vs.variables()["block0.qkv.weight"].size();
        // 16 query dimensions, then one key and one value head of 16 / 4 each.
        assert_eq!(qkv, vec![16 + 2 * 4, 16]);

        let classic = TransformerConfig::default();
        let json = serde_json::to_string(&classic).unwrap();
        assert!(!json.contains("kv_heads"), "{json}");
        let same_shape = TransformerConfig {
            kv_heads: Some(classic.heads),
            ..classic.clone()
        };
        assert_eq!(same_shape.key_value_heads(), classic.key_value_heads());
        for (kv_heads, ok) in [
            (Some(0), false),
            (Some(3), false),
            (Some(4), true),
            (Some(8), true),
        ] {
            let cfg = TransformerConfig {
                kv_heads,
                ..classic.clone()
            };
            assert_eq!(cfg.validate().is_ok(), ok, "{kv_heads:?}");
        }
    }
}
