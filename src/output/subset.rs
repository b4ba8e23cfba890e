//! The subset files of docs/formats.md: `subset.parquet` and `subset.csv`, one
//! row per selected pair in rank order.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{
    Float64Builder, Int32Builder, Int64Builder, StringBuilder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};

use crate::error::{Error, IoContext, Result};
use crate::formats::metadata::{check_csv_type, csv_text};
use crate::formats::npy::header_bytes;
use crate::formats::parquet_write::{write_batches_with, zstd_properties_builder, BATCH_ROWS};
use crate::ids::IdRef;
use crate::io::atomic::atomic_write;
use parquet::file::metadata::KeyValue;

/// One output row.
#[derive(Clone, Debug)]
pub struct SubsetRow<'a> {
    pub id: IdRef<'a>,
    pub rank: u64,
    pub row: u64,
    pub class: Option<i32>,
    pub score: f64,
    /// The method's own terms, in the order of the writer's `term_names`.
    pub terms: Vec<f64>,
}

fn id_type(rows: &[SubsetRow]) -> DataType {
    match rows.first().map(|r| r.id) {
        Some(IdRef::Int(_)) => DataType::Int64,
        Some(IdRef::UInt(_)) => DataType::UInt64,
        _ => DataType::Utf8,
    }
}

fn schema(id: DataType, terms: &[&str], extra: &[(Field, ArrayRef)]) -> Arc<Schema> {
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
    fields.extend(extra.iter().map(|(f, _)| f.clone()));
    Arc::new(Schema::new(fields))
}

fn batch(
    schema: &Arc<Schema>,
    rows: &[SubsetRow],
    terms: usize,
    extra: &[ArrayRef],
) -> Result<RecordBatch> {
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
    cols.extend(extra.iter().cloned());
    RecordBatch::try_new(schema.clone(), cols).map_err(|e| Error::Internal(e.to_string()))
}

/// Writes `rows` to `path` as Parquet (zstd), atomically; `extra` holds
/// the `--keep-columns` values of the rows, in the same order, and
/// `key_value` the file's key-value metadata.
pub fn write_parquet(
    path: &Path,
    rows: &[SubsetRow],
    term_names: &[&str],
    extra: &[(Field, ArrayRef)],
    key_value: &[(String, String)],
) -> Result<()> {
    let schema = schema(id_type(rows), term_names, extra);
    let kv = key_value
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect();
    let props = zstd_properties_builder()
        .set_key_value_metadata(Some(kv))
        .build();
    let batches = rows.chunks(BATCH_ROWS).enumerate().map(|(i, chunk)| {
        let ex: Vec<ArrayRef> = extra
            .iter()
            .map(|(_, a)| a.slice(i * BATCH_ROWS, chunk.len()))
            .collect();
        batch(&schema, chunk, term_names.len(), &ex)
    });
    write_batches_with(path, schema.clone(), props, batches)
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
/// Kept metadata columns follow the terms (nested values as JSON text).
pub fn write_csv(
    path: &Path,
    rows: &[SubsetRow],
    term_names: &[&str],
    extra: &[(Field, ArrayRef)],
) -> Result<()> {
    for (f, _) in extra {
        check_csv_type(f.name(), f.data_type())?;
    }
    atomic_write(path, |w| {
        let mut header = String::from("id,rank,row,class,score");
        for t in term_names {
            header.push(',');
            header.push_str(t);
        }
        for (f, _) in extra {
            header.push(',');
            header.push_str(&csv_field(f.name()));
        }
        writeln!(w, "{header}").at_path(path)?;
        let mut line = String::new();
        for (i, r) in rows.iter().enumerate() {
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
            for (_, a) in extra {
                line.push(',');
                line.push_str(&csv_field(&csv_text(a.as_ref(), i)));
            }
            writeln!(w, "{line}").at_path(path)?;
        }
        Ok(())
    })
}

/// A 32-character hexadecimal uid as `(upper, lower)` 64-bit halves.
pub fn parse_uid(s: &str) -> Option<(u64, u64)> {
    if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((
        u64::from_str_radix(&s[..16], 16).ok()?,
        u64::from_str_radix(&s[16..], 16).ok()?,
    ))
}

/// Writes `datacomp_uids.npy` (docs/formats.md) when every id is a 32-hex uid:
/// dtype `[('f0','<u8'),('f1','<u8')]`, shape `(n,)`, sorted ascending,
/// what DataComp's `resharder.py --subset-file` reads. Returns whether it
/// wrote the file.
pub fn write_uids_npy(path: &Path, rows: &[SubsetRow]) -> Result<bool> {
    let mut uids = Vec::with_capacity(rows.len());
    for r in rows {
        match r.id {
            IdRef::Utf8(s) => match parse_uid(s) {
                Some(u) => uids.push(u),
                None => return Ok(false),
            },
            _ => return Ok(false),
        }
    }
    if uids.is_empty() {
        return Ok(false);
    }
    uids.sort_unstable();
    let descr = "[('f0', '<u8'), ('f1', '<u8')]";
    let mut bytes = header_bytes(descr, &format!("({},)", uids.len()));
    bytes.reserve(uids.len() * 16);
    for (hi, lo) in uids {
        bytes.extend(hi.to_le_bytes());
        bytes.extend(lo.to_le_bytes());
    }
    atomic_write(path, |w| w.write_all(&bytes).at_path(path))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_halves() {
        let u = "0123456789abcdef00000000000000ff";
        assert_eq!(parse_uid(u), Some((0x0123456789abcdef, 0xff)));
        assert_eq!(parse_uid("xyz"), None);
        assert_eq!(parse_uid(&"g".repeat(32)), None);
    }
}
