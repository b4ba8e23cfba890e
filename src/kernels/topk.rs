//! Top-k selection with the spec's tie rule: larger score first, then the
//! smaller index.

use std::cmp::Ordering;

/// Orders `(score, index)` pairs best first: larger score, then smaller index.
#[inline]
pub fn better_first(a: (f64, usize), b: (f64, usize)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// The `k` best of `candidates` (pairs of score and index), best first.
pub fn top_k(mut candidates: Vec<(f64, usize)>, k: usize) -> Vec<(f64, usize)> {
    if k == 0 {
        return Vec::new();
    }
    if candidates.len() > k {
        candidates.select_nth_unstable_by(k - 1, |a, b| better_first(*a, *b));
        candidates.truncate(k);
    }
    candidates.sort_unstable_by(|a, b| better_first(*a, *b));
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_go_to_smaller_index() {
        let c = vec![(1.0, 5), (2.0, 9), (2.0, 3), (1.0, 1), (0.5, 0)];
        assert_eq!(top_k(c.clone(), 3), vec![(2.0, 3), (2.0, 9), (1.0, 1)]);
        assert_eq!(top_k(c, 10).len(), 5);
    }
}
