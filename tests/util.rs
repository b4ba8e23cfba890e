//! Test helpers: temporary folders, running the binary, writing datasets.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use arrow_array::builder::{Int32Builder, StringBuilder};
use arrow_array::{ArrayRef, FixedSizeListArray, Float16Array, Float32Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use half::f16;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

/// A fresh folder, removed when the test passes.
pub struct Dir {
    pub path: PathBuf,
}

impl Dir {
    pub fn new(name: &str) -> Dir {
        let path = std::env::temp_dir()
            .join("clipcov-tests")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Dir { path }
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Runs `clipcov` with `args`.
pub fn clipcov(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_clipcov"))
        .args(args)
        .output()
        .expect("run clipcov")
}

/// Runs `clipcov` and panics with its stderr unless it succeeds.
pub fn clipcov_ok(args: &[&str]) -> String {
    let out = clipcov(args);
    assert!(
        out.status.success(),
        "clipcov {:?} failed: {}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tiny deterministic generator for test data.
pub struct Gen(u64);

impl Gen {
    pub fn new(seed: u64) -> Gen {
        Gen(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn sym(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

/// A small dataset with latent structure: `classes` directions, pairs near
/// them (unnormalised, to exercise normalisation), prompts near them too.
pub struct Data {
    pub ids: Vec<String>,
    pub u: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    /// `(class_id, embedding)` rows, several per class.
    pub prompts: Vec<(i32, Vec<f32>)>,
}

pub fn make_data(rows: usize, d: usize, classes: usize, seed: u64) -> Data {
    make_data_with(rows, d, classes, seed, None)
}

/// As [`make_data`], with class `k` drawn with probability proportional to
/// `1 / (k + 1)^zipf`: a few large classes and a tail of small ones.
pub fn make_zipf_data(rows: usize, d: usize, classes: usize, zipf: f64, seed: u64) -> Data {
    make_data_with(rows, d, classes, seed, Some(zipf))
}

fn make_data_with(rows: usize, d: usize, classes: usize, seed: u64, zipf: Option<f64>) -> Data {
    let mut g = Gen::new(seed);
    let dirs: Vec<Vec<f64>> = (0..classes)
        .map(|_| (0..d).map(|_| g.sym()).collect())
        .collect();
    // Cumulative class weights of the Zipf draw.
    let cumulative: Vec<f64> = (0..classes)
        .scan(0.0, |acc, k| {
            *acc += 1.0 / ((k + 1) as f64).powf(zipf.unwrap_or(0.0));
            Some(*acc)
        })
        .collect();
    let mut u = Vec::new();
    let mut v = Vec::new();
    for _ in 0..rows {
        let k = match zipf {
            None => (g.next() % classes as u64) as usize,
            Some(_) => {
                let x = (g.next() % 1_000_000) as f64 / 1e6 * cumulative[classes - 1];
                cumulative
                    .iter()
                    .position(|&c| x < c)
                    .unwrap_or(classes - 1)
            }
        };
        let scale = 0.5 + (g.next() % 100) as f64 / 50.0;
        let z: Vec<f64> = dirs[k].iter().map(|x| x + 0.9 * g.sym()).collect();
        u.push(
            z.iter()
                .map(|x| ((x + 0.7 * g.sym()) * scale) as f32)
                .collect(),
        );
        // Some captions belong to another class (mismatches).
        let zt: Vec<f64> = if g.next().is_multiple_of(10) {
            let o = (g.next() % classes as u64) as usize;
            dirs[o].iter().map(|x| x + 0.9 * g.sym()).collect()
        } else {
            z
        };
        v.push(zt.iter().map(|x| (x + 0.7 * g.sym()) as f32).collect());
    }
    let mut prompts = Vec::new();
    // Non-contiguous class ids in shuffled row order, two templates each.
    for k in (0..classes).rev() {
        for _ in 0..2 {
            prompts.push((
                (k * 3 + 1) as i32,
                dirs[k].iter().map(|x| (x + 0.3 * g.sym()) as f32).collect(),
            ));
        }
    }
    let ids = (0..rows).map(|i| format!("pair-{i:06}")).collect();
    Data { ids, u, v, prompts }
}

pub fn emb_type(d: usize, f16_out: bool) -> DataType {
    let item = if f16_out {
        DataType::Float16
    } else {
        DataType::Float32
    };
    DataType::FixedSizeList(Arc::new(Field::new("item", item, true)), d as i32)
}

pub fn emb_array(rows: &[Vec<f32>], d: usize, f16_out: bool) -> ArrayRef {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let (item, child): (DataType, ArrayRef) = if f16_out {
        (
            DataType::Float16,
            Arc::new(Float16Array::from(
                flat.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>(),
            )),
        )
    } else {
        (DataType::Float32, Arc::new(Float32Array::from(flat)))
    };
    Arc::new(FixedSizeListArray::new(
        Arc::new(Field::new("item", item, true)),
        d as i32,
        child,
        None,
    ))
}

pub fn write_batch(path: &Path, batch: &RecordBatch) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(100))
        .build();
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

/// Writes `data` as `shards` Parquet files under `dir/data` and the prompts
/// as `dir/prompts.parquet`; returns (data folder, prompts file).
pub fn write_data(dir: &Path, data: &Data, shards: usize, f16_out: bool) -> (PathBuf, PathBuf) {
    let d = data.u[0].len();
    let n = data.ids.len();
    let per = n.div_ceil(shards);
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("image_embedding", emb_type(d, f16_out), true),
        Field::new("text_embedding", emb_type(d, f16_out), true),
    ]));
    for s in 0..shards {
        let r = (s * per).min(n)..((s + 1) * per).min(n);
        let mut ids = StringBuilder::new();
        for i in r.clone() {
            ids.append_value(&data.ids[i]);
        }
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(ids.finish()),
                emb_array(&data.u[r.clone()], d, f16_out),
                emb_array(&data.v[r.clone()], d, f16_out),
            ],
        )
        .unwrap();
        // Nested, Hive-style folders: the canonical order is by relative path.
        write_batch(&dir.join(format!("data/part={s:02}/shard.parquet")), &batch);
    }
    let prompts = dir.join("prompts.parquet");
    write_prompts(&prompts, &data.prompts);
    (dir.join("data"), prompts)
}

pub fn write_prompts(path: &Path, prompts: &[(i32, Vec<f32>)]) {
    let d = prompts[0].1.len();
    let schema = Arc::new(Schema::new(vec![
        Field::new("class_id", DataType::Int32, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("text_embedding", emb_type(d, false), true),
    ]));
    let mut ids = Int32Builder::new();
    let mut names = StringBuilder::new();
    for (k, _) in prompts {
        ids.append_value(*k);
        names.append_value(format!("class {k}"));
    }
    let embs: Vec<Vec<f32>> = prompts.iter().map(|p| p.1.clone()).collect();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(ids.finish()),
            Arc::new(names.finish()),
            emb_array(&embs, d, false),
        ],
    )
    .unwrap();
    write_batch(path, &batch);
}

/// One row of `subset.csv`.
#[derive(Debug, Clone)]
pub struct CsvRow {
    pub id: String,
    pub rank: u64,
    pub row: u64,
    pub class: i64,
    pub score: f64,
    pub terms: Vec<f64>,
}

pub fn read_subset_csv(path: &Path) -> Vec<CsvRow> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "id,rank,row,class,score,easy,cross,label,between"
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            CsvRow {
                id: f[0].to_string(),
                rank: f[1].parse().unwrap(),
                row: f[2].parse().unwrap(),
                class: f[3].parse().unwrap(),
                score: f[4].parse().unwrap(),
                terms: f[5..].iter().map(|x| x.parse().unwrap()).collect(),
            }
        })
        .collect()
}

/// Runs `clipcov synth <flags> --out <out>` (flags as one space-separated
/// string) and returns the data folder and the prompts file.
pub fn synth_at(out: &Path, flags: &str) -> (PathBuf, PathBuf) {
    let mut args = vec!["synth"];
    args.extend(flags.split_whitespace());
    args.extend(["--out", s(out)]);
    clipcov_ok(&args);
    (out.join("data"), out.join("prompts.parquet"))
}

/// The source tree the tests run in. Cargo sets `CARGO_MANIFEST_DIR` when
/// it runs a test, which stays right when one build directory serves
/// several clones; the compile-time value is the fallback.
pub fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
