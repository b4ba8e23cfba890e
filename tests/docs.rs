//! The repository stands alone: no file points outside the clone for its
//! documentation, every link in the Markdown docs resolves (file and
//! heading), and docs/baselines.md describes every method the tool runs.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::util::repo_root;

/// Folders that are not part of the repository's text.
const SKIP_DIRS: [&str; 4] = [".git", "target", "corpus", "node_modules"];

/// Every text file of the source tree (binary and large files left out).
fn text_files(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            if !SKIP_DIRS.contains(&name.as_str()) {
                text_files(&p, out);
            }
        } else if name != "Cargo.lock" && p.metadata().unwrap().len() < (1 << 20) {
            if let Ok(text) = std::fs::read_to_string(&p) {
                out.push((p, text));
            }
        }
    }
}

#[test]
fn nothing_points_outside_the_clone() {
    let root = repo_root();
    let mut files = Vec::new();
    text_files(&root, &mut files);
    assert!(files.len() > 50, "found only {} files", files.len());
    // Built here so this file does not match itself.
    let needle = format!("{}/", "shared");
    let mut bad = Vec::new();
    for (path, text) in &files {
        for (n, line) in text.lines().enumerate() {
            for (at, _) in line.match_indices(&needle) {
                // The offline advisory database beside the clone is optional
                // (.ci/run fetches the database without it).
                if !line[at + needle.len()..].starts_with("advisory-db") {
                    let rel = path.strip_prefix(&root).unwrap();
                    bad.push(format!("{}:{}: {}", rel.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "these lines point at a folder outside the repository; link docs/ instead:\n{}",
        bad.join("\n")
    );
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The lines of a Markdown file outside fenced code blocks.
fn prose_lines(text: &str) -> Vec<&str> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            out.push(line);
        }
    }
    out
}

fn anchors(text: &str) -> HashSet<String> {
    prose_lines(text)
        .into_iter()
        .filter(|l| l.starts_with('#'))
        .map(|l| slug(l.trim_start_matches('#')))
        .collect()
}

/// The targets of the inline links `[text](target)` of a Markdown file.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose_lines(text) {
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            match after.find(')') {
                Some(j) => {
                    out.push(after[..j].to_string());
                    rest = &after[j..];
                }
                None => break,
            }
        }
    }
    out
}

#[test]
fn markdown_links_resolve() {
    let root = repo_root();
    let mut docs = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    for name in ["algorithm.md", "baselines.md", "formats.md"] {
        docs.push(root.join("docs").join(name));
    }
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for d in &docs[1..] {
        let rel = d
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            links(&readme).contains(&rel),
            "README.md does not link {rel}"
        );
    }
    let mut bad = Vec::new();
    for doc in &docs {
        let text =
            std::fs::read_to_string(doc).unwrap_or_else(|e| panic!("{}: {e}", doc.display()));
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = match target.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (target.as_str(), None),
            };
            let path = if file.is_empty() {
                doc.clone()
            } else {
                doc.parent().unwrap().join(file)
            };
            if !path.exists() {
                bad.push(format!("{}: {target}: no such file", doc.display()));
                continue;
            }
            if let Some(a) = anchor {
                let t = std::fs::read_to_string(&path).unwrap();
                if !anchors(&t).contains(a) {
                    bad.push(format!("{}: {target}: no such heading", doc.display()));
                }
            }
        }
    }
    assert!(bad.is_empty(), "broken links:\n{}", bad.join("\n"));
}

#[test]
fn baselines_doc_covers_every_method() {
    let text = std::fs::read_to_string(repo_root().join("docs/baselines.md")).unwrap();
    let headings: Vec<&str> = prose_lines(&text)
        .into_iter()
        .filter_map(|l| l.strip_prefix("## "))
        .collect();
    for m in clipcov::methods::Method::ALL {
        assert!(
            headings
                .iter()
                .any(|h| h.split_whitespace().next() == Some(m.name())),
            "docs/baselines.md has no section for {}",
            m.name()
        );
    }
}

#[test]
fn slugs_follow_github() {
    assert_eq!(
        slug(" Linear-time form (`tau = none`)"),
        "linear-time-form-tau--none"
    );
    assert_eq!(slug("Prefilter: `--where`"), "prefilter---where");
    assert_eq!(
        slug("semdedup (Abbas et al. 2023, \"SemDeDup\")"),
        "semdedup-abbas-et-al-2023-semdedup"
    );
}
