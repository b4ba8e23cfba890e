//! `OUT/report.html`: one self-contained page (inline SVG, inline CSS, no
//! script, no network) showing what a selection did: class sizes against
//! picks per class, the distribution of each ClipCov term over all rows
//! and over the selected rows, and, after `compare`, the overlap of every
//! pair of methods.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::{IoContext, Result};
use crate::io::atomic::atomic_write;
use crate::stages::score::{BETWEEN, CROSS, EASY, LABEL, TERMS};
use crate::stages::select::Pick;
use crate::store::Store;

/// Histogram bins per term.
const BINS: usize = 30;
/// Classes drawn in the class chart (the largest ones).
const MAX_CLASSES: usize = 60;

/// Rows and picks of each latent class.
#[derive(Clone, Debug)]
pub struct ClassCounts {
    pub names: Vec<String>,
    pub sizes: Vec<u64>,
    pub picked: Vec<u64>,
}

/// One term's histogram over all rows and over the selected rows.
#[derive(Clone, Debug)]
pub struct TermDist {
    pub name: &'static str,
    pub lo: f64,
    pub hi: f64,
    pub all: Vec<u64>,
    pub selected: Vec<u64>,
}

/// What the report shows; sections without data are left out.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub title: String,
    /// `(label, value)` lines at the top.
    pub summary: Vec<(String, String)>,
    pub classes: Option<ClassCounts>,
    pub terms: Vec<TermDist>,
    /// Method names and their Jaccard overlap matrix.
    pub overlap: Option<(Vec<String>, Vec<Vec<f64>>)>,
}

/// Class counts and term histograms of a ClipCov selection. `terms` is
/// the store's `[n, TERMS]` term table, in store order.
pub fn clipcov_sections(
    store: &Store,
    terms: &[f64],
    picks: &[Pick],
) -> (ClassCounts, Vec<TermDist>) {
    let meta = &store.meta;
    let k = meta.classes();
    let mut picked = vec![0u64; k];
    for p in picks {
        picked[p.class] += 1;
    }
    let classes = ClassCounts {
        names: meta.class_names.clone(),
        sizes: (0..k).map(|c| meta.class_range(c).len() as u64).collect(),
        picked,
    };
    let n = terms.len() / TERMS;
    let dists = [
        ("easy", EASY),
        ("cross", CROSS),
        ("label", LABEL),
        ("between", BETWEEN),
    ]
    .into_iter()
    .map(|(name, t)| {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for i in 0..n {
            let v = terms[i * TERMS + t];
            if v.is_finite() {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
        if !lo.is_finite() {
            (lo, hi) = (0.0, 1.0);
        }
        let bin = |v: f64| -> Option<usize> {
            if !v.is_finite() {
                return None;
            }
            if hi <= lo {
                return Some(0);
            }
            Some((((v - lo) / (hi - lo) * BINS as f64) as usize).min(BINS - 1))
        };
        let mut all = vec![0u64; BINS];
        for i in 0..n {
            if let Some(b) = bin(terms[i * TERMS + t]) {
                all[b] += 1;
            }
        }
        let mut selected = vec![0u64; BINS];
        for p in picks {
            if let Some(b) = bin(terms[p.pos * TERMS + t]) {
                selected[b] += 1;
            }
        }
        TermDist {
            name,
            lo,
            hi,
            all,
            selected,
        }
    })
    .collect();
    (classes, dists)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STYLE: &str =
    "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fff}\
h1{font-size:22px}h2{font-size:17px;margin-top:28px}table.s td{padding:2px 12px 2px 0}\
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}\
svg text{font:11px system-ui,sans-serif;fill:#333}.terms{display:flex;flex-wrap:wrap;gap:16px}";

const ALL_COLOR: &str = "#c9ced6";
const SEL_COLOR: &str = "#2f6fd6";

/// Room for the longest of `names` beside a chart, so no name is cut
/// (11 px text: about 7 px a character).
fn label_width(names: impl Iterator<Item = usize>, least: f64) -> f64 {
    let longest = names.max().unwrap_or(0) as f64;
    (longest * 7.0 + 14.0).max(least)
}

fn class_chart(c: &ClassCounts, out: &mut String) {
    let mut order: Vec<usize> = (0..c.sizes.len()).collect();
    order.sort_by(|&a, &b| c.sizes[b].cmp(&c.sizes[a]).then(a.cmp(&b)));
    let shown = order.len().min(MAX_CLASSES);
    let max = c.sizes.iter().copied().max().unwrap_or(1).max(1) as f64;
    let label_w = label_width(
        order
            .iter()
            .take(shown)
            .map(|&k| c.names.get(k).map_or(0, |n| n.chars().count())),
        60.0,
    );
    let (bar_w, row_h) = (560.0, 16.0);
    let h = 24.0 + row_h * shown as f64;
    let _ = write!(
        out,
        "<p class=\"legend\"><span style=\"background:{ALL_COLOR}\"></span>rows in the class\
         <span style=\"background:{SEL_COLOR}\"></span>rows picked</p>"
    );
    if shown < order.len() {
        let _ = write!(
            out,
            "<p>The {shown} largest of {} classes.</p>",
            order.len()
        );
    }
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{h}\" role=\"img\" aria-label=\"class sizes and picks\">",
        label_w + bar_w + 110.0
    );
    for (i, &k) in order.iter().take(shown).enumerate() {
        let y = 8.0 + row_h * i as f64;
        let wa = bar_w * c.sizes[k] as f64 / max;
        let ws = bar_w * c.picked[k] as f64 / max;
        let name = esc(c.names.get(k).map_or("", |s| s.as_str()));
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{name}</text>\
             <rect x=\"{label_w}\" y=\"{y}\" width=\"{wa:.1}\" height=\"{}\" fill=\"{ALL_COLOR}\"><title>{name}: {} rows</title></rect>\
             <rect x=\"{label_w}\" y=\"{y}\" width=\"{ws:.1}\" height=\"{}\" fill=\"{SEL_COLOR}\"><title>{name}: {} picked</title></rect>\
             <text x=\"{}\" y=\"{}\">{} / {}</text>",
            label_w - 6.0,
            y + 11.0,
            row_h - 3.0,
            c.sizes[k],
            row_h - 3.0,
            c.picked[k],
            label_w + wa + 6.0,
            y + 11.0,
            c.picked[k],
            c.sizes[k]
        );
    }
    out.push_str("</svg>");
}

fn term_chart(t: &TermDist, out: &mut String) {
    let (w, h, pad) = (300.0, 160.0, 24.0);
    let total_all: u64 = t.all.iter().sum::<u64>().max(1);
    let total_sel: u64 = t.selected.iter().sum::<u64>().max(1);
    let frac_all: Vec<f64> = t.all.iter().map(|&c| c as f64 / total_all as f64).collect();
    let frac_sel: Vec<f64> = t
        .selected
        .iter()
        .map(|&c| c as f64 / total_sel as f64)
        .collect();
    let max = frac_all
        .iter()
        .chain(&frac_sel)
        .copied()
        .fold(0.0f64, f64::max)
        .max(1e-12);
    let bw = (w - 2.0 * pad) / BINS as f64;
    let _ = write!(
        out,
        "<figure><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" role=\"img\" aria-label=\"{}\">",
        h + 20.0,
        t.name
    );
    for (i, (&a, &s)) in frac_all.iter().zip(&frac_sel).enumerate() {
        let x = pad + bw * i as f64;
        let ha = (h - pad) * a / max;
        let hs = (h - pad) * s / max;
        let _ = write!(
            out,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{ha:.1}\" fill=\"{ALL_COLOR}\"/>\
             <rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{hs:.1}\" fill=\"{SEL_COLOR}\" fill-opacity=\"0.75\"/>",
            h - ha,
            bw - 1.0,
            x + bw * 0.25,
            h - hs,
            (bw * 0.5).max(1.0)
        );
    }
    let _ = write!(
        out,
        "<line x1=\"{pad}\" y1=\"{h}\" x2=\"{}\" y2=\"{h}\" stroke=\"#555\"/>\
         <text x=\"{pad}\" y=\"{}\">{:.3}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.3}</text>\
         <text x=\"{pad}\" y=\"12\">{}</text></svg></figure>",
        w - pad,
        h + 14.0,
        t.lo,
        w - pad,
        h + 14.0,
        t.hi,
        t.name
    );
}

fn overlap_chart(names: &[String], m: &[Vec<f64>], out: &mut String) {
    let n = names.len();
    let label_w = label_width(names.iter().map(|n| n.chars().count()), 60.0);
    let cell = 56.0;
    let size = label_w + cell * n as f64 + 10.0;
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{size}\" height=\"{size}\" role=\"img\" aria-label=\"overlap\">"
    );
    for (i, name) in names.iter().enumerate() {
        let name = esc(name);
        let c = label_w + cell * i as f64 + cell / 2.0;
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{name}</text>\
             <text x=\"{c}\" y=\"{}\" transform=\"rotate(-40 {c} {})\">{name}</text>",
            label_w - 6.0,
            label_w + cell * i as f64 + cell / 2.0 + 4.0,
            label_w - 6.0,
            label_w - 6.0
        );
        for (j, &v) in m[i].iter().enumerate() {
            let x = label_w + cell * j as f64;
            let y = label_w + cell * i as f64;
            // White (no overlap) to blue (identical).
            let shade = |full: f64| (255.0 - (255.0 - full) * v.clamp(0.0, 1.0)) as u8;
            let fill = format!("rgb({},{},{})", shade(47.0), shade(111.0), shade(214.0));
            let ink = if v > 0.55 { "#fff" } else { "#222" };
            let _ = write!(
                out,
                "<rect x=\"{x}\" y=\"{y}\" width=\"{}\" height=\"{}\" fill=\"{fill}\" stroke=\"#eee\"/>\
                 <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" style=\"fill:{ink}\">{v:.2}</text>",
                cell,
                cell,
                x + cell / 2.0,
                y + cell / 2.0 + 4.0
            );
        }
    }
    out.push_str("</svg>");
}

/// Writes `OUT/report.html` for a ClipCov selection (and the method
/// overlap after `compare`) and describes it for the manifest.
pub fn write_clipcov_report(
    out: &Path,
    title: &str,
    store: &Store,
    terms: &[f64],
    picks: &[Pick],
    overlap: Option<(Vec<String>, Vec<Vec<f64>>)>,
    parameters: &[(String, String)],
) -> Result<crate::io::written::OutputFile> {
    let (classes, dists) = clipcov_sections(store, terms, picks);
    let nonempty = classes.sizes.iter().filter(|&&s| s > 0).count();
    let covered = classes.picked.iter().filter(|&&s| s > 0).count();
    let r = Report {
        title: title.to_string(),
        summary: vec![
            ("rows".into(), store.meta.rows.to_string()),
            ("selected".into(), picks.len().to_string()),
            (
                "classes".into(),
                format!(
                    "{} ({nonempty} non-empty, {covered} with picks)",
                    classes.sizes.len()
                ),
            ),
        ],
        classes: Some(classes),
        terms: dists,
        overlap,
    };
    let mut r = r;
    r.summary.extend(parameters.iter().cloned());
    let path = out.join("report.html");
    write(&path, &r)?;
    crate::io::written::record(out, &path, picks.len() as u64)
}

/// The page as text.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let title = esc(&r.title);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
         <style>{STYLE}</style></head><body><h1>{title}</h1><table class=\"s\">"
    );
    for (k, v) in &r.summary {
        let _ = write!(out, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(v));
    }
    out.push_str("</table>");
    if let Some(c) = &r.classes {
        out.push_str("<h2>Class sizes and picks per class</h2>");
        class_chart(c, &mut out);
    }
    if !r.terms.is_empty() {
        out.push_str(
            "<h2>Terms: all rows and selected rows</h2><p class=\"legend\">share of rows per bin:\
             <span style=\"background:#c9ced6\"></span>all rows<span style=\"background:#2f6fd6\"></span>selected rows</p>\
             <div class=\"terms\">",
        );
        for t in &r.terms {
            term_chart(t, &mut out);
        }
        out.push_str("</div>");
    }
    if let Some((names, m)) = &r.overlap {
        out.push_str("<h2>Overlap between methods (Jaccard)</h2>");
        overlap_chart(names, m, &mut out);
    }
    out.push_str("</body></html>\n");
    out
}

/// Writes the report to `path`, atomically.
///
/// # Errors
/// An I/O error naming the file.
pub fn write(path: &Path, r: &Report) -> Result<()> {
    let html = render(r);
    atomic_write(path, |w| {
        use std::io::Write;
        w.write_all(html.as_bytes()).at_path(path)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_section_and_escapes_names() {
        let r = Report {
            title: "t <x>".into(),
            summary: vec![("rows".into(), "10".into())],
            classes: Some(ClassCounts {
                names: vec!["a&b".into(), "c".into()],
                sizes: vec![6, 4],
                picked: vec![2, 1],
            }),
            terms: vec![TermDist {
                name: "easy",
                lo: 0.0,
                hi: 1.0,
                all: vec![1; BINS],
                selected: vec![0; BINS],
            }],
            overlap: Some((
                vec!["x".into(), "y".into()],
                vec![vec![1.0, 0.5], vec![0.5, 1.0]],
            )),
        };
        let h = render(&r);
        assert!(h.contains("<title>t &lt;x&gt;</title>"));
        assert!(h.contains("a&amp;b: 6 rows"));
        assert!(h.contains(">0.50</text>"));
        assert!(!h.contains("<script") && !h.contains("src=") && !h.contains("href="));
    }
}
