//! Encoder and decoder of the VQ-VAE paper's CIFAR-10 setup: strided 4×4 convolutions, a 3×3
//! convolution, and a stack of residual blocks (ReLU, 3×3, ReLU, 1×1); the decoder mirrors it
//! with transposed convolutions. Each module is built from its own config.

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::config::ComputeKind;

/// A convolution that computes in `kind` (f32 or bf16): in bf16 the f32 weights and the input
/// are cast for the product, and gradients flow back through the casts to the f32 weights.
#[derive(Debug)]
pub(crate) struct Conv {
    conv: nn::Conv2D,
    stride: i64,
    padding: i64,
    kind: Kind,
}

impl Conv {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        vs: nn::Path<'_>,
        i: i64,
        o: i64,
        k: i64,
        stride: i64,
        padding: i64,
        bias: bool,
        kind: Kind,
    ) -> Self {
        let conv = nn::conv2d(
            vs,
            i,
            o,
            k,
            nn::ConvConfig {
                stride,
                padding,
                bias,
                ..Default::default()
            },
        );
        Conv {
            conv,
            stride,
            padding,
            kind,
        }
    }

    pub(crate) fn parameters(&self) -> Vec<Tensor> {
        let mut p = vec![self.conv.ws.shallow_clone()];
        p.extend(self.conv.bs.as_ref().map(Tensor::shallow_clone));
        p
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> Tensor {
        if self.kind == Kind::Float {
            return x.apply(&self.conv);
        }
        let b = self.conv.bs.as_ref().map(|b| b.to_kind(self.kind));
        x.to_kind(self.kind).conv2d(
            &self.conv.ws.to_kind(self.kind),
            b.as_ref(),
            [self.stride; 2],
            [self.padding; 2],
            [1, 1],
            1,
        )
    }
}

/// A 4×4 transposed convolution that doubles the size, computing in `kind` like [`Conv`].
#[derive(Debug)]
struct Upsample {
    conv: nn::ConvTranspose2D,
    kind: Kind,
}

impl Upsample {
    const STRIDE: i64 = 2;
    const PADDING: i64 = 1;

    fn new(vs: nn::Path<'_>, i: i64, o: i64, kind: Kind) -> Self {
        let conv = nn::conv_transpose2d(
            vs,
            i,
            o,
            4,
            nn::ConvTransposeConfig {
                stride: Self::STRIDE,
                padding: Self::PADDING,
                ..Default::default()
            },
        );
        Upsample { conv, kind }
    }

    fn parameters(&self) -> Vec<Tensor> {
        let mut p = vec![self.conv.ws.shallow_clone()];
        p.extend(self.conv.bs.as_ref().map(Tensor::shallow_clone));
        p
    }
}

impl Module for Upsample {
    fn forward(&self, x: &Tensor) -> Tensor {
        if self.kind == Kind::Float {
            return x.apply(&self.conv);
        }
        // The bias is added after the product, not by it: oneDNN's bf16 transposed convolution
        // computes the bias gradient in a slow reference loop (docs/experiments.md).
        let y = x.to_kind(self.kind).conv_transpose2d(
            &self.conv.ws.to_kind(self.kind),
            None::<&Tensor>,
            [Self::STRIDE; 2],
            [Self::PADDING; 2],
            [0, 0],
            1,
            [1, 1],
        );
        match &self.conv.bs {
            Some(b) => y + b.to_kind(self.kind).view([1, -1, 1, 1]),
            None => y,
        }
    }
}

/// The layout convolutions run fastest in on CPU (oneDNN): NHWC in memory, NCHW in shape.
pub fn channels_last(x: &Tensor) -> Tensor {
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// The residual blocks of the encoder and decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResidualStackConfig {
    /// Channels inside each block (between its 3×3 and 1×1 convolutions).
    pub hidden_channels: i64,
    pub layers: usize,
}

impl Default for ResidualStackConfig {
    fn default() -> Self {
        ResidualStackConfig {
            hidden_channels: 32,
            layers: 2,
        }
    }
}

/// Re-draws convolution weights and biases as PyTorch's default initialisation does: uniform in
/// ±1/√fan_in, where fan_in is the weight's size without its first dimension (PyTorch's rule for
/// plain and transposed convolutions alike) and a bias takes the bound of the weight before it.
/// `params` lists each layer's weight followed by its bias, if any, as `parameters()` does.
///
/// tch's default (Kaiming-uniform with the ReLU gain, zero biases) draws weights √6 times
/// larger; in a deep residual decoder every block then adds about as much variance as it
/// receives, and the staged decoder trained with it ended 0.6 dB below the same decoder
/// initialised like this (docs/experiments.md). The VQ-VAE's own layers keep tch's default, so
/// its recipe's figures stay as they are.
pub(crate) fn init_like_pytorch(params: &[Tensor]) {
    tch::no_grad(|| {
        let mut bound = None;
        for p in params {
            let size = p.size();
            if size.len() > 1 {
                let fan_in: i64 = size[1..].iter().product();
                bound = Some(1.0 / (fan_in.max(1) as f64).sqrt());
            }
            if let Some(b) = bound {
                let _ = p.shallow_clone().uniform_(-b, b);
            }
        }
    });
}

/// `x + conv1x1(relu(conv3x3(relu(x))))`, repeated, then a final ReLU.
#[derive(Debug)]
pub struct ResidualStack {
    blocks: Vec<(Conv, Conv)>,
}

impl ResidualStack {
    /// A stack on `channels`-channel features.
    pub fn new(vs: nn::Path<'_>, channels: i64, cfg: &ResidualStackConfig, kind: Kind) -> Self {
        let r = cfg.hidden_channels;
        let blocks = (0..cfg.layers)
            .map(|i| {
                let b = &vs / i;
                (
                    Conv::new(&b / "conv3", channels, r, 3, 1, 1, false, kind),
                    Conv::new(&b / "conv1", r, channels, 1, 1, 0, false, kind),
                )
            })
            .collect();
        ResidualStack { blocks }
    }

    pub fn parameters(&self) -> Vec<Tensor> {
        self.blocks
            .iter()
            .flat_map(|(a, b)| a.parameters().into_iter().chain(b.parameters()))
            .collect()
    }
}

impl Module for ResidualStack {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let mut x = xs.shallow_clone();
        for (c3, c1) in &self.blocks {
            let inner = c3.forward(&x.relu()).relu_();
            x = &x + c1.forward(&inner);
        }
        x.relu()
    }
}

/// Images to continuous latent vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderConfig {
    pub in_channels: i64,
    pub hidden_channels: i64,
    pub residual: ResidualStackConfig,
    /// 4 or 2: pixels per latent vector, each way.
    pub downsample: i64,
    /// Channels of the latent vectors.
    pub out_channels: i64,
    pub compute: ComputeKind,
}

#[derive(Debug)]
pub struct Encoder {
    downs: Vec<Conv>,
    mid: Conv,
    residual: ResidualStack,
    to_code: Conv,
}

impl Encoder {
    pub fn new(vs: nn::Path<'_>, cfg: &EncoderConfig) -> Self {
        let (h, kind) = (cfg.hidden_channels, cfg.compute.kind(vs.device()));
        let downs = if cfg.downsample == 4 {
            vec![
                Conv::new(&vs / "down0", cfg.in_channels, h / 2, 4, 2, 1, true, kind),
                Conv::new(&vs / "down1", h / 2, h, 4, 2, 1, true, kind),
            ]
        } else {
            vec![Conv::new(
                &vs / "down0",
                cfg.in_channels,
                h,
                4,
                2,
                1,
                true,
                kind,
            )]
        };
        Encoder {
            downs,
            mid: Conv::new(&vs / "mid", h, h, 3, 1, 1, true, kind),
            residual: ResidualStack::new(&vs / "res", h, &cfg.residual, kind),
            to_code: Conv::new(&vs / "to_code", h, cfg.out_channels, 1, 1, 0, true, kind),
        }
    }

    pub fn parameters(&self) -> Vec<Tensor> {
        let mut p: Vec<Tensor> = self.downs.iter().flat_map(Conv::parameters).collect();
        p.extend(self.mid.parameters());
        p.extend(self.residual.parameters());
        p.extend(self.to_code.parameters());
        p
    }
}

impl Module for Encoder {
    /// `(B, C, H, W)` images → `(B, D, H/f, W/f)` continuous codes.
    /// The codes come out in f32 whatever the compute kind: distances need the precision.
    fn forward(&self, xs: &Tensor) -> Tensor {
        let mut x = channels_last(xs);
        for d in &self.downs {
            // In place: a convolution's backward needs its input, not its output.
            x = d.forward(&x).relu_();
        }
        let x = self.mid.forward(&x).apply(&self.residual);
        self.to_code.forward(&x).to_kind(Kind::Float)
    }
}

/// One resolution of a [`StagedDecoderConfig`]: its channels and its residual blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderStage {
    pub channels: i64,
    pub blocks: usize,
}

/// A decoder of its own shape instead of the encoder's mirror (`"decoder"` in a model's
/// config): residual blocks at every resolution from the code grid up to the image, a 4×4
/// transposed convolution doubling the size between stages, and a 3×3 convolution making the
/// pixels. The mirror decoder of the VQ-VAE paper draws the last doubling straight into pixels,
/// with no layer at the image's resolution, and its few channels saturate: it is what limits a
/// frozen encoder's codes (docs/experiments.md). Trained by `vq-train decoder --decoder-stages`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StagedDecoderConfig {
    /// From the code grid's resolution up: one stage, then one per doubling (3 stages for 4×
    /// downsampling).
    pub stages: Vec<DecoderStage>,
    /// Channels inside each residual block (between its 3×3 and 1×1 convolutions), as a
    /// fraction of its stage's channels.
    pub residual_fraction: f64,
}

impl Default for StagedDecoderConfig {
    fn default() -> Self {
        StagedDecoderConfig {
            stages: [(256, 4), (128, 2), (64, 2)]
                .into_iter()
                .map(|(channels, blocks)| DecoderStage { channels, blocks })
                .collect(),
            residual_fraction: 0.5,
        }
    }
}

impl StagedDecoderConfig {
    /// Parses `256x4,128x2,64x2` (channels × residual blocks of each stage).
    pub fn parse_stages(text: &str) -> Result<Vec<DecoderStage>, String> {
        text.split(',')
            .map(|stage| {
                let (c, b) = stage.trim().split_once('x').ok_or_else(|| {
                    format!("a decoder stage is CHANNELSxBLOCKS (e.g. 128x2), not {stage:?}")
                })?;
                let channels = c.parse().map_err(|_| format!("bad channel count {c:?}"))?;
                let blocks = b.parse().map_err(|_| format!("bad block count {b:?}"))?;
                Ok(DecoderStage { channels, blocks })
            })
            .collect()
    }

    /// Checks it against the model's downsampling factor.
    pub fn validate(&self, upsample: i64) -> Result<(), String> {
        let wanted = if upsample == 4 { 3 } else { 2 };
        if self.stages.len() != wanted {
            return Err(format!(
                "a decoder for {upsample}× downsampling has {wanted} stages (the code grid's resolution and one per doubling), not {}",
                self.stages.len()
            ));
        }
        if let Some(s) = self.stages.iter().find(|s| s.channels < 1 || s.blocks > 64) {
            return Err(format!(
                "a decoder stage needs at least 1 channel and at most 64 blocks, not {}x{}",
                s.channels, s.blocks
            ));
        }
        if !(self.residual_fraction > 0.0 && self.residual_fraction <= 4.0) {
            return Err(format!(
                "residual_fraction must be in (0, 4], not {}",
                self.residual_fraction
            ));
        }
        Ok(())
    }

    fn residual(&self, stage: &DecoderStage) -> ResidualStackConfig {
        ResidualStackConfig {
            hidden_channels: ((stage.channels as f64 * self.residual_fraction).round() as i64)
                .max(1),
            layers: stage.blocks,
        }
    }
}

/// Latent vectors back to images.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    /// Channels of the latent vectors.
    pub in_channels: i64,
    pub hidden_channels: i64,
    pub residual: ResidualStackConfig,
    /// 4 or 2: pixels per latent vector, each way.
    pub upsample: i64,
    pub out_channels: i64,
    pub compute: ComputeKind,
    /// A shape of its own; `None`: the mirror of the encoder (`hidden_channels`, `residual`).
    pub staged: Option<StagedDecoderConfig>,
}

#[derive(Debug)]
pub struct Decoder {
    from_code: Conv,
    body: DecoderBody,
}

#[derive(Debug)]
enum DecoderBody {
    /// The encoder's mirror: residual blocks at the grid's resolution, then transposed
    /// convolutions, the last of which makes the pixels.
    Mirror {
        residual: ResidualStack,
        ups: Vec<Upsample>,
    },
    /// [`StagedDecoderConfig`].
    Staged {
        stages: Vec<ResidualStack>,
        ups: Vec<Upsample>,
        to_pixels: Conv,
    },
}

impl Decoder {
    pub fn new(vs: nn::Path<'_>, cfg: &DecoderConfig) -> Self {
        let kind = cfg.compute.kind(vs.device());
        let Some(staged) = &cfg.staged else {
            let h = cfg.hidden_channels;
            let ups = if cfg.upsample == 4 {
                vec![
                    Upsample::new(&vs / "up0", h, h / 2, kind),
                    Upsample::new(&vs / "up1", h / 2, cfg.out_channels, kind),
                ]
            } else {
                vec![Upsample::new(&vs / "up0", h, cfg.out_channels, kind)]
            };
            return Decoder {
                from_code: Conv::new(&vs / "from_code", cfg.in_channels, h, 3, 1, 1, true, kind),
                body: DecoderBody::Mirror {
                    residual: ResidualStack::new(&vs / "res", h, &cfg.residual, kind),
                    ups,
                },
            };
        };
        let stages = &staged.stages;
        let first = stages[0].channels;
        let last = stages[stages.len() - 1].channels;
        let decoder = Decoder {
            from_code: Conv::new(
                &vs / "from_code",
                cfg.in_channels,
                first,
                3,
                1,
                1,
                true,
                kind,
            ),
            body: DecoderBody::Staged {
                stages: stages
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let residual = staged.residual(s);
                        ResidualStack::new(&vs / format!("stage{i}"), s.channels, &residual, kind)
                    })
                    .collect(),
                ups: stages
                    .windows(2)
                    .enumerate()
                    .map(|(i, w)| {
                        Upsample::new(&vs / format!("up{i}"), w[0].channels, w[1].channels, kind)
                    })
                    .collect(),
                to_pixels: Conv::new(
                    &vs / "to_pixels",
                    last,
                    cfg.out_channels,
                    3,
                    1,
                    1,
                    true,
                    kind,
                ),
            },
        };
        init_like_pytorch(&decoder.parameters());
        decoder
    }

    pub fn parameters(&self) -> Vec<Tensor> {
        let mut p = self.from_code.parameters();
        match &self.body {
            DecoderBody::Mirror { residual, ups } => {
                p.extend(residual.parameters());
                p.extend(ups.iter().flat_map(Upsample::parameters));
            }
            DecoderBody::Staged {
                stages,
                ups,
                to_pixels,
            } => {
                p.extend(stages.iter().flat_map(ResidualStack::parameters));
                p.extend(ups.iter().flat_map(Upsample::parameters));
                p.extend(to_pixels.parameters());
            }
        }
        p
    }

    /// How far, in codes, an output pixel's value reaches back into the code grid (a bound):
    /// tiled decoding needs a halo at least this wide to equal one pass over the whole grid.
    /// Each 3×3 convolution reaches one position at its resolution, a 4×4 transposed
    /// convolution of stride 2 one position of its input.
    pub fn reach_in_codes(&self) -> u32 {
        // From the pixels back to the grid: positions at the current resolution.
        let mut reach = 0u32;
        let back_through_upsampling = |r: u32| r.div_ceil(2) + 1;
        match &self.body {
            DecoderBody::Mirror { residual, ups } => {
                for _ in ups {
                    reach = back_through_upsampling(reach);
                }
                reach += residual.blocks.len() as u32;
            }
            DecoderBody::Staged {
                stages,
                ups,
                to_pixels: _,
            } => {
                reach += 1;
                for (i, stage) in stages.iter().enumerate().rev() {
                    reach += stage.blocks.len() as u32;
                    if i > 0 && ups.get(i - 1).is_some() {
                        reach = back_through_upsampling(reach);
                    }
                }
            }
        }
        reach + 1 // from_code
    }

    /// The weight of the last layer (the one that makes pixels): where VQGAN's adaptive
    /// adversarial weight compares gradient norms.
    pub fn last_weight(&self) -> Tensor {
        match &self.body {
            DecoderBody::Mirror { ups, .. } => ups
                .last()
                .expect("a decoder has an upsampling layer")
                .conv
                .ws
                .shallow_clone(),
            DecoderBody::Staged { to_pixels, .. } => to_pixels.conv.ws.shallow_clone(),
        }
    }
}

impl Module for Decoder {
    /// `(B, D, h, w)` quantized codes → `(B, C, h·f, w·f)` images in the input range.
    fn forward(&self, zs: &Tensor) -> Tensor {
        let x = self.from_code.forward(&channels_last(zs));
        let pixels = match &self.body {
            DecoderBody::Mirror { residual, ups } => {
                let mut x = x.apply(residual);
                let last = ups.len() - 1;
                for (i, u) in ups.iter().enumerate() {
                    x = u.forward(&x);
                    if i < last {
                        x = x.relu_();
                    }
                }
                x
            }
            DecoderBody::Staged {
                stages,
                ups,
                to_pixels,
            } => {
                // Each stack ends in a ReLU; the next stack's blocks read the upsampled
                // features before theirs, as the mirror's read `from_code`'s.
                let mut x = x;
                for (i, stage) in stages.iter().enumerate() {
                    x = x.apply(stage);
                    if let Some(up) = ups.get(i) {
                        x = up.forward(&x);
                    }
                }
                to_pixels.forward(&x)
            }
        };
        pixels.to_kind(Kind::Float)
    }
}
