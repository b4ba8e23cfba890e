//! The one Parquet writer of clipcov's own files: zstd, bounded row
//! groups, written atomically.

use std::path::Path;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{ArrowError, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::error::{Error, Result};
use crate::io::atomic::atomic_write;

/// Rows per Parquet row group of the files clipcov writes.
pub const BATCH_ROWS: usize = 65_536;

/// Writes record batches to a zstd Parquet file, atomically.
pub fn write_batches(
    path: &Path,
    schema: Arc<Schema>,
    batches: impl Iterator<Item = std::result::Result<RecordBatch, ArrowError>>,
) -> Result<()> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(BATCH_ROWS))
        .build();
    let io = |e: &dyn std::fmt::Display| Error::io(path, std::io::Error::other(e.to_string()));
    atomic_write(path, |w| {
        let mut writer = ArrowWriter::try_new(w, schema, Some(props))
            .map_err(|e| Error::Internal(e.to_string()))?;
        for b in batches {
            let b = b.map_err(|e| Error::Internal(e.to_string()))?;
            writer.write(&b).map_err(|e| io(&e))?;
        }
        writer.close().map_err(|e| io(&e))?;
        Ok(())
    })
}
