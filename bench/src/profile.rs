//! Where one client's write goes: a closed loop of a single client against the leader, and the
//! mean time of each stage of the write on the leader and the followers, from the difference of
//! the members' `/metrics` histograms (sum and count) before and after the loop. The coordinator
//! times its stages itself (`switchyard_write_stage_seconds{stage}`, see the coordinator's
//! `metrics::stage`), so the same figures are on a production cluster's dashboards.
//!
//! For etcd, the same loop and the stages etcd's own metrics time: the WAL fsync and the
//! backend commit.
//!
//! For both, the p50 of a read from the leader's own copy (no Raft: Switchyard `?stale=true`,
//! etcd serializable) through the same client: what a request's round trip costs by itself,
//! which a write pays on top of its commit.
//!
//! And for both, the CPU each write cost (user + system time from `/proc`, over the same loop):
//! on the leader, on a follower, in the bench's own process (the client), and how busy the
//! machine's cores were. On a virtual machine a write's latency is as much wake-ups of sleeping
//! threads as work, and these figures show it: a sequential client keeps far more than one core
//! busy when each wake-up costs the hypervisor's exits.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::scenarios::{http, pct, throughput};
use crate::sut::Sut;
use crate::Report;

/// A member's histograms: name with labels → (sum in seconds, count).
type Scrape = BTreeMap<String, (f64, f64)>;

/// What one row of the profile reads: a histogram, by name and labels as `/metrics` prints them.
struct Stage {
    what: &'static str,
    metric: &'static str,
}

const SWITCHYARD: &[Stage] = &[
    Stage {
        what: "API write handler (parsed body → answer)", metric: "switchyard_write_stage_seconds{stage=\"api\"}"
    },
    Stage {
        what: "waiting in the proposal batcher",
        metric: "switchyard_write_stage_seconds{stage=\"proposer_queue\"}",
    },
    Stage { what: "Raft commit and apply (client_write)", metric: "switchyard_proposal_commit_seconds" },
    Stage { what: "log append (written, not synced)", metric: "switchyard_write_stage_seconds{stage=\"log_append\"}" },
    Stage {
        what: "log append → durable (WAL fsync)", metric: "switchyard_write_stage_seconds{stage=\"log_durable\"}"
    },
    Stage { what: "WAL fsync itself", metric: "switchyard_log_fsync_seconds" },
    Stage {
        what: "append-entries RPC, sent → answered",
        metric: "switchyard_write_stage_seconds{stage=\"replicate_rpc\"}",
    },
    Stage {
        what: "append-entries handled by the follower",
        metric: "switchyard_write_stage_seconds{stage=\"follower_append\"}",
    },
    Stage { what: "apply to the state machine", metric: "switchyard_write_stage_seconds{stage=\"apply\"}" },
];

const ETCD: &[Stage] = &[
    Stage { what: "WAL fsync itself", metric: "etcd_disk_wal_fsync_duration_seconds" },
    Stage { what: "backend commit", metric: "etcd_disk_backend_commit_duration_seconds" },
];

/// Runs the one-client loop for `secs` and adds the profile to `report`: the client's mean and
/// p50, then each stage's mean (µs) on the leader and, averaged, on the followers.
pub async fn one_client(sut: &Sut, secs: u64, report: &mut Report) -> anyhow::Result<()> {
    let name = sut.name();
    let (leader, ep) = sut.leader().await?;
    let client = http(sut, Duration::from_secs(10));
    let before = scrape_all(sut, &client).await?;
    let cpu_before = Cpu::read(sut);
    let run = throughput(sut, 1, secs).await?;
    let cpu_after = Cpu::read(sut);
    let after = scrape_all(sut, &client).await?;
    let stages = match sut {
        Sut::Switchyard(_) => SWITCHYARD,
        Sut::Etcd(_) => ETCD,
    };
    let reads = local_reads(sut, &client, &ep).await?;
    let leader_i = (leader - 1) as usize;
    let mut rows: Vec<(String, Option<f64>, Option<f64>)> = Vec::new();
    rows.push(("client round trip, mean".into(), Some(run.mean.as_secs_f64() * 1e6), None));
    rows.push(("client round trip, p50".into(), Some(run.p50.as_secs_f64() * 1e6), None));
    rows.push(("read from the leader's own copy, no Raft, p50".into(), Some(reads), None));
    for s in stages {
        let mean_of = |members: &mut dyn Iterator<Item = usize>| -> Option<f64> {
            let (mut sum, mut count) = (0.0, 0.0);
            for i in members {
                let (s1, c1) = after[i].get(s.metric).copied().unwrap_or_default();
                let (s0, c0) = before[i].get(s.metric).copied().unwrap_or_default();
                sum += s1 - s0;
                count += c1 - c0;
            }
            (count > 0.0).then(|| sum / count * 1e6)
        };
        let on_leader = mean_of(&mut std::iter::once(leader_i));
        let on_followers = mean_of(&mut (0..after.len()).filter(|&i| i != leader_i));
        rows.push((s.what.into(), on_leader, on_followers));
    }
    let used = cpu_after.since(&cpu_before, run.writes);
    let followers: Vec<f64> =
        used.members.iter().enumerate().filter(|&(i, _)| i != leader_i).filter_map(|(_, v)| *v).collect();
    rows.push((
        "CPU per write, user + system".into(),
        used.members.get(leader_i).copied().flatten(),
        (!followers.is_empty()).then(|| followers.iter().sum::<f64>() / followers.len() as f64),
    ));
    let mut md = format!(
        "One client's write, stage by stage ({name}, {} writes in {secs} s; mean µs; a stage includes the ones it waits for)\n\n\
         | stage | leader | followers |\n|---|---:|---:|\n",
        run.writes
    );
    let cell = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.0}"));
    for (what, l, f) in &rows {
        md.push_str(&format!("| {what} | {} | {} |\n", cell(*l), cell(*f)));
        eprintln!("  {name:>10}  profile: {what:<48} leader {:>6}  followers {:>6}", cell(*l), cell(*f));
    }
    if let (Some(client), Some((busy, steal))) = (used.client, used.machine) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let line = format!(
            "The bench's own process (the client) used {client:.0} µs of CPU per write; the machine's {} cores \
             were {busy:.0} % busy (stolen by the hypervisor: {steal:.1} %).",
            cores
        );
        eprintln!("  {name:>10}  profile: {line}");
        md.push_str(&format!("\n{line}\n"));
    }
    report.section(md);
    Ok(())
}

/// Reads the write loop's key from the leader's own copy [`LOCAL_READS`] times, one after
/// another, and answers their p50 in µs: what a request costs through the client, the loopback
/// and the server without Raft, the part of a write's round trip that no commit path shortens.
async fn local_reads(sut: &Sut, client: &reqwest::Client, ep: &str) -> anyhow::Result<f64> {
    let mut took = Vec::with_capacity(LOCAL_READS);
    for _ in 0..LOCAL_READS {
        let t = std::time::Instant::now();
        sut.local_read(client, ep, 0).await?;
        took.push(t.elapsed());
    }
    took.sort();
    Ok(pct(&took, 50.0).as_secs_f64() * 1e6)
}

/// Reads timed by [`local_reads`].
const LOCAL_READS: usize = 2000;

/// CPU time so far: each member's process and this one's (user + system, in clock ticks), and
/// the machine's (`/proc/stat`'s first line: busy and stolen ticks, and all of them).
struct Cpu {
    members: Vec<Option<u64>>,
    client: Option<u64>,
    machine: Option<Machine>,
}

#[derive(Clone, Copy)]
struct Machine {
    busy: u64,
    steal: u64,
    total: u64,
}

/// CPU per write between two [`Cpu`] readings: µs per write of each member and of the client,
/// and the machine's busy and stolen shares in percent.
struct Used {
    members: Vec<Option<f64>>,
    client: Option<f64>,
    machine: Option<(f64, f64)>,
}

impl Cpu {
    fn read(sut: &Sut) -> Cpu {
        let members = (1..=sut.endpoints().len() as u64).map(|m| sut.pid(m).and_then(process_ticks)).collect();
        let machine = std::fs::read_to_string("/proc/stat").ok().as_deref().and_then(machine_ticks);
        Cpu { members, client: process_ticks(std::process::id()), machine }
    }

    fn since(&self, before: &Cpu, writes: usize) -> Used {
        // SAFETY: sysconf only reads a constant of the running system.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let per_write = |a: Option<u64>, b: Option<u64>| -> Option<f64> {
            let (a, b) = (a?, b?);
            (writes > 0).then(|| a.saturating_sub(b) as f64 / hz * 1e6 / writes as f64)
        };
        let members = self.members.iter().zip(&before.members).map(|(a, b)| per_write(*a, *b)).collect();
        let machine = match (self.machine, before.machine) {
            (Some(a), Some(b)) if a.total > b.total => {
                let total = (a.total - b.total) as f64;
                Some((
                    a.busy.saturating_sub(b.busy) as f64 / total * 100.0,
                    a.steal.saturating_sub(b.steal) as f64 / total * 100.0,
                ))
            }
            _ => None,
        };
        Used { members, client: per_write(self.client, before.client), machine }
    }
}

/// A process's user + system time in clock ticks (`/proc/PID/stat`'s 14th and 15th fields;
/// the name, field 2, may hold spaces and parentheses, so fields are counted after its last `)`).
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_ticks(&stat)
}

fn stat_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The machine's busy, stolen and total ticks from `/proc/stat`'s `cpu` line (user, nice,
/// system, idle, iowait, irq, softirq, steal; guest time is already counted in user).
fn machine_ticks(stat: &str) -> Option<Machine> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).take(8).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = v[..] else { return None };
    Some(Machine {
        busy: user + nice + system + irq + softirq,
        steal,
        total: user + nice + system + idle + iowait + irq + softirq + steal,
    })
}

async fn scrape_all(sut: &Sut, client: &reqwest::Client) -> anyhow::Result<Vec<Scrape>> {
    let mut out = Vec::new();
    for ep in sut.endpoints() {
        let url = match sut {
            Sut::Switchyard(s) => s.url(&ep, "/metrics"),
            Sut::Etcd(_) => format!("http://{ep}/metrics"),
        };
        let mut req = client.get(&url);
        if let Sut::Switchyard(s) = sut {
            req = req.bearer_auth(s.token());
        }
        let text = req.send().await?.error_for_status()?.text().await?;
        out.push(histograms(&text));
    }
    Ok(out)
}

/// The `_sum` and `_count` lines of a Prometheus text page, by histogram name and labels
/// (`le` aside: bucket lines are skipped).
fn histograms(text: &str) -> Scrape {
    let mut out = Scrape::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, labels) = match series.find('{') {
            Some(i) => (&series[..i], &series[i..]),
            None => (series, ""),
        };
        let (base, is_sum) = if let Some(b) = name.strip_suffix("_sum") {
            (b, true)
        } else if let Some(b) = name.strip_suffix("_count") {
            (b, false)
        } else {
            continue;
        };
        let e = out.entry(format!("{base}{labels}")).or_default();
        if is_sum {
            e.0 = value;
        } else {
            e.1 = value;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sums_and_counts_by_name_and_labels() {
        let page = "# HELP x y\n\
            switchyard_write_stage_seconds_sum{stage=\"api\"} 0.5\n\
            switchyard_write_stage_seconds_count{stage=\"api\"} 1000\n\
            switchyard_write_stage_seconds_bucket{stage=\"api\",le=\"0.001\"} 1000\n\
            etcd_disk_wal_fsync_duration_seconds_sum 1.5e-1\n\
            etcd_disk_wal_fsync_duration_seconds_count 3\n";
        let h = histograms(page);
        assert_eq!(h["switchyard_write_stage_seconds{stage=\"api\"}"], (0.5, 1000.0));
        assert_eq!(h["etcd_disk_wal_fsync_duration_seconds"], (0.15, 3.0));
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn reads_a_process_cpu_time_past_a_name_with_spaces_and_parentheses() {
        let stat = "4242 (tokio (rt) worker) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 567 0 0 20 0 4 0 99 0 0";
        assert_eq!(stat_ticks(stat), Some(1234 + 567));
        assert_eq!(stat_ticks("4242 (short) S 1"), None);
        assert_eq!(stat_ticks("no parenthesis"), None);
    }

    #[test]
    fn reads_the_machine_busy_stolen_and_total_ticks() {
        let stat = "cpu  100 2 30 800 40 5 6 7 0 0\ncpu0 50 1 15 400 20 2 3 3 0 0\n";
        let m = machine_ticks(stat).unwrap();
        assert_eq!((m.busy, m.steal, m.total), (100 + 2 + 30 + 5 + 6, 7, 990));
        assert!(machine_ticks("cpu  1 2 3\n").is_none());
        assert!(machine_ticks("intr 5\n").is_none());
    }
}
