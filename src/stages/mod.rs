//! The stages of a ClipCov run, in order: prefilter (`--where`), ingest
//! (decode, validate, normalise, bucket by class into the store), classes
//! (the class-sorted order), score (the four terms), select (the greedy
//! and the heap merge).

pub mod classes;
pub mod ingest;
pub mod prefilter;
pub mod score;
pub mod select;
