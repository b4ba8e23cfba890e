//! `clipcov eval`: is a subset any good? Cheap CPU signals, one module per
//! metric family:
//!
//! - [`covariance`]: cross-covariance preservation (the paper's criterion),
//!   class coverage and entropy;
//! - [`proxy`]: a linear-CLIP proxy trained on the subset (symmetric
//!   InfoNCE), scored by zero-shot accuracy on a labelled eval set and
//!   image->text recall@1 on held-out clean pairs, over several seeds;
//! - [`kinds`]: the share of each data-model kind (synth's `kind` column).
//!
//! This module reads the inputs and drives the metrics; the metrics
//! themselves do no I/O. `compare --eval-set` uses the same [`Evaluator`].

pub mod covariance;
pub mod kinds;
pub mod proxy;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, UInt64Type};
use arrow_array::Array;
use arrow_schema::DataType;
use clap::Args;
use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::formats::canonical::{batches, open_parquet, SourceFile};
use crate::formats::embedding::EmbeddingView;
use crate::memory::parse_size;
use crate::methods::cli::{thread_pool, RowArgs};
use crate::pipeline::{self, Budget, ClassSource, SelectConfig};
use crate::rng::Rng;
use crate::score::Tau;
use crate::select::{Refresh, Weights};
use crate::store::Store;
use covariance::CovMetrics;
use kinds::Kinds;
use proxy::{PairSource, ProxyOptions};

/// The proxy's options, shared by `eval` and `compare --eval-set`.
#[derive(Args, Clone, Debug)]
pub struct ProxyArgs {
    /// Proxy training steps (the same for every subset, whatever its size).
    #[arg(long, default_value_t = 300)]
    pub proxy_steps: usize,
    /// Pairs per proxy training batch (capped at the training pairs).
    #[arg(long, default_value_t = 256)]
    pub proxy_batch_size: usize,
    /// Adam step size of the proxy.
    #[arg(long, default_value_t = 0.01)]
    pub proxy_lr: f64,
    /// Output dimension p of the proxy's maps (default: d).
    #[arg(long)]
    pub proxy_dim: Option<usize>,
    /// Proxy trainings (seeds seed, seed+1, ...) to average over.
    #[arg(long, default_value_t = 3)]
    pub eval_seeds: usize,
    /// Held-out clean pairs for retrieval (at most a tenth of the rows).
    #[arg(long, default_value_t = 1000)]
    pub heldout: usize,
}

impl ProxyArgs {
    /// Validated options; `seed` is the base seed.
    pub fn options(&self, seed: u64) -> Result<EvalOptions> {
        let one = |name: &str, v: usize| {
            if v == 0 {
                Err(Error::Usage(format!("--{name} must be at least 1")))
            } else {
                Ok(v)
            }
        };
        if !(self.proxy_lr.is_finite() && self.proxy_lr > 0.0) {
            return Err(Error::Usage(format!(
                "--proxy-lr {} must be a positive number",
                self.proxy_lr
            )));
        }
        if let Some(p) = self.proxy_dim {
            one("proxy-dim", p)?;
        }
        Ok(EvalOptions {
            proxy: ProxyOptions {
                proj_dim: self.proxy_dim,
                steps: one("proxy-steps", self.proxy_steps)?,
                batch_size: self.proxy_batch_size.max(2),
                lr: self.proxy_lr,
                ..ProxyOptions::default()
            },
            seeds: one("eval-seeds", self.eval_seeds)?,
            heldout: self.heldout,
            seed,
        })
    }
}

/// What the evaluation needs besides the data.
#[derive(Clone, Debug, Serialize)]
pub struct EvalOptions {
    pub proxy: ProxyOptions,
    pub seeds: usize,
    pub heldout: usize,
    pub seed: u64,
}

#[derive(Args, Clone, Debug)]
pub struct EvalArgs {
    /// The full dataset the subset was selected from (Parquet shards).
    #[arg(long)]
    pub data: PathBuf,
    /// The subset to evaluate (OUT/<method>/subset.parquet: id, row, ...).
    #[arg(long)]
    pub subset: PathBuf,
    /// Labelled eval images (Parquet: id, image_embedding, label = class_id).
    #[arg(long)]
    pub eval_set: PathBuf,
    /// Class prompts (Parquet: class_id, name, text_embedding).
    #[arg(long)]
    pub prompts: PathBuf,
    /// Base seed of the held-out slice and the proxy trainings.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the metrics as JSON.
    #[arg(long)]
    pub json: bool,
    /// Folder for the temporary staged store (default: beside the subset);
    /// removed when done.
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// Bound on anonymous memory (e.g. 4GiB) while staging.
    #[arg(long, default_value = "4GiB")]
    pub memory_limit: String,
    /// Worker threads (default: all cores). Results do not depend on it.
    #[arg(long)]
    pub threads: Option<usize>,
    /// As given to the run that made the subset.
    #[command(flatten)]
    pub rows: RowArgs,
    #[command(flatten)]
    pub proxy: ProxyArgs,
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
}

/// One proxy training's zero-shot top-1, top-5, R@1, start and end loss.
type SeedRun = (f64, f64, f64, f64, f64);

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
/// the class prompts, the eval set, the kinds and the held-out slice.
pub struct Evaluator<'a> {
    store: &'a Store,
    /// `[K, d]` class prompt embeddings in the store's class order.
    class_emb: &'a [f32],
    eval: EvalSet,
    kinds: Option<Kinds>,
    /// Held-out store positions (sorted), never trained on.
    heldout: Vec<usize>,
    heldout_u: Vec<f32>,
    heldout_v: Vec<f32>,
    opts: EvalOptions,
}

/// Mixed into the base seed for the held-out draw.
const STREAM_HELDOUT: u64 = 0x4845_4C44_4F55_5400;

impl<'a> Evaluator<'a> {
    /// Reads the eval set and the kinds; draws the held-out slice: a seeded
    /// sample of `min(heldout, N / 10)` rows of kind `clean` when the data
    /// has a `kind` column, else of all rows. It depends on the data and
    /// the seed only, so every method is scored on the same pairs.
    pub fn new(
        store: &'a Store,
        files: &[SourceFile],
        class_emb: &'a [f32],
        eval_set: &Path,
        opts: EvalOptions,
    ) -> Result<Self> {
        let d = store.d();
        let eval = read_eval_set(eval_set, d, &store.meta.class_ids)?;
        let kinds = kinds::read_kinds(files)?;
        let n = store.rows();
        let clean = kinds.as_ref().and_then(|k| k.code_of(kinds::CLEAN));
        let mut candidates: Vec<usize> = match (&kinds, clean) {
            (Some(k), Some(c)) => (0..n)
                .filter(|&p| k.code[store.row_index(p) as usize] == c)
                .collect(),
            (Some(_), None) => Vec::new(),
            (None, _) => (0..n).collect(),
        };
        let h = opts.heldout.min(n / 10).min(candidates.len());
        let mut rng = Rng::new(opts.seed ^ STREAM_HELDOUT);
        for i in 0..h {
            let j = i + rng.below((candidates.len() - i) as u64) as usize;
            candidates.swap(i, j);
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
            heldout: candidates,
            heldout_u,
            heldout_v,
            opts,
        })
    }

    /// Evaluates the subset at store `positions` (any order, distinct).
    pub fn evaluate(&self, positions: &[usize]) -> EvalMetrics {
        let mut pos = positions.to_vec();
        pos.sort_unstable();
        pos.dedup();
        let cov = covariance::covariance_metrics(self.store, &pos);
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
        // Seeds train in parallel; each is single-threaded and seeded, and
        // results are collected in seed order.
        let runs: Vec<Option<SeedRun>> = (0..self.opts.seeds as u64)
            .into_par_iter()
            .map(|j| {
                let t = proxy::train(&pairs, d, &self.opts.proxy, self.opts.seed.wrapping_add(j))?;
                let (top1, top5) = proxy::zero_shot(
                    &t.model,
                    &self.eval.images,
                    &self.eval.labels,
                    self.class_emb,
                );
                let r1 = proxy::retrieval_r1(&t.model, &self.heldout_u, &self.heldout_v);
                let tenth = (t.losses.len() / 10).max(1);
                let start = t.losses[..tenth].iter().sum::<f64>() / tenth as f64;
                let end = t.losses[t.losses.len() - tenth..].iter().sum::<f64>() / tenth as f64;
                Some((top1, top5, r1, start, end))
            })
            .collect();
        let runs: Vec<_> = runs.into_iter().flatten().collect();
        let col = |f: fn(&SeedRun) -> f64| {
            if runs.is_empty() {
                (f64::NAN, None)
            } else {
                mean_std(&runs.iter().map(f).collect::<Vec<_>>())
            }
        };
        let (top1, top1_std) = col(|r| r.0);
        let (top5, top5_std) = col(|r| r.1);
        let (r1, r1_std) = col(|r| r.2);
        let (start, _) = col(|r| r.3);
        let (end, end_std) = col(|r| r.4);
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
        }
    }
}

/// Reads the subset's `id` and `row` columns and maps them to store
/// positions, checking every id against the data's id at that row.
fn subset_positions(path: &Path, store: &Store) -> Result<Vec<usize>> {
    let n = store.rows();
    let max_row = (0..n).map(|p| store.row_index(p)).max().unwrap_or(0) as usize;
    let mut pos_of_row = vec![usize::MAX; if n == 0 { 0 } else { max_row + 1 }];
    for p in 0..n {
        pos_of_row[store.row_index(p) as usize] = p;
    }
    let builder = open_parquet(path)?;
    for c in ["id", "row"] {
        if builder.schema().field_with_name(c).is_err() {
            return Err(Error::column(path, c, "missing column").with_hint(
                "give a subset.parquet written by clipcov select, baseline or compare",
            ));
        }
    }
    let reader = batches(path, builder)?;
    let mut out = Vec::new();
    let mut row0 = 0u64;
    for batch in reader {
        let batch = batch?;
        let rows = batch.column_by_name("row").unwrap();
        if rows.data_type() != &DataType::UInt64 {
            return Err(Error::column(path, "row", "expected uint64"));
        }
        let rows = rows.as_primitive::<UInt64Type>();
        let ids = batch.column_by_name("id").unwrap();
        let id_at = |i: usize| -> String {
            match ids.data_type() {
                DataType::Utf8 => ids.as_string::<i32>().value(i).to_string(),
                DataType::LargeUtf8 => ids.as_string::<i64>().value(i).to_string(),
                DataType::Int64 => ids.as_primitive::<Int64Type>().value(i).to_string(),
                DataType::UInt64 => ids.as_primitive::<UInt64Type>().value(i).to_string(),
                _ => String::new(),
            }
        };
        for i in 0..batch.num_rows() {
            let at = row0 + i as u64;
            let r = rows.value(i) as usize;
            let p = pos_of_row.get(r).copied().unwrap_or(usize::MAX);
            if p == usize::MAX {
                return Err(Error::at(
                    path,
                    at,
                    "row",
                    format!("row {r} is not a row of --data (or was skipped while staging it)"),
                )
                .with_hint("evaluate a subset against the data it was selected from"));
            }
            let (want, got) = (store.id(p).to_string(), id_at(i));
            if want != got {
                return Err(Error::at(
                    path,
                    at,
                    "id",
                    format!("id '{got}', but row {r} of --data has id '{want}'"),
                )
                .with_hint("evaluate a subset against the data it was selected from"));
            }
            out.push(p);
        }
        row0 += batch.num_rows() as u64;
    }
    Ok(out)
}

/// Runs `clipcov eval`: stages the data with the prompts' classes in a
/// temporary store, evaluates the subset, prints the metrics.
pub fn run_eval(a: EvalArgs) -> Result<()> {
    // Before any thread starts: an interrupted eval removes its work folder.
    crate::interrupt::install();
    let opts = a.proxy.options(a.seed)?;
    if a.subset
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        return Err(Error::Usage(format!(
            "--subset {}: eval reads the subset's Parquet file; pass {} (written beside the CSV)",
            a.subset.display(),
            a.subset.with_extension("parquet").display()
        )));
    }
    for p in [&a.subset, &a.eval_set, &a.prompts] {
        crate::remote::stat(p)?;
    }
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 {
        return Err(Error::Usage("--threads must be at least 1".into()));
    }
    let work = match &a.work {
        Some(w) => w.clone(),
        // A subset read from a URL: a local folder named after it.
        None if crate::remote::is_url(&a.subset) => crate::remote::work_dir(&a.subset, None),
        None => a
            .subset
            .parent()
            .unwrap_or(Path::new("."))
            .join(".clipcov-eval"),
    };
    crate::outdir::check_outside_inputs(&[("--work", &work)], &[("--data", &a.data)])?;
    let cfg = SelectConfig {
        data: a.data.clone(),
        classes: ClassSource::Prompts(a.prompts.clone()),
        budget: Budget::Count(0),
        out: work.clone(),
        tau: Tau::Threshold(0.0),
        refresh: Refresh::Auto,
        weights: Weights::default(),
        memory_limit_bytes: parse_size(&a.memory_limit)?,
        threads,
        tile_rows: None,
        chunk_rows: None,
        columns: a.rows.columns(),
        on_bad_row: a.rows.on_bad_row,
        on_duplicate: a.rows.on_duplicate,
        seed: a.seed,
        assign_text: false,
        fresh: false,
        layout: None,
        model: Default::default(),
        keep_columns: Vec::new(),
        publish_to: None,
        filter: None,
    };
    let _cleanup = crate::interrupt::remove_on_interrupt(work.clone());
    if let Err(e) = std::fs::create_dir_all(&work) {
        let hint = if a.work.is_none() {
            " (eval's work folder, beside the subset; give --work DIR in a writable place)"
        } else {
            ""
        };
        return Err(Error::io(format!("{}{hint}", work.display()), e));
    }
    let result = thread_pool(threads)?.install(|| -> Result<EvalMetrics> {
        let staged = pipeline::stage_data(&cfg, &work.join("store"), &mut Vec::new())?;
        let positions = subset_positions(&a.subset, &staged.store)?;
        let ev = Evaluator::new(
            &staged.store,
            &staged.files,
            &staged.class_emb,
            &a.eval_set,
            opts,
        )?;
        Ok(ev.evaluate(&positions))
    });
    let _ = std::fs::remove_dir_all(&work);
    let m = result?;
    if a.json {
        let s = serde_json::to_string_pretty(&m).map_err(|e| Error::Internal(e.to_string()))?;
        println!("{s}");
    } else {
        print!("{}", text_report(&m));
    }
    Ok(())
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
        "pairs                    {} trained, {} held out",
        m.train_pairs, m.heldout_pairs
    );
    if let Some(k) = &m.kind_share {
        let parts: Vec<String> = k.iter().map(|(n, v)| format!("{n} {v:.3}")).collect();
        let _ = writeln!(s, "kind share               {}", parts.join(", "));
    }
    s
}
