//! The linear-CLIP proxy: two linear maps `W_I, W_T` (d -> p) trained on a
//! subset's pairs with the symmetric InfoNCE loss of CLIP (learnable
//! temperature, Adam, mini-batches), then scored by zero-shot accuracy and
//! image->text retrieval. Forward and backward are written out by hand with
//! faer matrix products; everything runs single-threaded (`Par::Seq`), so a
//! run depends on its seed only, never on the thread count.
//!
//! No I/O: pairs come through [`PairSource`].

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

use crate::rng::Rng;

/// Training options. The number of steps is fixed, independent of the
/// subset's size, so every method gets the same compute.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProxyOptions {
    /// `p`, the output dimension of both maps (`None`: `d`).
    pub proj_dim: Option<usize>,
    pub steps: usize,
    pub batch_size: usize,
    /// Adam's step size.
    pub lr: f64,
    /// Starting temperature (CLIP starts at 0.07).
    pub init_temperature: f64,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            proj_dim: None,
            steps: 300,
            batch_size: 256,
            lr: 0.01,
            init_temperature: 0.07,
        }
    }
}

/// CLIP caps the logit scale `1 / T` at 100.
const MAX_LOG_SCALE: f64 = 4.605_170_185_988_091; // ln 100

/// Training pairs, read by index (the trainer never sees where they live).
pub trait PairSource: Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Appends the normalised image and caption rows of pairs `idx` to `u`
    /// and `v` (both cleared first), row-major `[idx.len(), d]`.
    fn gather(&self, idx: &[usize], u: &mut Vec<f32>, v: &mut Vec<f32>);
}

/// Pairs held in memory, row-major `[n, d]`.
pub struct InMemoryPairs {
    pub u: Vec<f32>,
    pub v: Vec<f32>,
    pub d: usize,
}

impl PairSource for InMemoryPairs {
    fn len(&self) -> usize {
        self.u.len() / self.d
    }
    fn gather(&self, idx: &[usize], u: &mut Vec<f32>, v: &mut Vec<f32>) {
        let d = self.d;
        u.clear();
        v.clear();
        for &i in idx {
            u.extend_from_slice(&self.u[i * d..(i + 1) * d]);
            v.extend_from_slice(&self.v[i * d..(i + 1) * d]);
        }
    }
}

/// `out = a * b` for row-major `a: [m, k]`, `b: [k, n]` given as views.
fn mm(out: &mut [f32], m: usize, n: usize, a: MatRef<'_, f32>, b: MatRef<'_, f32>) {
    let dst = MatMut::from_row_major_slice_mut(out, m, n);
    matmul(dst, Accum::Replace, a, b, 1.0f32, Par::Seq);
}

fn rm(x: &[f32], rows: usize, cols: usize) -> MatRef<'_, f32> {
    MatRef::from_row_major_slice(x, rows, cols)
}

/// Normalises each row of `x: [rows, p]` in place; returns the norms.
fn normalise_rows(x: &mut [f32], p: usize) -> Vec<f32> {
    x.chunks_exact_mut(p)
        .map(|r| {
            let n = r.iter().map(|&a| a as f64 * a as f64).sum::<f64>().sqrt();
            // A zero row stays zero (its gradient is then zero too).
            let n = if n > 0.0 { n as f32 } else { 1.0 };
            r.iter_mut().for_each(|a| *a /= n);
            n
        })
        .collect()
}

/// `dx = (dx_hat - x_hat <x_hat, dx_hat>) / |x|`, the backward of row
/// normalisation, in place on `g` (holding `dx_hat`).
fn normalise_backward(g: &mut [f32], x_hat: &[f32], norms: &[f32], p: usize) {
    for ((gr, xr), &n) in g.chunks_exact_mut(p).zip(x_hat.chunks_exact(p)).zip(norms) {
        let dot: f32 = gr.iter().zip(xr).map(|(a, b)| a * b).sum();
        for (a, &b) in gr.iter_mut().zip(xr) {
            *a = (*a - b * dot) / n;
        }
    }
}

/// The two maps and the temperature.
#[derive(Clone, Debug)]
pub struct LinearClip {
    pub d: usize,
    pub p: usize,
    /// `[p, d]` row-major: `x = W_I u`.
    pub w_i: Vec<f32>,
    /// `[p, d]` row-major: `y = W_T v`.
    pub w_t: Vec<f32>,
    /// `ln(1 / T)`, the log of the logit scale.
    pub log_scale: f64,
}

/// Gradients of the loss with respect to [`LinearClip`]'s parameters.
#[derive(Clone, Debug)]
pub struct Grads {
    pub w_i: Vec<f32>,
    pub w_t: Vec<f32>,
    pub log_scale: f64,
}

impl LinearClip {
    /// Gaussian maps with entries of std `1 / sqrt(d)`, drawn from `rng`.
    pub fn init(d: usize, p: usize, init_temperature: f64, rng: &mut Rng) -> Self {
        let s = 1.0 / (d as f64).sqrt();
        let mut draw = |n: usize| (0..n).map(|_| (rng.normal() * s) as f32).collect();
        LinearClip {
            d,
            p,
            w_i: draw(p * d),
            w_t: draw(p * d),
            log_scale: (1.0 / init_temperature).ln().min(MAX_LOG_SCALE),
        }
    }

    /// Projects rows `x: [rows, d]` with `w` and normalises them.
    pub fn embed(&self, w: &[f32], x: &[f32]) -> Vec<f32> {
        let rows = x.len() / self.d;
        let mut out = vec![0.0f32; rows * self.p];
        mm(
            &mut out,
            rows,
            self.p,
            rm(x, rows, self.d),
            rm(w, self.p, self.d).transpose(),
        );
        normalise_rows(&mut out, self.p);
        out
    }

    /// The symmetric InfoNCE loss of a batch of `b` pairs and its gradient:
    /// with `x_i = W_I u_i`, `y_j = W_T v_j` normalised and
    /// `L_ij = exp(log_scale) <x_i, y_j>`,
    /// `loss = (mean_i CE(L_i., i) + mean_j CE(L_.j, j)) / 2`.
    pub fn loss_and_grad(&self, u: &[f32], v: &[f32]) -> (f64, Grads) {
        let (d, p) = (self.d, self.p);
        let b = u.len() / d;
        let mut x = vec![0.0f32; b * p];
        let mut y = vec![0.0f32; b * p];
        mm(&mut x, b, p, rm(u, b, d), rm(&self.w_i, p, d).transpose());
        mm(&mut y, b, p, rm(v, b, d), rm(&self.w_t, p, d).transpose());
        let nx = normalise_rows(&mut x, p);
        let ny = normalise_rows(&mut y, p);
        let mut sim = vec![0.0f32; b * b];
        mm(&mut sim, b, b, rm(&x, b, p), rm(&y, b, p).transpose());
        let scale = self.log_scale.exp();

        // Row and column log-sum-exps in f64 with max subtraction.
        let logit = |i: usize, j: usize| scale * sim[i * b + j] as f64;
        let lse = |f: &dyn Fn(usize) -> f64| {
            let m = (0..b).map(f).fold(f64::NEG_INFINITY, f64::max);
            m + (0..b).map(|t| (f(t) - m).exp()).sum::<f64>().ln()
        };
        let row_lse: Vec<f64> = (0..b).map(|i| lse(&|j| logit(i, j))).collect();
        let col_lse: Vec<f64> = (0..b).map(|j| lse(&|i| logit(i, j))).collect();
        let diag: f64 = (0..b).map(|i| logit(i, i)).sum();
        let loss = (row_lse.iter().sum::<f64>() + col_lse.iter().sum::<f64>() - 2.0 * diag)
            / (2.0 * b as f64);

        // dloss/dL_ij = (softmax_row + softmax_col - 2 [i == j]) / (2b).
        let mut g = vec![0.0f32; b * b];
        let mut dscale = 0.0f64;
        for i in 0..b {
            for j in 0..b {
                let l = logit(i, j);
                let mut gij = (l - row_lse[i]).exp() + (l - col_lse[j]).exp();
                if i == j {
                    gij -= 2.0;
                }
                gij /= 2.0 * b as f64;
                dscale += gij * sim[i * b + j] as f64;
                g[i * b + j] = (gij * scale) as f32;
            }
        }
        // dX_hat = (scale G) Y_hat, dY_hat = (scale G)^T X_hat.
        let mut dx = vec![0.0f32; b * p];
        let mut dy = vec![0.0f32; b * p];
        mm(&mut dx, b, p, rm(&g, b, b), rm(&y, b, p));
        mm(&mut dy, b, p, rm(&g, b, b).transpose(), rm(&x, b, p));
        normalise_backward(&mut dx, &x, &nx, p);
        normalise_backward(&mut dy, &y, &ny, p);
        // x = W_I u, so dW_I = dX^T U.
        let mut gw_i = vec![0.0f32; p * d];
        let mut gw_t = vec![0.0f32; p * d];
        mm(&mut gw_i, p, d, rm(&dx, b, p).transpose(), rm(u, b, d));
        mm(&mut gw_t, p, d, rm(&dy, b, p).transpose(), rm(v, b, d));
        (
            loss,
            Grads {
                w_i: gw_i,
                w_t: gw_t,
                // d/d(log_scale) = scale * d/d(scale).
                log_scale: dscale * scale,
            },
        )
    }
}

/// Adam's moments for one parameter tensor.
struct Adam {
    m: Vec<f64>,
    v: Vec<f64>,
}

impl Adam {
    fn new(n: usize) -> Self {
        Adam {
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }

    /// One Adam step (beta1 0.9, beta2 0.999, eps 1e-8) at step `t >= 1`.
    fn step(&mut self, w: &mut [f32], g: impl Iterator<Item = f64>, lr: f64, t: usize) {
        let (b1, b2) = (0.9f64, 0.999f64);
        let c1 = 1.0 - b1.powi(t as i32);
        let c2 = 1.0 - b2.powi(t as i32);
        for (((w, g), m), v) in w.iter_mut().zip(g).zip(&mut self.m).zip(&mut self.v) {
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            *w -= (lr * (*m / c1) / ((*v / c2).sqrt() + 1e-8)) as f32;
        }
    }
}

/// A trained proxy and its loss curve.
#[derive(Clone, Debug)]
pub struct Trained {
    pub model: LinearClip,
    /// The batch loss of every step.
    pub losses: Vec<f64>,
}

/// Trains the proxy for `opts.steps` steps of `min(batch_size, n)` pairs.
/// Batches walk seeded permutations of the pairs (a fresh one each epoch),
/// so every pair is seen equally often. Returns `None` with fewer than two
/// pairs (InfoNCE needs a negative).
pub fn train(pairs: &dyn PairSource, d: usize, opts: &ProxyOptions, seed: u64) -> Option<Trained> {
    let n = pairs.len();
    if n < 2 {
        return None;
    }
    let p = opts.proj_dim.unwrap_or(d);
    let mut rng = Rng::new(seed ^ 0x5052_4F58_5900_0001);
    let mut model = LinearClip::init(d, p, opts.init_temperature, &mut rng);
    let b = opts.batch_size.clamp(2, n);
    let (mut adam_i, mut adam_t, mut adam_s) = (Adam::new(p * d), Adam::new(p * d), Adam::new(1));
    let mut perm: Vec<usize> = (0..n).collect();
    let mut at = n; // forces a shuffle on the first step
    let (mut u, mut v) = (Vec::new(), Vec::new());
    let mut batch = Vec::with_capacity(b);
    let mut losses = Vec::with_capacity(opts.steps);
    for step in 1..=opts.steps {
        batch.clear();
        while batch.len() < b {
            if at == n {
                for i in (1..n).rev() {
                    perm.swap(i, rng.below(i as u64 + 1) as usize);
                }
                at = 0;
            }
            batch.push(perm[at]);
            at += 1;
        }
        pairs.gather(&batch, &mut u, &mut v);
        let (loss, g) = model.loss_and_grad(&u, &v);
        losses.push(loss);
        adam_i.step(
            &mut model.w_i,
            g.w_i.iter().map(|&x| x as f64),
            opts.lr,
            step,
        );
        adam_t.step(
            &mut model.w_t,
            g.w_t.iter().map(|&x| x as f64),
            opts.lr,
            step,
        );
        let mut s = [model.log_scale as f32];
        adam_s.step(&mut s, std::iter::once(g.log_scale), opts.lr, step);
        model.log_scale = (s[0] as f64).clamp(0.0, MAX_LOG_SCALE);
    }
    Some(Trained { model, losses })
}

/// Zero-shot top-1 and top-5 accuracy: image `i` (row of `images: [m, d]`)
/// is predicted as `argmax_k <W_I u_i, W_T c_k>` after normalisation (ties
/// to the smaller `k`); `labels[i]` is its class position in `classes`.
pub fn zero_shot(
    model: &LinearClip,
    images: &[f32],
    labels: &[usize],
    classes: &[f32],
) -> (f64, f64) {
    let m = labels.len();
    if m == 0 {
        return (0.0, 0.0);
    }
    let ranks = zero_shot_ranks(model, images, labels, classes);
    let top1 = ranks.iter().filter(|&&r| r == 0).count();
    let top5 = ranks.iter().filter(|&&r| r < 5).count();
    (top1 as f64 / m as f64, top5 as f64 / m as f64)
}

/// The rank of each image's true class among all classes (0 = predicted).
pub fn zero_shot_ranks(
    model: &LinearClip,
    images: &[f32],
    labels: &[usize],
    classes: &[f32],
) -> Vec<usize> {
    let m = labels.len();
    let k = classes.len() / model.d;
    let x = model.embed(&model.w_i, images);
    let c = model.embed(&model.w_t, classes);
    let mut s = vec![0.0f32; m * k];
    mm(
        &mut s,
        m,
        k,
        rm(&x, m, model.p),
        rm(&c, k, model.p).transpose(),
    );
    s.chunks_exact(k)
        .zip(labels)
        .map(|(row, &y)| {
            // Classes scoring higher, or equal with a smaller index.
            let t = row[y];
            row.iter()
                .enumerate()
                .filter(|&(j, &x)| x > t || (x == t && j < y))
                .count()
        })
        .collect()
}

/// The proxy's InfoNCE loss on held-out pairs `u, v: [h, d]`, averaged
/// over consecutive batches of `batch` pairs (a last batch of one pair is
/// dropped: it has no negative). `NaN` with fewer than two pairs.
pub fn heldout_loss(model: &LinearClip, u: &[f32], v: &[f32], batch: usize) -> f64 {
    let d = model.d;
    let step = batch.max(2) * d;
    let (mut total, mut batches) = (0.0, 0usize);
    for (bu, bv) in u.chunks(step).zip(v.chunks(step)) {
        if bu.len() / d >= 2 {
            total += model.loss_and_grad(bu, bv).0;
            batches += 1;
        }
    }
    if batches == 0 {
        f64::NAN
    } else {
        total / batches as f64
    }
}

/// Image->text recall@1 on held-out pairs `u, v: [h, d]`: the share of
/// images whose own caption scores highest among all `h` captions (ties to
/// the smaller index).
pub fn retrieval_r1(model: &LinearClip, u: &[f32], v: &[f32]) -> f64 {
    let h = u.len() / model.d;
    if h == 0 {
        return 0.0;
    }
    let x = model.embed(&model.w_i, u);
    let y = model.embed(&model.w_t, v);
    let mut s = vec![0.0f32; h * h];
    mm(
        &mut s,
        h,
        h,
        rm(&x, h, model.p),
        rm(&y, h, model.p).transpose(),
    );
    let hits = s
        .chunks_exact(h)
        .enumerate()
        .filter(|&(i, row)| {
            let t = row[i];
            !row.iter()
                .enumerate()
                .any(|(j, &x)| x > t || (x == t && j < i))
        })
        .count();
    hits as f64 / h as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, rng: &mut Rng) -> Vec<f32> {
        (0..n).map(|_| rng.normal() as f32).collect()
    }

    /// The loss in f64 straight from its definition, for the gradient check.
    fn loss_f64(
        w_i: &[f64],
        w_t: &[f64],
        log_scale: f64,
        u: &[f32],
        v: &[f32],
        d: usize,
        p: usize,
    ) -> f64 {
        let b = u.len() / d;
        let proj = |w: &[f64], x: &[f32]| -> Vec<Vec<f64>> {
            (0..b)
                .map(|r| {
                    let y: Vec<f64> = (0..p)
                        .map(|o| (0..d).map(|c| w[o * d + c] * x[r * d + c] as f64).sum())
                        .collect();
                    let n = y.iter().map(|a| a * a).sum::<f64>().sqrt();
                    y.iter().map(|a| a / n).collect()
                })
                .collect()
        };
        let (x, y) = (proj(w_i, u), proj(w_t, v));
        let s = log_scale.exp();
        let l = |i: usize, j: usize| s * x[i].iter().zip(&y[j]).map(|(a, b)| a * b).sum::<f64>();
        let lse = |f: &dyn Fn(usize) -> f64| (0..b).map(f).map(f64::exp).sum::<f64>().ln();
        let mut total = 0.0;
        for i in 0..b {
            total += lse(&|j| l(i, j)) - l(i, i);
            total += lse(&|j| l(j, i)) - l(i, i);
        }
        total / (2.0 * b as f64)
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (d, p, b) = (5, 4, 6);
        let mut rng = Rng::new(11);
        let model = LinearClip::init(d, p, 0.3, &mut rng);
        let u = random(b * d, &mut rng);
        let v = random(b * d, &mut rng);
        let (loss, g) = model.loss_and_grad(&u, &v);
        let wi: Vec<f64> = model.w_i.iter().map(|&x| x as f64).collect();
        let wt: Vec<f64> = model.w_t.iter().map(|&x| x as f64).collect();
        let f = |wi: &[f64], wt: &[f64], s: f64| loss_f64(wi, wt, s, &u, &v, d, p);
        assert!((loss - f(&wi, &wt, model.log_scale)).abs() < 1e-5);
        let h = 1e-5;
        let check = |analytic: f64, numeric: f64, what: &str| {
            assert!(
                (analytic - numeric).abs() < 2e-3 * (1.0 + numeric.abs()),
                "{what}: analytic {analytic} vs finite difference {numeric}"
            );
        };
        for i in 0..p * d {
            let (mut a, mut c) = (wi.clone(), wi.clone());
            a[i] += h;
            c[i] -= h;
            let num = (f(&a, &wt, model.log_scale) - f(&c, &wt, model.log_scale)) / (2.0 * h);
            check(g.w_i[i] as f64, num, &format!("W_I[{i}]"));
            let (mut a, mut c) = (wt.clone(), wt.clone());
            a[i] += h;
            c[i] -= h;
            let num = (f(&wi, &a, model.log_scale) - f(&wi, &c, model.log_scale)) / (2.0 * h);
            check(g.w_t[i] as f64, num, &format!("W_T[{i}]"));
        }
        let num = (f(&wi, &wt, model.log_scale + h) - f(&wi, &wt, model.log_scale - h)) / (2.0 * h);
        check(g.log_scale, num, "log_scale");
        // A wrong gradient would fail: the check is not vacuous.
        assert!(g.w_i.iter().any(|x| x.abs() > 1e-3));
        assert!(g.log_scale.abs() > 1e-4);
    }

    #[test]
    fn training_is_deterministic_per_seed() {
        let mut rng = Rng::new(3);
        let (d, n) = (8, 200);
        let pairs = InMemoryPairs {
            u: random(n * d, &mut rng),
            v: random(n * d, &mut rng),
            d,
        };
        let opts = ProxyOptions {
            steps: 20,
            batch_size: 32,
            ..ProxyOptions::default()
        };
        let a = train(&pairs, d, &opts, 1).unwrap();
        let b = train(&pairs, d, &opts, 1).unwrap();
        let c = train(&pairs, d, &opts, 2).unwrap();
        assert_eq!(a.model.w_i, b.model.w_i);
        assert_eq!(a.losses, b.losses);
        assert_ne!(a.model.w_i, c.model.w_i);
    }
}
