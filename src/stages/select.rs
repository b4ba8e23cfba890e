//! Stage 4, select: the greedy of spec section 3.
//!
//! A refresh touches only the picked row's class, so each class runs its own
//! greedy and a heap merges the classes' next picks (largest score, ties to
//! the smallest row index), reproducing the global order exactly. Between
//! two refreshes a class's scores do not change, so its next `R` picks are
//! simply its current top `R`: one partial sort per refresh period instead
//! of an argmax per pick. Classes are filled in parallel; a class is
//! refreshed (with a GEMM against its `R` new picks) only when the merge
//! needs its next pick.
//!
//! The lazy refresh (the default where it is exact): with `tau >= 0` and
//! `w_cross >= 0` a refresh only lowers a row's score by its redundancy
//! (`>= 0`) and by the class saturation (the same for every row of the
//! class). A refresh then only records its picks and its saturation; a row
//! is brought up to date, replaying the missed refreshes in order with the
//! eager arithmetic, only when its stale score minus the saturation since
//! could still place it among the class's next `R` picks (lazy greedy,
//! Minoux 1978). The picks are the eager refresh's.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::kernels::dense::{dot_mixed, gemm_abt, threshold_row_sums};
use crate::kernels::topk::{better_first, top_k};
use crate::stages::score::{Tau, BETWEEN, CROSS, EASY, LABEL, TERMS};
use crate::store::{ClassRows, Store, StoreClass};

/// How many rows to keep.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    Fraction(f64),
    Count(u64),
}

impl Budget {
    /// `B = floor(f * N)` or the count, capped at `N`.
    pub fn rows(self, n: u64) -> u64 {
        match self {
            Budget::Fraction(f) => ((f * n as f64).floor() as u64).min(n),
            Budget::Count(c) => c.min(n),
        }
    }
}

impl Budget {
    /// The budget for `n` staged rows, checked: a budget that keeps no row
    /// is a usage error naming the numbers; a count above `n` is capped at
    /// `n`, with the warning returned (and printed) for the manifest.
    pub fn checked_rows(self, n: u64) -> Result<(u64, Option<String>)> {
        let rows = self.rows(n);
        match self {
            Budget::Count(0) => Err(Error::Usage(
                "--budget 0 keeps no rows; give a budget of at least 1".into(),
            )),
            Budget::Fraction(f) if rows == 0 => Err(Error::Usage(format!(
                "--fraction {f} of the {n} rows keeps floor({f} x {n}) = 0 rows; give --fraction of at least {} or --budget COUNT",
                1.0 / n as f64
            ))),
            Budget::Count(c) if c > n => {
                let w = format!(
                    "--budget {c} is more than the {n} rows staged; keeping all {n}"
                );
                crate::progress::warn(&w);
                Ok((rows, Some(w)))
            }
            _ => Ok((rows, None)),
        }
    }
}

/// The weights of the initial score.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Weights {
    pub cross: f64,
    pub easy: f64,
    pub label: f64,
    pub between: f64,
}

impl std::str::FromStr for Weights {
    type Err = Error;

    /// `--weights w_cross,w_easy,w_label,w_between`.
    fn from_str(s: &str) -> Result<Weights> {
        let v: Vec<f64> = s
            .split(',')
            .map(|x| x.trim().parse::<f64>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| {
                Error::Usage(format!(
                    "invalid --weights '{s}': expected four numbers, e.g. 1,2,0.5,1"
                ))
            })?;
        if v.len() != 4 || v.iter().any(|x| !x.is_finite()) {
            return Err(Error::Usage(format!(
                "invalid --weights '{s}': expected four finite numbers w_cross,w_easy,w_label,w_between"
            )));
        }
        Ok(Weights {
            cross: v[0],
            easy: v[1],
            label: v[2],
            between: v[3],
        })
    }
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            cross: 1.0,
            easy: 2.0,
            label: 0.5,
            between: 1.0,
        }
    }
}

/// The refresh period `R` of the greedy (spec section 3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Refresh {
    /// `R = max(1, round(0.705 * B / K'))`: about 0.7 of a class's share of
    /// the budget, which is the notebook's 200 at its CC3M setting (283,781
    /// picks over 1000 classes) and keeps saturation and redundancy working
    /// when a class gets only a few picks.
    #[default]
    Auto,
    /// A fixed period (200 reproduces the notebook).
    Every(usize),
}

impl Refresh {
    /// The period for a budget of `budget` picks over `nonempty` classes.
    pub fn period(self, budget: usize, nonempty: usize) -> usize {
        match self {
            Refresh::Every(r) => r.max(1),
            Refresh::Auto => {
                let per_class = budget as f64 / nonempty.max(1) as f64;
                ((0.705 * per_class).round() as usize).max(1)
            }
        }
    }
}

impl std::str::FromStr for Refresh {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => Ok(Refresh::Auto),
            t => match t.parse::<usize>() {
                Ok(r) if r >= 1 => Ok(Refresh::Every(r)),
                _ => Err(format!(
                    "invalid --refresh '{s}': expected 'auto' or a whole number of at least 1"
                )),
            },
        }
    }
}

impl std::fmt::Display for Refresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refresh::Auto => f.write_str("auto"),
            Refresh::Every(r) => write!(f, "{r}"),
        }
    }
}

impl Serialize for Refresh {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Refresh::Auto => s.serialize_str("auto"),
            Refresh::Every(r) => s.serialize_u64(*r as u64),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Refresh {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(r) => r.to_string().parse().map_err(serde::de::Error::custom),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// How a refresh reaches the class's unselected rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefreshMode {
    /// Re-evaluate only the rows that could be among the next picks; used
    /// when exact (`tau >= 0`, `w_cross >= 0`), eager otherwise.
    #[default]
    Lazy,
    /// Update every unselected row of the class at each refresh.
    Eager,
}

impl std::str::FromStr for RefreshMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "lazy" => Ok(RefreshMode::Lazy),
            "eager" => Ok(RefreshMode::Eager),
            _ => Err(format!(
                "invalid --refresh-mode '{s}': expected 'lazy' or 'eager'"
            )),
        }
    }
}

impl RefreshMode {
    /// The mode actually used: lazy only where its bounds hold (every
    /// decrement of the redundancy is `>= 0`).
    pub fn effective(self, tau: Tau, w: &Weights) -> RefreshMode {
        match (self, tau) {
            (RefreshMode::Lazy, Tau::Threshold(t)) if t >= 0.0 && w.cross >= 0.0 => {
                RefreshMode::Lazy
            }
            _ => RefreshMode::Eager,
        }
    }
}

/// The work of the refreshes, for the manifest.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct RefreshStats {
    /// `lazy` or `eager`, as run.
    pub mode: &'static str,
    /// Refreshes (rounds) over all classes.
    pub refreshes: u64,
    /// Row updates done: one per row and refresh applied to it.
    pub row_updates: u64,
    /// Similarity pairs (row, pick) evaluated by the refreshes.
    pub pair_evaluations: u64,
    /// What the eager refresh evaluates on the same run: `n_k` rows against
    /// each refresh's picks, about `picks_k * n_k` a class.
    pub eager_pair_evaluations: u64,
}

#[derive(Clone, Debug)]
pub struct SelectOptions {
    pub weights: Weights,
    /// Refresh period `R`, resolved against the budget.
    pub refresh: usize,
    pub budget: usize,
    pub tau: Tau,
    /// Rows per stripe of the refresh GEMMs.
    pub tile_rows: usize,
    /// Lazy or eager refresh (lazy falls back to eager where not exact).
    pub mode: RefreshMode,
}

/// One selected row.
#[derive(Clone, Copy, Debug)]
pub struct Pick {
    /// Position in the class-sorted store.
    pub pos: usize,
    pub class: usize,
    /// Score at the time of the pick.
    pub score: f64,
}

/// One refresh of a class, as the lazy refresh records it.
struct Round {
    /// The picks since the previous refresh (`new_k`), local indices.
    picks: Vec<usize>,
    /// The class saturation it subtracts from every unselected row.
    saturation: f64,
}

/// A row's stale score in the lazy heap: `key = score + saturation of the
/// refreshes before the row's last update`, so `key - saturation so far` is
/// an upper bound of its fresh score, and the order of keys is the order
/// of bounds.
type Bound = Ranked<()>;

/// A max-heap entry in the spec's order: the larger score first, ties to
/// the smaller index. `item` rides along.
struct Ranked<T> {
    score: f64,
    index: u64,
    item: T,
}

impl<T> PartialEq for Ranked<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<T> Eq for Ranked<T> {}
impl<T> PartialOrd for Ranked<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Ranked<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.index.cmp(&self.index))
    }
}

impl Bound {
    fn new(key: f64, i: usize) -> Bound {
        Ranked {
            score: key,
            index: i as u64,
            item: (),
        }
    }
    fn key(&self) -> f64 {
        self.score
    }
    fn i(&self) -> usize {
        self.index as usize
    }
}

/// The lazy refresh's state of one class.
struct Lazy {
    /// Refreshes already applied to `scores[i]`.
    seen: Vec<u32>,
    /// Unselected rows not in the queue, by bound.
    heap: BinaryHeap<Bound>,
    rounds: Vec<Round>,
    /// `saturation_before[t]`: the saturation of refreshes `0..t`.
    saturation_before: Vec<f64>,
    /// The memory a fill may keep gathered picks in ([`PickRows`]).
    pick_rows_bytes: usize,
}

/// The image and caption rows of one round's picks, as `f32`.
#[derive(Default)]
struct PickRowsOf {
    image: Vec<f32>,
    text: Vec<f32>,
}

/// Most memory [`PickRows`] holds: past it, rounds are gathered per use.
const PICK_ROWS_BYTES: usize = 256 << 20;

/// The rounds' picks, gathered (and, from an f16 store, converted) once per
/// [`ClassGreedy::fill_lazy`] rather than once per batch: the batches of a
/// fill replay mostly the same rounds, and gathering them again for each
/// batch took more time than the GEMMs (a profile at 300k f16 rows).
struct PickRows {
    rounds: Vec<Option<PickRowsOf>>,
    bytes_left: usize,
    /// The gathers' buffer, reused.
    scratch: Vec<f32>,
}

impl PickRows {
    fn new(limit: usize) -> Self {
        PickRows {
            rounds: Vec::new(),
            bytes_left: limit,
            scratch: Vec::new(),
        }
    }

    /// Round `t`'s pick rows `(image, text)`: kept from an earlier call, or
    /// gathered now (into `spare` once the limit is reached).
    fn get<'a>(
        &'a mut self,
        t: usize,
        idx: &[usize],
        class: &dyn ClassRows,
        spare: &'a mut PickRowsOf,
    ) -> (&'a [f32], &'a [f32]) {
        if self.rounds.len() <= t {
            self.rounds.resize_with(t + 1, || None);
        }
        let bytes = 2 * idx.len() * class.d() * std::mem::size_of::<f32>();
        let keep = self.rounds[t].is_none() && bytes <= self.bytes_left;
        if keep {
            self.bytes_left -= bytes;
            let mut rows = PickRowsOf::default();
            gather_picks(idx, class, &mut rows, &mut self.scratch);
            self.rounds[t] = Some(rows);
        }
        let rows = match &self.rounds[t] {
            Some(rows) => rows,
            None => {
                gather_picks(idx, class, spare, &mut self.scratch);
                spare
            }
        };
        (&rows.image, &rows.text)
    }
}

/// Gathers the rows `idx` of `class` into `out`, in its buffers. A gather
/// may return a view of the store rather than `scratch`, hence the copy: it
/// moves `R` rows, small next to the conversion it saves repeating.
fn gather_picks(
    idx: &[usize],
    class: &dyn ClassRows,
    out: &mut PickRowsOf,
    scratch: &mut Vec<f32>,
) {
    out.image.clear();
    out.image.extend_from_slice(class.image_at(idx, scratch));
    out.text.clear();
    out.text.extend_from_slice(class.text_at(idx, scratch));
}

/// Rounding slack on a bound: the bound and the replayed score sum the same
/// saturations in different orders.
fn slack(key: f64, saturation: f64) -> f64 {
    1e-9 * (1.0 + key.abs() + saturation.abs())
}

/// One class's greedy.
struct ClassGreedy {
    class: usize,
    start: usize,
    scores: Vec<f64>,
    taken: Vec<bool>,
    remaining: usize,
    /// Picks of the current period, best first: (score, local index).
    queue: VecDeque<(f64, usize)>,
    /// Picks since the last refresh (`new_k`), local indices.
    new: Vec<usize>,
    /// `w_cross * sum_{j in sel_k} cross_j`: all of the class's picks.
    cross_saturation: f64,
    /// `w_label * sum_{j in new_k} label_j`: the picks since the last refresh
    /// only, as the authors' notebook sums it.
    label_saturation: f64,
    /// The lazy refresh's state; `None` refreshes eagerly.
    lazy: Option<Lazy>,
    stats: RefreshStats,
}

impl ClassGreedy {
    fn new(class: usize, start: usize, terms: &[f64], w: &Weights, lazy: bool) -> Self {
        let scores: Vec<f64> = terms
            .chunks_exact(TERMS)
            .map(|t| {
                w.cross * t[CROSS] + w.easy * t[EASY] + w.label * t[LABEL] - w.between * t[BETWEEN]
            })
            .collect();
        let n = scores.len();
        let lazy = lazy.then(|| Lazy {
            seen: vec![0; n],
            heap: scores
                .iter()
                .enumerate()
                .map(|(i, &key)| Bound::new(key, i))
                .collect(),
            rounds: Vec::new(),
            saturation_before: vec![0.0],
            pick_rows_bytes: PICK_ROWS_BYTES,
        });
        ClassGreedy {
            class,
            start,
            scores,
            taken: vec![false; n],
            remaining: n,
            queue: VecDeque::new(),
            new: Vec::new(),
            cross_saturation: 0.0,
            label_saturation: 0.0,
            lazy,
            stats: RefreshStats::default(),
        }
    }

    /// Queues the next period: the top `R` unselected rows.
    fn fill(&mut self, rows: &dyn ClassRows, opts: &SelectOptions, refresh: usize) {
        if self.lazy.is_some() {
            return self.fill_lazy(rows, opts, refresh);
        }
        let candidates: Vec<(f64, usize)> = self
            .scores
            .iter()
            .zip(&self.taken)
            .enumerate()
            .filter(|(_, (_, t))| !**t)
            .map(|(i, (s, _))| (*s, i))
            .collect();
        self.queue = top_k(candidates, refresh).into();
    }

    /// [`Self::fill`] for the lazy refresh: brings rows up to date from the
    /// top of the heap until the next `R` picks are certain, that is their
    /// fresh scores beat every remaining bound.
    fn fill_lazy(&mut self, rows: &dyn ClassRows, opts: &SelectOptions, refresh: usize) {
        let need = refresh.min(self.remaining);
        let lz = self.lazy.as_mut().expect("lazy state");
        let now = lz.rounds.len();
        let done = lz.saturation_before[now];
        // Rows popped per batch: enough for a GEMM, few enough not to bring
        // far more rows up to date than the period needs.
        let batch_rows = (2 * need).clamp(16, 512);
        let mut picks = PickRows::new(lz.pick_rows_bytes);
        let mut fresh: Vec<(f64, usize)> = Vec::new();
        loop {
            let kth = (need > 0 && fresh.len() >= need).then(|| {
                fresh.select_nth_unstable_by(need - 1, |a, b| better_first(*a, *b));
                fresh[need - 1].0
            });
            let lz = self.lazy.as_mut().expect("lazy state");
            // A bound that cannot reach the need-th fresh score: certain.
            let beaten = |b: &Bound| kth.is_some_and(|k| k > b.key() - done + slack(b.key(), done));
            match lz.heap.peek() {
                None => break,
                Some(b) if beaten(b) => break,
                _ => {}
            }
            let mut batch = Vec::new();
            let mut popped = 0;
            while popped < batch_rows {
                match lz.heap.peek() {
                    Some(b) if !beaten(b) => {}
                    _ => break,
                }
                let b = lz.heap.pop().expect("peeked");
                popped += 1;
                if lz.seen[b.i()] as usize == now {
                    fresh.push((self.scores[b.i()], b.i()));
                } else {
                    batch.push(b.i());
                }
            }
            self.catch_up(&mut batch, rows, opts, &mut picks);
            fresh.extend(batch.iter().map(|&i| (self.scores[i], i)));
        }
        fresh.sort_unstable_by(|a, b| better_first(*a, *b));
        let rest = fresh.split_off(need.min(fresh.len()));
        let lz = self.lazy.as_mut().expect("lazy state");
        for (s, i) in rest {
            lz.heap.push(Bound::new(s + done, i));
        }
        self.queue = fresh.into();
    }

    /// Replays on the rows `batch` the refreshes they missed, in order and
    /// with the eager refresh's arithmetic.
    fn catch_up(
        &mut self,
        batch: &mut [usize],
        class: &dyn ClassRows,
        opts: &SelectOptions,
        picks: &mut PickRows,
    ) {
        if batch.is_empty() {
            return;
        }
        let d = class.d();
        let n = self.scores.len();
        let tau = opts.tau.as_f32();
        let w = &opts.weights;
        let inv_n = 1.0 / n as f64;
        let lz = self.lazy.as_mut().expect("lazy state");
        let now = lz.rounds.len();
        // Oldest first: the rows that missed refresh t are a prefix.
        batch.sort_by_key(|&i| lz.seen[i]);
        let (mut bu, mut bv, mut spare) = (Vec::new(), Vec::new(), PickRowsOf::default());
        let u = class.image_at(batch, &mut bu);
        let v = class.text_at(batch, &mut bv);
        let mut prefix = 0;
        for t in lz.seen[batch[0]] as usize..now {
            while prefix < batch.len() && lz.seen[batch[prefix]] as usize <= t {
                prefix += 1;
            }
            let round = &lz.rounds[t];
            let (un, vn) = picks.get(t, &round.picks, class, &mut spare);
            let red = stripes_redundancy(&u[..prefix * d], &v[..prefix * d], un, vn, d, tau);
            for (&i, r) in batch[..prefix].iter().zip(&red) {
                let s = &mut self.scores[i];
                *s -= w.cross * inv_n * r;
                *s -= round.saturation;
            }
            self.stats.row_updates += prefix as u64;
            self.stats.pair_evaluations += (prefix * round.picks.len()) as u64;
        }
        for &i in batch.iter() {
            lz.seen[i] = now as u32;
        }
    }

    fn head(&self) -> Option<(f64, usize)> {
        self.queue.front().copied()
    }

    /// Takes the head pick.
    fn take(&mut self, terms: &[f64], w: &Weights) -> (f64, usize) {
        let (s, i) = self.queue.pop_front().expect("take from an empty queue");
        self.taken[i] = true;
        self.remaining -= 1;
        self.new.push(i);
        let t = &terms[i * TERMS..(i + 1) * TERMS];
        self.cross_saturation += w.cross * t[CROSS];
        self.label_saturation += w.label * t[LABEL];
        (s, i)
    }

    /// Takes the head pick; when that ends a period (`c_k` a multiple of
    /// `R`) and `more` picks may follow, refreshes the class and queues its
    /// next period.
    fn pick(
        &mut self,
        rows: &dyn ClassRows,
        terms: &[f64],
        opts: &SelectOptions,
        refresh: usize,
        more: bool,
    ) -> (f64, usize) {
        let picked = self.take(terms, &opts.weights);
        if self.queue.is_empty() && self.remaining > 0 && more {
            self.refresh(rows, opts);
            self.fill(rows, opts, refresh);
        }
        picked
    }

    /// The refresh of spec section 3, step 2.
    fn refresh(&mut self, rows: &dyn ClassRows, opts: &SelectOptions) {
        let n = self.scores.len();
        let d = rows.d();
        let new = std::mem::take(&mut self.new);
        let w = &opts.weights;
        let inv_n = 1.0 / n as f64;
        let sat = inv_n * (self.cross_saturation + self.label_saturation);
        self.label_saturation = 0.0;
        self.stats.refreshes += 1;
        self.stats.eager_pair_evaluations += (n * new.len()) as u64;
        if let Some(lz) = self.lazy.as_mut() {
            // Recorded only; rows catch up when they could be picked.
            let before = lz.saturation_before[lz.rounds.len()];
            lz.saturation_before.push(before + sat);
            lz.rounds.push(Round {
                picks: new,
                saturation: sat,
            });
            return;
        }
        self.stats.row_updates += self.remaining as u64;
        self.stats.pair_evaluations += (n * new.len()) as u64;
        // Embeddings of the new picks, gathered.
        let (mut un, mut vn) = (
            Vec::with_capacity(new.len() * d),
            Vec::with_capacity(new.len() * d),
        );
        let mut buf = Vec::new();
        for &j in &new {
            un.extend_from_slice(rows.image(j..j + 1, &mut buf));
            vn.extend_from_slice(rows.text(j..j + 1, &mut buf));
        }
        let redundancy: Vec<f64> = match opts.tau {
            Tau::None => {
                let (mut su, mut sv) = (vec![0.0f64; d], vec![0.0f64; d]);
                for (x, y) in un.chunks_exact(d).zip(vn.chunks_exact(d)) {
                    for k in 0..d {
                        su[k] += x[k] as f64;
                        sv[k] += y[k] as f64;
                    }
                }
                self.per_stripe(rows, opts.tile_rows, |u, v, _| {
                    u.chunks_exact(d)
                        .zip(v.chunks_exact(d))
                        .map(|(ui, vi)| dot_mixed(ui, &sv) + dot_mixed(vi, &su))
                        .collect()
                })
            }
            Tau::Threshold(t) => {
                let tau = Some(t as f32);
                self.per_stripe(rows, opts.tile_rows, |u, v, _| {
                    redundancy(u, v, &un, &vn, d, tau)
                })
            }
        };
        for ((s, taken), red) in self.scores.iter_mut().zip(&self.taken).zip(&redundancy) {
            if !taken {
                *s -= w.cross * inv_n * red;
                *s -= sat;
            }
        }
    }

    /// Runs `f(u_rows, v_rows, rows)` over stripes of the class in parallel
    /// and concatenates the per-row results.
    fn per_stripe(
        &self,
        rows: &dyn ClassRows,
        tile: usize,
        f: impl Fn(&[f32], &[f32], usize) -> Vec<f64> + Sync,
    ) -> Vec<f64> {
        let n = self.scores.len();
        let tile = tile.max(1);
        let parts: Vec<Vec<f64>> = (0..n.div_ceil(tile))
            .into_par_iter()
            .map(|s| {
                let r = (s * tile)..((s + 1) * tile).min(n);
                let (mut bu, mut bv) = (Vec::new(), Vec::new());
                let u = rows.image(r.clone(), &mut bu);
                let v = rows.text(r.clone(), &mut bv);
                f(u, v, r.len())
            })
            .collect();
        parts.concat()
    }
}

/// Rows per GEMM of [`redundancy`]: bounds its tiles. A row's redundancy
/// does not depend on the rows computed with it, because `gemm_abt` gives
/// each entry the same bits in any tile shape, so the lazy refresh
/// reproduces the eager one to the last bit.
const REDUNDANCY_ROWS: usize = 64;

/// `sum_{j in picks} phi(<u_i, v_j>) + phi(<u_j, v_i>)` for every row `i`
/// of `u`, `v` against the picks' `un`, `vn`: two GEMMs per block of
/// [`REDUNDANCY_ROWS`] rows.
fn redundancy(
    u: &[f32],
    v: &[f32],
    un: &[f32],
    vn: &[f32],
    d: usize,
    tau: Option<f32>,
) -> Vec<f64> {
    let rows = u.len() / d.max(1);
    let r = un.len() / d.max(1);
    let block = REDUNDANCY_ROWS;
    let mut out = vec![0.0f64; rows];
    let mut a = vec![0.0f32; block * r];
    let mut b = vec![0.0f32; block * r];
    for (s, o) in out.chunks_mut(block).enumerate() {
        let len = o.len();
        let range = s * block * d..(s * block + len) * d;
        let (a, b) = (&mut a[..len * r], &mut b[..len * r]);
        gemm_abt(&u[range.clone()], vn, d, a); // <u_i, v_j>
        gemm_abt(&v[range], un, d, b); // <u_j, v_i>
        threshold_row_sums(a, r, tau, o);
        threshold_row_sums(b, r, tau, o);
    }
    out
}

/// [`redundancy`] over blocks of rows in parallel.
fn stripes_redundancy(
    u: &[f32],
    v: &[f32],
    un: &[f32],
    vn: &[f32],
    d: usize,
    tau: Option<f32>,
) -> Vec<f64> {
    let stripe = REDUNDANCY_ROWS;
    let rows = u.len() / d.max(1);
    (0..rows.div_ceil(stripe))
        .into_par_iter()
        .flat_map_iter(|s| {
            let r = s * stripe * d..((s + 1) * stripe).min(rows) * d;
            redundancy(&u[r.clone()], &v[r], un, vn, d, tau)
        })
        .collect()
}

/// A class's next candidate in the merge heap: its score, its row index
/// and the class.
type Head = Ranked<usize>;

/// Runs the selection; `terms` is the score stage's `[rows, 4]` array.
pub fn select(store: &Store, terms: &[f64], opts: &SelectOptions) -> Vec<Pick> {
    select_with_stats(store, terms, opts).0
}

/// [`select`], with the work its refreshes did.
pub fn select_with_stats(
    store: &Store,
    terms: &[f64],
    opts: &SelectOptions,
) -> (Vec<Pick>, RefreshStats) {
    let budget = opts.budget.min(store.rows());
    let refresh = opts.refresh.max(1);
    let w = opts.weights;
    let lazy = opts.mode.effective(opts.tau, &w) == RefreshMode::Lazy;
    let mut classes: Vec<ClassGreedy> = (0..store.meta.classes())
        .into_par_iter()
        .map(|k| {
            let r = store.meta.class_range(k);
            let t = &terms[r.start * TERMS..r.end * TERMS];
            let mut g = ClassGreedy::new(k, r.start, t, &w, lazy);
            g.fill(&StoreClass { store, range: r }, opts, refresh);
            g
        })
        .collect();
    let mut heap = BinaryHeap::with_capacity(classes.len());
    let head_of = |g: &ClassGreedy| {
        g.head().map(|(score, i)| Head {
            score,
            index: store.row_index(g.start + i),
            item: g.class,
        })
    };
    for g in &classes {
        if let Some(h) = head_of(g) {
            heap.push(h);
        }
    }
    let mut picks = Vec::with_capacity(budget);
    while picks.len() < budget {
        let Some(top) = heap.pop() else { break };
        let g = &mut classes[top.item];
        let range = g.start..g.start + g.scores.len();
        let class_terms = &terms[range.start * TERMS..range.end * TERMS];
        let view = StoreClass { store, range };
        let more = picks.len() + 1 < budget;
        let (score, i) = g.pick(&view, class_terms, opts, refresh, more);
        picks.push(Pick {
            pos: g.start + i,
            class: g.class,
            score,
        });
        if let Some(h) = head_of(g) {
            heap.push(h);
        }
    }
    let mut stats = RefreshStats {
        mode: if lazy { "lazy" } else { "eager" },
        ..RefreshStats::default()
    };
    for g in &classes {
        stats.refreshes += g.stats.refreshes;
        stats.row_updates += g.stats.row_updates;
        stats.pair_evaluations += g.stats.pair_evaluations;
        stats.eager_pair_evaluations += g.stats.eager_pair_evaluations;
    }
    (picks, stats)
}

/// One class's greedy on its own (spec section 3): its first `max_picks`
/// picks, in order, as `(score at the pick, local index)`. `terms` is the
/// class's `[n_k, 4]`; `opts.refresh` the resolved period `R`. The class
/// runs exactly as inside [`select`], so [`merge_sequences`] of every
/// class's sequence gives `select`'s picks.
pub fn class_sequence(
    rows: &dyn ClassRows,
    terms: &[f64],
    opts: &SelectOptions,
    max_picks: usize,
) -> (Vec<(f64, usize)>, RefreshStats) {
    let refresh = opts.refresh.max(1);
    let lazy = opts.mode.effective(opts.tau, &opts.weights) == RefreshMode::Lazy;
    let mut g = ClassGreedy::new(0, 0, terms, &opts.weights, lazy);
    g.fill(rows, opts, refresh);
    let max_picks = max_picks.min(rows.len());
    let mut out = Vec::with_capacity(max_picks);
    while out.len() < max_picks && g.head().is_some() {
        let more = out.len() + 1 < max_picks;
        out.push(g.pick(rows, terms, opts, refresh, more));
    }
    let mut stats = g.stats;
    stats.mode = if lazy { "lazy" } else { "eager" };
    (out, stats)
}

/// One class's pick sequence, as the merge reads it.
pub struct ClassSequence<'a> {
    pub class: usize,
    /// Canonical row index of each pick (the tie-break).
    pub rows: &'a [u64],
    /// Score of each pick.
    pub scores: &'a [f64],
    /// `false` when the class may have more picks than these.
    pub complete: bool,
}

/// What [`merge_sequences`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Merged {
    /// The ranked selection: `(sequence, index in it)` per rank.
    Done(Vec<(usize, usize)>),
    /// The merge needs a pick past the end of this incomplete sequence.
    NeedMore(usize),
}

/// The heap merge of per-class sequences into the global order (largest
/// score first, ties to the smallest row index), up to `budget` picks.
pub fn merge_sequences(seqs: &[ClassSequence], budget: usize) -> Merged {
    let mut heap = BinaryHeap::with_capacity(seqs.len());
    let head = |s: usize, at: usize| -> Option<Ranked<(usize, usize)>> {
        let q = &seqs[s];
        (at < q.scores.len()).then(|| Ranked {
            score: q.scores[at],
            index: q.rows[at],
            item: (s, at),
        })
    };
    for (s, q) in seqs.iter().enumerate() {
        match head(s, 0) {
            Some(h) => heap.push(h),
            None if !q.complete => return Merged::NeedMore(s),
            None => {}
        }
    }
    let mut out = Vec::with_capacity(budget);
    while out.len() < budget {
        let Some(top) = heap.pop() else { break };
        let (s, at) = top.item;
        out.push((s, at));
        if out.len() == budget {
            break;
        }
        match head(s, at + 1) {
            Some(h) => heap.push(h),
            None if !seqs[s].complete => return Merged::NeedMore(s),
            None => {}
        }
    }
    Merged::Done(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::store::SliceRows;

    fn normals(g: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| g.normal() as f32).collect()
    }

    /// A row's redundancy is the same bits whatever rows are computed with
    /// it, which the lazy refresh's identity with the eager one rests on.
    #[test]
    fn redundancy_of_a_row_does_not_depend_on_its_neighbours() {
        let (rows, d) = (150, 24);
        let mut g = Rng::new(9);
        let mut random = |n: usize| normals(&mut g, n);
        let (u, v) = (random(rows * d), random(rows * d));
        for r in [1, 3, 17, 50] {
            let (un, vn) = (random(r * d), random(r * d));
            let all = redundancy(&u, &v, &un, &vn, d, Some(0.0));
            // Every row alone, and the rows in reverse order, in stripes.
            let rev: Vec<usize> = (0..rows).rev().collect();
            let gather = |x: &[f32]| -> Vec<f32> {
                rev.iter()
                    .flat_map(|&i| x[i * d..(i + 1) * d].to_vec())
                    .collect()
            };
            let reversed = stripes_redundancy(&gather(&u), &gather(&v), &un, &vn, d, Some(0.0));
            for i in 0..rows {
                let one = redundancy(
                    &u[i * d..(i + 1) * d],
                    &v[i * d..(i + 1) * d],
                    &un,
                    &vn,
                    d,
                    Some(0.0),
                );
                assert_eq!(one[0].to_bits(), all[i].to_bits(), "r {r} row {i}");
                assert_eq!(
                    reversed[rows - 1 - i].to_bits(),
                    all[i].to_bits(),
                    "r {r} row {i}"
                );
            }
        }
    }

    /// The picks kept gathered for a fill change nothing: the same picks
    /// and score bits with no memory for them, with room for a few rounds
    /// only, and with the default room.
    #[test]
    fn kept_pick_rows_do_not_change_the_picks() {
        let (n, d) = (400, 16);
        let mut g = Rng::new(3);
        let mut random = |n: usize| normals(&mut g, n);
        let (image, text) = (random(n * d), random(n * d));
        let terms: Vec<f64> = random(n * TERMS).iter().map(|&x| x as f64).collect();
        let rows = SliceRows {
            image: &image,
            text: &text,
            d,
        };
        let opts = SelectOptions {
            weights: Weights::default(),
            refresh: 4,
            budget: 120,
            tau: Tau::Threshold(0.0),
            tile_rows: 64,
            mode: RefreshMode::Lazy,
        };
        let run = |bytes: usize| {
            let mut g = ClassGreedy::new(0, 0, &terms, &opts.weights, true);
            g.lazy.as_mut().unwrap().pick_rows_bytes = bytes;
            g.fill(&rows, &opts, opts.refresh);
            let picks: Vec<(u64, usize)> = (0..opts.budget)
                .map(|p| {
                    let more = p + 1 < opts.budget;
                    let (s, i) = g.pick(&rows, &terms, &opts, opts.refresh, more);
                    (s.to_bits(), i)
                })
                .collect();
            (picks, g.stats.pair_evaluations)
        };
        let kept = run(PICK_ROWS_BYTES);
        assert!(kept.1 > 0, "the lazy refresh evaluated no pairs");
        for bytes in [0, 3 * 2 * opts.refresh * d * 4] {
            assert_eq!(run(bytes), kept, "with {bytes} bytes for the picks");
        }
    }
}
