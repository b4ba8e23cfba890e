//! Atomic file writes: a reader never observes a partially written file.
//!
//! Data goes to a temporary file in the same folder as the target (a rename
//! across file systems would not be atomic), is synced, then renamed over
//! the final name.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

/// The temporary name used while `path` is being written.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `path` through `body`, atomically.
pub fn atomic_write<T>(
    path: &Path,
    body: impl FnOnce(&mut BufWriter<File>) -> Result<T>,
) -> Result<T> {
    let tmp = temp_path(path);
    let result = (|| {
        let file = File::create(&tmp).at_path(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let value = body(&mut w)?;
        w.flush().at_path(&tmp)?;
        let file = w.into_inner().map_err(|e| e.into_error()).at_path(&tmp)?;
        file.sync_data().at_path(&tmp)?;
        Ok(value)
    })();
    match result {
        Ok(value) => {
            fs::rename(&tmp, path).at_path(path)?;
            Ok(value)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn failed_write_leaves_nothing() {
        let dir = std::env::temp_dir().join(format!("clipcov-atomic-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let target = dir.join("out.txt");
        let r: Result<()> = atomic_write(&target, |w| {
            w.write_all(b"half").unwrap();
            Err(Error::Internal("boom".into()))
        });
        assert!(r.is_err());
        assert!(!target.exists());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        atomic_write(&target, |w| w.write_all(b"whole").at_path(&target)).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"whole");
        fs::remove_dir_all(&dir).unwrap();
    }
}
