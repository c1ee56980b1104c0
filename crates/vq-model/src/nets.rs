//! Encoder and decoder of the VQ-VAE paper's CIFAR-10 setup: strided 4×4 convolutions, a 3×3
//! convolution, and a stack of residual blocks (ReLU, 3×3, ReLU, 1×1); the decoder mirrors it
//! with transposed convolutions.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::config::VqVaeConfig;

/// A convolution computed in `kind`: weights (kept in f32 by the optimizer) and input are cast
/// for the product; gradients flow back through the casts to the f32 weights.
fn conv_in(c: &nn::Conv2D, x: &Tensor, kind: Kind) -> Tensor {
    if kind == Kind::Float {
        return x.apply(c);
    }
    // This network's convolutions: 4×4 ones halve the size (stride 2, padding 1), 3×3 keep it
    // (padding 1), 1×1 mix channels.
    let (stride, padding) = match c.ws.size()[2] {
        4 => (2, 1),
        3 => (1, 1),
        _ => (1, 0),
    };
    let b = c.bs.as_ref().map(|b| b.to_kind(kind));
    x.to_kind(kind).conv2d(
        &c.ws.to_kind(kind),
        b.as_ref(),
        [stride; 2],
        [padding; 2],
        [1, 1],
        1,
    )
}

fn deconv_in(c: &nn::ConvTranspose2D, x: &Tensor, kind: Kind) -> Tensor {
    if kind == Kind::Float {
        return x.apply(c);
    }
    let b = c.bs.as_ref().map(|b| b.to_kind(kind));
    x.to_kind(kind).conv_transpose2d(
        &c.ws.to_kind(kind),
        b.as_ref(),
        [2, 2], // every transposed convolution here doubles the size
        [1, 1],
        [0, 0],
        1,
        [1, 1],
    )
}

/// The layout convolutions run fastest in on CPU (oneDNN): NHWC in memory, NCHW in shape.
pub fn channels_last(x: &Tensor) -> Tensor {
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

fn conv(
    vs: nn::Path<'_>,
    i: i64,
    o: i64,
    k: i64,
    stride: i64,
    padding: i64,
    bias: bool,
) -> nn::Conv2D {
    nn::conv2d(
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
    )
}

fn deconv(vs: nn::Path<'_>, i: i64, o: i64) -> nn::ConvTranspose2D {
    nn::conv_transpose2d(
        vs,
        i,
        o,
        4,
        nn::ConvTransposeConfig {
            stride: 2,
            padding: 1,
            ..Default::default()
        },
    )
}

/// `x + conv1x1(relu(conv3x3(relu(x))))`, repeated, then a final ReLU.
#[derive(Debug)]
pub struct ResidualStack {
    blocks: Vec<(nn::Conv2D, nn::Conv2D)>,
    kind: Kind,
}

impl ResidualStack {
    pub fn new(vs: nn::Path<'_>, cfg: &VqVaeConfig) -> Self {
        let (h, r) = (cfg.hidden_channels, cfg.residual_hidden_channels);
        let blocks = (0..cfg.residual_layers)
            .map(|i| {
                let b = &vs / i;
                (
                    conv(&b / "conv3", h, r, 3, 1, 1, false),
                    conv(&b / "conv1", r, h, 1, 1, 0, false),
                )
            })
            .collect();
        ResidualStack {
            blocks,
            kind: cfg.compute.kind(),
        }
    }
}

impl Module for ResidualStack {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let mut x = xs.shallow_clone();
        for (c3, c1) in &self.blocks {
            let inner = conv_in(c3, &x.relu(), self.kind).relu();
            x = &x + conv_in(c1, &inner, self.kind);
        }
        x.relu()
    }
}

#[derive(Debug)]
pub struct Encoder {
    downs: Vec<nn::Conv2D>,
    mid: nn::Conv2D,
    residual: ResidualStack,
    to_code: nn::Conv2D,
    kind: Kind,
}

impl Encoder {
    pub fn new(vs: nn::Path<'_>, cfg: &VqVaeConfig) -> Self {
        let h = cfg.hidden_channels;
        let downs = if cfg.downsample == 4 {
            vec![
                conv(&vs / "down0", cfg.in_channels, h / 2, 4, 2, 1, true),
                conv(&vs / "down1", h / 2, h, 4, 2, 1, true),
            ]
        } else {
            vec![conv(&vs / "down0", cfg.in_channels, h, 4, 2, 1, true)]
        };
        Encoder {
            downs,
            mid: conv(&vs / "mid", h, h, 3, 1, 1, true),
            residual: ResidualStack::new(&vs / "res", cfg),
            to_code: conv(&vs / "to_code", h, cfg.code_dim, 1, 1, 0, true),
            kind: cfg.compute.kind(),
        }
    }
}

impl Module for Encoder {
    /// `(B, C, H, W)` images → `(B, D, H/f, W/f)` continuous codes.
    /// The codes come out in f32 whatever the compute kind: distances need the precision.
    fn forward(&self, xs: &Tensor) -> Tensor {
        let mut x = channels_last(xs);
        for d in &self.downs {
            x = conv_in(d, &x, self.kind).relu();
        }
        let x = conv_in(&self.mid, &x, self.kind).apply(&self.residual);
        conv_in(&self.to_code, &x, self.kind).to_kind(Kind::Float)
    }
}

#[derive(Debug)]
pub struct Decoder {
    from_code: nn::Conv2D,
    residual: ResidualStack,
    ups: Vec<nn::ConvTranspose2D>,
    kind: Kind,
}

impl Decoder {
    pub fn new(vs: nn::Path<'_>, cfg: &VqVaeConfig) -> Self {
        let h = cfg.hidden_channels;
        let ups = if cfg.downsample == 4 {
            vec![
                deconv(&vs / "up0", h, h / 2),
                deconv(&vs / "up1", h / 2, cfg.in_channels),
            ]
        } else {
            vec![deconv(&vs / "up0", h, cfg.in_channels)]
        };
        Decoder {
            from_code: conv(&vs / "from_code", cfg.code_dim, h, 3, 1, 1, true),
            residual: ResidualStack::new(&vs / "res", cfg),
            ups,
            kind: cfg.compute.kind(),
        }
    }
}

impl Module for Decoder {
    /// `(B, D, h, w)` quantized codes → `(B, C, h·f, w·f)` images in the input range.
    fn forward(&self, zs: &Tensor) -> Tensor {
        let mut x = conv_in(&self.from_code, &channels_last(zs), self.kind).apply(&self.residual);
        let last = self.ups.len() - 1;
        for (i, u) in self.ups.iter().enumerate() {
            x = deconv_in(u, &x, self.kind);
            if i < last {
                x = x.relu();
            }
        }
        x.to_kind(Kind::Float)
    }
}
