//! What a run writes: the subset files, the manifest, the report, a
//! baseline's files, `train.csv`, and the output set that publishes them
//! into `OUT` as one.

pub mod emit;
pub mod method_files;
pub mod publish;
pub mod report;
pub mod subset;
pub mod train_csv;
