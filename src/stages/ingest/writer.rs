//! The store writers: validated batches go to a thread of their own, which
//! sorts their rows into per-class buckets and writes each full bucket out
//! as a chunk.

use std::path::Path;
use std::sync::mpsc::sync_channel;

use arrow_array::ArrayRef;

use crate::clock::CpuTimer;
use crate::error::{Error, Result};
use crate::ids::IdKind;
use crate::stages::ingest::id_column::{id_column, IdColumn};
use crate::stages::ingest::validate::Prepared;
use crate::store::journal::FileRecord;
use crate::store::{files, SeqWriter};

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

    /// Room for `rows` rows of `row_bytes` bytes a tower: a bucket fills up
    /// to a chunk, so growing it by doubling would copy its rows again.
    fn reserve(&mut self, rows: usize, row_bytes: usize) {
        self.image.reserve_exact(rows * row_bytes);
        self.text.reserve_exact(rows * row_bytes);
        self.scale.reserve_exact(2 * rows);
        self.rows.reserve_exact(rows);
        self.hashes.reserve_exact(rows);
    }

    /// Empties the bucket, keeping its memory for the next chunk.
    fn clear(&mut self) {
        self.image.clear();
        self.text.clear();
        self.scale.clear();
        self.rows.clear();
        self.hashes.clear();
        self.id_bytes.clear();
        self.id_ends.clear();
        self.id_ints.clear();
    }
}

/// One batch's validated rows, in row order, on their way to the buckets.
pub(super) struct Batch {
    pub(super) parts: Vec<Prepared>,
    /// The batch's id column.
    pub(super) ids: ArrayRef,
    /// Canonical row index of the batch's first row.
    pub(super) first_row: u64,
    pub(super) d: usize,
}

/// The class buckets and the store files they are written to.
struct Bucketed {
    buckets: Vec<Bucket>,
    chunk_rows: usize,
    w: Writers,
}

impl Bucketed {
    /// Appends every kept row of `batch` to its class's bucket, in row
    /// order, and writes each bucket out as soon as it holds a chunk.
    fn add(&mut self, batch: &Batch) -> Result<()> {
        let t = CpuTimer::start();
        let written = self.w.write_seconds;
        let ids = id_column(&batch.ids);
        for part in &batch.parts {
            for (r, (&i, &k)) in part.keep.iter().zip(&part.labels).enumerate() {
                let b = &mut self.buckets[k as usize];
                let (img_bytes, txt_bytes) = part.row_bytes(r, batch.d);
                if b.len() == 0 {
                    b.reserve(self.chunk_rows, img_bytes.len());
                }
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
                if b.len() >= self.chunk_rows {
                    self.w.flush(k, b)?;
                }
            }
        }
        // The flushes inside are store writes, counted there.
        self.w.bucket_seconds += t.seconds() - (self.w.write_seconds - written);
        Ok(())
    }

    /// Writes the partly filled buckets, in class order.
    fn finish(mut self) -> Result<Writers> {
        for (k, b) in self.buckets.iter_mut().enumerate() {
            self.w.flush(k as u32, b)?;
        }
        Ok(self.w)
    }
}

/// The store files being written.
pub(super) struct Writers {
    pub(super) image: SeqWriter,
    pub(super) text: SeqWriter,
    pub(super) scale: SeqWriter,
    pub(super) row: SeqWriter,
    pub(super) id_main: SeqWriter,
    pub(super) id_dat: Option<SeqWriter>,
    pub(super) id_total: u64,
    pub(super) file_rows: u64,
    pub(super) chunks: Vec<(u32, u32)>,
    pub(super) hashes: Vec<(u64, u64)>,
    /// CPU seconds spent sorting rows into buckets, and writing chunks
    /// out (the kernel's copy into the page cache is system time).
    pub(super) bucket_seconds: f64,
    pub(super) write_seconds: f64,
}

impl Writers {
    pub(super) fn create(dir: &Path, id_kind: IdKind) -> Result<Self> {
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
            bucket_seconds: 0.0,
            write_seconds: 0.0,
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
        let t = CpuTimer::start();
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
        b.clear();
        self.write_seconds += t.seconds();
        Ok(())
    }

    /// Renames the files into place; returns their journal records.
    pub(super) fn finish(self) -> Result<Vec<FileRecord>> {
        [self.image, self.text, self.scale, self.row, self.id_main]
            .into_iter()
            .chain(self.id_dat)
            .map(SeqWriter::finish)
            .collect()
    }
}

/// Batches queued for the writer thread beyond the one it works on: it
/// sorts one batch while the next is validated and classified.
const WRITE_QUEUE: usize = 1;

/// The buckets and the store writers on their own thread, so that sorting
/// rows into buckets and copying chunks into the page cache (and waiting
/// for the disk when dirty pages pile up) overlap with decoding,
/// validation and the class GEMM. One thread takes the batches in order,
/// so the store's layout does not depend on timing.
pub(super) struct WriterThread<'scope> {
    tx: std::sync::mpsc::SyncSender<Batch>,
    handle: std::thread::ScopedJoinHandle<'scope, Result<Writers>>,
}

impl<'scope> WriterThread<'scope> {
    /// `classes` buckets of `chunk_rows` rows each.
    pub(super) fn spawn<'env>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        w: Writers,
        classes: usize,
        chunk_rows: usize,
    ) -> Self {
        let (tx, rx) = sync_channel::<Batch>(WRITE_QUEUE);
        let mut state = Bucketed {
            buckets: (0..classes.max(1)).map(|_| Bucket::default()).collect(),
            chunk_rows: chunk_rows.max(1),
            w,
        };
        let handle = scope.spawn(move || {
            for batch in rx {
                state.add(&batch)?;
            }
            state.finish()
        });
        WriterThread { tx, handle }
    }

    /// Queues a batch; fails with the writer's error if it stopped.
    pub(super) fn send(self, batch: Batch) -> std::result::Result<Self, Error> {
        match self.tx.send(batch) {
            Ok(()) => Ok(self),
            Err(_) => Err(self.finish().err().unwrap_or_else(|| {
                Error::Internal("the store writer stopped without an error".into())
            })),
        }
    }

    /// Writes what the buckets still hold and returns the writers.
    pub(super) fn finish(self) -> Result<Writers> {
        drop(self.tx);
        self.handle
            .join()
            .unwrap_or_else(|_| Err(Error::Internal("the store writer panicked".into())))
    }
}
