//! The shell every command that writes `OUT` runs its job in: the `OUT`
//! lock, a thread pool of its own, cleanup of a failed run's staged stores,
//! the upload of the results when `--out` is a URL, and the stage timer.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::io::lock::OutLock;
use crate::output::emit::StageTiming;

/// The staged store of a run's main data, under `OUT`.
pub fn store_dir(out: &Path) -> PathBuf {
    out.join("store")
}

/// The staged store of c_rho's learner data, under `OUT`.
pub fn learner_store(out: &Path) -> PathBuf {
    out.join("learner-store")
}

/// A rayon pool of `threads` threads.
pub fn thread_pool(threads: usize) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::Internal(e.to_string()))
}

/// Runs `job` under the lock of `out`, in a pool of `threads` threads. A
/// failed job leaves no staged store that could be mistaken for complete;
/// a finished one is uploaded to `publish_to` when given. Returns the job's
/// value and the URLs written.
pub fn run_job<T: Send>(
    out: &Path,
    threads: usize,
    publish_to: Option<&Path>,
    job: impl FnOnce() -> Result<T> + Send,
) -> Result<(T, Vec<String>)> {
    let pool = thread_pool(threads)?;
    let _lock = OutLock::acquire(out)?;
    let value = pool.install(|| {
        let result = job();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(store_dir(out));
            let _ = std::fs::remove_dir_all(learner_store(out));
        }
        result
    })?;
    let published = match publish_to {
        Some(url) => crate::output::publish::publish(out, url)?,
        None => Vec::new(),
    };
    Ok((value, published))
}

/// Prints where [`run_job`] uploaded the results.
pub fn print_published(publish_to: Option<&Path>, urls: &[String]) {
    if let Some(url) = publish_to {
        println!("  uploaded {} files to {}", urls.len(), url.display());
    }
}

/// Runs stage `name` of `rows` rows and `bytes` read: its progress bar or
/// events, and its timing appended to `timings`.
pub fn stage<T>(
    timings: &mut Vec<StageTiming>,
    name: &str,
    rows: u64,
    bytes: u64,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let t = Instant::now();
    let p = crate::progress::start(name, rows);
    let v = match f() {
        Ok(v) => v,
        Err(e) => {
            p.fail(&e);
            return Err(e);
        }
    };
    p.finish();
    let s = t.elapsed().as_secs_f64();
    timings.push(StageTiming {
        stage: name.to_string(),
        seconds: s,
        rows,
        rows_per_second: if s > 0.0 { rows as f64 / s } else { 0.0 },
        bytes_read: bytes,
        gb_per_second: if s > 0.0 { bytes as f64 / s / 1e9 } else { 0.0 },
        kernels: None,
        refresh: None,
        ingest: None,
    });
    Ok(v)
}
