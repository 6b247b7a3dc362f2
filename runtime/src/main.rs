//! The `certconn` binary: the command line and the benchmarks, on the library's API.

mod bench;
mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
