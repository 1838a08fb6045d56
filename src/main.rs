fn main() -> std::process::ExitCode {
    maxions::cli::main()
}
