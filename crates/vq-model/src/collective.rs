//! The seam to data-parallel training: the trainer registers its process group here (once, at
//! start), and what must agree across ranks uses it: a quantizer's codebook statistics are
//! summed over the ranks before each update, and its dead-code restarts (drawn from each rank's
//! own batch) are taken from rank 0. One process registers nothing and every call is a no-op.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use tch::Tensor;

/// Sums and broadcasts over the ranks of a job (implemented on `vq-dist`'s process group).
pub trait Collective: Send + Sync {
    fn world_size(&self) -> usize;
    /// This process's rank, 0 to `world_size − 1`.
    fn rank(&self) -> usize;
    /// Sums `tensors` (CPU) over the ranks, in place.
    fn all_reduce_sum(&self, tensors: &[&Tensor]) -> Result<(), String>;
    /// Copies rank `root`'s `tensors` to every rank, in place.
    fn broadcast(&self, tensors: &[&Tensor], root: usize) -> Result<(), String>;
}

static GROUP: OnceLock<Box<dyn Collective>> = OnceLock::new();
/// The first failure of a collective called where no error can be returned (inside a
/// quantizer's update); the training loop checks it after every step.
static FAILURE: Mutex<Option<String>> = Mutex::new(None);

/// Registers the process group; only the first registration counts.
pub fn register(group: Box<dyn Collective>) {
    let _ = GROUP.set(group);
}

/// The registered group of a job of more than one rank.
pub fn group() -> Option<&'static dyn Collective> {
    GROUP
        .get()
        .map(|g| g.as_ref())
        .filter(|g| g.world_size() > 1)
}

fn record(result: Result<(), String>) {
    if let Err(e) = result {
        let mut failure = FAILURE.lock().unwrap_or_else(|p| p.into_inner());
        failure.get_or_insert(e);
    }
}

/// Bytes summed by [`all_reduce_sum`] and nanoseconds spent in it since the start, for the
/// training log and `cargo xtask bench scaling`.
static REDUCED_BYTES: AtomicU64 = AtomicU64::new(0);
static REDUCE_NANOS: AtomicU64 = AtomicU64::new(0);

/// `(bytes, seconds)` that [`all_reduce_sum`] has summed and taken since the process started.
pub fn all_reduce_totals() -> (u64, f64) {
    (
        REDUCED_BYTES.load(Ordering::Relaxed),
        REDUCE_NANOS.load(Ordering::Relaxed) as f64 * 1e-9,
    )
}

/// `(rank, world size)` of this process: `(0, 1)` alone.
pub fn place() -> (usize, usize) {
    group().map_or((0, 1), |g| (g.rank(), g.world_size()))
}

/// This rank's share of `count` items for a sharded evaluation: every world-size-th chunk of
/// at most `max_chunk` (chunks small enough that every rank has one when there are as many
/// items as ranks); alone, every chunk of `max_chunk`. Every rank must still take part in the
/// all-reduce of the sums afterwards, with a chunk or not.
pub fn my_chunks(count: usize, max_chunk: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let (rank, world) = place();
    let chunk = max_chunk.min(count.div_ceil(world)).max(1);
    (0..count)
        .step_by(chunk)
        .enumerate()
        .filter(move |(index, _)| index % world == rank)
        .map(move |(_, start)| start..(start + chunk).min(count))
}

/// Sums `tensors` over the ranks in place (nothing in one process); a failure is kept for
/// [`take_failure`].
pub fn all_reduce_sum(tensors: &[&Tensor]) {
    if let Some(g) = group() {
        let bytes: usize = tensors
            .iter()
            .map(|t| t.numel() * t.kind().elt_size_in_bytes())
            .sum();
        let start = Instant::now();
        record(g.all_reduce_sum(tensors));
        REDUCE_NANOS.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        REDUCED_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// Copies rank `root`'s `tensors` to every rank (nothing in one process).
pub fn broadcast(tensors: &[&Tensor], root: usize) {
    if let Some(g) = group() {
        record(g.broadcast(tensors, root));
    }
}

/// The first collective failure since the last call, if any.
pub fn take_failure() -> Option<String> {
    FAILURE.lock().unwrap_or_else(|p| p.into_inner()).take()
}
