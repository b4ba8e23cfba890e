//! Stage 2, classes: give every row its latent class (spec section 1), then
//! rewrite the store sorted by class so each class is one contiguous block.
//!
//! `y_i = argmax_k <u_i, c_k>` against the class prompts, ties to the
//! smallest `k`; or spherical k-means on `u` when no prompts are given.

use std::ops::Range;
use std::path::Path;

use crate::error::Result;
use crate::formats::prompts::Prompts;
use crate::kmeans::{self, KMeansOptions, RowSource};
use crate::store::{MapWriter, Pair};

/// The image (or caption) rows of a store, as a k-means row source.
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
        if self.text {
            self.pair.text_rows(range, buf)
        } else {
            self.pair.image_rows(range, buf)
        }
    }
}

/// Zero-shot classes against the prompts.
pub fn assign_by_prompts(raw: &Pair, prompts: &Prompts, use_text: bool) -> Vec<u32> {
    kmeans::assign(
        &Rows {
            pair: raw,
            text: use_text,
        },
        &prompts.embeddings,
        true,
    )
}

/// Latent classes from spherical k-means on the image embeddings: the
/// centroids (`[k, d]`, standing in for `c_k`) and each row's class.
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

/// Writes the class-sorted store files (`image.bin`, `text.bin`,
/// `scale.bin`, `rawpos.bin`) and returns the class offsets (`k + 1`).
///
/// Within a class, rows keep raw order, which is canonical row order, so
/// "smallest row index" and "smallest sorted position" agree in a class.
pub fn sort_store(
    dir: &Path,
    raw: &Pair,
    labels: &[u32],
    dropped: &[u64],
    classes: usize,
) -> Result<Vec<u64>> {
    let mut keep = vec![true; labels.len()];
    for &p in dropped {
        keep[p as usize] = false;
    }
    let mut offsets = vec![0u64; classes + 1];
    for (l, _) in labels.iter().zip(&keep).filter(|(_, k)| **k) {
        offsets[*l as usize + 1] += 1;
    }
    for k in 0..classes {
        offsets[k + 1] += offsets[k];
    }
    let n = offsets[classes] as usize;
    let rb = raw.image.raw_bytes(0..1.min(raw.len()), raw.d).len();
    let mut image = MapWriter::create::<u8>(&dir.join("image.bin"), n * rb)?;
    let mut text = MapWriter::create::<u8>(&dir.join("text.bin"), n * rb)?;
    let mut scale = MapWriter::create::<f32>(&dir.join("scale.bin"), n * 2)?;
    let mut rawpos = MapWriter::create::<u64>(&dir.join("rawpos.bin"), n)?;
    // Destination of each kept raw position.
    let mut cursor: Vec<u64> = offsets[..classes].to_vec();
    let dest: Vec<Option<usize>> = labels
        .iter()
        .zip(&keep)
        .map(|(&l, &k)| {
            k.then(|| {
                let c = &mut cursor[l as usize];
                *c += 1;
                (*c - 1) as usize
            })
        })
        .collect();
    // One modality at a time: each pass reads one raw file sequentially.
    for (src, dst) in [(&raw.image, &mut image), (&raw.text, &mut text)] {
        let src = src.raw_bytes(0..raw.len(), raw.d);
        let dst = dst.slice_mut::<u8>();
        for (p, t) in dest.iter().enumerate() {
            if let Some(t) = *t {
                dst[t * rb..(t + 1) * rb].copy_from_slice(&src[p * rb..(p + 1) * rb]);
            }
        }
    }
    let raw_scale = raw.scale.as_slice();
    let (sc, rp) = (scale.slice_mut::<f32>(), rawpos.slice_mut::<u64>());
    for (p, t) in dest.iter().enumerate() {
        if let Some(t) = *t {
            sc[2 * t..2 * t + 2].copy_from_slice(&raw_scale[2 * p..2 * p + 2]);
            rp[t] = p as u64;
        }
    }
    for w in [image, text, scale, rawpos] {
        w.finish()?;
    }
    Ok(offsets)
}
