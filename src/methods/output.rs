//! A method's files: `OUT/<method>/subset.parquet` and `subset.csv`
//! (docs/formats.md columns), plus helpers for its extra Parquet files. Every
//! file is written atomically.

use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{Int64Builder, StringBuilder, UInt64Builder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::{Ctx, Selection};
use crate::emit::{write_subset_files, OutputFile};
use crate::error::{Error, IoContext, Result};
use crate::formats::atomic::atomic_write;
use crate::formats::canonical::IdKind;
use crate::formats::metadata::{Keep, RESERVED};
use crate::formats::subset::SubsetRow;
use crate::store::{IdRef, Store};

/// Rows per Parquet row group of the extra files.
pub const BATCH_ROWS: usize = 65_536;

/// Writes the subset files of `sel` under `out/<method>/`.
pub fn write_subset(
    out: &Path,
    ctx: &Ctx,
    sel: &Selection,
    keep: &Keep,
) -> Result<Vec<OutputFile>> {
    // --keep-columns refuses the reserved names: a term missing from them
    // could be written twice.
    if let Some(t) = sel.term_names.iter().find(|t| !RESERVED.contains(t)) {
        return Err(Error::Internal(format!(
            "term '{t}' of {} is not in formats::metadata::RESERVED",
            sel.method.name()
        )));
    }
    let dir = out.join(sel.method.name());
    std::fs::create_dir_all(&dir).at_path(&dir)?;
    let rows: Vec<SubsetRow> = sel
        .picks
        .iter()
        .enumerate()
        .map(|(rank, p)| SubsetRow {
            id: ctx.store.id(p.pos),
            rank: rank as u64,
            row: ctx.rows[p.pos],
            class: p.class,
            score: p.score,
            terms: p.terms.clone(),
        })
        .collect();
    let mut files = write_subset_files(out, &dir, &rows, &sel.term_names, keep)?;
    files.extend(sel.files.iter().cloned());
    Ok(files)
}

/// The Arrow type of the store's ids.
pub fn id_type(kind: IdKind) -> DataType {
    match kind {
        IdKind::Utf8 => DataType::Utf8,
        IdKind::Int64 => DataType::Int64,
        IdKind::UInt64 => DataType::UInt64,
    }
}

/// The ids of `positions`, as an array of [`id_type`].
pub fn id_array(store: &Store, positions: &[usize]) -> ArrayRef {
    match store.meta.id_kind {
        IdKind::Utf8 => {
            let mut b = StringBuilder::new();
            for &p in positions {
                if let IdRef::Utf8(s) = store.id(p) {
                    b.append_value(s);
                }
            }
            Arc::new(b.finish())
        }
        IdKind::Int64 => {
            let mut b = Int64Builder::with_capacity(positions.len());
            for &p in positions {
                if let IdRef::Int(v) = store.id(p) {
                    b.append_value(v);
                }
            }
            Arc::new(b.finish())
        }
        IdKind::UInt64 => {
            let mut b = UInt64Builder::with_capacity(positions.len());
            for &p in positions {
                if let IdRef::UInt(v) = store.id(p) {
                    b.append_value(v);
                }
            }
            Arc::new(b.finish())
        }
    }
}

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
