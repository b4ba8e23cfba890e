//! One error type for the whole tool, with the exit status each kind maps to.
//!
//! Variants are named after who must act: the user (`Usage`, `MemoryLimit`),
//! the data (`Data`), the environment (`Io`, `Busy`), or us (`Internal`). Every
//! message is one line a person can act on; the CLI prints it as
//! `clipcov: <message>` and exits with [`Error::exit_code`].

use std::path::{Path, PathBuf};

/// Exit status for usage errors (bad flags, bad option values).
pub const EXIT_USAGE: i32 = 2;
/// Exit status for bad input data (sysexits EX_DATAERR).
pub const EXIT_DATA: i32 = 65;
/// Exit status for I/O failures (sysexits EX_IOERR).
pub const EXIT_IO: i32 = 74;
/// Exit status when another run holds the output folder (EX_TEMPFAIL: try
/// again later).
pub const EXIT_BUSY: i32 = 75;
/// Exit status for a bug in clipcov (sysexits EX_SOFTWARE).
pub const EXIT_INTERNAL: i32 = 70;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line or a configuration value is wrong.
    #[error("{0}")]
    Usage(String),

    /// A value in a data file is wrong: names the file, row and column.
    #[error("{}", data_message(path, *row, column.as_deref(), problem, hint.as_deref()))]
    Data {
        path: PathBuf,
        row: Option<u64>,
        column: Option<String>,
        problem: String,
        hint: Option<String>,
    },

    /// Reading or writing a file failed.
    #[error("{}: {source}{}", path.display(), io_hint(source))]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A memory budget too small for the smallest workable buffers.
    #[error("memory limit of {limit} bytes is too small for {consumer} (needs at least {needed} bytes); raise --memory-limit")]
    MemoryLimit {
        consumer: String,
        needed: u64,
        limit: u64,
    },

    /// Another run holds the output folder.
    #[error("{0}")]
    Busy(String),

    /// A bug in clipcov.
    #[error("internal error: {0} (this is a bug in clipcov; please report it)")]
    Internal(String),
}

fn data_message(
    path: &Path,
    row: Option<u64>,
    column: Option<&str>,
    problem: &str,
    hint: Option<&str>,
) -> String {
    let mut s = path.display().to_string();
    if let Some(r) = row {
        s.push_str(&format!(": row {r}"));
    }
    if let Some(c) = column {
        s.push_str(&format!(", column '{c}'"));
    }
    s.push_str(": ");
    s.push_str(problem);
    if let Some(h) = hint {
        s.push_str("; ");
        s.push_str(h);
    }
    s
}

fn io_hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(28) => " (the disk is full: free space or choose another --out)",
        _ => "",
    }
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => EXIT_USAGE,
            Error::Data { .. } => EXIT_DATA,
            Error::Io { .. } => EXIT_IO,
            Error::MemoryLimit { .. } => EXIT_USAGE,
            Error::Busy(_) => EXIT_BUSY,
            Error::Internal(_) => EXIT_INTERNAL,
        }
    }

    /// A data error about a whole file (no row, no column).
    pub fn file(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        Error::Data {
            path: path.into(),
            row: None,
            column: None,
            problem: problem.into(),
            hint: None,
        }
    }

    /// A data error at one row and column of a file.
    pub fn at(
        path: impl Into<PathBuf>,
        row: u64,
        column: &str,
        problem: impl Into<String>,
    ) -> Self {
        Error::Data {
            path: path.into(),
            row: Some(row),
            column: Some(column.to_string()),
            problem: problem.into(),
            hint: None,
        }
    }

    /// A data error about one column of a file (schema problems).
    pub fn column(path: impl Into<PathBuf>, column: &str, problem: impl Into<String>) -> Self {
        Error::Data {
            path: path.into(),
            row: None,
            column: Some(column.to_string()),
            problem: problem.into(),
            hint: None,
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Adds a `hint` to a data error; other kinds are returned unchanged.
    pub fn with_hint(mut self, text: impl Into<String>) -> Self {
        if let Error::Data { hint, .. } = &mut self {
            *hint = Some(text.into());
        }
        self
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps an I/O result with the path it concerns.
pub trait IoContext<T> {
    fn at_path(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at_path(self, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
