//! k-means over store rows: spherical (cosine) or plain L2, seeded
//! k-means++ initialisation on a sample, a fixed number of full passes.
//!
//! Used for latent classes (`select --clusters K`) and by the baselines.
//! Assignment in the spherical variant is by largest inner product, ties to
//! the smaller cluster index. Sums are reduced over a fixed number of row
//! groups in a fixed order, so results do not depend on the thread count.

use std::ops::Range;

use rayon::prelude::*;

use crate::kernels::dense::gemm_abt;
use crate::rng::Rng;

/// How to cluster.
#[derive(Clone, Debug)]
pub struct KMeansOptions {
    pub k: usize,
    pub iterations: usize,
    pub seed: u64,
    /// Cosine k-means on unit vectors (centroids renormalised) instead of L2.
    pub spherical: bool,
}

/// Rows to cluster: `rows(range, buf)` yields `[len, d]` row-major `f32`.
pub trait RowSource: Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn d(&self) -> usize;
    fn rows<'a>(&'a self, range: Range<usize>, buf: &'a mut Vec<f32>) -> &'a [f32];
}

/// Rows held in one contiguous row-major slice.
pub struct SliceRows<'a> {
    pub data: &'a [f32],
    pub d: usize,
}

impl RowSource for SliceRows<'_> {
    fn len(&self) -> usize {
        self.data.len() / self.d.max(1)
    }
    fn d(&self) -> usize {
        self.d
    }
    fn rows<'a>(&'a self, range: Range<usize>, _: &'a mut Vec<f32>) -> &'a [f32] {
        &self.data[range.start * self.d..range.end * self.d]
    }
}

const BLOCK_ROWS: usize = 2048;
/// Row groups whose partial sums are reduced in order (fixed, for determinism).
const GROUPS: usize = 8;

/// Index of the best centroid for each row of `block`.
fn assign_block(
    block: &[f32],
    centroids: &[f32],
    bias: &[f32],
    d: usize,
    out: &mut [u32],
    tile: &mut Vec<f32>,
) {
    let k = bias.len();
    let rows = block.len() / d;
    // `gemm_abt` overwrites every element: no need to clear a reused tile.
    tile.resize(rows * k, 0.0);
    gemm_abt(block, centroids, d, tile);
    for (r, o) in tile.chunks_exact(k).zip(out.iter_mut()) {
        *o = first_max(r, bias) as u32;
    }
}

/// The smallest `c` with the largest `r[c] - bias[c]` (0 when no value is
/// above minus infinity), as a scalar scan with a strict `>` finds it, but
/// in one pass that vectorises: each of 16 lanes keeps its largest value
/// and where it first saw it, then the lanes are merged.
fn first_max(r: &[f32], bias: &[f32]) -> usize {
    const LANES: usize = 16;
    let mut best = [f32::NEG_INFINITY; LANES];
    let mut at = [0u32; LANES];
    let (rc, bc) = (r.chunks_exact(LANES), bias.chunks_exact(LANES));
    let tail = rc.len() * LANES;
    for (c, (rs, bs)) in rc.zip(bc).enumerate() {
        let base = (c * LANES) as u32;
        for l in 0..LANES {
            let v = rs[l] - bs[l];
            let up = v > best[l];
            best[l] = if up { v } else { best[l] };
            at[l] = if up { base + l as u32 } else { at[l] };
        }
    }
    let (mut max, mut arg) = (f32::NEG_INFINITY, usize::MAX);
    let tail_lanes = r[tail..].iter().zip(&bias[tail..]).enumerate();
    let lanes = best.into_iter().zip(at.map(|a| a as usize));
    for (v, c) in lanes.chain(tail_lanes.map(|(i, (s, b))| (s - b, tail + i))) {
        if v > max || (v == max && c < arg) {
            max = v;
            arg = c;
        }
    }
    if max == f32::NEG_INFINITY {
        0
    } else {
        arg
    }
}

fn bias(centroids: &[f32], d: usize, spherical: bool) -> Vec<f32> {
    centroids
        .chunks_exact(d)
        .map(|c| {
            if spherical {
                0.0
            } else {
                0.5 * c.iter().map(|x| x * x).sum::<f32>()
            }
        })
        .collect()
}

/// Index of the largest `<x, c>` for each row of `rows` (`[n, d]`), on the
/// calling thread (callers parallelise over batches).
pub fn assign_serial(rows: &[f32], d: usize, centroids: &[f32]) -> Vec<u32> {
    let k = centroids.len() / d.max(1);
    let b = vec![0.0f32; k];
    let mut out = vec![0u32; rows.len() / d.max(1)];
    // One tile a thread, kept between calls (ingest calls this per part).
    thread_local!(static TILE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) });
    TILE.with_borrow_mut(|tile| {
        for (block, o) in rows.chunks(BLOCK_ROWS * d).zip(out.chunks_mut(BLOCK_ROWS)) {
            assign_block(block, centroids, &b, d, o, tile);
        }
    });
    out
}

/// Assigns every row to its best centroid (largest `<x, c>` for spherical,
/// nearest in L2 otherwise).
pub fn assign(src: &dyn RowSource, centroids: &[f32], spherical: bool) -> Vec<u32> {
    let d = src.d();
    let b = bias(centroids, d, spherical);
    let mut labels = vec![0u32; src.len()];
    labels.par_chunks_mut(BLOCK_ROWS).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(buf, tile), (bi, out)| {
            let start = bi * BLOCK_ROWS;
            let block = src.rows(start..start + out.len(), buf);
            assign_block(block, centroids, &b, d, out, tile);
        },
    );
    labels
}

/// Seeded k-means++ on a sample of the rows.
fn init(src: &dyn RowSource, opts: &KMeansOptions) -> Vec<f32> {
    let (n, d, k) = (src.len(), src.d(), opts.k);
    let mut rng = Rng::new(opts.seed);
    let sample_n = n.min((16 * k).max(10_000));
    // A sample of distinct rows: a seeded partial Fisher-Yates over indices.
    let sample_idx: Vec<usize> = if sample_n == n {
        (0..n).collect()
    } else {
        let mut picked = std::collections::BTreeSet::new();
        while picked.len() < sample_n {
            picked.insert(rng.below(n as u64) as usize);
        }
        picked.into_iter().collect()
    };
    let mut sample = Vec::with_capacity(sample_n * d);
    let mut buf = Vec::new();
    for &i in &sample_idx {
        sample.extend_from_slice(src.rows(i..i + 1, &mut buf));
    }
    let dist = |x: &[f32], c: &[f32]| -> f64 {
        if opts.spherical {
            1.0 - x.iter().zip(c).map(|(a, b)| a * b).sum::<f32>() as f64
        } else {
            x.iter().zip(c).map(|(a, b)| (a - b) * (a - b)).sum::<f32>() as f64
        }
    };
    let mut centroids = Vec::with_capacity(k * d);
    let first = rng.below(sample_n as u64) as usize;
    centroids.extend_from_slice(&sample[first * d..(first + 1) * d]);
    let mut best: Vec<f64> = sample
        .par_chunks_exact(d)
        .map(|x| dist(x, &centroids[0..d]).max(0.0))
        .collect();
    while centroids.len() < k * d {
        let total: f64 = best.iter().sum();
        let pick = if total <= 0.0 {
            rng.below(sample_n as u64) as usize
        } else {
            let mut t = rng.uniform() * total;
            let mut p = sample_n - 1;
            for (i, &w) in best.iter().enumerate() {
                if t < w {
                    p = i;
                    break;
                }
                t -= w;
            }
            p
        };
        let c = sample[pick * d..(pick + 1) * d].to_vec();
        best.par_iter_mut()
            .zip(sample.par_chunks_exact(d))
            .for_each(|(b, x)| *b = b.min(dist(x, &c).max(0.0)));
        centroids.extend_from_slice(&c);
    }
    centroids
}

/// Runs k-means and returns the centroids (`[k, d]`) and each row's label.
pub fn kmeans(src: &dyn RowSource, opts: &KMeansOptions) -> (Vec<f32>, Vec<u32>) {
    let (n, d) = (src.len(), src.d());
    let k = opts.k.min(n).max(1);
    let opts = KMeansOptions { k, ..opts.clone() };
    let mut centroids = init(src, &opts);
    let group_rows = n.div_ceil(GROUPS).max(1);
    for _ in 0..opts.iterations {
        let b = bias(&centroids, d, opts.spherical);
        // Per group: cluster sums and counts over its rows, in row order.
        let partial: Vec<(Vec<f64>, Vec<u64>)> = (0..GROUPS)
            .into_par_iter()
            .map(|g| {
                let mut sums = vec![0.0f64; k * d];
                let mut counts = vec![0u64; k];
                let (mut buf, mut tile, mut labels) = (Vec::new(), Vec::new(), Vec::new());
                let range = (g * group_rows).min(n)..((g + 1) * group_rows).min(n);
                let mut s = range.start;
                while s < range.end {
                    let e = (s + BLOCK_ROWS).min(range.end);
                    let block = src.rows(s..e, &mut buf);
                    labels.resize(e - s, 0);
                    assign_block(block, &centroids, &b, d, &mut labels, &mut tile);
                    for (x, &l) in block.chunks_exact(d).zip(&labels) {
                        let acc = &mut sums[l as usize * d..(l as usize + 1) * d];
                        for (a, v) in acc.iter_mut().zip(x) {
                            *a += *v as f64;
                        }
                        counts[l as usize] += 1;
                    }
                    s = e;
                }
                (sums, counts)
            })
            .collect();
        let mut sums = vec![0.0f64; k * d];
        let mut counts = vec![0u64; k];
        for (s, c) in &partial {
            for (a, b) in sums.iter_mut().zip(s) {
                *a += b;
            }
            for (a, b) in counts.iter_mut().zip(c) {
                *a += b;
            }
        }
        for c in 0..k {
            if counts[c] == 0 {
                continue; // an empty cluster keeps its centroid
            }
            let s = &sums[c * d..(c + 1) * d];
            let scale = if opts.spherical {
                let norm = s.iter().map(|x| x * x).sum::<f64>().sqrt();
                if norm > 0.0 {
                    1.0 / norm
                } else {
                    continue;
                }
            } else {
                1.0 / counts[c] as f64
            };
            for (dst, v) in centroids[c * d..(c + 1) * d].iter_mut().zip(s) {
                *dst = (v * scale) as f32;
            }
        }
    }
    let labels = assign(src, &centroids, opts.spherical);
    (centroids, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rows(Vec<f32>, usize);
    impl RowSource for Rows {
        fn len(&self) -> usize {
            self.0.len() / self.1
        }
        fn d(&self) -> usize {
            self.1
        }
        fn rows<'a>(&'a self, r: Range<usize>, _: &'a mut Vec<f32>) -> &'a [f32] {
            &self.0[r.start * self.1..r.end * self.1]
        }
    }

    #[test]
    fn first_max_matches_the_scalar_scan() {
        // The scan `first_max` replaces: a strict `>` from minus infinity.
        fn scan(r: &[f32], bias: &[f32]) -> usize {
            let (mut best, mut best_v) = (0, f32::NEG_INFINITY);
            for (c, (&s, &b)) in r.iter().zip(bias).enumerate() {
                if s - b > best_v {
                    best_v = s - b;
                    best = c;
                }
            }
            best
        }
        let mut rng = Rng::new(11);
        for k in [1, 5, 16, 17, 40, 1000] {
            for case in 0..200 {
                // Few distinct values, so ties are common.
                let mut r: Vec<f32> = (0..k).map(|_| rng.below(4) as f32 - 2.0).collect();
                let bias: Vec<f32> = (0..k)
                    .map(|_| {
                        if case % 2 == 0 {
                            0.0
                        } else {
                            rng.below(2) as f32
                        }
                    })
                    .collect();
                if case % 7 == 1 {
                    r[rng.below(k as u64) as usize] = f32::NAN;
                }
                if case % 11 == 3 {
                    r.iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
                    r[k - 1] = f32::NAN;
                }
                if case % 13 == 5 {
                    r[rng.below(k as u64) as usize] = -0.0;
                    r[rng.below(k as u64) as usize] = 0.0;
                }
                assert_eq!(first_max(&r, &bias), scan(&r, &bias), "k {k}, case {case}");
            }
        }
    }

    #[test]
    fn finds_separated_clusters() {
        let mut rng = Rng::new(3);
        let d = 8;
        let mut data = Vec::new();
        let mut truth = Vec::new();
        for i in 0..600 {
            let c = i % 3;
            let mut v: Vec<f32> = (0..d).map(|_| 0.05 * rng.normal() as f32).collect();
            v[c] += 1.0;
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            data.extend(v.iter().map(|x| x / n));
            truth.push(c);
        }
        let src = Rows(data, d);
        let (_, labels) = kmeans(
            &src,
            &KMeansOptions {
                k: 3,
                iterations: 10,
                seed: 1,
                spherical: true,
            },
        );
        // Same partition up to a relabelling.
        for i in 0..600 {
            for j in 0..600 {
                assert_eq!(truth[i] == truth[j], labels[i] == labels[j]);
            }
        }
    }
}
