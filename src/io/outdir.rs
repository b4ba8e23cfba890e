//! Checks on the folders a run writes to, made before anything is read or
//! written: an output (or work) folder must not lie inside an input folder,
//! where a later run would read the results back as data.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// `p` made absolute with symbolic links resolved, also when its last
/// components do not exist yet (the longest existing prefix is resolved).
pub fn resolved(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    let mut head = abs.as_path();
    let mut tail: Vec<&std::ffi::OsStr> = Vec::new();
    loop {
        if let Ok(c) = head.canonicalize() {
            let mut out = c;
            for t in tail.iter().rev() {
                out.push(t);
            }
            return normalised(&out);
        }
        match (head.parent(), head.file_name()) {
            (Some(parent), Some(name)) => {
                tail.push(name);
                head = parent;
            }
            _ => return normalised(&abs),
        }
    }
}

/// `.` and `..` removed lexically (for the part that does not exist yet).
fn normalised(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Refuses an output folder inside an input folder. `outputs` and `inputs`
/// are `(flag, path)`; URLs and inputs that are not local folders are
/// skipped.
pub fn check_outside_inputs(outputs: &[(&str, &Path)], inputs: &[(&str, &Path)]) -> Result<()> {
    for &(in_flag, input) in inputs {
        if crate::io::remote::is_url(input) || !input.is_dir() {
            continue;
        }
        let input_abs = resolved(input);
        for &(out_flag, out) in outputs {
            if crate::io::remote::is_url(out) {
                continue;
            }
            if resolved(out).starts_with(&input_abs) {
                return Err(Error::Usage(format!(
                    "{out_flag} {} lies inside {in_flag} {}: a later run would read the results as data; choose an {out_flag} folder outside it",
                    out.display(),
                    input.display()
                )));
            }
        }
    }
    Ok(())
}

/// Refuses an `--out` that names something other than a folder.
pub fn check_is_folder(out: &Path) -> Result<()> {
    match std::fs::metadata(out) {
        Ok(m) if !m.is_dir() => Err(Error::Usage(format!(
            "--out {}: is a file; --out must be a folder (it is created if missing)",
            out.display()
        ))),
        _ => Ok(()),
    }
}

/// The process id a temporary name of ours ends with: `.NAME.tmp-PID`,
/// `.NAME.old-PID` (an earlier output set aside during a publish) or
/// `.staging-PID` (a run's unpublished outputs).
fn owner_pid(name: &str) -> Option<i32> {
    if !name.starts_with('.') {
        return None;
    }
    let (head, pid) = name.rsplit_once('-')?;
    let ours = head.ends_with(".tmp") || head.ends_with(".old") || head == ".staging";
    let pid: i32 = pid.parse().ok()?;
    (ours && pid > 0).then_some(pid)
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Removes, anywhere under `out`, the temporaries of clipcov processes
/// that no longer run (an interrupted run's `store/.terms.bin.tmp-PID` is
/// 32 bytes a row). Called with the output folder's lock held. Returns the
/// bytes freed.
pub fn remove_stale_temporaries(out: &Path) -> u64 {
    let me = std::process::id() as i32;
    let mut freed = 0;
    let mut stack = vec![out.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(kind) = e.file_type() else { continue };
            let name = e.file_name().to_string_lossy().into_owned();
            match owner_pid(&name) {
                Some(pid) if pid != me && !alive(pid) => {
                    if kind.is_dir() {
                        freed += tree_bytes(&e.path());
                        let _ = std::fs::remove_dir_all(e.path());
                    } else {
                        freed += e.metadata().map_or(0, |m| m.len());
                        let _ = std::fs::remove_file(e.path());
                    }
                }
                _ if kind.is_dir() => stack.push(e.path()),
                _ => {}
            }
        }
    }
    freed
}

fn tree_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_missing_tails() {
        let tmp = std::env::temp_dir().canonicalize().unwrap();
        let p = tmp.join("clipcov-no-such").join("a").join("..").join("b");
        assert_eq!(resolved(&p), tmp.join("clipcov-no-such").join("b"));
    }

    #[test]
    fn temporaries_are_recognised() {
        assert_eq!(owner_pid(".terms.bin.tmp-123"), Some(123));
        assert_eq!(owner_pid(".subset.csv.old-7"), Some(7));
        assert_eq!(owner_pid(".staging-42"), Some(42));
        assert_eq!(owner_pid("terms.bin.tmp-123"), None);
        assert_eq!(owner_pid(".clipcov.lock"), None);
        assert_eq!(owner_pid(".my-data-2024"), None);
    }
}
