//! The coordinator daemon, built inside the test package so process-level tests can start it
//! (`CARGO_BIN_EXE_*` only names binaries of the test's own package). Same code as
//! `switchyard-coordinator`.
fn main() -> std::process::ExitCode {
    switchyard_coordinator::daemon::main()
}
