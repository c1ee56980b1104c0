//! Decoder-aware code search: codes chosen for the decoded image's error, not the latent
//! distance.
//!
//! The quantizer picks, at each position, the code nearest the encoder's output. That is the
//! right code for the latent space but not always for the image the decoder makes of it: the
//! decoder is non-linear and mixes neighbouring codes. The search starts from the quantizer's
//! codes and tries, position by position, each of the quantizer's next-best codes there,
//! keeping a change when it lowers the squared error of the decoded pixels. The file holds the
//! same number of codes of the same width, so the bit rate is unchanged; encoding costs
//! `(candidates − 1) · sweeps · levels · s²` decoder passes, where `s` is the spacing at which
//! positions do not see each other through the decoder (see [`decoder_reach`]).
//!
//! Positions `s` apart are tried together in one pass: a code changes only the pixels within
//! `reach` codes of it, so with `s = 2·reach + 1` the error around each tried position comes
//! from its own change alone, and each is kept or not on its own. The image's error therefore
//! never rises (a test checks it), and the cost does not grow with the image.

use tch::{Kind, Tensor};

use crate::eval::to_unit;
use crate::{ModelError, VqVae};

/// How hard [`VqVae::encode_searched`] looks.
pub use vq_report::CodeSearch;

/// The largest grid side the reach probe looks across; a decoder whose codes reach further is
/// treated as global (every position tried on its own).
const PROBE_REACH: i64 = 12;

/// How many codes away (Chebyshev distance on the code grid) a code's change can alter a
/// decoded pixel, measured by changing the centre code of a random grid; `None` when it reaches
/// the edge of the probe (a decoder with global operations).
pub fn decoder_reach(model: &VqVae, device: tch::Device) -> Result<Option<i64>, ModelError> {
    let _guard = tch::no_grad_guard();
    let space = model.quantizer.code_space();
    let side = 2 * PROBE_REACH + 1;
    let f = model.config.downsample;
    let mut reach = 0;
    // Two probes: a pixel may not move for one pair of codes (a ReLU at zero) and move for
    // another.
    for probe in 0..2 {
        let codes = Tensor::randint(
            space.vocabulary,
            [1, space.depth, side, side],
            (Kind::Int64, device),
        );
        let changed = codes.copy();
        let old = codes.int64_value(&[0, 0, PROBE_REACH, PROBE_REACH]);
        let _ = changed
            .get(0)
            .get(0)
            .get(PROBE_REACH)
            .get(PROBE_REACH)
            .fill_((old + 1 + probe) % space.vocabulary);
        let diff = (model.decode(&codes).to_kind(Kind::Float)
            - model.decode(&changed).to_kind(Kind::Float))
        .abs()
        .sum_dim_intlist(1, true, Kind::Float);
        // Per code cell: did any of its pixels move?
        let moved = diff
            .max_pool2d([f, f], [f, f], [0, 0], [1, 1], false)
            .gt(0.0)
            .squeeze();
        let cells = moved.nonzero();
        if cells.size()[0] == 0 {
            continue;
        }
        let distance = (cells - PROBE_REACH).abs().amax([1], false).max();
        reach = reach.max(distance.int64_value(&[]));
    }
    Ok((reach < PROBE_REACH).then_some(reach))
}

/// Whether `model`'s quantizer ranks its codes, so that its codes can be searched; the error
/// says why not.
pub fn check(model: &VqVae) -> Result<(), ModelError> {
    let _guard = tch::no_grad_guard();
    let device = model
        .parameters()
        .first()
        .map_or(tch::Device::Cpu, Tensor::device);
    let z = Tensor::zeros(
        [1, model.config.quantizer.latent_dim(), 1, 1],
        (Kind::Float, device),
    );
    match model.quantizer.ranked_codes(&z, 1) {
        Some(_) => Ok(()),
        None => Err(unsupported(model)),
    }
}

fn unsupported(model: &VqVae) -> ModelError {
    ModelError::Unsupported(format!(
        "code search needs a quantizer that ranks its codes (vq, cosine, residual); this model's is {}",
        model.config.quantizer.kind_name()
    ))
}

/// `(B, 1, h, w)` squared error of the decoded pixels (on `[0, 1]`, clamped as the PSNR is)
/// summed over each code's cell.
fn cell_errors(model: &VqVae, codes: &Tensor, target_unit: &Tensor) -> Tensor {
    let range = model.config.input_range;
    let f = model.config.downsample;
    let recon = to_unit(&model.decode(codes).to_kind(Kind::Float), range).clamp(0.0, 1.0);
    (recon - target_unit)
        .square()
        .sum_dim_intlist(1, true, Kind::Float)
        .avg_pool2d([f, f], [f, f], [0, 0], false, true, None::<i64>)
        * (f * f) as f64
}

/// Sum over the `(2·reach + 1)²` cells around each cell (zero beyond the grid).
fn around(cells: &Tensor, reach: i64) -> Tensor {
    let k = 2 * reach + 1;
    cells.avg_pool2d([k, k], [1, 1], [reach, reach], false, true, None::<i64>) * (k * k) as f64
}

/// What a code costs in bits, for a rate–distortion search: an entropy coder's model of the
/// codes (a prior).
pub trait CodeRate {
    /// `(B, L, h, w, count)` bits of each of `ranked`'s candidate codes `(B, L, h, w, count)`,
    /// each given the current `codes` `(B, L, h, w)` that the coder reads before it, for a
    /// window of the grid whose top-left code is `origin` (row, column) of the whole grid.
    fn bits(&self, codes: &Tensor, ranked: &Tensor, origin: (i64, i64)) -> Tensor;
}

/// A rate–distortion search: a change is kept when it lowers `squared error + lambda · bits`
/// (the squared error of `[0, 1]` pixels summed over the channels; `lambda` is squared error per
/// bit) instead of the squared error alone.
#[derive(Clone, Copy)]
pub struct RateDistortion<'a> {
    pub rate: &'a dyn CodeRate,
    pub lambda: f64,
    /// The window's top-left code in the whole grid (the rate's blocks are the whole grid's).
    pub origin: (i64, i64),
}

impl std::fmt::Debug for RateDistortion<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateDistortion")
            .field("lambda", &self.lambda)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl VqVae {
    /// Images → `(B, L, h, w)` codes chosen by [`CodeSearch`] (module docs): never a higher
    /// squared error of the decoded image than [`VqVae::encode`]'s codes, whose bit rate they
    /// keep. Errors if the quantizer ranks no alternatives (FSQ).
    pub fn encode_searched(&self, xs: &Tensor, search: &CodeSearch) -> Result<Tensor, ModelError> {
        self.encode_searched_rd(xs, search, None, &|_| {})
    }

    /// [`VqVae::encode_searched`], weighing each code's bits too when `rd` is given: a change
    /// is kept when it lowers the squared error around it plus `lambda` times the code's bits
    /// under the rate model. The bits are those of each position given the codes before it as
    /// they stood at the start of the sweep (a change's effect on the later codes' bits is not
    /// counted), so each sweep asks the rate model once. `progress` gets the share of the
    /// search done (0 to 1) after each set of positions.
    pub fn encode_searched_rd(
        &self,
        xs: &Tensor,
        search: &CodeSearch,
        rd: Option<&RateDistortion<'_>>,
        progress: &dyn Fn(f64),
    ) -> Result<Tensor, ModelError> {
        let _guard = tch::no_grad_guard();
        let z = self.encode_continuous(xs);
        let vocabulary = self.quantizer.code_space().vocabulary;
        let count = search.candidates.clamp(1, vocabulary);
        let ranked = self
            .quantizer
            .ranked_codes(&z, count)
            .ok_or_else(|| unsupported(self))?;
        let codes = ranked.select(4, 0).copy();
        if count == 1 || search.sweeps == 0 {
            return Ok(codes);
        }
        let size = codes.size();
        let (depth, h, w) = (size[1], size[2], size[3]);
        let reach = decoder_reach(self, xs.device())?.unwrap_or(h.max(w));
        let spacing = 2 * reach + 1;
        let target = to_unit(&xs.to_kind(Kind::Float), self.config.input_range);
        let mut current = cell_errors(self, &codes, &target);
        let device = codes.device();
        let rows = Tensor::arange(h, (Kind::Int64, device)).view([h, 1]);
        let cols = Tensor::arange(w, (Kind::Int64, device)).view([1, w]);
        // Each code's rank among the candidates (all the quantizer's own at first).
        let chosen = codes.zeros_like();
        let offsets = spacing.min(h) * spacing.min(w);
        let steps = (search.sweeps as i64 * depth * offsets) as f64;
        let mut done = 0.0;
        for _ in 0..search.sweeps {
            // `(B, L, h, w, count)` λ · bits of each candidate, given the codes as they stand.
            let weighted = rd.map(|rd| {
                rd.rate
                    .bits(&codes, &ranked, rd.origin)
                    .to_device(device)
                    .to_kind(Kind::Float)
                    * rd.lambda
            });
            for level in 0..depth {
                for (oy, ox) in
                    (0..spacing.min(h)).flat_map(|y| (0..spacing.min(w)).map(move |x| (y, x)))
                {
                    done += 1.0;
                    progress(done / steps);
                    let tried = rows
                        .remainder(spacing)
                        .eq(oy)
                        .logical_and(&cols.remainder(spacing).eq(ox));
                    let old = codes.select(1, level);
                    // The ranks that change some tried position, all decoded in one pass.
                    let mut trials = Vec::new();
                    for rank in 1..count {
                        let alternative = ranked.select(1, level).select(3, rank);
                        let differs = alternative.ne_tensor(&old).logical_and(&tried);
                        if bool::try_from(differs.any())? {
                            trials.push((rank, alternative, differs));
                        }
                    }
                    if trials.is_empty() {
                        continue;
                    }
                    let batch: Vec<Tensor> = trials
                        .iter()
                        .map(|(_, alternative, _)| {
                            let trial = codes.copy();
                            trial
                                .select(1, level)
                                .copy_(&alternative.where_self(&tried, &old));
                            trial
                        })
                        .collect();
                    let errors = cell_errors(
                        self,
                        &Tensor::cat(&batch, 0),
                        &target.repeat([trials.len() as i64, 1, 1, 1]),
                    )
                    .chunk(trials.len() as i64, 0);
                    // Each tried position keeps the candidate of lowest cost (its own code
                    // unless one is lower; the first of equals), which is what trying them one
                    // after another and keeping each improvement gives.
                    let level_bits = weighted.as_ref().map(|w| w.select(1, level));
                    let mut best_cost = around(&current, reach).squeeze_dim(1);
                    if let Some(bits) = &level_bits {
                        best_cost += bits
                            .gather(3, &chosen.select(1, level).unsqueeze(3), false)
                            .squeeze_dim(3);
                    }
                    let mut best_rank = chosen.select(1, level).full_like(-1);
                    for ((rank, _, differs), errors) in trials.iter().zip(&errors) {
                        let mut cost = around(errors, reach).squeeze_dim(1);
                        if let Some(bits) = &level_bits {
                            cost += bits.select(3, *rank);
                        }
                        let better = cost.lt_tensor(&best_cost).logical_and(differs);
                        best_cost = cost.where_self(&better, &best_cost);
                        best_rank = best_rank.full_like(*rank).where_self(&better, &best_rank);
                    }
                    let kept = best_rank.ge(0);
                    if !bool::try_from(kept.any())? {
                        continue;
                    }
                    for ((rank, alternative, _), errors) in trials.iter().zip(&errors) {
                        let this = best_rank.eq(*rank);
                        if !bool::try_from(this.any())? {
                            continue;
                        }
                        let level_codes = codes.select(1, level);
                        let updated = alternative.where_self(&this, &level_codes);
                        codes.select(1, level).copy_(&updated);
                        let mut level_chosen = chosen.select(1, level);
                        let ranks = level_chosen
                            .full_like(*rank)
                            .where_self(&this, &level_chosen);
                        level_chosen.copy_(&ranks);
                        // Only the cells within reach of a kept change hold its trial's error.
                        let touched = this
                            .unsqueeze(1)
                            .to_kind(Kind::Float)
                            .max_pool2d([spacing, spacing], [1, 1], [reach, reach], [1, 1], false)
                            .gt(0.0);
                        current = errors.where_self(&touched, &current);
                    }
                }
            }
        }
        Ok(codes)
    }
}

#[cfg(test)]
mod tests {
    use tch::nn::{self, OptimizerConfig};
    use tch::Device;

    use super::*;
    use crate::quantizer::{CosineConfig, FsqConfig, QuantizerConfig, ResidualConfig, VqConfig};
    use crate::{ComputeKind, VqVaeConfig};

    fn config(quantizer: QuantizerConfig) -> VqVaeConfig {
        VqVaeConfig {
            hidden_channels: 8,
            residual: crate::ResidualStackConfig {
                hidden_channels: 4,
                layers: 1,
            },
            quantizer,
            compute: ComputeKind::F32,
            ..VqVaeConfig::default()
        }
    }

    fn vq() -> VqConfig {
        VqConfig {
            codebook: crate::quantizer::CodebookConfig {
                codebook_size: 16,
                dead_code_steps: 0,
                ..Default::default()
            },
            code_dim: 4,
            ..VqConfig::default()
        }
    }

    /// Smooth synthetic pictures (sums of random waves), in [-0.5, 0.5].
    fn pictures(n: i64) -> Tensor {
        let opts = (Kind::Float, Device::Cpu);
        let grid = Tensor::arange(32, opts) / 32.0;
        let (y, x) = (grid.view([1, 1, 32, 1]), grid.view([1, 1, 1, 32]));
        let freq = Tensor::rand([n, 3, 1, 1], opts) * 12.0;
        let phase = Tensor::rand([n, 3, 1, 1], opts) * 6.0;
        ((&x * &freq + &phase).sin() * (&y * &freq * 0.7 - &phase).cos()) * 0.5
    }

    /// A tiny model, its codebook fitted by k-means (not a cosine one: a random tiny encoder
    /// gives zero vectors, which spherical k-means refuses), trained for a few steps on `xs`.
    fn trained(quantizer: QuantizerConfig, xs: &Tensor) -> (nn::VarStore, VqVae) {
        let vs = nn::VarStore::new(Device::Cpu);
        let fit = !matches!(quantizer, QuantizerConfig::Cosine(_));
        let mut model = VqVae::new(vs.root(), &config(quantizer));
        if fit {
            model
                .init_quantizer(xs, 16, &vq_kmeans::KMeansConfig::new(16).seed(1))
                .unwrap();
        }
        let mut adam = nn::Adam::default().build(&vs, 3e-3).unwrap();
        for step in 1..=40 {
            let out = model.forward_t(xs, true);
            adam.backward_step(&out.loss);
            let pass = out.quantized;
            model.quantizer.after_step(&pass, step);
        }
        (vs, model)
    }

    fn per_image_error(model: &VqVae, codes: &Tensor, xs: &Tensor) -> Vec<f64> {
        let target = to_unit(xs, model.config.input_range);
        let cells = cell_errors(model, codes, &target);
        Vec::<f64>::try_from(cells.sum_dim_intlist(&[1i64, 2, 3][..], false, Kind::Double)).unwrap()
    }

    #[test]
    fn searched_codes_never_decode_worse_and_one_candidate_is_the_plain_encoding() {
        let _rng = crate::seeded(11);
        let xs = pictures(6);
        for quantizer in [
            QuantizerConfig::Vq(vq()),
            QuantizerConfig::Cosine(CosineConfig {
                codebook: crate::quantizer::CodebookConfig {
                    codebook_size: 16,
                    dead_code_steps: 0,
                    ..Default::default()
                },
                code_dim: 3,
                latent_dim: 4,
            }),
            QuantizerConfig::Residual(ResidualConfig {
                codebook: crate::quantizer::CodebookConfig {
                    codebook_size: 16,
                    dead_code_steps: 0,
                    ..Default::default()
                },
                depth: 2,
                code_dim: 4,
                ..ResidualConfig::default()
            }),
        ] {
            let name = quantizer.kind_name();
            let (_vs, model) = trained(quantizer, &xs);
            let plain = model.encode(&xs);
            let one = CodeSearch {
                candidates: 1,
                sweeps: 2,
            };
            assert_eq!(model.encode_searched(&xs, &one).unwrap(), plain, "{name}");
            let searched = model.encode_searched(&xs, &CodeSearch::default()).unwrap();
            assert_eq!(searched.size(), plain.size(), "{name}");
            let before = per_image_error(&model, &plain, &xs);
            let after = per_image_error(&model, &searched, &xs);
            for (b, a) in before.iter().zip(&after) {
                assert!(*a <= b * (1.0 + 1e-6), "{name}: {a} > {b}");
            }
            // The search found something: fewer errors in total, some codes changed.
            assert!(
                after.iter().sum::<f64>() < before.iter().sum::<f64>(),
                "{name}"
            );
            assert!(
                bool::try_from(searched.ne_tensor(&plain).any()).unwrap(),
                "{name}"
            );
            // And it is reproducible.
            let again = model.encode_searched(&xs, &CodeSearch::default()).unwrap();
            assert_eq!(again, searched, "{name}");
        }
    }

    #[test]
    fn ranked_codes_start_with_the_lookup_and_go_by_distance() {
        let _rng = crate::seeded(12);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = VqVae::new(vs.root(), &config(QuantizerConfig::Vq(vq())));
        let xs = pictures(2);
        let z = model.encode_continuous(&xs);
        let ranked = model.quantizer.ranked_codes(&z, 5).unwrap();
        assert_eq!(ranked.size(), vec![2, 1, 8, 8, 5]);
        assert_eq!(ranked.select(4, 0), model.encode(&xs));
        // Distances from each vector to its ranked codes never fall along the ranking.
        let flat = z.permute([0, 2, 3, 1]).reshape([-1, 4]);
        let codes = model.quantizer.parameters()[0].shallow_clone();
        let chosen = codes
            .index_select(0, &ranked.reshape([-1]))
            .view([-1, 5, 4]);
        let distance = (chosen - flat.unsqueeze(1))
            .square()
            .sum_dim_intlist(2, false, Kind::Float);
        let steps = distance.narrow(1, 1, 4) - distance.narrow(1, 0, 4);
        assert!(steps.min().double_value(&[]) >= -1e-5);
        // More candidates than codes: every code once.
        assert_eq!(model.quantizer.ranked_codes(&z, 99).unwrap().size()[4], 16);
    }

    #[test]
    fn a_quantizer_without_a_ranking_is_refused_by_name() {
        let _rng = crate::seeded(13);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = VqVae::new(
            vs.root(),
            &config(QuantizerConfig::Fsq(FsqConfig { levels: vec![4, 4] })),
        );
        let err = check(&model).unwrap_err().to_string();
        assert!(err.contains("fsq") && err.contains("code search"), "{err}");
        let err = model
            .encode_searched(&pictures(1), &CodeSearch::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("fsq"), "{err}");
        let vs = nn::VarStore::new(Device::Cpu);
        assert!(check(&VqVae::new(vs.root(), &config(QuantizerConfig::Vq(vq())))).is_ok());
    }

    #[test]
    fn the_reach_bounds_where_a_code_change_moves_pixels() {
        let _rng = crate::seeded(14);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = VqVae::new(vs.root(), &config(QuantizerConfig::Vq(vq())));
        let reach = decoder_reach(&model, Device::Cpu).unwrap().unwrap();
        // 3×3 code convolution, one residual 3×3, the transposed convolutions' overlap.
        assert!((2..=4).contains(&reach), "{reach}");
        // A change at the centre of a 16×16 grid leaves every pixel farther than `reach` codes
        // alone.
        let codes = Tensor::randint(16, [1, 1, 16, 16], (Kind::Int64, Device::Cpu));
        let changed = codes.copy();
        let old = codes.int64_value(&[0, 0, 8, 8]);
        let _ = changed.get(0).get(0).get(8).get(8).fill_((old + 5) % 16);
        let diff = (model.decode(&codes) - model.decode(&changed)).abs();
        let near = 4 * (8 - reach);
        let far = 4 * (8 + reach + 1);
        let outside = diff.copy();
        let _ = outside
            .narrow(2, near, far - near)
            .narrow(3, near, far - near)
            .fill_(0.0);
        assert_eq!(outside.max().double_value(&[]), 0.0);
        assert!(diff.max().double_value(&[]) > 0.0);
    }
}
