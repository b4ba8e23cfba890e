//! `clipcov._clipcov`: the Python bindings. Every function runs the same
//! Rust code as the command line; Arrow data crosses through the Arrow C
//! Data Interface (pyarrow <-> arrow-rs) without a copy of the inputs.
//!
//! All uses of the main crate's modules are in this file, in the `use`
//! block below, so a move of a module changes one line here.

// The functions return Python tuples, spelled out as Rust tuples.
#![allow(clippy::type_complexity)]

use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type, UInt64Type};
use arrow_array::{
    make_array, Array, ArrayRef, FixedSizeListArray, Float64Array, RecordBatch, UInt32Array,
    UInt64Array,
};
use arrow_pyarrow::{PyArrowType, ToPyArrow};
use arrow_schema::{ArrowError, DataType, Field, Schema};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use clipcov::cli::args::select_config as parse_select_flags;
use clipcov::error::Error;
use clipcov::formats::dataset::{self as layout, Columns, Layout, ShardStarts};
use clipcov::formats::metadata::Keep;
use clipcov::formats::prompts::read_prompts as read_prompts_file;
use clipcov::formats::shards::shard_rows;
use clipcov::ids::IdRef;
use clipcov::jobs::config::SelectConfig;
use clipcov::jobs::pipeline;
use clipcov::memory;
use clipcov::output::emit::{write_subset_files, SubsetExtras};
use clipcov::output::subset::SubsetRow;
use clipcov::progress::{self, LogFormat};
use clipcov::stages::classes::ClassSource;
use clipcov::stages::ingest::{
    duplicate_id_error, prepare_batch, BadRowPolicy, Classify, DuplicatePolicy, IngestOptions,
};
use clipcov::stages::score::{
    self, Centres, ClassSums, CrossSample, ScoreOptions, Tau, TileBlock, TERMS,
};
use clipcov::stages::select::{
    self as greedy, Budget, ClassSequence, Merged, RefreshMode, SelectOptions, Weights,
};
use clipcov::store::SliceRows;

type R<T> = clipcov::Result<T>;

create_exception!(
    _clipcov,
    ClipcovError,
    PyException,
    "A clipcov error: the command line's one-line message; `exit_code` is its exit status."
);

/// The Python exception of a clipcov error, with the command line's
/// message and its exit status in `exit_code`.
fn py_err(py: Python<'_>, e: &Error) -> PyErr {
    let err = ClipcovError::new_err(e.to_string());
    let _ = err.value(py).setattr("exit_code", e.exit_code());
    err
}

/// Runs `f` without the GIL; a panic becomes an internal error, so no
/// panic crosses into Python.
fn run<T: Send>(py: Python<'_>, f: impl FnOnce() -> R<T> + Send) -> PyResult<T> {
    let r = py.detach(|| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(Error::Internal(format!("panic: {what}")))
        })
    });
    r.map_err(|e| py_err(py, &e))
}

fn usage(msg: impl Into<String>) -> Error {
    Error::Usage(msg.into())
}

fn arrow_err(e: ArrowError) -> Error {
    Error::Internal(e.to_string())
}

/// A `FixedSizeList<float32, d>` of `n` rows: its values (borrowed) and `d`.
fn rows_f32<'a>(a: &'a ArrayRef, what: &str) -> R<(&'a [f32], usize)> {
    let bad = || {
        usage(format!(
            "{what}: expected a FixedSizeList<float32> without nulls, got {}",
            a.data_type()
        ))
    };
    let l = a.as_fixed_size_list_opt().ok_or_else(bad)?;
    if l.null_count() > 0 || l.values().data_type() != &DataType::Float32 {
        return Err(bad());
    }
    let d = l.value_length() as usize;
    let values = l.values().as_primitive::<Float32Type>().values();
    let start = if l.is_empty() {
        0
    } else {
        l.value_offset_at(0)
    };
    Ok((&values[start..start + l.len() * d], d))
}

fn f64_values<'a>(a: &'a ArrayRef, what: &str) -> R<&'a [f64]> {
    a.as_primitive_opt::<Float64Type>()
        .filter(|p| p.null_count() == 0)
        .map(|p| &p.values()[..])
        .ok_or_else(|| usage(format!("{what}: expected float64 without nulls")))
}

fn u64_values<'a>(a: &'a ArrayRef, what: &str) -> R<&'a [u64]> {
    a.as_primitive_opt::<UInt64Type>()
        .filter(|p| p.null_count() == 0)
        .map(|p| &p.values()[..])
        .ok_or_else(|| usage(format!("{what}: expected uint64 without nulls")))
}

fn fsl<T: arrow_array::ArrowPrimitiveType>(
    values: Vec<T::Native>,
    d: usize,
    dt: DataType,
) -> R<ArrayRef> {
    let values = arrow_array::PrimitiveArray::<T>::from_iter_values(values);
    let field = Arc::new(Field::new("item", dt, false));
    Ok(Arc::new(
        FixedSizeListArray::try_new(field, d as i32, Arc::new(values), None).map_err(arrow_err)?,
    ))
}

fn array(a: PyArrowType<arrow_data::ArrayData>) -> ArrayRef {
    make_array(a.0)
}

fn to_py(py: Python<'_>, a: ArrayRef) -> PyResult<Bound<'_, PyAny>> {
    a.to_data().to_pyarrow(py)
}

fn parse_weights(w: &str) -> R<Weights> {
    w.parse()
}

fn parse_tau(t: &str) -> R<Tau> {
    t.parse()
}

// ---------------------------------------------------------------- the job

/// `clipcov select` with the flags `args` (without the program name):
/// the same parsing, validation and job as the command line. Returns the
/// run's manifest as JSON text.
#[pyfunction]
#[pyo3(signature = (args, quiet = true, log_format = "text"))]
fn select(py: Python<'_>, args: Vec<String>, quiet: bool, log_format: &str) -> PyResult<String> {
    let format = match log_format {
        "json" => LogFormat::Json,
        _ => LogFormat::Text,
    };
    progress::init(format, quiet);
    run(py, move || {
        let cfg = parse_select_flags(&args)?;
        let summary = pipeline::run_select(&cfg)?;
        serde_json::to_string(&summary.manifest).map_err(|e| Error::Internal(e.to_string()))
    })
}

/// `select`'s flags validated as the command line validates them, as JSON:
/// what a distributed run needs to run the same job.
#[pyfunction]
fn select_config(py: Python<'_>, args: Vec<String>) -> PyResult<String> {
    run(py, move || {
        let cfg: SelectConfig = parse_select_flags(&args)?;
        let prompts = match &cfg.classes {
            ClassSource::Prompts(p) => p.display().to_string(),
            _ => {
                return Err(usage(
                    "the distributed run needs --prompts (k-means classes are not distributed)",
                ))
            }
        };
        let budget = match cfg.budget {
            Budget::Fraction(f) => serde_json::json!({ "fraction": f }),
            Budget::Count(c) => serde_json::json!({ "count": c }),
        };
        let cross = match cfg.cross {
            CrossSample::Exact => serde_json::json!("exact"),
            CrossSample::Fixed(m) => serde_json::json!(m),
            CrossSample::Auto { error } => serde_json::json!({ "auto": error }),
        };
        let v = serde_json::json!({
            "data": cfg.data,
            "prompts": prompts,
            "out": cfg.out,
            "budget": budget,
            "tau": cfg.tau.to_string(),
            "refresh": cfg.refresh.to_string(),
            "refresh_mode": cfg.refresh_mode,
            "cross_sample": cross,
            "weights": [cfg.weights.cross, cfg.weights.easy, cfg.weights.label, cfg.weights.between],
            "memory_limit_bytes": cfg.memory_limit_bytes,
            "threads": cfg.threads,
            "tile_rows": cfg.tile_rows,
            "columns": cfg.columns,
            "on_bad_row": cfg.on_bad_row,
            "on_duplicate": cfg.on_duplicate,
            "seed": cfg.seed,
            "assign_text": cfg.assign_text,
            "layout": cfg.layout,
            "keep_columns": cfg.keep_columns,
            "where": cfg.filter,
            "train_csv": cfg.train_csv.is_some(),
            "publish_to": cfg.publish_to,
        });
        Ok(v.to_string())
    })
}

/// The Parquet shards of `data` in canonical row order, `(path, relative
/// path, rows)` each, and the columns `(id, image, text)` with the layout's
/// defaults filled in. Only the canonical layout (Parquet shards holding
/// the embeddings).
#[pyfunction]
#[pyo3(signature = (data, id_column = "id", image_column = "image_embedding", text_column = "text_embedding"))]
fn discover(
    py: Python<'_>,
    data: PathBuf,
    id_column: &str,
    image_column: &str,
    text_column: &str,
) -> PyResult<(Vec<(String, String, u64)>, (String, String, String))> {
    let cols = Columns {
        id: id_column.into(),
        image: image_column.into(),
        text: text_column.into(),
    };
    run(py, move || {
        let found = layout::detect(&data)?;
        if found != Layout::Canonical {
            return Err(usage(format!(
                "{}: the {} layout is read by `clipcov select`; the distributed run reads Parquet shards holding the embeddings (the canonical layout)",
                data.display(),
                found.name()
            )));
        }
        let (files, cols) =
            layout::discover_layout(&data, Layout::Canonical, &cols, Default::default())?;
        let files = files
            .iter()
            .map(|f| {
                let rows = shard_rows(f, &cols)?;
                Ok((f.path.display().to_string(), f.relative.clone(), rows))
            })
            .collect::<R<Vec<_>>>()?;
        Ok((files, (cols.id, cols.image, cols.text)))
    })
}

/// The class prompts file: `(c_k as FixedSizeList<float32>[K, d], class
/// ids, names)`; templates averaged and renormalised as the CLI does.
#[pyfunction]
fn read_prompts(
    py: Python<'_>,
    path: PathBuf,
) -> PyResult<(Bound<'_, PyAny>, Vec<i64>, Vec<String>)> {
    let (emb, ids, names) = run(py, move || {
        let p = read_prompts_file(&path)?;
        Ok((
            fsl::<Float32Type>(p.embeddings, p.d, DataType::Float32)?,
            p.class_ids,
            p.names,
        ))
    })?;
    Ok((to_py(py, emb)?, ids, names))
}

/// The tile side the CLI plans for `rows` rows of dimension `d` under the
/// memory limit with `threads` threads (`memory::plan`).
#[pyfunction]
fn plan_tile_rows(
    py: Python<'_>,
    memory_limit_bytes: u64,
    rows: u64,
    d: usize,
    threads: usize,
) -> PyResult<usize> {
    run(py, move || {
        Ok(memory::plan(memory_limit_bytes, rows, d, threads)?.tile_rows)
    })
}

/// The budget `B` for `rows` rows (`fraction` or `count`), checked with the
/// CLI's messages; returns `(B, warning or None)`.
#[pyfunction]
#[pyo3(signature = (rows, fraction = None, count = None))]
fn budget_rows(
    py: Python<'_>,
    rows: u64,
    fraction: Option<f64>,
    count: Option<u64>,
) -> PyResult<(u64, Option<String>)> {
    run(py, move || {
        let b = match (fraction, count) {
            (Some(f), None) => Budget::Fraction(f),
            (None, Some(c)) => Budget::Count(c),
            _ => return Err(usage("give fraction or count")),
        };
        b.checked_rows(rows)
    })
}

/// The refresh period `R` of `refresh` ("auto" or a number) for a budget
/// over `nonempty` classes.
#[pyfunction]
fn refresh_period(
    py: Python<'_>,
    refresh: String,
    budget: usize,
    nonempty: usize,
) -> PyResult<usize> {
    run(py, move || {
        let r: greedy::Refresh = refresh.parse().map_err(Error::Usage)?;
        Ok(r.period(budget, nonempty))
    })
}

// ---------------------------------------------------------------- stages

/// Normalise + latent class of one batch, by ingest's own code: returns a
/// RecordBatch `index` (uint64, the row in `batch`), `class` (uint32),
/// `image_embedding`, `text_embedding` (FixedSizeList<float32>, unit rows as
/// the staged store holds them) and the list of skipped `(index, reason)`.
#[pyfunction]
#[pyo3(signature = (batch, classes, path = "<batch>".into(), first_row_in_file = 0, prompts_path = None, id_column = "id", image_column = "image_embedding", text_column = "text_embedding", assign_text = false, on_bad_row = "error"))]
#[allow(clippy::too_many_arguments)]
fn normalise<'py>(
    py: Python<'py>,
    batch: PyArrowType<RecordBatch>,
    classes: PyArrowType<arrow_data::ArrayData>,
    path: PathBuf,
    first_row_in_file: u64,
    prompts_path: Option<PathBuf>,
    id_column: &str,
    image_column: &str,
    text_column: &str,
    assign_text: bool,
    on_bad_row: &str,
) -> PyResult<(Bound<'py, PyAny>, Vec<(u64, String)>)> {
    let batch = batch.0;
    let classes = array(classes);
    let columns = Columns {
        id: id_column.into(),
        image: image_column.into(),
        text: text_column.into(),
    };
    let on_bad_row = match on_bad_row {
        "skip" => BadRowPolicy::Skip,
        _ => BadRowPolicy::Error,
    };
    let (out, bad) = run(py, move || {
        let (c, d) = rows_f32(&classes, "classes")?;
        let opts = IngestOptions {
            columns,
            on_bad_row,
            on_duplicate: DuplicatePolicy::Error,
            batch_rows: batch.num_rows().max(1),
            expected_d: Some((d, prompts_path.unwrap_or_else(|| "<classes>".into()))),
            classify: Some(Classify {
                embeddings: c.to_vec(),
                classes: c.len() / d.max(1),
                use_text: assign_text,
            }),
            chunk_rows: 1,
            filter: None,
        };
        let p = prepare_batch(&path, &batch, first_row_in_file, &opts)?;
        let d = p.d;
        let schema = Arc::new(Schema::new(vec![
            Field::new("index", DataType::UInt64, false),
            Field::new("class", DataType::UInt32, false),
            Field::new(
                "image_embedding",
                DataType::FixedSizeList(
                    Arc::new(Field::new("item", DataType::Float32, false)),
                    d as i32,
                ),
                false,
            ),
            Field::new(
                "text_embedding",
                DataType::FixedSizeList(
                    Arc::new(Field::new("item", DataType::Float32, false)),
                    d as i32,
                ),
                false,
            ),
        ]));
        let cols: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from_iter_values(
                p.keep.iter().map(|&i| i as u64),
            )),
            Arc::new(UInt32Array::from(p.labels)),
            fsl::<Float32Type>(p.image, d, DataType::Float32)?,
            fsl::<Float32Type>(p.text, d, DataType::Float32)?,
        ];
        let out = RecordBatch::try_new(schema, cols).map_err(arrow_err)?;
        let bad = p.bad.into_iter().map(|(i, r)| (i as u64, r)).collect();
        Ok((out, bad))
    })?;
    Ok((out.to_pyarrow(py)?, bad))
}

/// `(sum u_j, sum v_j)` over one class's unit rows, in row order (the
/// CLI's `class_sum`): float64 arrays of length `d`. Sums of parts add up
/// to the whole (to rounding: the CLI's order is one pass in row order).
#[pyfunction]
fn class_sums<'py>(
    py: Python<'py>,
    image: PyArrowType<arrow_data::ArrayData>,
    text: PyArrowType<arrow_data::ArrayData>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let (image, text) = (array(image), array(text));
    let (su, sv) = run(py, move || {
        let (u, d) = rows_f32(&image, "image")?;
        let (v, _) = rows_f32(&text, "text")?;
        let (su, sv) = score::class_sum(&SliceRows {
            image: u,
            text: v,
            d,
        });
        Ok((
            Arc::new(Float64Array::from(su)) as ArrayRef,
            Arc::new(Float64Array::from(sv)) as ArrayRef,
        ))
    })?;
    Ok((to_py(py, su)?, to_py(py, sv)?))
}

fn score_options(
    tau: &str,
    tile_rows: usize,
    cross_sample: &str,
    seed: u64,
    memory_limit_bytes: u64,
) -> R<ScoreOptions> {
    Ok(ScoreOptions {
        tau: parse_tau(tau)?,
        tile_rows,
        cross: CrossSample::parse(cross_sample, 1e-3).map_err(Error::Usage)?,
        seed,
        memory_limit_bytes,
    })
}

/// The four terms of one class's rows (spec section 2), as the score stage
/// computes them: a RecordBatch `easy`, `cross`, `label`, `between`.
/// `class_embeddings` are all `c_k` (`[K, d]`), `image_sums` /
/// `text_sums` every class's sums (`[K, d]` float64) and `sizes` every
/// class's row count (the centres of `between`). `cross_sums`, when given,
/// is the class's `n_k * cross_i` from [`cross_reduce`] (tiles computed
/// elsewhere); otherwise it is computed here.
#[pyfunction]
#[pyo3(signature = (image, text, k, class_embeddings, image_sums, text_sums, sizes, tau = "0", tile_rows = 256, cross_sums = None, cross_sample = "exact", seed = 0, total_rows = 0, memory_limit_bytes = 4u64 << 30))]
#[allow(clippy::too_many_arguments)]
fn class_terms<'py>(
    py: Python<'py>,
    image: PyArrowType<arrow_data::ArrayData>,
    text: PyArrowType<arrow_data::ArrayData>,
    k: usize,
    class_embeddings: PyArrowType<arrow_data::ArrayData>,
    image_sums: PyArrowType<arrow_data::ArrayData>,
    text_sums: PyArrowType<arrow_data::ArrayData>,
    sizes: Vec<usize>,
    tau: &str,
    tile_rows: usize,
    cross_sums: Option<PyArrowType<arrow_data::ArrayData>>,
    cross_sample: &str,
    seed: u64,
    total_rows: usize,
    memory_limit_bytes: u64,
) -> PyResult<Bound<'py, PyAny>> {
    let (image, text, ce) = (array(image), array(text), array(class_embeddings));
    let (is, ts) = (array(image_sums), array(text_sums));
    let cross_sums = cross_sums.map(array);
    let opts = score_options(tau, tile_rows, cross_sample, seed, memory_limit_bytes)
        .map_err(|e| py_err(py, &e))?;
    let out = run(py, move || {
        let (u, d) = rows_f32(&image, "image")?;
        let (v, _) = rows_f32(&text, "text")?;
        let (c, _) = rows_f32(&ce, "class_embeddings")?;
        let rows = SliceRows {
            image: u,
            text: v,
            d,
        };
        let n = u.len() / d.max(1);
        let per_class = |a: &ArrayRef, what: &str| -> R<Vec<Vec<f64>>> {
            let l = a
                .as_fixed_size_list_opt()
                .ok_or_else(|| usage(format!("{what}: expected FixedSizeList<float64>")))?;
            let vals = f64_values(l.values(), what)?;
            Ok(vals.chunks_exact(d).map(|x| x.to_vec()).collect())
        };
        let sums = ClassSums {
            image: per_class(&is, "image_sums")?,
            text: per_class(&ts, "text_sums")?,
        };
        if sums.image.len() != sizes.len()
            || c.len() != sizes.len() * d
            || k >= sizes.len()
            || sizes[k] != n
        {
            return Err(usage("class_terms: the class embeddings, sums and sizes must cover the same K classes, with sizes[k] the class's rows"));
        }
        let centres = Centres::new(&sums, &sizes);
        let mut terms = vec![0.0f64; n * TERMS];
        score::class_row_terms(&rows, &c[k * d..(k + 1) * d], &centres, k, &mut terms);
        let cross = match &cross_sums {
            Some(a) => f64_values(a, "cross_sums")?.to_vec(),
            None => {
                let cap = score::sample_cap(opts.memory_limit_bytes, total_rows.max(n), d);
                score::class_cross(&rows, (&sums.image[k], &sums.text[k]), k, &opts, cap).0
            }
        };
        if cross.len() != n {
            return Err(usage("cross_sums: one value per row of the class"));
        }
        score::set_cross(&mut terms, &cross);
        terms_batch(&terms)
    })?;
    out.to_pyarrow(py)
}

fn terms_batch(terms: &[f64]) -> R<RecordBatch> {
    let names = ["easy", "cross", "label", "between"];
    let schema = Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(*n, DataType::Float64, false))
            .collect::<Vec<_>>(),
    ));
    let cols: Vec<ArrayRef> = (0..TERMS)
        .map(|t| {
            Arc::new(Float64Array::from_iter_values(
                terms.chunks_exact(TERMS).map(|r| r[t]),
            )) as ArrayRef
        })
        .collect();
    RecordBatch::try_new(schema, cols).map_err(arrow_err)
}

fn terms_of(batch: &RecordBatch) -> R<Vec<f64>> {
    let cols: Vec<&[f64]> = ["easy", "cross", "label", "between"]
        .iter()
        .map(|n| {
            let c = batch
                .column_by_name(n)
                .ok_or_else(|| usage(format!("terms: missing column '{n}'")))?;
            f64_values(c, n)
        })
        .collect::<R<_>>()?;
    let n = batch.num_rows();
    let mut out = Vec::with_capacity(n * TERMS);
    for i in 0..n {
        for c in &cols {
            out.push(c[i]);
        }
    }
    Ok(out)
}

/// How many tile blocks the tiled cross sum of a class of `n` rows has.
#[pyfunction]
fn cross_blocks(n: usize, tile_rows: usize) -> usize {
    score::cross_blocks(n, tile_rows)
}

/// Block `block` of a class's tiled cross sum (`tau` a number): `(stripes,
/// row sums of those stripes concatenated, column sums [n])`.
#[pyfunction]
fn cross_block<'py>(
    py: Python<'py>,
    image: PyArrowType<arrow_data::ArrayData>,
    text: PyArrowType<arrow_data::ArrayData>,
    tau: &str,
    tile_rows: usize,
    block: usize,
) -> PyResult<(Vec<usize>, Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let (image, text) = (array(image), array(text));
    let tau = tau.to_string();
    let (stripes, rows, cols) = run(py, move || {
        let (u, d) = rows_f32(&image, "image")?;
        let (v, _) = rows_f32(&text, "text")?;
        let t = match parse_tau(&tau)? {
            Tau::Threshold(t) => t as f32,
            Tau::None => return Err(usage("cross_block: tau none needs no tiles")),
        };
        let b = score::cross_block(
            &SliceRows {
                image: u,
                text: v,
                d,
            },
            t,
            tile_rows,
            block,
        );
        let stripes: Vec<usize> = b.rows.iter().map(|(s, _)| *s).collect();
        let rows: Vec<f64> = b.rows.into_iter().flat_map(|(_, r)| r).collect();
        Ok((
            stripes,
            Arc::new(Float64Array::from(rows)) as ArrayRef,
            Arc::new(Float64Array::from(b.cols)) as ArrayRef,
        ))
    })?;
    Ok((stripes, to_py(py, rows)?, to_py(py, cols)?))
}

/// A class's `n_k * cross_i` from all its blocks, reduced in block order
/// as the CLI does: float64 `[n]`.
#[pyfunction]
fn cross_reduce<'py>(
    py: Python<'py>,
    n: usize,
    tile_rows: usize,
    blocks: Vec<(
        Vec<usize>,
        PyArrowType<arrow_data::ArrayData>,
        PyArrowType<arrow_data::ArrayData>,
    )>,
) -> PyResult<Bound<'py, PyAny>> {
    let blocks: Vec<(Vec<usize>, ArrayRef, ArrayRef)> = blocks
        .into_iter()
        .map(|(s, r, c)| (s, array(r), array(c)))
        .collect();
    let out = run(py, move || {
        let tile = tile_rows.max(1);
        let mut tb = Vec::with_capacity(blocks.len());
        for (stripes, rows, cols) in &blocks {
            let rows = f64_values(rows, "rows")?;
            let mut at = 0;
            let mut parts = Vec::new();
            for &s in stripes {
                let len = ((s + 1) * tile).min(n).saturating_sub(s * tile);
                parts.push((s, rows[at..at + len].to_vec()));
                at += len;
            }
            tb.push(TileBlock {
                rows: parts,
                cols: f64_values(cols, "cols")?.to_vec(),
            });
        }
        Ok(Arc::new(Float64Array::from(score::cross_reduce(n, tile, &tb))) as ArrayRef)
    })?;
    to_py(py, out)
}

/// One class's greedy (spec section 3): its first `max_picks` picks as
/// `(local index uint64, score float64)`. `terms`: the class's terms
/// RecordBatch; `refresh`: the resolved period `R`.
#[pyfunction]
#[pyo3(signature = (image, text, terms, refresh, max_picks, tau = "0", weights = "1,2,0.5,1", tile_rows = 256, refresh_mode = "lazy"))]
#[allow(clippy::too_many_arguments)]
fn class_sequence<'py>(
    py: Python<'py>,
    image: PyArrowType<arrow_data::ArrayData>,
    text: PyArrowType<arrow_data::ArrayData>,
    terms: PyArrowType<RecordBatch>,
    refresh: usize,
    max_picks: usize,
    tau: &str,
    weights: &str,
    tile_rows: usize,
    refresh_mode: &str,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let (image, text, terms) = (array(image), array(text), terms.0);
    let (tau, weights, mode) = (
        tau.to_string(),
        weights.to_string(),
        refresh_mode.to_string(),
    );
    let (idx, scores) = run(py, move || {
        let (u, d) = rows_f32(&image, "image")?;
        let (v, _) = rows_f32(&text, "text")?;
        let t = terms_of(&terms)?;
        let opts = SelectOptions {
            weights: parse_weights(&weights)?,
            refresh,
            budget: max_picks,
            tau: parse_tau(&tau)?,
            tile_rows,
            mode: mode.parse::<RefreshMode>().map_err(Error::Usage)?,
        };
        let (seq, _) = greedy::class_sequence(
            &SliceRows {
                image: u,
                text: v,
                d,
            },
            &t,
            &opts,
            max_picks,
        );
        Ok((
            Arc::new(UInt64Array::from_iter_values(
                seq.iter().map(|p| p.1 as u64),
            )) as ArrayRef,
            Arc::new(Float64Array::from_iter_values(seq.iter().map(|p| p.0))) as ArrayRef,
        ))
    })?;
    Ok((to_py(py, idx)?, to_py(py, scores)?))
}

/// The heap merge of per-class pick sequences (largest score first, ties
/// to the smallest row index) up to `budget` picks. `sequences`: `(canonical
/// rows uint64, scores float64, complete)` each. Returns `("done", [(sequence,
/// position)...])` or `("more", sequence)` when an incomplete sequence ran out.
#[pyfunction]
fn merge(
    py: Python<'_>,
    sequences: Vec<(
        PyArrowType<arrow_data::ArrayData>,
        PyArrowType<arrow_data::ArrayData>,
        bool,
    )>,
    budget: usize,
) -> PyResult<(String, Vec<(usize, usize)>, usize)> {
    let seqs: Vec<(ArrayRef, ArrayRef, bool)> = sequences
        .into_iter()
        .map(|(r, s, c)| (array(r), array(s), c))
        .collect();
    run(py, move || {
        let views = seqs
            .iter()
            .enumerate()
            .map(|(i, (r, s, c))| {
                Ok(ClassSequence {
                    class: i,
                    rows: u64_values(r, "rows")?,
                    scores: f64_values(s, "scores")?,
                    complete: *c,
                })
            })
            .collect::<R<Vec<_>>>()?;
        Ok(match greedy::merge_sequences(&views, budget) {
            Merged::Done(v) => ("done".to_string(), v, 0),
            Merged::NeedMore(s) => ("more".to_string(), Vec::new(), s),
        })
    })
}

/// Writes `dir/subset.parquet` and `subset.csv` (and `datacomp_uids.npy`
/// when every id is a 32-hex uid) with the CLI's writers, each atomically;
/// returns the files as `(path relative to out, rows, bytes, sha256)`.
/// `subset.parquet` names the cross estimator (`clipcov.cross`) of `tau`,
/// `cross_sample` and `seed`, as the CLI's does.
#[pyfunction]
#[pyo3(signature = (out, dir, ids, rows, classes, scores, terms, tau = "0", cross_sample = "exact", seed = 0))]
#[allow(clippy::too_many_arguments)]
fn write_subset(
    py: Python<'_>,
    out: PathBuf,
    dir: PathBuf,
    ids: PyArrowType<arrow_data::ArrayData>,
    rows: PyArrowType<arrow_data::ArrayData>,
    classes: PyArrowType<arrow_data::ArrayData>,
    scores: PyArrowType<arrow_data::ArrayData>,
    terms: PyArrowType<RecordBatch>,
    tau: &str,
    cross_sample: &str,
    seed: u64,
) -> PyResult<Vec<(String, u64, u64, String)>> {
    let opts = score_options(tau, 0, cross_sample, seed, 0).map_err(|e| py_err(py, &e))?;
    let cross_name = opts.cross.describe(opts.tau, seed);
    let (ids, rows, classes, scores, terms) = (
        array(ids),
        array(rows),
        array(classes),
        array(scores),
        terms.0,
    );
    run(py, move || {
        let t = terms_of(&terms)?;
        let row = u64_values(&rows, "rows")?;
        let score = f64_values(&scores, "scores")?;
        let class = classes
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| usage("classes: expected int32"))?;
        let id_at = |i: usize| -> R<IdRef<'_>> {
            Ok(match ids.data_type() {
                DataType::Utf8 => IdRef::Utf8(ids.as_string::<i32>().value(i)),
                DataType::LargeUtf8 => IdRef::Utf8(ids.as_string::<i64>().value(i)),
                DataType::Int64 => IdRef::Int(ids.as_primitive::<Int64Type>().value(i)),
                DataType::UInt64 => IdRef::UInt(ids.as_primitive::<UInt64Type>().value(i)),
                other => return Err(usage(format!("ids: type {other} is not an id type"))),
            })
        };
        let n = row.len();
        let subset: Vec<SubsetRow> = (0..n)
            .map(|i| {
                Ok(SubsetRow {
                    id: id_at(i)?,
                    rank: i as u64,
                    row: row[i],
                    class: class.is_valid(i).then(|| class.value(i)),
                    score: score[i],
                    terms: t[i * TERMS..(i + 1) * TERMS].to_vec(),
                })
            })
            .collect::<R<_>>()?;
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let extras = SubsetExtras {
            keep: Keep {
                names: Vec::new(),
                files: &[],
                starts: ShardStarts::from_rows(std::iter::empty()),
            },
            train: None,
            key_value: vec![("clipcov.cross".into(), cross_name)],
        };
        let names = ["easy", "cross", "label", "between"];
        let files = write_subset_files(&out, &dir, &subset, &names, &extras)?;
        Ok(files
            .into_iter()
            .map(|f| (f.path, f.rows, f.bytes, f.sha256))
            .collect())
    })
}

/// The CLI's error for a repeated id (the later occurrence at `path`,
/// `row_in_file`; the first at dataset row `first_row`), as an exception
/// to raise.
#[pyfunction]
fn duplicate_id(
    py: Python<'_>,
    path: PathBuf,
    row_in_file: u64,
    column: &str,
    id: &str,
    first_row: u64,
) -> PyErr {
    py_err(
        py,
        &duplicate_id_error(&path, row_in_file, column, id, first_row),
    )
}

#[pymodule]
fn _clipcov(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("ClipcovError", m.py().get_type::<ClipcovError>())?;
    m.add("TERMS", TERMS)?;
    m.add_function(wrap_pyfunction!(select, m)?)?;
    m.add_function(wrap_pyfunction!(select_config, m)?)?;
    m.add_function(wrap_pyfunction!(discover, m)?)?;
    m.add_function(wrap_pyfunction!(read_prompts, m)?)?;
    m.add_function(wrap_pyfunction!(plan_tile_rows, m)?)?;
    m.add_function(wrap_pyfunction!(budget_rows, m)?)?;
    m.add_function(wrap_pyfunction!(refresh_period, m)?)?;
    m.add_function(wrap_pyfunction!(normalise, m)?)?;
    m.add_function(wrap_pyfunction!(class_sums, m)?)?;
    m.add_function(wrap_pyfunction!(class_terms, m)?)?;
    m.add_function(wrap_pyfunction!(cross_blocks, m)?)?;
    m.add_function(wrap_pyfunction!(cross_block, m)?)?;
    m.add_function(wrap_pyfunction!(cross_reduce, m)?)?;
    m.add_function(wrap_pyfunction!(class_sequence, m)?)?;
    m.add_function(wrap_pyfunction!(merge, m)?)?;
    m.add_function(wrap_pyfunction!(write_subset, m)?)?;
    m.add_function(wrap_pyfunction!(duplicate_id, m)?)?;
    Ok(())
}
