//! Publishing a run's outputs as one set.
//!
//! Writers put every output under a staging folder, `OUT/.staging-PID/`,
//! at its path relative to `OUT` (each file itself written atomically).
//! [`OutputSet::commit`] then moves the earlier run's files of the same
//! names aside (manifests first), renames the staged files into place
//! (manifests last, `OUT/manifest.json` very last) and deletes what it
//! moved aside. If any rename fails it undoes the renames already made and
//! puts the earlier files back, so after any failure `OUT` holds the
//! earlier run's complete set, or nothing of this run. A run that fails
//! before the commit drops the set, which removes the staging folder.

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// Name prefix of staging folders (a dead run's are removed by
/// [`crate::io::outdir::remove_stale_temporaries`]).
pub const STAGING_PREFIX: &str = ".staging-";

/// The outputs one run is about to publish into `OUT`.
#[derive(Debug)]
pub struct OutputSet {
    out: PathBuf,
    dir: PathBuf,
    /// Files (relative to `OUT`) an earlier run may have left that this
    /// run replaces with nothing.
    stale: Vec<PathBuf>,
    committed: bool,
}

impl OutputSet {
    /// A new, empty staging folder in `out`.
    pub fn new(out: &Path) -> Result<OutputSet> {
        let dir = out.join(format!("{STAGING_PREFIX}{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).at_path(&dir)?;
        }
        std::fs::create_dir_all(&dir).at_path(&dir)?;
        Ok(OutputSet {
            out: out.to_path_buf(),
            dir,
            stale: Vec::new(),
            committed: false,
        })
    }

    /// The folder writers write into, in place of `OUT`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes `OUT/rel` at the commit unless this run staged it.
    pub fn replace_with_nothing(&mut self, rel: impl Into<PathBuf>) {
        self.stale.push(rel.into());
    }

    /// Every staged file, relative to the staging folder, in the order of
    /// publication: other files first, then manifests, deepest first, so
    /// `manifest.json` of `OUT` comes last.
    fn staged(&self) -> Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        let mut stack = vec![self.dir.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).at_path(&d)? {
                let e = e.at_path(&d)?;
                let p = e.path();
                if e.file_type().at_path(&p)?.is_dir() {
                    stack.push(p);
                } else {
                    files.push(p.strip_prefix(&self.dir).unwrap_or(&p).to_path_buf());
                }
            }
        }
        let key = |p: &PathBuf| {
            let manifest = p.file_name().is_some_and(|n| n == "manifest.json");
            (
                manifest,
                std::cmp::Reverse(p.components().count()),
                p.clone(),
            )
        };
        files.sort_by_key(key);
        Ok(files)
    }

    /// Publishes the staged files (see the module documentation); the
    /// files published, relative to `OUT`.
    pub fn commit(mut self) -> Result<Vec<PathBuf>> {
        let files = self.staged()?;
        let mut journal = Journal::default();
        let result = self.swap(&files, &mut journal);
        match result {
            Ok(()) => {
                for (_, backup) in &journal.moved_aside {
                    let _ = std::fs::remove_file(backup);
                }
                self.committed = true;
                let _ = std::fs::remove_dir_all(&self.dir);
                Ok(files)
            }
            Err(e) => {
                journal.undo();
                Err(e)
            }
        }
    }

    fn swap(&self, files: &[PathBuf], journal: &mut Journal) -> Result<()> {
        // Earlier files of the same names go aside, manifests first, so no
        // manifest is ever beside files it does not describe.
        let mut aside: Vec<&PathBuf> = files.iter().rev().collect();
        aside.extend(self.stale.iter().filter(|s| !files.contains(s)));
        for rel in aside {
            let target = self.out.join(rel);
            if std::fs::symlink_metadata(&target).is_ok() {
                let backup = backup_path(&target);
                std::fs::rename(&target, &backup).at_path(&target)?;
                journal.moved_aside.push((target, backup));
            }
        }
        for rel in files {
            let target = self.out.join(rel);
            if let Some(parent) = target.parent() {
                if !parent.exists() {
                    std::fs::create_dir_all(parent).at_path(parent)?;
                    journal.created_dirs.push(parent.to_path_buf());
                }
            }
            failpoint(rel)?;
            std::fs::rename(self.dir.join(rel), &target).at_path(&target)?;
            journal.placed.push(target);
        }
        Ok(())
    }
}

impl Drop for OutputSet {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// What a commit did so far, to undo it.
#[derive(Default)]
struct Journal {
    moved_aside: Vec<(PathBuf, PathBuf)>,
    placed: Vec<PathBuf>,
    created_dirs: Vec<PathBuf>,
}

impl Journal {
    fn undo(&self) {
        for p in self.placed.iter().rev() {
            let _ = std::fs::remove_file(p);
        }
        for (target, backup) in self.moved_aside.iter().rev() {
            let _ = std::fs::rename(backup, target);
        }
        for d in self.created_dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// `dir/.name.old-PID`: where an earlier run's file waits during a commit.
fn backup_path(p: &Path) -> PathBuf {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    p.with_file_name(format!(".{name}.old-{}", std::process::id()))
}

/// The failpoint of the tests: `CLIPCOV_FAIL_PUBLISH=<rel>` makes the
/// rename that publishes `rel` (relative to `OUT`) fail, as a full or
/// broken disk could.
fn failpoint(rel: &Path) -> Result<()> {
    match std::env::var_os("CLIPCOV_FAIL_PUBLISH") {
        Some(v) if Path::new(&v) == rel => Err(Error::io(
            rel,
            std::io::Error::other("failpoint CLIPCOV_FAIL_PUBLISH"),
        )),
        _ => Ok(()),
    }
}
