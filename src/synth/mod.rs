//! `synth`: a synthetic image-caption dataset from a latent-class model.
//!
//! Classes are random directions in a shared space with Zipf-like sizes.
//! A clean pair draws a latent point near its class direction; its image is
//! the point pushed one way along a fixed "modality gap" vector plus noise,
//! its caption the other way plus noise (as real CLIP embeddings sit in two
//! cones). Corruptions at set rates: mismatched captions (from another
//! class), near-duplicates (an earlier row with tiny noise), and junk pairs
//! (unrelated noise). Also writes the class prompts (two templates a class)
//! and a labelled evaluation set of clean images.
//!
//! Every row is a pure function of `(seed, row)`, so the data streams to
//! disk shard by shard, in parallel, identical for a seed on any machine.

use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{Int32Builder, StringBuilder};
use arrow_array::{ArrayRef, FixedSizeListArray, Float16Array, Float32Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use half::f16;
use parquet::file::properties::WriterProperties;
use rayon::prelude::*;

use crate::error::{Error, IoContext, Result};
use crate::formats::parquet_write::write_batches_with;
use crate::io::atomic::atomic_write;
use crate::rng::Rng;
use class_local::LocalModel;
use options::{draw_class, noise, unit, Pair};
pub use options::{LocalOptions, Placement, SynthOptions, KINDS};

mod class_local;
mod options;

/// Rows per Parquet row group (and per parallel generation batch).
const GROUP_ROWS: u64 = 16_384;
const STREAM_CLASSES: u64 = 0x0C1A_55E5;
const STREAM_GAP: u64 = 0x6A9;
const STREAM_PROMPTS: u64 = 0x9807;
const STREAM_EVAL: u64 = 0xE7A1;

struct Model {
    opts: SynthOptions,
    directions: Vec<Vec<f64>>,
    gap: Vec<f64>,
    /// Cumulative class probabilities.
    cdf: Vec<f64>,
}

impl Model {
    fn new(opts: &SynthOptions) -> Self {
        let d = opts.dim;
        let directions = (0..opts.classes)
            .map(|k| {
                let mut r = Rng::for_index(opts.seed ^ STREAM_CLASSES, k as u64);
                let mut v = noise(&mut r, d, 1.0);
                unit(&mut v);
                v
            })
            .collect();
        let mut r = Rng::for_index(opts.seed ^ STREAM_GAP, 0);
        let mut gap = noise(&mut r, d, 1.0);
        unit(&mut gap);
        let weights: Vec<f64> = (0..opts.classes)
            .map(|k| 1.0 / ((k + 1) as f64).powf(opts.zipf))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cdf = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        Model {
            opts: opts.clone(),
            directions,
            gap,
            cdf,
        }
    }

    fn class_of(&self, rng: &mut Rng) -> usize {
        draw_class(&self.cdf, rng)
    }

    /// The image and caption of a clean pair of class `k`.
    fn clean(&self, rng: &mut Rng, k: usize) -> (Vec<f64>, Vec<f64>) {
        let d = self.opts.dim;
        let mut z: Vec<f64> = self.directions[k]
            .iter()
            .zip(noise(rng, d, 0.8))
            .map(|(a, e)| a + e)
            .collect();
        unit(&mut z);
        let side = |sign: f64, rng: &mut Rng| -> Vec<f64> {
            let mut x: Vec<f64> = z
                .iter()
                .zip(&self.gap)
                .zip(noise(rng, d, self.opts.noise))
                .map(|((z, g), e)| z + sign * 0.35 * g + e)
                .collect();
            unit(&mut x);
            x
        };
        let u = side(1.0, rng);
        let v = side(-1.0, rng);
        (u, v)
    }

    fn base(&self, row: u64) -> (Rng, usize, Vec<f64>, Vec<f64>) {
        let mut rng = Rng::for_index(self.opts.seed, row);
        let k = self.class_of(&mut rng);
        let (u, v) = self.clean(&mut rng, k);
        (rng, k, u, v)
    }

    fn pair(&self, row: u64) -> Pair {
        let (mut rng, k, u, v) = self.base(row);
        let o = &self.opts;
        let x = rng.uniform();
        let d = o.dim;
        if x < o.mismatch_rate {
            let other = (k + 1 + rng.below((o.classes.max(2) - 1) as u64) as usize) % o.classes;
            let (_, v2) = self.clean(&mut rng, other);
            Pair {
                u,
                v: v2,
                class: k as i32,
                kind: 1,
                caption: None,
            }
        } else if x < o.mismatch_rate + o.duplicate_rate && row > 0 {
            let src = rng.below(row);
            let (_, ks, us, vs) = self.base(src);
            let jitter = |a: Vec<f64>, rng: &mut Rng| {
                let mut y: Vec<f64> = a
                    .iter()
                    .zip(noise(rng, d, 0.02))
                    .map(|(a, e)| a + e)
                    .collect();
                unit(&mut y);
                y
            };
            let (u2, v2) = (jitter(us, &mut rng), jitter(vs, &mut rng));
            Pair {
                u: u2,
                v: v2,
                class: ks as i32,
                kind: 2,
                caption: None,
            }
        } else if x < o.mismatch_rate + o.duplicate_rate + o.junk_rate {
            let mut a = noise(&mut rng, d, 1.0);
            let mut b = noise(&mut rng, d, 1.0);
            unit(&mut a);
            unit(&mut b);
            Pair {
                u: a,
                v: b,
                class: k as i32,
                kind: 3,
                caption: None,
            }
        } else {
            Pair {
                u,
                v,
                class: k as i32,
                kind: 0,
                caption: None,
            }
        }
    }
}

/// A valid 1x1 grey PNG: the placeholder image of `--images`.
const PLACEHOLDER_PNG: [u8; 67] = [
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x00, 0x00, 0x00, 0x3a, 0x7e, 0x9b,
    0x55, 0x00, 0x00, 0x00, 0x0a, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x68, 0x00, 0x00, 0x00,
    0x82, 0x00, 0x81, 0x77, 0xcd, 0x72, 0xb6, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae,
    0x42, 0x60, 0x82,
];

/// The `image_path` of a row (relative to the output folder).
fn image_path_of(seed: u64, row: u64) -> String {
    format!("images/{}.png", id_of(seed, row))
}

/// `--images`: writes the placeholder image of every row.
fn write_images(opts: &SynthOptions, out: &Path) -> Result<()> {
    let dir = out.join("images");
    std::fs::create_dir_all(&dir).at_path(&dir)?;
    (0..opts.rows).into_par_iter().try_for_each(|r| {
        let p = out.join(image_path_of(opts.seed, r));
        std::fs::write(&p, PLACEHOLDER_PNG).at_path(&p)
    })
}

/// The data model `synth` draws from.
enum Generator {
    Shared(Model),
    ClassLocal(LocalModel),
}

impl Generator {
    fn pair(&self, row: u64) -> Pair {
        match self {
            Generator::Shared(m) => m.pair(row),
            Generator::ClassLocal(m) => m.pair(row),
        }
    }

    /// Prompt `t` of class `k`, drawn from `r`.
    fn prompt(&self, r: &mut Rng, k: usize) -> Vec<f64> {
        match self {
            Generator::Shared(model) => {
                let d = model.opts.dim;
                let mut c: Vec<f64> = model.directions[k]
                    .iter()
                    .zip(&model.gap)
                    .zip(noise(r, d, 0.3))
                    .map(|((a, g), e)| a - 0.35 * g + e)
                    .collect();
                unit(&mut c);
                c
            }
            Generator::ClassLocal(m) => m.prompt(r, k),
        }
    }

    /// Eval image `i` and its class, drawn from `r`.
    fn eval_image(&self, r: &mut Rng, i: u64) -> (usize, Vec<f64>) {
        match self {
            Generator::Shared(model) => {
                let k = model.class_of(r);
                (k, model.clean(r, k).0)
            }
            Generator::ClassLocal(m) => m.eval_image(r, i),
        }
    }
}

fn id_of(seed: u64, row: u64) -> String {
    let mut r = Rng::for_index(seed ^ 0x1D5, row);
    format!("{:016x}{:016x}", r.next_u64(), r.next_u64())
}

fn embedding_array(values: Vec<f64>, d: usize, f16_out: bool) -> ArrayRef {
    let (item, child): (DataType, ArrayRef) = if f16_out {
        (
            DataType::Float16,
            Arc::new(Float16Array::from(
                values.iter().map(|&x| f16::from_f64(x)).collect::<Vec<_>>(),
            )),
        )
    } else {
        (
            DataType::Float32,
            Arc::new(Float32Array::from(
                values.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            )),
        )
    };
    let field = Arc::new(Field::new("item", item, false));
    Arc::new(FixedSizeListArray::new(field, d as i32, child, None))
}

fn emb_type(d: usize, f16_out: bool) -> DataType {
    let item = if f16_out {
        DataType::Float16
    } else {
        DataType::Float32
    };
    DataType::FixedSizeList(Arc::new(Field::new("item", item, false)), d as i32)
}

fn write_batches(
    path: &Path,
    schema: Arc<Schema>,
    batches: impl Iterator<Item = RecordBatch>,
) -> Result<()> {
    // Uncompressed shards with small row groups, like an exporter's.
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(GROUP_ROWS as usize))
        .build();
    write_batches_with(path, schema, props, batches.map(Ok))
}

/// Summary of what `synth` wrote.
#[derive(Debug)]
pub struct SynthSummary {
    pub shards: Vec<std::path::PathBuf>,
    pub prompts: std::path::PathBuf,
    pub eval: std::path::PathBuf,
    /// `classes.csv` (class-local model): class, superclass, size, captions.
    pub class_table: Option<std::path::PathBuf>,
}

/// Writes `out/data/part-XXXXX.parquet`, `out/prompts.parquet`,
/// `out/eval.parquet` and, for the class-local model, `out/classes.csv`.
pub fn synth(opts: &SynthOptions, out: &Path) -> Result<SynthSummary> {
    if opts.rows == 0 || opts.classes == 0 || opts.dim == 0 || opts.shards == 0 {
        return Err(Error::Usage(
            "--rows, --classes, --dim and --shards must be positive".into(),
        ));
    }
    let data = out.join("data");
    std::fs::create_dir_all(&data).at_path(&data)?;
    let model = match &opts.class_local {
        None => Generator::Shared(Model::new(opts)),
        Some(local) => Generator::ClassLocal(LocalModel::new(opts, local)),
    };
    let d = opts.dim;
    // Rows drawn per true class, for the class table.
    let mut class_rows = vec![0u64; opts.classes];
    let mut fields = vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("image_embedding", emb_type(d, opts.f16), false),
        Field::new("text_embedding", emb_type(d, opts.f16), false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("true_class", DataType::Int32, false),
        Field::new("caption", DataType::Utf8, false),
    ];
    if opts.images {
        write_images(opts, out)?;
        fields.push(Field::new("image_path", DataType::Utf8, false));
    }
    let schema = Arc::new(Schema::new(fields));
    let per_shard = opts.rows.div_ceil(opts.shards as u64);
    let mut shards = Vec::new();
    for s in 0..opts.shards as u64 {
        let start = (s * per_shard).min(opts.rows);
        let end = ((s + 1) * per_shard).min(opts.rows);
        let path = data.join(format!("part-{s:05}.parquet"));
        let groups = (start..end).step_by(GROUP_ROWS as usize).map(|g0| {
            let g1 = (g0 + GROUP_ROWS).min(end);
            let pairs: Vec<Pair> = (g0..g1).into_par_iter().map(|r| model.pair(r)).collect();
            let mut ids = StringBuilder::new();
            let mut kinds = StringBuilder::new();
            let mut classes = Int32Builder::new();
            let mut captions = StringBuilder::new();
            let (mut us, mut vs) = (
                Vec::with_capacity(pairs.len() * d),
                Vec::with_capacity(pairs.len() * d),
            );
            for (i, p) in pairs.into_iter().enumerate() {
                ids.append_value(id_of(opts.seed, g0 + i as u64));
                kinds.append_value(KINDS[p.kind]);
                classes.append_value(p.class);
                if p.class >= 0 {
                    class_rows[p.class as usize] += 1;
                }
                match p.caption {
                    Some(c) => captions.append_value(c),
                    None => captions.append_value(format!(
                        "a photo of a class_{} ({})",
                        p.class, KINDS[p.kind]
                    )),
                }
                us.extend(p.u);
                vs.extend(p.v);
            }
            let mut columns: Vec<ArrayRef> = vec![
                Arc::new(ids.finish()),
                embedding_array(us, d, opts.f16),
                embedding_array(vs, d, opts.f16),
                Arc::new(kinds.finish()),
                Arc::new(classes.finish()),
                Arc::new(captions.finish()),
            ];
            if opts.images {
                let paths: Vec<String> = (g0..g1).map(|r| image_path_of(opts.seed, r)).collect();
                columns.push(Arc::new(arrow_array::StringArray::from(paths)));
            }
            RecordBatch::try_new(schema.clone(), columns).expect("synth batch matches its schema")
        });
        // Draw the next row group while this one is encoded and written:
        // with f16 columns the encoding takes as long as the drawing.
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            scope.spawn(move || {
                for batch in groups {
                    if tx.send(batch).is_err() {
                        break; // the write failed
                    }
                }
            });
            write_batches(&path, schema.clone(), rx.into_iter())
        })?;
        shards.push(path);
    }

    // Class prompts: two templates a class, near the caption side of the class.
    let prompt_schema = Arc::new(Schema::new(vec![
        Field::new("class_id", DataType::Int32, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("text_embedding", emb_type(d, false), false),
    ]));
    let mut ids = Int32Builder::new();
    let mut names = StringBuilder::new();
    let mut embs = Vec::new();
    for k in 0..opts.classes {
        for t in 0..2u64 {
            let mut r = Rng::for_index(opts.seed ^ STREAM_PROMPTS, (k as u64) * 2 + t);
            let c = model.prompt(&mut r, k);
            ids.append_value(k as i32);
            names.append_value(format!("class_{k}"));
            embs.extend(c);
        }
    }
    let prompts = out.join("prompts.parquet");
    let batch = RecordBatch::try_new(
        prompt_schema.clone(),
        vec![
            Arc::new(ids.finish()),
            Arc::new(names.finish()),
            embedding_array(embs, d, false),
        ],
    )
    .expect("prompt batch matches its schema");
    write_batches(&prompts, prompt_schema, std::iter::once(batch))?;

    // Evaluation set: clean images with their class.
    let eval_schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("image_embedding", emb_type(d, false), false),
        Field::new("label", DataType::Int32, false),
    ]));
    let eval_pairs: Vec<(usize, Vec<f64>)> = (0..opts.eval_rows)
        .into_par_iter()
        .map(|i| {
            let mut r = Rng::for_index(opts.seed ^ STREAM_EVAL, i);
            model.eval_image(&mut r, i)
        })
        .collect();
    let mut ids = StringBuilder::new();
    let mut labels = Int32Builder::new();
    let mut embs = Vec::with_capacity(eval_pairs.len() * d);
    for (i, (k, u)) in eval_pairs.into_iter().enumerate() {
        ids.append_value(format!("eval-{i}"));
        labels.append_value(k as i32);
        embs.extend(u);
    }
    let eval = out.join("eval.parquet");
    let batch = RecordBatch::try_new(
        eval_schema.clone(),
        vec![
            Arc::new(ids.finish()),
            embedding_array(embs, d, false),
            Arc::new(labels.finish()),
        ],
    )
    .expect("eval batch matches its schema");
    write_batches(&eval, eval_schema, std::iter::once(batch))?;
    let class_table = match &model {
        Generator::Shared(_) => None,
        Generator::ClassLocal(m) => {
            let path = out.join("classes.csv");
            let text = m.class_table(&class_rows);
            atomic_write(&path, |w| {
                use std::io::Write;
                w.write_all(text.as_bytes())
                    .map_err(|e| Error::io(&path, e))
            })?;
            Some(path)
        }
    };
    Ok(SynthSummary {
        shards,
        prompts,
        eval,
        class_table,
    })
}
