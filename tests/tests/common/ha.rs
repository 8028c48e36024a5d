//! Host failures under test: a QEMU cluster whose hosts can carry a watchdog (the tests' helper
//! on a named pipe) and reach the coordinators through proxies the test can cut, plus ways to
//! crash, hang and cut off a host, and a reading of the failover history.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use switchyard_agent::watchdog::WatchdogConfig;
use switchyard_protocol::{Event, EventPayload};
use switchyard_tests::proxy::Proxy;

use super::cluster::*;
use super::saga::history;
use super::vms::*;

/// One VM host: its agent, and its watchdog and proxies when it has them.
pub struct HaHost {
    pub name: String,
    pub agent: AgentProc,
    pub watchdog: Option<WatchdogProc>,
    /// One per coordinator, in id order, when the host reaches them through proxies.
    pub proxies: Vec<Proxy>,
}

impl HaHost {
    /// Cuts the host off from every coordinator; its agent and guests keep running.
    pub fn cut(&self) {
        assert!(!self.proxies.is_empty(), "host {} has no proxies", self.name);
        self.proxies.iter().for_each(Proxy::cut);
    }

    pub fn heal(&self) {
        self.proxies.iter().for_each(Proxy::heal);
    }
}

/// The tests' watchdog helper for one host.
pub struct WatchdogProc {
    child: Option<Child>,
    pub device: PathBuf,
    pub log: PathBuf,
    guests: PathBuf,
}

pub const WATCHDOG_TIMEOUT_MS: u64 = 1000;

impl WatchdogProc {
    pub fn start(cluster: &TestCluster, host: &str) -> WatchdogProc {
        let dir = cluster.dir().join(format!("agent-{host}"));
        std::fs::create_dir_all(&dir).expect("the agent's folder");
        let mut w = WatchdogProc {
            child: None,
            device: dir.join("watchdog"),
            log: dir.join("watchdog.log"),
            guests: cluster.qemu_dir(host),
        };
        w.restart();
        w
    }

    pub fn restart(&mut self) {
        let _ = std::fs::remove_file(&self.log);
        let child = Command::new(env!("CARGO_BIN_EXE_watchdog_helper"))
            .args(["--device", &self.device.display().to_string()])
            .args(["--timeout-ms", &WATCHDOG_TIMEOUT_MS.to_string()])
            .args(["--guests", &self.guests.display().to_string()])
            .args(["--log", &self.log.display().to_string()])
            .stdin(Stdio::null())
            .spawn()
            .expect("start the watchdog helper");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !self.lines().iter().any(|l| l.ends_with(" ready")) {
            assert!(std::time::Instant::now() < deadline, "the watchdog helper never became ready");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn config(&self) -> WatchdogConfig {
        WatchdogConfig { device: self.device.clone(), timeout_ms: WATCHDOG_TIMEOUT_MS }
    }

    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log).unwrap_or_default().lines().map(String::from).collect()
    }

    /// When it first fired (ms since the Unix epoch) and how many guests it killed.
    pub fn fired(&self) -> Option<(u64, usize)> {
        self.lines().iter().find_map(|l| {
            let (at, what) = l.split_once(' ')?;
            let killed = what.strip_prefix("fired killed=")?;
            Some((at.parse().ok()?, killed.parse().ok()?))
        })
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for WatchdogProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three coordinators (default `ha` settings: lease 4 s, fence margin 1 s, grace 1 s), hosts
/// h1..h3 on QEMU, each with a watchdog when `watchdog`, each behind proxies when `proxied`.
/// Returns once every host joined failure detection.
pub async fn ha_cluster(watchdog: bool, proxied: bool) -> (TestCluster, Vec<HaHost>) {
    ha_cluster_with(watchdog, proxied, ClusterOpts::default()).await
}

/// [`ha_cluster`] with other cluster options (the hypervisor is always QEMU).
pub async fn ha_cluster_with(watchdog: bool, proxied: bool, opts: ClusterOpts) -> (TestCluster, Vec<HaHost>) {
    let cluster = TestCluster::start(3, ClusterOpts { hypervisor: Hypervisor::Qemu, ..opts }).await;
    register_loopback_hosts(&cluster).await;
    let mut hosts = Vec::new();
    for (i, h) in HOSTS.iter().enumerate() {
        let w = watchdog.then(|| WatchdogProc::start(&cluster, h));
        let mut proxies = Vec::new();
        let endpoints = if proxied {
            for id in [1, 2, 3] {
                proxies.push(Proxy::start(cluster.node(id).api_addr.clone()).await);
            }
            proxies.iter().map(|p| p.addr.to_string()).collect()
        } else {
            [1, 2, 3].iter().map(|id| cluster.node(*id).api_addr.clone()).collect()
        };
        let token = agent_token(i as u32 + 1);
        let mut agent = AgentProc::configure_with(&cluster, h, &token, endpoints, w.as_ref().map(WatchdogProc::config))
            .expect("configure an agent");
        agent.proc.start().expect("start an agent");
        hosts.push(HaHost { name: h.to_string(), agent, watchdog: w, proxies });
    }
    let admin = cluster.client(&[1, 2, 3]);
    eventually("every host to join failure detection", Duration::from_secs(60), || async {
        let events = history(&admin).await;
        let joined = events.iter().filter(|e| matches!(e.payload, EventPayload::HostJoined { .. })).count();
        (joined == HOSTS.len()).then_some(())
    })
    .await;
    (cluster, hosts)
}

/// A host crash: its agent, its watchdog and its guests' QEMU processes SIGKILLed at once.
/// Answers the time of the crash (ms since the Unix epoch).
pub fn crash(cluster: &TestCluster, host: &mut HaHost) -> u64 {
    let at = now_ms();
    host.agent.kill();
    if let Some(w) = host.watchdog.as_mut() {
        w.kill();
    }
    cluster.kill_host_vms(&host.name);
    at
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The first event after revision `after` that `f` picks.
pub fn first(events: &[Event], after: u64, f: impl Fn(&EventPayload) -> bool) -> Option<&Event> {
    events.iter().find(|e| e.revision > after && f(&e.payload))
}

/// The failover bound the issue sets: no protected guest stays down while an eligible host is
/// alive for longer than lease + grace + start time. Checks it on the history for every guest
/// failed over from `host` after revision `after`: the failure is declared within lease +
/// grace (+ `slack` for a loaded machine) of `lost_at`, and every failover of the host's guests
/// completes within `start` of it.
pub fn check_failover_bound(events: &[Event], after: u64, host: &str, lost_at: u64, start: u64, slack: u64) {
    let failed = first(events, after, |p| matches!(p, EventPayload::HostFailed { host: h, .. } if h.as_str() == host))
        .unwrap_or_else(|| panic!("host {host} was never declared failed"));
    let detect = failed.time.0.saturating_sub(lost_at);
    assert!(detect <= 4000 + 1000 + slack, "host {host} declared failed {detect} ms after it was lost");
    for e in events.iter().filter(|e| e.revision > failed.revision) {
        if let EventPayload::FailoverCompleted { guest, host: on } = &e.payload {
            let took = e.time.0.saturating_sub(failed.time.0);
            assert!(took <= start + slack, "{guest} ran again on {on} {took} ms after {host} was declared failed");
        }
    }
}
