//! Finding a dataset's shards (docs/formats.md): canonical Parquet shards,
//! the DataComp pool (`X.parquet` + sibling `X.npz`) and clip-retrieval
//! output (`img_emb/`, `text_emb/`, `metadata/`). Each layout becomes a
//! list of [`SourceFile`]s in canonical row order (files sorted by their
//! path relative to the root, byte-wise) whose [`ShardKind`] tells the
//! shard reader where the ids and embeddings are. The canonical row index
//! is the position in the concatenation of the files' rows in that order
//! ([`ShardStarts`]).

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::io::remote;

/// One input file, as recorded in the manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceFile {
    pub path: PathBuf,
    /// Path relative to the dataset root: the sort key of the row order.
    pub relative: String,
    pub bytes: u64,
    pub modified_unix: u64,
    /// Where the shard's embeddings are (npy layouts); Parquet by default.
    #[serde(default)]
    pub kind: ShardKind,
}

/// Where each shard's rows sit in the canonical row order, from the rows
/// of every shard: the one row -> shard lookup (dedup messages, c_rho's
/// learner rows, `--keep-columns`). An empty shard owns no row.
#[derive(Clone, Debug)]
pub struct ShardStarts {
    /// `starts[i]`: canonical index of shard `i`'s first row; one more
    /// entry holds the total.
    starts: Vec<u64>,
}

impl Default for ShardStarts {
    /// No shards.
    fn default() -> Self {
        ShardStarts::from_rows([])
    }
}

impl ShardStarts {
    pub fn from_rows(rows: impl IntoIterator<Item = u64>) -> Self {
        let mut starts = vec![0u64];
        for n in rows {
            starts.push(starts[starts.len() - 1] + n);
        }
        ShardStarts { starts }
    }

    /// The canonical rows of shard `i`.
    pub fn range(&self, i: usize) -> std::ops::Range<u64> {
        self.starts[i]..self.starts[i + 1]
    }

    /// The shard holding canonical row `row` and the row's index inside
    /// it; `None` past the last row.
    pub fn locate(&self, row: u64) -> Option<(usize, u64)> {
        let shards = self.starts.len() - 1;
        if row >= self.starts[shards] {
            return None;
        }
        // The last shard starting at or before `row`: empty shards share
        // their start with the next one and are skipped.
        let i = self.starts[..shards].partition_point(|&s| s <= row) - 1;
        Some((i, row - self.starts[i]))
    }
}

/// The column names to read.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Columns {
    pub id: String,
    pub image: String,
    pub text: String,
}

impl Default for Columns {
    fn default() -> Self {
        Columns {
            id: "id".into(),
            image: "image_embedding".into(),
            text: "text_embedding".into(),
        }
    }
}

/// Finds the `*.parquet` files under `root` (or `root` itself when it is a
/// file), in canonical order. `root` may be a URL (a prefix or an object).
pub fn discover(root: &Path) -> Result<Vec<SourceFile>> {
    if remote::is_url(root) {
        return discover_remote(root);
    }
    let meta = std::fs::metadata(root).at_path(root)?;
    let mut paths = Vec::new();
    if meta.is_file() {
        paths.push(root.to_path_buf());
    } else {
        walk(root, &mut paths)?;
    }
    let base = if meta.is_file() {
        root.parent().unwrap_or(Path::new(""))
    } else {
        root
    };
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let m = std::fs::metadata(&path).at_path(&path)?;
        let relative = path
            .strip_prefix(base)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        let modified_unix = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        files.push(SourceFile {
            path,
            relative,
            bytes: m.len(),
            modified_unix,
            kind: ShardKind::Parquet,
        });
    }
    files.sort_by(|a, b| a.relative.as_bytes().cmp(b.relative.as_bytes()));
    if files.is_empty() {
        return Err(Error::file(root, "no *.parquet files found").with_hint(
            "point --data at a folder of Parquet shards (searched recursively) or at one .parquet file",
        ));
    }
    Ok(files)
}

fn discover_remote(root: &Path) -> Result<Vec<SourceFile>> {
    let mut files: Vec<SourceFile> = remote::list(root)?
        .into_iter()
        // The rules of `walk`: no hidden or temporary names at any level.
        .filter(|o| {
            o.relative.ends_with(".parquet")
                && !o
                    .relative
                    .split('/')
                    .any(|seg| seg.starts_with('.') || seg.starts_with('_'))
        })
        .map(|o| SourceFile {
            path: o.path,
            relative: o.relative,
            bytes: o.stat.bytes,
            modified_unix: o.stat.modified_unix,
            kind: ShardKind::Parquet,
        })
        .collect();
    files.sort_by(|a, b| a.relative.as_bytes().cmp(b.relative.as_bytes()));
    if files.is_empty() {
        return Err(Error::file(root, "no *.parquet objects found").with_hint(
            "point --data at a prefix holding Parquet shards (listed recursively) or at one .parquet object",
        ));
    }
    Ok(files)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).at_path(dir)? {
        let entry = entry.at_path(dir)?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Hidden files and our own temporary files are never data.
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        let ft = entry.file_type().at_path(&path)?;
        if ft.is_dir() {
            walk(&path, out)?;
        } else if name.ends_with(".parquet") {
            out.push(path);
        }
    }
    Ok(())
}

/// `--id-column` value that makes the canonical row index the id.
pub const ROW_INDEX_ID: &str = ":row";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    Canonical,
    Datacomp,
    ClipRetrieval,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Canonical => "canonical",
            Layout::Datacomp => "datacomp",
            Layout::ClipRetrieval => "clip-retrieval",
        }
    }
}

/// Which DataComp embeddings to read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Model {
    #[default]
    L14,
    B32,
}

impl Model {
    pub fn name(self) -> &'static str {
        match self {
            Model::L14 => "l14",
            Model::B32 => "b32",
        }
    }
}

/// Where one shard's ids and embeddings are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardKind {
    /// Everything in the Parquet file itself.
    #[default]
    Parquet,
    /// Ids (and metadata) in the Parquet file, embeddings in `npz`.
    Datacomp { npz: PathBuf },
    /// Embeddings in two `.npy` files (the `SourceFile` is `image`), ids
    /// and metadata in `metadata` when there is one.
    ClipRetrieval {
        text: PathBuf,
        metadata: Option<PathBuf>,
    },
}

impl ShardKind {
    pub fn layout(&self) -> Layout {
        match self {
            ShardKind::Parquet => Layout::Canonical,
            ShardKind::Datacomp { .. } => Layout::Datacomp,
            ShardKind::ClipRetrieval { .. } => Layout::ClipRetrieval,
        }
    }
}

/// The Parquet file holding a shard's metadata columns, if any.
pub fn metadata_path(f: &SourceFile) -> Option<&Path> {
    match &f.kind {
        ShardKind::Parquet | ShardKind::Datacomp { .. } => Some(&f.path),
        ShardKind::ClipRetrieval { metadata, .. } => metadata.as_deref(),
    }
}

/// Guesses the layout of `root`: clip-retrieval when it holds an `img_emb`
/// folder, DataComp when every Parquet file has a sibling `.npz`,
/// canonical when none has.
///
/// # Errors
/// A usage error when the folder mixes shards with and without `.npz`.
pub fn detect(root: &Path) -> Result<Layout> {
    let clip_retrieval = if remote::is_url(root) {
        remote::list(root)?
            .iter()
            .any(|o| o.relative.starts_with("img_emb/"))
    } else {
        root.join("img_emb").is_dir()
    };
    if clip_retrieval {
        return Ok(Layout::ClipRetrieval);
    }
    let files = discover(root)?;
    let mut with_npz = 0;
    for f in &files {
        with_npz += remote::exists(&f.path.with_extension("npz"))? as usize;
    }
    match with_npz {
        0 => Ok(Layout::Canonical),
        n if n == files.len() => Ok(Layout::Datacomp),
        n => Err(Error::Usage(format!(
            "{}: {n} of {} Parquet files have a sibling .npz, the others not; give --layout canonical or --layout datacomp",
            root.display(),
            files.len()
        ))),
    }
}

/// The shards of `root` in `layout`, in canonical order, and the column
/// names to read (`cols.id` empty means the layout's default id).
///
/// # Errors
/// A data error naming the missing sibling file or folder.
pub fn discover_layout(
    root: &Path,
    layout: Layout,
    cols: &Columns,
    model: Model,
) -> Result<(Vec<SourceFile>, Columns)> {
    match layout {
        Layout::Canonical => {
            let mut c = cols.clone();
            if c.id.is_empty() {
                c.id = "id".into();
            }
            Ok((discover(root)?, c))
        }
        Layout::Datacomp => {
            let mut files = discover(root)?;
            for f in &mut files {
                let npz = f.path.with_extension("npz");
                let m = remote::stat(&npz).map_err(|_| {
                    Error::file(&f.path, format!("no sibling {}", npz.display())).with_hint(
                        "a DataComp pool shard is X.parquet with its embeddings in X.npz",
                    )
                })?;
                f.bytes += m.bytes;
                f.kind = ShardKind::Datacomp { npz };
            }
            let c = Columns {
                id: if cols.id.is_empty() {
                    "uid".into()
                } else {
                    cols.id.clone()
                },
                image: format!("{}_img", model.name()),
                text: format!("{}_txt", model.name()),
            };
            Ok((files, c))
        }
        Layout::ClipRetrieval => discover_clip_retrieval(root, cols),
    }
}

fn discover_clip_retrieval(root: &Path, cols: &Columns) -> Result<(Vec<SourceFile>, Columns)> {
    let img_dir = root.join("img_emb");
    let mut parts: Vec<String> = Vec::new();
    let names: Vec<String> = if remote::is_url(&img_dir) {
        remote::list(&img_dir)?
            .into_iter()
            .map(|o| o.relative)
            .collect()
    } else {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&img_dir).at_path(&img_dir)? {
            let name = entry.at_path(&img_dir)?.file_name();
            names.push(name.to_string_lossy().into_owned());
        }
        names
    };
    for name in &names {
        if let Some(p) = name
            .strip_prefix("img_emb_")
            .and_then(|r| r.strip_suffix(".npy"))
        {
            parts.push(p.to_string());
        }
    }
    // Partition numbers are zero-padded, so byte order is partition order.
    parts.sort();
    if parts.is_empty() {
        return Err(Error::file(&img_dir, "no img_emb_{p}.npy files found")
            .with_hint("point --data at the folder clip-retrieval wrote (it holds img_emb/, text_emb/, metadata/)"));
    }
    let has_meta = remote::is_prefix(&root.join("metadata"))?;
    let id = if !cols.id.is_empty() {
        cols.id.clone()
    } else if has_meta {
        "image_path".into()
    } else {
        ROW_INDEX_ID.into()
    };
    let mut files = Vec::with_capacity(parts.len());
    for p in &parts {
        let image = img_dir.join(format!("img_emb_{p}.npy"));
        let text = root.join("text_emb").join(format!("text_emb_{p}.npy"));
        let meta = root.join("metadata").join(format!("metadata_{p}.parquet"));
        let im = remote::stat(&image)?;
        let tm = remote::stat(&text).map_err(|_| {
            Error::file(&image, format!("no matching {}", text.display()))
                .with_hint("every partition needs img_emb_{p}.npy and text_emb_{p}.npy")
        })?;
        let mm = remote::stat(&meta).ok();
        if mm.is_none() && id != ROW_INDEX_ID {
            return Err(
                Error::file(&image, format!("no matching {}", meta.display())).with_hint(
                    "the id comes from the metadata; use --id-column :row for row-index ids",
                ),
            );
        }
        files.push(SourceFile {
            relative: format!("img_emb/img_emb_{p}.npy"),
            bytes: im.bytes + tm.bytes + mm.as_ref().map_or(0, |m| m.bytes),
            modified_unix: im.modified_unix,
            path: image,
            kind: ShardKind::ClipRetrieval {
                text,
                metadata: mm.map(|_| meta),
            },
        });
    }
    let c = Columns {
        id,
        image: "img_emb".into(),
        text: "text_emb".into(),
    };
    Ok((files, c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_skips_empty_shards() {
        let s = ShardStarts::from_rows([3, 0, 2, 0]);
        let got: Vec<_> = (0..6).map(|r| s.locate(r)).collect();
        assert_eq!(
            got,
            [
                Some((0, 0)),
                Some((0, 1)),
                Some((0, 2)),
                Some((2, 0)),
                Some((2, 1)),
                None
            ]
        );
        assert_eq!(s.range(1), 3..3);
        assert_eq!(ShardStarts::from_rows([0, 0]).locate(0), None);
    }
}
