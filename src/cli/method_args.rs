//! The flags shared by `baseline`, `compare` and `eval` (data, rows, the
//! methods' options) and `baseline`'s own, validated into job
//! configurations.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::error::{Error, IoContext, Result};
use crate::formats::dataset::{Columns, Layout, Model};
use crate::io::remote;
use crate::jobs::baseline::{BaselineJob, LearnerData};
use crate::jobs::config::SelectConfig;
use crate::memory::parse_size;
use crate::methods::{Method, MethodOptions, Rule};
use crate::output::train_csv::{TrainCsv, TrainFormat};
use crate::stages::classes::ClassSource;
use crate::stages::ingest::{BadRowPolicy, DuplicatePolicy};
use crate::stages::score::Tau;
use crate::stages::select::{Budget, Refresh, Weights};

/// How rows are read: the columns and what to do with bad rows. Shared by
/// every command that stages data (`eval` too).
#[derive(Args, Clone, Debug)]
pub struct RowArgs {
    /// Id column (default: id; uid for datacomp; image_path for
    /// clip-retrieval, ':row' for the row index).
    #[arg(long)]
    pub id_column: Option<String>,
    #[arg(long, default_value = "image_embedding")]
    pub image_column: String,
    #[arg(long, default_value = "text_embedding")]
    pub text_column: String,
    /// What to do with a row with a non-finite or zero embedding.
    #[arg(long, value_enum, default_value = "error")]
    pub on_bad_row: BadRowPolicy,
    /// What to do with a repeated id.
    #[arg(long, value_enum, default_value = "error")]
    pub on_duplicate: DuplicatePolicy,
}

impl RowArgs {
    pub fn columns(&self) -> Columns {
        Columns {
            id: self.id_column.clone().unwrap_or_default(),
            image: self.image_column.clone(),
            text: self.text_column.clone(),
        }
    }
}

/// The data, budget and run options every method shares.
#[derive(Args, Clone, Debug)]
pub struct DataArgs {
    /// Folder of Parquet shards (searched recursively) or one file; or an
    /// s3://, gs://, az:// or http(s):// URL of a prefix or an object.
    #[arg(long)]
    pub data: PathBuf,
    /// Start over: ignore the staged store an earlier run left in OUT/store.
    #[arg(long)]
    pub fresh: bool,
    /// Output folder, or a URL prefix the results are uploaded to.
    #[arg(long)]
    pub out: PathBuf,
    /// Local folder a run with a URL --out works in (default: a folder
    /// named after the URL under the system temp folder, kept for reruns).
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// Fraction of the rows to keep.
    #[arg(long, conflicts_with = "budget")]
    pub fraction: Option<f64>,
    /// Number of rows to keep.
    #[arg(long)]
    pub budget: Option<u64>,
    /// Bound on anonymous memory (e.g. 4GiB); steers tile and batch sizes.
    #[arg(long, default_value = "4GiB")]
    pub memory_limit: String,
    /// Worker threads (default: all cores). Results do not depend on it.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Rows per tile side (default: planned from --memory-limit).
    #[arg(long)]
    pub tile_rows: Option<usize>,
    #[command(flatten)]
    pub rows: RowArgs,
    /// Seed of every random choice (k-means, draws, batches, samples).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Input layout (default: detected).
    #[arg(long, value_enum)]
    pub layout: Option<Layout>,
    /// DataComp embeddings to read.
    #[arg(long, value_enum, default_value = "l14")]
    pub model: Model,
    /// Metadata columns to carry into the subset files (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub keep_columns: Vec<String>,
    /// Also write OUT/<method>/train.csv, the file list of CyCLIP
    /// (file,caption) or OpenCLIP (filepath, title; tab-separated).
    #[arg(long, value_enum)]
    pub train_csv: Option<TrainFormat>,
    /// --train-csv: metadata column of image file paths (default: image_path).
    #[arg(long, requires = "train_csv")]
    pub image_path_column: Option<String>,
    /// --train-csv: metadata column of captions (default: caption).
    #[arg(long, requires = "train_csv")]
    pub caption_column: Option<String>,
    /// --train-csv: folder the image paths are relative to (default: the
    /// current folder); train.csv holds absolute paths.
    #[arg(long, requires = "train_csv")]
    pub image_root: Option<PathBuf>,
    /// Stage only the rows where this SQL predicate over metadata columns
    /// holds, e.g. "original_width >= 200 AND length(text) > 5".
    #[arg(long = "where", value_name = "PREDICATE")]
    pub filter: Option<String>,
}

/// The methods' own options.
#[derive(Args, Clone, Debug)]
pub struct MethodArgs {
    /// k-means clusters of semdedup, ssp and datacomp_image_based
    /// (default max(1, round(N / 1000))).
    #[arg(long)]
    pub clusters: Option<usize>,
    #[arg(long, default_value_t = 20)]
    pub kmeans_iterations: usize,
    /// semdedup: keep the rows with m_j <= 1 - eps (instead of the budget).
    #[arg(long)]
    pub eps: Option<f64>,
    /// clip_score: keep every row with score >= t (instead of the budget).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Temperature T of c_rho and neg_clip_loss.
    #[arg(long, default_value_t = 0.01)]
    pub temperature: f64,
    /// neg_clip_loss: random batches containing each row (k).
    #[arg(long, default_value_t = 10)]
    pub neg_batches: usize,
    /// neg_clip_loss: batch size b (capped at the row count).
    #[arg(long, default_value_t = 32768)]
    pub neg_batch_size: usize,
    /// c_rho: size M of the fixed sample of other pairs.
    #[arg(long, default_value_t = 1024)]
    pub rho_sample: usize,
    /// c_rho: the weaker learner model's embeddings of the same pairs
    /// (same ids, same order); --data is the reference model.
    #[arg(long)]
    pub learner_data: Option<PathBuf>,
    /// c_rho: image column of --learner-data (default: --image-column).
    #[arg(long)]
    pub learner_image_column: Option<String>,
    /// c_rho: caption column of --learner-data (default: --text-column).
    #[arg(long)]
    pub learner_text_column: Option<String>,
    /// datacomp_image_based: target image embeddings (Parquet with an
    /// image_embedding column, or .npy [K, d]).
    #[arg(long)]
    pub targets: Option<PathBuf>,
    /// datacomp_image_based: first keep this top fraction by CLIP score.
    #[arg(long)]
    pub intersect_clip_score: Option<f64>,
    /// clip_score and datacomp_image_based: clipcov (exactly B rows,
    /// k-means on normalised embeddings) or datacomp (DataComp's code:
    /// every row scoring >= the (B+1)-th largest score, k-means on the
    /// embeddings as given).
    #[arg(long, value_enum, default_value = "clipcov")]
    pub rule: Rule,
    /// datacomp_image_based: pool centroids, .npy [C, d], used instead of
    /// k-means (e.g. an earlier run's centroids.npy, or DataComp's).
    #[arg(long)]
    pub centroids: Option<PathBuf>,
}

#[derive(Args, Clone, Debug)]
pub struct BaselineArgs {
    /// The method (docs/baselines.md).
    #[arg(value_enum)]
    pub method: Method,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub options: MethodArgs,
}

fn positive(name: &str, v: f64) -> Result<f64> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(Error::Usage(format!(
            "--{name} {v} must be a positive number"
        )))
    }
}

/// `--threads`, defaulting to every core.
pub fn threads(flag: Option<usize>) -> Result<usize> {
    let n = flag.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    at_least_one("threads", n)
}

fn at_least_one(name: &str, v: usize) -> Result<usize> {
    if v == 0 {
        Err(Error::Usage(format!("--{name} must be at least 1")))
    } else {
        Ok(v)
    }
}

fn fraction(name: &str, f: f64) -> Result<f64> {
    if f > 0.0 && f <= 1.0 {
        Ok(f)
    } else {
        Err(Error::Usage(format!("--{name} {f} must be in (0, 1]")))
    }
}

impl DataArgs {
    pub fn budget(&self) -> Result<Option<Budget>> {
        Ok(match (self.fraction, self.budget) {
            (Some(f), _) => Some(Budget::Fraction(fraction("fraction", f)?)),
            (None, Some(0)) => {
                return Err(Error::Usage(
                    "--budget 0 keeps no rows; give a budget of at least 1".into(),
                ))
            }
            (None, Some(b)) => Some(Budget::Count(b)),
            (None, None) => None,
        })
    }

    /// The staging config (also ClipCov's, in `compare`).
    pub fn config(&self, classes: ClassSource) -> Result<SelectConfig> {
        let threads = threads(self.threads)?;
        if let Some(t) = self.tile_rows {
            at_least_one("tile-rows", t)?;
        }
        let mut outputs: Vec<(&str, &Path)> = vec![("--out", &self.out)];
        if let Some(w) = &self.work {
            outputs.push(("--work", w));
        }
        crate::io::outdir::check_outside_inputs(&outputs, &[("--data", &self.data)])?;
        // A URL --out: work in a local folder, upload the results at the end.
        let (out, publish_to) = if remote::is_url(&self.out) {
            remote::locate(&self.out)?;
            let work = remote::work_dir(&self.out, self.work.as_deref());
            if !crate::progress::quiet() {
                eprintln!(
                    "clipcov: working in {}, results go to {}",
                    work.display(),
                    self.out.display()
                );
            }
            (work, Some(self.out.clone()))
        } else {
            (self.out.clone(), None)
        };
        Ok(SelectConfig {
            data: self.data.clone(),
            classes,
            budget: self.budget()?.unwrap_or(Budget::Count(0)),
            out,
            publish_to,
            tau: Tau::Threshold(0.0),
            refresh: Refresh::Auto,
            refresh_mode: Default::default(),
            cross: Default::default(),
            weights: Weights::default(),
            memory_limit_bytes: parse_size(&self.memory_limit)?,
            threads,
            tile_rows: self.tile_rows,
            chunk_rows: None,
            columns: self.rows.columns(),
            on_bad_row: self.rows.on_bad_row,
            on_duplicate: self.rows.on_duplicate,
            seed: self.seed,
            assign_text: false,
            fresh: self.fresh,
            layout: self.layout,
            model: self.model,
            keep_columns: self.keep_columns.clone(),
            train_csv: self
                .train_csv
                .map(|f| {
                    TrainCsv::new(
                        f,
                        self.image_path_column.as_deref(),
                        self.caption_column.as_deref(),
                        self.image_root.as_deref(),
                    )
                })
                .transpose()?,
            filter: self.filter.clone(),
        })
    }
}

impl MethodArgs {
    /// c_rho's learner data, when `--learner-data` is given.
    pub fn learner(&self) -> Option<LearnerData> {
        self.learner_data.as_ref().map(|d| LearnerData {
            data: d.clone(),
            image_column: self.learner_image_column.clone(),
            text_column: self.learner_text_column.clone(),
        })
    }

    pub fn options(&self, data: &DataArgs) -> Result<MethodOptions> {
        if let Some(c) = self.clusters {
            at_least_one("clusters", c)?;
        }
        if let Some(l) = self.learner_data.as_ref().filter(|l| !remote::is_url(l)) {
            // Fail before staging the main data, not after.
            std::fs::metadata(l).at_path(l)?;
            let mut outputs: Vec<(&str, &Path)> = vec![("--out", &data.out)];
            if let Some(w) = &data.work {
                outputs.push(("--work", w));
            }
            crate::io::outdir::check_outside_inputs(&outputs, &[("--learner-data", l)])?;
        }
        if let Some(e) = self.eps {
            if !e.is_finite() {
                return Err(Error::Usage(format!("--eps {e} must be a finite number")));
            }
        }
        if let Some(t) = self.threshold {
            if !t.is_finite() {
                return Err(Error::Usage(format!(
                    "--threshold {t} must be a finite number"
                )));
            }
        }
        Ok(MethodOptions {
            budget: data.budget()?,
            seed: data.seed,
            clusters: self.clusters,
            kmeans_iterations: self.kmeans_iterations,
            eps: self.eps,
            threshold: self.threshold,
            temperature: positive("temperature", self.temperature)?,
            neg_batches: at_least_one("neg-batches", self.neg_batches)?,
            neg_batch_size: at_least_one("neg-batch-size", self.neg_batch_size)?,
            rho_sample: at_least_one("rho-sample", self.rho_sample)?,
            intersect_clip_score: self
                .intersect_clip_score
                .map(|f| fraction("intersect-clip-score", f))
                .transpose()?,
            targets: self.targets.clone(),
            rule: self.rule,
            centroids: self.centroids.clone(),
        })
    }
}

impl BaselineArgs {
    /// The validated run.
    pub fn into_job(self) -> Result<BaselineJob> {
        let opts = self.options.options(&self.data)?;
        Ok(BaselineJob {
            method: self.method,
            cfg: self.data.config(ClassSource::Single)?,
            opts,
            learner: self.options.learner(),
        })
    }
}
