//! `switchyard package list|show|enable|disable`.

use clap::{Args, Subcommand};
use switchyard_protocol::api::{PackageQuery, SwitchingRequest};
use switchyard_protocol::Name;

use crate::render::{more, now, packages_table, to_json, unprotected};
use crate::{name, Ctx, Out, WriteOpts};

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
    /// One package: its switching, and since when, by whom and why it is disabled.
    Show {
        #[arg(value_parser = name)]
        name: Name,
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
            let p = &r.items;
            let mut out = packages_table(std::slice::from_ref(p));
            if let Some(line) = unprotected(p, now()) {
                out.push_str(&format!("\n{line}\n"));
            }
            Ok(out)
        }
        Verb::Enable(a) => switching(ctx, a, true).await,
        Verb::Disable(a) => switching(ctx, a, false).await,
    }
}
