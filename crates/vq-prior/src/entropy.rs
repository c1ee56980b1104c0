//! Entropy coding of code grids with a prior: each code is arithmetic-coded with the prior's
//! probability of it given the codes before it, so a grid costs about the prior's negative
//! log-likelihood instead of ⌈log2 V⌉ bits a code.
//!
//! A grid larger than the prior's is coded in blocks of the prior's side, all blocks of an image
//! as one batch; positions past the image's edge in the last blocks are not coded (both sides
//! place code 0 there). The decoder must see exactly the encoder's probabilities.
//!
//! [`encode_portable`] and [`decode_portable`] (format version 3, what is written now) get
//! them from the prior's forward pass in plain Rust ([`crate::portable`]), the same to the bit
//! on every machine, thread count and LibTorch build; the class (or none) is the stream's first
//! symbol, uniform over the classes and none.
//!
//! [`encode`] and [`decode`] are the coder of format version 2, kept so that its files still
//! decode where they did: they run LibTorch ([`CodePrior::step`], the sampler's own loop) on
//! the CPU with one thread, whose f32 rounding depends on the CPU and the build, so such a file
//! decodes only on a machine that rounds as its encoder did. Its codes checksum turns any other
//! into an error instead of a wrong image.

use rayon::prelude::*;
use tch::{Device, Kind, Tensor};
use vq_codes::arithmetic::{find, frequencies, frequencies_of_logits, interval, Decoder, Encoder};

use crate::portable::PortableTransformer;
use crate::CodePrior;

/// A grid of `height` × `width` codes (row-major), one level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grid {
    pub width: usize,
    pub height: usize,
    pub codes: Vec<u32>,
}

/// The blocks of the prior's side a grid is cut into.
struct Blocks {
    side: usize,
    across: usize,
    down: usize,
    width: usize,
    height: usize,
}

impl Blocks {
    fn new(side: usize, width: usize, height: usize) -> Self {
        Blocks {
            side,
            across: width.div_ceil(side),
            down: height.div_ceil(side),
            width,
            height,
        }
    }

    fn count(&self) -> usize {
        self.across * self.down
    }

    /// The grid cell of position `(i, j)` of block `b`, if it lies inside the grid.
    fn cell(&self, b: usize, i: usize, j: usize) -> Option<usize> {
        let (y, x) = (
            (b / self.across) * self.side + i,
            (b % self.across) * self.side + j,
        );
        (y < self.height && x < self.width).then_some(y * self.width + x)
    }
}

/// One LibTorch thread for as long as it lives.
struct OneThread(i32);

impl OneThread {
    fn new() -> Self {
        let before = tch::get_num_threads();
        tch::set_num_threads(1);
        OneThread(before)
    }
}

impl Drop for OneThread {
    fn drop(&mut self) {
        tch::set_num_threads(self.0);
    }
}

/// Frequency tables of each row of `(n, V)` logits: softmax in f64, then integer rounding.
fn tables(logits: &Tensor) -> Vec<Vec<u32>> {
    let v = logits.size()[1] as usize;
    let values = Vec::<f32>::try_from(logits.to_kind(Kind::Float).contiguous().view([-1]))
        .expect("logits are a CPU float tensor");
    values
        .chunks(v)
        .map(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let p: Vec<f64> = row.iter().map(|&l| (l as f64 - max).exp()).collect();
            frequencies(&p)
        })
        .collect()
}

fn labels(class: Option<i64>, n: usize) -> Option<Tensor> {
    class.map(|c| Tensor::full([n as i64], c, (Kind::Int64, Device::Cpu)))
}

/// Steps `prior` over the blocks of a `width` × `height` grid, one position of every block at a
/// time, on the CPU with one thread: `code_at(table, cell)` gets the frequency table of each
/// grid cell in turn and returns its code, which the next positions then read.
fn step_blocks(
    prior: &dyn CodePrior,
    width: usize,
    height: usize,
    class: Option<i64>,
    code_at: &mut dyn FnMut(&[u32], usize) -> u32,
) {
    let _one = OneThread::new();
    let side = prior.provenance().grid_side as usize;
    let blocks = Blocks::new(side, width, height);
    let n = blocks.count();
    let labels = labels(class, n);
    let mut t = 0;
    // The codes it returns are the grid's, already placed by `code_at`.
    let _ = prior.step(
        n as i64,
        labels.as_ref(),
        0,
        Device::Cpu,
        &mut |logits, _| {
            let (i, j) = (t / side, t % side);
            t += 1;
            let tables = tables(logits);
            let codes: Vec<i64> = (0..n)
                .map(|b| match blocks.cell(b, i, j) {
                    Some(cell) => code_at(&tables[b], cell) as i64,
                    None => 0,
                })
                .collect();
            Tensor::from_slice(&codes)
        },
    );
}

/// Arithmetic-codes `grid` with `prior` (on the CPU), conditioned on `class`.
pub fn encode(prior: &dyn CodePrior, grid: &Grid, class: Option<i64>) -> Vec<u8> {
    let mut encoder = Encoder::new();
    step_blocks(prior, grid.width, grid.height, class, &mut |table, cell| {
        let code = grid.codes[cell];
        encoder.encode(interval(table, code as usize));
        code
    });
    encoder.finish()
}

/// The grid [`encode`] coded as `bytes` (a `width` × `height` grid), given the same prior and
/// class.
pub fn decode(
    prior: &dyn CodePrior,
    bytes: &[u8],
    width: usize,
    height: usize,
    class: Option<i64>,
) -> Grid {
    let mut decoder = Decoder::new(bytes);
    let mut codes = vec![0; width * height];
    step_blocks(prior, width, height, class, &mut |table, cell| {
        let (code, iv) = find(table, decoder.target(table.iter().sum()));
        decoder.consume(iv);
        codes[cell] = code as u32;
        code as u32
    });
    Grid {
        width,
        height,
        codes,
    }
}

/// The table of the class symbol: uniform over the classes and, last, none.
fn class_table(classes: usize) -> Vec<u32> {
    frequencies(&vec![1.0; classes + 1])
}

/// Blocks stepped together by the portable coder: the blocks of the grid (in raster order) are
/// coded a group after another, each group one position of every block at a time, so that
/// memory (each block's key/value cache) stays bounded whatever the image's size.
pub const PORTABLE_GROUP: usize = 1024;

/// Steps `prior` over the blocks of a `width` × `height` grid, in groups of
/// [`PORTABLE_GROUP`] blocks, one position of every block of a group at a time:
/// `code_at(table, cell)` gets the frequency table of each grid cell in turn and returns its
/// code, which the next positions then read.
fn step_portable(
    prior: &PortableTransformer,
    width: usize,
    height: usize,
    class: Option<usize>,
    code_at: &mut dyn FnMut(&[u32], usize) -> u32,
) {
    let side = prior.side();
    let blocks = Blocks::new(side, width, height);
    for first in (0..blocks.count()).step_by(PORTABLE_GROUP) {
        let group: Vec<usize> = (first..blocks.count().min(first + PORTABLE_GROUP)).collect();
        step_group(prior, &blocks, &group, class, code_at);
    }
}

/// [`step_portable`] over the blocks `group`.
fn step_group(
    prior: &PortableTransformer,
    blocks: &Blocks,
    group: &[usize],
    class: Option<usize>,
    code_at: &mut dyn FnMut(&[u32], usize) -> u32,
) {
    let (side, v) = (prior.side(), prior.vocabulary());
    prior.step(group.len(), class, &mut |t, logits| {
        let (i, j) = (t / side, t % side);
        let cells: Vec<Option<usize>> = group.iter().map(|&b| blocks.cell(b, i, j)).collect();
        // Each row's table alone: the same whichever thread builds it.
        let tables: Vec<Option<Vec<u32>>> = logits
            .par_chunks(v)
            .zip(&cells)
            .map(|(row, cell)| cell.map(|_| frequencies_of_logits(row)))
            .collect();
        tables
            .iter()
            .zip(&cells)
            .map(|(table, cell)| match (table, cell) {
                (Some(table), Some(cell)) => code_at(table, *cell),
                _ => 0,
            })
            .collect()
    });
}

/// The class symbol of `class` (`None` and classes the prior lacks are none).
fn class_symbol(prior: &PortableTransformer, class: Option<i64>) -> usize {
    match class {
        Some(c) if (0..prior.class_count() as i64).contains(&c) => c as usize,
        _ => prior.class_count(),
    }
}

/// Arithmetic-codes `grid` (format version 3) with the portable forward pass of a prior,
/// conditioned on `class`: the same bytes on every machine.
pub fn encode_portable(prior: &PortableTransformer, grid: &Grid, class: Option<i64>) -> Vec<u8> {
    let mut encoder = Encoder::new();
    let symbol = class_symbol(prior, class);
    encoder.encode(interval(&class_table(prior.class_count()), symbol));
    let class = (symbol < prior.class_count()).then_some(symbol);
    step_portable(prior, grid.width, grid.height, class, &mut |table, cell| {
        let code = grid.codes[cell];
        encoder.encode(interval(table, code as usize));
        code
    });
    encoder.finish()
}

/// The grid (and class) [`encode_portable`] coded as `bytes`, a `width` × `height` grid.
/// Bytes it did not write decode to some grid, never a panic: the file's codes check tells.
pub fn decode_portable(
    prior: &PortableTransformer,
    bytes: &[u8],
    width: usize,
    height: usize,
) -> (Grid, Option<i64>) {
    let mut decoder = Decoder::new(bytes);
    let table = class_table(prior.class_count());
    let (symbol, iv) = find(&table, decoder.target(table.iter().sum()));
    decoder.consume(iv);
    let class = (symbol < prior.class_count()).then_some(symbol);
    let mut codes = vec![0; width * height];
    step_portable(prior, width, height, class, &mut |table, cell| {
        let (code, iv) = find(table, decoder.target(table.iter().sum()));
        decoder.consume(iv);
        codes[cell] = code as u32;
        code as u32
    });
    let grid = Grid {
        width,
        height,
        codes,
    };
    (grid, class.map(|c| c as i64))
}

/// Every frequency table [`encode_portable`] codes `grid` with, in order (the class symbol's
/// first): what a test compares across machines.
pub fn portable_tables(
    prior: &PortableTransformer,
    grid: &Grid,
    class: Option<i64>,
) -> Vec<Vec<u32>> {
    let symbol = class_symbol(prior, class);
    let mut tables = vec![class_table(prior.class_count())];
    let class = (symbol < prior.class_count()).then_some(symbol);
    step_portable(prior, grid.width, grid.height, class, &mut |table, cell| {
        tables.push(table.to_vec());
        grid.codes[cell]
    });
    tables
}

/// A prior's bits for each code, as the coder cuts a grid into blocks: the rate model of a
/// rate–distortion code search ([`vq_model::CodeRate`]). LibTorch computes it (only the
/// encoder's choice hangs on it, never the decoder's probabilities).
#[derive(Debug)]
pub struct PriorRate<'a> {
    pub prior: &'a dyn CodePrior,
    /// The class the bits are taken under (`None`: the null class).
    pub class: Option<i64>,
}

impl vq_model::CodeRate for PriorRate<'_> {
    /// One level (priors model one code per position); the window's codes outside the image
    /// and before its top-left corner in its first blocks read as code 0.
    fn bits(&self, codes: &Tensor, ranked: &Tensor, (oy, ox): (i64, i64)) -> Tensor {
        let _guard = tch::no_grad_guard();
        // The prior runs on the CPU, as entropy coding opens it.
        let (codes, ranked) = (codes.to_device(Device::Cpu), ranked.to_device(Device::Cpu));
        let (b, _, h, w) = codes.size4().expect("(B, L, h, w) codes");
        let s = self.prior.provenance().grid_side;
        let (by0, bx0) = (oy / s, ox / s);
        let (nby, nbx) = ((oy + h + s - 1) / s - by0, (ox + w + s - 1) / s - bx0);
        let (dy, dx) = (oy - by0 * s, ox - bx0 * s);
        let device = codes.device();
        let canvas = Tensor::zeros([b, nby * s, nbx * s], (Kind::Int64, device));
        canvas
            .narrow(1, dy, h)
            .narrow(2, dx, w)
            .copy_(&codes.select(1, 0));
        let blocks = canvas
            .view([b, nby, s, nbx, s])
            .permute([0, 1, 3, 2, 4])
            .reshape([-1, s, s]);
        let n = blocks.size()[0];
        let logits = self
            .prior
            .logits(&blocks, labels(self.class, n as usize).as_ref(), false);
        let v = logits.size()[1];
        // (B, nby·s, nbx·s, V) log-probabilities, cropped to the window.
        let log_p = logits
            .log_softmax(1, Kind::Float)
            .view([b, nby, nbx, v, s, s])
            .permute([0, 1, 4, 2, 5, 3])
            .reshape([b, nby * s, nbx * s, v])
            .narrow(1, dy, h)
            .narrow(2, dx, w);
        let picked = log_p.gather(3, &ranked.select(1, 0), false);
        (picked / -std::f64::consts::LN_2).unsqueeze(1)
    }
}

/// Blocks [`best_class`] judges a grid on at most.
const CLASS_BLOCKS: usize = 8;

/// The class (or none) under which the prior finds `grid` most likely, by its teacher-forced
/// NLL: what an encoder codes with, since it knows no label. `None` is a candidate when the
/// prior has an unconditional model (or no classes).
pub fn best_class(prior: &dyn CodePrior, grid: &Grid) -> Option<i64> {
    let _guard = tch::no_grad_guard();
    // One thread, so that the choice does not hang on the thread count's rounding.
    let _one = OneThread::new();
    let side = prior.provenance().grid_side as usize;
    let blocks = Blocks::new(side, grid.width, grid.height);
    // A photo's class is judged on blocks spread over it: the choice only sizes the file.
    let picked: Vec<usize> = if blocks.count() <= CLASS_BLOCKS {
        (0..blocks.count()).collect()
    } else {
        (0..CLASS_BLOCKS)
            .map(|i| i * blocks.count() / CLASS_BLOCKS)
            .collect()
    };
    let n = picked.len();
    let mut codes = vec![0i64; n * side * side];
    for (k, &b) in picked.iter().enumerate() {
        for i in 0..side {
            for j in 0..side {
                if let Some(cell) = blocks.cell(b, i, j) {
                    codes[(k * side + i) * side + j] = grid.codes[cell] as i64;
                }
            }
        }
    }
    let codes = Tensor::from_slice(&codes).view([n as i64, side as i64, side as i64]);
    let classes = prior.provenance().classes;
    let mut candidates: Vec<Option<i64>> = (0..classes).map(Some).collect();
    if classes == 0 || prior.supports_guidance() {
        candidates.insert(0, None);
    }
    let nll = |class: Option<i64>| {
        prior
            .nll(&codes, labels(class, n).as_ref(), false)
            .double_value(&[])
    };
    candidates
        .into_iter()
        .map(|c| (c, nll(c)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .and_then(|(c, _)| c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Provenance, TransformerConfig, TransformerPrior};
    use tch::nn;
    use vq_model::CodeSpace;

    fn prior(vs: &nn::VarStore) -> TransformerPrior {
        prior_with_heads(vs, 2, None)
    }

    /// A tiny prior of `heads` query heads sharing `kv_heads` key/value heads.
    fn prior_with_heads(vs: &nn::VarStore, heads: i64, kv_heads: Option<i64>) -> TransformerPrior {
        let cfg = TransformerConfig {
            width: 16,
            layers: 2,
            heads,
            kv_heads,
            dropout: 0.0,
            class_dropout: 0.1,
        };
        let provenance = Provenance {
            codes: CodeSpace {
                depth: 1,
                vocabulary: 11,
            },
            grid_side: 4,
            classes: 3,
            ..Provenance::default()
        };
        TransformerPrior::new(vs.root(), &cfg, &provenance)
    }

    /// A grid of 3 × 2 blocks of 4 × 4 cut to 10 × 7, of codes the prior finds likely (its
    /// own samples, also returned whole).
    fn likely_grid(prior: &TransformerPrior) -> (Grid, Tensor) {
        let sampled = prior.sample(6, None, &Default::default(), vq_model::test_device());
        let blocks = Blocks::new(4, 10, 7);
        let mut grid = Grid {
            width: 10,
            height: 7,
            codes: vec![0; 70],
        };
        for b in 0..6 {
            for i in 0..4 {
                for j in 0..4 {
                    if let Some(cell) = blocks.cell(b, i, j) {
                        grid.codes[cell] =
                            sampled.int64_value(&[b as i64, i as i64, j as i64]) as u32;
                    }
                }
            }
        }
        (grid, sampled)
    }

    #[test]
    fn the_portable_pass_computes_libtorchs_logits() {
        let _rng = vq_model::seeded(5);
        let vs = nn::VarStore::new(Device::Cpu);
        // Grouped key/value heads, as the bundled prior has.
        let prior = prior_with_heads(&vs, 4, Some(2));
        // Weights larger than their initialisation, so that every layer matters.
        tch::no_grad(|| {
            for (_, mut t) in vs.variables() {
                let scaled = &t * 8.0;
                t.copy_(&scaled);
            }
        });
        let codes = Tensor::randint(11, [3, 4, 4], (Kind::Int64, Device::Cpu));
        let labels = Tensor::from_slice(&[0i64, 2, 1]);
        let torch = prior.logits(&codes, Some(&labels), false);
        let portable = prior.portable();
        for (row, class) in [0usize, 2, 1].into_iter().enumerate() {
            let mut t_seen = Vec::new();
            portable.step(1, Some(class), &mut |t, logits| {
                for (v, &l) in logits.iter().enumerate() {
                    let want =
                        torch.double_value(&[row as i64, v as i64, (t / 4) as i64, (t % 4) as i64]);
                    assert!(
                        (l as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "grid {row} position {t} code {v}: {l} against {want}"
                    );
                }
                t_seen.push(t);
                vec![codes.int64_value(&[row as i64, (t / 4) as i64, (t % 4) as i64]) as u32]
            });
            assert_eq!(t_seen, (0..16).collect::<Vec<_>>());
        }
    }

    #[test]
    fn portable_coding_round_trips_any_grid_with_its_class_and_costs_about_the_nll() {
        let _rng = vq_model::seeded(3);
        let vs = nn::VarStore::new(vq_model::test_device());
        let prior = prior(&vs);
        let (grid, _) = likely_grid(&prior);
        let portable = prior.portable();
        for class in [None, Some(0), Some(2)] {
            let bytes = encode_portable(&portable, &grid, class);
            assert_eq!(
                decode_portable(&portable, &bytes, 10, 7),
                (grid.clone(), class)
            );
            // Packed, 70 codes of 4 bits are 35 bytes.
            assert!(bytes.len() < 35, "{} bytes", bytes.len());
        }
        // More blocks than one group of the coder (33 × 32 blocks of 4 × 4).
        let many = Grid {
            width: 132,
            height: 125,
            codes: (0..132 * 125).map(|i| grid.codes[(i * 7) % 70]).collect(),
        };
        assert!(many.width.div_ceil(4) * many.height.div_ceil(4) > PORTABLE_GROUP);
        let bytes = encode_portable(&portable, &many, Some(1));
        assert_eq!(
            decode_portable(&portable, &bytes, 132, 125),
            (many, Some(1))
        );
        // Bytes it did not write decode to something, never a panic.
        for junk in [vec![], vec![0xFF; 3], vec![0x12; 64]] {
            let (other, _) = decode_portable(&portable, &junk, 10, 7);
            assert_eq!(other.codes.len(), 70);
        }
    }

    #[test]
    fn portable_bytes_do_not_depend_on_threads_batching_or_the_sampling_number_type() {
        let _rng = vq_model::seeded(4);
        let vs = nn::VarStore::new(vq_model::test_device());
        let mut prior = prior(&vs);
        let (grid, _) = likely_grid(&prior);
        let in_pool = |threads: usize, portable: &PortableTransformer, grid: &Grid| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| encode_portable(portable, grid, Some(1)))
        };
        let portable = prior.portable();
        let one = in_pool(1, &portable, &grid);
        assert_eq!(in_pool(2, &portable, &grid), one);
        assert_eq!(in_pool(3, &portable, &grid), one);
        // The instructions every CPU has give the widest SIMD's bits.
        assert_eq!(in_pool(2, &portable.baseline_only(), &grid), one);
        prior.set_sampling_kind(Kind::BFloat16);
        prior.set_training_kind(Kind::BFloat16);
        assert_eq!(in_pool(2, &prior.portable(), &grid), one);
        // A grid of many blocks: the rows each thread takes change, the bytes do not.
        let big = Grid {
            width: 40,
            height: 37,
            codes: (0..40 * 37).map(|i| grid.codes[i % 70]).collect(),
        };
        let one = in_pool(1, &portable, &big);
        assert_eq!(in_pool(2, &portable, &big), one);
        assert_eq!(
            portable_tables(&portable, &big, Some(1)).len(),
            1 + 40 * 37,
            "the class's table, then one per code"
        );
    }

    #[test]
    fn grids_of_any_size_decode_to_exactly_the_codes_and_cost_about_the_nll() {
        let _rng = vq_model::seeded(3);
        let vs = nn::VarStore::new(vq_model::test_device());
        let prior = prior(&vs);
        let (grid, sampled) = likely_grid(&prior);
        for class in [None, Some(2), best_class(&prior, &grid)] {
            let bytes = encode(&prior, &grid, class);
            assert_eq!(decode(&prior, &bytes, 10, 7, class), grid, "{class:?}");
            // Packed, 70 codes of 4 bits are 35 bytes; coded they cost their information.
            assert!(bytes.len() < 35, "{} bytes", bytes.len());
        }
        // Two whole blocks: the file is the prior's NLL, to a few bytes.
        let whole = Grid {
            width: 4,
            height: 8,
            codes: Vec::<i64>::try_from(sampled.narrow(0, 0, 2).flatten(0, -1))
                .unwrap()
                .iter()
                .map(|&c| c as u32)
                .collect(),
        };
        let bits = prior
            .nll(&sampled.narrow(0, 0, 2), None, false)
            .double_value(&[])
            * 32.0
            / std::f64::consts::LN_2;
        let bytes = encode(&prior, &whole, None);
        assert!(
            (bytes.len() * 8) as f64 <= bits + 16.0,
            "{} bytes for {bits:.1} bits",
            bytes.len()
        );
        assert_eq!(decode(&prior, &bytes, 4, 8, None), whole);
        // Another class's probabilities decode other codes.
        let bytes = encode(&prior, &grid, Some(0));
        assert_ne!(decode(&prior, &bytes, 10, 7, Some(1)), grid);
    }
}
