//! Every flag of the command line (clap types) and the step from raw flags
//! to a validated job configuration.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use super::method_args::DataArgs;
use crate::error::Error;
use crate::jobs::config::SelectConfig;
use crate::progress::LogFormat;
use crate::stages::classes::ClassSource;
use crate::stages::score::CrossSample;
use crate::synth::SynthOptions;
use crate::Result;

#[derive(Parser)]
#[command(
    name = "clipcov",
    version,
    about = "Select CLIP pretraining subsets that preserve image-caption cross-covariance"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Stage events: progress bars on a terminal, else one line per stage start and end (text), or JSON lines on stderr (json).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// No progress, no stage events, no summary: only errors.
    #[arg(long, global = true)]
    pub quiet: bool,
}

#[derive(Subcommand)]
pub enum Command {
    /// Make a demo dataset, select from it, print a summary.
    Demo {
        /// Folder for the demo data and results.
        #[arg(long, default_value = "clipcov-demo")]
        out: PathBuf,
    },
    /// Write a synthetic latent-class dataset (shards, prompts, eval set).
    Synth(SynthArgs),
    /// Select a ClipCov subset.
    Select(Box<SelectArgs>),
    /// Run one baseline method (random, clip_score, semdedup, ssp, c_rho, ...).
    Baseline(Box<super::method_args::BaselineArgs>),
    /// Run ClipCov and the baselines side by side on the same data and budget.
    Compare(Box<super::compare_args::CompareArgs>),
    /// Measure speed and memory on synthetic data (see README, Performance).
    Bench(Box<crate::jobs::bench::BenchArgs>),
    /// Score a subset: covariance preservation, a linear-CLIP proxy, kinds.
    Eval(Box<super::eval_args::EvalArgs>),
    /// Run a pipeline file (pipelines/<name>.toml); flags after it override its values.
    Run {
        /// The pipeline file (TOML).
        file: PathBuf,
        /// Flags of the file's command that override the file's values.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        overrides: Vec<String>,
    },
}

#[derive(Args)]
pub struct SynthArgs {
    #[arg(long)]
    pub rows: u64,
    #[arg(long)]
    pub classes: usize,
    #[arg(long)]
    pub dim: usize,
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
    /// Write float16 embeddings (default float32).
    #[arg(long)]
    pub f16: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Zipf exponent of class sizes; 0 gives classes of equal expected size.
    #[arg(long, default_value_t = 0.8)]
    pub zipf: f64,
    #[arg(long, default_value_t = 0.1)]
    pub mismatch_rate: f64,
    #[arg(long, default_value_t = 0.05)]
    pub duplicate_rate: f64,
    #[arg(long, default_value_t = 0.05)]
    pub junk_rate: f64,
    /// Per-modality noise (relative to the signal).
    #[arg(long, default_value_t = 0.9)]
    pub noise: f64,
    /// Rows of the labelled evaluation set.
    #[arg(long, default_value_t = 2000)]
    pub eval_rows: u64,
    /// Also write a placeholder image per pair (OUT/images/<id>.png) and an
    /// image_path column naming it, for --train-csv (--image-root OUT).
    #[arg(long)]
    pub images: bool,
    /// Data model: one subspace shared by all classes, or class-local
    /// (superclasses of confusable siblings whose detail lives in their
    /// own latent directions; also writes classes.csv).
    #[arg(long, value_enum, default_value = "shared")]
    pub model: SynthModel,
    #[command(flatten)]
    pub local: LocalArgs,
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SynthModel {
    Shared,
    ClassLocal,
}

/// The class-local model's options (`--model class-local` only).
#[derive(Args, Clone, Debug)]
pub struct LocalArgs {
    /// Superclasses (default: classes / 10, rounded up).
    #[arg(long)]
    pub superclasses: Option<usize>,
    /// Latent directions of each superclass [default: 4].
    #[arg(long)]
    pub local_dims: Option<usize>,
    /// Share of classes whose captions only name the superclass [default: 0.2].
    #[arg(long)]
    pub weak_captions: Option<f64>,
    /// Where the weak-caption classes sit in the size order [default: random].
    #[arg(long, value_enum)]
    pub weak_at: Option<crate::synth::Placement>,
    /// Share of mismatches that take a sibling's caption [default: 0.5].
    #[arg(long)]
    pub sibling_mismatch: Option<f64>,
    /// Distinct viral pairs the duplicates copy [default: 20].
    #[arg(long)]
    pub viral_pool: Option<usize>,
    /// Share of spam rows: well-aligned pairs on topics of no class [default: 0.03].
    #[arg(long)]
    pub spam_rate: Option<f64>,
    /// Spam topics [default: 5].
    #[arg(long)]
    pub spam_topics: Option<usize>,
}

impl LocalArgs {
    /// The options, or a usage error when one is given for the shared model.
    pub fn options(&self, model: SynthModel) -> Result<Option<crate::synth::LocalOptions>> {
        let given = self.superclasses.is_some()
            || self.local_dims.is_some()
            || self.weak_captions.is_some()
            || self.weak_at.is_some()
            || self.sibling_mismatch.is_some()
            || self.viral_pool.is_some()
            || self.spam_rate.is_some()
            || self.spam_topics.is_some();
        if model == SynthModel::Shared {
            if given {
                return Err(Error::Usage(
                    "--superclasses, --local-dims, --weak-captions, --weak-at, --sibling-mismatch, \
                     --viral-pool, --spam-rate and --spam-topics need --model class-local"
                        .into(),
                ));
            }
            return Ok(None);
        }
        let def = crate::synth::LocalOptions::default();
        let share = |name: &str, v: Option<f64>, d: f64| -> Result<f64> {
            let v = v.unwrap_or(d);
            if (0.0..=1.0).contains(&v) {
                Ok(v)
            } else {
                Err(Error::Usage(format!("--{name} {v} must be in [0, 1]")))
            }
        };
        Ok(Some(crate::synth::LocalOptions {
            superclasses: self.superclasses.unwrap_or(def.superclasses),
            local_dims: self.local_dims.unwrap_or(def.local_dims).max(1),
            weak_share: share("weak-captions", self.weak_captions, def.weak_share)?,
            weak_at: self.weak_at.unwrap_or(def.weak_at),
            sibling_mismatch: share(
                "sibling-mismatch",
                self.sibling_mismatch,
                def.sibling_mismatch,
            )?,
            viral_pool: self.viral_pool.unwrap_or(def.viral_pool).max(1),
            spam_rate: share("spam-rate", self.spam_rate, def.spam_rate)?,
            spam_topics: self.spam_topics.unwrap_or(def.spam_topics).max(1),
        }))
    }
}

/// `select`: the shared input flags plus ClipCov's own.
#[derive(Args, Clone)]
pub struct SelectArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Class prompts (Parquet: class_id, name, text_embedding).
    #[arg(long, conflicts_with = "clusters")]
    pub prompts: Option<PathBuf>,
    /// Latent classes from spherical k-means with this many clusters instead of prompts.
    #[arg(long)]
    pub clusters: Option<usize>,
    /// Similarity threshold: a number (default 0), or 'none' for the linear-time form.
    #[arg(long, default_value = "0")]
    pub tau: String,
    /// Refresh period R of the greedy: 'auto' (0.705 x the picks per class) or a number (200 = the notebook).
    #[arg(long, default_value = "auto")]
    pub refresh: String,
    /// lazy (default; eager where lazy is not exact) or eager: same picks.
    #[arg(long, hide = true, default_value = "lazy")]
    pub refresh_mode: String,
    /// cross term: 'exact', or estimated in classes of more than M rows from a
    /// seeded (--seed) uniform sample of M rows, or 'auto' (M from --cross-error).
    #[arg(long, default_value = "exact")]
    pub cross_sample: String,
    /// Target standard error of cross_i for --cross-sample auto.
    #[arg(long, default_value_t = 1e-3)]
    pub cross_error: f64,
    /// w_cross,w_easy,w_label,w_between.
    #[arg(long, default_value = "1,2,0.5,1")]
    pub weights: String,
    /// Rows per chunk of a class in the store (default: planned from --memory-limit).
    #[arg(long, hide = true)]
    pub chunk_rows: Option<usize>,
    #[arg(long, default_value_t = 20)]
    pub kmeans_iterations: usize,
    /// Assign latent classes from the image or the caption embedding.
    #[arg(long, default_value = "image", value_parser = ["image", "text"])]
    pub assign: String,
}

impl SelectArgs {
    pub fn into_config(self) -> Result<SelectConfig> {
        let classes = match (&self.prompts, self.clusters) {
            (Some(p), None) => ClassSource::Prompts(p.clone()),
            (None, Some(k)) if k > 0 => ClassSource::KMeans {
                clusters: k,
                iterations: self.kmeans_iterations,
            },
            (None, Some(_)) => return Err(Error::Usage("--clusters must be at least 1".into())),
            _ => {
                return Err(Error::Usage(
                    "give --prompts FILE (zero-shot classes) or --clusters K (k-means classes)"
                        .into(),
                ))
            }
        };
        if self.data.budget()?.is_none() {
            return Err(Error::Usage("give --fraction F or --budget COUNT".into()));
        }
        let refresh = self.refresh.parse().map_err(Error::Usage)?;
        let mut cfg = self.data.config(classes)?;
        cfg.tau = self.tau.parse()?;
        cfg.refresh = refresh;
        cfg.refresh_mode = self.refresh_mode.parse().map_err(Error::Usage)?;
        cfg.cross =
            CrossSample::parse(&self.cross_sample, self.cross_error).map_err(Error::Usage)?;
        cfg.weights = self.weights.parse()?;
        cfg.chunk_rows = self.chunk_rows;
        cfg.assign_text = self.assign == "text";
        Ok(cfg)
    }
}

/// Parses `select`'s flags `args` (without the program name) and validates
/// them, as `clipcov select` does: for the Python bindings. A flag clap
/// rejects is a usage error with clap's one-line message.
pub fn select_config(args: &[String]) -> Result<SelectConfig> {
    #[derive(Parser)]
    #[command(name = "clipcov select")]
    struct Wrap {
        #[command(flatten)]
        a: SelectArgs,
    }
    let mut v: Vec<&str> = vec!["clipcov select"];
    v.extend(args.iter().map(String::as_str));
    let w = Wrap::try_parse_from(v).map_err(|e| {
        let text = e.render().to_string();
        let line = text.lines().next().unwrap_or_default();
        Error::Usage(line.trim_start_matches("error: ").to_string())
    })?;
    w.a.into_config()
}

pub fn synth_options(a: &SynthArgs) -> Result<SynthOptions> {
    Ok(SynthOptions {
        rows: a.rows,
        classes: a.classes,
        dim: a.dim,
        shards: a.shards,
        f16: a.f16,
        seed: a.seed,
        zipf: a.zipf,
        mismatch_rate: a.mismatch_rate,
        duplicate_rate: a.duplicate_rate,
        junk_rate: a.junk_rate,
        noise: a.noise,
        eval_rows: a.eval_rows,
        images: a.images,
        class_local: a.local.options(a.model)?,
    })
}
