//! `clipcov bench`: speed and memory, measured on `synth` data.
//!
//! For each size it writes a dataset, runs `select` in a subprocess per
//! `tau` (so peak RSS is that run's own) and reads the run's manifest: wall
//! time, rows/s and GB/s per stage, the score kernels' work and GFLOP/s,
//! peak RSS and peak anonymous RSS. Next to the tile rate it times a plain
//! faer GEMM of the same shapes in this process, on all threads, so the
//! ratio holds on a shared, noisy machine. With `--numpy` it also runs the
//! NumPy implementation of the spec (`benches/numpy_clipcov.py`) on the same
//! data and reports the time ratio and the Jaccard overlap of the outputs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::eval::jaccard;
use crate::io::atomic::atomic_write;
use crate::jobs::append_bench;
use crate::kernels::dense::gemm_abt;
use crate::stages::ingest::IngestTimes;
use crate::synth::{self, SynthOptions};

#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// Dataset sizes, comma-separated (1e5 style allowed).
    #[arg(long, default_value = "1e5,1e6")]
    pub rows: String,
    #[arg(long, default_value_t = 512)]
    pub dim: usize,
    #[arg(long, default_value_t = 1000)]
    pub classes: usize,
    /// Zipf exponent of class sizes (0: equal expected sizes).
    #[arg(long, default_value_t = 0.0)]
    pub zipf: f64,
    /// Thresholds to run, comma-separated.
    #[arg(long, default_value = "0,none")]
    pub taus: String,
    #[arg(long)]
    pub f16: bool,
    #[arg(long, default_value_t = 0.1)]
    pub fraction: f64,
    /// Sample sizes of the cross term, comma-separated: after each exact
    /// run with a numeric tau, one `--cross-sample M` run per size on the
    /// same data, reported against the exact run (time ratio, Jaccard).
    #[arg(long, default_value = "")]
    pub cross_sample: String,
    /// With `--cross-sample`: skip the exact runs (sizes where the exact
    /// cross term would take hours); the rows then have no "vs exact".
    #[arg(long)]
    pub sampled_only: bool,
    #[arg(long, default_value = "4GiB")]
    pub memory_limit: String,
    /// Also run the NumPy implementation where the data has at most this many rows (0: never).
    #[arg(long, default_value_t = 0.0)]
    pub numpy_max_rows: f64,
    /// The NumPy implementation (default: the one in this source tree).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/numpy_clipcov.py"))]
    pub numpy_script: PathBuf,
    /// Working folder for datasets and runs.
    #[arg(long, default_value = "clipcov-bench")]
    pub work: PathBuf,
    /// Use the dataset a previous bench left in WORK/data-N (kept without
    /// `--cleanup`, or written by `clipcov synth` with this bench's settings:
    /// `--seed 1 --shards N/250000` (1 to 64) `--eval-rows 0`, and `--dim`, `--classes`,
    /// `--zipf`, `--f16` as here) instead of writing it again.
    #[arg(long)]
    pub reuse_data: bool,
    /// Delete each dataset after its runs, each run's staged store once
    /// its manifest is read (its subset stays), and with `--append` each
    /// pair of runs once measured (large sizes need the disk).
    #[arg(long)]
    pub cleanup: bool,
    /// Instead of the runs above: the nightly run. For each size and each
    /// appended fraction (comma-separated, e.g. 0.01,0.1), night one on the
    /// pool, night two with the appended rows (incremental) and a full run
    /// on the same input, compared.
    #[arg(long, default_value = "")]
    pub append: String,
    /// Instead of `select` runs: exponentials per second of the
    /// log-sum-exp kernels (neg_clip_loss), per instruction set, at `--dim`.
    #[arg(long)]
    pub lse: bool,
    /// `--lse`: rows of the neg_clip_loss batch timed whole.
    #[arg(long, default_value_t = 8192)]
    pub lse_batch: usize,
    /// `--lse`: also time neg_clip_loss's two paths (batches, full
    /// matrix) on this many random pairs at `--dim` (0: skip).
    #[arg(long, default_value_t = 0)]
    pub lse_rows: usize,
    /// `--lse`: seconds per measurement.
    #[arg(long, default_value_t = 1.0)]
    pub lse_seconds: f64,
}

/// One `select` run, as the bench reports it.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    pub rows: u64,
    pub tau: String,
    /// `exact`, or the `--cross-sample` size of a sampled run.
    pub cross: String,
    pub seconds_total: f64,
    pub stages: Vec<(String, f64, f64, f64)>,
    pub cross_gflop: f64,
    pub cross_gflops: f64,
    pub cross_seconds: f64,
    /// The row terms, `between`'s GEMM among them.
    pub row_terms_seconds: f64,
    pub classes: u64,
    pub between_gflops: f64,
    pub gemm_gflops: f64,
    pub tile_vs_gemm: f64,
    pub peak_rss_mib: f64,
    pub peak_anon_rss_mib: f64,
    pub numpy_seconds: Option<f64>,
    pub numpy_jaccard: Option<f64>,
    /// A sampled run: its total time over the exact run's, and the
    /// Jaccard index of its subset with the exact run's.
    pub exact_ratio: Option<f64>,
    pub exact_jaccard: Option<f64>,
    /// GEMM work the spec requires of any implementation: the class
    /// assignment `2 N K d`, `between` `4 N K d` and the cross tiles.
    pub required_gflop: f64,
    /// `required_gflop` at the same-run rate of a large GEMM: no
    /// implementation on this machine can be faster.
    pub floor_seconds: f64,
    /// Where the ingest stage's time went, from the manifest.
    pub ingest: Option<IngestTimes>,
}

fn parse_count(s: &str) -> Result<u64> {
    let t = s.trim();
    t.parse::<u64>()
        .ok()
        .or_else(|| {
            t.parse::<f64>()
                .ok()
                .filter(|v| *v >= 1.0)
                .map(|v| v as u64)
        })
        .ok_or_else(|| Error::Usage(format!("invalid row count '{s}' in --rows")))
}

/// GFLOP/s of plain GEMMs of the given square tile sides, run on every
/// thread for about `seconds`.
pub fn gemm_rate(sides: &[usize], d: usize, seconds: f64) -> f64 {
    let threads = rayon::current_num_threads();
    let t = Instant::now();
    let flop: f64 = (0..threads)
        .into_par_iter()
        .map(|w| {
            let max = sides.iter().copied().max().unwrap_or(1);
            let a: Vec<f32> = (0..max * d)
                .map(|i| ((i * 7 + w) % 13) as f32 * 0.01)
                .collect();
            let b: Vec<f32> = (0..max * d)
                .map(|i| ((i * 5 + w) % 11) as f32 * 0.01)
                .collect();
            let mut out = vec![0.0f32; max * max];
            let mut flop = 0.0;
            let mut i = w;
            while t.elapsed().as_secs_f64() < seconds {
                let m = sides[i % sides.len()];
                gemm_abt(&a[..m * d], &b[..m * d], d, &mut out[..m * m]);
                flop += 2.0 * (m * m * d) as f64;
                i += 1;
            }
            flop
        })
        .sum();
    flop / t.elapsed().as_secs_f64() / 1e9
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).at_path(path)?;
    serde_json::from_str(&text).map_err(|e| Error::file(path, format!("not valid JSON: {e}")))
}

/// The ids of a subset CSV, sorted and distinct (for [`jaccard`]).
fn ids_of_csv(path: &Path) -> Result<Vec<String>> {
    let mut ids = append_bench::csv_ids(path)?;
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Runs the benchmark and prints its table.
pub fn run_bench(a: &BenchArgs) -> Result<()> {
    if a.lse {
        if a.dim == 0 || a.lse_batch == 0 || a.lse_seconds.is_nan() || a.lse_seconds <= 0.0 {
            return Err(Error::Usage(
                "bench --lse needs --dim, --lse-batch and --lse-seconds above 0".into(),
            ));
        }
        let rows = crate::jobs::lse_bench::measure(a.dim, a.lse_batch, a.lse_seconds);
        print!("{}", crate::jobs::lse_bench::markdown(&rows));
        if a.lse_rows > 0 {
            let paths = crate::jobs::lse_bench::measure_paths(a.lse_rows, a.dim);
            print!(
                "\n{}",
                crate::jobs::lse_bench::paths_markdown(a.lse_rows, a.dim, &paths)
            );
        }
        return Ok(());
    }
    let sizes: Vec<u64> = a.rows.split(',').map(parse_count).collect::<Result<_>>()?;
    let taus: Vec<String> = a.taus.split(',').map(|t| t.trim().to_string()).collect();
    let samples: Vec<u64> = a
        .cross_sample
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(|m| {
            m.parse::<u64>().ok().filter(|&m| m > 0).ok_or_else(|| {
                Error::Usage(format!(
                    "invalid sample size '{m}' in --cross-sample: give whole numbers above 0, comma-separated"
                ))
            })
        })
        .collect::<Result<_>>()?;
    if a.sampled_only && samples.is_empty() {
        return Err(Error::Usage(
            "bench --sampled-only needs --cross-sample M[,M...]: it runs only the sampled runs"
                .into(),
        ));
    }
    if a.numpy_max_rows > 0.0 && !a.numpy_script.is_file() {
        return Err(Error::Usage(format!(
            "{}: no such file; pass --numpy-script PATH (benches/numpy_clipcov.py of the source tree)",
            a.numpy_script.display()
        )));
    }
    std::fs::create_dir_all(&a.work).at_path(&a.work)?;
    let exe = std::env::current_exe().map_err(|e| Error::io("clipcov", e))?;
    if !a.append.trim().is_empty() {
        return bench_append(a, &exe, sizes, taus);
    }
    let mut rows = Vec::new();
    for &n in &sizes {
        let data = a.work.join(format!("data-{n}"));
        let t = Instant::now();
        let opts = SynthOptions {
            rows: n,
            classes: a.classes,
            dim: a.dim,
            shards: (n / 250_000).clamp(1, 64) as usize,
            f16: a.f16,
            seed: 1,
            zipf: a.zipf,
            eval_rows: 0,
            ..SynthOptions::default()
        };
        // synth writes the prompts after the last shard: their presence
        // says the dataset is complete.
        if a.reuse_data && data.join("prompts.parquet").is_file() {
            eprintln!("bench: using the dataset in {}", data.display());
        } else {
            if data.exists() {
                std::fs::remove_dir_all(&data).at_path(&data)?;
            }
            synth::synth(&opts, &data)?;
            eprintln!(
                "bench: wrote {n} rows in {:.1} s",
                t.elapsed().as_secs_f64()
            );
        }
        // Let the freshly written dataset reach the disk first: otherwise
        // its write-back competes with the first run's store writes (a 1M-row
        // ingest measured 13.7 s right after synth, 7.0 s after a sync).
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        for tau in &taus {
            // Each run starts with no dirty pages of the one before.
            unsafe { libc::sync() };
            let exact = if a.sampled_only {
                None
            } else {
                Some(bench_exact(a, &exe, &data, n, tau, &mut rows)?)
            };
            // The sampled form exists only where tau is a number.
            if tau == "none" {
                continue;
            }
            for m in &samples {
                unsafe { libc::sync() };
                let cs = m.to_string();
                let out = a.work.join(format!("run-{n}-tau-{tau}-sample-{m}"));
                let man = run_select(a, &exe, &data, tau, &cs, &out)?;
                drop_store(a, &out)?;
                let mut row = bench_row(n, tau, &cs, &man, a.dim);
                if let Some((exact_ids, exact_seconds)) = &exact {
                    row.exact_ratio = Some(row.seconds_total / exact_seconds);
                    row.exact_jaccard = Some(jaccard(
                        exact_ids,
                        &ids_of_csv(&out.join("clipcov/subset.csv"))?,
                    ));
                }
                eprintln!("{}", format_row(&row));
                rows.push(row);
            }
        }
        if a.cleanup {
            std::fs::remove_dir_all(&data).at_path(&data)?;
        }
    }
    let md = markdown(a, &rows);
    print!("{md}");
    let md_path = a.work.join("bench.md");
    atomic_write(&md_path, |w| {
        use std::io::Write;
        w.write_all(md.as_bytes()).at_path(&md_path)
    })?;
    crate::io::written::write_json(&a.work.join("bench.json"), &rows)?;
    Ok(())
}

/// The exact run of `tau` on `data` (and the NumPy one where asked), its
/// row pushed; returns its subset's ids and its total seconds, which the
/// sampled runs are compared against.
fn bench_exact(
    a: &BenchArgs,
    exe: &Path,
    data: &Path,
    n: u64,
    tau: &str,
    rows: &mut Vec<BenchRow>,
) -> Result<(Vec<String>, f64)> {
    let out = a.work.join(format!("run-{n}-tau-{tau}"));
    let m = run_select(a, exe, data, tau, "exact", &out)?;
    drop_store(a, &out)?;
    let mut row = bench_row(n, tau, "exact", &m, a.dim);
    if (n as f64) <= a.numpy_max_rows {
        let csv = out.join("numpy.csv");
        let t = Instant::now();
        let st = Command::new("python3")
            .arg(&a.numpy_script)
            .arg("--data")
            .arg(data.join("data"))
            .arg("--prompts")
            .arg(data.join("prompts.parquet"))
            .args(["--fraction", &a.fraction.to_string(), "--tau", tau])
            .arg("--out")
            .arg(&csv)
            .stdout(std::process::Stdio::null())
            .output()
            .map_err(|e| Error::io("python3", e))?;
        if st.status.success() {
            row.numpy_seconds = Some(t.elapsed().as_secs_f64());
            row.numpy_jaccard = Some(jaccard(
                &ids_of_csv(&csv)?,
                &ids_of_csv(&out.join("clipcov/subset.csv"))?,
            ));
        } else {
            let err = String::from_utf8_lossy(&st.stderr);
            eprintln!(
                "bench: the NumPy run failed ({}); it needs `pip install numpy pyarrow`",
                err.lines().last().unwrap_or("no message")
            );
        }
    }
    eprintln!("{}", format_row(&row));
    let exact_ids = ids_of_csv(&out.join("clipcov/subset.csv"))?;
    let exact_seconds = row.seconds_total;
    rows.push(row);
    Ok((exact_ids, exact_seconds))
}

/// `bench --append`: the nightly run against a full run (`append_bench`).
fn bench_append(a: &BenchArgs, exe: &Path, sizes: Vec<u64>, taus: Vec<String>) -> Result<()> {
    let fractions = a
        .append
        .split(',')
        .map(|f| {
            f.trim().parse::<f64>().map_err(|_| {
                Error::Usage(format!(
                    "invalid fraction '{f}' in --append: give fractions in (0, 1], e.g. 0.01,0.1"
                ))
            })
        })
        .collect::<Result<Vec<f64>>>()?;
    let b = append_bench::AppendBench {
        sizes,
        fractions,
        taus,
        dim: a.dim,
        classes: a.classes,
        zipf: a.zipf,
        f16: a.f16,
        work: a.work.clone(),
        cleanup: a.cleanup,
    };
    let rows = append_bench::run(&b, &|data: &Path, tau: &str, out: &Path| {
        run_select(a, exe, data, tau, "exact", out)
    })?;
    let md = append_bench::markdown(&rows);
    print!("{md}");
    let md_path = a.work.join("bench-append.md");
    atomic_write(&md_path, |w| {
        use std::io::Write;
        w.write_all(md.as_bytes()).at_path(&md_path)
    })?;
    crate::io::written::write_json(&a.work.join("bench-append.json"), &rows)
}

/// One `select` run of the bench on `data` (a `synth` folder) into `out`;
/// returns its manifest.
fn run_select(
    a: &BenchArgs,
    exe: &Path,
    data: &Path,
    tau: &str,
    cross: &str,
    out: &Path,
) -> Result<serde_json::Value> {
    let status = Command::new(exe)
        .args(["select", "--data"])
        .arg(data.join("data"))
        .arg("--prompts")
        .arg(data.join("prompts.parquet"))
        .args([
            "--fraction",
            &a.fraction.to_string(),
            "--tau",
            tau,
            "--cross-sample",
            cross,
            "--memory-limit",
            &a.memory_limit,
        ])
        .arg("--out")
        .arg(out)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| Error::io(exe, e))?;
    if !status.success() {
        return Err(Error::Internal(format!(
            "bench: select on {}, tau {tau}, cross {cross} failed",
            data.display()
        )));
    }
    read_json(&out.join("manifest.json"))
}

/// `--cleanup`: a measured run's staged store goes (a 10M-row f16 store is
/// 20 GB); its subset and manifest stay.
fn drop_store(a: &BenchArgs, out: &Path) -> Result<()> {
    let store = crate::jobs::shell::store_dir(out);
    if a.cleanup && store.exists() {
        std::fs::remove_dir_all(&store).at_path(&store)?;
    }
    Ok(())
}

fn bench_row(n: u64, tau: &str, cross: &str, m: &serde_json::Value, d: usize) -> BenchRow {
    let stages: Vec<(String, f64, f64, f64)> = m["stages"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|s| {
                    (
                        s["stage"].as_str().unwrap_or("").to_string(),
                        s["seconds"].as_f64().unwrap_or(0.0),
                        s["rows_per_second"].as_f64().unwrap_or(0.0),
                        s["gb_per_second"].as_f64().unwrap_or(0.0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let k = m["stages"]
        .as_array()
        .and_then(|v| v.iter().find(|s| s["stage"] == "score"))
        .map(|s| s["kernels"].clone())
        .unwrap_or_default();
    let f = |key: &str| k[key].as_f64().unwrap_or(0.0);
    let rate = |flop: f64, s: f64| if s > 0.0 { flop / s / 1e9 } else { 0.0 };
    let cross_gflops = rate(f("cross_flop"), f("cross_seconds"));
    // The same tile shapes as the run's cross term: classes of about n/K
    // rows, capped at the tile side the run used.
    let tile = m["parameters"]["tile_rows"].as_u64().unwrap_or(1024) as usize;
    let classes = m["rows"]["classes_nonempty"].as_u64().unwrap_or(1).max(1);
    let side = ((n / classes) as usize).clamp(1, tile);
    let gemm = if tau == "none" {
        0.0
    } else {
        gemm_rate(&[side], d, 2.0)
    };
    let used = m["rows"]["used"].as_f64().unwrap_or(n as f64);
    let classes_all = m["rows"]["classes"].as_f64().unwrap_or(1.0);
    let required = 2.0 * used * classes_all * d as f64 + f("between_flop") + f("cross_flop");
    let large_gemm = gemm_rate(&[1024], d, 2.0);
    BenchRow {
        rows: n,
        tau: tau.to_string(),
        cross: cross.to_string(),
        seconds_total: m["seconds_total"].as_f64().unwrap_or(0.0),
        stages,
        cross_gflop: f("cross_flop") / 1e9,
        cross_gflops,
        cross_seconds: f("cross_seconds"),
        row_terms_seconds: f("row_terms_seconds"),
        classes,
        between_gflops: rate(f("between_flop"), f("row_terms_seconds")),
        gemm_gflops: gemm,
        tile_vs_gemm: if gemm > 0.0 { cross_gflops / gemm } else { 0.0 },
        peak_rss_mib: m["memory"]["peak_rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        peak_anon_rss_mib: m["memory"]["peak_anon_rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        numpy_seconds: None,
        numpy_jaccard: None,
        exact_ratio: None,
        exact_jaccard: None,
        required_gflop: required / 1e9,
        floor_seconds: required / (large_gemm * 1e9),
        ingest: m["stages"]
            .as_array()
            .and_then(|v| v.iter().find(|s| s["stage"] == "ingest"))
            .and_then(|s| serde_json::from_value(s["ingest"].clone()).ok()),
    }
}

fn format_row(r: &BenchRow) -> String {
    let stages: Vec<String> = r
        .stages
        .iter()
        .map(|(s, t, rps, gbs)| format!("{s} {t:.2} s ({:.0} krows/s, {gbs:.2} GB/s)", rps / 1e3))
        .collect();
    format!(
        "| {} | {} | {} | {:.2} | {} | {} | {:.1} | {:.0} | {:.0} | {} | {:.0} | {:.0} | {} | {} | {:.0} | {:.2} s ({:.0}%) | {} |",
        r.rows,
        r.tau,
        r.cross,
        r.seconds_total,
        match (r.exact_ratio, r.exact_jaccard) {
            (Some(t), Some(j)) => format!("{t:.2}x, {j:.4}"),
            _ => "-".into(),
        },
        stages.join("; "),
        r.cross_gflop,
        r.cross_gflops,
        r.gemm_gflops,
        if r.gemm_gflops > 0.0 {
            format!("{:.0}%", 100.0 * r.tile_vs_gemm)
        } else {
            "-".into()
        },
        r.peak_rss_mib,
        r.peak_anon_rss_mib,
        r.numpy_seconds.map_or("-".into(), |s| format!(
            "{s:.1} s ({:.1}x)",
            s / r.seconds_total
        )),
        r.numpy_jaccard.map_or("-".into(), |j| format!("{j:.4}")),
        r.required_gflop,
        r.floor_seconds,
        100.0 * r.floor_seconds / r.seconds_total,
        r.numpy_seconds
            .map_or("-".into(), |s| format!("{:.1}x", s / r.floor_seconds)),
    )
}

fn markdown(a: &BenchArgs, rows: &[BenchRow]) -> String {
    let mut s = format!(
        "clipcov bench: d = {}, {} classes (zipf {}), {}, fraction {}, {} threads, memory limit {}\n\n",
        a.dim,
        a.classes,
        a.zipf,
        if a.f16 { "f16" } else { "f32" },
        a.fraction,
        rayon::current_num_threads(),
        a.memory_limit
    );
    s.push_str("| rows | tau | cross | total s | vs exact (time, Jaccard) | stages | cross GFLOP | tile GFLOP/s | GEMM GFLOP/s (same run) | tile/GEMM | peak RSS MiB | peak anon MiB | NumPy (ratio) | Jaccard vs NumPy | required GFLOP | GEMM floor (share of total) | NumPy / floor |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        s.push_str(&format_row(r));
        s.push('\n');
    }
    s.push_str(&scaling(a.dim, rows));
    s.push_str(&ingest_split(rows));
    s
}

/// The ingest table: CPU seconds of each part of the stage. Decoding, the
/// workers (validation, the class GEMM) and the writer (buckets, the
/// store's bytes handed to the kernel) share the cores; the store write's
/// rate shows what the page cache costs on this machine in this run.
fn ingest_split(rows: &[BenchRow]) -> String {
    let mut s = String::from(
        "\n| rows | tau | cross | ingest s (wall) | decode (decoder thread) | validate (workers) | class GEMM (workers) | buckets (writer) | store write (writer) | CPU s in all | store GB | store GB per write CPU s |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let Some(t) = &r.ingest else { continue };
        let ingest = r
            .stages
            .iter()
            .find(|s| s.0 == "ingest")
            .map_or(0.0, |s| s.1);
        let gb = t.store_bytes as f64 / 1e9;
        let all = t.decode_seconds
            + t.validate_cpu_seconds
            + t.classify_cpu_seconds
            + t.bucket_seconds
            + t.store_write_seconds;
        s.push_str(&format!(
            "| {} | {} | {} | {ingest:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {all:.2} | {gb:.2} | {:.2} |\n",
            r.rows,
            r.tau,
            r.cross,
            t.decode_seconds,
            t.validate_cpu_seconds,
            t.classify_cpu_seconds,
            t.bucket_seconds,
            t.store_write_seconds,
            if t.store_write_seconds > 0.0 { gb / t.store_write_seconds } else { 0.0 },
        ));
    }
    s
}

/// The scaling table: each kernel's time per unit of the work the spec
/// says it must do: the cross tiles `sum n_k^2 d` (tau 0) or `N d` (tau
/// none), and the row terms `N K d` (`between`). Constant per-unit costs
/// across sizes mean the stage scales as it should.
fn scaling(d: usize, rows: &[BenchRow]) -> String {
    let mut s = String::from(
        "\n| rows | tau | cross | sum n_k^2 | cross work | cross s | ns per unit | row terms work (N K d) | row terms s | ns per unit |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let d = d as f64;
        let (sum_nk2, cross_units) = if r.tau == "none" {
            ("-".to_string(), r.rows as f64 * d)
        } else if r.cross != "exact" {
            // Half the flop, as for the exact form: `2 n_k M d` a sampled
            // class, `n_k^2 d` a class small enough to stay exact.
            ("-".to_string(), r.cross_gflop * 1e9 / 2.0)
        } else {
            let q = r.cross_gflop * 1e9 / (2.0 * d);
            (format!("{q:.3e}"), q * d)
        };
        let unit = if r.tau == "none" {
            "N d"
        } else if r.cross != "exact" {
            "sum 2 n_k M d, small classes n_k^2 d"
        } else {
            "sum n_k^2 d"
        };
        let row_units = r.rows as f64 * r.classes as f64 * d;
        s.push_str(&format!(
            "| {} | {} | {} | {sum_nk2} | {cross_units:.3e} ({unit}) | {:.2} | {:.4} | {row_units:.3e} | {:.2} | {:.4} |\n",
            r.rows,
            r.tau,
            r.cross,
            r.cross_seconds,
            r.cross_seconds * 1e9 / cross_units,
            r.row_terms_seconds,
            r.row_terms_seconds * 1e9 / row_units,
        ));
    }
    s
}
