//! `clipcov eval`: stages the data with the prompts' classes in a
//! temporary store, evaluates the subset there (src/eval/), prints the
//! metrics and removes the store, also when interrupted.

use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, UInt64Type};
use arrow_array::Array;
use arrow_schema::DataType;

use crate::error::{Error, Result};
use crate::eval::{text_report, EvalMetrics, EvalOptions, Evaluator};
use crate::formats::parquet_read::{batches, open_parquet};
use crate::jobs::config::SelectConfig;
use crate::jobs::shell::thread_pool;
use crate::jobs::staging;
use crate::stages::classes::ClassSource;
use crate::store::Store;

/// Reads the subset's `id` and `row` columns and maps them to store
/// positions, checking every id against the data's id at that row.
fn subset_positions(path: &Path, store: &Store) -> Result<Vec<usize>> {
    let n = store.rows();
    let max_row = (0..n).map(|p| store.row_index(p)).max().unwrap_or(0) as usize;
    let mut pos_of_row = vec![usize::MAX; if n == 0 { 0 } else { max_row + 1 }];
    for p in 0..n {
        pos_of_row[store.row_index(p) as usize] = p;
    }
    let builder = open_parquet(path)?;
    for c in ["id", "row"] {
        if builder.schema().field_with_name(c).is_err() {
            return Err(Error::column(path, c, "missing column").with_hint(
                "give a subset.parquet written by clipcov select, baseline or compare",
            ));
        }
    }
    let reader = batches(path, builder)?;
    let mut out = Vec::new();
    let mut row0 = 0u64;
    for batch in reader {
        let batch = batch?;
        let rows = batch.column_by_name("row").unwrap();
        if rows.data_type() != &DataType::UInt64 {
            return Err(Error::column(path, "row", "expected uint64"));
        }
        let rows = rows.as_primitive::<UInt64Type>();
        let ids = batch.column_by_name("id").unwrap();
        let id_at = |i: usize| -> String {
            match ids.data_type() {
                DataType::Utf8 => ids.as_string::<i32>().value(i).to_string(),
                DataType::LargeUtf8 => ids.as_string::<i64>().value(i).to_string(),
                DataType::Int64 => ids.as_primitive::<Int64Type>().value(i).to_string(),
                DataType::UInt64 => ids.as_primitive::<UInt64Type>().value(i).to_string(),
                _ => String::new(),
            }
        };
        for i in 0..batch.num_rows() {
            let at = row0 + i as u64;
            let r = rows.value(i) as usize;
            let p = pos_of_row.get(r).copied().unwrap_or(usize::MAX);
            if p == usize::MAX {
                return Err(Error::at(
                    path,
                    at,
                    "row",
                    format!("row {r} is not a row of --data (or was skipped while staging it)"),
                )
                .with_hint("evaluate a subset against the data it was selected from"));
            }
            let (want, got) = (store.id(p).to_string(), id_at(i));
            if want != got {
                return Err(Error::at(
                    path,
                    at,
                    "id",
                    format!("id '{got}', but row {r} of --data has id '{want}'"),
                )
                .with_hint("evaluate a subset against the data it was selected from"));
            }
            out.push(p);
        }
        row0 += batch.num_rows() as u64;
    }
    Ok(out)
}

/// A validated `eval` run.
pub struct EvalJob {
    /// How the data is staged: the prompts' classes, into `cfg.out` (the
    /// work folder, removed when done).
    pub cfg: SelectConfig,
    /// The subset to evaluate (`subset.parquet`).
    pub subset: PathBuf,
    /// Labelled eval images.
    pub eval_set: PathBuf,
    pub opts: EvalOptions,
    /// The work folder was given (`--work`), not put beside the subset.
    pub work_given: bool,
    /// Print the metrics as JSON.
    pub json: bool,
}

/// Runs `clipcov eval`: stages the data with the prompts' classes in a
/// temporary store, evaluates the subset, prints the metrics.
pub fn run_eval(job: EvalJob) -> Result<()> {
    // Before any thread starts: an interrupted eval removes its work folder.
    crate::io::interrupt::install();
    let ClassSource::Prompts(prompts) = &job.cfg.classes else {
        return Err(Error::Internal("eval stages with prompts".into()));
    };
    for p in [&job.subset, &job.eval_set, prompts] {
        crate::io::remote::stat(p)?;
    }
    let work = job.cfg.out.clone();
    let _cleanup = crate::io::interrupt::remove_on_interrupt(work.clone());
    if let Err(e) = std::fs::create_dir_all(&work) {
        let hint = if job.work_given {
            ""
        } else {
            " (eval's work folder, beside the subset; give --work DIR in a writable place)"
        };
        return Err(Error::io(format!("{}{hint}", work.display()), e));
    }
    let result = thread_pool(job.cfg.threads)?.install(|| -> Result<EvalMetrics> {
        let staged = staging::stage_data(&job.cfg, &work.join("store"), &mut Vec::new())?;
        let positions = subset_positions(&job.subset, &staged.store)?;
        let ev = Evaluator::new(
            &staged.store,
            &staged.files,
            &staged.class_emb,
            &job.eval_set,
            job.opts,
        )?;
        Ok(ev.evaluate(&positions))
    });
    let _ = std::fs::remove_dir_all(&work);
    let m = result?;
    if job.json {
        let s = serde_json::to_string_pretty(&m).map_err(|e| Error::Internal(e.to_string()))?;
        println!("{s}");
    } else {
        print!("{}", text_report(&m));
    }
    Ok(())
}
