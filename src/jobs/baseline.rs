//! `clipcov baseline <method> ...`: the arguments as typed, validated into
//! a staging config and [`MethodOptions`], and the run: stage the data once
//! (one class holding every row), run the method, write its files and the
//! manifest.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::jobs::config::SelectConfig;
use crate::jobs::shell::{learner_store, print_published, run_job};
use crate::jobs::staging::{self, Staged};
use crate::memory::RssMonitor;
use crate::methods::c_rho::Learner;
use crate::methods::{Ctx, Method, MethodOptions, Rule, Selection};
use crate::output::emit::{self, Manifest, StageTiming};
use crate::output::method_files;
use crate::output::publish::OutputSet;
use crate::stages::classes::ClassSource;

/// c_rho's learner data: a weaker model's embeddings of the same pairs,
/// with its columns where they differ from the main data's.
#[derive(Clone, Debug)]
pub struct LearnerData {
    pub data: PathBuf,
    pub image_column: Option<String>,
    pub text_column: Option<String>,
}

/// A validated `baseline` run.
pub struct BaselineJob {
    pub method: Method,
    /// How the data is staged (one class holding every row) and where the
    /// results go.
    pub cfg: SelectConfig,
    pub opts: MethodOptions,
    pub learner: Option<LearnerData>,
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
        ingest: None,
    }
}

/// Stages c_rho's learner data beside the main store (`OUT/learner-store`).
pub fn stage_learner(
    cfg: &SelectConfig,
    learner: Option<&LearnerData>,
    timings: &mut Vec<StageTiming>,
) -> Result<Option<Staged>> {
    let Some(l) = learner else {
        return Ok(None);
    };
    let mut lcfg = cfg.clone();
    lcfg.data = l.data.clone();
    lcfg.classes = ClassSource::Single;
    // The learner's rows are matched to the main store's by row index, so
    // it stages every row; its data need not carry the metadata.
    lcfg.filter = None;
    lcfg.train_csv = None;
    if let Some(c) = &l.image_column {
        lcfg.columns.image = c.clone();
    }
    if let Some(c) = &l.text_column {
        lcfg.columns.text = c.clone();
    }
    let mut t = Vec::new();
    let staged = staging::stage_data(&lcfg, &learner_store(&cfg.out), &mut t)?;
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
pub fn run_baseline(a: BaselineJob) -> Result<()> {
    let opts = a.opts;
    crate::methods::check(a.method, &opts, a.learner.is_some())?;
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
    let cfg = a.cfg;
    let ((manifest, sel_summary), published) =
        run_job(&cfg.out, cfg.threads, cfg.publish_to.as_deref(), || {
            baseline(a.method, &cfg, &opts, a.learner.as_ref())
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
    learner_data: Option<&LearnerData>,
) -> Result<(Manifest, String)> {
    let started = Instant::now();
    let monitor = RssMonitor::start();
    let mut timings = Vec::new();
    let staged = staging::stage_data(cfg, &cfg.out.join("store"), &mut timings)?;
    let ctx = Ctx::new(&staged.store, staged.tile_rows);
    let lstaged = if method == Method::CRho {
        stage_learner(cfg, learner_data, &mut timings)?
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
    let mut m = staged.finish_manifest(
        m,
        cfg,
        budget,
        timings,
        monitor.report(),
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
        "learner_data": learner_data.map(|l| &l.data),
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
