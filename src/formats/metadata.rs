//! `--keep-columns`: metadata columns of the selected rows, read back from
//! the source shards (the Parquet shard, the DataComp `.parquet`, or the
//! clip-retrieval `metadata_{p}.parquet`) by canonical row index, one
//! shard and one record batch at a time, and the CSV/JSON text of any
//! Arrow value for `subset.csv`.

use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, ArrayRef, UInt32Array};
use arrow_schema::{DataType, Field};
use parquet::arrow::ProjectionMask;

use super::dataset::metadata_path;
use super::dataset::{ShardStarts, SourceFile};
use super::parquet_read::{batches, column_names, open_parquet};
use crate::error::{Error, Result};

/// Columns a subset file may already have: the core columns, then every
/// method's terms (ClipCov's, neg_clip_loss's, semdedup's, c_rho's,
/// datacomp_image_based's). A kept column may not reuse them.
pub const RESERVED: [&str; 14] = [
    "id",
    "rank",
    "row",
    "class",
    "score",
    "easy",
    "cross",
    "label",
    "between",
    "r",
    "centroid_distance",
    "learner_loss",
    "reference_loss",
    "targets_in_cluster",
];

/// What `--keep-columns` needs to fetch rows: the shards and where each
/// starts in the canonical row order.
#[derive(Clone, Default)]
pub struct Keep<'a> {
    pub names: Vec<String>,
    pub files: &'a [SourceFile],
    /// Where each shard's rows are in the canonical row order.
    pub starts: ShardStarts,
}

impl Keep<'_> {
    /// The kept columns of `rows` (canonical row indices, in output
    /// order), as `(field, array)` pairs in the order of `names`.
    ///
    /// # Errors
    /// A usage error for a reserved or repeated name; a data error naming
    /// the file for a missing column, a type that differs between shards,
    /// or a shard without metadata.
    pub fn columns(&self, rows: &[u64]) -> Result<Vec<(Field, ArrayRef)>> {
        if self.names.is_empty() {
            return Ok(Vec::new());
        }
        for (i, n) in self.names.iter().enumerate() {
            if RESERVED.contains(&n.as_str()) || self.names[..i].contains(n) {
                return Err(Error::Usage(format!(
                    "--keep-columns: '{n}' is repeated or is a column clipcov writes to subsets (one of {})",
                    RESERVED.join(", ")
                )));
            }
        }
        self.fetch(rows, "--keep-columns")
    }

    /// The columns `names` of `rows` (as [`Keep::columns`], without its
    /// checks of the names); `flag` asked for them, for the messages.
    pub fn fetch(&self, rows: &[u64], flag: &str) -> Result<Vec<(Field, ArrayRef)>> {
        // (row, output position), sorted by row: one pass over the shards.
        let mut want: Vec<(u64, usize)> = rows.iter().copied().zip(0..).collect();
        want.sort_unstable();
        let mut parts: Vec<Vec<ArrayRef>> = vec![Vec::new(); self.names.len()];
        let mut fields: Vec<Option<Field>> = vec![None; self.names.len()];
        let mut at = 0usize;
        for (fi, file) in self.files.iter().enumerate() {
            let range = self.starts.range(fi);
            let (first, end) = (range.start, range.end);
            let start_at = at;
            while at < want.len() && want[at].0 < end {
                at += 1;
            }
            if at == start_at {
                continue;
            }
            let local: Vec<u64> = want[start_at..at].iter().map(|w| w.0 - first).collect();
            let path = metadata_path(file).ok_or_else(|| {
                Error::file(&file.path, format!("no metadata file for {flag}"))
                    .with_hint("clip-retrieval metadata lives in metadata/metadata_{p}.parquet")
            })?;
            let arrays = self.read_rows(path, &local, &mut fields, flag)?;
            for (p, a) in parts.iter_mut().zip(arrays) {
                p.extend(a);
            }
        }
        if at < want.len() {
            return Err(Error::Internal(format!(
                "--keep-columns: row {} is past the last shard",
                want[at].0
            )));
        }
        // The arrays are in row order; put them in output order.
        let mut order = vec![0u32; rows.len()];
        for (sorted_pos, &(_, out_pos)) in want.iter().enumerate() {
            order[out_pos] = sorted_pos as u32;
        }
        let order = UInt32Array::from(order);
        let mut out = Vec::with_capacity(self.names.len());
        for ((name, p), f) in self.names.iter().zip(parts).zip(fields) {
            let field = f.unwrap_or_else(|| Field::new(name, DataType::Null, true));
            let refs: Vec<&dyn Array> = p.iter().map(|a| a.as_ref()).collect();
            let all = if refs.is_empty() {
                arrow_array::new_empty_array(field.data_type())
            } else {
                arrow_select::concat::concat(&refs).map_err(|e| {
                    Error::Usage(format!(
                        "{flag}: column '{name}' differs in type between shards ({e})"
                    ))
                })?
            };
            let taken = arrow_select::take::take(&all, &order, None)
                .map_err(|e| Error::Internal(e.to_string()))?;
            out.push((field.with_nullable(true), taken));
        }
        Ok(out)
    }

    /// Rows `local` (sorted indices inside the file) of the kept columns.
    fn read_rows(
        &self,
        path: &Path,
        local: &[u64],
        fields: &mut [Option<Field>],
        flag: &str,
    ) -> Result<Vec<Vec<ArrayRef>>> {
        let builder = open_parquet(path)?;
        let schema = builder.schema().clone();
        let mut roots = Vec::with_capacity(self.names.len());
        for (name, slot) in self.names.iter().zip(fields.iter_mut()) {
            let idx = schema.index_of(name).map_err(|_| {
                Error::column(path, name, format!("missing column (asked for by {flag})"))
                    .with_hint(format!("the file has columns: {}", column_names(&schema)))
            })?;
            let f = schema.field(idx);
            match slot {
                Some(prev) if prev.data_type() != f.data_type() => {
                    return Err(Error::column(
                        path,
                        name,
                        format!(
                            "type {} differs from the first shard's {}",
                            f.data_type(),
                            prev.data_type()
                        ),
                    ))
                }
                _ => *slot = Some(f.clone()),
            }
            roots.push(idx);
        }
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots.iter().copied());
        let mut sorted = roots.clone();
        sorted.sort_unstable();
        let pos: Vec<usize> = roots
            .iter()
            .map(|r| sorted.iter().position(|s| s == r).unwrap())
            .collect();
        let reader = batches(path, builder.with_projection(mask).with_batch_size(8192))?;
        let mut out: Vec<Vec<ArrayRef>> = vec![Vec::new(); self.names.len()];
        let (mut offset, mut k) = (0u64, 0usize);
        for batch in reader {
            if k == local.len() {
                break;
            }
            let batch = batch?;
            let end = offset + batch.num_rows() as u64;
            let mut idx = Vec::new();
            while k < local.len() && local[k] < end {
                idx.push((local[k] - offset) as u32);
                k += 1;
            }
            if !idx.is_empty() {
                let idx = UInt32Array::from(idx);
                for (o, &p) in out.iter_mut().zip(&pos) {
                    let a = arrow_select::take::take(batch.column(p), &idx, None)
                        .map_err(|e| Error::Internal(e.to_string()))?;
                    o.push(a);
                }
            }
            offset = end;
        }
        if k < local.len() {
            return Err(Error::file(
                path,
                format!("has {offset} rows, fewer than the shard's embeddings"),
            ));
        }
        Ok(out)
    }
}

/// Checks that every kept column can be written to CSV.
pub fn check_csv_type(name: &str, dt: &DataType) -> Result<()> {
    if json_supported(dt) {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "--keep-columns: column '{name}' has type {dt}, which clipcov cannot write to CSV"
        )))
    }
}

fn json_supported(dt: &DataType) -> bool {
    use DataType::*;
    match dt {
        Null | Boolean | Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64
        | Float16 | Float32 | Float64 | Utf8 | LargeUtf8 | Utf8View | Binary | LargeBinary
        | Date32 => true,
        List(f) | LargeList(f) | FixedSizeList(f, _) => json_supported(f.data_type()),
        Struct(fs) => fs.iter().all(|f| json_supported(f.data_type())),
        _ => false,
    }
}

/// Value `i` of `a` as JSON (types of [`check_csv_type`]).
pub fn to_json(a: &dyn Array, i: usize) -> serde_json::Value {
    use serde_json::Value;
    if a.is_null(i) {
        return Value::Null;
    }
    macro_rules! prim {
        ($t:ty) => {
            serde_json::json!(a.as_primitive::<$t>().value(i))
        };
    }
    let list = |child: ArrayRef| -> Value {
        Value::Array((0..child.len()).map(|j| to_json(&child, j)).collect())
    };
    match a.data_type() {
        DataType::Boolean => Value::Bool(a.as_boolean().value(i)),
        DataType::Int8 => prim!(Int8Type),
        DataType::Int16 => prim!(Int16Type),
        DataType::Int32 => prim!(Int32Type),
        DataType::Int64 => prim!(Int64Type),
        DataType::UInt8 => prim!(UInt8Type),
        DataType::UInt16 => prim!(UInt16Type),
        DataType::UInt32 => prim!(UInt32Type),
        DataType::UInt64 => prim!(UInt64Type),
        DataType::Float16 => serde_json::json!(a.as_primitive::<Float16Type>().value(i).to_f32()),
        DataType::Float32 => prim!(Float32Type),
        DataType::Float64 => prim!(Float64Type),
        DataType::Date32 => prim!(Date32Type),
        DataType::Utf8 => Value::String(a.as_string::<i32>().value(i).into()),
        DataType::LargeUtf8 => Value::String(a.as_string::<i64>().value(i).into()),
        DataType::Utf8View => Value::String(a.as_string_view().value(i).into()),
        DataType::Binary => Value::String(hex(a.as_binary::<i32>().value(i))),
        DataType::LargeBinary => Value::String(hex(a.as_binary::<i64>().value(i))),
        DataType::List(_) => list(a.as_list::<i32>().value(i)),
        DataType::LargeList(_) => list(a.as_list::<i64>().value(i)),
        DataType::FixedSizeList(_, _) => list(a.as_fixed_size_list().value(i)),
        DataType::Struct(fs) => {
            let s = a.as_struct();
            Value::Object(
                fs.iter()
                    .zip(s.columns())
                    .map(|(f, c)| (f.name().clone(), to_json(c.as_ref(), i)))
                    .collect(),
            )
        }
        _ => Value::Null,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Value `i` of `a` as CSV text: strings as they are, numbers as JSON
/// numbers, nested values as JSON text, null as an empty field.
pub fn csv_text(a: &dyn Array, i: usize) -> String {
    match to_json(a, i) {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s,
        v => v.to_string(),
    }
}
