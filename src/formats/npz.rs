//! NumPy `.npz` archives (a zip of `.npy` members): finds a member by key
//! and opens it as an [`NpyMatrix`]. Stored members (what `numpy.savez`
//! writes) are used in place through one memory map of the archive;
//! deflated members (`numpy.savez_compressed`) are decompressed into memory.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;
use zip::{CompressionMethod, ZipArchive};

use super::npy::NpyMatrix;
use crate::error::{Error, IoContext, Result};

/// An opened `.npz` archive.
pub struct Npz {
    archive: ZipArchive<File>,
    map: Arc<Mmap>,
}

fn not_zip(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::file(path, format!("not a readable .npz archive ({e})"))
        .with_hint("the file is corrupt or truncated: re-export it with numpy.savez")
}

impl Npz {
    /// Opens the archive at `path` (a local copy of it for a URL).
    ///
    /// # Errors
    /// An I/O error when it cannot be opened, a data error when it is not a
    /// zip archive.
    pub fn open(path: &Path) -> Result<Self> {
        // An object is read from a local copy (memory maps need a file).
        let local = crate::io::remote::local_copy(path)?;
        let file = File::open(&local).at_path(&local)?;
        // SAFETY: read-only mapping of an input file (see NpyMatrix::open).
        let map = unsafe { Mmap::map(&file) }.at_path(&local)?;
        let archive = ZipArchive::new(file).map_err(|e| not_zip(path, e))?;
        Ok(Npz {
            archive,
            map: Arc::new(map),
        })
    }

    /// The array stored under `key` (member `key.npy`).
    ///
    /// # Errors
    /// A data error naming the archive when the member is missing (listing
    /// the keys it has), uses an unsupported compression, or is not a
    /// valid 2-D float16/float32 array.
    pub fn matrix(&mut self, path: &Path, key: &str) -> Result<NpyMatrix> {
        let name = format!("{key}.npy");
        let Some(index) = self.archive.index_for_name(&name) else {
            let mut keys: Vec<String> = self
                .archive
                .file_names()
                .filter_map(|n| n.ok())
                .map(|n| n.trim_end_matches(".npy").to_string())
                .collect();
            keys.sort();
            return Err(
                Error::file(path, format!("no array '{key}' in the archive")).with_hint(format!(
                    "it has: {}; pick the embeddings with --model l14|b32",
                    keys.join(", ")
                )),
            );
        };
        let what = format!("member '{name}': ");
        let mut member = self.archive.by_index(index).map_err(|e| not_zip(path, e))?;
        match member.compression() {
            CompressionMethod::Stored => {
                let start = member
                    .data_start()
                    .ok_or_else(|| not_zip(path, "member without a data offset"))?
                    as usize;
                let len = member.size() as usize;
                drop(member);
                NpyMatrix::from_map(self.map.clone(), start, len, path, &what)
            }
            CompressionMethod::Deflated => {
                let mut bytes = Vec::with_capacity(member.size() as usize);
                std::io::Read::read_to_end(&mut member, &mut bytes)
                    .map_err(|e| not_zip(path, format!("{what}{e}")))?;
                NpyMatrix::from_vec(bytes, path, &what)
            }
            other => Err(
                Error::file(path, format!("{what}compression {other} is not supported"))
                    .with_hint("write the archive with numpy.savez or numpy.savez_compressed"),
            ),
        }
    }
}
