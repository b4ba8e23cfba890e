//! The `select` job: stage the data (`jobs::staging`), score, select,
//! emit, with a timing and a row count for every stage, and the run
//! manifest.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::jobs::config::SelectConfig;
use crate::jobs::shell::{run_job, stage, store_dir};
use crate::jobs::staging::{stage_data, Staged};
use crate::memory::RssMonitor;
use crate::output::emit::{self, Manifest, StageTiming};
use crate::output::publish::OutputSet;
use crate::stages::classes::ClassSource;
use crate::stages::rescore;
use crate::stages::score::{self, CrossSample, ScoreOptions, ScoreStats, TERMS};
use crate::stages::select::{self, Budget, Pick, SelectOptions};
use crate::store::journal::{self, Journal};
use crate::store::{files, Mapped};

/// What a finished run reports.
#[derive(Debug)]
pub struct SelectSummary {
    pub manifest: Manifest,
    pub manifest_path: PathBuf,
    /// The URLs uploaded to (`--out` a URL), manifest last.
    pub published: Vec<String>,
}

/// Runs the whole `select` job on a rayon pool of `cfg.threads` threads.
pub fn run_select(cfg: &SelectConfig) -> Result<SelectSummary> {
    let (summary, published) = run_job(&cfg.out, cfg.threads, cfg.publish_to.as_deref(), || {
        run(cfg, &store_dir(&cfg.out))
    })?;
    Ok(SelectSummary {
        published,
        ..summary
    })
}

/// What the journal's score record keeps: the stats, and what they were
/// computed from (an append's incremental score starts from them).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ScoreRecord {
    stats: ScoreStats,
    store_key: String,
    params: String,
}

/// Scores and selects on a staged store (stages score, select); returns the
/// picks and the mapped terms.
pub fn clipcov_picks(
    cfg: &SelectConfig,
    staged: &Staged,
    timings: &mut Vec<StageTiming>,
) -> Result<(Vec<Pick>, Mapped<f64>)> {
    let store = &staged.store;
    let n = store.meta.rows;
    let store_bytes = n * (2 * store.d() * store.meta.dtype.bytes()) as u64;
    let opts = ScoreOptions {
        tau: cfg.tau,
        tile_rows: staged.tile_rows,
        cross: cfg.cross,
        seed: cfg.seed,
        memory_limit_bytes: cfg.memory_limit_bytes,
    };
    // The estimator is part of the key: a store scored exactly is never
    // reused for a sampled run, nor the other way round (`auto`'s sample
    // sizes also depend on the memory limit and the threads).
    let estimator = match cfg.cross {
        CrossSample::Auto { .. } => format!(
            "{} limit {} threads {}",
            cfg.cross.describe(cfg.tau, cfg.seed),
            cfg.memory_limit_bytes,
            rayon::current_num_threads()
        ),
        _ => cfg.cross.describe(cfg.tau, cfg.seed),
    };
    // The tile side is not in the key: it changes the order of the f64
    // sums only, and an append that grows the memory plan keeps its scores.
    let params = journal::key_of(&(cfg.tau.to_string(), estimator));
    let key = journal::key_of(&(&staged.key, &params));
    let mut journal = Journal::load(&store.dir);
    let record = |key: &str| -> Option<ScoreRecord> {
        let r = journal.valid(&store.dir, "score", key)?;
        serde_json::from_value::<ScoreRecord>(r.report.clone()).ok()
    };
    let reused = if cfg.fresh { None } else { record(&key) };
    // After an append: the scores of the store before it, when they are
    // intact and were computed with these parameters.
    let (earlier, why_full) = match (&staged.previous, cfg.fresh) {
        (Some(prev), false) => {
            let last = journal
                .stages
                .get("score")
                .map(|r| r.key.clone())
                .and_then(|k| record(&k))
                .filter(|r| r.store_key == prev.key);
            match last {
                Some(r) if r.params == params => (Some((prev, r.stats)), None),
                Some(_) => (None, Some("tau or --cross-sample changed")),
                None => (
                    None,
                    Some("no intact scores of the store before the append"),
                ),
            }
        }
        (Some(_), true) => (None, Some("--fresh")),
        (None, _) => (None, None),
    };
    let stats = match (reused, earlier) {
        (Some(r), _) => {
            stage(timings, "reuse-score", n, 0, || Ok(()))?;
            r.stats
        }
        (None, earlier) => {
            let stats = match earlier {
                Some((prev, stats)) => stage(timings, "score", n, store_bytes, || {
                    let dir = &store.dir;
                    let order = Mapped::<u64>::open(&dir.join(files::ORDER_PREV))?;
                    let terms = Mapped::<f64>::open(&dir.join(files::TERMS))?;
                    let previous = rescore::Previous {
                        meta: &prev.meta,
                        order: order.as_slice(),
                        terms: terms.as_slice(),
                        sums: score::read_sums(dir, prev.meta.classes(), prev.meta.d)?,
                        stats,
                    };
                    rescore::rescore(store, &staged.class_emb, &previous, &opts, dir)
                })?,
                None => {
                    journal.forget(&store.dir, "score")?;
                    let mut stats = stage(timings, "score", n, store_bytes, || {
                        score::score(store, &staged.class_emb, &opts, &store.dir)
                    })?;
                    stats.full_reason = why_full.map(str::to_string);
                    stats
                }
            };
            let report = ScoreRecord {
                stats: stats.clone(),
                store_key: staged.key.clone(),
                params,
            };
            let report = serde_json::to_value(&report).unwrap_or_default();
            let written = [files::TERMS, files::SUMS];
            journal.record(&store.dir, "score", &key, &written, report)?;
            stats
        }
    };
    if let Some(t) = timings.last_mut() {
        t.kernels = Some(stats);
    }
    let terms = Mapped::<f64>::open(&store.dir.join(files::TERMS))?;
    let budget = cfg.budget.rows(n) as usize;
    let sel_opts = SelectOptions {
        weights: cfg.weights,
        refresh: cfg.refresh.period(budget, store.meta.nonempty_classes()),
        budget,
        tau: cfg.tau,
        tile_rows: staged.tile_rows,
        mode: cfg.refresh_mode,
    };
    let (picks, refresh_stats) = stage(timings, "select", n, n * (TERMS as u64) * 8, || {
        Ok(select::select_with_stats(
            store,
            terms.as_slice(),
            &sel_opts,
        ))
    })?;
    if let Some(t) = timings.last_mut() {
        t.refresh = Some(refresh_stats);
    }
    Ok((picks, terms))
}

fn run(cfg: &SelectConfig, store_dir: &Path) -> Result<SelectSummary> {
    let started = Instant::now();
    let monitor = RssMonitor::start();
    let mut timings = Vec::new();
    let staged = stage_data(cfg, store_dir, &mut timings)?;
    let (_, budget_warning) = cfg.budget.checked_rows(staged.store.meta.rows)?;
    let (picks, terms) = clipcov_picks(cfg, &staged, &mut timings)?;
    let store = &staged.store;
    // Every output is staged and published as one set at the end.
    let mut set = OutputSet::new(&cfg.out)?;
    emit::replace_optional_outputs(&mut set, "clipcov");
    let staging = set.dir().to_path_buf();
    let manifest = stage(&mut timings, "emit", picks.len() as u64, 0, || {
        let mut m = emit::emit_clipcov(
            &staging,
            store,
            terms.as_slice(),
            &picks,
            &staged.ingested.rejects,
            &staged.clipcov_extras(cfg),
        )?;
        m.outputs.push(crate::output::report::write_clipcov_report(
            &staging,
            "clipcov select",
            store,
            terms.as_slice(),
            &picks,
            None,
            &report_parameters(cfg),
        )?);
        Ok(m)
    })?;
    let budget = cfg.budget.rows(store.meta.rows) as usize;
    let mut manifest = staged.finish_manifest(
        manifest,
        cfg,
        budget,
        timings,
        monitor.report(),
        started.elapsed().as_secs_f64(),
    );
    manifest.warnings.extend(budget_warning);
    // The columns read, with the layout's defaults filled in.
    if let Some(o) = manifest.parameters.as_object_mut() {
        o.insert(
            "columns".into(),
            serde_json::to_value(&staged.columns).unwrap_or_default(),
        );
    }
    emit::write_manifests(&cfg.out, &staging, &mut manifest)?;
    set.commit()?;
    let manifest_path = cfg.out.join("manifest.json");
    Ok(SelectSummary {
        manifest,
        manifest_path,
        published: Vec::new(),
    })
}

/// The run's parameters as report lines: the data, the classes, the
/// budget, `tau`, the weights and the refresh period.
pub fn report_parameters(cfg: &SelectConfig) -> Vec<(String, String)> {
    let classes = match &cfg.classes {
        ClassSource::Prompts(p) => format!("prompts {}", p.display()),
        ClassSource::KMeans { clusters, .. } => format!("spherical k-means, {clusters} clusters"),
        ClassSource::Single => "one class".into(),
    };
    let budget = match cfg.budget {
        Budget::Fraction(f) => format!("fraction {f}"),
        Budget::Count(c) => format!("{c} rows"),
    };
    let w = cfg.weights;
    let mut v = vec![
        ("data".to_string(), cfg.data.display().to_string()),
        ("classes from".into(), classes),
        ("budget".into(), budget),
        ("tau".into(), cfg.tau.to_string()),
        (
            "weights (cross, easy, label, between)".into(),
            format!("{}, {}, {}, {}", w.cross, w.easy, w.label, w.between),
        ),
        ("refresh".into(), cfg.refresh.to_string()),
    ];
    if let Some(f) = &cfg.filter {
        v.push(("where".into(), f.clone()));
    }
    v
}
