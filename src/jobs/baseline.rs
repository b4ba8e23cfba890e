//! `clipcov baseline <method> ...`: the arguments as typed, validated into
//! a staging config and [`MethodOptions`], and the run: stage the data once
//! (one class holding every row), run the method, write its files and the
//! manifest.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;

use crate::error::{Error, IoContext, Result};
use crate::formats::dataset::Columns;
use crate::formats::dataset::{Layout, Model};
use crate::io::remote;
use crate::jobs::pipeline::{self, SelectConfig, Staged};
use crate::jobs::shell::{learner_store, print_published, run_job};
use crate::memory::{parse_size, RssMonitor};
use crate::methods::c_rho::Learner;
use crate::methods::{Ctx, Method, MethodOptions, Rule, Selection};
use crate::output::emit::{self, Manifest, StageTiming};
use crate::output::method_files;
use crate::output::publish::OutputSet;
use crate::output::train_csv::{TrainCsv, TrainFormat};
use crate::stages::classes::ClassSource;
use crate::stages::ingest::{BadRowPolicy, DuplicatePolicy};
use crate::stages::score::Tau;
use crate::stages::select::Budget;
use crate::stages::select::{Refresh, Weights};

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
        let threads = self
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        at_least_one("threads", threads)?;
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

/// The timing of a stage that is not an input pass.
pub fn timing(stage: &str, seconds: f64, rows: u64) -> StageTiming {
    crate::progress::stage_end(stage, seconds, rows);
    StageTiming {
        stage: stage.to_string(),
        seconds,
        rows,
        rows_per_second: if seconds > 0.0 {
            rows as f64 / seconds
        } else {
            0.0
        },
        bytes_read: 0,
        gb_per_second: 0.0,
        kernels: None,
        refresh: None,
    }
}

/// Stages c_rho's learner data beside the main store (`OUT/learner-store`).
pub fn stage_learner(
    cfg: &SelectConfig,
    args: &MethodArgs,
    timings: &mut Vec<StageTiming>,
) -> Result<Option<Staged>> {
    let Some(dir) = &args.learner_data else {
        return Ok(None);
    };
    let mut lcfg = cfg.clone();
    lcfg.data = dir.clone();
    lcfg.classes = ClassSource::Single;
    // The learner's rows are matched to the main store's by row index, so
    // it stages every row; its data need not carry the metadata.
    lcfg.filter = None;
    lcfg.train_csv = None;
    if let Some(c) = &args.learner_image_column {
        lcfg.columns.image = c.clone();
    }
    if let Some(c) = &args.learner_text_column {
        lcfg.columns.text = c.clone();
    }
    let mut t = Vec::new();
    let staged = pipeline::stage_data(&lcfg, &learner_store(&cfg.out), &mut t)?;
    for mut s in t {
        s.stage = format!("learner {}", s.stage);
        timings.push(s);
    }
    Ok(Some(staged))
}

/// Matches a staged learner to the main rows.
pub fn learner<'a>(
    ctx: &Ctx,
    main: &Staged,
    learner: Option<&'a Staged>,
) -> Result<Option<Learner<'a>>> {
    learner
        .map(|l| {
            Learner::match_rows(
                ctx,
                &main.ingested,
                &l.store,
                &l.files,
                &l.ingested,
                &main.columns.id,
            )
        })
        .transpose()
}

/// Runs `clipcov baseline`.
pub fn run_baseline(a: BaselineArgs) -> Result<()> {
    let opts = a.options.options(&a.data)?;
    crate::methods::check(a.method, &opts, a.options.learner_data.is_some())?;
    // `compare` runs several methods with one set of options; here a flag
    // the method would ignore is a mistake.
    let (dc, image) = (
        Method::DatacompImageBased,
        a.method == Method::DatacompImageBased,
    );
    if opts.rule == Rule::Datacomp && !(image || a.method == Method::ClipScore) {
        return Err(Error::Usage(format!(
            "--rule datacomp applies to clip_score and {}, not {}",
            dc.name(),
            a.method.name()
        )));
    }
    if opts.centroids.is_some() && !image {
        return Err(Error::Usage(format!(
            "--centroids applies to {} only, not {}",
            dc.name(),
            a.method.name()
        )));
    }
    if opts.centroids.is_some() && opts.clusters.is_some() {
        return Err(Error::Usage(
            "--centroids sets the clusters: give --clusters C or --centroids FILE, not both".into(),
        ));
    }
    let cfg = a.data.config(ClassSource::Single)?;
    let ((manifest, sel_summary), published) =
        run_job(&cfg.out, cfg.threads, cfg.publish_to.as_deref(), || {
            baseline(a.method, &cfg, &opts, &a.options)
        })?;
    if crate::progress::quiet() {
        return Ok(());
    }
    let r = manifest.rows.as_ref();
    println!(
        "{}: kept {} of {} rows{} in {:.2} s",
        a.method.name(),
        r.map_or(0, |r| r.selected),
        r.map_or(0, |r| r.used),
        sel_summary,
        manifest.seconds_total
    );
    for t in &manifest.stages {
        println!("  {:<16} {:>8.3} s", t.stage, t.seconds);
    }
    for f in &manifest.outputs {
        println!("  wrote {}", cfg.out.join(&f.path).display());
    }
    let own = Path::new(a.method.name()).join("manifest.json");
    println!("  wrote {}", cfg.out.join(own).display());
    println!("  wrote {}", cfg.out.join("manifest.json").display());
    print_published(cfg.publish_to.as_deref(), &published);
    Ok(())
}

/// One line of what a selection did beyond its row count.
pub fn describe(sel: &Selection) -> String {
    let mut s = String::new();
    if let (Some(c), Some(k)) = (sel.clusters_covered(), sel.clusters) {
        s.push_str(&format!(" from {c} of {k} clusters"));
    }
    for (key, v) in &sel.report {
        if key == "eps" {
            match v.as_f64() {
                Some(e) => s.push_str(&format!(", eps = {e}")),
                None => s.push_str(", no finite eps gives this budget"),
            }
        }
        if key == "clusters_with_targets" {
            s.push_str(&format!(", {v} clusters received a target"));
        }
        if key == "rule" && v == "datacomp" {
            s.push_str(", DataComp's rule");
        }
        if key == "threshold" || key == "clip_score_threshold" {
            s.push_str(&format!(", CLIP score >= {v}"));
        }
    }
    s
}

fn baseline(
    method: Method,
    cfg: &SelectConfig,
    opts: &MethodOptions,
    args: &MethodArgs,
) -> Result<(Manifest, String)> {
    let started = Instant::now();
    let monitor = RssMonitor::start();
    let mut timings = Vec::new();
    let staged = pipeline::stage_data(cfg, &cfg.out.join("store"), &mut timings)?;
    let ctx = Ctx::new(&staged.store, staged.tile_rows);
    let lstaged = if method == Method::CRho {
        stage_learner(cfg, args, &mut timings)?
    } else {
        None
    };
    let learner = learner(&ctx, &staged, lstaged.as_ref())?;
    let n = ctx.n() as u64;
    let budget_warning = match opts.budget {
        Some(b) => b.checked_rows(n)?.1,
        None => None,
    };
    // Every output is staged and published as one set at the end.
    let mut set = OutputSet::new(&cfg.out)?;
    emit::replace_optional_outputs(&mut set, method.name());
    let staging = set.dir().to_path_buf();
    let t = Instant::now();
    crate::progress::stage_start(method.name(), n);
    let sel = crate::methods::run(method, &ctx, opts, &staging, learner.as_ref())?;
    if sel.picks.is_empty() {
        return Err(Error::Usage(format!(
            "{} keeps none of the {n} rows with these options{}; loosen them",
            method.name(),
            describe(&sel)
        )));
    }
    for s in ctx.shared_stages() {
        timings.push(timing(&s.stage, s.seconds, n));
    }
    timings.push(timing(
        method.name(),
        t.elapsed().as_secs_f64() - ctx.shared_seconds(),
        n,
    ));
    let t = Instant::now();
    let mut outputs = method_files::write_subset(&staging, &ctx, &sel, &staged.extras(cfg))?;
    if !staged.ingested.rejects.is_empty() {
        let rp = staging.join("rejects.parquet");
        emit::write_rejects(&rp, &staged.ingested.rejects)?;
        outputs.push(crate::io::written::record(
            &staging,
            &rp,
            staged.ingested.rejects.len() as u64,
        )?);
    }
    timings.push(timing(
        "emit",
        t.elapsed().as_secs_f64(),
        sel.picks.len() as u64,
    ));
    let budget = opts.budget.map_or(0, |b| b.rows(n) as usize);
    let m = Manifest {
        method: method.name().into(),
        outputs,
        classes_selected: sel.clusters_covered().unwrap_or(0),
        ..Default::default()
    };
    let mut m = emit::finish_manifest(
        m,
        cfg.manifest_parameters(),
        cfg.refresh
            .period(budget, staged.store.meta.nonempty_classes()),
        &staged.files,
        &staged.ingested,
        &staged.store.meta,
        budget,
        timings,
        monitor.report(),
        staged.plan,
        staged.tile_rows,
        started.elapsed().as_secs_f64(),
    );
    m.warnings.extend(budget_warning);
    m.parameters = serde_json::json!({
        "method": method.name(),
        "data": cfg.data,
        "layout": staged.layout.name(),
        "keep_columns": cfg.keep_columns,
        "train_csv": cfg.train_csv,
        "where": cfg.filter,
        "learner_data": args.learner_data,
        "out": cfg.out,
        "budget": opts.budget,
        "budget_rows": budget,
        "options": opts,
        "report": sel.report,
        "clusters": sel.clusters,
        "threads": cfg.threads,
        "memory_limit_bytes": cfg.memory_limit_bytes,
        "tile_rows": staged.tile_rows,
        "columns": staged.columns,
        "on_bad_row": cfg.on_bad_row,
        "on_duplicate": cfg.on_duplicate,
        "d": staged.store.meta.d,
        "store_dtype": staged.store.meta.dtype,
    });
    emit::write_manifests(&cfg.out, &staging, &mut m)?;
    set.commit()?;
    Ok((m, describe(&sel)))
}
