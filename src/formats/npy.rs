//! NumPy `.npy` arrays (format versions 1, 2 and 3): header validation and
//! a 2-D float matrix over a memory-mapped (or, for compressed `.npz`
//! members, decompressed) payload, handed out as Arrow `FixedSizeList`
//! batches so the npy layouts feed ingest like Parquet.
//!
//! Only C order and shape `(rows, d)` are accepted; embedding files must be
//! `<f2` or `<f4` (the store's types), `--targets` may also be `<f8`.
//! Anything else is a data error naming the file.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, FixedSizeListArray, Float16Array, Float32Array, Float64Array};
use arrow_buffer::{Buffer, ScalarBuffer};
use arrow_schema::{DataType, Field};
use memmap2::Mmap;

use super::embedding::FloatKind;
use crate::error::{Error, IoContext, Result};

const MAGIC: &[u8] = b"\x93NUMPY";

/// Element type of an embedding matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NpyDtype {
    F16,
    F32,
    F64,
}

/// The dtypes of embedding files.
const EMBEDDING_DTYPES: &[NpyDtype] = &[NpyDtype::F16, NpyDtype::F32];
/// The dtypes of a matrix that is converted on read (`--targets`).
const ANY_FLOAT: &[NpyDtype] = &[NpyDtype::F16, NpyDtype::F32, NpyDtype::F64];

impl NpyDtype {
    pub fn width(self) -> usize {
        match self {
            NpyDtype::F16 => 2,
            NpyDtype::F32 => 4,
            NpyDtype::F64 => 8,
        }
    }

    pub fn kind(self) -> FloatKind {
        match self {
            NpyDtype::F16 => FloatKind::F16,
            NpyDtype::F32 => FloatKind::F32,
            NpyDtype::F64 => FloatKind::F64,
        }
    }
}

/// What a `.npy` header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NpyHeader {
    pub dtype: NpyDtype,
    pub rows: usize,
    pub cols: usize,
    /// Offset of the data from the start of the `.npy` bytes.
    pub data_offset: usize,
}

/// The value of `key` in a `.npy` header dict (`'key': value`).
fn header_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'"))?;
    let rest = header[at + key.len() + 2..].trim_start();
    Some(rest.strip_prefix(':')?.trim_start())
}

/// Parses and validates the header of an embedding matrix at the start of
/// `bytes`. `path` names the file in errors and `what` the array inside it
/// (`""` for a `.npy` file, `"member 'l14_img.npy': "` for an `.npz`
/// member).
///
/// # Errors
/// A data error for a missing magic, an unknown version, a truncated or
/// unparsable header, a dtype other than `<f2`/`<f4`, Fortran order, or a
/// shape that is not 2-D.
pub fn parse_header(bytes: &[u8], path: &Path, what: &str) -> Result<NpyHeader> {
    parse_header_of(bytes, path, what, EMBEDDING_DTYPES)
}

/// [`parse_header`] accepting the dtypes `allowed`.
fn parse_header_of(
    bytes: &[u8],
    path: &Path,
    what: &str,
    allowed: &[NpyDtype],
) -> Result<NpyHeader> {
    let bad = |problem: String| {
        Error::file(path, format!("{what}not a readable .npy array ({problem})")).with_hint(
            "write it with numpy.save / numpy.savez (dtype float16 or float32, shape [rows, d])",
        )
    };
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad("no NumPy magic".into()));
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(format!("unknown format version {v}"))),
    };
    let header = bytes
        .get(start..start + len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated header".into()))?;
    let descr = header_value(header, "descr")
        .and_then(|v| v.strip_prefix('\''))
        .and_then(|v| v.split('\'').next())
        .ok_or_else(|| bad("no 'descr' in the header".into()))?;
    let dtype = match descr {
        "<f2" => Some(NpyDtype::F16),
        "<f4" => Some(NpyDtype::F32),
        "<f8" => Some(NpyDtype::F64),
        _ => None,
    };
    let Some(dtype) = dtype.filter(|t| allowed.contains(t)) else {
        let expected = if allowed.contains(&NpyDtype::F64) {
            "'<f2' (float16), '<f4' (float32) or '<f8' (float64)"
        } else {
            "'<f2' (float16) or '<f4' (float32)"
        };
        return Err(
            Error::file(path, format!("{what}dtype '{descr}', expected {expected}"))
                .with_hint("convert the embeddings with arr.astype(numpy.float16) before saving"),
        );
    };
    match header_value(header, "fortran_order") {
        Some(v) if v.starts_with("False") => {}
        Some(v) if v.starts_with("True") => {
            return Err(
                Error::file(path, format!("{what}array is in Fortran order"))
                    .with_hint("save it in C order: numpy.ascontiguousarray(arr)"),
            )
        }
        _ => return Err(bad("no 'fortran_order' in the header".into())),
    }
    let shape: Vec<Option<usize>> = header_value(header, "shape")
        .and_then(|v| v.strip_prefix('('))
        .and_then(|v| v.split(')').next())
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().ok())
                .collect()
        })
        .ok_or_else(|| bad("no 'shape' in the header".into()))?;
    let (rows, cols) = match shape[..] {
        [Some(r), Some(c)] => (r, c),
        _ => {
            let dims: Vec<String> = shape
                .iter()
                .map(|d| d.map_or("?".into(), |d| d.to_string()))
                .collect();
            return Err(Error::file(
                path,
                format!(
                    "{what}shape ({}), expected a 2-D array [rows, d]",
                    dims.join(", ")
                ),
            ))
            .map_err(|e| e.with_hint("save one row per pair: arr.reshape(rows, d)"));
        }
    };
    if cols == 0 {
        return Err(Error::file(path, format!("{what}embedding length 0")));
    }
    Ok(NpyHeader {
        dtype,
        rows,
        cols,
        data_offset: start + len,
    })
}

/// Where the bytes of a matrix live.
#[derive(Clone)]
enum Payload {
    /// A memory-mapped file and the range of the `.npy` bytes inside it.
    Mapped { map: Arc<Mmap>, start: usize },
    /// Decompressed bytes (a deflated `.npz` member).
    Owned(Arc<Vec<u8>>),
}

/// A validated `[rows, d]` float matrix.
#[derive(Clone)]
pub struct NpyMatrix {
    /// The file the matrix came from (for errors).
    pub path: PathBuf,
    pub header: NpyHeader,
    payload: Payload,
}

impl NpyMatrix {
    /// Memory-maps the `.npy` file `path` (a local copy of it for a URL) and
    /// validates it.
    ///
    /// # Errors
    /// An I/O error when the file cannot be opened; a data error for a bad
    /// header or a file shorter than its shape says.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_of(path, EMBEDDING_DTYPES)
    }

    /// [`NpyMatrix::open`], also accepting float64 (a matrix converted on
    /// read, such as `--targets`).
    pub fn open_any_float(path: &Path) -> Result<Self> {
        Self::open_of(path, ANY_FLOAT)
    }

    fn open_of(path: &Path, allowed: &[NpyDtype]) -> Result<Self> {
        // An object is read from a local copy (memory maps need a file).
        let local = crate::io::remote::local_copy(path)?;
        let file = File::open(&local).at_path(&local)?;
        // SAFETY: clipcov only reads the file; input files must not be
        // rewritten while clipcov runs (the documented contract for inputs).
        let map = unsafe { Mmap::map(&file) }.at_path(&local)?;
        let len = map.len();
        Self::from_map_of(Arc::new(map), 0, len, path, "", allowed)
    }

    /// The `.npy` bytes at `map[start..start + len]` (a stored `.npz`
    /// member).
    pub fn from_map(
        map: Arc<Mmap>,
        start: usize,
        len: usize,
        path: &Path,
        what: &str,
    ) -> Result<Self> {
        Self::from_map_of(map, start, len, path, what, EMBEDDING_DTYPES)
    }

    fn from_map_of(
        map: Arc<Mmap>,
        start: usize,
        len: usize,
        path: &Path,
        what: &str,
        allowed: &[NpyDtype],
    ) -> Result<Self> {
        let bytes = map
            .get(start..start + len)
            .ok_or_else(|| Error::file(path, format!("{what}truncated file")))?;
        let header = parse_header_of(bytes, path, what, allowed)?;
        check_len(&header, len, path, what)?;
        Ok(NpyMatrix {
            path: path.to_path_buf(),
            header,
            payload: Payload::Mapped { map, start },
        })
    }

    /// Owned `.npy` bytes (a deflated `.npz` member).
    pub fn from_vec(bytes: Vec<u8>, path: &Path, what: &str) -> Result<Self> {
        let header = parse_header(&bytes, path, what)?;
        check_len(&header, bytes.len(), path, what)?;
        Ok(NpyMatrix {
            path: path.to_path_buf(),
            header,
            payload: Payload::Owned(Arc::new(bytes)),
        })
    }

    pub fn rows(&self) -> usize {
        self.header.rows
    }

    pub fn cols(&self) -> usize {
        self.header.cols
    }

    fn data(&self) -> &[u8] {
        let h = &self.header;
        let n = h.rows * h.cols * h.dtype.width();
        match &self.payload {
            Payload::Mapped { map, start } => {
                &map[start + h.data_offset..start + h.data_offset + n]
            }
            Payload::Owned(v) => &v[h.data_offset..h.data_offset + n],
        }
    }

    /// Rows `first..first + n` as a `FixedSizeList<float, d>` array. The
    /// bytes are copied into an aligned Arrow buffer (an `.npz` member need
    /// not start at an aligned offset); the file itself stays mapped.
    pub fn rows_array(&self, first: usize, n: usize) -> ArrayRef {
        let (d, w) = (self.cols(), self.header.dtype.width());
        let bytes = &self.data()[first * d * w..(first + n) * d * w];
        let buf = Buffer::from(bytes);
        let (values, dt): (ArrayRef, DataType) = match self.header.dtype {
            NpyDtype::F16 => (
                Arc::new(Float16Array::new(ScalarBuffer::new(buf, 0, n * d), None)),
                DataType::Float16,
            ),
            NpyDtype::F32 => (
                Arc::new(Float32Array::new(ScalarBuffer::new(buf, 0, n * d), None)),
                DataType::Float32,
            ),
            NpyDtype::F64 => (
                Arc::new(Float64Array::new(ScalarBuffer::new(buf, 0, n * d), None)),
                DataType::Float64,
            ),
        };
        Arc::new(FixedSizeListArray::new(
            Arc::new(Field::new_list_field(dt, false)),
            d as i32,
            values,
            None,
        ))
    }

    /// Every value, row after row, as `f64` (exact for every dtype).
    pub fn to_f64(&self) -> Vec<f64> {
        let data = self.data();
        match self.header.dtype {
            NpyDtype::F16 => data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64())
                .collect(),
            NpyDtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
                .collect(),
            NpyDtype::F64 => data
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect(),
        }
    }
}

fn check_len(h: &NpyHeader, len: usize, path: &Path, what: &str) -> Result<()> {
    let need = h
        .rows
        .checked_mul(h.cols)
        .and_then(|x| x.checked_mul(h.dtype.width()))
        .and_then(|x| x.checked_add(h.data_offset));
    if need.is_none_or(|need| need > len) {
        return Err(Error::file(
            path,
            format!(
                "{what}truncated: shape ({}, {}) needs {} bytes of data, the file has {}",
                h.rows,
                h.cols,
                h.rows * h.cols * h.dtype.width(),
                len.saturating_sub(h.data_offset)
            ),
        )
        .with_hint("the file is truncated: re-export it"));
    }
    Ok(())
}

/// Writes a `.npy` (format 1.0) header for `descr` and `shape` text such as
/// `(3,)`; the header is padded so the data starts at a multiple of 64.
pub fn header_bytes(descr: &str, shape: &str) -> Vec<u8> {
    let mut h = format!("{{'descr': {descr}, 'fortran_order': False, 'shape': {shape}, }}");
    while !(MAGIC.len() + 4 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut out = MAGIC.to_vec();
    out.extend([1u8, 0]);
    out.extend((h.len() as u16).to_le_bytes());
    out.extend(h.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut b = header_bytes(&format!("'{descr}'"), shape);
        b.extend(data);
        b
    }

    #[test]
    fn parses_f16_and_f32() {
        let b = npy("<f2", "(2, 3)", &[0; 12]);
        let h = parse_header(&b, Path::new("a.npy"), "").unwrap();
        assert_eq!((h.dtype, h.rows, h.cols), (NpyDtype::F16, 2, 3));
        assert_eq!(h.data_offset % 64, 0);
        let b = npy("<f4", "(5, 4)", &[0; 80]);
        let h = parse_header(&b, Path::new("a.npy"), "").unwrap();
        assert_eq!((h.dtype, h.rows, h.cols), (NpyDtype::F32, 5, 4));
    }

    #[test]
    fn rejects_bad_headers() {
        let p = Path::new("x.npy");
        let msg = |b: &[u8]| parse_header(b, p, "").unwrap_err().to_string();
        assert!(msg(b"hello world").contains("no NumPy magic"));
        assert!(msg(&npy("<f8", "(2, 3)", &[])).contains("dtype '<f8'"));
        assert!(msg(&npy(">f4", "(2, 3)", &[])).contains("dtype '>f4'"));
        assert!(msg(&npy("<f4", "(6,)", &[])).contains("shape (6), expected a 2-D"));
        assert!(msg(&npy("<f4", "(1, 2, 3)", &[])).contains("2-D"));
        let mut f = npy("<f4", "(2, 3)", &[]);
        let at = f.windows(5).position(|w| w == b"False").unwrap();
        f[at..at + 5].copy_from_slice(b"True ");
        assert!(msg(&f).contains("Fortran order"));
        for m in [msg(b"hello world"), msg(&npy("<f8", "(2, 3)", &[]))] {
            assert!(m.starts_with("x.npy: "), "{m}");
        }
    }

    #[test]
    fn rows_array_round_trips() {
        let vals: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let data: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let m = NpyMatrix::from_vec(npy("<f4", "(4, 3)", &data), Path::new("m.npy"), "").unwrap();
        let a = m.rows_array(1, 2);
        let view = super::super::embedding::EmbeddingView::try_new(&a).unwrap();
        let mut out = Vec::new();
        view.row(1, 3).unwrap().extend_scaled_f32(1.0, &mut out);
        assert_eq!(out, vec![6.0, 7.0, 8.0]);
        let short = npy("<f4", "(4, 3)", &data[..40]);
        let e = NpyMatrix::from_vec(short, Path::new("m.npy"), "")
            .err()
            .unwrap();
        assert!(e.to_string().contains("truncated"), "{e}");
    }
}
