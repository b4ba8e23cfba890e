//! Cross-covariance preservation, the quantity ClipCov's criterion aims to
//! keep: `C = mean(u v^T)` over the subset against the full data, as the
//! relative Frobenius error `|C_S - C_V|_F / |C_V|_F`, globally and averaged
//! over latent classes; plus class coverage and the entropy of the picks
//! over classes.
//!
//! One pass over the store with `d x d` accumulators: each block of rows
//! adds `U_block^T V_block` (one GEMM, summed in `f32` within the block and
//! in `f64` across blocks). Work items are fixed chunks of each class and
//! are merged in class order, so the result does not depend on threads.

use rayon::prelude::*;
use serde::Serialize;

use crate::kernels::dense::gemm_atb_acc;
use crate::store::Store;

/// Rows of one GEMM block (summed in `f32` before the `f64` accumulator).
pub const BLOCK_ROWS: usize = 1024;
/// Rows of one parallel work item (a slice of one class).
const ITEM_ROWS: usize = 16 * BLOCK_ROWS;
/// Work items in flight at once: bounds memory to `2 d^2` `f64`s each.
const WINDOW_ITEMS: usize = 16;

/// The sum of `u v^T` over some rows, and how many.
#[derive(Clone, Debug)]
pub struct CrossCov {
    pub d: usize,
    /// `[d, d]` row-major: `sum[a * d + b] = sum_r u_r[a] v_r[b]`.
    pub sum: Vec<f64>,
    pub count: u64,
}

impl CrossCov {
    pub fn new(d: usize) -> Self {
        CrossCov {
            d,
            sum: vec![0.0; d * d],
            count: 0,
        }
    }

    /// Adds the rows of `u, v: [rows, d]`, `BLOCK_ROWS` at a time.
    pub fn add_rows(&mut self, u: &[f32], v: &[f32], scratch: &mut Vec<f32>) {
        let d = self.d;
        scratch.clear();
        scratch.resize(d * d, 0.0);
        for (bu, bv) in u.chunks(BLOCK_ROWS * d).zip(v.chunks(BLOCK_ROWS * d)) {
            scratch.fill(0.0);
            gemm_atb_acc(bu, d, bv, d, scratch);
            for (s, x) in self.sum.iter_mut().zip(scratch.iter()) {
                *s += *x as f64;
            }
            self.count += (bu.len() / d) as u64;
        }
    }

    pub fn add(&mut self, other: &CrossCov) {
        for (s, x) in self.sum.iter_mut().zip(&other.sum) {
            *s += x;
        }
        self.count += other.count;
    }
}

/// `|C_S - C_V|_F / |C_V|_F` with `C = sum / count`; an empty subset has
/// `C_S = 0` (error 1). `None` when the full data is empty or `C_V = 0`.
pub fn rel_frobenius(subset: &CrossCov, full: &CrossCov) -> Option<f64> {
    if full.count == 0 {
        return None;
    }
    let nv = full.count as f64;
    let ns = subset.count.max(1) as f64;
    let (mut diff, mut base) = (0.0f64, 0.0f64);
    for (s, v) in subset.sum.iter().zip(&full.sum) {
        let (cs, cv) = (s / ns, v / nv);
        diff += (cs - cv) * (cs - cv);
        base += cv * cv;
    }
    (base > 0.0).then(|| (diff / base).sqrt())
}

/// The covariance metrics of one subset.
#[derive(Clone, Debug, Serialize)]
pub struct CovMetrics {
    /// Relative Frobenius error of the global `C`.
    pub cov_rel_error: f64,
    /// The same per latent class, averaged over the classes that hold rows
    /// (a class with no picks counts as error 1).
    pub cov_rel_error_per_class: f64,
    /// Latent classes with at least one pick.
    pub classes_covered: usize,
    /// Entropy (natural log) of the picks' distribution over classes.
    pub class_entropy: f64,
}

/// `-sum p_k ln p_k` of `counts` normalised.
pub fn entropy(counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / total as f64;
            -p * p.ln()
        })
        .sum()
}

/// The covariance metrics of the subset at store positions `subset`
/// (sorted, distinct) against the whole store, in one pass; also the
/// subset's summed cross-covariance.
pub fn covariance_metrics(store: &Store, subset: &[usize]) -> (CovMetrics, CrossCov) {
    debug_assert!(subset.windows(2).all(|w| w[0] < w[1]));
    let d = store.d();
    let meta = &store.meta;
    let order = store.order.as_slice();
    // (class, sorted positions) of each work item, in class order.
    let mut items = Vec::new();
    for k in 0..meta.classes() {
        let r = meta.class_range(k);
        let mut a = r.start;
        while a < r.end {
            let b = (a + ITEM_ROWS).min(r.end);
            items.push((k, a..b));
            a = b;
        }
    }
    let mut full_all = CrossCov::new(d);
    let mut sub_all = CrossCov::new(d);
    let mut picks = vec![0u64; meta.classes()];
    let mut class_errors = Vec::new();
    let mut current: Option<(usize, CrossCov, CrossCov)> = None;
    let finish = |c: (usize, CrossCov, CrossCov), errors: &mut Vec<f64>| {
        if let Some(e) = rel_frobenius(&c.2, &c.1) {
            errors.push(e);
        }
    };
    for window in items.chunks(WINDOW_ITEMS) {
        let parts: Vec<(usize, CrossCov, CrossCov)> = window
            .par_iter()
            .map(|(k, range)| {
                let (mut ub, mut vb, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
                let mut full = CrossCov::new(d);
                let u = store.image_rows(range.clone(), &mut ub);
                let v = store.text_rows(range.clone(), &mut vb);
                full.add_rows(u, v, &mut scratch);
                let lo = subset.partition_point(|&p| p < range.start);
                let hi = subset.partition_point(|&p| p < range.end);
                let rows: Vec<u64> = subset[lo..hi].iter().map(|&p| order[p]).collect();
                let mut sub = CrossCov::new(d);
                let u = store.emb.image_gather(&rows, &mut ub);
                let v = store.emb.text_gather(&rows, &mut vb);
                sub.add_rows(u, v, &mut scratch);
                (*k, full, sub)
            })
            .collect();
        for (k, full, sub) in parts {
            full_all.add(&full);
            sub_all.add(&sub);
            picks[k] += sub.count;
            match &mut current {
                Some((ck, f, s)) if *ck == k => {
                    f.add(&full);
                    s.add(&sub);
                }
                _ => {
                    if let Some(c) = current.take() {
                        finish(c, &mut class_errors);
                    }
                    current = Some((k, full, sub));
                }
            }
        }
    }
    if let Some(c) = current.take() {
        finish(c, &mut class_errors);
    }
    let m = CovMetrics {
        cov_rel_error: rel_frobenius(&sub_all, &full_all).unwrap_or(f64::NAN),
        cov_rel_error_per_class: if class_errors.is_empty() {
            f64::NAN
        } else {
            class_errors.iter().sum::<f64>() / class_errors.len() as f64
        },
        classes_covered: picks.iter().filter(|&&c| c > 0).count(),
        class_entropy: entropy(&picks),
    };
    (m, sub_all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn cross_cov_sums_u_v_transposed() {
        let (n, d) = (2500, 3);
        let mut r = Rng::new(1);
        let u: Vec<f32> = (0..n * d).map(|_| r.normal() as f32).collect();
        let v: Vec<f32> = (0..n * d).map(|_| r.normal() as f32).collect();
        let mut c = CrossCov::new(d);
        c.add_rows(&u, &v, &mut Vec::new());
        assert_eq!(c.count, n as u64);
        for a in 0..d {
            for b in 0..d {
                let want: f64 = (0..n)
                    .map(|i| u[i * d + a] as f64 * v[i * d + b] as f64)
                    .sum();
                assert!((c.sum[a * d + b] - want).abs() < 1e-3, "{a},{b}");
            }
        }
        assert_eq!(rel_frobenius(&c, &c), Some(0.0));
        assert_eq!(rel_frobenius(&CrossCov::new(d), &c), Some(1.0));
    }

    #[test]
    fn entropy_of_counts() {
        assert_eq!(entropy(&[5, 0]), 0.0);
        assert!((entropy(&[1, 1, 0]) - 2f64.ln()).abs() < 1e-12);
    }
}
