//! `switchyard-coordinator`: the coordinator daemon.
fn main() -> std::process::ExitCode {
    switchyard_coordinator::daemon::main()
}
