//! Arbitrary bytes as a Parquet shard: ingest must return an error or a
//! store, never panic or crash.
#![no_main]

use libfuzzer_sys::fuzz_target;

use clipcov::formats::dataset::{discover, Columns};
use clipcov::stages::ingest::{ingest, BadRowPolicy, DuplicatePolicy, IngestOptions};

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("clipcov-fuzz-ingest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::create_dir_all(dir.join("store")).unwrap();
    std::fs::write(dir.join("data/x.parquet"), data).unwrap();
    let files = discover(&dir.join("data")).unwrap();
    let opts = IngestOptions {
        columns: Columns::default(),
        on_bad_row: BadRowPolicy::Skip,
        on_duplicate: DuplicatePolicy::KeepFirst,
        batch_rows: 64,
        expected_d: None,
        classify: None,
        chunk_rows: 16,
        filter: None,
    };
    let _ = ingest(&files, &dir.join("store"), &opts);
});
