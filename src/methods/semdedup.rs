//! semdedup (Abbas et al. 2023): spherical k-means; inside each cluster,
//! rows in "keep hard" order (descending `1 - <u, c/|c|>`, ties by row);
//! `m_j = max <u_i, u_j>` over the rows ranked before `j` in its cluster
//! (`-inf` for the first). The reference code removes `j` when
//! `m_j > 1 - eps` whether or not `i` itself was removed, so `m_j` does not
//! depend on `eps` and one pass serves every `eps`.
//!
//! The triangular all-pairs maximum is computed in `T x T` GEMM tiles of
//! each cluster's rows (a cluster may hold millions of rows); each
//! `(cluster, row tile)` is one task. `m_j` and its argmax are written for
//! every row to `OUT/semdedup/neighbours.parquet`, so that any `eps` can be
//! applied later without recomputing.

use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{Float64Builder, Int32Builder, UInt64Builder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use rayon::prelude::*;

use super::{budget_rows, top, Clusters, Ctx, Method, MethodOptions, Pick, Selection};
use crate::error::{Error, IoContext, Result};
use crate::formats::parquet_write::{write_batches, BATCH_ROWS};
use crate::io::written::record;
use crate::kernels::dense::gemm_abt;

/// No earlier row in the cluster.
pub const NONE: usize = usize::MAX;

/// Each cluster's store positions in "keep hard" order.
pub fn hard_order(ctx: &Ctx, cl: &Clusters) -> Vec<Vec<usize>> {
    let mut order: Vec<Vec<usize>> = vec![Vec::new(); cl.k];
    for p in 0..ctx.n() {
        order[cl.labels[p] as usize].push(p);
    }
    order.par_iter_mut().for_each(|o| {
        o.sort_unstable_by(|&a, &b| {
            cl.distance[b]
                .total_cmp(&cl.distance[a])
                .then(ctx.rows[a].cmp(&ctx.rows[b]))
        })
    });
    order
}

/// `m_j` and its argmax (a store position, or [`NONE`]) for every store
/// position, given each cluster's order. Tiles of `tile` rows; ties between
/// equal similarities go to the smaller canonical row.
pub fn max_sims(ctx: &Ctx, order: &[Vec<usize>], tile: usize) -> (Vec<f32>, Vec<usize>) {
    let d = ctx.d();
    let tasks: Vec<(usize, usize)> = order
        .iter()
        .enumerate()
        .flat_map(|(c, o)| (0..o.len().div_ceil(tile)).map(move |jb| (c, jb)))
        .collect();
    let results: Vec<Vec<(f32, usize)>> = tasks
        .par_iter()
        .map_init(
            || (Vec::new(), Vec::new(), Vec::new()),
            |(uj, ui, sims), &(c, jb)| {
                let o = &order[c];
                let (j0, j1) = (jb * tile, ((jb + 1) * tile).min(o.len()));
                let js = &o[j0..j1];
                ctx.gather(false, js, uj);
                let mut best = vec![(f32::NEG_INFINITY, NONE); js.len()];
                for ib in 0..=jb {
                    let is = &o[ib * tile..((ib + 1) * tile).min(j1)];
                    let u_i: &[f32] = if ib == jb {
                        uj
                    } else {
                        ctx.gather(false, is, ui);
                        ui
                    };
                    // GEMM overwrites the whole buffer: no need to zero it again.
                    sims.resize(js.len() * is.len(), 0.0f32);
                    gemm_abt(uj, u_i, d, sims);
                    for (jl, row) in sims.chunks_exact(is.len()).enumerate() {
                        // Only rows ranked before j count.
                        let before = if ib == jb { jl } else { is.len() };
                        let (m, arg) = &mut best[jl];
                        for (il, &s) in row[..before].iter().enumerate() {
                            if s > *m || (s == *m && ctx.rows[is[il]] < ctx.rows[*arg]) {
                                *m = s;
                                *arg = is[il];
                            }
                        }
                    }
                }
                best
            },
        )
        .collect();
    let mut m = vec![f32::NEG_INFINITY; ctx.n()];
    let mut arg = vec![NONE; ctx.n()];
    for (&(c, jb), r) in tasks.iter().zip(results) {
        for (&p, (s, a)) in order[c][jb * tile..].iter().zip(r) {
            m[p] = s;
            arg[p] = a;
        }
    }
    (m, arg)
}

/// The `eps` whose rule `m_j <= 1 - eps` keeps exactly the `B` smallest
/// `m_j`: the cut sits midway between the largest kept and the smallest
/// dropped `m_j`, so rounding in a re-computation does not move a row
/// across it. When the boundary is a tie, `1 - eps` is the tied value and
/// the rule keeps more than `B` (the budget breaks the tie by row). `None`
/// when no finite `eps` exists (the cut falls among the `-inf` of the
/// clusters' first rows).
fn eps_for(kept_max: Option<f64>, dropped_min: Option<f64>) -> Option<f64> {
    let t = match (kept_max, dropped_min) {
        (None, Some(h)) => h - 1.0,
        (Some(l), None) => l,
        (Some(l), Some(h)) if l < h && l.is_finite() => l + (h - l) / 2.0,
        (Some(l), Some(h)) if l < h => h - 1.0,
        (Some(l), Some(_)) => l,
        (None, None) => return None,
    };
    let eps = 1.0 - t;
    eps.is_finite().then_some(eps)
}

pub fn run(ctx: &Ctx, opts: &MethodOptions, out: &Path) -> Result<Selection> {
    let n = ctx.n();
    let cl = ctx.spherical(opts.clusters_for(n), opts.kmeans_iterations, opts.seed);
    let order = hard_order(ctx, &cl);
    let (m32, arg) = max_sims(ctx, &order, ctx.tile_rows);
    let m: Vec<f64> = m32.iter().map(|&x| x as f64).collect();
    let dir = out.join(Method::Semdedup.name());
    std::fs::create_dir_all(&dir).at_path(&dir)?;
    let neighbours = dir.join("neighbours.parquet");
    write_neighbours(&neighbours, ctx, &cl, &m, &arg)?;

    let all: Vec<usize> = (0..n).collect();
    let (picked, eps) = match opts.eps {
        Some(e) => {
            let kept: Vec<usize> = all.into_iter().filter(|&p| m[p] <= 1.0 - e).collect();
            let len = kept.len();
            (top(ctx, kept, |p| -m[p], len), Some(e))
        }
        None => {
            let b = budget_rows(Method::Semdedup, opts, n)?;
            let picked = top(ctx, all, |p| -m[p], b);
            let mut is_kept = vec![false; n];
            for &p in &picked {
                is_kept[p] = true;
            }
            let dropped_min = (0..n)
                .filter(|&p| !is_kept[p])
                .map(|p| m[p])
                .min_by(|a, b| a.total_cmp(b));
            let eps = eps_for(picked.last().map(|&p| m[p]), dropped_min);
            (picked, eps)
        }
    };
    let rule_keeps = eps.map(|e| m.iter().filter(|&&x| x <= 1.0 - e).count());
    let picks = picked
        .into_iter()
        .map(|pos| Pick {
            pos,
            class: Some(cl.labels[pos] as i32),
            score: m[pos],
            terms: vec![cl.distance[pos]],
        })
        .collect();
    let mut sel = Selection::new(Method::Semdedup, picks, vec!["centroid_distance"])
        .with_report("eps", eps)
        .with_report("rows_kept_by_eps_rule", rule_keeps);
    sel.clusters = Some(cl.k);
    sel.files.push(record(out, &neighbours, n as u64)?);
    Ok(sel)
}

/// Writes `row, id, cluster, centroid_distance, max_sim, max_sim_row` for
/// every row, in canonical row order.
fn write_neighbours(path: &Path, ctx: &Ctx, cl: &Clusters, m: &[f64], arg: &[usize]) -> Result<()> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("row", DataType::UInt64, false),
        Field::new("id", ctx.store.meta.id_kind.arrow_type(), false),
        Field::new("cluster", DataType::Int32, false),
        Field::new("centroid_distance", DataType::Float64, false),
        Field::new("max_sim", DataType::Float64, false),
        Field::new("max_sim_row", DataType::UInt64, true),
    ]));
    let batches = ctx.by_row.chunks(BATCH_ROWS).map(|chunk| {
        let mut row = UInt64Builder::with_capacity(chunk.len());
        let mut cluster = Int32Builder::with_capacity(chunk.len());
        let mut dist = Float64Builder::with_capacity(chunk.len());
        let mut max_sim = Float64Builder::with_capacity(chunk.len());
        let mut max_row = UInt64Builder::with_capacity(chunk.len());
        for &p in chunk {
            row.append_value(ctx.rows[p]);
            cluster.append_value(cl.labels[p] as i32);
            dist.append_value(cl.distance[p]);
            max_sim.append_value(m[p]);
            max_row.append_option((arg[p] != NONE).then(|| ctx.rows[arg[p]]));
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(row.finish()),
            ctx.store.id_array(chunk),
            Arc::new(cluster.finish()),
            Arc::new(dist.finish()),
            Arc::new(max_sim.finish()),
            Arc::new(max_row.finish()),
        ];
        RecordBatch::try_new(schema.clone(), cols).map_err(|e| Error::Internal(e.to_string()))
    });
    write_batches(path, schema.clone(), batches)
}

#[cfg(test)]
mod tests {
    use super::eps_for;

    #[test]
    fn eps_sits_between_kept_and_dropped() {
        let e = eps_for(Some(0.5), Some(0.7)).unwrap();
        assert!((e - 0.4).abs() < 1e-12);
        assert_eq!(eps_for(Some(0.5), Some(0.5)), Some(0.5));
        assert_eq!(eps_for(Some(0.9), None), Some(1.0 - 0.9));
        assert_eq!(eps_for(Some(f64::NEG_INFINITY), Some(0.2)), Some(1.8));
        assert_eq!(eps_for(None, Some(f64::NEG_INFINITY)), None);
    }
}
