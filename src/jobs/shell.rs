//! The shell every command that writes `OUT` runs its job in: the `OUT`
//! lock, a thread pool of its own, cleanup of a failed run's staged stores,
//! and the upload of the results when `--out` is a URL.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::lock::OutLock;

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
