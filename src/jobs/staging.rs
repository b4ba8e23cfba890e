//! Staging a run's data into `OUT/store`: reuse the store when its key
//! matches, append the new shards when only shards were added (a nightly
//! run), or stage everything (prefilter, ingest, classes); then the store's
//! metadata and its journal record.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::formats::dataset::{self, Columns, Layout, SourceFile};
use crate::formats::metadata::Keep;
use crate::formats::prompts::{read_prompts, Prompts};
use crate::formats::shards;
use crate::io::written::write_json;
use crate::jobs::config::SelectConfig;
use crate::jobs::shell::stage;
use crate::memory::{self, MemoryReport, Plan};
use crate::output::emit::{self, Manifest, StageTiming, SubsetExtras};
use crate::stages::append::{self, AppendPlan, InputStat};
use crate::stages::classes::{self, ClassSource, ClassTable};
use crate::stages::ingest::{self, Classify, IngestOptions, Ingested};
use crate::stages::prefilter::Predicate;
use crate::store::journal::{self, Journal};
use crate::store::{files, Mapped, SeqWriter, Store, StoreMeta, STORE_VERSION};

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
    record_ingest_times(timings, &ing);
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

/// Adds ingest's split of its time to its timing (the last one).
fn record_ingest_times(timings: &mut [StageTiming], ing: &Ingested) {
    if let Some(t) = timings.last_mut().filter(|t| t.stage == "ingest") {
        t.ingest = Some(ing.times.clone());
    }
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
        let ing = stage(timings, "ingest", rows, bytes, || {
            ingest::ingest(&added, &delta_dir, &opts)
        })?;
        record_ingest_times(timings, &ing);
        Ok(ing)
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
    journal.record_known(store_dir, "store", key, &written, &ing.file_records, report)?;
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
