//! `switchyard package list|show|modify|enable|disable`.

use clap::{Args, Subcommand};
use switchyard_protocol::api::{ModifyPackageRequest, PackageQuery, SwitchingRequest};
use switchyard_protocol::{FailbackPolicy, FailoverPolicy, Name};

use crate::render::{more, node_list, now, packages_table, to_json, unprotected};
use crate::{name, CliError, Ctx, Out, WriteOpts};

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Enable switching: the cluster may fail the package over again.
    Enable(SwitchArgs),
    /// Disable switching: the guest is not protected against host failure until enabled.
    Disable(SwitchArgs),
    /// Packages in name order with their switching (one page; --after for the next).
    List {
        /// Only packages whose switching is disabled (guests unprotected now).
        #[arg(long)]
        unprotected: bool,
        /// Start after this package name (the previous page's last).
        #[arg(long, value_parser = name)]
        after: Option<Name>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One package: its switching (since when, by whom and why disabled), its node list and
    /// policies, and the nodes it could fail over to now with why each other one is excluded.
    Show {
        #[arg(value_parser = name)]
        name: Name,
    },
    /// Change a package's node list or policies (Serviceguard's node_name, failover_policy,
    /// failback_policy). A package is created with its guest (`guest create --package`).
    Modify {
        #[arg(value_parser = name)]
        package: Name,
        /// The node list in order, comma-separated: the primary node first, then the adoptive
        /// nodes. An empty value means every host, in name order.
        #[arg(long)]
        nodes: Option<String>,
        /// `configured_node` (first eligible node in list order) or `min_package_node` (the
        /// eligible node running the fewest packages).
        #[arg(long, value_parser = ["configured_node", "min_package_node"])]
        failover_policy: Option<String>,
        /// `manual` (stay where it failed over to) or `automatic` (move back online when the
        /// primary node returns).
        #[arg(long, value_parser = ["manual", "automatic"])]
        failback_policy: Option<String>,
        #[command(flatten)]
        write: WriteOpts,
    },
}

#[derive(Args, Debug)]
pub struct SwitchArgs {
    /// The package.
    #[arg(value_parser = name)]
    package: Name,
    /// Change only this node's switch (the package may not fail over to it).
    #[arg(long, value_parser = name)]
    node: Option<Name>,
    /// Why (kept with the change and shown while switching is disabled).
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    write: WriteOpts,
}

async fn switching(ctx: &Ctx, a: SwitchArgs, enabled: bool) -> Out {
    let id = a.write.id()?;
    let req = SwitchingRequest { enabled, node: a.node, reason: a.reason, request_id: Some(id.clone()) };
    ctx.written(&id, ctx.client.set_switching(&a.package, &req).await)
}

pub async fn run(ctx: &Ctx, v: Verb) -> Out {
    let (c, json) = (&ctx.client, ctx.json);
    match v {
        Verb::List { unprotected, after, limit } => {
            let r = c.packages(&PackageQuery { stale: false, unprotected, after, limit: Some(limit) }).await?;
            Ok(if json { to_json(&r) } else { packages_table(&r.items) + &more(r.next_after) })
        }
        Verb::Show { name } => {
            let r = c.package(&name).await?;
            if json {
                return Ok(to_json(&r));
            }
            let v = &r.items;
            let p = &v.package;
            let mut out = packages_table(std::slice::from_ref(p));
            if let Some(line) = unprotected(p, now()) {
                out.push_str(&format!("\n{line}\n"));
            }
            out.push_str(&format!(
                "\nguest {} runs on {}; nodes {}; failover_policy {}; failback_policy {}\n",
                p.guest,
                v.owner,
                node_list(&p.nodes),
                p.failover_policy,
                p.failback_policy
            ));
            if let Some(f) = &v.failover {
                out.push_str(&format!("failing over from {} to {} now\n", f.failed_host, f.target));
            }
            out.push_str("could fail over to now:\n");
            for c in &v.candidates {
                match &c.excluded {
                    None => out.push_str(&format!("  {}  eligible\n", c.host)),
                    Some(why) => out.push_str(&format!("  {}  excluded: {why}\n", c.host)),
                }
            }
            Ok(out)
        }
        Verb::Modify { package, nodes, failover_policy, failback_policy, write } => {
            let id = write.id()?;
            let nodes = match nodes {
                None => None,
                Some(list) if list.trim().is_empty() => Some(Vec::new()),
                Some(list) => Some(
                    list.split(',').map(|n| name(n.trim())).collect::<Result<Vec<_>, _>>().map_err(CliError::Usage)?,
                ),
            };
            let req = ModifyPackageRequest {
                nodes,
                failover_policy: failover_policy.map(|p| match p.as_str() {
                    "min_package_node" => FailoverPolicy::MinPackageNode,
                    _ => FailoverPolicy::ConfiguredNode,
                }),
                failback_policy: failback_policy.map(|p| match p.as_str() {
                    "automatic" => FailbackPolicy::Automatic,
                    _ => FailbackPolicy::Manual,
                }),
                request_id: Some(id.clone()),
            };
            ctx.written(&id, ctx.client.modify_package(&package, &req).await)
        }
        Verb::Enable(a) => switching(ctx, a, true).await,
        Verb::Disable(a) => switching(ctx, a, false).await,
    }
}
