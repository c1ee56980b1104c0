//! Encoder and decoder of the VQ-VAE paper's CIFAR-10 setup: strided 4×4 convolutions, a 3×3
//! convolution, and a stack of residual blocks (ReLU, 3×3, ReLU, 1×1); the decoder mirrors it
//! with transposed convolutions.

use tch::nn::{self, Module};
use tch::Tensor;

use crate::config::VqVaeConfig;

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
        ResidualStack { blocks }
    }
}

impl Module for ResidualStack {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let mut x = xs.shallow_clone();
        for (c3, c1) in &self.blocks {
            x = &x + x.relu().apply(c3).relu().apply(c1);
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
        }
    }
}

impl Module for Encoder {
    /// `(B, C, H, W)` images → `(B, D, H/f, W/f)` continuous codes.
    fn forward(&self, xs: &Tensor) -> Tensor {
        let mut x = xs.shallow_clone();
        for d in &self.downs {
            x = x.apply(d).relu();
        }
        x.apply(&self.mid)
            .apply(&self.residual)
            .apply(&self.to_code)
    }
}

#[derive(Debug)]
pub struct Decoder {
    from_code: nn::Conv2D,
    residual: ResidualStack,
    ups: Vec<nn::ConvTranspose2D>,
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
        }
    }
}

impl Module for Decoder {
    /// `(B, D, h, w)` quantized codes → `(B, C, h·f, w·f)` images in the input range.
    fn forward(&self, zs: &Tensor) -> Tensor {
        let mut x = zs.apply(&self.from_code).apply(&self.residual);
        let last = self.ups.len() - 1;
        for (i, u) in self.ups.iter().enumerate() {
            x = x.apply(u);
            if i < last {
                x = x.relu();
            }
        }
        x
    }
}
