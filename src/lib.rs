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
//! section 1 in [`stages::classes`], section 2 in [`stages::score`], section 3
//! in [`stages::select`].

// Layers, each importing only the ones above it in this list (checked by
// tests/layers.rs; ARCHITECTURE.md explains them).
pub mod clock;
pub mod error;
pub mod ids;
pub mod progress;
pub mod rng;

pub mod kernels;

pub mod io;

pub mod formats;

pub mod memory;
pub mod store;

pub mod stages;

pub mod methods;
pub mod synth;

pub mod eval;

pub mod output;

pub mod jobs;

pub mod cli;

pub use error::{Error, Result};
