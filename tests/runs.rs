//! Whole runs: determinism, threads, k-means classes, synth and demo.

use crate::util::*;

fn files_equal(a: &std::path::Path, b: &std::path::Path) {
    assert_eq!(
        std::fs::read(a).unwrap(),
        std::fs::read(b).unwrap(),
        "{a:?} and {b:?} differ"
    );
}

#[test]
fn same_input_same_bytes_across_runs_and_threads() {
    let dir = Dir::new("determinism");
    let synth = dir.join("synth");
    synth_at(
        &synth,
        "--rows 6000 --classes 6 --dim 24 --shards 2 --seed 9",
    );
    let data = synth.join("data");
    let prompts = synth.join("prompts.parquet");
    let run = |out: &str, threads: &str| {
        let o = dir.join(out);
        clipcov_ok(&[
            "select",
            "--data",
            s(&data),
            "--prompts",
            s(&prompts),
            "--fraction",
            "0.2",
            "--out",
            s(&o),
            "--threads",
            threads,
            "--refresh",
            "50",
        ]);
        o
    };
    let a = run("a", "2");
    let b = run("b", "2");
    let c = run("c", "1");
    for f in ["clipcov/subset.parquet", "clipcov/subset.csv"] {
        files_equal(&a.join(f), &b.join(f));
        files_equal(&a.join(f), &c.join(f));
    }
    let rows = read_subset_csv(&a.join("clipcov/subset.csv"));
    assert_eq!(rows.len(), 1200);
    // The manifest records tau, the counts and both memory peaks.
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["parameters"]["tau"], "0");
    assert_eq!(m["rows"]["selected"], 1200);
    assert!(m["memory"]["peak_anon_rss_bytes"].as_u64().unwrap() > 0);
    assert!(m["memory"]["peak_rss_bytes"].as_u64().unwrap() > 0);
    assert_eq!(m["outputs"][0]["path"], "clipcov/subset.parquet");
    assert_eq!(m["outputs"][0]["sha256"].as_str().unwrap().len(), 64);
}

#[test]
fn synth_is_deterministic() {
    let dir = Dir::new("synth-det");
    let a = dir.join("a");
    let b = dir.join("b");
    for o in [&a, &b] {
        synth_at(
            o,
            "--rows 3000 --classes 5 --dim 16 --shards 3 --f16 --seed 4",
        );
    }
    for f in [
        "data/part-00000.parquet",
        "data/part-00002.parquet",
        "prompts.parquet",
        "eval.parquet",
    ] {
        files_equal(&a.join(f), &b.join(f));
    }
}

#[test]
fn kmeans_classes_when_no_prompts() {
    let dir = Dir::new("kmeans");
    let synth = dir.join("synth");
    synth_at(&synth, "--rows 4000 --classes 8 --dim 16 --seed 2");
    let run = |out: &str| {
        let o = dir.join(out);
        clipcov_ok(&[
            "select",
            "--data",
            s(&synth.join("data")),
            "--clusters",
            "8",
            "--budget",
            "500",
            "--out",
            s(&o),
            "--tau",
            "none",
        ]);
        o
    };
    let a = run("a");
    let b = run("b");
    files_equal(
        &a.join("clipcov/subset.parquet"),
        &b.join("clipcov/subset.parquet"),
    );
    let rows = read_subset_csv(&a.join("clipcov/subset.csv"));
    assert_eq!(rows.len(), 500);
    let mut classes: Vec<i64> = rows.iter().map(|r| r.class).collect();
    classes.sort();
    classes.dedup();
    assert!(classes.len() > 1 && classes.iter().all(|&c| (0..8).contains(&c)));
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["parameters"]["tau"], "none");
}

#[test]
fn demo_runs() {
    let dir = Dir::new("demo");
    let out = clipcov_ok(&["demo", "--out", s(&dir.path)]);
    assert!(out.contains("selected 2000 of 20000 rows"), "{out}");
    let rows = read_subset_csv(&dir.join("result/clipcov/subset.csv"));
    assert_eq!(rows.len(), 2000);
}

#[test]
fn second_run_on_the_same_out_is_refused_while_the_first_runs() {
    let dir = Dir::new("lock");
    let synth = dir.join("synth");
    synth_at(&synth, "--rows 100000 --classes 2 --dim 64 --seed 1");
    let out = dir.join("out");
    let (data, prompts) = (synth.join("data"), synth.join("prompts.parquet"));
    let args = [
        "select",
        "--data",
        s(&data),
        "--prompts",
        s(&prompts),
        "--fraction",
        "0.5",
        "--out",
        s(&out),
        "--threads",
        "1",
    ];
    let mut first = std::process::Command::new(env!("CARGO_BIN_EXE_clipcov"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the first run holds the lock (it writes its pid there).
    let lock = out.join(".clipcov.lock");
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string(&lock).is_ok_and(|s| s.contains(&format!("pid {}", first.id())))
    {
        assert!(t0.elapsed().as_secs() < 60, "first run never took the lock");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let second = clipcov(&args);
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first run ended before the second started: make it larger"
    );
    assert!(first.wait().unwrap().success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(75), "{err}");
    assert!(
        err.contains("another clipcov run") && err.contains(&format!("pid {}", first.id())),
        "{err}"
    );
    // A lock left by a killed run is taken over.
    let mut killed = std::process::Command::new(env!("CARGO_BIN_EXE_clipcov"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string(&lock).is_ok_and(|s| s.contains(&format!("pid {}", killed.id())))
    {
        assert!(t0.elapsed().as_secs() < 60);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    killed.kill().unwrap();
    killed.wait().unwrap();
    clipcov_ok(&args);
}

/// Tile sizes change the order of floating-point sums, so bytes may differ
/// in low bits (partial sums are f32 inside a tile); the documented tolerance is 1e-6 on every term and
/// score, and the same picks unless two rows tie that closely.
#[test]
fn tile_sizes_agree_within_the_documented_tolerance() {
    let dir = Dir::new("tiles");
    let synth = dir.join("synth");
    let (data, prompts) = synth_at(&synth, "--rows 8000 --classes 3 --dim 32 --seed 4");
    let run = |tile: &str| {
        let out = dir.join(&format!("tile-{tile}"));
        clipcov_ok(&[
            "select",
            "--data",
            s(&data),
            "--prompts",
            s(&prompts),
            "--fraction",
            "0.25",
            "--out",
            s(&out),
            "--tile-rows",
            tile,
            "--refresh",
            "30",
        ]);
        read_subset_csv(&out.join("clipcov/subset.csv"))
    };
    let a = run("37");
    let b = run("1024");
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.id, y.id, "rank {}", x.rank);
        assert!(
            (x.score - y.score).abs() <= 1e-6,
            "rank {}: {} vs {}",
            x.rank,
            x.score,
            y.score
        );
        for t in 0..4 {
            assert!((x.terms[t] - y.terms[t]).abs() <= 1e-6);
        }
    }
}

#[test]
fn a_closed_stdout_ends_the_run_quietly_after_its_outputs() {
    let dir = Dir::new("closed-stdout");
    let (data, prompts) = synth_at(&dir.join("synth"), "--rows 2000 --classes 4 --dim 16");
    let out = dir.join("out");
    // As `clipcov select ... | head -0`: the reader is gone before the summary.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_clipcov"))
        .args(["select", "--data", s(&data), "--prompts", s(&prompts)])
        .args(["--fraction", "0.1", "--out", s(&out)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    use std::os::unix::process::ExitStatusExt;
    assert!(
        o.status.success() || o.status.signal() == Some(13),
        "{:?}: {stderr}",
        o.status
    );
    assert!(out.join("manifest.json").exists());
    assert!(out.join("clipcov/subset.parquet").exists());
}

/// The memory plan uses the data's `d` when there are no prompts: k-means
/// and a baseline plan the same tiles and batches as a run whose prompts
/// give `d` (a guessed d = 512 halved the tiles under this limit).
#[test]
fn memory_plan_uses_the_data_d_without_prompts() {
    let dir = Dir::new("plan-d");
    let (data, prompts) = synth_at(&dir.join("synth"), "--rows 200 --classes 3 --dim 8");
    let plan = |args: &[&str]| -> serde_json::Value {
        let out = dir.join(&format!("out-{}", args[0..2].join("-")));
        let mut a = args.to_vec();
        a.extend([
            "--data",
            s(&data),
            "--fraction",
            "0.5",
            "--memory-limit",
            "32MiB",
            "--threads",
            "1",
            "--quiet",
            "--out",
            s(&out),
        ]);
        clipcov_ok(&a);
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap())
                .unwrap();
        m["plan"].clone()
    };
    let with_prompts = plan(&["select", "--prompts", s(&prompts)]);
    assert_eq!(with_prompts["tile_rows"], 1024, "{with_prompts}");
    assert_eq!(plan(&["select", "--clusters", "2"]), with_prompts);
    assert_eq!(plan(&["baseline", "clip_score"]), with_prompts);
}
