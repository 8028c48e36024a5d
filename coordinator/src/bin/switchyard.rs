//! `switchyard`: the operator CLI.
fn main() -> std::process::ExitCode {
    switchyard_coordinator::cli::main()
}
