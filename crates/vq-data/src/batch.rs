//! Seeded batching: shuffled epochs, optional horizontal flips, and one fused pass that gathers
//! the batch's images, flips them and converts them to `f32` in the model's input range.

use ndarray::{Array1, Array4, ArrayView4, Axis};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::DataError;

/// The float range the model sees. Pixels `0..=255` map linearly onto it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PixelRange {
    /// `[0, 1]`.
    ZeroOne,
    /// `[-0.5, 0.5]`, the range of the VQ-VAE reference implementations.
    #[default]
    MinusHalfToHalf,
    /// `[-1, 1]`.
    MinusOneToOne,
}

impl PixelRange {
    /// `(scale, offset)` such that `value = byte * scale + offset`.
    pub fn scale_offset(self) -> (f32, f32) {
        match self {
            PixelRange::ZeroOne => (1.0 / 255.0, 0.0),
            PixelRange::MinusHalfToHalf => (1.0 / 255.0, -0.5),
            PixelRange::MinusOneToOne => (2.0 / 255.0, -1.0),
        }
    }

    pub fn from_byte(self, byte: u8) -> f32 {
        let (scale, offset) = self.scale_offset();
        byte as f32 * scale + offset
    }

    /// The inverse map, rounded and clamped to a byte.
    pub fn to_byte(self, value: f32) -> u8 {
        let (scale, offset) = self.scale_offset();
        let v = ((value - offset) / scale).round();
        if v.is_nan() {
            0
        } else {
            v.clamp(0.0, 255.0) as u8
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BatchConfig {
    pub batch_size: usize,
    pub seed: u64,
    /// Flip each image left-right with probability 1/2.
    pub hflip: bool,
    pub range: PixelRange,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            batch_size: 128,
            seed: 0,
            hflip: true,
            range: PixelRange::default(),
        }
    }
}

/// Where a [`Batcher`] stands: enough to resume it exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BatcherState {
    pub epoch: u64,
    /// Index of the next record within the epoch's order.
    pub position: usize,
}

/// The records of one batch and whether each is flipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchIndices {
    pub indices: Vec<usize>,
    pub flips: Vec<bool>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `(B, C, H, W)` in the configured range.
    pub images: Array4<f32>,
    pub labels: Array1<u8>,
    pub indices: BatchIndices,
}

/// Endless shuffled epochs over `n` records. Each epoch's order and flips come from the seed and
/// the epoch number alone, so `(epoch, position)` is the whole state. An epoch's last partial
/// batch is dropped, so every batch has the same shape.
#[derive(Debug, Clone)]
pub struct Batcher {
    n: usize,
    config: BatchConfig,
    state: BatcherState,
    order: Vec<usize>,
    flips: Vec<bool>,
}

impl Batcher {
    pub fn new(n: usize, config: BatchConfig) -> Result<Self, DataError> {
        Self::restore(n, config, BatcherState::default())
    }

    pub fn restore(n: usize, config: BatchConfig, state: BatcherState) -> Result<Self, DataError> {
        if config.batch_size == 0 || config.batch_size > n {
            return Err(DataError::BadBatchSize {
                batch_size: config.batch_size,
                records: n,
            });
        }
        let mut batcher = Batcher {
            n,
            config,
            state,
            order: Vec::new(),
            flips: Vec::new(),
        };
        batcher.prepare_epoch();
        Ok(batcher)
    }

    pub fn state(&self) -> BatcherState {
        self.state
    }

    pub fn config(&self) -> &BatchConfig {
        &self.config
    }

    pub fn batches_per_epoch(&self) -> usize {
        self.n / self.config.batch_size
    }

    fn prepare_epoch(&mut self) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed);
        rng.set_stream(self.state.epoch);
        self.order = (0..self.n).collect();
        self.order.shuffle(&mut rng);
        self.flips = if self.config.hflip {
            (0..self.n).map(|_| rng.random::<bool>()).collect()
        } else {
            vec![false; self.n]
        };
    }

    pub fn next_indices(&mut self) -> BatchIndices {
        let b = self.config.batch_size;
        if self.state.position + b > self.n {
            self.state = BatcherState {
                epoch: self.state.epoch + 1,
                position: 0,
            };
            self.prepare_epoch();
        }
        let range = self.state.position..self.state.position + b;
        self.state.position += b;
        BatchIndices {
            indices: self.order[range.clone()].to_vec(),
            flips: self.flips[range].to_vec(),
        }
    }

    /// The next batch of `images` (`(N, C, H, W)`, the `n` records this batcher was made for).
    pub fn next_batch(&mut self, images: ArrayView4<'_, u8>, labels: &Array1<u8>) -> Batch {
        let indices = self.next_indices();
        let images = gather(images, &indices, self.config.range);
        let labels = indices.indices.iter().map(|&i| labels[i]).collect();
        Batch {
            images,
            labels,
            indices,
        }
    }
}

/// Gathers the selected records, flips the marked ones left-right, and converts to `f32` in one
/// pass over the output (no per-image allocation). Large gathers (evaluation chunks, k-means
/// samples) run in parallel over images; a training batch runs on the calling thread, because
/// waking rayon's pool every step costs more than copying 32 images and leaves its threads
/// spinning against LibTorch's for the step that follows.
///
/// Panics if an index is out of range: indices come from a [`Batcher`] made for this array.
pub fn gather(images: ArrayView4<'_, u8>, batch: &BatchIndices, range: PixelRange) -> Array4<f32> {
    /// Fewer images than this are gathered on the calling thread.
    const PARALLEL_FROM: usize = 256;
    let (_, c, h, w) = images.dim();
    let image_len = c * h * w;
    let (scale, offset) = range.scale_offset();
    let standard = images.as_standard_layout();
    let fill = |dst: &mut [f32], index: usize, flip: bool| {
        let src = standard.index_axis(Axis(0), index);
        let src = src.as_slice().expect("standard layout");
        for (dst_row, src_row) in dst.chunks_exact_mut(w).zip(src.chunks_exact(w)) {
            if flip {
                for (d, &s) in dst_row.iter_mut().zip(src_row.iter().rev()) {
                    *d = s as f32 * scale + offset;
                }
            } else {
                for (d, &s) in dst_row.iter_mut().zip(src_row) {
                    *d = s as f32 * scale + offset;
                }
            }
        }
    };
    let mut out = vec![0f32; batch.indices.len() * image_len];
    if batch.indices.len() >= PARALLEL_FROM {
        out.par_chunks_mut(image_len)
            .zip(batch.indices.par_iter().zip(batch.flips.par_iter()))
            .for_each(|(dst, (&index, &flip))| fill(dst, index, flip));
    } else {
        for (dst, (&index, &flip)) in out
            .chunks_mut(image_len)
            .zip(batch.indices.iter().zip(&batch.flips))
        {
            fill(dst, index, flip);
        }
    }
    Array4::from_shape_vec((batch.indices.len(), c, h, w), out)
        .expect("buffer length matches the shape by construction")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(batch_size: usize, seed: u64, hflip: bool) -> BatchConfig {
        BatchConfig {
            batch_size,
            seed,
            hflip,
            range: PixelRange::ZeroOne,
        }
    }

    #[test]
    fn an_epoch_visits_each_record_once_and_seeds_repeat() {
        let mut a = Batcher::new(100, config(10, 7, true)).unwrap();
        let mut b = Batcher::new(100, config(10, 7, true)).unwrap();
        let mut c = Batcher::new(100, config(10, 8, true)).unwrap();
        let mut seen = Vec::new();
        let mut differs = false;
        for _ in 0..10 {
            let (x, y, z) = (a.next_indices(), b.next_indices(), c.next_indices());
            assert_eq!(x, y);
            differs |= x != z;
            seen.extend(x.indices);
        }
        assert!(differs, "another seed gives another order");
        assert_ne!(seen, (0..100).collect::<Vec<_>>(), "shuffled");
        seen.sort();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        // The next epoch is a different permutation.
        let next = a.next_indices();
        assert_eq!(
            a.state(),
            BatcherState {
                epoch: 1,
                position: 10
            }
        );
        assert_ne!(
            next,
            Batcher::new(100, config(10, 7, true))
                .unwrap()
                .next_indices()
        );
    }

    #[test]
    fn restore_continues_exactly() {
        let mut a = Batcher::new(50, config(8, 3, true)).unwrap();
        for _ in 0..9 {
            a.next_indices();
        }
        let mut b = Batcher::restore(50, *a.config(), a.state()).unwrap();
        for _ in 0..20 {
            assert_eq!(a.next_indices(), b.next_indices());
        }
    }

    #[test]
    fn bad_batch_sizes_are_errors() {
        assert!(Batcher::new(10, config(0, 0, false)).is_err());
        assert!(Batcher::new(10, config(11, 0, false)).is_err());
        assert!(Batcher::new(0, config(1, 0, false)).is_err());
    }

    #[test]
    fn gather_flips_and_scales() {
        // Two 1×2×3 images with distinct pixels.
        let images = Array4::from_shape_vec(
            (2, 1, 2, 3),
            vec![0, 51, 102, 153, 204, 255, 1, 2, 3, 4, 5, 6],
        )
        .unwrap();
        let batch = BatchIndices {
            indices: vec![0, 0, 1],
            flips: vec![false, true, false],
        };
        let out = gather(images.view(), &batch, PixelRange::ZeroOne);
        assert_eq!(out.dim(), (3, 1, 2, 3));
        let row = |b: usize, r: usize| out.slice(ndarray::s![b, 0, r, ..]).to_vec();
        let f = |bytes: [u8; 3]| bytes.map(|b| PixelRange::ZeroOne.from_byte(b)).to_vec();
        assert_eq!(row(0, 0), f([0, 51, 102]));
        assert_eq!(row(1, 0), f([102, 51, 0]));
        assert_eq!(row(1, 1), f([255, 204, 153]));
        assert_eq!(row(2, 1), f([4, 5, 6]));
        let out = gather(images.view(), &batch, PixelRange::MinusOneToOne);
        assert_eq!(out[[0, 0, 0, 0]], -1.0);
        assert_eq!(out[[0, 0, 1, 2]], 1.0);
    }

    #[test]
    fn parallel_gather_matches_small_gathers() {
        // 300 images take the parallel path; gathered 20 at a time they take the serial one.
        let images = Array4::from_shape_fn((400, 3, 4, 5), |(n, c, h, w)| {
            (n * 7 + c * 31 + h * 5 + w * 3) as u8
        });
        let mut batcher = Batcher::new(400, config(300, 9, true)).unwrap();
        let all = batcher.next_indices();
        assert_eq!(all.indices.len(), 300);
        let whole = gather(images.view(), &all, PixelRange::MinusHalfToHalf);
        for start in (0..300).step_by(20) {
            let part = BatchIndices {
                indices: all.indices[start..start + 20].to_vec(),
                flips: all.flips[start..start + 20].to_vec(),
            };
            let small = gather(images.view(), &part, PixelRange::MinusHalfToHalf);
            assert_eq!(
                small,
                whole.slice(ndarray::s![start..start + 20, .., .., ..]),
                "images {start}.."
            );
        }
    }

    #[test]
    fn flips_are_about_half_and_off_when_disabled() {
        let mut on = Batcher::new(1000, config(1000, 1, true)).unwrap();
        let flipped = on.next_indices().flips.iter().filter(|&&f| f).count();
        assert!((400..600).contains(&flipped), "{flipped}");
        let mut off = Batcher::new(1000, config(1000, 1, false)).unwrap();
        assert!(off.next_indices().flips.iter().all(|&f| !f));
    }

    proptest! {
        #[test]
        fn pixel_ranges_round_trip(byte in any::<u8>()) {
            for range in [PixelRange::ZeroOne, PixelRange::MinusHalfToHalf, PixelRange::MinusOneToOne] {
                prop_assert_eq!(range.to_byte(range.from_byte(byte)), byte);
            }
        }
    }
}
