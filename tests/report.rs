//! `OUT/report.html` in headless Chromium: it loads with no console
//! messages and its screenshot is not blank. Pipeline files (`clipcov run`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::*;

/// The Chromium binary, if one is installed (`.ci/run` installs Debian's).
fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {name}"))
                .output()
                .ok()?;
            let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (out.status.success() && !p.is_empty()).then(|| PathBuf::from(p))
        })
}

/// Loads `page` headless; returns the console lines and the screenshot.
fn load(chrome: &Path, page: &Path, dir: &Path) -> (Vec<String>, Vec<u8>) {
    let profile = dir.join(format!(
        "profile-{}",
        page.file_stem().unwrap().to_string_lossy()
    ));
    let shot = dir.join(format!(
        "{}.png",
        page.file_stem().unwrap().to_string_lossy()
    ));
    let out = Command::new(chrome)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=1",
            "--window-size=1000,1400",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        shot.exists(),
        "chromium wrote no screenshot (status {:?}): {log}",
        out.status
    );
    let console = log
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect();
    (console, std::fs::read(&shot).unwrap())
}

/// Decodes an 8-bit RGB/RGBA PNG into (width, height, channels, pixels).
fn decode_png(png: &[u8]) -> (usize, usize, usize, Vec<u8>) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let (mut at, mut idat) = (8, Vec::new());
    let (mut w, mut h, mut ch) = (0, 0, 0);
    while at + 8 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        let kind = &png[at + 4..at + 8];
        let data = &png[at + 8..at + 8 + len];
        match kind {
            b"IHDR" => {
                w = u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize;
                h = u32::from_be_bytes(data[4..8].try_into().unwrap()) as usize;
                assert_eq!(data[8], 8, "bit depth");
                assert_eq!(data[12], 0, "interlaced PNG");
                ch = match data[9] {
                    2 => 3,
                    6 => 4,
                    c => panic!("PNG colour type {c}"),
                };
            }
            b"IDAT" => idat.extend_from_slice(data),
            _ => {}
        }
        at += 12 + len;
    }
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&idat[..])
        .read_to_end(&mut raw)
        .unwrap();
    let stride = w * ch;
    let mut px = vec![0u8; h * stride];
    for y in 0..h {
        let filter = raw[y * (stride + 1)];
        let line = &raw[y * (stride + 1) + 1..(y + 1) * (stride + 1)];
        for x in 0..stride {
            let a = if x >= ch { px[y * stride + x - ch] } else { 0 } as i32;
            let b = if y > 0 { px[(y - 1) * stride + x] } else { 0 } as i32;
            let c = if x >= ch && y > 0 {
                px[(y - 1) * stride + x - ch]
            } else {
                0
            } as i32;
            let pred = match filter {
                0 => 0,
                1 => a,
                2 => b,
                3 => (a + b) / 2,
                4 => {
                    let p = a + b - c;
                    let (pa, pb, pc) = ((p - a).abs(), (p - b).abs(), (p - c).abs());
                    if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        b
                    } else {
                        c
                    }
                }
                f => panic!("PNG filter {f}"),
            };
            px[y * stride + x] = (line[x] as i32 + pred) as u8;
        }
    }
    (w, h, ch, px)
}

/// Share of pixels that differ from the top-left (background) pixel, and
/// share of saturated blue pixels (the charts' selected-rows colour).
fn ink(png: &[u8]) -> (f64, f64) {
    let (w, h, ch, px) = decode_png(png);
    let bg = &px[..3];
    let (mut differ, mut blue) = (0usize, 0usize);
    for p in px.chunks_exact(ch) {
        if p[..3] != *bg {
            differ += 1;
        }
        if p[2] as i32 > p[0] as i32 + 80 && p[2] > 150 {
            blue += 1;
        }
    }
    let n = (w * h) as f64;
    (differ as f64 / n, blue as f64 / n)
}

#[test]
fn report_loads_in_headless_chromium_without_console_messages() {
    let dir = Dir::new("report");
    let data = make_data(900, 16, 5, 21);
    let (data_dir, prompts) = write_data(&dir.path, &data, 2, false);
    let out = dir.join("out");
    clipcov_ok(&[
        "compare",
        "--data",
        s(&data_dir),
        "--prompts",
        s(&prompts),
        "--fraction",
        "0.2",
        "--methods",
        "clipcov,random,clip_score",
        "--out",
        s(&out),
    ]);
    let report = out.join("report.html");
    let html = std::fs::read_to_string(&report).unwrap();
    // Self-contained: no script, no links, no fetched resources.
    for bad in ["<script", "src=", "href=", "url(", "@import"] {
        assert!(!html.contains(bad), "report.html contains {bad}");
    }
    for section in [
        "Class sizes and picks per class",
        "Terms: all rows and selected rows",
        "Overlap between methods (Jaccard)",
    ] {
        assert!(html.contains(section), "missing section {section}");
    }
    // `select` writes one too, listed in its manifest.
    let sel = dir.join("sel");
    clipcov_ok(&[
        "select",
        "--data",
        s(&data_dir),
        "--prompts",
        s(&prompts),
        "--fraction",
        "0.2",
        "--out",
        s(&sel),
    ]);
    let m = std::fs::read_to_string(sel.join("manifest.json")).unwrap();
    assert!(m.contains("\"path\": \"report.html\""), "{m}");

    let Some(chrome) = chromium() else {
        let why = "SKIPPED report_loads_in_headless_chromium: no chromium on PATH \
                   (.ci/run installs Debian's `chromium` with apt-get; it could not here)";
        eprintln!("\n{why}\n");
        println!("{why}");
        return;
    };
    let (console, png) = load(&chrome, &report, &dir.path);
    assert!(console.is_empty(), "console messages: {console:?}");
    let (differ, blue) = ink(&png);
    assert!(differ > 0.02, "screenshot is (nearly) blank: {differ}");
    assert!(blue > 0.002, "no chart bars in the screenshot: {blue}");

    // The checks can fail: a page that logs, and a blank page.
    let noisy = dir.join("noisy.html");
    std::fs::write(
        &noisy,
        "<html><body><p>x</p><script>console.error('noisy page')</script></body></html>",
    )
    .unwrap();
    let (console, _) = load(&chrome, &noisy, &dir.path);
    assert!(
        console.iter().any(|l| l.contains("noisy page")),
        "the console check does not see console.error: {console:?}"
    );
    let blank = dir.join("blank.html");
    std::fs::write(&blank, "<html><body></body></html>").unwrap();
    let (_, png) = load(&chrome, &blank, &dir.path);
    assert_eq!(ink(&png), (0.0, 0.0), "a blank page is not seen as blank");
}

#[test]
fn run_pipeline_files() {
    let dir = Dir::new("run-pipelines");
    let root = repo_root();
    // demo.toml: synthesise, select, report.
    let out = dir.join("demo");
    let said = clipcov_ok(&[
        "run",
        s(&root.join("pipelines/demo.toml")),
        "--out",
        s(&out),
    ]);
    assert!(said.contains("selected 2000 of 20000"), "{said}");
    assert!(out.join("result/clipcov/subset.parquet").exists());
    assert!(out.join("result/report.html").exists());
    // Flags after the file override it (fraction), global flags too.
    let out2 = dir.join("demo2");
    let said = clipcov_ok(&[
        "run",
        s(&root.join("pipelines/demo.toml")),
        "--out",
        s(&out2),
        "--fraction",
        "0.05",
        "--log-format",
        "json",
    ]);
    assert!(said.contains("selected 1000 of 20000"), "{said}");
    // nightly.toml (compare) on the demo data, quiet, JSON events.
    let nightly = dir.join("nightly");
    let o = clipcov(&[
        "run",
        s(&root.join("pipelines/nightly-compare.toml")),
        "--data",
        s(&out.join("dataset/data")),
        "--prompts",
        s(&out.join("dataset/prompts.parquet")),
        "--methods",
        "clipcov,random",
        "--out",
        s(&nightly),
        "--log-format",
        "json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stderr)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    assert!(events
        .iter()
        .any(|e| e["event"] == "stage_end" && e["stage"] == "ingest" && e["rows"] == 20000));
    assert!(nightly.join("compare.md").exists() && nightly.join("report.html").exists());
    // --quiet: nothing on stdout or stderr.
    let o = clipcov(&[
        "--quiet",
        "run",
        s(&root.join("pipelines/demo.toml")),
        "--out",
        s(&dir.join("demo3")),
    ]);
    assert!(o.status.success() && o.stdout.is_empty() && o.stderr.is_empty());

    // Bad files name the key and the line; exit 2.
    let bad = dir.join("bad.toml");
    let check = |text: &str, want: &str| {
        std::fs::write(&bad, text).unwrap();
        let o = clipcov(&["run", s(&bad), "--out", s(&dir.join("x"))]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(want), "{err} lacks {want}");
    };
    let data = s(&out.join("dataset/data")).to_string();
    check(
        &format!("[input]\ndata = \"{data}\"\nclusters = 2\n[select]\nfractoin = 0.1\n"),
        "bad.toml: line 5: unknown key 'fractoin' in [select]",
    );
    check(
        &format!("[input]\ndata = \"{data}\"\nclusters = 2\n[select]\nfraction = \"lots\"\n"),
        "bad.toml: line 5: key 'fraction' in [select]: invalid value 'lots'",
    );
    check(
        &format!("[input]\ndata = \"{data}\"\nclusters = 2\n\n[select]\nfraction = 7\n"),
        "bad.toml: line 6: key 'fraction' in [select])",
    );
    check("[input\ndata = 1\n", "bad.toml: line 1: not valid TOML");
}
