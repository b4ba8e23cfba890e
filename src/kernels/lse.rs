//! Log-sum-exp of similarity rows and columns, in `f32` with max
//! subtraction: the InfoNCE denominators of c_rho and neg_clip_loss.
//!
//! A [`Partial`] is the `(max, sum of exp)` of part of a row or column;
//! partials merge exactly, so a long row can be reduced tile by tile. Sums
//! run over eight fixed lanes, so results depend on the data alone, never on
//! threads or on the instruction set.

/// `e^x` in `f32` (Cephes `expf`: range reduction by `ln 2`, degree-6
/// polynomial), written branch-free so that loops over it vectorise.
/// Within 2 ulp of the exact value on `[-87, 88]`; inputs are clamped to
/// that range (below it the result is ~1e-38, not 0: harmless in a sum that
/// holds `e^0 = 1`).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    const SHIFT: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + SHIFT;
    let n = t - SHIFT;
    let r = (x - n * 0.693_359_4) + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    p = p * r * r + r + 1.0;
    let k = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    p * f32::from_bits(((k + 127) << 23) as u32)
}

/// Lanes of the row reductions: fixed, so sums are the same on every
/// instruction set (16 fill one AVX-512 register, two AVX2, four SSE).
const LANES: usize = 16;

pub use super::isa::Isa;
use super::isa::{best_isa, dispatch};

#[inline(always)]
fn max_impl(v: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = v.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            lanes[l] = if c[l] > lanes[l] { c[l] } else { lanes[l] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &x in lanes.iter().chain(chunks.remainder()) {
        m = if x > m { x } else { m };
    }
    m
}

#[inline(always)]
fn sum_exp_impl(v: &[f32], m: f32, inv_t: f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut chunks = v.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            lanes[l] += exp_f32((c[l] - m) * inv_t);
        }
    }
    let mut tail = 0.0f32;
    for &x in chunks.remainder() {
        tail += exp_f32((x - m) * inv_t);
    }
    reduce_lanes(lanes) + tail
}

/// The largest exponent of a fused tile's terms, `80 - ln(terms per
/// sum)`: a sum of that many terms stays below `e^80`, far from the `f32`
/// overflow at `e^88.7`.
pub fn fused_offset(rows: usize, cols: usize) -> f32 {
    80.0 - (rows.max(cols).max(1) as f32).ln()
}

/// A row or column of a fused tile is reduced from the shared terms when
/// its largest term is at least `e^-60`: every term within `e^-27` of it
/// is then a normal `f32`, and the terms lost below (clamped at `e^-87`)
/// change its sum by less than 1e-11 relative.
const FUSED_FLOOR: f32 = -60.0;

#[inline(always)]
fn tile_max_impl(tile: &[f32], row_max: &mut [f32], col_max: &mut [f32]) {
    let cols = col_max.len();
    for (row, rm) in tile.chunks_exact(cols).zip(row_max.iter_mut()) {
        let mut lanes = [f32::NEG_INFINITY; LANES];
        let mut xs = row.chunks_exact(LANES);
        let mut ms = col_max.chunks_exact_mut(LANES);
        for (c, m) in (&mut xs).zip(&mut ms) {
            for l in 0..LANES {
                lanes[l] = if c[l] > lanes[l] { c[l] } else { lanes[l] };
                m[l] = if c[l] > m[l] { c[l] } else { m[l] };
            }
        }
        let mut best = f32::NEG_INFINITY;
        for (&x, m) in xs.remainder().iter().zip(ms.into_remainder()) {
            best = if x > best { x } else { best };
            *m = if x > *m { x } else { *m };
        }
        for &x in &lanes {
            best = if x > best { x } else { best };
        }
        *rm = best;
    }
}

/// One exponential per entry, `e = e^{(x - shift) * inv_t + offset}`,
/// summed into its row (over fixed lanes) and its column (in row order).
#[inline(always)]
fn tile_sum_exp_impl(
    tile: &[f32],
    shift: f32,
    inv_t: f32,
    offset: f32,
    row_sum: &mut [f32],
    col_sum: &mut [f32],
) {
    let cols = col_sum.len();
    for (row, rs) in tile.chunks_exact(cols).zip(row_sum.iter_mut()) {
        let mut lanes = [0.0f32; LANES];
        let mut xs = row.chunks_exact(LANES);
        let mut ss = col_sum.chunks_exact_mut(LANES);
        for (c, s) in (&mut xs).zip(&mut ss) {
            for l in 0..LANES {
                let e = exp_f32((c[l] - shift) * inv_t + offset);
                lanes[l] += e;
                s[l] += e;
            }
        }
        let mut tail = 0.0f32;
        for (&x, s) in xs.remainder().iter().zip(ss.into_remainder()) {
            let e = exp_f32((x - shift) * inv_t + offset);
            tail += e;
            *s += e;
        }
        *rs = reduce_lanes(lanes) + tail;
    }
}

/// The terms of a fused tile are `e^{(x - shift) * inv_t + offset}`.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    pub shift: f32,
    pub inv_t: f32,
    pub offset: f32,
}

/// The full-matrix path of neg_clip_loss: one exponential per entry,
/// `e_ij = e^{(tile[i, j] - shift) * inv_t + offset}`, summed for each
/// repetition `r` over the entries whose row and column are in the same
/// batch (`row_codes[r * rows + i] == col_codes[r * cols + j]`):
/// `row_sum[r * rows + i]` is set, `col_sum[r * cols + j]` added to.
/// `exps` holds one row's terms (its length is the tile's width).
/// `masked` is [`masked_sums`] or a vector version of it.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile_batch_sums_with(
    tile: &[f32],
    scale: Scale,
    row_codes: &[u32],
    col_codes: &[u32],
    row_sum: &mut [f32],
    col_sum: &mut [f32],
    exps: &mut [f32],
    masked: impl Fn(&[f32], &[u32], u32, &mut [f32]) -> f32,
) {
    let Scale {
        shift,
        inv_t,
        offset,
    } = scale;
    let cols = exps.len();
    let rows = tile.len() / cols.max(1);
    if rows == 0 {
        return;
    }
    let reps = row_codes.len() / rows;
    for (i, row) in tile.chunks_exact(cols).enumerate() {
        for (e, &x) in exps.iter_mut().zip(row) {
            *e = exp_f32((x - shift) * inv_t + offset);
        }
        for r in 0..reps {
            let sums = &mut col_sum[r * cols..(r + 1) * cols];
            let codes = &col_codes[r * cols..(r + 1) * cols];
            row_sum[r * rows + i] = masked(exps, codes, row_codes[r * rows + i], sums);
        }
    }
}

/// `sums[j] += e[j]` where `codes[j] == code`; returns the sum of those
/// `e[j]` over fixed lanes (as [`reduce_lanes`]).
#[inline(always)]
fn masked_sums(e: &[f32], codes: &[u32], code: u32, sums: &mut [f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut es = e.chunks_exact(LANES);
    let mut cs = codes.chunks_exact(LANES);
    let mut ss = sums.chunks_exact_mut(LANES);
    for ((e, c), s) in (&mut es).zip(&mut cs).zip(&mut ss) {
        // Fixed-size arrays and a select, which LLVM vectorises; adding
        // `+0` leaves a sum of non-negative terms unchanged.
        let (e, c): (&[f32; LANES], &[u32; LANES]) = (e.try_into().unwrap(), c.try_into().unwrap());
        let s: &mut [f32; LANES] = s.try_into().unwrap();
        let mut t = [0.0f32; LANES];
        for l in 0..LANES {
            t[l] = if c[l] == code { e[l] } else { 0.0 };
        }
        for l in 0..LANES {
            lanes[l] += t[l];
            s[l] += t[l];
        }
    }
    let mut tail = 0.0f32;
    let rest = es.remainder().iter().zip(cs.remainder());
    for ((&e, &c), s) in rest.zip(ss.into_remainder()) {
        if c == code {
            tail += e;
            *s += e;
        }
    }
    reduce_lanes(lanes) + tail
}

/// [`masked_sums`] in AVX-512, lane for lane the same additions (LLVM does
/// not vectorise the portable one well).
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn masked_sums_avx512(e: &[f32], codes: &[u32], code: u32, sums: &mut [f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = e.len().min(codes.len()).min(sums.len());
    let body = n / LANES * LANES;
    let want = _mm512_set1_epi32(code as i32);
    let mut acc = _mm512_setzero_ps();
    let mut j = 0;
    while j < body {
        // SAFETY: j + 16 <= n, within all three slices.
        unsafe {
            let x = _mm512_loadu_ps(e.as_ptr().add(j));
            let c = _mm512_loadu_si512(codes.as_ptr().add(j).cast());
            let m = _mm512_cmpeq_epi32_mask(c, want);
            acc = _mm512_mask_add_ps(acc, m, acc, x);
            let p = sums.as_mut_ptr().add(j);
            let s = _mm512_loadu_ps(p);
            _mm512_storeu_ps(p, _mm512_mask_add_ps(s, m, s, x));
        }
        j += LANES;
    }
    let mut lanes = [0.0f32; LANES];
    // SAFETY: `lanes` holds 16 floats.
    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc) };
    let mut tail = 0.0f32;
    for j in body..n {
        if codes[j] == code {
            tail += e[j];
            sums[j] += e[j];
        }
    }
    reduce_lanes(lanes) + tail
}

/// [`masked_sums`] in AVX2, lane for lane the same additions (an unmatched
/// lane adds `+0`, which leaves a sum of non-negative terms unchanged).
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn masked_sums_avx2(e: &[f32], codes: &[u32], code: u32, sums: &mut [f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = e.len().min(codes.len()).min(sums.len());
    let body = n / LANES * LANES;
    let want = _mm256_set1_epi32(code as i32);
    let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut j = 0;
    while j < body {
        for (h, acc) in [(0, &mut lo), (8, &mut hi)] {
            // SAFETY: j + 16 <= n, within all three slices.
            unsafe {
                let x = _mm256_loadu_ps(e.as_ptr().add(j + h));
                let c = _mm256_loadu_si256(codes.as_ptr().add(j + h).cast());
                let m = _mm256_castsi256_ps(_mm256_cmpeq_epi32(c, want));
                let t = _mm256_and_ps(x, m);
                *acc = _mm256_add_ps(*acc, t);
                let p = sums.as_mut_ptr().add(j + h);
                _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), t));
            }
        }
        j += LANES;
    }
    let mut lanes = [0.0f32; LANES];
    // SAFETY: `lanes` holds 16 floats.
    unsafe {
        _mm256_storeu_ps(lanes.as_mut_ptr(), lo);
        _mm256_storeu_ps(lanes.as_mut_ptr().add(8), hi);
    }
    let mut tail = 0.0f32;
    for j in body..n {
        if codes[j] == code {
            tail += e[j];
            sums[j] += e[j];
        }
    }
    reduce_lanes(lanes) + tail
}

/// [`tile_batch_sums_impl`] with the AVX2 masked sums.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn tile_batch_sums_avx2(
    tile: &[f32],
    scale: Scale,
    row_codes: &[u32],
    col_codes: &[u32],
    row_sum: &mut [f32],
    col_sum: &mut [f32],
    exps: &mut [f32],
) {
    // SAFETY: this function runs only where AVX2 is supported.
    let m = |e: &[f32], c: &[u32], code, s: &mut [f32]| unsafe { masked_sums_avx2(e, c, code, s) };
    tile_batch_sums_with(tile, scale, row_codes, col_codes, row_sum, col_sum, exps, m);
}

/// [`tile_batch_sums`] with the portable masked sums.
fn tile_batch_sums_impl(
    tile: &[f32],
    scale: Scale,
    row_codes: &[u32],
    col_codes: &[u32],
    row_sum: &mut [f32],
    col_sum: &mut [f32],
    exps: &mut [f32],
) {
    let m = masked_sums;
    tile_batch_sums_with(tile, scale, row_codes, col_codes, row_sum, col_sum, exps, m);
}

/// [`tile_batch_sums_impl`] with the AVX-512 masked sums.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_batch_sums_avx512(
    tile: &[f32],
    scale: Scale,
    row_codes: &[u32],
    col_codes: &[u32],
    row_sum: &mut [f32],
    col_sum: &mut [f32],
    exps: &mut [f32],
) {
    // SAFETY: this function runs only where AVX-512F is supported.
    let m =
        |e: &[f32], c: &[u32], code, s: &mut [f32]| unsafe { masked_sums_avx512(e, c, code, s) };
    tile_batch_sums_with(tile, scale, row_codes, col_codes, row_sum, col_sum, exps, m);
}

/// For neg_clip_loss's full-matrix path, per repetition, the shared terms
/// of a tile's entries whose row and column share a batch, summed into
/// their row (set) and column (added to); see `tile_batch_sums_with`.
pub fn tile_batch_sums(
    tile: &[f32],
    scale: Scale,
    row_codes: &[u32],
    col_codes: &[u32],
    row_sum: &mut [f32],
    col_sum: &mut [f32],
    exps: &mut [f32],
) {
    let isa = best_isa();
    tile_batch_sums_on(
        isa, tile, scale, row_codes, col_codes, row_sum, col_sum, exps,
    );
}

/// [`tile_batch_sums`] on `isa` (the same bits on each).
#[allow(clippy::too_many_arguments)]
pub fn tile_batch_sums_on(
    isa: Isa,
    tile: &[f32],
    scale: Scale,
    row_codes: &[u32],
    col_codes: &[u32],
    row_sum: &mut [f32],
    col_sum: &mut [f32],
    exps: &mut [f32],
) {
    let cols = exps.len();
    let rows = tile.len() / cols.max(1);
    assert!(
        tile.len() == rows * cols
            && row_codes.len() * cols == col_codes.len() * rows
            && row_sum.len() == row_codes.len()
            && col_sum.len() == col_codes.len(),
        "tile_batch_sums: shapes differ"
    );
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F.
        return unsafe {
            tile_batch_sums_avx512(tile, scale, row_codes, col_codes, row_sum, col_sum, exps)
        };
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2.
        return unsafe {
            tile_batch_sums_avx2(tile, scale, row_codes, col_codes, row_sum, col_sum, exps)
        };
    }
    let _ = isa;
    tile_batch_sums_impl(tile, scale, row_codes, col_codes, row_sum, col_sum, exps)
}

/// The lanes summed in a fixed pairwise tree.
#[inline(always)]
fn reduce_lanes(mut lanes: [f32; LANES]) -> f32 {
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for l in 0..w {
            lanes[l] += lanes[l + w];
        }
    }
    lanes[0]
}

dispatch!(
    /// The largest value of `v` (`-inf` when empty).
    max_f32,
    max_f32_on,
    max_impl,
    (v: &[f32]) -> f32
);
dispatch!(
    /// `sum_x e^{(x - m) * inv_t}`, over fixed lanes reduced in a fixed order.
    sum_exp,
    sum_exp_on,
    sum_exp_impl,
    (v: &[f32], m: f32, inv_t: f32) -> f32
);
dispatch!(
    /// `row_max[i]` = the largest of row `i` of a `[row_max.len(),
    /// col_max.len()]` tile; `col_max[j] = max(col_max[j], max_i tile[i, j])`.
    tile_max,
    tile_max_on,
    tile_max_impl,
    (tile: &[f32], row_max: &mut [f32], col_max: &mut [f32]) -> ()
);
dispatch!(
    /// `row_sum[i] = sum_j e_ij` and `col_sum[j] += sum_i e_ij`, with
    /// `e_ij = e^{(tile[i, j] - shift) * inv_t + offset}`.
    tile_sum_exp,
    tile_sum_exp_on,
    tile_sum_exp_impl,
    (tile: &[f32], shift: f32, inv_t: f32, offset: f32, row_sum: &mut [f32], col_sum: &mut [f32]) -> ()
);

/// `(max, sum e^{(x - max) * inv_t})` of part of a row or column.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Partial {
    pub max: f32,
    pub sum: f32,
}

impl Partial {
    pub const EMPTY: Partial = Partial {
        max: f32::NEG_INFINITY,
        sum: 0.0,
    };

    /// The partial of `v`.
    pub fn of(v: &[f32], inv_t: f32) -> Partial {
        let max = max_f32(v);
        if max == f32::NEG_INFINITY {
            return Partial::EMPTY;
        }
        Partial {
            max,
            sum: sum_exp(v, max, inv_t),
        }
    }

    /// The partial of the union (`self` first: the order is fixed by callers).
    #[inline]
    pub fn merge(self, other: Partial, inv_t: f32) -> Partial {
        if other.max == f32::NEG_INFINITY {
            return self;
        }
        if self.max == f32::NEG_INFINITY {
            return other;
        }
        let max = if other.max > self.max {
            other.max
        } else {
            self.max
        };
        Partial {
            max,
            sum: self.sum * exp_f32((self.max - max) * inv_t)
                + other.sum * exp_f32((other.max - max) * inv_t),
        }
    }

    /// `log sum_x e^{x * inv_t}`.
    pub fn lse(self, inv_t: f32) -> f64 {
        self.max as f64 * inv_t as f64 + (self.sum as f64).ln()
    }
}

/// Buffers of [`merge_tile_partials`], reused across tiles.
#[derive(Default)]
pub struct TileScratch {
    row_max: Vec<f32>,
    col_max: Vec<f32>,
    row_sum: Vec<f32>,
    col_sum: Vec<f32>,
}

/// Merges the row and column partials of a `[rows, cols]` tile into
/// `rows_out` and `cols_out` (the tile comes after what they hold).
///
/// Each entry's exponential is computed once and feeds both its row and its
/// column: the terms share the tile's largest value as their shift (plus an
/// offset that uses the `f32` exponent range), and each row's and column's
/// sum is then rescaled to its own maximum. A row or column whose maximum is
/// so far below the tile's that its terms would underflow is reduced again
/// on its own, so the result is exact to `f32` rounding for any data.
pub fn merge_tile_partials(
    tile: &[f32],
    inv_t: f32,
    scratch: &mut TileScratch,
    rows_out: &mut [Partial],
    cols_out: &mut [Partial],
) {
    merge_tile_partials_on(best_isa(), tile, inv_t, scratch, rows_out, cols_out);
}

/// [`merge_tile_partials`] compiled for `isa`.
pub fn merge_tile_partials_on(
    isa: Isa,
    tile: &[f32],
    inv_t: f32,
    scratch: &mut TileScratch,
    rows_out: &mut [Partial],
    cols_out: &mut [Partial],
) {
    let (rows, cols) = (rows_out.len(), cols_out.len());
    assert_eq!(
        tile.len(),
        rows * cols,
        "merge_tile_partials: tile is not [rows, cols]"
    );
    if rows == 0 || cols == 0 {
        return;
    }
    let s = scratch;
    s.row_max.clear();
    s.row_max.resize(rows, f32::NEG_INFINITY);
    s.col_max.clear();
    s.col_max.resize(cols, f32::NEG_INFINITY);
    tile_max_on(isa, tile, &mut s.row_max, &mut s.col_max);
    let shift = max_f32_on(isa, &s.row_max);
    if shift == f32::NEG_INFINITY {
        return;
    }
    let offset = fused_offset(rows, cols);
    s.row_sum.clear();
    s.row_sum.resize(rows, 0.0);
    s.col_sum.clear();
    s.col_sum.resize(cols, 0.0);
    tile_sum_exp_on(
        isa,
        tile,
        shift,
        inv_t,
        offset,
        &mut s.row_sum,
        &mut s.col_sum,
    );
    // The sum of `e^{(x - max) * inv_t}` from the shared terms, or `None`
    // when they underflow.
    let rescale = |max: f32, sum: f32| {
        let top = (max - shift) * inv_t + offset;
        (top >= FUSED_FLOOR).then(|| sum * exp_f32(-top))
    };
    for (i, out) in rows_out.iter_mut().enumerate() {
        let max = s.row_max[i];
        let sum = rescale(max, s.row_sum[i]).unwrap_or_else(|| {
            let row = &tile[i * cols..(i + 1) * cols];
            sum_exp_on(isa, row, max, inv_t)
        });
        *out = out.merge(Partial { max, sum }, inv_t);
    }
    for (j, out) in cols_out.iter_mut().enumerate() {
        let max = s.col_max[j];
        let sum = rescale(max, s.col_sum[j]).unwrap_or_else(|| {
            (0..rows)
                .map(|i| exp_f32((tile[i * cols + j] - max) * inv_t))
                .sum()
        });
        *out = out.merge(Partial { max, sum }, inv_t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn lse_f64(v: &[f32], inv_t: f64) -> f64 {
        let m = v.iter().map(|&x| x as f64 * inv_t).fold(f64::MIN, f64::max);
        m + v
            .iter()
            .map(|&x| (x as f64 * inv_t - m).exp())
            .sum::<f64>()
            .ln()
    }

    /// Largest relative error of `exp_f32` against `f64` on `n + 1` evenly
    /// spaced points of `[lo, hi]`.
    fn max_exp_error(lo: f64, hi: f64, n: usize) -> (f64, f64) {
        let mut worst = (0.0f64, lo);
        for i in 0..=n {
            let x = (lo + (hi - lo) * i as f64 / n as f64) as f32;
            let want = (x as f64).exp();
            let err = ((exp_f32(x) as f64 - want) / want).abs();
            if err > worst.0 {
                worst = (err, x as f64);
            }
        }
        worst
    }

    #[test]
    fn exp_is_accurate_on_the_whole_range() {
        // The kernels' exponents lie in [-87, 88] (clamped there): the
        // fused tiles use [-87, 80], max subtraction [-87, 0].
        let (err, at) = max_exp_error(-87.0, 88.0, 1 << 22);
        eprintln!("exp_f32 on [-87, 88]: max relative error {err:.3e} at {at}");
        // f32's epsilon is 1.19e-7: within 2 ulp.
        assert!(err < 2.4e-7, "max relative error {err:e} at {at}");
        // Near 0, where the terms of a row's largest entries lie.
        let (err, at) = max_exp_error(-1.0, 1.0, 1 << 20);
        assert!(err < 2.4e-7, "max relative error {err:e} at {at}");
        assert!(exp_f32(-1e9) < 1e-37);
        assert_eq!(exp_f32(0.0), 1.0);
    }

    /// Tiles whose width is not a multiple of the lanes, so both the vector
    /// loop and the scalar tail run.
    fn tile(r: &mut Rng, rows: usize, cols: usize, scale: f64) -> Vec<f32> {
        (0..rows * cols)
            .map(|_| (r.normal() * scale) as f32)
            .collect()
    }

    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let isas = Isa::available();
        eprintln!("instruction sets: {isas:?}");
        let mut r = Rng::new(2);
        // 1037 and 17 are not multiples of the lanes: the scalar tails run too.
        let v: Vec<f32> = (0..1037).map(|_| r.normal() as f32).collect();
        let m = max_impl(&v);
        let sum = sum_exp_impl(&v, m, 37.0);
        for (rows, cols) in [(61, 17), (5, 48), (3, 1)] {
            let t = tile(&mut r, rows, cols, 0.3);
            let (mut rm, mut cm) = (vec![0.0f32; rows], vec![f32::NEG_INFINITY; cols]);
            tile_max_impl(&t, &mut rm, &mut cm);
            let (mut rs, mut cs) = (vec![0.0f32; rows], vec![0.0f32; cols]);
            tile_sum_exp_impl(&t, 0.5, 100.0, 70.0, &mut rs, &mut cs);
            let mut want = (vec![Partial::EMPTY; rows], vec![Partial::EMPTY; cols]);
            merge_tile_partials_on(
                Isa::Base,
                &t,
                100.0,
                &mut TileScratch::default(),
                &mut want.0,
                &mut want.1,
            );
            for &isa in &isas {
                assert_eq!(max_f32_on(isa, &v), m);
                assert_eq!(sum_exp_on(isa, &v, m, 37.0).to_bits(), sum.to_bits());
                let (mut rm2, mut cm2) = (vec![0.0f32; rows], vec![f32::NEG_INFINITY; cols]);
                tile_max_on(isa, &t, &mut rm2, &mut cm2);
                assert_eq!((&rm, &cm), (&rm2, &cm2), "{isa:?}");
                let (mut rs2, mut cs2) = (vec![0.0f32; rows], vec![0.0f32; cols]);
                tile_sum_exp_on(isa, &t, 0.5, 100.0, 70.0, &mut rs2, &mut cs2);
                assert_eq!(bits(&rs), bits(&rs2), "{isa:?}");
                assert_eq!(bits(&cs), bits(&cs2), "{isa:?}");
                let mut got = (vec![Partial::EMPTY; rows], vec![Partial::EMPTY; cols]);
                merge_tile_partials_on(
                    isa,
                    &t,
                    100.0,
                    &mut TileScratch::default(),
                    &mut got.0,
                    &mut got.1,
                );
                assert_eq!(got, want, "{isa:?}");
            }
        }
    }

    #[test]
    fn batch_sums_match_f64_on_every_instruction_set() {
        let mut r = Rng::new(21);
        // 83 columns: five 16-lane chunks and a tail of 3.
        let (rows, cols, reps) = (37, 83, 5);
        let t = tile(&mut r, rows, cols, 0.3);
        let codes = |n: usize, r: &mut Rng| -> Vec<u32> {
            (0..reps * n).map(|_| r.below(3) as u32).collect()
        };
        let (rc, cc) = (codes(rows, &mut r), codes(cols, &mut r));
        let scale = Scale {
            shift: max_f32(&t),
            inv_t: 20.0,
            offset: fused_offset(rows, cols),
        };
        let run = |isa| {
            let (mut rs, mut cs) = (vec![0.0f32; reps * rows], vec![1.0f32; reps * cols]);
            let mut exps = vec![0.0f32; cols];
            tile_batch_sums_on(isa, &t, scale, &rc, &cc, &mut rs, &mut cs, &mut exps);
            (rs, cs)
        };
        let want = run(Isa::Base);
        let (mut rows_f64, mut cols_f64) = (vec![0.0f64; reps * rows], vec![1.0f64; reps * cols]);
        for i in 0..rows {
            for j in 0..cols {
                let x = t[i * cols + j] as f64;
                let e = ((x - scale.shift as f64) * 20.0 + scale.offset as f64).exp();
                for rep in 0..reps {
                    if rc[rep * rows + i] == cc[rep * cols + j] {
                        rows_f64[rep * rows + i] += e;
                        cols_f64[rep * cols + j] += e;
                    }
                }
            }
        }
        for (got, want) in want
            .0
            .iter()
            .zip(&rows_f64)
            .chain(want.1.iter().zip(&cols_f64))
        {
            assert!((*got as f64 - want).abs() <= 1e-5 * want, "{got} vs {want}");
        }
        for isa in Isa::available() {
            assert!(run(isa) == want, "{isa:?}");
        }
    }

    /// Checks the fused partials of `tile` (`rows` rows, split in two row
    /// blocks and two column blocks) against `f64`.
    fn check_tile_partials(tile: &[f32], rows: usize, cols: usize, inv_t: f32) {
        let (mut row_p, mut col_p) = (vec![Partial::EMPTY; rows], vec![Partial::EMPTY; cols]);
        let mut scratch = TileScratch::default();
        // Two column blocks of the first row block, then the second row block.
        let (r1, c1) = (rows / 2, cols / 3);
        for (r0, r1) in [(0, r1), (r1, rows)] {
            for (c0, c1) in [(0, c1), (c1, cols)] {
                let sub: Vec<f32> = (r0..r1)
                    .flat_map(|i| tile[i * cols + c0..i * cols + c1].iter().copied())
                    .collect();
                merge_tile_partials(
                    &sub,
                    inv_t,
                    &mut scratch,
                    &mut row_p[r0..r1],
                    &mut col_p[c0..c1],
                );
            }
        }
        for (i, p) in row_p.iter().enumerate() {
            let want = lse_f64(&tile[i * cols..(i + 1) * cols], inv_t as f64);
            let got = p.lse(inv_t);
            assert!(
                (got - want).abs() < 2e-6 * want.abs().max(1.0),
                "row {i}: {got} vs {want}"
            );
        }
        for (j, p) in col_p.iter().enumerate() {
            let col: Vec<f32> = (0..rows).map(|i| tile[i * cols + j]).collect();
            let want = lse_f64(&col, inv_t as f64);
            let got = p.lse(inv_t);
            assert!(
                (got - want).abs() < 2e-6 * want.abs().max(1.0),
                "col {j}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn fused_tile_partials_match_f64() {
        let mut r = Rng::new(9);
        for (rows, cols, scale, inv_t) in [
            (37, 13, 1.0, 10.0),
            (64, 83, 0.3, 100.0),
            (9, 200, 0.05, 100.0),
            (40, 40, 3.0, 1.0),
        ] {
            check_tile_partials(&tile(&mut r, rows, cols, scale), rows, cols, inv_t);
        }
    }

    #[test]
    fn rows_and_columns_far_below_the_tile_max_are_exact() {
        // Similarities from -1 to 1 at T = 0.01: the shared terms of the low
        // rows and columns underflow, so they are reduced on their own.
        let mut r = Rng::new(11);
        let (rows, cols) = (30, 50);
        let mut t = tile(&mut r, rows, cols, 0.01);
        for i in 0..rows {
            for j in 0..cols {
                // A block of high values; rows 10.. sit in the middle, low
                // enough to underflow at T = 0.01 only without the offset.
                t[i * cols + j] += match (i < 3 && j < 5, i >= 10) {
                    (true, _) => 0.95,
                    (false, true) => -0.15,
                    (false, false) => -0.9,
                };
            }
        }
        check_tile_partials(&t, rows, cols, 100.0);
    }
}
