//! Stage 3, score: the four per-pair terms of spec section 2 for every row,
//! written to `terms.bin` (sorted order; easy, cross, label, between).
//!
//! `cross` needs each class's `n_k x n_k` image x caption similarities: they
//! are computed tile by tile with a GEMM, the threshold fused into the row
//! and column sums, and never held as a matrix. With `tau = none` the sums
//! are linear and `cross` is two dot products per row.
//!
//! `--cross-sample M` estimates `cross` in classes of more than `M` rows
//! from a seeded uniform sample of `M` of the class's rows: two GEMMs per
//! row block against the sample, `O(n_k M d)` a class (README, "Sampled
//! cross term").

use std::ops::Range;
use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::error::Result;
use crate::kernels::dense::{
    dot_f64, dot_mixed, gemm_abt, normalised, phi, sum_phi, threshold_row_sums, threshold_sums,
};
use crate::rng::Rng;
use crate::store::{files, ClassRows, MapWriter, Mapped, SeqWriter, Store, StoreClass};

/// Number of `f64`s per row in `terms.bin`.
pub const TERMS: usize = 4;
pub const EASY: usize = 0;
pub const CROSS: usize = 1;
pub const LABEL: usize = 2;
pub const BETWEEN: usize = 3;

/// The threshold of the spec: `phi(s) = s if s > tau else 0`, or none.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Tau {
    Threshold(f64),
    None,
}

impl Tau {
    /// The threshold in `f32`, as the tiles compare it; `None` for no threshold.
    pub fn as_f32(self) -> Option<f32> {
        match self {
            Tau::Threshold(t) => Some(t as f32),
            Tau::None => None,
        }
    }
}

impl std::str::FromStr for Tau {
    type Err = crate::error::Error;

    /// `--tau 0|none|<x>`.
    fn from_str(s: &str) -> crate::error::Result<Tau> {
        if s.eq_ignore_ascii_case("none") {
            return Ok(Tau::None);
        }
        match s.parse::<f64>() {
            Ok(t) if t.is_finite() => Ok(Tau::Threshold(t)),
            _ => Err(crate::error::Error::Usage(format!(
                "invalid --tau '{s}': expected a number or 'none'"
            ))),
        }
    }
}

impl std::fmt::Display for Tau {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tau::Threshold(t) => write!(f, "{t}"),
            Tau::None => f.write_str("none"),
        }
    }
}

/// How `cross` is computed (`--cross-sample`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum CrossSample {
    /// Every pair of the class (the spec).
    #[default]
    Exact,
    /// A uniform sample of `M` rows in each class of more than `M` rows.
    Fixed(usize),
    /// `M` per class from a target standard error of `cross_i`.
    Auto { error: f64 },
}

impl CrossSample {
    /// Parses `--cross-sample exact|auto|M` with `--cross-error E`.
    pub fn parse(sample: &str, error: f64) -> std::result::Result<Self, String> {
        match sample.trim() {
            "exact" => Ok(CrossSample::Exact),
            "auto" if error.is_finite() && error > 0.0 => Ok(CrossSample::Auto { error }),
            "auto" => Err(format!(
                "invalid --cross-error {error}: expected a positive number, e.g. 1e-3"
            )),
            t => match t.parse::<usize>() {
                Ok(m) if m >= 2 => Ok(CrossSample::Fixed(m)),
                _ => Err(format!(
                    "invalid --cross-sample '{sample}': expected 'exact', 'auto' or a sample size of at least 2"
                )),
            },
        }
    }

    /// The estimator's name in the manifest and the resume key:
    /// `exact`, `sampled(M, seed S)` or `sampled(auto E, seed S)`.
    pub fn describe(self, tau: Tau, seed: u64) -> String {
        match (self, tau) {
            // The linear form is exact and cheaper than any sample.
            (_, Tau::None) | (CrossSample::Exact, _) => "exact".into(),
            (CrossSample::Fixed(m), _) => format!("sampled({m}, seed {seed})"),
            (CrossSample::Auto { error }, _) => format!("sampled(auto {error:e}, seed {seed})"),
        }
    }
}

/// How to tile.
#[derive(Clone, Debug)]
pub struct ScoreOptions {
    pub tau: Tau,
    /// Rows per tile side.
    pub tile_rows: usize,
    pub cross: CrossSample,
    /// Seed of the cross-term samples.
    pub seed: u64,
    /// `--memory-limit`: caps the sample size of `--cross-sample auto`.
    pub memory_limit_bytes: u64,
}

/// Groups of row stripes per class whose column sums are kept apart and
/// reduced in a fixed order: fixed (not the thread count) for determinism.
const STRIPE_GROUPS: usize = 8;
/// Rows per block for the row-wise terms.
pub const BLOCK_ROWS: usize = 1024;

/// Per-class sums of the normalised embeddings, in `f64`.
pub struct ClassSums {
    pub image: Vec<Vec<f64>>,
    pub text: Vec<Vec<f64>>,
}

/// `sum_j u_j` and `sum_j v_j` over one class's rows, in row order (so
/// the result is deterministic).
pub fn class_sum(rows: &dyn ClassRows) -> (Vec<f64>, Vec<f64>) {
    let (d, n) = (rows.d(), rows.len());
    let (mut su, mut sv) = (vec![0.0; d], vec![0.0; d]);
    let (mut bu, mut bv) = (Vec::new(), Vec::new());
    let mut s = 0;
    while s < n {
        let e = (s + BLOCK_ROWS).min(n);
        let u = rows.image(s..e, &mut bu);
        let v = rows.text(s..e, &mut bv);
        for (x, y) in u.chunks_exact(d).zip(v.chunks_exact(d)) {
            for j in 0..d {
                su[j] += x[j] as f64;
                sv[j] += y[j] as f64;
            }
        }
        s = e;
    }
    (su, sv)
}

/// Sums `u` and `v` over each class ([`class_sum`], classes in parallel).
pub fn class_sums(store: &Store) -> ClassSums {
    let sums: Vec<(Vec<f64>, Vec<f64>)> = (0..store.meta.classes())
        .into_par_iter()
        .map(|k| {
            class_sum(&StoreClass {
                store,
                range: store.meta.class_range(k),
            })
        })
        .collect();
    let (image, text) = sums.into_iter().unzip();
    ClassSums { image, text }
}

/// The centres `m^I_l`, `m^T_l` of the non-empty classes, for `between`.
pub struct Centres {
    /// `[K', d]`: the normalised class sums of the non-empty classes.
    pub image: Vec<f32>,
    pub text: Vec<f32>,
    /// `slot[k]`: class `k`'s index among the non-empty classes.
    pub slot: Vec<usize>,
    /// `K'`.
    pub active: usize,
}

impl Centres {
    /// From the class sums and the class sizes.
    pub fn new(sums: &ClassSums, sizes: &[usize]) -> Centres {
        let active: Vec<usize> = (0..sizes.len()).filter(|&k| sizes[k] > 0).collect();
        let mut slot = vec![usize::MAX; sizes.len()];
        for (i, &k) in active.iter().enumerate() {
            slot[k] = i;
        }
        let centre = |s: &Vec<Vec<f64>>| -> Vec<f32> {
            active
                .iter()
                .flat_map(|&k| normalised(&s[k]).into_iter().map(|x| x as f32))
                .collect()
        };
        Centres {
            image: centre(&sums.image),
            text: centre(&sums.text),
            slot,
            active: active.len(),
        }
    }
}

/// `easy`, `label` and `between` of one class's rows into `terms`
/// (`[n_k, 4]`); `c_k` is the class embedding of class `k`.
pub fn class_row_terms(
    rows: &dyn ClassRows,
    c_k: &[f32],
    centres: &Centres,
    k: usize,
    terms: &mut [f64],
) {
    ClassCtx::new(rows, c_k, centres, k).row_terms(terms)
}

/// One class's `n_k * cross_i` for every row (tiled, linear or sampled as
/// `opts` says), with the sample's report when sampled. `sums`: the
/// class's [`class_sum`]; `sample_cap`: the largest `auto` sample.
pub fn class_cross(
    rows: &dyn ClassRows,
    sums: (&[f64], &[f64]),
    k: usize,
    opts: &ScoreOptions,
    sample_cap: usize,
) -> (Vec<f64>, Option<SampledClass>) {
    let n = rows.len();
    let ctx = ClassCtx {
        rows,
        c_k: &[],
        centre_img: &[],
        centre_txt: &[],
        own: 0,
        active: 0,
    };
    match opts.tau {
        Tau::None => (ctx.cross_linear(sums.0, sums.1), None),
        Tau::Threshold(tau) => match ctx.sample_size(opts, tau, k, sample_cap) {
            Some((m, variance)) => {
                let sample = cross_sample_rows(n, m, opts.seed, k);
                let report = SampledClass {
                    class: k,
                    rows: n,
                    m,
                    estimated_error: standard_error(n, m, variance),
                };
                (ctx.cross_sampled(tau as f32, &sample), Some(report))
            }
            None => (ctx.cross_tiled(tau as f32, opts.tile_rows), None),
        },
    }
}

/// Writes `cross_i = sums_i / n_k` into a class's `terms` (`[n_k, 4]`).
pub fn set_cross(terms: &mut [f64], sums: &[f64]) {
    let inv_n = 1.0 / sums.len() as f64;
    for (row, c) in terms.chunks_exact_mut(TERMS).zip(sums) {
        row[CROSS] = c * inv_n;
    }
}

/// The largest `--cross-sample auto` sample for `rows` rows of dimension
/// `d` under the memory limit `limit`.
pub fn sample_cap(limit: u64, rows: usize, d: usize) -> usize {
    max_sample(limit, rows, d)
}

/// Computes all terms and writes `terms.bin` in `dir`.
///
/// `class_emb` is `[K, d]`: the class prompt (or k-means centroid) `c_k`.
pub fn score(
    store: &Store,
    class_emb: &[f32],
    opts: &ScoreOptions,
    dir: &Path,
) -> Result<ScoreStats> {
    let d = store.d();
    let n = store.rows();
    let kk = store.meta.classes();
    let sums = class_sums(store);
    let sizes: Vec<usize> = (0..kk).map(|k| store.meta.class_range(k).len()).collect();
    let centres = Centres::new(&sums, &sizes);
    let active = centres.active;

    let mut out = MapWriter::create::<f64>(&dir.join(files::TERMS), n * TERMS)?;
    let mut stats = ScoreStats::default();
    {
        let terms = out.slice_mut::<f64>();
        let view = |k: usize| StoreClass {
            store,
            range: store.meta.class_range(k),
        };
        // Two phases, timed apart so a benchmark can report each kernel's
        // rate: the row-wise terms (one GEMM against the class centres),
        // then the cross term (tiles inside each class).
        let t = Instant::now();
        split_by_class(store, terms)
            .into_par_iter()
            .for_each(|(k, t)| {
                if !store.meta.class_range(k).is_empty() {
                    class_row_terms(&view(k), &class_emb[k * d..(k + 1) * d], &centres, k, t);
                }
            });
        stats.row_terms_seconds = t.elapsed().as_secs_f64();
        stats.between_flop = 4.0 * n as f64 * active as f64 * d as f64;

        let t = Instant::now();
        let sample_cap = max_sample(opts.memory_limit_bytes, n, d);
        let sampled: Vec<Option<SampledClass>> = split_by_class(store, terms)
            .into_par_iter()
            .map(|(k, t)| {
                let r = store.meta.class_range(k);
                if r.is_empty() {
                    return None;
                }
                crate::progress::advance(r.len() as u64);
                let sums_k = (&sums.image[k][..], &sums.text[k][..]);
                let (cross, report) = class_cross(&view(k), sums_k, k, opts, sample_cap);
                set_cross(t, &cross);
                report
            })
            .collect();
        stats.cross_seconds = t.elapsed().as_secs_f64();
        let sampled: Vec<SampledClass> = sampled.into_iter().flatten().collect();
        stats.cross_flop = cross_flop(store, opts.tau, &sampled);
        stats.cross = opts.cross.describe(opts.tau, opts.seed);
        if stats.cross != "exact" {
            stats.cross_sample = Some(CrossSampleReport::new(&sampled, kk, opts.seed));
        }
    }
    out.finish()?;
    write_sums(dir, &sums)?;
    Ok(stats)
}

/// The flop of a full run's `cross` on `store`: `2 n_k^2 d` a class,
/// `4 n_k M d` for the `sampled` classes, `4 n_k d` for the linear form.
pub fn cross_flop(store: &Store, tau: Tau, sampled: &[SampledClass]) -> f64 {
    let (d, kk) = (store.d() as f64, store.meta.classes());
    let mut m_of = vec![None; kk];
    for c in sampled {
        m_of[c.class] = Some(c.m);
    }
    (0..kk)
        .map(|k| {
            let nk = store.meta.class_range(k).len() as f64;
            match (tau, m_of[k]) {
                (Tau::None, _) => 4.0 * nk * d,
                (Tau::Threshold(_), None) => 2.0 * nk * nk * d,
                (Tau::Threshold(_), Some(m)) => 4.0 * nk * m as f64 * d,
            }
        })
        .sum()
}

/// Writes `sums.bin`: every class's `sum u` then `sum v`.
pub fn write_sums(dir: &Path, sums: &ClassSums) -> Result<()> {
    let mut w = SeqWriter::create(&dir.join(files::SUMS))?;
    for (u, v) in sums.image.iter().zip(&sums.text) {
        w.write(u)?;
        w.write(v)?;
    }
    w.finish().map(drop)
}

/// Reads `sums.bin` of `classes` classes of dimension `d`.
pub fn read_sums(dir: &Path, classes: usize, d: usize) -> Result<ClassSums> {
    let path = dir.join(files::SUMS);
    let map = Mapped::<f64>::open(&path)?;
    let all = map.as_slice();
    if all.len() != classes * 2 * d {
        return Err(
            crate::error::Error::file(&path, "class sums of another store")
                .with_hint("the store is damaged: rerun with --fresh"),
        );
    }
    let (image, text) = all
        .chunks_exact(2 * d.max(1))
        .map(|c| (c[..d].to_vec(), c[d..].to_vec()))
        .unzip();
    Ok(ClassSums { image, text })
}

/// Work and time of the score stage's two kernels.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct ScoreStats {
    /// The estimator of `cross`: `exact`, or `sampled(M, seed S)`.
    #[serde(default)]
    pub cross: String,
    /// `--cross-sample`: the sample size and estimated error per class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_sample: Option<CrossSampleReport>,
    pub row_terms_seconds: f64,
    /// Floating-point operations of the `between` GEMM.
    pub between_flop: f64,
    pub cross_seconds: f64,
    /// Floating-point operations of the `cross` tiles (`2 n_k^2 d` a class,
    /// `4 n_k M d` sampled), or of the linear form.
    pub cross_flop: f64,
    /// After an append: what the incremental score did, against a full one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<RescoreReport>,
    /// After an append: why the scores were computed in full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_reason: Option<String>,
}

/// What an incremental score after an append did (`stages::rescore`).
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct RescoreReport {
    pub rows_added: u64,
    pub classes_touched: usize,
    /// How `between` was brought up to date.
    pub between: String,
    /// Flop of the `cross` tiles a full score of the grown store computes;
    /// the stats' `cross_flop` is what this score computed.
    pub cross_flop_full: f64,
}

/// One class whose `cross` was estimated from a sample.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct SampledClass {
    pub class: usize,
    pub rows: usize,
    /// The sample size `M`.
    pub m: usize,
    /// Standard error of `cross_i` estimated from a pilot sample.
    pub estimated_error: f64,
}

/// What `--cross-sample` did, for the manifest.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct CrossSampleReport {
    pub seed: u64,
    /// Classes estimated from a sample; the others were exact.
    pub classes_sampled: usize,
    pub classes_exact: usize,
    /// Largest and row-weighted mean estimated standard error of `cross_i`.
    pub estimated_error_max: f64,
    pub estimated_error_mean: f64,
    pub per_class: Vec<SampledClass>,
}

impl CrossSampleReport {
    pub fn new(sampled: &[SampledClass], classes: usize, seed: u64) -> Self {
        let rows: usize = sampled.iter().map(|c| c.rows).sum();
        let weighted: f64 = sampled
            .iter()
            .map(|c| c.estimated_error * c.rows as f64)
            .sum();
        CrossSampleReport {
            seed,
            classes_sampled: sampled.len(),
            classes_exact: classes - sampled.len(),
            estimated_error_max: sampled
                .iter()
                .map(|c| c.estimated_error)
                .fold(0.0, f64::max),
            estimated_error_mean: if rows > 0 {
                weighted / rows as f64
            } else {
                0.0
            },
            per_class: sampled.to_vec(),
        }
    }
}

/// Salts of the sample streams, so the pilot and the sample differ.
const SAMPLE_SALT: u64 = 0x6372_6f73_735f_736d;
const PILOT_SALT: u64 = 0x7069_6c6f_745f_726f;
/// Pilot sample: rows whose spread is measured, and rows they meet.
const PILOT_ROWS: usize = 64;
const PILOT_COLUMNS: usize = 512;
/// Smallest sample `auto` picks.
pub const MIN_AUTO_SAMPLE: usize = 64;

/// The sample `S_k` of class `class`: `m` distinct local indices out of
/// `0..n`, uniform over the `m`-subsets, sorted (Knuth's selection
/// sampling, Algorithm S), determined by `(seed, class)`.
pub fn cross_sample_rows(n: usize, m: usize, seed: u64, class: usize) -> Vec<usize> {
    sample_without_replacement(n, m, Rng::for_index(seed ^ SAMPLE_SALT, class as u64))
}

fn sample_without_replacement(n: usize, m: usize, mut rng: Rng) -> Vec<usize> {
    let m = m.min(n);
    let mut out = Vec::with_capacity(m);
    for i in 0..n {
        if out.len() == m {
            break;
        }
        // Take row i with probability (still needed) / (still available).
        if rng.below((n - i) as u64) < (m - out.len()) as u64 {
            out.push(i);
        }
    }
    out
}

/// Standard error of the sampled `cross_i` of a class of `n` rows with a
/// sample of `m`: `((n-1)/n) * sqrt(s2 / m * (N - m) / (N - 1))`, `N = n - 1`
/// (the mean of `m` of `N` values drawn without replacement), where `s2`
/// is the variance of a row's pair terms.
pub fn standard_error(n: usize, m: usize, variance: f64) -> f64 {
    let big_n = (n - 1) as f64;
    let m = (m as f64).min(big_n);
    let fpc = if big_n > 1.0 {
        ((big_n - m) / (big_n - 1.0)).max(0.0)
    } else {
        0.0
    };
    big_n / n as f64 * (variance / m * fpc).sqrt()
}

/// The largest sample `auto` may use: its two `[M, d]` embedding copies and
/// the `[block, M]` tiles of every thread within the memory left after the
/// per-row state (as `memory::plan` divides it).
fn max_sample(limit: u64, rows: usize, d: usize) -> usize {
    let spare = limit.saturating_sub(40 * rows as u64) / 4;
    let threads = rayon::current_num_threads().max(1) as u64;
    let per_m = threads * (2 * d as u64 * 4 + 2 * SAMPLE_BLOCK_BYTES / 1024);
    ((spare / per_m.max(1)) as usize).max(MIN_AUTO_SAMPLE)
}

/// Bytes of one sampled-cross tile (`[block, M]` f32): the block shrinks
/// as the sample grows.
const SAMPLE_BLOCK_BYTES: u64 = 16 << 20;

/// The terms array cut into one mutable slice per class.
pub fn split_by_class<'a>(store: &Store, terms: &'a mut [f64]) -> Vec<(usize, &'a mut [f64])> {
    let mut per_class = Vec::with_capacity(store.meta.classes());
    let mut rest = terms;
    for k in 0..store.meta.classes() {
        let len = store.meta.class_range(k).len() * TERMS;
        let (head, tail) = rest.split_at_mut(len);
        per_class.push((k, head));
        rest = tail;
    }
    per_class
}

struct ClassCtx<'a> {
    rows: &'a dyn ClassRows,
    c_k: &'a [f32],
    centre_img: &'a [f32],
    centre_txt: &'a [f32],
    /// This class's index among the active classes.
    own: usize,
    active: usize,
}

impl<'a> ClassCtx<'a> {
    fn new(rows: &'a dyn ClassRows, c_k: &'a [f32], centres: &'a Centres, k: usize) -> Self {
        ClassCtx {
            rows,
            c_k,
            centre_img: &centres.image,
            centre_txt: &centres.text,
            own: centres.slot[k],
            active: centres.active,
        }
    }

    /// easy, label and between for every row of the class.
    fn row_terms(&self, terms: &mut [f64]) {
        let (d, n) = (self.rows.d(), self.rows.len());
        let ka = self.active;
        let (mut bu, mut bv) = (Vec::new(), Vec::new());
        let (mut gu, mut gv) = (Vec::new(), Vec::new());
        let mut s = 0;
        while s < n {
            let e = (s + BLOCK_ROWS).min(n);
            let u = self.rows.image(s..e, &mut bu);
            let v = self.rows.text(s..e, &mut bv);
            let rows = e - s;
            gu.resize(rows * ka, 0.0);
            gv.resize(rows * ka, 0.0);
            // <u_i, m^T_l> and <v_i, m^I_l> for every active class l.
            gemm_abt(u, self.centre_txt, d, &mut gu);
            gemm_abt(v, self.centre_img, d, &mut gv);
            for i in 0..rows {
                let (ui, vi) = (&u[i * d..(i + 1) * d], &v[i * d..(i + 1) * d]);
                let t = &mut terms[(s + i) * TERMS..][..TERMS];
                t[EASY] = dot_f64(ui, vi);
                t[LABEL] = dot_f64(vi, self.c_k);
                t[BETWEEN] = if ka > 1 {
                    let (a, b) = (&gu[i * ka..(i + 1) * ka], &gv[i * ka..(i + 1) * ka]);
                    let own = a[self.own].max(0.0) as f64 + b[self.own].max(0.0) as f64;
                    (sum_phi(a, Some(0.0)) + sum_phi(b, Some(0.0)) - own) / (ka - 1) as f64
                } else {
                    0.0
                };
            }
            s = e;
        }
    }

    /// `sum_j <u_i, v_j> + <u_j, v_i>` by the linear-time form.
    fn cross_linear(&self, su: &[f64], sv: &[f64]) -> Vec<f64> {
        let (d, n) = (self.rows.d(), self.rows.len());
        let (mut bu, mut bv) = (Vec::new(), Vec::new());
        let mut out = Vec::with_capacity(n);
        let mut s = 0;
        while s < n {
            let e = (s + BLOCK_ROWS).min(n);
            let u = self.rows.image(s..e, &mut bu);
            let v = self.rows.text(s..e, &mut bv);
            for (ui, vi) in u.chunks_exact(d).zip(v.chunks_exact(d)) {
                out.push(dot_mixed(ui, sv) + dot_mixed(vi, su));
            }
            s = e;
        }
        out
    }

    /// The sample size of this class and the pilot's variance of a row's
    /// pair terms, or `None` for the exact sum (`n_k <= M`, or exact).
    fn sample_size(
        &self,
        opts: &ScoreOptions,
        tau: f64,
        class: usize,
        cap: usize,
    ) -> Option<(usize, f64)> {
        let n = self.rows.len();
        let m = match opts.cross {
            CrossSample::Exact => return None,
            CrossSample::Fixed(m) if m >= n => return None,
            CrossSample::Fixed(m) => Some(m),
            CrossSample::Auto { .. } if n <= MIN_AUTO_SAMPLE => return None,
            CrossSample::Auto { .. } => None,
        };
        let variance = self.pilot_variance(tau as f32, opts.seed, class);
        let m = match (m, opts.cross) {
            (Some(m), _) => m,
            (None, CrossSample::Auto { error }) => {
                // Solve standard_error(n, m, variance) = error for m.
                let big_n = (n - 1) as f64;
                let c = (big_n / n as f64).powi(2) * variance;
                let m = c * big_n / (error * error * (big_n - 1.0).max(1.0) + c);
                (m.ceil() as usize).clamp(MIN_AUTO_SAMPLE, cap)
            }
            _ => unreachable!("exact handled above"),
        };
        (m < n).then_some((m, variance))
    }

    /// Mean over pilot rows `i` of the sample variance of the pair terms
    /// `phi(<u_i, v_j>) + phi(<u_j, v_i>)`, `j != i` in a pilot sample.
    fn pilot_variance(&self, tau: f32, seed: u64, class: usize) -> f64 {
        let (n, d) = (self.rows.len(), self.rows.d());
        let pilot = |count: usize, salt: u64| {
            let rng = Rng::for_index(seed ^ PILOT_SALT ^ salt, class as u64);
            sample_without_replacement(n, count, rng)
        };
        let rows = pilot(PILOT_ROWS, 1);
        let cols = pilot(PILOT_COLUMNS, 2);
        let (mut b1, mut b2, mut b3, mut b4) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let ur = self.rows.image_at(&rows, &mut b1);
        let vr = self.rows.text_at(&rows, &mut b2);
        let uc = self.rows.image_at(&cols, &mut b3);
        let vc = self.rows.text_at(&cols, &mut b4);
        let (p, q) = (rows.len(), cols.len());
        let mut a = vec![0.0f32; p * q];
        let mut b = vec![0.0f32; p * q];
        gemm_abt(ur, vc, d, &mut a);
        gemm_abt(vr, uc, d, &mut b);
        let mut total = 0.0;
        let mut counted = 0;
        for (r, &i) in rows.iter().enumerate() {
            let x: Vec<f64> = (0..q)
                .filter(|&c| cols[c] != i)
                .map(|c| phi(a[r * q + c], Some(tau)) as f64 + phi(b[r * q + c], Some(tau)) as f64)
                .collect();
            if x.len() < 2 {
                continue;
            }
            let mean = x.iter().sum::<f64>() / x.len() as f64;
            total += x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (x.len() - 1) as f64;
            counted += 1;
        }
        if counted > 0 {
            total / counted as f64
        } else {
            0.0
        }
    }

    /// The sampled `n_k * cross_i`: `2 phi(<u_i, v_i>) + (n_k - 1)` times the
    /// mean of `phi(<u_i, v_j>) + phi(<u_j, v_i>)` over `j` in the sample
    /// other than `i` (README, "Sampled cross term"). `sample`: sorted local
    /// indices, at least two.
    fn cross_sampled(&self, tau: f32, sample: &[usize]) -> Vec<f64> {
        let (n, d) = (self.rows.len(), self.rows.d());
        let m = sample.len();
        let (mut b1, mut b2) = (Vec::new(), Vec::new());
        let us = self.rows.image_at(sample, &mut b1);
        let vs = self.rows.text_at(sample, &mut b2);
        let block = ((SAMPLE_BLOCK_BYTES / 4) as usize / m).clamp(16, BLOCK_ROWS);
        let parts: Vec<Vec<f64>> = (0..n.div_ceil(block))
            .into_par_iter()
            .map(|b| {
                let r = b * block..((b + 1) * block).min(n);
                let (mut bu, mut bv) = (Vec::new(), Vec::new());
                let u = self.rows.image(r.clone(), &mut bu);
                let v = self.rows.text(r.clone(), &mut bv);
                sampled_sums(u, v, us, vs, d, tau, r, sample, n)
            })
            .collect();
        parts.concat()
    }

    /// `sum_j phi(<u_i, v_j>) + phi(<u_j, v_i>)`, tile by tile: every
    /// block of [`cross_block`] in parallel, then [`cross_reduce`].
    fn cross_tiled(&self, tau: f32, tile: usize) -> Vec<f64> {
        let n = self.rows.len();
        let blocks: Vec<TileBlock> = (0..cross_blocks(n, tile))
            .into_par_iter()
            .map(|g| cross_block(self.rows, tau, tile, g))
            .collect();
        cross_reduce(n, tile, &blocks)
    }
}

/// The tiled cross sum of a class of `n` rows is cut into this many
/// blocks (stripe groups), each a task of its own ([`cross_block`]).
///
/// Stripe `I` of image rows meets every stripe `J` of caption rows; its
/// row sums complete the first half for rows `I`, its column sums add to
/// the second half for rows `J`. Stripes are dealt to a fixed number of
/// groups (not the thread count, for determinism), each with its own
/// column-sum vector.
pub fn cross_blocks(n: usize, tile: usize) -> usize {
    n.div_ceil(tile.max(1)).min(STRIPE_GROUPS)
}

/// One block's share of a class's tiled cross sum: the full row sums of
/// its stripes and its column sums over the whole class.
#[derive(Clone, Debug, Default)]
pub struct TileBlock {
    /// `(stripe, row sums)` of the stripes `g, g + blocks, ...`.
    pub rows: Vec<(usize, Vec<f64>)>,
    /// `[n]`: the block's column sums.
    pub cols: Vec<f64>,
}

/// Block `g` of [`cross_blocks`] of a class's tiled cross sum.
pub fn cross_block(rows: &dyn ClassRows, tau: f32, tile: usize, g: usize) -> TileBlock {
    let (n, d) = (rows.len(), rows.d());
    let tile = tile.max(1);
    let stripes = n.div_ceil(tile);
    let groups = cross_blocks(n, tile);
    let stripe = |i: usize| (i * tile)..((i + 1) * tile).min(n);
    let mut cols = vec![0.0f64; n];
    let mut rows_out = Vec::new();
    let (mut bu, mut bv, mut sim) = (Vec::new(), Vec::new(), Vec::new());
    for si in (g..stripes).step_by(groups.max(1)) {
        let ri = stripe(si);
        let u = rows.image(ri.clone(), &mut bu);
        let mut sums = vec![0.0f64; ri.len()];
        for sj in 0..stripes {
            let rj = stripe(sj);
            let v = rows.text(rj.clone(), &mut bv);
            sim.resize(ri.len() * rj.len(), 0.0);
            gemm_abt(u, v, d, &mut sim);
            threshold_sums(&sim, rj.len(), tau, &mut sums, &mut cols[rj]);
        }
        rows_out.push((si, sums));
    }
    TileBlock {
        rows: rows_out,
        cols,
    }
}

/// The class's `n_k * cross_i` from all its blocks: the row sums put in
/// place, then the column sums added block by block in block order.
pub fn cross_reduce(n: usize, tile: usize, blocks: &[TileBlock]) -> Vec<f64> {
    let tile = tile.max(1);
    let stripe = |i: usize| (i * tile)..((i + 1) * tile).min(n);
    let mut out = vec![0.0f64; n];
    for b in blocks {
        for (si, rows) in &b.rows {
            out[stripe(*si)].copy_from_slice(rows);
        }
    }
    for b in blocks {
        for (o, c) in out.iter_mut().zip(&b.cols) {
            *o += c;
        }
    }
    out
}

/// [`ClassCtx::cross_sampled`] for the rows `rows` (local indices) of a
/// class of `n` rows, whose embeddings are `u`, `v`; `us`, `vs` are the
/// sample's (local indices `sample`, sorted).
#[allow(clippy::too_many_arguments)]
fn sampled_sums(
    u: &[f32],
    v: &[f32],
    us: &[f32],
    vs: &[f32],
    d: usize,
    tau: f32,
    rows: Range<usize>,
    sample: &[usize],
    n: usize,
) -> Vec<f64> {
    let (len, m) = (rows.len(), sample.len());
    let mut a = vec![0.0f32; len * m];
    let mut b = vec![0.0f32; len * m];
    gemm_abt(u, vs, d, &mut a); // <u_i, v_j>
    gemm_abt(v, us, d, &mut b); // <u_j, v_i>
    let mut sums = vec![0.0f64; len];
    threshold_row_sums(&a, m, Some(tau), &mut sums);
    threshold_row_sums(&b, m, Some(tau), &mut sums);
    let mut others = vec![m; len];
    // Rows of the block that are in the sample: drop their j = i terms.
    let first = sample.partition_point(|&j| j < rows.start);
    let last = sample.partition_point(|&j| j < rows.end);
    for (p, &j) in sample.iter().enumerate().take(last).skip(first) {
        let i = j - rows.start;
        sums[i] -= phi(a[i * m + p], Some(tau)) as f64 + phi(b[i * m + p], Some(tau)) as f64;
        others[i] = m - 1;
    }
    let tau = tau as f64;
    (0..len)
        .map(|i| {
            let s = dot_f64(&u[i * d..(i + 1) * d], &v[i * d..(i + 1) * d]);
            let diag = if s > tau { s } else { 0.0 };
            2.0 * diag + (n - 1) as f64 * sums[i] / others[i] as f64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit_rows(n: usize, d: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        let mut x: Vec<f32> = (0..n * d).map(|_| (r.normal() + 0.3) as f32).collect();
        for row in x.chunks_exact_mut(d) {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            row.iter_mut().for_each(|v| *v /= norm);
        }
        x
    }

    fn dot64(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
    }

    #[test]
    fn sample_is_uniform_without_replacement() {
        let (n, m) = (20, 5);
        let mut hits = vec![0usize; n];
        for seed in 0..4000 {
            let s = cross_sample_rows(n, m, seed, 3);
            assert_eq!(s.len(), m);
            assert!(s.windows(2).all(|w| w[0] < w[1]), "sorted, distinct");
            assert_eq!(s, cross_sample_rows(n, m, seed, 3), "deterministic");
            for j in s {
                hits[j] += 1;
            }
        }
        // Each row is drawn with probability m / n = 1/4: 1000 of 4000.
        for h in hits {
            assert!((850..1150).contains(&h), "{h}");
        }
        assert_ne!(
            cross_sample_rows(100, 10, 1, 0),
            cross_sample_rows(100, 10, 1, 1)
        );
        assert_eq!(cross_sample_rows(7, 9, 0, 0), (0..7).collect::<Vec<_>>());
    }

    /// The sampled sums against the estimator written out in f64, and their
    /// mean over many samples against the exact sum (unbiasedness).
    #[test]
    fn sampled_cross_is_the_estimator_and_unbiased() {
        let (n, d, m) = (40, 8, 6);
        let u = unit_rows(n, d, 1);
        let v = unit_rows(n, d, 2);
        let tau = 0.05f32;
        let phi64 = |s: f64| if s > tau as f64 { s } else { 0.0 };
        let row = |x: &[f32], i: usize| x[i * d..(i + 1) * d].to_vec();
        let exact: Vec<f64> = (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| {
                        phi64(dot64(&row(&u, i), &row(&v, j)))
                            + phi64(dot64(&row(&u, j), &row(&v, i)))
                    })
                    .sum()
            })
            .collect();
        let seeds = 4000;
        let mut mean = vec![0.0; n];
        for seed in 0..seeds {
            let sample = cross_sample_rows(n, m, seed, 0);
            let us: Vec<f32> = sample.iter().flat_map(|&j| row(&u, j)).collect();
            let vs: Vec<f32> = sample.iter().flat_map(|&j| row(&v, j)).collect();
            // Two blocks, so a block's sampled rows are found by offset.
            let mut got = sampled_sums(
                &u[..25 * d],
                &v[..25 * d],
                &us,
                &vs,
                d,
                tau,
                0..25,
                &sample,
                n,
            );
            got.extend(sampled_sums(
                &u[25 * d..],
                &v[25 * d..],
                &us,
                &vs,
                d,
                tau,
                25..n,
                &sample,
                n,
            ));
            for i in 0..n {
                let others: Vec<usize> = sample.iter().copied().filter(|&j| j != i).collect();
                let pairs: f64 = others
                    .iter()
                    .map(|&j| {
                        phi64(dot64(&row(&u, i), &row(&v, j)))
                            + phi64(dot64(&row(&u, j), &row(&v, i)))
                    })
                    .sum();
                let want = 2.0 * phi64(dot64(&row(&u, i), &row(&v, i)))
                    + (n - 1) as f64 * pairs / others.len() as f64;
                assert!(
                    (got[i] - want).abs() < 1e-4,
                    "row {i}: {} vs {want}",
                    got[i]
                );
                mean[i] += got[i] / seeds as f64;
            }
        }
        for i in 0..n {
            // The standard error of the mean of 4000 draws is well under 2%.
            assert!(
                (mean[i] - exact[i]).abs() < 0.03 * exact[i].abs() + 0.02,
                "row {i}: mean {} vs exact {}",
                mean[i],
                exact[i]
            );
        }
    }

    #[test]
    fn standard_error_vanishes_with_the_whole_class() {
        assert_eq!(standard_error(101, 100, 1.0), 0.0);
        let e = standard_error(1001, 100, 0.04);
        assert!((e - 1000.0 / 1001.0 * (0.04f64 / 100.0 * 900.0 / 999.0).sqrt()).abs() < 1e-12);
    }
}
