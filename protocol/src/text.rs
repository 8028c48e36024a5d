//! How the log's contents read for people, shared by the CLI and the console: one line per
//! event, sizes in binary units. Times and durations are in [`crate::timefmt`].

use crate::event::EventPayload;
use crate::timefmt;

/// One line about an event: the CLI's `events` table and the console's event tail.
pub fn describe(p: &EventPayload) -> String {
    match p {
        EventPayload::ClusterCreated { cluster, restored_from: None } => format!("cluster {cluster} created"),
        EventPayload::ClusterCreated { cluster, restored_from: Some(from) } => format!(
            "cluster {cluster} created from the export of cluster {} through revision {}",
            from.cluster.as_ref().map_or("(no id)".into(), |c| c.to_string()),
            from.through_revision
        ),
        EventPayload::HostRegistered { host } => format!("host {} registered", host.spec.name),
        EventPayload::HostModified { host } => format!(
            "host {} modified: {} at {}, {} (version {})",
            host.spec.name, host.spec.capacity, host.spec.address, host.spec.profile, host.version
        ),
        EventPayload::HostRemoved { host } => format!("host {host} removed"),
        EventPayload::DrainStarted { drain } => format!(
            "host {} drain started by {} ({} at a time{})",
            drain.host,
            drain.actor,
            drain.max_parallel,
            if drain.allow_offline { ", offline moves allowed" } else { "" }
        ),
        EventPayload::DrainEnded { host, outcome, reason, blocked } => {
            let names: Vec<&str> = blocked.iter().map(|b| b.guest.as_str()).collect();
            let left = if names.is_empty() { String::new() } else { format!("; not moved: {}", names.join(", ")) };
            format!("host {host} drain {outcome}: {reason}{left}")
        }
        EventPayload::HostMaintenanceChanged { host, maintenance } => {
            format!("host {host} maintenance {}", if *maintenance { "on" } else { "off" })
        }
        EventPayload::HostReachabilityChanged { host, reachable } => {
            format!("host {host} {}", if *reachable { "reachable" } else { "unreachable" })
        }
        EventPayload::GuestCreated { guest } => format!("guest {} created on {}", guest.name, guest.owner),
        EventPayload::GuestModified { guest } => format!("guest {} modified (version {})", guest.name, guest.version),
        EventPayload::GuestRemoved { guest } => format!("guest {guest} removed"),
        EventPayload::PackageSwitchingChanged { package, node, enabled, .. } => format!(
            "package {package} switching {}{}",
            if *enabled { "enabled" } else { "disabled" },
            node.as_ref().map(|n| format!(" on node {n}")).unwrap_or_default()
        ),
        EventPayload::MigrationRequested { migration: m } => {
            format!("migration {} of {} requested: {} -> {} ({})", m.id, m.guest, m.source, m.target, m.kind)
        }
        EventPayload::MigrationPhaseChanged { id, guest, phase, .. } => format!("migration {id} of {guest}: {phase}"),
        EventPayload::GuestOwnerChanged { guest, from, to, .. } => {
            format!("guest {guest} now owned by {to} (was {from})")
        }
        EventPayload::GuestRepaired { guest, host, action, reason } => {
            format!("guest {guest} repaired on {host}: {action} ({reason})")
        }
        EventPayload::MigrationTransferStats { id, guest, stats } => format!(
            "migration {id} of {guest}: transferred {} in {}",
            bytes(stats.transferred_bytes),
            timefmt::duration(stats.total_time_ms)
        ),
        EventPayload::HostJoined { host } => format!("host {host} joined failure detection"),
        EventPayload::HostFailed { host, evidence } => format!("host {host} FAILED: {evidence}"),
        EventPayload::HostRecovered { host } => format!("host {host} recovered (eligible again)"),
        EventPayload::FailoverStarted { guest, failed_host, from, to, reason, .. } => {
            let after = if from == failed_host { String::new() } else { format!(" after {from}'s attempt") };
            format!("failover of {guest} (host {failed_host} failed){after}: starting on {to}: {reason}")
        }
        EventPayload::FailoverCompleted { guest, host } => format!("failover of {guest}: runs on {host}"),
        EventPayload::FailoverAttemptFailed { guest, host, reason, .. } => {
            format!("failover of {guest}: attempt on {host} failed: {reason}")
        }
        EventPayload::FailoverAttemptReleased { guest, host } => {
            format!("failover of {guest}: {host} confirmed no copy runs there")
        }
        EventPayload::FailoverFailed { guest, reason } => format!("failover of {guest} FAILED, left down: {reason}"),
        EventPayload::PackageModified { package, nodes, failover_policy, failback_policy, .. } => format!(
            "package {package}: nodes {}, failover {failover_policy}, failback {failback_policy}",
            node_list(nodes)
        ),
        EventPayload::MigrationResolved { id, guest, outcome, reason } => {
            format!("migration {id} of {guest} resolved by an operator as {outcome}: {reason}")
        }
        EventPayload::MigrationTargetChecked { id, guest, host, runs_there: true } => {
            format!("migration {id} of {guest} ended with the guest running on its target {host}: it goes back")
        }
        EventPayload::MigrationTargetChecked { id, guest, host, runs_there: false } => {
            format!("migration {id} of {guest} ended with no copy on its target {host}: the source may resume it")
        }
    }
}

/// A byte count in the largest binary unit that keeps it at least 1.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A package's node list as operators write it.
pub fn node_list(nodes: &[crate::Name]) -> String {
    if nodes.is_empty() {
        "(every host, by name)".into()
    } else {
        nodes.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(",")
    }
}
