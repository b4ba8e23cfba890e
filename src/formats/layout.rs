//! Input layouts (docs/formats.md): canonical Parquet shards, the DataComp pool
//! (`X.parquet` + sibling `X.npz`) and clip-retrieval output
//! (`img_emb/`, `text_emb/`, `metadata/`). Each becomes a list of
//! [`SourceFile`]s in canonical row order whose [`ShardKind`] tells the
//! shard reader where the ids and embeddings are, so every layout yields
//! the same `ShardBatch` stream and ingest does not know the difference.

use std::path::{Path, PathBuf};

use arrow_array::{ArrayRef, UInt64Array};
use parquet::arrow::ProjectionMask;
use serde::{Deserialize, Serialize};

use super::canonical::{
    batches, check_id, column_names, discover, open_parquet, Batches, Columns, ShardReader,
    ShardSchema, SourceFile,
};
use super::embedding::EmbeddingView;
use super::npy::NpyMatrix;
use super::npz::Npz;
use crate::error::{Error, IoContext, Result};
use crate::ids::IdKind;
use crate::io::remote;

/// `--id-column` value that makes the canonical row index the id.
pub const ROW_INDEX_ID: &str = ":row";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    Canonical,
    Datacomp,
    ClipRetrieval,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Canonical => "canonical",
            Layout::Datacomp => "datacomp",
            Layout::ClipRetrieval => "clip-retrieval",
        }
    }
}

/// Which DataComp embeddings to read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Model {
    #[default]
    L14,
    B32,
}

impl Model {
    pub fn name(self) -> &'static str {
        match self {
            Model::L14 => "l14",
            Model::B32 => "b32",
        }
    }
}

/// Where one shard's ids and embeddings are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardKind {
    /// Everything in the Parquet file itself.
    #[default]
    Parquet,
    /// Ids (and metadata) in the Parquet file, embeddings in `npz`.
    Datacomp { npz: PathBuf },
    /// Embeddings in two `.npy` files (the `SourceFile` is `image`), ids
    /// and metadata in `metadata` when there is one.
    ClipRetrieval {
        text: PathBuf,
        metadata: Option<PathBuf>,
    },
}

impl ShardKind {
    pub fn layout(&self) -> Layout {
        match self {
            ShardKind::Parquet => Layout::Canonical,
            ShardKind::Datacomp { .. } => Layout::Datacomp,
            ShardKind::ClipRetrieval { .. } => Layout::ClipRetrieval,
        }
    }
}

/// The Parquet file holding a shard's metadata columns, if any.
pub fn metadata_path(f: &SourceFile) -> Option<&Path> {
    match &f.kind {
        ShardKind::Parquet | ShardKind::Datacomp { .. } => Some(&f.path),
        ShardKind::ClipRetrieval { metadata, .. } => metadata.as_deref(),
    }
}

/// Guesses the layout of `root`: clip-retrieval when it holds an `img_emb`
/// folder, DataComp when every Parquet file has a sibling `.npz`,
/// canonical when none has.
///
/// # Errors
/// A usage error when the folder mixes shards with and without `.npz`.
pub fn detect(root: &Path) -> Result<Layout> {
    let clip_retrieval = if remote::is_url(root) {
        remote::list(root)?
            .iter()
            .any(|o| o.relative.starts_with("img_emb/"))
    } else {
        root.join("img_emb").is_dir()
    };
    if clip_retrieval {
        return Ok(Layout::ClipRetrieval);
    }
    let files = discover(root)?;
    let mut with_npz = 0;
    for f in &files {
        with_npz += remote::exists(&f.path.with_extension("npz"))? as usize;
    }
    match with_npz {
        0 => Ok(Layout::Canonical),
        n if n == files.len() => Ok(Layout::Datacomp),
        n => Err(Error::Usage(format!(
            "{}: {n} of {} Parquet files have a sibling .npz, the others not; give --layout canonical or --layout datacomp",
            root.display(),
            files.len()
        ))),
    }
}

/// The shards of `root` in `layout`, in canonical order, and the column
/// names to read (`cols.id` empty means the layout's default id).
///
/// # Errors
/// A data error naming the missing sibling file or folder.
pub fn discover_layout(
    root: &Path,
    layout: Layout,
    cols: &Columns,
    model: Model,
) -> Result<(Vec<SourceFile>, Columns)> {
    match layout {
        Layout::Canonical => {
            let mut c = cols.clone();
            if c.id.is_empty() {
                c.id = "id".into();
            }
            Ok((discover(root)?, c))
        }
        Layout::Datacomp => {
            let mut files = discover(root)?;
            for f in &mut files {
                let npz = f.path.with_extension("npz");
                let m = remote::stat(&npz).map_err(|_| {
                    Error::file(&f.path, format!("no sibling {}", npz.display())).with_hint(
                        "a DataComp pool shard is X.parquet with its embeddings in X.npz",
                    )
                })?;
                f.bytes += m.bytes;
                f.kind = ShardKind::Datacomp { npz };
            }
            let c = Columns {
                id: if cols.id.is_empty() {
                    "uid".into()
                } else {
                    cols.id.clone()
                },
                image: format!("{}_img", model.name()),
                text: format!("{}_txt", model.name()),
            };
            Ok((files, c))
        }
        Layout::ClipRetrieval => discover_clip_retrieval(root, cols),
    }
}

fn discover_clip_retrieval(root: &Path, cols: &Columns) -> Result<(Vec<SourceFile>, Columns)> {
    let img_dir = root.join("img_emb");
    let mut parts: Vec<String> = Vec::new();
    let names: Vec<String> = if remote::is_url(&img_dir) {
        remote::list(&img_dir)?
            .into_iter()
            .map(|o| o.relative)
            .collect()
    } else {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&img_dir).at_path(&img_dir)? {
            let name = entry.at_path(&img_dir)?.file_name();
            names.push(name.to_string_lossy().into_owned());
        }
        names
    };
    for name in &names {
        if let Some(p) = name
            .strip_prefix("img_emb_")
            .and_then(|r| r.strip_suffix(".npy"))
        {
            parts.push(p.to_string());
        }
    }
    // Partition numbers are zero-padded, so byte order is partition order.
    parts.sort();
    if parts.is_empty() {
        return Err(Error::file(&img_dir, "no img_emb_{p}.npy files found")
            .with_hint("point --data at the folder clip-retrieval wrote (it holds img_emb/, text_emb/, metadata/)"));
    }
    let has_meta = remote::is_prefix(&root.join("metadata"))?;
    let id = if !cols.id.is_empty() {
        cols.id.clone()
    } else if has_meta {
        "image_path".into()
    } else {
        ROW_INDEX_ID.into()
    };
    let mut files = Vec::with_capacity(parts.len());
    for p in &parts {
        let image = img_dir.join(format!("img_emb_{p}.npy"));
        let text = root.join("text_emb").join(format!("text_emb_{p}.npy"));
        let meta = root.join("metadata").join(format!("metadata_{p}.parquet"));
        let im = remote::stat(&image)?;
        let tm = remote::stat(&text).map_err(|_| {
            Error::file(&image, format!("no matching {}", text.display()))
                .with_hint("every partition needs img_emb_{p}.npy and text_emb_{p}.npy")
        })?;
        let mm = remote::stat(&meta).ok();
        if mm.is_none() && id != ROW_INDEX_ID {
            return Err(
                Error::file(&image, format!("no matching {}", meta.display())).with_hint(
                    "the id comes from the metadata; use --id-column :row for row-index ids",
                ),
            );
        }
        files.push(SourceFile {
            relative: format!("img_emb/img_emb_{p}.npy"),
            bytes: im.bytes + tm.bytes + mm.as_ref().map_or(0, |m| m.bytes),
            modified_unix: im.modified_unix,
            path: image,
            kind: ShardKind::ClipRetrieval {
                text,
                metadata: mm.map(|_| meta),
            },
        });
    }
    let c = Columns {
        id,
        image: "img_emb".into(),
        text: "text_emb".into(),
    };
    Ok((files, c))
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
