//! File formats: what clipcov reads (Parquet and npy shards, class prompts,
//! targets, metadata) and writes (subsets, centroids), the one guarded
//! Parquet read path ([`canonical::batches`]), and the atomic-write and
//! publish discipline for outputs.

pub mod atomic;
pub mod canonical;
pub mod embedding;
pub mod layout;
pub mod metadata;
pub mod npy;
pub mod npz;
pub mod prompts;
pub mod publish;
pub mod subset;
pub mod targets;
