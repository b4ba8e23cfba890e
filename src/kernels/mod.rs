//! Compute kernels: plain functions over slices, no I/O.
//!
//! Every kernel here has a scalar reference in its tests; the stages call
//! them on tiles of the staged store.

pub mod dense;
pub mod isa;
pub mod kmeans;
pub mod lse;
pub mod topk;
