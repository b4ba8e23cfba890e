//! The staged store: the dataset's embeddings decoded once into raw,
//! memory-mappable files that every later pass reads at memory speed.
//!
//! Layout of a store folder (all little-endian, row-major):
//!
//! | file | per row | indexed by |
//! |---|---|---|
//! | `image.bin`, `text.bin` | `d` values (f16 or f32) | file row |
//! | `scale.bin` | 2 x f32: factors that normalise image and text | file row |
//! | `row.bin` | u64 canonical row index | file row |
//! | `ids.off` + `ids.dat`, or `ids.int` | the id | file row |
//! | `order.bin` | u64 file row | sorted position |
//! | `terms.bin` | 4 x f64: easy, cross, label, between | sorted position |
//!
//! Ingest writes rows in chunks, one class bucket at a time, so a class is a
//! few long runs of file rows; `order.bin` lists them class by class (the
//! *sorted position*), in canonical row order inside a class.
//!
//! f16 input stays f16 (with its normalising factor kept beside it, so no
//! precision is lost to a second rounding); f32 and f64 input is stored as
//! normalised f32, its factor kept too so the rows as given can be
//! recovered (`--rule datacomp` clusters them). Every file is written under a temporary name and renamed
//! when complete.

pub mod journal;

/// The names of the store's files, in one place.
pub mod files {
    /// Image embeddings, `[rows, d]` in the store dtype, class-sorted.
    pub const IMAGE: &str = "image.bin";
    /// Caption embeddings, as [`IMAGE`].
    pub const TEXT: &str = "text.bin";
    /// Per-row normalising factors.
    pub const SCALE: &str = "scale.bin";
    /// Each store position's canonical row index (`u64`).
    pub const ROW: &str = "row.bin";
    /// The class-sorted order of the raw positions.
    pub const ORDER: &str = "order.bin";
    /// The four terms of each row (`[rows, 4]` f64), written by score.
    pub const TERMS: &str = "terms.bin";
    /// Each class's sums of `u` and of `v` (`[K, 2, d]` f64), written by
    /// score: a later run after an append reuses the untouched classes'.
    pub const SUMS: &str = "sums.bin";
    /// After an append: the order before it, which maps the earlier
    /// `terms.bin` to file rows for the incremental score.
    pub const ORDER_PREV: &str = "order.prev.bin";
    /// The class embeddings (`[K, d]` f32).
    pub const CLASS_EMB: &str = "classemb.bin";
    /// Utf8 ids: offsets into [`IDS_DAT`].
    pub const IDS_OFF: &str = "ids.off";
    /// Utf8 ids: their bytes.
    pub const IDS_DAT: &str = "ids.dat";
    /// Integer ids.
    pub const IDS_INT: &str = "ids.int";

    /// The files of a staged store whose ids are of `kind`, as the journal
    /// records them (`terms.bin` comes later, from score).
    pub fn staged(kind: crate::ids::IdKind) -> Vec<&'static str> {
        let ids: &[&str] = match kind {
            crate::ids::IdKind::Utf8 => &[IDS_OFF, IDS_DAT],
            _ => &[IDS_INT],
        };
        [IMAGE, TEXT, SCALE, ROW, ORDER, META, INGEST, CLASS_EMB]
            .into_iter()
            .chain(ids.iter().copied())
            .collect()
    }
    /// [`StoreMeta`] as JSON.
    pub const META: &str = "store.json";
    /// What ingest read and skipped, as JSON.
    pub const INGEST: &str = "ingest.json";
}

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{Int64Builder, StringBuilder, UInt64Builder};
use arrow_array::ArrayRef;
use half::f16;
use memmap2::{Advice, Mmap, MmapMut};
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::ids::{IdKind, IdRef};
use crate::io::atomic::temp_path;

#[cfg(target_endian = "big")]
compile_error!("the staged store is little-endian; clipcov supports little-endian targets only");

/// Plain-old-data element types of store files.
///
/// # Safety
/// Implementors must have no padding and accept every bit pattern.
pub unsafe trait Pod: Copy + Send + Sync + 'static {}
unsafe impl Pod for u8 {}
unsafe impl Pod for u32 {}
unsafe impl Pod for u64 {}
unsafe impl Pod for i64 {}
unsafe impl Pod for f32 {}
unsafe impl Pod for f64 {}
unsafe impl Pod for f16 {}

pub fn as_bytes<T: Pod>(v: &[T]) -> &[u8] {
    // SAFETY: T is Pod, so every byte is initialised.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

fn cast_slice<T: Pod>(b: &[u8]) -> &[T] {
    let size = std::mem::size_of::<T>();
    assert!(
        (b.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>())
            && b.len().is_multiple_of(size),
        "store file is misaligned"
    );
    // SAFETY: alignment and length checked; T accepts every bit pattern.
    unsafe { std::slice::from_raw_parts(b.as_ptr() as *const T, b.len() / size) }
}

fn cast_slice_mut<T: Pod>(b: &mut [u8]) -> &mut [T] {
    let size = std::mem::size_of::<T>();
    assert!(
        (b.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>())
            && b.len().is_multiple_of(size)
    );
    // SAFETY: as in cast_slice, and the borrow is unique.
    unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr() as *mut T, b.len() / size) }
}

/// A read-only memory-mapped file of `T`s.
pub struct Mapped<T: Pod> {
    map: Option<Mmap>,
    _t: std::marker::PhantomData<T>,
}

impl<T: Pod> Mapped<T> {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).at_path(path)?;
        let len = file.metadata().at_path(path)?.len();
        let map = if len == 0 {
            None
        } else {
            // SAFETY: store files are written once, renamed into place and
            // never modified afterwards.
            let m = unsafe { Mmap::map(&file) }.at_path(path)?;
            let _ = m.advise(Advice::Sequential);
            Some(m)
        };
        if len % std::mem::size_of::<T>() as u64 != 0 {
            return Err(Error::file(path, "store file has a partial element")
                .with_hint("the store is damaged: rerun with --fresh"));
        }
        Ok(Mapped {
            map,
            _t: std::marker::PhantomData,
        })
    }

    pub fn as_slice(&self) -> &[T] {
        match &self.map {
            Some(m) => cast_slice(m),
            None => &[],
        }
    }
}

/// A file being written sequentially under a temporary name; removed on drop
/// unless [`SeqWriter::finish`] renamed it into place.
pub struct SeqWriter {
    path: PathBuf,
    tmp: PathBuf,
    w: Option<BufWriter<File>>,
    /// The journal's checksum of the bytes so far, computed as they are
    /// written, so recording the file needs no second pass over it.
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl SeqWriter {
    pub fn create(path: &Path) -> Result<Self> {
        let tmp = temp_path(path);
        let f = File::create(&tmp).at_path(&tmp)?;
        Ok(SeqWriter {
            path: path.to_path_buf(),
            tmp,
            // Writes at least this long bypass the buffer: chunks of
            // embeddings go straight to the file, without another copy.
            w: Some(BufWriter::with_capacity(128 << 10, f)),
            crc: crc32fast::Hasher::new(),
            bytes: 0,
        })
    }

    pub fn write<T: Pod>(&mut self, v: &[T]) -> Result<()> {
        let bytes = as_bytes(v);
        self.crc.update(bytes);
        self.bytes += bytes.len() as u64;
        self.w.as_mut().unwrap().write_all(bytes).at_path(&self.tmp)
    }

    /// Renames the finished file into place. Store files are not synced:
    /// they are intermediate, and waiting for the disk would double a
    /// stage's time; a store that did not survive a crash is rebuilt.
    /// Returns the file's journal record (name, size, checksum).
    pub fn finish(mut self) -> Result<journal::FileRecord> {
        let w = self.w.take().unwrap();
        w.into_inner()
            .map_err(|e| e.into_error())
            .at_path(&self.tmp)?;
        fs::rename(&self.tmp, &self.path).at_path(&self.path)?;
        Ok(journal::FileRecord {
            name: self
                .path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            bytes: self.bytes,
            crc32: std::mem::take(&mut self.crc).finalize(),
        })
    }
}

impl Drop for SeqWriter {
    fn drop(&mut self) {
        if self.w.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Appends the bytes of `src` to the end of `dst` (a store file growing by
/// an append; the journal marks the store incomplete while it happens).
pub fn append_file(src: &Path, dst: &Path) -> Result<()> {
    let mut from = File::open(src).at_path(src)?;
    let mut to = OpenOptions::new().append(true).open(dst).at_path(dst)?;
    std::io::copy(&mut from, &mut to).at_path(dst)?;
    Ok(())
}

/// A file of `len` `T`s written at random positions through a writable
/// memory map, under a temporary name until [`MapWriter::finish`].
pub struct MapWriter {
    path: PathBuf,
    tmp: PathBuf,
    map: Option<MmapMut>,
    done: bool,
}

impl MapWriter {
    pub fn create<T: Pod>(path: &Path, len: usize) -> Result<Self> {
        let tmp = temp_path(path);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .at_path(&tmp)?;
        let bytes = (len * std::mem::size_of::<T>()) as u64;
        f.set_len(bytes).at_path(&tmp)?;
        reserve(&f, bytes).at_path(&tmp)?;
        let map = if bytes == 0 {
            None
        } else {
            // SAFETY: the temporary file is ours alone until renamed.
            Some(unsafe { MmapMut::map_mut(&f) }.at_path(&tmp)?)
        };
        Ok(MapWriter {
            path: path.to_path_buf(),
            tmp,
            map,
            done: false,
        })
    }

    pub fn slice_mut<T: Pod>(&mut self) -> &mut [T] {
        match &mut self.map {
            Some(m) => cast_slice_mut(m),
            None => &mut [],
        }
    }

    /// Unmaps and renames into place (not synced: see [`SeqWriter::finish`]).
    pub fn finish(mut self) -> Result<()> {
        self.map = None;
        fs::rename(&self.tmp, &self.path).at_path(&self.path)?;
        self.done = true;
        Ok(())
    }
}

impl Drop for MapWriter {
    fn drop(&mut self) {
        if !self.done {
            self.map = None;
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Allocates `bytes` of disk for `f` up front. A memory-mapped write to a
/// hole on a full disk kills the process with SIGBUS; reserving first turns
/// that into an ordinary "no space left" error.
fn reserve(f: &File, bytes: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    if bytes == 0 {
        return Ok(());
    }
    // SAFETY: a plain system call on an open file descriptor we own.
    let rc = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, bytes as libc::off_t) };
    match rc {
        0 => Ok(()),
        // File systems without fallocate: fall back to the sparse file.
        libc::EOPNOTSUPP | libc::EINVAL => Ok(()),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

/// Storage precision of the embeddings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F16,
    F32,
}

impl Dtype {
    pub fn bytes(self) -> usize {
        match self {
            Dtype::F16 => 2,
            Dtype::F32 => 4,
        }
    }
}

/// One modality's embeddings, `[rows, d]`, mapped.
pub enum Embeddings {
    F16(Mapped<f16>),
    F32(Mapped<f32>),
}

impl Embeddings {
    pub fn open(path: &Path, dtype: Dtype) -> Result<Self> {
        Ok(match dtype {
            Dtype::F16 => Embeddings::F16(Mapped::open(path)?),
            Dtype::F32 => Embeddings::F32(Mapped::open(path)?),
        })
    }

    /// File rows `rows` as normalised `f32`, row-major. A run of
    /// consecutive rows in an f32 store is borrowed straight from the map;
    /// anything else is gathered (and, for f16, converted and scaled) into
    /// `buf`. `scale(r)` is file row `r`'s normalising factor.
    pub fn gather_f32<'a>(
        &'a self,
        rows: &[u64],
        d: usize,
        scale: impl Fn(usize) -> f32,
        buf: &'a mut Vec<f32>,
    ) -> &'a [f32] {
        let consecutive = rows.windows(2).all(|w| w[1] == w[0] + 1);
        if let (Embeddings::F32(m), true) = (self, consecutive) {
            let start = rows.first().map_or(0, |&r| r as usize);
            return &m.as_slice()[start * d..(start + rows.len()) * d];
        }
        buf.clear();
        buf.reserve(rows.len() * d);
        let mut i = 0;
        while i < rows.len() {
            // The longest run of consecutive file rows from i.
            let mut j = i + 1;
            while j < rows.len() && rows[j] == rows[j - 1] + 1 {
                j += 1;
            }
            let (a, b) = (rows[i] as usize, rows[i] as usize + (j - i));
            match self {
                Embeddings::F32(m) => buf.extend_from_slice(&m.as_slice()[a * d..b * d]),
                Embeddings::F16(m) => {
                    use half::slice::HalfFloatSliceExt;
                    let src = &m.as_slice()[a * d..b * d];
                    let start = buf.len();
                    buf.resize(start + src.len(), 0.0);
                    src.convert_to_f32_slice(&mut buf[start..]);
                    for (r, row) in (a..b).zip(buf[start..].chunks_exact_mut(d)) {
                        let s = scale(r);
                        for x in row {
                            *x *= s;
                        }
                    }
                }
            }
            i = j;
        }
        buf
    }
}

/// Ids by raw position.
pub enum IdStore {
    Utf8 { off: Mapped<u64>, dat: Mapped<u8> },
    Int(Mapped<i64>),
    UInt(Mapped<u64>),
}

impl IdStore {
    pub fn open(dir: &Path, kind: IdKind) -> Result<Self> {
        Ok(match kind {
            IdKind::Utf8 => IdStore::Utf8 {
                off: Mapped::open(&dir.join(files::IDS_OFF))?,
                dat: Mapped::open(&dir.join(files::IDS_DAT))?,
            },
            IdKind::Int64 => IdStore::Int(Mapped::open(&dir.join(files::IDS_INT))?),
            IdKind::UInt64 => IdStore::UInt(Mapped::open(&dir.join(files::IDS_INT))?),
        })
    }

    pub fn get(&self, pos: usize) -> IdRef<'_> {
        match self {
            IdStore::Utf8 { off, dat } => {
                let o = off.as_slice();
                let bytes = &dat.as_slice()[o[pos] as usize..o[pos + 1] as usize];
                // Written from Arrow utf8 arrays, so always valid.
                IdRef::Utf8(std::str::from_utf8(bytes).unwrap_or("<invalid utf8>"))
            }
            IdStore::Int(m) => IdRef::Int(m.as_slice()[pos]),
            IdStore::UInt(m) => IdRef::UInt(m.as_slice()[pos]),
        }
    }
}

/// What the store folder's `store.json` records.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoreMeta {
    pub version: u32,
    pub d: usize,
    pub dtype: Dtype,
    pub id_kind: IdKind,
    /// Rows in the store (valid rows that take part in selection).
    pub rows: u64,
    /// Class `k` holds sorted positions `class_offsets[k]..class_offsets[k+1]`.
    pub class_offsets: Vec<u64>,
    pub class_ids: Vec<i64>,
    pub class_names: Vec<String>,
}

/// 2: `scale.bin` holds the real factors of f32 stores too (1 held 1.0).
pub const STORE_VERSION: u32 = 2;

impl StoreMeta {
    pub fn classes(&self) -> usize {
        self.class_offsets.len().saturating_sub(1)
    }

    pub fn class_range(&self, k: usize) -> Range<usize> {
        self.class_offsets[k] as usize..self.class_offsets[k + 1] as usize
    }

    /// `K'`: the classes with at least one row.
    pub fn nonempty_classes(&self) -> usize {
        (0..self.classes())
            .filter(|&k| !self.class_range(k).is_empty())
            .count()
    }
}

/// Image and caption embeddings with their normalising factors, by file
/// row (the order ingest wrote them in).
pub struct Pair {
    pub image: Embeddings,
    pub text: Embeddings,
    /// `[rows, 2]`: image and text normalising factors.
    pub scale: Mapped<f32>,
    pub d: usize,
}

impl Pair {
    pub fn open(dir: &Path, dtype: Dtype, d: usize) -> Result<Self> {
        Ok(Pair {
            image: Embeddings::open(&dir.join(files::IMAGE), dtype)?,
            text: Embeddings::open(&dir.join(files::TEXT), dtype)?,
            scale: Mapped::open(&dir.join(files::SCALE))?,
            d,
        })
    }

    pub fn len(&self) -> usize {
        self.scale.as_slice().len() / 2
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Normalised image rows of file rows `rows`.
    pub fn image_gather<'a>(&'a self, rows: &[u64], buf: &'a mut Vec<f32>) -> &'a [f32] {
        let s = self.scale.as_slice();
        self.image.gather_f32(rows, self.d, |r| s[2 * r], buf)
    }

    /// Image rows of file rows `rows` as the input gave them, before
    /// normalising: f16 rows exactly, f32 rows as the stored unit row
    /// divided by its factor (the input up to rounding).
    pub fn image_given(&self, rows: &[u64]) -> Vec<f32> {
        let (s, d) = (self.scale.as_slice(), self.d);
        let mut buf = Vec::new();
        let mut out = self.image.gather_f32(rows, d, |_| 1.0, &mut buf).to_vec();
        if let Embeddings::F32(_) = self.image {
            for (row, &r) in out.chunks_exact_mut(d).zip(rows) {
                let f = s[2 * r as usize] as f64;
                for x in row {
                    *x = (*x as f64 / f) as f32;
                }
            }
        }
        out
    }

    /// Normalised caption rows of file rows `rows`.
    pub fn text_gather<'a>(&'a self, rows: &[u64], buf: &'a mut Vec<f32>) -> &'a [f32] {
        let s = self.scale.as_slice();
        self.text.gather_f32(rows, self.d, |r| s[2 * r + 1], buf)
    }
}

/// The staged store, opened for the score, select and emit stages. Rows are
/// addressed by *sorted position*: class by class, canonical row order
/// inside a class; `order.bin` maps a sorted position to its file row.
pub struct Store {
    pub dir: PathBuf,
    pub meta: StoreMeta,
    pub emb: Pair,
    pub order: Mapped<u64>,
    pub row: Mapped<u64>,
    pub ids: IdStore,
}

impl Store {
    pub fn open(dir: &Path, meta: StoreMeta) -> Result<Self> {
        Ok(Store {
            emb: Pair::open(dir, meta.dtype, meta.d)?,
            order: Mapped::open(&dir.join(files::ORDER))?,
            row: Mapped::open(&dir.join(files::ROW))?,
            ids: IdStore::open(dir, meta.id_kind)?,
            dir: dir.to_path_buf(),
            meta,
        })
    }

    pub fn d(&self) -> usize {
        self.meta.d
    }

    pub fn rows(&self) -> usize {
        self.meta.rows as usize
    }

    /// Normalised image rows of sorted positions `range`.
    pub fn image_rows<'a>(&'a self, range: Range<usize>, buf: &'a mut Vec<f32>) -> &'a [f32] {
        self.emb.image_gather(&self.order.as_slice()[range], buf)
    }

    /// Normalised caption rows of sorted positions `range`.
    pub fn text_rows<'a>(&'a self, range: Range<usize>, buf: &'a mut Vec<f32>) -> &'a [f32] {
        self.emb.text_gather(&self.order.as_slice()[range], buf)
    }

    /// Canonical row index of sorted position `pos`.
    pub fn row_index(&self, pos: usize) -> u64 {
        self.row.as_slice()[self.order.as_slice()[pos] as usize]
    }

    pub fn id(&self, pos: usize) -> IdRef<'_> {
        self.ids.get(self.order.as_slice()[pos] as usize)
    }

    /// The ids of `positions`, as an Arrow array of the ids' type.
    pub fn id_array(&self, positions: &[usize]) -> ArrayRef {
        match self.meta.id_kind {
            IdKind::Utf8 => {
                let mut b = StringBuilder::new();
                for &p in positions {
                    if let IdRef::Utf8(s) = self.id(p) {
                        b.append_value(s);
                    }
                }
                Arc::new(b.finish())
            }
            IdKind::Int64 => {
                let mut b = Int64Builder::with_capacity(positions.len());
                for &p in positions {
                    if let IdRef::Int(v) = self.id(p) {
                        b.append_value(v);
                    }
                }
                Arc::new(b.finish())
            }
            IdKind::UInt64 => {
                let mut b = UInt64Builder::with_capacity(positions.len());
                for &p in positions {
                    if let IdRef::UInt(v) = self.id(p) {
                        b.append_value(v);
                    }
                }
                Arc::new(b.finish())
            }
        }
    }
}

/// One class's rows as normalised `f32`, addressed by local index (0 is
/// the class's first row): what score and select compute on. The CLI
/// reads a class of the staged store ([`StoreClass`]); the Python bindings
/// and the Ray recipe pass a class's rows held in memory ([`SliceRows`]).
/// Both give the same values, so the same code gives the same bits.
pub trait ClassRows: Sync {
    fn d(&self) -> usize;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Image rows `r`.
    fn image<'a>(&'a self, r: Range<usize>, buf: &'a mut Vec<f32>) -> &'a [f32];
    /// Caption rows `r`.
    fn text<'a>(&'a self, r: Range<usize>, buf: &'a mut Vec<f32>) -> &'a [f32];
    /// Image rows at the local indices `idx`.
    fn image_at<'a>(&'a self, idx: &[usize], buf: &'a mut Vec<f32>) -> &'a [f32];
    /// Caption rows at the local indices `idx`.
    fn text_at<'a>(&'a self, idx: &[usize], buf: &'a mut Vec<f32>) -> &'a [f32];
}

/// Class `range` (sorted positions) of the staged store.
pub struct StoreClass<'a> {
    pub store: &'a Store,
    pub range: Range<usize>,
}

impl StoreClass<'_> {
    fn file_rows(&self, idx: &[usize]) -> Vec<u64> {
        let order = self.store.order.as_slice();
        idx.iter().map(|&i| order[self.range.start + i]).collect()
    }
}

impl ClassRows for StoreClass<'_> {
    fn d(&self) -> usize {
        self.store.d()
    }
    fn len(&self) -> usize {
        self.range.len()
    }
    fn image<'a>(&'a self, r: Range<usize>, buf: &'a mut Vec<f32>) -> &'a [f32] {
        let o = self.range.start;
        self.store.image_rows(o + r.start..o + r.end, buf)
    }
    fn text<'a>(&'a self, r: Range<usize>, buf: &'a mut Vec<f32>) -> &'a [f32] {
        let o = self.range.start;
        self.store.text_rows(o + r.start..o + r.end, buf)
    }
    fn image_at<'a>(&'a self, idx: &[usize], buf: &'a mut Vec<f32>) -> &'a [f32] {
        self.store.emb.image_gather(&self.file_rows(idx), buf)
    }
    fn text_at<'a>(&'a self, idx: &[usize], buf: &'a mut Vec<f32>) -> &'a [f32] {
        self.store.emb.text_gather(&self.file_rows(idx), buf)
    }
}

/// Some rows of a class, by their local indices in it: the new rows of a
/// class after an append.
pub struct IndexedRows<'a> {
    pub rows: &'a dyn ClassRows,
    pub idx: &'a [usize],
}

impl ClassRows for IndexedRows<'_> {
    fn d(&self) -> usize {
        self.rows.d()
    }
    fn len(&self) -> usize {
        self.idx.len()
    }
    fn image<'a>(&'a self, r: Range<usize>, buf: &'a mut Vec<f32>) -> &'a [f32] {
        self.rows.image_at(&self.idx[r], buf)
    }
    fn text<'a>(&'a self, r: Range<usize>, buf: &'a mut Vec<f32>) -> &'a [f32] {
        self.rows.text_at(&self.idx[r], buf)
    }
    fn image_at<'a>(&'a self, idx: &[usize], buf: &'a mut Vec<f32>) -> &'a [f32] {
        let local: Vec<usize> = idx.iter().map(|&i| self.idx[i]).collect();
        self.rows.image_at(&local, buf)
    }
    fn text_at<'a>(&'a self, idx: &[usize], buf: &'a mut Vec<f32>) -> &'a [f32] {
        let local: Vec<usize> = idx.iter().map(|&i| self.idx[i]).collect();
        self.rows.text_at(&local, buf)
    }
}

/// A class's normalised rows held in memory, row-major `[n, d]`.
pub struct SliceRows<'a> {
    pub image: &'a [f32],
    pub text: &'a [f32],
    pub d: usize,
}

impl SliceRows<'_> {
    fn gather<'a>(x: &[f32], d: usize, idx: &[usize], buf: &'a mut Vec<f32>) -> &'a [f32] {
        buf.clear();
        for &i in idx {
            buf.extend_from_slice(&x[i * d..(i + 1) * d]);
        }
        buf
    }
}

impl ClassRows for SliceRows<'_> {
    fn d(&self) -> usize {
        self.d
    }
    fn len(&self) -> usize {
        self.image.len() / self.d.max(1)
    }
    fn image<'a>(&'a self, r: Range<usize>, _: &'a mut Vec<f32>) -> &'a [f32] {
        &self.image[r.start * self.d..r.end * self.d]
    }
    fn text<'a>(&'a self, r: Range<usize>, _: &'a mut Vec<f32>) -> &'a [f32] {
        &self.text[r.start * self.d..r.end * self.d]
    }
    fn image_at<'a>(&'a self, idx: &[usize], buf: &'a mut Vec<f32>) -> &'a [f32] {
        Self::gather(self.image, self.d, idx, buf)
    }
    fn text_at<'a>(&'a self, idx: &[usize], buf: &'a mut Vec<f32>) -> &'a [f32] {
        Self::gather(self.text, self.d, idx, buf)
    }
}
