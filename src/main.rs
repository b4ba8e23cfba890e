//! The `clipcov` binary: everything it does is in the library, under
//! `clipcov::cli` (flags, pipeline files, the demo) and the jobs it calls.

fn main() -> std::process::ExitCode {
    clipcov::cli::main()
}
