//! Stage 1, ingest: decode the Parquet shards once, validate every row, and
//! write the raw (ingest-order) part of the staged store.
//!
//! Each row is checked (lengths, nulls, finite values, non-zero norm), its
//! normalising factors computed in `f64`, and its embeddings, row index and
//! id appended to the raw files. Bad rows stop the run or, with
//! `--on-bad-row skip`, are recorded as rejects; duplicate ids likewise.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;
use half::f16;
use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::formats::canonical::{Columns, IdKind, ShardReader, SourceFile};
use crate::formats::embedding::{EmbeddingView, FloatKind, Floats, RowProblem};
use crate::store::{Dtype, IdStore, SeqWriter};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BadRowPolicy {
    Error,
    Skip,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DuplicatePolicy {
    Error,
    KeepFirst,
}

#[derive(Clone, Debug)]
pub struct IngestOptions {
    pub columns: Columns,
    pub on_bad_row: BadRowPolicy,
    pub on_duplicate: DuplicatePolicy,
    pub batch_rows: usize,
    /// The embedding dimension the prompts require, and the prompts file.
    pub expected_d: Option<(usize, PathBuf)>,
}

/// A row left out of the selection, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Reject {
    pub row: u64,
    pub file: String,
    pub id: String,
    pub reason: String,
}

/// Rows per shard, for the manifest and the row map.
#[derive(Clone, Debug, Serialize)]
pub struct ShardRows {
    pub file: String,
    pub first_row: u64,
    pub rows: u64,
}

/// What ingest produced.
#[derive(Clone, Debug)]
pub struct Ingested {
    pub d: usize,
    pub dtype: Dtype,
    pub id_kind: IdKind,
    pub rows_read: u64,
    /// Rows written to the raw store (before duplicate removal).
    pub raw_rows: u64,
    /// Raw positions dropped as duplicates (keep-first).
    pub duplicate_positions: Vec<u64>,
    pub rejects: Vec<Reject>,
    pub skipped: BTreeMap<String, u64>,
    pub shards: Vec<ShardRows>,
}

struct RawWriters {
    image: SeqWriter,
    text: SeqWriter,
    scale: SeqWriter,
    row: SeqWriter,
    id_main: SeqWriter,
    id_dat: Option<SeqWriter>,
    id_bytes: u64,
}

/// Ids of one batch, typed.
enum IdColumn<'a> {
    Str(Box<dyn Fn(usize) -> &'a str + 'a>),
    Int(Vec<Option<i64>>),
    UInt(Vec<Option<u64>>),
}

fn id_column(a: &ArrayRef) -> IdColumn<'_> {
    match a.data_type() {
        DataType::Utf8 => {
            let s = a.as_string::<i32>();
            IdColumn::Str(Box::new(move |i| s.value(i)))
        }
        DataType::LargeUtf8 => {
            let s = a.as_string::<i64>();
            IdColumn::Str(Box::new(move |i| s.value(i)))
        }
        DataType::Utf8View => {
            let s = a.as_string_view();
            IdColumn::Str(Box::new(move |i| s.value(i)))
        }
        DataType::Int64 => IdColumn::Int(a.as_primitive::<Int64Type>().iter().collect()),
        DataType::Int32 => IdColumn::Int(
            a.as_primitive::<Int32Type>()
                .iter()
                .map(|v| v.map(i64::from))
                .collect(),
        ),
        DataType::UInt64 => IdColumn::UInt(a.as_primitive::<UInt64Type>().iter().collect()),
        DataType::UInt32 => IdColumn::UInt(
            a.as_primitive::<UInt32Type>()
                .iter()
                .map(|v| v.map(u64::from))
                .collect(),
        ),
        _ => unreachable!("id type checked by check_schema"),
    }
}

fn problem_text(p: &RowProblem) -> &'static str {
    match p {
        RowProblem::Null => "null embedding",
        RowProblem::NullComponent => "null component",
        RowProblem::Length(_) => "wrong length",
    }
}

/// Reads `files` into the raw store in `dir`.
pub fn ingest(files: &[SourceFile], dir: &Path, opts: &IngestOptions) -> Result<Ingested> {
    let mut reader = ShardReader::new(files, opts.columns.clone(), opts.batch_rows);
    let mut writers: Option<RawWriters> = None;
    let mut d: Option<usize> = opts.expected_d.as_ref().map(|(d, _)| *d);
    let mut dtype: Option<Dtype> = None;
    let mut id_kind = IdKind::Utf8;
    let mut rows_read = 0u64;
    let mut raw_rows = 0u64;
    let mut rejects = Vec::new();
    let mut skipped: BTreeMap<String, u64> = BTreeMap::new();
    let mut shards: Vec<ShardRows> = files
        .iter()
        .map(|f| ShardRows {
            file: f.relative.clone(),
            first_row: 0,
            rows: 0,
        })
        .collect();
    let mut img_buf16: Vec<f16> = Vec::new();
    let mut txt_buf16: Vec<f16> = Vec::new();
    let mut img_buf32: Vec<f32> = Vec::new();
    let mut txt_buf32: Vec<f32> = Vec::new();
    let mut scales: Vec<f32> = Vec::new();
    let mut rows: Vec<u64> = Vec::new();
    let mut id_ints: Vec<u64> = Vec::new();
    let mut id_offs: Vec<u64> = Vec::new();
    let mut id_dat: Vec<u8> = Vec::new();
    let mut id_hashes: Vec<(u64, u64)> = Vec::new();

    let (img_col, txt_col, id_col) = (
        opts.columns.image.as_str(),
        opts.columns.text.as_str(),
        opts.columns.id.as_str(),
    );
    while let Some(batch) = reader.next() {
        let batch = batch?;
        let file = &files[batch.file_index];
        let path = &file.path;
        let shard = reader.schemas[batch.file_index].clone();
        shards[batch.file_index].rows += batch.len() as u64;
        if batch.first_row_in_file == 0 {
            shards[batch.file_index].first_row = batch.first_row;
        }
        // The store precision is set by the first shard: f16 only when both
        // columns are f16 (a later f32 shard would be rounded, so it is an error).
        let store_dtype = *dtype.get_or_insert(
            if shard.image_kind == FloatKind::F16 && shard.text_kind == FloatKind::F16 {
                Dtype::F16
            } else {
                Dtype::F32
            },
        );
        if store_dtype == Dtype::F16
            && (shard.image_kind != FloatKind::F16 || shard.text_kind != FloatKind::F16)
        {
            return Err(Error::column(
                path,
                if shard.image_kind != FloatKind::F16 {
                    img_col
                } else {
                    txt_col
                },
                "this shard stores float32/float64 embeddings but earlier shards store float16",
            )
            .with_hint("convert all shards to one precision"));
        }
        if writers.is_none() {
            id_kind = shard.id_kind;
            let w = |n: &str| SeqWriter::create(&dir.join(n));
            writers = Some(RawWriters {
                image: w("raw.image")?,
                text: w("raw.text")?,
                scale: w("raw.scale")?,
                row: w("raw.row")?,
                id_main: w(if id_kind == IdKind::Utf8 {
                    "ids.off"
                } else {
                    "ids.int"
                })?,
                id_dat: if id_kind == IdKind::Utf8 {
                    Some(w("ids.dat")?)
                } else {
                    None
                },
                id_bytes: 0,
            });
            if id_kind == IdKind::Utf8 {
                writers.as_mut().unwrap().id_main.write(&[0u64])?;
            }
        }
        let w = writers.as_mut().unwrap();
        let img = EmbeddingView::try_new(&batch.image).expect("type checked");
        let txt = EmbeddingView::try_new(&batch.text).expect("type checked");
        let ids = id_column(&batch.id);
        let id_nulls = batch.id.nulls().cloned();

        img_buf16.clear();
        txt_buf16.clear();
        img_buf32.clear();
        txt_buf32.clear();
        scales.clear();
        rows.clear();
        id_ints.clear();
        id_offs.clear();
        id_dat.clear();
        for i in 0..batch.len() {
            let row = batch.first_row + i as u64;
            let row_in_file = batch.first_row_in_file + i as u64;
            let dd = *d.get_or_insert_with(|| img.row_len(i));
            if id_nulls.as_ref().is_some_and(|n| n.is_null(i)) {
                return Err(Error::at(path, row_in_file, id_col, "null id")
                    .with_hint("every pair needs an id"));
            }
            let id_text = || match &ids {
                IdColumn::Str(f) => f(i).to_string(),
                IdColumn::Int(v) => v[i].unwrap_or_default().to_string(),
                IdColumn::UInt(v) => v[i].unwrap_or_default().to_string(),
            };
            let mut bad: Option<String> = None;
            let mut views: [Option<Floats>; 2] = [None, None];
            for (slot, (view, col)) in [(&img, img_col), (&txt, txt_col)].into_iter().enumerate() {
                match view.row(i, dd) {
                    Ok(v) => views[slot] = Some(v),
                    Err(RowProblem::Length(len)) => {
                        let hint = match &opts.expected_d {
                            Some((pd, p)) if *pd == dd => {
                                format!("the prompts file {} has d = {pd}", p.display())
                            }
                            _ if slot == 1 && len != dd => {
                                format!("image embeddings have d = {dd}; both towers must match")
                            }
                            _ => "every row needs the same embedding length".to_string(),
                        };
                        return Err(Error::at(
                            path,
                            row_in_file,
                            col,
                            format!("embedding length {len}, expected {dd}"),
                        )
                        .with_hint(hint));
                    }
                    Err(p) => {
                        bad.get_or_insert(format!("{col}: {}", problem_text(&p)));
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
                    return Err(Error::at(path, row_in_file, col, what.to_string())
                        .with_hint("fix the row, or pass --on-bad-row skip to skip such rows (they are listed in rejects.parquet)"));
                }
                *skipped
                    .entry(reason.split_once(": ").unwrap().1.to_string())
                    .or_default() += 1;
                rejects.push(Reject {
                    row,
                    file: file.relative.clone(),
                    id: id_text(),
                    reason,
                });
                continue;
            }
            let (u, v) = (views[0].unwrap(), views[1].unwrap());
            match store_dtype {
                Dtype::F16 => {
                    let (Floats::F16(a), Floats::F16(b)) = (u, v) else {
                        unreachable!("f16 store only from f16 shards")
                    };
                    img_buf16.extend_from_slice(a);
                    txt_buf16.extend_from_slice(b);
                    scales.push((1.0 / norms[0]) as f32);
                    scales.push((1.0 / norms[1]) as f32);
                }
                Dtype::F32 => {
                    u.extend_scaled_f32(1.0 / norms[0], &mut img_buf32);
                    v.extend_scaled_f32(1.0 / norms[1], &mut txt_buf32);
                    scales.extend([1.0f32, 1.0]);
                }
            }
            rows.push(row);
            let mut h = std::hash::DefaultHasher::new();
            match &ids {
                IdColumn::Str(f) => {
                    let s = f(i);
                    s.hash(&mut h);
                    id_dat.extend_from_slice(s.as_bytes());
                    w.id_bytes += s.len() as u64;
                    id_offs.push(w.id_bytes);
                }
                IdColumn::Int(v) => {
                    let x = v[i].unwrap();
                    x.hash(&mut h);
                    id_ints.push(x as u64);
                }
                IdColumn::UInt(v) => {
                    let x = v[i].unwrap();
                    x.hash(&mut h);
                    id_ints.push(x);
                }
            }
            id_hashes.push((h.finish(), raw_rows));
            raw_rows += 1;
        }
        rows_read += batch.len() as u64;
        match store_dtype {
            Dtype::F16 => {
                w.image.write(&img_buf16)?;
                w.text.write(&txt_buf16)?;
            }
            Dtype::F32 => {
                w.image.write(&img_buf32)?;
                w.text.write(&txt_buf32)?;
            }
        }
        w.scale.write(&scales)?;
        w.row.write(&rows)?;
        if id_kind == IdKind::Utf8 {
            w.id_main.write(&id_offs)?;
            w.id_dat.as_mut().unwrap().write(&id_dat)?;
        } else {
            w.id_main.write(&id_ints)?;
        }
    }
    let Some(w) = writers else {
        return Err(Error::file(&files[0].path, "the dataset has no rows"));
    };
    for s in [w.image, w.text, w.scale, w.row, w.id_main]
        .into_iter()
        .chain(w.id_dat)
    {
        s.finish()?;
    }
    if raw_rows == 0 {
        return Err(
            Error::file(&files[0].path, "no usable rows: every row was rejected")
                .with_hint("see rejects.parquet"),
        );
    }
    let mut ingested = Ingested {
        d: d.unwrap(),
        dtype: dtype.unwrap(),
        id_kind,
        rows_read,
        raw_rows,
        duplicate_positions: Vec::new(),
        rejects,
        skipped,
        shards,
    };
    find_duplicates(dir, files, &mut ingested, id_hashes, opts)?;
    Ok(ingested)
}

/// Finds repeated ids by sorting their hashes, then comparing the ids whose
/// hashes collide. Keeps the first occurrence in canonical order.
fn find_duplicates(
    dir: &Path,
    files: &[SourceFile],
    ing: &mut Ingested,
    mut hashes: Vec<(u64, u64)>,
    opts: &IngestOptions,
) -> Result<()> {
    hashes.par_sort_unstable();
    let ids = IdStore::open(dir, ing.id_kind)?;
    let raw_row = crate::store::Mapped::<u64>::open(&dir.join("raw.row"))?;
    let raw_row = raw_row.as_slice();
    let mut dups = Vec::new();
    let mut i = 0;
    while i < hashes.len() {
        let mut j = i + 1;
        while j < hashes.len() && hashes[j].0 == hashes[i].0 {
            j += 1;
        }
        if j - i > 1 {
            // Same hash: compare real ids; the group is in raw order.
            let group: Vec<u64> = hashes[i..j].iter().map(|h| h.1).collect();
            for (a, &pa) in group.iter().enumerate() {
                if dups.contains(&pa) {
                    continue;
                }
                for &pb in &group[a + 1..] {
                    if ids.get(pa as usize) == ids.get(pb as usize) {
                        dups.push(pb);
                    }
                }
            }
        }
        i = j;
    }
    dups.sort_unstable();
    dups.dedup();
    if dups.is_empty() {
        return Ok(());
    }
    let locate = |row: u64| -> (&SourceFile, u64) {
        let s = ing
            .shards
            .iter()
            .enumerate()
            .rfind(|(_, s)| s.first_row <= row && s.rows > 0)
            .map(|(i, s)| (i, s.first_row))
            .unwrap_or((0, 0));
        (&files[s.0], row - s.1)
    };
    if opts.on_duplicate == DuplicatePolicy::Error {
        let pos = dups[0];
        let id = ids.get(pos as usize);
        let first = (0..pos)
            .find(|&p| ids.get(p as usize) == id)
            .map(|p| raw_row[p as usize])
            .unwrap_or(0);
        let (file, row_in_file) = locate(raw_row[pos as usize]);
        return Err(Error::at(
            &file.path,
            row_in_file,
            &opts.columns.id,
            format!("duplicate id '{id}' (first seen at dataset row {first})"),
        )
        .with_hint("ids must be unique; --on-duplicate keep-first keeps the first occurrence"));
    }
    for &pos in &dups {
        let row = raw_row[pos as usize];
        let (file, _) = locate(row);
        ing.rejects.push(Reject {
            row,
            file: file.relative.clone(),
            id: ids.get(pos as usize).to_string(),
            reason: "duplicate id".into(),
        });
    }
    *ing.skipped.entry("duplicate id".into()).or_default() += dups.len() as u64;
    ing.rejects.sort_by_key(|r| r.row);
    ing.duplicate_positions = dups;
    Ok(())
}
