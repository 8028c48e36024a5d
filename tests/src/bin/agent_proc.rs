//! The agent daemon, built inside the test package (see `coordinator_proc.rs`). Same code as
//! `switchyard-agent`.
fn main() -> std::process::ExitCode {
    switchyard_agent::daemon::main()
}
