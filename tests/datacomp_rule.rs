//! `--rule datacomp` and `--centroids`: DataComp's own clip_score cut and
//! image-based filter against independent `f64` computations of DataComp's
//! rules (`baselines/apply_filter.py`) on small data written here.

use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_schema::{Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use clipcov::rng::Rng;

use crate::util::{clipcov, clipcov_ok, emb_array, s, write_batch, Dir};

type Rows = Vec<Vec<f32>>;

/// Writes a one-shard canonical dataset with ids `r0`, `r1`, ...
fn write_data(path: &Path, u: &[Vec<f32>], v: &[Vec<f32>]) {
    let ids: Vec<String> = (0..u.len()).map(|i| format!("r{i}")).collect();
    let cols: Vec<(&str, ArrayRef)> = vec![
        ("id", Arc::new(StringArray::from(ids))),
        ("image_embedding", emb_array(u, u[0].len(), false)),
        ("text_embedding", emb_array(v, v[0].len(), false)),
    ];
    let schema = Arc::new(Schema::new(
        cols.iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), false))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(schema, cols.into_iter().map(|c| c.1).collect()).unwrap();
    write_batch(path, &batch);
}

/// A `.npy` float32 array of `shape` holding `values`.
fn write_npy(path: &Path, shape: &str, values: &[f32]) {
    let mut h = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((h.len() as u16).to_le_bytes());
    bytes.extend(h.as_bytes());
    for x in values {
        bytes.extend(x.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

/// Reads a 2-D float32 `.npy` array: `(rows, cols, values)`.
fn read_npy(path: &Path) -> (usize, usize, Vec<f32>) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
    let len = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + len]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    let shape = header.split("'shape': (").nth(1).unwrap();
    let dims: Vec<usize> = shape
        .split(')')
        .next()
        .unwrap()
        .split(',')
        .map(|x| x.trim().parse().unwrap())
        .collect();
    let values: Vec<f32> = b[10 + len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(values.len(), dims[0] * dims[1]);
    (dims[0], dims[1], values)
}

/// The kept rows of a subset file, sorted.
fn kept_rows(path: &Path) -> Vec<usize> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let r = ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap();
    let mut rows: Vec<usize> = r
        .flat_map(|b| {
            let b = b.unwrap();
            let c = b
                .column_by_name("row")
                .unwrap()
                .as_primitive::<UInt64Type>();
            c.iter().map(|x| x.unwrap() as usize).collect::<Vec<_>>()
        })
        .collect();
    rows.sort_unstable();
    rows
}

fn run(args: &str) {
    clipcov_ok(&args.split_whitespace().collect::<Vec<_>>());
}

/// Runs clipcov, asserts the exit status, returns stderr.
fn fails(args: &str, code: i32) -> String {
    let out = clipcov(&args.split_whitespace().collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "clipcov {args}: {err}");
    err
}

fn manifest(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap()
}

/// DataComp's `get_threshold` and keep rule, written out independently:
/// `n = int(N * f)`, the threshold is `sorted(scores, descending)[n]`, keep
/// every row scoring `>=` it. Scores here are exact levels (ties are equal
/// levels), so a tolerance far below their spacing decides `>=`.
fn datacomp_keep(score: &[f64], n: usize, candidates: &[usize]) -> Vec<usize> {
    let mut sorted = score.to_vec();
    sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
    if n >= score.len() {
        return candidates.to_vec(); // DataComp's code fails here (index N)
    }
    let t = sorted[n];
    candidates
        .iter()
        .copied()
        .filter(|&i| score[i] >= t - 1e-9)
        .collect()
}

/// Pairs whose CLIP score is exactly `cos(theta_i)`: `u_i` a random unit
/// direction, `v_i` that direction turned by `theta_i` towards another.
/// Levels are 1e-3 apart (f32 rounding moves a score by ~1e-7); rows of a
/// tie group share their vectors, so their scores are bit-for-bit equal.
fn levelled_pairs(levels: &[usize], d: usize, seed: u64) -> (Rows, Rows, Vec<f64>) {
    let mut r = Rng::new(seed);
    let mut shared: std::collections::HashMap<usize, (Vec<f32>, Vec<f32>)> = Default::default();
    let (mut u, mut v, mut score) = (Vec::new(), Vec::new(), Vec::new());
    for &l in levels {
        let theta = 0.2 + 1e-3 * l as f64;
        let (a, b) = shared
            .entry(l)
            .or_insert_with(|| {
                let a: Vec<f64> = (0..d).map(|_| r.normal()).collect();
                let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
                let a: Vec<f64> = a.iter().map(|x| x / na).collect();
                let mut b: Vec<f64> = (0..d).map(|_| r.normal()).collect();
                let ab: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
                b.iter_mut().zip(&a).for_each(|(y, x)| *y -= ab * x);
                let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
                let scale = 1.0 + 4.0 * (l % 7) as f64; // norms vary: clipcov normalises
                let ua: Vec<f32> = a.iter().map(|x| (x * scale) as f32).collect();
                let vb: Vec<f32> = a
                    .iter()
                    .zip(&b)
                    .map(|(x, y)| (2.0 * (theta.cos() * x + theta.sin() * y / nb)) as f32)
                    .collect();
                (ua, vb)
            })
            .clone();
        u.push(a);
        v.push(b);
        score.push(theta.cos());
    }
    (u, v, score)
}

#[test]
fn clip_score_datacomp_rule_is_datacomps_threshold_cut_with_ties() {
    let dir = Dir::new("dc-clip-score");
    let n = 400;
    // Level of each row, shuffled; levels 120..=124 hold 5 rows each, so
    // ranks 120..=144 (0-based, largest score first) are 5 tie groups.
    let mut levels: Vec<usize> = Vec::new();
    for l in 0..400 - 20 {
        let copies = if (120..125).contains(&l) { 5 } else { 1 };
        levels.extend(std::iter::repeat_n(l, copies));
    }
    assert_eq!(levels.len(), n);
    let mut r = Rng::new(3);
    for i in (1..n).rev() {
        levels.swap(i, r.below(i as u64 + 1) as usize);
    }
    let (u, v, score) = levelled_pairs(&levels, 12, 4);
    write_data(&dir.join("data/a.parquet"), &u, &v);
    let (data, out) = (s(&dir.join("data")).to_string(), dir.join("out"));
    let all: Vec<usize> = (0..n).collect();
    // (flag, n = int(N * f) or the count, rows DataComp keeps)
    let cases = [
        ("--fraction 0.25", 100, 101),    // no tie at the cut: n + 1
        ("--budget 7", 7, 8),             // a count is n
        ("--fraction 0.3", 120, 120 + 5), // the (n+1)-th is the first of a tie group of 5
        ("--budget 121", 121, 121 + 4),   // ... inside it: the whole group
        ("--fraction 1", 400, 400),       // every row (DataComp's code has no n+1-th)
    ];
    // Check the expected counts against the independent rule, so the
    // table above cannot drift from it.
    for (flag, k, want) in cases {
        let kept = datacomp_keep(&score, k, &all);
        assert_eq!(kept.len(), want, "{flag}: {kept:?}");
        run(&format!(
            "baseline clip_score --rule datacomp {flag} --data {data} --out {} --quiet",
            s(&out)
        ));
        let got = kept_rows(&out.join("clip_score/subset.parquet"));
        assert_eq!(got, kept, "{flag}");
        let m = manifest(&out);
        assert_eq!(m["parameters"]["options"]["rule"], "datacomp");
        assert_eq!(m["parameters"]["report"]["rule"], "datacomp");
        assert_eq!(m["rows"]["selected"], want as u64, "{flag}");
    }
    // The default rule keeps exactly B.
    run(&format!(
        "baseline clip_score --fraction 0.3 --data {data} --out {} --quiet",
        s(&out)
    ));
    assert_eq!(kept_rows(&out.join("clip_score/subset.parquet")).len(), 120);
    assert_eq!(manifest(&out)["parameters"]["options"]["rule"], "clipcov");
    // A pipeline file's `rule` key is the flag.
    let toml = dir.join("dc.toml");
    std::fs::write(
        &toml,
        format!(
            "command = \"baseline\"\nmethod = \"clip_score\"\n[input]\ndata = \"{data}\"\n\
             [select]\nfraction = 0.3\n[output]\nout = \"{}\"\n[options]\nrule = \"datacomp\"\n",
            s(&out)
        ),
    )
    .unwrap();
    clipcov_ok(&["run", s(&toml)]);
    assert_eq!(
        kept_rows(&out.join("clip_score/subset.parquet")),
        datacomp_keep(&score, 120, &all)
    );
    // The rule is for the two DataComp methods only.
    let err = fails(
        &format!(
            "baseline ssp --rule datacomp --fraction 0.3 --data {data} --out {}",
            s(&out)
        ),
        2,
    );
    assert!(
        err.contains("--rule datacomp applies to clip_score"),
        "{err}"
    );
}

/// Index of the largest `<x, c>` over the rows of `centroids`, in `f64`,
/// and the gap to the runner-up.
fn argmax(x: &[f32], centroids: &[f32], d: usize) -> (usize, f64) {
    let mut s: Vec<(f64, usize)> = centroids
        .chunks_exact(d)
        .enumerate()
        .map(|(c, row)| {
            (
                row.iter().zip(x).map(|(a, b)| *a as f64 * *b as f64).sum(),
                c,
            )
        })
        .collect();
    s.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
    let scale = x.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
    (s[0].1, (s[0].0 - s[1].0) / scale)
}

/// DataComp's image-based rule on given centroids: the rows among
/// `candidates` whose largest-inner-product centroid is one a target got.
fn image_rule(
    u: &Rows,
    targets: &Rows,
    centroids: &[f32],
    d: usize,
    candidates: &[usize],
) -> Vec<usize> {
    let hit: std::collections::HashSet<usize> =
        targets.iter().map(|t| argmax(t, centroids, d).0).collect();
    candidates
        .iter()
        .copied()
        .filter(|&i| {
            let (c, gap) = argmax(&u[i], centroids, d);
            // A near-tie would make the check depend on rounding.
            assert!(gap > 1e-4, "row {i}: two centroids within {gap}");
            hit.contains(&c)
        })
        .collect()
}

/// Four blobs of image embeddings whose norms differ by blob (1 to 4) and
/// jitter within it, captions near them, targets near blobs 0 and 2.
fn blobs(n: usize, d: usize) -> (Rows, Rows, Rows, Vec<usize>) {
    let mut r = Rng::new(21);
    let dirs: Vec<Vec<f64>> = (0..4)
        .map(|_| (0..d).map(|_| r.normal()).collect())
        .collect();
    let (mut u, mut v, mut group) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let g = i % 4;
        let norm = (1 + g) as f64 * (1.0 + 0.3 * r.uniform());
        let x: Vec<f64> = dirs[g].iter().map(|c| c + 0.2 * r.normal()).collect();
        let nx = x.iter().map(|a| a * a).sum::<f64>().sqrt();
        u.push(x.iter().map(|a| (a / nx * norm) as f32).collect());
        v.push(x.iter().map(|a| (a + 0.8 * r.normal()) as f32).collect());
        group.push(g);
    }
    let targets = (0..24)
        .map(|i| {
            let g = if i < 16 { 0 } else { 2 };
            dirs[g]
                .iter()
                .map(|c| (c + 0.1 * r.normal()) as f32)
                .collect()
        })
        .collect();
    (u, v, targets, group)
}

#[test]
fn image_based_keeps_the_rule_on_given_centroids_and_writes_its_own() {
    let dir = Dir::new("dc-image-based");
    let (n, d) = (800, 16);
    let (u, v, targets, group) = blobs(n, d);
    write_data(&dir.join("data/a.parquet"), &u, &v);
    let t: Vec<f32> = targets.iter().flatten().copied().collect();
    write_npy(
        &dir.join("targets.npy"),
        &format!("({}, {d})", targets.len()),
        &t,
    );
    let (data, tg, out) = (
        s(&dir.join("data")).to_string(),
        s(&dir.join("targets.npy")).to_string(),
        dir.join("out"),
    );
    let base = format!(
        "baseline datacomp_image_based --data {data} --targets {tg} --out {} --quiet",
        s(&out)
    );
    let subset = out.join("datacomp_image_based/subset.parquet");
    let written = out.join("datacomp_image_based/centroids.npy");
    let all: Vec<usize> = (0..n).collect();
    let easy: Vec<f64> = (0..n)
        .map(|i| {
            let (a, b) = (&u[i], &v[i]);
            let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let na = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            let nb = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            dot / (na * nb)
        })
        .collect();

    // Given centroids (random, unnormalised): the kept set is the rule
    // computed here, under either rule, with and without the CLIP cut.
    let mut r = Rng::new(5);
    let given: Vec<f32> = (0..7 * d).map(|_| (3.0 * r.normal()) as f32).collect();
    let cfile = dir.join("given.npy");
    write_npy(&cfile, &format!("(7, {d})"), &given);
    let want = image_rule(&u, &targets, &given, d, &all);
    assert!(
        !want.is_empty() && want.len() < n,
        "the rule keeps {}",
        want.len()
    );
    for rule in ["clipcov", "datacomp"] {
        run(&format!("{base} --centroids {} --rule {rule}", s(&cfile)));
        assert_eq!(kept_rows(&subset), want, "--rule {rule}");
        // The centroids used are written back as given.
        assert_eq!(read_npy(&written), (7, d, given.clone()));
    }
    // --intersect-clip-score 0.3 with DataComp's cut: every row scoring
    // >= the (int(0.3 N) + 1)-th largest CLIP score, then the rule.
    let mut sorted = easy.clone();
    sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
    let t = sorted[(0.3 * n as f64) as usize];
    assert!(
        sorted[(0.3 * n as f64) as usize - 1] - t > 1e-6,
        "a near-tie at the cut"
    );
    let top: Vec<usize> = all.iter().copied().filter(|&i| easy[i] >= t).collect();
    assert_eq!(top.len(), 241);
    run(&format!(
        "{base} --centroids {} --rule datacomp --intersect-clip-score 0.3",
        s(&cfile)
    ));
    assert_eq!(
        kept_rows(&subset),
        image_rule(&u, &targets, &given, d, &top)
    );
    let m = manifest(&out);
    assert_eq!(m["parameters"]["options"]["rule"], "datacomp");
    assert_eq!(m["parameters"]["options"]["centroids"], s(&cfile));
    assert!(m["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["path"] == "datacomp_image_based/centroids.npy" && o["rows"] == 7));

    // k-means under each rule: the centroids written are the means of the
    // blobs as given (datacomp) or of the normalised rows (clipcov), the
    // kept set is the rule on them, and passing them back via --centroids
    // gives the same subset.
    for rule in ["datacomp", "clipcov"] {
        run(&format!("{base} --clusters 4 --rule {rule}"));
        let kept = kept_rows(&subset);
        let (k, dd, c) = read_npy(&written);
        assert_eq!((k, dd), (4, d));
        assert_eq!(kept, image_rule(&u, &targets, &c, d, &all), "--rule {rule}");
        if rule == "clipcov" {
            // Unit centroids: each target goes to its own blob. (DataComp's
            // unnormalised centroids favour the long blobs: its rule.)
            let want: Vec<usize> = all.iter().copied().filter(|&i| group[i] % 2 == 0).collect();
            assert_eq!(kept, want, "--rule {rule}: blobs 0 and 2");
        }
        for g in 0..4 {
            let members: Vec<&Vec<f32>> =
                (0..n).filter(|&i| group[i] == g).map(|i| &u[i]).collect();
            let mean: Vec<f64> = (0..d)
                .map(|j| {
                    members
                        .iter()
                        .map(|x| {
                            let nx = x.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
                            x[j] as f64 / if rule == "datacomp" { 1.0 } else { nx }
                        })
                        .sum::<f64>()
                        / members.len() as f64
                })
                .collect();
            let close = c.chunks_exact(d).any(|row| {
                row.iter()
                    .zip(&mean)
                    .all(|(a, b)| (*a as f64 - b).abs() < 1e-4 * (1.0 + b.abs()))
            });
            assert!(close, "--rule {rule}: no centroid is the mean of blob {g}");
        }
        let copy = dir.join(&format!("{rule}.npy"));
        std::fs::copy(&written, &copy).unwrap();
        run(&format!("{base} --centroids {} --rule {rule}", s(&copy)));
        assert_eq!(kept_rows(&subset), kept, "--rule {rule}: round trip");
        assert_eq!(read_npy(&written).2, c);
    }
}

#[test]
fn bad_centroids_files_are_one_line_errors() {
    let dir = Dir::new("dc-bad-centroids");
    let (n, d) = (200, 16);
    let (u, v, targets, _) = blobs(n, d);
    write_data(&dir.join("data/a.parquet"), &u, &v);
    let t: Vec<f32> = targets.iter().flatten().copied().collect();
    write_npy(
        &dir.join("targets.npy"),
        &format!("({}, {d})", targets.len()),
        &t,
    );
    let (data, tg) = (
        s(&dir.join("data")).to_string(),
        s(&dir.join("targets.npy")).to_string(),
    );
    let check = |name: &str, code: i32, needle: &str| {
        let out = dir.join(&format!("out-{name}"));
        let file = dir.join(name);
        let err = fails(
            &format!(
                "baseline datacomp_image_based --data {data} --targets {tg} --out {} --centroids {}",
                s(&out),
                s(&file)
            ),
            code,
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains(s(&file)) && err.contains(needle),
            "{name}: {err}"
        );
        assert!(
            !out.join("datacomp_image_based").exists(),
            "{name}: files left behind"
        );
    };
    write_npy(&dir.join("wrong-d.npy"), "(3, 8)", &[0.5; 24]);
    check("wrong-d.npy", 65, "the pool's embeddings have d = 16");
    let mut nan = vec![0.5f32; 3 * d];
    nan[2 * d + 1] = f32::NAN;
    write_npy(&dir.join("nan.npy"), &format!("(3, {d})"), &nan);
    check("nan.npy", 65, "centroid 2 has a non-finite value");
    let mut inf = vec![0.5f32; 3 * d];
    inf[0] = f32::INFINITY;
    write_npy(&dir.join("inf.npy"), &format!("(3, {d})"), &inf);
    check("inf.npy", 65, "centroid 0 has a non-finite value");
    write_npy(&dir.join("flat.npy"), &format!("({},)", 3 * d), &[0.5; 48]);
    check("flat.npy", 65, "2-D");
    write_npy(&dir.join("empty.npy"), &format!("(0, {d})"), &[]);
    check("empty.npy", 65, "no centroids");
    std::fs::write(dir.join("text.npy"), "not numpy").unwrap();
    check("text.npy", 65, "not a readable .npy");
    check("missing.npy", 74, "");
    // --clusters and --centroids together is a usage error.
    write_npy(&dir.join("ok.npy"), &format!("(2, {d})"), &[0.5; 32]);
    let err = fails(
        &format!(
            "baseline datacomp_image_based --data {data} --targets {tg} --out {} --centroids {} --clusters 3",
            s(&dir.join("out-both")),
            s(&dir.join("ok.npy"))
        ),
        2,
    );
    assert!(err.contains("not both"), "{err}");
}
