//! random: `B` rows drawn uniformly without replacement by a seeded
//! SplitMix64 stream; `rank` is the order of the draw. Draws index the rows
//! in canonical order, so the subset is the same on every machine and for
//! any thread count or class layout of the store.

use std::collections::HashMap;

use super::{Ctx, Method, Pick, Selection};
use crate::rng::Rng;

/// Stream of the `random` method's draws.
const STREAM_RANDOM: u64 = 0x5241_4E44;

/// The first `b` draws of a seeded Fisher-Yates shuffle of `0..n`, in draw
/// order. Only displaced slots are stored, so memory is `O(b)`, not `O(n)`.
pub fn draw(n: usize, b: usize, seed: u64, stream: u64) -> Vec<usize> {
    let mut rng = Rng::for_index(seed, stream);
    let mut moved: HashMap<usize, usize> = HashMap::new();
    let mut out = Vec::with_capacity(b.min(n));
    for i in 0..b.min(n) {
        let j = i + rng.below((n - i) as u64) as usize;
        let at_j = moved.get(&j).copied().unwrap_or(j);
        let at_i = moved.get(&i).copied().unwrap_or(i);
        moved.insert(j, at_i);
        out.push(at_j);
    }
    out
}

/// Keeps `b` random rows. `score` is 0: the method has none.
pub fn run(ctx: &Ctx, b: usize, seed: u64) -> Selection {
    let picks = draw(ctx.n(), b, seed, STREAM_RANDOM)
        .into_iter()
        .map(|k| Pick {
            pos: ctx.by_row[k],
            class: None,
            score: 0.0,
            terms: Vec::new(),
        })
        .collect();
    Selection::new(Method::Random, picks, Vec::new()).with_report("seed", seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_distinct_and_fixed() {
        let a = draw(1000, 300, 7, 1);
        let mut s = a.clone();
        s.sort_unstable();
        s.dedup();
        assert_eq!(s.len(), 300);
        assert!(s.iter().all(|&x| x < 1000));
        assert_eq!(a, draw(1000, 300, 7, 1));
        assert_ne!(a, draw(1000, 300, 8, 1));
        // A full draw is a permutation.
        let mut p = draw(50, 80, 3, 1);
        p.sort_unstable();
        assert_eq!(p, (0..50).collect::<Vec<_>>());
    }
}
