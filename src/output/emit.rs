//! Stage 5, emit: the subset files, the rejects, and the run manifest.
//!
//! Every file is written under a temporary name and renamed when complete;
//! the manifest, which lists the others with their checksums, comes last.

use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{StringBuilder, UInt64Builder};
use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Schema};
use parquet::file::properties::WriterProperties;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::formats::dataset::SourceFile;
use crate::formats::metadata::Keep;
use crate::formats::parquet_write::write_batches_with;
use crate::io::written::{record, write_json, OutputFile};
use crate::memory::{MemoryReport, Plan};
use crate::output::publish::OutputSet;
use crate::output::subset::{write_csv, write_parquet, write_uids_npy, SubsetRow};
use crate::output::train_csv::{self, TrainCsv};
use crate::stages::ingest::{Ingested, Reject};
use crate::stages::score::{BETWEEN, CROSS, EASY, LABEL, TERMS};
use crate::stages::select::Pick;
use crate::store::{Store, StoreMeta};

/// Wall time and throughput of one stage.
#[derive(Clone, Debug, Serialize)]
pub struct StageTiming {
    pub stage: String,
    pub seconds: f64,
    pub rows: u64,
    pub rows_per_second: f64,
    pub bytes_read: u64,
    pub gb_per_second: f64,
    /// The score stage's kernels: work and time of each.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernels: Option<crate::stages::score::ScoreStats>,
    /// The select stage's refreshes: rows and pairs re-evaluated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh: Option<crate::stages::select::RefreshStats>,
    /// The ingest stage's split: decoding, validation, the class GEMM,
    /// bucketing and the store writes, each on its own thread(s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingest: Option<crate::stages::ingest::IngestTimes>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RowCounts {
    pub read: u64,
    pub skipped: u64,
    pub skipped_by_reason: std::collections::BTreeMap<String, u64>,
    pub used: u64,
    pub budget: u64,
    pub selected: u64,
    pub classes: usize,
    pub classes_nonempty: usize,
    pub classes_selected: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct InputFile {
    pub path: String,
    pub bytes: u64,
    pub modified_unix: u64,
    pub rows: u64,
}

/// `manifest.json`.
#[derive(Clone, Debug, Serialize, Default)]
pub struct Manifest {
    pub tool: String,
    pub version: String,
    pub method: String,
    pub inputs: Vec<InputFile>,
    pub parameters: serde_json::Value,
    pub rows: Option<RowCounts>,
    pub stages: Vec<StageTiming>,
    pub memory: Option<MemoryReport>,
    pub plan: Option<serde_json::Value>,
    pub seconds_total: f64,
    pub outputs: Vec<OutputFile>,
    /// `--where`: the predicate, the columns it read, rows before and after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefilter: Option<crate::stages::prefilter::PrefilterReport>,
    /// `OUT/manifest.json` only: every method folder's manifest in OUT,
    /// this run's and earlier runs' (several `baseline` runs share an OUT).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<MethodManifest>,
    /// What the run changed or doubted (a budget capped at the rows).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// How much of the run was incremental: the store reused, appended
    /// to or staged in full (and why), the score reused, brought up to
    /// date or computed in full, with the cross-tile work of each.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incremental: Option<serde_json::Value>,
    #[serde(skip)]
    pub classes_selected: usize,
}

/// One entry of [`Manifest::methods`].
#[derive(Clone, Debug, Serialize)]
pub struct MethodManifest {
    pub method: String,
    /// `<method>/manifest.json`, relative to OUT.
    pub manifest: String,
    pub selected: u64,
    pub sha256: String,
}

/// Writes the run's manifest twice into `staging` (the folder standing in
/// for `out`): as `<method>/manifest.json`, and as `manifest.json` with
/// [`Manifest::methods`] listing every method folder of `out` that has a
/// manifest, this run's included.
pub fn write_manifests(out: &Path, staging: &Path, m: &mut Manifest) -> Result<()> {
    let own = Path::new(&m.method).join("manifest.json");
    m.methods.clear();
    write_json(&staging.join(&own), m)?;
    let mut entries = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(out)
        .at_path(out)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| *n != m.method && is_method(n))
        .collect();
    names.push(m.method.clone());
    names.sort();
    for name in names {
        let rel = Path::new(&name).join("manifest.json");
        let path = if name == m.method {
            staging.join(&rel)
        } else {
            out.join(&rel)
        };
        let Ok(text) = std::fs::read(&path) else {
            continue;
        };
        let selected = serde_json::from_slice::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["rows"]["selected"].as_u64())
            .unwrap_or(0);
        entries.push(MethodManifest {
            method: name,
            manifest: rel.to_string_lossy().into_owned(),
            selected,
            sha256: hex_digest(&text),
        });
    }
    m.methods = entries;
    write_json(&staging.join("manifest.json"), m)
}

fn is_method(name: &str) -> bool {
    name == "clipcov" || crate::methods::Method::from_name(name).is_some()
}

fn hex_digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `OUT/clipcov/subset.{parquet,csv}` and `OUT/rejects.parquet`.
pub fn emit_clipcov(
    out: &Path,
    store: &Store,
    terms: &[f64],
    picks: &[Pick],
    rejects: &[Reject],
    extras: &SubsetExtras,
) -> Result<Manifest> {
    let dir = out.join("clipcov");
    std::fs::create_dir_all(&dir).at_path(&dir)?;
    let rows: Vec<SubsetRow> = picks
        .iter()
        .enumerate()
        .map(|(rank, p)| {
            let t = &terms[p.pos * TERMS..(p.pos + 1) * TERMS];
            SubsetRow {
                id: store.id(p.pos),
                rank: rank as u64,
                row: store.row_index(p.pos),
                class: Some(p.class as i32),
                score: p.score,
                terms: vec![t[EASY], t[CROSS], t[LABEL], t[BETWEEN]],
            }
        })
        .collect();
    let names = ["easy", "cross", "label", "between"];
    let mut outputs = write_subset_files(out, &dir, &rows, &names, extras)?;
    let mut classes: Vec<usize> = picks.iter().map(|p| p.class).collect();
    classes.sort_unstable();
    classes.dedup();
    if !rejects.is_empty() {
        let rp = out.join("rejects.parquet");
        write_rejects(&rp, rejects)?;
        outputs.push(record(out, &rp, rejects.len() as u64)?);
    }
    Ok(Manifest {
        method: "clipcov".into(),
        outputs,
        classes_selected: classes.len(),
        ..Default::default()
    })
}

/// What a method's subset files carry besides the picks: the
/// `--keep-columns` values and, with `--train-csv`, a `train.csv`.
#[derive(Clone, Default)]
pub struct SubsetExtras<'a> {
    pub keep: Keep<'a>,
    pub train: Option<TrainCsv>,
    /// Key-value metadata of `subset.parquet` (ClipCov: `clipcov.cross`).
    pub key_value: Vec<(String, String)>,
}

/// Writes a method's files in `dir`: `subset.parquet`, `subset.csv` (with
/// the `--keep-columns` values), when every id is a 32-hex uid,
/// `datacomp_uids.npy`, and with `--train-csv`, `train.csv`.
pub fn write_subset_files(
    out: &Path,
    dir: &Path,
    rows: &[SubsetRow],
    names: &[&str],
    extras: &SubsetExtras,
) -> Result<Vec<OutputFile>> {
    let source_rows: Vec<u64> = rows.iter().map(|r| r.row).collect();
    let extra = extras.keep.columns(&source_rows)?;
    // Fail before writing anything when a kept column cannot go to CSV.
    for (f, _) in &extra {
        crate::formats::metadata::check_csv_type(f.name(), f.data_type())?;
    }
    let train = match &extras.train {
        Some(t) => Some(train_csv::prepare(t, &extras.keep, &source_rows)?),
        None => None,
    };
    let pq = dir.join("subset.parquet");
    let csv = dir.join("subset.csv");
    write_parquet(&pq, rows, names, &extra, &extras.key_value)?;
    write_csv(&csv, rows, names, &extra)?;
    let n = rows.len() as u64;
    let mut files = vec![record(out, &pq, n)?, record(out, &csv, n)?];
    let uids = dir.join("datacomp_uids.npy");
    if write_uids_npy(&uids, rows)? {
        files.push(record(out, &uids, n)?);
    }
    if let Some(t) = train {
        files.push(train_csv::write(out, dir, t)?);
    }
    Ok(files)
}

/// The files a method writes only sometimes: `datacomp_uids.npy` (32-hex
/// uids) and `train.csv` (`--train-csv`).
const OPTIONAL_OUTPUTS: [&str; 2] = ["datacomp_uids.npy", "train.csv"];

/// Marks an earlier run's optional files of `method` for removal when this
/// run publishes: a stale file from other data or flags must not survive.
pub fn replace_optional_outputs(set: &mut OutputSet, method: &str) {
    for f in OPTIONAL_OUTPUTS {
        set.replace_with_nothing(Path::new(method).join(f));
    }
}

/// Writes `rejects.parquet`: every skipped row with its reason.
pub fn write_rejects(path: &Path, rejects: &[Reject]) -> Result<()> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("row", DataType::UInt64, false),
        Field::new("file", DataType::Utf8, false),
        Field::new("id", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
    ]));
    let mut row = UInt64Builder::new();
    let (mut file, mut id, mut reason) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    for r in rejects {
        row.append_value(r.row);
        file.append_value(&r.file);
        id.append_value(&r.id);
        reason.append_value(&r.reason);
    }
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(row.finish()),
            Arc::new(file.finish()),
            Arc::new(id.finish()),
            Arc::new(reason.finish()),
        ],
    )
    .map_err(|e| Error::Internal(e.to_string()));
    // Uncompressed, as rejects.parquet always was.
    write_batches_with(
        path,
        schema,
        WriterProperties::builder().build(),
        std::iter::once(batch),
    )
}

/// Fills in everything but the outputs. `parameters` is the run's
/// configuration as JSON; `refresh_period` the `R` the greedy used.
#[allow(clippy::too_many_arguments)]
pub fn finish_manifest(
    mut m: Manifest,
    mut parameters: serde_json::Value,
    refresh_period: usize,
    files: &[SourceFile],
    ing: &Ingested,
    meta: &StoreMeta,
    budget: usize,
    stages: Vec<StageTiming>,
    memory: MemoryReport,
    plan: Plan,
    tile_rows: usize,
    seconds: f64,
) -> Manifest {
    m.tool = "clipcov".into();
    m.version = env!("CARGO_PKG_VERSION").into();
    m.inputs = files
        .iter()
        .zip(&ing.shards)
        .map(|(f, s)| InputFile {
            path: f.path.to_string_lossy().into_owned(),
            bytes: f.bytes,
            modified_unix: f.modified_unix,
            rows: s.rows,
        })
        .collect();
    if let Some(o) = parameters.as_object_mut() {
        if let Some(f) = files.first() {
            o.insert("layout".into(), f.kind.layout().name().into());
        }
        o.insert("budget_rows".into(), budget.into());
        // The period the greedy used, and the per-class budget that `auto` scales with.
        o.insert(
            "refresh_period".into(),
            serde_json::json!({
                "per_class_budget": budget as f64 / meta.nonempty_classes().max(1) as f64,
                "R": refresh_period,
            }),
        );
        o.insert("tile_rows".into(), tile_rows.into());
        o.insert("d".into(), meta.d.into());
        o.insert(
            "store_dtype".into(),
            serde_json::to_value(meta.dtype).unwrap_or_default(),
        );
    }
    m.parameters = parameters;
    let nonempty = meta.nonempty_classes();
    m.rows = Some(RowCounts {
        read: ing.rows_read,
        skipped: ing.skipped.values().sum(),
        skipped_by_reason: ing.skipped.clone(),
        used: meta.rows,
        budget: budget as u64,
        selected: m.outputs.first().map_or(0, |o| o.rows),
        classes: meta.classes(),
        classes_nonempty: nonempty,
        classes_selected: m.classes_selected,
    });
    m.prefilter = ing.prefilter.clone();
    m.stages = stages;
    m.memory = Some(memory);
    m.plan = serde_json::to_value(plan).ok();
    m.seconds_total = seconds;
    m
}
