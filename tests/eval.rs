//! `clipcov eval` and `compare --eval-set`: the proxy's gradient and
//! learning, the covariance metric against brute force, determinism, and
//! both commands end to end through the binary.

use clipcov::eval::proxy::{self, InMemoryPairs, LinearClip, ProxyOptions};
use clipcov::rng::Rng;

use crate::util::*;

fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&clipcov_ok(args)).unwrap()
}

fn unit(v: &[f32]) -> Vec<f64> {
    let n = v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    v.iter().map(|&x| x as f64 / n).collect()
}

fn normal_rows(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

#[test]
fn proxy_gradient_matches_finite_differences_of_its_loss() {
    let (d, p, b) = (6, 3, 5);
    let mut rng = Rng::new(21);
    let model = LinearClip::init(d, p, 0.2, &mut rng);
    let u = normal_rows(&mut rng, b * d);
    let v = normal_rows(&mut rng, b * d);
    let (_, g) = model.loss_and_grad(&u, &v);
    // Central differences of the f32 forward pass: step large enough that
    // f32 rounding of the loss stays small against it.
    let h = 1e-2f32;
    let loss = |m: &LinearClip| m.loss_and_grad(&u, &v).0;
    for i in 0..p * d {
        for which in 0..2 {
            let (mut a, mut c) = (model.clone(), model.clone());
            let (wa, wc, gi) = if which == 0 {
                (&mut a.w_i, &mut c.w_i, g.w_i[i])
            } else {
                (&mut a.w_t, &mut c.w_t, g.w_t[i])
            };
            wa[i] += h;
            wc[i] -= h;
            let num = (loss(&a) - loss(&c)) / (2.0 * h as f64);
            assert!(
                (num - gi as f64).abs() < 1e-2 * (1.0 + num.abs()),
                "param {which}/{i}: finite difference {num}, gradient {gi}"
            );
        }
    }
    let (mut a, mut c) = (model.clone(), model.clone());
    a.log_scale += 1e-4;
    c.log_scale -= 1e-4;
    let num = (loss(&a) - loss(&c)) / 2e-4;
    assert!((num - g.log_scale).abs() < 1e-2 * (1.0 + num.abs()));
}

/// Clean pairs of a latent-class model: class direction plus noise on
/// each side, and the class directions as prompts.
fn latent(
    n: usize,
    d: usize,
    k: usize,
    seed: u64,
) -> (InMemoryPairs, Vec<f32>, Vec<f32>, Vec<usize>) {
    let mut rng = Rng::new(seed);
    let dirs = normal_rows(&mut rng, k * d);
    let draw = |class: usize, rng: &mut Rng| -> Vec<f32> {
        (0..d)
            .map(|j| dirs[class * d + j] + 0.8 * rng.normal() as f32)
            .collect()
    };
    let (mut u, mut v) = (Vec::new(), Vec::new());
    for i in 0..n {
        let c = i % k;
        u.extend(unit(&draw(c, &mut rng)).iter().map(|&x| x as f32));
        v.extend(unit(&draw(c, &mut rng)).iter().map(|&x| x as f32));
    }
    let (mut eval, mut labels) = (Vec::new(), Vec::new());
    for i in 0..400 {
        let c = (i * 7) % k;
        eval.extend(unit(&draw(c, &mut rng)).iter().map(|&x| x as f32));
        labels.push(c);
    }
    let prompts = dirs.chunks(d).flat_map(unit).map(|x| x as f32).collect();
    (InMemoryPairs { u, v, d }, prompts, eval, labels)
}

#[test]
fn proxy_learns_on_clean_pairs() {
    let (d, k, n) = (16, 10, 3000);
    // 3100 pairs: the last 100 are held out for retrieval.
    let (all, prompts, eval, labels) = latent(n + 100, d, k, 4);
    let pairs = InMemoryPairs {
        u: all.u[..n * d].to_vec(),
        v: all.v[..n * d].to_vec(),
        d,
    };
    let opts = ProxyOptions {
        steps: 150,
        batch_size: 128,
        ..ProxyOptions::default()
    };
    let t = proxy::train(&pairs, d, &opts, 0).unwrap();
    let first: f64 = t.losses[..15].iter().sum::<f64>() / 15.0;
    let last: f64 = t.losses[135..].iter().sum::<f64>() / 15.0;
    assert!(last < 0.8 * first, "loss {first} -> {last}");
    let (top1, top5) = proxy::zero_shot(&t.model, &eval, &labels, &prompts);
    // Chance is 0.1 and 0.5.
    assert!(top1 > 0.6, "zero-shot top-1 {top1}");
    assert!(top5 > 0.9 && top5 >= top1, "zero-shot top-5 {top5}");
    // Retrieval among 100 held-out pairs of 10 classes: chance is 0.01.
    let r1 = proxy::retrieval_r1(&t.model, &all.u[n * d..], &all.v[n * d..]);
    assert!(r1 > 0.05, "retrieval R@1 {r1}");
    // An untrained model does much worse.
    let mut rng = Rng::new(9);
    let raw = LinearClip::init(d, d, 0.07, &mut rng);
    let (raw1, _) = proxy::zero_shot(&raw, &eval, &labels, &prompts);
    assert!(raw1 < top1 - 0.2, "untrained {raw1} vs trained {top1}");
}

/// Writes a small labelled dataset with `kind`-less shards, its prompts and
/// an eval set; returns (data, prompts, eval set).
fn small(dir: &Dir, rows: usize, d: usize, classes: usize) -> (String, String, String, Data) {
    let data = make_data(rows, d, classes, 3);
    let (dpath, ppath) = write_data(&dir.path, &data, 2, false);
    // Eval set: the first 50 images, labelled by their nearest prompt class.
    let eval = dir.join("eval.parquet");
    write_eval(&eval, &data, 50);
    (
        s(&dpath).to_string(),
        s(&ppath).to_string(),
        s(&eval).to_string(),
        data,
    )
}

/// Class prompts as the prompts reader makes them: templates normalised,
/// averaged, renormalised; classes ordered by class_id.
fn class_prompts(data: &Data) -> (Vec<i32>, Vec<Vec<f64>>) {
    let mut ids: Vec<i32> = data.prompts.iter().map(|p| p.0).collect();
    ids.sort_unstable();
    ids.dedup();
    let embs = ids
        .iter()
        .map(|&id| {
            let d = data.prompts[0].1.len();
            let mut sum = vec![0.0; d];
            for (_, e) in data.prompts.iter().filter(|p| p.0 == id) {
                for (s, x) in sum.iter_mut().zip(unit(e)) {
                    *s += x;
                }
            }
            let n = sum.iter().map(|x| x * x).sum::<f64>().sqrt();
            sum.iter().map(|x| x / n).collect()
        })
        .collect();
    (ids, embs)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Latent class of an image: argmax_k <u, c_k>, ties to the smallest k.
fn class_of(u: &[f64], prompts: &[Vec<f64>]) -> usize {
    let mut best = 0;
    for k in 1..prompts.len() {
        if dot(u, &prompts[k]) > dot(u, &prompts[best]) {
            best = k;
        }
    }
    best
}

fn write_eval(path: &std::path::Path, data: &Data, m: usize) {
    use arrow_array::builder::{Int32Builder, StringBuilder};
    use arrow_array::RecordBatch;
    use arrow_schema::{DataType, Field, Schema};
    use std::sync::Arc;
    let (ids, prompts) = class_prompts(data);
    let d = data.u[0].len();
    let mut idb = StringBuilder::new();
    let mut lab = Int32Builder::new();
    for i in 0..m {
        idb.append_value(format!("e{i}"));
        lab.append_value(ids[class_of(&unit(&data.u[i]), &prompts)]);
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("image_embedding", emb_type(d, false), true),
        Field::new("label", DataType::Int32, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(idb.finish()),
            emb_array(&data.u[..m], d, false),
            Arc::new(lab.finish()),
        ],
    )
    .unwrap();
    write_batch(path, &batch);
}

fn rel_error(cs: &[f64], cv: &[f64]) -> f64 {
    let diff: f64 = cs.iter().zip(cv).map(|(a, b)| (a - b) * (a - b)).sum();
    let base: f64 = cv.iter().map(|b| b * b).sum();
    (diff / base).sqrt()
}

/// `mean(u v^T)` over `rows`, normalised embeddings, in f64.
fn cross_cov(data: &Data, rows: &[usize]) -> Vec<f64> {
    let d = data.u[0].len();
    let mut c = vec![0.0; d * d];
    for &r in rows {
        let (u, v) = (unit(&data.u[r]), unit(&data.v[r]));
        for a in 0..d {
            for b in 0..d {
                c[a * d + b] += u[a] * v[b];
            }
        }
    }
    let n = rows.len().max(1) as f64;
    c.iter().map(|x| x / n).collect()
}

#[test]
fn covariance_metrics_match_brute_force() {
    let dir = Dir::new("eval-cov");
    let (data_dir, prompts, eval, data) = small(&dir, 700, 8, 4);
    let out = dir.join("out");
    clipcov_ok(&[
        "baseline",
        "random",
        "--data",
        &data_dir,
        "--fraction",
        "0.15",
        "--out",
        s(&out),
        "--seed",
        "4",
    ]);
    let subset = out.join("random/subset.parquet");
    let m = json(&[
        "eval",
        "--data",
        &data_dir,
        "--subset",
        s(&subset),
        "--eval-set",
        &eval,
        "--prompts",
        &prompts,
        "--json",
        "--proxy-steps",
        "5",
        "--eval-seeds",
        "1",
    ]);
    // The picks' canonical rows, from the CSV beside the Parquet file.
    let csv = std::fs::read_to_string(out.join("random/subset.csv")).unwrap();
    let picks: Vec<usize> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(2).unwrap().parse().unwrap())
        .collect();
    let (_, cls) = class_prompts(&data);
    let all: Vec<usize> = (0..data.ids.len()).collect();
    let class: Vec<usize> = all
        .iter()
        .map(|&r| class_of(&unit(&data.u[r]), &cls))
        .collect();
    let want = rel_error(&cross_cov(&data, &picks), &cross_cov(&data, &all));
    let got = m["cov_rel_error"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-4, "global: {got} vs {want}");
    let (mut errs, mut counts) = (Vec::new(), vec![0u64; cls.len()]);
    for (k, count) in counts.iter_mut().enumerate() {
        let in_k: Vec<usize> = all.iter().copied().filter(|&r| class[r] == k).collect();
        if in_k.is_empty() {
            continue;
        }
        let picked: Vec<usize> = picks.iter().copied().filter(|&r| class[r] == k).collect();
        *count = picked.len() as u64;
        errs.push(rel_error(
            &cross_cov(&data, &picked),
            &cross_cov(&data, &in_k),
        ));
    }
    let want = errs.iter().sum::<f64>() / errs.len() as f64;
    let got = m["cov_rel_error_per_class"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-4, "per class: {got} vs {want}");
    let covered = counts.iter().filter(|&&c| c > 0).count();
    assert_eq!(m["classes_covered"], covered as u64);
    let total = picks.len() as f64;
    let h: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| -(c as f64 / total) * (c as f64 / total).ln())
        .sum();
    assert!((m["class_entropy"].as_f64().unwrap() - h).abs() < 1e-9);
    assert_eq!(m["rows"], picks.len() as u64);
    // No kind column in these shards: no kind shares.
    assert!(m.get("kind_share").is_none());
    // The full data as its own subset preserves C exactly.
    let full = dir.join("full");
    clipcov_ok(&[
        "baseline",
        "random",
        "--data",
        &data_dir,
        "--fraction",
        "1",
        "--out",
        s(&full),
    ]);
    let m = json(&[
        "eval",
        "--data",
        &data_dir,
        "--subset",
        s(&full.join("random/subset.parquet")),
        "--eval-set",
        &eval,
        "--prompts",
        &prompts,
        "--json",
        "--proxy-steps",
        "5",
        "--eval-seeds",
        "1",
    ]);
    assert!(m["cov_rel_error"].as_f64().unwrap() < 1e-5);
    assert!(m["cov_rel_error_per_class"].as_f64().unwrap() < 1e-5);
}

#[test]
fn eval_is_deterministic_per_seed_and_across_threads() {
    let dir = Dir::new("eval-det");
    let ds = dir.join("ds");
    synth_at(
        &ds,
        "--rows 3000 --classes 6 --dim 16 --eval-rows 300 --seed 2",
    );
    let data = ds.join("data");
    let out = dir.join("out");
    clipcov_ok(&[
        "baseline",
        "random",
        "--data",
        s(&data),
        "--fraction",
        "0.2",
        "--out",
        s(&out),
    ]);
    let run = |seed: &str, threads: &str| {
        clipcov_ok(&[
            "eval",
            "--data",
            s(&data),
            "--subset",
            s(&out.join("random/subset.parquet")),
            "--eval-set",
            s(&ds.join("eval.parquet")),
            "--prompts",
            s(&ds.join("prompts.parquet")),
            "--json",
            "--seed",
            seed,
            "--threads",
            threads,
            "--proxy-steps",
            "40",
            "--proxy-batch-size",
            "64",
        ])
    };
    let a = run("7", "2");
    assert_eq!(a, run("7", "1"));
    let b = run("8", "2");
    assert_ne!(a, b);
    let m: serde_json::Value = serde_json::from_str(&a).unwrap();
    // synth data has kinds: every share present, summing to one; the
    // held-out slice is min(1000, N / 10) clean pairs.
    let shares = m["kind_share"].as_object().unwrap();
    for k in ["clean", "mismatch", "duplicate", "junk"] {
        assert!(shares.contains_key(k), "{k}");
    }
    let total: f64 = shares.values().map(|v| v.as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-9);
    assert_eq!(m["heldout_pairs"], 300);
    assert!(m["train_pairs"].as_u64().unwrap() <= 600);
    for k in ["zero_shot_top1", "zero_shot_top5", "retrieval_r1"] {
        let v = m[k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{k} {v}");
        assert!(m[format!("{k}_std")].as_f64().unwrap() >= 0.0);
    }
    // Text output names the same metrics.
    let text = clipcov_ok(&[
        "eval",
        "--data",
        s(&data),
        "--subset",
        s(&out.join("random/subset.parquet")),
        "--eval-set",
        s(&ds.join("eval.parquet")),
        "--prompts",
        s(&ds.join("prompts.parquet")),
        "--proxy-steps",
        "5",
    ]);
    assert!(
        text.contains("zero_shot_top1") && text.contains("kind share"),
        "{text}"
    );
    // The temporary store is gone.
    assert!(!out.join("random/.clipcov-eval").exists());
}

#[test]
fn eval_learns_on_clean_synth_data() {
    let dir = Dir::new("eval-clean");
    let ds = dir.join("ds");
    synth_at(&ds, "--rows 4000 --classes 8 --dim 32 --eval-rows 400 --mismatch-rate 0 --duplicate-rate 0 --junk-rate 0");
    let out = dir.join("out");
    let data = ds.join("data");
    clipcov_ok(&[
        "baseline",
        "random",
        "--data",
        s(&data),
        "--fraction",
        "0.5",
        "--out",
        s(&out),
    ]);
    let m = json(&[
        "eval",
        "--data",
        s(&data),
        "--subset",
        s(&out.join("random/subset.parquet")),
        "--eval-set",
        s(&ds.join("eval.parquet")),
        "--prompts",
        s(&ds.join("prompts.parquet")),
        "--json",
        "--proxy-steps",
        "150",
        "--proxy-batch-size",
        "128",
    ]);
    // Chance is 1/8.
    assert!(m["zero_shot_top1"].as_f64().unwrap() > 0.5, "{m}");
    let (start, end) = (
        m["proxy_loss_start"].as_f64().unwrap(),
        m["proxy_loss_end"].as_f64().unwrap(),
    );
    assert!(end < 0.8 * start, "loss {start} -> {end}");
    assert_eq!(m["kind_share"]["clean"], 1.0);
}

#[test]
fn eval_rejects_a_subset_of_other_data() {
    let dir = Dir::new("eval-wrong");
    let (data_a, prompts, eval, _) = small(&dir, 300, 8, 3);
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let b = make_data(300, 8, 3, 99);
    let mut b2 = b;
    b2.ids = (0..300).map(|i| format!("other-{i}")).collect();
    let (data_b, _) = write_data(&other, &b2, 1, false);
    let out = dir.join("out");
    clipcov_ok(&[
        "baseline",
        "random",
        "--data",
        s(&data_b),
        "--fraction",
        "0.1",
        "--out",
        s(&out),
    ]);
    let o = clipcov(&[
        "eval",
        "--data",
        &data_a,
        "--subset",
        s(&out.join("random/subset.parquet")),
        "--eval-set",
        &eval,
        "--prompts",
        &prompts,
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(65), "{err}");
    assert!(
        err.contains("column 'id'") && err.contains("other-"),
        "{err}"
    );
}

#[test]
fn compare_with_eval_set_adds_the_metrics_of_every_method() {
    let dir = Dir::new("compare-eval");
    let ds = dir.join("ds");
    synth_at(&ds, "--rows 3000 --classes 8 --dim 16 --eval-rows 200");
    let (data, prompts, eval) = (
        ds.join("data"),
        ds.join("prompts.parquet"),
        ds.join("eval.parquet"),
    );
    let out = dir.join("out");
    let printed = clipcov_ok(&[
        "compare",
        "--data",
        s(&data),
        "--prompts",
        s(&prompts),
        "--fraction",
        "0.1",
        "--out",
        s(&out),
        "--eval-set",
        s(&eval),
        "--proxy-steps",
        "30",
        "--proxy-batch-size",
        "64",
    ]);
    assert!(printed.contains("| method | rows | cov err |"), "{printed}");
    let c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("compare.json")).unwrap()).unwrap();
    let order = c["method_order"].as_array().unwrap();
    assert_eq!(order.len(), 6);
    for name in order {
        let m = &c["methods"][name.as_str().unwrap()];
        assert_eq!(m["method"], *name);
        assert_eq!(m["rows"], 300);
        assert_eq!(m["rows_kept"], 300);
        // compare fails if the eval's coverage and its own count differ.
        let covered = m["classes_covered"].as_u64().unwrap();
        assert!((1..=8).contains(&covered), "{name} {covered}");
        for k in [
            "cov_rel_error",
            "cov_rel_error_per_class",
            "class_entropy",
            "zero_shot_top1",
            "zero_shot_top1_std",
            "zero_shot_top5",
            "retrieval_r1",
            "retrieval_r1_std",
        ] {
            assert!(m[k].as_f64().unwrap() >= 0.0, "{name} {k}");
        }
        assert!(m["kind_share"]["clean"].as_f64().unwrap() > 0.0);
    }
    // The same subset evaluated alone gives the same metrics.
    let alone = json(&[
        "eval",
        "--data",
        s(&data),
        "--subset",
        s(&out.join("ssp/subset.parquet")),
        "--eval-set",
        s(&eval),
        "--prompts",
        s(&prompts),
        "--json",
        "--proxy-steps",
        "30",
        "--proxy-batch-size",
        "64",
    ]);
    let ssp = &c["methods"]["ssp"];
    for k in [
        "cov_rel_error",
        "zero_shot_top1",
        "retrieval_r1",
        "class_entropy",
    ] {
        assert_eq!(alone[k], ssp[k], "{k}");
    }
    // --eval-set needs the prompts' classes.
    let o = clipcov(&[
        "compare",
        "--data",
        s(&data),
        "--fraction",
        "0.1",
        "--out",
        s(&dir.join("x")),
        "--methods",
        "random",
        "--eval-set",
        s(&eval),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--eval-set needs --prompts"));
}
