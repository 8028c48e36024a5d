//! `switchyard ha status|history`: host failures and failovers.

use std::collections::BTreeMap;

use clap::Subcommand;
use switchyard_client::EventQuery;
use switchyard_protocol::api::StreamItem;
use switchyard_protocol::{EventPayload, Name, Timestamp};

use crate::render::to_json;
use crate::{timefmt, Ctx, Out};

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Failed hosts, failovers under way, and the guests of failed hosts left down with why.
    Status,
    /// Every failover in the history: when the host was lost, where the guest went, when it ran
    /// again (or why not).
    History {
        /// Only failovers of this guest.
        #[arg(long, value_parser = crate::name)]
        guest: Option<Name>,
    },
}

pub async fn run(ctx: &Ctx, v: Verb) -> Out {
    match v {
        Verb::Status => status(ctx).await,
        Verb::History { guest } => history(ctx, guest).await,
    }
}

async fn status(ctx: &Ctx) -> Out {
    let r = ctx.client.ha_status().await?;
    if ctx.json {
        return Ok(to_json(&r));
    }
    let s = &r.items;
    let mut out = String::new();
    if s.failed_hosts.is_empty() {
        out.push_str("failed hosts: none\n");
    } else {
        out.push_str("failed hosts:\n");
        for h in &s.failed_hosts {
            out.push_str(&format!(
                "  {}  since {} (revision {}): {}\n",
                h.host,
                timefmt::format(h.failure.at),
                h.failure.revision,
                h.failure.evidence
            ));
        }
    }
    if !s.failovers.is_empty() {
        out.push_str("failovers under way:\n");
        for f in &s.failovers {
            let tried: Vec<String> = f.tried.iter().map(|(h, why)| format!("{h} ({why})")).collect();
            let waiting = match (&f.attempt_failed, f.released) {
                (Some(why), false) => {
                    format!("; attempt ended ({why}), waiting for {} to confirm no copy runs there", f.target)
                }
                (Some(why), true) => format!("; attempt ended ({why}), next node being chosen"),
                (None, _) => String::new(),
            };
            out.push_str(&format!(
                "  {}  from {} to {} since {}{}{waiting}\n",
                f.guest,
                f.failed_host,
                f.target,
                timefmt::format(f.started_at),
                if tried.is_empty() { String::new() } else { format!("; tried {}", tried.join(", ")) }
            ));
        }
    }
    if s.down.is_empty() {
        out.push_str("guests left down: none\n");
    } else {
        out.push_str("guests left down:\n");
        for d in &s.down {
            out.push_str(&format!("  {}  on {}: {}\n", d.guest, d.host, d.why));
        }
    }
    Ok(out)
}

/// One failover as the history tells it.
#[derive(Debug, Default, serde::Serialize)]
struct Row {
    guest: String,
    failed_host: String,
    host_lost_at: Option<Timestamp>,
    started_at: Option<Timestamp>,
    attempts: Vec<String>,
    ran_again_on: Option<String>,
    ran_again_at: Option<Timestamp>,
    failed: Option<String>,
}

async fn history(ctx: &Ctx, guest: Option<Name>) -> Out {
    let q = EventQuery { from: 1, follow: false, guest: None, host: None, kind: Some("ha".into()), cluster: None };
    let mut lost: BTreeMap<String, Timestamp> = BTreeMap::new();
    let mut open: BTreeMap<String, Row> = BTreeMap::new();
    let mut rows: Vec<Row> = Vec::new();
    ctx.client
        .events(&q, |item| {
            let StreamItem::Event(e) = item else { return true };
            match &e.payload {
                EventPayload::HostFailed { host, .. } => {
                    lost.insert(host.to_string(), e.time);
                }
                EventPayload::FailoverStarted { guest, failed_host, to, .. } => {
                    let row = open.entry(guest.to_string()).or_insert_with(|| Row {
                        guest: guest.to_string(),
                        failed_host: failed_host.to_string(),
                        host_lost_at: lost.get(failed_host.as_str()).copied(),
                        started_at: Some(e.time),
                        ..Row::default()
                    });
                    row.attempts.push(to.to_string());
                }
                EventPayload::FailoverAttemptFailed { guest, host, reason, .. } => {
                    if let Some(row) = open.get_mut(guest.as_str()) {
                        if let Some(last) = row.attempts.last_mut() {
                            *last = format!("{host} (failed: {reason})");
                        }
                    }
                }
                EventPayload::FailoverCompleted { guest, host } => {
                    if let Some(mut row) = open.remove(guest.as_str()) {
                        row.ran_again_on = Some(host.to_string());
                        row.ran_again_at = Some(e.time);
                        rows.push(row);
                    }
                }
                EventPayload::FailoverFailed { guest, reason } => {
                    if let Some(mut row) = open.remove(guest.as_str()) {
                        row.failed = Some(reason.clone());
                        rows.push(row);
                    }
                }
                _ => {}
            }
            true
        })
        .await?;
    rows.extend(open.into_values());
    if let Some(g) = &guest {
        rows.retain(|r| r.guest == g.as_str());
    }
    if ctx.json {
        return Ok(to_json(&rows));
    }
    let mut out = String::from("GUEST  HOST LOST  LOST AT  RAN AGAIN ON  AFTER  ATTEMPTS\n");
    for r in &rows {
        let after = match (r.host_lost_at, r.ran_again_at) {
            (Some(a), Some(b)) => timefmt::duration(b.0.saturating_sub(a.0)),
            _ => "-".into(),
        };
        let outcome = match (&r.ran_again_on, &r.failed) {
            (Some(h), _) => h.clone(),
            (None, Some(why)) => format!("nowhere ({why})"),
            (None, None) => "(under way)".into(),
        };
        out.push_str(&format!(
            "{}  {}  {}  {}  {}  {}\n",
            r.guest,
            r.failed_host,
            r.host_lost_at.map_or("-".into(), timefmt::format),
            outcome,
            after,
            r.attempts.join(" -> ")
        ));
    }
    Ok(out)
}
