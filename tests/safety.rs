//! Data safety: results never land in an input folder, a failed run never
//! leaves a complete-looking result, interrupted runs leave no large
//! hidden files; and results that look fine but are not are refused.

use std::path::{Path, PathBuf};

use crate::util::*;

/// Runs `clipcov` expecting exit `code`; returns stderr.
fn fails(args: &[&str], code: i32) -> String {
    let o = clipcov(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        o.status.code(),
        Some(code),
        "clipcov {args:?}: expected exit {code}, got {:?}: {err}",
        o.status.code()
    );
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    err
}

/// 40 rows, d = 8, two shards under `dir/data`, prompts beside.
fn small(dir: &Dir) -> (PathBuf, PathBuf) {
    write_data(&dir.path, &make_data(40, 8, 2, 5), 2, false)
}

/// Every file under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&p) else {
            continue;
        };
        for e in rd {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(dir).unwrap().to_path_buf();
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn out_or_work_inside_an_input_folder_is_refused() {
    let dir = Dir::new("safety-inside");
    let (data, prompts) = small(&dir);
    let before = files_under(&data);
    let inside = data.join("part=00").join("results");
    let e = fails(
        &[
            "select",
            "--data",
            s(&data),
            "--prompts",
            s(&prompts),
            "--fraction",
            "0.5",
            "--out",
            s(&inside),
        ],
        2,
    );
    assert!(e.contains("--out") && e.contains("--data"), "{e}");
    assert!(e.contains(s(&inside)) && e.contains(s(&data)), "{e}");
    // The data folder itself, through a path with `..`, for a baseline.
    let same = data.join("part=00").join("..");
    let e = fails(
        &[
            "baseline",
            "random",
            "--data",
            s(&data),
            "--budget",
            "5",
            "--out",
            s(&same),
        ],
        2,
    );
    assert!(e.contains("--out") && e.contains("--data"), "{e}");
    // A --work inside the data, for a URL --out and for eval.
    let e = fails(
        &[
            "baseline",
            "random",
            "--data",
            s(&data),
            "--budget",
            "5",
            "--out",
            "s3://bucket/x",
            "--work",
            s(&data.join("w")),
        ],
        2,
    );
    assert!(e.contains("--work") && e.contains("--data"), "{e}");
    let out = dir.join("out");
    clipcov_ok(&[
        "baseline",
        "random",
        "--data",
        s(&data),
        "--budget",
        "5",
        "--out",
        s(&out),
    ]);
    let e = fails(
        &[
            "eval",
            "--data",
            s(&data),
            "--subset",
            s(&out.join("random/subset.parquet")),
            "--eval-set",
            s(&prompts),
            "--prompts",
            s(&prompts),
            "--work",
            s(&data.join("w")),
        ],
        2,
    );
    assert!(e.contains("--work") && e.contains("--data"), "{e}");
    assert_eq!(
        files_under(&data),
        before,
        "something was written into --data"
    );
}

#[test]
fn a_budget_that_keeps_no_row_is_an_error_and_one_above_n_is_capped() {
    let dir = Dir::new("safety-budget");
    let (data, prompts) = small(&dir);
    let out = dir.join("out");
    let sel = |extra: &[&str]| {
        let mut a = vec![
            "select",
            "--data",
            s(&data),
            "--prompts",
            s(&prompts),
            "--out",
            s(&out),
        ];
        a.extend_from_slice(extra);
        a.iter().map(|x| x.to_string()).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>, code: i32| {
        let a: Vec<&str> = a.iter().map(|x| x.as_str()).collect();
        fails(&a, code)
    };
    let e = run(sel(&["--budget", "0"]), 2);
    assert!(e.contains("--budget 0 keeps no rows"), "{e}");
    // 0.01 x 40 rounds down to 0.
    let e = run(sel(&["--fraction", "0.01"]), 2);
    assert!(
        e.contains("--fraction 0.01 of the 40 rows") && e.contains("= 0 rows"),
        "{e}"
    );
    let e = fails(
        &[
            "baseline",
            "random",
            "--data",
            s(&data),
            "--fraction",
            "0.01",
            "--out",
            s(&out),
        ],
        2,
    );
    assert!(e.contains("of the 40 rows"), "{e}");
    let e = fails(
        &[
            "baseline",
            "ssp",
            "--data",
            s(&data),
            "--budget",
            "0",
            "--out",
            s(&out),
        ],
        2,
    );
    assert!(e.contains("--budget 0"), "{e}");
    // A threshold that keeps nothing: the flags make it empty.
    let e = fails(
        &[
            "baseline",
            "clip_score",
            "--data",
            s(&data),
            "--threshold",
            "2",
            "--out",
            s(&out),
        ],
        2,
    );
    assert!(e.contains("clip_score keeps none of the 40 rows"), "{e}");
    assert!(!out.join("clip_score").join("subset.parquet").exists());
    assert!(!out.join("manifest.json").exists());

    // Above N: capped, with a warning on stderr and in the manifest.
    let o = clipcov(&[
        "baseline",
        "random",
        "--data",
        s(&data),
        "--budget",
        "100",
        "--out",
        s(&out),
    ]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning: --budget 100 is more than the 40 rows"),
        "{err}"
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["rows"]["selected"], 40);
    assert!(
        m["warnings"][0].as_str().unwrap().contains("--budget 100"),
        "{m}"
    );
    let o = clipcov(&[
        "select",
        "--data",
        s(&data),
        "--prompts",
        s(&prompts),
        "--budget",
        "41",
        "--out",
        s(&out),
    ]);
    assert!(o.status.success());
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert!(
        m["warnings"][0].as_str().unwrap().contains("--budget 41"),
        "{m}"
    );
}

/// A dataset of 40 rows with DataComp-style 32-hex uids (so a run writes
/// `datacomp_uids.npy`) and one zero embedding (so `--on-bad-row skip`
/// writes `rejects.parquet`).
fn uid_data(dir: &Dir) -> (PathBuf, PathBuf) {
    let mut d = make_data(40, 8, 2, 5);
    d.ids = (0..40).map(|i| format!("{:032x}", 0xabc0 + i)).collect();
    d.u[7] = vec![0.0; 8];
    write_data(&dir.path, &d, 2, false)
}

/// The result files under `out` (not the store, cache or lock) with their
/// bytes.
fn result_set(out: &Path) -> Vec<(String, Vec<u8>)> {
    files_under(out)
        .into_iter()
        .filter(|f| {
            !f.starts_with("store/") && !f.starts_with("remote-cache/") && f != ".clipcov.lock"
        })
        .map(|f| {
            let bytes = std::fs::read(out.join(&f)).unwrap();
            (f, bytes)
        })
        .collect()
}

/// Every output a manifest lists exists with its checksum's size, and
/// nothing else is a result.
fn check_manifest_describes(out: &Path) {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    for o in m["outputs"].as_array().unwrap() {
        let p = out.join(o["path"].as_str().unwrap());
        assert_eq!(
            std::fs::metadata(&p).unwrap().len(),
            o["bytes"].as_u64().unwrap(),
            "{p:?}"
        );
    }
}

fn no_temporaries(out: &Path) {
    for f in files_under(out) {
        assert!(
            !f.contains(".tmp-") && !f.contains(".old-") && !f.contains(".staging-"),
            "temporary left: {f}"
        );
    }
}

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs", s(at)])
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
    fn resize(&self, bytes: u64) {
        let st = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}"), s(&self.0)])
            .status()
            .unwrap();
        assert!(st.success(), "remount to {bytes} bytes failed");
    }
    /// Bytes in use.
    fn used(&self) -> u64 {
        let c = std::ffi::CString::new(s(&self.0)).unwrap();
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        (st.f_blocks - st.f_bfree) as u64 * st.f_frsize as u64
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A second `select` into an OUT on a small tmpfs, swept in 4 KiB steps
/// from no free space to enough: every failure leaves the first run's
/// complete set, byte for byte, and no temporaries.
#[test]
fn a_full_disk_at_any_write_leaves_the_previous_complete_set() {
    let dir = Dir::new("safety-tmpfs");
    let (data, prompts) = uid_data(&dir);
    let Some(fs) = Tmpfs::mount(&dir.join("mnt")) else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    };
    let out = dir.join("mnt/out");
    let run = |fraction: &str| {
        clipcov(&[
            "select",
            "--data",
            s(&data),
            "--prompts",
            s(&prompts),
            "--fraction",
            fraction,
            "--on-bad-row",
            "skip",
            "--out",
            s(&out),
        ])
    };
    let mut codes = std::collections::BTreeSet::new();
    for step in 0..200u64 {
        fs.resize(16 << 20);
        assert!(run("0.5").status.success());
        let before = result_set(&out);
        for f in [
            "clipcov/subset.parquet",
            "clipcov/subset.csv",
            "clipcov/datacomp_uids.npy",
            "rejects.parquet",
            "report.html",
            "manifest.json",
        ] {
            assert!(
                before.iter().any(|(n, _)| n == f),
                "{f} missing from the first run"
            );
        }
        fs.resize(fs.used() + step * 4096);
        let o = run("0.3");
        if o.status.success() {
            fs.resize(16 << 20);
            check_manifest_describes(&out);
            no_temporaries(&out);
            assert_ne!(result_set(&out), before);
            assert!(
                step >= 3,
                "only {step} failing sizes: the sweep missed the writes"
            );
            eprintln!("{step} failing sizes, exit codes {codes:?}");
            return;
        }
        codes.insert(o.status.code());
        let after = result_set(&out);
        assert_eq!(
            after.iter().map(|x| &x.0).collect::<Vec<_>>(),
            before.iter().map(|x| &x.0).collect::<Vec<_>>(),
            "step {step}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            after == before,
            "step {step}: a file of the first run changed"
        );
        no_temporaries(&out);
    }
    panic!("the second run never succeeded");
}

/// A rename that fails while publishing: the renames already made are
/// undone, the earlier set is back; on a fresh OUT nothing is left.
#[test]
fn a_failed_publish_rolls_back() {
    let dir = Dir::new("safety-rollback");
    let (data, prompts) = uid_data(&dir);
    let out = dir.join("out");
    let run = |fraction: &str, fail: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_clipcov"))
            .args([
                "select",
                "--data",
                s(&data),
                "--prompts",
                s(&prompts),
                "--fraction",
                fraction,
                "--on-bad-row",
                "skip",
                "--out",
                s(&out),
            ])
            .env("CLIPCOV_FAIL_PUBLISH", fail)
            .output()
            .unwrap()
    };
    // A fresh OUT: nothing of the run under a final name.
    let o = run("0.5", "report.html");
    assert_eq!(
        o.status.code(),
        Some(74),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(result_set(&out), Vec::<(String, Vec<u8>)>::new());
    assert!(run("0.5", "").status.success());
    let before = result_set(&out);
    for f in [
        "clipcov/subset.csv",
        "clipcov/datacomp_uids.npy",
        "manifest.json",
    ] {
        let o = run("0.3", f);
        assert_eq!(
            o.status.code(),
            Some(74),
            "{f}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            result_set(&out) == before,
            "{f}: the earlier set was not restored"
        );
        no_temporaries(&out);
    }
    // The same for a baseline into the same OUT.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_clipcov"))
        .args([
            "baseline",
            "random",
            "--data",
            s(&data),
            "--budget",
            "5",
            "--on-bad-row",
            "skip",
            "--out",
            s(&out),
        ])
        .env("CLIPCOV_FAIL_PUBLISH", "manifest.json")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(74));
    assert!(
        result_set(&out) == before,
        "baseline: the earlier set was not restored"
    );
    assert!(!out.join("random").exists());
}

#[test]
fn stale_temporaries_of_dead_runs_are_removed() {
    let dir = Dir::new("safety-stale");
    let (data, prompts) = small(&dir);
    let out = dir.join("out");
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
    ];
    clipcov_ok(&args);
    // A process that has ended: its pid is free.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let live = std::process::id();
    let stale = [
        format!("store/.terms.bin.tmp-{dead}"),
        format!("clipcov/.subset.csv.tmp-{dead}"),
        format!(".manifest.json.old-{dead}"),
        format!(".staging-{dead}/clipcov/subset.parquet"),
    ];
    let kept = [
        format!("store/.terms.bin.tmp-{live}"),
        "store/notes.tmp-1".to_string(),
    ];
    for f in stale.iter().chain(&kept) {
        let p = out.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, vec![7u8; 4096]).unwrap();
    }
    clipcov_ok(&args);
    for f in &stale {
        assert!(!out.join(f).exists(), "{f} survived");
    }
    assert!(!out.join(format!(".staging-{dead}")).exists());
    for f in &kept {
        assert!(out.join(f).exists(), "{f} was removed");
    }
}

#[test]
fn an_interrupted_eval_removes_its_work_folder() {
    use std::os::unix::process::ExitStatusExt;
    let dir = Dir::new("safety-sigterm");
    let (data, prompts) = synth_at(
        &dir.join("ds"),
        "--rows 3000 --classes 5 --dim 16 --eval-rows 200",
    );
    let out = dir.join("out");
    clipcov_ok(&[
        "baseline",
        "random",
        "--data",
        s(&data),
        "--fraction",
        "0.5",
        "--on-duplicate",
        "keep-first",
        "--on-bad-row",
        "skip",
        "--out",
        s(&out),
    ]);
    let subset = out.join("random/subset.parquet");
    let work = out.join("random/.clipcov-eval");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_clipcov"))
        .args([
            "eval",
            "--data",
            s(&data),
            "--subset",
            s(&subset),
            "--eval-set",
            s(&dir.join("ds/eval.parquet")),
            "--prompts",
            s(&prompts),
            "--proxy-steps",
            "10000000",
            "--on-duplicate",
            "keep-first",
            "--on-bad-row",
            "skip",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the store is staged, then interrupt the training.
    let t = std::time::Instant::now();
    while !work.join("store/store.json").exists() {
        assert!(t.elapsed().as_secs() < 60, "eval never staged its store");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    assert_eq!(st.signal(), Some(libc::SIGTERM), "{st:?}");
    assert!(!work.exists(), "{} left after SIGTERM", work.display());
}

#[test]
fn several_baselines_into_one_out_keep_every_manifest() {
    let dir = Dir::new("safety-manifests");
    let (data, prompts) = small(&dir);
    let out = dir.join("out");
    for m in ["random", "ssp"] {
        clipcov_ok(&[
            "baseline",
            m,
            "--data",
            s(&data),
            "--budget",
            "7",
            "--out",
            s(&out),
        ]);
    }
    clipcov_ok(&[
        "select",
        "--data",
        s(&data),
        "--prompts",
        s(&prompts),
        "--budget",
        "9",
        "--out",
        s(&out),
    ]);
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let top = read(&out.join("manifest.json"));
    assert_eq!(top["method"], "clipcov");
    let listed: Vec<&str> = top["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["method"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["clipcov", "random", "ssp"]);
    for e in top["methods"].as_array().unwrap() {
        let m = read(&out.join(e["manifest"].as_str().unwrap()));
        assert_eq!(m["method"], e["method"]);
        assert_eq!(m["rows"]["selected"], e["selected"]);
        let want = if e["method"] == "clipcov" { 9 } else { 7 };
        assert_eq!(e["selected"], want);
        // Each method's manifest lists its own subset files.
        let name = e["method"].as_str().unwrap();
        assert!(m["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["path"] == format!("{name}/subset.parquet")));
    }
}

#[test]
fn one_eval_seed_has_no_standard_deviation() {
    let dir = Dir::new("safety-seeds");
    let (data, prompts) = synth_at(
        &dir.join("ds"),
        "--rows 1000 --classes 4 --dim 8 --eval-rows 100",
    );
    let out = dir.join("out");
    let flags = ["--on-duplicate", "keep-first", "--on-bad-row", "skip"];
    let mut a = vec![
        "baseline",
        "random",
        "--data",
        s(&data),
        "--fraction",
        "0.5",
        "--out",
        s(&out),
    ];
    a.extend(flags);
    clipcov_ok(&a);
    let eval_set = dir.join("ds/eval.parquet");
    let subset = out.join("random/subset.parquet");
    let eval = |seeds: &str, json: bool| {
        let mut a = vec![
            "eval",
            "--data",
            s(&data),
            "--subset",
            s(&subset),
            "--eval-set",
            s(&eval_set),
            "--prompts",
            s(&prompts),
            "--proxy-steps",
            "5",
            "--eval-seeds",
            seeds,
        ];
        a.extend(flags);
        if json {
            a.push("--json");
        }
        clipcov_ok(&a)
    };
    let m: serde_json::Value = serde_json::from_str(&eval("1", true)).unwrap();
    for k in [
        "zero_shot_top1",
        "zero_shot_top5",
        "retrieval_r1",
        "proxy_loss_end",
    ] {
        assert!(m[k].is_number(), "{k}");
        assert!(
            m[format!("{k}_std")].is_null(),
            "{k}_std: {}",
            m[format!("{k}_std")]
        );
    }
    let text = eval("1", false);
    assert!(
        text.contains("zero_shot_top1") && !text.contains('±'),
        "{text}"
    );
    let m: serde_json::Value = serde_json::from_str(&eval("2", true)).unwrap();
    assert!(m["zero_shot_top1_std"].as_f64().unwrap() >= 0.0);
    assert!(eval("2", false).contains('±'));
}

#[test]
fn pipeline_file_paths_are_relative_to_the_file() {
    let dir = Dir::new("safety-pipeline");
    let jobs = dir.join("jobs");
    write_data(&jobs, &make_data(40, 8, 2, 5), 2, false);
    std::fs::write(
        jobs.join("job.toml"),
        "command = \"select\"\n[input]\ndata = \"data\"\nprompts = \"prompts.parquet\"\n[select]\nfraction = 0.5\n[output]\nout = \"result\"\n",
    )
    .unwrap();
    // Run from another folder: the file's paths still resolve beside it.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_clipcov"))
        .args(["run", "jobs/job.toml"])
        .current_dir(&dir.path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(jobs.join("result/clipcov/subset.parquet").exists());
    // A missing input names the key and line.
    std::fs::write(
        jobs.join("bad.toml"),
        "command = \"select\"\n[input]\ndata = \"data\"\nprompts = \"nope/prompts.parquet\"\n[select]\nfraction = 0.5\n",
    )
    .unwrap();
    let e = fails(
        &["run", s(&jobs.join("bad.toml")), "--out", s(&dir.join("x"))],
        74,
    );
    assert!(e.contains("line 4: key 'prompts' in [input]"), "{e}");
    assert!(e.contains(s(&jobs.join("nope/prompts.parquet"))), "{e}");
}

#[test]
fn npy_prompts_are_refused_with_the_parquet_layout() {
    let dir = Dir::new("safety-npy-prompts");
    let (data, _) = small(&dir);
    let npy = dir.join("prompts.npy");
    // A valid [2, 8] float32 array.
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    let mut header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 8), }".to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    for i in 0..16 {
        bytes.extend((i as f32 + 1.0).to_le_bytes());
    }
    std::fs::write(&npy, bytes).unwrap();
    let e = fails(
        &[
            "select",
            "--data",
            s(&data),
            "--prompts",
            s(&npy),
            "--fraction",
            "0.5",
            "--out",
            s(&dir.join("out")),
        ],
        65,
    );
    assert!(
        e.contains("not a NumPy array")
            && e.contains("class_id (int), name (utf8), text_embedding"),
        "{e}"
    );
}

#[test]
fn smaller_traps() {
    let dir = Dir::new("safety-smaller");
    let mut d = make_data(40, 8, 2, 5);
    d.ids = (0..40).map(|i| format!("{:032x}", 0xfe00 + i)).collect();
    let (data, prompts) = write_data(&dir.path, &d, 2, false);
    // --out naming a file.
    let file = dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let e = fails(
        &[
            "select",
            "--data",
            s(&data),
            "--prompts",
            s(&prompts),
            "--fraction",
            "0.5",
            "--out",
            s(&file),
        ],
        2,
    );
    assert!(e.contains("--out must be a folder"), "{e}");
    // A subquery in --where.
    let out = dir.join("out");
    let e = fails(
        &[
            "select",
            "--data",
            s(&data),
            "--prompts",
            s(&prompts),
            "--fraction",
            "0.5",
            "--out",
            s(&out),
            "--where",
            "id IN (SELECT id FROM t)",
        ],
        2,
    );
    assert!(
        e.contains("subqueries are not supported") && !e.contains("POLARS"),
        "{e}"
    );
    // A quoted 'select' is a value, not a subquery: this one fails later,
    // for another reason (no such column), not as a subquery.
    let o = clipcov(&[
        "select",
        "--data",
        s(&data),
        "--prompts",
        s(&prompts),
        "--fraction",
        "0.5",
        "--out",
        s(&out),
        "--where",
        "name = 'select'",
    ]);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("subqueries"));

    // The summary names every output and no rate for reused stages.
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
    ];
    clipcov_ok(&args);
    let said = clipcov_ok(&args);
    for f in [
        "clipcov/subset.parquet",
        "clipcov/subset.csv",
        "clipcov/datacomp_uids.npy",
        "report.html",
        "clipcov/manifest.json",
        "manifest.json",
    ] {
        assert!(
            said.contains(&format!("wrote {}", s(&out.join(f)))),
            "{f} not listed:\n{said}"
        );
    }
    let reuse = said
        .lines()
        .find(|l| l.trim_start().starts_with("reuse-store"))
        .unwrap();
    assert!(
        !reuse.contains("rows/s") && !reuse.contains("GB/s"),
        "{reuse}"
    );
    // The manifest names the id column of the canonical layout.
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["parameters"]["columns"]["id"], "id");
    // The report records the parameters.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for want in ["fraction 0.5", "<td>tau</td>", "1, 2, 0.5, 1", s(&data)] {
        assert!(html.contains(want), "report lacks {want}");
    }

    // eval: a CSV subset, and a read-only folder.
    let csv = out.join("clipcov/subset.csv");
    let e = fails(
        &[
            "eval",
            "--data",
            s(&data),
            "--subset",
            s(&csv),
            "--eval-set",
            s(&prompts),
            "--prompts",
            s(&prompts),
        ],
        2,
    );
    assert!(
        e.contains(&format!("pass {}", s(&out.join("clipcov/subset.parquet")))),
        "{e}"
    );
}

/// Long class names are not cut: the label column of the class chart is
/// wide enough for the longest name at about 6 px a character.
#[test]
fn the_report_does_not_cut_long_class_names() {
    let dir = Dir::new("safety-names");
    let (data, _) = small(&dir);
    let d = make_data(40, 8, 2, 5);
    let long = "a".repeat(70);
    let prompts = dir.join("long-prompts.parquet");
    {
        use arrow_array::builder::{Int32Builder, StringBuilder};
        use arrow_array::RecordBatch;
        use arrow_schema::{DataType, Field, Schema};
        use std::sync::Arc;
        let schema = Arc::new(Schema::new(vec![
            Field::new("class_id", DataType::Int32, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("text_embedding", emb_type(8, false), true),
        ]));
        let (mut ids, mut names) = (Int32Builder::new(), StringBuilder::new());
        for (k, _) in &d.prompts {
            ids.append_value(*k);
            names.append_value(format!("{long}{k}"));
        }
        let embs: Vec<Vec<f32>> = d.prompts.iter().map(|p| p.1.clone()).collect();
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(ids.finish()),
                Arc::new(names.finish()),
                emb_array(&embs, 8, false),
            ],
        )
        .unwrap();
        write_batch(&prompts, &batch);
    }
    let out = dir.join("out");
    clipcov_ok(&[
        "select",
        "--data",
        s(&data),
        "--prompts",
        s(&prompts),
        "--fraction",
        "0.5",
        "--out",
        s(&out),
    ]);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let at = html
        .find(&format!("text-anchor=\"end\">{long}"))
        .expect("a class label");
    let before = &html[..at];
    let x: f64 = before[before.rfind("x=\"").unwrap() + 3..]
        .split('"')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        x >= 6.0 * 71.0,
        "label ends at x = {x}: a 71-character name is cut"
    );
}

#[test]
fn eval_in_a_read_only_folder_suggests_work() {
    let dir = Dir::new("safety-readonly");
    let (data, prompts) = small(&dir);
    let out = dir.join("out");
    clipcov_ok(&[
        "baseline",
        "random",
        "--data",
        s(&data),
        "--budget",
        "20",
        "--out",
        s(&out),
    ]);
    let Some(fs) = Tmpfs::mount(&dir.join("ro")) else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    };
    let subset = dir.join("ro/subset.parquet");
    std::fs::copy(out.join("random/subset.parquet"), &subset).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-o", "remount,ro", s(&fs.0)])
        .status()
        .unwrap();
    assert!(st.success());
    let e = fails(
        &[
            "eval",
            "--data",
            s(&data),
            "--subset",
            s(&subset),
            "--eval-set",
            s(&prompts),
            "--prompts",
            s(&prompts),
        ],
        74,
    );
    assert!(e.contains("--work"), "{e}");
}
