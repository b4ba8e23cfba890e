//! File formats clipcov reads: Parquet and npy shards, class prompts,
//! targets and metadata columns, through the one guarded Parquet read path
//! ([`parquet_read::batches`]). Never imports the store, the stages or a job's
//! configuration.

pub mod dataset;
pub mod embedding;
pub mod metadata;
pub mod npy;
pub mod npz;
pub mod parquet_read;
pub mod parquet_write;
pub mod prompts;
pub mod shards;
pub mod targets;
