//! # switchyard-testkit
//!
//! Clusters of real Switchyard processes on loopback, everything in one folder: coordinator and
//! agent processes with their configs, data directories and one log each. One kit for three
//! users: `switchyard dev` (a persistent folder a newcomer can come back to), the multi-process
//! tests (a temporary folder, processes killed and restarted at will) and the benchmark.
//!
//! - [`proc`]: one child process with its own log (kill, graceful stop, freeze);
//! - [`cluster`]: [`Cluster`], its coordinators and agents, their configs written through the
//!   daemons' own configuration types and serde, requests sent through the typed client;
//! - [`local`]: the persistent dev folder (secrets, ports, `cli.toml` for the CLI).
//!
//! Every wait polls a condition until a deadline ([`eventually`], [`wait_for`]); nothing sleeps
//! for a fixed time and hopes.

pub mod cluster;
pub mod local;
pub mod proc;
pub mod rng;

use std::time::{Duration, Instant};

pub use cluster::{
    kill_vms_in, AgentProc, Binaries, Cluster, Hypervisor, NodeProc, Secrets, Settings, MIGRATION_PORTS,
};

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout` (for tests).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    match wait_for(what, timeout, f).await {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

/// Polls `f` until it returns `Some`, or fails naming `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
