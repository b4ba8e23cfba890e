//! File formats: what clipcov reads (Parquet shards, class prompts) and
//! writes (subsets, manifests), and the atomic-write discipline for outputs.

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
