//! One writer per output folder: `OUT/.clipcov.lock`, held with an
//! advisory `flock` for the whole run.
//!
//! The kernel drops the lock when its process dies, however it dies, so a
//! lock left by a killed run is simply taken over; the file itself only
//! records who holds it, for the message a second run prints.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// Held while a run writes to its output folder; released on drop.
#[derive(Debug)]
pub struct OutLock {
    _file: File,
    pub path: PathBuf,
}

impl OutLock {
    /// Takes the lock of `out` (creating the folder), or fails at once with
    /// [`Error::Busy`] naming the process that holds it.
    pub fn acquire(out: &Path) -> Result<OutLock> {
        crate::io::outdir::check_is_folder(out)?;
        std::fs::create_dir_all(out).at_path(out)?;
        let path = out.join(".clipcov.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .at_path(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(Error::Busy(format!(
                    "{}: another clipcov run ({}) is writing to this output folder; wait for it to finish or choose another --out",
                    out.display(),
                    if holder.is_empty() { "pid unknown".to_string() } else { holder.to_string() }
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        file.set_len(0).at_path(&path)?;
        file.seek(SeekFrom::Start(0)).at_path(&path)?;
        writeln!(file, "pid {}", std::process::id()).at_path(&path)?;
        // No other run writes here now: what dead runs left can go.
        crate::io::outdir::remove_stale_temporaries(out);
        Ok(OutLock { _file: file, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_and_lock_is_released_on_drop() {
        let dir = std::env::temp_dir().join(format!("clipcov-lock-{}", std::process::id()));
        let first = OutLock::acquire(&dir).unwrap();
        let err = OutLock::acquire(&dir).unwrap_err();
        assert!(matches!(err, Error::Busy(_)));
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        OutLock::acquire(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
