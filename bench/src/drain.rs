//! The `drain` part: how well a drain keeps its concurrency limit busy. Three coordinators and
//! three agents on the simulated hypervisor, whose transfer of a guest takes a fixed time; `N`
//! guests on h1, drained to h2 and h3 with `--drain-parallel` migrations at once (each target
//! takes half: the cluster's `max_in_flight_per_target` is set to match).
//!
//! Two ideals are printed beside the measured time, from the request to the `DrainEnded` event
//! a subscriber receives:
//! - `⌈N / p⌉ ×` one migration alone (median of a few, measured first in the same cluster): what
//!   a drain would take if it never left a slot idle. The ratio is the drain's own efficiency;
//!   the goal is ≥ 90 %.
//! - `⌈N / p⌉ ×` the transfer time alone: what it would take if the phases around a transfer
//!   (switching disabled and restored, the owner switch, the agents' reports) cost nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use switchyard_client::EventQuery;
use switchyard_protocol::api::{CreateGuestRequest, DrainRequest, ModifyHostRequest, StreamItem};
use switchyard_protocol::{DrainOutcome, EventPayload, GuestSpec, Name};
use switchyard_testkit::local;

use crate::sut::Timing;
use crate::vm::timed_migration;
use crate::{Args, Report};

fn n(s: &str) -> Name {
    Name::new(s).expect("a valid name")
}

fn guest(name: &str, owner: &str) -> CreateGuestRequest {
    CreateGuestRequest::new(n(name), n(owner), GuestSpec { memory_mib: 256, ..crate::vm::spec() })
}

pub async fn drain(args: &Args, dir: &Path, timing: Timing, report: &mut Report) -> anyhow::Result<()> {
    let (guests, p, transfer_ms) = (args.drain_guests, args.drain_parallel.max(1), args.drain_transfer_ms);
    eprintln!("== drain of {guests} guests, {p} at a time, simulated transfers of {transfer_ms} ms");
    let mut settings = crate::sut::settings(timing, args.batch_max, transfer_ms);
    settings.migration.drain_max_parallel = p;
    settings.migration.max_in_flight_per_target = p.div_ceil(2);
    settings.migration.max_in_flight = p.max(settings.migration.max_in_flight);
    let mut cluster = local::open(&dir.join("drain"), 0, settings)?;
    let result = async {
        local::start(&mut cluster).await?;
        cluster.start_agents()?;
        let admin = cluster.admin(Duration::from_secs(10)).retrying_writes(Duration::from_secs(60));
        // Room for every guest on each host.
        for h in ["h1", "h2", "h3"] {
            let more = ModifyHostRequest { vcpus: Some(guests as u32 + 64), ..Default::default() };
            admin.modify_host(&n(h), &more).await.with_context(|| format!("grow {h}"))?;
        }
        // One migration alone, a few times, back and forth between h2 and h3.
        admin.create_guest(&guest("solo", "h2")).await.context("create the solo guest")?;
        let mut alone = Vec::new();
        for rep in 0..5 {
            let to = if rep % 2 == 0 { "h3" } else { "h2" };
            alone.push(timed_migration(&admin, &n("solo"), to).await?);
        }
        alone.sort();
        let one = alone[alone.len() / 2];
        admin.remove_guest(&n("solo"), &Default::default()).await.context("remove the solo guest")?;

        for i in 0..guests {
            admin.create_guest(&guest(&format!("d{i:03}"), "h1")).await.context("create a guest")?;
        }
        let head = admin.host(&n("h1")).await?.revision;
        let started = Instant::now();
        admin.drain_host(&n("h1"), &DrainRequest::default()).await.context("request the drain")?;
        let q = EventQuery { from: head + 1, follow: true, ..Default::default() };
        let mut ended = None;
        admin
            .events(&q, |item| {
                if let StreamItem::Event(e) = item {
                    if let EventPayload::DrainEnded { host, outcome, reason, .. } = &e.payload {
                        if host.as_str() == "h1" {
                            ended = Some((*outcome, reason.clone(), started.elapsed()));
                            return false;
                        }
                    }
                }
                true
            })
            .await?;
        match ended {
            Some((DrainOutcome::Completed, _, took)) => anyhow::Ok((one, took)),
            Some((outcome, reason, _)) => bail!("the drain ended {outcome:?}: {reason}"),
            None => bail!("the event stream ended before the drain did"),
        }
    }
    .await;
    cluster.stop_all();
    let (one, took) = result?;

    let rounds = guests.div_ceil(p as usize) as f64;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let ideal = rounds * ms(one);
    let transfers = rounds * transfer_ms as f64;
    let efficiency = 100.0 * ideal / ms(took);
    eprintln!(
        "drain: {:.1} s; one migration alone {:.0} ms → ideal {:.1} s ({efficiency:.1} %); transfers alone {:.1} s ({:.1} %)",
        took.as_secs_f64(),
        ms(one),
        ideal / 1000.0,
        transfers / 1000.0,
        100.0 * transfers / ms(took)
    );
    let figure = format!("drain of {guests} guests, {p} at a time: efficiency against the ideal");
    report.add(&figure, "%", true, "switchyard", efficiency);
    report.note(
        &figure,
        format!(
            "{:.1} s from the request to DrainEnded; ideal ⌈{guests}/{p}⌉ × one migration alone ({:.0} ms, median of 5) \
             = {:.1} s; against the {transfer_ms} ms transfers alone ({:.1} s): {:.1} %",
            took.as_secs_f64(),
            ms(one),
            ideal / 1000.0,
            transfers / 1000.0,
            100.0 * transfers / ms(took)
        ),
    );
    Ok(())
}
