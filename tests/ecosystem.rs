//! The layouts of other tools: a DataComp pool (parquet + npz) in, DataComp
//! subset files out, clip-retrieval output in, bad npy/npz files.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use arrow_array::builder::{Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use half::f16;

use crate::util::*;

/// Writes `rows` as a `.npy` file (float16 or float32), by hand.
fn write_npy(path: &Path, rows: &[Vec<f32>], f16_out: bool, descr: &str) {
    let d = rows.first().map_or(0, |r| r.len());
    let mut h = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': ({}, {d}), }}",
        rows.len()
    );
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((h.len() as u16).to_le_bytes());
    b.extend(h.as_bytes());
    for x in rows.iter().flatten() {
        if f16_out {
            b.extend(f16::from_f32(*x).to_le_bytes());
        } else {
            b.extend(x.to_le_bytes());
        }
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, b).unwrap();
}

/// Runs a Python script that needs numpy; fails the test with the reason
/// when python3 or numpy is missing (`.ci/run` installs numpy).
fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 is needed for the DataComp tests (pip install numpy)");
    assert!(
        out.status.success(),
        "python3 failed (is numpy installed? pip install numpy): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn uid(g: &mut Gen) -> String {
    format!("{:016x}{:016x}", g.next(), g.next())
}

fn write_pool_parquet(path: &Path, uids: &[String], rows: std::ops::Range<usize>) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("uid", DataType::Utf8, false),
        Field::new("url", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, true),
        Field::new("original_width", DataType::Int64, false),
        Field::new("original_height", DataType::Int64, false),
    ]));
    let (mut u, mut url, mut text, mut w, mut h) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        Int64Builder::new(),
        Int64Builder::new(),
    );
    for i in rows {
        u.append_value(&uids[i]);
        url.append_value(format!("https://example.com/{i}.jpg"));
        text.append_value(format!("a caption, \"number\" {i}"));
        w.append_value(100 + i as i64);
        h.append_value(50);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(u.finish()),
        Arc::new(url.finish()),
        Arc::new(text.finish()),
        Arc::new(w.finish()),
        Arc::new(h.finish()),
    ];
    write_batch(path, &RecordBatch::try_new(schema, cols).unwrap());
}

const SAVEZ: &str = "
import sys, numpy as np
out, compressed = sys.argv[1], sys.argv[2] == '1'
arrs = {k: np.load(p) for k, p in zip(['l14_img', 'l14_txt', 'b32_img', 'b32_txt'], sys.argv[3:7])}
assert all(a.dtype == np.float16 for a in arrs.values())
(np.savez_compressed if compressed else np.savez)(out, **arrs)
";

/// `(id, row)` of each row of a `subset.csv` (ids without commas).
fn ids_rows(p: &Path) -> Vec<(String, u64)> {
    core_columns(p)
        .iter()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_string(), f[2].parse().unwrap())
        })
        .collect()
}

/// The CSV without the columns after `score` and the terms.
fn core_columns(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| l.split(',').take(9).collect::<Vec<_>>().join(","))
        .collect()
}

#[test]
fn datacomp_pool_runs_end_to_end_and_writes_datacomp_uids() {
    let dir = Dir::new("datacomp");
    let mut data = make_data(600, 16, 4, 11);
    let mut g = Gen::new(5);
    data.ids = (0..600).map(|_| uid(&mut g)).collect();
    // The same pairs in canonical layout: the reference selection.
    let (canon, prompts) = write_data(&dir.path, &data, 2, true);
    let pool = dir.join("pool");
    let b32: Vec<Vec<f32>> = (0..600)
        .map(|_| (0..8).map(|_| g.sym() as f32).collect())
        .collect();
    for (shard, r) in [(0, 0..300), (1, 300..600)] {
        let stem = format!("{shard:08}");
        write_pool_parquet(&pool.join(format!("{stem}.parquet")), &data.ids, r.clone());
        let tmp = dir.join(&format!("npy{shard}"));
        let mut paths = Vec::new();
        for (name, rows) in [
            ("a", &data.u[r.clone()]),
            ("b", &data.v[r.clone()]),
            ("c", &b32[r.clone()]),
            ("d", &b32[r.clone()]),
        ] {
            let p = tmp.join(format!("{name}.npy"));
            write_npy(&p, rows, true, "<f2");
            paths.push(p);
        }
        // One shard stored (numpy.savez), one deflated (savez_compressed).
        let npz = pool.join(format!("{stem}.npz"));
        let mut args = vec![s(&npz).to_string(), shard.to_string()];
        args.extend(paths.iter().map(|p| s(p).to_string()));
        python(SAVEZ, &args.iter().map(String::as_str).collect::<Vec<_>>());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
    let out = dir.join("out");
    let stdout = clipcov_ok(&[
        "select",
        "--data",
        s(&pool),
        "--prompts",
        s(&prompts),
        "--fraction",
        "0.2",
        "--keep-columns",
        "url,text,original_width",
        "--out",
        s(&out),
    ]);
    assert!(stdout.contains("selected 120 of 600"), "{stdout}");
    let reference = dir.join("ref");
    clipcov_ok(&[
        "select",
        "--data",
        s(&canon),
        "--prompts",
        s(&prompts),
        "--fraction",
        "0.2",
        "--out",
        s(&reference),
    ]);
    // Same pairs, same selection, whatever the layout.
    assert_eq!(
        core_columns(&out.join("clipcov/subset.csv")),
        core_columns(&reference.join("clipcov/subset.csv"))
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["parameters"]["layout"], "datacomp");
    // Kept metadata follows each row (quoted when it holds commas/quotes).
    let rows = ids_rows(&out.join("clipcov/subset.csv"));
    let csv = std::fs::read_to_string(out.join("clipcov/subset.csv")).unwrap();
    let header = csv.lines().next().unwrap();
    assert!(header.ends_with(",url,text,original_width"), "{header}");
    assert_eq!(rows.len(), 120);
    for ((id, i), line) in rows.iter().zip(csv.lines().skip(1)) {
        let i = *i;
        assert!(
            line.ends_with(&format!(
                ",https://example.com/{i}.jpg,\"a caption, \"\"number\"\" {i}\",{}",
                100 + i
            )),
            "{line}"
        );
        assert_eq!(*id, data.ids[i as usize]);
    }
    // datacomp_uids.npy: what resharder.py --subset-file reads.
    let check = "
import sys, numpy as np
a = np.load(sys.argv[1])
assert a.dtype == np.dtype([('f0', '<u8'), ('f1', '<u8')]), a.dtype
assert a.shape == (int(sys.argv[3]),), a.shape
assert (np.sort(a, order=['f0', 'f1']) == a).all(), 'not sorted'
assert len(np.unique(a)) == len(a)
want = sorted(l.split(',')[0] for l in open(sys.argv[2]).read().splitlines()[1:])
got = ['%016x%016x' % (int(x['f0']), int(x['f1'])) for x in a]
assert got == want, (got[:3], want[:3])
print('ok', len(a))
";
    let said = python(
        check,
        &[
            s(&out.join("clipcov/datacomp_uids.npy")),
            s(&out.join("clipcov/subset.csv")),
            "120",
        ],
    );
    assert_eq!(said.trim(), "ok 120");
    // The canonical run has the same uids as ids: it writes the file too.
    assert_eq!(
        std::fs::read(out.join("clipcov/datacomp_uids.npy")).unwrap(),
        std::fs::read(reference.join("clipcov/datacomp_uids.npy")).unwrap()
    );
    // The shipped pipeline file, pointed at this pool: the same selection.
    let root = repo_root();
    let piped = dir.join("piped");
    clipcov_ok(&[
        "run",
        s(&root.join("pipelines/datacomp.toml")),
        "--data",
        s(&pool),
        "--prompts",
        s(&prompts),
        "--fraction",
        "0.2",
        "--out",
        s(&piped),
    ]);
    assert_eq!(
        core_columns(&piped.join("clipcov/subset.csv")),
        core_columns(&out.join("clipcov/subset.csv"))
    );
    assert_eq!(
        std::fs::read(piped.join("clipcov/datacomp_uids.npy")).unwrap(),
        std::fs::read(out.join("clipcov/datacomp_uids.npy")).unwrap()
    );
    // The other tower works as well (d = 8, k-means classes), for a baseline.
    let b = dir.join("b32");
    clipcov_ok(&[
        "baseline",
        "random",
        "--data",
        s(&pool),
        "--layout",
        "datacomp",
        "--model",
        "b32",
        "--fraction",
        "0.1",
        "--out",
        s(&b),
    ]);
    assert_eq!(ids_rows(&b.join("random/subset.csv")).len(), 60);
    assert!(b.join("random/datacomp_uids.npy").exists());
}

pub(crate) fn write_clip_retrieval(root: &Path, data: &Data, parts: usize, meta: bool) {
    let n = data.ids.len();
    let per = n.div_ceil(parts);
    for p in 0..parts {
        let r = (p * per).min(n)..((p + 1) * per).min(n);
        write_npy(
            &root.join(format!("img_emb/img_emb_{p}.npy")),
            &data.u[r.clone()],
            true,
            "<f2",
        );
        write_npy(
            &root.join(format!("text_emb/text_emb_{p}.npy")),
            &data.v[r.clone()],
            true,
            "<f2",
        );
        if meta {
            let schema = Arc::new(Schema::new(vec![
                Field::new("image_path", DataType::Utf8, false),
                Field::new("caption", DataType::Utf8, false),
            ]));
            let (mut a, mut c) = (StringBuilder::new(), StringBuilder::new());
            for i in r {
                a.append_value(&data.ids[i]);
                c.append_value(format!("caption {i}"));
            }
            let cols: Vec<ArrayRef> = vec![Arc::new(a.finish()), Arc::new(c.finish())];
            write_batch(
                &root.join(format!("metadata/metadata_{p}.parquet")),
                &RecordBatch::try_new(schema, cols).unwrap(),
            );
        }
    }
}

#[test]
fn clip_retrieval_output_gives_the_canonical_selection() {
    let dir = Dir::new("clip-retrieval");
    let data = make_data(500, 16, 4, 12);
    let (canon, prompts) = write_data(&dir.path, &data, 2, true);
    let cr = dir.join("cr");
    write_clip_retrieval(&cr, &data, 2, true);
    let run = |data_dir: &Path, out: &str, extra: &[&str]| {
        let o = dir.join(out);
        let mut args = vec![
            "select",
            "--data",
            s(data_dir),
            "--prompts",
            s(&prompts),
            "--fraction",
            "0.3",
            "--out",
            s(&o),
        ];
        args.extend_from_slice(extra);
        clipcov_ok(&args);
        o
    };
    let a = run(&canon, "canon", &[]);
    let b = run(&cr, "cr-out", &[]);
    assert_eq!(
        std::fs::read(a.join("clipcov/subset.csv")).unwrap(),
        std::fs::read(b.join("clipcov/subset.csv")).unwrap(),
        "clip-retrieval and canonical layouts select differently"
    );
    assert_eq!(
        std::fs::read(a.join("clipcov/subset.parquet")).unwrap(),
        std::fs::read(b.join("clipcov/subset.parquet")).unwrap()
    );
    // Ids are not uids: no datacomp_uids.npy.
    assert!(!b.join("clipcov/datacomp_uids.npy").exists());
    // Row-index ids, and the caption carried along.
    let c = run(
        &cr,
        "cr-row",
        &[
            "--layout",
            "clip-retrieval",
            "--id-column",
            ":row",
            "--keep-columns",
            "caption",
        ],
    );
    let rows = ids_rows(&c.join("clipcov/subset.csv"));
    assert_eq!(rows.len(), 150);
    let csv = std::fs::read_to_string(c.join("clipcov/subset.csv")).unwrap();
    for ((id, row), line) in rows.iter().zip(csv.lines().skip(1)) {
        assert_eq!(*id, row.to_string());
        assert!(line.ends_with(&format!(",caption {row}")), "{line}");
    }
    // The shipped pipeline file (k-means classes), pointed at this folder.
    let root = repo_root();
    let piped = dir.join("piped");
    clipcov_ok(&[
        "run",
        s(&root.join("pipelines/clip-retrieval.toml")),
        "--data",
        s(&cr),
        "--clusters",
        "4",
        "--out",
        s(&piped),
    ]);
    let csv = std::fs::read_to_string(piped.join("clipcov/subset.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 125);
    assert!(csv.lines().next().unwrap().ends_with(",caption"));
    // Without a metadata folder the row index is the id.
    let bare = dir.join("bare");
    write_clip_retrieval(&bare, &data, 3, false);
    let d = run(&bare, "bare-out", &[]);
    assert_eq!(
        core_columns(&d.join("clipcov/subset.csv"))
            .iter()
            .skip(1)
            .map(|l| l.split_once(',').unwrap().1.to_string())
            .collect::<Vec<_>>(),
        core_columns(&a.join("clipcov/subset.csv"))
            .iter()
            .skip(1)
            .map(|l| l.split_once(',').unwrap().1.to_string())
            .collect::<Vec<_>>()
    );
}

fn fails(args: &[&str], code: i32) -> String {
    let out = clipcov(args);
    let err = error_text(&out);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    err
}

#[test]
fn bad_npy_and_npz_files_exit_65_naming_the_file() {
    let dir = Dir::new("bad-npy");
    let data = make_data(40, 8, 2, 13);
    let select = |root: &Path, out: &str| -> Vec<String> {
        vec![
            "baseline".into(),
            "random".into(),
            "--data".into(),
            s(root).into(),
            "--fraction".into(),
            "0.5".into(),
            "--out".into(),
            s(&dir.join(out)).into(),
        ]
    };
    let run_fail = |root: &Path, out: &str| {
        let a = select(root, out);
        fails(&a.iter().map(String::as_str).collect::<Vec<_>>(), 65)
    };
    // clip-retrieval: float64, 1-D, truncated, Fortran order, not npy.
    let cr = dir.join("cr");
    write_clip_retrieval(&cr, &data, 1, false);
    let img = cr.join("img_emb/img_emb_0.npy");
    write_npy(&img, &data.u, false, "<f8");
    let e = run_fail(&cr, "o1");
    assert!(e.contains(s(&img)) && e.contains("dtype '<f8'"), "{e}");
    let good = {
        write_npy(&img, &data.u, false, "<f4");
        std::fs::read(&img).unwrap()
    };
    let edit = |f: &dyn Fn(&str) -> String| {
        let end = 10 + u16::from_le_bytes([good[8], good[9]]) as usize;
        let h = String::from_utf8(good[10..end].to_vec()).unwrap();
        let h2 = f(&h);
        assert!(h2 != h && h2.len() == h.len());
        let mut b = good[..10].to_vec();
        b.extend(h2.as_bytes());
        b.extend(&good[end..]);
        std::fs::write(&img, b).unwrap();
    };
    edit(&|h| h.replace("(40, 8)", "(320,) "));
    let e = run_fail(&cr, "o2");
    assert!(
        e.contains(s(&img)) && e.contains("expected a 2-D array"),
        "{e}"
    );
    edit(&|h| h.replace("False", "True "));
    let e = run_fail(&cr, "o3");
    assert!(e.contains(s(&img)) && e.contains("Fortran order"), "{e}");
    std::fs::write(&img, &good[..good.len() - 10]).unwrap();
    let e = run_fail(&cr, "o4");
    assert!(e.contains(s(&img)) && e.contains("truncated"), "{e}");
    std::fs::write(&img, b"not numpy at all").unwrap();
    let e = run_fail(&cr, "o5");
    assert!(e.contains(s(&img)) && e.contains("no NumPy magic"), "{e}");
    // Image and caption files of different lengths name both files.
    write_npy(&img, &data.u[..39], false, "<f4");
    let e = run_fail(&cr, "o6");
    assert!(
        e.contains(s(&img)) && e.contains("text_emb_0.npy") && e.contains("39 rows"),
        "{e}"
    );

    // DataComp: row counts of parquet and npz differ; missing key; not a zip.
    let pool = dir.join("pool");
    let uids: Vec<String> = {
        let mut g = Gen::new(1);
        (0..40).map(|_| uid(&mut g)).collect()
    };
    write_pool_parquet(&pool.join("00000000.parquet"), &uids, 0..40);
    let tmp = dir.join("npy");
    let mut paths = Vec::new();
    for (name, rows) in [
        ("a", &data.u[..39]),
        ("b", &data.v[..39]),
        ("c", &data.u[..39]),
        ("d", &data.v[..39]),
    ] {
        let p = tmp.join(format!("{name}.npy"));
        write_npy(&p, rows, true, "<f2");
        paths.push(s(&p).to_string());
    }
    let npz = pool.join("00000000.npz");
    let mut args = vec![s(&npz).to_string(), "0".into()];
    args.extend(paths);
    python(SAVEZ, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let e = run_fail(&pool, "o7");
    assert!(
        e.contains("00000000.parquet")
            && e.contains("00000000.npz")
            && e.contains("40 rows")
            && e.contains("39 rows"),
        "{e}"
    );
    let strip = "
import sys, numpy as np
z = dict(np.load(sys.argv[1]))
del z['l14_img']
np.savez(sys.argv[1], **z)
";
    python(strip, &[s(&npz)]);
    let e = run_fail(&pool, "o8");
    assert!(
        e.contains(s(&npz)) && e.contains("no array 'l14_img'") && e.contains("b32_img"),
        "{e}"
    );
    std::fs::write(&npz, b"PK garbage").unwrap();
    let e = run_fail(&pool, "o9");
    assert!(
        e.contains(s(&npz)) && e.contains("not a readable .npz"),
        "{e}"
    );
}

/// `--keep-columns` over shards where the second one is empty: every kept
/// value belongs to its row (an empty shard owns no row of the order).
#[test]
fn keep_columns_after_an_empty_shard() {
    let dir = Dir::new("keep-empty-shard");
    let d = 4;
    let data = make_data(20, d, 2, 11);
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("image_embedding", emb_type(d, false), true),
        Field::new("text_embedding", emb_type(d, false), true),
        Field::new("caption", DataType::Utf8, false),
    ]));
    // part=00: rows 0..10, part=01: no rows, part=02: rows 10..20.
    for (part, r) in [(0, 0..10), (1, 10..10), (2, 10..20)] {
        let mut ids = StringBuilder::new();
        let mut caps = StringBuilder::new();
        for i in r.clone() {
            ids.append_value(format!("x{i}"));
            caps.append_value(format!("caption of row {i}"));
        }
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(ids.finish()),
                emb_array(&data.u[r.clone()], d, false),
                emb_array(&data.v[r.clone()], d, false),
                Arc::new(caps.finish()),
            ],
        )
        .unwrap();
        write_batch(
            &dir.join(&format!("data/part={part:02}/shard.parquet")),
            &batch,
        );
    }
    let out = dir.join("out");
    clipcov_ok(&[
        "select",
        "--data",
        s(&dir.join("data")),
        "--clusters",
        "2",
        "--fraction",
        "1",
        "--keep-columns",
        "caption",
        "--out",
        s(&out),
    ]);
    let csv = std::fs::read_to_string(out.join("clipcov/subset.csv")).unwrap();
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().ends_with(",caption"));
    let mut seen = 0;
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let row: u64 = f[2].parse().unwrap();
        assert_eq!(f[0], format!("x{row}"), "{line}");
        assert_eq!(f[f.len() - 1], format!("caption of row {row}"), "{line}");
        seen += 1;
    }
    assert_eq!(seen, 20);
}
