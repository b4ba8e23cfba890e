//! c_rho (CLIP adaptation of RHO-LOSS, Mindermann et al. 2022): keep the
//! top `B` by the reducible loss `L_learner_i - L_reference_i`. `--data`
//! holds the stronger reference model's embeddings, `--learner-data` the
//! weaker learner's, of the same pairs (same ids in the same order).
//!
//! `L_i = (-log softmax_i {<u_i, v_j>/T} - log softmax_i {<u_j, v_i>/T}) / 2`
//! with `j` ranging over `i` and one fixed, seeded sample `S` of `M` rows
//! (drawn in canonical row order, the same rows for both models); when `i`
//! is itself in `S` it is counted once.

use rayon::prelude::*;

use super::context::gather;
use super::random::draw;
use super::{budget_rows, top, Ctx, Method, MethodOptions, Pick, Selection};
use crate::error::{Error, Result};
use crate::formats::dataset::SourceFile;
use crate::kernels::dense::{dot_f64, gemm_abt};
use crate::kernels::lse::Partial;
use crate::stages::ingest::Ingested;
use crate::store::Store;

/// Stream of the sample `S`.
const STREAM_SAMPLE: u64 = 0x5248_4F53;

/// The learner's store, matched row for row to the reference store.
pub struct Learner<'a> {
    pub store: &'a Store,
    /// Learner store position of each reference store position.
    pub pos: Vec<usize>,
}

/// Where canonical row `row` of a dataset is: its file and row in the file.
fn locate<'a>(files: &'a [SourceFile], ing: &Ingested, row: u64) -> (&'a SourceFile, u64) {
    let (i, in_file) = ing.starts().locate(row).unwrap_or((0, row));
    (&files[i], in_file)
}

impl<'a> Learner<'a> {
    /// Matches the learner store to the reference rows, checking that both
    /// datasets hold the same ids in the same order.
    ///
    /// # Errors
    /// A data error naming the learner file, row and id column at the first
    /// difference, or the learner folder when the row counts differ.
    pub fn match_rows(
        ctx: &Ctx,
        reference: &Ingested,
        store: &'a Store,
        files: &[SourceFile],
        ing: &Ingested,
        id_column: &str,
    ) -> Result<Self> {
        let hint = "c_rho needs the learner model's embeddings of the same pairs as --data, with the same ids in the same order";
        if ing.rows_read != reference.rows_read {
            let root = files[0].path.parent().unwrap_or(&files[0].path);
            return Err(Error::file(
                root,
                format!(
                    "the learner data has {} rows but --data has {}",
                    ing.rows_read, reference.rows_read
                ),
            )
            .with_hint(hint));
        }
        // A single-class store keeps canonical order, so rows ascend.
        let lrows: Vec<u64> = (0..store.rows()).map(|q| store.row_index(q)).collect();
        let mut pos = Vec::with_capacity(ctx.n());
        for p in 0..ctx.n() {
            let row = ctx.rows[p];
            let at = |problem: String| {
                let (file, in_file) = locate(files, ing, row);
                Error::at(&file.path, in_file, id_column, problem).with_hint(hint)
            };
            let q = lrows.binary_search(&row).map_err(|_| {
                at(format!(
                    "this row (dataset row {row}) was skipped in the learner data but is used in --data"
                ))
            })?;
            let (want, got) = (ctx.store.id(p), store.id(q));
            if want != got {
                return Err(at(format!(
                    "id '{got}' differs from '{want}' at the same row (dataset row {row}) of --data"
                )));
            }
            pos.push(q);
        }
        Ok(Learner { store, pos })
    }
}

/// The sample `S`: `m` distinct indices into the rows in canonical order,
/// ascending (all rows when `m >= n`).
pub fn sample(n: usize, m: usize, seed: u64) -> Vec<usize> {
    let mut s = draw(n, m.min(n), seed, STREAM_SAMPLE);
    s.sort_unstable();
    s
}

/// `L_i` of every row, in canonical order, on `store` whose positions for
/// the rows in canonical order are `positions` (and for `S`, `sample`).
/// `in_sample[r]` says whether canonical rank `r` is in `S`. Blocks follow
/// canonical order, so results do not depend on how the store is sorted.
fn losses(
    store: &Store,
    positions: &[usize],
    sample: &[usize],
    in_sample: &[bool],
    temperature: f64,
    tile: usize,
) -> Vec<f64> {
    let d = store.d();
    let inv_t = (1.0 / temperature) as f32;
    let (mut su, mut sv) = (Vec::new(), Vec::new());
    gather(store, false, sample, &mut su);
    gather(store, true, sample, &mut sv);
    let m = sample.len();
    let mut out = vec![0.0f64; positions.len()];
    out.par_chunks_mut(tile).enumerate().for_each_init(
        || (Vec::new(), Vec::new(), Vec::new(), Vec::new()),
        |(u, v, a, b), (blk, out)| {
            let start = blk * tile;
            let pos = &positions[start..start + out.len()];
            gather(store, false, pos, u);
            gather(store, true, pos, v);
            // GEMM overwrites the whole buffer: no need to zero it again.
            a.resize(out.len() * m, 0.0);
            b.resize(out.len() * m, 0.0);
            gemm_abt(u, &sv, d, a); // <u_i, v_j>
            gemm_abt(v, &su, d, b); // <u_j, v_i>
            for (i, o) in out.iter_mut().enumerate() {
                let own = dot_f64(&u[i * d..(i + 1) * d], &v[i * d..(i + 1) * d]);
                let me = Partial {
                    max: own as f32,
                    sum: 1.0,
                };
                let mut rows = Partial::of(&a[i * m..(i + 1) * m], inv_t);
                let mut cols = Partial::of(&b[i * m..(i + 1) * m], inv_t);
                if !in_sample[start + i] {
                    rows = rows.merge(me, inv_t);
                    cols = cols.merge(me, inv_t);
                }
                let own_t = own * inv_t as f64;
                *o = ((rows.lse(inv_t) - own_t) + (cols.lse(inv_t) - own_t)) / 2.0;
            }
        },
    );
    out
}

pub fn run(ctx: &Ctx, learner: &Learner, opts: &MethodOptions) -> Result<Selection> {
    let n = ctx.n();
    let b = budget_rows(Method::CRho, opts, n)?;
    let s = sample(n, opts.rho_sample, opts.seed);
    let mut in_sample = vec![false; n];
    for &r in &s {
        in_sample[r] = true;
    }
    let tile = ctx.tile_rows.min(1024);
    let t = opts.temperature;
    let to_ref = |ranks: &[usize]| -> Vec<usize> { ranks.iter().map(|&r| ctx.by_row[r]).collect() };
    let to_learner = |ranks: &[usize]| -> Vec<usize> {
        ranks.iter().map(|&r| learner.pos[ctx.by_row[r]]).collect()
    };
    let all: Vec<usize> = (0..n).collect();
    let reference = ctx.to_positions(&losses(
        ctx.store,
        &to_ref(&all),
        &to_ref(&s),
        &in_sample,
        t,
        tile,
    ));
    let learner_loss = ctx.to_positions(&losses(
        learner.store,
        &to_learner(&all),
        &to_learner(&s),
        &in_sample,
        t,
        tile,
    ));
    let reducible: Vec<f64> = learner_loss
        .iter()
        .zip(&reference)
        .map(|(l, r)| l - r)
        .collect();
    let picks = top(ctx, (0..n).collect(), |p| reducible[p], b)
        .into_iter()
        .map(|pos| Pick {
            pos,
            class: None,
            score: reducible[pos],
            terms: vec![learner_loss[pos], reference[pos]],
        })
        .collect();
    Ok(
        Selection::new(Method::CRho, picks, vec!["learner_loss", "reference_loss"])
            .with_report("sample", s.len())
            .with_report("temperature", t),
    )
}
