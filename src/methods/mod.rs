//! The baselines of `docs/baselines.md`, one module each, all run on
//! the same staged store as ClipCov.
//!
//! A method reads the store through a [`Ctx`] (the canonical row of every
//! store position, and the work several methods share) and returns a
//! [`Selection`]: its picks in rank order. Ties always go to the smaller
//! canonical row index, so every method is deterministic for a seed.

pub mod c_rho;
pub mod clip_score;
pub mod context;
pub mod datacomp_image_based;
pub mod neg_clip_loss;
pub mod random;
pub mod semdedup;
pub mod ssp;

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

pub use context::{default_clusters, Clusters, Ctx};

use crate::error::{Error, Result};
use crate::io::written::OutputFile;
use crate::stages::select::Budget;

/// A baseline method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    #[value(name = "random")]
    Random,
    #[value(name = "clip_score")]
    ClipScore,
    #[value(name = "semdedup")]
    Semdedup,
    #[value(name = "ssp")]
    Ssp,
    #[value(name = "c_rho")]
    CRho,
    #[value(name = "neg_clip_loss")]
    NegClipLoss,
    #[value(name = "datacomp_image_based")]
    DatacompImageBased,
}

impl Method {
    pub const ALL: [Method; 7] = [
        Method::Random,
        Method::ClipScore,
        Method::Semdedup,
        Method::Ssp,
        Method::CRho,
        Method::NegClipLoss,
        Method::DatacompImageBased,
    ];

    /// The method's name: its output folder and its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Method::Random => "random",
            Method::ClipScore => "clip_score",
            Method::Semdedup => "semdedup",
            Method::Ssp => "ssp",
            Method::CRho => "c_rho",
            Method::NegClipLoss => "neg_clip_loss",
            Method::DatacompImageBased => "datacomp_image_based",
        }
    }

    pub fn from_name(s: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == s)
    }
}

/// How clip_score and datacomp_image_based cut by score and cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Exactly `B` rows; k-means on the normalised image embeddings.
    #[default]
    #[value(name = "clipcov")]
    Clipcov,
    /// DataComp's code: every row scoring `>=` the `(B+1)`-th largest score
    /// (`B + 1` rows, more with ties); k-means on the embeddings as given.
    #[value(name = "datacomp")]
    Datacomp,
}

impl Rule {
    pub fn name(self) -> &'static str {
        match self {
            Rule::Clipcov => "clipcov",
            Rule::Datacomp => "datacomp",
        }
    }
}

/// Every method option, validated; each method reads the ones it uses.
#[derive(Clone, Debug, Serialize)]
pub struct MethodOptions {
    pub budget: Option<Budget>,
    pub seed: u64,
    /// k-means clusters (semdedup, ssp, datacomp_image_based); default
    /// [`default_clusters`].
    pub clusters: Option<usize>,
    pub kmeans_iterations: usize,
    /// semdedup: keep rows with `m_j <= 1 - eps` instead of the budget.
    pub eps: Option<f64>,
    /// clip_score: keep rows with score `>= threshold` instead of the budget.
    pub threshold: Option<f64>,
    /// `T` of c_rho and neg_clip_loss.
    pub temperature: f64,
    /// neg_clip_loss: `k`, the batches containing each row.
    pub neg_batches: usize,
    /// neg_clip_loss: `b`, the batch size (capped at `N`).
    pub neg_batch_size: usize,
    /// c_rho: `M`, the fixed sample of other pairs (capped at `N`).
    pub rho_sample: usize,
    /// datacomp_image_based: first keep the top fraction by CLIP score.
    pub intersect_clip_score: Option<f64>,
    /// datacomp_image_based: target image embeddings (Parquet or .npy).
    pub targets: Option<PathBuf>,
    /// clip_score and datacomp_image_based: ours or DataComp's cut and k-means.
    pub rule: Rule,
    /// datacomp_image_based: pool centroids `[C, d]` (.npy) instead of k-means.
    pub centroids: Option<PathBuf>,
}

impl Default for MethodOptions {
    fn default() -> Self {
        MethodOptions {
            budget: None,
            seed: 0,
            clusters: None,
            kmeans_iterations: 20,
            eps: None,
            threshold: None,
            temperature: 0.01,
            neg_batches: 10,
            neg_batch_size: 32768,
            rho_sample: 1024,
            intersect_clip_score: None,
            targets: None,
            rule: Rule::Clipcov,
            centroids: None,
        }
    }
}

impl MethodOptions {
    /// The number of clusters for `n` rows.
    pub fn clusters_for(&self, n: usize) -> usize {
        self.clusters.unwrap_or_else(|| default_clusters(n))
    }
}

/// One selected row.
#[derive(Clone, Debug)]
pub struct Pick {
    /// Store position.
    pub pos: usize,
    /// The method's cluster, where it has one.
    pub class: Option<i32>,
    pub score: f64,
    /// The method's own terms, named by [`Selection::term_names`].
    pub terms: Vec<f64>,
}

/// What a method selected, in rank order.
#[derive(Debug)]
pub struct Selection {
    pub method: Method,
    pub picks: Vec<Pick>,
    pub term_names: Vec<&'static str>,
    /// Clusters of the method's own k-means, where it has one.
    pub clusters: Option<usize>,
    /// Facts for the report (semdedup's eps, ...).
    pub report: serde_json::Map<String, serde_json::Value>,
    /// Files the method wrote besides its subset (semdedup's neighbours).
    pub files: Vec<OutputFile>,
}

impl Selection {
    pub fn new(method: Method, picks: Vec<Pick>, term_names: Vec<&'static str>) -> Self {
        Selection {
            method,
            picks,
            term_names,
            clusters: None,
            report: serde_json::Map::new(),
            files: Vec::new(),
        }
    }

    pub fn with_report(mut self, key: &str, value: impl Serialize) -> Self {
        self.report.insert(
            key.to_string(),
            serde_json::to_value(value).unwrap_or_default(),
        );
        self
    }

    /// Distinct clusters among the picks.
    pub fn clusters_covered(&self) -> Option<usize> {
        self.clusters?;
        let mut c: Vec<i32> = self.picks.iter().filter_map(|p| p.class).collect();
        c.sort_unstable();
        c.dedup();
        Some(c.len())
    }
}

/// The budget `B` for `n` rows, or a usage error naming the method.
pub fn budget_rows(method: Method, opts: &MethodOptions, n: usize) -> Result<usize> {
    let or = match method {
        Method::Semdedup => " (or --eps E)",
        Method::ClipScore => " (or --threshold T)",
        _ => "",
    };
    match opts.budget {
        Some(b) => Ok(b.rows(n as u64) as usize),
        None => Err(Error::Usage(format!(
            "{} needs a budget: give --fraction F or --budget COUNT{or}",
            method.name()
        ))),
    }
}

/// Orders `(key, row, pos)` best first: larger key, then smaller row.
fn better(a: &(f64, u64, usize), b: &(f64, u64, usize)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// The `take` best of `candidates` (store positions) by `key`, best first:
/// larger key, ties to the smaller canonical row.
pub fn top(
    ctx: &Ctx,
    candidates: Vec<usize>,
    key: impl Fn(usize) -> f64 + Sync,
    take: usize,
) -> Vec<usize> {
    if take == 0 {
        return Vec::new();
    }
    // `+ 0.0` folds -0.0 into 0.0, which total_cmp would order apart.
    let mut c: Vec<(f64, u64, usize)> = candidates
        .into_par_iter()
        .map(|p| (key(p) + 0.0, ctx.rows[p], p))
        .collect();
    if c.len() > take {
        c.select_nth_unstable_by(take - 1, better);
        c.truncate(take);
    }
    c.par_sort_unstable_by(better);
    c.into_iter().map(|x| x.2).collect()
}

/// DataComp's `get_threshold` for keeping `n` rows: the `(n+1)`-th largest
/// score; `None` when `n >= N` (every row is kept; DataComp's code fails
/// there with an index error).
pub fn datacomp_threshold(scores: &[f64], n: usize) -> Option<f64> {
    if n >= scores.len() {
        return None;
    }
    // `+ 0.0` folds -0.0 into 0.0, which total_cmp would order apart.
    let mut s: Vec<f64> = scores.iter().map(|&x| x + 0.0).collect();
    let (_, nth, _) = s.select_nth_unstable_by(n, |a, b| b.total_cmp(a));
    Some(*nth)
}

/// The store positions among `candidates` that [`Rule`] keeps for budget
/// `b` by `score`, best first, and DataComp's threshold where it applied.
pub fn cut(
    ctx: &Ctx,
    rule: Rule,
    candidates: Vec<usize>,
    score: &[f64],
    b: usize,
) -> (Vec<usize>, Option<f64>) {
    match rule {
        Rule::Clipcov => (top(ctx, candidates, |p| score[p], b), None),
        Rule::Datacomp => {
            let t = datacomp_threshold(score, b);
            let kept: Vec<usize> = candidates
                .into_iter()
                .filter(|&p| t.is_none_or(|t| score[p] >= t))
                .collect();
            let len = kept.len();
            (top(ctx, kept, |p| score[p], len), t)
        }
    }
}

/// Checks, before any data is read, that `method` has what it needs.
pub fn check(method: Method, opts: &MethodOptions, has_learner: bool) -> Result<()> {
    let needs_budget = match method {
        Method::ClipScore => opts.threshold.is_none(),
        Method::Semdedup => opts.eps.is_none(),
        Method::DatacompImageBased => false,
        _ => true,
    };
    if needs_budget && opts.budget.is_none() {
        budget_rows(method, opts, 0)?;
    }
    if method == Method::CRho && !has_learner {
        return Err(Error::Usage(
            "c_rho needs a second embedding set: give --learner-data DIR (the weaker learner model's embeddings of the same pairs, same ids in the same order; --data is the reference model)".into(),
        ));
    }
    if method == Method::DatacompImageBased {
        match &opts.targets {
            // Fail before staging the data, not after.
            Some(t) => {
                crate::io::remote::stat(t)?;
            }
            None => return Err(Error::Usage(
                "datacomp_image_based needs --targets FILE (Parquet with an image_embedding column, or .npy [K, d])".into(),
            )),
        }
        if let Some(c) = &opts.centroids {
            crate::io::remote::stat(c)?;
        }
    }
    Ok(())
}

/// Runs one baseline. `out` is the output folder (semdedup writes its
/// neighbours file there); `learner` is c_rho's second embedding set.
pub fn run(
    method: Method,
    ctx: &Ctx,
    opts: &MethodOptions,
    out: &Path,
    learner: Option<&c_rho::Learner>,
) -> Result<Selection> {
    let n = ctx.n();
    match method {
        Method::Random => Ok(random::run(ctx, budget_rows(method, opts, n)?, opts.seed)),
        Method::ClipScore => clip_score::run(ctx, opts),
        Method::Semdedup => semdedup::run(ctx, opts, out),
        Method::Ssp => ssp::run(ctx, opts),
        Method::CRho => match learner {
            Some(l) => c_rho::run(ctx, l, opts),
            None => Err(Error::Usage("c_rho needs --learner-data DIR".into())),
        },
        Method::NegClipLoss => neg_clip_loss::run(ctx, opts),
        Method::DatacompImageBased => datacomp_image_based::run(ctx, opts, out),
    }
}
