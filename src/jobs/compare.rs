//! `clipcov compare`: ClipCov and the baselines side by side on the same
//! staged data and budget.
//!
//! The data is ingested once (classes from the prompts when ClipCov runs),
//! shared work (CLIP scores, the spherical k-means of semdedup and ssp) is
//! computed once, and each method writes `OUT/<method>/subset.{parquet,csv}`.
//! The comparison, printed and written to `OUT/compare.md` and
//! `OUT/compare.json`, gives per method the rows kept, the latent classes
//! and the method's own clusters covered, the Jaccard overlap of its rows
//! with every other method's, and its own time (shared work is timed apart).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::eval::fractions::{self as by_budget, Budgeted, Subset, SubsetOf};
use crate::eval::{jaccard, plus_minus, EvalMetrics, EvalOptions, Evaluator};
use crate::io::atomic::atomic_write;
use crate::io::written::write_json;
use crate::io::written::OutputFile;
use crate::jobs::baseline::{learner, stage_learner, LearnerData};
use crate::jobs::config::SelectConfig;
use crate::jobs::pipeline;
use crate::jobs::shell::{print_published, run_job};
use crate::jobs::staging;
use crate::methods::context::SharedStage;
use crate::methods::{self, Ctx, Method, MethodOptions};
use crate::output::emit;
use crate::output::method_files;
use crate::output::publish::OutputSet;
use crate::stages::classes::ClassSource;
use crate::stages::select::Budget;
use crate::stages::select::Refresh;

pub const DEFAULT_METHODS: &str = "clipcov,random,clip_score,semdedup,ssp,neg_clip_loss";

/// One entry of `--methods`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    ClipCov,
    Baseline(Method),
}

impl Entry {
    fn name(self) -> &'static str {
        match self {
            Entry::ClipCov => "clipcov",
            Entry::Baseline(m) => m.name(),
        }
    }
}

/// `--methods`: clipcov and baseline names, comma-separated.
pub fn parse_methods(s: &str) -> Result<Vec<Entry>> {
    let mut out: Vec<Entry> = Vec::new();
    for name in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        let e = match name {
            "clipcov" => Entry::ClipCov,
            _ => Entry::Baseline(Method::from_name(name).ok_or_else(|| {
                Error::Usage(format!(
                    "unknown method '{name}' in --methods; choose from clipcov, {}",
                    Method::ALL.map(Method::name).join(", ")
                ))
            })?),
        };
        if out.contains(&e) {
            return Err(Error::Usage(format!("--methods names '{name}' twice")));
        }
        out.push(e);
    }
    if out.is_empty() {
        return Err(Error::Usage("--methods is empty".into()));
    }
    Ok(out)
}

/// One method's line of the comparison.
#[derive(Clone, Debug, Serialize)]
pub struct MethodResult {
    pub method: String,
    pub rows_kept: usize,
    /// Latent (prompt) classes among the kept rows; `None` without prompts.
    pub classes_covered: Option<usize>,
    /// The method's own clusters (ClipCov: its classes), where it has them.
    pub clusters: Option<usize>,
    pub clusters_covered: Option<usize>,
    /// The method's own work and its files, without the shared stages.
    pub seconds: f64,
    /// Shared stages the method used (timed once, in `shared`).
    pub uses_shared: Vec<String>,
    pub report: serde_json::Map<String, serde_json::Value>,
    /// Jaccard overlap of the kept rows with each method, in run order.
    pub jaccard: serde_json::Map<String, serde_json::Value>,
    pub outputs: Vec<OutputFile>,
    /// `eval` metrics (`--eval-set`), written as keys of this method's
    /// object (see [`by_method`]).
    #[serde(skip)]
    pub eval: Option<EvalMetrics>,
    /// Canonical rows kept, sorted.
    #[serde(skip)]
    kept_rows: Vec<u64>,
    /// Store positions kept.
    #[serde(skip)]
    positions: Vec<usize>,
}

impl MethodResult {
    /// A result for `method` keeping the rows at store `positions`; the
    /// other fields are filled in by the caller.
    fn kept(method: &str, ctx: &Ctx, positions: impl Iterator<Item = usize>) -> Self {
        let positions: Vec<usize> = positions.collect();
        let mut rows: Vec<u64> = positions.iter().map(|&p| ctx.rows[p]).collect();
        rows.sort_unstable();
        MethodResult {
            method: method.to_string(),
            rows_kept: rows.len(),
            classes_covered: None,
            clusters: None,
            clusters_covered: None,
            seconds: 0.0,
            uses_shared: Vec::new(),
            report: serde_json::Map::new(),
            jaccard: serde_json::Map::new(),
            outputs: Vec::new(),
            eval: None,
            kept_rows: rows,
            positions,
        }
    }
}

/// `compare.json`.
#[derive(Debug, Serialize)]
pub struct Comparison {
    pub tool: String,
    pub version: String,
    pub data: PathBuf,
    pub rows: usize,
    pub budget_rows: usize,
    pub classes: Option<usize>,
    pub parameters: serde_json::Value,
    pub shared: Vec<SharedStage>,
    /// The methods in run order (`methods` is keyed by name).
    pub method_order: Vec<String>,
    #[serde(serialize_with = "by_method")]
    pub methods: Vec<MethodResult>,
    /// With `--eval-set`: every method evaluated at each budget (the one
    /// budget, or each of `--fractions`), with paired intervals.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<Budgeted>,
    pub seconds_total: f64,
}

/// Whether an entry's subset at a smaller budget is the rank prefix of its
/// subset at a larger one: true for a top-`B` ranking and for ClipCov's
/// greedy at a fixed refresh period; not for `--refresh auto`, whose period
/// follows the budget (re-run per budget), nor for a threshold rule, whose
/// rows do not follow the budget.
fn subset_of(e: Entry, cfg: &SelectConfig, opts: &MethodOptions) -> SubsetOf {
    match e {
        Entry::ClipCov => match cfg.refresh {
            Refresh::Every(_) => SubsetOf::Prefix,
            Refresh::Auto => SubsetOf::Rerun,
        },
        Entry::Baseline(Method::ClipScore) if opts.threshold.is_some() => SubsetOf::Threshold,
        Entry::Baseline(Method::Semdedup) if opts.eps.is_some() => SubsetOf::Threshold,
        Entry::Baseline(Method::DatacompImageBased) => SubsetOf::Threshold,
        Entry::Baseline(_) => SubsetOf::Prefix,
    }
}

/// Evaluates every method at each budget (prefixes of the runs at the
/// largest), with subset-seed spreads for random and paired differences
/// from clipcov (or the first method).
#[allow(clippy::too_many_arguments)]
fn assess_budgets(
    ev: &Evaluator,
    ctx: &Ctx,
    entries: &[Entry],
    results: &[MethodResult],
    cfg: &SelectConfig,
    opts: &MethodOptions,
    subset_seeds: usize,
    fractions: Option<&[f64]>,
    rerun: &dyn Fn(Budget) -> Result<Vec<usize>>,
) -> Result<Vec<Budgeted>> {
    let n = ctx.n();
    let b_max = cfg.budget.rows(n as u64) as usize;
    let budgets: Vec<(Option<f64>, usize)> = match fractions {
        Some(f) => f
            .iter()
            .map(|&f| (Some(f), Budget::Fraction(f).rows(n as u64) as usize))
            .collect(),
        None => vec![(
            match cfg.budget {
                Budget::Fraction(f) => Some(f),
                Budget::Count(_) => None,
            },
            b_max,
        )],
    };
    // random's draws with further seeds, at the largest budget.
    let extra: Vec<Vec<usize>> = if entries.contains(&Entry::Baseline(Method::Random)) {
        (1..subset_seeds as u64)
            .map(|j| {
                methods::random::run(ctx, b_max, opts.seed.wrapping_add(j))
                    .picks
                    .iter()
                    .map(|p| p.pos)
                    .collect()
            })
            .collect()
    } else {
        Vec::new()
    };
    let reference = if entries.contains(&Entry::ClipCov) {
        "clipcov".to_string()
    } else {
        results[0].method.clone()
    };
    // Re-runs at the budgets below the largest (ClipCov with auto refresh).
    let mut reruns: Vec<Vec<Vec<usize>>> = Vec::new();
    for &(fraction, b) in &budgets {
        let mut at_b = Vec::new();
        for &e in entries {
            if b < b_max && subset_of(e, cfg, opts) == SubsetOf::Rerun {
                at_b.push(rerun(match fraction {
                    Some(f) => Budget::Fraction(f),
                    None => Budget::Count(b as u64),
                })?);
            } else {
                at_b.push(Vec::new());
            }
        }
        reruns.push(at_b);
    }
    Ok(budgets
        .into_iter()
        .zip(&reruns)
        .map(|((fraction, b), at_b)| {
            let subsets: Vec<Subset> = entries
                .iter()
                .zip(results)
                .zip(at_b)
                .map(|((&e, r), own)| {
                    let how = subset_of(e, cfg, opts);
                    let take = |p: &[usize]| -> usize {
                        if how == SubsetOf::Prefix {
                            b.min(p.len())
                        } else {
                            p.len()
                        }
                    };
                    let positions = if how == SubsetOf::Rerun && b < b_max {
                        &own[..]
                    } else {
                        &r.positions[..take(&r.positions)]
                    };
                    let other_seeds = if e == Entry::Baseline(Method::Random) {
                        extra.iter().map(|p| &p[..take(p)]).collect()
                    } else {
                        Vec::new()
                    };
                    Subset {
                        method: r.method.clone(),
                        how,
                        positions,
                        other_seeds,
                    }
                })
                .collect();
            // At the largest budget every subset is what was evaluated above.
            let known: Vec<(String, EvalMetrics)> = if b == b_max {
                results
                    .iter()
                    .filter_map(|r| Some((r.method.clone(), r.eval.clone()?)))
                    .collect()
            } else {
                Vec::new()
            };
            by_budget::assess(ev, fraction, b, &subsets, &reference, &known)
        })
        .collect())
}

/// Writes the methods as an object keyed by method name, in run order,
/// each with its eval metrics (if any) merged in as further keys.
fn by_method<S: serde::Serializer>(
    methods: &[MethodResult],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::Error as _;
    let mut entries = Vec::with_capacity(methods.len());
    for m in methods {
        let mut v = serde_json::to_value(m).map_err(S::Error::custom)?;
        if let (Some(obj), Some(e)) = (v.as_object_mut(), &m.eval) {
            // `classes_covered` is in both and equal (checked in compare).
            let e = serde_json::to_value(e).map_err(S::Error::custom)?;
            obj.extend(
                e.as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, x)| (k.clone(), x.clone())),
            );
        }
        entries.push((&m.method, v));
    }
    s.collect_map(entries)
}

/// Runs `clipcov compare`.
/// A validated `compare` run.
pub struct CompareJob {
    pub entries: Vec<Entry>,
    /// Staging (prompt classes, or one class without prompts) and ClipCov's
    /// options; where the results go.
    pub cfg: SelectConfig,
    pub opts: MethodOptions,
    pub learner: Option<LearnerData>,
    pub prompts: Option<PathBuf>,
    /// `--eval-set` and the evaluation's options.
    pub eval_set: Option<PathBuf>,
    pub eval_opts: Option<EvalOptions>,
    /// `--fractions`, ascending; the run's budget is the largest.
    pub fractions: Option<Vec<f64>>,
    pub subset_seeds: usize,
}

/// Runs `clipcov compare`.
pub fn run_compare(job: CompareJob) -> Result<()> {
    if let Some(e) = &job.eval_set {
        crate::io::remote::stat(e)?;
    }
    for e in &job.entries {
        if let Entry::Baseline(m) = e {
            methods::check(*m, &job.opts, job.learner.is_some())?;
        }
    }
    let cfg = &job.cfg;
    let (c, published) = run_job(&cfg.out, cfg.threads, cfg.publish_to.as_deref(), || {
        compare(&job)
    })?;
    if crate::progress::quiet() {
        return Ok(());
    }
    print!("{}", markdown(&c));
    for r in &c.methods {
        for f in &r.outputs {
            println!("  wrote {}", cfg.out.join(&f.path).display());
        }
    }
    if !c.methods.iter().any(|r| r.method == "clipcov") && cfg.out.join("rejects.parquet").exists()
    {
        println!("  wrote {}", cfg.out.join("rejects.parquet").display());
    }
    println!("  wrote {}", cfg.out.join("compare.md").display());
    println!("  wrote {}", cfg.out.join("compare.json").display());
    println!("  wrote {}", cfg.out.join("report.html").display());
    print_published(cfg.publish_to.as_deref(), &published);
    Ok(())
}

fn compare(job: &CompareJob) -> Result<Comparison> {
    let (entries, cfg, opts) = (&job.entries[..], &job.cfg, &job.opts);
    let fractions = job.fractions.as_deref();
    let started = Instant::now();
    let mut timings = Vec::new();
    let staged = staging::stage_data(cfg, &cfg.out.join("store"), &mut timings)?;
    let store = &staged.store;
    let ctx = Ctx::new(store, staged.tile_rows);
    let (_, budget_warning) = cfg.budget.checked_rows(ctx.n() as u64)?;
    let lstaged = if entries.contains(&Entry::Baseline(Method::CRho)) {
        stage_learner(cfg, job.learner.as_ref(), &mut timings)?
    } else {
        None
    };
    let learner = learner(&ctx, &staged, lstaged.as_ref())?;
    let prompts = matches!(cfg.classes, ClassSource::Prompts(_));
    let offsets = &store.meta.class_offsets;
    let class_of = |pos: usize| offsets.partition_point(|&o| o <= pos as u64) - 1;
    let covered = |positions: &mut dyn Iterator<Item = usize>| {
        let mut c: Vec<usize> = positions.map(class_of).collect();
        c.sort_unstable();
        c.dedup();
        c.len()
    };

    // Every output is staged and published as one set at the end.
    let mut set = OutputSet::new(&cfg.out)?;
    for e in entries {
        emit::replace_optional_outputs(&mut set, e.name());
    }
    let staging = set.dir().to_path_buf();
    let mut results = Vec::new();
    // ClipCov's picks and terms, for the report.
    let mut clip = None;
    for &e in entries {
        let t = Instant::now();
        let shared_seconds = ctx.shared_seconds();
        crate::progress::stage_start(e.name(), ctx.n() as u64);
        let mut r = match e {
            Entry::ClipCov => {
                let (picks, terms) = pipeline::clipcov_picks(cfg, &staged, &mut Vec::new())?;
                let m = emit::emit_clipcov(
                    &staging,
                    store,
                    terms.as_slice(),
                    &picks,
                    &staged.ingested.rejects,
                    &staged.clipcov_extras(cfg),
                )?;
                let k = covered(&mut picks.iter().map(|p| p.pos));
                let r = MethodResult {
                    classes_covered: Some(k),
                    clusters: Some(store.meta.classes()),
                    clusters_covered: Some(k),
                    outputs: m.outputs,
                    ..MethodResult::kept("clipcov", &ctx, picks.iter().map(|p| p.pos))
                };
                clip = Some((picks, terms));
                r
            }
            Entry::Baseline(m) => {
                let sel = methods::run(m, &ctx, opts, &staging, learner.as_ref())?;
                if sel.picks.is_empty() {
                    return Err(Error::Usage(format!(
                        "{} keeps none of the {} rows with these options; loosen them",
                        m.name(),
                        ctx.n()
                    )));
                }
                let positions = || sel.picks.iter().map(|p| p.pos);
                MethodResult {
                    classes_covered: prompts.then(|| covered(&mut positions())),
                    clusters: sel.clusters,
                    clusters_covered: sel.clusters_covered(),
                    outputs: method_files::write_subset(&staging, &ctx, &sel, &staged.extras(cfg))?,
                    report: sel.report.clone(),
                    ..MethodResult::kept(m.name(), &ctx, positions())
                }
            }
        };
        r.seconds = t.elapsed().as_secs_f64() - (ctx.shared_seconds() - shared_seconds);
        crate::progress::stage_end(e.name(), r.seconds, ctx.n() as u64);
        r.uses_shared = uses_shared(e, opts, ctx.n());
        results.push(r);
    }
    let rejects = &staged.ingested.rejects;
    if !entries.contains(&Entry::ClipCov) && !rejects.is_empty() {
        // clipcov's emit writes them otherwise.
        emit::write_rejects(&staging.join("rejects.parquet"), rejects)?;
    }
    for i in 0..results.len() {
        for j in 0..results.len() {
            let v = jaccard(&results[i].kept_rows, &results[j].kept_rows);
            let name = results[j].method.clone();
            results[i].jaccard.insert(name, v.into());
        }
    }
    let mut eval_stage = None;
    let mut budgets = Vec::new();
    if let (Some(path), Some(eo)) = (&job.eval_set, job.eval_opts.clone()) {
        let t = Instant::now();
        let ev = Evaluator::new(store, &staged.files, &staged.class_emb, path, eo)?;
        for r in &mut results {
            let e = ev.evaluate(&r.positions);
            if r.classes_covered != Some(e.cov.classes_covered) {
                return Err(Error::Internal(format!(
                    "{}: eval counts {} classes covered, compare {:?}",
                    r.method, e.cov.classes_covered, r.classes_covered
                )));
            }
            r.eval = Some(e);
        }
        let rerun = |budget: Budget| -> Result<Vec<usize>> {
            let cfg = SelectConfig {
                budget,
                ..cfg.clone()
            };
            let (picks, _) = pipeline::clipcov_picks(&cfg, &staged, &mut Vec::new())?;
            Ok(picks.iter().map(|p| p.pos).collect())
        };
        budgets = assess_budgets(
            &ev,
            &ctx,
            entries,
            &results,
            cfg,
            opts,
            job.subset_seeds,
            fractions,
            &rerun,
        )?;
        eval_stage = Some(SharedStage {
            stage: format!("eval ({} methods)", results.len()),
            seconds: t.elapsed().as_secs_f64(),
        });
    }
    let names: Vec<String> = results.iter().map(|r| r.method.clone()).collect();
    let matrix: Vec<Vec<f64>> = results
        .iter()
        .map(|r| {
            names
                .iter()
                .map(|n| r.jaccard.get(n).and_then(|v| v.as_f64()).unwrap_or(0.0))
                .collect()
        })
        .collect();
    match &clip {
        Some((picks, terms)) => {
            crate::output::report::write_clipcov_report(
                &staging,
                "clipcov compare",
                store,
                terms.as_slice(),
                picks,
                Some((names, matrix)),
                &pipeline::report_parameters(cfg),
            )?;
        }
        None => crate::output::report::write(
            &staging.join("report.html"),
            &crate::output::report::Report {
                title: "clipcov compare".into(),
                summary: vec![("rows".into(), ctx.n().to_string())]
                    .into_iter()
                    .chain(
                        pipeline::report_parameters(cfg)
                            .into_iter()
                            .filter(|(k, _)| ["data", "budget", "where"].contains(&k.as_str())),
                    )
                    .collect(),
                overlap: Some((names, matrix)),
                ..Default::default()
            },
        )?,
    }
    let mut shared: Vec<SharedStage> = timings
        .iter()
        .map(|t| SharedStage {
            stage: t.stage.clone(),
            seconds: t.seconds,
        })
        .collect();
    shared.extend(ctx.shared_stages());
    shared.extend(eval_stage);
    let n = ctx.n();
    let c = Comparison {
        tool: "clipcov".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        data: cfg.data.clone(),
        rows: n,
        budget_rows: cfg.budget.rows(n as u64) as usize,
        classes: prompts.then(|| store.meta.classes()),
        parameters: serde_json::json!({
            "methods": entries.iter().map(|e| e.name()).collect::<Vec<_>>(),
            "budget": cfg.budget,
            "prompts": job.prompts,
            "where": cfg.filter,
            "train_csv": cfg.train_csv,
            "prefilter": staged.ingested.prefilter,
            "tau": cfg.tau.to_string(),
            "refresh": cfg.refresh,
            "refresh_period": cfg.refresh.period(
                cfg.budget.rows(n as u64) as usize,
                store.meta.nonempty_classes(),
            ),
            "weights": cfg.weights,
            "options": opts,
            "learner_data": job.learner.as_ref().map(|l| &l.data),
            "threads": cfg.threads,
            "tile_rows": staged.tile_rows,
            "d": store.meta.d,
            "store_dtype": store.meta.dtype,
            "eval_set": job.eval_set,
            "warnings": budget_warning.into_iter().collect::<Vec<_>>(),
            "eval": job.eval_opts,
            "fractions": fractions,
            "subset_seeds": job.subset_seeds,
        }),
        shared,
        method_order: results.iter().map(|r| r.method.clone()).collect(),
        methods: results,
        budgets,
        seconds_total: started.elapsed().as_secs_f64(),
    };
    write_json(&staging.join("compare.json"), &c)?;
    let md = markdown(&c);
    let path = staging.join("compare.md");
    atomic_write(&path, |w| {
        use std::io::Write;
        w.write_all(md.as_bytes()).map_err(|e| Error::io(&path, e))
    })?;
    set.commit()?;
    Ok(c)
}

/// Which shared stages an entry draws on (for the report).
fn uses_shared(e: Entry, opts: &MethodOptions, n: usize) -> Vec<String> {
    let scores = "clip scores".to_string();
    match e {
        Entry::Baseline(Method::ClipScore | Method::NegClipLoss) => vec![scores],
        Entry::Baseline(Method::DatacompImageBased) => vec![scores],
        Entry::Baseline(Method::Semdedup | Method::Ssp) => {
            vec![format!("spherical k-means (C = {})", opts.clusters_for(n))]
        }
        _ => Vec::new(),
    }
}

fn of(x: Option<usize>, total: Option<usize>) -> String {
    match (x, total) {
        (Some(x), Some(t)) => format!("{x}/{t}"),
        (Some(x), None) => x.to_string(),
        _ => "-".into(),
    }
}

fn notes(r: &MethodResult) -> String {
    let mut s = Vec::new();
    if let Some(e) = r.report.get("eps") {
        match e.as_f64() {
            Some(e) => s.push(format!("eps = {e:.6}")),
            None => s.push("no finite eps".to_string()),
        }
    }
    if let Some(k) = r.report.get("clusters_with_targets") {
        s.push(format!("{k} clusters hold a target"));
    }
    if !r.uses_shared.is_empty() {
        s.push(format!("uses {}", r.uses_shared.join(", ")));
    }
    s.join("; ")
}

/// The eval metrics of every method: covariance error (lower is better),
/// coverage, entropy, proxy accuracy and recall (mean ± std over seeds),
/// kind shares.
fn eval_table(s: &mut String, c: &Comparison) {
    let kinds: Vec<String> = c
        .methods
        .iter()
        .find_map(|r| r.eval.as_ref()?.kind_share.as_ref())
        .map(|k| k.keys().cloned().collect())
        .unwrap_or_default();
    let _ = writeln!(s, "\nEval (proxy metrics: mean ± std over seeds):\n");
    let _ = write!(
        s,
        "| method | rows | cov err | cov err/class | classes | entropy | zero-shot top-1 | zero-shot top-5 | retrieval R@1 |"
    );
    for k in &kinds {
        let _ = write!(s, " {k} |");
    }
    let _ = write!(s, "\n|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for _ in &kinds {
        let _ = write!(s, "---:|");
    }
    let _ = writeln!(s);
    for r in &c.methods {
        let Some(e) = &r.eval else { continue };
        let _ = write!(
            s,
            "| {} | {} | {:.4} | {:.4} | {} | {:.3} | {} | {} | {} |",
            r.method,
            e.rows,
            e.cov.cov_rel_error,
            e.cov.cov_rel_error_per_class,
            e.cov.classes_covered,
            e.cov.class_entropy,
            plus_minus(e.zero_shot_top1, e.zero_shot_top1_std, 3),
            plus_minus(e.zero_shot_top5, e.zero_shot_top5_std, 3),
            plus_minus(e.retrieval_r1, e.retrieval_r1_std, 3),
        );
        for k in &kinds {
            let v = e.kind_share.as_ref().and_then(|m| m.get(k)).copied();
            let _ = write!(s, " {:.3} |", v.unwrap_or(f64::NAN));
        }
        let _ = writeln!(s);
    }
}

/// `compare.md`: the table, the overlap matrix and the shared stages.
pub fn markdown(c: &Comparison) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# clipcov compare\n");
    let _ = writeln!(
        s,
        "{} rows, budget B = {}{}.\n",
        c.rows,
        c.budget_rows,
        c.classes
            .map_or(String::new(), |k| format!(", {k} latent classes (prompts)"))
    );
    let _ = writeln!(
        s,
        "| method | rows kept | classes covered | clusters covered | seconds | notes |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---|");
    for r in &c.methods {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.2} | {} |",
            r.method,
            r.rows_kept,
            of(r.classes_covered, c.classes),
            of(r.clusters_covered, r.clusters),
            r.seconds,
            notes(r)
        );
    }
    if c.methods.iter().any(|r| r.eval.is_some()) {
        eval_table(&mut s, c);
    }
    by_budget::markdown(&mut s, &c.budgets, c.classes);
    let _ = writeln!(s, "\nJaccard overlap of the kept rows:\n");
    let _ = write!(s, "| |");
    for r in &c.methods {
        let _ = write!(s, " {} |", r.method);
    }
    let _ = write!(s, "\n|---|");
    for _ in &c.methods {
        let _ = write!(s, "---:|");
    }
    let _ = writeln!(s);
    for r in &c.methods {
        let _ = write!(s, "| {} |", r.method);
        for o in &c.methods {
            let v = r.jaccard.get(&o.method).and_then(|v| v.as_f64());
            let _ = write!(s, " {:.3} |", v.unwrap_or(f64::NAN));
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "\nSeconds are each method's own work and files; shared work, done once:\n"
    );
    for t in &c.shared {
        let _ = writeln!(s, "- {}: {:.2} s", t.stage, t.seconds);
    }
    let _ = writeln!(s, "\nTotal: {:.2} s.", c.seconds_total);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_parse() {
        assert_eq!(parse_methods(DEFAULT_METHODS).unwrap().len(), 6);
        assert!(parse_methods("clipcov,clipcov").is_err());
        assert!(parse_methods("nope").is_err());
    }
}
