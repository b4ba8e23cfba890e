//! The `select` job: ingest -> classes -> score -> select -> emit, with a
//! timing and a row count for every stage, and the run manifest.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::formats::dataset::{Columns, SourceFile};
use crate::formats::dataset::{Layout, Model};
use crate::formats::metadata::Keep;
use crate::formats::prompts::{read_prompts, Prompts};
use crate::formats::{dataset, shards};
use crate::io::written::write_json;
use crate::jobs::shell::{run_job, store_dir};
use crate::memory::{self, MemoryReport, Plan, RssMonitor};
use crate::output::emit::{self, Manifest, StageTiming, SubsetExtras};
use crate::output::publish::OutputSet;
use crate::stages::append::{self, AppendPlan, InputStat};
use crate::stages::classes::{self, ClassSource, ClassTable};
use crate::stages::ingest::{
    self, BadRowPolicy, Classify, DuplicatePolicy, IngestOptions, Ingested,
};
use crate::stages::prefilter::Predicate;
use crate::stages::rescore;
use crate::stages::score::{self, CrossSample, ScoreOptions, ScoreStats, Tau, TERMS};
use crate::stages::select::{self, Budget, Pick, Refresh, RefreshMode, SelectOptions, Weights};
use crate::store::journal::{self, Journal};
use crate::store::{files, Mapped, SeqWriter, Store, StoreMeta, STORE_VERSION};

/// A validated `select` configuration.
#[derive(Clone, Debug, Serialize)]
pub struct SelectConfig {
    pub data: PathBuf,
    pub classes: ClassSource,
    pub budget: Budget,
    pub out: PathBuf,
    pub tau: Tau,
    pub refresh: Refresh,
    /// Lazy (default where exact) or eager refresh: same picks, less work.
    pub refresh_mode: RefreshMode,
    /// `--cross-sample`: the estimator of `cross` (seeded by `seed`).
    #[serde(serialize_with = "serialize_cross")]
    pub cross: CrossSample,
    pub weights: Weights,
    pub memory_limit_bytes: u64,
    pub threads: usize,
    /// Forces the tile side (tests use it to tile inside small classes).
    pub tile_rows: Option<usize>,
    /// Forces the rows per chunk of ingest's class buckets (tests use it to
    /// split classes into many runs).
    pub chunk_rows: Option<usize>,
    pub columns: Columns,
    pub on_bad_row: BadRowPolicy,
    pub on_duplicate: DuplicatePolicy,
    pub seed: u64,
    /// Assign classes by captions instead of images (`--assign text`).
    pub assign_text: bool,
    /// Ignore what an earlier run left in the store and start over.
    pub fresh: bool,
    /// The input layout; `None` detects it.
    pub layout: Option<Layout>,
    /// The DataComp embeddings to read.
    pub model: Model,
    /// Metadata columns carried into the subset files.
    pub keep_columns: Vec<String>,
    /// `--train-csv`: also write each method's `train.csv`.
    pub train_csv: Option<crate::output::train_csv::TrainCsv>,
    /// The URL prefix the results in `out` (then a local work folder) are
    /// uploaded to when the run succeeds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_to: Option<PathBuf>,
    /// `--where`: a SQL predicate over metadata columns; only the rows it
    /// keeps are staged (src/stages/prefilter.rs).
    #[serde(rename = "where")]
    pub filter: Option<String>,
}

impl SelectConfig {
    /// The configuration as the manifest records it (`tau` as its flag).
    pub fn manifest_parameters(&self) -> serde_json::Value {
        let mut params = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = params.as_object_mut() {
            o.insert(
                "tau".into(),
                serde_json::Value::String(self.tau.to_string()),
            );
        }
        params
    }
}

fn serialize_cross<S: serde::Serializer>(
    c: &CrossSample,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match c {
        CrossSample::Exact => s.serialize_str("exact"),
        CrossSample::Fixed(m) => s.serialize_u64(*m as u64),
        CrossSample::Auto { error } => {
            use serde::ser::SerializeMap;
            let mut map = s.serialize_map(Some(1))?;
            map.serialize_entry("auto", &serde_json::json!({ "error": error }))?;
            map.end()
        }
    }
}

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

fn stage<T>(
    timings: &mut Vec<StageTiming>,
    name: &str,
    rows: u64,
    bytes: u64,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let t = Instant::now();
    let p = crate::progress::start(name, rows);
    let v = match f() {
        Ok(v) => v,
        Err(e) => {
            p.fail(&e);
            return Err(e);
        }
    };
    p.finish();
    let s = t.elapsed().as_secs_f64();
    timings.push(StageTiming {
        stage: name.to_string(),
        seconds: s,
        rows,
        rows_per_second: if s > 0.0 { rows as f64 / s } else { 0.0 },
        bytes_read: bytes,
        gb_per_second: if s > 0.0 { bytes as f64 / s / 1e9 } else { 0.0 },
        kernels: None,
        refresh: None,
    });
    Ok(v)
}

/// The staged store and what was learned while staging it.
pub struct Staged {
    pub store: Store,
    pub ingested: Ingested,
    pub files: Vec<SourceFile>,
    /// `[K, d]`: the class prompt or centroid `c_k` of every class.
    pub class_emb: Vec<f32>,
    pub plan: Plan,
    pub tile_rows: usize,
    /// The store stage's resume key.
    pub key: String,
    /// The layout read and the column names used (layout defaults filled in).
    pub layout: Layout,
    pub columns: Columns,
    /// How the store came to be: reused, appended to, or staged in full.
    pub history: StoreHistory,
    /// After an append: the store before it, whose scores the score stage
    /// brings up to date.
    pub previous: Option<PreviousStore>,
}

/// How a run's store came to be, for the manifest.
#[derive(Clone, Debug, Serialize)]
pub struct StoreHistory {
    /// `reused`, `appended` or `staged`.
    pub store: &'static str,
    /// Why the store was staged in full rather than appended to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub shards_added: usize,
    pub rows_added: u64,
}

impl StoreHistory {
    fn staged(reason: String) -> Self {
        StoreHistory {
            store: "staged",
            reason: Some(reason),
            shards_added: 0,
            rows_added: 0,
        }
    }
}

/// What the journal's store record keeps beside its key: the parameters
/// and the inputs it was staged from (a later run compares them with its
/// own to append), and the store before the last append.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoreRecord {
    params: serde_json::Value,
    inputs: Vec<InputStat>,
    #[serde(default)]
    previous: Option<PreviousStore>,
}

/// The store before an append: its key and its metadata.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PreviousStore {
    pub key: String,
    pub meta: StoreMeta,
}

/// What the journal's score record keeps: the stats, and what they were
/// computed from (an append's incremental score starts from them).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ScoreRecord {
    stats: ScoreStats,
    store_key: String,
    params: String,
}

impl Staged {
    /// The manifest of a run on this store: `m` (its outputs) with the
    /// inputs, parameters, row counts, stages and memory filled in.
    pub fn finish_manifest(
        &self,
        m: Manifest,
        cfg: &SelectConfig,
        budget: usize,
        timings: Vec<StageTiming>,
        memory: MemoryReport,
        seconds: f64,
    ) -> Manifest {
        let meta = &self.store.meta;
        let incremental = self.incremental(&timings);
        let mut m = emit::finish_manifest(
            m,
            cfg.manifest_parameters(),
            cfg.refresh.period(budget, meta.nonempty_classes()),
            &self.files,
            &self.ingested,
            meta,
            budget,
            timings,
            memory,
            self.plan,
            self.tile_rows,
            seconds,
        );
        m.incremental = Some(incremental);
        m
    }

    /// The manifest's `incremental`: how the store came to be and, when
    /// the run scored, how the score did and its cross-tile work against a
    /// full score's.
    fn incremental(&self, timings: &[StageTiming]) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.history).unwrap_or_default();
        let score = timings
            .iter()
            .find(|t| t.stage == "score" || t.stage == "reuse-score");
        let Some(score) = score else {
            return v;
        };
        let o = v.as_object_mut().expect("an object");
        let kernels = score.kernels.as_ref();
        let done = kernels.map_or(0.0, |k| k.cross_flop);
        match kernels.and_then(|k| k.incremental.as_ref()) {
            _ if score.stage == "reuse-score" => {
                o.insert("score".into(), "reused".into());
            }
            Some(r) => {
                o.insert("score".into(), "incremental".into());
                o.insert("classes_touched".into(), r.classes_touched.into());
                o.insert("between".into(), r.between.clone().into());
                o.insert("cross_tile_flop".into(), done.into());
                o.insert("cross_tile_flop_full_run".into(), r.cross_flop_full.into());
                let share = if r.cross_flop_full > 0.0 {
                    done / r.cross_flop_full
                } else {
                    0.0
                };
                o.insert("cross_tile_share".into(), share.into());
            }
            None => {
                o.insert("score".into(), "full".into());
                if let Some(why) = kernels.and_then(|k| k.full_reason.as_ref()) {
                    o.insert("score_reason".into(), why.clone().into());
                }
                o.insert("cross_tile_flop".into(), done.into());
            }
        }
        v
    }

    /// What `--keep-columns` and `--train-csv` need to fetch the selected
    /// rows' metadata.
    pub fn extras(&self, cfg: &SelectConfig) -> SubsetExtras<'_> {
        SubsetExtras {
            keep: Keep {
                names: cfg.keep_columns.clone(),
                files: &self.files,
                starts: self.ingested.starts(),
            },
            train: cfg.train_csv.clone(),
            key_value: Vec::new(),
        }
    }

    /// [`Self::extras`] for ClipCov's own subset: its `subset.parquet`
    /// also names the estimator of `cross` in its key-value metadata.
    pub fn clipcov_extras(&self, cfg: &SelectConfig) -> SubsetExtras<'_> {
        SubsetExtras {
            key_value: vec![(
                "clipcov.cross".into(),
                cfg.cross.describe(cfg.tau, cfg.seed),
            )],
            ..self.extras(cfg)
        }
    }
}

/// Ingests `cfg.data`, assigns latent classes and writes the class-sorted
/// store in `store_dir`, or reuses the store there when its journal matches
/// the inputs (otherwise it is rebuilt from scratch). Stages: prefilter,
/// ingest, classes.
pub fn stage_data(
    cfg: &SelectConfig,
    store_dir: &Path,
    timings: &mut Vec<StageTiming>,
) -> Result<Staged> {
    // Remote .npy/.npz inputs are copied here (kept for reruns, outside
    // the store, which a restaging run removes).
    crate::io::remote::set_cache_dir(&cfg.out.join("remote-cache"));
    // A predicate that does not parse fails before anything is read.
    let predicate = cfg.filter.as_deref().map(Predicate::parse).transpose()?;
    let inputs = Inputs::find(cfg)?;
    let reason = if cfg.fresh {
        "--fresh".to_string()
    } else {
        if let Some(staged) = reuse_store(&inputs, store_dir, timings)? {
            return Ok(staged);
        }
        match append_to_store(cfg, &inputs, predicate.as_ref(), store_dir, timings)? {
            Ok(staged) => return Ok(staged),
            Err(reason) => reason,
        }
    };
    let filter = match &predicate {
        Some(p) => Some(Arc::new(stage(
            timings,
            "prefilter",
            inputs.total_rows,
            0,
            || p.evaluate(&inputs.files, &inputs.file_rows),
        )?)),
        None => None,
    };
    if store_dir.exists() {
        std::fs::remove_dir_all(store_dir).at_path(store_dir)?;
    }
    std::fs::create_dir_all(store_dir).at_path(store_dir)?;
    let opts = ingest_options(cfg, &inputs, filter);
    let ing = stage(
        timings,
        "ingest",
        inputs.total_rows,
        inputs.input_bytes,
        || ingest::ingest(&inputs.files, store_dir, &opts),
    )?;
    finish_store(
        cfg,
        &inputs,
        store_dir,
        ing,
        Journal::default(),
        None,
        StoreHistory::staged(reason),
        timings,
    )
}

/// The classes stage on the staged rows `ing`, then the store's metadata
/// and its journal record (`journal` is the store's, or a new one): the
/// last steps of staging in full and of an append.
#[allow(clippy::too_many_arguments)]
fn finish_store(
    cfg: &SelectConfig,
    inputs: &Inputs,
    store_dir: &Path,
    ing: Ingested,
    journal: Journal,
    previous: Option<PreviousStore>,
    history: StoreHistory,
    timings: &mut Vec<StageTiming>,
) -> Result<Staged> {
    // With prompts, classes were assigned during ingest: nothing is read.
    let store_bytes = ing.file_rows * (2 * ing.d * ing.dtype.bytes()) as u64;
    let classes_bytes = match cfg.classes {
        ClassSource::KMeans { .. } => store_bytes,
        _ => 0,
    };
    let table = stage(timings, "classes", ing.file_rows, classes_bytes, || {
        classes::assign(
            &cfg.classes,
            inputs.prompts.as_ref(),
            &ing,
            store_dir,
            cfg.seed,
        )
    })?;
    let record = StoreRecord {
        params: inputs.params.clone(),
        inputs: inputs.stats.clone(),
        previous: previous.clone(),
    };
    let meta = write_store_meta(store_dir, &ing, &table, &inputs.key, record, journal)?;
    Ok(Staged {
        store: Store::open(store_dir, meta)?,
        ingested: ing,
        files: inputs.files.clone(),
        class_emb: table.embeddings,
        plan: inputs.plan,
        tile_rows: inputs.tile_rows,
        key: inputs.key.clone(),
        layout: inputs.layout,
        columns: inputs.columns.clone(),
        history,
        previous,
    })
}

/// Stages the shards added since the store in `store_dir` was staged and
/// appends them to it (stages prefilter, ingest and append on the new
/// shards, then classes), or says why the store cannot grow into today's
/// input (then the caller stages everything).
fn append_to_store(
    cfg: &SelectConfig,
    inputs: &Inputs,
    predicate: Option<&Predicate>,
    store_dir: &Path,
    timings: &mut Vec<StageTiming>,
) -> Result<std::result::Result<Staged, String>> {
    let mut journal = Journal::load(store_dir);
    let Some(rec) = journal.stages.get("store").cloned() else {
        return Ok(Err("no earlier store in OUT/store".into()));
    };
    let Ok(before) = serde_json::from_value::<StoreRecord>(rec.report.clone()) else {
        return Ok(Err("the store was staged by an older clipcov".into()));
    };
    if let Some(what) = changed_parameter(&before.params, &inputs.params) {
        return Ok(Err(format!("{what} changed since the store was staged")));
    }
    if matches!(cfg.classes, ClassSource::KMeans { .. }) {
        return Ok(Err("k-means classes are fitted on every row".into()));
    }
    let plan = match AppendPlan::new(&before.inputs, &inputs.stats) {
        Ok(p) if p.added.is_empty() => return Ok(Err("the store is out of date".into())),
        Ok(p) => p,
        Err(reason) => return Ok(Err(reason)),
    };
    if journal.valid(store_dir, "store", &rec.key).is_none() {
        return Ok(Err("the store is incomplete or damaged".into()));
    }
    let read = |name: &str| -> Result<String> {
        let p = store_dir.join(name);
        std::fs::read_to_string(&p).at_path(&p)
    };
    let (Ok(old), Ok(old_meta)) = (
        serde_json::from_str::<Ingested>(&read(files::INGEST)?),
        serde_json::from_str::<StoreMeta>(&read(files::META)?),
    ) else {
        return Ok(Err("the store's metadata is unreadable".into()));
    };

    let added: Vec<SourceFile> = plan
        .added
        .iter()
        .map(|&i| inputs.files[i].clone())
        .collect();
    let added_rows: Vec<u64> = plan.added.iter().map(|&i| inputs.file_rows[i]).collect();
    let rows: u64 = added_rows.iter().sum();
    let delta_dir = store_dir.join("delta");
    if delta_dir.exists() {
        std::fs::remove_dir_all(&delta_dir).at_path(&delta_dir)?;
    }
    std::fs::create_dir_all(&delta_dir).at_path(&delta_dir)?;
    let mut stage_new_shards = || -> Result<Ingested> {
        let filter = match predicate {
            Some(p) => Some(Arc::new(stage(timings, "prefilter", rows, 0, || {
                p.evaluate(&added, &added_rows)
            })?)),
            None => None,
        };
        let opts = ingest_options(cfg, inputs, filter);
        let bytes: u64 = added.iter().map(|f| f.bytes).sum();
        stage(timings, "ingest", rows, bytes, || {
            ingest::ingest(&added, &delta_dir, &opts)
        })
    };
    // New shards that fail on their own (no row passes --where, a bad
    // row) are staged with the others: the full run has the last word.
    let delta = match stage_new_shards() {
        Ok(delta) => delta,
        Err(e) => {
            std::fs::remove_dir_all(&delta_dir).at_path(&delta_dir)?;
            return Ok(Err(format!(
                "the new shards alone could not be staged: {e}"
            )));
        }
    };
    if let Some(reason) = append::conflict(store_dir, &old, &delta_dir, &delta)? {
        std::fs::remove_dir_all(&delta_dir).at_path(&delta_dir)?;
        return Ok(Err(reason));
    }
    // From here until the new record, the store is incomplete: a crash
    // leaves no valid store record, and the next run stages in full.
    journal.forget(store_dir, "store")?;
    let ing = stage(timings, "append", delta.file_rows, 0, || {
        append::append(store_dir, &old, &delta_dir, &delta, &plan, &inputs.files)
    })?;
    std::fs::remove_dir_all(&delta_dir).at_path(&delta_dir)?;
    let previous = PreviousStore {
        key: rec.key.clone(),
        meta: old_meta,
    };
    let history = StoreHistory {
        store: "appended",
        reason: None,
        shards_added: plan.added.len(),
        rows_added: delta.file_rows - delta.duplicate_file_rows.len() as u64,
    };
    finish_store(
        cfg,
        inputs,
        store_dir,
        ing,
        journal,
        Some(previous),
        history,
        timings,
    )
    .map(Ok)
}

/// The first parameter of the store's key that differs, by name.
fn changed_parameter(before: &serde_json::Value, now: &serde_json::Value) -> Option<String> {
    if before == now {
        return None;
    }
    let (Some(a), Some(b)) = (before.as_object(), now.as_object()) else {
        return Some("the store's parameters".into());
    };
    let name = b
        .iter()
        .find(|(k, v)| a.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .or_else(|| a.keys().find(|k| !b.contains_key(*k)).cloned())
        .unwrap_or_default();
    Some(match name.as_str() {
        "classes" => "the classes (prompts file or its options)".into(),
        "where" => "--where".into(),
        "tool" | "version" => "the clipcov version".into(),
        other => format!("--{}", other.replace('_', "-")),
    })
}

/// What a run reads, found and sized before anything is read: the shards,
/// the prompts, the rows and bytes (from the footers), the memory plan and
/// the store stage's key.
struct Inputs {
    layout: Layout,
    files: Vec<SourceFile>,
    columns: Columns,
    prompts: Option<Prompts>,
    file_rows: Vec<u64>,
    total_rows: u64,
    input_bytes: u64,
    /// The prompts' `d`, or the data's.
    d: usize,
    plan: Plan,
    tile_rows: usize,
    /// What the store depends on besides the inputs, and every input's
    /// files with their sizes and versions: the store's key hashes both.
    params: serde_json::Value,
    stats: Vec<InputStat>,
    key: String,
}

impl Inputs {
    fn find(cfg: &SelectConfig) -> Result<Inputs> {
        let layout = match cfg.layout {
            Some(l) => l,
            None => dataset::detect(&cfg.data)?,
        };
        let (files, columns) =
            dataset::discover_layout(&cfg.data, layout, &cfg.columns, cfg.model)?;
        if let Some(t) = &cfg.train_csv {
            t.check_columns(&files)?;
        }
        let prompts: Option<Prompts> = match &cfg.classes {
            ClassSource::Prompts(p) => Some(read_prompts(p)?),
            _ => None,
        };
        // Row count and size from the footers, to plan memory before reading.
        let file_rows = files
            .iter()
            .map(|f| shards::shard_rows(f, &columns))
            .collect::<Result<Vec<u64>>>()?;
        let total_rows: u64 = file_rows.iter().sum();
        let input_bytes: u64 = files.iter().map(|f| f.bytes).sum();
        // k-means and the baselines have no prompts, and their tiles grow with d.
        let d = match &prompts {
            Some(p) => p.d,
            None => shards::probe_d(&files, &columns).unwrap_or(512),
        };
        let plan = memory::plan(cfg.memory_limit_bytes, total_rows, d, cfg.threads)?;
        let params = store_params(cfg, &columns)?;
        let stats = input_stats(&files)?;
        let key = journal::key_of(&(&params, &stats));
        Ok(Inputs {
            layout,
            files,
            columns,
            prompts,
            file_rows,
            total_rows,
            input_bytes,
            d,
            tile_rows: cfg.tile_rows.unwrap_or(plan.tile_rows),
            plan,
            params,
            stats,
            key,
        })
    }
}

/// The store in `store_dir` when its journal says it was staged from these
/// inputs (stage `reuse-store`), else `None`.
fn reuse_store(
    inputs: &Inputs,
    store_dir: &Path,
    timings: &mut Vec<StageTiming>,
) -> Result<Option<Staged>> {
    let t = Instant::now();
    let journal = Journal::load(store_dir);
    let Some(record) = journal.valid(store_dir, "store", &inputs.key) else {
        return Ok(None);
    };
    let previous = serde_json::from_value::<StoreRecord>(record.report.clone())
        .ok()
        .and_then(|r| r.previous);
    let resolved = (inputs.layout, inputs.columns.clone());
    let files = inputs.files.clone();
    let Ok(mut staged) = reopen(
        store_dir,
        files,
        inputs.plan,
        inputs.tile_rows,
        &inputs.key,
        resolved,
    ) else {
        return Ok(None);
    };
    staged.previous = previous;
    stage(timings, "reuse-store", staged.store.meta.rows, 0, || Ok(()))?;
    if let Some(s) = timings.last_mut() {
        s.seconds = t.elapsed().as_secs_f64();
    }
    Ok(Some(staged))
}

/// The ingest stage's options for `cfg` and its inputs.
fn ingest_options(
    cfg: &SelectConfig,
    inputs: &Inputs,
    filter: Option<Arc<crate::stages::prefilter::RowFilter>>,
) -> IngestOptions {
    let prompts = inputs.prompts.as_ref();
    let classes_k = prompts.map_or(1, |p| p.len());
    IngestOptions {
        columns: inputs.columns.clone(),
        on_bad_row: cfg.on_bad_row,
        on_duplicate: cfg.on_duplicate,
        batch_rows: inputs.plan.batch_rows,
        expected_d: match (&cfg.classes, prompts) {
            (ClassSource::Prompts(path), Some(p)) => Some((p.d, path.clone())),
            _ => None,
        },
        classify: prompts.map(|p| Classify {
            embeddings: p.embeddings.clone(),
            classes: p.len(),
            use_text: cfg.assign_text,
        }),
        chunk_rows: cfg
            .chunk_rows
            .unwrap_or_else(|| inputs.plan.chunk_rows(classes_k, inputs.d)),
        filter,
    }
}

/// Writes the store's metadata, the ingest report and the class table,
/// and records the store stage in the journal under `key`.
fn write_store_meta(
    store_dir: &Path,
    ing: &Ingested,
    table: &ClassTable,
    key: &str,
    record: StoreRecord,
    mut journal: Journal,
) -> Result<StoreMeta> {
    let meta = StoreMeta {
        version: STORE_VERSION,
        d: ing.d,
        dtype: ing.dtype,
        id_kind: ing.id_kind,
        rows: table.offsets[table.offsets.len() - 1],
        class_offsets: table.offsets.clone(),
        class_ids: table.ids.clone(),
        class_names: table.names.clone(),
    };
    write_json(&store_dir.join(files::META), &meta)?;
    write_json(&store_dir.join(files::INGEST), ing)?;
    let mut w = SeqWriter::create(&store_dir.join(files::CLASS_EMB))?;
    w.write(&table.embeddings)?;
    w.finish()?;
    let mut written = files::staged(ing.id_kind);
    if record.previous.is_some() {
        written.push(files::ORDER_PREV);
    }
    let report = serde_json::to_value(&record).unwrap_or_default();
    journal.record(store_dir, "store", key, &written, report)?;
    Ok(meta)
}

/// Every shard's files with their sizes and modification times to the
/// nanosecond (the sibling .npz, the npy layouts' other files): a shard
/// rewritten within the same second still counts as changed.
fn input_stats(files: &[SourceFile]) -> Result<Vec<InputStat>> {
    let mut stats = Vec::with_capacity(files.len());
    for f in files {
        let mut paths = vec![f.path.clone()];
        match &f.kind {
            dataset::ShardKind::Parquet => {}
            dataset::ShardKind::Datacomp { npz } => paths.push(npz.clone()),
            dataset::ShardKind::ClipRetrieval { text, metadata } => {
                paths.push(text.clone());
                paths.extend(metadata.clone());
            }
        }
        let mut stat = InputStat {
            relative: f.relative.clone(),
            files: Vec::with_capacity(paths.len()),
        };
        for p in paths {
            // A file's modification time in nanoseconds, an object's ETag.
            let st = crate::io::remote::stat(&p)?;
            stat.files.push((p, st.bytes, st.version));
        }
        stats.push(stat);
    }
    Ok(stats)
}

/// Everything the staged store depends on besides its input shards.
fn store_params(cfg: &SelectConfig, columns: &Columns) -> Result<serde_json::Value> {
    let classes = match &cfg.classes {
        ClassSource::Prompts(p) => {
            let st = crate::io::remote::stat(p)?;
            serde_json::json!({"prompts": p, "bytes": st.bytes, "modified": st.version, "assign_text": cfg.assign_text})
        }
        ClassSource::KMeans {
            clusters,
            iterations,
        } => {
            serde_json::json!({"kmeans": clusters, "iterations": iterations, "seed": cfg.seed})
        }
        ClassSource::Single => serde_json::json!("single"),
    };
    Ok(serde_json::json!({
        "version": STORE_VERSION,
        "tool": env!("CARGO_PKG_VERSION"),
        "columns": columns,
        "on_bad_row": cfg.on_bad_row,
        "on_duplicate": cfg.on_duplicate,
        "classes": classes,
        "where": cfg.filter,
    }))
}

/// Opens a complete store left by an earlier run.
fn reopen(
    dir: &Path,
    files: Vec<SourceFile>,
    plan: Plan,
    tile_rows: usize,
    key: &str,
    (layout, columns): (Layout, Columns),
) -> Result<Staged> {
    let read = |name: &str| -> Result<String> {
        let p = dir.join(name);
        std::fs::read_to_string(&p).at_path(&p)
    };
    let bad =
        |name: &str, e: serde_json::Error| Error::file(dir.join(name), format!("unreadable: {e}"));
    let meta: StoreMeta =
        serde_json::from_str(&read(files::META)?).map_err(|e| bad(files::META, e))?;
    let ingested: Ingested =
        serde_json::from_str(&read(files::INGEST)?).map_err(|e| bad(files::INGEST, e))?;
    let class_emb = Mapped::<f32>::open(&dir.join(files::CLASS_EMB))?
        .as_slice()
        .to_vec();
    Ok(Staged {
        store: Store::open(dir, meta)?,
        ingested,
        files,
        class_emb,
        plan,
        tile_rows,
        key: key.to_string(),
        layout,
        columns,
        history: StoreHistory {
            store: "reused",
            reason: None,
            shards_added: 0,
            rows_added: 0,
        },
        previous: None,
    })
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
