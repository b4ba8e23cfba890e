//! ssp (Sorscher et al. 2022, self-supervised prototype pruning): the same
//! spherical k-means as semdedup; score `1 - <u_i, centroid>`; keep the `B`
//! rows farthest from their prototype ("hard" examples).

use super::{budget_rows, top, Ctx, Method, MethodOptions, Pick, Selection};
use crate::error::Result;

pub fn run(ctx: &Ctx, opts: &MethodOptions) -> Result<Selection> {
    let b = budget_rows(Method::Ssp, opts, ctx.n())?;
    let cl = ctx.spherical(
        opts.clusters_for(ctx.n()),
        opts.kmeans_iterations,
        opts.seed,
    );
    let order = top(ctx, (0..ctx.n()).collect(), |p| cl.distance[p], b);
    let picks = order
        .into_iter()
        .map(|pos| Pick {
            pos,
            class: Some(cl.labels[pos] as i32),
            score: cl.distance[pos],
            terms: Vec::new(),
        })
        .collect();
    let mut sel = Selection::new(Method::Ssp, picks, Vec::new());
    sel.clusters = Some(cl.k);
    Ok(sel)
}
