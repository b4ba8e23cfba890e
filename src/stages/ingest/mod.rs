//! Stage 1, ingest: decode the input shards once, validate every row, and
//! write the embedding files of the staged store.
//!
//! Each row is checked (lengths, nulls, finite values, non-zero norm), its
//! normalising factors computed in `f64`, and, when class embeddings are
//! given, its latent class assigned on the spot (one GEMM per batch). Rows
//! are then appended to per-class buckets that are written out in chunks,
//! so every class ends up in long contiguous runs of the store files
//! without a second copy of the data. Bad rows stop the run or, with
//! `--on-bad-row skip`, are recorded as rejects; duplicate ids likewise.
//!
//! Decoding runs on its own thread, one batch ahead of the validation and
//! classification, which run on the rayon pool.

mod dedup;
mod id_column;
mod types;
mod validate;
mod writer;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc::sync_channel;

use crate::clock::CpuTimer;
use crate::error::{Error, Result};
use crate::formats::dataset::{ShardStarts, SourceFile};
use crate::formats::embedding::{EmbeddingView, FloatKind};
use crate::formats::shards::{ShardBatch, ShardReader, ShardSchema};
use crate::ids::IdKind;
use crate::store::Dtype;

pub use dedup::duplicate_id_error;
pub use types::{
    BadRowPolicy, Classify, DuplicatePolicy, IngestOptions, IngestTimes, Ingested, Reject,
    ShardRows,
};
pub use validate::{prepare_batch, PreparedRows};

use dedup::find_duplicates;
use id_column::id_column;
use validate::{store_dtype, BatchCtx};
use writer::{Batch, WriterThread, Writers};

/// Reads `files` into the store files in `dir`.
pub fn ingest(files: &[SourceFile], dir: &Path, opts: &IngestOptions) -> Result<Ingested> {
    let mut shards: Vec<ShardRows> = files
        .iter()
        .map(|f| ShardRows {
            file: f.relative.clone(),
            first_row: 0,
            rows: 0,
        })
        .collect();
    let classes = opts.classify.as_ref().map_or(1, |c| c.classes);
    let mut d: Option<usize> = opts.expected_d.as_ref().map(|(d, _)| *d);
    let mut dtype: Option<Dtype> = None;
    let mut id_kind = IdKind::Utf8;
    let mut rows_read = 0u64;
    let mut rejects = Vec::new();
    let mut skipped: BTreeMap<String, u64> = BTreeMap::new();
    let mut times = IngestTimes::default();

    // The decoder runs one batch ahead on its own thread.
    let (tx, rx) = sync_channel::<Result<(ShardBatch, ShardSchema)>>(1);
    let writers = std::thread::scope(|scope| -> Result<Option<Writers>> {
        let mut writer: Option<WriterThread> = None;
        // `tx` moves into the decoder so the channel closes when it is done.
        let decoder = scope.spawn(move || {
            let mut reader = ShardReader::new(files, opts.columns.clone(), opts.batch_rows);
            let mut busy = 0.0;
            loop {
                let t = CpuTimer::start();
                let Some(b) = reader.next() else { break };
                busy += t.seconds();
                let item = b.map(|b| {
                    let schema = reader.schemas[b.file_index].clone();
                    (b, schema)
                });
                let stop = item.is_err();
                if tx.send(item).is_err() || stop {
                    break;
                }
            }
            busy
        });
        for item in rx {
            let (batch, shard) = item?;
            crate::progress::advance(batch.len() as u64);
            let file = &files[batch.file_index];
            let path = &file.path;
            shards[batch.file_index].rows += batch.len() as u64;
            let dt = *dtype.get_or_insert(store_dtype(&shard));
            if dt == Dtype::F16 && store_dtype(&shard) != Dtype::F16 {
                let col = if shard.image_kind != FloatKind::F16 {
                    &opts.columns.image
                } else {
                    &opts.columns.text
                };
                return Err(Error::column(
                    path,
                    col,
                    "this shard stores float32/float64 embeddings but earlier shards store float16",
                )
                .with_hint("convert all shards to one precision"));
            }
            if writer.is_none() {
                id_kind = shard.id_kind;
                writer = Some(WriterThread::spawn(
                    scope,
                    Writers::create(dir, id_kind)?,
                    classes,
                    opts.chunk_rows,
                ));
            }
            let img = EmbeddingView::try_new(&batch.image).expect("type checked");
            let txt = EmbeddingView::try_new(&batch.text).expect("type checked");
            let dd = *d.get_or_insert_with(|| if batch.is_empty() { 0 } else { img.row_len(0) });
            let ctx = BatchCtx {
                path,
                first_row: batch.first_row,
                first_row_in_file: batch.first_row_in_file,
                d: dd,
                dtype: dt,
                img,
                txt,
                id_nulls: batch.id.nulls(),
                opts,
            };
            let n = batch.len();
            let parts = ctx.prepare_all(n);
            let ids = id_column(&batch.id);
            let mut kept = Vec::with_capacity(parts.len());
            for part in parts {
                let part = part?; // the first error in row order
                times.validate_cpu_seconds += part.validate_seconds;
                times.classify_cpu_seconds += part.classify_seconds;
                for (i, reason) in &part.bad {
                    *skipped
                        .entry(reason.split_once(": ").unwrap().1.to_string())
                        .or_default() += 1;
                    rejects.push(Reject {
                        row: batch.first_row + *i as u64,
                        file: file.relative.clone(),
                        id: ids.text(*i),
                        reason: reason.clone(),
                    });
                }
                kept.push(part);
            }
            // The writer thread buckets and writes them while the next
            // batch is validated.
            let rows = Batch {
                parts: kept,
                ids: batch.id.clone(),
                first_row: batch.first_row,
                d: dd,
            };
            writer = Some(writer.take().unwrap().send(rows)?);
            rows_read += n as u64;
        }
        let writers = match writer {
            Some(w) => w.finish().map(Some),
            None => Ok(None),
        };
        times.decode_seconds = decoder.join().unwrap_or_default();
        writers
    })?;
    let Some(mut w) = writers else {
        return Err(Error::file(&files[0].path, "the dataset has no rows"));
    };
    if w.file_rows == 0 {
        return Err(
            Error::file(&files[0].path, "no usable rows: every row was rejected")
                .with_hint("see rejects.parquet"),
        );
    }
    let hashes = std::mem::take(&mut w.hashes);
    times.bucket_seconds = w.bucket_seconds;
    times.store_write_seconds = w.write_seconds;
    let (file_rows, chunks) = (w.file_rows, std::mem::take(&mut w.chunks));
    let file_records = w.finish()?;
    times.store_bytes = file_records.iter().map(|r| r.bytes).sum();
    // An empty shard has no batch to set its first row from.
    let starts = ShardStarts::from_rows(shards.iter().map(|s| s.rows));
    for (i, s) in shards.iter_mut().enumerate() {
        s.first_row = starts.range(i).start;
    }
    let mut ingested = Ingested {
        d: d.unwrap_or(0),
        dtype: dtype.unwrap(),
        id_kind,
        rows_read,
        file_rows,
        duplicate_file_rows: Vec::new(),
        chunks,
        rejects,
        skipped,
        shards,
        prefilter: opts.filter.as_ref().map(|f| f.report.clone()),
        times,
        file_records,
    };
    find_duplicates(dir, files, &mut ingested, hashes, opts)?;
    Ok(ingested)
}
