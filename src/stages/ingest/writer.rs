//! The store writers: per-class buckets of validated rows, written out as
//! chunks on a thread of their own.

use std::path::Path;
use std::sync::mpsc::sync_channel;

use crate::error::{Error, Result};
use crate::ids::IdKind;
use crate::store::{files, SeqWriter};

/// A class's rows waiting to be written as a chunk.
#[derive(Default)]
pub(super) struct Bucket {
    pub(super) image: Vec<u8>,
    pub(super) text: Vec<u8>,
    pub(super) scale: Vec<f32>,
    pub(super) rows: Vec<u64>,
    pub(super) hashes: Vec<u64>,
    pub(super) id_bytes: Vec<u8>,
    pub(super) id_ends: Vec<u32>,
    pub(super) id_ints: Vec<u64>,
}

impl Bucket {
    pub(super) fn len(&self) -> usize {
        self.rows.len()
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
        };
        if utf8 {
            me.id_main.write(&[0u64])?;
        }
        Ok(me)
    }

    pub(super) fn flush(&mut self, class: u32, b: &mut Bucket) -> Result<()> {
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

    pub(super) fn finish(self) -> Result<()> {
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
pub(super) struct WriterThread<'scope> {
    tx: std::sync::mpsc::SyncSender<(u32, Bucket)>,
    handle: std::thread::ScopedJoinHandle<'scope, Result<Writers>>,
}

impl<'scope> WriterThread<'scope> {
    pub(super) fn spawn<'env>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        mut w: Writers,
    ) -> Self {
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
    pub(super) fn send(self, class: u32, bucket: Bucket) -> std::result::Result<Self, Error> {
        match self.tx.send((class, bucket)) {
            Ok(()) => Ok(self),
            Err(_) => Err(self.finish().err().unwrap_or_else(|| {
                Error::Internal("the store writer stopped without an error".into())
            })),
        }
    }

    pub(super) fn finish(self) -> Result<Writers> {
        drop(self.tx);
        self.handle
            .join()
            .unwrap_or_else(|_| Err(Error::Internal("the store writer panicked".into())))
    }
}
