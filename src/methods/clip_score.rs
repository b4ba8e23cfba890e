//! clip_score (DataComp's "CLIP score" filter): `easy_i = <u_i, v_i>` on
//! normalised embeddings; keep exactly the top `B`, or with `--threshold t`
//! every row scoring `>= t`. With `--rule datacomp`, DataComp's cut: every
//! row scoring `>=` the `(B+1)`-th largest score.

use super::{budget_rows, cut, top, Ctx, Method, MethodOptions, Pick, Selection};
use crate::error::Result;

pub fn run(ctx: &Ctx, opts: &MethodOptions) -> Result<Selection> {
    let easy = ctx.easy();
    let all: Vec<usize> = (0..ctx.n()).collect();
    let (order, threshold) = match opts.threshold {
        Some(t) => {
            let kept: Vec<usize> = all.into_iter().filter(|&p| easy[p] >= t).collect();
            let len = kept.len();
            (top(ctx, kept, |p| easy[p], len), Some(t))
        }
        None => cut(
            ctx,
            opts.rule,
            all,
            easy,
            budget_rows(Method::ClipScore, opts, ctx.n())?,
        ),
    };
    let picks = order
        .into_iter()
        .map(|pos| Pick {
            pos,
            class: None,
            score: easy[pos],
            terms: Vec::new(),
        })
        .collect();
    let mut sel =
        Selection::new(Method::ClipScore, picks, Vec::new()).with_report("rule", opts.rule.name());
    if let Some(t) = threshold {
        sel = sel.with_report("threshold", t);
    }
    Ok(sel)
}
