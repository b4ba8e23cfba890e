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
//!
//! When `k b` is well above `N` ([`choose_path`]), the same sums come from
//! the `N x N` similarity computed once instead ([`Path::Full`]): a pair
//! of rows shares a batch in about `k b / N` repetitions, and each entry's
//! exponential is added to all of them under a batch mask.

use std::ops::Range;

use rayon::prelude::*;

use super::{budget_rows, top, Ctx, Method, MethodOptions, Pick, Selection};
use crate::error::Result;
use crate::kernels::dense::gemm_abt;
use crate::kernels::lse::{
    fused_offset, max_f32, merge_tile_partials, tile_batch_sums, Partial, Scale, TileScratch,
};
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

/// How the norm terms are computed; both give `R` to `f32` rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Batch by batch, each batch's `b x b` similarities: `k N b` entries.
    Batches,
    /// Each entry of the `N x N` similarity once (tiled, never stored),
    /// its exponential added to the sums of every repetition in which its
    /// row and column share a batch: `N^2` entries, about `k b / N` times
    /// fewer than [`Path::Batches`] when `k b > N`.
    Full,
}

/// Measured costs, in nanoseconds per similarity entry on one core (`clipcov
/// bench --lse`): the GEMM per dimension, a batch tile's fused reduction,
/// and the full path's exponential and its masked sums per repetition. Only
/// their ratios matter.
const COST_GEMM_PER_DIM: f64 = 0.023;
const COST_FUSED: f64 = 1.2;
const COST_FULL_EXP: f64 = 0.8;
const COST_FULL_PER_REP: f64 = 0.15;
/// Columns per chunk of the full path: each chunk is one round of parallel
/// tasks, and a task's column sums are `k` x this many `f64`.
pub const FULL_CHUNK: usize = 512;
/// Row groups of the full path: the parallel tasks of a chunk, fixed so the
/// result does not depend on the thread count.
const FULL_GROUPS: usize = 32;
/// The full path holds every row's two embeddings in memory.
const FULL_MAX_BYTES: usize = 1 << 30;
/// The full path sums `e^{(s - a) / T}` in `f64` with `a` the pair's own
/// CLIP score, which stays finite while `2 / T` (the widest span of
/// similarities of unit vectors) stays well below `f64`'s `e^709`.
const FULL_MAX_INV_T: f32 = 250.0;

/// The cheaper path by the measured cost model, for `n` rows of dimension
/// `d`, `k` repetitions of batches of `b` (capped at `n`).
pub fn choose_path(n: usize, d: usize, k: usize, b: usize, inv_t: f32) -> Path {
    if n == 0 || k == 0 {
        return Path::Batches;
    }
    let count = n.div_ceil(b.clamp(1, n));
    let fits = inv_t <= FULL_MAX_INV_T && 2 * n * d * 4 <= FULL_MAX_BYTES;
    let gemm = COST_GEMM_PER_DIM * d as f64;
    let (n2, k) = ((n as f64).powi(2), k as f64);
    let batches = k * n2 / count as f64 * (gemm + COST_FUSED);
    let full = n2 * (gemm + COST_FULL_EXP + k * COST_FULL_PER_REP);
    if fits && full < batches {
        Path::Full
    } else {
        Path::Batches
    }
}

/// The rows neg_clip_loss reads: `gather(text, canonical rows, out)` puts
/// their normalised image (`text = false`) or caption embeddings in `out`.
pub type Gather<'a> = dyn Fn(bool, &[usize], &mut Vec<f32>) + Sync + 'a;

/// `R_i` of every store position.
pub fn norm_terms(ctx: &Ctx, opts: &MethodOptions) -> Vec<f64> {
    let (n, d) = (ctx.n(), ctx.d());
    let inv_t = (1.0 / opts.temperature) as f32;
    let path = choose_path(n, d, opts.neg_batches, opts.neg_batch_size, inv_t);
    let easy = ctx.easy();
    let anchors: Vec<f64> = ctx.by_row.iter().map(|&p| easy[p]).collect();
    let gather = |text: bool, rows: &[usize], out: &mut Vec<f32>| {
        let pos: Vec<usize> = rows.iter().map(|&k| ctx.by_row[k]).collect();
        ctx.gather(text, &pos, out);
    };
    let r = norm_terms_canonical(n, d, opts, path, &gather, &anchors, ctx.tile_rows);
    ctx.to_positions(&r)
}

/// `R_i` in canonical row order, by `path`. `anchors[i]` is row `i`'s CLIP
/// score `<u_i, v_i>` (the full path's shift); `tile_rows` the tile side.
pub fn norm_terms_canonical(
    n: usize,
    d: usize,
    opts: &MethodOptions,
    path: Path,
    gather: &Gather,
    anchors: &[f64],
    tile_rows: usize,
) -> Vec<f64> {
    let b = opts.neg_batch_size.clamp(1, n.max(1));
    let inv_t = (1.0 / opts.temperature) as f32;
    let tr = tile_rows.clamp(1, TILE_ROWS_MAX);
    let mut acc = vec![0.0f64; n];
    match path {
        Path::Batches => {
            let tc = (8 * tile_rows).clamp(1, TILE_COLS_MAX);
            let (mut u, mut v) = (Vec::new(), Vec::new());
            for rep in 0..opts.neg_batches {
                for batch in batches(n, b, opts.seed, rep) {
                    gather(false, &batch, &mut u);
                    gather(true, &batch, &mut v);
                    let (rows, cols) = lse_rows_cols(&u, &v, d, inv_t, tr, tc);
                    for ((&i, r), c) in batch.iter().zip(rows).zip(cols) {
                        acc[i] += (r + c) / 2.0;
                    }
                }
            }
        }
        Path::Full => {
            let k = opts.neg_batches;
            let (rows, cols) = batch_sums_full(n, d, b, opts, gather, anchors, tr);
            let inv_t = inv_t as f64;
            for (i, a) in acc.iter_mut().enumerate() {
                for rep in 0..k {
                    let lse = |sum: f64| anchors[i] * inv_t + sum.ln();
                    *a += (lse(rows[i * k + rep]) + lse(cols[i * k + rep])) / 2.0;
                }
            }
        }
    }
    let scale = opts.temperature / opts.neg_batches.max(1) as f64;
    acc.iter().map(|a| a * scale).collect()
}

/// The full path's sums, `[row][rep]`: `rows[i k + r] = sum_j e^{(<u_i,
/// v_j> - a_i) / T}` and `cols[i k + r] = sum_j e^{(<u_j, v_i> - a_i) / T}`
/// over the rows `j` in row `i`'s batch of repetition `r`, with `a_i =
/// anchors[i]`. Each sum holds the term of `j = i`, about 1, so it neither
/// underflows nor (see [`FULL_MAX_INV_T`]) overflows in `f64`.
///
/// A tile's terms are computed once in `f32`, shifted by the tile's
/// largest entry plus [`fused_offset`], and each row and column sum is
/// rescaled to its anchor in `f64`. Terms below `e^-87` of that shift
/// are lost; they cost a sum less than `e^-27` relative while the tile's
/// largest entry is at most `offset + 60 - ln N` (in units of `T`) above
/// the anchor. A row or column further below it is summed exactly, in
/// `f64`, from the tile.
fn batch_sums_full(
    n: usize,
    d: usize,
    b: usize,
    opts: &MethodOptions,
    gather: &Gather,
    anchors: &[f64],
    tr: usize,
) -> (Vec<f64>, Vec<f64>) {
    let k = opts.neg_batches;
    let inv_t = (1.0 / opts.temperature) as f32;
    // The batch of each row in each repetition, `[rep][row]`.
    let mut codes = vec![0u32; k * n];
    for rep in 0..k {
        for (c, batch) in batches(n, b, opts.seed, rep).iter().enumerate() {
            for &i in batch {
                codes[rep * n + i] = c as u32;
            }
        }
    }
    let all: Vec<usize> = (0..n).collect();
    let (mut u, mut v) = (Vec::new(), Vec::new());
    gather(false, &all, &mut u);
    gather(true, &all, &mut v);
    // Consecutive row tiles in fixed groups, one parallel task each.
    let tiles = n.div_ceil(tr);
    let groups = tiles.min(FULL_GROUPS);
    let bounds: Vec<Range<usize>> = (0..groups)
        .map(|g| (g * tiles / groups) * tr..((g + 1) * tiles / groups * tr).min(n))
        .collect();
    let mut rows = vec![0.0f64; n * k];
    let mut cols = vec![0.0f64; n * k];
    let mut row_parts: Vec<&mut [f64]> = Vec::with_capacity(groups);
    let mut rest = rows.as_mut_slice();
    for r in &bounds {
        let (head, tail) = rest.split_at_mut(r.len() * k);
        row_parts.push(head);
        rest = tail;
    }
    let sub_codes = |r: &Range<usize>| -> Vec<u32> {
        (0..k)
            .flat_map(|rep| codes[rep * n + r.start..rep * n + r.end].iter().copied())
            .collect()
    };
    for c0 in (0..n).step_by(FULL_CHUNK) {
        let chunk = c0..(c0 + FULL_CHUNK).min(n);
        let col_codes = sub_codes(&chunk);
        let vc = &v[chunk.start * d..chunk.end * d];
        let parts: Vec<Vec<f64>> = bounds
            .par_iter()
            .zip(row_parts.par_iter_mut())
            .map(|(group, row_out)| {
                let mut t = FullTile::new(k, inv_t, anchors, &chunk);
                for t0 in group.clone().step_by(tr) {
                    let tile = t0..(t0 + tr).min(group.end);
                    let a = &u[tile.start * d..tile.end * d];
                    let out = &mut row_out[(t0 - group.start) * k..(tile.end - group.start) * k];
                    t.add(a, vc, d, &tile, &sub_codes(&tile), &col_codes, out, n);
                }
                t.col_out
            })
            .collect();
        // Each column folds its groups' sums in group order.
        let out = &mut cols[chunk.start * k..chunk.end * k];
        for part in parts {
            for (o, p) in out.iter_mut().zip(part) {
                *o += p;
            }
        }
    }
    (rows, cols)
}

/// A full-path task's buffers and its column sums for one chunk.
struct FullTile<'a> {
    k: usize,
    inv_t: f32,
    anchors: &'a [f64],
    chunk: Range<usize>,
    sims: Vec<f32>,
    row_sum: Vec<f32>,
    col_sum: Vec<f32>,
    exps: Vec<f32>,
    /// `[col][rep]`, `f64`, in the columns' anchor scale.
    col_out: Vec<f64>,
}

impl<'a> FullTile<'a> {
    fn new(k: usize, inv_t: f32, anchors: &'a [f64], chunk: &Range<usize>) -> Self {
        FullTile {
            k,
            inv_t,
            anchors,
            chunk: chunk.clone(),
            sims: Vec::new(),
            row_sum: Vec::new(),
            col_sum: Vec::new(),
            exps: vec![0.0; chunk.len()],
            col_out: vec![0.0; chunk.len() * k],
        }
    }

    /// Adds tile `rows x chunk` (`a` its image rows, `vc` the chunk's
    /// caption rows) to `row_out` (`[row][rep]`) and the column sums.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        a: &[f32],
        vc: &[f32],
        d: usize,
        rows: &Range<usize>,
        row_codes: &[u32],
        col_codes: &[u32],
        row_out: &mut [f64],
        n: usize,
    ) {
        let (k, inv_t) = (self.k, self.inv_t);
        let (nr, nc) = (rows.len(), self.chunk.len());
        self.sims.resize(nr * nc, 0.0);
        gemm_abt(a, vc, d, &mut self.sims);
        let shift = max_f32(&self.sims);
        let offset = fused_offset(nr, nc);
        self.row_sum.resize(k * nr, 0.0);
        self.col_sum.clear();
        self.col_sum.resize(k * nc, 0.0);
        let scale = Scale {
            shift,
            inv_t,
            offset,
        };
        tile_batch_sums(
            &self.sims,
            scale,
            row_codes,
            col_codes,
            &mut self.row_sum,
            &mut self.col_sum,
            &mut self.exps,
        );
        let (shift, inv_t64, offset) = (shift as f64, inv_t as f64, offset as f64);
        let safe = offset + 60.0 - (n as f64).ln();
        let sims = &self.sims;
        // The exact sums of one row or column, for those far below the shift.
        let exact =
            |anchor: f64, entries: &mut dyn Iterator<Item = (f32, usize)>, out: &mut [f64]| {
                for (x, j) in entries {
                    let e = ((x as f64 - anchor) * inv_t64).exp();
                    for (rep, o) in out.iter_mut().enumerate() {
                        if row_codes[rep * nr + j / nc] == col_codes[rep * nc + j % nc] {
                            *o += e;
                        }
                    }
                }
            };
        for (i, out) in row_out.chunks_exact_mut(k).enumerate() {
            let anchor = self.anchors[rows.start + i];
            let gap = (shift - anchor) * inv_t64;
            if gap <= safe {
                let s = (gap - offset).exp();
                for (rep, o) in out.iter_mut().enumerate() {
                    *o += self.row_sum[rep * nr + i] as f64 * s;
                }
            } else {
                let row = &sims[i * nc..(i + 1) * nc];
                exact(
                    anchor,
                    &mut row.iter().enumerate().map(|(j, &x)| (x, i * nc + j)),
                    out,
                );
            }
        }
        for (j, out) in self.col_out.chunks_exact_mut(k).enumerate() {
            let anchor = self.anchors[self.chunk.start + j];
            let gap = (shift - anchor) * inv_t64;
            if gap <= safe {
                let s = (gap - offset).exp();
                for (rep, o) in out.iter_mut().enumerate() {
                    *o += self.col_sum[rep * nc + j] as f64 * s;
                }
            } else {
                exact(
                    anchor,
                    &mut (0..nr).map(|i| (sims[i * nc + j], i * nc + j)),
                    out,
                );
            }
        }
    }
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

    /// `n` pairs of dimension `d`: unit rows, captions near their images
    /// (`<u_i, v_i>` about 0.4), then `flip` pairs turned against each
    /// other (`v_i = -u_i`) and `dup` images copied from other rows, so
    /// that some rows sit far below their tiles' largest similarity.
    fn pairs(n: usize, d: usize, flip: usize, dup: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut r = Rng::new(seed);
        let unit = |x: Vec<f32>| {
            let norm = x.iter().map(|a| a * a).sum::<f32>().sqrt();
            x.into_iter().map(|a| a / norm).collect::<Vec<f32>>()
        };
        let mut u = Vec::new();
        let mut v = Vec::new();
        for _ in 0..n {
            let a: Vec<f32> = (0..d).map(|_| r.normal() as f32).collect();
            let b: Vec<f32> = a.iter().map(|x| x * 0.5 + r.normal() as f32).collect();
            u.extend(unit(a));
            v.extend(unit(b));
        }
        for i in 0..flip {
            let p = (i * 37 + 5) % n;
            for j in 0..d {
                v[p * d + j] = -u[p * d + j];
            }
        }
        for i in 0..dup {
            let (p, q) = ((i * 53 + 11) % n, (i * 29 + 3) % n);
            for j in 0..d {
                u[p * d + j] = v[q * d + j];
            }
        }
        (u, v)
    }

    /// `R` by its definition, in `f64`, from the batches alone.
    fn brute_force(u: &[f32], v: &[f32], d: usize, opts: &MethodOptions) -> Vec<f64> {
        let n = u.len() / d;
        let t = opts.temperature;
        let s = |i: usize, j: usize| -> f64 {
            (0..d)
                .map(|c| u[i * d + c] as f64 * v[j * d + c] as f64)
                .sum::<f64>()
                / t
        };
        let lse = |x: Vec<f64>| {
            let m = x.iter().cloned().fold(f64::MIN, f64::max);
            m + x.iter().map(|y| (y - m).exp()).sum::<f64>().ln()
        };
        let k = opts.neg_batches;
        let mut r = vec![0.0; n];
        for rep in 0..k {
            for batch in batches(n, opts.neg_batch_size.min(n), opts.seed, rep) {
                for &i in &batch {
                    let rows = lse(batch.iter().map(|&j| s(i, j)).collect());
                    let cols = lse(batch.iter().map(|&j| s(j, i)).collect());
                    r[i] += t * (rows + cols) / 2.0 / k as f64;
                }
            }
        }
        r
    }

    #[test]
    fn both_paths_match_the_definition() {
        // n = 700 spans two column chunks (512 + 188) and, with 64-row
        // tiles, eleven row groups; k b / N = 6 * 240 / 700 ~ 2.
        let (n, d) = (700, 12);
        let cases = [
            // Plain pairs, at the default temperature.
            (0, 0, 0.01, 240, 6),
            // Flipped pairs (<u_i, v_i> = -1) and duplicated images (a
            // similarity near 1 elsewhere in their tiles): their rows and
            // columns are summed exactly, not from the shared terms.
            (20, 20, 0.01, 240, 6),
            // A warmer temperature, and batches of 100 (7 per repetition).
            (5, 5, 0.07, 100, 12),
        ];
        for (flip, dup, temperature, b, k) in cases {
            let (u, v) = pairs(n, d, flip, dup, 17);
            let opts = MethodOptions {
                temperature,
                neg_batches: k,
                neg_batch_size: b,
                seed: 3,
                ..MethodOptions::default()
            };
            let anchors: Vec<f64> = (0..n)
                .map(|i| {
                    crate::kernels::dense::dot_f64(&u[i * d..(i + 1) * d], &v[i * d..(i + 1) * d])
                })
                .collect();
            let gather = |text: bool, rows: &[usize], out: &mut Vec<f32>| {
                let src = if text { &v } else { &u };
                out.clear();
                for &i in rows {
                    out.extend_from_slice(&src[i * d..(i + 1) * d]);
                }
            };
            let want = brute_force(&u, &v, d, &opts);
            for path in [Path::Batches, Path::Full] {
                let got = norm_terms_canonical(n, d, &opts, path, &gather, &anchors, 64);
                let (i, err) = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (g - w).abs())
                    .enumerate()
                    .fold((0, 0.0), |a, (i, e)| if e > a.1 { (i, e) } else { a });
                eprintln!(
                    "{path:?} flip {flip} T {temperature}: max |R - R_f64| {err:.2e} (row {i})"
                );
                assert!(
                    err < 1e-6,
                    "{path:?}, case {flip} {temperature}: row {i}: {} vs {}",
                    got[i],
                    want[i]
                );
            }
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
