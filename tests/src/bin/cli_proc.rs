//! The operator CLI, built inside the test package (see `coordinator_proc.rs`). Same code as
//! `switchyard`.
fn main() -> std::process::ExitCode {
    switchyard_cli::main()
}
