//! The baselines (docs/baselines.md) against brute-force `f64`
//! computations of their definitions on small data written here, and
//! `clipcov compare` end to end through the binary.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int32Type, UInt64Type};
use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_schema::{Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use clipcov::methods::{c_rho, neg_clip_loss};
use clipcov::rng::Rng;

use crate::util::{clipcov, clipcov_ok, emb_array, write_batch, Dir};

/// `dir/p` as a command-line argument.
fn arg(dir: &Dir, p: &str) -> String {
    dir.join(p).to_str().unwrap().to_string()
}

/// Runs clipcov with whitespace-separated `args` (test paths hold no
/// spaces) and asserts success.
fn ok(args: &str) -> String {
    clipcov_ok(&args.split_whitespace().collect::<Vec<_>>())
}

/// Runs clipcov, asserts the exit status, returns stderr.
fn fails(args: &str, code: i32) -> String {
    let out = clipcov(&args.split_whitespace().collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "clipcov {args}: {err}");
    err
}

type Rows = Vec<Vec<f32>>;

fn embedding_column(rows: &[Vec<f32>]) -> ArrayRef {
    emb_array(rows, rows[0].len(), false)
}

fn write_parquet(path: &Path, cols: Vec<(&str, ArrayRef)>) {
    let schema = Arc::new(Schema::new(
        cols.iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), false))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(schema, cols.into_iter().map(|c| c.1).collect()).unwrap();
    write_batch(path, &batch);
}

/// Writes a one-shard canonical dataset with ids `r0`, `r1`, ...
fn write_data(path: &Path, u: &[Vec<f32>], v: &[Vec<f32>]) {
    let ids: Vec<String> = (0..u.len()).map(|i| format!("r{i}")).collect();
    write_parquet(
        path,
        vec![
            ("id", Arc::new(StringArray::from(ids)) as ArrayRef),
            ("image_embedding", embedding_column(u)),
            ("text_embedding", embedding_column(v)),
        ],
    );
}

/// A Parquet file's columns.
struct Table(Vec<RecordBatch>);

impl Table {
    fn read(path: &Path) -> Table {
        let f = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let r = ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap();
        Table(r.map(|b| b.unwrap()).collect())
    }

    fn col<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a ArrayRef> + 'a {
        self.0
            .iter()
            .map(move |b| b.column_by_name(name).unwrap_or_else(|| panic!("{name}")))
    }

    fn u64s(&self, name: &str) -> Vec<Option<u64>> {
        self.col(name)
            .flat_map(|a| a.as_primitive::<UInt64Type>().iter().collect::<Vec<_>>())
            .collect()
    }

    fn rows(&self) -> Vec<usize> {
        self.u64s("row")
            .into_iter()
            .map(|r| r.unwrap() as usize)
            .collect()
    }

    fn f64s(&self, name: &str) -> Vec<f64> {
        self.col(name)
            .flat_map(|a| {
                a.as_primitive::<Float64Type>()
                    .iter()
                    .map(Option::unwrap)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn i32s(&self, name: &str) -> Vec<Option<i32>> {
        self.col(name)
            .flat_map(|a| a.as_primitive::<Int32Type>().iter().collect::<Vec<_>>())
            .collect()
    }

    fn strs(&self, name: &str) -> Vec<String> {
        self.col(name)
            .flat_map(|a| {
                a.as_string::<i32>()
                    .iter()
                    .map(|s| s.unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

fn unit(v: &[f32]) -> Vec<f64> {
    let n = v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    v.iter().map(|&x| x as f64 / n).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn lse(v: impl Iterator<Item = f64> + Clone) -> f64 {
    let m = v.clone().fold(f64::NEG_INFINITY, f64::max);
    m + v.map(|x| (x - m).exp()).sum::<f64>().ln()
}

fn normal_vec(r: &mut Rng, d: usize, scale: f64) -> Vec<f64> {
    (0..d).map(|_| r.normal() * scale).collect()
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// `groups` separated blobs: rows cycle through the groups; captions are
/// noisy copies of the images; every tenth row nearly duplicates an earlier
/// one (so semdedup has neighbours to find).
fn blobs(n: usize, d: usize, groups: usize, spread: f64, seed: u64) -> (Rows, Rows, Vec<usize>) {
    let mut r = Rng::new(seed);
    let centers: Vec<Vec<f64>> = (0..groups)
        .map(|_| unit(&to_f32(&normal_vec(&mut r, d, 1.0))))
        .collect();
    let (mut u, mut v, mut g): (Rows, Rows, Vec<usize>) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let k = i % groups;
        let x: Vec<f64> = if i % 10 == 9 && i >= 2 * groups {
            let src = r.below((i / groups) as u64) as usize * groups + k;
            u[src]
                .iter()
                .map(|&a: &f32| a as f64 + 1e-3 * r.normal())
                .collect()
        } else {
            centers[k]
                .iter()
                .zip(normal_vec(&mut r, d, spread))
                .map(|(c, e)| c + e)
                .collect()
        };
        let y: Vec<f64> = x
            .iter()
            .zip(normal_vec(&mut r, d, 0.4))
            .map(|(a, e)| a + e)
            .collect();
        u.push(to_f32(&x));
        v.push(to_f32(&y));
        g.push(k);
    }
    (u, v, g)
}

/// `kept` (rows in rank order) is the top `b` of `score` (by row), larger
/// first, up to float differences within `tol`.
fn assert_top(kept: &[usize], score: &[f64], b: usize, tol: f64) {
    assert_eq!(kept.len(), b);
    let mut is_kept = vec![false; score.len()];
    for &r in kept {
        assert!(!is_kept[r], "row {r} kept twice");
        is_kept[r] = true;
    }
    for w in kept.windows(2) {
        assert!(
            score[w[0]] >= score[w[1]] - tol,
            "rank order: {} then {}",
            w[0],
            w[1]
        );
    }
    let min_kept = kept.iter().map(|&r| score[r]).fold(f64::INFINITY, f64::min);
    let max_dropped = (0..score.len())
        .filter(|&r| !is_kept[r])
        .map(|r| score[r])
        .fold(f64::NEG_INFINITY, f64::max);
    assert!(
        min_kept >= max_dropped - tol,
        "kept {min_kept} < dropped {max_dropped}"
    );
}

/// The output's own order: `score` descending, ties by row ascending.
fn assert_rank_rule(t: &Table, descending: bool) {
    let (rows, score) = (t.rows(), t.f64s("score"));
    let ranks: Vec<u64> = t.u64s("rank").into_iter().map(Option::unwrap).collect();
    assert_eq!(ranks, (0..rows.len() as u64).collect::<Vec<_>>());
    for i in 1..rows.len() {
        let (a, b) = if descending {
            (score[i - 1], score[i])
        } else {
            (-score[i - 1], -score[i])
        };
        assert!(a > b || (a == b && rows[i - 1] < rows[i]), "rank {i}");
    }
}

fn report(out: &Dir) -> serde_json::Value {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("out/manifest.json")).unwrap()).unwrap();
    m["parameters"]["report"].clone()
}

#[test]
fn clip_score_is_the_exact_top_b_with_ties_to_the_smaller_row() {
    let dir = Dir::new("clip-score");
    let (n, d) = (2000, 32);
    let (mut u, mut v, _) = blobs(n, d, 5, 0.5, 1);
    // Rows 1500, 10 and 700: one pair, u = v, so they tie at the top score.
    let mut r = Rng::new(9);
    let top = to_f32(&normal_vec(&mut r, d, 1.0));
    for row in [1500, 10, 700] {
        u[row] = top.clone();
        v[row] = top.clone();
    }
    write_data(&dir.join("data/a.parquet"), &u, &v);
    let easy: Vec<f64> = (0..n).map(|i| dot(&unit(&u[i]), &unit(&v[i]))).collect();
    let data = arg(&dir, "data");
    let out = arg(&dir, "out");
    ok(&format!(
        "baseline clip_score --data {data} --budget 2 --out {out}"
    ));
    let t = Table::read(&dir.join("out/clip_score/subset.parquet"));
    assert_eq!(t.rows(), vec![10, 700]);
    assert_eq!(t.strs("id"), vec!["r10", "r700"]);
    for budget in ["0.137", "1"] {
        ok(&format!(
            "baseline clip_score --data {data} --fraction {budget} --out {out}"
        ));
        let t = Table::read(&dir.join("out/clip_score/subset.parquet"));
        let b = (budget.parse::<f64>().unwrap() * n as f64).floor() as usize;
        assert_top(&t.rows(), &easy, b, 1e-6);
        assert_rank_rule(&t, true);
        assert!(t.i32s("class").iter().all(Option::is_none));
        for (row, s) in t.rows().iter().zip(t.f64s("score")) {
            assert!((s - easy[*row]).abs() < 1e-6);
        }
    }
    ok(&format!(
        "baseline clip_score --data {data} --threshold 0.8 --out {out}"
    ));
    let t = Table::read(&dir.join("out/clip_score/subset.parquet"));
    let mut want: Vec<usize> = (0..n).filter(|&i| easy[i] >= 0.8).collect();
    let mut got = t.rows();
    got.sort_unstable();
    want.retain(|&i| (easy[i] - 0.8).abs() > 1e-6 || got.contains(&i));
    assert_eq!(got, want);
    // The CSV holds the same rows.
    let csv = std::fs::read_to_string(dir.join("out/clip_score/subset.csv")).unwrap();
    assert_eq!(csv.lines().count(), t.rows().len() + 1);
    assert!(csv.starts_with("id,rank,row,class,score\n"));
}

/// Each cluster's rows in "keep hard" order, from the neighbours file.
fn hard_order(cluster: &[Option<i32>], dist: &[f64]) -> Vec<Vec<usize>> {
    let k = cluster.iter().map(|c| c.unwrap()).max().unwrap() as usize + 1;
    let mut order = vec![Vec::new(); k];
    for (r, c) in cluster.iter().enumerate() {
        order[c.unwrap() as usize].push(r);
    }
    for o in &mut order {
        o.sort_by(|&a, &b| dist[b].total_cmp(&dist[a]).then(a.cmp(&b)));
    }
    order
}

#[test]
fn semdedup_max_sim_and_argmax_match_brute_force() {
    let dir = Dir::new("semdedup");
    let (n, d) = (1500, 32);
    let (u, v, _) = blobs(n, d, 4, 0.6, 2);
    write_data(&dir.join("data/a.parquet"), &u, &v);
    let uu: Vec<Vec<f64>> = u.iter().map(|x| unit(x)).collect();
    let (data, out) = (arg(&dir, "data"), arg(&dir, "out"));
    // Tiles of 16 rows: every cluster spans many tiles.
    ok(&format!(
        "baseline semdedup --data {data} --fraction 0.4 --out {out} --clusters 4 --tile-rows 16"
    ));
    let nb = Table::read(&dir.join("out/semdedup/neighbours.parquet"));
    assert_eq!(nb.rows(), (0..n).collect::<Vec<_>>());
    let (cluster, dist) = (nb.i32s("cluster"), nb.f64s("centroid_distance"));
    let (max_sim, max_row) = (nb.f64s("max_sim"), nb.u64s("max_sim_row"));
    let mut m = vec![f64::NEG_INFINITY; n];
    for o in hard_order(&cluster, &dist) {
        for (j, &row) in o.iter().enumerate() {
            if j == 0 {
                assert_eq!(max_sim[row], f64::NEG_INFINITY);
                assert_eq!(max_row[row], None);
                continue;
            }
            let sims: Vec<f64> = o[..j].iter().map(|&i| dot(&uu[i], &uu[row])).collect();
            let (best, arg) =
                sims.iter()
                    .enumerate()
                    .fold(
                        (f64::NEG_INFINITY, 0),
                        |acc, (k, &s)| {
                            if s > acc.0 {
                                (s, k)
                            } else {
                                acc
                            }
                        },
                    );
            m[row] = best;
            assert!((max_sim[row] - best).abs() <= 1e-5, "row {row}");
            let second = sims
                .iter()
                .enumerate()
                .filter(|&(k, _)| k != arg)
                .map(|(_, &s)| s)
                .fold(f64::NEG_INFINITY, f64::max);
            if best - second > 1e-5 {
                assert_eq!(max_row[row], Some(o[arg] as u64), "argmax of row {row}");
            }
        }
    }
    // The kept set is the spec's rule at the reported eps.
    let eps = report(&dir)["eps"].as_f64().unwrap();
    let mut want: Vec<usize> = (0..n).filter(|&r| m[r] <= 1.0 - eps).collect();
    let t = Table::read(&dir.join("out/semdedup/subset.parquet"));
    let mut got = t.rows();
    got.sort_unstable();
    assert_eq!(got.len(), 600);
    want.sort_unstable();
    assert_eq!(got, want);
    assert_rank_rule(&t, false);
    // One tile per cluster gives the same values.
    ok(&format!(
        "baseline semdedup --data {data} --fraction 0.4 --out {out} --clusters 4 --tile-rows 1024"
    ));
    let nb2 = Table::read(&dir.join("out/semdedup/neighbours.parquet"));
    for (a, b) in max_sim.iter().zip(nb2.f64s("max_sim")) {
        assert!(a == &b || (a - b).abs() < 1e-6);
    }
    // --eps keeps exactly the rows with m_j <= 1 - eps.
    ok(&format!(
        "baseline semdedup --data {data} --eps 0.02 --out {out} --clusters 4"
    ));
    let t = Table::read(&dir.join("out/semdedup/subset.parquet"));
    let mut got = t.rows();
    got.sort_unstable();
    let want: Vec<usize> = (0..n).filter(|&r| max_sim[r] <= 1.0 - 0.02).collect();
    assert_eq!(got, want);
}

#[test]
fn semdedup_chain_removes_b_and_c() {
    let dir = Dir::new("chain");
    let d = 32;
    let mut r = Rng::new(4);
    let axis = |t: f64| -> Vec<f32> {
        let mut x = vec![0.0f32; d];
        x[0] = t.cos() as f32;
        x[1] = t.sin() as f32;
        x
    };
    // Background: the cluster's bulk, noise off the e0-e1 plane.
    let mut u: Rows = (0..30)
        .map(|_| {
            let mut x = vec![0.0f64; d];
            x[0] = 1.0;
            for c in x.iter_mut().skip(2) {
                *c = 0.3 * r.normal();
            }
            to_f32(&x)
        })
        .collect();
    // a~b and b~c (cos 0.3 = 0.955 > 0.9) but a!~c (cos 0.6 = 0.825).
    let (a, b, c) = (11, 25, 3);
    u[a] = axis(0.9);
    u[b] = axis(0.6);
    u[c] = axis(0.3);
    let v = u.clone();
    write_data(&dir.join("data/a.parquet"), &u, &v);
    let (data, out) = (arg(&dir, "data"), arg(&dir, "out"));
    ok(&format!(
        "baseline semdedup --data {data} --eps 0.1 --out {out} --clusters 1"
    ));
    let nb = Table::read(&dir.join("out/semdedup/neighbours.parquet"));
    let max_row = nb.u64s("max_sim_row");
    assert_eq!(max_row[b], Some(a as u64));
    assert_eq!(max_row[c], Some(b as u64));
    let mut kept = Table::read(&dir.join("out/semdedup/subset.parquet")).rows();
    kept.sort_unstable();
    let want: Vec<usize> = (0..30).filter(|&i| i != b && i != c).collect();
    assert_eq!(kept, want);
}

#[test]
fn semdedup_and_ssp_ties_go_to_the_smaller_row() {
    let dir = Dir::new("ties");
    let d = 32;
    let mut r = Rng::new(6);
    let mut u: Rows = (0..40)
        .map(|_| {
            let mut x = vec![0.0f64; d];
            x[0] = 1.0;
            for c in x.iter_mut().skip(3) {
                *c = 0.2 * r.normal();
            }
            to_f32(&x)
        })
        .collect();
    let mut far = vec![0.0f32; d];
    far[0] = 0.1;
    far[1] = 1.0;
    let mut near = vec![0.0f32; d];
    near[0] = 0.3;
    near[1] = 1.0;
    // Rows 2 and 5: the same, farthest embedding; row 0 is near both.
    u[2] = far.clone();
    u[5] = far;
    u[0] = near;
    let v = u.clone();
    write_data(&dir.join("data/a.parquet"), &u, &v);
    let (data, out) = (arg(&dir, "data"), arg(&dir, "out"));
    ok(&format!(
        "baseline semdedup --data {data} --budget 10 --out {out} --clusters 1"
    ));
    let nb = Table::read(&dir.join("out/semdedup/neighbours.parquet"));
    let (dist, max_row) = (nb.f64s("centroid_distance"), nb.u64s("max_sim_row"));
    assert_eq!(dist[2], dist[5]);
    assert_eq!(max_row[2], None, "row 2 ranks first");
    assert_eq!(max_row[5], Some(2));
    assert_eq!(max_row[0], Some(2), "equal similarities to rows 2 and 5");
    ok(&format!(
        "baseline ssp --data {data} --budget 2 --out {out} --clusters 1"
    ));
    let t = Table::read(&dir.join("out/ssp/subset.parquet"));
    assert_eq!(t.rows(), vec![2, 5]);
}

/// Solves `a x = b` (`a` is `[k, k]`) by Gaussian elimination.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let k = b.len();
    for c in 0..k {
        let p = (c..k)
            .max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))
            .unwrap();
        a.swap(c, p);
        b.swap(c, p);
        let pivot = a[c].clone();
        for i in c + 1..k {
            let f = a[i][c] / pivot[c];
            for (x, p) in a[i].iter_mut().zip(&pivot).skip(c) {
                *x -= f * p;
            }
            b[i] -= f * b[c];
        }
    }
    let mut x = vec![0.0; k];
    for c in (0..k).rev() {
        let s: f64 = (c + 1..k).map(|j| a[c][j] * x[j]).sum();
        x[c] = (b[c] - s) / a[c][c];
    }
    x
}

#[test]
fn ssp_keeps_the_rows_farthest_from_unit_centroids() {
    let dir = Dir::new("ssp");
    let (n, d) = (1200, 32);
    let (u, v, _) = blobs(n, d, 4, 0.5, 3);
    write_data(&dir.join("data/a.parquet"), &u, &v);
    let uu: Vec<Vec<f64>> = u.iter().map(|x| unit(x)).collect();
    let (data, out) = (arg(&dir, "data"), arg(&dir, "out"));
    let common = format!("--data {data} --fraction 0.25 --out {out} --clusters 4");
    ok(&format!("baseline semdedup {common}"));
    let nb = Table::read(&dir.join("out/semdedup/neighbours.parquet"));
    let (cluster, dist) = (nb.i32s("cluster"), nb.f64s("centroid_distance"));
    ok(&format!("baseline ssp {common}"));
    let t = Table::read(&dir.join("out/ssp/subset.parquet"));
    assert_top(&t.rows(), &dist, 300, 0.0);
    assert_rank_rule(&t, true);
    for (row, c) in t.rows().iter().zip(t.i32s("class")) {
        assert_eq!(c, cluster[*row]);
    }
    // The distances are 1 - <u, c> for a unit c per cluster (recovered by
    // least squares), and every row sits at its largest <u, c>.
    let mut centroids = Vec::new();
    for k in 0..4 {
        let rows: Vec<usize> = (0..n).filter(|&r| cluster[r] == Some(k)).collect();
        assert!(rows.len() > 2 * d);
        let mut ata = vec![vec![0.0; d]; d];
        let mut atb = vec![0.0; d];
        for &r in &rows {
            for i in 0..d {
                for j in 0..d {
                    ata[i][j] += uu[r][i] * uu[r][j];
                }
                atb[i] += uu[r][i] * (1.0 - dist[r]);
            }
        }
        let c = solve(ata, atb);
        assert!((dot(&c, &c).sqrt() - 1.0).abs() < 1e-5);
        for &r in &rows {
            assert!((1.0 - dot(&uu[r], &c) - dist[r]).abs() < 1e-5);
        }
        centroids.push(c);
    }
    for r in 0..n {
        let own = dot(&uu[r], &centroids[cluster[r].unwrap() as usize]);
        for c in &centroids {
            assert!(
                own >= dot(&uu[r], c) - 1e-5,
                "row {r} is not at its best centroid"
            );
        }
    }
}

/// Off a terminal (stderr is a pipe here), each stage writes one plain line
/// when it starts and one with its rows and rate when it ends; `--quiet`
/// writes none.
#[test]
fn stages_print_plain_lines_off_a_terminal() {
    let dir = Dir::new("stage-lines");
    let ds = arg(&dir, "ds");
    ok(&format!("synth --rows 500 --classes 4 --dim 16 --out {ds}"));
    let (data, prompts) = (arg(&dir, "ds/data"), arg(&dir, "ds/prompts.parquet"));
    let run = |quiet: &str, out: &str| {
        let o = arg(&dir, out);
        let args = format!(
            "{quiet} compare --data {data} --prompts {prompts} --fraction 0.1 --out {o} --methods clipcov,neg_clip_loss"
        );
        let out = clipcov(&args.split_whitespace().collect::<Vec<_>>());
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args}: {err}");
        err
    };
    let err = run("", "loud");
    for stage in ["ingest", "clipcov", "neg_clip_loss"] {
        let start = format!("stage {stage} started: 500 rows\n");
        assert_eq!(err.matches(&start).count(), 1, "{stage}: {err}");
        let end = err
            .lines()
            .find(|l| l.starts_with(&format!("stage {stage} done: 500 rows in ")))
            .unwrap_or_else(|| panic!("no end line for {stage}: {err}"));
        assert!(end.ends_with(" rows/s"), "{end}");
        assert!(err.find(&start) < err.find(end), "{err}");
    }
    assert!(err.lines().all(crate::util::is_stage_line), "{err}");
    assert_eq!(run("--quiet", "quiet"), "");
}

#[test]
fn neg_clip_loss_matches_its_definition() {
    let dir = Dir::new("negclip");
    let (n, d, t) = (600, 32, 0.01);
    let (u, v, _) = blobs(n, d, 6, 0.8, 5);
    write_data(&dir.join("data/a.parquet"), &u, &v);
    let (uu, vv): (Vec<Vec<f64>>, Vec<Vec<f64>>) = (
        u.iter().map(|x| unit(x)).collect(),
        v.iter().map(|x| unit(x)).collect(),
    );
    let s = |i: usize, j: usize| dot(&uu[i], &vv[j]) / t;
    let (data, out) = (arg(&dir, "data"), arg(&dir, "out"));
    // One batch of all rows (b capped at N), random batches of 128 (the
    // batch path) and of 200 (the full-matrix path, k b / N = 2).
    use neg_clip_loss::{choose_path, Path};
    assert_eq!(choose_path(n, d, 3, 128, 100.0), Path::Batches);
    assert_eq!(choose_path(n, d, 6, 200, 100.0), Path::Full);
    assert_eq!(choose_path(n, d, 2, 100_000, 100.0), Path::Full);
    for (b, k) in [(100_000usize, 2usize), (128, 3), (200, 6)] {
        ok(&format!("baseline neg_clip_loss --data {data} --fraction 1 --out {out} --neg-batch-size {b} --neg-batches {k} --seed 7"));
        let mut r_bf = vec![0.0; n];
        for rep in 0..k {
            for batch in neg_clip_loss::batches(n, b, 7, rep) {
                for &i in &batch {
                    let rows = lse(batch.iter().map(|&j| s(i, j)));
                    let cols = lse(batch.iter().map(|&j| s(j, i)));
                    r_bf[i] += t * (rows + cols) / 2.0 / k as f64;
                }
            }
        }
        let score_bf: Vec<f64> = (0..n).map(|i| s(i, i) * t - r_bf[i]).collect();
        let tb = Table::read(&dir.join("out/neg_clip_loss/subset.parquet"));
        let (rows, r, score) = (tb.rows(), tb.f64s("r"), tb.f64s("score"));
        for ((&row, r), s) in rows.iter().zip(r).zip(score) {
            assert!(
                (r - r_bf[row]).abs() < 1e-5,
                "R of row {row}: {r} vs {}",
                r_bf[row]
            );
            assert!((s - score_bf[row]).abs() < 1e-5);
        }
        assert_top(&rows, &score_bf, n, 2e-4);
        assert_rank_rule(&tb, true);
        // The scalar fallback gives the same bytes as the vector path.
        let fallback = arg(&dir, "fallback");
        let args = format!("baseline neg_clip_loss --data {data} --fraction 1 --out {fallback} --neg-batch-size {b} --neg-batches {k} --seed 7");
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_clipcov"))
            .args(args.split_whitespace())
            .env("CLIPCOV_ISA", "baseline")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let csv =
            |out: &str| std::fs::read(dir.join(out).join("neg_clip_loss/subset.csv")).unwrap();
        assert!(
            csv("out") == csv("fallback"),
            "the baseline instruction set differs"
        );
    }
    ok(&format!(
        "baseline neg_clip_loss --data {data} --fraction 0.2 --out {out} --neg-batch-size 100000"
    ));
    let mut r_full = vec![0.0; n];
    for (i, r) in r_full.iter_mut().enumerate() {
        *r = t * (lse((0..n).map(|j| s(i, j))) + lse((0..n).map(|j| s(j, i)))) / 2.0;
    }
    let score: Vec<f64> = (0..n).map(|i| s(i, i) * t - r_full[i]).collect();
    assert_top(
        &Table::read(&dir.join("out/neg_clip_loss/subset.parquet")).rows(),
        &score,
        120,
        2e-4,
    );
}

#[test]
fn c_rho_matches_its_definition_and_checks_the_learner_rows() {
    let dir = Dir::new("crho");
    let (n, d, t) = (500, 32, 0.01);
    let (u, v, _) = blobs(n, d, 5, 0.7, 8);
    let mut r = Rng::new(80);
    let noisy = |x: &Rows, r: &mut Rng| -> Rows {
        x.iter()
            .map(|row| row.iter().map(|&a| a + 0.3 * r.normal() as f32).collect())
            .collect()
    };
    let (ul, vl) = (noisy(&u, &mut r), noisy(&v, &mut r));
    write_data(&dir.join("ref/a.parquet"), &u, &v);
    write_data(&dir.join("learner/a.parquet"), &ul, &vl);
    let units = |x: &Rows| -> Vec<Vec<f64>> { x.iter().map(|r| unit(r)).collect() };
    let (uu, vv, uul, vvl) = (units(&u), units(&v), units(&ul), units(&vl));
    let loss = |uu: &[Vec<f64>], vv: &[Vec<f64>], i: usize, others: &[usize]| -> f64 {
        let mut js = vec![i];
        js.extend(others.iter().copied().filter(|&j| j != i));
        let own = dot(&uu[i], &vv[i]) / t;
        let rows = lse(js.iter().map(|&j| dot(&uu[i], &vv[j]) / t));
        let cols = lse(js.iter().map(|&j| dot(&uu[j], &vv[i]) / t));
        ((rows - own) + (cols - own)) / 2.0
    };
    let (data, learner, out) = (arg(&dir, "ref"), arg(&dir, "learner"), arg(&dir, "out"));
    for m in [100_000usize, 40] {
        ok(&format!("baseline c_rho --data {data} --learner-data {learner} --fraction 1 --out {out} --rho-sample {m} --seed 3"));
        let sample = c_rho::sample(n, m, 3);
        let tb = Table::read(&dir.join("out/c_rho/subset.parquet"));
        let mut reducible = vec![0.0; n];
        let (ll, lr) = (tb.f64s("learner_loss"), tb.f64s("reference_loss"));
        for (k, &row) in tb.rows().iter().enumerate() {
            let want_l = loss(&uul, &vvl, row, &sample);
            let want_r = loss(&uu, &vv, row, &sample);
            assert!((ll[k] - want_l).abs() < 2e-4, "learner loss of row {row}");
            assert!((lr[k] - want_r).abs() < 2e-4, "reference loss of row {row}");
            reducible[row] = want_l - want_r;
        }
        assert_top(&tb.rows(), &reducible, n, 4e-4);
    }
    // A different id, a missing row, or no learner data at all: clear errors.
    let mut ids: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
    ids[7] = "other".into();
    write_parquet(
        &dir.join("bad/a.parquet"),
        vec![
            ("id", Arc::new(StringArray::from(ids)) as ArrayRef),
            ("image_embedding", embedding_column(&ul)),
            ("text_embedding", embedding_column(&vl)),
        ],
    );
    let bad = arg(&dir, "bad");
    let base = format!("baseline c_rho --data {data} --fraction 0.1 --out {out}");
    let err = fails(&format!("{base} --learner-data {bad}"), 65);
    assert!(err.contains("bad/a.parquet: row 7, column 'id'"), "{err}");
    assert!(err.contains("'other'") && err.contains("'r7'"), "{err}");
    write_data(&dir.join("short/a.parquet"), &ul[..n - 1], &vl[..n - 1]);
    let short = arg(&dir, "short");
    let err = fails(&format!("{base} --learner-data {short}"), 65);
    assert!(err.contains("has 499 rows but --data has 500"), "{err}");
    let err = fails(&base, 2);
    assert!(err.contains("--learner-data"), "{err}");
}

fn write_npy(path: &Path, rows: &[Vec<f32>]) {
    let header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        rows.len(),
        rows[0].len()
    );
    let mut h = header;
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((h.len() as u16).to_le_bytes());
    bytes.extend(h.as_bytes());
    for x in rows.iter().flatten() {
        bytes.extend(x.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn datacomp_image_based_keeps_the_clusters_that_hold_a_target() {
    let dir = Dir::new("image-based");
    let (n, d) = (1200, 32);
    let (u, v, group) = blobs(n, d, 4, 0.15, 11);
    write_data(&dir.join("data/a.parquet"), &u, &v);
    // Targets: near group 0 (rows 0, 4, ...) and group 2.
    let mut r = Rng::new(12);
    let targets: Rows = (0..30)
        .map(|i| {
            let src = if i < 20 { 4 * i } else { 4 * i + 2 };
            u[src]
                .iter()
                .map(|&x| x + 0.05 * r.normal() as f32)
                .collect()
        })
        .collect();
    write_parquet(
        &dir.join("targets.parquet"),
        vec![("image_embedding", embedding_column(&targets))],
    );
    write_npy(&dir.join("targets.npy"), &targets);
    let easy: Vec<f64> = (0..n).map(|i| dot(&unit(&u[i]), &unit(&v[i]))).collect();
    let (data, out) = (arg(&dir, "data"), arg(&dir, "out"));
    let run = |targets: &str, extra: &str| {
        ok(&format!(
            "baseline datacomp_image_based --data {data} --out {out} --targets {targets} --clusters 4 {extra}"
        ));
        Table::read(&dir.join("out/datacomp_image_based/subset.parquet"))
    };
    let t = run(&arg(&dir, "targets.parquet"), "");
    let want: Vec<usize> = (0..n).filter(|&i| group[i] == 0 || group[i] == 2).collect();
    let mut got = t.rows();
    got.sort_unstable();
    assert_eq!(got, want);
    assert_rank_rule(&t, true);
    // One cluster per kept group.
    let class = t.i32s("class");
    for (row, c) in t.rows().iter().zip(&class) {
        let first = t
            .rows()
            .iter()
            .position(|r| group[*r] == group[*row])
            .unwrap();
        assert_eq!(*c, class[first]);
    }
    let bytes = std::fs::read(dir.join("out/datacomp_image_based/subset.parquet")).unwrap();
    run(&arg(&dir, "targets.npy"), "");
    assert_eq!(
        std::fs::read(dir.join("out/datacomp_image_based/subset.parquet")).unwrap(),
        bytes
    );
    // --intersect-clip-score: the top half by CLIP score, then the rule.
    let t = run(&arg(&dir, "targets.parquet"), "--intersect-clip-score 0.5");
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| easy[b].total_cmp(&easy[a]).then(a.cmp(&b)));
    let mut want: Vec<usize> = order[..n / 2]
        .iter()
        .copied()
        .filter(|&i| group[i] == 0 || group[i] == 2)
        .collect();
    want.sort_unstable();
    let mut got = t.rows();
    got.sort_unstable();
    assert_eq!(got, want);
    // Targets of another dimension.
    write_parquet(
        &dir.join("wrong.parquet"),
        vec![("image_embedding", embedding_column(&[vec![1.0; 16]]))],
    );
    let wrong = arg(&dir, "wrong.parquet");
    let err = fails(
        &format!("baseline datacomp_image_based --data {data} --out {out} --targets {wrong}"),
        65,
    );
    assert!(
        err.contains("wrong.parquet: row 0, column 'image_embedding'") && err.contains("32"),
        "{err}"
    );
}

#[test]
fn random_is_seeded_and_independent_of_threads() {
    let dir = Dir::new("random");
    let (u, v, _) = blobs(3000, 32, 3, 0.5, 13);
    write_data(&dir.join("data/a.parquet"), &u, &v);
    let data = arg(&dir, "data");
    let run = |threads: &str, seed: &str, out: &str| {
        let o = arg(&dir, out);
        ok(&format!(
            "baseline random --data {data} --fraction 0.1 --out {o} --threads {threads} --seed {seed}"
        ));
        std::fs::read(dir.join(out).join("random/subset.parquet")).unwrap()
    };
    let one = run("1", "5", "a");
    assert_eq!(one, run("2", "5", "b"));
    assert_ne!(one, run("2", "6", "c"));
    let t = Table::read(&dir.join("a/random/subset.parquet"));
    let mut rows = t.rows();
    rows.sort_unstable();
    rows.dedup();
    assert_eq!(rows.len(), 300);
}

#[test]
fn compare_runs_every_method_deterministically() {
    let dir = Dir::new("compare");
    let ds = arg(&dir, "ds");
    // f16 input: the store keeps f16 and every method reads it converted.
    ok(&format!(
        "synth --rows 3000 --classes 8 --dim 32 --f16 --eval-rows 200 --out {ds}"
    ));
    let (data, prompts) = (arg(&dir, "ds/data"), arg(&dir, "ds/prompts.parquet"));
    let run = |out: &str, threads: &str| {
        let o = arg(&dir, out);
        ok(&format!(
            "compare --data {data} --prompts {prompts} --fraction 0.1 --out {o} --threads {threads}"
        ))
    };
    let printed = run("one", "2");
    assert!(printed.contains("| method | rows kept |"), "{printed}");
    run("two", "1");
    let methods = [
        "clipcov",
        "random",
        "clip_score",
        "semdedup",
        "ssp",
        "neg_clip_loss",
    ];
    let read = |out: &str, file: &str| std::fs::read(dir.join(out).join(file)).unwrap();
    for m in methods {
        for f in ["subset.parquet", "subset.csv"] {
            let file = format!("{m}/{f}");
            assert!(read("one", &file) == read("two", &file), "{file} differs");
        }
        let t = Table::read(&dir.join("one").join(m).join("subset.parquet"));
        assert_eq!(t.rows().len(), 300, "{m}");
        let csv = String::from_utf8(read("one", &format!("{m}/subset.csv"))).unwrap();
        assert_eq!(csv.lines().count(), 301, "{m}");
    }
    let nb = "semdedup/neighbours.parquet";
    assert_eq!(read("one", nb), read("two", nb));
    let c: serde_json::Value = serde_json::from_slice(&read("one", "compare.json")).unwrap();
    // `methods` is keyed by name; `method_order` gives the run order.
    let list: Vec<&serde_json::Value> = c["method_order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &c["methods"][m.as_str().unwrap()])
        .collect();
    assert_eq!(list.len(), methods.len());
    for (e, m) in list.iter().zip(methods) {
        assert_eq!(e["method"], m);
        assert_eq!(e["rows_kept"], 300);
        assert_eq!(e["jaccard"][m], 1.0);
        assert!(e["classes_covered"].as_u64().unwrap() <= 8);
        for (o, other) in methods.iter().zip(&list) {
            let j = e["jaccard"][o].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&j));
            assert_eq!(j, other["jaccard"][m]);
        }
    }
    let md = String::from_utf8(read("one", "compare.md")).unwrap();
    assert!(md.contains("| semdedup | 300 |"), "{md}");
    // A baseline alone (a one-class store) gives the same bytes as in compare.
    let alone = arg(&dir, "alone");
    ok(&format!(
        "baseline ssp --data {data} --fraction 0.1 --out {alone}"
    ));
    assert_eq!(
        read("alone", "ssp/subset.parquet"),
        read("one", "ssp/subset.parquet")
    );
    let x = arg(&dir, "x");
    let err = fails(
        &format!("compare --data {data} --fraction 0.1 --out {x} --methods random,nope"),
        2,
    );
    assert!(err.contains("unknown method 'nope'"), "{err}");
}
