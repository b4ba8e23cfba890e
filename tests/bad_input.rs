//! Every row of docs/formats.md's "Bad input" table: the exit status, a one-line
//! message naming the file (and row and column where they apply), and no
//! output left that looks complete.

use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};

use crate::util::*;

/// Runs `select` expecting failure; returns stderr.
fn fails(out: &Path, args: &[&str], code: i32) -> String {
    let o = clipcov(args);
    let err = error_text(&o);
    assert_eq!(
        o.status.code(),
        Some(code),
        "expected exit {code}, got {:?}: {err}",
        o.status.code()
    );
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "message is not one line: {err}"
    );
    assert!(err.starts_with("clipcov: "), "{err}");
    for f in [
        "clipcov/subset.parquet",
        "clipcov/subset.csv",
        "manifest.json",
        "store",
    ] {
        assert!(!out.join(f).exists(), "{f} left behind after a failure");
    }
    if out.exists() {
        // No temporary files either.
        let mut stack = vec![out.to_path_buf()];
        while let Some(p) = stack.pop() {
            for e in std::fs::read_dir(&p).unwrap() {
                let e = e.unwrap();
                assert!(
                    !e.file_name().to_string_lossy().contains(".tmp-"),
                    "temporary file left: {:?}",
                    e.path()
                );
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                }
            }
        }
    }
    err
}

struct Case {
    dir: Dir,
    data: std::path::PathBuf,
    prompts: std::path::PathBuf,
    out: std::path::PathBuf,
}

/// A good dataset of 40 rows, d = 8, with `edit` applied to the rows first.
fn case(name: &str, edit: impl FnOnce(&mut Data)) -> Case {
    let dir = Dir::new(name);
    let mut data = make_data(40, 8, 2, 5);
    edit(&mut data);
    let (data_dir, prompts) = write_data(&dir.path, &data, 2, false);
    let out = dir.join("out");
    Case {
        data: data_dir,
        prompts,
        out,
        dir,
    }
}

fn select_args<'a>(c: &'a Case, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "select",
        "--data",
        s(&c.data),
        "--prompts",
        s(&c.prompts),
        "--fraction",
        "0.5",
        "--out",
        s(&c.out),
    ];
    v.extend_from_slice(extra);
    v
}

/// Writes one shard with the given columns (replacing the good data).
fn replace_data(c: &Case, cols: Vec<(&str, ArrayRef)>) {
    std::fs::remove_dir_all(&c.data).unwrap();
    let fields: Vec<Field> = cols
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        cols.into_iter().map(|c| c.1).collect(),
    )
    .unwrap();
    write_batch(&c.data.join("only.parquet"), &batch);
}

fn ids(n: usize) -> ArrayRef {
    let mut b = StringBuilder::new();
    for i in 0..n {
        b.append_value(format!("x{i}"));
    }
    Arc::new(b.finish())
}

#[test]
fn missing_column() {
    let c = case("missing-col", |_| {});
    let d = make_data(10, 8, 2, 1);
    replace_data(
        &c,
        vec![
            ("id", ids(10)),
            ("image_embedding", emb_array(&d.u, 8, false)),
        ],
    );
    let err = fails(&c.out, &select_args(&c, &[]), 65);
    assert!(
        err.contains("only.parquet")
            && err.contains("'text_embedding'")
            && err.contains("missing column"),
        "{err}"
    );
}

#[test]
fn wrong_type() {
    let c = case("wrong-type", |_| {});
    let d = make_data(10, 8, 2, 1);
    replace_data(
        &c,
        vec![
            ("id", ids(10)),
            ("image_embedding", ids(10)),
            ("text_embedding", emb_array(&d.v, 8, false)),
        ],
    );
    let err = fails(&c.out, &select_args(&c, &[]), 65);
    assert!(
        err.contains("'image_embedding'") && err.contains("not an embedding"),
        "{err}"
    );
}

#[test]
fn lengths_differ_between_rows() {
    let c = case("len-rows", |_| {});
    // A List column whose row 3 is shorter.
    let mut b = arrow_array::builder::ListBuilder::new(arrow_array::builder::Float32Builder::new());
    for i in 0..10 {
        let len = if i == 3 { 7 } else { 8 };
        for j in 0..len {
            b.values().append_value(1.0 + j as f32);
        }
        b.append(true);
    }
    let d = make_data(10, 8, 2, 1);
    replace_data(
        &c,
        vec![
            ("id", ids(10)),
            ("image_embedding", Arc::new(b.finish())),
            ("text_embedding", emb_array(&d.v, 8, false)),
        ],
    );
    let err = fails(&c.out, &select_args(&c, &[]), 65);
    assert!(
        err.contains("row 3")
            && err.contains("'image_embedding'")
            && err.contains("length 7, expected 8"),
        "{err}"
    );
}

#[test]
fn lengths_differ_between_image_and_text() {
    let c = case("len-towers", |_| {});
    let d = make_data(10, 8, 2, 1);
    let d6 = make_data(10, 6, 2, 1);
    replace_data(
        &c,
        vec![
            ("id", ids(10)),
            ("image_embedding", emb_array(&d.u, 8, false)),
            ("text_embedding", emb_array(&d6.v, 6, false)),
        ],
    );
    let err = fails(&c.out, &select_args(&c, &[]), 65);
    assert!(
        err.contains("row 0")
            && err.contains("'text_embedding'")
            && err.contains("length 6, expected 8"),
        "{err}"
    );
}

#[test]
fn lengths_differ_from_prompts() {
    let c = case("len-prompts", |_| {});
    let p = make_data(4, 12, 2, 1);
    write_prompts(&c.prompts, &p.prompts);
    let err = fails(&c.out, &select_args(&c, &[]), 65);
    assert!(
        err.contains("length 8, expected 12") && err.contains("prompts"),
        "{err}"
    );
}

#[test]
fn non_finite_component_errors_or_skips() {
    let c = case("nan", |d| d.u[25][3] = f32::NAN);
    let err = fails(&c.out, &select_args(&c, &[]), 65);
    // Row 25 is row 5 of the second shard (20 rows a shard).
    assert!(
        err.contains("part=01")
            && err.contains("row 5")
            && err.contains("'image_embedding'")
            && err.contains("non-finite"),
        "{err}"
    );
    assert!(err.contains("--on-bad-row skip"), "{err}");
    clipcov_ok(&select_args(&c, &["--on-bad-row", "skip"]));
    let rows = read_subset_csv(&c.out.join("clipcov/subset.csv"));
    assert_eq!(rows.len(), 19, "floor(0.5 * 39 usable rows)");
    assert!(rows.iter().all(|r| r.id != "pair-000025"));
    assert!(c.out.join("rejects.parquet").exists());
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.out.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(m["rows"]["read"], 40);
    assert_eq!(m["rows"]["skipped"], 1);
    assert_eq!(m["rows"]["used"], 39);
}

#[test]
fn zero_vector() {
    let c = case("zero", |d| d.v[2] = vec![0.0; 8]);
    let err = fails(&c.out, &select_args(&c, &[]), 65);
    assert!(
        err.contains("row 2") && err.contains("'text_embedding'") && err.contains("zero vector"),
        "{err}"
    );
}

#[test]
fn duplicate_id_errors_or_keeps_first() {
    let c = case("dup", |d| d.ids[30] = d.ids[4].clone());
    let err = fails(&c.out, &select_args(&c, &[]), 65);
    assert!(
        err.contains("row 10")
            && err.contains("'id'")
            && err.contains("duplicate id 'pair-000004'")
            && err.contains("row 4"),
        "{err}"
    );
    let mut args = select_args(&c, &["--on-duplicate", "keep-first"]);
    args[6] = "1"; // --fraction 1
    clipcov_ok(&args);
    let rows = read_subset_csv(&c.out.join("clipcov/subset.csv"));
    assert_eq!(rows.len(), 39);
    assert!(
        rows.iter().all(|r| r.row != 30),
        "the second occurrence is dropped"
    );
    assert!(
        rows.iter().any(|r| r.row == 4),
        "the first occurrence stays"
    );
}

#[test]
fn corrupt_and_truncated_files() {
    let c = case("corrupt", |_| {});
    let shard = c.data.join("part=01/shard.parquet");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    let err = fails(&c.out, &select_args(&c, &[]), 65);
    assert!(
        err.contains("part=01/shard.parquet") && err.contains("not a readable Parquet file"),
        "{err}"
    );
    std::fs::write(&shard, b"this is not parquet at all, just text").unwrap();
    let err = fails(&c.out, &select_args(&c, &[]), 65);
    assert!(err.contains("part=01/shard.parquet"), "{err}");
    // Damage inside a data page (footer intact).
    let mut bad = bytes.clone();
    for b in bad.iter_mut().skip(100).take(400) {
        *b = 0xAB;
    }
    std::fs::write(&shard, &bad).unwrap();
    let err = fails(&c.out, &select_args(&c, &[]), 65);
    assert!(err.contains("part=01/shard.parquet"), "{err}");
}

#[test]
fn missing_input_is_an_io_error() {
    let c = case("missing-input", |_| {});
    let gone = c.dir.join("nope");
    let out = c.out.clone();
    let err = fails(
        &out,
        &[
            "select",
            "--data",
            s(&gone),
            "--prompts",
            s(&c.prompts),
            "--fraction",
            "0.5",
            "--out",
            s(&out),
        ],
        74,
    );
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let c = case("usage", |_| {});
    let out = c.out.clone();
    fails(
        &out,
        &[
            "select",
            "--data",
            s(&c.data),
            "--fraction",
            "0.5",
            "--out",
            s(&out),
        ],
        2,
    );
    fails(&out, &select_args(&c, &["--tau", "often"]), 2);
    fails(&out, &select_args(&c, &["--weights", "1,2"]), 2);
    fails(&out, &select_args(&c, &["--memory-limit", "lots"]), 2);
    let o = clipcov(&[
        "select",
        "--data",
        s(&c.data),
        "--prompts",
        s(&c.prompts),
        "--fraction",
        "1.5",
        "--out",
        s(&out),
    ]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn null_id() {
    let c = case("null-id", |_| {});
    let d = make_data(10, 8, 2, 1);
    let mut b = StringBuilder::new();
    for i in 0..10 {
        if i == 6 {
            b.append_null();
        } else {
            b.append_value(format!("x{i}"));
        }
    }
    replace_data(
        &c,
        vec![
            ("id", Arc::new(b.finish())),
            ("image_embedding", emb_array(&d.u, 8, false)),
            ("text_embedding", emb_array(&d.v, 8, false)),
        ],
    );
    let err = fails(&c.out, &select_args(&c, &[]), 65);
    assert!(
        err.contains("row 6") && err.contains("'id'") && err.contains("null id"),
        "{err}"
    );
    let _ = DataType::Utf8;
}

/// A small, full file system: exit 74, a clear message, nothing partial.
#[test]
fn disk_full_is_an_io_error_and_leaves_nothing() {
    let c = case("disk-full", |_| {});
    let big = make_data(30000, 64, 3, 2);
    let (data, prompts) = write_data(&c.dir.join("big"), &big, 2, false);
    let mnt = c.dir.join("small-fs");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs", s(&mnt)])
        .status()
        .is_ok_and(|st| st.success());
    if !mounted {
        eprintln!("SKIPPED disk_full test: cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(&mnt);
    let out = mnt.join("out");
    let err = fails(
        &out,
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
        ],
        74,
    );
    assert!(
        err.contains("disk is full") || err.contains("No space left"),
        "{err}"
    );
    assert!(err.contains(s(&mnt)), "{err}");
}

/// Ids that look like paths never make clipcov write outside OUT.
#[test]
fn path_like_ids_stay_inside_out() {
    let c = case("path-ids", |d| {
        d.ids[0] = "../../escaped".into();
        d.ids[1] = "/tmp/clipcov-absolute-id".into();
        d.ids[2] = "nul\0byte".into();
    });
    clipcov_ok(&select_args(&c, &[]));
    let rows = read_subset_csv(&c.out.join("clipcov/subset.csv"));
    assert_eq!(rows.len(), 20);
    assert!(!c.dir.path.parent().unwrap().join("escaped").exists());
    assert!(!std::path::Path::new("/tmp/clipcov-absolute-id").exists());
    // Everything written is under OUT.
    let names: Vec<String> = std::fs::read_dir(&c.dir.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["data", "out", "prompts.parquet"]);
}

/// Every file in tests/data/bad (fuzz findings among them) gives exit 65
/// and one line naming it; a file added there without an entry here fails.
#[test]
fn bad_files_give_one_line_errors() {
    let known = [
        "fuzz-f16-fixed-len-panic.parquet",
        "fuzz-prompts-decoder-panic.parquet",
        "where-int32-decoder-panic.parquet",
        "eval-label-decoder-panic.parquet",
    ];
    let bad = repo_root().join("tests/data/bad");
    let mut found: Vec<String> = std::fs::read_dir(&bad)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    for f in &found {
        assert!(
            known.contains(&f.as_str()),
            "Found new file in tests/data/bad, please add it to this test: {f}"
        );
    }
    for name in known {
        let c = case(&format!("bad-file-{name}"), |_| {});
        std::fs::remove_dir_all(&c.data).unwrap();
        std::fs::create_dir_all(&c.data).unwrap();
        std::fs::copy(bad.join(name), c.data.join(name)).unwrap();
        let err = fails(
            &c.out,
            &[
                "select",
                "--data",
                s(&c.data),
                "--clusters",
                "2",
                "--fraction",
                "0.5",
                "--out",
                s(&c.out),
            ],
            65,
        );
        assert!(err.contains(name), "{err}");
    }
}

/// A Parquet file whose float16 column makes the decoder panic (a fuzz
/// finding) gives exit 65 and one line naming it wherever clipcov reads
/// Parquet: as `--targets`, as the metadata `--keep-columns` reads; and
/// int32 columns with a damaged page (found by corrupting bytes at random)
/// as the metadata `--where` reads and as an eval set.
#[test]
fn decoder_panics_outside_the_shards_are_data_errors() {
    let panicky = repo_root().join("tests/data/bad/fuzz-f16-fixed-len-panic.parquet");
    let c = case("panic-targets", |_| {});
    let err = fails(
        &c.out,
        &[
            "baseline",
            "datacomp_image_based",
            "--data",
            s(&c.data),
            "--targets",
            s(&panicky),
            "--clusters",
            "2",
            "--out",
            s(&c.out),
        ],
        65,
    );
    assert!(
        err.contains("fuzz-f16-fixed-len-panic.parquet") && err.contains("the decoder failed"),
        "{err}"
    );

    // A clip-retrieval folder with row-index ids: the metadata file (the
    // panicking one, 20 rows) is read only for --keep-columns.
    let dir = Dir::new("panic-keep-columns");
    let root = dir.join("pool");
    let data = make_data(20, 3, 2, 3);
    for (sub, rows) in [
        ("img_emb/img_emb_0.npy", &data.u),
        ("text_emb/text_emb_0.npy", &data.v),
    ] {
        let mut b = clipcov::formats::npy::header_bytes("'<f4'", "(20, 3)");
        b.extend(rows.iter().flatten().flat_map(|x| x.to_le_bytes()));
        let p = root.join(sub);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b).unwrap();
    }
    let meta = root.join("metadata/metadata_0.parquet");
    std::fs::create_dir_all(meta.parent().unwrap()).unwrap();
    std::fs::copy(&panicky, &meta).unwrap();
    let out = dir.join("out");
    let err = fails(
        &out,
        &[
            "select",
            "--data",
            s(&root),
            "--id-column",
            ":row",
            "--clusters",
            "2",
            "--fraction",
            "0.5",
            "--keep-columns",
            "text_embedding",
            "--out",
            s(&out),
        ],
        65,
    );
    assert!(
        err.contains("metadata_0.parquet") && err.contains("the decoder failed"),
        "{err}"
    );

    // --where reads an int32 column whose damaged page panics the decoder.
    std::fs::copy(
        repo_root().join("tests/data/bad/where-int32-decoder-panic.parquet"),
        &meta,
    )
    .unwrap();
    let err = fails(
        &out,
        &[
            "select",
            "--data",
            s(&root),
            "--id-column",
            ":row",
            "--clusters",
            "2",
            "--fraction",
            "0.5",
            "--where",
            "w IS NOT NULL",
            "--out",
            s(&out),
        ],
        65,
    );
    assert!(
        err.contains("metadata_0.parquet") && err.contains("the decoder failed"),
        "{err}"
    );

    // An eval set (d = 3) whose label page panics the decoder.
    let (data, prompts) = synth_at(&dir.join("synth"), "--rows 200 --classes 3 --dim 3");
    let run = dir.join("run");
    clipcov_ok(&[
        "select",
        "--data",
        s(&data),
        "--prompts",
        s(&prompts),
        "--fraction",
        "0.5",
        "--quiet",
        "--out",
        s(&run),
    ]);
    let work = dir.join("work");
    let err = fails(
        &work,
        &[
            "eval",
            "--data",
            s(&data),
            "--subset",
            s(&run.join("clipcov/subset.parquet")),
            "--eval-set",
            s(&repo_root().join("tests/data/bad/eval-label-decoder-panic.parquet")),
            "--prompts",
            s(&prompts),
            "--work",
            s(&work),
        ],
        65,
    );
    assert!(
        err.contains("eval-label-decoder-panic.parquet") && err.contains("the decoder failed"),
        "{err}"
    );
}

/// Prompts whose rows differ in length: a sentence naming the lengths, not
/// a Rust debug dump.
#[test]
fn prompt_rows_of_different_lengths() {
    use arrow_array::builder::{Float32Builder, Int32Builder, ListBuilder};
    let c = case("prompt-lengths", |_| {});
    let mut ids = Int32Builder::new();
    let mut names = StringBuilder::new();
    let mut emb = ListBuilder::new(Float32Builder::new());
    for (k, len) in [(0, 8), (1, 5)] {
        ids.append_value(k);
        names.append_value(format!("class {k}"));
        for j in 0..len {
            emb.values().append_value(1.0 + j as f32);
        }
        emb.append(true);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(ids.finish()),
        Arc::new(names.finish()),
        Arc::new(emb.finish()),
    ];
    let fields: Vec<Field> = ["class_id", "name", "text_embedding"]
        .iter()
        .zip(&cols)
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap();
    std::fs::remove_file(&c.prompts).unwrap();
    write_batch(&c.prompts, &batch);
    let err = fails(&c.out, &select_args(&c, &[]), 65);
    assert!(
        err.contains("prompts.parquet")
            && err.contains("row 1")
            && err.contains("length 5, expected 8")
            && !err.contains("Length("),
        "{err}"
    );
}

/// A kept column may not reuse a baseline's term name (the subset would
/// hold two columns of that name).
#[test]
fn keep_columns_refuses_term_names() {
    let c = case("keep-term-name", |_| {});
    for (method, term) in [
        ("semdedup", "centroid_distance"),
        ("random", "learner_loss"),
    ] {
        let err = fails(
            &c.out,
            &[
                "baseline",
                method,
                "--data",
                s(&c.data),
                "--fraction",
                "0.5",
                "--keep-columns",
                term,
                "--out",
                s(&c.out),
            ],
            2,
        );
        assert!(
            err.contains("--keep-columns") && err.contains(term),
            "{err}"
        );
    }
}
