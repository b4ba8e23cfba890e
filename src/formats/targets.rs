//! Target image embeddings for the DataComp image-based filter: a Parquet
//! file with an `image_embedding` column, or a `.npy` array `[K, d]`
//! (float16, float32 or float64, C order). Rows come back normalised.

use std::path::Path;

use half::f16;

use super::canonical::{corrupt, open_parquet};
use super::embedding::EmbeddingView;
use crate::error::{Error, IoContext, Result};

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
    let reader = builder.build().map_err(|e| corrupt(path, e))?;
    let mut out = Vec::new();
    let mut row0 = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| corrupt(path, e))?;
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

/// The value of `key` in a `.npy` header dict (`'key': value`).
fn header_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'"))?;
    let rest = header[at + key.len() + 2..].trim_start();
    Some(rest.strip_prefix(':')?.trim_start())
}

fn read_npy(path: &Path, d: usize) -> Result<Vec<f64>> {
    let local = crate::remote::local_copy(path)?;
    let bytes = std::fs::read(&local).at_path(&local)?;
    let bad = |what: &str| Error::file(path, format!("not a readable .npy file ({what})"));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("no NumPy magic"));
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad("unknown format version")),
    };
    let header = bytes
        .get(start..start + len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated header"))?;
    let descr = header_value(header, "descr")
        .and_then(|v| v.get(1..4))
        .ok_or_else(|| bad("no descr"))?;
    if header_value(header, "fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err(bad("Fortran order").with_hint("save the array in C order"));
    }
    let shape: Vec<usize> = header_value(header, "shape")
        .and_then(|v| v.strip_prefix('('))
        .and_then(|v| v.split(')').next())
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap_or(usize::MAX))
                .collect()
        })
        .ok_or_else(|| bad("no shape"))?;
    let (k, dd) = match shape[..] {
        [k, dd] if dd != usize::MAX && k != usize::MAX => (k, dd),
        _ => {
            return Err(Error::file(
                path,
                format!("shape {shape:?}, expected [K, d]"),
            ))
        }
    };
    if dd != d {
        return Err(Error::file(
            path,
            format!("embedding length {dd}, expected {d} (the pool's embedding length)"),
        ));
    }
    let width = match descr {
        "<f2" => 2,
        "<f4" => 4,
        "<f8" => 8,
        other => {
            return Err(Error::file(
                path,
                format!("dtype '{other}', expected little-endian float16, float32 or float64"),
            ))
        }
    };
    let data = &bytes[start + len..];
    if data.len() != k * d * width {
        return Err(bad("data length does not match the shape"));
    }
    Ok(match width {
        2 => data
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f64())
            .collect(),
        4 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
            .collect(),
        _ => data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_npy_f32() {
        let dir = std::env::temp_dir().join(format!("clipcov-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.npy");
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        let mut h = header.to_string();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((h.len() as u16).to_le_bytes());
        bytes.extend(h.as_bytes());
        for x in [3.0f32, 0.0, 4.0, 0.0, 2.0, 0.0] {
            bytes.extend(x.to_le_bytes());
        }
        std::fs::write(&path, bytes).unwrap();
        let t = read_targets(&path, 3).unwrap();
        assert_eq!(t, vec![0.6, 0.0, 0.8, 0.0, 1.0, 0.0]);
        assert!(read_targets(&path, 4).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
