//! The options of `synth` and what its two data models share: the row
//! kinds, a drawn pair, and the vector helpers.

use crate::rng::Rng;

#[derive(Clone, Debug)]
pub struct SynthOptions {
    pub rows: u64,
    pub classes: usize,
    pub dim: usize,
    pub shards: usize,
    pub f16: bool,
    pub seed: u64,
    /// Zipf exponent of class sizes (0 = equal expected sizes).
    pub zipf: f64,
    pub mismatch_rate: f64,
    pub duplicate_rate: f64,
    pub junk_rate: f64,
    /// Std of the per-modality noise (as a fraction of the signal norm).
    pub noise: f64,
    pub eval_rows: u64,
    /// Also write a placeholder image per pair, `images/<id>.png`, and the
    /// `image_path` column naming it (relative to the output folder).
    pub images: bool,
    /// The data model: `None` for the shared subspace, else class-local.
    pub class_local: Option<LocalOptions>,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            rows: 10_000,
            classes: 10,
            dim: 64,
            shards: 1,
            f16: false,
            seed: 0,
            zipf: 0.8,
            mismatch_rate: 0.1,
            duplicate_rate: 0.05,
            junk_rate: 0.05,
            noise: 0.9,
            eval_rows: 2_000,
            images: false,
            class_local: None,
        }
    }
}

/// Row kinds of the data models (spam: class-local only).
pub const KINDS: [&str; 5] = ["clean", "mismatch", "duplicate", "junk", "spam"];

/// Where the weak-caption classes sit in the size order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    Random,
    Head,
    Tail,
}

/// The options of the class-local model (beside [`SynthOptions`]).
#[derive(Clone, Debug)]
pub struct LocalOptions {
    pub superclasses: usize,
    /// Latent directions of each superclass.
    pub local_dims: usize,
    /// Share of classes whose captions only name the superclass.
    pub weak_share: f64,
    pub weak_at: Placement,
    /// Share of mismatches whose caption is a sibling's.
    pub sibling_mismatch: f64,
    /// Distinct pairs the duplicates copy.
    pub viral_pool: usize,
    pub spam_rate: f64,
    pub spam_topics: usize,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            superclasses: 0,
            local_dims: 4,
            weak_share: 0.2,
            weak_at: Placement::Random,
            sibling_mismatch: 0.5,
            viral_pool: 20,
            spam_rate: 0.03,
            spam_topics: 5,
        }
    }
}

pub(crate) fn unit(v: &mut [f64]) {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
    for x in v {
        *x /= n;
    }
}

/// A noise vector of expected norm `scale`.
pub(crate) fn noise(rng: &mut Rng, d: usize, scale: f64) -> Vec<f64> {
    let s = scale / (d as f64).sqrt();
    (0..d).map(|_| rng.normal() * s).collect()
}

/// Class `k` drawn with probability `cdf[k] - cdf[k - 1]` (a cumulative
/// distribution over the classes).
pub(crate) fn draw_class(cdf: &[f64], rng: &mut Rng) -> usize {
    let x = rng.uniform();
    cdf.partition_point(|&c| c <= x).min(cdf.len() - 1)
}

/// One drawn pair and its truth.
pub(crate) struct Pair {
    pub u: Vec<f64>,
    pub v: Vec<f64>,
    /// `true_class`: -1 for a pair of no class.
    pub class: i32,
    /// Index into [`KINDS`].
    pub kind: usize,
    /// The caption text, when not the shared model's.
    pub caption: Option<String>,
}
