//! The commands as library functions: each runs its stages in order,
//! under the `OUT` lock and in its own thread pool, and publishes its
//! outputs.

pub mod append_bench;
pub mod baseline;
pub mod bench;
pub mod compare;
pub mod eval;
pub mod lse_bench;
pub mod pipeline;
pub mod shell;
