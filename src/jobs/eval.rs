//! `clipcov eval`: stages the data with the prompts' classes in a
//! temporary store, evaluates the subset there (src/eval/), prints the
//! metrics and removes the store, also when interrupted.

use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, UInt64Type};
use arrow_array::Array;
use arrow_schema::DataType;
use clap::Args;

use crate::error::{Error, Result};
use crate::eval::proxy::ProxyOptions;
use crate::eval::{text_report, EvalMetrics, EvalOptions, Evaluator};
use crate::formats::parquet_read::{batches, open_parquet};
use crate::jobs::baseline::RowArgs;
use crate::jobs::pipeline::{self, SelectConfig};
use crate::jobs::shell::thread_pool;
use crate::memory::parse_size;
use crate::stages::classes::ClassSource;
use crate::stages::score::Tau;
use crate::stages::select::{Budget, Refresh, Weights};
use crate::store::Store;

/// The proxy's options, shared by `eval` and `compare --eval-set`.
#[derive(Args, Clone, Debug)]
pub struct ProxyArgs {
    /// Proxy training steps (the same for every subset, whatever its size).
    #[arg(long, default_value_t = 300)]
    pub proxy_steps: usize,
    /// Pairs per proxy training batch (capped at the training pairs).
    #[arg(long, default_value_t = 256)]
    pub proxy_batch_size: usize,
    /// Adam step size of the proxy.
    #[arg(long, default_value_t = 0.01)]
    pub proxy_lr: f64,
    /// Output dimension p of the proxy's maps (default: d).
    #[arg(long)]
    pub proxy_dim: Option<usize>,
    /// Proxy trainings (seeds seed, seed+1, ...) to average over.
    #[arg(long, default_value_t = 3)]
    pub eval_seeds: usize,
    /// Held-out clean pairs for retrieval (at most a tenth of the rows);
    /// class-balanced when the data has true_class.
    #[arg(long, default_value_t = 1000)]
    pub heldout: usize,
    /// Class table (CSV: class, caption = weak or strong; synth
    /// --model class-local writes classes.csv): splits zero-shot accuracy
    /// by caption quality.
    #[arg(long)]
    pub class_table: Option<PathBuf>,
}

impl ProxyArgs {
    /// Validated options; `seed` is the base seed.
    pub fn options(&self, seed: u64) -> Result<EvalOptions> {
        let one = |name: &str, v: usize| {
            if v == 0 {
                Err(Error::Usage(format!("--{name} must be at least 1")))
            } else {
                Ok(v)
            }
        };
        if !(self.proxy_lr.is_finite() && self.proxy_lr > 0.0) {
            return Err(Error::Usage(format!(
                "--proxy-lr {} must be a positive number",
                self.proxy_lr
            )));
        }
        if let Some(p) = self.proxy_dim {
            one("proxy-dim", p)?;
        }
        Ok(EvalOptions {
            proxy: ProxyOptions {
                proj_dim: self.proxy_dim,
                steps: one("proxy-steps", self.proxy_steps)?,
                batch_size: self.proxy_batch_size.max(2),
                lr: self.proxy_lr,
                ..ProxyOptions::default()
            },
            seeds: one("eval-seeds", self.eval_seeds)?,
            heldout: self.heldout,
            class_table: self.class_table.clone(),
            seed,
        })
    }
}

#[derive(Args, Clone, Debug)]
pub struct EvalArgs {
    /// The full dataset the subset was selected from (Parquet shards).
    #[arg(long)]
    pub data: PathBuf,
    /// The subset to evaluate (OUT/<method>/subset.parquet: id, row, ...).
    #[arg(long)]
    pub subset: PathBuf,
    /// Labelled eval images (Parquet: id, image_embedding, label = class_id).
    #[arg(long)]
    pub eval_set: PathBuf,
    /// Class prompts (Parquet: class_id, name, text_embedding).
    #[arg(long)]
    pub prompts: PathBuf,
    /// Base seed of the held-out slice and the proxy trainings.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the metrics as JSON.
    #[arg(long)]
    pub json: bool,
    /// Folder for the temporary staged store (default: beside the subset);
    /// removed when done.
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// Bound on anonymous memory (e.g. 4GiB) while staging.
    #[arg(long, default_value = "4GiB")]
    pub memory_limit: String,
    /// Worker threads (default: all cores). Results do not depend on it.
    #[arg(long)]
    pub threads: Option<usize>,
    /// As given to the run that made the subset.
    #[command(flatten)]
    pub rows: RowArgs,
    #[command(flatten)]
    pub proxy: ProxyArgs,
}

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

/// Runs `clipcov eval`: stages the data with the prompts' classes in a
/// temporary store, evaluates the subset, prints the metrics.
pub fn run_eval(a: EvalArgs) -> Result<()> {
    // Before any thread starts: an interrupted eval removes its work folder.
    crate::io::interrupt::install();
    let opts = a.proxy.options(a.seed)?;
    if a.subset
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        return Err(Error::Usage(format!(
            "--subset {}: eval reads the subset's Parquet file; pass {} (written beside the CSV)",
            a.subset.display(),
            a.subset.with_extension("parquet").display()
        )));
    }
    for p in [&a.subset, &a.eval_set, &a.prompts] {
        crate::io::remote::stat(p)?;
    }
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 {
        return Err(Error::Usage("--threads must be at least 1".into()));
    }
    let work = match &a.work {
        Some(w) => w.clone(),
        // A subset read from a URL: a local folder named after it.
        None if crate::io::remote::is_url(&a.subset) => {
            crate::io::remote::work_dir(&a.subset, None)
        }
        None => a
            .subset
            .parent()
            .unwrap_or(Path::new("."))
            .join(".clipcov-eval"),
    };
    crate::io::outdir::check_outside_inputs(&[("--work", &work)], &[("--data", &a.data)])?;
    let cfg = SelectConfig {
        data: a.data.clone(),
        classes: ClassSource::Prompts(a.prompts.clone()),
        budget: Budget::Count(0),
        out: work.clone(),
        tau: Tau::Threshold(0.0),
        refresh: Refresh::Auto,
        refresh_mode: Default::default(),
        cross: Default::default(),
        weights: Weights::default(),
        memory_limit_bytes: parse_size(&a.memory_limit)?,
        threads,
        tile_rows: None,
        chunk_rows: None,
        columns: a.rows.columns(),
        on_bad_row: a.rows.on_bad_row,
        on_duplicate: a.rows.on_duplicate,
        seed: a.seed,
        assign_text: false,
        fresh: false,
        layout: None,
        model: Default::default(),
        keep_columns: Vec::new(),
        train_csv: None,
        publish_to: None,
        filter: None,
    };
    let _cleanup = crate::io::interrupt::remove_on_interrupt(work.clone());
    if let Err(e) = std::fs::create_dir_all(&work) {
        let hint = if a.work.is_none() {
            " (eval's work folder, beside the subset; give --work DIR in a writable place)"
        } else {
            ""
        };
        return Err(Error::io(format!("{}{hint}", work.display()), e));
    }
    let result = thread_pool(threads)?.install(|| -> Result<EvalMetrics> {
        let staged = pipeline::stage_data(&cfg, &work.join("store"), &mut Vec::new())?;
        let positions = subset_positions(&a.subset, &staged.store)?;
        let ev = Evaluator::new(
            &staged.store,
            &staged.files,
            &staged.class_emb,
            &a.eval_set,
            opts,
        )?;
        Ok(ev.evaluate(&positions))
    });
    let _ = std::fs::remove_dir_all(&work);
    let m = result?;
    if a.json {
        let s = serde_json::to_string_pretty(&m).map_err(|e| Error::Internal(e.to_string()))?;
        println!("{s}");
    } else {
        print!("{}", text_report(&m));
    }
    Ok(())
}
