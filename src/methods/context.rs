//! What every method reads: the staged store, the canonical row of each
//! store position, and the work several methods share (CLIP scores,
//! spherical k-means), computed once on first use and timed apart.

use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::kernels::dense::{dot_f64, dot_mixed, normalised};
use crate::kernels::kmeans::{self, KMeansOptions, RowSource};
use crate::store::Store;

/// Rows per parallel block of the row-wise passes.
const BLOCK_ROWS: usize = 1024;

/// Shared work and how long it took.
#[derive(Clone, Debug, Serialize)]
pub struct SharedStage {
    pub stage: String,
    pub seconds: f64,
}

/// Spherical k-means on the normalised image embeddings (semdedup, ssp).
#[derive(Debug)]
pub struct Clusters {
    pub k: usize,
    pub iterations: usize,
    pub seed: u64,
    /// `[k, d]`, each row of unit norm.
    pub centroids: Vec<f32>,
    /// Cluster of each store position (largest `<u, c>`).
    pub labels: Vec<u32>,
    /// `1 - <u, c / |c|>` of each store position to its centroid.
    pub distance: Vec<f64>,
}

/// The default number of clusters: `max(1, round(N / 1000))`.
pub fn default_clusters(n: usize) -> usize {
    ((n as f64 / 1000.0).round() as usize).max(1)
}

pub struct Ctx<'a> {
    pub store: &'a Store,
    /// Canonical row index of each store position.
    pub rows: Vec<u64>,
    /// Store positions in canonical row order.
    pub by_row: Vec<usize>,
    /// Rows per tile side of the similarity tiles.
    pub tile_rows: usize,
    easy: OnceLock<Vec<f64>>,
    spherical: Mutex<Option<Arc<Clusters>>>,
    shared: Mutex<Vec<SharedStage>>,
}

impl<'a> Ctx<'a> {
    pub fn new(store: &'a Store, tile_rows: usize) -> Self {
        let n = store.rows();
        let rows: Vec<u64> = (0..n).into_par_iter().map(|p| store.row_index(p)).collect();
        let mut by_row: Vec<usize> = (0..n).collect();
        by_row.par_sort_unstable_by_key(|&p| rows[p]);
        Ctx {
            store,
            rows,
            by_row,
            tile_rows: tile_rows.max(1),
            easy: OnceLock::new(),
            spherical: Mutex::new(None),
            shared: Mutex::new(Vec::new()),
        }
    }

    /// Rows in the store (`N`).
    pub fn n(&self) -> usize {
        self.rows.len()
    }

    pub fn d(&self) -> usize {
        self.store.d()
    }

    fn timed<T>(&self, stage: String, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let v = f();
        self.shared.lock().unwrap().push(SharedStage {
            stage,
            seconds: t.elapsed().as_secs_f64(),
        });
        v
    }

    /// Shared stages computed so far.
    pub fn shared_stages(&self) -> Vec<SharedStage> {
        self.shared.lock().unwrap().clone()
    }

    /// Total seconds spent in shared stages so far.
    pub fn shared_seconds(&self) -> f64 {
        self.shared.lock().unwrap().iter().map(|s| s.seconds).sum()
    }

    /// The CLIP score `easy = <u, v>` of every store position.
    pub fn easy(&self) -> &[f64] {
        if let Some(e) = self.easy.get() {
            return e;
        }
        let e = self.timed("clip scores".into(), || easy(self.store));
        self.easy.get_or_init(|| e)
    }

    /// Spherical k-means with `k` clusters: computed on the first call,
    /// reused by later calls with the same parameters.
    pub fn spherical(&self, k: usize, iterations: usize, seed: u64) -> Arc<Clusters> {
        let mut slot = self.spherical.lock().unwrap();
        if let Some(c) = slot.as_ref() {
            if (c.k, c.iterations, c.seed) == (k.min(self.n()).max(1), iterations, seed) {
                return c.clone();
            }
        }
        let c = Arc::new(self.timed(format!("spherical k-means (C = {k})"), || {
            self.spherical_kmeans(k, iterations, seed)
        }));
        *slot = Some(c.clone());
        c
    }

    /// Values given in canonical row order, moved to store positions.
    pub fn to_positions<T: Copy + Default>(&self, by_rank: &[T]) -> Vec<T> {
        let mut out = vec![T::default(); by_rank.len()];
        for (&p, &v) in self.by_row.iter().zip(by_rank) {
            out[p] = v;
        }
        out
    }

    fn spherical_kmeans(&self, k: usize, iterations: usize, seed: u64) -> Clusters {
        let src = CanonicalImages { ctx: self };
        let opts = KMeansOptions {
            k,
            iterations,
            seed,
            spherical: true,
        };
        let (centroids, labels) = kmeans::kmeans(&src, &opts);
        let labels = self.to_positions(&labels);
        let (store, d) = (self.store, self.d());
        let unit: Vec<Vec<f64>> = centroids
            .chunks_exact(d)
            .map(|c| normalised(&c.iter().map(|&x| x as f64).collect::<Vec<_>>()))
            .collect();
        let mut distance = vec![0.0; labels.len()];
        distance
            .par_chunks_mut(BLOCK_ROWS)
            .enumerate()
            .for_each_init(Vec::new, |buf, (b, out)| {
                let start = b * BLOCK_ROWS;
                let u = store.image_rows(start..start + out.len(), buf);
                for (i, (o, x)) in out.iter_mut().zip(u.chunks_exact(d)).enumerate() {
                    *o = 1.0 - dot_mixed(x, &unit[labels[start + i] as usize]);
                }
            });
        Clusters {
            k: centroids.len() / d,
            iterations,
            seed,
            centroids: unit.iter().flatten().map(|&x| x as f32).collect(),
            labels,
            distance,
        }
    }

    /// Copies the normalised image (or caption) rows of `positions` into
    /// `out`, `[len, d]`; runs of consecutive positions are copied at once.
    pub fn gather(&self, text: bool, positions: &[usize], out: &mut Vec<f32>) {
        gather(self.store, text, positions, out)
    }
}

/// See [`Ctx::gather`].
pub fn gather(store: &Store, text: bool, positions: &[usize], out: &mut Vec<f32>) {
    out.clear();
    out.reserve(positions.len() * store.d());
    let mut buf = Vec::new();
    let mut i = 0;
    while i < positions.len() {
        let mut j = i + 1;
        while j < positions.len() && positions[j] == positions[j - 1] + 1 {
            j += 1;
        }
        let range = positions[i]..positions[j - 1] + 1;
        let rows = if text {
            store.text_rows(range, &mut buf)
        } else {
            store.image_rows(range, &mut buf)
        };
        out.extend_from_slice(rows);
        i = j;
    }
}

fn easy(store: &Store) -> Vec<f64> {
    let (n, d) = (store.rows(), store.d());
    let mut e = vec![0.0; n];
    e.par_chunks_mut(BLOCK_ROWS).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(bu, bv), (b, out)| {
            let start = b * BLOCK_ROWS;
            let range = start..start + out.len();
            let u = store.image_rows(range.clone(), bu);
            let v = store.text_rows(range, bv);
            for ((o, x), y) in out.iter_mut().zip(u.chunks_exact(d)).zip(v.chunks_exact(d)) {
                *o = dot_f64(x, y);
            }
        },
    );
    e
}

/// The store's image rows in canonical row order, as a k-means row source:
/// clustering then does not depend on how the store is sorted (one class,
/// or prompt classes in `compare`).
pub struct CanonicalImages<'a> {
    pub ctx: &'a Ctx<'a>,
}

impl RowSource for CanonicalImages<'_> {
    fn len(&self) -> usize {
        self.ctx.n()
    }
    fn d(&self) -> usize {
        self.ctx.d()
    }
    fn rows<'b>(&'b self, r: Range<usize>, buf: &'b mut Vec<f32>) -> &'b [f32] {
        self.ctx.gather(false, &self.ctx.by_row[r], buf);
        buf
    }
}

/// The store's image rows as the input gave them (not normalised), in
/// canonical row order: what DataComp's k-means clusters.
pub struct GivenImages<'a> {
    pub ctx: &'a Ctx<'a>,
}

impl RowSource for GivenImages<'_> {
    fn len(&self) -> usize {
        self.ctx.n()
    }
    fn d(&self) -> usize {
        self.ctx.d()
    }
    fn rows<'b>(&'b self, r: Range<usize>, buf: &'b mut Vec<f32>) -> &'b [f32] {
        let store = self.ctx.store;
        let order = store.order.as_slice();
        let file_rows: Vec<u64> = self.ctx.by_row[r].iter().map(|&p| order[p]).collect();
        *buf = store.emb.image_given(&file_rows);
        buf
    }
}
