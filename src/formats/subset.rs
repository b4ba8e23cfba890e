//! The subset files of formats.md: `subset.parquet` and `subset.csv`, one
//! row per selected pair in rank order.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{
    Float64Builder, Int32Builder, Int64Builder, StringBuilder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::atomic::atomic_write;
use crate::error::{Error, IoContext, Result};
use crate::store::IdRef;

/// One output row.
#[derive(Clone, Debug)]
pub struct SubsetRow<'a> {
    pub id: IdRef<'a>,
    pub rank: u64,
    pub row: u64,
    pub class: Option<i32>,
    pub score: f64,
    /// The method's own terms, named by [`SubsetWriter::term_names`].
    pub terms: Vec<f64>,
}

/// Rows per Parquet row group / record batch.
const BATCH_ROWS: usize = 65_536;

fn id_type(rows: &[SubsetRow]) -> DataType {
    match rows.first().map(|r| r.id) {
        Some(IdRef::Int(_)) => DataType::Int64,
        Some(IdRef::UInt(_)) => DataType::UInt64,
        _ => DataType::Utf8,
    }
}

fn schema(id: DataType, terms: &[&str]) -> Arc<Schema> {
    let mut fields = vec![
        Field::new("id", id, false),
        Field::new("rank", DataType::UInt64, false),
        Field::new("row", DataType::UInt64, false),
        Field::new("class", DataType::Int32, true),
        Field::new("score", DataType::Float64, false),
    ];
    fields.extend(
        terms
            .iter()
            .map(|t| Field::new(*t, DataType::Float64, false)),
    );
    Arc::new(Schema::new(fields))
}

fn batch(schema: &Arc<Schema>, rows: &[SubsetRow], terms: usize) -> Result<RecordBatch> {
    let id: ArrayRef = match schema.field(0).data_type() {
        DataType::Int64 => {
            let mut b = Int64Builder::with_capacity(rows.len());
            for r in rows {
                if let IdRef::Int(v) = r.id {
                    b.append_value(v)
                }
            }
            Arc::new(b.finish())
        }
        DataType::UInt64 => {
            let mut b = UInt64Builder::with_capacity(rows.len());
            for r in rows {
                if let IdRef::UInt(v) = r.id {
                    b.append_value(v)
                }
            }
            Arc::new(b.finish())
        }
        _ => {
            let mut b = StringBuilder::new();
            for r in rows {
                b.append_value(r.id.to_string());
            }
            Arc::new(b.finish())
        }
    };
    let mut rank = UInt64Builder::with_capacity(rows.len());
    let mut row = UInt64Builder::with_capacity(rows.len());
    let mut class = Int32Builder::with_capacity(rows.len());
    let mut score = Float64Builder::with_capacity(rows.len());
    let mut tcols: Vec<Float64Builder> = (0..terms).map(|_| Float64Builder::new()).collect();
    for r in rows {
        rank.append_value(r.rank);
        row.append_value(r.row);
        class.append_option(r.class);
        score.append_value(r.score);
        for (b, v) in tcols.iter_mut().zip(&r.terms) {
            b.append_value(*v);
        }
    }
    let mut cols: Vec<ArrayRef> = vec![
        id,
        Arc::new(rank.finish()),
        Arc::new(row.finish()),
        Arc::new(class.finish()),
        Arc::new(score.finish()),
    ];
    cols.extend(
        tcols
            .into_iter()
            .map(|mut b| Arc::new(b.finish()) as ArrayRef),
    );
    RecordBatch::try_new(schema.clone(), cols).map_err(|e| Error::Internal(e.to_string()))
}

/// Writes `rows` to `path` as Parquet (zstd), atomically.
pub fn write_parquet(path: &Path, rows: &[SubsetRow], term_names: &[&str]) -> Result<()> {
    let schema = schema(id_type(rows), term_names);
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(BATCH_ROWS))
        .build();
    atomic_write(path, |w| {
        let mut writer = ArrowWriter::try_new(w, schema.clone(), Some(props))
            .map_err(|e| Error::Internal(e.to_string()))?;
        for chunk in rows.chunks(BATCH_ROWS) {
            let b = batch(&schema, chunk, term_names.len())?;
            writer.write(&b).map_err(|e| parquet_write_error(path, e))?;
        }
        writer.close().map_err(|e| parquet_write_error(path, e))?;
        Ok(())
    })
}

fn parquet_write_error(path: &Path, e: parquet::errors::ParquetError) -> Error {
    match e {
        parquet::errors::ParquetError::External(inner) => {
            match inner.downcast::<std::io::Error>() {
                Ok(io) => Error::io(path, *io),
                Err(other) => Error::io(path, std::io::Error::other(other.to_string())),
            }
        }
        other => Error::io(path, std::io::Error::other(other.to_string())),
    }
}

/// Quotes a CSV field when it needs it (RFC 4180).
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Writes `rows` to `path` as CSV, atomically. Floats use the shortest
/// representation that reads back to the same `f64`.
pub fn write_csv(path: &Path, rows: &[SubsetRow], term_names: &[&str]) -> Result<()> {
    atomic_write(path, |w| {
        let mut header = String::from("id,rank,row,class,score");
        for t in term_names {
            header.push(',');
            header.push_str(t);
        }
        writeln!(w, "{header}").at_path(path)?;
        let mut line = String::new();
        for r in rows {
            use std::fmt::Write as _;
            line.clear();
            line.push_str(&csv_field(&r.id.to_string()));
            let _ = write!(line, ",{},{},", r.rank, r.row);
            if let Some(c) = r.class {
                let _ = write!(line, "{c}");
            }
            let _ = write!(line, ",{}", r.score);
            for v in &r.terms {
                let _ = write!(line, ",{v}");
            }
            writeln!(w, "{line}").at_path(path)?;
        }
        Ok(())
    })
}
