//! Duplicate ids: found after the store is written, from the ids' hashes.

use std::path::Path;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::formats::dataset::SourceFile;
use crate::stages::ingest::types::{DuplicatePolicy, IngestOptions, Ingested, Reject};
use crate::store::{files, IdStore, Mapped};

/// The error of a repeated id: the later occurrence (its file and row in
/// the file) and the dataset row of the first.
pub fn duplicate_id_error(
    path: &Path,
    row_in_file: u64,
    column: &str,
    id: &str,
    first_row: u64,
) -> Error {
    Error::at(
        path,
        row_in_file,
        column,
        format!("duplicate id '{id}' (first seen at dataset row {first_row})"),
    )
    .with_hint("ids must be unique; --on-duplicate keep-first keeps the first occurrence")
}

/// Finds repeated ids by sorting their hashes, then comparing the ids whose
/// hashes collide. Keeps the occurrence with the smallest row index.
pub(super) fn find_duplicates(
    dir: &Path,
    files: &[SourceFile],
    ing: &mut Ingested,
    mut hashes: Vec<(u64, u64)>,
    opts: &IngestOptions,
) -> Result<()> {
    hashes.par_sort_unstable();
    let ids = IdStore::open(dir, ing.id_kind)?;
    let row_map = Mapped::<u64>::open(&dir.join(files::ROW))?;
    let row_of = |f: u64| row_map.as_slice()[f as usize];
    // (dropped file row, kept file row)
    let mut dups: Vec<(u64, u64)> = Vec::new();
    let mut i = 0;
    while i < hashes.len() {
        let mut j = i + 1;
        while j < hashes.len() && hashes[j].0 == hashes[i].0 {
            j += 1;
        }
        if j - i > 1 {
            // Same hash: group by real id, in row order.
            let mut group: Vec<u64> = hashes[i..j].iter().map(|h| h.1).collect();
            group.sort_by_key(|&f| row_of(f));
            let mut done = vec![false; group.len()];
            for a in 0..group.len() {
                if done[a] {
                    continue;
                }
                for b in a + 1..group.len() {
                    if !done[b] && ids.get(group[a] as usize) == ids.get(group[b] as usize) {
                        done[b] = true;
                        dups.push((group[b], group[a]));
                    }
                }
            }
        }
        i = j;
    }
    if dups.is_empty() {
        return Ok(());
    }
    dups.sort_by_key(|&(f, _)| row_of(f));
    let starts = ing.starts();
    let locate = |row: u64| -> (&SourceFile, u64) {
        let (i, in_file) = starts.locate(row).unwrap_or((0, row));
        (&files[i], in_file)
    };
    if opts.on_duplicate == DuplicatePolicy::Error {
        let (f, kept) = dups[0];
        let (file, row_in_file) = locate(row_of(f));
        return Err(duplicate_id_error(
            &file.path,
            row_in_file,
            &opts.columns.id,
            &ids.get(f as usize).to_string(),
            row_of(kept),
        ));
    }
    for &(f, _) in &dups {
        let row = row_of(f);
        ing.rejects.push(Reject {
            row,
            file: locate(row).0.relative.clone(),
            id: ids.get(f as usize).to_string(),
            reason: "duplicate id".into(),
        });
    }
    *ing.skipped.entry("duplicate id".into()).or_default() += dups.len() as u64;
    ing.rejects.sort_by_key(|r| r.row);
    ing.duplicate_file_rows = dups.into_iter().map(|(f, _)| f).collect();
    ing.duplicate_file_rows.sort_unstable();
    Ok(())
}
