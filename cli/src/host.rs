//! `switchyard host register|list|show|modify|remove|maintenance|drain|undrain|activate`.

use clap::Subcommand;
use std::time::Duration;

use switchyard_client::EventQuery;
use switchyard_protocol::api::StreamItem;
use switchyard_protocol::api::{
    DrainRequest, HostQuery, MaintenanceRequest, ModifyHostRequest, RegisterHostRequest, RemoveParams, UndrainRequest,
};
use switchyard_protocol::{DrainOutcome, EventPayload};
use switchyard_protocol::{HostState, Name};

use crate::render::{host_detail, hosts_table, more, to_json};
use crate::{name, CliError, Ctx, Out, WriteOpts};

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Register a VM host (a cluster node that runs guests).
    Register {
        /// The host's name, as its agent's token is bound to it.
        #[arg(value_parser = name)]
        name: Name,
        /// Where the host's hypervisor is reached for live migrations (host:port).
        #[arg(long)]
        address: String,
        /// vCPUs guests may use on this host.
        #[arg(long)]
        vcpus: u32,
        /// Memory guests may use on this host, in MiB.
        #[arg(long)]
        memory_mib: u64,
        /// Hardware family (an online move needs the same on both ends), e.g. ia64.
        #[arg(long)]
        hardware_family: String,
        /// Hypervisor version (an online move needs the same on both ends), e.g. hpvm-6.1.
        #[arg(long)]
        hypervisor_version: String,
        /// A label KEY=VALUE (e.g. rack=r12), what anti-affinity groups spread by; repeat for
        /// several.
        #[arg(long = "label", value_parser = label)]
        labels: Vec<(Name, Name)>,
        #[command(flatten)]
        write: WriteOpts,
    },
    /// Hosts in name order, with state and sync status (one page; --after for the next).
    List {
        /// Only hosts in this state.
        #[arg(long, value_parser = ["active", "maintenance", "unreachable", "failed", "draining"])]
        state: Option<String>,
        /// Start after this host name (the previous page's last).
        #[arg(long, value_parser = name)]
        after: Option<Name>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One host.
    Show {
        #[arg(value_parser = name)]
        name: Name,
    },
    /// Change a host's address, capacity or compatibility profile (after a hypervisor upgrade,
    /// say). Refused below what its guests and incoming migrations hold, and a profile change
    /// while a migration to or from it is in flight.
    Modify {
        #[arg(value_parser = name)]
        name: Name,
        #[arg(long)]
        address: Option<String>,
        #[arg(long)]
        vcpus: Option<u32>,
        #[arg(long)]
        memory_mib: Option<u64>,
        #[arg(long)]
        hardware_family: Option<String>,
        #[arg(long)]
        hypervisor_version: Option<String>,
        /// Set a label KEY=VALUE (others stay); repeat for several.
        #[arg(long = "label", value_parser = label)]
        labels: Vec<(Name, Name)>,
        /// Remove the label KEY; repeat for several.
        #[arg(long = "unlabel", value_parser = name)]
        unlabel: Vec<Name>,
        /// Refuse unless the host is still at this version (`host show` prints it).
        #[arg(long)]
        expect_version: Option<u64>,
        #[command(flatten)]
        write: WriteOpts,
    },
    /// Remove a decommissioned host. Refused while it owns guests, a package names it or a
    /// migration to or from it is in flight; the refusal says what to do.
    Remove {
        #[arg(value_parser = name)]
        name: Name,
        /// Refuse unless the host is still at this version (`host show` prints it).
        #[arg(long)]
        expect_version: Option<u64>,
        #[command(flatten)]
        write: WriteOpts,
    },
    /// Empty a host for maintenance: the leader moves every guest to hosts the placement rules
    /// allow (capacity, profile, package node lists and per-node switching), a few at a time,
    /// then puts the host in maintenance. Survives the loss of any coordinator.
    Drain {
        #[arg(value_parser = name)]
        name: Name,
        /// Follow the drain until it ends; exit non-zero unless it completes.
        #[arg(long)]
        wait: bool,
        /// Move guests that cannot move online offline (a running one is stopped on the source
        /// and started on the target); without it the drain stops before them and says why.
        #[arg(long)]
        allow_offline: bool,
        /// Migrations from the host at once (default: the coordinators' drain_max_parallel).
        #[arg(long)]
        max_parallel: Option<u32>,
        #[command(flatten)]
        write: WriteOpts,
    },
    /// End a drain under way: migrations in flight finish or roll back on their own, so every
    /// guest is where it was or fully moved; the host stays active.
    Undrain {
        #[arg(value_parser = name)]
        name: Name,
        /// Why (kept in the host's history).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        write: WriteOpts,
    },
    /// Take a host out of maintenance (the same as `maintenance HOST off`).
    Activate {
        #[arg(value_parser = name)]
        name: Name,
        #[command(flatten)]
        write: WriteOpts,
    },
    /// Put a host into maintenance (`on`: no new guests, no migration target) or take it out.
    /// Refused while the host still owns guests (unless it has failed): `host drain` moves them
    /// and then puts it in maintenance.
    Maintenance {
        #[arg(value_parser = name)]
        name: Name,
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[command(flatten)]
        write: WriteOpts,
    },
}

/// Parses `KEY=VALUE`, both names.
fn label(s: &str) -> Result<(Name, Name), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("a label is KEY=VALUE (e.g. rack=r12), not {s:?}"))?;
    Ok((name(k)?, name(v)?))
}

pub async fn run(ctx: &Ctx, v: Verb) -> Out {
    let (c, json) = (&ctx.client, ctx.json);
    match v {
        Verb::Register { name, address, vcpus, memory_mib, hardware_family, hypervisor_version, labels, write } => {
            let id = write.id()?;
            let req = RegisterHostRequest {
                name,
                address,
                vcpus,
                memory_mib,
                hardware_family,
                hypervisor_version,
                labels: labels.into_iter().collect(),
                request_id: Some(id.clone()),
            };
            ctx.written(&id, c.register_host(&req).await)
        }
        Verb::List { state, after, limit } => {
            let state = state.map(|s| match s.as_str() {
                "maintenance" => HostState::Maintenance,
                "unreachable" => HostState::Unreachable,
                "failed" => HostState::Failed,
                "draining" => HostState::Draining,
                _ => HostState::Active,
            });
            let r = c.hosts(&HostQuery { stale: false, state, after, limit: Some(limit) }).await?;
            Ok(if json { to_json(&r) } else { hosts_table(&r.items) + &more(r.next_after) })
        }
        Verb::Show { name } => {
            let r = c.host(&name).await?;
            if json {
                return Ok(to_json(&r));
            }
            let mut out = host_detail(&r.items);
            if r.items.state == HostState::Failed {
                // Where its guests went, and which stay down and why.
                let ha = c.ha_status().await?.items;
                for h in ha.failed_hosts.iter().filter(|h| h.host == name) {
                    out.push_str(&format!("failed at revision {}: {}\n", h.failure.revision, h.failure.evidence));
                }
                for f in ha.failovers.iter().filter(|f| f.failed_host == name) {
                    out.push_str(&format!("  {}: failing over to {}\n", f.guest, f.target));
                }
                for d in ha.down.iter().filter(|d| d.host == name) {
                    out.push_str(&format!("  {}: down: {}\n", d.guest, d.why));
                }
            }
            Ok(out)
        }
        Verb::Modify {
            name,
            address,
            vcpus,
            memory_mib,
            hardware_family,
            hypervisor_version,
            labels,
            unlabel,
            expect_version,
            write,
        } => {
            let id = write.id()?;
            let req = ModifyHostRequest {
                address,
                vcpus,
                memory_mib,
                hardware_family,
                hypervisor_version,
                labels: (!labels.is_empty()).then(|| labels.into_iter().collect()),
                remove_labels: (!unlabel.is_empty()).then_some(unlabel),
                expect_version,
                request_id: Some(id.clone()),
            };
            ctx.written(&id, c.modify_host(&name, &req).await)
        }
        Verb::Remove { name, expect_version, write } => {
            let id = write.id()?;
            let params = RemoveParams { expect_version, request_id: Some(id.clone()) };
            ctx.written(&id, c.remove_host(&name, &params).await)
        }
        Verb::Drain { name, wait, allow_offline, max_parallel, write } => {
            let id = write.id()?;
            let req = DrainRequest { allow_offline, max_parallel, request_id: Some(id.clone()) };
            let r = c.drain_host(&name, &req).await;
            if !wait || r.is_err() {
                return ctx.written(&id, r);
            }
            let from = r.expect("checked").first_revision;
            wait_drain(ctx, &name, from).await
        }
        Verb::Undrain { name, reason, write } => {
            let id = write.id()?;
            let req = UndrainRequest { reason, request_id: Some(id.clone()) };
            ctx.written(&id, c.undrain_host(&name, &req).await)
        }
        Verb::Activate { name, write } => {
            let id = write.id()?;
            let req = MaintenanceRequest { maintenance: false, request_id: Some(id.clone()) };
            ctx.written(&id, c.set_maintenance(&name, &req).await)
        }
        Verb::Maintenance { name, state, write } => {
            let id = write.id()?;
            let req = MaintenanceRequest { maintenance: state == "on", request_id: Some(id.clone()) };
            ctx.written(&id, c.set_maintenance(&name, &req).await)
        }
    }
}

/// Follows a drain started at revision `from`: its progress while it runs, then how it ended.
async fn wait_drain(ctx: &Ctx, host: &Name, from: u64) -> Out {
    let c = &ctx.client;
    let mut last = None;
    loop {
        let view = c.host(host).await?.items;
        match view.drain {
            Some(d) if d.drain.started == from => {
                let now = (d.guests_left, d.moving);
                if last != Some(now) && !ctx.json {
                    println!("{host}: {} guest(s) left, {} moving", d.guests_left, d.moving);
                }
                last = Some(now);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            _ => break,
        }
    }
    // How it ended: the first DrainEnded of this host after it started.
    let query = EventQuery { from, host: Some(host.to_string()), kind: Some("host".into()), ..Default::default() };
    let mut ended = None;
    c.events(&query, |item| {
        if let StreamItem::Event(e) = item {
            if let EventPayload::DrainEnded { outcome, reason, blocked, .. } = &e.payload {
                ended = Some((*outcome, reason.clone(), blocked.clone()));
                return false;
            }
        }
        true
    })
    .await?;
    match ended {
        Some((DrainOutcome::Completed, _, _)) => Ok(format!("{host} drained and in maintenance\n")),
        Some((outcome, reason, blocked)) => {
            let list: Vec<String> = blocked.iter().map(|b| format!("  {}: {}", b.guest, b.why)).collect();
            Err(CliError::Failed(
                if list.is_empty() { String::new() } else { format!("{}\n", list.join("\n")) },
                format!("drain of {host} {outcome}: {reason}"),
            ))
        }
        None => Err(CliError::Failed(
            String::new(),
            format!("lost track of the drain of {host}; see: switchyard host show {host}"),
        )),
    }
}
