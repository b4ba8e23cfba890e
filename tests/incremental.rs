//! Nightly runs: shards added to the input since the last run join its
//! store, and the scores are brought up to date. Each incremental run is
//! checked against a fresh full run on the same final input: the same ids,
//! ranks, rows and classes, and terms and scores within 1e-9.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::builder::{Int64Builder, StringBuilder};
use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Schema};

use crate::util::*;

const D: usize = 16;
const CLASSES: usize = 4;

/// Writes rows `rows` of `data`, with an `original_width` column, as the
/// shard `root/<name>.parquet`.
fn write_shard(root: &Path, name: &str, data: &Data, rows: &[usize]) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("original_width", DataType::Int64, false),
        Field::new("image_embedding", emb_type(D, false), true),
        Field::new("text_embedding", emb_type(D, false), true),
    ]));
    let (mut ids, mut w) = (StringBuilder::new(), Int64Builder::new());
    for &i in rows {
        ids.append_value(&data.ids[i]);
        w.append_value(width(i));
    }
    let u: Vec<Vec<f32>> = rows.iter().map(|&i| data.u[i].clone()).collect();
    let v: Vec<Vec<f32>> = rows.iter().map(|&i| data.v[i].clone()).collect();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(ids.finish()),
            Arc::new(w.finish()),
            emb_array(&u, D, false),
            emb_array(&v, D, false),
        ],
    )
    .unwrap();
    write_batch(&root.join(format!("{name}.parquet")), &batch);
}

fn width(i: usize) -> i64 {
    100 + (i as i64 * 37) % 250
}

/// Each row's latent class, as an index into the sorted class ids: the
/// argmax over the classes' mean normalised prompts, as clipcov assigns it.
fn classes_of(data: &Data) -> Vec<usize> {
    let mut ids: Vec<i32> = data.prompts.iter().map(|p| p.0).collect();
    ids.sort_unstable();
    ids.dedup();
    let centres: Vec<Vec<f64>> = ids
        .iter()
        .map(|&k| {
            let mut c = vec![0.0f64; D];
            for p in data.prompts.iter().filter(|p| p.0 == k) {
                let n = p.1.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                for (c, x) in c.iter_mut().zip(&p.1) {
                    *c += *x as f64 / n;
                }
            }
            c
        })
        .collect();
    data.u
        .iter()
        .map(|u| {
            let dot = |c: &Vec<f64>| c.iter().zip(u).map(|(a, b)| a * *b as f64).sum::<f64>();
            (0..centres.len())
                .max_by(|&a, &b| {
                    dot(&centres[a])
                        .total_cmp(&dot(&centres[b]))
                        .then(b.cmp(&a))
                })
                .unwrap()
        })
        .collect()
}

/// One scenario: the shards of the first night, the shards added before
/// the second, and the flags of both runs.
struct Nights {
    dir: Dir,
    data_dir: PathBuf,
    prompts: PathBuf,
    data: Data,
}

impl Nights {
    fn new(name: &str, rows: usize, seed: u64) -> Nights {
        let dir = Dir::new(name);
        let data = make_zipf_data(rows, D, CLASSES, 0.8, seed);
        let prompts = dir.join("prompts.parquet");
        write_prompts(&prompts, &data.prompts);
        Nights {
            data_dir: dir.join("data"),
            dir,
            prompts,
            data,
        }
    }

    fn add(&self, name: &str, rows: &[usize]) {
        write_shard(&self.data_dir, name, &self.data, rows);
    }

    fn select(&self, out: &str, flags: &[&str]) -> PathBuf {
        let out = self.dir.join(out);
        clipcov_ok(
            &self
                .args(&out, flags)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        out
    }

    fn args(&self, out: &Path, flags: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = [
            "select",
            "--data",
            s(&self.data_dir),
            "--prompts",
            s(&self.prompts),
            "--fraction",
            "0.3",
            "--refresh",
            "3",
            "--out",
            s(out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.extend(flags.iter().map(|x| x.to_string()));
        a
    }
}

fn manifest(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap()
}

/// Same ids, ranks, rows and classes; scores and terms within 1e-9.
fn assert_same_subset(a: &Path, b: &Path) {
    let (x, y) = (
        read_subset_csv(&a.join("clipcov/subset.csv")),
        read_subset_csv(&b.join("clipcov/subset.csv")),
    );
    assert_eq!(x.len(), y.len(), "subset sizes");
    assert!(!x.is_empty());
    for (p, q) in x.iter().zip(&y) {
        assert_eq!(
            (&p.id, p.rank, p.row, p.class),
            (&q.id, q.rank, q.row, q.class),
            "{} vs {}",
            a.display(),
            b.display()
        );
        assert!((p.score - q.score).abs() < 1e-9, "{p:?} vs {q:?}");
        for (s, t) in p.terms.iter().zip(&q.terms) {
            assert!((s - t).abs() < 1e-9, "{p:?} vs {q:?}");
        }
    }
}

/// Runs night one on `first`, adds `added` (name, rows), runs night two
/// into the same OUT and a fresh run into another, and checks they agree
/// and that night two was incremental. Returns night two's `incremental`.
fn check_append(
    n: &Nights,
    first: &[(&str, Vec<usize>)],
    added: &[(&str, Vec<usize>)],
    flags: &[&str],
) -> serde_json::Value {
    for (name, rows) in first {
        n.add(name, rows);
    }
    let out = n.select("out", flags);
    assert_eq!(manifest(&out)["incremental"]["store"], "staged");
    for (name, rows) in added {
        n.add(name, rows);
    }
    n.select("out", flags);
    let mut fresh_flags = flags.to_vec();
    fresh_flags.push("--fresh");
    let full = n.select("full", &fresh_flags);
    assert_same_subset(&out, &full);
    let inc = manifest(&out)["incremental"].clone();
    assert_eq!(inc["store"], "appended", "{inc}");
    assert_eq!(inc["shards_added"], added.len(), "{inc}");
    assert_eq!(manifest(&full)["incremental"]["reason"], "--fresh");
    inc
}

fn split(rows: std::ops::Range<usize>, parts: usize) -> Vec<Vec<usize>> {
    let all: Vec<usize> = rows.collect();
    all.chunks(all.len().div_ceil(parts))
        .map(<[usize]>::to_vec)
        .collect()
}

#[test]
fn appended_shards_touching_every_class_give_the_full_runs_subset() {
    for tau in ["0", "none"] {
        let n = Nights::new(&format!("inc-every-{tau}"), 700, 41);
        let old = split(0..600, 3);
        let first: Vec<(&str, Vec<usize>)> = vec![
            ("a0", old[0].clone()),
            ("a1", old[1].clone()),
            ("a2", old[2].clone()),
        ];
        let inc = check_append(&n, &first, &[("b0", (600..700).collect())], &["--tau", tau]);
        assert_eq!(inc["rows_added"], 100);
        assert_eq!(inc["score"], "incremental", "{inc}");
        assert_eq!(inc["classes_touched"], CLASSES);
        if tau == "0" {
            let share = inc["cross_tile_share"].as_f64().unwrap();
            assert!(share > 0.0 && share < 0.5, "{inc}");
        }
    }
}

#[test]
fn appended_shard_touching_one_class_updates_between_of_the_others() {
    let n = Nights::new("inc-one", 800, 43);
    let class = classes_of(&n.data);
    // Night two brings 60 more rows of the largest class, nothing else.
    let late: Vec<usize> = (0..800).filter(|&i| class[i] == 0).rev().take(60).collect();
    let mut late_sorted = late.clone();
    late_sorted.sort_unstable();
    let early: Vec<usize> = (0..800).filter(|i| !late.contains(i)).collect();
    let inc = check_append(
        &n,
        &[("a0", early)],
        &[("b0", late_sorted)],
        &["--tau", "0"],
    );
    assert_eq!(inc["classes_touched"], 1, "{inc}");
    let between = inc["between"].as_str().unwrap();
    assert!(between.starts_with("updated"), "{inc}");
    let share = inc["cross_tile_share"].as_f64().unwrap();
    assert!(share < 0.5, "{inc}");
}

#[test]
fn appended_shard_with_a_new_class_and_shards_sorting_among_the_old() {
    let n = Nights::new("inc-new-class", 800, 47);
    let class = classes_of(&n.data);
    let newcomer: Vec<usize> = (0..800).filter(|&i| class[i] == 2).collect();
    let rest: Vec<usize> = (0..800).filter(|&i| class[i] != 2).collect();
    let half = rest.len() / 2;
    // "a1" sorts between "a0" and "a2": old rows move in the canonical order.
    let inc = check_append(
        &n,
        &[("a0", rest[..half].to_vec()), ("a2", rest[half..].to_vec())],
        &[("a1", newcomer)],
        &["--tau", "0"],
    );
    assert_eq!(inc["classes_touched"], 1, "{inc}");
    assert_eq!(inc["between"], "computed again for every row", "{inc}");
}

#[test]
fn appended_shards_with_where_and_a_sampled_cross_term() {
    let n = Nights::new("inc-where", 900, 53);
    let old = split(0..750, 2);
    let flags = ["--where", "original_width >= 180", "--cross-sample", "40"];
    let inc = check_append(
        &n,
        &[("a0", old[0].clone()), ("a1", old[1].clone())],
        &[("b0", (750..900).collect())],
        &flags,
    );
    let passing = (750..900).filter(|&i| width(i) >= 180).count();
    assert_eq!(inc["rows_added"], passing, "{inc}");
    let m = manifest(&n.dir.join("out"));
    let full = manifest(&n.dir.join("full"));
    assert_eq!(m["prefilter"], full["prefilter"]);
    assert_eq!(m["rows"], full["rows"]);
    // A new shard none of whose rows passes: staged with the others.
    let failing: Vec<usize> = (0..750).filter(|&i| width(i) < 180).take(20).collect();
    let mut ids = n.data.ids.clone();
    for &i in &failing {
        ids[i] = format!("late-{i}");
    }
    let late = Data {
        ids,
        u: n.data.u.clone(),
        v: n.data.v.clone(),
        prompts: n.data.prompts.clone(),
    };
    write_shard(&n.data_dir, "c0", &late, &failing);
    let out = n.select("out", &flags);
    let inc = &manifest(&out)["incremental"];
    assert_eq!(inc["store"], "staged", "{inc}");
    let reason = inc["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("the new shards alone could not be staged: ")
            && reason.contains("keeps none of the 20 rows"),
        "{inc}"
    );
    let mut fresh = flags.to_vec();
    fresh.push("--fresh");
    assert_same_subset(&out, &n.select("full", &fresh));
}

#[test]
fn what_cannot_be_appended_is_staged_in_full_and_says_why() {
    let n = Nights::new("inc-full", 300, 59);
    n.add("a0", &(0..150).collect::<Vec<_>>());
    n.add("a1", &(150..300).collect::<Vec<_>>());
    let reason = |flags: &[&str]| {
        let out = n.select("out", flags);
        manifest(&out)["incremental"]["reason"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(reason(&[]), "no earlier store in OUT/store");
    assert_eq!(
        manifest(&n.dir.join("out"))["incremental"]["store"],
        "staged"
    );
    // Nothing changed: reused.
    reason(&[]);
    assert_eq!(
        manifest(&n.dir.join("out"))["incremental"]["store"],
        "reused"
    );
    // A shard rewritten.
    std::thread::sleep(Duration::from_millis(20));
    n.add("a0", &(0..140).collect::<Vec<_>>());
    assert_eq!(
        reason(&[]),
        "shard a0.parquet changed (size or modification time)"
    );
    // A shard removed.
    std::fs::remove_file(n.data_dir.join("a1.parquet")).unwrap();
    assert_eq!(reason(&[]), "shard a1.parquet was removed");
    // A parameter of the store changed.
    n.add("b0", &(150..300).collect::<Vec<_>>());
    assert_eq!(
        reason(&["--on-bad-row", "skip"]),
        "--on-bad-row changed since the store was staged"
    );
    assert_eq!(reason(&["--on-bad-row", "skip", "--fresh"]), "--fresh");
    // Another tau on the night of an append: the store grows, the scores
    // of the store before it do not fit, so they start over.
    n.add("c0", &(140..150).collect::<Vec<_>>());
    let out = n.select("out", &["--on-bad-row", "skip", "--tau", "none"]);
    let inc = &manifest(&out)["incremental"];
    assert_eq!(
        (&inc["store"], &inc["score"], &inc["score_reason"]),
        (
            &"appended".into(),
            &"full".into(),
            &"tau or --cross-sample changed".into()
        ),
        "{inc}"
    );
}

/// Copies a folder tree.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// Kill -9 at points spread over an incremental run, rerun: the subset is
/// the uninterrupted run's (ids and ranks identical, terms within 1e-9),
/// whether the rerun resumed the append or staged everything again.
#[test]
fn killed_incremental_runs_rerun_to_the_same_subset() {
    let n = Nights::new("inc-kill", 3000, 61);
    let old = split(0..2500, 4);
    for (i, rows) in old.iter().enumerate() {
        n.add(&format!("a{i}"), rows);
    }
    let night_one = n.select("night-one", &[]);
    n.add("b0", &(2500..3000).collect::<Vec<_>>());
    let reference = n.dir.join("reference");
    copy_tree(&night_one, &reference);
    let t = Instant::now();
    n.select("reference", &[]);
    let full = t.elapsed();
    assert_eq!(manifest(&reference)["incremental"]["score"], "incremental");
    let rounds = 10;
    let mut kills = 0;
    for i in 0..rounds {
        let out = n.dir.join(&format!("killed-{i}"));
        copy_tree(&night_one, &out);
        let mut child = Command::new(env!("CARGO_BIN_EXE_clipcov"))
            .args(n.args(&out, &[]))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(full.mul_f64(i as f64 / rounds as f64));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
        n.select(&format!("killed-{i}"), &[]);
        assert_same_subset(&out, &reference);
    }
    assert!(kills > 0, "no run was interrupted");
}

/// `pipelines/nightly.toml`, copied next to a pool and its prompts, run as
/// it is two nights in a row: the second night appends.
#[test]
fn the_nightly_pipeline_file_runs_as_it_is() {
    let n = Nights::new("inc-pipeline", 500, 67);
    let job = n.dir.join("nightly.toml");
    std::fs::copy(repo_root().join("pipelines/nightly.toml"), &job).unwrap();
    let pool = n.dir.join("pool");
    write_shard(&pool, "part-000", &n.data, &(0..400).collect::<Vec<_>>());
    clipcov_ok(&["run", s(&job)]);
    let out = n.dir.join("nightly");
    assert_eq!(manifest(&out)["incremental"]["store"], "staged");
    write_shard(&pool, "part-001", &n.data, &(400..500).collect::<Vec<_>>());
    clipcov_ok(&["run", s(&job)]);
    assert_eq!(manifest(&out)["incremental"]["store"], "appended");
    assert_eq!(manifest(&out)["incremental"]["score"], "incremental");
    let full = n.dir.join("full");
    clipcov_ok(&["run", s(&job), "--out", s(&full)]);
    assert_same_subset(&out, &full);
}
