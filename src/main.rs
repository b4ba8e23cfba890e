//! The `clipcov` command line: parse, validate into a config, call the
//! library, and map any error to one line and an exit status.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::Deserialize;

use clipcov::cli::pipeline_file::PipelineFile;
use clipcov::error::Error;
use clipcov::io::remote;
use clipcov::jobs::baseline::DataArgs;
use clipcov::jobs::pipeline::{self, ClassSource, SelectConfig};
use clipcov::progress::{self, LogFormat};
use clipcov::stages::score::CrossSample;
use clipcov::stages::select::Refresh;
use clipcov::synth::{self, SynthOptions};
use clipcov::Result;

#[derive(Parser)]
#[command(
    name = "clipcov",
    version,
    about = "Select CLIP pretraining subsets that preserve image-caption cross-covariance"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Stage events: progress bars on a terminal, else one line per stage start and end (text), or JSON lines on stderr (json).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// No progress, no stage events, no summary: only errors.
    #[arg(long, global = true)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
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
    Baseline(Box<clipcov::jobs::baseline::BaselineArgs>),
    /// Run ClipCov and the baselines side by side on the same data and budget.
    Compare(Box<clipcov::jobs::compare::CompareArgs>),
    /// Measure speed and memory on synthetic data (see README, Performance).
    Bench(Box<clipcov::jobs::bench::BenchArgs>),
    /// Score a subset: covariance preservation, a linear-CLIP proxy, kinds.
    Eval(Box<clipcov::jobs::eval::EvalArgs>),
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
struct SynthArgs {
    #[arg(long)]
    rows: u64,
    #[arg(long)]
    classes: usize,
    #[arg(long)]
    dim: usize,
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Write float16 embeddings (default float32).
    #[arg(long)]
    f16: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Zipf exponent of class sizes; 0 gives classes of equal expected size.
    #[arg(long, default_value_t = 0.8)]
    zipf: f64,
    #[arg(long, default_value_t = 0.1)]
    mismatch_rate: f64,
    #[arg(long, default_value_t = 0.05)]
    duplicate_rate: f64,
    #[arg(long, default_value_t = 0.05)]
    junk_rate: f64,
    /// Per-modality noise (relative to the signal).
    #[arg(long, default_value_t = 0.9)]
    noise: f64,
    /// Rows of the labelled evaluation set.
    #[arg(long, default_value_t = 2000)]
    eval_rows: u64,
    /// Also write a placeholder image per pair (OUT/images/<id>.png) and an
    /// image_path column naming it, for --train-csv (--image-root OUT).
    #[arg(long)]
    images: bool,
    /// Data model: one subspace shared by all classes, or class-local
    /// (superclasses of confusable siblings whose detail lives in their
    /// own latent directions; also writes classes.csv).
    #[arg(long, value_enum, default_value = "shared")]
    model: SynthModel,
    #[command(flatten)]
    local: LocalArgs,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum SynthModel {
    Shared,
    ClassLocal,
}

/// The class-local model's options (`--model class-local` only).
#[derive(Args, Clone, Debug)]
struct LocalArgs {
    /// Superclasses (default: classes / 10, rounded up).
    #[arg(long)]
    superclasses: Option<usize>,
    /// Latent directions of each superclass [default: 4].
    #[arg(long)]
    local_dims: Option<usize>,
    /// Share of classes whose captions only name the superclass [default: 0.2].
    #[arg(long)]
    weak_captions: Option<f64>,
    /// Where the weak-caption classes sit in the size order [default: random].
    #[arg(long, value_enum)]
    weak_at: Option<clipcov::synth::Placement>,
    /// Share of mismatches that take a sibling's caption [default: 0.5].
    #[arg(long)]
    sibling_mismatch: Option<f64>,
    /// Distinct viral pairs the duplicates copy [default: 20].
    #[arg(long)]
    viral_pool: Option<usize>,
    /// Share of spam rows: well-aligned pairs on topics of no class [default: 0.03].
    #[arg(long)]
    spam_rate: Option<f64>,
    /// Spam topics [default: 5].
    #[arg(long)]
    spam_topics: Option<usize>,
}

impl LocalArgs {
    /// The options, or a usage error when one is given for the shared model.
    fn options(&self, model: SynthModel) -> Result<Option<clipcov::synth::LocalOptions>> {
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
        let def = clipcov::synth::LocalOptions::default();
        let share = |name: &str, v: Option<f64>, d: f64| -> Result<f64> {
            let v = v.unwrap_or(d);
            if (0.0..=1.0).contains(&v) {
                Ok(v)
            } else {
                Err(Error::Usage(format!("--{name} {v} must be in [0, 1]")))
            }
        };
        Ok(Some(clipcov::synth::LocalOptions {
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
struct SelectArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Class prompts (Parquet: class_id, name, text_embedding).
    #[arg(long, conflicts_with = "clusters")]
    prompts: Option<PathBuf>,
    /// Latent classes from spherical k-means with this many clusters instead of prompts.
    #[arg(long)]
    clusters: Option<usize>,
    /// Similarity threshold: a number (default 0), or 'none' for the linear-time form.
    #[arg(long, default_value = "0")]
    tau: String,
    /// Refresh period R of the greedy: 'auto' (0.705 x the picks per class) or a number (200 = the notebook).
    #[arg(long, default_value = "auto")]
    refresh: String,
    /// lazy (default; eager where lazy is not exact) or eager: same picks.
    #[arg(long, hide = true, default_value = "lazy")]
    refresh_mode: String,
    /// cross term: 'exact', or estimated in classes of more than M rows from a
    /// seeded (--seed) uniform sample of M rows, or 'auto' (M from --cross-error).
    #[arg(long, default_value = "exact")]
    cross_sample: String,
    /// Target standard error of cross_i for --cross-sample auto.
    #[arg(long, default_value_t = 1e-3)]
    cross_error: f64,
    /// w_cross,w_easy,w_label,w_between.
    #[arg(long, default_value = "1,2,0.5,1")]
    weights: String,
    /// Rows per chunk of a class in the store (default: planned from --memory-limit).
    #[arg(long, hide = true)]
    chunk_rows: Option<usize>,
    #[arg(long, default_value_t = 20)]
    kmeans_iterations: usize,
    /// Assign latent classes from the image or the caption embedding.
    #[arg(long, default_value = "image", value_parser = ["image", "text"])]
    assign: String,
}

impl SelectArgs {
    fn into_config(self) -> Result<SelectConfig> {
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

fn synth_options(a: &SynthArgs) -> Result<SynthOptions> {
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

fn print_summary(s: &pipeline::SelectSummary, out: &std::path::Path) {
    if progress::quiet() {
        return;
    }
    let m = &s.manifest;
    if let Some(r) = &m.rows {
        println!(
            "selected {} of {} rows ({} read, {} skipped) from {} classes ({} non-empty) in {:.2} s",
            r.selected, r.used, r.read, r.skipped, r.classes_selected, r.classes_nonempty, m.seconds_total
        );
    }
    for t in &m.stages {
        // A stage that reused earlier work or read nothing has no rate.
        let mut line = format!("  {:<12} {:>8.3} s", t.stage, t.seconds);
        if t.rows > 0 && !t.stage.starts_with("reuse") && t.rows_per_second > 0.0 {
            line.push_str(&format!("  {:>12.0} rows/s", t.rows_per_second));
            if t.bytes_read > 0 {
                line.push_str(&format!("  {:>6.2} GB/s", t.gb_per_second));
            }
        }
        println!("{line}");
    }
    if let Some(mem) = &m.memory {
        println!(
            "  peak RSS {:.1} MiB, peak anonymous RSS {:.1} MiB",
            mem.peak_rss_bytes as f64 / 1048576.0,
            mem.peak_anon_rss_bytes as f64 / 1048576.0
        );
    }
    for f in &m.outputs {
        println!("  wrote {}", out.join(&f.path).display());
    }
    println!(
        "  wrote {}",
        out.join(&m.method).join("manifest.json").display()
    );
    println!("  wrote {}", out.join("manifest.json").display());
}

/// The `[synth]` and `[select]` tables of `pipelines/demo.toml`.
#[derive(Deserialize)]
struct DemoFile {
    synth: DemoSynth,
    select: DemoSelect,
}

#[derive(Deserialize)]
struct DemoSynth {
    rows: u64,
    classes: usize,
    dim: usize,
    shards: usize,
    f16: bool,
    seed: u64,
}

#[derive(Deserialize)]
struct DemoSelect {
    fraction: f64,
    tau: String,
    refresh: Refresh,
    weights: Vec<f64>,
}

const DEMO_TOML: &str = include_str!("../pipelines/demo.toml");

fn demo(out: PathBuf) -> Result<()> {
    let file: DemoFile = toml::from_str(DEMO_TOML)
        .map_err(|e| Error::Internal(format!("embedded pipelines/demo.toml: {e}")))?;
    let s = &file.synth;
    let opts = SynthOptions {
        rows: s.rows,
        classes: s.classes,
        dim: s.dim,
        shards: s.shards,
        f16: s.f16,
        seed: s.seed,
        ..SynthOptions::default()
    };
    let data_dir = out.join("dataset");
    if !progress::quiet() {
        println!(
            "making a demo dataset: {} pairs, {} classes, d = {} -> {}",
            s.rows,
            s.classes,
            s.dim,
            data_dir.display()
        );
    }
    let made = synth::synth(&opts, &data_dir)?;
    let w = &file.select.weights;
    let args = SelectArgs::parse_from_demo(
        data_dir.join("data"),
        made.prompts,
        file.select.fraction,
        out.join("result"),
        &file.select.tau,
        file.select.refresh,
        &w.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(","),
    );
    let cfg = args.into_config()?;
    let summary = pipeline::run_select(&cfg)?;
    print_summary(&summary, &cfg.out);
    Ok(())
}

impl SelectArgs {
    fn parse_from_demo(
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

    fn try_parse_from_args(args: &[&std::ffi::OsStr]) -> Self {
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

fn run(cli: Cli) -> Result<()> {
    progress::init(cli.log_format, cli.quiet);
    let global = (cli.log_format, cli.quiet);
    match cli.command {
        Command::Demo { out } => demo(out),
        Command::Synth(a) => {
            // A URL --out: write a fresh local folder, then upload it.
            let (local, url) = if remote::is_url(&a.out) {
                remote::locate(&a.out)?;
                let work = remote::work_dir(&a.out, None);
                let _ = std::fs::remove_dir_all(&work);
                (work, Some(&a.out))
            } else {
                (a.out.clone(), None)
            };
            let s = synth::synth(&synth_options(&a)?, &local)?;
            let uploaded = match url {
                Some(url) => remote::publish(&local, url)?.len(),
                None => 0,
            };
            if progress::quiet() {
                return Ok(());
            }
            // Where the files are now, local or uploaded.
            let at = |p: &std::path::Path| a.out.join(p.strip_prefix(&local).unwrap_or(p));
            println!(
                "wrote {} shard(s) under {}, prompts {}, eval set {}",
                s.shards.len(),
                a.out.join("data").display(),
                at(&s.prompts).display(),
                at(&s.eval).display()
            );
            if let Some(t) = &s.class_table {
                println!("class table {}", at(t).display());
            }
            if let Some(url) = url {
                println!("uploaded {uploaded} files to {}", url.display());
            }
            Ok(())
        }
        Command::Select(a) => {
            let cfg = (*a).into_config()?;
            let summary = pipeline::run_select(&cfg)?;
            print_summary(&summary, &cfg.out);
            if !progress::quiet() {
                pipeline::print_published(&cfg, &summary.published);
            }
            Ok(())
        }
        Command::Baseline(a) => clipcov::jobs::baseline::run_baseline(*a),
        Command::Compare(a) => clipcov::jobs::compare::run_compare(*a),
        Command::Bench(a) => clipcov::jobs::bench::run_bench(&a),
        Command::Eval(a) => clipcov::jobs::eval::run_eval(*a),
        Command::Run { file, overrides } => run_pipeline_file(&file, &overrides, global),
    }
}

/// The clap command with later flags overriding earlier ones (file values
/// first, then the user's flags).
fn overriding_command(sub: &str) -> clap::Command {
    Cli::command().mut_subcommand(sub, |c| c.args_override_self(true))
}

/// The first line of a clap error, without its `error: ` prefix.
fn clap_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let line = text.lines().next().unwrap_or_default();
    line.trim_start_matches("error: ").to_string()
}

/// The value of the last `--flag V` or `--flag=V` in `args`.
fn last_flag(args: &[String], flag: &str) -> Option<String> {
    let mut found = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == flag {
            found = it.next().cloned();
        } else if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
            found = Some(v.to_string());
        }
    }
    found
}

fn run_pipeline_file(
    path: &std::path::Path,
    overrides: &[String],
    (log_format, quiet): (LogFormat, bool),
) -> Result<()> {
    let pf = PipelineFile::load(path)?;
    let cli_cmd = Cli::command();
    let sub = cli_cmd
        .find_subcommand(&pf.command)
        .ok_or_else(|| Error::Internal(format!("no subcommand {}", pf.command)))?;
    for a in &pf.args {
        if !sub
            .get_arguments()
            .any(|x| x.get_long() == Some(&a.flag[2..]))
        {
            return Err(Error::Usage(format!(
                "{}: line {}: unknown key '{}' in [{}]: `clipcov {}` has no {} flag",
                pf.path.display(),
                a.line,
                a.key,
                a.table,
                pf.command,
                a.flag
            )));
        }
    }
    // A missing input the file names is reported with its key and line.
    for a in &pf.args {
        let input = ["data", "prompts", "learner_data", "targets", "eval_set"];
        let p = std::path::Path::new(&a.value);
        if input.contains(&a.key.as_str())
            && last_flag(overrides, &a.flag).is_none()
            && !remote::is_url(p)
        {
            if let Err(e) = std::fs::metadata(p) {
                let at = pf.locate(&a.flag).unwrap_or_default();
                return Err(Error::io(
                    format!("{at} (relative to the file's folder): {}", p.display()),
                    e,
                ));
            }
        }
    }
    let mut argv: Vec<String> = vec!["clipcov".into()];
    argv.extend(pf.argv());
    // A wrong value in the file is reported with its key and line.
    if let Err(e) = overriding_command(&pf.command).try_get_matches_from(&argv) {
        use clap::error::{ContextKind, ContextValue, ErrorKind};
        if matches!(
            e.kind(),
            ErrorKind::InvalidValue | ErrorKind::ValueValidation
        ) {
            if let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) {
                let flag = arg.split_whitespace().next().unwrap_or_default();
                if let Some(at) = pf.locate(flag) {
                    let msg = clap_line(&e);
                    return Err(Error::Usage(format!("{at}: {msg}")));
                }
            }
        }
    }
    // Global flags given before the file still apply.
    if log_format == LogFormat::Json {
        argv.extend(["--log-format".into(), "json".into()]);
    }
    if quiet {
        argv.push("--quiet".into());
    }
    let mut tail: Vec<String> = overrides.to_vec();
    if let Some(opts) = &pf.synth {
        // The demo form: synthesise into OUT/dataset, select into OUT/result.
        let out = last_flag(overrides, "--out")
            .or_else(|| pf.arg("--out").map(|a| a.value.clone()))
            .unwrap_or_else(|| "clipcov-demo".into());
        let out = PathBuf::from(out);
        let data_dir = out.join("dataset");
        if !progress::quiet() {
            println!(
                "making a synthetic dataset: {} pairs, {} classes, d = {} -> {}",
                opts.rows,
                opts.classes,
                opts.dim,
                data_dir.display()
            );
        }
        let made = synth::synth(opts, &data_dir)?;
        if pf.arg("--data").is_none() {
            argv.extend(["--data".into(), data_dir.join("data").display().to_string()]);
        }
        if pf.arg("--prompts").is_none()
            && pf.arg("--clusters").is_none()
            && pf.command != "baseline"
        {
            argv.extend(["--prompts".into(), made.prompts.display().to_string()]);
        }
        // Synthetic image paths are relative to the dataset folder.
        let train_csv =
            pf.arg("--train-csv").is_some() || last_flag(overrides, "--train-csv").is_some();
        if opts.images && train_csv && pf.arg("--image-root").is_none() {
            argv.extend(["--image-root".into(), data_dir.display().to_string()]);
        }
        tail.extend(["--out".into(), out.join("result").display().to_string()]);
    }
    argv.extend(tail);
    let matches = overriding_command(&pf.command)
        .try_get_matches_from(&argv)
        .map_err(|e| Error::Usage(clap_line(&e)))?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| Error::Usage(e.to_string()))?;
    run(cli).map_err(|e| match e {
        // Name the file's key when a checked value came from it.
        Error::Usage(msg) => {
            let from_file = pf.args.iter().find(|a| {
                msg.contains(&format!("{} ", a.flag)) || msg.contains(&format!("{}'", a.flag))
            });
            match from_file {
                Some(a) if last_flag(overrides, &a.flag).is_none() => Error::Usage(format!(
                    "{msg} ({})",
                    pf.locate(&a.flag).unwrap_or_default()
                )),
                _ => Error::Usage(msg),
            }
        }
        other => other,
    })
}

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when a reader of stdout goes away
    // (`clipcov ... | head`); outputs are published before anything is printed.
    // SAFETY: called before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if progress::json() {
                progress::event(
                    "error",
                    serde_json::json!({ "message": e.to_string(), "exit_code": e.exit_code() }),
                );
            } else {
                eprintln!("clipcov: {e}");
            }
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
