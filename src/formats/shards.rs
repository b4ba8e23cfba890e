//! Reading shards of every layout as one stream of [`ShardBatch`]es (ids,
//! image and text embeddings), after checking each shard's schema, so the
//! ingest stage does not know which layout it reads.

use std::path::{Path, PathBuf};

use arrow_array::{Array, ArrayRef, RecordBatch, UInt64Array};
use arrow_schema::{DataType, Schema};
use parquet::arrow::ProjectionMask;

use super::dataset::{Columns, ShardKind, SourceFile, ROW_INDEX_ID};
use super::embedding::{embedding_kind, EmbeddingView, FloatKind};
use super::npy::NpyMatrix;
use super::npz::Npz;
use super::parquet_read::{batches, column_names, guard_decoder, open_parquet, Batches};
use crate::error::{Error, Result};
use crate::ids::IdKind;

/// What every shard must agree on.
#[derive(Clone, Debug)]
pub struct ShardSchema {
    pub id_kind: IdKind,
    pub image_kind: FloatKind,
    pub text_kind: FloatKind,
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

/// The rows of one shard, checking that its files agree.
///
/// # Errors
/// A data error naming both files and both counts when they differ.
pub fn shard_rows(f: &SourceFile, cols: &Columns) -> Result<u64> {
    match &f.kind {
        ShardKind::Parquet => {
            Ok(open_parquet(&f.path)?.metadata().file_metadata().num_rows() as u64)
        }
        _ => Ok(NpyShard::open(f, cols, 1)?.0.rows as u64),
    }
}

/// The embedding length `d` of the data: the length of the first usable
/// image embedding in the first batch of the first shard with rows, so the
/// memory plan can size its buffers before ingest. `None` when that batch
/// has no usable row or cannot be read (ingest then reports why).
pub fn probe_d(files: &[SourceFile], cols: &Columns) -> Option<usize> {
    let batch = ShardReader::new(files, cols.clone(), 64).next()?.ok()?;
    let view = EmbeddingView::try_new(&batch.image)?;
    (0..view.len())
        .map(|i| view.row_len(i))
        .enumerate()
        .find(|&(i, n)| n > 0 && view.row(i, n).is_ok())
        .map(|(_, n)| n)
}

/// An opened npy-layout shard: the id source and the two matrices.
pub struct NpyShard {
    ids: Option<Batches>,
    image: NpyMatrix,
    text: NpyMatrix,
    pub rows: usize,
    next: usize,
    batch_rows: usize,
}

fn count_mismatch(a: &Path, an: usize, b: &Path, bn: usize, what: &str) -> Error {
    Error::file(
        a,
        format!(
            "{an} rows, but {} has {bn} rows{what}; the files of a shard must be row-aligned",
            b.display()
        ),
    )
    .with_hint("re-export the shard so both files hold the same pairs")
}

impl NpyShard {
    /// Opens the shard's files and checks their row counts and widths.
    pub fn open(f: &SourceFile, cols: &Columns, batch_rows: usize) -> Result<(Self, ShardSchema)> {
        let (meta, image, text, text_path) = match &f.kind {
            ShardKind::Datacomp { npz } => {
                let mut z = Npz::open(npz)?;
                let image = z.matrix(npz, &cols.image)?;
                let text = z.matrix(npz, &cols.text)?;
                (Some(f.path.clone()), image, text, npz.clone())
            }
            ShardKind::ClipRetrieval { text, metadata } => (
                metadata.clone(),
                NpyMatrix::open(&f.path)?,
                NpyMatrix::open(text)?,
                text.clone(),
            ),
            ShardKind::Parquet => unreachable!("Parquet shards are read by ShardReader"),
        };
        if image.rows() != text.rows() {
            let what = format!(" ('{}' vs '{}')", cols.image, cols.text);
            return Err(count_mismatch(
                &image.path,
                image.rows(),
                &text_path,
                text.rows(),
                &what,
            ));
        }
        if image.cols() != text.cols() {
            return Err(Error::file(
                &text_path,
                format!(
                    "'{}' has d = {}, '{}' has d = {}; both towers must match",
                    cols.image,
                    image.cols(),
                    cols.text,
                    text.cols()
                ),
            ));
        }
        let rows = image.rows();
        let (ids, id_kind) = match meta {
            Some(mp) if cols.id != ROW_INDEX_ID => {
                let builder = open_parquet(&mp)?;
                let n = builder.metadata().file_metadata().num_rows() as usize;
                if n != rows {
                    let emb = match &f.kind {
                        ShardKind::Datacomp { npz } => npz.clone(),
                        _ => f.path.clone(),
                    };
                    return Err(count_mismatch(&mp, n, &emb, rows, ""));
                }
                let schema = builder.schema().clone();
                let id_kind = check_id(&mp, &schema, &cols.id).map_err(|e| {
                    if schema.field_with_name(&cols.id).is_err() {
                        Error::column(&mp, &cols.id, "missing column").with_hint(format!(
                            "the file has columns: {}; name the id with --id-column (or --id-column :row for row indices)",
                            column_names(&schema)
                        ))
                    } else {
                        e
                    }
                })?;
                let idx = schema.index_of(&cols.id).expect("checked");
                let mask = ProjectionMask::roots(builder.parquet_schema(), [idx]);
                let reader = batches(
                    &mp,
                    builder
                        .with_projection(mask)
                        .with_batch_size(batch_rows.max(1)),
                )?;
                (Some(reader), id_kind)
            }
            _ => (None, IdKind::UInt64),
        };
        let schema = ShardSchema {
            id_kind,
            image_kind: image.header.dtype.kind(),
            text_kind: text.header.dtype.kind(),
        };
        Ok((
            NpyShard {
                ids,
                image,
                text,
                rows,
                next: 0,
                batch_rows: batch_rows.max(1),
            },
            schema,
        ))
    }

    /// The next `(id, image, text)` batch; `first_row` is the canonical
    /// row index of the shard's first row (the id of row-index shards).
    pub fn next_batch(
        &mut self,
        path: &Path,
        first_row: u64,
    ) -> Result<Option<(ArrayRef, ArrayRef, ArrayRef)>> {
        let id: ArrayRef = match &mut self.ids {
            Some(reader) => match reader.next() {
                None => return Ok(None),
                Some(Err(e)) => return Err(e),
                Some(Ok(b)) => b.column(0).clone(),
            },
            None => {
                if self.next >= self.rows {
                    return Ok(None);
                }
                let n = self.batch_rows.min(self.rows - self.next);
                let s = first_row + self.next as u64;
                std::sync::Arc::new(UInt64Array::from_iter_values(s..s + n as u64))
            }
        };
        let n = id.len();
        if self.next + n > self.rows {
            return Err(Error::Internal(format!(
                "{}: id batch past the end of the embeddings",
                path.display()
            )));
        }
        let img = self.image.rows_array(self.next, n);
        let txt = self.text.rows_array(self.next, n);
        self.next += n;
        Ok(Some((id, img, txt)))
    }
}
