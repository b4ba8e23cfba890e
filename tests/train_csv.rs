//! `--train-csv`: train.csv read back exactly as CyCLIP's and OpenCLIP's
//! loaders read it (pandas.read_csv with their separators and keys), every
//! image path resolved as they resolve it, every caption compared with the
//! source; and the bad inputs (missing column, null path or caption,
//! missing image root).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Schema};

use crate::util::*;

/// Captions that break naive CSV/TSV writers.
const HARD: [&str; 14] = [
    "plain words",
    "commas, more, commas",
    "she said \"hi\" and \"\"bye\"\"",
    "\"starts with a quote",
    "ends with a quote\"",
    "a tab\there",
    "a line\nbreak and\n\ntwo more",
    "windows\r\nline end and a lone \r return",
    "  leading and trailing spaces  ",
    "unicode: ü, 漢字, émoji 🙂",
    "#not a comment; semi;colons",
    "back\\slash \\n literally",
    "'single' quotes, and ,\t\n everything \"at once\"",
    "NA but not alone",
];

/// The dataset: shards with `image_path` (relative to `root`, one absolute)
/// and `caption` columns, and an image file for every row; returns the
/// data folder, the prompts and each id's (image file, caption).
struct Source {
    data: PathBuf,
    prompts: PathBuf,
    root: PathBuf,
    by_id: HashMap<String, (PathBuf, String)>,
}

fn source(
    dir: &Dir,
    rows: usize,
    edit: impl Fn(usize, &mut Option<String>, &mut Option<String>),
) -> Source {
    let data = make_data(rows, 8, 3, 21);
    let d = 8;
    let root = dir.join("images-root");
    let shards = 2;
    let per = rows.div_ceil(shards);
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("image_embedding", emb_type(d, false), true),
        Field::new("text_embedding", emb_type(d, false), true),
        Field::new("image_path", DataType::Utf8, true),
        Field::new("caption", DataType::Utf8, true),
    ]));
    let mut by_id = HashMap::new();
    for s in 0..shards {
        let r = (s * per).min(rows)..((s + 1) * per).min(rows);
        let (mut ids, mut paths, mut caps) = (
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
        );
        for i in r.clone() {
            // Folders and names with spaces, commas, quotes and unicode.
            let rel = format!("sub {}/img,{i} \"ü\".png", i % 3);
            let file = root.join(&rel);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, b"not really a png").unwrap();
            // Row 1 holds an absolute path: kept as it is.
            let mut path = Some(if i == 1 { s_owned(&file) } else { rel });
            let mut caption = Some(format!("{i}: {}", HARD[i % HARD.len()]));
            edit(i, &mut path, &mut caption);
            if let (Some(_), Some(c)) = (&path, &caption) {
                by_id.insert(data.ids[i].clone(), (file, c.clone()));
            }
            ids.append_value(&data.ids[i]);
            paths.append_option(path);
            caps.append_option(caption);
        }
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(ids.finish()),
                emb_array(&data.u[r.clone()], d, false),
                emb_array(&data.v[r.clone()], d, false),
                Arc::new(paths.finish()),
                Arc::new(caps.finish()),
            ],
        )
        .unwrap();
        write_batch(&dir.join(&format!("data/part-{s}.parquet")), &batch);
    }
    let prompts = dir.join("prompts.parquet");
    write_prompts(&prompts, &data.prompts);
    Source {
        data: dir.join("data"),
        prompts,
        root,
        by_id,
    }
}

fn s_owned(p: &Path) -> String {
    s(p).to_string()
}

/// Reads `train.csv` the way the trainer does and prints, per row in file
/// order, the image path as the trainer opens it (made absolute from
/// `cwd`), whether it is a file, and the caption; plus the ids of
/// subset.csv (rank order) beside it. JSON, so every character survives.
const LOADER: &str = r#"
import json, os, sys
import pandas as pd
csv, trainer = sys.argv[1], sys.argv[2]
if trainer == "cyclip":
    # CyCLIP, src/data.py ImageCaptionDataset: delimiter ',', keys file/caption.
    df = pd.read_csv(csv, sep=",")
    images = [os.path.join(os.path.dirname(csv), p) for p in df["file"].tolist()]
    captions = df["caption"].tolist()
else:
    # OpenCLIP, training/data.py CsvDataset: sep '\t', keys filepath/title;
    # images opened as given (relative to the working folder).
    df = pd.read_csv(csv, sep="\t")
    images = [str(p) for p in df["filepath"].tolist()]
    captions = df["title"].tolist()
ids = pd.read_csv(os.path.join(os.path.dirname(csv), "subset.csv"), dtype=str)["id"].tolist()
rows = [
    {"id": i, "image": os.path.realpath(p), "is_file": os.path.isfile(p), "caption": c}
    for i, p, c in zip(ids, images, captions)
]
print(json.dumps({"columns": list(df.columns), "n": len(df), "ids": len(ids), "rows": rows}))
"#;

fn load(csv: &Path, trainer: &str, cwd: &Path) -> serde_json::Value {
    let out = Command::new("python3")
        .arg("-c")
        .arg(LOADER)
        .args([s(csv), trainer])
        .current_dir(cwd)
        .output()
        .expect("python3 with pandas is needed for the train.csv tests (pip install pandas)");
    assert!(
        out.status.success(),
        "python3 failed (is pandas installed? pip install pandas): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Checks `OUT/<method>/train.csv` against the source, row by row, and
/// that the manifest (`manifest`) lists it with its checksum.
fn check(src: &Source, out: &Path, method: &str, trainer: &str, expect_rows: usize) {
    let csv = out.join(method).join("train.csv");
    // A working folder far from the CSV and the images.
    let got = load(&csv, trainer, &std::env::temp_dir());
    let keys = if trainer == "cyclip" {
        ["file", "caption"]
    } else {
        ["filepath", "title"]
    };
    assert_eq!(got["columns"], serde_json::json!(keys), "{method}");
    assert_eq!(got["n"], expect_rows, "{method}: rows of train.csv");
    assert_eq!(got["ids"], expect_rows, "{method}: rows of subset.csv");
    let mut hard_seen = 0;
    for r in got["rows"].as_array().unwrap() {
        let id = r["id"].as_str().unwrap();
        let (file, caption) = &src.by_id[id];
        assert_eq!(r["is_file"], true, "{method}: {r}");
        assert_eq!(
            Path::new(r["image"].as_str().unwrap()),
            std::fs::canonicalize(file).unwrap(),
            "{method}: image of {id}"
        );
        assert_eq!(
            r["caption"].as_str(),
            Some(caption.as_str()),
            "{method}: caption of {id}"
        );
        if caption.contains(['\n', '\t', '"', ',', '\r']) {
            hard_seen += 1;
        }
    }
    assert!(
        hard_seen > expect_rows / 2,
        "{method}: too few hard captions tested"
    );
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("manifest.json"))
            .or_else(|_| std::fs::read_to_string(out.join(method).join("manifest.json")))
            .unwrap_or_else(|_| "{}".into()),
    )
    .unwrap();
    if let Some(outputs) = m["outputs"].as_array() {
        validate_manifest(&out.join("manifest.json"));
        let rel = format!("{method}/train.csv");
        let entry = outputs
            .iter()
            .find(|o| o["path"] == rel.as_str())
            .unwrap_or_else(|| panic!("{rel} not in the manifest's outputs: {m}"));
        assert_eq!(entry["rows"], expect_rows);
        assert_eq!(entry["bytes"], std::fs::metadata(&csv).unwrap().len());
    }
}

/// Validates a manifest against schemas/manifest.schema.json.
fn validate_manifest(path: &Path) {
    let script = "import json, sys, jsonschema\n\
        jsonschema.validate(json.load(open(sys.argv[2])), json.load(open(sys.argv[1])),\n\
            cls=jsonschema.Draft202012Validator)\n";
    let schema = repo_root().join("schemas/manifest.schema.json");
    let o = Command::new("python3")
        .args(["-c", script, s(&schema), s(path)])
        .output()
        .expect("python3 (with jsonschema: pip install jsonschema)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn train_csv_reads_back_in_cyclip_and_open_clip() {
    let dir = Dir::new("train-csv");
    let src = source(&dir, 90, |_, _, _| {});
    let base = |out: &Path| {
        vec![
            "--data".to_string(),
            s_owned(&src.data),
            "--out".into(),
            s_owned(out),
            "--image-root".into(),
            s_owned(&src.root),
        ]
    };
    let run = |args: Vec<String>| clipcov_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // select, CyCLIP.
    let out = dir.join("select");
    let mut a = vec![
        "select".to_string(),
        "--prompts".into(),
        s_owned(&src.prompts),
    ];
    a.extend(base(&out));
    a.extend(["--fraction", "0.5", "--train-csv", "cyclip"].map(String::from));
    let said = run(a);
    assert!(said.contains("selected 45 of 90"), "{said}");
    check(&src, &out, "clipcov", "cyclip", 45);

    // baseline, OpenCLIP.
    let out = dir.join("baseline");
    let mut a = vec!["baseline".to_string(), "random".into()];
    a.extend(base(&out));
    a.extend(["--fraction", "0.6", "--train-csv", "open_clip"].map(String::from));
    run(a);
    check(&src, &out, "random", "open_clip", 54);
    let csv = std::fs::read_to_string(out.join("random/train.csv")).unwrap();
    assert!(csv.starts_with("filepath\ttitle\n"), "{csv}");

    // compare: every method's folder.
    let out = dir.join("compare");
    let mut a = vec![
        "compare".to_string(),
        "--prompts".into(),
        s_owned(&src.prompts),
    ];
    a.extend(base(&out));
    a.extend(
        [
            "--methods",
            "clipcov,clip_score",
            "--fraction",
            "0.8",
            "--train-csv",
            "cyclip",
        ]
        .map(String::from),
    );
    run(a);
    for m in ["clipcov", "clip_score"] {
        check(&src, &out, m, "cyclip", 72);
    }
    let cmp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).unwrap()).unwrap();
    for m in ["clipcov", "clip_score"] {
        let outputs = cmp["methods"][m]["outputs"].as_array().unwrap();
        assert!(
            outputs
                .iter()
                .any(|o| o["path"] == format!("{m}/train.csv").as_str()),
            "{cmp}"
        );
    }

    // The default image root is the current folder; a later run without
    // --train-csv removes the stale file.
    let out = dir.join("cwd");
    let o = Command::new(env!("CARGO_BIN_EXE_clipcov"))
        .args([
            "baseline",
            "clip_score",
            "--data",
            s(&src.data),
            "--out",
            s(&out),
        ])
        .args(["--fraction", "0.5", "--train-csv", "cyclip"])
        .current_dir(&src.root)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    check(&src, &out, "clip_score", "cyclip", 45);
    clipcov_ok(&[
        "baseline",
        "clip_score",
        "--data",
        s(&src.data),
        "--out",
        s(&out),
        "--fraction",
        "0.5",
    ]);
    assert!(
        !out.join("clip_score/train.csv").exists(),
        "stale train.csv kept"
    );
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Runs clipcov expecting `code`; checks the one-line message and that no
/// subset, train.csv, manifest or temporary file was left; returns it.
fn fails(out: &Path, args: &[&str], code: i32) -> String {
    let o = clipcov(args);
    let err = error_text(&o);
    assert_eq!(o.status.code(), Some(code), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    if out.exists() {
        let mut stack = vec![out.to_path_buf()];
        while let Some(p) = stack.pop() {
            for e in std::fs::read_dir(&p).unwrap() {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                assert!(
                    !name.contains(".tmp-")
                        && !name.starts_with("subset.")
                        && name != "train.csv"
                        && name != "manifest.json"
                        && name != "store",
                    "{:?} left behind after a failure",
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

#[test]
fn train_csv_bad_input() {
    let dir = Dir::new("train-csv-bad");
    let good = source(&dir, 40, |_, _, _| {});
    let out = dir.join("out");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["baseline", "random", "--data"].map(String::from).to_vec();
        v.push(s_owned(&good.data));
        v.extend([
            "--out".into(),
            s_owned(&out),
            "--fraction".into(),
            "1".into(),
        ]);
        v.extend(["--train-csv".into(), "cyclip".into()]);
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let root = s_owned(&good.root);

    // A missing column: named with the file, before anything is staged.
    let v = args(&["--image-root", &root, "--caption-column", "text"]);
    let err = fails(&out, &refs(&v), 65);
    assert!(
        err.contains("part-0.parquet") && err.contains("column 'text'"),
        "{err}"
    );
    assert!(
        err.contains("missing column") && err.contains("image_path, caption"),
        "{err}"
    );

    // A missing image root: an I/O error naming it.
    let missing = dir.join("no-such-root");
    let v = args(&["--image-root", s(&missing)]);
    let err = fails(&out, &refs(&v), 74);
    assert!(err.contains("no-such-root: --image-root"), "{err}");

    // --image-root without --train-csv is a usage error.
    let o = clipcov(&[
        "baseline",
        "random",
        "--data",
        s(&good.data),
        "--out",
        s(&out),
        "--image-root",
        &root,
    ]);
    assert_eq!(o.status.code(), Some(2));

    // Null path, empty path, null caption, a caption pandas reads as NaN:
    // each names the file, the row in it and the column.
    type Edit = fn(usize, &mut Option<String>, &mut Option<String>);
    let cases: [(&str, Edit, &str, &str); 4] = [
        (
            "null-path",
            |i, p, _| {
                if i == 27 {
                    *p = None
                }
            },
            "row 7, column 'image_path'",
            "no image path",
        ),
        (
            "empty-path",
            |i, p, _| {
                if i == 3 {
                    *p = Some(String::new())
                }
            },
            "row 3, column 'image_path'",
            "no image path",
        ),
        (
            "null-caption",
            |i, _, c| {
                if i == 33 {
                    *c = None
                }
            },
            "row 13, column 'caption'",
            "null caption",
        ),
        (
            "na-caption",
            |i, _, c| {
                if i == 5 {
                    *c = Some("NA".into())
                }
            },
            "row 5, column 'caption'",
            "pandas",
        ),
    ];
    for (name, edit, at, what) in cases {
        let d = Dir::new(&format!("train-csv-{name}"));
        let src = source(&d, 40, edit);
        let out = d.join("out");
        let mut v: Vec<String> = ["baseline", "random", "--data"].map(String::from).to_vec();
        v.push(s_owned(&src.data));
        v.extend([
            "--out".into(),
            s_owned(&out),
            "--fraction".into(),
            "1".into(),
        ]);
        v.extend(["--train-csv", "open_clip", "--image-root"].map(String::from));
        v.push(s_owned(&src.root));
        let err = fails(&out, &refs(&v), 65);
        let file = if at.starts_with("row 7") || at.starts_with("row 13") {
            "part-1.parquet"
        } else {
            "part-0.parquet"
        };
        assert!(
            err.contains(file) && err.contains(at) && err.contains(what),
            "{name}: {err}"
        );
    }
}

#[test]
fn synth_images_pipeline_file_trains() {
    let dir = Dir::new("train-csv-synth");
    let out = dir.join("run");
    let said = clipcov_ok(&[
        "run",
        s(&repo_root().join("pipelines/train-csv.toml")),
        "--out",
        s(&out),
        "--keep-columns",
        "caption,image_path",
    ]);
    assert!(said.contains("selected 200 of 2000"), "{said}");
    let images = std::fs::read_dir(out.join("dataset/images"))
        .unwrap()
        .count();
    assert_eq!(images, 2000);
    // The captions and paths of the kept columns of subset.csv, read back.
    let script = r#"
import json, os, sys
import pandas as pd
d = sys.argv[1]
t = pd.read_csv(os.path.join(d, "train.csv"), sep=",")
s = pd.read_csv(os.path.join(d, "subset.csv"))
ok = [os.path.isfile(os.path.join(d, p)) for p in t["file"]]
print(json.dumps({"ok": all(ok), "n": len(t),
  "same_captions": t["caption"].tolist() == s["caption"].tolist(),
  "same_images": [os.path.realpath(os.path.join(d, p)) for p in t["file"]]
     == [os.path.realpath(os.path.join(sys.argv[2], p)) for p in s["image_path"]],
  "png": open(os.path.join(d, t["file"][0]), "rb").read(8).hex()}))
"#;
    let o = Command::new("python3")
        .args([
            "-c",
            script,
            s(&out.join("result/clipcov")),
            s(&out.join("dataset")),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"ok": true, "n": 200, "same_captions": true, "same_images": true,
            "png": "89504e470d0a1a0a"})
    );
    // Without --images, synth writes no images and no image_path column.
    let plain = dir.join("plain");
    synth_at(&plain, "--rows 50 --classes 3 --dim 8");
    assert!(!plain.join("images").exists());
    let o = clipcov(&[
        "baseline",
        "random",
        "--data",
        s(&plain.join("data")),
        "--out",
        s(&dir.join("o")),
        "--fraction",
        "0.5",
        "--train-csv",
        "cyclip",
    ]);
    assert_eq!(o.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&o.stderr).contains("column 'image_path'"));
}
