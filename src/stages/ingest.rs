//! Stage 1, ingest: decode the input shards once, validate every row, and
//! write the embedding files of the staged store.
//!
//! Each row is checked (lengths, nulls, finite values, non-zero norm), its
//! normalising factors computed in `f64`, and, when class embeddings are
//! given, its latent class assigned on the spot (one GEMM per batch). Rows
//! are then appended to per-class buckets that are written out in chunks,
//! so every class ends up in long contiguous runs of the store files
//! without a second copy of the data. Bad rows stop the run or, with
//! `--on-bad-row skip`, are recorded as rejects; duplicate ids likewise.
//!
//! Decoding runs on its own thread, one batch ahead of the validation and
//! classification, which run on the rayon pool.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;
use half::f16;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::formats::dataset::{Columns, ShardStarts, SourceFile};
use crate::formats::embedding::{EmbeddingView, FloatKind, Floats, RowProblem};
use crate::formats::shards::{ShardBatch, ShardReader, ShardSchema};
use crate::ids::IdKind;
use crate::kernels::kmeans;
use crate::stages::prefilter::{PrefilterReport, RowFilter};
use crate::store::{files, Dtype, IdStore, Mapped, SeqWriter};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BadRowPolicy {
    Error,
    Skip,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DuplicatePolicy {
    Error,
    KeepFirst,
}

/// Assign latent classes during ingest.
#[derive(Clone, Debug)]
pub struct Classify {
    /// `[K, d]` unit class embeddings `c_k`.
    pub embeddings: Vec<f32>,
    pub classes: usize,
    /// Use the caption `v_i` instead of the image `u_i` (`--assign text`).
    pub use_text: bool,
}

#[derive(Clone, Debug)]
pub struct IngestOptions {
    pub columns: Columns,
    pub on_bad_row: BadRowPolicy,
    pub on_duplicate: DuplicatePolicy,
    pub batch_rows: usize,
    /// The embedding dimension the prompts require, and the prompts file.
    pub expected_d: Option<(usize, PathBuf)>,
    pub classify: Option<Classify>,
    /// Rows per chunk written from a class bucket.
    pub chunk_rows: usize,
    /// `--where`: only the rows it holds are staged; the others are read
    /// past without a check, as if they were not in the input.
    pub filter: Option<std::sync::Arc<RowFilter>>,
}

/// A row left out of the selection, and why.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reject {
    pub row: u64,
    pub file: String,
    pub id: String,
    pub reason: String,
}

/// Rows per shard, for the manifest and the row map.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardRows {
    pub file: String,
    pub first_row: u64,
    pub rows: u64,
}

/// What ingest produced.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ingested {
    pub d: usize,
    pub dtype: Dtype,
    pub id_kind: IdKind,
    pub rows_read: u64,
    /// Rows written to the store files ("file rows").
    pub file_rows: u64,
    /// File rows dropped as duplicates (keep-first).
    pub duplicate_file_rows: Vec<u64>,
    /// The written chunks in file order: (class, rows). One class (0) when
    /// ingest did not classify.
    pub chunks: Vec<(u32, u32)>,
    pub rejects: Vec<Reject>,
    pub skipped: BTreeMap<String, u64>,
    pub shards: Vec<ShardRows>,
    /// What `--where` kept, when it was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefilter: Option<PrefilterReport>,
}

impl Ingested {
    /// Where each shard's rows are in the canonical row order (from the
    /// row counts, so an empty shard never shadows the next one).
    pub fn starts(&self) -> ShardStarts {
        ShardStarts::from_rows(self.shards.iter().map(|s| s.rows))
    }
}

/// Ids of one batch, typed.
enum IdColumn<'a> {
    Str(Box<dyn Fn(usize) -> &'a str + Send + Sync + 'a>),
    Int(Vec<Option<i64>>),
    UInt(Vec<Option<u64>>),
}

fn id_column(a: &ArrayRef) -> IdColumn<'_> {
    match a.data_type() {
        DataType::Utf8 => {
            let s = a.as_string::<i32>();
            IdColumn::Str(Box::new(move |i| s.value(i)))
        }
        DataType::LargeUtf8 => {
            let s = a.as_string::<i64>();
            IdColumn::Str(Box::new(move |i| s.value(i)))
        }
        DataType::Utf8View => {
            let s = a.as_string_view();
            IdColumn::Str(Box::new(move |i| s.value(i)))
        }
        DataType::Int64 => IdColumn::Int(a.as_primitive::<Int64Type>().iter().collect()),
        DataType::Int32 => IdColumn::Int(
            a.as_primitive::<Int32Type>()
                .iter()
                .map(|v| v.map(i64::from))
                .collect(),
        ),
        DataType::UInt64 => IdColumn::UInt(a.as_primitive::<UInt64Type>().iter().collect()),
        DataType::UInt32 => IdColumn::UInt(
            a.as_primitive::<UInt32Type>()
                .iter()
                .map(|v| v.map(u64::from))
                .collect(),
        ),
        _ => unreachable!("id type checked by check_schema"),
    }
}

impl IdColumn<'_> {
    fn text(&self, i: usize) -> String {
        match self {
            IdColumn::Str(f) => f(i).to_string(),
            IdColumn::Int(v) => v[i].unwrap_or_default().to_string(),
            IdColumn::UInt(v) => v[i].unwrap_or_default().to_string(),
        }
    }

    fn hash(&self, i: usize) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        match self {
            IdColumn::Str(f) => f(i).hash(&mut h),
            IdColumn::Int(v) => v[i].hash(&mut h),
            IdColumn::UInt(v) => v[i].hash(&mut h),
        }
        h.finish()
    }
}

fn problem_text(p: &RowProblem) -> &'static str {
    match p {
        RowProblem::Null => "null embedding",
        RowProblem::NullComponent => "null component",
        RowProblem::Length(_) => "wrong length",
    }
}

/// The store precision set by the first shard: f16 only when both columns
/// are f16 (a later f32 shard would be rounded, so it is an error).
fn store_dtype(s: &ShardSchema) -> Dtype {
    if s.image_kind == FloatKind::F16 && s.text_kind == FloatKind::F16 {
        Dtype::F16
    } else {
        Dtype::F32
    }
}

/// The validated rows of one batch, in order.
#[derive(Default)]
struct Prepared {
    /// Index in the batch of each kept row.
    keep: Vec<usize>,
    /// Row-major embeddings of the kept rows at store precision: the f32
    /// pair for f32 stores (already normalised), the f16 pair for f16 ones.
    image32: Vec<f32>,
    text32: Vec<f32>,
    image16: Vec<f16>,
    text16: Vec<f16>,
    /// Two normalising factors a kept row.
    scale: Vec<f32>,
    /// Latent class of each kept row (0 without classification).
    labels: Vec<u32>,
    /// Skipped rows: (index in batch, "column: problem").
    bad: Vec<(usize, String)>,
}

impl Prepared {
    /// The stored bytes of kept row `r`: (image, text).
    fn row_bytes(&self, r: usize, d: usize) -> (&[u8], &[u8]) {
        use crate::store::as_bytes;
        if self.image16.is_empty() {
            (
                as_bytes(&self.image32[r * d..(r + 1) * d]),
                as_bytes(&self.text32[r * d..(r + 1) * d]),
            )
        } else {
            (
                as_bytes(&self.image16[r * d..(r + 1) * d]),
                as_bytes(&self.text16[r * d..(r + 1) * d]),
            )
        }
    }

    /// Assigns each kept row its class: one GEMM against `c`.
    fn classify(&mut self, c: &Classify, d: usize) {
        let rows: std::borrow::Cow<[f32]> = match (self.image16.is_empty(), c.use_text) {
            (true, false) => (&self.image32[..]).into(),
            (true, true) => (&self.text32[..]).into(),
            (false, text) => {
                let (v, slot) = if text {
                    (&self.text16, 1)
                } else {
                    (&self.image16, 0)
                };
                v.chunks_exact(d)
                    .enumerate()
                    .flat_map(|(r, row)| {
                        let s = self.scale[2 * r + slot];
                        row.iter().map(move |x| x.to_f32() * s)
                    })
                    .collect::<Vec<f32>>()
                    .into()
            }
        };
        self.labels = kmeans::assign_serial(&rows, d, &c.embeddings);
    }
}

/// Everything about the batch a worker needs.
struct BatchCtx<'a> {
    path: &'a Path,
    /// Canonical row index of the batch's first row.
    first_row: u64,
    first_row_in_file: u64,
    d: usize,
    dtype: Dtype,
    img: EmbeddingView<'a>,
    txt: EmbeddingView<'a>,
    id_nulls: Option<&'a arrow_buffer::NullBuffer>,
    opts: &'a IngestOptions,
}

impl BatchCtx<'_> {
    /// Validates and converts rows `range` of the batch.
    fn prepare(&self, range: std::ops::Range<usize>) -> Result<Prepared> {
        let (d, opts) = (self.d, self.opts);
        let (img_col, txt_col) = (opts.columns.image.as_str(), opts.columns.text.as_str());
        let mut p = Prepared::default();
        for i in range {
            if let Some(f) = &opts.filter {
                if !f.contains(self.first_row + i as u64) {
                    continue;
                }
            }
            let row_in_file = self.first_row_in_file + i as u64;
            if self.id_nulls.is_some_and(|n| n.is_null(i)) {
                return Err(
                    Error::at(self.path, row_in_file, &opts.columns.id, "null id")
                        .with_hint("every pair needs an id"),
                );
            }
            let mut bad: Option<String> = None;
            let mut views: [Option<Floats>; 2] = [None, None];
            for (slot, (view, col)) in [(&self.img, img_col), (&self.txt, txt_col)]
                .into_iter()
                .enumerate()
            {
                match view.row(i, d) {
                    Ok(v) => views[slot] = Some(v),
                    Err(RowProblem::Length(len)) => {
                        let hint = match &opts.expected_d {
                            Some((pd, p)) => {
                                format!("the prompts file {} has d = {pd}", p.display())
                            }
                            None if slot == 1 => {
                                format!("image embeddings have d = {d}; both towers must match")
                            }
                            None => "every row needs the same embedding length".to_string(),
                        };
                        return Err(Error::at(
                            self.path,
                            row_in_file,
                            col,
                            format!("embedding length {len}, expected {d}"),
                        )
                        .with_hint(hint));
                    }
                    Err(e) => {
                        bad.get_or_insert(format!("{col}: {}", problem_text(&e)));
                    }
                }
            }
            let mut norms = [0.0f64; 2];
            if bad.is_none() {
                for (slot, col) in [img_col, txt_col].into_iter().enumerate() {
                    match views[slot].unwrap().norm2() {
                        None => {
                            bad.get_or_insert(format!("{col}: non-finite component"));
                        }
                        Some(0.0) => {
                            bad.get_or_insert(format!("{col}: zero vector"));
                        }
                        Some(n2) => norms[slot] = n2.sqrt(),
                    }
                }
            }
            if let Some(reason) = bad {
                if opts.on_bad_row == BadRowPolicy::Error {
                    let (col, what) = reason.split_once(": ").unwrap();
                    return Err(Error::at(self.path, row_in_file, col, what.to_string()).with_hint(
                        "fix the row, or pass --on-bad-row skip to skip such rows (they are listed in rejects.parquet)",
                    ));
                }
                p.bad.push((i, reason));
                continue;
            }
            let (u, v) = (views[0].unwrap(), views[1].unwrap());
            match self.dtype {
                Dtype::F16 => {
                    let (Floats::F16(a), Floats::F16(b)) = (u, v) else {
                        unreachable!("f16 store only from f16 shards")
                    };
                    p.image16.extend_from_slice(a);
                    p.text16.extend_from_slice(b);
                    p.scale.push((1.0 / norms[0]) as f32);
                    p.scale.push((1.0 / norms[1]) as f32);
                }
                Dtype::F32 => {
                    u.extend_scaled_f32(1.0 / norms[0], &mut p.image32);
                    v.extend_scaled_f32(1.0 / norms[1], &mut p.text32);
                    // Stored normalised; the factors recover the input.
                    p.scale.push((1.0 / norms[0]) as f32);
                    p.scale.push((1.0 / norms[1]) as f32);
                }
            }
            p.keep.push(i);
        }
        Ok(p)
    }
}

/// One batch's rows validated, normalised and classed by ingest's own
/// code, without a store: what the Python bindings and the Ray recipe use.
#[derive(Debug, Default)]
pub struct PreparedRows {
    /// Index in the batch of each kept row.
    pub keep: Vec<usize>,
    /// `[kept, d]` unit rows in `f32`, exactly as the staged store gives
    /// them back (float16 input: the f16 value times its factor).
    pub image: Vec<f32>,
    pub text: Vec<f32>,
    /// Latent class of each kept row (0 without `opts.classify`).
    pub labels: Vec<u32>,
    /// Rows left out (`--on-bad-row skip`): index in the batch, reason.
    pub bad: Vec<(usize, String)>,
    pub d: usize,
}

/// Validates, normalises and classes the rows of `batch` as ingest does
/// (same checks, same messages, same arithmetic). `path` and
/// `first_row_in_file` name the rows in errors, as for a shard.
pub fn prepare_batch(
    path: &Path,
    batch: &arrow_array::RecordBatch,
    first_row_in_file: u64,
    opts: &IngestOptions,
) -> Result<PreparedRows> {
    let shard = crate::formats::shards::check_schema(path, &batch.schema(), &opts.columns)?;
    let dtype = store_dtype(&shard);
    let column = |name: &str| batch.column(batch.schema().index_of(name).expect("checked"));
    let (image, text, id) = (
        column(&opts.columns.image),
        column(&opts.columns.text),
        column(&opts.columns.id),
    );
    let img = EmbeddingView::try_new(image).expect("type checked");
    let txt = EmbeddingView::try_new(text).expect("type checked");
    let n = batch.num_rows();
    let d = match &opts.expected_d {
        Some((d, _)) => *d,
        None if n == 0 => 0,
        None => img.row_len(0),
    };
    let ctx = BatchCtx {
        path,
        first_row: 0,
        first_row_in_file,
        d,
        dtype,
        img,
        txt,
        id_nulls: id.nulls(),
        opts,
    };
    let parts: Vec<Result<Prepared>> = (0..n.div_ceil(PREPARE_ROWS))
        .into_par_iter()
        .map(|c| {
            let mut p = ctx.prepare(c * PREPARE_ROWS..((c + 1) * PREPARE_ROWS).min(n))?;
            match &opts.classify {
                Some(cl) => p.classify(cl, d),
                None => p.labels = vec![0; p.keep.len()],
            }
            Ok(p)
        })
        .collect();
    let mut out = PreparedRows {
        d,
        ..Default::default()
    };
    for part in parts {
        let part = part?; // the first error in row order
        out.keep.extend_from_slice(&part.keep);
        out.labels.extend_from_slice(&part.labels);
        out.bad.extend(part.bad);
        if dtype == Dtype::F16 {
            // As `Embeddings::gather_f32` reads an f16 store back.
            use half::slice::HalfFloatSliceExt;
            for (src, slot, dst) in [
                (&part.image16, 0, &mut out.image),
                (&part.text16, 1, &mut out.text),
            ] {
                let start = dst.len();
                dst.resize(start + src.len(), 0.0);
                src.convert_to_f32_slice(&mut dst[start..]);
                for (r, row) in dst[start..].chunks_exact_mut(d.max(1)).enumerate() {
                    let s = part.scale[2 * r + slot];
                    for x in row {
                        *x *= s;
                    }
                }
            }
        } else {
            out.image.extend_from_slice(&part.image32);
            out.text.extend_from_slice(&part.text32);
        }
    }
    Ok(out)
}

/// A class's rows waiting to be written as a chunk.
#[derive(Default)]
struct Bucket {
    image: Vec<u8>,
    text: Vec<u8>,
    scale: Vec<f32>,
    rows: Vec<u64>,
    hashes: Vec<u64>,
    id_bytes: Vec<u8>,
    id_ends: Vec<u32>,
    id_ints: Vec<u64>,
}

impl Bucket {
    fn len(&self) -> usize {
        self.rows.len()
    }
}

/// The store files being written.
struct Writers {
    image: SeqWriter,
    text: SeqWriter,
    scale: SeqWriter,
    row: SeqWriter,
    id_main: SeqWriter,
    id_dat: Option<SeqWriter>,
    id_total: u64,
    file_rows: u64,
    chunks: Vec<(u32, u32)>,
    hashes: Vec<(u64, u64)>,
}

impl Writers {
    fn create(dir: &Path, id_kind: IdKind) -> Result<Self> {
        let w = |n: &str| SeqWriter::create(&dir.join(n));
        let utf8 = id_kind == IdKind::Utf8;
        let mut me = Writers {
            image: w(files::IMAGE)?,
            text: w(files::TEXT)?,
            scale: w(files::SCALE)?,
            row: w(files::ROW)?,
            id_main: w(if utf8 { files::IDS_OFF } else { files::IDS_INT })?,
            id_dat: if utf8 { Some(w(files::IDS_DAT)?) } else { None },
            id_total: 0,
            file_rows: 0,
            chunks: Vec::new(),
            hashes: Vec::new(),
        };
        if utf8 {
            me.id_main.write(&[0u64])?;
        }
        Ok(me)
    }

    fn flush(&mut self, class: u32, b: &mut Bucket) -> Result<()> {
        let n = b.len();
        if n == 0 {
            return Ok(());
        }
        self.image.write(&b.image)?;
        self.text.write(&b.text)?;
        self.scale.write(&b.scale)?;
        self.row.write(&b.rows)?;
        if let Some(dat) = self.id_dat.as_mut() {
            dat.write(&b.id_bytes)?;
            let base = self.id_total;
            let offs: Vec<u64> = b.id_ends.iter().map(|&e| base + e as u64).collect();
            self.id_main.write(&offs)?;
            self.id_total += b.id_bytes.len() as u64;
        } else {
            self.id_main.write(&b.id_ints)?;
        }
        for (i, &h) in b.hashes.iter().enumerate() {
            self.hashes.push((h, self.file_rows + i as u64));
        }
        self.chunks.push((class, n as u32));
        self.file_rows += n as u64;
        *b = Bucket::default();
        Ok(())
    }

    fn finish(self) -> Result<()> {
        for s in [self.image, self.text, self.scale, self.row, self.id_main]
            .into_iter()
            .chain(self.id_dat)
        {
            s.finish()?;
        }
        Ok(())
    }
}

/// Buckets in flight to the writer thread: enough to keep it busy while the
/// next batch is validated, few enough to stay a small part of the memory plan.
const WRITE_QUEUE: usize = 16;

/// The store writers on their own thread, so that copying chunks into the
/// page cache (and waiting for the disk when dirty pages pile up) overlaps
/// with decoding, validation and the class GEMM.
struct WriterThread<'scope> {
    tx: std::sync::mpsc::SyncSender<(u32, Bucket)>,
    handle: std::thread::ScopedJoinHandle<'scope, Result<Writers>>,
}

impl<'scope> WriterThread<'scope> {
    fn spawn<'env>(scope: &'scope std::thread::Scope<'scope, 'env>, mut w: Writers) -> Self {
        let (tx, rx) = sync_channel::<(u32, Bucket)>(WRITE_QUEUE);
        let handle = scope.spawn(move || {
            for (class, mut bucket) in rx {
                w.flush(class, &mut bucket)?;
            }
            Ok(w)
        });
        WriterThread { tx, handle }
    }

    /// Queues a full bucket; fails with the writer's error if it stopped.
    fn send(self, class: u32, bucket: Bucket) -> std::result::Result<Self, Error> {
        match self.tx.send((class, bucket)) {
            Ok(()) => Ok(self),
            Err(_) => Err(self.finish().err().unwrap_or_else(|| {
                Error::Internal("the store writer stopped without an error".into())
            })),
        }
    }

    fn finish(self) -> Result<Writers> {
        drop(self.tx);
        self.handle
            .join()
            .unwrap_or_else(|_| Err(Error::Internal("the store writer panicked".into())))
    }
}

/// Rows per unit of parallel validation work.
const PREPARE_ROWS: usize = 512;

/// Reads `files` into the store files in `dir`.
pub fn ingest(files: &[SourceFile], dir: &Path, opts: &IngestOptions) -> Result<Ingested> {
    let mut shards: Vec<ShardRows> = files
        .iter()
        .map(|f| ShardRows {
            file: f.relative.clone(),
            first_row: 0,
            rows: 0,
        })
        .collect();
    let classes = opts.classify.as_ref().map_or(1, |c| c.classes);
    let chunk_rows = opts.chunk_rows.max(1);
    let mut buckets: Vec<Bucket> = (0..classes.max(1)).map(|_| Bucket::default()).collect();
    let mut d: Option<usize> = opts.expected_d.as_ref().map(|(d, _)| *d);
    let mut dtype: Option<Dtype> = None;
    let mut id_kind = IdKind::Utf8;
    let mut rows_read = 0u64;
    let mut rejects = Vec::new();
    let mut skipped: BTreeMap<String, u64> = BTreeMap::new();

    // The decoder runs one batch ahead on its own thread.
    let (tx, rx) = sync_channel::<Result<(ShardBatch, ShardSchema)>>(1);
    let writers = std::thread::scope(|scope| -> Result<Option<Writers>> {
        let mut writer: Option<WriterThread> = None;
        // `tx` moves into the decoder so the channel closes when it is done.
        scope.spawn(move || {
            let mut reader = ShardReader::new(files, opts.columns.clone(), opts.batch_rows);
            while let Some(b) = reader.next() {
                let item = b.map(|b| {
                    let schema = reader.schemas[b.file_index].clone();
                    (b, schema)
                });
                let stop = item.is_err();
                if tx.send(item).is_err() || stop {
                    break;
                }
            }
        });
        for item in rx {
            let (batch, shard) = item?;
            crate::progress::advance(batch.len() as u64);
            let file = &files[batch.file_index];
            let path = &file.path;
            shards[batch.file_index].rows += batch.len() as u64;
            let dt = *dtype.get_or_insert(store_dtype(&shard));
            if dt == Dtype::F16 && store_dtype(&shard) != Dtype::F16 {
                let col = if shard.image_kind != FloatKind::F16 {
                    &opts.columns.image
                } else {
                    &opts.columns.text
                };
                return Err(Error::column(
                    path,
                    col,
                    "this shard stores float32/float64 embeddings but earlier shards store float16",
                )
                .with_hint("convert all shards to one precision"));
            }
            if writer.is_none() {
                id_kind = shard.id_kind;
                writer = Some(WriterThread::spawn(scope, Writers::create(dir, id_kind)?));
            }
            let img = EmbeddingView::try_new(&batch.image).expect("type checked");
            let txt = EmbeddingView::try_new(&batch.text).expect("type checked");
            let dd = *d.get_or_insert_with(|| if batch.is_empty() { 0 } else { img.row_len(0) });
            let ctx = BatchCtx {
                path,
                first_row: batch.first_row,
                first_row_in_file: batch.first_row_in_file,
                d: dd,
                dtype: dt,
                img,
                txt,
                id_nulls: batch.id.nulls(),
                opts,
            };
            let n = batch.len();
            // Validate, convert and classify in parallel, in row order.
            let parts: Vec<Result<Prepared>> = (0..n.div_ceil(PREPARE_ROWS))
                .into_par_iter()
                .map(|c| {
                    let mut p = ctx.prepare(c * PREPARE_ROWS..((c + 1) * PREPARE_ROWS).min(n))?;
                    match &opts.classify {
                        Some(cl) => p.classify(cl, dd),
                        None => p.labels = vec![0; p.keep.len()],
                    }
                    Ok(p)
                })
                .collect();
            let ids = id_column(&batch.id);
            for part in parts {
                let part = part?; // the first error in row order
                for (i, reason) in &part.bad {
                    *skipped
                        .entry(reason.split_once(": ").unwrap().1.to_string())
                        .or_default() += 1;
                    rejects.push(Reject {
                        row: batch.first_row + *i as u64,
                        file: file.relative.clone(),
                        id: ids.text(*i),
                        reason: reason.clone(),
                    });
                }
                for (r, (&i, &k)) in part.keep.iter().zip(&part.labels).enumerate() {
                    let b = &mut buckets[k as usize];
                    let (img_bytes, txt_bytes) = part.row_bytes(r, dd);
                    b.image.extend_from_slice(img_bytes);
                    b.text.extend_from_slice(txt_bytes);
                    b.scale.extend_from_slice(&part.scale[2 * r..2 * r + 2]);
                    b.rows.push(batch.first_row + i as u64);
                    b.hashes.push(ids.hash(i));
                    match &ids {
                        IdColumn::Str(f) => {
                            b.id_bytes.extend_from_slice(f(i).as_bytes());
                            b.id_ends.push(b.id_bytes.len() as u32);
                        }
                        IdColumn::Int(v) => b.id_ints.push(v[i].unwrap() as u64),
                        IdColumn::UInt(v) => b.id_ints.push(v[i].unwrap()),
                    }
                    if b.len() >= chunk_rows {
                        let full = std::mem::take(b);
                        writer = Some(writer.take().unwrap().send(k, full)?);
                    }
                }
            }
            rows_read += n as u64;
        }
        let Some(mut w) = writer else {
            return Ok(None);
        };
        for (k, b) in buckets.iter_mut().enumerate() {
            if b.len() > 0 {
                w = w.send(k as u32, std::mem::take(b))?;
            }
        }
        w.finish().map(Some)
    })?;
    let Some(mut w) = writers else {
        return Err(Error::file(&files[0].path, "the dataset has no rows"));
    };
    if w.file_rows == 0 {
        return Err(
            Error::file(&files[0].path, "no usable rows: every row was rejected")
                .with_hint("see rejects.parquet"),
        );
    }
    let hashes = std::mem::take(&mut w.hashes);
    let (file_rows, chunks) = (w.file_rows, std::mem::take(&mut w.chunks));
    w.finish()?;
    // An empty shard has no batch to set its first row from.
    let starts = ShardStarts::from_rows(shards.iter().map(|s| s.rows));
    for (i, s) in shards.iter_mut().enumerate() {
        s.first_row = starts.range(i).start;
    }
    let mut ingested = Ingested {
        d: d.unwrap_or(0),
        dtype: dtype.unwrap(),
        id_kind,
        rows_read,
        file_rows,
        duplicate_file_rows: Vec::new(),
        chunks,
        rejects,
        skipped,
        shards,
        prefilter: opts.filter.as_ref().map(|f| f.report.clone()),
    };
    find_duplicates(dir, files, &mut ingested, hashes, opts)?;
    Ok(ingested)
}

/// The error of a repeated id: the later occurrence (its file and row in
/// the file) and the dataset row of the first.
pub fn duplicate_id_error(
    path: &Path,
    row_in_file: u64,
    column: &str,
    id: &str,
    first_row: u64,
) -> Error {
    Error::at(
        path,
        row_in_file,
        column,
        format!("duplicate id '{id}' (first seen at dataset row {first_row})"),
    )
    .with_hint("ids must be unique; --on-duplicate keep-first keeps the first occurrence")
}

/// Finds repeated ids by sorting their hashes, then comparing the ids whose
/// hashes collide. Keeps the occurrence with the smallest row index.
fn find_duplicates(
    dir: &Path,
    files: &[SourceFile],
    ing: &mut Ingested,
    mut hashes: Vec<(u64, u64)>,
    opts: &IngestOptions,
) -> Result<()> {
    hashes.par_sort_unstable();
    let ids = IdStore::open(dir, ing.id_kind)?;
    let row_map = Mapped::<u64>::open(&dir.join(files::ROW))?;
    let row_of = |f: u64| row_map.as_slice()[f as usize];
    // (dropped file row, kept file row)
    let mut dups: Vec<(u64, u64)> = Vec::new();
    let mut i = 0;
    while i < hashes.len() {
        let mut j = i + 1;
        while j < hashes.len() && hashes[j].0 == hashes[i].0 {
            j += 1;
        }
        if j - i > 1 {
            // Same hash: group by real id, in row order.
            let mut group: Vec<u64> = hashes[i..j].iter().map(|h| h.1).collect();
            group.sort_by_key(|&f| row_of(f));
            let mut done = vec![false; group.len()];
            for a in 0..group.len() {
                if done[a] {
                    continue;
                }
                for b in a + 1..group.len() {
                    if !done[b] && ids.get(group[a] as usize) == ids.get(group[b] as usize) {
                        done[b] = true;
                        dups.push((group[b], group[a]));
                    }
                }
            }
        }
        i = j;
    }
    if dups.is_empty() {
        return Ok(());
    }
    dups.sort_by_key(|&(f, _)| row_of(f));
    let starts = ing.starts();
    let locate = |row: u64| -> (&SourceFile, u64) {
        let (i, in_file) = starts.locate(row).unwrap_or((0, row));
        (&files[i], in_file)
    };
    if opts.on_duplicate == DuplicatePolicy::Error {
        let (f, kept) = dups[0];
        let (file, row_in_file) = locate(row_of(f));
        return Err(duplicate_id_error(
            &file.path,
            row_in_file,
            &opts.columns.id,
            &ids.get(f as usize).to_string(),
            row_of(kept),
        ));
    }
    for &(f, _) in &dups {
        let row = row_of(f);
        ing.rejects.push(Reject {
            row,
            file: locate(row).0.relative.clone(),
            id: ids.get(f as usize).to_string(),
            reason: "duplicate id".into(),
        });
    }
    *ing.skipped.entry("duplicate id".into()).or_default() += dups.len() as u64;
    ing.rejects.sort_by_key(|r| r.row);
    ing.duplicate_file_rows = dups.into_iter().map(|(f, _)| f).collect();
    ing.duplicate_file_rows.sort_unstable();
    Ok(())
}
