//! The stage's options and what it returns.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::formats::dataset::{Columns, ShardStarts};
use crate::ids::IdKind;
use crate::stages::prefilter::{PrefilterReport, RowFilter};
use crate::store::journal::FileRecord;
use crate::store::Dtype;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BadRowPolicy {
    Error,
    Skip,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DuplicatePolicy {
    Error,
    KeepFirst,
}

/// Assign latent classes during ingest.
#[derive(Clone, Debug)]
pub struct Classify {
    /// `[K, d]` unit class embeddings `c_k`.
    pub embeddings: Vec<f32>,
    pub classes: usize,
    /// Use the caption `v_i` instead of the image `u_i` (`--assign text`).
    pub use_text: bool,
}

#[derive(Clone, Debug)]
pub struct IngestOptions {
    pub columns: Columns,
    pub on_bad_row: BadRowPolicy,
    pub on_duplicate: DuplicatePolicy,
    pub batch_rows: usize,
    /// The embedding dimension the prompts require, and the prompts file.
    pub expected_d: Option<(usize, PathBuf)>,
    pub classify: Option<Classify>,
    /// Rows per chunk written from a class bucket.
    pub chunk_rows: usize,
    /// `--where`: only the rows it holds are staged; the others are read
    /// past without a check, as if they were not in the input.
    pub filter: Option<std::sync::Arc<RowFilter>>,
}

/// A row left out of the selection, and why.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reject {
    pub row: u64,
    pub file: String,
    pub id: String,
    pub reason: String,
}

/// Rows per shard, for the manifest and the row map.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardRows {
    pub file: String,
    pub first_row: u64,
    pub rows: u64,
}

/// What ingest produced.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ingested {
    pub d: usize,
    pub dtype: Dtype,
    pub id_kind: IdKind,
    pub rows_read: u64,
    /// Rows written to the store files ("file rows").
    pub file_rows: u64,
    /// File rows dropped as duplicates (keep-first).
    pub duplicate_file_rows: Vec<u64>,
    /// The written chunks in file order: (class, rows). One class (0) when
    /// ingest did not classify.
    pub chunks: Vec<(u32, u32)>,
    pub rejects: Vec<Reject>,
    pub skipped: BTreeMap<String, u64>,
    pub shards: Vec<ShardRows>,
    /// What `--where` kept, when it was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefilter: Option<PrefilterReport>,
    /// Where the stage's time went: for the manifest's stage timing, not
    /// stored, so the store's files stay the same bytes from run to run.
    #[serde(skip)]
    pub times: IngestTimes,
    /// The journal records of the store files ingest wrote (checksummed
    /// as they were written); empty after an append, which changes them.
    #[serde(skip)]
    pub file_records: Vec<FileRecord>,
}

/// Where ingest's time went, in CPU seconds (user and system) of each of
/// its threads: the split a benchmark needs to tell decoding, the class
/// GEMM and the store writes apart. The threads share the cores, so the
/// parts add up to about the stage's wall time times the cores it kept busy.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IngestTimes {
    /// The decoder thread inside the Parquet (or npy) reader.
    pub decode_seconds: f64,
    /// Validation and normalisation, summed over the workers.
    pub validate_cpu_seconds: f64,
    /// The class assignment GEMM and its argmax, summed over the workers.
    pub classify_cpu_seconds: f64,
    /// The writer thread sorting rows into the class buckets.
    pub bucket_seconds: f64,
    /// The writer thread handing the store's bytes to the kernel: the copy
    /// into the page cache, and any wait for the disk.
    pub store_write_seconds: f64,
    /// The size of the store files ingest wrote, from their writers.
    pub store_bytes: u64,
}

impl Ingested {
    /// Where each shard's rows are in the canonical row order (from the
    /// row counts, so an empty shard never shadows the next one).
    pub fn starts(&self) -> ShardStarts {
        ShardStarts::from_rows(self.shards.iter().map(|s| s.rows))
    }
}
