//! Input and output plumbing below every format: atomic writes and the
//! record of a written file, object storage, the `OUT` lock, checks on the
//! output folder, and the cleanup of an interrupted run.

pub mod atomic;
pub mod interrupt;
pub mod lock;
pub mod outdir;
pub mod remote;
pub mod written;
