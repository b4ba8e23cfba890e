//! `clipcov bench --lse`: exponentials per second of the log-sum-exp
//! kernels behind neg_clip_loss (and c_rho), per instruction set, next to
//! the GEMM that feeds them. Every figure is a rate measured in this run,
//! so the table's ratios hold on a shared, noisy machine.

use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::kernels::dense::gemm_abt;
use crate::kernels::lse::{max_f32, merge_tile_partials_on, sum_exp_on, Isa, Partial, TileScratch};
use crate::methods::neg_clip_loss::lse_rows_cols;
use crate::rng::Rng;

/// The similarity tile neg_clip_loss reduces (its largest).
const TILE: (usize, usize) = (256, 2048);
/// neg_clip_loss's default temperature.
const INV_T: f32 = 100.0;

/// One measured kernel.
#[derive(Clone, Debug, Serialize)]
pub struct LseRow {
    pub kernel: String,
    pub isa: String,
    pub threads: usize,
    pub exponentials: f64,
    pub seconds: f64,
    /// Exponentials per second (an entry of a fused tile counts once,
    /// although it feeds both its row and its column).
    pub exp_per_second: f64,
    /// Seconds of the GEMM that makes the same similarities, in this run.
    pub gemm_seconds: Option<f64>,
}

/// `n` unit vectors of dimension `d`.
fn unit_rows(r: &mut Rng, n: usize, d: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n * d).map(|_| r.normal() as f32).collect();
    for row in v.chunks_exact_mut(d.max(1)) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// Runs `f` (which does `work` exponentials) until `seconds` have passed.
fn rate(seconds: f64, work: f64, mut f: impl FnMut()) -> (f64, f64) {
    let t = Instant::now();
    let mut done = 0.0;
    while done == 0.0 || t.elapsed().as_secs_f64() < seconds {
        f();
        done += work;
    }
    (done, t.elapsed().as_secs_f64())
}

/// Measures the kernels on dimension `d` and a neg_clip_loss batch of
/// `batch` rows, each for about `seconds`.
pub fn measure(d: usize, batch: usize, seconds: f64) -> Vec<LseRow> {
    let mut r = Rng::new(1);
    let mut rows = Vec::new();
    let row = |kernel: &str, isa: &str, threads, (work, s): (f64, f64), gemm| LseRow {
        kernel: kernel.into(),
        isa: isa.into(),
        threads,
        exponentials: work,
        seconds: s,
        exp_per_second: work / s,
        gemm_seconds: gemm,
    };

    // The exponential alone: one row's sum of 2^20 terms.
    let v: Vec<f32> = (0..1 << 20).map(|_| (r.normal() * 0.1) as f32).collect();
    let m = max_f32(&v);
    for isa in Isa::available() {
        let mut sink = 0.0f32;
        let measured = rate(seconds, v.len() as f64, || {
            sink += sum_exp_on(isa, &v, m, INV_T)
        });
        std::hint::black_box(sink);
        rows.push(row("exp (row sum)", isa.name(), 1, measured, None));
    }

    // One fused tile: rows and columns from one exponential per entry.
    let (tr, tc) = TILE;
    let (a, b) = (unit_rows(&mut r, tr, d), unit_rows(&mut r, tc, d));
    let mut tile = vec![0.0f32; tr * tc];
    let entries = (tr * tc) as f64;
    let (gw, gs) = rate(seconds, entries, || gemm_abt(&a, &b, d, &mut tile));
    let gemm_tile = gs / (gw / entries);
    let mut scratch = TileScratch::default();
    for isa in Isa::available() {
        let (mut rp, mut cp) = (vec![Partial::EMPTY; tr], vec![Partial::EMPTY; tc]);
        let measured = rate(seconds, entries, || {
            merge_tile_partials_on(isa, &tile, INV_T, &mut scratch, &mut rp, &mut cp)
        });
        rows.push(row(
            &format!("fused tile {tr} x {tc}"),
            isa.name(),
            1,
            measured,
            Some(gemm_tile * measured.0 / entries),
        ));
    }

    // A whole neg_clip_loss batch, GEMM included, on every thread.
    let (u, w) = (unit_rows(&mut r, batch, d), unit_rows(&mut r, batch, d));
    let threads = rayon::current_num_threads();
    let entries = (batch * batch) as f64;
    let measured = rate(seconds, entries, || {
        std::hint::black_box(lse_rows_cols(&u, &w, d, INV_T, tr, tc));
    });
    // The same GEMM tiles alone, on the same threads.
    let gemm = rate(seconds, entries, || {
        (0..batch.div_ceil(tr)).into_par_iter().for_each(|t| {
            let ar = &u[t * tr * d..((t + 1) * tr).min(batch) * d];
            let mut out = Vec::new();
            for c0 in (0..batch).step_by(tc) {
                let c1 = (c0 + tc).min(batch);
                out.resize(ar.len() / d * (c1 - c0), 0.0);
                gemm_abt(ar, &w[c0 * d..c1 * d], d, &mut out);
            }
            std::hint::black_box(&out);
        })
    });
    rows.push(row(
        &format!("neg_clip_loss batch {batch} x {batch}, d {d}"),
        Isa::best().name(),
        threads,
        measured,
        Some(gemm.1 / gemm.0 * measured.0),
    ));
    rows
}

/// The rows as a Markdown table.
pub fn markdown(rows: &[LseRow]) -> String {
    let mut s = String::from(
        "| kernel | instruction set | threads | exponentials | seconds | exp/s | GEMM of the same entries |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let gemm = r.gemm_seconds.map_or("-".to_string(), |g| {
            format!("{g:.3} s ({:.0}% of the time)", 100.0 * g / r.seconds)
        });
        s.push_str(&format!(
            "| {} | {} | {} | {:.3e} | {:.3} | {:.3e} | {gemm} |\n",
            r.kernel, r.isa, r.threads, r.exponentials, r.seconds, r.exp_per_second
        ));
    }
    s
}
