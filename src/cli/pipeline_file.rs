//! Pipeline files (`clipcov run pipelines/<name>.toml`): a declarative copy
//! of what the flags hold, so a scheduled job is one file under version
//! control.
//!
//! ```toml
//! command = "select"            # select (default), baseline or compare
//! method = "random"             # baseline only
//! [input]                       # --data, --layout, --model, --prompts, ...
//! [select]                      # --fraction, --budget, --tau, --methods, ...
//! [output]                      # --out, --keep-columns, --train-csv
//! [options]                     # any other flag of the command
//! [synth]                       # optional: make a synthetic dataset first
//! ```
//!
//! Every key of `[input]`, `[select]`, `[output]` and `[options]` is the
//! name of a flag of the command (`keep_columns` is `--keep-columns`);
//! arrays become comma-separated lists. The tables only group keys for the
//! reader. Relative paths in the file (`data`, `prompts`, `out`, ...) are
//! relative to the file's folder, so a file works from any current
//! directory; paths given as flags after the file are relative to the
//! current directory, as always. Flags given after the file override its
//! values. With `[synth]`
//! (the demo), the data is synthesised into `OUT/dataset` first and the
//! selection goes to `OUT/result`.

use std::path::{Path, PathBuf};

use clap::{CommandFactory, FromArgMatches};

use super::args::Cli;
use crate::error::{Error, Result};
use crate::io::remote;
use crate::progress::{self, LogFormat};
use crate::synth::{self, SynthOptions};

/// The tables whose keys are flags.
pub const FLAG_TABLES: [&str; 4] = ["input", "select", "output", "options"];

/// The keys whose values are paths: a relative one is relative to the
/// pipeline file's folder.
pub const PATH_KEYS: [&str; 7] = [
    "data",
    "prompts",
    "out",
    "work",
    "learner_data",
    "targets",
    "eval_set",
];

/// One key of the file, as a flag.
#[derive(Clone, Debug)]
pub struct FileArg {
    pub table: String,
    pub key: String,
    /// `--key-with-dashes`.
    pub flag: String,
    pub value: String,
    pub line: usize,
}

/// A parsed pipeline file.
#[derive(Clone, Debug)]
pub struct PipelineFile {
    pub path: PathBuf,
    pub command: String,
    pub method: Option<String>,
    pub args: Vec<FileArg>,
    pub synth: Option<SynthOptions>,
}

/// Line (1-based) of `key` in `[table]` (`""` for the top level).
fn line_of(text: &str, table: &str, key: &str) -> usize {
    let mut current = String::new();
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if let Some(t) = l.strip_prefix('[').and_then(|t| t.split(']').next()) {
            current = t.trim().to_string();
            continue;
        }
        if current == table {
            if let Some((k, _)) = l.split_once('=') {
                if k.trim().trim_matches('"') == key {
                    return i + 1;
                }
            }
        }
    }
    0
}

fn value_text(v: &toml::Value) -> Option<String> {
    Some(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Array(a) => a
            .iter()
            .map(value_text)
            .collect::<Option<Vec<_>>>()?
            .join(","),
        _ => return None,
    })
}

impl PipelineFile {
    /// Reads and parses `path`.
    ///
    /// # Errors
    /// A usage error naming the file, key and line for bad TOML, an unknown
    /// table or top-level key, or a value that cannot be a flag value.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parses the text of a pipeline file (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let bad = |line: usize, msg: String| {
            Error::Usage(format!("{}: line {line}: {msg}", path.display()))
        };
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e.span().map_or(0, |s| {
                text[..s.start.min(text.len())].lines().count().max(1)
            });
            bad(line, format!("not valid TOML ({})", e.message()))
        })?;
        let mut out = PipelineFile {
            path: path.to_path_buf(),
            command: "select".into(),
            method: None,
            args: Vec::new(),
            synth: None,
        };
        for (k, v) in &table {
            let line = line_of(text, "", k);
            match (k.as_str(), v) {
                ("command", toml::Value::String(s)) => {
                    if !["select", "baseline", "compare"].contains(&s.as_str()) {
                        return Err(bad(
                            line,
                            format!("command '{s}': expected select, baseline or compare"),
                        ));
                    }
                    out.command = s.clone();
                }
                ("method", toml::Value::String(s)) => out.method = Some(s.clone()),
                ("synth", toml::Value::Table(t)) => {
                    out.synth = Some(synth_options(t, text, &bad)?);
                }
                (t, toml::Value::Table(inner)) if FLAG_TABLES.contains(&t) => {
                    for (key, value) in inner {
                        let line = line_of(text, t, key);
                        let value = value_text(value).ok_or_else(|| {
                            bad(
                                line,
                                format!("key '{key}' in [{t}]: expected a string, number, boolean or array"),
                            )
                        })?;
                        let value = if PATH_KEYS.contains(&key.as_str()) {
                            beside(path, &value)
                        } else {
                            value
                        };
                        out.args.push(FileArg {
                            table: t.to_string(),
                            key: key.clone(),
                            flag: format!("--{}", key.replace('_', "-")),
                            value,
                            line,
                        });
                    }
                }
                (k, toml::Value::Table(_)) => {
                    return Err(bad(
                        line_of(text, k, "").max(table_line(text, k)),
                        format!(
                            "unknown table [{k}]; expected [input], [select], [output], [options] or [synth]"
                        ),
                    ))
                }
                (k, _) => {
                    return Err(bad(
                        line,
                        format!("unknown key '{k}' (top-level keys are command and method)"),
                    ))
                }
            }
        }
        if out.command == "baseline" && out.method.is_none() {
            return Err(bad(
                0,
                "command = \"baseline\" needs method = \"<name>\"".into(),
            ));
        }
        Ok(out)
    }

    /// The file argument that sets `flag`, if any.
    pub fn arg(&self, flag: &str) -> Option<&FileArg> {
        self.args.iter().rev().find(|a| a.flag == flag)
    }

    /// `command [method] --flag value ...` for the file's keys.
    pub fn argv(&self) -> Vec<String> {
        let mut v = vec![self.command.clone()];
        if let Some(m) = &self.method {
            v.push(m.clone());
        }
        for a in &self.args {
            v.push(a.flag.clone());
            v.push(a.value.clone());
        }
        v
    }

    /// Where an error about `flag` comes from in the file, as text.
    pub fn locate(&self, flag: &str) -> Option<String> {
        self.arg(flag).map(|a| {
            format!(
                "{}: line {}: key '{}' in [{}]",
                self.path.display(),
                a.line,
                a.key,
                a.table
            )
        })
    }
}

/// `value` relative to the folder of the pipeline file `file`, unless it
/// is absolute or a URL.
fn beside(file: &Path, value: &str) -> String {
    let p = Path::new(value);
    if p.is_absolute() || crate::io::remote::is_url(p) {
        return value.to_string();
    }
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(p).display().to_string(),
        _ => value.to_string(),
    }
}

fn table_line(text: &str, table: &str) -> usize {
    text.lines()
        .position(|l| l.trim().starts_with(&format!("[{table}]")))
        .map_or(0, |i| i + 1)
}

fn synth_options(
    t: &toml::Table,
    text: &str,
    bad: &dyn Fn(usize, String) -> Error,
) -> Result<SynthOptions> {
    let mut o = SynthOptions::default();
    for (k, v) in t {
        let line = line_of(text, "synth", k);
        let int = || {
            v.as_integer().filter(|&i| i >= 0).ok_or_else(|| {
                bad(
                    line,
                    format!("key '{k}' in [synth]: expected a whole number"),
                )
            })
        };
        let float = || {
            v.as_float()
                .or_else(|| v.as_integer().map(|i| i as f64))
                .ok_or_else(|| bad(line, format!("key '{k}' in [synth]: expected a number")))
        };
        match k.as_str() {
            "rows" => o.rows = int()? as u64,
            "classes" => o.classes = int()? as usize,
            "dim" => o.dim = int()? as usize,
            "shards" => o.shards = int()? as usize,
            "seed" => o.seed = int()? as u64,
            "f16" => {
                o.f16 = v
                    .as_bool()
                    .ok_or_else(|| bad(line, "key 'f16' in [synth]: expected true or false".into()))?
            }
            "zipf" => o.zipf = float()?,
            "noise" => o.noise = float()?,
            "mismatch_rate" => o.mismatch_rate = float()?,
            "duplicate_rate" => o.duplicate_rate = float()?,
            "junk_rate" => o.junk_rate = float()?,
            "eval_rows" => o.eval_rows = int()? as u64,
            "images" => {
                o.images = v.as_bool().ok_or_else(|| {
                    bad(line, "key 'images' in [synth]: expected true or false".into())
                })?
            }
            _ => {
                return Err(bad(
                    line,
                    format!("unknown key '{k}' in [synth]; expected rows, classes, dim, shards, f16, seed, zipf, noise, mismatch_rate, duplicate_rate, junk_rate, eval_rows, images"),
                ))
            }
        }
    }
    Ok(o)
}

/// The clap command with later flags overriding earlier ones (file values
/// first, then the user's flags).
fn overriding_command(sub: &str) -> clap::Command {
    Cli::command().mut_subcommand(sub, |c| c.args_override_self(true))
}

/// The first line of a clap error, without its `error: ` prefix.
fn clap_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let line = text.lines().next().unwrap_or_default();
    line.trim_start_matches("error: ").to_string()
}

/// The value of the last `--flag V` or `--flag=V` in `args`.
fn last_flag(args: &[String], flag: &str) -> Option<String> {
    let mut found = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == flag {
            found = it.next().cloned();
        } else if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
            found = Some(v.to_string());
        }
    }
    found
}

/// Runs the command of a pipeline file, with `overrides` (flags given after
/// the file) and the global flags given before it.
pub fn run(
    pf: &PipelineFile,
    overrides: &[String],
    (log_format, quiet): (LogFormat, bool),
) -> Result<()> {
    let cli_cmd = Cli::command();
    let sub = cli_cmd
        .find_subcommand(&pf.command)
        .ok_or_else(|| Error::Internal(format!("no subcommand {}", pf.command)))?;
    for a in &pf.args {
        if !sub
            .get_arguments()
            .any(|x| x.get_long() == Some(&a.flag[2..]))
        {
            return Err(Error::Usage(format!(
                "{}: line {}: unknown key '{}' in [{}]: `clipcov {}` has no {} flag",
                pf.path.display(),
                a.line,
                a.key,
                a.table,
                pf.command,
                a.flag
            )));
        }
    }
    // A missing input the file names is reported with its key and line.
    for a in &pf.args {
        let input = ["data", "prompts", "learner_data", "targets", "eval_set"];
        let p = std::path::Path::new(&a.value);
        if input.contains(&a.key.as_str())
            && last_flag(overrides, &a.flag).is_none()
            && !remote::is_url(p)
        {
            if let Err(e) = std::fs::metadata(p) {
                let at = pf.locate(&a.flag).unwrap_or_default();
                return Err(Error::io(
                    format!("{at} (relative to the file's folder): {}", p.display()),
                    e,
                ));
            }
        }
    }
    let mut argv: Vec<String> = vec!["clipcov".into()];
    argv.extend(pf.argv());
    // A wrong value in the file is reported with its key and line.
    if let Err(e) = overriding_command(&pf.command).try_get_matches_from(&argv) {
        use clap::error::{ContextKind, ContextValue, ErrorKind};
        if matches!(
            e.kind(),
            ErrorKind::InvalidValue | ErrorKind::ValueValidation
        ) {
            if let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) {
                let flag = arg.split_whitespace().next().unwrap_or_default();
                if let Some(at) = pf.locate(flag) {
                    let msg = clap_line(&e);
                    return Err(Error::Usage(format!("{at}: {msg}")));
                }
            }
        }
    }
    // Global flags given before the file still apply.
    if log_format == LogFormat::Json {
        argv.extend(["--log-format".into(), "json".into()]);
    }
    if quiet {
        argv.push("--quiet".into());
    }
    let mut tail: Vec<String> = overrides.to_vec();
    if let Some(opts) = &pf.synth {
        // The demo form: synthesise into OUT/dataset, select into OUT/result.
        let out = last_flag(overrides, "--out")
            .or_else(|| pf.arg("--out").map(|a| a.value.clone()))
            .unwrap_or_else(|| "clipcov-demo".into());
        let out = PathBuf::from(out);
        let data_dir = out.join("dataset");
        if !progress::quiet() {
            println!(
                "making a synthetic dataset: {} pairs, {} classes, d = {} -> {}",
                opts.rows,
                opts.classes,
                opts.dim,
                data_dir.display()
            );
        }
        let made = synth::synth(opts, &data_dir)?;
        if pf.arg("--data").is_none() {
            argv.extend(["--data".into(), data_dir.join("data").display().to_string()]);
        }
        if pf.arg("--prompts").is_none()
            && pf.arg("--clusters").is_none()
            && pf.command != "baseline"
        {
            argv.extend(["--prompts".into(), made.prompts.display().to_string()]);
        }
        // Synthetic image paths are relative to the dataset folder.
        let train_csv =
            pf.arg("--train-csv").is_some() || last_flag(overrides, "--train-csv").is_some();
        if opts.images && train_csv && pf.arg("--image-root").is_none() {
            argv.extend(["--image-root".into(), data_dir.display().to_string()]);
        }
        tail.extend(["--out".into(), out.join("result").display().to_string()]);
    }
    argv.extend(tail);
    let matches = overriding_command(&pf.command)
        .try_get_matches_from(&argv)
        .map_err(|e| Error::Usage(clap_line(&e)))?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| Error::Usage(e.to_string()))?;
    super::run(cli).map_err(|e| match e {
        // Name the file's key when a checked value came from it.
        Error::Usage(msg) => {
            let from_file = pf.args.iter().find(|a| {
                msg.contains(&format!("{} ", a.flag)) || msg.contains(&format!("{}'", a.flag))
            });
            match from_file {
                Some(a) if last_flag(overrides, &a.flag).is_none() => Error::Usage(format!(
                    "{msg} ({})",
                    pf.locate(&a.flag).unwrap_or_default()
                )),
                _ => Error::Usage(msg),
            }
        }
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_flags_with_lines() {
        let text = "command = \"compare\"\n[input]\ndata = \"d\"\n\n[select]\nfraction = 0.1\nmethods = [\"clipcov\", \"random\"]\n[output]\nkeep_columns = [\"url\", \"text\"]\n";
        let f = PipelineFile::parse(text, Path::new("p.toml")).unwrap();
        assert_eq!(
            f.argv(),
            [
                "compare",
                "--data",
                "d",
                "--keep-columns",
                "url,text",
                "--fraction",
                "0.1",
                "--methods",
                "clipcov,random",
            ]
        );
        assert_eq!(f.arg("--fraction").unwrap().line, 6);
        let g = PipelineFile::parse(text, Path::new("jobs/p.toml")).unwrap();
        assert_eq!(g.arg("--data").unwrap().value, "jobs/d");
        let h = PipelineFile::parse(
            "[input]\ndata = \"/x\"\nprompts = \"s3://b/p\"\n",
            Path::new("jobs/p.toml"),
        )
        .unwrap();
        assert_eq!(h.arg("--data").unwrap().value, "/x");
        assert_eq!(h.arg("--prompts").unwrap().value, "s3://b/p");
        assert_eq!(
            f.locate("--keep-columns").unwrap(),
            "p.toml: line 9: key 'keep_columns' in [output]"
        );
    }

    #[test]
    fn bad_files_name_key_and_line() {
        let e = |t: &str| {
            PipelineFile::parse(t, Path::new("p.toml"))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            e("[input]\ndata = \"x\"\n[selct]\nfraction = 1\n"),
            "p.toml: line 3: unknown table [selct]; expected [input], [select], [output], [options] or [synth]"
        );
        assert!(e("[input]\ndata = \"x\n").starts_with("p.toml: line 2: not valid TOML"));
        assert!(
            e("[synth]\nrows = \"many\"\n").starts_with("p.toml: line 2: key 'rows' in [synth]")
        );
        assert!(
            e("[input]\ndata = { a = 1 }\n").starts_with("p.toml: line 2: key 'data' in [input]")
        );
        assert!(e("comand = \"select\"\n").starts_with("p.toml: line 1: unknown key 'comand'"));
    }
}
