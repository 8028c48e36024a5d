//! The two systems under test, behind one set of operations the load generator drives:
//! Switchyard (its operator API: a guest config change is `PATCH /v1/guests/{g}`, a subscriber
//! is `GET /v1/events?follow=true`) and etcd through its native gRPC API, as etcd's own clients
//! speak it (the `etcd-client` crate: a config change is a put of a guest-sized value, a
//! subscriber is a watch on its own connection). Both are real 3-member clusters of processes on
//! loopback, with durable commits, started and killed by the harness.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::json;
use switchyard_coordinator::config::{ApiConfig, HistoryConfig, RaftConfig};
use switchyard_protocol::api::{NodeStatus, RegisterHostRequest, WriteResponse};
use switchyard_protocol::Name;
use switchyard_testkit::cluster::free_port;
use switchyard_testkit::proc::die_with_parent;
use switchyard_testkit::{local, Cluster, Settings};

/// Raft timing both systems run with (stated in the report).
///
/// "Comparable election timeouts" means: when the leader dies, the first follower to campaign
/// does so, on average, as long after the last heartbeat in both systems. The two timers differ
/// in shape, so the harness matches that mean rather than the settings' names:
/// - etcd counts whole ticks of one heartbeat and rounds `--election-timeout` down to T ticks. A
///   follower campaigns when a random k in [T, 2T) ticks have passed since it heard the leader,
///   and the first of them is a partial tick: [T - 1, 2T - 1) heartbeats after it, a window
///   [a, a + w) with a = (T - 1) h and w = T h.
/// - openraft 0.9 first lets the leader's lease run out (`election_timeout_max`) and then waits
///   a random election timeout in [min, max): a window [max + min, 2 max).
///
/// Three members leave two followers, and the earlier of two uniform draws from [a, a + w)
/// comes a + w / 3 after the heartbeat on average. With min = max / 2 Switchyard's comes 5 max / 3
/// after it, so max = (3a + w) / 5. For the default 50 ms heartbeat and `--election-timeout 400`
/// (8 ticks): etcd campaigns 350..750 ms after the last heartbeat, Switchyard 435..580 ms
/// (`election_timeout_ms` 145..290, next to its default 150..300), both 483 ms on average for
/// the earlier follower. Switchyard checks its timer every heartbeat / 5, which adds 5 ms on
/// average on its side; not compensated.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub heartbeat_ms: u64,
    /// etcd's `--election-timeout`.
    pub election_ms: u64,
}

impl Timing {
    /// etcd's election timeout in whole heartbeat ticks (as etcd rounds it).
    pub fn etcd_ticks(&self) -> u64 {
        (self.election_ms / self.heartbeat_ms.max(1)).max(1)
    }

    /// When an etcd follower campaigns after the last heartbeat: [from, to) ms.
    pub fn etcd_window(&self) -> (u64, u64) {
        let (t, h) = (self.etcd_ticks(), self.heartbeat_ms);
        ((t - 1) * h, (2 * t - 1) * h)
    }

    /// Switchyard's `election_timeout_ms_min/max` for the same mean first campaign.
    pub fn switchyard_election(&self) -> (u64, u64) {
        let (a, end) = self.etcd_window();
        let max = (3 * a + (end - a)) / 5;
        (max / 2, max)
    }

    /// When a Switchyard follower campaigns after the last heartbeat: [from, to) ms.
    pub fn switchyard_window(&self) -> (u64, u64) {
        let (min, max) = self.switchyard_election();
        (max + min, 2 * max)
    }

    /// The mean delay after the last heartbeat before the first of two followers campaigns.
    pub fn mean_first_campaign_ms(window: (u64, u64)) -> f64 {
        window.0 as f64 + (window.1 - window.0) as f64 / 3.0
    }
}

/// A guest's configuration, as etcd users would store it (the same size as Switchyard's record).
pub fn guest_value(key: usize, seq: u64) -> String {
    json!({"name": format!("g{key}"), "owner": "load", "vcpus": 1 + seq % 8, "memory_mib": 256,
           "disks": [format!("avio_stor:/dev/vg01/g{key}")], "networks": ["avio_lan:vswitch0"],
           "online_migration": true, "cluster_node": false, "package": null, "run_state": "running"})
    .to_string()
}

pub enum Sut {
    Switchyard(Box<Switchyard>),
    Etcd(Etcd),
}

/// What a subscriber saw: revisions with their arrival times.
pub type Arrivals = Vec<(u64, Instant)>;

impl Sut {
    pub fn name(&self) -> &'static str {
        match self {
            Sut::Switchyard(_) => "switchyard",
            Sut::Etcd(_) => "etcd",
        }
    }

    /// One config change of key `key`; answers the revision it committed at.
    pub async fn put(&self, http: &reqwest::Client, endpoint: &str, key: usize, seq: u64) -> anyhow::Result<u64> {
        match self {
            Sut::Switchyard(s) => s.put(http, endpoint, key, seq).await,
            Sut::Etcd(e) => e.put(endpoint, key, seq).await,
        }
    }

    /// A read of key `key` from `endpoint`'s own copy, without Raft (Switchyard `?stale=true`,
    /// etcd serializable): a request's round trip through the client and the server alone.
    pub async fn local_read(&self, http: &reqwest::Client, endpoint: &str, key: usize) -> anyhow::Result<()> {
        match self {
            Sut::Switchyard(s) => s.local_read(http, endpoint, key).await,
            Sut::Etcd(e) => e.local_read(endpoint, key).await,
        }
    }

    /// An HTTP client from `builder` that speaks to this system (TLS to a Switchyard cluster
    /// that runs it).
    pub fn client(&self, builder: reqwest::ClientBuilder) -> reqwest::Client {
        match self {
            Sut::Switchyard(s) => s.client(builder),
            Sut::Etcd(_) => builder.build().expect("an HTTP client builds"),
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        match self {
            Sut::Switchyard(s) => s.cluster.endpoints(),
            Sut::Etcd(e) => e.members.iter().map(|m| m.client.clone()).collect(),
        }
    }

    /// The leader's member number (1-based) and client endpoint.
    pub async fn leader(&self) -> anyhow::Result<(u64, String)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = match self {
                Sut::Switchyard(s) => s.leader().await,
                Sut::Etcd(e) => e.leader().await,
            };
            if let Some(l) = found {
                return Ok(l);
            }
            if Instant::now() > deadline {
                bail!("{}: no leader within 30 s", self.name());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Member `member`'s current Raft term (`None` when it does not answer). A candidate's term
    /// goes up as it starts to campaign.
    pub async fn term(&self, http: &reqwest::Client, member: u64) -> Option<u64> {
        let ep = self.endpoints().get((member - 1) as usize)?.clone();
        match self {
            Sut::Switchyard(s) => s.status(http, &ep).await.map(|st| st.term),
            Sut::Etcd(e) => e.status(&ep).await.ok().map(|st| st.raft_term()),
        }
    }

    pub fn kill(&mut self, member: u64) {
        match self {
            Sut::Switchyard(s) => s.cluster.kill(member),
            Sut::Etcd(e) => e.kill(member),
        }
    }

    /// Sends SIGTERM to member `member` (a graceful stop) and returns at once.
    pub fn signal_terminate(&self, member: u64) {
        if let Some(pid) = self.pid(member) {
            // SAFETY: kill(2) on a child process this harness started.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }

    /// Waits up to `timeout` for member `member` to exit after [`Sut::signal_terminate`]; then
    /// reaps it (SIGKILL if it still ran). Answers whether it exited on its own.
    pub fn reap_stopped(&mut self, member: u64, timeout: Duration) -> bool {
        let exited = match self {
            Sut::Switchyard(s) => {
                let n = s.cluster.nodes.iter_mut().find(|n| n.id == member).expect("a member");
                n.proc.wait_exit(timeout).is_some()
            }
            Sut::Etcd(e) => {
                let deadline = Instant::now() + timeout;
                let m = &mut e.members[(member - 1) as usize];
                loop {
                    match m.child.as_mut().map(|c| c.try_wait()) {
                        Some(Ok(Some(_))) | None => break true,
                        _ if Instant::now() >= deadline => break false,
                        _ => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            }
        };
        self.kill(member);
        exited
    }

    /// Switchyard's agents run (`true`) or are stopped; etcd has none. In production the agents
    /// run on the VM hosts; here they would share the coordinators' two cores and disk, so
    /// they are stopped while the coordinators alone are measured (commits, fan-out) and run for
    /// the parts that involve them (migrations, the bulk write they apply).
    pub fn set_agents(&mut self, running: bool) -> anyhow::Result<()> {
        if let Sut::Switchyard(s) = self {
            if running {
                s.cluster.start_agents()?;
            } else {
                s.cluster.stop_agents();
            }
        }
        Ok(())
    }

    pub fn restart(&mut self, member: u64) -> anyhow::Result<()> {
        match self {
            Sut::Switchyard(s) => s.cluster.start_node(member),
            Sut::Etcd(e) => e.start(member),
        }
    }

    pub fn pid(&self, member: u64) -> Option<u32> {
        match self {
            Sut::Switchyard(s) => s.cluster.node(member).proc.pid(),
            Sut::Etcd(e) => e.members[(member - 1) as usize].child.as_ref().map(|c| c.id()),
        }
    }

    /// The latest committed revision, read from the leader.
    pub async fn revision(&self, http: &reqwest::Client) -> anyhow::Result<u64> {
        let (_, ep) = self.leader().await?;
        match self {
            Sut::Switchyard(s) => Ok(s.status(http, &ep).await.context("leader status")?.revision),
            Sut::Etcd(e) => e.revision(&ep).await,
        }
    }

    /// Waits until every member answers and has applied `revision`.
    pub async fn wait_all_at(&self, http: &reqwest::Client, revision: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        for ep in self.endpoints() {
            loop {
                let at = match self {
                    Sut::Switchyard(s) => s.status(http, &ep).await.map(|st| st.revision),
                    Sut::Etcd(e) => e.revision(&ep).await.ok(),
                };
                if at.is_some_and(|r| r >= revision) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{}: {ep} did not reach revision {revision} within 120 s", self.name());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// What a subscriber of this system needs, apart from the system: each subscriber of the
    /// fan-out runs as a task of its own, as separate clients would.
    pub fn subscriber(&self) -> Subscriber {
        match self {
            Sut::Switchyard(s) => Subscriber::Switchyard { scheme: s.scheme, token: s.token.clone() },
            Sut::Etcd(_) => Subscriber::Etcd,
        }
    }
}

/// A subscriber of either system (see [`Sut::subscriber`]).
#[derive(Clone)]
pub enum Subscriber {
    Switchyard { scheme: &'static str, token: String },
    Etcd,
}

impl Subscriber {
    /// Subscribes from revision `from` through `endpoint`; calls `ready` once the subscription is
    /// established, records every event revision with its arrival time until `until` is seen,
    /// and answers what it saw.
    pub async fn subscribe(
        self,
        http: reqwest::Client,
        endpoint: String,
        from: u64,
        until: Arc<std::sync::atomic::AtomicU64>,
        ready: tokio::sync::mpsc::Sender<()>,
    ) -> anyhow::Result<Arrivals> {
        match self {
            Subscriber::Switchyard { scheme, token } => {
                let url = endpoint_url(scheme, &endpoint, &format!("/v1/events?from={from}&follow=true&kind=guest"));
                Switchyard::subscribe(&http, &url, &token, until, ready).await
            }
            Subscriber::Etcd => Etcd::subscribe(&endpoint, from, until, ready).await,
        }
    }
}

/// Reads a streamed body line by line, calling `line` until it answers false.
async fn lines(mut resp: reqwest::Response, mut line: impl FnMut(&[u8]) -> bool) -> anyhow::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        buf.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|b| *b == b'\n') {
            let keep_going = line(&buf[start..start + pos]);
            start += pos + 1;
            if !keep_going {
                return Ok(());
            }
        }
        buf.drain(..start);
    }
    Ok(())
}

// ---- Switchyard ----

/// The URL of `path` on the coordinator at `ep`, reached over `scheme`.
fn endpoint_url(scheme: &str, ep: &str, path: &str) -> String {
    format!("{scheme}://{ep}{path}")
}

pub struct Switchyard {
    pub cluster: Cluster,
    token: String,
    /// `https` when the cluster runs TLS (`--tls`), else `http`.
    pub scheme: &'static str,
}

/// How [`Switchyard::restored`] brings an export's history into a new cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RestoreBy {
    /// One `log seed` for the three members' directories (they share this machine: one read
    /// of the export, table files hard-linked), start, then `log restore` commits the identity.
    Seed,
    /// A `log seed` per member, all at once, as on three machines (here they share the cores),
    /// start, then `log restore`.
    SeedEach,
    /// `cluster init --for-restore`, then `log restore` pushes every event through Raft.
    Import,
}

/// How long a restore took.
pub struct Restored {
    /// From the first command to the new identity committed.
    pub took: Duration,
    /// The members' seeds, all at once (the `Seed` way).
    pub seed: Option<Duration>,
}

impl Switchyard {
    /// Three coordinators and three agents (simulated hypervisor) in `dir`, configured by
    /// [`settings`], with the host `load` the write load's guests live on.
    pub async fn start(
        dir: &Path,
        timing: Timing,
        batch_max: usize,
        transfer_ms: u64,
        no_handover: bool,
        tls: bool,
        agent_jump_after: u64,
    ) -> anyhow::Result<Switchyard> {
        let mut settings = settings(timing, batch_max, transfer_ms);
        if no_handover {
            settings.raft.handover_timeout_ms = 0;
        }
        settings.tls = tls;
        settings.jump_after_revisions = agent_jump_after;
        let mut cluster = local::open(dir, 0, settings)?;
        local::start(&mut cluster).await?;
        cluster.start_agents()?;
        let token = cluster.secrets.admin_token.clone();
        let scheme = if tls { "https" } else { "http" };
        let s = Switchyard { cluster, token, scheme };
        // The host the load's guests live on.
        let host = RegisterHostRequest {
            name: Name::new("load").expect("a valid name"),
            address: "load:7100".into(),
            vcpus: 65536,
            memory_mib: 1 << 30,
            hardware_family: "ia64".into(),
            hypervisor_version: "hpvm-6.1".into(),
            request_id: None,
            labels: Default::default(),
        };
        s.cluster.register_hosts(&[host]).await.context("register the load host")?;
        Ok(s)
    }

    /// Three coordinators (no agents) in `dir` holding the history of `export`, restored by the
    /// real CLI (child processes) the way `how` says; answers the cluster and how long the
    /// restore took, from the first command to the new identity committed. The way to a history
    /// of millions of events in seconds.
    pub async fn restored(
        dir: &Path,
        timing: Timing,
        batch_max: usize,
        export: &Path,
        how: RestoreBy,
    ) -> anyhow::Result<(Switchyard, Restored)> {
        let mut cluster = local::open(dir, 0, settings(timing, batch_max, 0))?;
        let token = cluster.secrets.admin_token.clone();
        let endpoints = cluster.endpoints().join(",");
        let cli = |args: &[&std::ffi::OsStr]| -> anyhow::Result<Command> {
            let mut c = Command::new(cli_program()?);
            c.arg("--endpoints").arg(&endpoints);
            // The cluster runs plaintext (as etcd does here): the CLI is told so.
            c.args(["--insecure", "--token", &token, "--timeout", "600"]).args(args).stdin(Stdio::null());
            Ok(c)
        };
        let t = Instant::now();
        let mut seed = None;
        match how {
            RestoreBy::Import => {
                cluster.start_nodes()?;
                cluster.bootstrap_for_restore().await?;
            }
            RestoreBy::Seed | RestoreBy::SeedEach => {
                let members: Vec<String> = (1..=3)
                    .map(|id| format!("{id}={},{}", cluster.node(id).raft_addr, cluster.node(id).api_addr))
                    .collect();
                let os = std::ffi::OsStr::new;
                let seed_args = |id: u64, data: &Path, also: &[String]| {
                    let mut args = vec![os("log").to_owned(), os("seed").to_owned(), export.as_os_str().to_owned()];
                    args.extend([os("--data-dir").to_owned(), data.as_os_str().to_owned()]);
                    args.extend([os("--node-id").to_owned(), id.to_string().into()]);
                    for m in &members {
                        args.extend([os("--member").to_owned(), m.into()]);
                    }
                    for a in also {
                        args.extend([os("--also").to_owned(), a.into()]);
                    }
                    args
                };
                let runs: Vec<Vec<std::ffi::OsString>> = if how == RestoreBy::Seed {
                    let also: Vec<String> =
                        [2u64, 3].iter().map(|id| format!("{id}={}", cluster.data_dir(*id).display())).collect();
                    vec![seed_args(1, &cluster.data_dir(1), &also)]
                } else {
                    (1..=3u64).map(|id| seed_args(id, &cluster.data_dir(id), &[])).collect()
                };
                let mut children = Vec::new();
                for args in &runs {
                    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
                    let child = cli(&args)?
                        .stdout(Stdio::null())
                        .stderr(Stdio::piped())
                        .spawn()
                        .context("run switchyard log seed")?;
                    children.push(child);
                }
                for child in children {
                    let out = child.wait_with_output()?;
                    if !out.status.success() {
                        bail!("log seed failed: {}", String::from_utf8_lossy(&out.stderr));
                    }
                }
                seed = Some(t.elapsed());
                // Then `log restore` at once, as an operator runs it: it waits for the members
                // itself (and reads the export's ends meanwhile).
                cluster.start_nodes()?;
            }
        }
        let out = cli(&[std::ffi::OsStr::new("log"), std::ffi::OsStr::new("restore"), export.as_os_str()])?
            .output()
            .context("run switchyard log restore")?;
        if !out.status.success() {
            bail!("log restore failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let restored = Restored { took: t.elapsed(), seed };
        Ok((Switchyard { cluster, token, scheme: "http" }, restored))
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// The URL of `path` on the coordinator at `ep`.
    pub fn url(&self, ep: &str, path: &str) -> String {
        endpoint_url(self.scheme, ep, path)
    }

    /// Creates guests g{from}..g{to-1} through `ep`, guest i on `hosts[i % hosts.len()]`, 64 at a
    /// time (setup, not measured).
    pub async fn create_guests(
        &self,
        http: &reqwest::Client,
        ep: &str,
        range: std::ops::Range<usize>,
        hosts: &[String],
    ) -> anyhow::Result<()> {
        self.each(range, |i| {
            let body = json!({"name": format!("g{i}"), "owner": hosts[i % hosts.len()], "vcpus": 1, "memory_mib": 256,
                              "disks": [format!("avio_stor:/dev/vg01/g{i}")], "networks": ["avio_lan:vswitch0"]});
            http.post(self.url(ep, "/v1/guests")).bearer_auth(&self.token).json(&body).send()
        })
        .await
    }

    /// Sends one request per index, 64 in flight; an already existing record counts as done.
    async fn each<F>(&self, range: std::ops::Range<usize>, request: impl Fn(usize) -> F) -> anyhow::Result<()>
    where
        F: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
    {
        use futures_util::stream::StreamExt;
        // Setup is not measured: a request that meets a leader change (503) or a broken
        // connection is sent again (a repeat that finds its record already made answers 409).
        let one = |i: usize| {
            let request = &request;
            async move {
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                loop {
                    let retry = match request(i).await {
                        Ok(r) if r.status().is_success() => return Ok(()),
                        Ok(r) if r.status() == reqwest::StatusCode::CONFLICT => {
                            // Made by an earlier try (or an earlier run in the same folder); any
                            // other refusal is a failed setup.
                            let body = r.text().await.unwrap_or_default();
                            if body.contains("_exists") {
                                return Ok(());
                            }
                            bail!("setup request refused: {body}");
                        }
                        Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                            format!("{} {}", r.status(), r.text().await.unwrap_or_default())
                        }
                        Ok(r) => bail!("setup request failed: {} {}", r.status(), r.text().await.unwrap_or_default()),
                        Err(e) => e.to_string(),
                    };
                    if std::time::Instant::now() > deadline {
                        bail!("setup request failed for 60 s: {retry}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let mut results = futures_util::stream::iter(range.map(one)).buffer_unordered(64);
        while let Some(r) = results.next().await {
            r?;
        }
        Ok(())
    }

    async fn put(&self, http: &reqwest::Client, ep: &str, key: usize, seq: u64) -> anyhow::Result<u64> {
        let r = http
            .patch(self.url(ep, &format!("/v1/guests/g{key}")))
            .bearer_auth(&self.token)
            .json(&json!({"vcpus": 1 + seq % 8}))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("{}: {}", r.status(), r.text().await.unwrap_or_default());
        }
        Ok(r.json::<WriteResponse>().await?.first_revision)
    }

    async fn local_read(&self, http: &reqwest::Client, ep: &str, key: usize) -> anyhow::Result<()> {
        let url = self.url(ep, &format!("/v1/guests/g{key}?stale=true"));
        http.get(url).bearer_auth(&self.token).send().await?.error_for_status()?.bytes().await?;
        Ok(())
    }

    pub async fn status(&self, http: &reqwest::Client, ep: &str) -> Option<NodeStatus> {
        let r = http.get(self.url(ep, "/v1/node/status")).bearer_auth(&self.token).send().await.ok()?;
        r.json().await.ok()
    }

    /// An HTTP client from `builder` that trusts the cluster's CA when it runs TLS.
    pub fn client(&self, builder: reqwest::ClientBuilder) -> reqwest::Client {
        let builder = match &self.cluster.client_tls {
            Some(tls) if self.scheme == "https" => builder.use_preconfigured_tls(tls.client_config()),
            _ => builder,
        };
        builder.build().expect("an HTTP client builds")
    }

    async fn leader(&self) -> Option<(u64, String)> {
        let http = self.client(reqwest::Client::builder().timeout(Duration::from_millis(500)));
        for (i, ep) in self.cluster.endpoints().iter().enumerate() {
            if let Some(st) = self.status(&http, ep).await {
                if st.role == "leader" {
                    return Some((i as u64 + 1, ep.clone()));
                }
            }
        }
        None
    }

    async fn subscribe(
        http: &reqwest::Client,
        url: &str,
        token: &str,
        until: Arc<std::sync::atomic::AtomicU64>,
        ready: tokio::sync::mpsc::Sender<()>,
    ) -> anyhow::Result<Arrivals> {
        #[derive(Deserialize)]
        struct Rev {
            revision: u64,
        }
        #[derive(Deserialize)]
        enum Item {
            #[serde(rename = "event")]
            Event(Rev),
            #[serde(rename = "progress")]
            Progress {},
            #[serde(other)]
            Other,
        }
        // The server's default progress interval (5 s), as agents run: the subscription is
        // established once the answer's headers arrive (it streams from `from` whatever comes
        // later), so no early line is needed to know it.
        let resp = http.get(url).bearer_auth(token).send().await?;
        if !resp.status().is_success() {
            bail!("subscribe: {}", resp.status());
        }
        let _ = ready.try_send(());
        let mut out = Vec::new();
        lines(resp, |l| {
            if let Ok(Item::Event(r)) = serde_json::from_slice::<Item>(l) {
                out.push((r.revision, Instant::now()));
                return r.revision < until.load(std::sync::atomic::Ordering::Relaxed);
            }
            true
        })
        .await?;
        Ok(out)
    }
}

// ---- etcd ----

struct Member {
    name: String,
    client: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

pub struct Etcd {
    members: Vec<Member>,
    program: PathBuf,
    /// Per member, gRPC connections for puts: client `c` uses connection `c % CONNECTIONS`, as
    /// etcd's own benchmark tool spreads its clients over `--conns` connections. The first also
    /// serves status reads. A connection outlives its member's restart (it reconnects).
    conns: Vec<Vec<etcd_client::Client>>,
}

/// gRPC connections per etcd member for puts.
const CONNECTIONS: usize = 100;
/// How long one etcd request may take: a put to a member that died must fail fast in the
/// failover parts, as the HTTP clients' timeouts make it for Switchyard.
const ETCD_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// A gRPC connection to one etcd member (`ep` is `host:port`); `timeout` bounds each unary
/// request (watches are left unbounded).
async fn etcd_connect(ep: &str, timeout: Option<Duration>) -> anyhow::Result<etcd_client::Client> {
    let mut options = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(2));
    if let Some(t) = timeout {
        options = options.with_timeout(t);
    }
    etcd_client::Client::connect([format!("http://{ep}")], Some(options))
        .await
        .with_context(|| format!("gRPC connection to etcd at {ep}"))
}

/// Every coordinator's configuration in a benchmark cluster: the run's Raft timing and batch
/// size, durable commits (as always), the history kept whole. Hosts without agents (the scale
/// run's) are only marked unreachable after an hour, so guests can be created on them.
pub(crate) fn settings(timing: Timing, batch_max: usize, transfer_ms: u64) -> Settings {
    let (min, max) = timing.switchyard_election();
    Settings {
        raft: RaftConfig {
            heartbeat_interval_ms: timing.heartbeat_ms,
            election_timeout_ms_min: min,
            election_timeout_ms_max: max,
            proposal_batch_max: batch_max,
            ..RaftConfig::default()
        },
        history: HistoryConfig { retain_revisions: 0 },
        // The fan-out's subscribers all use the harness's one token (in production each agent
        // has its own), so the per-token bound on streams is lifted to their count.
        api: ApiConfig {
            request_body_bytes_max: 65536,
            host_report_timeout_ms: 3_600_000,
            streams_per_token_max: 16_384,
            ..ApiConfig::default()
        },
        sim_transfer_ms: transfer_ms,
        // Plaintext, as the etcd it is compared with runs here, unless `--tls` (the cost of
        // TLS is measured beside it).
        tls: false,
        ..Settings::default()
    }
}

/// The `switchyard` CLI built next to this program.
pub fn cli_program() -> anyhow::Result<PathBuf> {
    let cli = std::env::current_exe()?.with_file_name("switchyard");
    if !cli.exists() {
        bail!("{} not found: build with `cargo build --release --workspace --bins`", cli.display());
    }
    Ok(cli)
}

/// Where etcd is, if installed (`$ETCD_BIN`, else `etcd` on the PATH).
pub fn etcd_program() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ETCD_BIN") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join("etcd")).find(|p| p.is_file())
}

impl Etcd {
    /// Three members on loopback with data in `dir`; default durability (WAL fsync on every
    /// commit batch).
    pub async fn launch(program: PathBuf, dir: &Path, timing: Timing) -> anyhow::Result<Etcd> {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> =
            ports.iter().enumerate().map(|(i, (_, peer))| format!("e{}=http://127.0.0.1:{peer}", i + 1)).collect();
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("e{}", i + 1);
            let data = dir.join(&name);
            std::fs::create_dir_all(&data)?;
            let args = vec![
                format!("--name={name}"),
                format!("--data-dir={}", data.join("data").display()),
                format!("--listen-client-urls=http://127.0.0.1:{client}"),
                format!("--advertise-client-urls=http://127.0.0.1:{client}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-cluster={}", initial.join(",")),
                "--initial-cluster-state=new".into(),
                "--initial-cluster-token=switchyard-bench".into(),
                format!("--heartbeat-interval={}", timing.heartbeat_ms),
                format!("--election-timeout={}", timing.election_ms),
                "--quota-backend-bytes=8589934592".into(),
                "--log-level=warn".into(),
            ];
            members.push(Member {
                name,
                client: format!("127.0.0.1:{client}"),
                args,
                log: data.join("etcd.log"),
                child: None,
            });
        }
        let mut e = Etcd { members, program, conns: Vec::new() };
        for m in 1..=3 {
            e.start(m)?;
        }
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        for m in &e.members {
            while !http.get(format!("http://{}/health", m.client)).send().await.is_ok_and(|r| r.status().is_success()) {
                if Instant::now() > deadline {
                    bail!("etcd member {} did not become healthy; see {}", m.name, m.log.display());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        for m in &e.members {
            let mut pool = Vec::with_capacity(CONNECTIONS);
            for _ in 0..CONNECTIONS {
                pool.push(etcd_connect(&m.client, Some(ETCD_REQUEST_TIMEOUT)).await?);
            }
            e.conns.push(pool);
        }
        Ok(e)
    }

    fn start(&mut self, member: u64) -> anyhow::Result<()> {
        let program = self.program.clone();
        let m = &mut self.members[(member - 1) as usize];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&m.log)?;
        let mut cmd = Command::new(&program);
        cmd.args(&m.args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        die_with_parent(&mut cmd);
        m.child = Some(cmd.spawn().with_context(|| format!("start {}", program.display()))?);
        Ok(())
    }

    fn kill(&mut self, member: u64) {
        if let Some(mut c) = self.members[(member - 1) as usize].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The connections to the member at `ep`.
    fn pool(&self, ep: &str) -> anyhow::Result<&[etcd_client::Client]> {
        let i = self.members.iter().position(|m| m.client == ep).with_context(|| format!("no etcd member at {ep}"))?;
        Ok(&self.conns[i])
    }

    async fn put(&self, ep: &str, key: usize, seq: u64) -> anyhow::Result<u64> {
        let pool = self.pool(ep)?;
        let mut kv = pool[key % pool.len()].kv_client();
        let r = kv.put(format!("/guests/g{key}"), guest_value(key, seq), None).await?;
        Ok(r.header().context("a put answer without a header")?.revision() as u64)
    }

    async fn local_read(&self, ep: &str, key: usize) -> anyhow::Result<()> {
        let pool = self.pool(ep)?;
        let mut kv = pool[key % pool.len()].kv_client();
        let options = etcd_client::GetOptions::new().with_serializable();
        kv.get(format!("/guests/g{key}"), Some(options)).await?;
        Ok(())
    }

    /// Compacts the key space at `revision` through the member at `ep`: older revisions go.
    pub async fn compact(&self, ep: &str, revision: u64) -> anyhow::Result<()> {
        let mut kv = self.pool(ep)?[0].kv_client();
        kv.compact(revision as i64, None).await.context("compact etcd")?;
        Ok(())
    }

    /// A member's status (revision, leader, Raft term).
    async fn status(&self, ep: &str) -> anyhow::Result<etcd_client::StatusResponse> {
        Ok(self.pool(ep)?[0].maintenance_client().status().await?)
    }

    async fn revision(&self, ep: &str) -> anyhow::Result<u64> {
        let st = self.status(ep).await?;
        Ok(st.header().context("a status answer without a header")?.revision() as u64)
    }

    async fn leader(&self) -> Option<(u64, String)> {
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            let Ok(Ok(st)) = tokio::time::timeout(Duration::from_millis(500), self.status(&m.client)).await else {
                continue;
            };
            let me = st.header().map_or(0, |h| h.member_id());
            if me != 0 && st.leader() == me {
                return Some((i as u64 + 1, m.client.clone()));
            }
        }
        None
    }

    /// A watch of every guest key from `from`, on a connection of its own (as separate
    /// subscribers would have).
    async fn subscribe(
        ep: &str,
        from: u64,
        until: Arc<std::sync::atomic::AtomicU64>,
        ready: tokio::sync::mpsc::Sender<()>,
    ) -> anyhow::Result<Arrivals> {
        let client = etcd_connect(ep, None).await?;
        let options = etcd_client::WatchOptions::new().with_prefix().with_start_revision(from as i64);
        let mut stream = client.watch_client().watch("/guests/", Some(options)).await?;
        let mut out = Vec::new();
        while let Some(resp) = stream.message().await? {
            if resp.created() {
                let _ = ready.try_send(());
            }
            if resp.canceled() {
                bail!("the watch was cancelled: {}", resp.cancel_reason());
            }
            let now = Instant::now();
            let mut last = 0;
            for e in resp.events() {
                let rev = e.kv().map_or(0, |kv| kv.mod_revision()) as u64;
                out.push((rev, now));
                last = rev;
            }
            if last != 0 && last >= until.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(out);
            }
        }
        bail!("the watch stream ended")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in 1..=self.members.len() as u64 {
            self.kill(m);
        }
    }
}

impl Drop for Switchyard {
    fn drop(&mut self) {
        self.cluster.stop_all();
    }
}
