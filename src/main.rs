fn main() -> std::process::ExitCode {
    wsgate::cli::main()
}
