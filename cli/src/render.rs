//! How the CLI shows things: tables for people (times as RFC 3339 in UTC, durations as people
//! read them), JSON for tools (`-o json`: JSON only, nothing else on standard output). One home
//! for every noun's table, shared by the verbs, `log` (recovery) and `dev`.

use serde::Serialize;
use switchyard_protocol::api::*;
use switchyard_protocol::{Package, Timestamp};

use crate::timefmt;
pub use switchyard_protocol::text::{describe, node_list};

/// Now, by this machine's clock (only for "disabled for 2h" style ages).
pub fn now() -> Timestamp {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    Timestamp(since.map(|d| d.as_millis() as u64).unwrap_or(0))
}

/// What a write did, in a line (or the answer as JSON).
pub fn written(json: bool, r: &WriteResponse) -> String {
    if json {
        to_json(r)
    } else if r.duplicate {
        format!("already applied at revision {} (request {})\n", r.first_revision, r.request_id)
    } else if r.first_revision == r.last_revision {
        format!("ok, revision {}\n", r.first_revision)
    } else {
        format!("ok, revisions {}-{}\n", r.first_revision, r.last_revision)
    }
}

/// Pretty JSON with a final newline.
pub fn to_json<T: Serialize>(v: &T) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("API types serialise to JSON");
    s.push('\n');
    s
}

/// Renders rows as aligned columns.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, cell) in r.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s =
            cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect::<Vec<_>>().join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

pub fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

pub fn cluster_table(s: &ClusterStatus) -> String {
    let rows = s
        .members
        .iter()
        .map(|m| {
            let st = m.status.as_ref();
            vec![
                m.id.to_string(),
                st.map_or("unreachable".into(), |s| s.role.clone()),
                if m.voter { "voter".into() } else { "learner".into() },
                opt(st.map(|s| s.term)),
                opt(st.and_then(|s| s.last_log_index)),
                opt(st.and_then(|s| s.applied_index)),
                opt(m.lag),
                m.api_addr.clone(),
            ]
        })
        .collect();
    table(&["ID", "ROLE", "MEMBER", "TERM", "LAST LOG", "APPLIED", "LAG", "API"], rows)
}

pub fn sync_text(s: &SyncStatus) -> String {
    match s {
        SyncStatus::InSync => "in sync".into(),
        SyncStatus::Lagging { behind } => format!("lagging by {behind}"),
        SyncStatus::Diverged => "DIVERGED".into(),
        SyncStatus::Silent => "silent".into(),
        SyncStatus::Unknown => "no report".into(),
    }
}

/// A host's sync status, and DIVERGED with a count when its hypervisor differs from the log.
pub fn host_sync_text(s: &HostSync) -> String {
    let drifted = s.hypervisor.as_ref().map_or(0, |h| h.drift_total);
    match (&s.status, drifted) {
        (_, 0) => sync_text(&s.status),
        (SyncStatus::InSync | SyncStatus::Diverged, n) => {
            format!("DIVERGED ({n} guest{})", if n == 1 { "" } else { "s" })
        }
        (other, n) => format!("{}, DIVERGED ({n})", sync_text(other)),
    }
}

/// `host show`: the host's row, then what its hypervisor holds against the log.
pub fn host_detail(h: &HostView) -> String {
    let mut out = hosts_table(std::slice::from_ref(h));
    if !h.host.spec.labels.is_empty() {
        let labels: Vec<String> = h.host.spec.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!("\nlabels: {}", labels.join(", ")));
    }
    if let Some(d) = &h.drain {
        out.push_str(&format!(
            "\ndrain: started at revision {} by {}, {} guest(s) left, {} moving, at most {} at a time{}",
            d.drain.started,
            d.drain.actor,
            d.guests_left,
            d.moving,
            d.drain.max_parallel,
            if d.drain.allow_offline { ", offline moves allowed" } else { "" }
        ));
    }
    let Some(hv) = h.sync.as_ref().and_then(|s| s.hypervisor.as_ref()) else { return out };
    if hv.drift.is_empty() && hv.pending.is_empty() {
        out.push_str("\nhypervisor: matches the log");
    }
    if !hv.drift.is_empty() {
        out.push_str(&format!("\nhypervisor differs from the log ({} guests):\n", hv.drift_total));
        let rows = hv
            .drift
            .iter()
            .map(|d| vec![d.guest.to_string(), d.drift.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("; ")])
            .collect();
        out.push_str(&table(&["GUEST", "DIFFERENCE"], rows));
    }
    if !hv.pending.is_empty() {
        out.push_str(&format!("\npending until the next start ({} guests):\n", hv.pending_total));
        let rows = hv.pending.iter().map(|p| vec![p.guest.to_string(), p.fields.join(", ")]).collect();
        out.push_str(&table(&["GUEST", "CHANGED"], rows));
    }
    out.push_str(&format!("\nrepairs since the agent started: {}", hv.repairs));
    out
}

pub fn hosts_table(hosts: &[HostView]) -> String {
    let rows = hosts
        .iter()
        .map(|h| {
            let s = &h.host.spec;
            vec![
                s.name.to_string(),
                h.state.to_string(),
                s.capacity.vcpus.to_string(),
                s.capacity.memory_mib.to_string(),
                s.profile.to_string(),
                s.address.clone(),
                h.host.version.to_string(),
                h.sync.as_ref().map_or("-".into(), host_sync_text),
            ]
        })
        .collect();
    table(&["NAME", "STATE", "VCPUS", "MEMORY MIB", "PROFILE", "ADDRESS", "VERSION", "SYNC"], rows)
}

pub fn guests_table(guests: &[GuestView]) -> String {
    let rows = guests
        .iter()
        .map(|g| {
            let s = &g.guest.spec;
            let switching = g.package.as_ref().map_or("-".to_string(), |p| {
                if p.switching_enabled {
                    "enabled".into()
                } else {
                    "DISABLED".into()
                }
            });
            vec![
                g.guest.name.to_string(),
                g.guest.owner.to_string(),
                format!("{:?}", g.guest.run_state).to_lowercase(),
                s.vcpus.to_string(),
                s.memory_mib.to_string(),
                if s.online_migration { "enabled".into() } else { "disabled".into() },
                s.cluster_node.to_string(),
                opt(s.package.as_ref()),
                switching,
                g.migration.as_ref().map_or("-".into(), |m| format!("{} {}", m.id, m.phase)),
                g.guest.version.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "OWNER",
            "RUN",
            "VCPUS",
            "MEMORY MIB",
            "ONLINE MIGRATION",
            "CLUSTER NODE",
            "PACKAGE",
            "SWITCHING",
            "MIGRATION",
            "VERSION",
        ],
        rows,
    )
}

pub fn packages_table(pkgs: &[Package]) -> String {
    let now = now();
    let rows = pkgs
        .iter()
        .map(|p| {
            let c = &p.switching_changed;
            vec![
                p.name.to_string(),
                p.guest.to_string(),
                if p.switching_enabled {
                    "enabled".into()
                } else {
                    format!("DISABLED for {}", timefmt::duration(now.0.saturating_sub(c.at.0)))
                },
                if p.disabled_nodes.is_empty() {
                    "-".into()
                } else {
                    p.disabled_nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",")
                },
                format!("{} rev {} by {}", timefmt::format(c.at), c.revision, c.actor),
                opt(c.migration),
                opt(c.reason.as_ref()),
            ]
        })
        .collect();
    table(&["PACKAGE", "GUEST", "SWITCHING", "NODES DISABLED", "CHANGED", "MIGRATION", "REASON"], rows)
}

pub fn migrations_table(page: &MigrationPage) -> String {
    let rows = page
        .migrations
        .iter()
        .map(|m| {
            let started = m.history.first().map_or(0, |r| r.at.0);
            let took = m.current().at.0.saturating_sub(started);
            vec![
                m.id.to_string(),
                m.guest.to_string(),
                m.source.to_string(),
                m.target.to_string(),
                m.kind.to_string(),
                m.phase.to_string(),
                timefmt::format(Timestamp(started)),
                if m.phase.is_terminal() {
                    timefmt::duration(took)
                } else {
                    format!("{} so far", timefmt::duration(took))
                },
                opt(m.freeze_time_ms.map(timefmt::duration)),
                m.requested_by.clone(),
                opt(m.error.as_ref()),
            ]
        })
        .collect();
    let mut out =
        table(&["ID", "GUEST", "FROM", "TO", "KIND", "PHASE", "REQUESTED", "TOOK", "FREEZE", "BY", "ERROR"], rows);
    out.push_str(&more(page.next_after.map(|m| m.0.to_string())));
    out
}

/// `migration show`: the record, the transfer's figures when the hypervisor gave them, and
/// every phase with its time.
pub fn migration_detail(d: &MigrationDetail) -> String {
    let m = &d.migration;
    let mut s = format!(
        "migration {}: guest {} from {} to {} ({})\nrequested by {}{}\nphase {}{}\n",
        m.id,
        m.guest,
        m.source,
        m.target,
        m.kind,
        m.requested_by,
        m.reason.as_ref().map(|r| format!(", reason: {r}")).unwrap_or_default(),
        m.phase,
        m.error.as_ref().map(|e| format!(", error: {e}")).unwrap_or_default(),
    );
    if let Some(p) = &m.package {
        s.push_str(&format!(
            "package {p}, switching before: {}\n",
            opt(m.switching_before.map(|b| if b { "enabled" } else { "disabled" }))
        ));
    }
    if let Some(f) = m.freeze_time_ms {
        s.push_str(&format!("freeze time {}\n", timefmt::duration(f)));
    }
    if let Some(r) = &d.resolution {
        s.push_str(&format!("resolved as {} by {} at {}: {}\n", r.outcome, r.by, timefmt::format(r.at), r.reason));
    }
    if let Some(t) = &d.transfer {
        s.push_str(&format!(
            "transfer {} in total, {} sent\n",
            timefmt::duration(t.total_time_ms),
            switchyard_protocol::text::bytes(t.transferred_bytes)
        ));
    }
    let rows = m
        .history
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let lasted = m.history.get(i + 1).map(|n| timefmt::duration(n.at.0.saturating_sub(r.at.0)));
            vec![
                r.phase.to_string(),
                timefmt::format(r.at),
                r.revision.to_string(),
                r.term.to_string(),
                lasted.unwrap_or_else(|| if r.phase.is_terminal() { "-".into() } else { "(current)".into() }),
            ]
        })
        .collect();
    s.push('\n');
    s.push_str(&table(&["PHASE", "ENTERED", "REVISION", "TERM", "LASTED"], rows));
    s
}

/// When a package's switching is disabled: since when, for how long, by whom and why.
pub fn unprotected(p: &Package, now: Timestamp) -> Option<String> {
    if p.switching_enabled {
        return None;
    }
    let c = &p.switching_changed;
    let by = c.migration.map(|m| format!("migration {m}")).unwrap_or_else(|| c.actor.clone());
    Some(format!(
        "switching DISABLED since {} (for {}) by {by}{}",
        timefmt::format(c.at),
        timefmt::duration(now.0.saturating_sub(c.at.0)),
        c.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()
    ))
}

/// The footer of a page that has more: how to ask for the next one.
pub fn more(next_after: Option<String>) -> String {
    next_after.map(|n| format!("(more: --after {n})\n")).unwrap_or_default()
}

/// The header of the `events` table.
pub const EVENTS_HEADER: &str = "REV  TIME  ACTOR  EVENT";

/// One line of the `events` table.
pub fn event_line(e: &switchyard_protocol::Event) -> String {
    format!("{}  {}  {}  {}", e.revision, timefmt::format(e.time), e.actor, describe(&e.payload))
}
