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

/// Compiles `$body` once per instruction set and picks the best at run time.
/// Only the vector width changes: no FMA contraction happens without
/// fast-math, so every variant computes bit-identical results.
macro_rules! dispatch {
    ($(#[$doc:meta])* $name:ident, $impl:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn wide($($arg: $ty),*) -> $ret {
                    $impl($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn mid($($arg: $ty),*) -> $ret {
                    $impl($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports the enabled features.
                    return unsafe { wide($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: as above.
                    return unsafe { mid($($arg),*) };
                }
            }
            $impl($($arg),*)
        }
    };
}

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
    // A fixed pairwise tree.
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for l in 0..w {
            lanes[l] += lanes[l + w];
        }
    }
    lanes[0] + tail
}

#[inline(always)]
fn col_max_impl(tile: &[f32], maxes: &mut [f32]) {
    for row in tile.chunks_exact(maxes.len()) {
        for (m, &x) in maxes.iter_mut().zip(row) {
            *m = if x > *m { x } else { *m };
        }
    }
}

#[inline(always)]
fn col_sum_exp_impl(tile: &[f32], maxes: &[f32], inv_t: f32, sums: &mut [f32]) {
    for row in tile.chunks_exact(maxes.len()) {
        for ((s, &m), &x) in sums.iter_mut().zip(maxes).zip(row) {
            *s += exp_f32((x - m) * inv_t);
        }
    }
}

dispatch!(
    /// The largest value of `v` (`-inf` when empty).
    max_f32,
    max_impl,
    (v: &[f32]) -> f32
);
dispatch!(
    /// `sum_x e^{(x - m) * inv_t}`, over fixed lanes reduced in a fixed order.
    sum_exp,
    sum_exp_impl,
    (v: &[f32], m: f32, inv_t: f32) -> f32
);
dispatch!(
    /// `maxes[j] = max(maxes[j], max_i tile[i, j])` for a `[rows, maxes.len()]` tile.
    col_max,
    col_max_impl,
    (tile: &[f32], maxes: &mut [f32]) -> ()
);
dispatch!(
    /// `sums[j] += sum_i e^{(tile[i, j] - maxes[j]) * inv_t}`.
    col_sum_exp,
    col_sum_exp_impl,
    (tile: &[f32], maxes: &[f32], inv_t: f32, sums: &mut [f32]) -> ()
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

/// Merges the column partials of a `[rows, cols]` tile into `cols_out`
/// (rows taken in order). `scratch` holds the tile's column maxima.
pub fn merge_col_partials(
    tile: &[f32],
    cols: usize,
    inv_t: f32,
    scratch: &mut Vec<f32>,
    cols_out: &mut [Partial],
) {
    assert_eq!(cols_out.len(), cols);
    assert_eq!(tile.len() % cols.max(1), 0);
    scratch.clear();
    scratch.resize(cols, f32::NEG_INFINITY);
    col_max(tile, scratch);
    let mut sums = vec![0.0f32; cols];
    col_sum_exp(tile, scratch, inv_t, &mut sums);
    for ((out, &max), &sum) in cols_out.iter_mut().zip(scratch.iter()).zip(&sums) {
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

    #[test]
    fn exp_is_accurate() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            assert!(
                ((got - want) / want).abs() < 3e-7,
                "exp({x}) = {got}, want {want}"
            );
            x += 0.0137;
        }
        assert!(exp_f32(-1e9) < 1e-37);
        assert_eq!(exp_f32(0.0), 1.0);
    }

    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        let mut r = Rng::new(2);
        let v: Vec<f32> = (0..1037).map(|_| r.normal() as f32).collect();
        let m = max_impl(&v);
        assert_eq!(max_f32(&v), m);
        assert_eq!(
            sum_exp(&v, m, 37.0).to_bits(),
            sum_exp_impl(&v, m, 37.0).to_bits()
        );
        let (mut a, mut b) = (vec![0.0f32; 17], vec![0.0f32; 17]);
        col_sum_exp(&v[..17 * 61], &v[..17], 3.0, &mut a);
        col_sum_exp_impl(&v[..17 * 61], &v[..17], 3.0, &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn partials_merge_to_the_whole() {
        let mut r = Rng::new(5);
        let v: Vec<f32> = (0..1001).map(|_| r.normal() as f32 * 0.3).collect();
        let inv_t = 100.0f32;
        let whole = Partial::of(&v, inv_t).lse(inv_t);
        let mut acc = Partial::EMPTY;
        for c in v.chunks(77) {
            acc = acc.merge(Partial::of(c, inv_t), inv_t);
        }
        let want = lse_f64(&v, inv_t as f64);
        assert!((whole - want).abs() < 1e-4 * want.abs().max(1.0));
        assert!((acc.lse(inv_t) - want).abs() < 1e-4 * want.abs().max(1.0));
    }

    #[test]
    fn column_partials_match_scalar() {
        let mut r = Rng::new(9);
        let (rows, cols) = (37, 13);
        let tile: Vec<f32> = (0..rows * cols).map(|_| r.normal() as f32).collect();
        let inv_t = 10.0f32;
        let mut out = vec![Partial::EMPTY; cols];
        merge_col_partials(&tile[..20 * cols], cols, inv_t, &mut Vec::new(), &mut out);
        merge_col_partials(&tile[20 * cols..], cols, inv_t, &mut Vec::new(), &mut out);
        for (j, p) in out.iter().enumerate() {
            let col: Vec<f32> = (0..rows).map(|i| tile[i * cols + j]).collect();
            let want = lse_f64(&col, inv_t as f64);
            assert!((p.lse(inv_t) - want).abs() < 1e-4 * want.abs().max(1.0));
        }
    }
}
