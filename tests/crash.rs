//! Kill -9 at many points of a run, rerun, and check that the result is the
//! same bytes as an uninterrupted run, that the rerun reused what was
//! complete, and that no file under a final name was ever incomplete.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// Final outputs present in `out` must be complete: equal to the reference.
fn no_incomplete_outputs(out: &Path, reference: &Path, outputs: &[&str]) {
    for f in outputs {
        if let Ok(bytes) = std::fs::read(out.join(f)) {
            assert_eq!(
                bytes,
                std::fs::read(reference.join(f)).unwrap(),
                "{f} is under its final name but incomplete"
            );
        }
    }
    for f in [
        "manifest.json",
        "compare.json",
        "store/stages.json",
        "store/store.json",
        "store/ingest.json",
    ] {
        if let Ok(text) = std::fs::read_to_string(out.join(f)) {
            serde_json::from_str::<serde_json::Value>(&text)
                .unwrap_or_else(|e| panic!("{f} is incomplete: {e}"));
        }
    }
}

/// Runs `args(reference)` once, then `rounds` times: two SIGKILLs at points
/// spread over the run (the second interrupts a resuming run) and a run to
/// completion, whose `outputs` must equal the reference's byte for byte.
/// Returns the kills sent and the reruns that resumed from a complete store.
fn kill_and_resume(
    dir: &Dir,
    args: impl Fn(&Path) -> Vec<String>,
    outputs: &[&str],
    rounds: u32,
) -> (u32, u32) {
    let reference = dir.join("reference");
    let t = Instant::now();
    let a = args(&reference);
    clipcov_ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let full = t.elapsed();
    let (mut kills, mut resumes) = (0, 0);
    for i in 0..rounds {
        let out = dir.join(&format!("killed-{i}"));
        let r = rounds as f64;
        for fraction in [i as f64 / r, (i as f64 * 7.0 % r) / r] {
            let mut child = Command::new(env!("CARGO_BIN_EXE_clipcov"))
                .args(args(&out))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(full.mul_f64(fraction) + Duration::from_millis(2));
            let _ = child.kill(); // SIGKILL
            child.wait().unwrap();
            kills += 1;
            no_incomplete_outputs(&out, &reference, outputs);
        }
        let o = Command::new(env!("CARGO_BIN_EXE_clipcov"))
            .args(args(&out))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        for f in outputs {
            assert_eq!(
                std::fs::read(out.join(f)).unwrap(),
                std::fs::read(reference.join(f)).unwrap(),
                "round {i}: {f} differs"
            );
        }
        if std::fs::read_to_string(out.join("manifest.json"))
            .is_ok_and(|m| m.contains("reuse-store"))
            || std::fs::read_to_string(out.join("compare.json"))
                .is_ok_and(|m| m.contains("reuse-store"))
        {
            resumes += 1;
        }
    }
    (kills, resumes)
}

#[test]
fn killed_runs_resume_to_identical_bytes() {
    let dir = Dir::new("crash");
    let synth = dir.join("synth");
    let (data, prompts) = synth_at(
        &synth,
        "--rows 20000 --classes 4 --dim 48 --shards 4 --seed 3",
    );
    let args = |out: &Path| -> Vec<String> {
        [
            "select",
            "--data",
            s(&data),
            "--prompts",
            s(&prompts),
            "--fraction",
            "0.3",
            "--out",
            s(out),
            "--refresh",
            "20",
            "--tile-rows",
            "512",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let outputs = ["clipcov/subset.parquet", "clipcov/subset.csv"];
    let (kills, resumes) = kill_and_resume(&dir, args, &outputs, 16);
    eprintln!("crash test (select): {kills} kills, {resumes} reruns resumed from a complete store, 16 outputs identical");
    assert_eq!(kills, 32);
}

#[test]
fn killed_compare_runs_resume_to_identical_bytes() {
    let dir = Dir::new("crash-compare");
    let synth = dir.join("synth");
    let (data, prompts) = synth_at(
        &synth,
        "--rows 8000 --classes 4 --dim 32 --shards 2 --seed 5",
    );
    let args = |out: &Path| -> Vec<String> {
        [
            "compare",
            "--data",
            s(&data),
            "--prompts",
            s(&prompts),
            "--fraction",
            "0.2",
            "--out",
            s(out),
            "--methods",
            "clipcov,random,clip_score,semdedup,ssp",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let outputs = [
        "clipcov/subset.parquet",
        "random/subset.parquet",
        "clip_score/subset.parquet",
        "semdedup/subset.parquet",
        "semdedup/neighbours.parquet",
        "ssp/subset.csv",
    ];
    let (kills, resumes) = kill_and_resume(&dir, args, &outputs, 8);
    eprintln!("crash test (compare): {kills} kills, {resumes} reruns resumed, 8 outputs identical");
    assert_eq!(kills, 16);
}

#[test]
fn rerun_reuses_and_parameter_changes_invalidate_only_their_stages() {
    let dir = Dir::new("resume");
    let synth = dir.join("synth");
    synth_at(&synth, "--rows 5000 --classes 4 --dim 16 --seed 8");
    let (data, prompts, out) = (
        synth.join("data"),
        synth.join("prompts.parquet"),
        dir.join("out"),
    );
    let run = |extra: &[&str]| -> Vec<String> {
        let mut a = vec![
            "select",
            "--data",
            s(&data),
            "--prompts",
            s(&prompts),
            "--fraction",
            "0.2",
            "--out",
            s(&out),
        ];
        a.extend_from_slice(extra);
        clipcov_ok(&a);
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap())
                .unwrap();
        m["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["stage"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(run(&[]), ["ingest", "classes", "score", "select", "emit"]);
    let first = std::fs::read(out.join("clipcov/subset.parquet")).unwrap();
    assert_eq!(run(&[]), ["reuse-store", "reuse-score", "select", "emit"]);
    assert_eq!(
        std::fs::read(out.join("clipcov/subset.parquet")).unwrap(),
        first
    );
    // tau changes the scores, not the store; weights change neither.
    assert_eq!(
        run(&["--tau", "none"]),
        ["reuse-store", "score", "select", "emit"]
    );
    assert_eq!(
        run(&["--tau", "none", "--weights", "1,1,1,1"]),
        ["reuse-store", "reuse-score", "select", "emit"]
    );
    // A damaged store file is noticed and the store rebuilt.
    let order = out.join("store/order.bin");
    let mut bytes = std::fs::read(&order).unwrap();
    bytes.swap(0, 8);
    std::fs::write(&order, bytes).unwrap();
    assert_eq!(run(&[]), ["ingest", "classes", "score", "select", "emit"]);
    assert_eq!(
        std::fs::read(out.join("clipcov/subset.parquet")).unwrap(),
        first
    );
    assert_eq!(
        run(&["--fresh"]),
        ["ingest", "classes", "score", "select", "emit"]
    );
    // A changed input invalidates everything.
    std::thread::sleep(Duration::from_millis(20));
    let shard = data.join("part-00000.parquet");
    let b = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, b).unwrap();
    assert_eq!(run(&[]), ["ingest", "classes", "score", "select", "emit"]);
}
