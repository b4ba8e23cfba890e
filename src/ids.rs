//! Row ids as the shards carry them: the id column's type, and one id.

use arrow_schema::DataType;
use serde::{Deserialize, Serialize};

/// The id column's type, the same in every shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdKind {
    Utf8,
    Int64,
    UInt64,
}

impl IdKind {
    /// The Arrow type of ids of this kind.
    pub fn arrow_type(self) -> DataType {
        match self {
            IdKind::Utf8 => DataType::Utf8,
            IdKind::Int64 => DataType::Int64,
            IdKind::UInt64 => DataType::UInt64,
        }
    }
}

/// One id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdRef<'a> {
    Utf8(&'a str),
    Int(i64),
    UInt(u64),
}

impl std::fmt::Display for IdRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdRef::Utf8(s) => f.write_str(s),
            IdRef::Int(v) => write!(f, "{v}"),
            IdRef::UInt(v) => write!(f, "{v}"),
        }
    }
}
