//! The tests' host watchdog on a named pipe; see `switchyard_tests::watchdog`.
fn main() -> std::process::ExitCode {
    switchyard_tests::watchdog::main()
}
