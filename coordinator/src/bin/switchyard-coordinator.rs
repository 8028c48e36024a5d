//! `switchyard-coordinator`: the coordinator daemon.

/// The state machine and the event fan-out allocate and free small records on different
/// threads all the time; mimalloc does that faster than glibc's allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    switchyard_coordinator::daemon::main()
}
