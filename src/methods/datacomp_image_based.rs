//! datacomp_image_based (DataComp's image-based filter): plain (L2) k-means
//! on the pool's normalised image embeddings; each target and each pool row
//! goes to the centroid with the largest inner product (not the nearest in
//! L2: that is what DataComp does); keep the pool rows whose centroid
//! received a target. `--intersect-clip-score f` first keeps the top
//! fraction `f` by CLIP score over the whole pool.
//!
//! The rule sets the number of rows kept (the budget is not used); they are
//! ranked by CLIP score, ties to the smaller row.

use std::ops::Range;

use super::context::CanonicalImages;
use super::{top, Ctx, Method, MethodOptions, Pick, Selection};
use crate::error::{Error, Result};
use crate::formats::targets::read_targets;
use crate::kmeans::{self, KMeansOptions, RowSource};

/// In-memory rows as a k-means row source.
struct Slice<'a> {
    data: &'a [f32],
    d: usize,
}

impl RowSource for Slice<'_> {
    fn len(&self) -> usize {
        self.data.len() / self.d
    }
    fn d(&self) -> usize {
        self.d
    }
    fn rows<'a>(&'a self, r: Range<usize>, _: &'a mut Vec<f32>) -> &'a [f32] {
        &self.data[r.start * self.d..r.end * self.d]
    }
}

pub fn run(ctx: &Ctx, opts: &MethodOptions) -> Result<Selection> {
    let (n, d) = (ctx.n(), ctx.d());
    let path = opts
        .targets
        .as_ref()
        .ok_or_else(|| Error::Usage("datacomp_image_based needs --targets FILE".into()))?;
    let targets = read_targets(path, d)?;
    let pool = CanonicalImages { ctx };
    let (centroids, _) = kmeans::kmeans(
        &pool,
        &KMeansOptions {
            k: opts.clusters_for(n),
            iterations: opts.kmeans_iterations,
            seed: opts.seed,
            spherical: false,
        },
    );
    let k = centroids.len() / d;
    // `spherical = true` assigns by the largest inner product.
    let labels = ctx.to_positions(&kmeans::assign(&pool, &centroids, true));
    let target_labels = kmeans::assign(&Slice { data: &targets, d }, &centroids, true);
    let mut hits = vec![0u64; k];
    for &l in &target_labels {
        hits[l as usize] += 1;
    }
    let easy = ctx.easy();
    let all: Vec<usize> = (0..n).collect();
    let candidates = match opts.intersect_clip_score {
        Some(f) => top(ctx, all, |p| easy[p], (f * n as f64).floor() as usize),
        None => all,
    };
    let kept: Vec<usize> = candidates
        .into_iter()
        .filter(|&p| hits[labels[p] as usize] > 0)
        .collect();
    let len = kept.len();
    let picks = top(ctx, kept, |p| easy[p], len)
        .into_iter()
        .map(|pos| Pick {
            pos,
            class: Some(labels[pos] as i32),
            score: easy[pos],
            terms: vec![hits[labels[pos] as usize] as f64],
        })
        .collect();
    let mut sel = Selection::new(
        Method::DatacompImageBased,
        picks,
        vec!["targets_in_cluster"],
    )
    .with_report("targets", target_labels.len())
    .with_report(
        "clusters_with_targets",
        hits.iter().filter(|&&h| h > 0).count(),
    )
    .with_report("intersect_clip_score", opts.intersect_clip_score);
    sel.clusters = Some(k);
    Ok(sel)
}
