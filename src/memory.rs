//! Memory: the `--memory-limit` budget, and measuring what a run used.
//!
//! Memory-mapped store pages count in RSS while paged in, but they are
//! reclaimable page cache; the limit applies to anonymous memory (heap),
//! which is what `RssAnon` in `/proc/self/status` reports.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};

/// Parses sizes such as `4GiB`, `512MiB`, `2G`, `1000000`.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| {
        Error::Usage(format!(
            "invalid size '{s}': expected e.g. 4GiB, 512MiB or a byte count"
        ))
    })?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => {
            return Err(Error::Usage(format!(
                "invalid size unit in '{s}': use B, KiB, MiB, GiB or TiB"
            )))
        }
    };
    Ok((value * mult as f64) as u64)
}

/// Reads a `kB` field of `/proc/self/status`, in bytes.
fn status_field(name: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Current anonymous RSS in bytes (0 where /proc is unavailable).
pub fn rss_anon() -> u64 {
    status_field("RssAnon:").unwrap_or(0)
}

/// Peak memory of a run.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct MemoryReport {
    /// Peak resident set (`VmHWM`), including mapped file pages.
    pub peak_rss_bytes: u64,
    /// Peak anonymous resident memory (heap), sampled every 5 ms.
    pub peak_anon_rss_bytes: u64,
}

/// Samples `RssAnon` in a background thread until [`RssMonitor::finish`].
pub struct RssMonitor {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl RssMonitor {
    pub fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_anon()));
        let (s, p) = (stop.clone(), peak.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_anon(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        RssMonitor {
            stop,
            peak,
            handle: Some(handle),
        }
    }

    /// The report so far (the monitor keeps running).
    pub fn report(&self) -> MemoryReport {
        self.peak.fetch_max(rss_anon(), Ordering::Relaxed);
        MemoryReport {
            peak_rss_bytes: status_field("VmHWM:").unwrap_or(0),
            peak_anon_rss_bytes: self.peak.load(Ordering::Relaxed),
        }
    }
}

impl Drop for RssMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Sizes of the large buffers, derived from the memory limit.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Plan {
    pub limit_bytes: u64,
    pub tile_rows: usize,
    pub batch_rows: usize,
}

impl Plan {
    /// Rows per chunk of ingest's class buckets: all `classes` buckets
    /// together may hold an eighth of the limit. Longer chunks make longer
    /// sequential runs of a class in the store.
    pub fn chunk_rows(&self, classes: usize, d: usize) -> usize {
        let row_bytes = (2 * d * 4 + 64) as u64;
        let rows = self.limit_bytes / 8 / (classes.max(1) as u64 * row_bytes);
        rows.clamp(CHUNK_ROWS_MIN, CHUNK_ROWS_MAX) as usize
    }
}

/// Chunk length bounds: below 16 rows a class's runs get too short to read
/// sequentially; above 4096 nothing is gained.
const CHUNK_ROWS_MIN: u64 = 16;
const CHUNK_ROWS_MAX: u64 = 4096;

/// Smallest tile side clipcov will use.
const TILE_ROWS_MIN: usize = 64;
/// Largest tile side: beyond it GEMM gains nothing and caches suffer.
const TILE_ROWS_MAX: usize = 1024;

/// Plans buffer sizes for `rows` rows of dimension `d` on `threads` threads.
///
/// Per-row state (ids' hashes, labels, scores: about 40 bytes a row) must fit
/// in half the limit; tiles (two stripes and a similarity tile per thread)
/// and decode batches share the rest.
pub fn plan(limit: u64, rows: u64, d: usize, threads: usize) -> Result<Plan> {
    let per_row = 40 * rows;
    if per_row > limit / 2 {
        return Err(Error::MemoryLimit {
            consumer: format!("per-row selection state of {rows} rows"),
            needed: per_row * 2,
            limit,
        });
    }
    let spare = (limit - per_row) / 2;
    let threads = threads.max(1) as u64;
    let mut tile = TILE_ROWS_MAX;
    let tile_bytes = |t: usize| threads * (2 * t * d * 4 + t * t * 4 + t * 8 * 2) as u64;
    while tile > TILE_ROWS_MIN && tile_bytes(tile) > spare / 2 {
        tile /= 2;
    }
    if tile_bytes(tile) > spare {
        return Err(Error::MemoryLimit {
            consumer: "similarity tiles".into(),
            needed: tile_bytes(tile) * 2 + per_row * 2,
            limit,
        });
    }
    // Decode batches: Arrow arrays of both embeddings plus our copies.
    let row_bytes = (4 * d * 4) as u64;
    let batch_rows = ((spare / 4) / row_bytes).clamp(256, 8192) as usize;
    Ok(Plan {
        limit_bytes: limit,
        tile_rows: tile,
        batch_rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert!(parse_size("4 parsecs").is_err());
    }

    #[test]
    fn small_limits_shrink_tiles() {
        let big = plan(8 << 30, 1_000_000, 512, 2).unwrap();
        let small = plan(100 << 20, 1_000_000, 512, 2).unwrap();
        assert_eq!(big.tile_rows, TILE_ROWS_MAX);
        assert!(small.tile_rows < big.tile_rows);
        assert!(plan(1 << 20, 1_000_000, 512, 2).is_err());
    }
}
