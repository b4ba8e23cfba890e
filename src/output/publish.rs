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
//!
//! With a URL `--out`, [`publish`] then uploads the results, the manifest
//! last (with each output's URL added).

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::io::remote::upload;
use crate::io::written::write_json;

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

/// Folders and files of a local output folder that are working state, not
/// results: never uploaded.
const NOT_PUBLISHED: [&str; 4] = ["store", "learner-store", "remote-cache", "work"];

/// Uploads the results in the local folder `local` under the prefix `url`:
/// every file but the working state (the staged store, caches, the lock,
/// temporary files), `manifest.json` last, after adding to it the URL of
/// each output. Returns the URLs written.
///
/// # Errors
/// An I/O error naming the file or URL that failed; objects uploaded
/// before it stay, but without the manifest the run does not look done.
pub fn publish(local: &Path, url: &Path) -> Result<Vec<String>> {
    let mut files = Vec::new();
    collect(local, local, &mut files)?;
    // The files that say a run is done go last.
    files.sort_by_key(|r| (LAST.iter().position(|l| l == r), r.clone()));
    let base = url.to_string_lossy().trim_end_matches('/').to_string();
    let target = |rel: &str| PathBuf::from(format!("{base}/{rel}"));
    let mut done = Vec::new();
    for rel in &files {
        if rel == "manifest.json" {
            add_urls(&local.join(rel), &base)?;
        }
        upload(&local.join(rel), &target(rel))?;
        done.push(format!("{base}/{rel}"));
    }
    Ok(done)
}

/// Uploaded after every other file, in this order.
const LAST: [&str; 2] = ["compare.json", "manifest.json"];

/// Adds to the manifest `path` the URL of each output and the prefix.
fn add_urls(path: &Path, base: &str) -> Result<()> {
    let text = std::fs::read_to_string(path).at_path(path)?;
    let Ok(mut m) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Ok(());
    };
    if let Some(outputs) = m.get_mut("outputs").and_then(|o| o.as_array_mut()) {
        for o in outputs {
            if let Some(p) = o.get("path").and_then(|p| p.as_str()).map(String::from) {
                o["url"] = format!("{base}/{p}").into();
            }
        }
    }
    m["published_to"] = base.into();
    write_json(path, &m)
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for entry in std::fs::read_dir(dir).at_path(dir)? {
        let entry = entry.at_path(dir)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        // Hidden names are the lock and temporary files.
        if name.starts_with('.') || (dir == root && NOT_PUBLISHED.contains(&name.as_str())) {
            continue;
        }
        if entry.file_type().at_path(&path)?.is_dir() {
            collect(root, &path, out)?;
        } else {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}
