//! The command line: clap types and their validation ([`args`]), pipeline
//! files ([`pipeline_file`]), the demo ([`demo`]), and the dispatch of a
//! parsed command to its job.

pub mod args;
pub mod compare_args;
pub mod demo;
pub mod eval_args;
pub mod method_args;
pub mod pipeline_file;

use std::process::ExitCode;

use clap::Parser;

use crate::io::remote;
use crate::jobs::pipeline;
use crate::progress;
use crate::synth;
use crate::Result;
use args::{Cli, Command};
use pipeline_file::PipelineFile;

/// The `clipcov` binary: parses the command line, runs it, and maps an
/// error to one line on stderr and its exit status.
pub fn main() -> ExitCode {
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

pub fn run(cli: Cli) -> Result<()> {
    progress::init(cli.log_format, cli.quiet);
    let global = (cli.log_format, cli.quiet);
    match cli.command {
        Command::Demo { out } => demo::run_demo(&out, global),
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
            let s = synth::synth(&args::synth_options(&a)?, &local)?;
            let uploaded = match url {
                Some(url) => crate::output::publish::publish(&local, url)?.len(),
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
                crate::jobs::shell::print_published(cfg.publish_to.as_deref(), &summary.published);
            }
            Ok(())
        }
        Command::Baseline(a) => crate::jobs::baseline::run_baseline(a.into_job()?),
        Command::Compare(a) => crate::jobs::compare::run_compare(a.into_job()?),
        Command::Bench(a) => crate::jobs::bench::run_bench(&a),
        Command::Eval(a) => crate::jobs::eval::run_eval(a.into_job()?),
        Command::Run { file, overrides } => {
            let pf = PipelineFile::load(&file)?;
            pipeline_file::run(&pf, &overrides, global)
        }
    }
}

/// The run summary on stdout: rows, stages with their rates, memory, files.
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
