//! The command line: pipeline files turned into flags.

pub mod pipeline_file;
