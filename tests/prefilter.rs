//! `--where`: a SQL predicate over metadata columns decides which rows are
//! staged. Each run with `--where` is checked against a run on a dataset
//! that holds only the passing rows, computed here in plain Rust.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{Int64Builder, StringBuilder};
use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Schema};

use crate::util::*;

const PREDICATE: &str = "original_width >= 200 AND length(text) > 5";

/// The metadata of row `i`: a width, and a caption that is sometimes
/// short and sometimes null.
fn width(i: usize) -> i64 {
    100 + (i as i64 * 37) % 250
}

fn text(i: usize) -> Option<String> {
    match i % 7 {
        0 => None,
        1 | 2 => Some(format!("a{}", i % 10)),
        _ => Some(format!("a photo number {i}")),
    }
}

/// `PREDICATE` in plain Rust (a null caption fails, as in SQL).
fn passes(i: usize) -> bool {
    width(i) >= 200 && text(i).is_some_and(|t| t.chars().count() > 5)
}

/// Writes rows `rows` of `data` with the metadata columns as
/// `shards` Parquet files under `root`.
fn write_with_metadata(root: &Path, data: &Data, rows: &[usize], shards: usize) {
    let d = data.u[0].len();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("original_width", DataType::Int64, false),
        Field::new("image_embedding", emb_type(d, false), true),
        Field::new("text", DataType::Utf8, true),
        Field::new("text_embedding", emb_type(d, false), true),
    ]));
    let per = rows.len().div_ceil(shards);
    for (s, part) in rows.chunks(per).enumerate() {
        let (mut ids, mut w, mut t) = (
            StringBuilder::new(),
            Int64Builder::new(),
            StringBuilder::new(),
        );
        for &i in part {
            ids.append_value(&data.ids[i]);
            w.append_value(width(i));
            t.append_option(text(i));
        }
        let u: Vec<Vec<f32>> = part.iter().map(|&i| data.u[i].clone()).collect();
        let v: Vec<Vec<f32>> = part.iter().map(|&i| data.v[i].clone()).collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(ids.finish()),
                Arc::new(w.finish()),
                emb_array(&u, d, false),
                Arc::new(t.finish()),
                emb_array(&v, d, false),
            ],
        )
        .unwrap();
        write_batch(&root.join(format!("part={s:02}/shard.parquet")), &batch);
    }
}

struct Case {
    dir: Dir,
    /// Every row, with metadata.
    all: PathBuf,
    /// Only the rows passing `PREDICATE`.
    passing: PathBuf,
    prompts: PathBuf,
    /// Canonical row index (in `all`) of each passing row.
    kept: Vec<usize>,
    rows: usize,
}

fn case(name: &str) -> Case {
    let dir = Dir::new(name);
    let rows = 900;
    let data = make_data(rows, 16, 4, 31);
    let (_, prompts) = write_data(&dir.path, &data, 1, false);
    let all = dir.join("all");
    write_with_metadata(&all, &data, &(0..rows).collect::<Vec<_>>(), 3);
    let kept: Vec<usize> = (0..rows).filter(|&i| passes(i)).collect();
    let passing = dir.join("passing");
    write_with_metadata(&passing, &data, &kept, 1);
    Case {
        dir,
        all,
        passing,
        prompts,
        kept,
        rows,
    }
}

fn manifest(out: &Path, name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join(name)).unwrap()).unwrap()
}

fn stages(m: &serde_json::Value) -> Vec<String> {
    m["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap().to_string())
        .collect()
}

/// The same picks, the filtered run's `row` being the canonical row index
/// of the row in the unfiltered input.
fn assert_same_picks(filtered: &Path, reference: &Path, kept: &[usize]) {
    let (a, b) = (read_subset_csv(filtered), read_subset_csv(reference));
    assert!(!a.is_empty());
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((&x.id, x.rank, x.class), (&y.id, y.rank, y.class));
        assert_eq!(x.row, kept[y.row as usize] as u64, "{}", x.id);
        assert!((x.score - y.score).abs() <= 1e-12, "{x:?} vs {y:?}");
        for (s, t) in x.terms.iter().zip(&y.terms) {
            assert!((s - t).abs() <= 1e-12, "{x:?} vs {y:?}");
        }
    }
}

#[test]
fn where_selects_as_if_only_passing_rows_were_given() {
    let c = case("where-select");
    assert!(c.kept.len() > 200 && c.kept.len() < c.rows / 2);
    let select = |data: &Path, out: &str, filter: Option<&str>| {
        let out = c.dir.join(out);
        let mut args = vec![
            "select",
            "--data",
            s(data),
            "--prompts",
            s(&c.prompts),
            "--fraction",
            "0.2",
            "--out",
            s(&out),
        ];
        if let Some(f) = filter {
            args.extend(["--where", f]);
        }
        let stdout = clipcov_ok(&args);
        (out, stdout)
    };
    let (out, stdout) = select(&c.all, "out", Some(PREDICATE));
    let (reference, _) = select(&c.passing, "ref", None);
    // The budget is a fraction of the rows that pass.
    let budget = (0.2 * c.kept.len() as f64).floor() as usize;
    assert!(
        stdout.contains(&format!("selected {budget} of {}", c.kept.len())),
        "{stdout}"
    );
    assert_same_picks(
        &out.join("clipcov/subset.csv"),
        &reference.join("clipcov/subset.csv"),
        &c.kept,
    );
    let m = manifest(&out, "manifest.json");
    assert_eq!(
        m["prefilter"],
        serde_json::json!({
            "predicate": PREDICATE,
            "columns": ["original_width", "text"],
            "rows_before": c.rows,
            "rows_after": c.kept.len(),
        })
    );
    assert_eq!(m["parameters"]["where"], PREDICATE);
    assert_eq!(m["rows"]["read"], c.rows);
    assert_eq!(m["rows"]["used"], c.kept.len());
    assert_eq!(m["rows"]["budget"], budget);
    assert_eq!(stages(&m)[..2], ["prefilter", "ingest"]);
    assert!(manifest(&reference, "manifest.json")["prefilter"].is_null());
}

#[test]
fn where_is_part_of_the_store_key() {
    let c = case("where-resume");
    let out = c.dir.join("out");
    let run = |filter: &str| {
        clipcov_ok(&[
            "select",
            "--data",
            s(&c.all),
            "--prompts",
            s(&c.prompts),
            "--budget",
            "50",
            "--where",
            filter,
            "--out",
            s(&out),
        ]);
        manifest(&out, "manifest.json")
    };
    let first = run(PREDICATE);
    let again = run(PREDICATE);
    assert_eq!(stages(&again)[0], "reuse-store");
    // A reused store still reports what the filter kept.
    assert_eq!(again["prefilter"], first["prefilter"]);
    let other = run("original_width < 200");
    assert_eq!(stages(&other)[..2], ["prefilter", "ingest"]);
    let narrow = (0..c.rows).filter(|&i| width(i) < 200).count();
    assert_eq!(other["prefilter"]["rows_after"], narrow);
    assert_eq!(other["rows"]["used"], narrow);
    for r in read_subset_csv(&out.join("clipcov/subset.csv")) {
        assert!(width(r.row as usize) < 200, "{r:?}");
    }
    // No filter at all is another store again.
    clipcov_ok(&[
        "select",
        "--data",
        s(&c.all),
        "--prompts",
        s(&c.prompts),
        "--budget",
        "50",
        "--out",
        s(&out),
    ]);
    let m = manifest(&out, "manifest.json");
    assert_eq!(stages(&m)[0], "ingest");
    assert_eq!(m["rows"]["used"], c.rows);
}

fn fails(args: &[&str], code: i32) -> String {
    let out = clipcov(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    err
}

#[test]
fn bad_predicates_fail_in_one_line_and_write_nothing() {
    let c = case("where-bad");
    let out = c.dir.join("out");
    let select = |filter: &str, code: i32| {
        fails(
            &[
                "select",
                "--data",
                s(&c.all),
                "--prompts",
                s(&c.prompts),
                "--fraction",
                "0.1",
                "--where",
                filter,
                "--out",
                s(&out),
            ],
            code,
        )
    };
    let nothing_written = || {
        for f in ["clipcov", "store", "manifest.json", "report.html"] {
            assert!(!out.join(f).exists(), "{f} was written");
        }
    };
    // Not SQL: a usage error naming the predicate.
    let err = select("original_width >= (200", 2);
    assert!(
        err.starts_with("clipcov: --where 'original_width >= (200': "),
        "{err}"
    );
    nothing_written();
    // A column the files lack: a data error naming the file and column.
    let err = select("original_height > 10", 65);
    assert!(
        err.contains("part=00/shard.parquet, column 'original_height': missing column (named in --where 'original_height > 10')"),
        "{err}"
    );
    assert!(
        err.contains("the file has columns: id, original_width"),
        "{err}"
    );
    nothing_written();
    // Nothing passes: a data error (the data, not the flags, empties it).
    let err = select("original_width > 100000", 65);
    assert!(err.contains("keeps none of the 900 rows"), "{err}");
    nothing_written();
    // Not a predicate for these types.
    let err = select("text + 1 > 2", 2);
    assert!(err.contains("cannot be evaluated on"), "{err}");
    nothing_written();
    // Baselines check the same way.
    let err = fails(
        &[
            "baseline",
            "random",
            "--data",
            s(&c.all),
            "--fraction",
            "0.1",
            "--where",
            "nope = 1",
            "--out",
            s(&out),
        ],
        65,
    );
    assert!(err.contains("column 'nope': missing column"), "{err}");
    nothing_written();
}

#[test]
fn baseline_and_compare_honour_where() {
    let c = case("where-methods");
    // `clipcov <command...> --data DATA --fraction 0.25 --out OUT [--where P]`.
    let run = |command: &[&str], data: &Path, out: &str, filter: Option<&str>| {
        let out = c.dir.join(out);
        let mut args = command.to_vec();
        args.extend(["--data", s(data), "--fraction", "0.25", "--out", s(&out)]);
        if let Some(f) = filter {
            args.extend(["--where", f]);
        }
        clipcov_ok(&args);
        out
    };
    // (id, row) of each pick, in rank order.
    let picks = |p: &Path| -> Vec<(String, u64)> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[0].to_string(), f[2].parse().unwrap())
            })
            .collect()
    };
    let same = |filtered: &Path, reference: &Path| {
        let (a, b) = (picks(filtered), picks(reference));
        assert!(!a.is_empty());
        let b: Vec<(String, u64)> = b
            .into_iter()
            .map(|(id, r)| (id, c.kept[r as usize] as u64))
            .collect();
        assert_eq!(a, b);
    };
    for method in ["random", "clip_score"] {
        let cmd = ["baseline", method];
        let a = run(&cmd, &c.all, &format!("{method}-where"), Some(PREDICATE));
        let b = run(&cmd, &c.passing, &format!("{method}-ref"), None);
        same(
            &a.join(format!("{method}/subset.csv")),
            &b.join(format!("{method}/subset.csv")),
        );
        let m = manifest(&a, "manifest.json");
        assert_eq!(m["prefilter"]["rows_after"], c.kept.len());
        assert_eq!(m["parameters"]["where"], PREDICATE);
    }
    let prompts = s(&c.prompts);
    let cmd = [
        "compare",
        "--prompts",
        prompts,
        "--methods",
        "clipcov,random,clip_score",
    ];
    let a = run(&cmd, &c.all, "compare-where", Some(PREDICATE));
    let b = run(&cmd, &c.passing, "compare-ref", None);
    assert_same_picks(
        &a.join("clipcov/subset.csv"),
        &b.join("clipcov/subset.csv"),
        &c.kept,
    );
    for method in ["random", "clip_score"] {
        same(
            &a.join(format!("{method}/subset.csv")),
            &b.join(format!("{method}/subset.csv")),
        );
    }
    let j = manifest(&a, "compare.json");
    assert_eq!(j["rows"], c.kept.len());
    assert_eq!(j["parameters"]["where"], PREDICATE);
    assert_eq!(j["parameters"]["prefilter"]["rows_before"], c.rows);
    assert!(j["shared"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["stage"] == "prefilter"));
}

#[test]
fn where_reads_clip_retrieval_metadata_and_pipeline_files() {
    let dir = Dir::new("where-cr");
    let data = make_data(300, 16, 4, 33);
    let (_, prompts) = write_data(&dir.path, &data, 1, true);
    let cr = dir.join("cr");
    crate::ecosystem::write_clip_retrieval(&cr, &data, 2, true);
    // The metadata's captions are "caption {i}": keep rows 100..=299 but
    // those ending in 7.
    let predicate = "length(caption) = 11 AND caption NOT LIKE '%7'";
    let kept: Vec<usize> = (100..300).filter(|i| i % 10 != 7).collect();
    // The same pairs, only those rows, in canonical layout.
    let sub = Data {
        ids: kept.iter().map(|&i| data.ids[i].clone()).collect(),
        u: kept.iter().map(|&i| data.u[i].clone()).collect(),
        v: kept.iter().map(|&i| data.v[i].clone()).collect(),
        prompts: data.prompts.clone(),
    };
    let (passing, _) = write_data(&dir.join("sub"), &sub, 1, true);
    let out = dir.join("out");
    // Through a pipeline file, with `where` as a key of [select].
    let toml = dir.join("where.toml");
    std::fs::write(
        &toml,
        format!(
            "command = \"select\"\n[input]\ndata = \"{}\"\nprompts = \"{}\"\n[select]\nfraction = 0.3\nwhere = \"{predicate}\"\n[output]\nout = \"{}\"\n",
            s(&cr),
            s(&prompts),
            s(&out)
        ),
    )
    .unwrap();
    clipcov_ok(&["run", s(&toml)]);
    let reference = dir.join("ref");
    clipcov_ok(&[
        "select",
        "--data",
        s(&passing),
        "--prompts",
        s(&prompts),
        "--fraction",
        "0.3",
        "--out",
        s(&reference),
    ]);
    assert_same_picks(
        &out.join("clipcov/subset.csv"),
        &reference.join("clipcov/subset.csv"),
        &kept,
    );
    let m = manifest(&out, "manifest.json");
    assert_eq!(m["parameters"]["layout"], "clip-retrieval");
    assert_eq!(m["prefilter"]["rows_after"], kept.len());
    // Without a metadata folder there is nothing to filter on.
    let bare = dir.join("bare");
    crate::ecosystem::write_clip_retrieval(&bare, &data, 1, false);
    let err = fails(
        &[
            "baseline",
            "random",
            "--data",
            s(&bare),
            "--fraction",
            "0.1",
            "--where",
            predicate,
            "--out",
            s(&dir.join("out-bare")),
        ],
        65,
    );
    assert!(
        err.contains("img_emb_0.npy: no metadata file to evaluate --where on"),
        "{err}"
    );
}
