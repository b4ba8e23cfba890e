//! Data-model ground truth: when the source shards carry a `kind` column
//! (synth writes clean / mismatch / duplicate / junk / spam), the share of
//! each kind in a subset; when they carry `true_class`, each row's class.
//! A column is read from the shards, projected alone, batch by batch, into
//! one value per canonical row.

use std::collections::BTreeMap;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;
use parquet::arrow::ProjectionMask;

use crate::error::{Error, Result};
use crate::formats::dataset::SourceFile;
use crate::formats::parquet_read::{batches, open_parquet};

/// The column read.
pub const KIND_COLUMN: &str = "kind";
/// The true-class column (synth's; -1 or null: no class).
pub const TRUE_CLASS_COLUMN: &str = "true_class";
/// The kind whose pairs make the retrieval slice.
pub const CLEAN: &str = "clean";

/// The kind of every canonical row.
#[derive(Clone, Debug)]
pub struct Kinds {
    /// Distinct kinds in order of first appearance.
    pub names: Vec<String>,
    /// `code[row]` indexes `names`.
    pub code: Vec<u8>,
}

impl Kinds {
    /// The code of `name`, if any row has it.
    pub fn code_of(&self, name: &str) -> Option<u8> {
        self.names.iter().position(|n| n == name).map(|i| i as u8)
    }

    /// The share of each kind among canonical rows `rows`, by name (every
    /// known kind listed, zeros included).
    pub fn shares(&self, rows: &[u64]) -> BTreeMap<String, f64> {
        let mut counts = vec![0u64; self.names.len()];
        for &r in rows {
            counts[self.code[r as usize] as usize] += 1;
        }
        let n = rows.len().max(1) as f64;
        self.names
            .iter()
            .zip(counts)
            .map(|(k, c)| (k.clone(), c as f64 / n))
            .collect()
    }
}

/// Calls `f(path, column)` on every batch of `column` in `files`
/// (canonical order), the column projected alone. `false` when the first
/// file has no such column; an error naming the file when only some do.
fn for_each_batch(
    files: &[SourceFile],
    column: &str,
    mut f: impl FnMut(&Path, &ArrayRef) -> Result<()>,
) -> Result<bool> {
    for (i, file) in files.iter().enumerate() {
        let path = &file.path;
        let builder = open_parquet(path)?;
        let Ok(idx) = builder.schema().index_of(column) else {
            if i == 0 {
                return Ok(false);
            }
            return Err(
                Error::column(path, column, "missing column").with_hint(format!(
                    "the first shard has a {column} column; give every shard one, or none"
                )),
            );
        };
        let mask = ProjectionMask::roots(builder.parquet_schema(), [idx]);
        for batch in batches(path, builder.with_projection(mask).with_batch_size(65_536))? {
            f(path, batch?.column(0))?;
        }
    }
    Ok(true)
}

/// Reads the `kind` column of `files` (canonical order). `None` when the
/// first file has no such column; an error when only some files have it.
pub fn read_kinds(files: &[SourceFile]) -> Result<Option<Kinds>> {
    let mut out = Kinds {
        names: Vec::new(),
        code: Vec::new(),
    };
    let found = for_each_batch(files, KIND_COLUMN, |path, col| {
        let values: Vec<Option<&str>> = match col.data_type() {
            DataType::Utf8 => col.as_string::<i32>().iter().collect(),
            DataType::LargeUtf8 => col.as_string::<i64>().iter().collect(),
            DataType::Utf8View => col.as_string_view().iter().collect(),
            other => {
                return Err(Error::column(
                    path,
                    KIND_COLUMN,
                    format!("type {other}, expected utf8"),
                ))
            }
        };
        for v in values {
            let name = v.unwrap_or("null");
            let code =
                match out.names.iter().position(|n| n == name) {
                    Some(c) => c,
                    None if out.names.len() < 255 => {
                        out.names.push(name.to_string());
                        out.names.len() - 1
                    }
                    None => return Err(Error::column(
                        path,
                        KIND_COLUMN,
                        "more than 255 distinct kinds; kind shares are for a handful of row kinds",
                    )),
                };
            out.code.push(code as u8);
        }
        Ok(())
    })?;
    Ok(found.then_some(out))
}

/// Reads the `true_class` column of `files` (canonical order) as `i64`,
/// null as -1. `None` when the first file has no such column; an error
/// when only some files have it.
pub fn read_true_class(files: &[SourceFile]) -> Result<Option<Vec<i64>>> {
    use arrow_array::types::{Int32Type, Int64Type};
    let mut out = Vec::new();
    let found = for_each_batch(files, TRUE_CLASS_COLUMN, |path, col| {
        match col.data_type() {
            DataType::Int32 => out.extend(
                col.as_primitive::<Int32Type>()
                    .iter()
                    .map(|v| v.map_or(-1, i64::from)),
            ),
            DataType::Int64 => out.extend(
                col.as_primitive::<Int64Type>()
                    .iter()
                    .map(|v| v.unwrap_or(-1)),
            ),
            other => {
                return Err(Error::column(
                    path,
                    TRUE_CLASS_COLUMN,
                    format!("type {other}, expected int32 or int64"),
                ))
            }
        }
        Ok(())
    })?;
    Ok(found.then_some(out))
}
