//! Score after an append: the terms of a store that grew by new rows,
//! from the terms before the append, doing only the work the new rows
//! cause (README, "Nightly runs").
//!
//! Per class `k`, with the rows staged before (`A`) and the new ones (`B`):
//! - `cross`: an old row's `n_k cross_i` gains its pair terms with the new
//!   rows (tiles `A x B` in both orders), a new row's is summed over the
//!   whole class (the same tiles' column sums, and `B x B`); every row is
//!   then divided by the new `n_k`. The linear form (`tau none`) and
//!   classes `--cross-sample` estimates are scored again in full: their
//!   cost is linear, and a sample depends on `n_k`.
//! - `easy` and `label`: computed for the new rows; old rows keep theirs.
//! - `between`: the centres of the touched classes moved. Old rows trade
//!   those classes' old terms for the new ones; when more than half the
//!   centres moved, or the number of non-empty classes changed, every row
//!   is computed again.
//!
//! The GEMM gives each similarity the same bits in any tile shape
//! (`kernels::dense::gemm_abt`), so the terms differ from a full score's
//! only by the order of the `f64` sums.

use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::dense::{gemm_abt, phi, threshold_sums};
use crate::stages::score::{
    class_cross, class_row_terms, class_sum, cross_flop, sample_cap, set_cross, split_by_class,
    write_sums, Centres, ClassSums, CrossSample, CrossSampleReport, RescoreReport, SampledClass,
    ScoreOptions, ScoreStats, Tau, BETWEEN, BLOCK_ROWS, CROSS, MIN_AUTO_SAMPLE, TERMS,
};
use crate::store::{files, ClassRows, IndexedRows, MapWriter, Store, StoreClass, StoreMeta};

/// The store and its scores before the append.
pub struct Previous<'a> {
    pub meta: &'a StoreMeta,
    /// The sorted order before the append (`order.prev.bin`).
    pub order: &'a [u64],
    /// `terms.bin` before the append.
    pub terms: &'a [f64],
    pub sums: ClassSums,
    pub stats: ScoreStats,
}

/// One class's rows: local indices of the old rows (with their sorted
/// positions before the append) and of the new rows.
#[derive(Default)]
struct ClassSplit {
    old: Vec<usize>,
    old_pos: Vec<usize>,
    new: Vec<usize>,
}

/// Scores the grown `store` from `prev` and writes `terms.bin` and
/// `sums.bin` in `dir`.
pub fn rescore(
    store: &Store,
    class_emb: &[f32],
    prev: &Previous,
    opts: &ScoreOptions,
    dir: &Path,
) -> Result<ScoreStats> {
    let (d, n, kk) = (store.d(), store.rows(), store.meta.classes());
    if prev.meta.classes() != kk || prev.meta.d != d || prev.terms.len() != prev.order.len() * TERMS
    {
        return Err(Error::Internal(
            "the scores before the append do not fit the store".into(),
        ));
    }
    let splits = split_classes(store, prev);
    let touched: Vec<usize> = (0..kk).filter(|&k| !splits[k].new.is_empty()).collect();
    let view = |k: usize| StoreClass {
        store,
        range: store.meta.class_range(k),
    };
    let t = Instant::now();
    // Sums of the touched classes again, in row order as a full score sums.
    let mut sums = ClassSums {
        image: prev.sums.image.clone(),
        text: prev.sums.text.clone(),
    };
    let fresh: Vec<(Vec<f64>, Vec<f64>)> =
        touched.par_iter().map(|&k| class_sum(&view(k))).collect();
    for (&k, (u, v)) in touched.iter().zip(fresh) {
        sums.image[k] = u;
        sums.text[k] = v;
    }
    let sizes: Vec<usize> = (0..kk).map(|k| store.meta.class_range(k).len()).collect();
    let old_sizes: Vec<usize> = (0..kk).map(|k| prev.meta.class_range(k).len()).collect();
    let centres = Centres::new(&sums, &sizes);
    let before = Centres::new(&prev.sums, &old_sizes);
    let all_rows = centres.active != before.active || 2 * touched.len() > centres.active;

    // Only without `all_rows` is every moved class active before and now.
    let moved = (!all_rows).then(|| MovedCentres::new(&touched, &centres, &before, d));
    let mut out = MapWriter::create::<f64>(&dir.join(files::TERMS), n * TERMS)?;
    let terms = out.slice_mut::<f64>();
    split_by_class(store, terms)
        .into_par_iter()
        .for_each(|(k, t)| {
            let s = &splits[k];
            for (&i, &q) in s.old.iter().zip(&s.old_pos) {
                t[i * TERMS..(i + 1) * TERMS]
                    .copy_from_slice(&prev.terms[q * TERMS..(q + 1) * TERMS]);
            }
            let c_k = &class_emb[k * d..(k + 1) * d];
            if all_rows {
                if !s.old.is_empty() || !s.new.is_empty() {
                    class_row_terms(&view(k), c_k, &centres, k, t);
                }
                return;
            }
            if !s.new.is_empty() {
                let rows = IndexedRows {
                    rows: &view(k),
                    idx: &s.new,
                };
                let mut fresh = vec![0.0; s.new.len() * TERMS];
                class_row_terms(&rows, c_k, &centres, k, &mut fresh);
                for (r, &i) in s.new.iter().enumerate() {
                    t[i * TERMS..(i + 1) * TERMS]
                        .copy_from_slice(&fresh[r * TERMS..(r + 1) * TERMS]);
                }
            }
            let own = touched.iter().position(|&l| l == k);
            let others_moved = touched.len() - own.map_or(0, |_| 1);
            if let Some(moved) = moved.as_ref().filter(|_| centres.active > 1) {
                if others_moved > 0 && !s.old.is_empty() {
                    update_between(&view(k), &s.old, moved, own, t);
                }
            }
        });
    let row_terms_seconds = t.elapsed().as_secs_f64();
    let new_rows: usize = splits.iter().map(|s| s.new.len()).sum();
    let between_flop = if all_rows {
        4.0 * (n * centres.active * d) as f64
    } else {
        let moved_pairs: usize = (0..kk)
            .map(|k| {
                // Old and new centres of every moved class, where another moved.
                let others = touched.iter().any(|&l| l != k);
                splits[k].old.len() * 2 * if others { touched.len() } else { 0 }
            })
            .sum();
        4.0 * ((new_rows * centres.active + moved_pairs) * d) as f64
    };

    // cross, class by class.
    let t = Instant::now();
    let cap = sample_cap(opts.memory_limit_bytes, n, d);
    let sampled_before: Vec<SampledClass> = prev
        .stats
        .cross_sample
        .as_ref()
        .map_or(Vec::new(), |r| r.per_class.clone());
    let per_class: Vec<(f64, Option<SampledClass>)> = split_by_class(store, terms)
        .into_par_iter()
        .map(|(k, t)| {
            let s = &splits[k];
            let nk = sizes[k];
            if s.new.is_empty() {
                // Untouched: its cross and its sample are as before.
                let kept = sampled_before.iter().find(|c| c.class == k).cloned();
                return (0.0, kept);
            }
            crate::progress::advance(nk as u64);
            let in_full = match (opts.tau, opts.cross) {
                (Tau::None, _) => true,
                (_, CrossSample::Exact) => false,
                (_, CrossSample::Fixed(m)) => nk > m,
                (_, CrossSample::Auto { .. }) => nk > MIN_AUTO_SAMPLE,
            };
            if in_full {
                let sums_k = (&sums.image[k][..], &sums.text[k][..]);
                let (cross, report) = class_cross(&view(k), sums_k, k, opts, cap);
                set_cross(t, &cross);
                let flop = match (&report, opts.tau) {
                    (_, Tau::None) => 4.0 * (nk * d) as f64,
                    (Some(r), _) => 4.0 * (nk * r.m * d) as f64,
                    (None, _) => 2.0 * (nk * nk * d) as f64,
                };
                return (flop, report);
            }
            let tau = opts.tau.as_f32().expect("a threshold");
            let (add_old, sum_new) = cross_increment(&view(k), &s.old, &s.new, tau, opts.tile_rows);
            let (old_n, inv_n) = (s.old.len() as f64, 1.0 / nk as f64);
            for (&i, a) in s.old.iter().zip(&add_old) {
                let c = &mut t[i * TERMS + CROSS];
                *c = (*c * old_n + a) * inv_n;
            }
            for (&i, c) in s.new.iter().zip(&sum_new) {
                t[i * TERMS + CROSS] = c * inv_n;
            }
            let (a, b) = (s.old.len() as f64, s.new.len() as f64);
            (2.0 * (2.0 * a * b + b * b) * d as f64, None)
        })
        .collect();
    let cross_seconds = t.elapsed().as_secs_f64();
    let cross_flop_done: f64 = per_class.iter().map(|(f, _)| f).sum();
    let sampled: Vec<SampledClass> = per_class.into_iter().filter_map(|(_, s)| s).collect();
    out.finish()?;
    write_sums(dir, &sums)?;
    let cross = opts.cross.describe(opts.tau, opts.seed);
    Ok(ScoreStats {
        cross_sample: (cross != "exact").then(|| CrossSampleReport::new(&sampled, kk, opts.seed)),
        cross,
        row_terms_seconds,
        between_flop,
        cross_seconds,
        cross_flop: cross_flop_done,
        incremental: Some(RescoreReport {
            rows_added: new_rows as u64,
            classes_touched: touched.len(),
            between: if all_rows {
                "computed again for every row".into()
            } else {
                format!(
                    "updated for the {} classes whose centres moved",
                    touched.len()
                )
            },
            cross_flop_full: cross_flop(store, opts.tau, &sampled),
        }),
        full_reason: None,
    })
}

/// Each class's old and new rows, by matching file rows with the sorted
/// order before the append.
fn split_classes(store: &Store, prev: &Previous) -> Vec<ClassSplit> {
    let len = prev.order.iter().max().map_or(0, |&m| m as usize + 1);
    let mut old_pos = vec![usize::MAX; len];
    for (q, &f) in prev.order.iter().enumerate() {
        old_pos[f as usize] = q;
    }
    let order = store.order.as_slice();
    (0..store.meta.classes())
        .into_par_iter()
        .map(|k| {
            let mut s = ClassSplit::default();
            for (i, p) in store.meta.class_range(k).enumerate() {
                match old_pos.get(order[p] as usize) {
                    Some(&q) if q != usize::MAX => {
                        s.old.push(i);
                        s.old_pos.push(q);
                    }
                    _ => s.new.push(i),
                }
            }
            s
        })
        .collect()
}

/// The pair sums the new rows `new` add to a class whose old rows are
/// `old` (local indices): for each old row, the sum over new rows `j` of
/// `phi(<u_i, v_j>) + phi(<u_j, v_i>)`; for each new row, the same sum
/// over the whole class. Tiles of `tile` rows; stripes of old rows in
/// parallel, their column sums reduced in stripe order.
fn cross_increment(
    rows: &dyn ClassRows,
    old: &[usize],
    new: &[usize],
    tau: f32,
    tile: usize,
) -> (Vec<f64>, Vec<f64>) {
    let (d, tile) = (rows.d(), tile.max(1));
    let mut add_old = vec![0.0f64; old.len()];
    let mut sum_new = vec![0.0f64; new.len()];
    for (bs, b_idx) in new.chunks(tile).enumerate() {
        let b0 = bs * tile;
        let (mut b1, mut b2) = (Vec::new(), Vec::new());
        let ub = rows.image_at(b_idx, &mut b1);
        let vb = rows.text_at(b_idx, &mut b2);
        let parts: Vec<(Vec<f64>, Vec<f64>)> = old
            .par_chunks(tile)
            .map(|a_idx| {
                let (mut b3, mut b4) = (Vec::new(), Vec::new());
                let ua = rows.image_at(a_idx, &mut b3);
                let va = rows.text_at(a_idx, &mut b4);
                let mut sim = vec![0.0f32; a_idx.len() * b_idx.len()];
                let (mut row_sums, mut col_sums) =
                    (vec![0.0f64; a_idx.len()], vec![0.0f64; b_idx.len()]);
                // <u_i, v_j>: old i's first half, new j's second half.
                gemm_abt(ua, vb, d, &mut sim);
                threshold_sums(&sim, b_idx.len(), tau, &mut row_sums, &mut col_sums);
                // <v_i, u_j> = <u_j, v_i>: old i's second half, new j's first.
                gemm_abt(va, ub, d, &mut sim);
                threshold_sums(&sim, b_idx.len(), tau, &mut row_sums, &mut col_sums);
                (row_sums, col_sums)
            })
            .collect();
        for (s, (row_sums, col_sums)) in parts.into_iter().enumerate() {
            for (o, r) in add_old[s * tile..].iter_mut().zip(row_sums) {
                *o += r;
            }
            for (o, c) in sum_new[b0..].iter_mut().zip(col_sums) {
                *o += c;
            }
        }
        // New x new: every ordered pair, both halves.
        let mut own = vec![0.0f64; b_idx.len()];
        for (cs, c_idx) in new.chunks(tile).enumerate() {
            let mut b3 = Vec::new();
            let vc = rows.text_at(c_idx, &mut b3);
            let mut sim = vec![0.0f32; b_idx.len() * c_idx.len()];
            gemm_abt(ub, vc, d, &mut sim);
            let c0 = cs * tile;
            threshold_sums(
                &sim,
                c_idx.len(),
                tau,
                &mut own,
                &mut sum_new[c0..c0 + c_idx.len()],
            );
        }
        for (o, r) in sum_new[b0..].iter_mut().zip(own) {
            *o += r;
        }
    }
    (add_old, sum_new)
}

/// The centres of the classes whose rows changed, now and before, stacked
/// once for every class's [`update_between`]: `[now; before]`, `[2m, d]`.
struct MovedCentres {
    text: Vec<f32>,
    image: Vec<f32>,
    /// `m`, the moved classes; `K' - 1`, the other classes of a row.
    m: usize,
    others: f64,
}

impl MovedCentres {
    fn new(moved: &[usize], now: &Centres, before: &Centres, d: usize) -> Self {
        let stack = |a: &[f32], b: &[f32]| -> Vec<f32> {
            let pick =
                |c: &[f32], slot: &[usize], l: usize| c[slot[l] * d..(slot[l] + 1) * d].to_vec();
            let mut out: Vec<f32> = moved.iter().flat_map(|&l| pick(a, &now.slot, l)).collect();
            out.extend(moved.iter().flat_map(|&l| pick(b, &before.slot, l)));
            out
        };
        MovedCentres {
            text: stack(&now.text, &before.text),
            image: stack(&now.image, &before.image),
            m: moved.len(),
            others: now.active.saturating_sub(1) as f64,
        }
    }
}

/// `between` of a class's old rows `old` after the centres in `moved`
/// moved: each row trades those classes' terms at the old centres for the
/// terms at the new ones, except its own class's (`own`, its index in
/// `moved`), which `between` leaves out.
fn update_between(
    rows: &dyn ClassRows,
    old: &[usize],
    moved: &MovedCentres,
    own: Option<usize>,
    terms: &mut [f64],
) {
    let (d, m) = (rows.d(), moved.m);
    let (mut bu, mut bv) = (Vec::new(), Vec::new());
    let (mut gu, mut gv) = (Vec::new(), Vec::new());
    let term = |x: f32| phi(x, Some(0.0)) as f64;
    for block in old.chunks(BLOCK_ROWS) {
        let u = rows.image_at(block, &mut bu);
        let v = rows.text_at(block, &mut bv);
        gu.resize(block.len() * 2 * m, 0.0);
        gv.resize(block.len() * 2 * m, 0.0);
        gemm_abt(u, &moved.text, d, &mut gu);
        gemm_abt(v, &moved.image, d, &mut gv);
        for (r, &i) in block.iter().enumerate() {
            let (a, b) = (
                &gu[r * 2 * m..(r + 1) * 2 * m],
                &gv[r * 2 * m..(r + 1) * 2 * m],
            );
            let sum = |js: std::ops::Range<usize>| -> f64 {
                js.filter(|&j| Some(j % m) != own)
                    .map(|j| term(a[j]) + term(b[j]))
                    .sum()
            };
            let t = &mut terms[i * TERMS + BETWEEN];
            *t = (*t * moved.others - sum(m..2 * m) + sum(0..m)) / moved.others;
        }
    }
}
