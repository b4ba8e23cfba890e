//! What a run wrote: each output file with its rows, size and checksum, and
//! the JSON files written beside them.

use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::io::atomic::atomic_write;

/// One output file.
#[derive(Clone, Debug, Serialize)]
pub struct OutputFile {
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// Writes `value` as pretty JSON, atomically.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    atomic_write(path, |w| {
        serde_json::to_writer_pretty(&mut *w, value)
            .map_err(|e| Error::io(path, std::io::Error::other(e)))?;
        use std::io::Write;
        w.write_all(b"\n").at_path(path)
    })
}

fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let bytes = std::fs::read(path).at_path(path)?;
    let digest = Sha256::digest(&bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok((bytes.len() as u64, hex))
}

/// Describes the written file `path` (relative to `out`) with its checksum.
pub fn record(out: &Path, path: &Path, rows: u64) -> Result<OutputFile> {
    let (bytes, sha256) = sha256_file(path)?;
    Ok(OutputFile {
        path: path
            .strip_prefix(out)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned(),
        rows,
        bytes,
        sha256,
    })
}
