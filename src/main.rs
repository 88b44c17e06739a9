fn main() -> std::process::ExitCode {
    starkscale::cli::main()
}
