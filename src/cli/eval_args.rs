//! The flags of `eval` (and the proxy's, shared with `compare --eval-set`),
//! validated into an [`EvalJob`].

use std::path::{Path, PathBuf};

use clap::Args;

use super::method_args::{threads, RowArgs};
use crate::error::{Error, Result};
use crate::eval::proxy::ProxyOptions;
use crate::eval::EvalOptions;
use crate::jobs::config::SelectConfig;
use crate::jobs::eval::EvalJob;
use crate::memory::parse_size;
use crate::stages::classes::ClassSource;
use crate::stages::score::Tau;
use crate::stages::select::{Budget, Refresh, Weights};

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

impl EvalArgs {
    /// The validated run: flag values checked, the work folder chosen.
    pub fn into_job(self) -> Result<EvalJob> {
        let a = self;
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
        let threads = threads(a.threads)?;
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
            out: work,
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
        Ok(EvalJob {
            cfg,
            subset: a.subset,
            eval_set: a.eval_set,
            opts,
            work_given: a.work.is_some(),
            json: a.json,
        })
    }
}
