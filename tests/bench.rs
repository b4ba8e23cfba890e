//! `clipcov bench --cross-sample`: a sampled run next to each exact one,
//! its time ratio and Jaccard index checked against the runs' own files.

use std::collections::BTreeSet;

use crate::util::*;

fn ids(path: &std::path::Path) -> BTreeSet<String> {
    read_subset_csv(path).into_iter().map(|r| r.id).collect()
}

fn manifest(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn bench_runs_sampled_cross_next_to_exact() {
    let dir = Dir::new("bench_cross_sample");
    let work = dir.join("work");
    clipcov_ok(&[
        "bench",
        "--rows",
        "3000",
        "--dim",
        "16",
        "--classes",
        "6",
        "--zipf",
        "1.1",
        "--taus",
        "0,none",
        "--fraction",
        "0.2",
        "--cross-sample",
        "64,100000",
        "--work",
        s(&work),
    ]);
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(work.join("bench.json")).unwrap()).unwrap();
    let runs: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["tau"].as_str().unwrap(), r["cross"].as_str().unwrap()))
        .collect();
    // Sampled runs only where tau is a number.
    assert_eq!(
        runs,
        [
            ("0", "exact"),
            ("0", "64"),
            ("0", "100000"),
            ("none", "exact")
        ]
    );
    let exact_dir = work.join("run-3000-tau-0");
    let exact = ids(&exact_dir.join("clipcov/subset.csv"));
    let exact_s = manifest(&exact_dir.join("manifest.json"))["seconds_total"]
        .as_f64()
        .unwrap();
    for (row, m) in rows[1..3].iter().zip(["64", "100000"]) {
        let out = work.join(format!("run-3000-tau-0-sample-{m}"));
        let man = manifest(&out.join("manifest.json"));
        let score = man["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stage"] == "score")
            .unwrap();
        assert_eq!(
            score["kernels"]["cross"],
            format!("sampled({m}, seed 0)"),
            "the bench passes --cross-sample to select"
        );
        let got = ids(&out.join("clipcov/subset.csv"));
        let j = exact.intersection(&got).count() as f64 / exact.union(&got).count() as f64;
        assert!((row["exact_jaccard"].as_f64().unwrap() - j).abs() < 1e-12);
        let ratio = man["seconds_total"].as_f64().unwrap() / exact_s;
        assert!((row["exact_ratio"].as_f64().unwrap() - ratio).abs() < 1e-9 * ratio);
        if m == "64" {
            // A sample of 64 from classes of hundreds of rows changes picks.
            assert!(j < 1.0, "M = 64 gave the exact subset");
        } else {
            // No class is larger than the sample: the exact subset.
            assert_eq!(got, exact);
        }
    }
    assert!(rows[0]["exact_jaccard"].is_null() && rows[3]["exact_jaccard"].is_null());
    let md = std::fs::read_to_string(work.join("bench.md")).unwrap();
    assert!(md.contains("| 3000 | 0 | 64 |"), "{md}");
}

/// `--sampled-only` runs no exact run; `--reuse-data` runs on the dataset
/// the first bench left, without writing it again.
#[test]
fn bench_sampled_only_on_a_reused_dataset() {
    let dir = Dir::new("bench_sampled_only");
    let work = dir.join("work");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "bench",
            "--rows",
            "2000",
            "--dim",
            "16",
            "--classes",
            "4",
            "--taus",
            "0,none",
            "--cross-sample",
            "50",
            "--sampled-only",
            "--work",
            s(&work),
        ];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        let o = clipcov(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(o.status.success(), "{}", error_text(&o));
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(work.join("bench.json")).unwrap())
                .unwrap();
        (rows, String::from_utf8_lossy(&o.stderr).to_string())
    };
    let shard = work.join("data-2000/data/part-00000.parquet");
    let (rows, _) = run(&[]);
    // One sampled run, no exact one, nothing for tau none.
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0]["tau"].as_str(), rows[0]["cross"].as_str()),
        (Some("0"), Some("50"))
    );
    assert!(rows[0]["exact_jaccard"].is_null() && rows[0]["exact_ratio"].is_null());
    assert!(!work.join("run-2000-tau-0").exists());
    let written = std::fs::metadata(&shard).unwrap().modified().unwrap();
    let first = ids(&work.join("run-2000-tau-0-sample-50/clipcov/subset.csv"));

    let (rows, err) = run(&["--reuse-data"]);
    assert!(err.contains("bench: using the dataset in"), "{err}");
    assert_eq!(
        std::fs::metadata(&shard).unwrap().modified().unwrap(),
        written
    );
    assert_eq!(rows.len(), 1);
    assert_eq!(
        ids(&work.join("run-2000-tau-0-sample-50/clipcov/subset.csv")),
        first
    );

    // --cleanup: the dataset and the run's store go, its subset stays.
    let out = work.join("run-2000-tau-0-sample-50");
    assert!(out.join("store").is_dir());
    run(&["--reuse-data", "--cleanup"]);
    assert!(!work.join("data-2000").exists() && !out.join("store").exists());
    assert_eq!(ids(&out.join("clipcov/subset.csv")), first);

    // Without a sample size there is nothing to run.
    let o = clipcov(&[
        "bench",
        "--rows",
        "2000",
        "--sampled-only",
        "--work",
        s(&work),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        error_text(&o).contains("--cross-sample"),
        "{}",
        error_text(&o)
    );
}

#[test]
fn bench_rejects_bad_sample_size() {
    let dir = Dir::new("bench_cross_sample_bad");
    let o = clipcov(&[
        "bench",
        "--rows",
        "1000",
        "--cross-sample",
        "64,x",
        "--work",
        s(&dir.join("work")),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        error_text(&o).contains("--cross-sample"),
        "{}",
        error_text(&o)
    );
}

/// `bench --append`: night two against a full run on the same input, with
/// the runs' own manifests and subsets behind every figure.
#[test]
fn bench_append_measures_night_two_against_a_full_run() {
    let dir = Dir::new("bench_append");
    let work = dir.join("work");
    clipcov_ok(&[
        "bench",
        "--rows",
        "4000",
        "--dim",
        "16",
        "--classes",
        "5",
        "--taus",
        "0",
        "--append",
        "0.1",
        "--work",
        s(&work),
    ]);
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(work.join("bench-append.json")).unwrap())
            .unwrap();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(
        (r["rows"].as_u64(), r["appended"].as_u64()),
        (Some(4000), Some(400))
    );
    let night = work.join("append-4000-0.1-tau-0-nightly");
    let full = work.join("append-4000-0.1-tau-0-full");
    let (m2, mf) = (
        manifest(&night.join("manifest.json")),
        manifest(&full.join("manifest.json")),
    );
    assert_eq!(m2["incremental"]["store"], "appended");
    assert_eq!(m2["incremental"]["rows_added"], 400);
    assert_eq!(mf["incremental"]["store"], "staged");
    assert_eq!(r["incremental_seconds"], m2["seconds_total"]);
    assert_eq!(r["full_seconds"], mf["seconds_total"]);
    // Same subset, a fraction of the full run's cross tiles.
    assert_eq!(r["same_subset"], true);
    let night_ids: Vec<String> = read_subset_csv(&night.join("clipcov/subset.csv"))
        .into_iter()
        .map(|x| x.id)
        .collect();
    let full_ids: Vec<String> = read_subset_csv(&full.join("clipcov/subset.csv"))
        .into_iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(night_ids, full_ids);
    let (inc, all) = (
        r["incremental_cross_gflop"].as_f64().unwrap(),
        r["full_cross_gflop"].as_f64().unwrap(),
    );
    assert!(inc > 0.0 && inc < 0.5 * all, "{r}");
    assert!(std::fs::read_to_string(work.join("bench-append.md"))
        .unwrap()
        .contains("| 4000 | 400 (10.0%) | 0 |"));
}
