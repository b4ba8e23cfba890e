//! The library's layers (ARCHITECTURE.md): every `crate::` path in `src/`
//! points down, never up and never sideways into another module of the same
//! layer, and no two files import each other, directly or in a loop.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules, lowest layer first. A module may name only
/// modules of an earlier layer (and its own files).
const LAYERS: [&[&str]; 11] = [
    &["clock", "error", "ids", "progress", "rng"],
    &["kernels"],
    &["io"],
    &["formats"],
    &["memory", "store"],
    &["stages"],
    &["methods", "synth"],
    &["eval"],
    &["output"],
    &["jobs"],
    &["cli"],
];

fn layer_of(top: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&top))
}

/// `src/a/b.rs` -> `a::b`, `src/a/mod.rs` -> `a`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().map(String::as_str) == Some("mod") {
        parts.pop();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without its unit tests and comments.
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap();
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every module path named after `crate::` (braces expanded one level).
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let path = rest[..end].trim_end_matches(':').to_string();
        if rest[end..].starts_with('{') && rest[..end].ends_with("::") {
            let close = rest[end..].find('}').unwrap() + end;
            for item in rest[end + 1..close].split(',') {
                let item = item.trim();
                if !item.is_empty() && item != "self" {
                    out.push(format!("{path}::{item}"));
                }
            }
            out.push(path);
        } else {
            out.push(path);
        }
    }
    out
}

/// The longest known module that `path` starts with.
fn resolve(modules: &BTreeSet<String>, path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split("::").map(|p| p.trim()).collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|m| modules.contains(m))
}

fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut graph = BTreeMap::new();
    for f in &files {
        let from = module_of(&src, f);
        if from == "main" || from == "lib" {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(f).unwrap());
        let mut to: BTreeSet<String> = crate_paths(&code)
            .iter()
            .filter_map(|p| resolve(&modules, p))
            .filter(|m| *m != from)
            .collect();
        // `super::x` in a folder's file names a sibling; count it too.
        let parent = match from.rsplit_once("::") {
            Some((p, _)) if !f.ends_with("mod.rs") => p.to_string(),
            _ => from.clone(),
        };
        for (i, _) in code.match_indices("super::") {
            let tail = &code[i + "super::".len()..];
            let end = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let sibling = format!("{parent}::{}", &tail[..end]);
            if modules.contains(&sibling) && sibling != from {
                to.insert(sibling);
            } else if modules.contains(&parent) && parent != from {
                to.insert(parent.clone());
            }
        }
        graph.insert(from, to);
    }
    graph
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap()
}

#[test]
fn every_import_points_down_a_layer() {
    let graph = imports();
    let mut wrong = Vec::new();
    for (from, tos) in &graph {
        let Some(lf) = layer_of(top(from)) else {
            wrong.push(format!(
                "{from}: its top module is in no layer of tests/layers.rs"
            ));
            continue;
        };
        for to in tos {
            if top(to) == top(from) {
                continue;
            }
            let lt = layer_of(top(to)).unwrap_or(usize::MAX);
            if lt >= lf {
                wrong.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that do not point down a layer:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_two_files_import_each_other() {
    let graph = imports();
    // Depth-first search for a cycle, reporting the first one found.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(m) {
            Some(2) => return None,
            Some(1) => {
                let at = stack.iter().position(|s| s == m).unwrap();
                let mut cycle = stack[at..].to_vec();
                cycle.push(m.to_string());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(m.to_string(), 1);
        stack.push(m.to_string());
        for to in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(to, graph, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(m.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in graph.keys() {
        let mut stack = Vec::new();
        if let Some(cycle) = visit(m, &graph, &mut state, &mut stack) {
            panic!("an import circle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_check_sees_an_upward_import() {
    // The parser the two tests above rely on, on a known upward import.
    let code =
        "use crate::jobs::pipeline::{self, Staged};\nfn f() { crate::io::written::record(); }";
    let paths = crate_paths(code);
    assert!(paths.contains(&"jobs::pipeline::Staged".to_string()));
    assert!(paths.contains(&"io::written::record".to_string()));
    assert!(layer_of("jobs") > layer_of("output"));
}
