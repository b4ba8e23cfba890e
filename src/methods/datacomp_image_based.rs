//! datacomp_image_based (DataComp's image-based filter): plain (L2) k-means
//! on the pool's image embeddings (normalised; as given with `--rule
//! datacomp`), or the centroids of `--centroids FILE.npy`; each target and
//! each pool row goes to the centroid with the largest inner product (not
//! the nearest in L2: that is what DataComp does); keep the pool rows whose
//! centroid received a target. `--intersect-clip-score f` first keeps the
//! top fraction `f` by CLIP score over the whole pool (DataComp's
//! threshold cut with `--rule datacomp`).
//!
//! The rule sets the number of rows kept (the budget is not used); they are
//! ranked by CLIP score, ties to the smaller row. The centroids used are
//! written to `OUT/datacomp_image_based/centroids.npy`, so a run can be
//! repeated, or checked, without its k-means.

use std::io::Write;
use std::ops::Range;
use std::path::Path;

use super::context::{CanonicalImages, GivenImages};
use super::{cut, Ctx, Method, MethodOptions, Pick, Rule, Selection};
use crate::error::{Error, IoContext, Result};
use crate::formats::embedding::EmbeddingView;
use crate::formats::npy::{header_bytes, NpyMatrix};
use crate::formats::targets::read_targets;
use crate::io::atomic::atomic_write;
use crate::io::written::record;
use crate::kernels::kmeans::{self, KMeansOptions, RowSource};

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

const CENTROIDS_HINT: &str = "give a .npy float32 array [C, d] of centroids of the pool's embedding model (an earlier run's OUT/datacomp_image_based/centroids.npy, or numpy.save of DataComp's or faiss's centroids)";

/// Reads `--centroids`: a `.npy` `[C, d]` matrix (float16 or float32) of
/// finite values whose `d` is the pool's.
///
/// # Errors
/// An I/O error when the file cannot be read; a data error naming the file
/// for a bad header, another `d`, no rows or a non-finite value.
pub fn read_centroids(path: &Path, d: usize) -> Result<Vec<f32>> {
    let bad = |problem: String| Error::file(path, problem).with_hint(CENTROIDS_HINT);
    let m = NpyMatrix::open(path)?;
    if m.cols() != d {
        return Err(bad(format!(
            "centroids of length {}, the pool's embeddings have d = {d}",
            m.cols()
        )));
    }
    if m.rows() == 0 {
        return Err(bad("no centroids (shape (0, d))".into()));
    }
    let array = m.rows_array(0, m.rows());
    let view = EmbeddingView::try_new(&array)
        .ok_or_else(|| Error::Internal("npy rows are not an embedding array".into()))?;
    let mut out = Vec::with_capacity(m.rows() * d);
    for i in 0..m.rows() {
        let row = view
            .row(i, d)
            .map_err(|_| Error::Internal(format!("npy row {i} unreadable")))?;
        let start = out.len();
        row.extend_scaled_f32(1.0, &mut out);
        if out[start..].iter().any(|x| !x.is_finite()) {
            return Err(bad(format!("centroid {i} has a non-finite value")));
        }
    }
    Ok(out)
}

/// Writes `[k, d]` float32 centroids as a `.npy` file, atomically.
pub fn write_centroids(path: &Path, centroids: &[f32], d: usize) -> Result<()> {
    let mut bytes = header_bytes("'<f4'", &format!("({}, {d})", centroids.len() / d));
    bytes.reserve(centroids.len() * 4);
    for x in centroids {
        bytes.extend(x.to_le_bytes());
    }
    atomic_write(path, |w| w.write_all(&bytes).at_path(path))
}

pub fn run(ctx: &Ctx, opts: &MethodOptions, out: &Path) -> Result<Selection> {
    let (n, d) = (ctx.n(), ctx.d());
    let path = opts
        .targets
        .as_ref()
        .ok_or_else(|| Error::Usage("datacomp_image_based needs --targets FILE".into()))?;
    let targets = read_targets(path, d)?;
    let (unit, given) = (CanonicalImages { ctx }, GivenImages { ctx });
    let pool: &dyn RowSource = match opts.rule {
        Rule::Clipcov => &unit,
        Rule::Datacomp => &given,
    };
    let centroids = match &opts.centroids {
        Some(c) => read_centroids(c, d)?,
        None => {
            kmeans::kmeans(
                pool,
                &KMeansOptions {
                    k: opts.clusters_for(n),
                    iterations: opts.kmeans_iterations,
                    seed: opts.seed,
                    spherical: false,
                },
            )
            .0
        }
    };
    let k = centroids.len() / d;
    // `spherical = true` assigns by the largest inner product.
    let labels = ctx.to_positions(&kmeans::assign(pool, &centroids, true));
    let target_labels = kmeans::assign(&Slice { data: &targets, d }, &centroids, true);
    let mut hits = vec![0u64; k];
    for &l in &target_labels {
        hits[l as usize] += 1;
    }
    let easy = ctx.easy();
    let all: Vec<usize> = (0..n).collect();
    let (candidates, clip_threshold) = match opts.intersect_clip_score {
        Some(f) => cut(ctx, opts.rule, all, easy, (f * n as f64).floor() as usize),
        None => (all, None),
    };
    let kept: Vec<usize> = candidates
        .into_iter()
        .filter(|&p| hits[labels[p] as usize] > 0)
        .collect();
    let len = kept.len();
    let picks = super::top(ctx, kept, |p| easy[p], len)
        .into_iter()
        .map(|pos| Pick {
            pos,
            class: Some(labels[pos] as i32),
            score: easy[pos],
            terms: vec![hits[labels[pos] as usize] as f64],
        })
        .collect();
    let dir = out.join(Method::DatacompImageBased.name());
    std::fs::create_dir_all(&dir).at_path(&dir)?;
    let centroids_path = dir.join("centroids.npy");
    write_centroids(&centroids_path, &centroids, d)?;
    let mut sel = Selection::new(
        Method::DatacompImageBased,
        picks,
        vec!["targets_in_cluster"],
    )
    .with_report("rule", opts.rule.name())
    .with_report("targets", target_labels.len())
    .with_report(
        "clusters_with_targets",
        hits.iter().filter(|&&h| h > 0).count(),
    )
    .with_report("intersect_clip_score", opts.intersect_clip_score)
    .with_report("centroids", &opts.centroids);
    if let Some(t) = clip_threshold {
        sel = sel.with_report("clip_score_threshold", t);
    }
    sel.clusters = Some(k);
    sel.files.push(record(out, &centroids_path, k as u64)?);
    Ok(sel)
}
