//! Validation of one batch: every row checked (lengths, nulls, finite
//! values, non-zero norm), normalised in `f64` and, with class embeddings,
//! assigned its latent class (one GEMM per part).

use std::path::Path;

use arrow_array::Array;
use half::f16;
use rayon::prelude::*;

use crate::clock::CpuTimer;
use crate::error::{Error, Result};
use crate::formats::embedding::{for_f32_chunks, EmbeddingView, FloatKind, Floats, RowProblem};
use crate::formats::shards::ShardSchema;
use crate::kernels::kmeans;
use crate::stages::ingest::types::{BadRowPolicy, Classify, IngestOptions};
use crate::store::Dtype;

fn problem_text(p: &RowProblem) -> &'static str {
    match p {
        RowProblem::Null => "null embedding",
        RowProblem::NullComponent => "null component",
        RowProblem::Length(_) => "wrong length",
    }
}

/// The store precision set by the first shard: f16 only when both columns
/// are f16 (a later f32 shard would be rounded, so it is an error).
pub(super) fn store_dtype(s: &ShardSchema) -> Dtype {
    if s.image_kind == FloatKind::F16 && s.text_kind == FloatKind::F16 {
        Dtype::F16
    } else {
        Dtype::F32
    }
}

/// The validated rows of one batch, in order.
#[derive(Default)]
pub(super) struct Prepared {
    /// Index in the batch of each kept row.
    pub(super) keep: Vec<usize>,
    /// Row-major embeddings of the kept rows at store precision: the f32
    /// pair for f32 stores (already normalised), the f16 pair for f16 ones.
    pub(super) image32: Vec<f32>,
    pub(super) text32: Vec<f32>,
    pub(super) image16: Vec<f16>,
    pub(super) text16: Vec<f16>,
    /// Two normalising factors a kept row.
    pub(super) scale: Vec<f32>,
    /// Latent class of each kept row (0 without classification).
    pub(super) labels: Vec<u32>,
    /// Skipped rows: (index in batch, "column: problem").
    pub(super) bad: Vec<(usize, String)>,
    /// CPU seconds this part took to validate, and to classify.
    pub(super) validate_seconds: f64,
    pub(super) classify_seconds: f64,
}

impl Prepared {
    /// The stored bytes of kept row `r`: (image, text).
    pub(super) fn row_bytes(&self, r: usize, d: usize) -> (&[u8], &[u8]) {
        use crate::store::as_bytes;
        if self.image16.is_empty() {
            (
                as_bytes(&self.image32[r * d..(r + 1) * d]),
                as_bytes(&self.text32[r * d..(r + 1) * d]),
            )
        } else {
            (
                as_bytes(&self.image16[r * d..(r + 1) * d]),
                as_bytes(&self.text16[r * d..(r + 1) * d]),
            )
        }
    }

    /// Assigns each kept row its class: one GEMM against `c`.
    pub(super) fn classify(&mut self, c: &Classify, d: usize) {
        let rows: std::borrow::Cow<[f32]> = match (self.image16.is_empty(), c.use_text) {
            (true, false) => (&self.image32[..]).into(),
            (true, true) => (&self.text32[..]).into(),
            (false, text) => {
                let (v, slot) = if text {
                    (&self.text16, 1)
                } else {
                    (&self.image16, 0)
                };
                let mut rows = Vec::with_capacity(v.len());
                for (r, row) in v.chunks_exact(d).enumerate() {
                    let s = self.scale[2 * r + slot];
                    for_f32_chunks(row, |c| rows.extend(c.iter().map(|&x| x * s)));
                }
                rows.into()
            }
        };
        self.labels = kmeans::assign_serial(&rows, d, &c.embeddings);
    }
}

/// Everything about the batch a worker needs.
pub(super) struct BatchCtx<'a> {
    pub(super) path: &'a Path,
    /// Canonical row index of the batch's first row.
    pub(super) first_row: u64,
    pub(super) first_row_in_file: u64,
    pub(super) d: usize,
    pub(super) dtype: Dtype,
    pub(super) img: EmbeddingView<'a>,
    pub(super) txt: EmbeddingView<'a>,
    pub(super) id_nulls: Option<&'a arrow_buffer::NullBuffer>,
    pub(super) opts: &'a IngestOptions,
}

impl BatchCtx<'_> {
    /// Validates, converts and classifies the batch's `n` rows in parallel
    /// parts of [`PREPARE_ROWS`], in row order.
    pub(super) fn prepare_all(&self, n: usize) -> Vec<Result<Prepared>> {
        (0..n.div_ceil(PREPARE_ROWS))
            .into_par_iter()
            .map(|c| {
                let t = CpuTimer::start();
                let mut p = self.prepare(c * PREPARE_ROWS..((c + 1) * PREPARE_ROWS).min(n))?;
                p.validate_seconds = t.seconds();
                let t = CpuTimer::start();
                match &self.opts.classify {
                    Some(cl) => p.classify(cl, self.d),
                    None => p.labels = vec![0; p.keep.len()],
                }
                p.classify_seconds = t.seconds();
                Ok(p)
            })
            .collect()
    }

    /// Validates and converts rows `range` of the batch.
    pub(super) fn prepare(&self, range: std::ops::Range<usize>) -> Result<Prepared> {
        let (d, opts) = (self.d, self.opts);
        let (img_col, txt_col) = (opts.columns.image.as_str(), opts.columns.text.as_str());
        let mut p = Prepared::default();
        // Room for every row at once: growing by doubling would copy them.
        let n = range.len();
        match self.dtype {
            Dtype::F32 => {
                p.image32.reserve_exact(n * d);
                p.text32.reserve_exact(n * d);
            }
            Dtype::F16 => {
                p.image16.reserve_exact(n * d);
                p.text16.reserve_exact(n * d);
            }
        }
        p.scale.reserve_exact(2 * n);
        p.keep.reserve_exact(n);
        for i in range {
            if let Some(f) = &opts.filter {
                if !f.contains(self.first_row + i as u64) {
                    continue;
                }
            }
            let row_in_file = self.first_row_in_file + i as u64;
            if self.id_nulls.is_some_and(|n| n.is_null(i)) {
                return Err(
                    Error::at(self.path, row_in_file, &opts.columns.id, "null id")
                        .with_hint("every pair needs an id"),
                );
            }
            let mut bad: Option<String> = None;
            let mut views: [Option<Floats>; 2] = [None, None];
            for (slot, (view, col)) in [(&self.img, img_col), (&self.txt, txt_col)]
                .into_iter()
                .enumerate()
            {
                match view.row(i, d) {
                    Ok(v) => views[slot] = Some(v),
                    Err(RowProblem::Length(len)) => {
                        let hint = match &opts.expected_d {
                            Some((pd, p)) => {
                                format!("the prompts file {} has d = {pd}", p.display())
                            }
                            None if slot == 1 => {
                                format!("image embeddings have d = {d}; both towers must match")
                            }
                            None => "every row needs the same embedding length".to_string(),
                        };
                        return Err(Error::at(
                            self.path,
                            row_in_file,
                            col,
                            format!("embedding length {len}, expected {d}"),
                        )
                        .with_hint(hint));
                    }
                    Err(e) => {
                        bad.get_or_insert(format!("{col}: {}", problem_text(&e)));
                    }
                }
            }
            let mut norms = [0.0f64; 2];
            if bad.is_none() {
                for (slot, col) in [img_col, txt_col].into_iter().enumerate() {
                    match views[slot].unwrap().norm2() {
                        None => {
                            bad.get_or_insert(format!("{col}: non-finite component"));
                        }
                        Some(0.0) => {
                            bad.get_or_insert(format!("{col}: zero vector"));
                        }
                        Some(n2) => norms[slot] = n2.sqrt(),
                    }
                }
            }
            if let Some(reason) = bad {
                if opts.on_bad_row == BadRowPolicy::Error {
                    let (col, what) = reason.split_once(": ").unwrap();
                    return Err(Error::at(self.path, row_in_file, col, what.to_string()).with_hint(
                        "fix the row, or pass --on-bad-row skip to skip such rows (they are listed in rejects.parquet)",
                    ));
                }
                p.bad.push((i, reason));
                continue;
            }
            let (u, v) = (views[0].unwrap(), views[1].unwrap());
            match self.dtype {
                Dtype::F16 => {
                    let (Floats::F16(a), Floats::F16(b)) = (u, v) else {
                        unreachable!("f16 store only from f16 shards")
                    };
                    p.image16.extend_from_slice(a);
                    p.text16.extend_from_slice(b);
                    p.scale.push((1.0 / norms[0]) as f32);
                    p.scale.push((1.0 / norms[1]) as f32);
                }
                Dtype::F32 => {
                    u.extend_scaled_f32(1.0 / norms[0], &mut p.image32);
                    v.extend_scaled_f32(1.0 / norms[1], &mut p.text32);
                    // Stored normalised; the factors recover the input.
                    p.scale.push((1.0 / norms[0]) as f32);
                    p.scale.push((1.0 / norms[1]) as f32);
                }
            }
            p.keep.push(i);
        }
        Ok(p)
    }
}

/// One batch's rows validated, normalised and classed by ingest's own
/// code, without a store: what the Python bindings and the Ray recipe use.
#[derive(Debug, Default)]
pub struct PreparedRows {
    /// Index in the batch of each kept row.
    pub keep: Vec<usize>,
    /// `[kept, d]` unit rows in `f32`, exactly as the staged store gives
    /// them back (float16 input: the f16 value times its factor).
    pub image: Vec<f32>,
    pub text: Vec<f32>,
    /// Latent class of each kept row (0 without `opts.classify`).
    pub labels: Vec<u32>,
    /// Rows left out (`--on-bad-row skip`): index in the batch, reason.
    pub bad: Vec<(usize, String)>,
    pub d: usize,
}

/// Validates, normalises and classes the rows of `batch` as ingest does
/// (same checks, same messages, same arithmetic). `path` and
/// `first_row_in_file` name the rows in errors, as for a shard.
pub fn prepare_batch(
    path: &Path,
    batch: &arrow_array::RecordBatch,
    first_row_in_file: u64,
    opts: &IngestOptions,
) -> Result<PreparedRows> {
    let shard = crate::formats::shards::check_schema(path, &batch.schema(), &opts.columns)?;
    let dtype = store_dtype(&shard);
    let column = |name: &str| batch.column(batch.schema().index_of(name).expect("checked"));
    let (image, text, id) = (
        column(&opts.columns.image),
        column(&opts.columns.text),
        column(&opts.columns.id),
    );
    let img = EmbeddingView::try_new(image).expect("type checked");
    let txt = EmbeddingView::try_new(text).expect("type checked");
    let n = batch.num_rows();
    let d = match &opts.expected_d {
        Some((d, _)) => *d,
        None if n == 0 => 0,
        None => img.row_len(0),
    };
    let ctx = BatchCtx {
        path,
        first_row: 0,
        first_row_in_file,
        d,
        dtype,
        img,
        txt,
        id_nulls: id.nulls(),
        opts,
    };
    let parts = ctx.prepare_all(n);
    let mut out = PreparedRows {
        d,
        ..Default::default()
    };
    for part in parts {
        let part = part?; // the first error in row order
        out.keep.extend_from_slice(&part.keep);
        out.labels.extend_from_slice(&part.labels);
        out.bad.extend(part.bad);
        if dtype == Dtype::F16 {
            // As `Embeddings::gather_f32` reads an f16 store back.
            use half::slice::HalfFloatSliceExt;
            for (src, slot, dst) in [
                (&part.image16, 0, &mut out.image),
                (&part.text16, 1, &mut out.text),
            ] {
                let start = dst.len();
                dst.resize(start + src.len(), 0.0);
                src.convert_to_f32_slice(&mut dst[start..]);
                for (r, row) in dst[start..].chunks_exact_mut(d.max(1)).enumerate() {
                    let s = part.scale[2 * r + slot];
                    for x in row {
                        *x *= s;
                    }
                }
            }
        } else {
            out.image.extend_from_slice(&part.image32);
            out.text.extend_from_slice(&part.text32);
        }
    }
    Ok(out)
}

/// Rows per unit of parallel validation work.
pub(super) const PREPARE_ROWS: usize = 512;
