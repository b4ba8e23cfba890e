//! clipcov: picks the training subset of an image-caption dataset for
//! CLIP-style pretraining by the ClipCov criterion (Joshi et al., AISTATS
//! 2024), streaming and out of core.
//!
//! ```text
//! shards ──ingest──▶ raw store ──classes──▶ class-sorted store ──score──▶ terms
//!        (decode once,          (zero-shot or         (easy, cross, label,
//!         validate, normalise)   k-means; sort)        between; GEMM tiles)
//!   terms ──select──▶ picks ──emit──▶ subset.parquet / .csv, manifest.json
//!         (per-class greedy,
//!          heap merge)
//! ```
//!
//! Where the algorithm (`docs/algorithm.md`) lives in the code:
//! section 1 in [`classes`], section 2 in [`score`], section 3 in [`select`].

pub mod bench;
pub mod classes;
pub mod compare;
pub mod emit;
pub mod error;
pub mod eval;
pub mod formats;
pub mod ingest;
pub mod interrupt;
pub mod kernels;
pub mod kmeans;
pub mod lock;
pub mod lse_bench;
pub mod memory;
pub mod methods;
pub mod outdir;
pub mod pipeline;
pub mod pipeline_file;
pub mod prefilter;
pub mod progress;
pub mod remote;
pub mod report;
pub mod resume;
pub mod rng;
pub mod score;
pub mod select;
pub mod select_args;
pub mod store;
pub mod synth;
pub mod train_csv;

pub use error::{Error, Result};
