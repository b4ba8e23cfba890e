//! File formats clipcov reads: Parquet and npy shards, class prompts,
//! targets and metadata columns, through the one guarded Parquet read path
//! ([`canonical::batches`]). Never imports the store, the stages or a job's
//! configuration.

pub mod canonical;
pub mod embedding;
pub mod layout;
pub mod metadata;
pub mod npy;
pub mod npz;
pub mod parquet_write;
pub mod prompts;
pub mod targets;
