//! `clipcov bench --lse`: exponentials per second of the log-sum-exp
//! kernels behind neg_clip_loss (and c_rho), per instruction set, next to
//! the GEMM that feeds them. Every figure is a rate measured in this run,
//! so the table's ratios hold on a shared, noisy machine.

use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::kernels::dense::gemm_abt;
use crate::kernels::lse::{
    fused_offset, max_f32, merge_tile_partials_on, sum_exp_on, tile_batch_sums_on, Isa, Partial,
    Scale, TileScratch,
};
use crate::methods::neg_clip_loss::{batches, lse_rows_cols, norm_terms_canonical, Path};
use crate::methods::MethodOptions;
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

/// neg_clip_loss's default repetitions.
const REPS: usize = 10;

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

    // A full-path tile: one exponential per entry, summed per repetition
    // over the entries whose row and column share a batch (4 batches).
    let tc_full = crate::methods::neg_clip_loss::FULL_CHUNK;
    let full = &tile[..tr * tc_full];
    let codes =
        |n: usize, r: &mut Rng| -> Vec<u32> { (0..REPS * n).map(|_| r.below(4) as u32).collect() };
    let (row_codes, col_codes) = (codes(tr, &mut r), codes(tc_full, &mut r));
    let scale = Scale {
        shift: max_f32(full),
        inv_t: INV_T,
        offset: fused_offset(tr, tc_full),
    };
    let entries = (tr * tc_full) as f64;
    for isa in Isa::available() {
        let (mut rs, mut cs) = (vec![0.0f32; REPS * tr], vec![0.0f32; REPS * tc_full]);
        let mut exps = vec![0.0f32; tc_full];
        let measured = rate(seconds, entries, || {
            let (rc, cc) = (&row_codes, &col_codes);
            tile_batch_sums_on(isa, full, scale, rc, cc, &mut rs, &mut cs, &mut exps)
        });
        rows.push(row(
            &format!("full-path tile {tr} x {tc_full}, {REPS} repetitions"),
            isa.name(),
            1,
            measured,
            Some(gemm_tile * measured.0 / (tr * tc) as f64),
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

/// One path of neg_clip_loss's norm terms, timed.
#[derive(Clone, Debug, Serialize)]
pub struct PathRow {
    pub path: String,
    /// Similarity entries whose exponential the path computes.
    pub exponentials: f64,
    pub seconds: f64,
    pub exp_per_second: f64,
    /// GEMM flop of the path's similarities (`2 d` per entry).
    pub gemm_flop: f64,
    /// Largest difference of `R` from the batch path's.
    pub max_r_difference: f64,
}

/// Both paths of neg_clip_loss's norm terms on the same `n` pairs of
/// dimension `d` (default `k`, `b`, `T`), one after the other on every
/// thread: the batch path first, then the full-matrix path.
pub fn measure_paths(n: usize, d: usize) -> Vec<PathRow> {
    let mut r = Rng::new(3);
    let u = unit_rows(&mut r, n, d);
    // Captions near their images, as in real pairs: <u_i, v_i> about 0.3.
    let mut v = unit_rows(&mut r, n, d);
    for (vi, ui) in v.chunks_exact_mut(d).zip(u.chunks_exact(d)) {
        vi.iter_mut().zip(ui).for_each(|(x, y)| *x = 3.0 * *x + y);
        let norm = vi.iter().map(|x| x * x).sum::<f32>().sqrt();
        vi.iter_mut().for_each(|x| *x /= norm);
    }
    let anchors: Vec<f64> = u
        .chunks_exact(d)
        .zip(v.chunks_exact(d))
        .map(|(a, b)| crate::kernels::dense::dot_f64(a, b))
        .collect();
    let gather = |text: bool, rows: &[usize], out: &mut Vec<f32>| {
        let src = if text { &v } else { &u };
        out.clear();
        for &i in rows {
            out.extend_from_slice(&src[i * d..(i + 1) * d]);
        }
    };
    let opts = MethodOptions::default();
    let b = opts.neg_batch_size.clamp(1, n);
    let batch_entries: f64 = (0..opts.neg_batches)
        .flat_map(|rep| batches(n, b, opts.seed, rep))
        .map(|bt| (bt.len() * bt.len()) as f64)
        .sum();
    let mut out = Vec::new();
    let mut first: Option<Vec<f64>> = None;
    for (path, entries) in [(Path::Batches, batch_entries), (Path::Full, (n * n) as f64)] {
        let t = Instant::now();
        let terms = norm_terms_canonical(n, d, &opts, path, &gather, &anchors, 256);
        let seconds = t.elapsed().as_secs_f64();
        let diff = first.as_ref().map_or(0.0, |f| {
            f.iter()
                .zip(&terms)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max)
        });
        first.get_or_insert(terms);
        out.push(PathRow {
            path: format!("{path:?}"),
            exponentials: entries,
            seconds,
            exp_per_second: entries / seconds,
            gemm_flop: 2.0 * d as f64 * entries,
            max_r_difference: diff,
        });
    }
    out
}

/// The paths as a Markdown table, with the speed-up over the first.
pub fn paths_markdown(n: usize, d: usize, rows: &[PathRow]) -> String {
    let mut s = format!(
        "neg_clip_loss norm terms, {n} x {d}, k 10, b 32768, {} threads:\n\n\
         | path | exponentials | GEMM flop | seconds | exp/s | speed-up | max R difference |\n\
         |---|---|---|---|---|---|---|\n",
        rayon::current_num_threads()
    );
    let base = rows.first().map_or(1.0, |r| r.seconds);
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.3e} | {:.3e} | {:.2} | {:.3e} | {:.2}x | {:.1e} |\n",
            r.path,
            r.exponentials,
            r.gemm_flop,
            r.seconds,
            r.exp_per_second,
            base / r.seconds,
            r.max_r_difference
        ));
    }
    s
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
