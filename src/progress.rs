//! Progress and logs: a progress bar per long stage (rows, rate, ETA) on a
//! terminal, one plain line per stage start and end when stderr is not a
//! terminal (a log file, a scheduler), one JSON object per stage event
//! (`--log-format json`), or nothing (`--quiet`).
//!
//! The settings are process-wide: a stage starts with [`start`], code deep
//! in a stage reports rows with [`advance`] without knowing which stage it
//! is in, and the stage ends with [`Stage::finish`].

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How stage events are reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Progress bars on a terminal, one plain line per stage start and end
    /// otherwise.
    #[default]
    Text,
    /// One JSON object per stage event on stderr.
    Json,
}

static JSON: AtomicBool = AtomicBool::new(false);
static QUIET: AtomicBool = AtomicBool::new(false);
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Sets the log format and quietness for the rest of the process.
pub fn init(format: LogFormat, quiet: bool) {
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
    QUIET.store(quiet, Ordering::Relaxed);
}

/// `--quiet`: no progress, no events, no summaries on stdout.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// `--log-format json` (and not quiet).
pub fn json() -> bool {
    JSON.load(Ordering::Relaxed) && !quiet()
}

/// Prints a warning on stderr (a `warning` event in JSON mode), unless
/// `--quiet`.
pub fn warn(message: &str) {
    if json() {
        event("warning", serde_json::json!({ "message": message }));
    } else if !quiet() {
        eprintln!("clipcov: warning: {message}");
    }
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Writes one JSON event line to stderr (in JSON mode).
pub fn event(kind: &str, fields: serde_json::Value) {
    if !json() {
        return;
    }
    let mut obj = serde_json::Map::new();
    obj.insert("event".into(), kind.into());
    obj.insert("time_unix".into(), now_unix().into());
    if let serde_json::Value::Object(f) = fields {
        obj.extend(f);
    }
    let line = serde_json::Value::Object(obj).to_string();
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

/// A running stage.
pub struct Stage {
    name: String,
    rows: u64,
    started: Instant,
    bar: Option<ProgressBar>,
}

/// Text mode off a terminal: stage starts and ends as plain lines.
fn plain_lines() -> bool {
    !quiet() && !json() && !std::io::stderr().is_terminal()
}

/// Writes one plain line to stderr.
fn plain(line: std::fmt::Arguments) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

/// Reports the start of stage `name` over `rows` rows: a `stage_start`
/// event in JSON mode, a plain line off a terminal in text mode.
pub fn stage_start(name: &str, rows: u64) {
    event(
        "stage_start",
        serde_json::json!({ "stage": name, "rows": rows }),
    );
    if plain_lines() {
        plain(format_args!("stage {name} started: {rows} rows"));
    }
}

/// Starts stage `name` over `rows` rows: a bar on a terminal (text mode),
/// a plain line off one, a `stage_start` event in JSON mode.
pub fn start(name: &str, rows: u64) -> Stage {
    stage_start(name, rows);
    let show = !quiet() && !json() && std::io::stderr().is_terminal();
    let bar = show.then(|| {
        let b = ProgressBar::with_draw_target(Some(rows), ProgressDrawTarget::stderr());
        b.set_style(
            ProgressStyle::with_template(
                "{prefix:>8} [{bar:30}] {human_pos}/{human_len} rows  {rate}  ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key(
                "rate",
                |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0} rows/s", s.per_sec());
                },
            )
            .progress_chars("=> "),
        );
        b.set_prefix(name.to_string());
        b
    });
    if let Ok(mut a) = ACTIVE.lock() {
        *a = bar.clone();
    }
    Stage {
        name: name.to_string(),
        rows,
        started: Instant::now(),
        bar,
    }
}

/// Reports `rows` more rows done in the running stage.
pub fn advance(rows: u64) {
    if let Ok(a) = ACTIVE.lock() {
        if let Some(b) = a.as_ref() {
            b.inc(rows);
        }
    }
}

impl Stage {
    /// Ends the stage: clears its bar, writes a `stage_end` event.
    pub fn finish(self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        if let Ok(mut a) = ACTIVE.lock() {
            *a = None;
        }
        let s = self.started.elapsed().as_secs_f64();
        stage_end(&self.name, s, self.rows);
    }
}

impl Stage {
    /// Ends a stage that failed: clears its bar, writes `stage_failed`.
    pub fn fail(self, error: &dyn std::fmt::Display) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        if let Ok(mut a) = ACTIVE.lock() {
            *a = None;
        }
        event(
            "stage_failed",
            serde_json::json!({ "stage": self.name, "error": error.to_string() }),
        );
    }
}

/// The end of a stage (timed by the caller): a `stage_end` event in JSON
/// mode, a plain line with the rate off a terminal in text mode.
pub fn stage_end(name: &str, seconds: f64, rows: u64) {
    if plain_lines() {
        let rate = if seconds > 0.0 {
            rows as f64 / seconds
        } else {
            0.0
        };
        plain(format_args!(
            "stage {name} done: {rows} rows in {seconds:.2} s, {rate:.0} rows/s"
        ));
    }
    event(
        "stage_end",
        serde_json::json!({
            "stage": name,
            "seconds": seconds,
            "rows": rows,
            "rows_per_second": if seconds > 0.0 { rows as f64 / seconds } else { 0.0 },
        }),
    );
}
