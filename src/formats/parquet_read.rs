//! The one Parquet read path: a file opened memory-mapped (or, for a URL,
//! with ranged reads through [`crate::io::remote`]), read one record batch
//! at a time by [`batches`], with the decoder run under [`guard_decoder`]
//! so that a corrupt file gives a one-line error, never a crash. Every
//! Parquet read in clipcov (shards, prompts, targets, eval sets, metadata,
//! subsets) goes through [`open_parquet`] and [`batches`].

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_schema::Schema;
use bytes::Bytes;
use memmap2::Mmap;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::file::reader::{ChunkReader, Length};

use crate::error::{Error, IoContext, Result};
use crate::io::remote::{self, RemoteFile, RemoteRead};

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

pub fn column_names(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
