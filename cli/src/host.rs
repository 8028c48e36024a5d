//! `switchyard host register|list|show|modify|remove|maintenance`.

use clap::Subcommand;
use switchyard_protocol::api::{HostQuery, MaintenanceRequest, ModifyHostRequest, RegisterHostRequest, RemoveParams};
use switchyard_protocol::{HostState, Name};

use crate::render::{host_detail, hosts_table, more, to_json};
use crate::{name, Ctx, Out, WriteOpts};

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
        #[command(flatten)]
        write: WriteOpts,
    },
    /// Hosts in name order, with state and sync status (one page; --after for the next).
    List {
        /// Only hosts in this state.
        #[arg(long, value_parser = ["active", "maintenance", "unreachable", "failed"])]
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
    /// Put a host into maintenance (`on`: no new guests, no migration target) or take it out.
    /// Refused while the host still owns guests (unless it has failed): move them first.
    Maintenance {
        #[arg(value_parser = name)]
        name: Name,
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[command(flatten)]
        write: WriteOpts,
    },
}

pub async fn run(ctx: &Ctx, v: Verb) -> Out {
    let (c, json) = (&ctx.client, ctx.json);
    match v {
        Verb::Register { name, address, vcpus, memory_mib, hardware_family, hypervisor_version, write } => {
            let id = write.id()?;
            let req = RegisterHostRequest {
                name,
                address,
                vcpus,
                memory_mib,
                hardware_family,
                hypervisor_version,
                request_id: Some(id.clone()),
            };
            ctx.written(&id, c.register_host(&req).await)
        }
        Verb::List { state, after, limit } => {
            let state = state.map(|s| match s.as_str() {
                "maintenance" => HostState::Maintenance,
                "unreachable" => HostState::Unreachable,
                "failed" => HostState::Failed,
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
        Verb::Maintenance { name, state, write } => {
            let id = write.id()?;
            let req = MaintenanceRequest { maintenance: state == "on", request_id: Some(id.clone()) };
            ctx.written(&id, c.set_maintenance(&name, &req).await)
        }
    }
}
