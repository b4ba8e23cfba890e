//! Dense kernels on row-major `f32` slices: GEMM tiles through faer, the
//! thresholded row and column sums of a similarity tile, dot products.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

use super::isa::dispatch;

/// `out[i * rb + j] = <a_i, b_j>` for `a: [ra, d]`, `b: [rb, d]` (row-major).
///
/// Runs single-threaded: callers parallelise across tiles, which keeps the
/// result independent of the thread count. Each element is also the same
/// bits whatever the shape of the tile it is computed in (tested below), so
/// an incremental run's tiles give the full run's similarities: faer sends
/// one-row, one-column and tiny products to other kernels, which sum in
/// another order, so those shapes are padded with zero rows first.
pub fn gemm_abt(a: &[f32], b: &[f32], d: usize, out: &mut [f32]) {
    let ra = a.len() / d.max(1);
    let rb = b.len() / d.max(1);
    assert_eq!(a.len(), ra * d, "gemm_abt: a is not [rows, d]");
    assert_eq!(b.len(), rb * d, "gemm_abt: b is not [rows, d]");
    assert_eq!(out.len(), ra * rb, "gemm_abt: out is not [ra, rb]");
    if ra == 0 || rb == 0 {
        return;
    }
    if d == 0 {
        out.fill(0.0);
        return;
    }
    let (pa, pb) = (padded_rows(ra, rb, d), padded_rows(rb, ra, d));
    if (pa, pb) == (ra, rb) {
        return gemm_abt_faer(a, b, d, out);
    }
    // Only the short side is copied; the long one (a tile of rows against
    // one new pick, say) is used in place.
    let mut o = vec![0.0f32; pa * pb];
    gemm_abt_faer(&padded(a, pa, d), &padded(b, pb, d), d, &mut o);
    for (dst, src) in out.chunks_exact_mut(rb).zip(o.chunks_exact(pb)) {
        dst.copy_from_slice(&src[..rb]);
    }
}

/// faer 0.24 computes products of at most this many multiply-adds with
/// its small-matrix kernels.
const SMALL_PRODUCT: usize = 16 * 16 * 16;

/// Rows to give a side of `rows` rows (the other side has `other`) so that
/// the product takes faer's general kernel: at least two on each side and
/// more than [`SMALL_PRODUCT`] multiply-adds.
fn padded_rows(rows: usize, other: usize, d: usize) -> usize {
    let mut r = rows.max(2);
    while r * other.max(2) * d <= SMALL_PRODUCT {
        r *= 2;
    }
    r
}

/// `x` (`[.., d]`) with zero rows up to `rows` rows, copied only when short.
fn padded(x: &[f32], rows: usize, d: usize) -> std::borrow::Cow<'_, [f32]> {
    if x.len() == rows * d {
        return x.into();
    }
    let mut v = Vec::with_capacity(rows * d);
    v.extend_from_slice(x);
    v.resize(rows * d, 0.0);
    v.into()
}

fn gemm_abt_faer(a: &[f32], b: &[f32], d: usize, out: &mut [f32]) {
    let (ra, rb) = (a.len() / d, b.len() / d);
    let lhs = MatRef::from_row_major_slice(a, ra, d);
    let rhs = MatRef::from_row_major_slice(b, rb, d).transpose();
    let dst = MatMut::from_row_major_slice_mut(out, ra, rb);
    matmul(dst, Accum::Replace, lhs, rhs, 1.0f32, Par::Seq);
}

/// `out[i * db + j] += sum_r a[r, i] b[r, j]` (that is `out += A^T B`) for
/// row-major `a: [rows, da]`, `b: [rows, db]`: a block's contribution to a
/// cross-covariance sum. Single-threaded, as [`gemm_abt`].
pub fn gemm_atb_acc(a: &[f32], da: usize, b: &[f32], db: usize, out: &mut [f32]) {
    let rows = a.len() / da.max(1);
    assert_eq!(a.len(), rows * da, "gemm_atb_acc: a is not [rows, da]");
    assert_eq!(b.len(), rows * db, "gemm_atb_acc: b is not [rows, db]");
    assert_eq!(out.len(), da * db, "gemm_atb_acc: out is not [da, db]");
    if rows == 0 || da == 0 || db == 0 {
        return;
    }
    let lhs = MatRef::from_row_major_slice(a, rows, da).transpose();
    let rhs = MatRef::from_row_major_slice(b, rows, db);
    let dst = MatMut::from_row_major_slice_mut(out, da, db);
    matmul(dst, Accum::Add, lhs, rhs, 1.0f32, Par::Seq);
}

/// The spec's threshold `phi(s) = s if s > tau else 0`; `None` is `tau = none`
/// (no threshold).
#[inline(always)]
pub fn phi(s: f32, tau: Option<f32>) -> f32 {
    match tau {
        Some(t) => {
            if s > t {
                s
            } else {
                0.0
            }
        }
        None => s,
    }
}

#[inline(always)]
fn threshold_sums_impl(
    tile: &[f32],
    rb: usize,
    tau: f32,
    row_sums: &mut [f64],
    col_sums: &mut [f64],
) {
    let ra = row_sums.len();
    assert_eq!(tile.len(), ra * rb);
    assert_eq!(col_sums.len(), rb);
    for (i, row) in tile.chunks_exact(rb).enumerate() {
        // Eight lanes of partial sums so the row sum vectorises.
        let mut lanes = [0.0f64; 8];
        let mut chunks = row.chunks_exact(8);
        let mut acc_cols = col_sums.chunks_exact_mut(8);
        for (c, acc) in (&mut chunks).zip(&mut acc_cols) {
            for l in 0..8 {
                let v = if c[l] > tau { c[l] as f64 } else { 0.0 };
                lanes[l] += v;
                acc[l] += v;
            }
        }
        let tail_start = rb - chunks.remainder().len();
        let mut tail = 0.0f64;
        for (j, &s) in row.iter().enumerate().skip(tail_start) {
            let v = if s > tau { s as f64 } else { 0.0 };
            tail += v;
            col_sums[j] += v;
        }
        row_sums[i] += ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
            + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
            + tail;
    }
}

#[inline(always)]
fn threshold_row_sums_impl(tile: &[f32], rb: usize, tau: Option<f32>, row_sums: &mut [f64]) {
    assert_eq!(tile.len(), row_sums.len() * rb);
    for (row, out) in tile.chunks_exact(rb).zip(row_sums.iter_mut()) {
        *out += sum_phi_impl(row, tau);
    }
}

// Eight independent lanes so the loop vectorises (a single running sum is
// a chain of dependent adds).
#[inline(always)]
fn sum_phi_impl(x: &[f32], tau: Option<f32>) -> f64 {
    let mut lanes = [0.0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            lanes[l] += phi(c[l], tau) as f64;
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&s| phi(s, tau) as f64).sum();
    ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
        + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
        + tail
}

#[inline(always)]
fn dot_f64_impl(a: &[f32], b: &[f32]) -> f64 {
    let mut lanes = [0.0f64; 4];
    let mut ca = a.chunks_exact(4);
    let mut cb = b.chunks_exact(4);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..4 {
            lanes[l] += x[l] as f64 * y[l] as f64;
        }
    }
    let mut s = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += *x as f64 * *y as f64;
    }
    s
}

dispatch!(
    /// Adds the thresholded sums of a `[ra, rb]` tile: `row_sums[i] += sum_j
    /// phi(tile[i, j])` and `col_sums[j] += sum_i phi(tile[i, j])`.
    ///
    /// Sums are kept in `f64` from the first element: an `f32` partial sum
    /// over a tile row would make `cross` depend on the tile shape at 1e-7,
    /// enough to swap near-tied picks between a full and an incremental run.
    /// Summation order is fixed by the tile shape alone, so results do not
    /// depend on threads.
    threshold_sums,
    threshold_sums_on,
    threshold_sums_impl,
    (tile: &[f32], rb: usize, tau: f32, row_sums: &mut [f64], col_sums: &mut [f64]) -> ()
);

dispatch!(
    /// Thresholded row sums only: `row_sums[i] += sum_j phi(tile[i, j])`.
    threshold_row_sums,
    threshold_row_sums_on,
    threshold_row_sums_impl,
    (tile: &[f32], rb: usize, tau: Option<f32>, row_sums: &mut [f64]) -> ()
);

dispatch!(
    /// `sum_j phi(x_j)` in `f64`.
    sum_phi,
    sum_phi_on,
    sum_phi_impl,
    (x: &[f32], tau: Option<f32>) -> f64
);

dispatch!(
    /// `<a, b>` accumulated in `f64`.
    dot_f64,
    dot_f64_on,
    dot_f64_impl,
    (a: &[f32], b: &[f32]) -> f64
);

/// `<a, b>` for an `f32` row and an `f64` vector.
#[inline]
pub fn dot_mixed(a: &[f32], b: &[f64]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            lanes[l] += x[l] as f64 * y[l];
        }
    }
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| *x as f64 * y)
        .sum();
    lanes.iter().sum::<f64>() + tail
}

/// Returns `v / |v|` (all zeros stay zeros).
pub fn normalised(v: &[f64]) -> Vec<f64> {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if n > 0.0 {
        v.iter().map(|x| x / n).collect()
    } else {
        v.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..n).map(|_| r.normal() as f32).collect()
    }

    /// The threshold sums and dots return the same bits on every
    /// instruction set this CPU has as on the baseline, for lengths with
    /// and without a tail and for both kinds of threshold.
    #[test]
    fn reductions_are_the_same_bits_on_every_instruction_set() {
        use crate::kernels::isa::Isa;
        for (rows, cols) in [(1, 1), (3, 7), (5, 8), (4, 1000), (2, 1027)] {
            let (tile, other) = (random(rows * cols, 7), random(rows * cols, 8));
            let base = |isa: Isa| {
                let (mut rs, mut cs) = (vec![0.5; rows], vec![0.25; cols]);
                threshold_sums_on(isa, &tile, cols, 0.1, &mut rs, &mut cs);
                let mut only = vec![0.0; rows];
                threshold_row_sums_on(isa, &tile, cols, Some(-0.2), &mut only);
                threshold_row_sums_on(isa, &other, cols, None, &mut only);
                let each: Vec<f64> = tile
                    .chunks_exact(cols)
                    .zip(other.chunks_exact(cols))
                    .flat_map(|(a, b)| {
                        [
                            sum_phi_on(isa, a, Some(0.0)),
                            sum_phi_on(isa, b, None),
                            dot_f64_on(isa, a, b),
                        ]
                    })
                    .collect();
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                (bits(&rs), bits(&cs), bits(&only), bits(&each))
            };
            let want = base(Isa::Base);
            // The baseline itself against a plain sum: a kernel that lost
            // its tail or its threshold fails here.
            let plain: f64 = tile[..cols]
                .iter()
                .filter(|&&x| x > 0.0)
                .map(|&x| x as f64)
                .sum();
            assert!((f64::from_bits(want.3[0]) - plain).abs() < 1e-9);
            for isa in Isa::available() {
                assert_eq!(base(isa), want, "{} at {rows} x {cols}", isa.name());
            }
        }
    }

    /// Every element of a sub-tile is the same bits as in the whole
    /// product, for tiny, one-row and one-column tiles too.
    #[test]
    fn gemm_elements_do_not_depend_on_the_tile_shape() {
        for d in [3, 8, 33, 512] {
            let (na, nb) = (300, 260);
            let a = random(na * d, 3);
            let b = random(nb * d, 4);
            let mut full = vec![0.0; na * nb];
            gemm_abt(&a, &b, d, &mut full);
            for (ra, ca) in [
                (0..2, 0..2),
                (5..7, 9..10),
                (5..6, 9..11),
                (10..13, 20..22),
                (1..3, 200..260),
                (17..18, 0..260),
                (17..18, 100..101),
                (7..39, 100..117),
                (3..259, 17..241),
            ] {
                let (m, n) = (ra.len(), ca.len());
                let mut out = vec![0.0; m * n];
                gemm_abt(
                    &a[ra.start * d..ra.end * d],
                    &b[ca.start * d..ca.end * d],
                    d,
                    &mut out,
                );
                for i in 0..m {
                    for j in 0..n {
                        assert_eq!(
                            out[i * n + j].to_bits(),
                            full[(ra.start + i) * nb + ca.start + j].to_bits(),
                            "d {d}, tile {ra:?} x {ca:?}, element ({i}, {j})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn gemm_matches_scalar() {
        for (ra, rb, d) in [(1, 1, 1), (3, 5, 7), (37, 19, 64), (130, 70, 33)] {
            let a = random(ra * d, 1);
            let b = random(rb * d, 2);
            let mut out = vec![0.0; ra * rb];
            gemm_abt(&a, &b, d, &mut out);
            for i in 0..ra {
                for j in 0..rb {
                    let want = dot_f64(&a[i * d..(i + 1) * d], &b[j * d..(j + 1) * d]);
                    let got = out[i * rb + j] as f64;
                    assert!(
                        (want - got).abs() < 1e-4 * (1.0 + want.abs()),
                        "{want} vs {got}"
                    );
                }
            }
        }
    }

    #[test]
    fn gemm_atb_acc_matches_scalar() {
        let (rows, da, db) = (37, 5, 7);
        let a = random(rows * da, 4);
        let b = random(rows * db, 5);
        let mut out = vec![1.0; da * db];
        gemm_atb_acc(&a, da, &b, db, &mut out);
        for i in 0..da {
            for j in 0..db {
                let want: f64 = 1.0
                    + (0..rows)
                        .map(|r| a[r * da + i] as f64 * b[r * db + j] as f64)
                        .sum::<f64>();
                assert!((want - out[i * db + j] as f64).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn threshold_sums_match_scalar() {
        let (ra, rb) = (150, 37);
        let tile = random(ra * rb, 3);
        for tau in [0.0f32, 0.5, -10.0] {
            let mut rows = vec![0.0; ra];
            let mut cols = vec![0.0; rb];
            threshold_sums(&tile, rb, tau, &mut rows, &mut cols);
            for i in 0..ra {
                let want: f64 = (0..rb)
                    .map(|j| phi(tile[i * rb + j], Some(tau)) as f64)
                    .sum();
                assert!((rows[i] - want).abs() < 1e-4, "row {i}");
            }
            for j in 0..rb {
                let want: f64 = (0..ra)
                    .map(|i| phi(tile[i * rb + j], Some(tau)) as f64)
                    .sum();
                assert!((cols[j] - want).abs() < 1e-4, "col {j}");
            }
        }
    }
}
