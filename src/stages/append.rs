//! Stage 1b, append: the shards added since a store was staged join it,
//! instead of staging every shard again (the nightly run over a pool that
//! grows by appended shards).
//!
//! The new shards are ingested on their own into `store/delta/` by the
//! ingest stage, then appended to the store files. Canonical rows are
//! renumbered for today's shards (a new shard may sort among the old
//! ones), and the classes stage then writes the new class-sorted order.
//! The order before the append is kept as `order.prev.bin`: the score
//! stage maps the earlier terms through it (`stages::rescore`).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::formats::dataset::{ShardStarts, SourceFile};
use crate::ids::IdKind;
use crate::stages::ingest::{Ingested, ShardRows};
use crate::store::{append_file, files, IdStore, Mapped, SeqWriter};

/// One input shard as the store's key records it: its name and every file
/// it is read from, with the file's size and version (modification time
/// in nanoseconds, or an object's ETag).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputStat {
    pub relative: String,
    pub files: Vec<(PathBuf, u64, String)>,
}

/// Today's shards against those a store was staged from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendPlan {
    /// Today's index of each shard the store holds, in the store's order.
    pub kept: Vec<usize>,
    /// Today's indices of the new shards, in order.
    pub added: Vec<usize>,
}

impl AppendPlan {
    /// The plan, or why the store cannot grow into today's input: a shard
    /// it holds was removed, changed or moved in the shard order.
    pub fn new(staged: &[InputStat], today: &[InputStat]) -> std::result::Result<Self, String> {
        let mut kept = Vec::with_capacity(staged.len());
        for s in staged {
            let Some(i) = today.iter().position(|t| t.relative == s.relative) else {
                return Err(format!("shard {} was removed", s.relative));
            };
            if today[i] != *s {
                return Err(format!(
                    "shard {} changed (size or modification time)",
                    s.relative
                ));
            }
            if kept.last().is_some_and(|&l| l >= i) {
                return Err(format!("shard {} moved in the shard order", s.relative));
            }
            kept.push(i);
        }
        let mut is_kept = vec![false; today.len()];
        for &i in &kept {
            is_kept[i] = true;
        }
        let added = (0..today.len()).filter(|&i| !is_kept[i]).collect();
        Ok(AppendPlan { kept, added })
    }
}

/// Why the rows staged in `delta_dir` cannot join the store in
/// `store_dir`, if they cannot: another embedding width, precision or id
/// type, or an id the store already holds. A full run then stages every
/// shard and reports the real problem, or applies `--on-duplicate`.
pub fn conflict(
    store_dir: &Path,
    old: &Ingested,
    delta_dir: &Path,
    delta: &Ingested,
) -> Result<Option<String>> {
    if delta.d != old.d {
        return Ok(Some(format!(
            "the new shards have d = {}, the store d = {}",
            delta.d, old.d
        )));
    }
    if delta.dtype != old.dtype || delta.id_kind != old.id_kind {
        return Ok(Some(
            "the new shards store another precision or id type".into(),
        ));
    }
    let old_ids = IdStore::open(store_dir, old.id_kind)?;
    let new_ids = IdStore::open(delta_dir, delta.id_kind)?;
    let staged: HashSet<_> = (0..old.file_rows as usize)
        .map(|f| old_ids.get(f))
        .collect();
    let dropped: HashSet<u64> = delta.duplicate_file_rows.iter().copied().collect();
    let repeated = (0..delta.file_rows)
        .filter(|f| !dropped.contains(f))
        .any(|f| staged.contains(&new_ids.get(f as usize)));
    Ok(repeated.then(|| "an id of the new shards is already in the store".into()))
}

/// Appends the rows staged in `delta_dir` (today's shards `plan.added`)
/// to the store in `store_dir`, renumbers every file row's canonical row
/// for `today`'s shards, moves `order.bin` to `order.prev.bin`, and
/// returns what the grown store holds. The caller has already marked the
/// store incomplete in the journal: a crash here means a full run next.
pub fn append(
    store_dir: &Path,
    old: &Ingested,
    delta_dir: &Path,
    delta: &Ingested,
    plan: &AppendPlan,
    today: &[SourceFile],
) -> Result<Ingested> {
    // Where every shard's rows start today.
    let mut shards: Vec<Option<&ShardRows>> = vec![None; today.len()];
    for (i, &t) in plan.kept.iter().enumerate() {
        shards[t] = Some(&old.shards[i]);
    }
    for (j, &t) in plan.added.iter().enumerate() {
        shards[t] = Some(&delta.shards[j]);
    }
    let starts = ShardStarts::from_rows(shards.iter().map(|s| s.map_or(0, |s| s.rows)));
    let renumber = |from: &ShardStarts, to: &[usize], row: u64| -> u64 {
        let (i, in_file) = from.locate(row).expect("a staged row lies in a shard");
        starts.range(to[i]).start + in_file
    };
    let (old_starts, delta_starts) = (old.starts(), delta.starts());
    let old_row = |row: u64| renumber(&old_starts, &plan.kept, row);
    let delta_row = |row: u64| renumber(&delta_starts, &plan.added, row);

    for name in [files::IMAGE, files::TEXT, files::SCALE] {
        append_file(&delta_dir.join(name), &store_dir.join(name))?;
    }
    append_ids(store_dir, delta_dir, old.id_kind)?;
    {
        let before = Mapped::<u64>::open(&store_dir.join(files::ROW))?;
        let added = Mapped::<u64>::open(&delta_dir.join(files::ROW))?;
        let mut w = SeqWriter::create(&store_dir.join(files::ROW))?;
        let renumbered: Vec<u64> = before.as_slice().iter().map(|&r| old_row(r)).collect();
        w.write(&renumbered)?;
        let renumbered: Vec<u64> = added.as_slice().iter().map(|&r| delta_row(r)).collect();
        w.write(&renumbered)?;
        w.finish()?;
    }
    std::fs::rename(
        store_dir.join(files::ORDER),
        store_dir.join(files::ORDER_PREV),
    )
    .map_err(|e| crate::error::Error::io(store_dir.join(files::ORDER), e))?;

    let mut rejects: Vec<_> = old.rejects.clone();
    for r in &mut rejects {
        r.row = old_row(r.row);
    }
    rejects.extend(delta.rejects.iter().cloned().map(|mut r| {
        r.row = delta_row(r.row);
        r
    }));
    rejects.sort_by_key(|r| r.row);
    let mut skipped: BTreeMap<String, u64> = old.skipped.clone();
    for (reason, n) in &delta.skipped {
        *skipped.entry(reason.clone()).or_default() += n;
    }
    let mut duplicate_file_rows = old.duplicate_file_rows.clone();
    duplicate_file_rows.extend(delta.duplicate_file_rows.iter().map(|f| f + old.file_rows));
    let prefilter = match (&old.prefilter, &delta.prefilter) {
        (Some(a), Some(b)) => {
            let mut p = a.clone();
            p.rows_before += b.rows_before;
            p.rows_after += b.rows_after;
            Some(p)
        }
        (a, _) => a.clone(),
    };
    Ok(Ingested {
        d: old.d,
        dtype: old.dtype,
        id_kind: old.id_kind,
        rows_read: old.rows_read + delta.rows_read,
        file_rows: old.file_rows + delta.file_rows,
        duplicate_file_rows,
        chunks: old.chunks.iter().chain(&delta.chunks).copied().collect(),
        rejects,
        skipped,
        shards: today
            .iter()
            .zip(&shards)
            .enumerate()
            .map(|(t, (f, s))| ShardRows {
                file: f.relative.clone(),
                first_row: starts.range(t).start,
                rows: s.map_or(0, |s| s.rows),
            })
            .collect(),
        prefilter,
        // The staging of the new shards alone: the append stage's own
        // time is its timing.
        times: delta.times.clone(),
        file_records: Vec::new(),
    })
}

/// Appends the delta's ids: integer ids as they are, utf8 ids' bytes and
/// their end offsets moved past the store's bytes.
fn append_ids(store_dir: &Path, delta_dir: &Path, kind: IdKind) -> Result<()> {
    if kind != IdKind::Utf8 {
        return append_file(
            &delta_dir.join(files::IDS_INT),
            &store_dir.join(files::IDS_INT),
        );
    }
    let base = *Mapped::<u64>::open(&store_dir.join(files::IDS_OFF))?
        .as_slice()
        .last()
        .unwrap_or(&0);
    let ends: Vec<u64> = Mapped::<u64>::open(&delta_dir.join(files::IDS_OFF))?.as_slice()[1..]
        .iter()
        .map(|e| e + base)
        .collect();
    let tmp = delta_dir.join("ids.off.moved");
    let mut w = SeqWriter::create(&tmp)?;
    w.write(&ends)?;
    w.finish()?;
    append_file(&tmp, &store_dir.join(files::IDS_OFF))?;
    append_file(
        &delta_dir.join(files::IDS_DAT),
        &store_dir.join(files::IDS_DAT),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(name: &str, bytes: u64) -> InputStat {
        InputStat {
            relative: name.into(),
            files: vec![(PathBuf::from(name), bytes, "1".into())],
        }
    }

    #[test]
    fn plan_finds_new_shards_after_and_among_the_old() {
        let old = [stat("a", 1), stat("c", 1)];
        let today = [stat("a", 1), stat("b", 1), stat("c", 1), stat("d", 1)];
        assert_eq!(
            AppendPlan::new(&old, &today),
            Ok(AppendPlan {
                kept: vec![0, 2],
                added: vec![1, 3]
            })
        );
    }

    #[test]
    fn plan_refuses_removed_changed_and_moved_shards() {
        let old = [stat("a", 1), stat("c", 1)];
        let err = |today: &[InputStat]| AppendPlan::new(&old, today).unwrap_err();
        assert_eq!(err(&[stat("a", 1)]), "shard c was removed");
        assert_eq!(
            err(&[stat("a", 1), stat("c", 2)]),
            "shard c changed (size or modification time)"
        );
        assert_eq!(
            err(&[stat("c", 1), stat("a", 1)]),
            "shard c moved in the shard order"
        );
    }
}
