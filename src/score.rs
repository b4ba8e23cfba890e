//! Stage 3, score: the four per-pair terms of spec section 2 for every row,
//! written to `terms.bin` (sorted order; easy, cross, label, between).
//!
//! `cross` needs each class's `n_k x n_k` image x caption similarities: they
//! are computed tile by tile with a GEMM, the threshold fused into the row
//! and column sums, and never held as a matrix. With `tau = none` the sums
//! are linear and `cross` is two dot products per row.

use std::ops::Range;
use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::error::Result;
use crate::kernels::dense::{dot_f64, dot_mixed, gemm_abt, normalised, sum_phi, threshold_sums};
use crate::store::{MapWriter, Store};

/// Number of `f64`s per row in `terms.bin`.
pub const TERMS: usize = 4;
pub const EASY: usize = 0;
pub const CROSS: usize = 1;
pub const LABEL: usize = 2;
pub const BETWEEN: usize = 3;

/// The threshold of the spec: `phi(s) = s if s > tau else 0`, or none.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Tau {
    Threshold(f64),
    None,
}

impl std::fmt::Display for Tau {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tau::Threshold(t) => write!(f, "{t}"),
            Tau::None => f.write_str("none"),
        }
    }
}

/// How to tile.
#[derive(Clone, Debug)]
pub struct ScoreOptions {
    pub tau: Tau,
    /// Rows per tile side.
    pub tile_rows: usize,
}

/// Groups of row stripes per class whose column sums are kept apart and
/// reduced in a fixed order: fixed (not the thread count) for determinism.
const STRIPE_GROUPS: usize = 8;
/// Rows per block for the row-wise terms.
const BLOCK_ROWS: usize = 1024;

/// Per-class sums of the normalised embeddings, in `f64`.
pub struct ClassSums {
    pub image: Vec<Vec<f64>>,
    pub text: Vec<Vec<f64>>,
}

/// Sums `u` and `v` over each class (sequentially inside a class, so the
/// result is deterministic).
pub fn class_sums(store: &Store) -> ClassSums {
    let d = store.d();
    let sums: Vec<(Vec<f64>, Vec<f64>)> = (0..store.meta.classes())
        .into_par_iter()
        .map(|k| {
            let r = store.meta.class_range(k);
            let (mut su, mut sv) = (vec![0.0; d], vec![0.0; d]);
            let (mut bu, mut bv) = (Vec::new(), Vec::new());
            let mut s = r.start;
            while s < r.end {
                let e = (s + BLOCK_ROWS).min(r.end);
                let u = store.image_rows(s..e, &mut bu);
                let v = store.text_rows(s..e, &mut bv);
                for (x, y) in u.chunks_exact(d).zip(v.chunks_exact(d)) {
                    for j in 0..d {
                        su[j] += x[j] as f64;
                        sv[j] += y[j] as f64;
                    }
                }
                s = e;
            }
            (su, sv)
        })
        .collect();
    let (image, text) = sums.into_iter().unzip();
    ClassSums { image, text }
}

/// Computes all terms and writes `terms.bin` in `dir`.
///
/// `class_emb` is `[K, d]`: the class prompt (or k-means centroid) `c_k`.
pub fn score(
    store: &Store,
    class_emb: &[f32],
    opts: &ScoreOptions,
    dir: &Path,
) -> Result<ScoreStats> {
    let d = store.d();
    let n = store.rows();
    let kk = store.meta.classes();
    let sums = class_sums(store);
    // Centres of the non-empty classes, for `between`.
    let active: Vec<usize> = (0..kk)
        .filter(|&k| !store.meta.class_range(k).is_empty())
        .collect();
    let mut slot = vec![usize::MAX; kk];
    for (i, &k) in active.iter().enumerate() {
        slot[k] = i;
    }
    let centre = |s: &Vec<Vec<f64>>| -> Vec<f32> {
        active
            .iter()
            .flat_map(|&k| normalised(&s[k]).into_iter().map(|x| x as f32))
            .collect()
    };
    let centre_img = centre(&sums.image);
    let centre_txt = centre(&sums.text);

    let mut out = MapWriter::create::<f64>(&dir.join("terms.bin"), n * TERMS)?;
    let mut stats = ScoreStats::default();
    {
        let terms = out.slice_mut::<f64>();
        let ctx_of = |k: usize| ClassCtx {
            store,
            range: store.meta.class_range(k),
            c_k: &class_emb[k * d..(k + 1) * d],
            centre_img: &centre_img,
            centre_txt: &centre_txt,
            own: slot[k],
            active: active.len(),
        };
        // Two phases, timed apart so a benchmark can report each kernel's
        // rate: the row-wise terms (one GEMM against the class centres),
        // then the cross term (tiles inside each class).
        let t = Instant::now();
        split_by_class(store, terms)
            .into_par_iter()
            .for_each(|(k, t)| {
                if !store.meta.class_range(k).is_empty() {
                    ctx_of(k).row_terms(t);
                }
            });
        stats.row_terms_seconds = t.elapsed().as_secs_f64();
        stats.between_flop = 4.0 * n as f64 * active.len() as f64 * d as f64;

        let t = Instant::now();
        split_by_class(store, terms)
            .into_par_iter()
            .for_each(|(k, t)| {
                let r = store.meta.class_range(k);
                if r.is_empty() {
                    return;
                }
                crate::progress::advance(r.len() as u64);
                let ctx = ctx_of(k);
                let cross = match opts.tau {
                    Tau::None => ctx.cross_linear(&sums.image[k], &sums.text[k]),
                    Tau::Threshold(tau) => ctx.cross_tiled(tau as f32, opts.tile_rows),
                };
                let inv_n = 1.0 / r.len() as f64;
                for (row, c) in t.chunks_exact_mut(TERMS).zip(cross) {
                    row[CROSS] = c * inv_n;
                }
            });
        stats.cross_seconds = t.elapsed().as_secs_f64();
        stats.cross_flop = (0..kk)
            .map(|k| {
                let nk = store.meta.class_range(k).len() as f64;
                match opts.tau {
                    Tau::None => 4.0 * nk * d as f64,
                    Tau::Threshold(_) => 2.0 * nk * nk * d as f64,
                }
            })
            .sum();
    }
    out.finish()?;
    Ok(stats)
}

/// Work and time of the score stage's two kernels.
#[derive(Clone, Copy, Debug, Default, Serialize, serde::Deserialize)]
pub struct ScoreStats {
    pub row_terms_seconds: f64,
    /// Floating-point operations of the `between` GEMM.
    pub between_flop: f64,
    pub cross_seconds: f64,
    /// Floating-point operations of the `cross` tiles (`2 n_k^2 d` a class),
    /// or of the linear form.
    pub cross_flop: f64,
}

/// The terms array cut into one mutable slice per class.
fn split_by_class<'a>(store: &Store, terms: &'a mut [f64]) -> Vec<(usize, &'a mut [f64])> {
    let mut per_class = Vec::with_capacity(store.meta.classes());
    let mut rest = terms;
    for k in 0..store.meta.classes() {
        let len = store.meta.class_range(k).len() * TERMS;
        let (head, tail) = rest.split_at_mut(len);
        per_class.push((k, head));
        rest = tail;
    }
    per_class
}

/// One stripe group's result: row sums of its stripes, and its column sums.
type GroupSums = (Vec<(usize, Vec<f64>)>, Vec<f64>);

struct ClassCtx<'a> {
    store: &'a Store,
    range: Range<usize>,
    c_k: &'a [f32],
    centre_img: &'a [f32],
    centre_txt: &'a [f32],
    /// This class's index among the active classes.
    own: usize,
    active: usize,
}

impl ClassCtx<'_> {
    /// easy, label and between for every row of the class.
    fn row_terms(&self, terms: &mut [f64]) {
        let d = self.store.d();
        let ka = self.active;
        let (mut bu, mut bv) = (Vec::new(), Vec::new());
        let (mut gu, mut gv) = (Vec::new(), Vec::new());
        let mut s = self.range.start;
        while s < self.range.end {
            let e = (s + BLOCK_ROWS).min(self.range.end);
            let u = self.store.image_rows(s..e, &mut bu);
            let v = self.store.text_rows(s..e, &mut bv);
            let rows = e - s;
            gu.resize(rows * ka, 0.0);
            gv.resize(rows * ka, 0.0);
            // <u_i, m^T_l> and <v_i, m^I_l> for every active class l.
            gemm_abt(u, self.centre_txt, d, &mut gu);
            gemm_abt(v, self.centre_img, d, &mut gv);
            for i in 0..rows {
                let (ui, vi) = (&u[i * d..(i + 1) * d], &v[i * d..(i + 1) * d]);
                let t = &mut terms[(s - self.range.start + i) * TERMS..][..TERMS];
                t[EASY] = dot_f64(ui, vi);
                t[LABEL] = dot_f64(vi, self.c_k);
                t[BETWEEN] = if ka > 1 {
                    let (a, b) = (&gu[i * ka..(i + 1) * ka], &gv[i * ka..(i + 1) * ka]);
                    let own = a[self.own].max(0.0) as f64 + b[self.own].max(0.0) as f64;
                    (sum_phi(a, Some(0.0)) + sum_phi(b, Some(0.0)) - own) / (ka - 1) as f64
                } else {
                    0.0
                };
            }
            s = e;
        }
    }

    /// `sum_j <u_i, v_j> + <u_j, v_i>` by the linear-time form.
    fn cross_linear(&self, su: &[f64], sv: &[f64]) -> Vec<f64> {
        let d = self.store.d();
        let (mut bu, mut bv) = (Vec::new(), Vec::new());
        let mut out = Vec::with_capacity(self.range.len());
        let mut s = self.range.start;
        while s < self.range.end {
            let e = (s + BLOCK_ROWS).min(self.range.end);
            let u = self.store.image_rows(s..e, &mut bu);
            let v = self.store.text_rows(s..e, &mut bv);
            for (ui, vi) in u.chunks_exact(d).zip(v.chunks_exact(d)) {
                out.push(dot_mixed(ui, sv) + dot_mixed(vi, su));
            }
            s = e;
        }
        out
    }

    /// `sum_j phi(<u_i, v_j>) + phi(<u_j, v_i>)`, tile by tile.
    ///
    /// Stripe `I` of image rows meets every stripe `J` of caption rows; its
    /// row sums complete the first half for rows `I`, its column sums add to
    /// the second half for rows `J`. Stripes are dealt to a fixed number of
    /// groups, each with its own column-sum vector.
    fn cross_tiled(&self, tau: f32, tile: usize) -> Vec<f64> {
        let n = self.range.len();
        let o = self.range.start;
        let d = self.store.d();
        let tile = tile.max(1);
        let stripes = n.div_ceil(tile);
        let groups = stripes.min(STRIPE_GROUPS);
        let stripe = |i: usize| (i * tile)..((i + 1) * tile).min(n);
        let parts: Vec<GroupSums> = (0..groups)
            .into_par_iter()
            .map(|g| {
                let mut cols = vec![0.0f64; n];
                let mut rows_out = Vec::new();
                let (mut bu, mut bv, mut sim, mut scratch) =
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for si in (g..stripes).step_by(groups) {
                    let ri = stripe(si);
                    let u = self.store.image_rows(o + ri.start..o + ri.end, &mut bu);
                    let mut rows = vec![0.0f64; ri.len()];
                    for sj in 0..stripes {
                        let rj = stripe(sj);
                        let v = self.store.text_rows(o + rj.start..o + rj.end, &mut bv);
                        sim.resize(ri.len() * rj.len(), 0.0);
                        gemm_abt(u, v, d, &mut sim);
                        threshold_sums(&sim, rj.len(), tau, &mut rows, &mut cols[rj], &mut scratch);
                    }
                    rows_out.push((si, rows));
                }
                (rows_out, cols)
            })
            .collect();
        let mut out = vec![0.0f64; n];
        for (rows_out, _) in &parts {
            for (si, rows) in rows_out {
                out[stripe(*si)].copy_from_slice(rows);
            }
        }
        for (_, cols) in &parts {
            for (o, c) in out.iter_mut().zip(cols) {
                *o += c;
            }
        }
        out
    }
}
