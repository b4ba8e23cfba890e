//! The class prompts file: `class_id`, `name`, `text_embedding` (docs/formats.md).
//!
//! Several rows may share a `class_id` (one per prompt template): each is
//! normalised, they are averaged, and the mean is normalised again, as in
//! CLIP's zero-shot recipe. Classes are ordered by `class_id`.

use std::collections::BTreeMap;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::Array;
use arrow_schema::DataType;

use super::embedding::{EmbeddingView, RowProblem};
use super::parquet_read::{batches, open_parquet};
use crate::error::{Error, Result};

/// Class prompt embeddings, one normalised row per class.
#[derive(Clone, Debug)]
pub struct Prompts {
    pub class_ids: Vec<i64>,
    pub names: Vec<String>,
    pub d: usize,
    /// `[K, d]` row-major, each row of unit norm.
    pub embeddings: Vec<f32>,
}

impl Prompts {
    pub fn len(&self) -> usize {
        self.class_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.class_ids.is_empty()
    }
}

/// Reads a prompts Parquet file.
pub fn read_prompts(path: &Path) -> Result<Prompts> {
    super::parquet_read::guard_decoder(path, || read_prompts_unguarded(path))
}

fn read_prompts_unguarded(path: &Path) -> Result<Prompts> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy") || e.eq_ignore_ascii_case("npz"))
    {
        // One format: Parquet carries the names and the template rows.
        return Err(Error::file(path, "prompts must be a Parquet file, not a NumPy array").with_hint(
            "write Parquet with columns class_id (int), name (utf8), text_embedding (list of float), one row per prompt template, e.g. with pandas.DataFrame.to_parquet",
        ));
    }
    let builder = open_parquet(path)?;
    let schema = builder.schema().clone();
    for (name, want) in [
        ("class_id", "int32 or int64"),
        ("name", "utf8"),
        ("text_embedding", "FixedSizeList or List of float"),
    ] {
        if schema.field_with_name(name).is_err() {
            return Err(Error::column(
                path,
                name,
                format!("missing column (expected {want})"),
            ));
        }
    }
    let reader = batches(path, builder)?;
    // class_id -> (name, sum of normalised template embeddings)
    let mut classes: BTreeMap<i64, (String, Vec<f64>)> = BTreeMap::new();
    let mut d: Option<usize> = None;
    let mut row0 = 0u64;
    for batch in reader {
        let batch = batch?;
        let ids = batch.column_by_name("class_id").unwrap();
        let ids: Vec<Option<i64>> = match ids.data_type() {
            DataType::Int64 => ids.as_primitive::<Int64Type>().iter().collect(),
            DataType::Int32 => ids
                .as_primitive::<Int32Type>()
                .iter()
                .map(|v| v.map(i64::from))
                .collect(),
            other => {
                return Err(Error::column(
                    path,
                    "class_id",
                    format!("type {other}, expected int32 or int64"),
                ))
            }
        };
        let names = batch.column_by_name("name").unwrap();
        let names: Vec<Option<String>> = match names.data_type() {
            DataType::Utf8 => names
                .as_string::<i32>()
                .iter()
                .map(|s| s.map(str::to_string))
                .collect(),
            DataType::LargeUtf8 => names
                .as_string::<i64>()
                .iter()
                .map(|s| s.map(str::to_string))
                .collect(),
            other => {
                return Err(Error::column(
                    path,
                    "name",
                    format!("type {other}, expected utf8"),
                ))
            }
        };
        let col = batch.column_by_name("text_embedding").unwrap();
        let view = EmbeddingView::try_new(col).ok_or_else(|| {
            Error::column(
                path,
                "text_embedding",
                format!("type {} is not an embedding", col.data_type()),
            )
        })?;
        for i in 0..batch.num_rows() {
            let row = row0 + i as u64;
            let dd = *d.get_or_insert_with(|| view.row_len(i));
            let values = view.row(i, dd).map_err(|p| {
                let problem = match p {
                    RowProblem::Null => "null embedding".to_string(),
                    RowProblem::NullComponent => "null component".to_string(),
                    RowProblem::Length(n) => {
                        format!("length {n}, expected {dd} (the length of the first prompt)")
                    }
                };
                Error::at(path, row, "text_embedding", problem)
            })?;
            let norm2 = values
                .norm2()
                .ok_or_else(|| Error::at(path, row, "text_embedding", "non-finite component"))?;
            if norm2 == 0.0 {
                return Err(Error::at(path, row, "text_embedding", "zero vector"));
            }
            let id = ids[i].ok_or_else(|| Error::at(path, row, "class_id", "null class_id"))?;
            let name = names[i].clone().unwrap_or_default();
            let mut v = Vec::with_capacity(dd);
            values.extend_scaled_f32(1.0, &mut v);
            let inv = 1.0 / norm2.sqrt();
            let entry = classes.entry(id).or_insert_with(|| (name, vec![0.0; dd]));
            for (s, x) in entry.1.iter_mut().zip(&v) {
                *s += *x as f64 * inv;
            }
        }
        row0 += batch.num_rows() as u64;
    }
    let d = d.ok_or_else(|| Error::file(path, "the prompts file has no rows"))?;
    let mut out = Prompts {
        class_ids: Vec::new(),
        names: Vec::new(),
        d,
        embeddings: Vec::with_capacity(classes.len() * d),
    };
    for (id, (name, sum)) in classes {
        let norm = sum.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            return Err(Error::file(
                path,
                format!("class_id {id}: its template embeddings average to zero"),
            ));
        }
        out.class_ids.push(id);
        out.names.push(name);
        out.embeddings.extend(sum.iter().map(|x| (x / norm) as f32));
    }
    Ok(out)
}
