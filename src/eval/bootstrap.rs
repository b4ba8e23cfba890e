//! Uncertainty over the eval images: percentile bootstrap intervals of an
//! accuracy, with the resamples drawn from the base seed alone, so every
//! method (and the difference of two methods) is resampled on the same
//! images: the intervals are paired.
//!
//! The draws are fixed: resample `r` takes images `rng.below(m)` for
//! `i in 0..m`, in order, from one `Rng::new(seed ^ STREAM_BOOTSTRAP)`.

use crate::rng::Rng;

pub const STREAM_BOOTSTRAP: u64 = 0x424F_4F54;
/// Resamples of every interval.
pub const RESAMPLES: usize = 1000;

/// Mean of `values` (micro) or, with `macro_avg`, the mean over classes
/// present of each class's mean, over the images `idx`.
pub fn statistic(
    values: &[f64],
    labels: &[usize],
    classes: usize,
    macro_avg: bool,
    idx: &[usize],
) -> f64 {
    if !macro_avg {
        return idx.iter().map(|&i| values[i]).sum::<f64>() / idx.len().max(1) as f64;
    }
    let (mut sum, mut n) = (vec![0.0; classes], vec![0u64; classes]);
    for &i in idx {
        sum[labels[i]] += values[i];
        n[labels[i]] += 1;
    }
    let present: Vec<f64> = sum
        .iter()
        .zip(&n)
        .filter(|(_, &c)| c > 0)
        .map(|(s, &c)| s / c as f64)
        .collect();
    present.iter().sum::<f64>() / present.len().max(1) as f64
}

/// The 2.5% and 97.5% percentiles of the statistic over `resamples`
/// resamples of the images (nearest rank: sorted values `[floor(0.025 R)]`
/// and `[ceil(0.975 R) - 1]`).
pub fn interval(
    values: &[f64],
    labels: &[usize],
    classes: usize,
    macro_avg: bool,
    resamples: usize,
    seed: u64,
) -> [f64; 2] {
    let m = values.len();
    if m == 0 || resamples == 0 {
        return [f64::NAN, f64::NAN];
    }
    let mut rng = Rng::new(seed ^ STREAM_BOOTSTRAP);
    let mut idx = vec![0usize; m];
    let mut stats: Vec<f64> = (0..resamples)
        .map(|_| {
            idx.iter_mut()
                .for_each(|i| *i = rng.below(m as u64) as usize);
            statistic(values, labels, classes, macro_avg, &idx)
        })
        .collect();
    stats.sort_by(f64::total_cmp);
    let r = resamples as f64;
    let lo = (0.025 * r).floor() as usize;
    let hi = ((0.975 * r).ceil() as usize).clamp(1, resamples) - 1;
    [stats[lo.min(resamples - 1)], stats[hi]]
}
