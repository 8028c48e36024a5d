//! The measurements. Each drives a system through `Sut`, times what a user would time, and adds
//! rows to the report; nothing here asserts.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde_json::json;
use switchyard_protocol::{apply, ClusterState, Command, CompatProfile, GuestPatch, GuestSpec, HostSpec, Name};
use switchyard_protocol::{Proposal, RequestId, Resources, RunState, Timestamp};
use switchyard_storage::export::{ExportHeader, ExportWriter, Format};

use crate::sut::{cli_program, RestoreBy, Sut, Switchyard, Timing};
use crate::{Args, Report};

/// Keys (guests) the write load spreads over: one per client.
const KEYS: usize = 1000;

/// The harness's HTTP client to `sut` (TLS when it runs TLS).
pub(crate) fn http(sut: &Sut, timeout: Duration) -> reqwest::Client {
    sut.client(reqwest::Client::builder().timeout(timeout).pool_max_idle_per_host(4096))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `p`-th percentile (0..=100) of sorted values.
pub(crate) fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median_max(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (pct(&v, 50.0), v.last().copied().unwrap_or_default())
}

pub async fn run_all(args: &Args, sut: &mut Sut, report: &mut Report) -> anyhow::Result<()> {
    let name = sut.name();
    let setup = http(sut, Duration::from_secs(30));
    if let Sut::Switchyard(s) = &*sut {
        let (_, ep) = sut.leader().await?;
        s.create_guests(&setup, &ep, 0..KEYS, &["load".to_string()]).await.context("create the load's guests")?;
    }
    if args.wants("throughput") {
        sut.set_agents(false)?;
        for &n in &args.clients {
            let run = throughput(sut, n, args.seconds).await?;
            report.add(format!("commit throughput, {n} clients"), "ops/s", true, name, run.rate);
            report.add(format!("commit latency p50, {n} clients"), "ms", false, name, ms(run.p50));
            report.add(format!("commit latency p99, {n} clients"), "ms", false, name, ms(run.p99));
            if run.errors > 0 {
                eprintln!("  {name}: {} failed writes at {n} clients", run.errors);
            }
        }
    }
    if args.wants("steady") {
        sut.set_agents(false)?;
        steady(sut, args, report).await?;
    }
    if args.wants("profile") {
        sut.set_agents(false)?;
        crate::profile::one_client(sut, args.seconds, report).await?;
    }
    if args.wants("fanout") {
        sut.set_agents(false)?;
        for &n in &args.subscribers {
            for &rate in &args.rates {
                let (p50, p99, missing, per_subscriber) = fanout(sut, n, rate).await?;
                let f = format!("fan-out to {n} subscribers at {rate}/s, last subscriber p50");
                report.add(&f, "ms", false, name, ms(p50));
                let g = format!("fan-out to {n} subscribers at {rate}/s, last subscriber p99");
                report.add(&g, "ms", false, name, ms(p99));
                if missing > 0 {
                    report.note(&g, format!("{name}: {missing} deliveries missing"));
                }
                if let (Some(kib), true) = (per_subscriber, rate == args.rates[0]) {
                    report.add(format!("memory per subscriber, {n} subscribers (3 members)"), "KiB", false, name, kib);
                }
            }
        }
    }
    if args.wants("failover") {
        sut.set_agents(true)?;
        settle(sut).await?;
        let runs = failover_writes(sut, args.failover_reps).await?;
        let (med, max) = median_max(runs.iter().map(|f| f.total).collect());
        report.add("leader kill → first acknowledged write, median", "ms", false, name, ms(med));
        report.add("leader kill → first acknowledged write, max", "ms", false, name, ms(max));
        // The split at the first campaign: the timer's part and the machinery's part.
        let (timer, machinery): (Vec<_>, Vec<_>) =
            runs.iter().filter_map(|f| f.campaign.map(|c| (c, f.total.saturating_sub(c)))).unzip();
        if !timer.is_empty() {
            let (med, _) = median_max(timer);
            report.add("leader kill → first campaign (election timer), median", "ms", false, name, ms(med));
            let (med, max) = median_max(machinery);
            report.add("first campaign → first acknowledged write, median", "ms", false, name, ms(med));
            report.add("first campaign → first acknowledged write, max", "ms", false, name, ms(max));
        }
        if let Sut::Switchyard(_) = sut {
            let runs = match failover_migration(sut, args.migration_reps).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("  switchyard: migration failover not measured: {e:#}");
                    Vec::new()
                }
            };
            if !runs.is_empty() {
                let (med, max) = median_max(runs);
                report.add("leader kill mid-migration → next phase commit, median", "ms", false, name, ms(med));
                report.add("leader kill mid-migration → next phase commit, max", "ms", false, name, ms(max));
                report.note(
                    "leader kill mid-migration → next phase commit, median",
                    format!(
                        "{} kills as `transferring` commits; the simulated transfer takes {} ms",
                        args.migration_reps, args.transfer_ms
                    ),
                );
            }
        }
    }
    if args.wants("restart") {
        sut.set_agents(true)?;
        settle(sut).await?;
        let mut gaps: Vec<(String, Duration)> = Vec::new();
        for _ in 0..args.restart_rounds {
            gaps.extend(rolling_restart(sut).await?);
        }
        for role in ["leader", "follower"] {
            let samples: Vec<Duration> = gaps.iter().filter(|(r, _)| r == role).map(|(_, g)| *g).collect();
            if samples.is_empty() {
                continue;
            }
            let (med, max) = median_max(samples.clone());
            let f = format!("graceful restart of the {role}: longest write gap, median");
            report.add(&f, "ms", false, name, ms(med));
            report.add(format!("graceful restart of the {role}: longest write gap, max"), "ms", false, name, ms(max));
            let each: Vec<String> = samples.iter().map(|g| format!("{:.0}", ms(*g))).collect();
            report.note(&f, format!("{name}: {} restarts, {} ms", samples.len(), each.join(" / ")));
        }
    }
    if args.wants("catchup") {
        sut.set_agents(true)?;
        settle(sut).await?;
        let (load_rate, catchup, agents) = catch_up(sut, args.catchup_events).await?;
        if let Some(d) = agents {
            report.add(
                format!("bulk write of {} changes → applied by all 3 agents", args.catchup_events),
                "events/s",
                true,
                name,
                args.catchup_events as f64 / d.as_secs_f64(),
            );
        }
        report.add(
            format!("bulk write of {} changes (256 clients)", args.catchup_events),
            "ops/s",
            true,
            name,
            load_rate,
        );
        report.add(
            format!("catch-up of a subscriber {} revisions behind", args.catchup_events),
            "events/s",
            true,
            name,
            catchup,
        );
        if let Sut::Switchyard(_) = sut {
            let took = agents_return(sut, args.catchup_events).await?;
            let line = format!("3 agents {} revisions behind start → all applied", args.catchup_events);
            report.add(&line, "ms", false, name, ms(took));
            let how = match args.agent_jump_after {
                0 => "the agents apply every event (--agent-jump-after 0)".to_string(),
                j if j < args.catchup_events => "the agents jump to the current state".to_string(),
                j => format!("the agents apply every event (--agent-jump-after {j})"),
            };
            report.note(&line, format!("{name}: the changes modify {KEYS} guests; {how}"));
        }
    }
    Ok(())
}

/// What a closed-loop write run measured.
pub(crate) struct Run {
    /// Acknowledged writes per second.
    pub rate: f64,
    pub writes: usize,
    pub mean: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub errors: u64,
}

/// `clients` tasks, each changing its own key in a loop against the leader for `secs` seconds.
pub(crate) async fn throughput(sut: &Sut, clients: usize, secs: u64) -> anyhow::Result<Run> {
    let (_, ep) = sut.leader().await?;
    let client = http(sut, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks = (0..clients).map(|c| {
        let (client, ep, errors) = (client.clone(), ep.clone(), errors.clone());
        async move {
            let mut lat = Vec::new();
            let mut seq = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                match sut.put(&client, &ep, c % KEYS, seq).await {
                    Ok(_) => lat.push(t.elapsed()),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                seq += 1;
            }
            lat
        }
    });
    let all: Vec<Vec<Duration>> = futures_util::future::join_all(tasks).await;
    let elapsed = started.elapsed();
    let mut lat: Vec<Duration> = all.into_iter().flatten().collect();
    lat.sort();
    let writes = lat.len();
    Ok(Run {
        rate: writes as f64 / elapsed.as_secs_f64(),
        writes,
        mean: lat.iter().sum::<Duration>() / writes.max(1) as u32,
        p50: pct(&lat, 50.0),
        p99: pct(&lat, 99.0),
        errors: errors.load(Ordering::Relaxed),
    })
}

/// Client counts the `steady` part times after its writes.
const STEADY_CLIENTS: [usize; 2] = [1, 16];
/// The `steady` part's writes between two looks at Switchyard's WAL files.
const STEADY_CHUNK: u64 = 100_000;
/// The most writes the `steady` part makes while it waits for recycled WAL files.
const STEADY_MAX: u64 = 3_000_000;

/// One and 16 clients again on the same cluster after many more writes: the figures of a system
/// that has run a while rather than of one just started. Switchyard's members then write their
/// WAL over recycled files (`storage/src/db.rs`, `WAL_RECYCLED`), where a commit's fsync writes
/// no inode; a fresh cluster's first WAL files (≈ 300 MiB here) are new. Unless
/// `--steady-writes` says how many, Switchyard is written to until every member has recycled a
/// WAL file (RocksDB's info log says so), and etcd, which runs after it, gets as many writes.
/// etcd's WAL segments are new preallocated files whatever its age; after the writes it is
/// compacted to its latest revision, as a long-running etcd is (auto-compaction, or its users).
async fn steady(sut: &Sut, args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let name = sut.name();
    let client = http(sut, Duration::from_secs(30));
    let (_, ep) = sut.leader().await?;
    let fixed = match (args.steady_writes, sut) {
        (0, Sut::Etcd(_)) => Some(report.steady_writes.unwrap_or(1_000_000)),
        (0, Sut::Switchyard(_)) => None,
        (n, _) => Some(n),
    };
    let mut written = 0;
    let mut recycled: Option<Vec<usize>> = None;
    loop {
        let chunk = fixed.map_or(STEADY_CHUNK, |n| n - written);
        bulk_write(sut, &client, &ep, chunk).await?;
        written += chunk;
        if let Sut::Switchyard(sw) = sut {
            let each = (1..=3u64)
                .map(|id| crate::wal::recycled_wal_files(&sw.cluster.data_dir(id).join("db")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            eprintln!("  {name}: after {written} writes, WAL files recycled by members 1 / 2 / 3: {each:?}");
            recycled = Some(each);
        }
        let enough = match fixed {
            Some(n) => written >= n,
            None => written >= STEADY_MAX || recycled.as_ref().is_some_and(|each| each.iter().all(|&n| n > 0)),
        };
        if enough {
            break;
        }
    }
    let last = sut.revision(&client).await?;
    sut.wait_all_at(&client, last).await?;
    if let Sut::Etcd(etcd) = sut {
        etcd.compact(&ep, last).await?;
    }
    report.steady_writes.get_or_insert(written);
    for n in STEADY_CLIENTS {
        let run = throughput(sut, n, args.seconds).await?;
        let f = format!("commit throughput, {n} clients, after {written} writes");
        report.add(&f, "ops/s", true, name, run.rate);
        report.add(format!("commit latency p50, {n} clients, after {written} writes"), "ms", false, name, ms(run.p50));
        report.add(format!("commit latency p99, {n} clients, after {written} writes"), "ms", false, name, ms(run.p99));
        if let Some(r) = &recycled {
            report.note(&f, format!("{name}: WAL files recycled by members 1 / 2 / 3: {r:?}"));
        }
        if run.errors > 0 {
            eprintln!("  {name}: {} failed writes at {n} clients", run.errors);
        }
    }
    Ok(())
}

/// `n` subscribers spread over the members; one writer at `rate` changes/s for 5 s (at least
/// 50 changes). Latency of a change: from the moment the writer sent it to the moment the *last*
/// subscriber received it.
/// Also answers the members' added memory per subscriber (KiB, resident set of all members
/// with the subscribers connected, less before they connected).
async fn fanout(sut: &Sut, n: usize, rate: u64) -> anyhow::Result<(Duration, Duration, usize, Option<f64>)> {
    let count = (rate * 5).max(50) as usize;
    let client = http(sut, Duration::from_secs(10));
    let streams = sut.client(reqwest::Client::builder().pool_max_idle_per_host(4096));
    let from = sut.revision(&client).await? + 1;
    let resident = || -> Option<u64> { (1..=3u64).map(|m| sut.pid(m).and_then(rss_kib)).sum() };
    let idle = resident();
    let mut connected = None;
    let until = Arc::new(AtomicU64::new(u64::MAX));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(n);
    let endpoints = sut.endpoints();
    // Each subscriber a task of its own, as separate clients would be, so the harness works
    // through the receipts on all its threads.
    let subscriber = sut.subscriber();
    let subs: Vec<_> = (0..n)
        .map(|i| {
            let ep = endpoints[i % endpoints.len()].clone();
            let (streams, until, ready) = (streams.clone(), until.clone(), ready_tx.clone());
            tokio::spawn(subscriber.clone().subscribe(streams, ep, from, until, ready))
        })
        .collect();
    drop(ready_tx);
    // However the figure ends (a failed write, the time limit), no subscriber is left holding
    // its connection into the next part of the run.
    let subs_end = AbortOnDrop(subs.iter().map(|s| s.abort_handle()).collect());
    let subs = async {
        let mut arrivals = Vec::with_capacity(n);
        for s in subs {
            arrivals.push(s.await.context("a subscriber's task")?);
        }
        anyhow::Ok(arrivals)
    };
    let writer = async {
        for _ in 0..n {
            if tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await.ok().flatten().is_none() {
                bail!("{n} subscribers did not all connect within 60 s");
            }
        }
        connected = resident();
        let (_, leader) = sut.leader().await?;
        let mut sent = Vec::with_capacity(count);
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
        for i in 0..count {
            tick.tick().await;
            let t = Instant::now();
            let rev = sut.put(&client, &leader, i % KEYS, i as u64).await?;
            sent.push((rev, t));
        }
        let last = sent.last().map_or(0, |(r, _)| *r);
        until.store(last, Ordering::Relaxed);
        // One more change so every subscriber sees a revision at or past `until` and stops.
        sut.put(&client, &leader, 0, 0).await?;
        anyhow::Ok(sent)
    };
    // A failed writer ends the subscribers at once rather than after the time limit.
    let writer = async {
        let sent = writer.await;
        if sent.is_err() {
            subs_end.0.iter().for_each(tokio::task::AbortHandle::abort);
        }
        sent
    };
    let (arrivals, sent) = tokio::join!(tokio::time::timeout(Duration::from_secs(300), subs), writer);
    let sent = sent?;
    let arrivals = arrivals.context("subscribers did not finish within 300 s")??;
    let mut worst: std::collections::HashMap<u64, Instant> = std::collections::HashMap::new();
    let mut seen: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    for a in arrivals {
        for (rev, at) in a? {
            let w = worst.entry(rev).or_insert(at);
            *w = (*w).max(at);
            *seen.entry(rev).or_default() += 1;
        }
    }
    let mut missing = 0;
    let mut lat: Vec<Duration> = Vec::new();
    for (rev, t) in &sent {
        if seen.get(rev).copied().unwrap_or(0) < n {
            missing += n - seen.get(rev).copied().unwrap_or(0);
        }
        if let Some(at) = worst.get(rev) {
            lat.push(at.saturating_duration_since(*t));
        }
    }
    lat.sort();
    let per_subscriber = idle.zip(connected).map(|(i, c)| (c as f64 - i as f64) / n as f64);
    Ok((pct(&lat, 50.0), pct(&lat, 99.0), missing, per_subscriber))
}

/// Aborts its tasks when dropped.
struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.iter().for_each(tokio::task::AbortHandle::abort);
    }
}

/// One leader kill of the write failover figure.
struct Failover {
    /// Kill → first write sent after the kill acknowledged.
    total: Duration,
    /// Kill → a survivor's term went up (it started to campaign), as polled every 2 ms.
    campaign: Option<Duration>,
}

/// While 16 writers keep writing (to any member, retrying on errors), SIGKILL the leader;
/// measure until the first write *sent after the kill* is acknowledged, and split that time at
/// the first campaign: before it, the election timer ran (set by configuration); after it, the
/// system elected a leader and committed (its own machinery). Then restart the member and let it
/// catch up before the next repetition.
async fn failover_writes(sut: &mut Sut, reps: usize) -> anyhow::Result<Vec<Failover>> {
    let client = http(sut, Duration::from_secs(2));
    let poll = http(sut, Duration::from_millis(500));
    let mut out = Vec::new();
    for rep in 0..reps {
        let (leader, _) = sut.leader().await?;
        let term_before = sut.term(&poll, leader).await.context("the leader's term")?;
        let survivors: Vec<u64> = (1..=3).filter(|&m| m != leader).collect();
        let endpoints = sut.endpoints();
        let stop = Arc::new(AtomicBool::new(false));
        let killed_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
        let first_ack: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
        let sut_ref: &Sut = sut;
        let writers = (0..16).map(|w| {
            let (client, endpoints, stop, killed_at, first_ack) =
                (client.clone(), endpoints.clone(), stop.clone(), killed_at.clone(), first_ack.clone());
            async move {
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    let ep = &endpoints[i % endpoints.len()];
                    i += 1;
                    let sent = Instant::now();
                    let after_kill = killed_at.lock().unwrap().is_some_and(|k| sent >= k);
                    match sut_ref.put(&client, ep, w, i as u64).await {
                        Ok(_) if after_kill => {
                            let mut f = first_ack.lock().unwrap();
                            let now = Instant::now();
                            if f.is_none_or(|x| now < x) {
                                *f = Some(now);
                            }
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
            }
        });
        let writers = futures_util::future::join_all(writers);
        let measure = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            // The writers only read `sut`, so the SIGKILL goes by pid; the process is reaped below.
            let pid = sut_ref.pid(leader).context("the leader's pid")?;
            let kill_at = Instant::now();
            *killed_at.lock().unwrap() = Some(kill_at);
            // SAFETY: kill(2) on a child process this harness started.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            let deadline = kill_at + Duration::from_secs(60);
            // Both survivors at once; the time is when the poll that saw the new term was sent
            // (the term went up before the member read it, so this errs early by at most the
            // time between two polls, rather than late by a reply's delay).
            let campaign = async {
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    let terms = futures_util::future::join_all(survivors.iter().map(|&m| sut_ref.term(&poll, m))).await;
                    if terms.into_iter().flatten().any(|t| t > term_before) {
                        return Some(sent);
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                None
            };
            let ack = async {
                loop {
                    if let Some(f) = *first_ack.lock().unwrap() {
                        break Ok(f);
                    }
                    if Instant::now() > deadline {
                        break Err(anyhow::anyhow!("no write acknowledged within 60 s of the leader kill"));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            let (campaign, ack) = tokio::join!(campaign, ack);
            stop.store(true, Ordering::Relaxed);
            anyhow::Ok((kill_at, campaign, ack?))
        };
        let (measured, _) = tokio::join!(measure, writers);
        let (kill_at, campaign, first) = measured?;
        let f = Failover {
            total: first.saturating_duration_since(kill_at),
            campaign: campaign.map(|c| c.saturating_duration_since(kill_at)),
        };
        eprintln!(
            "  {}: failover {} (killed member {leader}): {:.0} ms, first campaign after {}",
            sut.name(),
            rep + 1,
            ms(f.total),
            f.campaign.map_or("(not seen)".into(), |c| format!("{:.0} ms", ms(c)))
        );
        out.push(f);
        sut.kill(leader); // reap the process
        sut.restart(leader)?;
        let rev = sut.revision(&client).await?;
        sut.wait_all_at(&client, rev).await?;
    }
    Ok(out)
}

/// Restarts every member in turn with a graceful stop (SIGTERM, as a rolling upgrade does) under
/// 16 closed-loop writers over all endpoints, and answers per restart the role the member had
/// and the longest time no write was acknowledged while it stopped (the write unavailability a
/// client sees). Each member is back and caught up before the next one stops.
async fn rolling_restart(sut: &mut Sut) -> anyhow::Result<Vec<(String, Duration)>> {
    let client = http(sut, Duration::from_secs(2));
    let mut out = Vec::new();
    for member in 1..=3u64 {
        let (leader, _) = sut.leader().await?;
        let role = if member == leader { "leader" } else { "follower" };
        let endpoints = sut.endpoints();
        let stop = Arc::new(AtomicBool::new(false));
        let acks: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
        let sut_ref: &Sut = sut;
        let writers = (0..16).map(|w| {
            let (client, endpoints, stop, acks) = (client.clone(), endpoints.clone(), stop.clone(), acks.clone());
            async move {
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    let ep = &endpoints[i % endpoints.len()];
                    i += 1;
                    match sut_ref.put(&client, ep, w, i as u64).await {
                        Ok(_) => acks.lock().unwrap().push(Instant::now()),
                        Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
                    }
                }
            }
        });
        let measure = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let stopped_at = Instant::now();
            sut_ref.signal_terminate(member);
            tokio::time::sleep(Duration::from_secs(3)).await;
            stop.store(true, Ordering::Relaxed);
            stopped_at
        };
        let (stopped_at, _) = tokio::join!(measure, futures_util::future::join_all(writers));
        // The longest stretch without an acknowledged write, from the stop on (the first
        // stretch runs from the SIGTERM to the first ack after it).
        let mut times: Vec<Instant> = acks.lock().unwrap().iter().copied().filter(|t| *t >= stopped_at).collect();
        times.sort();
        let mut gap = Duration::ZERO;
        let mut last = stopped_at;
        for t in &times {
            gap = gap.max(t.saturating_duration_since(last));
            last = *t;
        }
        if times.is_empty() {
            bail!("no write acknowledged within 3 s of the graceful stop of member {member}");
        }
        let exited = sut.reap_stopped(member, Duration::from_secs(10));
        eprintln!(
            "  {}: graceful restart of member {member} ({role}): longest write gap {:.1} ms{}",
            sut.name(),
            ms(gap),
            if exited { "" } else { " (it did not exit within 10 s and was killed)" }
        );
        out.push((role.to_string(), gap));
        sut.restart(member)?;
        let rev = sut.revision(&client).await?;
        sut.wait_all_at(&client, rev).await?;
    }
    Ok(out)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// GET `path` on `ep` as admin; `None` on any failure.
async fn get_json(client: &reqwest::Client, token: &str, url: &str) -> Option<serde_json::Value> {
    let r = client.get(url).bearer_auth(token).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json::<serde_json::Value>().await.ok()
}

/// Moves guest `mg` between h1 and h2; SIGKILLs the leader as soon as `transferring` is
/// committed, and measures until the next phase commits (the commit's own timestamp, stamped by
/// the new leader, against the wall clock at the kill).
async fn failover_migration(sut: &mut Sut, reps: usize) -> anyhow::Result<Vec<Duration>> {
    let client = http(sut, Duration::from_secs(2));
    let Sut::Switchyard(sw) = &*sut else { bail!("migrations are Switchyard's") };
    let (token, scheme) = (sw.token().to_string(), sw.scheme);
    let (_, ep) = sut.leader().await?;
    // The agents take part in every migration: let them apply what the earlier runs wrote first.
    settle(sut).await?;
    let body = json!({"name": "mg", "owner": "h1", "vcpus": 1, "memory_mib": 256});
    let _ = client.post(format!("{scheme}://{ep}/v1/guests")).bearer_auth(&token).json(&body).send().await?;
    let mut out = Vec::new();
    for rep in 0..reps {
        let (leader, ep) = sut.leader().await?;
        let mg = get_json(&client, &token, &format!("{scheme}://{ep}/v1/guests/mg")).await.context("read mg")?;
        let owner = mg["items"]["owner"].as_str().context("mg's owner")?.to_string();
        let to = if owner == "h1" { "h2" } else { "h1" };
        // Right after a member restart the request may be refused (a host not yet reported
        // reachable again, a leader change): retry with the same request id.
        let rid = format!("{:x}", now_ms() as u128 * 1000 + rep as u128);
        let deadline = Instant::now() + Duration::from_secs(60);
        let id = loop {
            let answer = match client
                .post(format!("{scheme}://{ep}/v1/migrations"))
                .bearer_auth(&token)
                .json(&json!({"guest": "mg", "target": to, "request_id": rid}))
                .send()
                .await
            {
                Ok(r) => r.json::<serde_json::Value>().await.unwrap_or_default(),
                Err(e) => json!({"error": e.to_string()}),
            };
            if let Some(id) = answer["first_revision"].as_u64() {
                break id;
            }
            if Instant::now() > deadline {
                bail!("the migration request was not accepted within 60 s: {answer}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let path = format!("/v1/migrations/{id}?stale=true");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let m = get_json(&client, &token, &format!("{scheme}://{ep}{path}")).await;
            if m.as_ref().and_then(|m| m["items"]["phase"].as_str()) == Some("transferring") {
                break;
            }
            if Instant::now() > deadline {
                bail!("migration {id} never reached transferring");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let kill_ms = now_ms();
        sut.kill(leader);
        let others: Vec<String> =
            sut.endpoints().into_iter().enumerate().filter(|(i, _)| *i as u64 + 1 != leader).map(|(_, e)| e).collect();
        let urls: Vec<String> = others.iter().map(|ep| format!("{scheme}://{ep}{path}")).collect();
        let measured = next_phase_after(&client, &token, &urls, kill_ms).await;
        // Bring the member back whatever happened, so later runs have three members.
        sut.restart(leader)?;
        let rev = sut.revision(&client).await?;
        sut.wait_all_at(&client, rev).await?;
        let d = measured.with_context(|| format!("migration {id}"))?;
        eprintln!(
            "  switchyard: migration failover {} (killed member {leader}): next phase after {:.0} ms",
            rep + 1,
            ms(d)
        );
        out.push(d);
    }
    Ok(out)
}

/// Switchyard's three agents share this machine (and its disk) with the coordinators, where in
/// production each runs on its own host: let them apply everything written so far before the
/// next measurement starts, so their catching up does not count against the coordinators.
async fn settle(sut: &Sut) -> anyhow::Result<()> {
    let Sut::Switchyard(sw) = sut else { return Ok(()) };
    let client = http(sut, Duration::from_secs(5));
    let (_, ep) = sut.leader().await?;
    let target = sut.revision(&client).await?;
    let t = Instant::now();
    agents_applied(&client, sw, &ep, target).await?;
    eprintln!("  switchyard: agents caught up to revision {target} in {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

/// Waits until the agents of h1..h3 report (every second) that they applied `target`.
async fn agents_applied(client: &reqwest::Client, sw: &Switchyard, ep: &str, target: u64) -> anyhow::Result<()> {
    let t = Instant::now();
    for h in ["h1", "h2", "h3"] {
        loop {
            let applied = get_json(client, sw.token(), &sw.url(ep, &format!("/v1/hosts/{h}")))
                .await
                .and_then(|v| v["items"]["sync"]["applied_revision"].as_u64());
            if applied.is_some_and(|a| a >= target) {
                break;
            }
            if t.elapsed() > Duration::from_secs(600) {
                bail!("agent {h} did not catch up to revision {target} within 600 s (at {applied:?})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Waits for the migration (read at any of `urls`) to commit its next phase after `kill_ms` (answering how
/// long after the kill that commit was stamped) and then to complete.
async fn next_phase_after(
    client: &reqwest::Client,
    token: &str,
    urls: &[String],
    kill_ms: u64,
) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut next = None;
    loop {
        for url in urls {
            let Some(m) = get_json(client, token, url).await else { continue };
            let history = m["items"]["history"].as_array().cloned().unwrap_or_default();
            if next.is_none() {
                next = history
                    .iter()
                    .find(|r| {
                        r["phase"].as_str() != Some("transferring") && r["at"].as_u64().is_some_and(|at| at >= kill_ms)
                    })
                    .and_then(|r| r["at"].as_u64());
            }
            if next.is_some() && m["items"]["phase"].as_str() == Some("completed") {
                return Ok(Duration::from_millis(next.unwrap_or(kill_ms).saturating_sub(kill_ms)));
            }
        }
        if Instant::now() > deadline {
            bail!("did not move on within 120 s of the leader kill (next phase at {next:?})");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writes `n` changes with 256 clients (the bulk-load rate), then reads them all with a
/// subscriber starting `n` revisions behind (the catch-up rate).
/// For Switchyard, also how long after the bulk write began every agent had applied it.
async fn catch_up(sut: &Sut, n: u64) -> anyhow::Result<(f64, f64, Option<Duration>)> {
    let client = http(sut, Duration::from_secs(10));
    let (_, ep) = sut.leader().await?;
    let started = Instant::now();
    bulk_write(sut, &client, &ep, n).await?;
    let load_rate = n as f64 / started.elapsed().as_secs_f64();
    let last = sut.revision(&client).await?;
    sut.wait_all_at(&client, last).await?;
    let agents = match sut {
        Sut::Switchyard(sw) => {
            agents_applied(&client, sw, &ep, last).await?;
            Some(started.elapsed())
        }
        Sut::Etcd(_) => None,
    };
    let from = last + 1 - n;
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    let streams = sut.client(reqwest::Client::builder());
    let started = Instant::now();
    let seen = sut.subscriber().subscribe(streams, ep, from, Arc::new(AtomicU64::new(last)), tx).await?;
    let rate = seen.len() as f64 / started.elapsed().as_secs_f64();
    if seen.len() as u64 != n {
        eprintln!("  {}: catch-up delivered {} of {n} events", sut.name(), seen.len());
    }
    Ok((load_rate, rate, agents))
}

/// Writes `n` changes of the load's keys with 256 closed-loop clients.
async fn bulk_write(sut: &Sut, client: &reqwest::Client, ep: &str, n: u64) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let writers = (0..256).map(|c| {
        let next = next.clone();
        async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                let mut tries = 0;
                while let Err(e) = sut.put(client, ep, c % KEYS, i).await {
                    tries += 1;
                    if tries > 20 {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    for r in futures_util::future::join_all(writers).await {
        r?;
    }
    Ok(())
}

/// Agents back after an outage: with the agents stopped, `n` changes are written; then the
/// agents start and this answers how long until all three applied them (each far behind, so
/// each jumps to the current state unless `jump_after_revisions` is above `n`).
async fn agents_return(sut: &mut Sut, n: u64) -> anyhow::Result<Duration> {
    sut.set_agents(false)?;
    let client = http(sut, Duration::from_secs(10));
    let (_, ep) = sut.leader().await?;
    bulk_write(sut, &client, &ep, n).await?;
    let last = sut.revision(&client).await?;
    sut.wait_all_at(&client, last).await?;
    let started = Instant::now();
    sut.set_agents(true)?;
    let Sut::Switchyard(sw) = &*sut else { bail!("agents are Switchyard's") };
    agents_applied(&client, sw, &ep, last).await?;
    Ok(started.elapsed())
}

/// Offline `log replay --digest` of synthetic histories (real events from the real state
/// machine, written as an export), timed as a process.
pub fn replay(args: &Args, dir: &Path, report: &mut Report) -> anyhow::Result<()> {
    let cli = cli_program()?;
    for &n in &args.replay_events {
        let file = dir.join(format!("replay-{n}.swylog"));
        synthetic_export(&file, Synthetic { hosts: 10, guests: 10_000, events: n })?;
        let t = Instant::now();
        let out = std::process::Command::new(&cli).args(["log", "replay", "--digest"]).arg(&file).output()?;
        let secs = t.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!("log replay failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        report.add(format!("offline `log replay` of {n} events"), "events/s", true, "switchyard", n as f64 / secs);
        if !args.keep_exports {
            let _ = std::fs::remove_file(&file);
        }
    }
    Ok(())
}

/// The shape of a synthetic history: `hosts` hosts (`h0`..), `guests` guests (`g0`.., spread
/// over the hosts), then guest changes round-robin until it holds `events` events.
#[derive(Clone, Copy)]
pub struct Synthetic {
    pub hosts: u64,
    pub guests: u64,
    pub events: u64,
}

/// Writes a synthetic history as an export: each command goes through the real state machine
/// (`apply`), so the events are exactly what a cluster would have committed.
pub fn synthetic_export(path: &Path, shape: Synthetic) -> anyhow::Result<()> {
    let t = Instant::now();
    let Synthetic { hosts, guests, events: n } = shape;
    let name = |s: String| Name::new(&s).expect("valid name");
    let mut state = ClusterState::default();
    let f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let header = ExportHeader {
        source: "switchyard-bench synthetic history".into(),
        cluster: None,
        first_revision: 1,
        last_revision: n,
        exported_at: Timestamp(now_ms()),
        format: switchyard_storage::export::EXPORT_FORMAT,
    };
    let mut w = ExportWriter::new(f, Format::Binary, &header)?;
    for i in 0..n {
        let command = if i < hosts {
            Command::RegisterHost(HostSpec {
                name: name(format!("h{i}")),
                address: format!("h{i}:7100"),
                capacity: Resources { vcpus: 65536, memory_mib: 1 << 30 },
                profile: CompatProfile { hardware_family: "ia64".into(), hypervisor_version: "hpvm-6.1".into() },
                labels: Default::default(),
            })
        } else if i < hosts + guests {
            let g = i - hosts;
            Command::CreateGuest {
                name: name(format!("g{g}")),
                spec: GuestSpec {
                    vcpus: 1,
                    memory_mib: 256,
                    disks: vec![format!("avio_stor:/dev/vg01/g{g}")],
                    networks: vec!["avio_lan:vswitch0".into()],
                    online_migration: true,
                    cluster_node: false,
                    package: None,
                    anti_affinity: None,
                },
                owner: name(format!("h{}", g % hosts)),
                run_state: RunState::Running,
            }
        } else {
            Command::ModifyGuest {
                name: name(format!("g{}", i % guests)),
                patch: GuestPatch { vcpus: Some(1 + (i % 8) as u32), ..Default::default() },
                expect_version: None,
            }
        };
        let p = Proposal { request_id: RequestId(i as u128 + 1), actor: "bench".into(), time: Timestamp(i), command };
        let (_, events) = apply(&mut state, &p, 1).map_err(|r| anyhow::anyhow!("synthetic history refused: {r}"))?;
        for e in &events {
            w.push(e)?;
        }
    }
    w.finish()?;
    let mib = std::fs::metadata(path).map_or(0, |m| m.len()) >> 20;
    eprintln!("  wrote {n} events ({mib} MiB) to {} in {:.1} s", path.display(), t.elapsed().as_secs_f64());
    Ok(())
}

/// SPEC §8's scale: a fresh cluster seeded by `log restore` with a history of `scale_events`
/// events (`scale_hosts` hosts, `scale_guests` guests, then guest changes). Measured on it:
/// the restore's rate, commits on top of the big history, resident memory of each coordinator,
/// a snapshot's build time and size, a killed follower's restart to serving, and a restart of
/// the whole cluster (every coordinator killed) to the first acknowledged write.
pub async fn scale(args: &Args, dir: &Path, timing: Timing, report: &mut Report) -> anyhow::Result<()> {
    let (hosts, guests, n) = (args.scale_hosts as u64, args.scale_guests.max(KEYS) as u64, args.scale_events);
    if n < hosts + guests {
        bail!("--scale-events {n} is fewer than the {hosts} hosts and {guests} guests it must create");
    }
    let file = dir.join(format!("scale-{n}.swylog"));
    synthetic_export(&file, Synthetic { hosts, guests, events: n })?;
    let shape = format!("{hosts} hosts, {guests} guests, {n} events");
    let how = args.scale_restore;
    let (sw, restored) = Switchyard::restored(&dir.join("scale"), timing, args.batch_max, &file, how).await?;
    if !args.keep_exports {
        let _ = std::fs::remove_file(&file);
    }
    let rate = n as f64 / ms(restored.took) * 1e3;
    match restored.seed {
        None => report.add(format!("scale: `log restore` of {shape}"), "events/s", true, "switchyard", rate),
        Some(seed) => {
            let (how, seeds) = match how {
                RestoreBy::SeedEach => {
                    ("a `log seed` per member, at once", "the 3 members' `log seed` (at once, 2 cores)")
                }
                _ => ("one `log seed` for the 3 members", "the 3 members' `log seed` (one read, tables hard-linked)"),
            };
            report.add(
                format!("scale: restore of {shape} ({how}, start, `log restore`)"),
                "events/s",
                true,
                "switchyard",
                rate,
            );
            report.add(format!("scale: {seeds}"), "s", false, "switchyard", seed.as_secs_f64());
        }
    }
    let mut sut = Sut::Switchyard(Box::new(sw));
    let client = http(&sut, Duration::from_secs(600));
    let rev = sut.revision(&client).await?;
    sut.wait_all_at(&client, rev).await?;
    report.add("scale: events in the history", "events", true, "switchyard", rev as f64);

    // Commits on top of the big history (g0..g999 are the load's keys here too).
    let run = throughput(&sut, 64, args.seconds).await?;
    report.add("scale: commit throughput, 64 clients", "ops/s", true, "switchyard", run.rate);
    report.add("scale: commit latency p99, 64 clients", "ms", false, "switchyard", ms(run.p99));
    let rev = sut.revision(&client).await?;
    sut.wait_all_at(&client, rev).await?;
    let (leader, ep) = sut.leader().await?;
    for m in 1..=3u64 {
        if let Some(kib) = sut.pid(m).and_then(rss_kib) {
            let who = if m == leader { " (leader)" } else { "" };
            report.add(
                format!("scale: resident memory, coordinator {m}{who}"),
                "MiB",
                false,
                "switchyard",
                kib as f64 / 1024.0,
            );
        }
    }

    let Sut::Switchyard(sw) = &sut else { unreachable!() };
    let t = Instant::now();
    let r = client.post(sw.url(&ep, "/v1/node/snapshot")).bearer_auth(sw.token()).send().await?;
    let answer: serde_json::Value = r.json().await?;
    let build_ms = answer["build_ms"].as_f64().with_context(|| format!("snapshot answer: {answer}"))?;
    eprintln!("  snapshot requested and built in {:.0} ms", ms(t.elapsed()));
    report.add("scale: snapshot build time (leader)", "ms", false, "switchyard", build_ms);
    let snap_dir = sw.cluster.data_dir(leader).join("snapshots");
    let bytes: u64 = std::fs::read_dir(&snap_dir)
        .with_context(|| format!("list {}", snap_dir.display()))?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0);
    report.add("scale: snapshot size", "MiB", false, "switchyard", bytes as f64 / (1 << 20) as f64);

    // A follower killed and started again: until its API answers, and until it serves the
    // latest revision.
    let follower = (1..=3u64).find(|m| *m != leader).expect("a follower");
    let fep = sw.cluster.endpoint(follower);
    let rev = sut.revision(&client).await?;
    sut.kill(follower);
    let t = Instant::now();
    sut.restart(follower)?;
    let Sut::Switchyard(sw) = &sut else { unreachable!() };
    let quick = http(&sut, Duration::from_millis(500));
    let mut answered = None;
    loop {
        match sw.status(&quick, &fep).await {
            Some(st) if st.revision >= rev => break,
            Some(_) if answered.is_none() => answered = Some(t.elapsed()),
            _ => {}
        }
        if t.elapsed() > Duration::from_secs(300) {
            bail!("coordinator {follower} did not serve revision {rev} within 300 s of its restart");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let serving = t.elapsed();
    if let Some(a) = answered {
        report.add("scale: follower restart → API answers", "ms", false, "switchyard", ms(a));
    }
    report.add("scale: follower restart → serving the latest revision", "ms", false, "switchyard", ms(serving));

    // The whole cluster killed at once and started again: until a write is acknowledged.
    for m in 1..=3u64 {
        sut.kill(m);
    }
    let t = Instant::now();
    for m in 1..=3u64 {
        sut.restart(m)?;
    }
    let mut seq = 0u64;
    loop {
        seq += 1;
        let ep = sut.endpoints()[(seq % 3) as usize].clone();
        if sut.put(&quick, &ep, 0, seq).await.is_ok() {
            break;
        }
        if t.elapsed() > Duration::from_secs(300) {
            bail!("no write acknowledged within 300 s of restarting every coordinator");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    report.add("scale: whole-cluster restart → first acknowledged write", "ms", false, "switchyard", ms(t.elapsed()));
    Ok(())
}

/// Resident set size of a process, from /proc.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}
