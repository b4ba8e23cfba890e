//! Is a subset any good? Cheap CPU signals, one module per metric family
//! (the `eval` command that runs them is `jobs::eval`):
//!
//! - [`covariance`]: cross-covariance preservation (the paper's criterion),
//!   class coverage and entropy;
//! - [`proxy`]: a linear-CLIP proxy trained on the subset (symmetric
//!   InfoNCE), scored by zero-shot accuracy on a labelled eval set and
//!   image->text recall@1 on held-out clean pairs, over several seeds;
//! - [`kinds`]: the share of each data-model kind (synth's `kind` column);
//! - [`truth`]: which picks count for coverage (clean, by `true_class`),
//!   class sizes, caption quality, the clean class-balanced covariance;
//! - [`bootstrap`]: paired percentile intervals over the eval images.
//!
//! This module reads the eval set and drives the metrics over a staged
//! store ([`Evaluator`]); the metrics themselves do no I/O. `eval` and
//! `compare --eval-set` use the same [`Evaluator`].

pub mod bootstrap;
pub mod covariance;
pub mod fractions;
pub mod kinds;
pub mod proxy;
pub mod truth;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, UInt64Type};
use arrow_array::Array;
use arrow_schema::DataType;
use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::formats::dataset::SourceFile;
use crate::formats::embedding::EmbeddingView;
use crate::formats::parquet_read::{batches, open_parquet};
use crate::rng::Rng;
use crate::store::Store;
use covariance::CovMetrics;
use kinds::Kinds;
use proxy::{PairSource, ProxyOptions};

/// `|A ∩ B| / |A ∪ B|` of two sorted, distinct lists (1 when both empty).
pub fn jaccard<T: Ord>(a: &[T], b: &[T]) -> f64 {
    let (mut i, mut j, mut both) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                both += 1;
                i += 1;
                j += 1;
            }
        }
    }
    let union = a.len() + b.len() - both;
    if union == 0 {
        1.0
    } else {
        both as f64 / union as f64
    }
}

/// What the evaluation needs besides the data.
#[derive(Clone, Debug, Serialize)]
pub struct EvalOptions {
    pub proxy: ProxyOptions,
    pub seeds: usize,
    pub heldout: usize,
    pub class_table: Option<PathBuf>,
    pub seed: u64,
}

/// A metric's mean and sample standard deviation over the seeds; the
/// deviation of one seed is undefined (`None`, `null` in JSON).
fn mean_std(x: &[f64]) -> (f64, Option<f64>) {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    let sd = (x.len() > 1).then(|| {
        let var = x.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / (n - 1.0);
        var.sqrt()
    });
    (m, sd)
}

/// `mean ± std`, or the mean alone when the deviation is undefined.
pub fn plus_minus(mean: f64, sd: Option<f64>, digits: usize) -> String {
    match sd {
        Some(sd) => format!("{mean:.digits$} ± {sd:.digits$}"),
        None => format!("{mean:.digits$}"),
    }
}

/// Every metric of one subset: the keys of `eval --json` and of each
/// method in `compare.json`. Proxy metrics are means over the seeds, with
/// `_std` the sample standard deviation (`null` for one seed).
#[derive(Clone, Debug, Serialize)]
pub struct EvalMetrics {
    pub rows: usize,
    #[serde(flatten)]
    pub cov: CovMetrics,
    pub zero_shot_top1: f64,
    pub zero_shot_top1_std: Option<f64>,
    pub zero_shot_top5: f64,
    pub zero_shot_top5_std: Option<f64>,
    pub retrieval_r1: f64,
    pub retrieval_r1_std: Option<f64>,
    /// Mean batch loss of the first and of the last tenth of the steps.
    pub proxy_loss_start: f64,
    pub proxy_loss_end: f64,
    pub proxy_loss_end_std: Option<f64>,
    /// Subset pairs the proxy trained on (the subset minus the held-out slice).
    pub train_pairs: usize,
    pub heldout_pairs: usize,
    /// Share of each `kind` in the subset, when the data has the column.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind_share: Option<BTreeMap<String, f64>>,
    /// What `clean_classes_covered` and `clean_class_entropy` count.
    pub coverage_counts: truth::Basis,
    /// Classes with a counted pick (see `coverage_counts`).
    pub clean_classes_covered: usize,
    /// Entropy (natural log) of the counted picks over classes.
    pub clean_class_entropy: f64,
    /// Relative Frobenius error against the clean, class-balanced `C`
    /// (mean over classes of each class's clean mean `u v^T`); `None`
    /// without `true_class`.
    pub cov_rel_error_balanced: Option<f64>,
    /// Zero-shot top-1 averaged over classes (each class's accuracy
    /// weighs the same), mean and std over seeds.
    pub zero_shot_macro: f64,
    pub zero_shot_macro_std: Option<f64>,
    /// Paired percentile bootstrap intervals (95%) over the eval images of
    /// the seed-averaged accuracies.
    pub zero_shot_top1_ci: [f64; 2],
    pub zero_shot_macro_ci: [f64; 2],
    /// Macro zero-shot top-1 over groups of classes.
    pub zero_shot_split: ZeroShotSplit,
    /// The proxy's InfoNCE loss on the held-out pairs, mean and std over seeds.
    pub heldout_loss: f64,
    pub heldout_loss_std: Option<f64>,
    /// Each eval image's top-1 hit rate over the seeds (for paired intervals).
    #[serde(skip)]
    pub per_image_top1: Vec<f64>,
}

/// Macro zero-shot top-1 over groups of classes; `None` for an empty group.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ZeroShotSplit {
    /// Classes with / without a counted pick in the subset.
    pub covered: Option<f64>,
    pub uncovered: Option<f64>,
    /// The larger / smaller half of the classes by counted rows in the data.
    pub head: Option<f64>,
    pub tail: Option<f64>,
    /// Classes with weak / strong captions (with `--class-table`).
    pub weak: Option<f64>,
    pub strong: Option<f64>,
}

/// Pairs at store positions, read from the memory-mapped store.
struct StorePairs<'a> {
    store: &'a Store,
    positions: &'a [usize],
}

impl PairSource for StorePairs<'_> {
    fn len(&self) -> usize {
        self.positions.len()
    }
    fn gather(&self, idx: &[usize], u: &mut Vec<f32>, v: &mut Vec<f32>) {
        let order = self.store.order.as_slice();
        let rows: Vec<u64> = idx.iter().map(|&i| order[self.positions[i]]).collect();
        let (mut ub, mut vb) = (Vec::new(), Vec::new());
        let a = self.store.emb.image_gather(&rows, &mut ub);
        u.clear();
        u.extend_from_slice(a);
        let b = self.store.emb.text_gather(&rows, &mut vb);
        v.clear();
        v.extend_from_slice(b);
    }
}

/// The labelled eval set, normalised, with labels as class positions.
pub struct EvalSet {
    /// `[m, d]`, rows of unit norm.
    pub images: Vec<f32>,
    pub labels: Vec<usize>,
}

/// Reads `path` (`image_embedding`, `label`); labels are `class_id`s of
/// the prompts, mapped to their positions in `class_ids`.
pub fn read_eval_set(path: &Path, d: usize, class_ids: &[i64]) -> Result<EvalSet> {
    const IMAGE: &str = "image_embedding";
    const LABEL: &str = "label";
    let builder = open_parquet(path)?;
    for c in [IMAGE, LABEL] {
        if builder.schema().field_with_name(c).is_err() {
            return Err(Error::column(path, c, "missing column").with_hint(
                "the eval set needs id, image_embedding and label (a class_id of the prompts)",
            ));
        }
    }
    let reader = batches(path, builder)?;
    let mut out = EvalSet {
        images: Vec::new(),
        labels: Vec::new(),
    };
    let mut row0 = 0u64;
    for batch in reader {
        let batch = batch?;
        let lab = batch.column_by_name(LABEL).unwrap();
        let labels: Vec<Option<i64>> = match lab.data_type() {
            DataType::Int32 => lab
                .as_primitive::<Int32Type>()
                .iter()
                .map(|v| v.map(i64::from))
                .collect(),
            DataType::Int64 => lab.as_primitive::<Int64Type>().iter().collect(),
            DataType::UInt64 => lab
                .as_primitive::<UInt64Type>()
                .iter()
                .map(|v| v.map(|x| x as i64))
                .collect(),
            other => {
                return Err(Error::column(
                    path,
                    LABEL,
                    format!("type {other}, expected int32 or int64"),
                ))
            }
        };
        let col = batch.column_by_name(IMAGE).unwrap();
        let view = EmbeddingView::try_new(col).ok_or_else(|| {
            Error::column(
                path,
                IMAGE,
                format!("type {} is not an embedding", col.data_type()),
            )
        })?;
        for (i, label) in labels.into_iter().enumerate() {
            let row = row0 + i as u64;
            let label = label.ok_or_else(|| Error::at(path, row, LABEL, "null label"))?;
            let k = class_ids.binary_search(&label).map_err(|_| {
                Error::at(
                    path,
                    row,
                    LABEL,
                    format!("label {label} is not a class_id of the prompts"),
                )
            })?;
            let values = view.row(i, d).map_err(|_| {
                Error::at(
                    path,
                    row,
                    IMAGE,
                    format!("null or length {}, expected {d}", view.row_len(i)),
                )
            })?;
            let n2 = values
                .norm2()
                .filter(|n| *n > 0.0)
                .ok_or_else(|| Error::at(path, row, IMAGE, "non-finite or zero vector"))?;
            values.extend_scaled_f32(1.0 / n2.sqrt(), &mut out.images);
            out.labels.push(k);
        }
        row0 += batch.num_rows() as u64;
    }
    if out.labels.is_empty() {
        return Err(Error::file(path, "the eval set has no rows"));
    }
    Ok(out)
}

/// Everything shared by the evaluations of several subsets of one store:
/// the class prompts, the eval set, the kinds, the true classes and the
/// held-out slice.
pub struct Evaluator<'a> {
    store: &'a Store,
    /// `[K, d]` class prompt embeddings in the store's class order.
    class_emb: &'a [f32],
    eval: EvalSet,
    kinds: Option<Kinds>,
    truth: truth::Truth,
    /// The clean, class-balanced cross-covariance (with `true_class`).
    balanced: Option<covariance::CrossCov>,
    /// `weak[k]`: class `k` has weak captions (with a class table).
    weak: Option<Vec<bool>>,
    /// Held-out store positions (sorted), never trained on.
    heldout: Vec<usize>,
    heldout_u: Vec<f32>,
    heldout_v: Vec<f32>,
    opts: EvalOptions,
}

/// Mixed into the base seed for the held-out draw.
const STREAM_HELDOUT: u64 = 0x4845_4C44_4F55_5400;

/// One proxy training's results.
struct SeedRun {
    top1: f64,
    top5: f64,
    r1: f64,
    loss_start: f64,
    loss_end: f64,
    heldout_loss: f64,
    /// Top-1 hit of every eval image.
    hits: Vec<bool>,
}

/// Mean over the classes present in `labels` of each class's mean of
/// `values`, restricted to classes with `keep[k]`; `None` if none.
fn macro_mean(values: &[f64], labels: &[usize], keep: impl Fn(usize) -> bool) -> Option<f64> {
    let k = labels.iter().max().map_or(0, |&m| m + 1);
    let (mut sum, mut n) = (vec![0.0; k], vec![0u64; k]);
    for (&v, &y) in values.iter().zip(labels) {
        sum[y] += v;
        n[y] += 1;
    }
    let accs: Vec<f64> = (0..k)
        .filter(|&c| n[c] > 0 && keep(c))
        .map(|c| sum[c] / n[c] as f64)
        .collect();
    (!accs.is_empty()).then(|| accs.iter().sum::<f64>() / accs.len() as f64)
}

impl<'a> Evaluator<'a> {
    /// Reads the eval set, the kinds and the true classes; draws the
    /// held-out slice of `min(heldout, N / 10)` rows: with `true_class`,
    /// counted (clean) rows taken class by class in turn from a seeded
    /// shuffle, so every class is held out equally as far as it has rows;
    /// else a seeded sample of `clean` rows (or of all rows without
    /// `kind`). It depends on the data and the seed only, so every method
    /// is scored on the same pairs.
    pub fn new(
        store: &'a Store,
        files: &[SourceFile],
        class_emb: &'a [f32],
        eval_set: &Path,
        opts: EvalOptions,
    ) -> Result<Self> {
        let d = store.d();
        let eval = read_eval_set(eval_set, d, &store.meta.class_ids)?;
        let weak = match &opts.class_table {
            Some(p) => Some(truth::read_caption_quality(p, &store.meta.class_ids)?),
            None => None,
        };
        let kinds = kinds::read_kinds(files)?;
        let truth = truth::Truth::new(store, files, kinds.as_ref())?;
        let balanced = truth.balanced_cov(store);
        let n = store.rows();
        let clean = kinds.as_ref().and_then(|k| k.code_of(kinds::CLEAN));
        let mut candidates: Vec<usize> = match (&kinds, clean) {
            _ if truth.basis == truth::Basis::CleanTrueClass => {
                (0..n).filter(|&p| truth.class[p] != truth::NONE).collect()
            }
            (Some(k), Some(c)) => (0..n)
                .filter(|&p| k.code[store.row_index(p) as usize] == c)
                .collect(),
            (Some(_), None) => Vec::new(),
            (None, _) => (0..n).collect(),
        };
        let h = opts.heldout.min(n / 10).min(candidates.len());
        let mut rng = Rng::new(opts.seed ^ STREAM_HELDOUT);
        if truth.basis == truth::Basis::CleanTrueClass {
            // Shuffle all, then take round by round: each class's first
            // row, then each class's second, ...
            for i in (1..candidates.len()).rev() {
                candidates.swap(i, rng.below(i as u64 + 1) as usize);
            }
            let mut seen = vec![0u32; truth.sizes.len()];
            let mut keyed: Vec<(u32, usize, usize)> = candidates
                .iter()
                .enumerate()
                .map(|(i, &p)| {
                    let k = truth.class[p] as usize;
                    seen[k] += 1;
                    (seen[k], i, p)
                })
                .collect();
            keyed.sort_unstable();
            candidates = keyed.into_iter().map(|x| x.2).collect();
        } else {
            for i in 0..h {
                let j = i + rng.below((candidates.len() - i) as u64) as usize;
                candidates.swap(i, j);
            }
        }
        candidates.truncate(h);
        candidates.sort_unstable();
        let pairs = StorePairs {
            store,
            positions: &candidates,
        };
        let (mut heldout_u, mut heldout_v) = (Vec::new(), Vec::new());
        pairs.gather(&(0..h).collect::<Vec<_>>(), &mut heldout_u, &mut heldout_v);
        Ok(Evaluator {
            store,
            class_emb,
            eval,
            kinds,
            truth,
            balanced,
            weak,
            heldout: candidates,
            heldout_u,
            heldout_v,
            opts,
        })
    }

    /// The eval images' labels (class positions).
    pub fn eval_labels(&self) -> &[usize] {
        &self.eval.labels
    }

    pub fn classes(&self) -> usize {
        self.store.meta.classes()
    }

    /// The base seed (of the held-out draw, the proxies and the bootstrap).
    pub fn seed(&self) -> u64 {
        self.opts.seed
    }

    /// Evaluates the subset at store `positions` (any order, distinct).
    pub fn evaluate(&self, positions: &[usize]) -> EvalMetrics {
        let mut pos = positions.to_vec();
        pos.sort_unstable();
        pos.dedup();
        let (cov, sub_cov) = covariance::covariance_metrics(self.store, &pos);
        let cov_rel_error_balanced = self
            .balanced
            .as_ref()
            .and_then(|b| covariance::rel_frobenius(&sub_cov, b));
        let counts = self.truth.counts(&pos);
        let kind_share = self.kinds.as_ref().map(|k| {
            let rows: Vec<u64> = pos.iter().map(|&p| self.store.row_index(p)).collect();
            k.shares(&rows)
        });
        let train: Vec<usize> = pos
            .iter()
            .copied()
            .filter(|p| self.heldout.binary_search(p).is_err())
            .collect();
        let pairs = StorePairs {
            store: self.store,
            positions: &train,
        };
        let d = self.store.d();
        let labels = &self.eval.labels;
        // Seeds train in parallel; each is single-threaded and seeded, and
        // results are collected in seed order.
        let runs: Vec<Option<SeedRun>> = (0..self.opts.seeds as u64)
            .into_par_iter()
            .map(|j| {
                let t = proxy::train(&pairs, d, &self.opts.proxy, self.opts.seed.wrapping_add(j))?;
                let ranks =
                    proxy::zero_shot_ranks(&t.model, &self.eval.images, labels, self.class_emb);
                let m = labels.len() as f64;
                let r1 = proxy::retrieval_r1(&t.model, &self.heldout_u, &self.heldout_v);
                let heldout_loss = proxy::heldout_loss(
                    &t.model,
                    &self.heldout_u,
                    &self.heldout_v,
                    self.opts.proxy.batch_size,
                );
                let tenth = (t.losses.len() / 10).max(1);
                Some(SeedRun {
                    top1: ranks.iter().filter(|&&r| r == 0).count() as f64 / m,
                    top5: ranks.iter().filter(|&&r| r < 5).count() as f64 / m,
                    r1,
                    loss_start: t.losses[..tenth].iter().sum::<f64>() / tenth as f64,
                    loss_end: t.losses[t.losses.len() - tenth..].iter().sum::<f64>() / tenth as f64,
                    heldout_loss,
                    hits: ranks.iter().map(|&r| r == 0).collect(),
                })
            })
            .collect();
        let runs: Vec<SeedRun> = runs.into_iter().flatten().collect();
        let col = |f: &dyn Fn(&SeedRun) -> f64| {
            if runs.is_empty() {
                (f64::NAN, None)
            } else {
                mean_std(&runs.iter().map(f).collect::<Vec<_>>())
            }
        };
        let macro_of = |hits: &[bool]| {
            let v: Vec<f64> = hits.iter().map(|&h| h as u8 as f64).collect();
            macro_mean(&v, labels, |_| true).unwrap_or(f64::NAN)
        };
        let (top1, top1_std) = col(&|r| r.top1);
        let (top5, top5_std) = col(&|r| r.top5);
        let (r1, r1_std) = col(&|r| r.r1);
        let (start, _) = col(&|r| r.loss_start);
        let (end, end_std) = col(&|r| r.loss_end);
        let (hl, hl_std) = col(&|r| r.heldout_loss);
        let (mac, mac_std) = col(&|r| macro_of(&r.hits));
        // Each image's hit rate over the seeds: the bootstrap's unit.
        let per_image: Vec<f64> = (0..labels.len())
            .map(|i| {
                if runs.is_empty() {
                    0.0
                } else {
                    runs.iter().filter(|r| r.hits[i]).count() as f64 / runs.len() as f64
                }
            })
            .collect();
        let k = self.classes();
        let ci = |macro_avg: bool| {
            if runs.is_empty() {
                [f64::NAN, f64::NAN]
            } else {
                bootstrap::interval(
                    &per_image,
                    labels,
                    k,
                    macro_avg,
                    bootstrap::RESAMPLES,
                    self.opts.seed,
                )
            }
        };
        let group = |keep: &dyn Fn(usize) -> bool| {
            if runs.is_empty() {
                None
            } else {
                macro_mean(&per_image, labels, keep)
            }
        };
        let head = &self.truth.head;
        let zero_shot_split = ZeroShotSplit {
            covered: group(&|c| counts[c] > 0),
            uncovered: group(&|c| counts[c] == 0),
            head: group(&|c| head[c]),
            tail: group(&|c| !head[c]),
            weak: self.weak.as_ref().and_then(|w| group(&|c| w[c])),
            strong: self.weak.as_ref().and_then(|w| group(&|c| !w[c])),
        };
        EvalMetrics {
            rows: pos.len(),
            cov,
            zero_shot_top1: top1,
            zero_shot_top1_std: top1_std,
            zero_shot_top5: top5,
            zero_shot_top5_std: top5_std,
            retrieval_r1: r1,
            retrieval_r1_std: r1_std,
            proxy_loss_start: start,
            proxy_loss_end: end,
            proxy_loss_end_std: end_std,
            train_pairs: train.len(),
            heldout_pairs: self.heldout.len(),
            kind_share,
            coverage_counts: self.truth.basis,
            clean_classes_covered: counts.iter().filter(|&&c| c > 0).count(),
            clean_class_entropy: covariance::entropy(&counts),
            cov_rel_error_balanced,
            zero_shot_macro: mac,
            zero_shot_macro_std: mac_std,
            zero_shot_top1_ci: ci(false),
            zero_shot_macro_ci: ci(true),
            zero_shot_split,
            heldout_loss: hl,
            heldout_loss_std: hl_std,
            per_image_top1: per_image,
        }
    }
}

/// The metrics as `name: value` lines.
pub fn text_report(m: &EvalMetrics) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "rows                     {}", m.rows);
    let _ = writeln!(s, "cov_rel_error            {:.4}", m.cov.cov_rel_error);
    let _ = writeln!(
        s,
        "cov_rel_error_per_class  {:.4}",
        m.cov.cov_rel_error_per_class
    );
    let _ = writeln!(s, "classes_covered          {}", m.cov.classes_covered);
    let _ = writeln!(s, "class_entropy            {:.4}", m.cov.class_entropy);
    let pm = |v: f64, sd: Option<f64>| plus_minus(v, sd, 4);
    let _ = writeln!(
        s,
        "zero_shot_top1           {}",
        pm(m.zero_shot_top1, m.zero_shot_top1_std)
    );
    let _ = writeln!(
        s,
        "zero_shot_top5           {}",
        pm(m.zero_shot_top5, m.zero_shot_top5_std)
    );
    let _ = writeln!(
        s,
        "retrieval_r1             {}",
        pm(m.retrieval_r1, m.retrieval_r1_std)
    );
    let _ = writeln!(
        s,
        "proxy loss               {:.4} -> {}",
        m.proxy_loss_start,
        pm(m.proxy_loss_end, m.proxy_loss_end_std)
    );
    let _ = writeln!(
        s,
        "heldout loss             {}",
        pm(m.heldout_loss, m.heldout_loss_std)
    );
    let _ = writeln!(
        s,
        "pairs                    {} trained, {} held out",
        m.train_pairs, m.heldout_pairs
    );
    let _ = writeln!(
        s,
        "counted picks            {}",
        m.coverage_counts.describe()
    );
    let _ = writeln!(s, "clean_classes_covered    {}", m.clean_classes_covered);
    let _ = writeln!(s, "clean_class_entropy      {:.4}", m.clean_class_entropy);
    if let Some(e) = m.cov_rel_error_balanced {
        let _ = writeln!(s, "cov_rel_error_balanced   {e:.4}");
    }
    let ci = |c: [f64; 2]| format!("[{:.4}, {:.4}]", c[0], c[1]);
    let _ = writeln!(
        s,
        "zero_shot_top1 95% CI    {} (bootstrap over eval images)",
        ci(m.zero_shot_top1_ci)
    );
    let _ = writeln!(
        s,
        "zero_shot_macro          {} {}",
        pm(m.zero_shot_macro, m.zero_shot_macro_std),
        ci(m.zero_shot_macro_ci)
    );
    let z = &m.zero_shot_split;
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.4}"));
    let _ = writeln!(
        s,
        "macro by class group     covered {}, uncovered {}, head {}, tail {}, weak {}, strong {}",
        opt(z.covered),
        opt(z.uncovered),
        opt(z.head),
        opt(z.tail),
        opt(z.weak),
        opt(z.strong)
    );
    if let Some(k) = &m.kind_share {
        let parts: Vec<String> = k.iter().map(|(n, v)| format!("{n} {v:.3}")).collect();
        let _ = writeln!(s, "kind share               {}", parts.join(", "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jaccard_counts_the_overlap() {
        assert_eq!(jaccard(&[1, 2, 3], &[2, 3, 4]), 0.5);
        assert_eq!(jaccard::<u64>(&[], &[]), 1.0);
        assert_eq!(jaccard(&[1], &[]), 0.0);
    }
}
