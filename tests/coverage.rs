//! An evaluation that can tell (issue 17): the class-local data model of
//! `synth`, coverage metrics that count clean picks of known classes, the
//! clean class-balanced covariance, paired bootstrap intervals, and
//! `compare --fractions` on rank prefixes, each against brute force.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int32Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use clipcov::eval::bootstrap;
use clipcov::rng::Rng;

use crate::util::*;

fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&clipcov_ok(args)).unwrap()
}

/// The rows of synth's data shards: normalised embeddings, kind, class.
struct Rows {
    u: Vec<Vec<f64>>,
    v: Vec<Vec<f64>>,
    kind: Vec<String>,
    class: Vec<i32>,
}

fn unit64(x: &[f32]) -> Vec<f64> {
    let n = x.iter().map(|&a| a as f64 * a as f64).sum::<f64>().sqrt();
    x.iter().map(|&a| a as f64 / n).collect()
}

fn read_rows(data: &Path) -> Rows {
    let mut files: Vec<_> = std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut out = Rows {
        u: Vec::new(),
        v: Vec::new(),
        kind: Vec::new(),
        class: Vec::new(),
    };
    for f in files {
        let r = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for b in r {
            let b = b.unwrap();
            for (name, dst) in [
                ("image_embedding", &mut out.u),
                ("text_embedding", &mut out.v),
            ] {
                let col = b.column_by_name(name).unwrap().as_fixed_size_list();
                for i in 0..b.num_rows() {
                    let row = col.value(i);
                    let vals: Vec<f32> = row.as_primitive::<Float32Type>().values().to_vec();
                    dst.push(unit64(&vals));
                }
            }
            let k = b.column_by_name("kind").unwrap().as_string::<i32>();
            out.kind.extend(k.iter().map(|x| x.unwrap().to_string()));
            let c = b
                .column_by_name("true_class")
                .unwrap()
                .as_primitive::<Int32Type>();
            out.class.extend(c.values().iter().copied());
        }
    }
    out
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

/// `classes.csv` as (class, superclass, size_rank, rows, weak).
fn read_class_table(path: &Path) -> Vec<(usize, usize, usize, u64, bool)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "class,superclass,weight,size_rank,rows,caption"
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[3].parse().unwrap(),
                f[4].parse().unwrap(),
                match f[5] {
                    "weak" => true,
                    "strong" => false,
                    x => panic!("caption {x}"),
                },
            )
        })
        .collect()
}

fn class_local(dir: &Path, flags: &str) {
    synth_at(dir, &format!("--model class-local {flags}"));
}

#[test]
fn class_local_synth_writes_its_model_and_class_table() {
    let dir = Dir::new("cov-synth");
    let ds = dir.join("ds");
    class_local(
        &ds,
        "--rows 6000 --classes 40 --dim 32 --superclasses 8 --weak-captions 0.25 \
         --weak-at head --zipf 1.1 --spam-rate 0.05 --eval-rows 400 --seed 3",
    );
    let table = read_class_table(&ds.join("classes.csv"));
    assert_eq!(table.len(), 40);
    let rows = read_rows(&ds.join("data"));
    let mut per_class = vec![0u64; 40];
    for &c in &rows.class {
        if c >= 0 {
            per_class[c as usize] += 1;
        }
    }
    let mut ranks = BTreeSet::new();
    for &(k, sup, rank, n, weak) in &table {
        assert_eq!(sup, k % 8, "superclass of {k}");
        assert_eq!(n, per_class[k], "rows of class {k}");
        // Head placement: the 10 largest classes by rank have weak captions.
        assert_eq!(weak, rank < 10, "class {k} rank {rank}");
        ranks.insert(rank);
    }
    assert_eq!(ranks.len(), 40);
    // Sizes follow a permutation, not the class index.
    assert!(table.iter().filter(|t| t.2 != t.0).count() > 20);
    let largest = table.iter().find(|t| t.2 == 0).unwrap();
    let smallest = table.iter().find(|t| t.2 == 39).unwrap();
    assert!(
        largest.3 > 5 * smallest.3.max(1),
        "{largest:?} {smallest:?}"
    );

    // Kinds: every one present; junk and spam have no class.
    let kinds: BTreeSet<&str> = rows.kind.iter().map(String::as_str).collect();
    assert_eq!(
        kinds,
        ["clean", "duplicate", "junk", "mismatch", "spam"]
            .into_iter()
            .collect()
    );
    for (k, &c) in rows.kind.iter().zip(&rows.class) {
        match k.as_str() {
            "junk" | "spam" => assert_eq!(c, -1),
            _ => assert!((0..40).contains(&c)),
        }
    }
    // Weak captions are correct pairs with a low CLIP score; spam is well
    // aligned; duplicates come from a small viral pool.
    let score = |want: &dyn Fn(usize) -> bool| -> f64 {
        let s: Vec<f64> = (0..rows.u.len())
            .filter(|&i| want(i))
            .map(|i| dot(&rows.u[i], &rows.v[i]))
            .collect();
        mean(&s)
    };
    let weak_of = |i: usize| table[rows.class[i] as usize].4;
    let clean = |i: usize| rows.kind[i] == "clean";
    let strong = score(&|i| clean(i) && !weak_of(i));
    let weak = score(&|i| clean(i) && weak_of(i));
    let spam = score(&|i| rows.kind[i] == "spam");
    let mismatch = score(&|i| rows.kind[i] == "mismatch");
    assert!(weak < strong - 0.05, "weak {weak} strong {strong}");
    assert!(spam > strong, "spam {spam} strong {strong}");
    assert!(mismatch < weak, "mismatch {mismatch} weak {weak}");
    let dups: BTreeSet<i64> = (0..rows.u.len())
        .filter(|&i| rows.kind[i] == "duplicate")
        .map(|i| (rows.u[i][0] * 50.0).round() as i64)
        .collect();
    assert!(dups.len() <= 20, "{} distinct duplicates", dups.len());
    // The eval set is class-balanced.
    let r = ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(ds.join("eval.parquet")).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let mut labels = BTreeMap::new();
    for b in r {
        let b = b.unwrap();
        let l = b
            .column_by_name("label")
            .unwrap()
            .as_primitive::<Int32Type>();
        for &x in l.values() {
            *labels.entry(x).or_insert(0) += 1;
        }
    }
    assert_eq!(labels.len(), 40);
    assert!(labels.values().all(|&n| n == 10));

    // Class-local options need the class-local model.
    let o = clipcov(&[
        "synth",
        "--rows",
        "10",
        "--classes",
        "2",
        "--dim",
        "4",
        "--spam-rate",
        "0.1",
        "--out",
        s(&dir.join("x")),
    ]);
    assert_eq!(o.status.code(), Some(2));
}

/// `-sum p ln p` of counts.
fn entropy(counts: &BTreeMap<i32, u64>) -> f64 {
    let t: u64 = counts.values().sum();
    counts
        .values()
        .map(|&c| {
            let p = c as f64 / t as f64;
            -p * p.ln()
        })
        .sum()
}

/// `mean u v^T` over `rows`, row-major.
fn cross(rows: &Rows, idx: &[usize]) -> Vec<f64> {
    let d = rows.u[0].len();
    let mut c = vec![0.0; d * d];
    for &i in idx {
        for a in 0..d {
            for b in 0..d {
                c[a * d + b] += rows.u[i][a] * rows.v[i][b];
            }
        }
    }
    c.iter().map(|x| x / idx.len() as f64).collect()
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

/// The canonical rows of a subset CSV, in rank order.
fn ranked_rows(csv: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(csv).unwrap();
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap().split(',').collect();
    let at = |n: &str| head.iter().position(|h| *h == n).unwrap();
    let (ri, ro) = (at("rank"), at("row"));
    let mut v: Vec<(u64, u64)> = lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[ri].parse().unwrap(), f[ro].parse().unwrap())
        })
        .collect();
    v.sort_unstable();
    v.into_iter().map(|x| x.1).collect()
}

#[test]
fn eval_counts_clean_picks_of_known_classes_and_the_balanced_covariance() {
    let dir = Dir::new("cov-eval");
    let ds = dir.join("ds");
    class_local(
        &ds,
        "--rows 3000 --classes 12 --dim 16 --superclasses 3 --eval-rows 240 \
         --mismatch-rate 0.15 --junk-rate 0.1 --spam-rate 0.1",
    );
    let data = ds.join("data");
    let out = dir.join("out");
    clipcov_ok(&[
        "baseline",
        "clip_score",
        "--data",
        s(&data),
        "--fraction",
        "0.05",
        "--out",
        s(&out),
    ]);
    let m = json(&[
        "eval",
        "--data",
        s(&data),
        "--subset",
        s(&out.join("clip_score/subset.parquet")),
        "--eval-set",
        s(&ds.join("eval.parquet")),
        "--prompts",
        s(&ds.join("prompts.parquet")),
        "--class-table",
        s(&ds.join("classes.csv")),
        "--json",
        "--proxy-steps",
        "20",
        "--eval-seeds",
        "2",
    ]);
    let rows = read_rows(&data);
    let picks: Vec<usize> = ranked_rows(&out.join("clip_score/subset.csv"))
        .into_iter()
        .map(|r| r as usize)
        .collect();
    let mut counts = BTreeMap::new();
    for &p in &picks {
        if rows.kind[p] == "clean" {
            *counts.entry(rows.class[p]).or_insert(0u64) += 1;
        }
    }
    assert_eq!(m["coverage_counts"], "clean_true_class");
    assert_eq!(m["clean_classes_covered"], counts.len() as u64, "{m}");
    let h = m["clean_class_entropy"].as_f64().unwrap();
    assert!((h - entropy(&counts)).abs() < 1e-9, "{h}");
    // clip_score takes spam: more classes assigned than clean ones counted.
    assert!(m["kind_share"]["spam"].as_f64().unwrap() > 0.0, "{m}");
    // The clean, class-balanced target: the mean over classes of each
    // class's clean mean u v^T.
    let d = 16;
    let mut target = vec![0.0; d * d];
    for k in 0..12 {
        let in_k: Vec<usize> = (0..rows.u.len())
            .filter(|&i| rows.kind[i] == "clean" && rows.class[i] == k)
            .collect();
        for (t, c) in target.iter_mut().zip(cross(&rows, &in_k)) {
            *t += c / 12.0;
        }
    }
    let want = rel(&cross(&rows, &picks), &target);
    let got = m["cov_rel_error_balanced"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-4, "balanced: {got} vs {want}");
    let all: Vec<usize> = (0..rows.u.len()).collect();
    let want = rel(&cross(&rows, &picks), &cross(&rows, &all));
    let got = m["cov_rel_error"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-4, "full: {got} vs {want}");
    // Splits: covered and uncovered partition the classes, as do head and
    // tail and weak and strong; a macro mean lies between its parts.
    let z = &m["zero_shot_split"];
    let mac = m["zero_shot_macro"].as_f64().unwrap();
    for (a, b) in [
        ("covered", "uncovered"),
        ("head", "tail"),
        ("weak", "strong"),
    ] {
        let (x, y) = (z[a].as_f64(), z[b].as_f64());
        if let (Some(x), Some(y)) = (x, y) {
            assert!(
                x.min(y) - 1e-9 <= mac && mac <= x.max(y) + 1e-9,
                "{a} {b} {z}"
            );
        }
    }
    assert!(z["weak"].is_f64() && z["strong"].is_f64(), "{z}");
    assert_eq!(
        z["uncovered"].is_null(),
        counts.len() == 12,
        "{z} {counts:?}"
    );
    let ci = m["zero_shot_top1_ci"].as_array().unwrap();
    let (lo, hi) = (ci[0].as_f64().unwrap(), ci[1].as_f64().unwrap());
    let top1 = m["zero_shot_top1"].as_f64().unwrap();
    assert!(lo <= top1 && top1 <= hi && lo < hi, "{lo} {top1} {hi}");
    assert!(m["heldout_loss"].as_f64().unwrap() > 0.0);

    // Data without true_class: coverage counts every pick by its assigned
    // class, and says so.
    let plain = dir.join("plain");
    let pd = make_data(400, 6, 3, 2);
    let (pdata, pprompts) = write_data(&plain, &pd, 1, false);
    let eval = plain.join("eval.parquet");
    write_eval_set(&eval, &pd.u[..60], pd.prompts[0].0);
    let pout = dir.join("pout");
    clipcov_ok(&[
        "baseline",
        "random",
        "--data",
        s(&pdata),
        "--fraction",
        "0.2",
        "--out",
        s(&pout),
    ]);
    let m = json(&[
        "eval",
        "--data",
        s(&pdata),
        "--subset",
        s(&pout.join("random/subset.parquet")),
        "--eval-set",
        s(&eval),
        "--prompts",
        s(&pprompts),
        "--json",
        "--proxy-steps",
        "5",
        "--eval-seeds",
        "1",
    ]);
    assert_eq!(m["coverage_counts"], "all_assigned");
    assert_eq!(m["clean_classes_covered"], m["classes_covered"]);
    assert_eq!(m["clean_class_entropy"], m["class_entropy"]);
    assert!(m["cov_rel_error_balanced"].is_null());
}

/// An eval set of `images`, all labelled `label`.
fn write_eval_set(path: &Path, images: &[Vec<f32>], label: i32) {
    use arrow_array::builder::{Int32Builder, StringBuilder};
    use arrow_array::RecordBatch;
    use arrow_schema::{DataType, Field, Schema};
    use std::sync::Arc;
    let d = images[0].len();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("image_embedding", emb_type(d, false), false),
        Field::new("label", DataType::Int32, false),
    ]));
    let (mut ids, mut labels) = (StringBuilder::new(), Int32Builder::new());
    for i in 0..images.len() {
        ids.append_value(format!("e{i}"));
        labels.append_value(label);
    }
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(ids.finish()),
            emb_array(images, d, false),
            Arc::new(labels.finish()),
        ],
    )
    .unwrap();
    write_batch(path, &batch);
}

#[test]
fn bootstrap_interval_matches_a_direct_percentile_bootstrap() {
    let mut g = Rng::new(5);
    let (m, k) = (300, 7);
    let labels: Vec<usize> = (0..m).map(|i| i % k).collect();
    let values: Vec<f64> = (0..m).map(|_| (g.below(3) as f64) / 2.0).collect();
    for macro_avg in [false, true] {
        let got = bootstrap::interval(&values, &labels, k, macro_avg, 500, 9);
        // Direct: 500 resamples of m images with replacement from the
        // documented stream, the statistic, sorted, nearest-rank percentiles.
        let mut rng = Rng::new(9 ^ 0x424F_4F54);
        let mut stats = Vec::new();
        for _ in 0..500 {
            let idx: Vec<usize> = (0..m).map(|_| rng.below(m as u64) as usize).collect();
            let st = if macro_avg {
                let mut per: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
                for &i in &idx {
                    per.entry(labels[i]).or_default().push(values[i]);
                }
                mean(&per.values().map(|v| mean(v)).collect::<Vec<_>>())
            } else {
                mean(&idx.iter().map(|&i| values[i]).collect::<Vec<_>>())
            };
            stats.push(st);
        }
        stats.sort_by(f64::total_cmp);
        let want = [stats[12], stats[487]];
        assert!(
            (got[0] - want[0]).abs() < 1e-12 && (got[1] - want[1]).abs() < 1e-12,
            "macro {macro_avg}: {got:?} vs {want:?}"
        );
        assert!(want[0] < want[1]);
    }
}

#[test]
fn every_default_method_keeps_a_rank_prefix_at_a_smaller_fraction() {
    let dir = Dir::new("cov-prefix");
    let ds = dir.join("ds");
    let (data, prompts) = synth_at(&ds, "--rows 4000 --classes 8 --dim 16");
    let run = |method: &str, f: &str| -> Vec<u64> {
        let out = dir.join(&format!("{method}-{f}"));
        if method == "clipcov" {
            clipcov_ok(&[
                "select",
                "--data",
                s(&data),
                "--prompts",
                s(&prompts),
                "--fraction",
                f,
                "--refresh",
                "200",
                "--out",
                s(&out),
            ]);
        } else {
            clipcov_ok(&[
                "baseline",
                method,
                "--data",
                s(&data),
                "--fraction",
                f,
                "--out",
                s(&out),
            ]);
        }
        ranked_rows(&out.join(method).join("subset.csv"))
    };
    for method in [
        "clipcov",
        "random",
        "clip_score",
        "semdedup",
        "ssp",
        "neg_clip_loss",
    ] {
        let small = run(method, "0.02");
        let large = run(method, "0.05");
        assert_eq!((small.len(), large.len()), (80, 200), "{method}");
        assert_eq!(small[..], large[..80], "{method}: not a rank prefix");
    }
}

#[test]
fn compare_fractions_evaluates_rank_prefixes_with_paired_intervals() {
    let dir = Dir::new("cov-fractions");
    let ds = dir.join("ds");
    class_local(
        &ds,
        "--rows 4000 --classes 20 --dim 16 --superclasses 4 --eval-rows 200",
    );
    let (data, prompts, eval, table) = (
        ds.join("data"),
        ds.join("prompts.parquet"),
        ds.join("eval.parquet"),
        ds.join("classes.csv"),
    );
    let proxy = ["--proxy-steps", "20", "--eval-seeds", "2"];
    let out = dir.join("out");
    let mut args = vec![
        "compare",
        "--data",
        s(&data),
        "--prompts",
        s(&prompts),
        "--fractions",
        "0.1,0.05",
        "--out",
        s(&out),
        "--eval-set",
        s(&eval),
        "--class-table",
        s(&table),
    ];
    args.extend(proxy);
    let printed = clipcov_ok(&args);
    assert!(
        printed.contains("Eval at fraction 0.05 (B = 200)"),
        "{printed}"
    );
    let c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("compare.json")).unwrap()).unwrap();
    let budgets = c["budgets"].as_array().unwrap();
    assert_eq!(budgets.len(), 2);
    assert_eq!(budgets[0]["fraction"], 0.05);
    assert_eq!(budgets[0]["budget_rows"], 200);
    assert_eq!(budgets[1]["budget_rows"], 400);
    assert_eq!(c["budget_rows"], 400);
    let at = |b: usize, name: &str| -> serde_json::Value {
        budgets[b]["methods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["method"] == name)
            .unwrap()
            .clone()
    };
    for name in c["method_order"].as_array().unwrap() {
        let name = name.as_str().unwrap();
        let (small, large) = (at(0, name), at(1, name));
        // ClipCov's auto refresh period follows the budget: its own run.
        let how = if name == "clipcov" { "rerun" } else { "prefix" };
        assert_eq!(small["subset"], how, "{name}");
        assert_eq!(small["rows"], 200, "{name}");
        // The largest budget is the run itself.
        assert_eq!(
            large["zero_shot_top1"],
            c["methods"][name]["zero_shot_top1"]
        );
        if name == "clipcov" {
            assert!(small.get("paired").is_none());
            continue;
        }
        // Paired difference from clipcov: the difference of the accuracies,
        // on the same eval images.
        let p = &small["paired"];
        assert_eq!(p["reference"], "clipcov");
        let want = small["zero_shot_top1"].as_f64().unwrap()
            - at(0, "clipcov")["zero_shot_top1"].as_f64().unwrap();
        assert!(
            (p["top1_diff"].as_f64().unwrap() - want).abs() < 1e-9,
            "{name} {p}"
        );
        let ci = p["top1_diff_ci"].as_array().unwrap();
        assert!(ci[0].as_f64().unwrap() <= ci[1].as_f64().unwrap());
    }
    // random: three subset seeds, the first its own.
    let r = at(0, "random");
    let seeds = &r["subset_seeds"];
    assert_eq!(seeds["seeds"], 3);
    assert_eq!(seeds["zero_shot_top1"][0], r["zero_shot_top1"]);
    assert!(seeds["zero_shot_top1_std"].as_f64().unwrap() >= 0.0);

    // The prefix at 0.05 is clip_score's own run at 0.05: same metrics.
    let alone = dir.join("alone");
    clipcov_ok(&[
        "baseline",
        "clip_score",
        "--data",
        s(&data),
        "--fraction",
        "0.05",
        "--out",
        s(&alone),
    ]);
    let subset = alone.join("clip_score/subset.parquet");
    let mut args = vec![
        "eval",
        "--data",
        s(&data),
        "--subset",
        s(&subset),
        "--eval-set",
        s(&eval),
        "--prompts",
        s(&prompts),
        "--class-table",
        s(&table),
        "--json",
    ];
    args.extend(proxy);
    let m = json(&args);
    let cs = at(0, "clip_score");
    for k in [
        "rows",
        "clean_classes_covered",
        "clean_class_entropy",
        "zero_shot_top1",
        "zero_shot_macro",
        "zero_shot_top1_ci",
        "zero_shot_split",
        "cov_rel_error_balanced",
        "heldout_loss",
    ] {
        assert_eq!(m[k], cs[k], "{k}");
    }
    // ClipCov's re-run at 0.05 is select's run at 0.05.
    let sel = dir.join("select");
    clipcov_ok(&[
        "select",
        "--data",
        s(&data),
        "--prompts",
        s(&prompts),
        "--fraction",
        "0.05",
        "--out",
        s(&sel),
    ]);
    let subset = sel.join("clipcov/subset.parquet");
    let mut args = vec![
        "eval",
        "--data",
        s(&data),
        "--subset",
        s(&subset),
        "--eval-set",
        s(&eval),
        "--prompts",
        s(&prompts),
        "--json",
    ];
    args.extend(proxy);
    let m = json(&args);
    let cc = at(0, "clipcov");
    for k in [
        "rows",
        "clean_classes_covered",
        "zero_shot_top1",
        "cov_rel_error",
    ] {
        assert_eq!(m[k], cc[k], "clipcov {k}");
    }
    // --fractions needs an eval set and takes no --fraction.
    let o = clipcov(&[
        "compare",
        "--data",
        s(&data),
        "--prompts",
        s(&prompts),
        "--fractions",
        "0.1",
        "--out",
        s(&dir.join("x")),
    ]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn the_shared_model_writes_the_same_bytes_as_before_class_local() {
    // Hashes of the shared model's files as written before the class-local
    // model was added (the default model must not change).
    use sha2::{Digest, Sha256};
    let dir = Dir::new("cov-golden");
    let ds = dir.join("ds");
    synth_at(
        &ds,
        "--rows 30000 --classes 20 --dim 16 --shards 2 --seed 7",
    );
    for (file, want) in [
        (
            "data/part-00000.parquet",
            "803cb20972af7b8e1f0e362e6ab2beb9d7accce09d10279ee1cd84a849bf0b7b",
        ),
        (
            "data/part-00001.parquet",
            "3e81929af458724ca8fbe9ffeca129682dd333bf9f55fc73bb4aad5072c64053",
        ),
        (
            "eval.parquet",
            "7d23189daf927d8ee7b8ff96d7b86432042a09f1847db37819272bdeea2f579b",
        ),
        (
            "prompts.parquet",
            "6dd4f24cf00de5555042ab7c09deeb52f42907f2c7692c354f2fef4a6431cb4d",
        ),
    ] {
        let got = Sha256::digest(std::fs::read(ds.join(file)).unwrap());
        let got: String = got.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, want, "{file}");
    }
    assert!(!ds.join("classes.csv").exists());
}
