//! Arbitrary bytes as a class prompts file: an error or prompts, never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!(
        "clipcov-fuzz-prompts-{}.parquet",
        std::process::id()
    ));
    std::fs::write(&path, data).unwrap();
    let _ = clipcov::formats::prompts::read_prompts(&path);
});
