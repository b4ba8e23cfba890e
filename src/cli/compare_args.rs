//! The flags of `compare`, validated into a [`CompareJob`].

use std::path::PathBuf;

use clap::Args;

use super::eval_args::ProxyArgs;
use super::method_args::{DataArgs, MethodArgs};
use crate::error::{Error, Result};
use crate::jobs::compare::{parse_methods, CompareJob, Entry, DEFAULT_METHODS};
use crate::stages::classes::ClassSource;

#[derive(Args, Clone, Debug)]
pub struct CompareArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Class prompts for ClipCov (Parquet: class_id, name, text_embedding).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Methods to run, comma-separated: clipcov and any baseline.
    #[arg(long, default_value = DEFAULT_METHODS)]
    pub methods: String,
    /// ClipCov: similarity threshold, a number or 'none'.
    #[arg(long, default_value = "0")]
    pub tau: String,
    /// ClipCov: refresh period R of the greedy, 'auto' or a number.
    #[arg(long, default_value = "auto")]
    pub refresh: String,
    /// ClipCov: w_cross,w_easy,w_label,w_between.
    #[arg(long, default_value = "1,2,0.5,1")]
    pub weights: String,
    #[command(flatten)]
    pub options: MethodArgs,
    /// Labelled eval images (Parquet: id, image_embedding, label): adds the
    /// eval metrics of every method (needs --prompts).
    #[arg(long)]
    pub eval_set: Option<PathBuf>,
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Several budgets in one run (with --eval-set), e.g. 0.02,0.05,0.1:
    /// methods run once at the largest; a smaller budget evaluates each
    /// method's rank prefix (see compare.md for methods that are not
    /// prefix-consistent).
    #[arg(long, conflicts_with_all = ["fraction", "budget"])]
    pub fractions: Option<String>,
    /// Subset seeds of methods that have one (random), for the spread of
    /// their eval metrics over seeds.
    #[arg(long, default_value_t = 3)]
    pub subset_seeds: usize,
}

/// `--fractions`: distinct fractions in (0, 1], ascending.
fn parse_fractions(s: &str) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for x in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        let f: f64 = x.parse().map_err(|_| {
            Error::Usage(format!(
                "--fractions: '{x}' is not a number; give e.g. 0.02,0.05,0.1"
            ))
        })?;
        if !(f > 0.0 && f <= 1.0) {
            return Err(Error::Usage(format!("--fractions: {f} is not in (0, 1]")));
        }
        out.push(f);
    }
    if out.is_empty() {
        return Err(Error::Usage("--fractions is empty".into()));
    }
    out.sort_by(f64::total_cmp);
    out.dedup();
    Ok(out)
}

impl CompareArgs {
    /// The validated run.
    pub fn into_job(mut self) -> Result<CompareJob> {
        let a = &mut self;
        let entries = parse_methods(&a.methods)?;
        let fractions = match &a.fractions {
            Some(f) => {
                if a.eval_set.is_none() {
                    return Err(Error::Usage(
                        "--fractions needs --eval-set (it evaluates each budget)".into(),
                    ));
                }
                let f = parse_fractions(f)?;
                a.data.fraction = f.last().copied();
                Some(f)
            }
            None => None,
        };
        if a.subset_seeds == 0 {
            return Err(Error::Usage("--subset-seeds must be at least 1".into()));
        }
        let opts = a.options.options(&a.data)?;
        if opts.budget.is_none() {
            return Err(Error::Usage(
                "compare needs a budget: give --fraction F or --budget COUNT".into(),
            ));
        }
        let with_clipcov = entries.contains(&Entry::ClipCov);
        let eval_opts = match (&a.eval_set, &a.prompts) {
            (Some(_), None) => {
                return Err(Error::Usage(
                    "--eval-set needs --prompts FILE (zero-shot classes and latent classes)".into(),
                ))
            }
            (Some(_), Some(_)) => Some(a.proxy.options(a.data.seed)?),
            _ => None,
        };
        let classes =
            match (&a.prompts, with_clipcov) {
                (Some(p), _) => ClassSource::Prompts(p.clone()),
                (None, false) => ClassSource::Single,
                (None, true) => return Err(Error::Usage(
                    "clipcov in --methods needs --prompts FILE (or leave clipcov out of --methods)"
                        .into(),
                )),
            };
        let mut cfg = a.data.config(classes)?;
        cfg.tau = a.tau.parse()?;
        cfg.weights = a.weights.parse()?;
        cfg.refresh = a.refresh.parse().map_err(Error::Usage)?;
        Ok(CompareJob {
            entries,
            cfg,
            opts,
            learner: a.options.learner(),
            prompts: self.prompts,
            eval_set: self.eval_set,
            eval_opts,
            fractions,
            subset_seeds: self.subset_seeds,
        })
    }
}
