//! `clipcov._clipcov`: the Python bindings. Every function runs the same
//! Rust code as the command line; Arrow data crosses through the Arrow C
//! Data Interface (pyarrow <-> arrow-rs) without a copy.
//!
//! All uses of the main crate's modules are in this file, in the `use`
//! block below, so a move of a module changes one line here.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use clipcov::error::Error;
use clipcov::pipeline;
use clipcov::progress::{self, LogFormat};
use clipcov::select_args;

create_exception!(
    _clipcov,
    ClipcovError,
    PyException,
    "A clipcov error: the command line's one-line message; `exit_code` is its exit status."
);

/// The Python exception of a clipcov error, with the command line's
/// message and its exit status in `exit_code`.
fn py_err(py: Python<'_>, e: &Error) -> PyErr {
    let err = ClipcovError::new_err(e.to_string());
    let _ = err.value(py).setattr("exit_code", e.exit_code());
    err
}

/// Runs `f` without the GIL; a panic becomes an internal error, so no
/// panic crosses into Python.
fn run<T: Send>(py: Python<'_>, f: impl FnOnce() -> clipcov::Result<T> + Send) -> PyResult<T> {
    let r = py.detach(|| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(Error::Internal(format!("panic: {what}")))
        })
    });
    r.map_err(|e| py_err(py, &e))
}

/// `clipcov select` with the flags `args` (without the program name):
/// the same parsing, validation and job as the command line. Returns the
/// run's manifest as JSON text.
#[pyfunction]
#[pyo3(signature = (args, quiet = true, log_format = "text"))]
fn select(py: Python<'_>, args: Vec<String>, quiet: bool, log_format: &str) -> PyResult<String> {
    let format = match log_format {
        "json" => LogFormat::Json,
        _ => LogFormat::Text,
    };
    progress::init(format, quiet);
    run(py, move || {
        let cfg = select_args::select_config(&args)?;
        let summary = pipeline::run_select(&cfg)?;
        serde_json::to_string(&summary.manifest).map_err(|e| Error::Internal(e.to_string()))
    })
}

#[pymodule]
fn _clipcov(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("ClipcovError", m.py().get_type::<ClipcovError>())?;
    m.add_function(wrap_pyfunction!(select, m)?)?;
    Ok(())
}
