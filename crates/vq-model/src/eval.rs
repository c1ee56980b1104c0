//! Reconstruction quality of a model over a CIFAR-10 split.

use tch::{Device, Kind, Tensor};
use vq_data::{gather, BatchIndices, Cifar10, PixelRange};

use crate::metrics::{quality, QualitySums};
use crate::{images_to_tensor, ModelError, VqVae};
pub use vq_report::Evaluation;

/// Maps model-range tensors to `[0, 1]` pixels.
pub fn to_unit(t: &Tensor, range: PixelRange) -> Tensor {
    let (scale, offset) = range.scale_offset();
    (t - offset as f64) / (scale as f64 * 255.0)
}

/// Maps model-range tensors to 8-bit pixels (`u8`), rounded and clamped as a PNG of them holds.
pub fn to_bytes(t: &Tensor, range: PixelRange) -> Tensor {
    let (scale, offset) = range.scale_offset();
    ((t.to_kind(Kind::Float) - offset as f64) / scale as f64)
        .round()
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8)
}

/// Which images an evaluation covers and at what depth it decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalScope {
    /// The first `count` images of the split.
    pub count: usize,
    /// Decode with only the first `levels` levels of the codes (a residual quantizer's lower
    /// rate); `None`: all of them.
    pub levels: Option<i64>,
    /// Choose the codes by [`crate::CodeSearch`] instead of the quantizer's nearest code.
    pub search: Option<crate::CodeSearch>,
}

impl EvalScope {
    /// The first `count` images, all levels, the quantizer's own codes.
    pub fn first(count: usize) -> Self {
        EvalScope {
            count,
            levels: None,
            search: None,
        }
    }

    /// The `(B, L, h, w)` codes this scope evaluates `xs` at: searched or not, all levels.
    pub fn codes(&self, model: &VqVae, xs: &Tensor) -> Result<Tensor, ModelError> {
        match &self.search {
            Some(search) => model.encode_searched(xs, search),
            None => Ok(model.encode(xs)),
        }
    }

    /// The images `codes` decode to at this scope's depth.
    pub fn decode(&self, model: &VqVae, codes: &Tensor) -> Tensor {
        match self.levels {
            Some(levels) => model.decode(&codes.narrow(1, 0, levels)),
            None => model.decode(codes),
        }
    }
}

/// `(L, k)` counts of each level's codes in `(B, L, h, w)` codes.
fn code_counts(codes: &Tensor, k: i64) -> Tensor {
    let depth = codes.size()[1];
    let per_level = codes.transpose(0, 1).reshape([depth, -1]);
    let ones = Tensor::ones(per_level.size(), (Kind::Float, codes.device()));
    Tensor::zeros([depth, k], (Kind::Float, codes.device())).scatter_add(1, &per_level, &ones)
}

/// MSE, PSNR, SSIM (on `[0, 1]` pixels), perplexity and code usage over the first `count`
/// test images.
pub fn evaluate(
    model: &VqVae,
    test: &Cifar10,
    count: usize,
    device: Device,
    step: usize,
    elapsed_s: f64,
) -> Result<Evaluation, ModelError> {
    evaluate_with_progress(
        model,
        test,
        EvalScope::first(count),
        device,
        step,
        elapsed_s,
        |_| {},
    )
}

/// [`evaluate`], calling `progress` with the number of images done after each chunk.
pub fn evaluate_with_progress(
    model: &VqVae,
    test: &Cifar10,
    scope: EvalScope,
    device: Device,
    step: usize,
    elapsed_s: f64,
    mut progress: impl FnMut(usize),
) -> Result<Evaluation, ModelError> {
    let _guard = tch::no_grad_guard();
    let count = scope.count;
    let range = model.config.input_range;
    let space = model.quantizer.code_space();
    let k = space.vocabulary;
    let mut sums = QualitySums::default();
    let mut counts = Tensor::zeros([space.depth, k], (Kind::Float, device));
    // Data-parallel: this rank's chunks, the sums added up over the ranks below.
    let world = crate::collective::place().1;
    for chunk in crate::collective::my_chunks(count, 500) {
        let (start, end) = (chunk.start, chunk.end);
        let batch = BatchIndices {
            indices: (start..end).collect(),
            flips: vec![false; end - start],
        };
        let xs = images_to_tensor(&gather(test.images.view(), &batch, range), device)?;
        let (reconstruction, batch_counts) = if scope.search.is_some() {
            let codes = scope.codes(model, &xs)?;
            (scope.decode(model, &codes), code_counts(&codes, k))
        } else {
            let out = model.forward(&xs);
            let reconstruction = match scope.levels {
                Some(levels) => model.decode(&out.codes().narrow(1, 0, levels)),
                None => out.reconstruction.shallow_clone(),
            };
            (reconstruction, out.quantized.counts)
        };
        sums.add(&quality(
            &to_unit(&reconstruction, range),
            &to_unit(&xs, range),
        ));
        counts += batch_counts;
        progress(end);
    }
    if world > 1 {
        let figures = Tensor::from_slice(&[
            sums.images as f64,
            sums.mse,
            sums.psnr,
            sums.ssim,
            sums.psnr_y,
        ]);
        let on_cpu = counts.to_device(Device::Cpu);
        // One kind a call: the sums in f64, the code counts in f32.
        crate::collective::all_reduce_sum(&[&figures]);
        crate::collective::all_reduce_sum(&[&on_cpu]);
        let f = Vec::<f64>::try_from(&figures).expect("five sums");
        sums = QualitySums {
            images: f[0].round() as i64,
            mse: f[1],
            psnr: f[2],
            ssim: f[3],
            psnr_y: f[4],
        };
        counts = on_cpu.to_device(counts.device());
    }
    let levels = crate::quantizer::level_usage(&counts);
    // The first level's usage (the only level of a plain VQ).
    let counts = counts.get(0);
    let perplexity = crate::quantizer::perplexity(&counts);
    Ok(Evaluation {
        step,
        images: sums.images,
        mse: sums.mean_mse(),
        psnr: sums.mean_psnr(),
        ssim: sums.mean_ssim(),
        psnr_y: sums.mean_psnr_y(),
        perplexity,
        codes_used: counts.gt(0.0).sum(Kind::Int64).int64_value(&[]),
        codebook_size: k,
        levels,
        elapsed_s,
    })
}
