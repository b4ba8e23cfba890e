//! neg_clip_loss (Wang et al. 2024, "CLIPLoss and norm-based data
//! selection"): `s_i = <u_i, v_i> - R_i`, where `R_i` is `T` times the
//! average, over `k` seeded random batches of size `b` containing `i`, of
//! `(logsumexp_j <u_i, v_j>/T + logsumexp_j <u_j, v_i>/T) / 2`. Keep the top
//! `B`.
//!
//! Batches: for each of the `k` repetitions, a seeded Fisher-Yates
//! permutation of the rows (in canonical order) is cut into `ceil(N / b)`
//! batches whose sizes differ by at most one, so each row is in exactly one
//! batch per repetition and no row lands in a tiny remainder batch. Inside
//! a batch, the `b x b` similarities are computed in GEMM tiles; a tile's
//! rows give the first log-sum-exp, its columns (merged over row tiles in
//! a fixed order) the second, so the batch is one GEMM, never a matrix. Each tile entry's exponential is
//! computed once and feeds both its row and its column (see
//! [`merge_tile_partials`]).

use std::ops::Range;

use rayon::prelude::*;

use super::{budget_rows, top, Ctx, Method, MethodOptions, Pick, Selection};
use crate::error::Result;
use crate::kernels::dense::gemm_abt;
use crate::kernels::lse::{merge_tile_partials, Partial, TileScratch};
use crate::rng::Rng;

/// Stream of the batch permutations.
const STREAM_BATCHES: u64 = 0x4E45_4743;
/// Largest row tile of a batch (the tile is `rows x cols` f32).
const TILE_ROWS_MAX: usize = 256;
/// Largest column tile: a `256 x 2048` tile (2 MiB) stays in cache while
/// its rows and columns are reduced.
const TILE_COLS_MAX: usize = 2048;
/// Columns per parallel task when folding the row tiles' column partials.
const COL_FOLD: usize = 4096;

/// Repetition `rep`'s batches: indices into the rows in canonical order.
pub fn batches(n: usize, b: usize, seed: u64, rep: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return Vec::new();
    }
    let mut rng = Rng::for_index(seed ^ STREAM_BATCHES, rep as u64);
    let mut perm: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        perm.swap(i, j);
    }
    let count = n.div_ceil(b.clamp(1, n));
    let (base, extra) = (n / count, n % count);
    let mut out = Vec::with_capacity(count);
    let mut start = 0;
    for c in 0..count {
        let len = base + usize::from(c < extra);
        out.push(perm[start..start + len].to_vec());
        start += len;
    }
    out
}

/// Row and column log-sum-exps of `(A B^T) / T`, for `a: [n, d]` and
/// `b: [m, d]`: `rows[i] = log sum_j e^{<a_i, b_j>/T}`,
/// `cols[j] = log sum_i e^{<a_i, b_j>/T}`. Tiled; row tiles run in
/// parallel and their column partials merge in tile order, so the result
/// does not depend on the thread count.
pub fn lse_rows_cols(
    a: &[f32],
    b: &[f32],
    d: usize,
    inv_t: f32,
    tile_rows: usize,
    tile_cols: usize,
) -> (Vec<f64>, Vec<f64>) {
    let (n, m) = (a.len() / d, b.len() / d);
    let (tr, tc) = (tile_rows.max(1), tile_cols.max(1));
    let tiles: Vec<Range<usize>> = (0..n.div_ceil(tr))
        .map(|t| t * tr..((t + 1) * tr).min(n))
        .collect();
    let parts: Vec<(Vec<f64>, Vec<Partial>)> = tiles
        .par_iter()
        .map(|r| {
            let ar = &a[r.start * d..r.end * d];
            let mut row_p = vec![Partial::EMPTY; r.len()];
            let mut col_p = vec![Partial::EMPTY; m];
            let (mut sims, mut scratch) = (Vec::new(), TileScratch::default());
            for c0 in (0..m).step_by(tc) {
                let c1 = (c0 + tc).min(m);
                // GEMM overwrites the whole buffer: no need to zero it again.
                sims.resize(r.len() * (c1 - c0), 0.0f32);
                gemm_abt(ar, &b[c0 * d..c1 * d], d, &mut sims);
                merge_tile_partials(&sims, inv_t, &mut scratch, &mut row_p, &mut col_p[c0..c1]);
            }
            (row_p.iter().map(|p| p.lse(inv_t)).collect(), col_p)
        })
        .collect();
    // Each column folds its row tiles' partials in tile order; columns are
    // independent, so they fold in parallel.
    let mut cols = vec![Partial::EMPTY; m];
    cols.par_chunks_mut(COL_FOLD)
        .enumerate()
        .for_each(|(k, chunk)| {
            for (_, c) in &parts {
                for (acc, p) in chunk.iter_mut().zip(&c[k * COL_FOLD..]) {
                    *acc = acc.merge(*p, inv_t);
                }
            }
        });
    let rows = parts.into_iter().flat_map(|(r, _)| r).collect();
    (rows, cols.iter().map(|p| p.lse(inv_t)).collect())
}

/// `R_i` of every store position.
pub fn norm_terms(ctx: &Ctx, opts: &MethodOptions) -> Vec<f64> {
    let (n, d) = (ctx.n(), ctx.d());
    let b = opts.neg_batch_size.clamp(1, n.max(1));
    let inv_t = (1.0 / opts.temperature) as f32;
    let tr = ctx.tile_rows.min(TILE_ROWS_MAX);
    let tc = (8 * ctx.tile_rows).min(TILE_COLS_MAX);
    let mut acc = vec![0.0f64; n];
    let (mut u, mut v) = (Vec::new(), Vec::new());
    for rep in 0..opts.neg_batches {
        for batch in batches(n, b, opts.seed, rep) {
            let pos: Vec<usize> = batch.iter().map(|&k| ctx.by_row[k]).collect();
            ctx.gather(false, &pos, &mut u);
            ctx.gather(true, &pos, &mut v);
            let (rows, cols) = lse_rows_cols(&u, &v, d, inv_t, tr, tc);
            for ((&p, r), c) in pos.iter().zip(rows).zip(cols) {
                acc[p] += (r + c) / 2.0;
            }
        }
    }
    let scale = opts.temperature / opts.neg_batches.max(1) as f64;
    acc.iter().map(|a| a * scale).collect()
}

pub fn run(ctx: &Ctx, opts: &MethodOptions) -> Result<Selection> {
    let b = budget_rows(Method::NegClipLoss, opts, ctx.n())?;
    let easy = ctx.easy();
    let r = norm_terms(ctx, opts);
    let s: Vec<f64> = easy.iter().zip(&r).map(|(e, r)| e - r).collect();
    let picks = top(ctx, (0..ctx.n()).collect(), |p| s[p], b)
        .into_iter()
        .map(|pos| Pick {
            pos,
            class: None,
            score: s[pos],
            terms: vec![easy[pos], r[pos]],
        })
        .collect();
    Ok(
        Selection::new(Method::NegClipLoss, picks, vec!["easy", "r"])
            .with_report("batches", opts.neg_batches)
            .with_report("batch_size", opts.neg_batch_size.clamp(1, ctx.n().max(1)))
            .with_report("temperature", opts.temperature),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_partition_the_rows() {
        for (n, b) in [(10, 3), (100, 100), (100, 1000), (1001, 64)] {
            let bs = batches(n, b, 1, 0);
            let mut all: Vec<usize> = bs.iter().flatten().copied().collect();
            all.sort_unstable();
            assert_eq!(all, (0..n).collect::<Vec<_>>());
            let (lo, hi) = (
                bs.iter().map(Vec::len).min().unwrap(),
                bs.iter().map(Vec::len).max().unwrap(),
            );
            assert!(hi - lo <= 1 && hi <= b.max(lo));
        }
        assert_ne!(batches(100, 10, 1, 0), batches(100, 10, 1, 1));
    }

    #[test]
    fn tiled_lse_matches_scalar() {
        let mut r = Rng::new(4);
        let (n, m, d) = (45, 53, 8);
        let a: Vec<f32> = (0..n * d).map(|_| r.normal() as f32 * 0.3).collect();
        let b: Vec<f32> = (0..m * d).map(|_| r.normal() as f32 * 0.3).collect();
        let inv_t = 20.0f32;
        // Column tiles narrower than the lanes (all scalar tail), and wider
        // with a tail (53 = 2 x 16 + 21 = 16 + 5).
        for (tr, tc) in [(7, 5), (16, 37), (45, 53)] {
            check_lse(&a, &b, n, m, d, inv_t, tr, tc);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn check_lse(
        a: &[f32],
        b: &[f32],
        n: usize,
        m: usize,
        d: usize,
        inv_t: f32,
        tr: usize,
        tc: usize,
    ) {
        let (rows, cols) = lse_rows_cols(a, b, d, inv_t, tr, tc);
        let s = |i: usize, j: usize| -> f64 {
            (0..d)
                .map(|k| a[i * d + k] as f64 * b[j * d + k] as f64)
                .sum::<f64>()
                * inv_t as f64
        };
        let lse = |v: Vec<f64>| {
            let mx = v.iter().cloned().fold(f64::MIN, f64::max);
            mx + v.iter().map(|x| (x - mx).exp()).sum::<f64>().ln()
        };
        for (i, got) in rows.iter().enumerate() {
            let want = lse((0..m).map(|j| s(i, j)).collect());
            assert!((got - want).abs() < 1e-4, "row {i}: {got} vs {want}");
        }
        for (j, got) in cols.iter().enumerate() {
            let want = lse((0..n).map(|i| s(i, j)).collect());
            assert!((got - want).abs() < 1e-4, "col {j}: {got} vs {want}");
        }
    }
}
