//! `clipcov demo`: runs the embedded `pipelines/demo.toml` as a pipeline
//! file, with the user's `--out`: a synthetic dataset in `OUT/dataset`, the
//! selection in `OUT/result`.

use std::path::Path;

use super::pipeline_file::{self, PipelineFile};
use crate::progress::LogFormat;
use crate::Result;

const DEMO_TOML: &str = include_str!("../../pipelines/demo.toml");

/// Runs the demo into `out`.
pub fn run_demo(out: &Path, global: (LogFormat, bool)) -> Result<()> {
    let pf = PipelineFile::parse(DEMO_TOML, Path::new("pipelines/demo.toml"))?;
    let out = ["--out".to_string(), out.display().to_string()];
    pipeline_file::run(&pf, &out, global)
}
