//! `clipcov select`'s flags (clap) and their validation into a
//! [`SelectConfig`]: shared by the command line and the Python bindings, so
//! both run the same job from the same flags.

use std::path::PathBuf;

use clap::{Args, Parser};

use crate::error::{Error, Result};
use crate::methods::cli::DataArgs;
use crate::pipeline::{self, ClassSource, SelectConfig};
use crate::score::CrossSample;
use crate::select::Refresh;

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
    /// The validated configuration, or a usage error.
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
        cfg.tau = pipeline::parse_tau(&self.tau)?;
        cfg.refresh = refresh;
        cfg.refresh_mode = self.refresh_mode.parse().map_err(Error::Usage)?;
        cfg.cross =
            CrossSample::parse(&self.cross_sample, self.cross_error).map_err(Error::Usage)?;
        cfg.weights = pipeline::parse_weights(&self.weights)?;
        cfg.chunk_rows = self.chunk_rows;
        cfg.assign_text = self.assign == "text";
        Ok(cfg)
    }
}

impl SelectArgs {
    /// The demo's arguments: data, prompts, output and its select table.
    pub fn parse_from_demo(
        data: PathBuf,
        prompts: PathBuf,
        fraction: f64,
        out: PathBuf,
        tau: &str,
        refresh: Refresh,
        weights: &str,
    ) -> Self {
        let mut a = SelectArgs::try_parse_from_args(&[
            "--data".as_ref(),
            data.as_os_str(),
            "--prompts".as_ref(),
            prompts.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ]);
        a.data.fraction = Some(fraction);
        a.tau = tau.to_string();
        a.refresh = refresh.to_string();
        a.weights = weights.to_string();
        a
    }

    /// Parses the flags `args` (without the program name); exits on an error
    /// as a command line does.
    pub fn try_parse_from_args(args: &[&std::ffi::OsStr]) -> Self {
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            a: SelectArgs,
        }
        let mut v: Vec<&std::ffi::OsStr> = vec!["clipcov".as_ref()];
        v.extend_from_slice(args);
        Wrap::parse_from(v).a
    }
}

/// Parses `select`'s flags `args` (without the program name) and validates
/// them; a flag clap rejects is a usage error with clap's one-line message.
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
