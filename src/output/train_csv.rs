//! `--train-csv cyclip|open_clip`: the subset as the file list a trainer
//! reads, `OUT/<method>/train.csv`, rows in rank order.
//!
//! Both trainers read it with `pandas.read_csv(path, sep=...)`: CyCLIP a
//! comma-separated file with `file,caption` and images opened at
//! `os.path.join(os.path.dirname(csv), file)`; OpenCLIP a tab-separated
//! file with `filepath`, `title` and images opened as given. So the paths
//! written are absolute (the image root joined with the metadata value),
//! which both resolve the same way, and every field is quoted with `"`
//! (pandas' default quote character), so commas, tabs, quotes and line
//! breaks in captions read back exactly. Captions pandas would read as
//! missing (empty, `NA`, `null`, ...) are refused: the trainer would get
//! NaN instead of the text.

use std::io::Write;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef};
use arrow_schema::{DataType, Schema};
use clap::ValueEnum;
use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::formats::dataset::metadata_path;
use crate::formats::dataset::SourceFile;
use crate::formats::metadata::Keep;
use crate::formats::parquet_read::{column_names, open_parquet};
use crate::io::atomic::atomic_write;
use crate::io::written::record;
use crate::io::written::OutputFile;

/// The file name in each method's folder.
pub const FILE: &str = "train.csv";

/// The trainer whose CSV loader reads the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TrainFormat {
    /// CyCLIP: comma-separated, columns `file,caption`.
    Cyclip,
    /// OpenCLIP: tab-separated, columns `filepath`, `title`.
    #[value(name = "open_clip")]
    OpenClip,
}

impl TrainFormat {
    fn separator(self) -> char {
        match self {
            TrainFormat::Cyclip => ',',
            TrainFormat::OpenClip => '\t',
        }
    }

    /// The trainer's default image and caption keys.
    fn header(self) -> [&'static str; 2] {
        match self {
            TrainFormat::Cyclip => ["file", "caption"],
            TrainFormat::OpenClip => ["filepath", "title"],
        }
    }
}

/// A validated `--train-csv` request.
#[derive(Clone, Debug, Serialize)]
pub struct TrainCsv {
    pub format: TrainFormat,
    pub image_path_column: String,
    pub caption_column: String,
    /// Absolute folder the image-path column is relative to.
    pub image_root: PathBuf,
}

/// Strings pandas.read_csv reads as missing by default
/// (`pandas._libs.parsers.STR_NA_VALUES`), quoted or not.
const PANDAS_NA: [&str; 19] = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
];

fn is_text(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

impl TrainCsv {
    /// The request of the flags; `image_root` defaults to the current
    /// folder and must be a readable folder.
    ///
    /// # Errors
    /// An I/O error naming the image root when it is missing or not a folder.
    pub fn new(
        format: TrainFormat,
        image_path_column: Option<&str>,
        caption_column: Option<&str>,
        image_root: Option<&Path>,
    ) -> Result<TrainCsv> {
        let root = image_root.unwrap_or(Path::new("."));
        let io = |kind, what: String| {
            Error::io(
                root,
                std::io::Error::new(kind, format!("--image-root: {what}")),
            )
        };
        let abs = std::fs::canonicalize(root).map_err(|e| io(e.kind(), e.to_string()))?;
        if !abs.is_dir() {
            return Err(io(std::io::ErrorKind::NotADirectory, "not a folder".into()));
        }
        Ok(TrainCsv {
            format,
            image_path_column: image_path_column.unwrap_or("image_path").to_string(),
            caption_column: caption_column.unwrap_or("caption").to_string(),
            image_root: abs,
        })
    }

    fn columns(&self) -> [&str; 2] {
        [&self.image_path_column, &self.caption_column]
    }

    /// Fails early (before staging) when a shard's metadata lacks a column
    /// or holds it as something other than text: reads only the footers.
    pub fn check_columns(&self, files: &[SourceFile]) -> Result<()> {
        for f in files {
            let path = metadata_path(f).ok_or_else(|| {
                Error::file(&f.path, "no metadata file for --train-csv")
                    .with_hint("clip-retrieval metadata lives in metadata/metadata_{p}.parquet")
            })?;
            let builder = open_parquet(path)?;
            self.check_schema(path, builder.schema())?;
        }
        Ok(())
    }

    fn check_schema(&self, path: &Path, schema: &Schema) -> Result<()> {
        for name in self.columns() {
            let field = schema.field_with_name(name).map_err(|_| {
                Error::column(path, name, "missing column (asked for by --train-csv)").with_hint(
                    format!(
                        "the file has columns: {}; name others with --image-path-column / --caption-column",
                        column_names(schema)
                    ),
                )
            })?;
            if !is_text(field.data_type()) {
                return Err(Error::column(
                    path,
                    name,
                    format!(
                        "has type {}, but --train-csv needs text (paths and captions)",
                        field.data_type()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The checked paths and captions of the selected rows, ready to write.
pub struct TrainRows {
    format: TrainFormat,
    paths: Vec<String>,
    captions: ArrayRef,
}

fn text_at(a: &dyn Array, i: usize) -> &str {
    match a.data_type() {
        DataType::LargeUtf8 => a.as_string::<i64>().value(i),
        DataType::Utf8View => a.as_string_view().value(i),
        _ => a.as_string::<i32>().value(i),
    }
}

/// Reads and checks the paths and captions of `rows` (canonical row
/// indices, in rank order) from the shards of `keep`; nothing is written.
///
/// # Errors
/// A data error naming the file, row (in the file) and column for a
/// missing column, a null or empty path, a null caption or one pandas
/// reads as missing.
pub fn prepare(t: &TrainCsv, keep: &Keep, rows: &[u64]) -> Result<TrainRows> {
    let fetch = Keep {
        names: t.columns().map(String::from).to_vec(),
        ..keep.clone()
    };
    let cols = fetch.fetch(rows, "--train-csv")?;
    let source = |i: usize| source_of(keep, rows[i]);
    if !rows.is_empty() {
        // Checked on every shard before staging; again for one changed since.
        let schema = Schema::new(cols.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>());
        t.check_schema(source(0).0, &schema)?;
    }
    let (path_col, caption_col) = (&cols[0].1, &cols[1].1);
    let mut paths = Vec::with_capacity(rows.len());
    for i in 0..rows.len() {
        let at = |column: &str, problem: String| {
            let (path, row) = source(i);
            Error::at(path, row, column, problem)
        };
        if path_col.is_null(i) || text_at(path_col.as_ref(), i).is_empty() {
            return Err(
                at(&t.image_path_column, "no image path (null or empty)".into()).with_hint(
                    "every row of train.csv needs an image; drop such rows with --where",
                ),
            );
        }
        let value = text_at(path_col.as_ref(), i);
        let full = t.image_root.join(value);
        let full = full.to_str().ok_or_else(|| {
            at(
                &t.image_path_column,
                format!("the image path {} is not UTF-8", full.display()),
            )
        })?;
        paths.push(full.to_string());
        if caption_col.is_null(i) {
            return Err(at(&t.caption_column, "null caption".into())
                .with_hint("drop such rows with --where"));
        }
        let caption = text_at(caption_col.as_ref(), i);
        if PANDAS_NA.contains(&caption) {
            return Err(at(
                &t.caption_column,
                format!("caption '{caption}' would read back as missing (NaN) in pandas.read_csv"),
            )
            .with_hint("drop such rows with --where"));
        }
    }
    Ok(TrainRows {
        format: t.format,
        paths,
        captions: caption_col.clone(),
    })
}

/// The metadata file and row in it of canonical row `r`, for messages.
fn source_of<'k>(keep: &Keep<'k>, r: u64) -> (&'k Path, u64) {
    let (fi, row) = keep.starts.locate(r).unwrap_or((0, r));
    let f = &keep.files[fi];
    (metadata_path(f).unwrap_or(&f.path), row)
}

/// A CSV field in double quotes, quotes doubled: pandas' default quoting.
fn push_quoted(line: &mut String, value: &str) {
    line.push('"');
    line.push_str(&value.replace('"', "\"\""));
    line.push('"');
}

/// Writes `dir/train.csv` atomically from `t` and records it.
pub fn write(out: &Path, dir: &Path, t: TrainRows) -> Result<OutputFile> {
    let path = dir.join(FILE);
    let sep = t.format.separator();
    atomic_write(&path, |w| {
        let [image, caption] = t.format.header();
        writeln!(w, "{image}{sep}{caption}").at_path(&path)?;
        let mut line = String::new();
        for (i, p) in t.paths.iter().enumerate() {
            line.clear();
            push_quoted(&mut line, p);
            line.push(sep);
            push_quoted(&mut line, text_at(t.captions.as_ref(), i));
            line.push('\n');
            w.write_all(line.as_bytes()).at_path(&path)?;
        }
        Ok(())
    })?;
    record(out, &path, t.paths.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_quotes_and_keeps_the_rest() {
        let mut s = String::new();
        push_quoted(&mut s, "a, \"b\"\tc\nd");
        assert_eq!(s, "\"a, \"\"b\"\"\tc\nd\"");
    }
}
