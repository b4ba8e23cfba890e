//! The stages of a ClipCov run, in order: prefilter (`--where`), ingest
//! (decode, validate, normalise, bucket by class into the store), append
//! (a nightly run: new shards join the store), classes (the class-sorted
//! order), score (the four terms; rescore after an append), select (the
//! greedy and the heap merge).

pub mod append;
pub mod classes;
pub mod ingest;
pub mod prefilter;
pub mod rescore;
pub mod score;
pub mod select;
