//! `SelectConfig`: a validated `select` configuration, what the CLI, the
//! pipeline files and the Python bindings build from flags, and every job
//! that stages data takes.

use std::path::PathBuf;

use serde::Serialize;

use crate::formats::dataset::{Columns, Layout, Model};
use crate::stages::classes::ClassSource;
use crate::stages::ingest::{BadRowPolicy, DuplicatePolicy};
use crate::stages::score::{CrossSample, Tau};
use crate::stages::select::{Budget, Refresh, RefreshMode, Weights};

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
