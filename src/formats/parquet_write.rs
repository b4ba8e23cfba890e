//! The one Parquet writer of clipcov's own files: zstd, bounded row
//! groups, written atomically.

use std::path::Path;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::Schema;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::{WriterProperties, WriterPropertiesBuilder};

use crate::error::{Error, Result};
use crate::io::atomic::atomic_write;

/// Rows per Parquet row group of the files clipcov writes.
pub const BATCH_ROWS: usize = 65_536;

/// The properties of clipcov's own files: zstd, row groups of
/// [`BATCH_ROWS`].
pub fn zstd_properties() -> WriterProperties {
    zstd_properties_builder().build()
}

/// [`zstd_properties`] still open, to add to (key-value metadata).
pub fn zstd_properties_builder() -> WriterPropertiesBuilder {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(BATCH_ROWS))
}

/// Writes record batches to a zstd Parquet file, atomically.
pub fn write_batches(
    path: &Path,
    schema: Arc<Schema>,
    batches: impl Iterator<Item = Result<RecordBatch>>,
) -> Result<()> {
    write_batches_with(path, schema, zstd_properties(), batches)
}

/// Writes record batches to a Parquet file with `props`, atomically: a
/// failed write (a full disk) leaves nothing under `path` and is an I/O
/// error naming it.
pub fn write_batches_with(
    path: &Path,
    schema: Arc<Schema>,
    props: WriterProperties,
    batches: impl Iterator<Item = Result<RecordBatch>>,
) -> Result<()> {
    atomic_write(path, |w| {
        let mut writer = ArrowWriter::try_new(w, schema, Some(props))
            .map_err(|e| Error::Internal(e.to_string()))?;
        for b in batches {
            writer.write(&b?).map_err(|e| write_error(path, e))?;
        }
        writer.close().map_err(|e| write_error(path, e))?;
        Ok(())
    })
}

/// The I/O error under a Parquet write error (a full disk), naming `path`.
fn write_error(path: &Path, e: ParquetError) -> Error {
    match e {
        ParquetError::External(inner) => match inner.downcast::<std::io::Error>() {
            Ok(io) => Error::io(path, *io),
            Err(other) => Error::io(path, std::io::Error::other(other.to_string())),
        },
        other => Error::io(path, std::io::Error::other(other.to_string())),
    }
}
