//! The fake platform tools (`hpvm*`, `cmmodpkg`, `cmviewcl`, `virsh`) the command driver's
//! tests run; see `switchyard_tests::fake_platform`.
fn main() -> std::process::ExitCode {
    switchyard_tests::fake_platform::main()
}
