//! Target image embeddings for the DataComp image-based filter: a Parquet
//! file with an `image_embedding` column, or a `.npy` array `[K, d]`
//! (float16, float32 or float64, C order). Rows come back normalised.

use std::path::Path;

use super::embedding::EmbeddingView;
use super::npy::NpyMatrix;
use super::parquet_read::{batches, open_parquet};
use crate::error::{Error, Result};

/// The column read from a Parquet targets file.
pub const TARGET_COLUMN: &str = "image_embedding";

/// Reads the targets as normalised `[K, d]` rows; `d` must match the pool.
///
/// # Errors
/// A data error naming the file (and row and column where it applies) for
/// a missing column, a wrong length, a non-finite or zero row, or no rows.
pub fn read_targets(path: &Path, d: usize) -> Result<Vec<f32>> {
    let is_npy = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"));
    let raw = if is_npy {
        read_npy(path, d)?
    } else {
        read_parquet(path, d)?
    };
    if raw.is_empty() {
        return Err(Error::file(path, "the targets file has no rows"));
    }
    let mut out = Vec::with_capacity(raw.len());
    for (i, row) in raw.chunks_exact(d).enumerate() {
        let n2: f64 = row.iter().map(|&x| x * x).sum();
        if !n2.is_finite() || n2 == 0.0 {
            let problem = if n2.is_finite() {
                "zero vector"
            } else {
                "non-finite component"
            };
            return Err(Error::at(path, i as u64, TARGET_COLUMN, problem));
        }
        let inv = 1.0 / n2.sqrt();
        out.extend(row.iter().map(|&x| (x * inv) as f32));
    }
    Ok(out)
}

fn read_parquet(path: &Path, d: usize) -> Result<Vec<f64>> {
    let builder = open_parquet(path)?;
    if builder.schema().field_with_name(TARGET_COLUMN).is_err() {
        return Err(
            Error::column(path, TARGET_COLUMN, "missing column").with_hint(
                "the targets file needs an image_embedding column of the same model as the pool",
            ),
        );
    }
    let mut out = Vec::new();
    let mut row0 = 0u64;
    for batch in batches(path, builder)? {
        let batch = batch?;
        let col = batch.column_by_name(TARGET_COLUMN).unwrap();
        let view = EmbeddingView::try_new(col).ok_or_else(|| {
            Error::column(
                path,
                TARGET_COLUMN,
                format!("type {} is not an embedding", col.data_type()),
            )
        })?;
        for i in 0..batch.num_rows() {
            let row = row0 + i as u64;
            let values = view.row(i, d).map_err(|_| {
                Error::at(
                    path,
                    row,
                    TARGET_COLUMN,
                    format!(
                        "null or length {}, expected {d} (the pool's embedding length)",
                        view.row_len(i)
                    ),
                )
            })?;
            let mut v = Vec::with_capacity(d);
            values.extend_scaled_f32(1.0, &mut v);
            out.extend(v.iter().map(|&x| x as f64));
        }
        row0 += batch.num_rows() as u64;
    }
    Ok(out)
}

fn read_npy(path: &Path, d: usize) -> Result<Vec<f64>> {
    let m = NpyMatrix::open_any_float(path)?;
    if m.cols() != d {
        return Err(Error::file(
            path,
            format!(
                "embedding length {}, expected {d} (the pool's embedding length)",
                m.cols()
            ),
        ));
    }
    Ok(m.to_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::npy::header_bytes;

    #[test]
    fn reads_npy_f16_f32_f64() {
        let dir = std::env::temp_dir().join(format!("clipcov-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.npy");
        let values = [3.0f64, 0.0, 4.0, 0.0, 2.0, 0.0];
        for descr in ["<f2", "<f4", "<f8"] {
            let mut bytes = header_bytes(&format!("'{descr}'"), "(2, 3)");
            for x in values {
                match descr {
                    "<f2" => bytes.extend(half::f16::from_f64(x).to_le_bytes()),
                    "<f4" => bytes.extend((x as f32).to_le_bytes()),
                    _ => bytes.extend(x.to_le_bytes()),
                }
            }
            std::fs::write(&path, bytes).unwrap();
            let t = read_targets(&path, 3).unwrap();
            assert_eq!(t, vec![0.6, 0.0, 0.8, 0.0, 1.0, 0.0], "{descr}");
            let e = read_targets(&path, 4).unwrap_err().to_string();
            assert!(e.contains("embedding length 3, expected 4"), "{e}");
        }
        std::fs::write(&path, header_bytes("'<i4'", "(2, 3)")).unwrap();
        let e = read_targets(&path, 3).unwrap_err().to_string();
        assert!(e.contains("dtype '<i4'") && e.contains("'<f8'"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
