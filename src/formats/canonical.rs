//! The canonical input layout: a folder of Parquet shards (docs/formats.md).
//!
//! Files are found recursively, sorted by their path relative to the root
//! (byte-wise), and read memory-mapped (or, for a URL, with ranged reads
//! through [`crate::io::remote`]), one record batch at a time, so the dataset
//! never has to fit in memory. The canonical row index is the position in
//! the concatenation of the files' rows in that order ([`ShardStarts`]).
//!
//! Every Parquet read in clipcov goes through [`open_parquet`] and
//! [`batches`], which run the decoder under [`guard_decoder`].

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Schema};
use bytes::Bytes;
use memmap2::Mmap;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;
use parquet::file::reader::{ChunkReader, Length};
use serde::{Deserialize, Serialize};

use super::embedding::{embedding_kind, FloatKind};
use super::layout::{NpyShard, ShardKind};
use crate::error::{Error, IoContext, Result};
use crate::ids::IdKind;
use crate::io::remote::{self, RemoteFile, RemoteRead};

/// One input file, as recorded in the manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceFile {
    pub path: PathBuf,
    /// Path relative to the dataset root: the sort key of the row order.
    pub relative: String,
    pub bytes: u64,
    pub modified_unix: u64,
    /// Where the shard's embeddings are (npy layouts); Parquet by default.
    #[serde(default)]
    pub kind: ShardKind,
}

/// Where each shard's rows sit in the canonical row order, from the rows
/// of every shard: the one row -> shard lookup (dedup messages, c_rho's
/// learner rows, `--keep-columns`). An empty shard owns no row.
#[derive(Clone, Debug)]
pub struct ShardStarts {
    /// `starts[i]`: canonical index of shard `i`'s first row; one more
    /// entry holds the total.
    starts: Vec<u64>,
}

impl Default for ShardStarts {
    /// No shards.
    fn default() -> Self {
        ShardStarts::from_rows([])
    }
}

impl ShardStarts {
    pub fn from_rows(rows: impl IntoIterator<Item = u64>) -> Self {
        let mut starts = vec![0u64];
        for n in rows {
            starts.push(starts[starts.len() - 1] + n);
        }
        ShardStarts { starts }
    }

    /// The canonical rows of shard `i`.
    pub fn range(&self, i: usize) -> std::ops::Range<u64> {
        self.starts[i]..self.starts[i + 1]
    }

    /// The shard holding canonical row `row` and the row's index inside
    /// it; `None` past the last row.
    pub fn locate(&self, row: u64) -> Option<(usize, u64)> {
        let shards = self.starts.len() - 1;
        if row >= self.starts[shards] {
            return None;
        }
        // The last shard starting at or before `row`: empty shards share
        // their start with the next one and are skipped.
        let i = self.starts[..shards].partition_point(|&s| s <= row) - 1;
        Some((i, row - self.starts[i]))
    }
}

/// The column names to read.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Columns {
    pub id: String,
    pub image: String,
    pub text: String,
}

impl Default for Columns {
    fn default() -> Self {
        Columns {
            id: "id".into(),
            image: "image_embedding".into(),
            text: "text_embedding".into(),
        }
    }
}

/// Finds the `*.parquet` files under `root` (or `root` itself when it is a
/// file), in canonical order. `root` may be a URL (a prefix or an object).
pub fn discover(root: &Path) -> Result<Vec<SourceFile>> {
    if remote::is_url(root) {
        return discover_remote(root);
    }
    let meta = std::fs::metadata(root).at_path(root)?;
    let mut paths = Vec::new();
    if meta.is_file() {
        paths.push(root.to_path_buf());
    } else {
        walk(root, &mut paths)?;
    }
    let base = if meta.is_file() {
        root.parent().unwrap_or(Path::new(""))
    } else {
        root
    };
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let m = std::fs::metadata(&path).at_path(&path)?;
        let relative = path
            .strip_prefix(base)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        let modified_unix = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        files.push(SourceFile {
            path,
            relative,
            bytes: m.len(),
            modified_unix,
            kind: ShardKind::Parquet,
        });
    }
    files.sort_by(|a, b| a.relative.as_bytes().cmp(b.relative.as_bytes()));
    if files.is_empty() {
        return Err(Error::file(root, "no *.parquet files found").with_hint(
            "point --data at a folder of Parquet shards (searched recursively) or at one .parquet file",
        ));
    }
    Ok(files)
}

fn discover_remote(root: &Path) -> Result<Vec<SourceFile>> {
    let mut files: Vec<SourceFile> = remote::list(root)?
        .into_iter()
        // The rules of `walk`: no hidden or temporary names at any level.
        .filter(|o| {
            o.relative.ends_with(".parquet")
                && !o
                    .relative
                    .split('/')
                    .any(|seg| seg.starts_with('.') || seg.starts_with('_'))
        })
        .map(|o| SourceFile {
            path: o.path,
            relative: o.relative,
            bytes: o.stat.bytes,
            modified_unix: o.stat.modified_unix,
            kind: ShardKind::Parquet,
        })
        .collect();
    files.sort_by(|a, b| a.relative.as_bytes().cmp(b.relative.as_bytes()));
    if files.is_empty() {
        return Err(Error::file(root, "no *.parquet objects found").with_hint(
            "point --data at a prefix holding Parquet shards (listed recursively) or at one .parquet object",
        ));
    }
    Ok(files)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).at_path(dir)? {
        let entry = entry.at_path(dir)?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Hidden files and our own temporary files are never data.
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        let ft = entry.file_type().at_path(&path)?;
        if ft.is_dir() {
            walk(&path, out)?;
        } else if name.ends_with(".parquet") {
            out.push(path);
        }
    }
    Ok(())
}

/// Where a Parquet file's bytes come from: a memory map, or ranged reads
/// of an object.
#[derive(Clone)]
pub enum Source {
    Mapped(Bytes),
    Remote(RemoteFile),
}

/// The reader [`Source`] gives the page decoder.
pub enum SourceRead {
    Mapped(bytes::buf::Reader<Bytes>),
    Remote(RemoteRead),
}

impl std::io::Read for SourceRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            SourceRead::Mapped(r) => r.read(buf),
            SourceRead::Remote(r) => r.read(buf),
        }
    }
}

impl Length for Source {
    fn len(&self) -> u64 {
        match self {
            Source::Mapped(b) => b.len() as u64,
            Source::Remote(r) => r.len(),
        }
    }
}

impl ChunkReader for Source {
    type T = SourceRead;

    fn get_read(&self, start: u64) -> parquet::errors::Result<SourceRead> {
        Ok(match self {
            Source::Mapped(b) => SourceRead::Mapped(b.get_read(start)?),
            Source::Remote(r) => SourceRead::Remote(r.get_read(start)?),
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        match self {
            Source::Mapped(b) => b.get_bytes(start, length),
            Source::Remote(r) => r.get_bytes(start, length),
        }
    }
}

/// Memory-maps a Parquet file (or opens an object for ranged reads) and
/// opens a reader builder on it.
pub fn open_parquet(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<Source>> {
    let source = if remote::is_url(path) {
        Source::Remote(RemoteFile::open(path)?)
    } else {
        let file = File::open(path).at_path(path)?;
        // SAFETY: clipcov only reads the file; the mapping is valid as long as no
        // other process truncates or rewrites the file while clipcov runs, which
        // is the documented contract for input shards.
        let map = unsafe { Mmap::map(&file) }.at_path(path)?;
        Source::Mapped(Bytes::from_owner(map))
    };
    guard_decoder(path, || {
        ParquetRecordBatchReaderBuilder::try_new(source).map_err(|e| corrupt(path, e))
    })
}

thread_local! {
    /// Set while a decoder runs under [`guard_decoder`]: its panics are
    /// turned into errors, so the default hook must not print them.
    static QUIET_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}
static PANIC_HOOK: std::sync::Once = std::sync::Once::new();

/// Runs `f`, turning a panic inside a decoding library (a corrupt file can
/// trip an assertion deep in a reader) into a data error about `path`: a bad
/// file must give a one-line error, never a crash.
pub fn guard_decoder<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET_PANICS.with(|q| q.get()) {
                previous(info)
            }
        }));
    });
    let was = QUIET_PANICS.with(|q| q.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET_PANICS.with(|q| q.set(was));
    match result {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown failure".into());
            Err(corrupt(path, format!("the decoder failed: {msg}")))
        }
    }
}

/// A Parquet file's record batches, each decoded under [`guard_decoder`]:
/// the one way clipcov reads Parquet, so that a corrupt file anywhere (a
/// shard, prompts, targets, an eval set, metadata) is a data error naming
/// it. The first error ends the stream.
pub struct Batches {
    path: PathBuf,
    reader: ParquetRecordBatchReader,
    failed: bool,
}

/// Builds the reader of `builder` (projection and batch size already set)
/// under the guard.
pub fn batches(path: &Path, builder: ParquetRecordBatchReaderBuilder<Source>) -> Result<Batches> {
    let reader = guard_decoder(path, || builder.build().map_err(|e| corrupt(path, e)))?;
    Ok(Batches {
        path: path.to_path_buf(),
        reader,
        failed: false,
    })
}

impl Iterator for Batches {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let (path, reader) = (&self.path, &mut self.reader);
        let next = guard_decoder(path, || {
            reader.next().transpose().map_err(|e| corrupt(path, e))
        })
        .transpose();
        self.failed = matches!(next, Some(Err(_)));
        next
    }
}

/// The error for a file that Parquet cannot read (or, for an object, the
/// network failure that stopped the read).
pub fn corrupt(path: &Path, e: impl std::fmt::Display) -> Error {
    if let Some(io) = remote::read_failure(path) {
        return io;
    }
    let msg = e.to_string();
    let msg = msg
        .trim_start_matches("External: ")
        .trim_start_matches("Parquet error: ")
        .to_string();
    Error::file(path, format!("not a readable Parquet file ({msg})"))
        .with_hint("the file is corrupt or truncated: re-export it or remove it from the dataset")
}

/// What every shard must agree on.
#[derive(Clone, Debug)]
pub struct ShardSchema {
    pub id_kind: IdKind,
    pub image_kind: FloatKind,
    pub text_kind: FloatKind,
}

pub fn column_names(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The id kind of column `name` of `schema`.
///
/// # Errors
/// A data error when the column is missing or cannot be an id.
pub fn check_id(path: &Path, schema: &Schema, name: &str) -> Result<IdKind> {
    let id = schema
        .field_with_name(name)
        .map_err(|_| Error::column(path, name, "missing column"))?;
    Ok(match id.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => IdKind::Utf8,
        DataType::Int64 | DataType::Int32 => IdKind::Int64,
        DataType::UInt64 | DataType::UInt32 => IdKind::UInt64,
        other => {
            return Err(Error::column(
                path,
                name,
                format!("type {other} cannot be an id; expected utf8, int64 or uint64"),
            ))
        }
    })
}

/// Checks that `schema` has the three columns with usable types.
pub fn check_schema(path: &Path, schema: &Schema, cols: &Columns) -> Result<ShardSchema> {
    let field = |name: &str| {
        schema.field_with_name(name).map_err(|_| {
            Error::column(path, name, "missing column").with_hint(format!(
                "the file has columns: {}; name the right one with --{}-column",
                column_names(schema),
                if name == cols.id {
                    "id"
                } else if name == cols.image {
                    "image"
                } else {
                    "text"
                }
            ))
        })
    };
    field(&cols.id)?;
    let id_kind = check_id(path, schema, &cols.id)?;
    let emb = |name: &str| -> Result<FloatKind> {
        let f = field(name)?;
        embedding_kind(f.data_type()).ok_or_else(|| {
            Error::column(
                path,
                name,
                format!(
                    "type {} is not an embedding; expected FixedSizeList or List of float16, float32 or float64",
                    f.data_type()
                ),
            )
        })
    };
    Ok(ShardSchema {
        id_kind,
        image_kind: emb(&cols.image)?,
        text_kind: emb(&cols.text)?,
    })
}

/// One record batch of a shard, with where it came from.
pub struct ShardBatch {
    pub file_index: usize,
    /// Canonical row index of the batch's first row.
    pub first_row: u64,
    /// Row index of the first row inside its file.
    pub first_row_in_file: u64,
    pub id: ArrayRef,
    pub image: ArrayRef,
    pub text: ArrayRef,
}

impl ShardBatch {
    pub fn len(&self) -> usize {
        self.id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.id.is_empty()
    }
}

/// The shard being read.
enum Open {
    Parquet(Batches, [usize; 3]),
    Npy(Box<NpyShard>),
}

/// Streams the shards' id and embedding columns batch by batch.
///
/// No work happens before the first `next()`; the first error ends the
/// stream.
pub struct ShardReader<'a> {
    files: &'a [SourceFile],
    cols: Columns,
    batch_rows: usize,
    file_index: usize,
    reader: Option<Open>,
    next_row: u64,
    next_row_in_file: u64,
    pub schemas: Vec<ShardSchema>,
    failed: bool,
}

impl<'a> ShardReader<'a> {
    pub fn new(files: &'a [SourceFile], cols: Columns, batch_rows: usize) -> Self {
        ShardReader {
            files,
            cols,
            batch_rows: batch_rows.max(1),
            file_index: 0,
            reader: None,
            next_row: 0,
            next_row_in_file: 0,
            schemas: Vec::new(),
            failed: false,
        }
    }

    fn open_next(&mut self) -> Result<bool> {
        while self.reader.is_none() {
            let Some(file) = self.files.get(self.file_index) else {
                return Ok(false);
            };
            if file.kind != ShardKind::Parquet {
                let (npy, shard) = NpyShard::open(file, &self.cols, self.batch_rows)?;
                self.check_id_kind(file, &shard)?;
                self.schemas.push(shard);
                self.reader = Some(Open::Npy(Box::new(npy)));
                self.next_row_in_file = 0;
                continue;
            }
            let builder = open_parquet(&file.path)?;
            let schema = builder.schema().clone();
            let shard = check_schema(&file.path, &schema, &self.cols)?;
            self.check_id_kind(file, &shard)?;
            self.schemas.push(shard);
            let roots: Vec<usize> = [&self.cols.id, &self.cols.image, &self.cols.text]
                .iter()
                .map(|n| schema.index_of(n).expect("checked above"))
                .collect();
            let mask = ProjectionMask::roots(builder.parquet_schema(), roots.iter().copied());
            // The projected batch keeps the file's column order.
            let mut sorted = roots.clone();
            sorted.sort_unstable();
            let pos = |c: usize| sorted.iter().position(|&x| x == c).unwrap();
            let order = [pos(roots[0]), pos(roots[1]), pos(roots[2])];
            let reader = batches(
                &file.path,
                builder
                    .with_projection(mask)
                    .with_batch_size(self.batch_rows),
            )?;
            self.reader = Some(Open::Parquet(reader, order));
            self.next_row_in_file = 0;
        }
        Ok(true)
    }

    fn check_id_kind(&self, file: &SourceFile, shard: &ShardSchema) -> Result<()> {
        if let Some(first) = self.schemas.first() {
            if first.id_kind != shard.id_kind {
                return Err(Error::column(
                    &file.path,
                    &self.cols.id,
                    format!(
                        "id type {:?} differs from the first shard's {:?}",
                        shard.id_kind, first.id_kind
                    ),
                )
                .with_hint("give every shard the same id type"));
            }
        }
        Ok(())
    }

    fn next_inner(&mut self) -> Result<Option<ShardBatch>> {
        loop {
            if !self.open_next()? {
                return Ok(None);
            }
            let path = &self.files[self.file_index].path;
            let (reader, order) = match self.reader.as_mut().unwrap() {
                Open::Parquet(reader, order) => (reader, *order),
                Open::Npy(npy) => {
                    let first = self.next_row - self.next_row_in_file;
                    match npy.next_batch(path, first)? {
                        Some((id, image, text)) => {
                            let n = id.len() as u64;
                            let b = ShardBatch {
                                file_index: self.file_index,
                                first_row: self.next_row,
                                first_row_in_file: self.next_row_in_file,
                                id,
                                image,
                                text,
                            };
                            self.next_row += n;
                            self.next_row_in_file += n;
                            return Ok(Some(b));
                        }
                        None => {
                            self.reader = None;
                            self.file_index += 1;
                            continue;
                        }
                    }
                }
            };
            match reader.next() {
                Some(Ok(batch)) => {
                    let b = self.wrap(batch, order);
                    return Ok(Some(b));
                }
                Some(Err(e)) => return Err(e),
                None => {
                    self.reader = None;
                    self.file_index += 1;
                }
            }
        }
    }

    fn wrap(&mut self, batch: RecordBatch, order: [usize; 3]) -> ShardBatch {
        let n = batch.num_rows() as u64;
        let b = ShardBatch {
            file_index: self.file_index,
            first_row: self.next_row,
            first_row_in_file: self.next_row_in_file,
            id: batch.column(order[0]).clone(),
            image: batch.column(order[1]).clone(),
            text: batch.column(order[2]).clone(),
        };
        self.next_row += n;
        self.next_row_in_file += n;
        b
    }
}

impl Iterator for ShardReader<'_> {
    type Item = Result<ShardBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        // The current file, for an error when a decoder panics.
        let path = self
            .files
            .get(self.file_index)
            .map_or_else(PathBuf::new, |f| f.path.clone());
        match guard_decoder(&path, || self.next_inner()) {
            Ok(Some(b)) => Some(Ok(b)),
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_skips_empty_shards() {
        let s = ShardStarts::from_rows([3, 0, 2, 0]);
        let got: Vec<_> = (0..6).map(|r| s.locate(r)).collect();
        assert_eq!(
            got,
            [
                Some((0, 0)),
                Some((0, 1)),
                Some((0, 2)),
                Some((2, 0)),
                Some((2, 1)),
                None
            ]
        );
        assert_eq!(s.range(1), 3..3);
        assert_eq!(ShardStarts::from_rows([0, 0]).locate(0), None);
    }
}
