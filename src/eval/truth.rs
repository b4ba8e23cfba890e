//! Which class each pick really belongs to, so that coverage metrics count
//! only picks that teach a class: with `true_class` in the data, a pick
//! counts when its true class is a prompt class and (with `kind`) its kind
//! is `clean`; without `true_class`, every pick counts under the class the
//! store assigned it. Also the class sizes (head / tail halves), the
//! caption quality of a class table, and the clean, class-balanced
//! cross-covariance.

use std::path::Path;

use serde::Serialize;

use super::covariance::CrossCov;
use super::kinds::{self, Kinds};
use crate::error::{Error, IoContext, Result};
use crate::formats::dataset::SourceFile;
use crate::store::Store;

/// What the coverage metrics count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// Picks of kind `clean` (or every pick, without `kind`) whose
    /// `true_class` is a prompt class, by that class.
    CleanTrueClass,
    /// Every pick, by the class the store assigned it (zero-shot).
    AllAssigned,
}

impl Basis {
    pub fn describe(self) -> &'static str {
        match self {
            Basis::CleanTrueClass => "clean picks by true_class",
            Basis::AllAssigned => "all picks by assigned class (the data has no true_class)",
        }
    }
}

/// The class each store position counts for, if any.
pub struct Truth {
    pub basis: Basis,
    /// `class[pos]`: the class position (prompt order), or `u32::MAX`.
    pub class: Vec<u32>,
    /// Rows counted per class in the whole store.
    pub sizes: Vec<u64>,
    /// `head[k]`: class `k` is in the larger half by `sizes` (ties by index).
    pub head: Vec<bool>,
}

pub const NONE: u32 = u32::MAX;

impl Truth {
    /// Reads `true_class` from `files`; `kinds` as read by the evaluator.
    pub fn new(store: &Store, files: &[SourceFile], kinds: Option<&Kinds>) -> Result<Self> {
        let n = store.rows();
        let k_count = store.meta.classes();
        let (basis, class) = match kinds::read_true_class(files)? {
            Some(tc) => {
                let ids = &store.meta.class_ids;
                let clean = kinds.map(|k| k.code_of(kinds::CLEAN));
                let class = (0..n)
                    .map(|p| {
                        let r = store.row_index(p) as usize;
                        let ok = match (clean, kinds) {
                            (None, _) => true,
                            (Some(Some(c)), Some(k)) => k.code[r] == c,
                            _ => false,
                        };
                        match ok.then(|| ids.binary_search(&tc[r])) {
                            Some(Ok(k)) => k as u32,
                            _ => NONE,
                        }
                    })
                    .collect();
                (Basis::CleanTrueClass, class)
            }
            None => {
                let offsets = &store.meta.class_offsets;
                let class = (0..n)
                    .map(|p| (offsets.partition_point(|&o| o <= p as u64) - 1) as u32)
                    .collect();
                (Basis::AllAssigned, class)
            }
        };
        let mut sizes = vec![0u64; k_count];
        for &c in &class {
            if c != NONE {
                sizes[c as usize] += 1;
            }
        }
        let mut order: Vec<usize> = (0..k_count).collect();
        order.sort_by(|&a, &b| sizes[b].cmp(&sizes[a]).then(a.cmp(&b)));
        let mut head = vec![false; k_count];
        for &k in &order[..k_count / 2] {
            head[k] = true;
        }
        Ok(Truth {
            basis,
            class,
            sizes,
            head,
        })
    }

    /// Counted picks per class among store `positions`.
    pub fn counts(&self, positions: &[usize]) -> Vec<u64> {
        let mut c = vec![0u64; self.sizes.len()];
        for &p in positions {
            let k = self.class[p];
            if k != NONE {
                c[k as usize] += 1;
            }
        }
        c
    }

    /// `(1/K') sum_k mean_{counted rows of k} u v^T` over the K' classes
    /// with counted rows, as a [`CrossCov`] of count 1. `None` when the
    /// coverage basis is not the true class (there is no clean target).
    pub fn balanced_cov(&self, store: &Store) -> Option<CrossCov> {
        if self.basis != Basis::CleanTrueClass {
            return None;
        }
        let d = store.d();
        let k_count = self.sizes.len();
        let mut by_class: Vec<Vec<u64>> = vec![Vec::new(); k_count];
        for (p, &k) in self.class.iter().enumerate() {
            if k != NONE {
                by_class[k as usize].push(store.order.as_slice()[p]);
            }
        }
        use rayon::prelude::*;
        let means: Vec<Option<Vec<f64>>> = by_class
            .par_iter()
            .map(|rows| {
                if rows.is_empty() {
                    return None;
                }
                let mut c = CrossCov::new(d);
                let (mut ub, mut vb, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
                for chunk in rows.chunks(super::covariance::BLOCK_ROWS * 8) {
                    let u = store.emb.image_gather(chunk, &mut ub);
                    let v = store.emb.text_gather(chunk, &mut vb);
                    c.add_rows(u, v, &mut scratch);
                }
                let n = c.count as f64;
                Some(c.sum.iter().map(|x| x / n).collect())
            })
            .collect();
        let mut out = CrossCov::new(d);
        let mut classes = 0usize;
        for m in means.into_iter().flatten() {
            out.sum.iter_mut().zip(&m).for_each(|(s, x)| *s += x);
            classes += 1;
        }
        if classes == 0 {
            return None;
        }
        out.sum.iter_mut().for_each(|s| *s /= classes as f64);
        out.count = 1;
        Some(out)
    }
}

/// Reads a class table (CSV with header columns `class` and `caption`,
/// caption `weak` or `strong`, as `synth --model class-local` writes) and
/// returns `weak[k]` for the classes in prompt order; classes missing from
/// the table count as strong.
pub fn read_caption_quality(path: &Path, class_ids: &[i64]) -> Result<Vec<bool>> {
    let text = std::fs::read_to_string(path).at_path(path)?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let col = |name: &str| {
        header.iter().position(|h| h.trim() == name).ok_or_else(|| {
            Error::column(path, name, "missing column")
                .with_hint("give the classes.csv that synth --model class-local writes")
        })
    };
    let (ci, qi) = (col("class")?, col("caption")?);
    let mut weak = vec![false; class_ids.len()];
    for (i, line) in lines.enumerate() {
        let row = i as u64;
        let cells: Vec<&str> = line.split(',').collect();
        let cell = |j: usize, name: &str| {
            cells
                .get(j)
                .map(|c| c.trim())
                .ok_or_else(|| Error::at(path, row, name, "missing value"))
        };
        let class: i64 = cell(ci, "class")?
            .parse()
            .map_err(|_| Error::at(path, row, "class", "not an integer"))?;
        let w = match cell(qi, "caption")? {
            "weak" => true,
            "strong" => false,
            other => {
                return Err(Error::at(
                    path,
                    row,
                    "caption",
                    format!("'{other}', expected weak or strong"),
                ))
            }
        };
        if let Ok(k) = class_ids.binary_search(&class) {
            weak[k] = w;
        }
    }
    Ok(weak)
}
