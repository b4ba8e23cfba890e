//! Stage 2, classes: every row's latent class (spec section 1) and the
//! class-sorted order of the store.
//!
//! With prompts, ingest already assigned `y_i = argmax_k <u_i, c_k>` (ties
//! to the smallest `k`) and wrote rows in per-class chunks; this stage only
//! lists the chunks class by class. Without prompts, spherical k-means on
//! `u` gives the classes and the order is a stable counting sort of the
//! file rows by class.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::Result;
use crate::formats::prompts::Prompts;
use crate::kernels::kmeans::{self, KMeansOptions, RowSource};
use crate::stages::ingest::Ingested;
use crate::store::{files, Mapped, Pair, SeqWriter};

/// Where latent classes come from.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassSource {
    Prompts(PathBuf),
    KMeans {
        clusters: usize,
        iterations: usize,
    },
    /// One class holding every row (for methods that need no classes).
    Single,
}

/// The classes of a staged store: where each class starts in the
/// class-sorted order, and each class's embedding `c_k`, id and name.
pub struct ClassTable {
    /// `K + 1` offsets into the class-sorted order.
    pub offsets: Vec<u64>,
    /// `[K, d]`: the class prompt or centroid of every class.
    pub embeddings: Vec<f32>,
    pub ids: Vec<i64>,
    pub names: Vec<String>,
}

/// Section 1 for every class source: sorts the ingested rows by class,
/// writes the order to `order.bin` in `store_dir`, and returns the class
/// table. Prompts assigned the classes during ingest; k-means reads the
/// staged image rows; `Single` puts every row in one class.
pub fn assign(
    source: &ClassSource,
    prompts: Option<&Prompts>,
    ing: &Ingested,
    store_dir: &Path,
    seed: u64,
) -> Result<ClassTable> {
    let dropped = &ing.duplicate_file_rows;
    let d = ing.d;
    let (order, table) = match (source, prompts) {
        (ClassSource::Prompts(_), Some(p)) => {
            let (order, offsets) = order_from_chunks(&ing.chunks, p.len(), dropped);
            let table = ClassTable {
                offsets,
                embeddings: p.embeddings.clone(),
                ids: p.class_ids.clone(),
                names: p.names.clone(),
            };
            (order, table)
        }
        (
            ClassSource::KMeans {
                clusters,
                iterations,
            },
            _,
        ) => {
            let pair = Pair::open(store_dir, ing.dtype, d)?;
            let (centroids, labels) = assign_by_kmeans(&pair, *clusters, *iterations, seed);
            let k = centroids.len() / d;
            let (order, offsets) = order_from_labels(&labels, k, dropped);
            let table = ClassTable {
                offsets,
                embeddings: centroids,
                ids: (0..k as i64).collect(),
                names: (0..k).map(|c| format!("cluster_{c}")).collect(),
            };
            (order, table)
        }
        _ => {
            let (order, offsets) = order_from_chunks(&ing.chunks, 1, dropped);
            let table = ClassTable {
                offsets,
                embeddings: vec![0.0; d],
                ids: vec![0],
                names: vec!["all".to_string()],
            };
            (order, table)
        }
    };
    let mut order = order;
    sort_by_row(store_dir, &mut order, &table.offsets)?;
    write_order(store_dir, &order)?;
    Ok(table)
}

/// Puts each class's rows in canonical row order. Ingest writes them in
/// that order; after an append whose new shards sort among the old ones,
/// file order and canonical order differ.
fn sort_by_row(store_dir: &Path, order: &mut [u64], offsets: &[u64]) -> Result<()> {
    let rows = Mapped::<u64>::open(&store_dir.join(files::ROW))?;
    let row = rows.as_slice();
    for k in 0..offsets.len().saturating_sub(1) {
        let class = &mut order[offsets[k] as usize..offsets[k + 1] as usize];
        if !class
            .windows(2)
            .all(|w| row[w[0] as usize] < row[w[1] as usize])
        {
            class.sort_unstable_by_key(|&f| row[f as usize]);
        }
    }
    Ok(())
}

/// The image (or caption) rows of a store in file order, as a k-means row
/// source.
pub struct Rows<'a> {
    pub pair: &'a Pair,
    pub text: bool,
}

impl RowSource for Rows<'_> {
    fn len(&self) -> usize {
        self.pair.len()
    }
    fn d(&self) -> usize {
        self.pair.d
    }
    fn rows<'a>(&'a self, range: Range<usize>, buf: &'a mut Vec<f32>) -> &'a [f32] {
        let idx: Vec<u64> = (range.start as u64..range.end as u64).collect();
        if self.text {
            self.pair.text_gather(&idx, buf)
        } else {
            self.pair.image_gather(&idx, buf)
        }
    }
}

/// Latent classes from spherical k-means on the image embeddings: the
/// centroids (`[k, d]`, standing in for `c_k`) and each file row's class.
pub fn assign_by_kmeans(
    raw: &Pair,
    k: usize,
    iterations: usize,
    seed: u64,
) -> (Vec<f32>, Vec<u32>) {
    let opts = KMeansOptions {
        k,
        iterations,
        seed,
        spherical: true,
    };
    kmeans::kmeans(
        &Rows {
            pair: raw,
            text: false,
        },
        &opts,
    )
}

/// The sorted order from ingest's chunks `(class, rows)`: file rows class by
/// class, leaving out `dropped` (sorted). Returns the order and the class
/// offsets (`classes + 1`).
pub fn order_from_chunks(
    chunks: &[(u32, u32)],
    classes: usize,
    dropped: &[u64],
) -> (Vec<u64>, Vec<u64>) {
    let mut runs: Vec<Vec<(u64, u64)>> = vec![Vec::new(); classes];
    let mut file_row = 0u64;
    for &(k, n) in chunks {
        runs[k as usize].push((file_row, file_row + n as u64));
        file_row += n as u64;
    }
    let mut order = Vec::with_capacity(file_row as usize - dropped.len());
    let mut offsets = vec![0u64; classes + 1];
    for (k, rs) in runs.iter().enumerate() {
        for &(a, b) in rs {
            order.extend((a..b).filter(|f| dropped.binary_search(f).is_err()));
        }
        offsets[k + 1] = order.len() as u64;
    }
    (order, offsets)
}

/// The sorted order from a class label per file row (file order is
/// canonical order, so a stable sort keeps rows in canonical order).
pub fn order_from_labels(labels: &[u32], classes: usize, dropped: &[u64]) -> (Vec<u64>, Vec<u64>) {
    let mut offsets = vec![0u64; classes + 1];
    for &l in labels {
        offsets[l as usize + 1] += 1;
    }
    for &f in dropped {
        offsets[labels[f as usize] as usize + 1] -= 1;
    }
    for k in 0..classes {
        offsets[k + 1] += offsets[k];
    }
    let mut cursor = offsets[..classes].to_vec();
    let mut order = vec![0u64; offsets[classes] as usize];
    for (f, &l) in labels.iter().enumerate() {
        if dropped.binary_search(&(f as u64)).is_ok() {
            continue;
        }
        order[cursor[l as usize] as usize] = f as u64;
        cursor[l as usize] += 1;
    }
    (order, offsets)
}

/// Writes `order.bin`.
pub fn write_order(dir: &Path, order: &[u64]) -> Result<()> {
    let mut w = SeqWriter::create(&dir.join(files::ORDER))?;
    w.write(order)?;
    w.finish().map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_agree() {
        // Chunks: class 1 (2 rows), class 0 (1), class 1 (1); row 1 dropped.
        let (o, off) = order_from_chunks(&[(1, 2), (0, 1), (1, 1)], 3, &[1]);
        assert_eq!(o, vec![2, 0, 3]);
        assert_eq!(off, vec![0, 1, 3, 3]);
        let (o2, off2) = order_from_labels(&[1, 1, 0, 1], 3, &[1]);
        assert_eq!((o2, off2), (o, off));
    }
}
