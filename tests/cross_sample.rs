//! `--cross-sample`: the sampled cross term against the same estimator
//! written out in float64 on the same sample, the exact path where the
//! sample is the whole class, its stated error, and its resume key.

use crate::parity::reference;
use crate::util::*;

const ROWS: usize = 1200;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn unit(rows: &[Vec<f32>]) -> Vec<Vec<f64>> {
    rows.iter()
        .map(|r| {
            let n = r.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
            r.iter().map(|&x| x as f64 / n).collect()
        })
        .collect()
}

struct Case {
    dir: Dir,
    data: Data,
    data_dir: std::path::PathBuf,
    prompts: std::path::PathBuf,
}

fn case(name: &str) -> Case {
    let dir = Dir::new(name);
    let data = make_zipf_data(ROWS, 16, 6, 1.1, 41);
    let (data_dir, prompts) = write_data(&dir.path, &data, 2, false);
    Case {
        dir,
        data,
        data_dir,
        prompts,
    }
}

/// Selects every row (so `subset.csv` holds every row's terms); returns the
/// rows by canonical index and the manifest.
fn run_all(c: &Case, out: &str, extra: &[&str]) -> (Vec<CsvRow>, serde_json::Value) {
    let out = c.dir.join(out);
    let mut args = vec![
        "select",
        "--data",
        s(&c.data_dir),
        "--prompts",
        s(&c.prompts),
        "--out",
        s(&out),
        "--fraction",
        "1",
        "--tile-rows",
        "64",
    ];
    args.extend_from_slice(extra);
    clipcov_ok(&args);
    let mut rows = read_subset_csv(&out.join("clipcov/subset.csv"));
    rows.sort_by_key(|r| r.row);
    let manifest =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    (rows, manifest)
}

fn stage<'a>(manifest: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    manifest["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == name)
}

/// The exact cross of every row (the float64 reference of the spec).
fn exact_cross(c: &Case) -> Vec<f64> {
    let prompts: Vec<(i32, Vec<f64>)> = c
        .data
        .prompts
        .iter()
        .map(|(k, e)| (*k, e.iter().map(|&x| x as f64).collect()))
        .collect();
    let to64 = |x: &[Vec<f32>]| -> Vec<Vec<f64>> {
        x.iter()
            .map(|r| r.iter().map(|&a| a as f64).collect())
            .collect()
    };
    let r = reference(
        &to64(&c.data.u),
        &to64(&c.data.v),
        &prompts,
        Some(0.0),
        1,
        [1.0, 2.0, 0.5, 1.0],
        0,
    );
    r.terms.iter().map(|t| t[1]).collect()
}

#[test]
fn sample_of_the_whole_class_is_exact() {
    let c = case("cross-whole");
    let (exact, me) = run_all(&c, "exact", &[]);
    let (big, mb) = run_all(&c, "big", &["--cross-sample", "100000"]);
    for (a, b) in exact.iter().zip(&big) {
        assert_eq!((a.row, a.class), (b.row, b.class));
        assert_eq!(a.terms, b.terms, "row {}", a.row);
        assert_eq!(a.score, b.score, "row {}", a.row);
    }
    assert_eq!(stage(&me, "score").unwrap()["kernels"]["cross"], "exact");
    let k = &stage(&mb, "score").unwrap()["kernels"];
    assert_eq!(k["cross"], "sampled(100000, seed 0)");
    assert_eq!(k["cross_sample"]["classes_sampled"], 0);
    // subset.parquet names its estimator too.
    assert_eq!(cross_of_parquet(&c, "exact").as_deref(), Some("exact"));
    assert_eq!(
        cross_of_parquet(&c, "big").as_deref(),
        Some("sampled(100000, seed 0)")
    );
}

/// The `clipcov.cross` key-value metadata of `out/clipcov/subset.parquet`.
fn cross_of_parquet(c: &Case, out: &str) -> Option<String> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let f = std::fs::File::open(c.dir.join(out).join("clipcov/subset.parquet")).unwrap();
    let r = SerializedFileReader::new(f).unwrap();
    r.metadata()
        .file_metadata()
        .key_value_metadata()?
        .iter()
        .find(|kv| kv.key == "clipcov.cross")
        .and_then(|kv| kv.value.clone())
}

/// With `M < n_k` the tool's cross equals the estimator of the README
/// computed here in float64 on the same sample (`cross_sample_rows`).
#[test]
fn sampled_cross_is_the_stated_estimator() {
    let c = case("cross-estimator");
    let m = 50;
    let (got, manifest) = run_all(&c, "sampled", &["--cross-sample", "50", "--seed", "7"]);
    let exact = exact_cross(&c);
    let (u, v) = (unit(&c.data.u), unit(&c.data.v));
    let classes = got.iter().map(|r| r.class).max().unwrap() as usize + 1;
    // Members of each class in canonical order: the class's local indices.
    let members: Vec<Vec<usize>> = (0..classes)
        .map(|k| {
            got.iter()
                .filter(|r| r.class == k as i64)
                .map(|r| r.row as usize)
                .collect()
        })
        .collect();
    let phi = |s: f64| if s > 0.0 { s } else { 0.0 };
    let mut sampled_classes = 0;
    let mut differs = 0;
    for (k, rows) in members.iter().enumerate() {
        let n = rows.len();
        if n <= m {
            for &i in rows {
                assert!(
                    (got[i].terms[1] - exact[i]).abs() < 1e-5,
                    "exact class {k} row {i}"
                );
            }
            continue;
        }
        sampled_classes += 1;
        let sample: Vec<usize> = clipcov::stages::score::cross_sample_rows(n, m, 7, k)
            .into_iter()
            .map(|j| rows[j])
            .collect();
        assert_eq!(sample.len(), m);
        for &i in rows {
            let others: Vec<usize> = sample.iter().copied().filter(|&j| j != i).collect();
            let mean = others
                .iter()
                .map(|&j| phi(dot(&u[i], &v[j])) + phi(dot(&u[j], &v[i])))
                .sum::<f64>()
                / others.len() as f64;
            let want = (2.0 * phi(dot(&u[i], &v[i])) + (n - 1) as f64 * mean) / n as f64;
            assert!(
                (got[i].terms[1] - want).abs() < 1e-5,
                "class {k} row {i}: cross {} vs {want}",
                got[i].terms[1]
            );
            if (want - exact[i]).abs() > 1e-4 {
                differs += 1;
            }
        }
    }
    assert!(
        sampled_classes >= 2,
        "the data has classes larger than the sample"
    );
    assert!(differs > 100, "the sample changes cross ({differs} rows)");
    let k = &stage(&manifest, "score").unwrap()["kernels"];
    assert_eq!(k["cross"], "sampled(50, seed 7)");
    assert_eq!(k["cross_sample"]["classes_sampled"], sampled_classes);
    assert_eq!(k["cross_sample"]["seed"], 7);
    assert_eq!(manifest["parameters"]["cross"], 50);
}

/// `auto` picks M per class for the target error, and the error it states
/// is the error measured against the exact cross.
#[test]
fn auto_sample_meets_its_stated_error() {
    let c = case("cross-auto");
    let (got, manifest) = run_all(
        &c,
        "auto",
        &["--cross-sample", "auto", "--cross-error", "0.01"],
    );
    let exact = exact_cross(&c);
    let report = &stage(&manifest, "score").unwrap()["kernels"]["cross_sample"];
    let per_class = report["per_class"].as_array().unwrap();
    assert!(!per_class.is_empty(), "some class is sampled");
    for pc in per_class {
        let (k, n, m) = (
            pc["class"].as_i64().unwrap(),
            pc["rows"].as_u64().unwrap() as usize,
            pc["m"].as_u64().unwrap() as usize,
        );
        let stated = pc["estimated_error"].as_f64().unwrap();
        assert!(m < n && m >= 64, "class {k}: M {m} of {n}");
        assert!(stated <= 0.0101, "class {k}: stated error {stated}");
        let errs: Vec<f64> = got
            .iter()
            .filter(|r| r.class == k)
            .map(|r| r.terms[1] - exact[r.row as usize])
            .collect();
        let rms = (errs.iter().map(|e| e * e).sum::<f64>() / errs.len() as f64).sqrt();
        // The pilot's estimate within a factor of 2 of the measured error.
        assert!(
            rms < 2.0 * stated && rms > 0.5 * stated,
            "class {k}: measured rms error {rms}, stated {stated}"
        );
    }
}

#[test]
fn estimator_is_part_of_the_score_key() {
    let c = case("cross-key");
    let score_stage = |extra: &[&str]| -> String {
        let (_, m) = run_all(&c, "out", extra);
        if stage(&m, "reuse-score").is_some() {
            "reuse".into()
        } else {
            assert!(stage(&m, "score").is_some());
            "score".into()
        }
    };
    assert_eq!(score_stage(&[]), "score");
    assert_eq!(score_stage(&[]), "reuse");
    assert_eq!(score_stage(&["--cross-sample", "50"]), "score");
    assert_eq!(score_stage(&["--cross-sample", "50"]), "reuse");
    assert_eq!(
        score_stage(&["--cross-sample", "50", "--seed", "3"]),
        "score"
    );
    assert_eq!(
        score_stage(&["--cross-sample", "60", "--seed", "3"]),
        "score"
    );
    assert_eq!(score_stage(&[]), "score");
}

#[test]
fn bad_sample_size_is_a_usage_error() {
    let c = case("cross-bad");
    let out_dir = c.dir.join("bad");
    for bad in [["--cross-sample", "1"], ["--cross-sample", "lots"]] {
        let mut args = vec![
            "select",
            "--data",
            s(&c.data_dir),
            "--prompts",
            s(&c.prompts),
            "--out",
            s(&out_dir),
            "--fraction",
            "0.5",
        ];
        args.extend_from_slice(&bad);
        let out = clipcov(&args);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--cross-sample"));
    }
}
