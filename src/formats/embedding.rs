//! Views of an Arrow embedding column (FixedSizeList, List or LargeList of
//! float16/32/64) as one typed slice per row, without copying.

use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type, Float64Type};
use arrow_array::{Array, ArrayRef};
use arrow_buffer::NullBuffer;
use arrow_schema::DataType;
use half::f16;

/// Element type of an embedding column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatKind {
    F16,
    F32,
    F64,
}

impl FloatKind {
    pub fn name(self) -> &'static str {
        match self {
            FloatKind::F16 => "float16",
            FloatKind::F32 => "float32",
            FloatKind::F64 => "float64",
        }
    }
}

/// One row's values.
#[derive(Clone, Copy, Debug)]
pub enum Floats<'a> {
    F16(&'a [f16]),
    F32(&'a [f32]),
    F64(&'a [f64]),
}

impl Floats<'_> {
    pub fn len(&self) -> usize {
        match self {
            Floats::F16(v) => v.len(),
            Floats::F32(v) => v.len(),
            Floats::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The squared L2 norm in `f64`, or `None` when a component is not
    /// finite. (A non-finite component makes the sum non-finite; squares of
    /// f16/f32 values cannot overflow an f64, so the test is exact for them.)
    pub fn norm2(&self) -> Option<f64> {
        // Eight independent sums so the loop vectorises; `lanes` carries
        // over between the chunks of an f16 row, so the order of the sums
        // is that of one pass over the row.
        fn add<T: Copy>(lanes: &mut [f64; 8], v: &[T], f: impl Fn(T) -> f64) -> f64 {
            let mut chunks = v.chunks_exact(8);
            for c in &mut chunks {
                for l in 0..8 {
                    let x = f(c[l]);
                    lanes[l] += x * x;
                }
            }
            chunks.remainder().iter().map(|&x| f(x) * f(x)).sum()
        }
        let mut lanes = [0.0f64; 8];
        let tail = match self {
            Floats::F16(v) => {
                let mut tail = 0.0;
                for_f32_chunks(v, |c| tail += add(&mut lanes, c, |x| x as f64));
                tail
            }
            Floats::F32(v) => add(&mut lanes, v, |x| x as f64),
            Floats::F64(v) => add(&mut lanes, v, |x| x),
        };
        let s = lanes.iter().sum::<f64>() + tail;
        s.is_finite().then_some(s)
    }

    /// Appends `value * scale` as `f32`.
    pub fn extend_scaled_f32(&self, scale: f64, out: &mut Vec<f32>) {
        match self {
            Floats::F16(v) => for_f32_chunks(v, |c| {
                out.extend(c.iter().map(|&x| (x as f64 * scale) as f32))
            }),
            Floats::F32(v) => out.extend(v.iter().map(|&x| (x as f64 * scale) as f32)),
            Floats::F64(v) => out.extend(v.iter().map(|&x| (x * scale) as f32)),
        }
    }
}

/// Calls `f` on `v` converted to `f32`, 512 values at a time (a multiple
/// of 8, so only the last chunk has a remainder). `half` converts a slice
/// with F16C after one feature check; its per-value `to_f32` checks and
/// calls for each value, which made f16 ingest 9x slower.
pub fn for_f32_chunks(v: &[f16], mut f: impl FnMut(&[f32])) {
    use half::slice::HalfFloatSliceExt;
    let mut buf = [0.0f32; 512];
    for c in v.chunks(buf.len()) {
        let out = &mut buf[..c.len()];
        c.convert_to_f32_slice(out);
        f(out);
    }
}

enum Values<'a> {
    F16(&'a [f16]),
    F32(&'a [f32]),
    F64(&'a [f64]),
}

enum Offsets<'a> {
    Fixed { size: usize, first: usize },
    I32(&'a [i32]),
    I64(&'a [i64]),
}

/// A borrowed view of an embedding column.
pub struct EmbeddingView<'a> {
    values: Values<'a>,
    offsets: Offsets<'a>,
    nulls: Option<&'a NullBuffer>,
    child_nulls: Option<&'a NullBuffer>,
    len: usize,
    pub kind: FloatKind,
}

/// The embedding element type of a column's data type, or `None` when the
/// type is not an embedding type clipcov reads.
pub fn embedding_kind(dt: &DataType) -> Option<FloatKind> {
    let item = match dt {
        DataType::FixedSizeList(f, _) | DataType::List(f) | DataType::LargeList(f) => f.data_type(),
        _ => return None,
    };
    match item {
        DataType::Float16 => Some(FloatKind::F16),
        DataType::Float32 => Some(FloatKind::F32),
        DataType::Float64 => Some(FloatKind::F64),
        _ => None,
    }
}

/// Why a row of an embedding column cannot be used.
#[derive(Debug, PartialEq)]
pub enum RowProblem {
    Null,
    NullComponent,
    Length(usize),
}

impl<'a> EmbeddingView<'a> {
    /// Views `array`; returns `None` when its type is not an embedding type.
    pub fn try_new(array: &'a ArrayRef) -> Option<Self> {
        let kind = embedding_kind(array.data_type())?;
        let (child, offsets): (&'a ArrayRef, Offsets<'a>) = match array.data_type() {
            DataType::FixedSizeList(_, size) => {
                let l = array.as_fixed_size_list();
                (
                    l.values(),
                    Offsets::Fixed {
                        size: *size as usize,
                        first: l.offset(),
                    },
                )
            }
            DataType::List(_) => {
                let l = array.as_list::<i32>();
                (l.values(), Offsets::I32(l.value_offsets()))
            }
            DataType::LargeList(_) => {
                let l = array.as_list::<i64>();
                (l.values(), Offsets::I64(l.value_offsets()))
            }
            _ => return None,
        };
        let values = match kind {
            FloatKind::F16 => Values::F16(child.as_primitive::<Float16Type>().values()),
            FloatKind::F32 => Values::F32(child.as_primitive::<Float32Type>().values()),
            FloatKind::F64 => Values::F64(child.as_primitive::<Float64Type>().values()),
        };
        Some(EmbeddingView {
            values,
            offsets,
            nulls: array.nulls(),
            child_nulls: child.nulls().filter(|n| n.null_count() > 0),
            len: array.len(),
            kind,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The values of row `i`, which must have length `d`.
    pub fn row(&self, i: usize, d: usize) -> Result<Floats<'a>, RowProblem> {
        if self.nulls.is_some_and(|n| n.is_null(i)) {
            return Err(RowProblem::Null);
        }
        let (start, end) = match self.offsets {
            Offsets::Fixed { size, first } => ((first + i) * size, (first + i + 1) * size),
            Offsets::I32(o) => (o[i] as usize, o[i + 1] as usize),
            Offsets::I64(o) => (o[i] as usize, o[i + 1] as usize),
        };
        if end - start != d {
            return Err(RowProblem::Length(end - start));
        }
        if let Some(n) = self.child_nulls {
            if (start..end).any(|j| n.is_null(j)) {
                return Err(RowProblem::NullComponent);
            }
        }
        Ok(match self.values {
            Values::F16(v) => Floats::F16(&v[start..end]),
            Values::F32(v) => Floats::F32(&v[start..end]),
            Values::F64(v) => Floats::F64(&v[start..end]),
        })
    }

    /// The length of row `i` (ignoring nulls): used to learn `d`.
    pub fn row_len(&self, i: usize) -> usize {
        match self.offsets {
            Offsets::Fixed { size, .. } => size,
            Offsets::I32(o) => (o[i + 1] - o[i]) as usize,
            Offsets::I64(o) => (o[i + 1] - o[i]) as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunked f16 paths give the bits of a plain per-value pass, on
    /// lengths around the chunk size and with a remainder of 8.
    #[test]
    fn f16_rows_convert_as_per_value() {
        for len in [0usize, 5, 8, 511, 512, 515, 1030] {
            let v: Vec<f16> = (0..len)
                .map(|i| f16::from_f64(((i * 37 % 101) as f64 - 50.0) / 17.0))
                .collect();
            let row = Floats::F16(&v);
            let mut lanes = [0.0f64; 8];
            let mut chunks = v.chunks_exact(8);
            for c in &mut chunks {
                for l in 0..8 {
                    lanes[l] += c[l].to_f64() * c[l].to_f64();
                }
            }
            let tail: f64 = chunks
                .remainder()
                .iter()
                .map(|x| x.to_f64() * x.to_f64())
                .sum();
            let want = lanes.iter().sum::<f64>() + tail;
            assert_eq!(
                row.norm2().map(f64::to_bits),
                Some(want.to_bits()),
                "len {len}"
            );
            let mut got = Vec::new();
            row.extend_scaled_f32(0.3, &mut got);
            let want: Vec<u32> = v
                .iter()
                .map(|x| ((x.to_f64() * 0.3) as f32).to_bits())
                .collect();
            assert_eq!(got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want);
        }
        let bad = [f16::from_f32(1.0), f16::INFINITY];
        assert_eq!(Floats::F16(&bad).norm2(), None);
    }
}
