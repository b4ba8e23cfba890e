//! The store files ingest writes, against a replay of its bucketing: every
//! kept row in canonical order goes to its class's bucket, a bucket holding
//! `--chunk-rows` rows becomes the next chunk of the store, and what the
//! buckets hold at the end follows in class order. The same bytes whatever
//! the thread count.

use crate::util::*;

fn u64s(path: &std::path::Path) -> Vec<u64> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn f32s(path: &std::path::Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// The files ingest writes for a store of string ids.
const STORE_FILES: [&str; 6] = [
    "image.bin",
    "text.bin",
    "scale.bin",
    "row.bin",
    "ids.off",
    "ids.dat",
];

#[test]
fn store_chunks_follow_the_buckets_whatever_the_threads() {
    let dir = Dir::new("ingest-store");
    let (rows, d, chunk) = (2500, 12, 7);
    let data = make_zipf_data(rows, d, 5, 1.0, 21);
    let (data_dir, prompts) = write_data(&dir.path, &data, 3, false);
    let run = |out: &str, threads: &str| {
        let o = dir.join(out);
        clipcov_ok(&[
            "select",
            "--data",
            s(&data_dir),
            "--prompts",
            s(&prompts),
            "--fraction",
            "0.1",
            "--tau",
            "none",
            "--chunk-rows",
            &chunk.to_string(),
            "--threads",
            threads,
            "--out",
            s(&o),
        ]);
        o.join("store")
    };
    let (a, b) = (run("a", "2"), run("b", "1"));
    for f in STORE_FILES {
        assert!(
            std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
            "{f} differs between 2 threads and 1"
        );
    }
    let ingest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("ingest.json")).unwrap()).unwrap();
    let chunks: Vec<(u64, u64)> = ingest["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c[0].as_u64().unwrap(), c[1].as_u64().unwrap()))
        .collect();
    let row_of = u64s(&a.join("row.bin"));
    assert_eq!(row_of.len(), rows, "every row is kept");
    // The class of each file row, from the chunk it is in.
    let mut class_of_row = vec![u64::MAX; rows];
    let mut f = 0;
    for &(k, n) in &chunks {
        for _ in 0..n {
            class_of_row[row_of[f] as usize] = k;
            f += 1;
        }
    }
    assert!(class_of_row.iter().all(|&k| k != u64::MAX));
    // Replay: rows in canonical order into buckets.
    let classes = 1 + *class_of_row.iter().max().unwrap() as usize;
    let mut buckets: Vec<Vec<u64>> = vec![Vec::new(); classes];
    let (mut want_chunks, mut want_rows) = (Vec::new(), Vec::new());
    for (row, &k) in class_of_row.iter().enumerate() {
        let b = &mut buckets[k as usize];
        b.push(row as u64);
        if b.len() == chunk {
            want_chunks.push((k, chunk as u64));
            want_rows.append(b);
        }
    }
    for (k, b) in buckets.iter_mut().enumerate() {
        if !b.is_empty() {
            want_chunks.push((k as u64, b.len() as u64));
            want_rows.append(b);
        }
    }
    assert_eq!(chunks, want_chunks, "chunk sequence");
    assert_eq!(row_of, want_rows, "file rows");
    assert!(chunks.len() > 2 * classes, "classes split into many chunks");
    // Each file row holds its input row, normalised, and its id.
    let (image, text, scale) = (
        f32s(&a.join("image.bin")),
        f32s(&a.join("text.bin")),
        f32s(&a.join("scale.bin")),
    );
    let ends = u64s(&a.join("ids.off"));
    let id_bytes = std::fs::read(a.join("ids.dat")).unwrap();
    for (f, &row) in row_of.iter().enumerate() {
        let row = row as usize;
        for (stored, input, slot) in [(&image, &data.u[row], 0), (&text, &data.v[row], 1)] {
            let norm = input
                .iter()
                .map(|&x| (x as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!((scale[2 * f + slot] as f64 * norm - 1.0).abs() < 1e-6);
            for j in 0..d {
                let want = input[j] as f64 / norm;
                assert!(
                    (stored[f * d + j] as f64 - want).abs() < 1e-6,
                    "file row {f}"
                );
            }
        }
        let id = &id_bytes[ends[f] as usize..ends[f + 1] as usize];
        assert_eq!(id, data.ids[row].as_bytes(), "id of file row {f}");
    }
    // The manifest's split of ingest counts every byte of the store files
    // it wrote.
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(a.parent().unwrap().join("manifest.json")).unwrap(),
    )
    .unwrap();
    let split = manifest["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "ingest")
        .expect("an ingest stage")["ingest"]
        .clone();
    let file_bytes: u64 = STORE_FILES
        .iter()
        .map(|f| std::fs::metadata(a.join(f)).unwrap().len())
        .sum();
    assert_eq!(split["store_bytes"].as_u64().unwrap(), file_bytes);
    let cpu = |k: &str| split[k].as_f64().unwrap();
    for k in [
        "decode_seconds",
        "validate_cpu_seconds",
        "classify_cpu_seconds",
        "bucket_seconds",
        "store_write_seconds",
    ] {
        assert!(cpu(k) >= 0.0, "{k}");
    }
    // The decoder and the workers did real work on 2500 x 12 rows.
    assert!(cpu("decode_seconds") > 0.0 && cpu("validate_cpu_seconds") > 0.0);
    // Not stored: the store's files stay the same bytes from run to run.
    assert!(ingest.get("times").is_none());
}
