//! The transformer prior's forward pass in plain Rust, for entropy coding: its probabilities
//! come out the same to the bit on every machine, so a file coded on one CPU decodes on any
//! other (docs/architecture.md says why this path and not an integer network).
//!
//! What makes it portable:
//! - every sum runs in one fixed order (an output's products are added first input to last,
//!   then the bias), with separate IEEE-754 multiplies and adds: Rust neither fuses them into
//!   FMAs nor reorders them unless told to;
//! - SIMD runs across independent outputs (each lane is one output's own sum in that order),
//!   threads across independent grids' rows, so neither the vector width nor the thread count
//!   changes a result;
//! - `exp` and `erf` are the `libm` crate's software functions, not the platform's, and `sqrt`
//!   is IEEE-754's exactly rounded one;
//! - the floating-point control register is the IEEE default (no flush of subnormals) while
//!   it runs, whatever LibTorch set.
//!
//! LibTorch stays for training and sampling; only coding uses this.

use rayon::prelude::*;

/// `x · W + b` for rows of `inputs` values, `W` stored input-major (`inputs × outputs`), so
/// that one input's weights for consecutive outputs are contiguous (the SIMD lanes).
#[derive(Debug, Clone)]
pub(crate) struct Dense {
    pub inputs: usize,
    pub outputs: usize,
    /// `inputs × outputs`.
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
}

impl Dense {
    /// From LibTorch's layout: `weight` is `outputs × inputs`, row-major.
    pub fn from_torch(weight: &[f32], bias: &[f32], inputs: usize, outputs: usize) -> Self {
        assert_eq!(weight.len(), inputs * outputs);
        assert_eq!(bias.len(), outputs);
        let mut weights = vec![0.0; inputs * outputs];
        for o in 0..outputs {
            for i in 0..inputs {
                weights[i * outputs + o] = weight[o * inputs + i];
            }
        }
        Dense {
            inputs,
            outputs,
            weights,
            bias: bias.to_vec(),
        }
    }

    /// `out[r] = x[r] · W + b` for each of `rows` rows, in the widest SIMD the CPU has (the
    /// same bits in any).
    /// `baseline` keeps to the instructions every CPU of the architecture has (what the tests
    /// compare the wider ones with).
    #[allow(unsafe_code)]
    fn apply(&self, x: &[f32], rows: usize, out: &mut [f32], baseline: bool) {
        debug_assert_eq!(x.len(), rows * self.inputs);
        debug_assert_eq!(out.len(), rows * self.outputs);
        #[cfg(target_arch = "x86_64")]
        if !baseline {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has the feature just checked.
                return unsafe { self.apply_avx512(x, rows, out) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: as above.
                return unsafe { self.apply_avx2(x, rows, out) };
            }
        }
        self.apply_tiled::<8>(x, rows, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[allow(unsafe_code)]
    unsafe fn apply_avx512(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        self.apply_tiled::<32>(x, rows, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[allow(unsafe_code)]
    unsafe fn apply_avx2(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        self.apply_tiled::<16>(x, rows, out)
    }

    /// Tiles of 4 rows × `W` outputs; each output is the same sum whatever the tile.
    #[inline(always)]
    fn apply_tiled<const W: usize>(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        let (n_in, n_out) = (self.inputs, self.outputs);
        let mut r = 0;
        while r + 4 <= rows {
            let xs: [&[f32]; 4] = std::array::from_fn(|i| &x[(r + i) * n_in..(r + i + 1) * n_in]);
            let mut o = 0;
            while o + W <= n_out {
                let acc = self.tile4::<W>(xs, o);
                for (i, acc) in acc.iter().enumerate() {
                    self.finish(acc, &mut out[(r + i) * n_out + o..][..W], o);
                }
                o += W;
            }
            for (i, xr) in xs.iter().enumerate() {
                self.rest(xr, o, &mut out[(r + i) * n_out..(r + i + 1) * n_out]);
            }
            r += 4;
        }
        while r < rows {
            let xr = &x[r * n_in..(r + 1) * n_in];
            let mut o = 0;
            while o + W <= n_out {
                let acc = self.tile1::<W>(xr, o);
                self.finish(&acc, &mut out[r * n_out + o..][..W], o);
                o += W;
            }
            self.rest(xr, o, &mut out[r * n_out..(r + 1) * n_out]);
            r += 1;
        }
    }

    /// The sums of outputs `o..o + W` of four rows: input `k`'s weights for those outputs are
    /// one vector, each row's accumulators another, so the adds go lane by lane.
    #[inline(always)]
    fn tile4<const W: usize>(&self, xs: [&[f32]; 4], o: usize) -> [[f32; W]; 4] {
        let (mut a0, mut a1, mut a2, mut a3) = ([0.0f32; W], [0.0f32; W], [0.0f32; W], [0.0f32; W]);
        let inputs = self
            .weights
            .chunks_exact(self.outputs)
            .zip(xs[0])
            .zip(xs[1])
            .zip(xs[2])
            .zip(xs[3]);
        for ((((w, &x0), &x1), &x2), &x3) in inputs {
            let w: &[f32; W] = w[o..o + W].try_into().expect("W weights");
            for j in 0..W {
                a0[j] += x0 * w[j];
                a1[j] += x1 * w[j];
                a2[j] += x2 * w[j];
                a3[j] += x3 * w[j];
            }
        }
        [a0, a1, a2, a3]
    }

    /// [`Dense::tile4`] for one row.
    #[inline(always)]
    fn tile1<const W: usize>(&self, xr: &[f32], o: usize) -> [f32; W] {
        let mut a = [0.0f32; W];
        for (w, &x) in self.weights.chunks_exact(self.outputs).zip(xr) {
            let w: &[f32; W] = w[o..o + W].try_into().expect("W weights");
            for j in 0..W {
                a[j] += x * w[j];
            }
        }
        a
    }

    /// Adds the bias to a tile's sums.
    #[inline(always)]
    fn finish<const W: usize>(&self, acc: &[f32; W], out: &mut [f32], o: usize) {
        for j in 0..W {
            out[j] = acc[j] + self.bias[o + j];
        }
    }

    /// Outputs `from..` of one row, one at a time (the same sums as the tiles).
    fn rest(&self, xr: &[f32], from: usize, out: &mut [f32]) {
        for o in from..self.outputs {
            let mut acc = 0.0f32;
            for (w, &x) in self.weights.chunks_exact(self.outputs).zip(xr) {
                acc += x * w[o];
            }
            out[o] = acc + self.bias[o];
        }
    }
}

/// Layer normalisation over each row (LibTorch's `layer_norm` with an affine map).
#[derive(Debug, Clone)]
pub(crate) struct Norm {
    pub gain: Vec<f32>,
    pub bias: Vec<f32>,
    pub eps: f32,
}

impl Norm {
    fn apply(&self, x: &[f32], out: &mut [f32]) {
        let d = self.gain.len();
        for (x, out) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let mut sum = 0.0f32;
            for &v in x {
                sum += v;
            }
            let mean = sum / d as f32;
            let mut squares = 0.0f32;
            for &v in x {
                squares += (v - mean) * (v - mean);
            }
            let inv = 1.0 / (squares / d as f32 + self.eps).sqrt();
            for j in 0..d {
                out[j] = (x[j] - mean) * inv * self.gain[j] + self.bias[j];
            }
        }
    }
}

/// One pre-norm block: causal self-attention with grouped key/value heads, then an MLP.
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    pub ln1: Norm,
    pub qkv: Dense,
    pub proj: Dense,
    pub ln2: Norm,
    pub fc1: Dense,
    pub fc2: Dense,
}

/// The weights of a transformer prior, as [`crate::TransformerPrior::portable`] copies them.
#[derive(Debug, Clone)]
pub struct PortableTransformer {
    pub(crate) width: usize,
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    /// `vocabulary × width`.
    pub(crate) codes: Vec<f32>,
    /// `(classes + 1) × width`, the null class last.
    pub(crate) classes: Vec<f32>,
    /// `length × width`.
    pub(crate) positions: Vec<f32>,
    pub(crate) layers: Vec<Layer>,
    pub(crate) ln_f: Norm,
    pub(crate) head: Dense,
    pub(crate) vocabulary: usize,
    pub(crate) class_count: usize,
    pub(crate) side: usize,
    /// Only the instructions every CPU of the architecture has (SSE2 on x86-64), not the
    /// widest this one has ([`PortableTransformer::baseline_only`]).
    pub(crate) baseline: bool,
}

/// Rows of grids stepped together by one thread: their residual streams and key/value caches.
struct Rows {
    count: usize,
    /// `count × width`: the stream of the position being computed.
    x: Vec<f32>,
    /// Per layer, keys as `count × kv_width × length` (each key component's values over the
    /// positions contiguous, so that a query's scores are summed lane by lane across
    /// positions) and values as `count × length × kv_width`.
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    /// `count × vocabulary` logits of the last step.
    logits: Vec<f32>,
}

/// Rows a thread takes at a time: enough for the 4-row tiles, few enough to spread a
/// photo's blocks over the cores.
const ROWS_PER_TASK: usize = 16;

impl PortableTransformer {
    /// The same pass on only the instructions every CPU of the architecture has (the same
    /// bits, slower): what tests compare the widest SIMD with.
    pub fn baseline_only(&self) -> Self {
        PortableTransformer {
            baseline: true,
            ..self.clone()
        }
    }

    /// Positions in a grid (the prior's side squared).
    pub fn length(&self) -> usize {
        self.side * self.side
    }

    pub fn side(&self) -> usize {
        self.side
    }

    pub fn vocabulary(&self) -> usize {
        self.vocabulary
    }

    /// Classes (0: unconditional); the null class is `class_count`.
    pub fn class_count(&self) -> usize {
        self.class_count
    }

    fn head_dim(&self) -> usize {
        self.width / self.heads
    }

    fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim()
    }

    /// Steps `n` grids of the prior's side in raster order: `choose(t, logits)` gets position
    /// `t`'s `(n × vocabulary)` logits and returns the `n` codes placed there, which the next
    /// positions read. `class` conditions every grid (`None`: the null class).
    pub fn step(
        &self,
        n: usize,
        class: Option<usize>,
        choose: &mut dyn FnMut(usize, &[f32]) -> Vec<u32>,
    ) {
        let (d, length, kvw) = (self.width, self.length(), self.kv_width());
        let class_row = class.unwrap_or(self.class_count).min(self.class_count);
        let mut tasks: Vec<Rows> = (0..n)
            .step_by(ROWS_PER_TASK)
            .map(|start| {
                let count = ROWS_PER_TASK.min(n - start);
                Rows {
                    count,
                    x: self.classes[class_row * d..(class_row + 1) * d].repeat(count),
                    keys: vec![vec![0.0; count * length * kvw]; self.layers.len()],
                    values: vec![vec![0.0; count * length * kvw]; self.layers.len()],
                    logits: vec![0.0; count * self.vocabulary],
                }
            })
            .collect();
        let mut logits = vec![0.0f32; n * self.vocabulary];
        for t in 0..length {
            tasks
                .par_iter_mut()
                .for_each(|rows| ieee_default(|| self.position(rows, t)));
            for (chunk, rows) in logits
                .chunks_mut(ROWS_PER_TASK * self.vocabulary)
                .zip(&tasks)
            {
                chunk.copy_from_slice(&rows.logits);
            }
            let codes = choose(t, &logits);
            assert_eq!(codes.len(), n, "one code per grid");
            for (codes, rows) in codes.chunks(ROWS_PER_TASK).zip(&mut tasks) {
                for (r, &code) in codes.iter().enumerate() {
                    let code = (code as usize).min(self.vocabulary - 1);
                    rows.x[r * d..(r + 1) * d]
                        .copy_from_slice(&self.codes[code * d..(code + 1) * d]);
                }
            }
        }
    }

    /// Position `t` of `rows`: `rows.x` holds the token's embedding; leaves the logits. Built
    /// for the widest SIMD the CPU has (the same bits in any: see the module docs).
    #[allow(unsafe_code)]
    fn position(&self, rows: &mut Rows, t: usize) {
        #[cfg(target_arch = "x86_64")]
        if !self.baseline {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has the feature just checked.
                return unsafe { self.position_avx512(rows, t) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: as above.
                return unsafe { self.position_avx2(rows, t) };
            }
        }
        self.position_any(rows, t)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[allow(unsafe_code)]
    unsafe fn position_avx512(&self, rows: &mut Rows, t: usize) {
        self.position_any(rows, t)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[allow(unsafe_code)]
    unsafe fn position_avx2(&self, rows: &mut Rows, t: usize) {
        self.position_any(rows, t)
    }

    #[inline(always)]
    fn position_any(&self, rows: &mut Rows, t: usize) {
        let (d, n) = (self.width, rows.count);
        let (hd, kvw, length) = (self.head_dim(), self.kv_width(), self.length());
        let group = self.heads / self.kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut x = std::mem::take(&mut rows.x);
        for r in 0..n {
            for j in 0..d {
                x[r * d + j] += self.positions[t * d + j];
            }
        }
        let mut normed = vec![0.0f32; n * d];
        let mut qkv = vec![0.0f32; n * (d + 2 * kvw)];
        let mut attended = vec![0.0f32; n * d];
        let mut projected = vec![0.0f32; n * d];
        let mut hidden = vec![0.0f32; n * 4 * d];
        let mut scores = vec![0.0f32; t + 1];
        for (l, layer) in self.layers.iter().enumerate() {
            layer.ln1.apply(&x, &mut normed);
            layer.qkv.apply(&normed, n, &mut qkv, self.baseline);
            let (keys, values) = (&mut rows.keys[l], &mut rows.values[l]);
            for r in 0..n {
                let row = &qkv[r * (d + 2 * kvw)..(r + 1) * (d + 2 * kvw)];
                for (c, &k) in row[d..d + kvw].iter().enumerate() {
                    keys[(r * kvw + c) * length + t] = k;
                }
                let at = (r * length + t) * kvw;
                values[at..at + kvw].copy_from_slice(&row[d + kvw..d + 2 * kvw]);
                for h in 0..self.heads {
                    let q = &row[h * hd..(h + 1) * hd];
                    let g = h / group;
                    // Each score is its own sum over the head's components, first to last.
                    scores.fill(0.0);
                    for (i, &qi) in q.iter().enumerate() {
                        let k = &keys[(r * kvw + g * hd + i) * length..][..t + 1];
                        for (s, &kj) in scores.iter_mut().zip(k) {
                            *s += qi * kj;
                        }
                    }
                    let mut max = f32::NEG_INFINITY;
                    for s in scores.iter_mut() {
                        *s *= scale;
                        max = max.max(*s);
                    }
                    let mut sum = 0.0f32;
                    for s in scores.iter_mut() {
                        *s = libm::expf(*s - max);
                        sum += *s;
                    }
                    let out = &mut attended[r * d + h * hd..r * d + (h + 1) * hd];
                    out.fill(0.0);
                    for (j, &s) in scores.iter().enumerate() {
                        let p = s / sum;
                        let v = &values[(r * length + j) * kvw + g * hd..][..hd];
                        for i in 0..hd {
                            out[i] += p * v[i];
                        }
                    }
                }
            }
            layer
                .proj
                .apply(&attended, n, &mut projected, self.baseline);
            for (x, p) in x.iter_mut().zip(&projected) {
                *x += p;
            }
            layer.ln2.apply(&x, &mut normed);
            layer.fc1.apply(&normed, n, &mut hidden, self.baseline);
            for h in hidden.iter_mut() {
                *h = gelu(*h);
            }
            layer.fc2.apply(&hidden, n, &mut projected, self.baseline);
            for (x, p) in x.iter_mut().zip(&projected) {
                *x += p;
            }
        }
        self.ln_f.apply(&x, &mut normed);
        self.head.apply(&normed, n, &mut rows.logits, self.baseline);
        rows.x = x;
    }
}

/// GELU with the exact error function (LibTorch's `gelu("none")`).
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Runs `f` with the floating-point control register at its IEEE default (subnormals kept,
/// round to nearest), restoring it afterwards: a library in the same thread (LibTorch's
/// kernels) may have set flush-to-zero, which would change results.
#[allow(unsafe_code)]
fn ieee_default<T>(f: impl FnOnce() -> T) -> T {
    #[cfg(target_arch = "x86_64")]
    {
        #[allow(deprecated)]
        // SAFETY: reading and writing MXCSR changes only this thread's float behaviour, and
        // 0x1F80 (all exceptions masked, round to nearest, no FTZ/DAZ) is its reset value.
        unsafe {
            use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
            let before = _mm_getcsr();
            _mm_setcsr(0x1F80);
            let out = f();
            _mm_setcsr(before);
            out
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(d: &Dense, x: &[f32], rows: usize) -> Vec<f32> {
        let mut out = vec![0.0; rows * d.outputs];
        for r in 0..rows {
            for o in 0..d.outputs {
                let mut acc = 0.0f32;
                for k in 0..d.inputs {
                    acc += x[r * d.inputs + k] * d.weights[k * d.outputs + o];
                }
                out[r * d.outputs + o] = acc + d.bias[o];
            }
        }
        out
    }

    #[test]
    fn every_kernel_width_gives_the_plain_loops_bits() {
        // Odd sizes exercise every tile and remainder path.
        let (inputs, outputs, rows) = (37, 83, 11);
        let pseudo = |i: usize| ((i * 2654435761) % 1000) as f32 / 997.0 - 0.5;
        let w: Vec<f32> = (0..inputs * outputs).map(pseudo).collect();
        let b: Vec<f32> = (0..outputs).map(|i| pseudo(i + 7)).collect();
        let d = Dense::from_torch(&w, &b, inputs, outputs);
        let x: Vec<f32> = (0..rows * inputs).map(|i| pseudo(i + 99) * 3.0).collect();
        let want = reference(&d, &x, rows);
        for baseline in [false, true] {
            let mut out = vec![0.0; rows * outputs];
            d.apply(&x, rows, &mut out, baseline);
            assert_eq!(out, want);
        }
        for width in [8, 16, 32] {
            let mut out = vec![0.0; rows * outputs];
            match width {
                8 => d.apply_tiled::<8>(&x, rows, &mut out),
                16 => d.apply_tiled::<16>(&x, rows, &mut out),
                _ => d.apply_tiled::<32>(&x, rows, &mut out),
            }
            assert_eq!(out, want, "width {width}");
        }
    }
}
