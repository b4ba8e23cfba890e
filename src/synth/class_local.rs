//! `synth --model class-local`: a data model where coverage matters.
//!
//! Classes come in superclasses of confusable siblings. Each superclass has
//! a centre and a few latent directions of its own; its classes differ from
//! one another, and its instances vary, only along those directions. A
//! proxy that never sees a superclass never learns its directions, so its
//! siblings stay confusable: which classes a subset covers shows in
//! zero-shot accuracy (in the shared model one subspace serves all classes).
//!
//! Class sizes are Zipf over a seeded permutation of the classes. A share
//! of classes has weak captions that only name the superclass (correct
//! pairs with a low CLIP score), placed at random, in the head or in the
//! tail. Mismatches take a sibling's caption part of the time; duplicates
//! are near-copies of a small viral pool; junk is unrelated noise; spam is
//! well-aligned pairs on a few topics unrelated to any class. Junk and spam
//! have `true_class` -1.
//!
//! Every row is a pure function of `(seed, row)`, like the shared model.

use super::options::{draw_class, noise, unit, LocalOptions, Pair, Placement, SynthOptions};
use crate::rng::Rng;

const STREAM_SUPER: u64 = 0x5355_5045_5200;
const STREAM_CLASS: u64 = 0x434C_4153_5300;
const STREAM_PERM: u64 = 0x5045_524D;
const STREAM_WEAK: u64 = 0x5745_414B;
const STREAM_VIRAL: u64 = 0x5649_5241_4C00;
const STREAM_SPAM: u64 = 0x5350_414D;
const STREAM_GAP: u64 = 0x6A9;

/// Length of each sibling's offset from the superclass centre, and the
/// spread of instances, both along the superclass's own directions.
const SIBLING_OFFSET: f64 = 1.0;
const INSTANCE_SPREAD: f64 = 0.5;
/// Isotropic detail of every instance (in all d directions).
const ISO: f64 = 0.3;
/// Half the modality gap, as in the shared model.
const GAP: f64 = 0.35;

/// One class of the table `classes.csv`.
#[derive(Clone, Debug)]
pub struct ClassInfo {
    pub superclass: usize,
    /// Expected share of the class-drawn rows.
    pub weight: f64,
    /// Position in the size order (0 = largest).
    pub size_rank: usize,
    pub weak: bool,
}

pub struct LocalModel {
    opts: SynthOptions,
    local: LocalOptions,
    gap: Vec<f64>,
    /// Superclass centres (unit) and their own directions (orthonormal, and
    /// orthogonal to the centre).
    centres: Vec<Vec<f64>>,
    basis: Vec<Vec<Vec<f64>>>,
    /// Class centres `centre + offset`, not normalised.
    class_centres: Vec<Vec<f64>>,
    pub classes: Vec<ClassInfo>,
    cdf: Vec<f64>,
    spam_topics: Vec<Vec<f64>>,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// A seeded permutation of `0..n` (Fisher-Yates).
fn permutation(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        p.swap(i, rng.below(i as u64 + 1) as usize);
    }
    p
}

impl LocalModel {
    pub fn new(opts: &SynthOptions, local: &LocalOptions) -> Self {
        let (d, k) = (opts.dim, opts.classes);
        let s_count = if local.superclasses == 0 {
            k.div_ceil(10)
        } else {
            local.superclasses.min(k)
        };
        let m = local.local_dims.min(d.saturating_sub(1)).max(1);
        let mut centres = Vec::with_capacity(s_count);
        let mut basis = Vec::with_capacity(s_count);
        for s in 0..s_count {
            let mut r = Rng::for_index(opts.seed ^ STREAM_SUPER, s as u64);
            let mut c = noise(&mut r, d, 1.0);
            unit(&mut c);
            // Gram-Schmidt against the centre and the earlier directions.
            let mut dirs: Vec<Vec<f64>> = Vec::with_capacity(m);
            while dirs.len() < m {
                let mut v = noise(&mut r, d, 1.0);
                for q in std::iter::once(&c).chain(&dirs) {
                    let a = dot(&v, q);
                    v.iter_mut().zip(q).for_each(|(x, y)| *x -= a * y);
                }
                if dot(&v, &v) > 1e-6 {
                    unit(&mut v);
                    dirs.push(v);
                }
            }
            centres.push(c);
            basis.push(dirs);
        }
        let superclass = |c: usize| c % s_count;
        let class_centres = (0..k)
            .map(|c| {
                let s = superclass(c);
                let mut r = Rng::for_index(opts.seed ^ STREAM_CLASS, c as u64);
                let mut x = centres[s].clone();
                let g: Vec<f64> = noise(&mut r, m, SIBLING_OFFSET);
                for (gj, b) in g.iter().zip(&basis[s]) {
                    x.iter_mut().zip(b).for_each(|(x, y)| *x += gj * y);
                }
                x
            })
            .collect();
        // Zipf sizes over a permutation: class perm[r] has rank r.
        let perm = permutation(k, &mut Rng::new(opts.seed ^ STREAM_PERM));
        let mut weight = vec![0.0; k];
        let mut size_rank = vec![0; k];
        for (r, &c) in perm.iter().enumerate() {
            weight[c] = 1.0 / ((r + 1) as f64).powf(opts.zipf);
            size_rank[c] = r;
        }
        let total: f64 = weight.iter().sum();
        weight.iter_mut().for_each(|w| *w /= total);
        let n_weak = ((local.weak_share.clamp(0.0, 1.0) * k as f64).round() as usize).min(k);
        let weak_set: Vec<usize> = match local.weak_at {
            Placement::Random => {
                permutation(k, &mut Rng::new(opts.seed ^ STREAM_WEAK))[..n_weak].to_vec()
            }
            Placement::Head => perm[..n_weak].to_vec(),
            Placement::Tail => perm[k - n_weak..].to_vec(),
        };
        let mut weak = vec![false; k];
        weak_set.into_iter().for_each(|c| weak[c] = true);
        let classes = (0..k)
            .map(|c| ClassInfo {
                superclass: superclass(c),
                weight: weight[c],
                size_rank: size_rank[c],
                weak: weak[c],
            })
            .collect();
        let mut acc = 0.0;
        let cdf = weight
            .iter()
            .map(|w| {
                acc += w;
                acc
            })
            .collect();
        let spam_topics = (0..local.spam_topics.max(1))
            .map(|t| {
                let mut r = Rng::for_index(opts.seed ^ STREAM_SPAM, t as u64);
                let mut v = noise(&mut r, d, 1.0);
                unit(&mut v);
                v
            })
            .collect();
        let mut r = Rng::for_index(opts.seed ^ STREAM_GAP, 0);
        let mut gap = noise(&mut r, d, 1.0);
        unit(&mut gap);
        LocalModel {
            opts: opts.clone(),
            local: local.clone(),
            gap,
            centres,
            basis,
            class_centres,
            classes,
            cdf,
            spam_topics,
        }
    }

    fn class_of(&self, rng: &mut Rng) -> usize {
        draw_class(&self.cdf, rng)
    }

    /// `unit(unit(z) + sign * GAP * gap + noise)`: one modality's view of `z`.
    fn side(&self, z: &[f64], sign: f64, noise_scale: f64, rng: &mut Rng) -> Vec<f64> {
        let mut z = z.to_vec();
        unit(&mut z);
        let mut x: Vec<f64> = z
            .iter()
            .zip(&self.gap)
            .zip(noise(rng, self.opts.dim, noise_scale))
            .map(|((z, g), e)| z + sign * GAP * g + e)
            .collect();
        unit(&mut x);
        x
    }

    /// A latent instance of class `k`: its centre, spread along the
    /// superclass's directions, plus a little isotropic detail.
    fn instance(&self, rng: &mut Rng, k: usize) -> Vec<f64> {
        let s = self.classes[k].superclass;
        let mut z = self.class_centres[k].clone();
        let m = self.basis[s].len();
        let h = noise(rng, m, INSTANCE_SPREAD);
        for (hj, b) in h.iter().zip(&self.basis[s]) {
            z.iter_mut().zip(b).for_each(|(x, y)| *x += hj * y);
        }
        z.iter_mut()
            .zip(noise(rng, self.opts.dim, ISO))
            .for_each(|(x, e)| *x += e);
        z
    }

    /// The image and caption of a correct pair of class `k`: a weak class's
    /// caption describes only its superclass centre.
    pub fn clean(&self, rng: &mut Rng, k: usize) -> (Vec<f64>, Vec<f64>) {
        let z = self.instance(rng, k);
        let u = self.side(&z, 1.0, self.opts.noise, rng);
        let v = if self.classes[k].weak {
            let mut c = self.centres[self.classes[k].superclass].clone();
            c.iter_mut()
                .zip(noise(rng, self.opts.dim, ISO))
                .for_each(|(x, e)| *x += e);
            self.side(&c, -1.0, self.opts.noise, rng)
        } else {
            self.side(&z, -1.0, self.opts.noise, rng)
        };
        (u, v)
    }

    fn caption(&self, k: usize) -> String {
        if self.classes[k].weak {
            format!("a photo of a superclass_{}", self.classes[k].superclass)
        } else {
            format!("a photo of a class_{k}")
        }
    }

    /// A sibling of `k` (another class of its superclass), if it has one.
    fn sibling(&self, rng: &mut Rng, k: usize) -> Option<usize> {
        let s_count = self.centres.len();
        let s = self.classes[k].superclass;
        let n = (self.opts.classes - s).div_ceil(s_count);
        if n < 2 {
            return None;
        }
        let j = (k / s_count + 1 + rng.below(n as u64 - 1) as usize) % n;
        Some(s + j * s_count)
    }

    pub(crate) fn pair(&self, row: u64) -> Pair {
        let o = &self.opts;
        let mut rng = Rng::for_index(o.seed, row);
        let k = self.class_of(&mut rng);
        let x = rng.uniform();
        let (m, dup, junk) = (o.mismatch_rate, o.duplicate_rate, o.junk_rate);
        if x < m {
            let (u, _) = self.clean(&mut rng, k);
            let other = match self.sibling(&mut rng, k) {
                Some(sib) if rng.uniform() < self.local.sibling_mismatch => sib,
                _ => (k + 1 + rng.below((o.classes.max(2) - 1) as u64) as usize) % o.classes,
            };
            let (_, v) = self.clean(&mut rng, other);
            Pair {
                u,
                v,
                class: k as i32,
                kind: 1,
                caption: Some(format!("{} (mismatch)", self.caption(other))),
            }
        } else if x < m + dup {
            let j = rng.below(self.local.viral_pool.max(1) as u64);
            let mut r = Rng::for_index(o.seed ^ STREAM_VIRAL, j);
            let ks = self.class_of(&mut r);
            let (us, vs) = self.clean(&mut r, ks);
            let jitter = |a: Vec<f64>, rng: &mut Rng| {
                let mut y: Vec<f64> = a
                    .iter()
                    .zip(noise(rng, o.dim, 0.02))
                    .map(|(a, e)| a + e)
                    .collect();
                unit(&mut y);
                y
            };
            Pair {
                u: jitter(us, &mut rng),
                v: jitter(vs, &mut rng),
                class: ks as i32,
                kind: 2,
                caption: Some(format!("{} (viral {j})", self.caption(ks))),
            }
        } else if x < m + dup + junk {
            let mut a = noise(&mut rng, o.dim, 1.0);
            let mut b = noise(&mut rng, o.dim, 1.0);
            unit(&mut a);
            unit(&mut b);
            Pair {
                u: a,
                v: b,
                class: -1,
                kind: 3,
                caption: Some("junk".into()),
            }
        } else if x < m + dup + junk + self.local.spam_rate {
            let t = rng.below(self.spam_topics.len() as u64) as usize;
            let mut z = self.spam_topics[t].clone();
            z.iter_mut()
                .zip(noise(&mut rng, o.dim, ISO))
                .for_each(|(x, e)| *x += e);
            // Well aligned: half the usual noise on each side.
            let u = self.side(&z, 1.0, o.noise * 0.5, &mut rng);
            let v = self.side(&z, -1.0, o.noise * 0.5, &mut rng);
            Pair {
                u,
                v,
                class: -1,
                kind: 4,
                caption: Some(format!("buy now: topic_{t} (spam)")),
            }
        } else {
            let (u, v) = self.clean(&mut rng, k);
            Pair {
                u,
                v,
                class: k as i32,
                kind: 0,
                caption: Some(self.caption(k)),
            }
        }
    }

    /// Prompt `t` of class `k`: near the caption side of the class centre
    /// (a prompt names the class, whatever its captions say).
    pub fn prompt(&self, rng: &mut Rng, k: usize) -> Vec<f64> {
        let mut c = self.class_centres[k].clone();
        unit(&mut c);
        let mut x: Vec<f64> = c
            .iter()
            .zip(&self.gap)
            .zip(noise(rng, self.opts.dim, 0.3))
            .map(|((a, g), e)| a - GAP * g + e)
            .collect();
        unit(&mut x);
        x
    }

    /// Eval image `i`: a clean image of class `i mod K` (every class equally).
    pub fn eval_image(&self, rng: &mut Rng, i: u64) -> (usize, Vec<f64>) {
        let k = (i % self.opts.classes as u64) as usize;
        let z = self.instance(rng, k);
        (k, self.side(&z, 1.0, self.opts.noise, rng))
    }

    /// `classes.csv`: class, superclass, expected share, size rank, rows
    /// drawn (all kinds with that `true_class`), caption quality.
    pub fn class_table(&self, rows: &[u64]) -> String {
        let mut s = String::from("class,superclass,weight,size_rank,rows,caption\n");
        for (k, c) in self.classes.iter().enumerate() {
            s.push_str(&format!(
                "{k},{},{:.8},{},{},{}\n",
                c.superclass,
                c.weight,
                c.size_rank,
                rows[k],
                if c.weak { "weak" } else { "strong" }
            ));
        }
        s
    }
}
