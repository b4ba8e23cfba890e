//! The id column of one batch, typed: its text (for rejects and errors),
//! its hash (for the duplicate check) and its stored form.

use std::hash::{Hash, Hasher};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;

/// Ids of one batch, typed.
pub(super) enum IdColumn<'a> {
    Str(Box<dyn Fn(usize) -> &'a str + Send + Sync + 'a>),
    Int(Vec<Option<i64>>),
    UInt(Vec<Option<u64>>),
}

pub(super) fn id_column(a: &ArrayRef) -> IdColumn<'_> {
    match a.data_type() {
        DataType::Utf8 => {
            let s = a.as_string::<i32>();
            IdColumn::Str(Box::new(move |i| s.value(i)))
        }
        DataType::LargeUtf8 => {
            let s = a.as_string::<i64>();
            IdColumn::Str(Box::new(move |i| s.value(i)))
        }
        DataType::Utf8View => {
            let s = a.as_string_view();
            IdColumn::Str(Box::new(move |i| s.value(i)))
        }
        DataType::Int64 => IdColumn::Int(a.as_primitive::<Int64Type>().iter().collect()),
        DataType::Int32 => IdColumn::Int(
            a.as_primitive::<Int32Type>()
                .iter()
                .map(|v| v.map(i64::from))
                .collect(),
        ),
        DataType::UInt64 => IdColumn::UInt(a.as_primitive::<UInt64Type>().iter().collect()),
        DataType::UInt32 => IdColumn::UInt(
            a.as_primitive::<UInt32Type>()
                .iter()
                .map(|v| v.map(u64::from))
                .collect(),
        ),
        _ => unreachable!("id type checked by check_schema"),
    }
}

impl IdColumn<'_> {
    pub(super) fn text(&self, i: usize) -> String {
        match self {
            IdColumn::Str(f) => f(i).to_string(),
            IdColumn::Int(v) => v[i].unwrap_or_default().to_string(),
            IdColumn::UInt(v) => v[i].unwrap_or_default().to_string(),
        }
    }

    pub(super) fn hash(&self, i: usize) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        match self {
            IdColumn::Str(f) => f(i).hash(&mut h),
            IdColumn::Int(v) => v[i].hash(&mut h),
            IdColumn::UInt(v) => v[i].hash(&mut h),
        }
        h.finish()
    }
}
