//! `--where "<SQL predicate>"`: which rows enter the selection, decided on
//! the metadata plane before ingest.
//!
//! The predicate is a SQL expression over metadata columns, such as
//! `original_width >= 200 AND length(text) > 5`. polars' SQL expression
//! parser turns it into an expression, which polars evaluates on each
//! shard's metadata Parquet file (the shard itself, the DataComp
//! `X.parquet`, the clip-retrieval `metadata_{p}.parquet`), one file and
//! one chunk of rows at a time, reading only the columns the predicate
//! names. What comes back is the set of passing rows as a bitmap over the
//! canonical row index; ingest stages only those rows, so rows that fail
//! are never validated, classed, scored or counted in `N`, while every
//! staged row keeps its canonical row index (the `row` column of the
//! outputs still points into the unfiltered input).
//!
//! polars serves only this metadata plane, never the embedding path, and
//! only with the `prefilter` cargo feature (on by default); without it a
//! `--where` is a usage error. All of the feature's `cfg`s live here.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::formats::dataset::metadata_path;
use crate::formats::dataset::SourceFile;
use crate::formats::parquet_read::{column_names, open_parquet};

/// A parsed `--where` predicate.
#[derive(Clone)]
pub struct Predicate {
    /// The text the user gave.
    pub text: String,
    /// The columns it reads, in order of first appearance.
    pub columns: Vec<String>,
    #[cfg(feature = "prefilter")]
    expr: polars::prelude::Expr,
}

impl std::fmt::Debug for Predicate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Predicate({:?})", self.text)
    }
}

/// What the prefilter did, for the manifest (kept in the store's
/// `ingest.json`, so a reused store still reports it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrefilterReport {
    pub predicate: String,
    pub columns: Vec<String>,
    pub rows_before: u64,
    pub rows_after: u64,
}

/// The rows that passed, over the canonical row index.
#[derive(Clone, Debug)]
pub struct RowFilter {
    words: Vec<u64>,
    pub report: PrefilterReport,
}

impl RowFilter {
    /// Whether canonical row `row` passed the predicate.
    pub fn contains(&self, row: u64) -> bool {
        self.words
            .get((row / 64) as usize)
            .is_some_and(|w| w >> (row % 64) & 1 == 1)
    }

    fn set(&mut self, row: u64) {
        self.words[(row / 64) as usize] |= 1 << (row % 64);
    }
}

/// The column that holds the row index inside a file: a name no metadata
/// column is expected to have.
#[cfg(feature = "prefilter")]
const ROW_INDEX: &str = "__clipcov_row_index";

/// Rows of a file evaluated at once.
#[cfg(feature = "prefilter")]
const BATCH_ROWS: usize = 1 << 16;

/// An Arrow column as a polars series: booleans, integers (narrow ones
/// widened to 32 bits), floats (float16 as float32) and strings; `None`
/// for other types.
#[cfg(feature = "prefilter")]
fn to_series(name: &str, a: &arrow_array::ArrayRef) -> Option<polars::prelude::Series> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    use arrow_schema::DataType as A;
    use polars::prelude::{NamedFrom, Series};
    let n = || name.into();
    macro_rules! prim {
        ($t:ty, $out:ty) => {
            Series::new(
                n(),
                a.as_primitive::<$t>()
                    .iter()
                    .map(|v| v.map(<$out>::from))
                    .collect::<Vec<Option<$out>>>(),
            )
        };
    }
    Some(match a.data_type() {
        A::Boolean => Series::new(n(), a.as_boolean().iter().collect::<Vec<_>>()),
        A::Int8 => prim!(Int8Type, i32),
        A::Int16 => prim!(Int16Type, i32),
        A::Int32 => prim!(Int32Type, i32),
        A::Int64 => prim!(Int64Type, i64),
        A::UInt8 => prim!(UInt8Type, u32),
        A::UInt16 => prim!(UInt16Type, u32),
        A::UInt32 => prim!(UInt32Type, u32),
        A::UInt64 => prim!(UInt64Type, u64),
        A::Float16 => Series::new(
            n(),
            a.as_primitive::<Float16Type>()
                .iter()
                .map(|v| v.map(|x| x.to_f32()))
                .collect::<Vec<Option<f32>>>(),
        ),
        A::Float32 => prim!(Float32Type, f32),
        A::Float64 => prim!(Float64Type, f64),
        A::Utf8 => Series::new(n(), a.as_string::<i32>().iter().collect::<Vec<_>>()),
        A::LargeUtf8 => Series::new(n(), a.as_string::<i64>().iter().collect::<Vec<_>>()),
        A::Utf8View => Series::new(n(), a.as_string_view().iter().collect::<Vec<_>>()),
        _ => return None,
    })
}

/// The first line of a polars message (some carry a plan or a hint below).
#[cfg(feature = "prefilter")]
fn first_line(e: &(impl std::fmt::Display + ?Sized)) -> String {
    e.to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Whether `word` occurs as a keyword of `sql`: a whole word, case
/// insensitive, outside quoted strings and quoted identifiers.
#[cfg(feature = "prefilter")]
fn has_keyword(sql: &str, word: &str) -> bool {
    let mut quote: Option<char> = None;
    let mut token = String::new();
    for c in sql.chars().chain(std::iter::once(' ')) {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' || c == '`' => {
                token.clear();
                quote = Some(c);
            }
            None if c.is_alphanumeric() || c == '_' => token.push(c),
            None => {
                if token.eq_ignore_ascii_case(word) {
                    return true;
                }
                token.clear();
            }
        }
    }
    false
}

impl Predicate {
    /// Parses `text` as a SQL expression.
    ///
    /// # Errors
    /// A usage error naming the predicate when it is not a SQL expression
    /// (or when clipcov was built without the `prefilter` feature).
    #[cfg(feature = "prefilter")]
    pub fn parse(text: &str) -> Result<Predicate> {
        let bad = |why: String| {
            Error::Usage(format!(
                "--where '{text}': {why}; give a SQL expression over metadata columns, e.g. \"original_width >= 200 AND length(text) > 5\" (quote odd column names with double quotes)"
            ))
        };
        if text.trim().is_empty() {
            return Err(bad("the predicate is empty".into()));
        }
        if has_keyword(text, "select") {
            return Err(bad(
                "subqueries are not supported SQL here (the predicate sees one row's metadata)"
                    .into(),
            ));
        }
        let expr = polars::sql::sql_expr(text).map_err(|e| bad(first_line(&e)))?;
        let mut columns: Vec<String> = Vec::new();
        for c in expr.clone().meta().root_names() {
            if !columns.iter().any(|x| x == c.as_str()) {
                columns.push(c.to_string());
            }
        }
        Ok(Predicate {
            text: text.to_string(),
            columns,
            expr,
        })
    }

    #[cfg(not(feature = "prefilter"))]
    pub fn parse(text: &str) -> Result<Predicate> {
        Err(Error::Usage(format!(
            "--where '{text}': this clipcov was built without the prefilter feature; rebuild with `cargo build --release --features prefilter` (it is on by default)"
        )))
    }

    /// Evaluates the predicate on every shard's metadata file, one file at
    /// a time; `rows[i]` is the row count of `files[i]` (from its footer),
    /// and the files are in canonical order.
    ///
    /// # Errors
    /// A data error naming the file for a shard without metadata, a
    /// column the predicate names that the file lacks, or a file whose
    /// row count disagrees; a usage error naming the predicate and the
    /// file when polars cannot evaluate it there (e.g. a type mismatch);
    /// a usage error when no row passes.
    pub fn evaluate(&self, files: &[SourceFile], rows: &[u64]) -> Result<RowFilter> {
        let total: u64 = rows.iter().sum();
        let mut filter = RowFilter {
            words: vec![0; total.div_ceil(64) as usize],
            report: PrefilterReport {
                predicate: self.text.clone(),
                columns: self.columns.clone(),
                rows_before: total,
                rows_after: 0,
            },
        };
        let mut first = 0u64;
        for (f, &n) in files.iter().zip(rows) {
            let path = metadata_path(f).ok_or_else(|| {
                Error::file(&f.path, "no metadata file to evaluate --where on").with_hint(
                    "clip-retrieval metadata lives in metadata/metadata_{p}.parquet; drop --where for data without metadata",
                )
            })?;
            // Our own reader checks the footer and the columns first, so a
            // missing column or a corrupt file is a data error naming it.
            let schema = open_parquet(path)?.schema().clone();
            for c in &self.columns {
                if schema.field_with_name(c).is_err() {
                    return Err(Error::column(
                        path,
                        c,
                        format!("missing column (named in --where '{}')", self.text),
                    )
                    .with_hint(format!(
                        "the file has columns: {}; fix the predicate or the data",
                        column_names(&schema)
                    )));
                }
            }
            // A predicate that names no column still needs the rows.
            let columns = match (self.columns.is_empty(), schema.fields().first()) {
                (true, Some(f)) => vec![f.name().clone()],
                _ => self.columns.clone(),
            };
            for local in self.passing_rows(path, &columns)? {
                if local >= n {
                    return Err(Error::file(
                        path,
                        format!("the metadata has more rows than the shard's {n}"),
                    )
                    .with_hint("re-export the shard so its files are row-aligned"));
                }
                filter.set(first + local);
                filter.report.rows_after += 1;
            }
            first += n;
            crate::progress::advance(n);
        }
        if filter.report.rows_after == 0 {
            // The data, not the flags, leaves nothing to select from.
            let first = files.first().map(|f| f.path.clone()).unwrap_or_default();
            let at = first.parent().unwrap_or(&first).to_path_buf();
            return Err(Error::file(
                at,
                format!(
                    "--where '{}' keeps none of the {total} rows of the data",
                    self.text
                ),
            )
            .with_hint("loosen the predicate or check the data"));
        }
        Ok(filter)
    }

    /// The rows of `path` (indices inside the file, ascending) where the
    /// predicate is true (null counts as false, as in SQL); `columns` are
    /// the columns to read (the predicate's, or one column when it names
    /// none, for the row count).
    ///
    /// Our own Parquet reader reads only `columns`, [`BATCH_ROWS`] rows at
    /// a time; each batch becomes a polars frame that the expression
    /// filters. So memory holds one batch of the predicate's columns and
    /// the passing indices, and polars needs neither its Parquet reader
    /// nor its streaming engine (which bring an object-store and HTTP
    /// stack with them; its Parquet scan would also convert every column
    /// of the file, and polars has no float16 embeddings).
    #[cfg(feature = "prefilter")]
    fn passing_rows(&self, path: &std::path::Path, columns: &[String]) -> Result<Vec<u64>> {
        use crate::formats::parquet_read::batches;
        use parquet::arrow::ProjectionMask;
        use polars::prelude::*;

        let builder = open_parquet(path)?;
        let schema = builder.schema().clone();
        let roots: Vec<usize> = columns
            .iter()
            .map(|c| schema.index_of(c).expect("checked by evaluate"))
            .collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let reader = batches(
            path,
            builder.with_projection(mask).with_batch_size(BATCH_ROWS),
        )?;
        let failed = |e: &dyn std::fmt::Display| {
            Error::Usage(format!(
                "--where '{}' cannot be evaluated on {}: {}",
                self.text,
                path.display(),
                first_line(e)
            ))
        };
        let mut out = Vec::new();
        let mut offset = 0u64;
        for batch in reader {
            let batch = batch?;
            let mut frame = Vec::with_capacity(self.columns.len());
            for name in &self.columns {
                let a = batch.column_by_name(name).expect("projected");
                let series = to_series(name, a).ok_or_else(|| {
                    Error::Usage(format!(
                        "--where '{}': column '{name}' of {} has type {}, which the prefilter cannot read; it reads booleans, integers, floats and strings",
                        self.text,
                        path.display(),
                        a.data_type()
                    ))
                })?;
                frame.push(Column::from(series));
            }
            let df = DataFrame::new(batch.num_rows(), frame)
                .and_then(|df| {
                    df.lazy()
                        .with_row_index(ROW_INDEX, Some(offset as IdxSize))
                        .filter(self.expr.clone())
                        .select([col(ROW_INDEX)])
                        .collect()
                })
                .map_err(|e| failed(&e))?;
            let idx = df
                .column(ROW_INDEX)
                .and_then(|c| c.idx())
                .map_err(|e| Error::Internal(e.to_string()))?;
            out.extend(idx.into_no_null_iter().map(|i| i as u64));
            offset += batch.num_rows() as u64;
        }
        Ok(out)
    }

    #[cfg(not(feature = "prefilter"))]
    fn passing_rows(&self, _path: &std::path::Path, _columns: &[String]) -> Result<Vec<u64>> {
        unreachable!("a Predicate exists only with the prefilter feature")
    }
}

#[cfg(all(test, feature = "prefilter"))]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_columns() {
        let p = Predicate::parse("original_width >= 200 AND length(text) > 5").unwrap();
        assert_eq!(p.columns, ["original_width", "text"]);
        let e = Predicate::parse("original_width >= (200").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e
            .to_string()
            .starts_with("--where 'original_width >= (200': "));
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn bitmap_holds_rows() {
        let mut f = RowFilter {
            words: vec![0; 3],
            report: PrefilterReport {
                predicate: String::new(),
                columns: Vec::new(),
                rows_before: 130,
                rows_after: 0,
            },
        };
        for r in [0, 63, 64, 129] {
            f.set(r);
        }
        let set: Vec<u64> = (0..200).filter(|&r| f.contains(r)).collect();
        assert_eq!(set, [0, 63, 64, 129]);
    }
}
