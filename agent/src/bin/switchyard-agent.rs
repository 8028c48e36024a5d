//! `switchyard-agent`: the VM-host agent daemon.
fn main() -> std::process::ExitCode {
    switchyard_agent::daemon::main()
}
