//! The `callguard` binary: all of it lives in the library; see `cli`.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used)]

fn main() -> std::process::ExitCode {
    callguard::cli::main()
}
