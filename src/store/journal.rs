//! Resume: what each stage left in the store, and whether it can be reused.
//!
//! A stage that completes records, in `store/stages.json`, a key (a hash of
//! everything its output depends on: inputs with their sizes and
//! modification times, and the parameters that matter to it) and the size
//! and CRC-32 of every file it wrote. A rerun of the same command reuses a
//! stage whose key matches and whose files still check out, and redoes the
//! first stage that does not, and everything after it. A parameter change
//! therefore invalidates exactly the stages whose key includes it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::io::written::write_json;
use crate::store::Mapped;

/// One file a stage wrote.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    pub name: String,
    pub bytes: u64,
    pub crc32: u32,
}

/// One completed stage.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageRecord {
    pub key: String,
    pub files: Vec<FileRecord>,
    /// Whatever the stage reports that later runs need (e.g. kernel stats).
    #[serde(default)]
    pub report: serde_json::Value,
}

/// `store/stages.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Journal {
    pub stages: BTreeMap<String, StageRecord>,
}

const JOURNAL: &str = "stages.json";

/// The hex SHA-256 of a value's JSON form.
pub fn key_of(value: &impl Serialize) -> String {
    let json = serde_json::to_vec(value).unwrap_or_default();
    Sha256::digest(&json)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Size and CRC-32 of a file in `dir`.
pub fn file_record(dir: &Path, name: &str) -> Result<FileRecord> {
    let map = Mapped::<u8>::open(&dir.join(name))?;
    let mut h = crc32fast::Hasher::new();
    h.update(map.as_slice());
    Ok(FileRecord {
        name: name.to_string(),
        bytes: map.as_slice().len() as u64,
        crc32: h.finalize(),
    })
}

impl Journal {
    /// The journal of `dir`; empty when missing or unreadable (then nothing
    /// is reused).
    pub fn load(dir: &Path) -> Journal {
        std::fs::read_to_string(dir.join(JOURNAL))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default()
    }

    /// The record of `stage` when its key is `key` and its files are intact.
    pub fn valid(&self, dir: &Path, stage: &str, key: &str) -> Option<&StageRecord> {
        let r = self.stages.get(stage)?;
        if r.key != key {
            return None;
        }
        for f in &r.files {
            match file_record(dir, &f.name) {
                Ok(now) if now == *f => {}
                _ => return None,
            }
        }
        Some(r)
    }

    /// Records `stage` as complete (after its files are in place).
    pub fn record(
        &mut self,
        dir: &Path,
        stage: &str,
        key: &str,
        files: &[&str],
        report: serde_json::Value,
    ) -> Result<()> {
        self.record_known(dir, stage, key, files, &[], report)
    }

    /// [`Journal::record`], taking the records of `known` files (their
    /// writers checksummed them on the way out) instead of reading them
    /// again; a known file whose size has changed since is read.
    pub fn record_known(
        &mut self,
        dir: &Path,
        stage: &str,
        key: &str,
        files: &[&str],
        known: &[FileRecord],
        report: serde_json::Value,
    ) -> Result<()> {
        let files = files
            .iter()
            .map(|f| {
                let size = || std::fs::metadata(dir.join(f)).map(|m| m.len()).ok();
                match known.iter().find(|k| k.name == *f) {
                    Some(k) if Some(k.bytes) == size() => Ok(k.clone()),
                    _ => file_record(dir, f),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        self.stages.insert(
            stage.to_string(),
            StageRecord {
                key: key.to_string(),
                files,
                report,
            },
        );
        write_json(&dir.join(JOURNAL), self)
    }

    /// Forgets `stage` (its files are about to be rewritten).
    pub fn forget(&mut self, dir: &Path, stage: &str) -> Result<()> {
        if self.stages.remove(stage).is_some() {
            write_json(&dir.join(JOURNAL), self)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SeqWriter;

    #[test]
    fn a_writers_record_is_the_files_and_stale_ones_are_read_again() {
        let dir = std::env::temp_dir().join(format!("clipcov-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = SeqWriter::create(&dir.join("a.bin")).unwrap();
        w.write(&[1.5f32, -2.0, 3.25]).unwrap();
        w.write(&[7u64; 1000]).unwrap();
        let written = w.finish().unwrap();
        let read = file_record(&dir, "a.bin").unwrap();
        assert_eq!(written, read);
        assert_eq!(read.bytes, 12 + 8000);

        // A known record is taken as is; one whose size no longer matches
        // the file is replaced by a fresh read.
        let recorded = |known: FileRecord| {
            let mut j = Journal::default();
            j.record_known(
                &dir,
                "s",
                "k",
                &["a.bin"],
                &[known],
                serde_json::Value::Null,
            )
            .unwrap();
            j.stages["s"].files.clone()
        };
        let fake = FileRecord {
            crc32: read.crc32 ^ 1,
            ..read.clone()
        };
        assert_eq!(recorded(fake.clone()), vec![fake]);
        let stale = FileRecord {
            bytes: 1,
            ..read.clone()
        };
        assert_eq!(recorded(stale), vec![read]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
