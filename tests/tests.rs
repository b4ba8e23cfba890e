//! All integration tests, compiled into one binary (one link step).
//!
//! They run the real `clipcov` binary on data they write themselves and
//! check its outputs against independent, brute-force computations.

mod util;

// The layers of the library: imports point down, no circles.
mod layers;

// The ClipCov pipeline against a literal float64 implementation of the spec.
mod parity;
// --cross-sample: the sampled cross term against its estimator in float64.
mod cross_sample;
// bench --cross-sample: sampled runs next to the exact ones.
mod bench;
// Bad input: exit status, one-line message, nothing left behind.
mod bad_input;
// Same input, same bytes; the demo and synth commands.
mod runs;
// The store ingest writes: class chunks in bucket order, rows, ids, threads.
mod ingest_store;
mod schemas;
// Kill -9 and resume; reuse and invalidation of stages.
mod crash;
// Nightly runs: appended shards, incremental score, same subset as a full run.
mod incremental;
// The baselines against brute force; compare end to end.
mod baselines;
// --rule datacomp and --centroids against DataComp's rules, computed here.
mod datacomp_rule;
// eval: covariance against brute force, the proxy, eval and compare --eval-set.
mod eval;
// Issue 17: class-local synth, clean coverage, bootstrap, compare --fractions.
mod coverage;
// The layouts of other tools in, DataComp subset files out.
mod ecosystem;
// report.html in headless Chromium; pipeline files.
mod report;
// s3:// inputs and outputs against a real S3 server on loopback (s3s-fs).
mod remote;
// --where: the metadata prefilter against runs on pre-filtered data.
mod prefilter;
// The repository stands alone: no ../shared links, docs links resolve.
mod docs;
// Outputs outside inputs, outputs published as a set, empty selections.
mod safety;
// http:// inputs against a local Python web server.
mod http;
// --train-csv: train.csv read back as CyCLIP's and OpenCLIP's loaders do.
mod train_csv;
