//! A method's files: `OUT/<method>/subset.parquet` and `subset.csv`
//! (docs/formats.md columns), written atomically.

use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::formats::metadata::RESERVED;
use crate::io::written::OutputFile;
use crate::methods::{Ctx, Selection};
use crate::output::emit::{write_subset_files, SubsetExtras};
use crate::output::subset::SubsetRow;

/// Writes the subset files of `sel` under `out/<method>/`.
pub fn write_subset(
    out: &Path,
    ctx: &Ctx,
    sel: &Selection,
    extras: &SubsetExtras,
) -> Result<Vec<OutputFile>> {
    // --keep-columns refuses the reserved names: a term missing from them
    // could be written twice.
    if let Some(t) = sel.term_names.iter().find(|t| !RESERVED.contains(t)) {
        return Err(Error::Internal(format!(
            "term '{t}' of {} is not in formats::metadata::RESERVED",
            sel.method.name()
        )));
    }
    let dir = out.join(sel.method.name());
    std::fs::create_dir_all(&dir).at_path(&dir)?;
    let rows: Vec<SubsetRow> = sel
        .picks
        .iter()
        .enumerate()
        .map(|(rank, p)| SubsetRow {
            id: ctx.store.id(p.pos),
            rank: rank as u64,
            row: ctx.rows[p.pos],
            class: p.class,
            score: p.score,
            terms: p.terms.clone(),
        })
        .collect();
    let mut files = write_subset_files(out, &dir, &rows, &sel.term_names, extras)?;
    files.extend(sel.files.iter().cloned());
    Ok(files)
}
