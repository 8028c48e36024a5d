//! Disk faults on real processes: a coordinator's data directory, and an agent's, on a
//! size-limited tmpfs that runs full mid-stream.
//!
//! A coordinator whose disk fills — as a follower, and as the leader — refuses writes with an
//! error that names the cause, serves stale reads, says so in `/readyz`, `/v1/node/status` and
//! `/metrics`, and recovers by itself once space returns; the cluster goes on writing meanwhile,
//! and nothing acknowledged is lost. An agent whose state directory fills keeps running, says so
//! in its metrics, and converges once space returns.
//!
//! The tmpfs is mounted by the test (root or CAP_SYS_ADMIN; CI runs as root). Where mounting is
//! not allowed the tests fail saying so, unless `SWITCHYARD_SKIP_MOUNT_TESTS=1` asks to skip
//! them (and then they print that they did).
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::cluster::*;
use common::metrics::{get, parse, scrape};
use serde_json::json;
use switchyard_protocol::api::{FullState, HostReport, NodeStatus, Read, WriteResponse};

/// A tmpfs mounted at a folder, unmounted (lazily: processes may still hold files) on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts `size_mib` of tmpfs at `dir` (created); `None` when the tests are to be skipped.
    fn mount(dir: &Path, size_mib: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m,mode=0700"), "tmpfs"])
            .arg(dir)
            .output();
        let why = match out {
            Ok(o) if o.status.success() => return Some(Tmpfs { dir: dir.to_path_buf() }),
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
            Err(e) => e.to_string(),
        };
        if std::env::var_os("SWITCHYARD_SKIP_MOUNT_TESTS").is_some() {
            eprintln!("SKIPPED: cannot mount a tmpfs at {} ({why}); SWITCHYARD_SKIP_MOUNT_TESTS is set", dir.display());
            return None;
        }
        panic!(
            "cannot mount a tmpfs at {} ({why}): the disk-full tests need root or CAP_SYS_ADMIN; \
             set SWITCHYARD_SKIP_MOUNT_TESTS=1 to skip them",
            dir.display()
        );
    }

    /// Bytes still free.
    fn available(&self) -> u64 {
        let out = Command::new("df").args(["--output=avail", "-B1"]).arg(&self.dir).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or_else(|| panic!("df said {text:?}"))
    }

    fn ballast(&self) -> PathBuf {
        self.dir.join("ballast")
    }

    /// Fills the file system until about `leave` bytes are free.
    fn fill(&self, leave: u64) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(self.ballast()).unwrap();
        let chunk = vec![0xa5u8; 64 << 10];
        while self.available() > leave {
            let n = (self.available() - leave).min(chunk.len() as u64) as usize;
            if f.write_all(&chunk[..n]).is_err() {
                break;
            }
            f.flush().unwrap();
        }
        eprintln!("{}: filled, {} bytes free", self.dir.display(), self.available());
    }

    /// Gives the space back.
    fn free(&self) {
        std::fs::remove_file(self.ballast()).unwrap();
        eprintln!("{}: ballast removed, {} bytes free", self.dir.display(), self.available());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// A guest whose record takes a couple of kilobytes, so a few hundred fill a disk's last
/// megabyte.
fn fat_guest(name: &str) -> serde_json::Value {
    let disks: Vec<String> =
        (0..16).map(|d| format!("avio_stor:/dev/vg_{name}/lvol_{d:02}_{}", "x".repeat(80))).collect();
    json!({"name": name, "owner": "h1", "vcpus": 1, "memory_mib": 64, "disks": disks, "request_id": request_id(name)})
}

/// A request id per guest name, so a write retried after a leader change is applied once.
fn request_id(name: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ("disk-full", name).hash(&mut h);
    format!("{:016x}", h.finish())
}

async fn status(cluster: &TestCluster, id: u64) -> Option<NodeStatus> {
    cluster.client(&[id]).get::<NodeStatus>("/v1/node/status").await.ok()
}

/// Writes guests `prefix-N` through every coordinator until coordinator `full` reports a fault,
/// then `after` more; answers every acknowledged write (name, revision).
async fn write_until_fault(cluster: &TestCluster, prefix: &str, full: u64, after: usize) -> Vec<(String, u64)> {
    let c = cluster.client(&[1, 2, 3]);
    let mut acked = Vec::new();
    let mut since_fault = None;
    for i in 0..20_000 {
        let name = format!("{prefix}-{i}");
        let w = write_until_acked(&c, "/v1/guests", &fat_guest(&name)).await;
        acked.push((name, w.last_revision));
        if let Some(n) = since_fault.as_mut() {
            *n += 1;
            if *n >= after {
                return acked;
            }
        } else if i % 10 == 9 && status(cluster, full).await.and_then(|s| s.fault).is_some() {
            eprintln!("coordinator {full} reported its fault after {} writes", acked.len());
            since_fault = Some(0);
        }
    }
    panic!("coordinator {full} never reported a full disk after {} writes", acked.len());
}

/// What a coordinator whose disk is full does: says so in its status, `/readyz` and
/// `/metrics`; serves stale reads holding what it applied; forwards what it cannot serve itself
/// (a write, an agent's lease renewal) to the leader it last heard from. Answers the write it
/// forwarded.
async fn check_faulted(cluster: &TestCluster, id: u64, applied_before: &[(String, u64)], tag: &str) -> (String, u64) {
    let st = status(cluster, id).await.expect("a faulted coordinator still answers its status");
    let fault = st.fault.clone().expect("the fault is in the status");
    assert!(fault.contains("No space left on device"), "the fault names the cause: {fault}");
    assert_eq!(st.role, "shutdown", "{st:?}");
    let ready = cluster.http().get(cluster.url(id, "/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body = ready.text().await.unwrap();
    assert!(body.contains("not writable") && body.contains("No space left on device"), "{body}");
    assert_eq!(get(&scrape(cluster, id).await, "switchyard_raft_fault", &[]), 1.0);
    // Stale reads are served, holding what it had applied.
    let state: Read<FullState> = cluster.client(&[id]).get("/v1/state?stale=true").await.unwrap();
    for (name, rev) in applied_before.iter().filter(|(_, rev)| *rev <= state.revision) {
        assert!(
            state.items.guests.iter().any(|g| g.name.as_str() == name.as_str()),
            "{name} (revision {rev}) in the stale read"
        );
    }
    // A write sent to it reaches the leader (once a leader's append has reached it).
    let name = format!("through-{tag}");
    let through = cluster.client(&[id]);
    let w = eventually("a write through the faulted coordinator", Duration::from_secs(30), || async {
        through.post::<_, WriteResponse>("/v1/guests", &fat_guest(&name)).await.ok()
    })
    .await;
    // So does an agent's lease renewal: an agent whose first endpoint is this coordinator keeps
    // its lease (and its packaged guests) while the disk is full.
    let agent = cluster.client_for(&[id], &agent_token(2));
    let report = HostReport { applied_revision: 0, digest: 0, hypervisor: None };
    let h2 = switchyard_protocol::Name::new("h2").unwrap();
    let recorded = agent.report_host(&h2, &report).await.expect("a lease renewal through the faulted coordinator");
    assert!(recorded.lease.is_some(), "{recorded:?}");
    (name, w.last_revision)
}

/// Every acknowledged guest is in the state of every coordinator once each holds `revision`.
async fn check_nothing_lost(cluster: &TestCluster, acked: &[(String, u64)]) {
    let head = acked.iter().map(|(_, r)| *r).max().unwrap();
    for id in [1, 2, 3] {
        cluster.wait_revision(id, head).await;
        let state: Read<FullState> = cluster.client(&[id]).get("/v1/state?stale=true").await.unwrap();
        let names: std::collections::BTreeSet<&str> = state.items.guests.iter().map(|g| g.name.as_str()).collect();
        let lost: Vec<&str> = acked.iter().map(|(n, _)| n.as_str()).filter(|n| !names.contains(n)).collect();
        assert!(lost.is_empty(), "coordinator {id} lost {} acknowledged guests: {lost:?}", lost.len());
    }
}

/// Waits until coordinator `id` recovered: no fault, a member again, holding `revision`.
async fn wait_recovered(cluster: &TestCluster, id: u64, revision: u64) {
    eventually(&format!("coordinator {id} to recover"), Duration::from_secs(90), || async {
        let st = status(cluster, id).await?;
        (st.fault.is_none() && st.role != "shutdown" && st.revision >= revision).then_some(())
    })
    .await;
    assert_eq!(get(&scrape(cluster, id).await, "switchyard_raft_fault", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_whose_disk_fills_refuses_writes_serves_reads_and_recovers() {
    // Hosts h1 and h2 have no agent here: without a long report timeout the leader marks them
    // unreachable 5 s after it took office, and guests can no longer be placed on them.
    let opts = ClusterOpts { host_report_timeout_ms: 600_000, ..ClusterOpts::default() };
    let mut cluster = TestCluster::empty(opts);
    // Smaller than RocksDB's write-ahead log preallocation (1.1 × the 64 MiB write buffer), so
    // the log's appends take pages as they go and a full disk shows at the next write.
    let Some(fs) = Tmpfs::mount(&cluster.dir().join("node3").join("data"), 48) else { return };
    cluster.start(3).await.expect("start a cluster");
    let c = cluster.client(&[1, 2, 3]);
    write_until_acked(&c, "/v1/hosts", &big_host("h1")).await;
    write_until_acked(&c, "/v1/hosts", &big_host("h2")).await;
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    assert_ne!(leader, 3, "the cluster was initialized on node 1, which leads");

    // 1. A follower's disk fills.
    let mut acked = Vec::new();
    for i in 0..10 {
        let name = format!("before-{i}");
        acked.push((name.clone(), write_until_acked(&c, "/v1/guests", &fat_guest(&name)).await.last_revision));
    }
    cluster.wait_revision(3, acked.last().unwrap().1).await;
    fs.fill(512 << 10);
    acked.extend(write_until_fault(&cluster, "follower-full", 3, 50).await);
    let through = check_faulted(&cluster, 3, &acked[..10], "follower").await;
    acked.push(through);
    check_nothing_lost_on(&cluster, &[1, 2], &acked).await;
    fs.free();
    wait_recovered(&cluster, 3, acked.last().unwrap().1).await;
    check_nothing_lost(&cluster, &acked).await;

    // 2. The leader's disk fills. Node 3 is made the leader: the other follower is stopped and
    // misses an entry, so the leader's graceful stop hands over to node 3. (Stopped, not
    // paused: a paused process still receives what the leader sends it, and takes the entry
    // when it wakes.)
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    if leader != 3 {
        let other = 6 - 3 - leader;
        cluster.kill(other);
        let name = "while-stopped".to_string();
        acked.push((name.clone(), write_until_acked(&c, "/v1/guests", &fat_guest(&name)).await.last_revision));
        cluster.wait_revision(3, acked.last().unwrap().1).await;
        assert!(cluster.terminate(leader).success());
        cluster.restart(other);
        // Only node 3 holds the last entry among the two that run: it wins.
        eventually("node 3 to lead", Duration::from_secs(30), || async {
            (status(&cluster, 3).await?.role == "leader").then_some(())
        })
        .await;
        cluster.restart(leader);
    }
    fs.fill(512 << 10);
    acked.extend(write_until_fault(&cluster, "leader-full", 3, 50).await);
    let through = check_faulted(&cluster, 3, &acked, "leader").await;
    acked.push(through);
    check_nothing_lost_on(&cluster, &[1, 2], &acked).await;
    fs.free();
    wait_recovered(&cluster, 3, acked.last().unwrap().1).await;
    check_nothing_lost(&cluster, &acked).await;
    drop(fs);
}

/// Every acknowledged guest is in the linearizable state read through `ids`.
async fn check_nothing_lost_on(cluster: &TestCluster, ids: &[u64], acked: &[(String, u64)]) {
    let state: Read<FullState> = cluster.client(ids).get("/v1/state").await.unwrap();
    let names: std::collections::BTreeSet<&str> = state.items.guests.iter().map(|g| g.name.as_str()).collect();
    let lost: Vec<&str> = acked.iter().map(|(n, _)| n.as_str()).filter(|n| !names.contains(n)).collect();
    assert!(lost.is_empty(), "the cluster lost {} acknowledged guests: {lost:?}", lost.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_state_directory_fills_keeps_running_and_converges() {
    let cluster = TestCluster::start(3, ClusterOpts::default()).await;
    let c = cluster.client(&[1, 2, 3]);
    write_until_acked(&c, "/v1/hosts", &big_host("h1")).await;
    let Some(fs) = Tmpfs::mount(&cluster.dir().join("agent-h1").join("data"), 4) else { return };
    let mut agent = AgentProc::start(&cluster, "h1", &agent_token(1), &[1, 2, 3]);
    for i in 0..5 {
        write_until_acked(&c, "/v1/guests", &fat_guest(&format!("before-{i}"))).await;
    }
    common::saga::wait_agents_converged(&cluster, std::slice::from_ref(&agent)).await;

    fs.fill(16 << 10);
    for i in 0..100 {
        write_until_acked(&c, "/v1/guests", &fat_guest(&format!("while-full-{i}"))).await;
    }
    eventually("the agent to report its full disk (and keep running)", Duration::from_secs(60), || async {
        (store_failed(&cluster, &agent).await? == 1.0).then_some(())
    })
    .await;
    let head: Read<FullState> = c.get("/v1/state").await.unwrap();
    assert!(agent.running(), "the agent keeps running on a full disk");
    let (cursor, _) = agent.applied();
    assert!(cursor < head.revision, "the agent cannot have applied everything on a full disk");

    fs.free();
    common::saga::wait_agents_converged(&cluster, std::slice::from_ref(&agent)).await;
    assert_eq!(store_failed(&cluster, &agent).await, Some(0.0));
    let leftovers: Vec<_> = std::fs::read_dir(agent.dir.join("data").join("guests"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporaries left behind: {leftovers:?}");
    assert!(agent.running());
    agent.kill();
    drop(fs);
}

/// The agent's `switchyard_agent_store_failed`; `None` when it does not answer (it exited).
async fn store_failed(cluster: &TestCluster, agent: &AgentProc) -> Option<f64> {
    let r = cluster.http().get(format!("https://{}/metrics", agent.metrics)).send().await.ok()?;
    Some(get(&parse(r).await, "switchyard_agent_store_failed", &[]))
}
