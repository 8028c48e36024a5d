//! `switchyard guest create|modify|show|list|remove`.

use clap::Subcommand;
use switchyard_protocol::api::{CreateGuestRequest, GuestQuery, ModifyGuestRequest, RemoveParams};
use switchyard_protocol::{AntiAffinity, Name, RunState};

use crate::render::{guests_table, more, now, sync_text, to_json, unprotected};
use crate::{name, timefmt, CliError, Ctx, Out, WriteOpts};

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Create a distributed guest: its configuration reaches every active host.
    Create {
        /// The guest's name (letters, digits, `-`, `_`, `.`).
        #[arg(value_parser = name)]
        name: Name,
        /// The host the guest runs on.
        #[arg(long, value_parser = name)]
        owner: Name,
        /// Virtual CPUs.
        #[arg(long)]
        vcpus: u32,
        /// Memory in MiB.
        #[arg(long)]
        memory_mib: u64,
        /// A disk, as the hypervisor names it (e.g. avio_stor:/dev/vg01/lvol1); repeat for several.
        #[arg(long = "disk")]
        disks: Vec<String>,
        /// A network attachment (e.g. avio_lan:vswitch0); repeat for several.
        #[arg(long = "network")]
        networks: Vec<String>,
        /// Wrap the guest in this failover package (created with it, switching enabled).
        #[arg(long, value_parser = name)]
        package: Option<Name>,
        /// The guest runs cluster software itself: never moved online.
        #[arg(long)]
        cluster_node: bool,
        /// Anti-affinity group: no two guests of a group on one host (or, with --spread-by,
        /// on hosts sharing a value of that label).
        #[arg(long, value_parser = name)]
        anti_affinity: Option<Name>,
        /// The host label the anti-affinity group spreads by (e.g. rack).
        #[arg(long, requires = "anti_affinity", value_parser = name)]
        spread_by: Option<Name>,
        /// Create the guest stopped.
        #[arg(long)]
        stopped: bool,
        /// An attribute, as the hypervisor's own tool takes it: online_migration=enabled|disabled.
        #[arg(short = 'x')]
        attrs: Vec<String>,
        #[command(flatten)]
        write: WriteOpts,
    },
    /// Change a guest's configuration (only the options given).
    Modify {
        #[arg(value_parser = name)]
        name: Name,
        /// Virtual CPUs.
        #[arg(long)]
        vcpus: Option<u32>,
        /// Memory in MiB.
        #[arg(long)]
        memory_mib: Option<u64>,
        /// Replace the disk list (repeat for several).
        #[arg(long = "disk")]
        disks: Vec<String>,
        /// Replace the network list (repeat for several).
        #[arg(long = "network")]
        networks: Vec<String>,
        /// Wrap the guest in this package (replacing any other).
        #[arg(long, conflicts_with = "no_package", value_parser = name)]
        package: Option<Name>,
        /// Take the guest out of its package.
        #[arg(long)]
        no_package: bool,
        /// Whether the guest runs cluster software (then never moved online).
        #[arg(long)]
        cluster_node: Option<bool>,
        /// Put the guest in this anti-affinity group (replacing any other); refused while
        /// another guest of the group shares its host (or its --spread-by label's value).
        #[arg(long, conflicts_with = "no_anti_affinity", value_parser = name)]
        anti_affinity: Option<Name>,
        /// The host label the anti-affinity group spreads by (e.g. rack).
        #[arg(long, requires = "anti_affinity", value_parser = name)]
        spread_by: Option<Name>,
        /// Take the guest out of its anti-affinity group.
        #[arg(long)]
        no_anti_affinity: bool,
        /// Start or stop the guest.
        #[arg(long, value_parser = ["running", "stopped"])]
        run_state: Option<String>,
        /// online_migration=enabled|disabled, as the hypervisor's own tool takes it.
        #[arg(short = 'x')]
        attrs: Vec<String>,
        /// Refuse unless the guest is still at this version (optimistic concurrency).
        #[arg(long)]
        expect_version: Option<u64>,
        #[command(flatten)]
        write: WriteOpts,
    },
    /// One guest: its configuration, package switching, migration in flight, and on which
    /// hosts its definition is current.
    Show {
        #[arg(value_parser = name)]
        name: Name,
    },
    /// Guests in name order (one page; --after for the next).
    List {
        /// Only guests running on this host.
        #[arg(long, value_parser = name)]
        owner: Option<Name>,
        /// Only the guest of this package.
        #[arg(long, value_parser = name)]
        package: Option<Name>,
        /// Start after this guest name (the previous page's last).
        #[arg(long, value_parser = name)]
        after: Option<Name>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Remove a guest from the cluster (its configuration leaves every host).
    Remove {
        #[arg(value_parser = name)]
        name: Name,
        /// Refuse unless the guest is still at this version.
        #[arg(long)]
        expect_version: Option<u64>,
        #[command(flatten)]
        write: WriteOpts,
    },
}

/// Parses `-x key=value` attributes; only `online_migration` is known.
fn online_migration_attr(attrs: &[String]) -> Result<Option<bool>, CliError> {
    let mut out = None;
    for a in attrs {
        match a.split_once('=') {
            Some(("online_migration", "enabled" | "true")) => out = Some(true),
            Some(("online_migration", "disabled" | "false")) => out = Some(false),
            Some(("online_migration", v)) => {
                return Err(CliError::Usage(format!("online_migration takes enabled or disabled, not {v:?}")))
            }
            _ => {
                return Err(CliError::Usage(format!(
                    "unknown attribute {a:?}; known: online_migration=enabled|disabled"
                )))
            }
        }
    }
    Ok(out)
}

pub async fn run(ctx: &Ctx, v: Verb) -> Out {
    let (c, json) = (&ctx.client, ctx.json);
    match v {
        Verb::Create {
            name,
            owner,
            vcpus,
            memory_mib,
            disks,
            networks,
            package,
            cluster_node,
            anti_affinity,
            spread_by,
            stopped,
            attrs,
            write,
        } => {
            let id = write.id()?;
            let req = CreateGuestRequest {
                name,
                owner,
                vcpus,
                memory_mib,
                disks,
                networks,
                online_migration: online_migration_attr(&attrs)?.unwrap_or(true),
                cluster_node,
                package,
                anti_affinity: anti_affinity.map(|group| AntiAffinity { group, spread_by }),
                run_state: if stopped { RunState::Stopped } else { RunState::Running },
                request_id: Some(id.clone()),
            };
            ctx.written(&id, c.create_guest(&req).await)
        }
        Verb::Modify {
            name,
            vcpus,
            memory_mib,
            disks,
            networks,
            package,
            no_package,
            cluster_node,
            anti_affinity,
            spread_by,
            no_anti_affinity,
            run_state,
            attrs,
            expect_version,
            write,
        } => {
            let id = write.id()?;
            let req = ModifyGuestRequest {
                vcpus,
                memory_mib,
                disks: (!disks.is_empty()).then_some(disks),
                networks: (!networks.is_empty()).then_some(networks),
                online_migration: online_migration_attr(&attrs)?,
                cluster_node,
                package,
                remove_package: no_package,
                anti_affinity: anti_affinity.map(|group| AntiAffinity { group, spread_by }),
                remove_anti_affinity: no_anti_affinity,
                run_state: run_state.map(|s| if s == "running" { RunState::Running } else { RunState::Stopped }),
                expect_version,
                request_id: Some(id.clone()),
            };
            ctx.written(&id, c.modify_guest(&name, &req).await)
        }
        Verb::Show { name } => {
            let r = c.guest(&name).await?;
            if json {
                return Ok(to_json(&r));
            }
            let g = &r.items;
            let mut out = guests_table(std::slice::from_ref(g));
            if let Some(a) = &g.guest.spec.anti_affinity {
                out.push_str(&format!("\nanti-affinity group {a}\n"));
            }
            if let Some(p) = &g.package {
                if let Some(line) = unprotected(p, now()) {
                    out.push_str(&format!("\npackage {}: {line}\n", p.name));
                }
            }
            if let Some(m) = &g.migration {
                out.push_str(&format!(
                    "migration {} in flight: {} -> {}, phase {} since {}\n",
                    m.id,
                    m.source,
                    m.target,
                    m.phase,
                    timefmt::format(m.current().at)
                ));
            }
            for h in &g.hosts {
                let mut line = format!("host {}: {}", h.host, sync_text(&h.status));
                for d in &h.drift {
                    line.push_str(&format!("; DIVERGED: {d}"));
                }
                if !h.pending.is_empty() {
                    line.push_str(&format!("; pending until the next start: {}", h.pending.join(", ")));
                }
                out.push_str(&line);
                out.push('\n');
            }
            Ok(out)
        }
        Verb::List { owner, package, after, limit } => {
            let r = c.guests(&GuestQuery { stale: false, owner, package, after, limit: Some(limit) }).await?;
            Ok(if json { to_json(&r) } else { guests_table(&r.items) + &more(r.next_after) })
        }
        Verb::Remove { name, expect_version, write } => {
            let id = write.id()?;
            let params = RemoveParams { expect_version, request_id: Some(id.clone()) };
            ctx.written(&id, c.remove_guest(&name, &params).await)
        }
    }
}
