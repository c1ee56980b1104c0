//! Rayon-parallel CPU k-means: greedy k-means++ or random seeding, then Lloyd iterations whose
//! assignment step uses the GEMM form of the distance and Hamerly's bounds to skip the points
//! whose nearest centroid cannot have changed.
//!
//! Results are bit-identical for a given seed whatever the number of rayon threads: all
//! parallel work is split into fixed chunks whose partial results are combined in chunk order.
//!
//! ```
//! use ndarray::Array2;
//! use vq_kmeans::{KMeans, KMeansConfig};
//! let points = Array2::from_shape_fn((1000, 2), |(i, j)| ((i % 4) * 10 + j) as f32);
//! let fit = KMeans::fit(points.view(), &KMeansConfig::new(4).seed(1))?;
//! assert!(fit.inertia < 1e-6);
//! # Ok::<(), vq_kmeans::KMeansError>(())
//! ```

use ndarray::{linalg::general_mat_mul, s, Array2, ArrayView2, Axis, CowArray, Ix2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Rows per parallel task in the distance products: large enough for an efficient matrix
/// product, small enough that the `rows × k` distance block stays in cache.
const CHUNK_ROWS: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// Greedy k-means++: at each step draw `2 + ln k` candidates with probability proportional
    /// to their squared distance from the nearest chosen centroid, keep the one that lowers the
    /// total the most.
    #[default]
    KMeansPlusPlus,
    /// `k` distinct points drawn uniformly.
    Random,
}

/// Settings of a fit; build with [`KMeansConfig::new`] and the chained setters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KMeansConfig {
    pub k: usize,
    pub seed: u64,
    /// Lloyd iterations at most.
    pub max_iters: usize,
    /// Stop when the inertia falls by less than this fraction in one iteration (0: never).
    pub tol: f64,
    pub init: Init,
    /// Fit on at most this many points per centroid (a uniform sample), then assign all.
    pub max_points_per_centroid: Option<usize>,
    /// Spherical k-means: the points are scaled to unit length first and the centroids kept
    /// at unit length, so that the nearest centroid is the one of largest cosine similarity.
    pub spherical: bool,
}

impl Default for KMeansConfig {
    fn default() -> Self {
        KMeansConfig {
            k: 8,
            seed: 0,
            max_iters: 50,
            tol: 1e-4,
            init: Init::KMeansPlusPlus,
            max_points_per_centroid: None,
            spherical: false,
        }
    }
}

impl KMeansConfig {
    pub fn new(k: usize) -> Self {
        KMeansConfig {
            k,
            ..Self::default()
        }
    }
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    pub fn max_iters(mut self, max_iters: usize) -> Self {
        self.max_iters = max_iters;
        self
    }
    pub fn tol(mut self, tol: f64) -> Self {
        self.tol = tol;
        self
    }
    pub fn init(mut self, init: Init) -> Self {
        self.init = init;
        self
    }
    pub fn max_points_per_centroid(mut self, limit: Option<usize>) -> Self {
        self.max_points_per_centroid = limit;
        self
    }
    pub fn spherical(mut self, spherical: bool) -> Self {
        self.spherical = spherical;
        self
    }
}

/// Each row scaled to unit length (rows of zero length are left at zero).
fn unit_rows(a: &mut Array2<f32>) {
    for mut row in a.outer_iter_mut() {
        let norm = row.dot(&row).sqrt();
        if norm > 0.0 {
            row.mapv_inplace(|v| v / norm);
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KMeansError {
    #[error("k must be at least 1")]
    ZeroK,
    #[error("k = {k} is more than the {n} points given")]
    KTooLarge { k: usize, n: usize },
    #[error("points have no dimensions")]
    ZeroDim,
    #[error("point {row}, dimension {col} is {value} (k-means needs finite values)")]
    NonFinite { row: usize, col: usize, value: f32 },
    #[error("max_points_per_centroid must be at least 1")]
    ZeroSampleLimit,
    #[error("point {row} has length zero (spherical k-means needs a direction)")]
    ZeroVector { row: usize },
}

/// Time spent in each phase of a fit, in seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub seeding: f64,
    pub iterations: Vec<f64>,
}

/// The outcome of [`KMeans::fit`].
#[derive(Debug, Clone, PartialEq)]
pub struct KMeans {
    /// `k × d`.
    pub centroids: Array2<f32>,
    /// The nearest centroid of every input point (all of them, even when fitting on a sample).
    pub assignments: Vec<u32>,
    /// Sum of squared distances of every input point to its centroid.
    pub inertia: f64,
    /// Lloyd iterations run.
    pub iterations: usize,
    /// Points assigned to each centroid.
    pub cluster_sizes: Vec<usize>,
    /// Inertia of the fitted points after seeding (index 0) and after each iteration.
    pub inertia_history: Vec<f64>,
    /// Fraction of points whose distances to all centroids were computed, per assignment step
    /// (1.0 for the first; lower once Hamerly's bounds start skipping points).
    pub recomputed_fraction: Vec<f64>,
    pub timings: Timings,
}

/// Per-point state of the assignment: the label, an exact distance to it, and a lower bound on
/// the distance to every other centroid.
struct Bounds {
    labels: Vec<u32>,
    upper: Vec<f32>,
    lower: Vec<f32>,
}

impl KMeans {
    pub fn fit(points: ArrayView2<'_, f32>, config: &KMeansConfig) -> Result<KMeans, KMeansError> {
        let (n, d) = points.dim();
        validate(points, config)?;
        let points: CowArray<'_, f32, Ix2> = if config.spherical {
            let mut unit = points.to_owned();
            unit_rows(&mut unit);
            CowArray::from(unit)
        } else {
            points.as_standard_layout()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);

        // The fitting set: everything, or a uniform sample.
        let sample: Option<Array2<f32>> = match config.max_points_per_centroid {
            Some(m) if n > m.saturating_mul(config.k) => {
                let mut idx = rand::seq::index::sample(&mut rng, n, m * config.k).into_vec();
                idx.sort_unstable();
                Some(points.select(Axis(0), &idx))
            }
            _ => None,
        };
        let fit_points = sample.as_ref().map(|a| a.view()).unwrap_or(points.view());
        let norms = row_norms(fit_points);

        let started = std::time::Instant::now();
        let mut centroids = match config.init {
            Init::KMeansPlusPlus => seed_plus_plus(fit_points, config.k, &mut rng),
            Init::Random => {
                let idx =
                    rand::seq::index::sample(&mut rng, fit_points.nrows(), config.k).into_vec();
                fit_points.select(Axis(0), &idx)
            }
        };
        let mut timings = Timings {
            seeding: started.elapsed().as_secs_f64(),
            iterations: Vec::new(),
        };

        let mut bounds = full_assignment(fit_points, &norms, centroids.view());
        let mut history = vec![inertia_of(&bounds.upper)];
        let mut recomputed = vec![1.0];
        let mut iterations = 0;
        for _ in 0..config.max_iters {
            let started = std::time::Instant::now();
            let previous = centroids.clone();
            centroids = update_centroids(fit_points, &bounds, centroids.view(), config.k);
            if config.spherical {
                // The mean direction of each cluster; the bounds account for the move. A cluster
                // whose directions cancel (a zero mean) has no mean direction: it keeps its
                // previous unit centroid rather than becoming the zero vector.
                unit_rows(&mut centroids);
                for (mut row, old) in centroids.outer_iter_mut().zip(previous.outer_iter()) {
                    if row.iter().all(|&v| v == 0.0) {
                        row.assign(&old);
                    }
                }
            }
            let fraction = hamerly_assignment(
                fit_points,
                &norms,
                previous.view(),
                centroids.view(),
                &mut bounds,
            );
            iterations += 1;
            let inertia = inertia_of(&bounds.upper);
            let before = *history.last().expect("history starts non-empty");
            history.push(inertia);
            recomputed.push(fraction);
            timings.iterations.push(started.elapsed().as_secs_f64());
            if before <= 0.0 || (before - inertia) / before < config.tol {
                break;
            }
        }

        // Assign every input point when the fit ran on a sample.
        let bounds = match sample {
            Some(_) => full_assignment(points.view(), &row_norms(points.view()), centroids.view()),
            None => bounds,
        };
        let mut cluster_sizes = vec![0usize; config.k];
        for &l in &bounds.labels {
            cluster_sizes[l as usize] += 1;
        }
        debug_assert_eq!(bounds.labels.len(), n);
        debug_assert_eq!(centroids.dim(), (config.k, d));
        Ok(KMeans {
            inertia: inertia_of(&bounds.upper),
            centroids,
            assignments: bounds.labels,
            iterations,
            cluster_sizes,
            inertia_history: history,
            recomputed_fraction: recomputed,
            timings,
        })
    }
}

fn validate(points: ArrayView2<'_, f32>, config: &KMeansConfig) -> Result<(), KMeansError> {
    let (n, d) = points.dim();
    if config.k == 0 {
        return Err(KMeansError::ZeroK);
    }
    if d == 0 {
        return Err(KMeansError::ZeroDim);
    }
    if config.k > n {
        return Err(KMeansError::KTooLarge { k: config.k, n });
    }
    if config.max_points_per_centroid == Some(0) {
        return Err(KMeansError::ZeroSampleLimit);
    }
    if let Some(((row, col), &value)) = points.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(KMeansError::NonFinite { row, col, value });
    }
    if config.spherical {
        if let Some(row) = points
            .outer_iter()
            .position(|r| r.iter().all(|&v| v == 0.0))
        {
            return Err(KMeansError::ZeroVector { row });
        }
    }
    Ok(())
}

fn row_norms(points: ArrayView2<'_, f32>) -> Vec<f32> {
    let mut norms = vec![0f32; points.nrows()];
    norms
        .par_chunks_mut(CHUNK_ROWS)
        .enumerate()
        .for_each(|(c, out)| {
            for (i, o) in out.iter_mut().enumerate() {
                let row = points.row(c * CHUNK_ROWS + i);
                *o = row.dot(&row);
            }
        });
    norms
}

/// Sum of squares in f64, in a fixed order.
fn inertia_of(distances: &[f32]) -> f64 {
    distances
        .par_chunks(CHUNK_ROWS)
        .map(|c| c.iter().map(|&u| u as f64 * u as f64).sum::<f64>())
        .collect::<Vec<f64>>()
        .into_iter()
        .sum()
}

/// Exact Euclidean distance (the bounds and the inertia use it, not the GEMM form).
fn distance(a: ndarray::ArrayView1<'_, f32>, b: ndarray::ArrayView1<'_, f32>) -> f32 {
    squared_distance(
        a.as_slice().expect("row-major rows"),
        b.as_slice().expect("row-major rows"),
    )
    .sqrt()
}

/// Eight independent partial sums, so that the compiler can keep them in one SIMD register
/// (a single running sum is a serial dependency chain it may not reorder).
fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            let t = x[l] - y[l];
            acc[l] += t * t;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// For each row of `rows`: the nearest centroid, its squared distance, and a lower bound on the
/// squared distance to every other centroid, as `(label, best², lower²)`.
///
/// The GEMM form `‖x‖² + ‖c‖² − 2·x·c` loses precision when a point lies much closer to two
/// centroids than to the origin; when the top two are within its rounding error, the close
/// candidates are compared by exact distances instead, and the lower bound is widened by the
/// rounding error, so that assignments and Hamerly's bounds stay exact.
fn nearest_two(
    rows: ArrayView2<'_, f32>,
    row_norms: &[f32],
    centroids: ArrayView2<'_, f32>,
    centroid_norms: &[f32],
) -> Vec<(u32, f32, f32)> {
    let max_cn = centroid_norms.iter().copied().fold(0f32, f32::max);
    let mut products = Array2::<f32>::zeros((rows.nrows(), centroids.nrows()));
    general_mat_mul(1.0, &rows, &centroids.t(), 0.0, &mut products);
    products
        .outer_iter()
        .zip(row_norms)
        .enumerate()
        .map(|(i, (dots, &xn))| {
            let (mut best, mut best_d, mut second_d) = (0u32, f32::INFINITY, f32::INFINITY);
            for (j, (&dot, &cn)) in dots.iter().zip(centroid_norms).enumerate() {
                let dist = cn - 2.0 * dot;
                if dist < best_d {
                    second_d = best_d;
                    best_d = dist;
                    best = j as u32;
                } else if dist < second_d {
                    second_d = dist;
                }
            }
            let margin = 1e-5 * (xn + max_cn) + f32::MIN_POSITIVE;
            if second_d - best_d > margin {
                let exact = distance(rows.row(i), centroids.row(best as usize));
                return (best, exact * exact, (xn + second_d - margin).max(0.0));
            }
            // Ambiguous: settle among the close candidates exactly.
            let (mut label, mut best_exact, mut runner_up) = (best, f32::INFINITY, f32::INFINITY);
            for (j, (&dot, &cn)) in dots.iter().zip(centroid_norms).enumerate() {
                let dist = cn - 2.0 * dot;
                if dist <= best_d + 2.0 * margin {
                    let e = distance(rows.row(i), centroids.row(j));
                    let e = e * e;
                    if e < best_exact {
                        runner_up = best_exact;
                        best_exact = e;
                        label = j as u32;
                    } else if e < runner_up {
                        runner_up = e;
                    }
                } else {
                    runner_up = runner_up.min((xn + dist - margin).max(0.0));
                }
            }
            (label, best_exact, runner_up)
        })
        .collect()
}

/// Assigns every point by the full product against all centroids.
fn full_assignment(
    points: ArrayView2<'_, f32>,
    norms: &[f32],
    centroids: ArrayView2<'_, f32>,
) -> Bounds {
    let centroid_norms = row_norms(centroids);
    let n = points.nrows();
    let mut bounds = Bounds {
        labels: vec![0; n],
        upper: vec![0.0; n],
        lower: vec![0.0; n],
    };
    bounds
        .labels
        .par_chunks_mut(CHUNK_ROWS)
        .zip(bounds.upper.par_chunks_mut(CHUNK_ROWS))
        .zip(bounds.lower.par_chunks_mut(CHUNK_ROWS))
        .enumerate()
        .for_each(|(c, ((labels, upper), lower))| {
            let start = c * CHUNK_ROWS;
            let rows = points.slice(s![start..start + labels.len(), ..]);
            let found = nearest_two(
                rows,
                &norms[start..start + labels.len()],
                centroids,
                &centroid_norms,
            );
            for (i, (label, best, second)) in found.into_iter().enumerate() {
                labels[i] = label;
                upper[i] = best.sqrt();
                lower[i] = second.sqrt();
            }
        });
    bounds
}

/// One Hamerly step after the centroids moved from `old` to `new`: loosen each point's bounds by
/// the movement, skip the points whose label provably stays, and recompute the rest by the full
/// product in chunks. Returns the fraction of points recomputed.
fn hamerly_assignment(
    points: ArrayView2<'_, f32>,
    norms: &[f32],
    old: ArrayView2<'_, f32>,
    new: ArrayView2<'_, f32>,
    bounds: &mut Bounds,
) -> f64 {
    let k = new.nrows();
    let shifts: Vec<f32> = (0..k).map(|j| distance(old.row(j), new.row(j))).collect();
    // Largest shift, and the largest among the others (for points of the largest's cluster).
    let (mut max1, mut max2, mut arg1) = (0f32, 0f32, usize::MAX);
    for (j, &s) in shifts.iter().enumerate() {
        if s > max1 {
            max2 = max1;
            max1 = s;
            arg1 = j;
        } else if s > max2 {
            max2 = s;
        }
    }
    let half_gap = half_gaps(new);

    // Pass 1 (parallel, per chunk): update bounds; collect the points that need the full product.
    let n = points.nrows();
    let mut needs = vec![false; n];
    needs
        .par_chunks_mut(CHUNK_ROWS)
        .zip(bounds.labels.par_chunks(CHUNK_ROWS))
        .zip(bounds.upper.par_chunks_mut(CHUNK_ROWS))
        .zip(bounds.lower.par_chunks_mut(CHUNK_ROWS))
        .enumerate()
        .for_each(|(c, (((needs, labels), upper), lower))| {
            let start = c * CHUNK_ROWS;
            for i in 0..labels.len() {
                let a = labels[i] as usize;
                let other_max = if a == arg1 { max2 } else { max1 };
                lower[i] -= other_max;
                // The exact distance to the current centroid: needed for the inertia anyway.
                upper[i] = distance(points.row(start + i), new.row(a));
                needs[i] = upper[i] > lower[i].max(half_gap[a]);
            }
        });
    let todo: Vec<usize> = needs
        .iter()
        .enumerate()
        .filter(|(_, &b)| b)
        .map(|(i, _)| i)
        .collect();
    if todo.is_empty() {
        return 0.0;
    }

    // Pass 2: the full product for the points left, gathered into dense chunks.
    let centroid_norms = row_norms(new);
    let results: Vec<Vec<(u32, f32, f32)>> = todo
        .par_chunks(CHUNK_ROWS)
        .map(|idx| {
            let rows = points.select(Axis(0), idx);
            let row_norms: Vec<f32> = idx.iter().map(|&i| norms[i]).collect();
            nearest_two(rows.view(), &row_norms, new, &centroid_norms)
        })
        .collect();
    for (&i, (label, best, second)) in todo.iter().zip(results.into_iter().flatten()) {
        bounds.labels[i] = label;
        bounds.upper[i] = best.sqrt();
        bounds.lower[i] = second.sqrt();
    }
    todo.len() as f64 / n as f64
}

/// Half the distance from each centroid to its nearest other centroid: a point closer than that
/// to its centroid cannot be closer to any other.
fn half_gaps(centroids: ArrayView2<'_, f32>) -> Vec<f32> {
    let k = centroids.nrows();
    if k == 1 {
        return vec![f32::INFINITY];
    }
    let norms = row_norms(centroids);
    let mut products = Array2::<f32>::zeros((k, k));
    general_mat_mul(1.0, &centroids, &centroids.t(), 0.0, &mut products);
    (0..k)
        .map(|j| {
            let nearest = (0..k)
                .filter(|&m| m != j)
                .map(|m| (norms[j] + norms[m] - 2.0 * products[[j, m]]).max(0.0))
                .fold(f32::INFINITY, f32::min);
            // The GEMM form can err by rounding; shrink slightly so the bound stays safe.
            0.5 * nearest.sqrt() * (1.0 - 1e-5)
        })
        .collect()
}

/// Means of the assigned points (sums in f64 per fixed chunk, combined in chunk order), with
/// empty clusters repaired.
fn update_centroids(
    points: ArrayView2<'_, f32>,
    bounds: &Bounds,
    old: ArrayView2<'_, f32>,
    k: usize,
) -> Array2<f32> {
    let d = points.ncols();
    const SUM_CHUNK: usize = 8 * CHUNK_ROWS;
    let partials: Vec<(Vec<f64>, Vec<u64>)> = bounds
        .labels
        .par_chunks(SUM_CHUNK)
        .enumerate()
        .map(|(c, labels)| {
            let mut sums = vec![0f64; k * d];
            let mut counts = vec![0u64; k];
            for (i, &l) in labels.iter().enumerate() {
                let l = l as usize;
                counts[l] += 1;
                let row = points.row(c * SUM_CHUNK + i);
                for (s, &v) in sums[l * d..(l + 1) * d].iter_mut().zip(row.iter()) {
                    *s += v as f64;
                }
            }
            (sums, counts)
        })
        .collect();
    let mut sums = vec![0f64; k * d];
    let mut counts = vec![0u64; k];
    for (s, c) in partials {
        sums.iter_mut().zip(&s).for_each(|(a, b)| *a += b);
        counts.iter_mut().zip(&c).for_each(|(a, b)| *a += b);
    }
    let mut centroids = old.to_owned();
    for j in 0..k {
        if counts[j] > 0 {
            let inv = 1.0 / counts[j] as f64;
            for (c, s) in centroids
                .row_mut(j)
                .iter_mut()
                .zip(&sums[j * d..(j + 1) * d])
            {
                *c = (s * inv) as f32;
            }
        }
    }
    repair_empty(points, bounds, &counts, &mut centroids);
    centroids
}

/// Moves each empty centroid onto the point farthest from its own centroid (each point used
/// once). When no point is away from its centroid (heavily duplicated data), puts it next to the
/// largest cluster's centroid, offset by a small relative perturbation as faiss does, so that no
/// two centroids coincide and none is NaN.
fn repair_empty(
    points: ArrayView2<'_, f32>,
    bounds: &Bounds,
    counts: &[u64],
    centroids: &mut Array2<f32>,
) {
    let empty: Vec<usize> = (0..counts.len()).filter(|&j| counts[j] == 0).collect();
    if empty.is_empty() {
        return;
    }
    let mut far: Vec<usize> = (0..points.nrows())
        .filter(|&i| bounds.upper[i] > 0.0)
        .collect();
    // Farthest first; ties by index, so the choice is deterministic.
    far.sort_by(|&a, &b| bounds.upper[b].total_cmp(&bounds.upper[a]).then(a.cmp(&b)));
    let mut far = far.into_iter();
    let mut counts = counts.to_vec();
    for j in empty {
        if let Some(i) = far.next() {
            centroids.row_mut(j).assign(&points.row(i));
            continue;
        }
        // Only the copy is perturbed: the points sitting exactly on the original stay with it,
        // so the inertia cannot rise.
        let big = (0..counts.len())
            .max_by_key(|&m| (counts[m], std::cmp::Reverse(m)))
            .unwrap_or(0);
        let source = centroids.row(big).to_owned();
        for (dim, &a) in source.iter().enumerate() {
            let step = a.abs().max(1e-6) / 1024.0;
            let sign = if dim % 2 == 0 { 1.0 } else { -1.0 };
            centroids[[j, dim]] = a + sign * step;
        }
        counts[big] /= 2;
        counts[j] = counts[big];
    }
}

/// Greedy k-means++ with incremental nearest-distance updates: O(N·K·D·candidates) at worst,
/// and far less in practice: a point `x` whose nearest chosen centroid `c` satisfies
/// `‖cand − c‖ ≥ 2‖x − c‖` cannot get closer to the candidate (triangle inequality), so its
/// distance is not computed. Late in seeding almost every point is skipped that way.
fn seed_plus_plus(points: ArrayView2<'_, f32>, k: usize, rng: &mut ChaCha8Rng) -> Array2<f32> {
    let (n, d) = points.dim();
    let candidates = 2 + (k as f64).ln() as usize;
    let rows = points.as_slice().expect("standard layout");
    let row = |i: usize| &rows[i * d..(i + 1) * d];
    let mut centroids = Array2::<f32>::zeros((k, d));
    let first = rng.random_range(0..n);
    centroids.row_mut(0).assign(&points.row(first));
    // Squared distance of each point to its nearest chosen centroid, and which one that is.
    let mut nearest: Vec<f32> = vec![0.0; n];
    let mut owner: Vec<u32> = vec![0; n];
    let c0 = row(first).to_vec();
    nearest
        .par_chunks_mut(CHUNK_ROWS)
        .enumerate()
        .for_each(|(c, out)| {
            for (i, o) in out.iter_mut().enumerate() {
                *o = squared_distance(row(c * CHUNK_ROWS + i), &c0);
            }
        });
    let mut chunk_sums = chunk_totals(&nearest);
    let mut trial = vec![0f32; n * candidates];
    for step in 1..k {
        let total: f64 = chunk_sums.iter().sum();
        let picks: Vec<usize> = (0..candidates)
            .map(|_| {
                if total > 0.0 {
                    sample_weighted(&nearest, &chunk_sums, rng.random::<f64>() * total)
                } else {
                    rng.random_range(0..n)
                }
            })
            .collect();
        // Squared distances from each candidate to each centroid chosen so far.
        let chosen = centroids.slice(s![..step, ..]);
        let gap: Vec<Vec<f32>> = picks
            .iter()
            .map(|&p| {
                chosen
                    .outer_iter()
                    .map(|c| squared_distance(row(p), c.as_slice().expect("row-major")))
                    .collect()
            })
            .collect();
        // Each point's distance to each candidate (min'ed with its current one), and each
        // candidate's resulting potential per chunk.
        let potentials: Vec<Vec<f64>> = trial
            .par_chunks_mut(CHUNK_ROWS * candidates)
            .zip(nearest.par_chunks(CHUNK_ROWS))
            .zip(owner.par_chunks(CHUNK_ROWS))
            .enumerate()
            .map(|(c, ((out, near), own))| {
                let start = c * CHUNK_ROWS;
                let mut pot = vec![0f64; candidates];
                for i in 0..near.len() {
                    let limit = 4.0 * near[i];
                    for (t, &p) in picks.iter().enumerate() {
                        let dist = if gap[t][own[i] as usize] >= limit {
                            near[i]
                        } else {
                            squared_distance(row(start + i), row(p)).min(near[i])
                        };
                        out[i * candidates + t] = dist;
                        pot[t] += dist as f64;
                    }
                }
                pot
            })
            .collect();
        let mut best = 0;
        let mut best_pot = f64::INFINITY;
        for t in 0..candidates {
            let pot: f64 = potentials.iter().map(|p| p[t]).sum();
            if pot < best_pot {
                best_pot = pot;
                best = t;
            }
        }
        centroids.row_mut(step).assign(&points.row(picks[best]));
        nearest
            .par_chunks_mut(CHUNK_ROWS)
            .zip(owner.par_chunks_mut(CHUNK_ROWS))
            .zip(trial.par_chunks(CHUNK_ROWS * candidates))
            .for_each(|((near, own), out)| {
                for i in 0..near.len() {
                    let v = out[i * candidates + best];
                    if v < near[i] {
                        near[i] = v;
                        own[i] = step as u32;
                    }
                }
            });
        chunk_sums = chunk_totals(&nearest);
    }
    centroids
}

fn chunk_totals(values: &[f32]) -> Vec<f64> {
    values
        .par_chunks(CHUNK_ROWS)
        .map(|c| c.iter().map(|&v| v as f64).sum())
        .collect()
}

/// The index where the running sum of `weights` passes `target`, found through the per-chunk
/// totals first.
fn sample_weighted(weights: &[f32], chunk_sums: &[f64], mut target: f64) -> usize {
    for (c, &sum) in chunk_sums.iter().enumerate() {
        if target < sum {
            let start = c * CHUNK_ROWS;
            let end = (start + CHUNK_ROWS).min(weights.len());
            let mut last_positive = None;
            for (i, &w) in weights[start..end].iter().enumerate() {
                if w > 0.0 {
                    last_positive = Some(start + i);
                }
                target -= w as f64;
                if target < 0.0 && w > 0.0 {
                    return start + i;
                }
            }
            if let Some(i) = last_positive {
                return i;
            }
        }
        target -= sum;
    }
    // Rounding left the target past the end: the last point with weight.
    weights.iter().rposition(|&w| w > 0.0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::Rng;

    /// `centres` Gaussian blobs of `per` points each, spread `spread` around random centres.
    fn blobs(
        centres: usize,
        per: usize,
        d: usize,
        spread: f32,
        seed: u64,
    ) -> (Array2<f32>, Array2<f32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let truth = Array2::from_shape_fn((centres, d), |_| rng.random_range(-50.0..50.0f32));
        let points = Array2::from_shape_fn((centres * per, d), |(i, j)| {
            // Sum of uniforms: a cheap, bounded, roughly Gaussian noise.
            let noise: f32 = (0..4).map(|_| rng.random_range(-1.0..1.0f32)).sum::<f32>() * 0.5;
            truth[[i % centres, j]] + spread * noise
        });
        (points, truth)
    }

    fn brute_inertia(
        points: ArrayView2<'_, f32>,
        centroids: ArrayView2<'_, f32>,
        labels: &[u32],
    ) -> f64 {
        points
            .outer_iter()
            .zip(labels)
            .map(|(p, &l)| {
                p.iter()
                    .zip(centroids.row(l as usize))
                    .map(|(a, b)| ((a - b) as f64).powi(2))
                    .sum::<f64>()
            })
            .sum()
    }

    #[test]
    fn recovers_well_separated_blob_centres() {
        let (points, truth) = blobs(6, 200, 5, 0.5, 3);
        let fit = KMeans::fit(points.view(), &KMeansConfig::new(6).seed(9)).unwrap();
        for centre in truth.outer_iter() {
            let nearest = fit
                .centroids
                .outer_iter()
                .map(|c| distance(c, centre))
                .fold(f32::INFINITY, f32::min);
            assert!(nearest < 0.2, "centre missed by {nearest}");
        }
        assert!(
            fit.cluster_sizes.iter().all(|&s| s == 200),
            "{:?}",
            fit.cluster_sizes
        );
        let brute = brute_inertia(points.view(), fit.centroids.view(), &fit.assignments);
        assert!(
            (fit.inertia - brute).abs() <= 1e-6 * brute,
            "{} vs {brute}",
            fit.inertia
        );
    }

    #[test]
    fn hamerly_skips_work_once_stable() {
        let (points, _) = blobs(16, 300, 8, 2.0, 5);
        let fit = KMeans::fit(
            points.view(),
            &KMeansConfig::new(16).seed(1).tol(0.0).max_iters(10),
        )
        .unwrap();
        let last = *fit.recomputed_fraction.last().unwrap();
        assert!(last < 0.1, "{:?}", fit.recomputed_fraction);
    }

    #[test]
    fn sampling_fits_on_a_subset_and_assigns_all() {
        let (points, _) = blobs(4, 500, 3, 0.5, 8);
        let cfg = KMeansConfig::new(4)
            .seed(2)
            .max_points_per_centroid(Some(50));
        let fit = KMeans::fit(points.view(), &cfg).unwrap();
        assert_eq!(fit.assignments.len(), 2000);
        assert_eq!(fit.cluster_sizes.iter().sum::<usize>(), 2000);
        assert!(
            fit.cluster_sizes.iter().all(|&s| s == 500),
            "{:?}",
            fit.cluster_sizes
        );
    }

    #[test]
    fn random_init_works_too() {
        let (points, _) = blobs(3, 100, 2, 0.1, 4);
        let fit = KMeans::fit(
            points.view(),
            &KMeansConfig::new(3).init(Init::Random).seed(5),
        )
        .unwrap();
        assert_eq!(fit.centroids.dim(), (3, 2));
        assert!(fit.inertia.is_finite());
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        let points = Array2::<f32>::zeros((5, 3));
        assert_eq!(
            KMeans::fit(points.view(), &KMeansConfig::new(0)),
            Err(KMeansError::ZeroK)
        );
        assert_eq!(
            KMeans::fit(points.view(), &KMeansConfig::new(6)),
            Err(KMeansError::KTooLarge { k: 6, n: 5 })
        );
        let empty = Array2::<f32>::zeros((5, 0));
        assert_eq!(
            KMeans::fit(empty.view(), &KMeansConfig::new(2)),
            Err(KMeansError::ZeroDim)
        );
        let mut nan = points.clone();
        nan[[3, 1]] = f32::NAN;
        assert!(matches!(
            KMeans::fit(nan.view(), &KMeansConfig::new(2)),
            Err(KMeansError::NonFinite { row: 3, col: 1, .. })
        ));
        let mut inf = points.clone();
        inf[[0, 2]] = f32::NEG_INFINITY;
        assert!(KMeans::fit(inf.view(), &KMeansConfig::new(2)).is_err());
        let cfg = KMeansConfig::new(2).max_points_per_centroid(Some(0));
        assert_eq!(
            KMeans::fit(points.view(), &cfg),
            Err(KMeansError::ZeroSampleLimit)
        );
    }

    #[test]
    fn spherical_clusters_by_direction_not_length() {
        // Two directions, each at very different lengths: plain k-means splits by length,
        // spherical k-means by direction.
        let points = Array2::from_shape_fn((40, 2), |(i, j)| {
            let length = if i % 4 < 2 { 0.1 } else { 50.0 };
            let angle = if i % 2 == 0 { 0.1f32 } else { 1.4 };
            length * if j == 0 { angle.cos() } else { angle.sin() }
        });
        let fit =
            KMeans::fit(points.view(), &KMeansConfig::new(2).seed(1).spherical(true)).unwrap();
        for (i, &l) in fit.assignments.iter().enumerate() {
            assert_eq!(l, fit.assignments[i % 2], "point {i}");
        }
        assert_ne!(fit.assignments[0], fit.assignments[1]);
        for c in fit.centroids.outer_iter() {
            assert!((c.dot(&c).sqrt() - 1.0).abs() < 1e-5);
        }
        let mut zero = points.clone();
        zero.row_mut(7).fill(0.0);
        assert_eq!(
            KMeans::fit(zero.view(), &KMeansConfig::new(2).spherical(true)),
            Err(KMeansError::ZeroVector { row: 7 })
        );
    }

    #[test]
    fn config_round_trips_through_serde() {
        let cfg = KMeansConfig::new(512)
            .seed(3)
            .max_iters(20)
            .tol(0.0)
            .init(Init::Random);
        let json = serde_json::to_string(&cfg).unwrap();
        assert_eq!(serde_json::from_str::<KMeansConfig>(&json).unwrap(), cfg);
        let partial: KMeansConfig = serde_json::from_str(r#"{"k": 4}"#).unwrap();
        assert_eq!(partial, KMeansConfig::new(4));
    }

    fn points_strategy() -> impl Strategy<Value = Array2<f32>> {
        (1usize..80, 1usize..6, any::<u64>(), 0usize..4).prop_map(|(n, d, seed, dup)| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            // `dup` > 0 draws coordinates from a tiny set, so many points coincide.
            Array2::from_shape_fn((n, d), |_| {
                if dup > 0 {
                    rng.random_range(0..dup as i32) as f32
                } else {
                    rng.random_range(-10.0..10.0f32)
                }
            })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn lloyd_invariants(points in points_strategy(), k_frac in 0.0f64..1.0, seed in any::<u64>()) {
            let n = points.nrows();
            let k = 1 + ((n - 1) as f64 * k_frac) as usize;
            let fit = KMeans::fit(points.view(), &KMeansConfig::new(k).seed(seed).tol(0.0).max_iters(15)).unwrap();

            // Inertia never rises (up to f32 rounding of the centroids).
            for w in fit.inertia_history.windows(2) {
                prop_assert!(w[1] <= w[0] * (1.0 + 1e-5) + 1e-9, "{:?}", fit.inertia_history);
            }
            // No NaN, every point with its nearest centroid.
            prop_assert!(fit.centroids.iter().all(|v| v.is_finite()));
            for (p, &l) in points.outer_iter().zip(&fit.assignments) {
                let mine = distance(p, fit.centroids.row(l as usize));
                let best = fit.centroids.outer_iter().map(|c| distance(p, c)).fold(f32::INFINITY, f32::min);
                prop_assert!(mine <= best + 1e-3 * (1.0 + best), "{mine} > {best}");
            }
            prop_assert_eq!(fit.cluster_sizes.iter().sum::<usize>(), n);
            let brute = brute_inertia(points.view(), fit.centroids.view(), &fit.assignments);
            prop_assert!((fit.inertia - brute).abs() <= 1e-4 * (1.0 + brute));
        }

        #[test]
        fn spherical_centroids_are_unit_and_each_point_has_the_closest_direction(
            points in points_strategy(), k_frac in 0.0f64..1.0, seed in any::<u64>()
        ) {
            // Directions need non-zero points.
            let points = points.mapv(|v| v + 0.5);
            prop_assume!(points.outer_iter().all(|r| r.iter().any(|&v| v != 0.0)));
            let n = points.nrows();
            let k = 1 + ((n - 1) as f64 * k_frac) as usize;
            let cfg = KMeansConfig::new(k).seed(seed).max_iters(10).spherical(true);
            let fit = KMeans::fit(points.view(), &cfg).unwrap();
            for c in fit.centroids.outer_iter() {
                prop_assert!((c.dot(&c).sqrt() - 1.0).abs() < 1e-4, "{c}");
            }
            for (p, &l) in points.outer_iter().zip(&fit.assignments) {
                let unit = &p / p.dot(&p).sqrt();
                let mine = unit.dot(&fit.centroids.row(l as usize));
                let best = fit.centroids.outer_iter().map(|c| unit.dot(&c)).fold(f32::NEG_INFINITY, f32::max);
                prop_assert!(mine >= best - 1e-4, "cosine {mine} < {best}");
            }
        }

        #[test]
        fn k_equal_n_gives_zero_inertia(points in points_strategy(), seed in any::<u64>()) {
            let n = points.nrows();
            let fit = KMeans::fit(points.view(), &KMeansConfig::new(n).seed(seed)).unwrap();
            prop_assert!(fit.inertia <= 1e-9, "{}", fit.inertia);
            prop_assert!(fit.centroids.iter().all(|v| v.is_finite()));
        }

        #[test]
        fn thread_count_does_not_change_results(points in points_strategy(), seed in any::<u64>()) {
            let k = (points.nrows() / 3).max(1);
            let cfg = KMeansConfig::new(k).seed(seed);
            let run = |threads| {
                rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap()
                    .install(|| KMeans::fit(points.view(), &cfg).unwrap())
            };
            let (one, two) = (run(1), run(2));
            prop_assert_eq!(one.centroids, two.centroids);
            prop_assert_eq!(one.assignments, two.assignments);
            prop_assert_eq!(one.inertia.to_bits(), two.inertia.to_bits());
        }
    }

    #[test]
    fn thread_count_does_not_change_results_on_many_chunks() {
        // Several chunks of rows, so that the parallel split really differs between pools.
        let (points, _) = blobs(20, 400, 6, 3.0, 11);
        let cfg = KMeansConfig::new(20).seed(4).tol(0.0).max_iters(8);
        let run = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| KMeans::fit(points.view(), &cfg).unwrap())
        };
        let (one, three) = (run(1), run(3));
        assert_eq!(one.centroids, three.centroids);
        assert_eq!(one.inertia.to_bits(), three.inertia.to_bits());
    }
}
