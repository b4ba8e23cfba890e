//! `clipcov bench --append F,...`: the nightly run, measured.
//!
//! For each size `N` and appended fraction `f` it writes a dataset of
//! `N (1 + f)` rows whose last shard holds the `N f` appended rows. Night
//! one runs on the other shards; night two runs on all of them into the
//! same OUT (the incremental run); a run on all of them into an empty OUT
//! is the full run night two is compared with: wall time, cross-tile work,
//! each stage's time, and whether the two subsets are the same.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::eval::jaccard;
use crate::synth::{self, SynthOptions};

/// What to measure.
pub struct AppendBench {
    pub sizes: Vec<u64>,
    pub fractions: Vec<f64>,
    pub taus: Vec<String>,
    pub dim: usize,
    pub classes: usize,
    pub zipf: f64,
    pub f16: bool,
    pub work: PathBuf,
    /// Delete each pair of runs once measured (their stores are large).
    pub cleanup: bool,
}

/// One size, fraction and `tau`: the full run against night two.
#[derive(Clone, Debug, Serialize)]
pub struct AppendRow {
    pub rows: u64,
    pub appended: u64,
    pub tau: String,
    pub full_seconds: f64,
    pub incremental_seconds: f64,
    pub full_cross_gflop: f64,
    pub incremental_cross_gflop: f64,
    /// `between` updated for the moved centres, or computed for every row.
    pub between: String,
    /// Night two's stages: (name, seconds).
    pub stages: Vec<(String, f64)>,
    /// The full run's stages, for the parts that cannot shrink.
    pub full_stages: Vec<(String, f64)>,
    /// Night two's score: seconds of the row terms (`between`'s GEMM) and
    /// of `cross`.
    pub row_terms_seconds: f64,
    pub cross_seconds: f64,
    /// The subsets have the same ids in the same order.
    pub same_subset: bool,
    pub jaccard: f64,
}

/// Runs one `select` with `tau` on a `synth` folder into an OUT and returns
/// its manifest.
pub type Select<'a> = dyn Fn(&Path, &str, &Path) -> Result<serde_json::Value> + 'a;

/// Runs every size, fraction and `tau`; returns the rows in that order.
pub fn run(b: &AppendBench, select: &Select) -> Result<Vec<AppendRow>> {
    let mut rows = Vec::new();
    for &n in &b.sizes {
        for &f in &b.fractions {
            if !(f > 0.0 && f <= 1.0) {
                return Err(Error::Usage(format!(
                    "invalid fraction {f} in --append: give fractions in (0, 1], e.g. 0.01,0.1"
                )));
            }
            // N / appended rows shards of the pool, and one more appended.
            let pool_shards = (1.0 / f).round().max(1.0) as u64;
            let appended = n / pool_shards;
            let opts = SynthOptions {
                rows: appended * (pool_shards + 1),
                classes: b.classes,
                dim: b.dim,
                shards: (pool_shards + 1) as usize,
                f16: b.f16,
                seed: 1,
                zipf: b.zipf,
                eval_rows: 0,
                ..SynthOptions::default()
            };
            let data = b.work.join(format!("append-{n}-{f}"));
            if data.exists() {
                std::fs::remove_dir_all(&data).at_path(&data)?;
            }
            let written = synth::synth(&opts, &data)?;
            let last = written.shards.last().expect("synth writes shards").clone();
            let aside = data.join("appended.parquet");
            for tau in &b.taus {
                let night = b.work.join(format!("append-{n}-{f}-tau-{tau}-nightly"));
                let full = b.work.join(format!("append-{n}-{f}-tau-{tau}-full"));
                for out in [&night, &full] {
                    if out.exists() {
                        std::fs::remove_dir_all(out).at_path(out)?;
                    }
                }
                std::fs::rename(&last, &aside).at_path(&last)?;
                let one = select(&data, tau, &night);
                std::fs::rename(&aside, &last).at_path(&aside)?;
                one?;
                // SAFETY: sync(2) takes no arguments and cannot fail.
                unsafe { libc::sync() };
                let two = select(&data, tau, &night)?;
                unsafe { libc::sync() };
                let whole = select(&data, tau, &full)?;
                let csv = |out: &Path| csv_ids(&out.join("clipcov/subset.csv"));
                let (a, c) = (csv(&night)?, csv(&full)?);
                let same_subset = a == c;
                let (mut a, mut c) = (a, c);
                a.sort_unstable();
                c.sort_unstable();
                let row = append_row(n, appended, tau, &two, &whole, same_subset, jaccard(&a, &c));
                eprintln!("bench: {}", row_line(&row));
                rows.push(row);
                if b.cleanup {
                    for out in [&night, &full] {
                        std::fs::remove_dir_all(out).at_path(out)?;
                    }
                }
            }
            std::fs::remove_dir_all(&data).at_path(&data)?;
        }
    }
    Ok(rows)
}

/// The first column (the ids) of a subset CSV, in its order.
pub fn csv_ids(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).at_path(path)?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').next().map(str::to_string))
        .collect())
}

fn stages(m: &serde_json::Value) -> Vec<(String, f64)> {
    m["stages"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|s| {
                    (
                        s["stage"].as_str().unwrap_or("").to_string(),
                        s["seconds"].as_f64().unwrap_or(0.0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn score_kernels(m: &serde_json::Value) -> &serde_json::Value {
    m["stages"]
        .as_array()
        .and_then(|v| v.iter().find(|s| s["stage"] == "score"))
        .map_or(&serde_json::Value::Null, |s| &s["kernels"])
}

fn append_row(
    n: u64,
    appended: u64,
    tau: &str,
    two: &serde_json::Value,
    full: &serde_json::Value,
    same_subset: bool,
    jaccard: f64,
) -> AppendRow {
    let (k2, kf) = (score_kernels(two), score_kernels(full));
    AppendRow {
        rows: n,
        appended,
        tau: tau.to_string(),
        full_seconds: full["seconds_total"].as_f64().unwrap_or(0.0),
        incremental_seconds: two["seconds_total"].as_f64().unwrap_or(0.0),
        full_cross_gflop: kf["cross_flop"].as_f64().unwrap_or(0.0) / 1e9,
        incremental_cross_gflop: k2["cross_flop"].as_f64().unwrap_or(0.0) / 1e9,
        between: two["incremental"]["between"]
            .as_str()
            .unwrap_or("-")
            .to_string(),
        stages: stages(two),
        full_stages: stages(full),
        row_terms_seconds: k2["row_terms_seconds"].as_f64().unwrap_or(0.0),
        cross_seconds: k2["cross_seconds"].as_f64().unwrap_or(0.0),
        same_subset,
        jaccard,
    }
}

fn stage_list(s: &[(String, f64)]) -> String {
    s.iter()
        .map(|(name, secs)| format!("{name} {secs:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn row_line(r: &AppendRow) -> String {
    let share = if r.full_cross_gflop > 0.0 {
        r.incremental_cross_gflop / r.full_cross_gflop
    } else {
        0.0
    };
    format!(
        "| {} | {} ({:.1}%) | {} | {:.2} | {:.2} ({:.1}%) | {:.1} | {:.1} ({:.2}%) | {} | {} | {:.2} / {:.2} | {} | {} |",
        r.rows,
        r.appended,
        100.0 * r.appended as f64 / r.rows as f64,
        r.tau,
        r.full_seconds,
        r.incremental_seconds,
        100.0 * r.incremental_seconds / r.full_seconds.max(1e-9),
        r.full_cross_gflop,
        r.incremental_cross_gflop,
        100.0 * share,
        stage_list(&r.full_stages),
        stage_list(&r.stages),
        r.row_terms_seconds,
        r.cross_seconds,
        r.between,
        if r.same_subset {
            "identical".to_string()
        } else {
            format!("Jaccard {:.4}", r.jaccard)
        },
    )
}

/// The table of `bench --append`.
pub fn markdown(rows: &[AppendRow]) -> String {
    let mut s = String::from(
        "| rows | appended | tau | full run s | night two s (share) | cross GFLOP full | night two (share) | full run stages s | night two stages s | night two score: row terms / cross s | between | subset vs full run |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        s.push_str(&row_line(r));
        s.push('\n');
    }
    s
}
