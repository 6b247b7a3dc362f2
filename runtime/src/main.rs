fn main() -> std::process::ExitCode {
    certconn::cli::main()
}
