//! `switchyard events`: new events as they commit (like `etcdctl watch`), or the history from
//! a revision with `--from`, filtered. Follows across coordinator losses without a gap or a
//! duplicate. With `-o json`, standard output carries JSON lines only.

use std::io::Write;

use switchyard_client::EventQuery;
use switchyard_protocol::api::StreamItem;
use switchyard_protocol::Name;

use crate::render::{event_line, EVENTS_HEADER};
use crate::{name, Ctx, Out};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print the history from this revision (1: all of it), then stop unless --follow. Without
    /// it, print the events committed from now on, until interrupted.
    #[arg(long)]
    from: Option<u64>,
    /// Keep following live events after the history (resuming on another coordinator if one is
    /// lost).
    #[arg(long)]
    follow: bool,
    /// Only events about this guest.
    #[arg(long, value_parser = name)]
    guest: Option<Name>,
    /// Only events about this host.
    #[arg(long, value_parser = name)]
    host: Option<Name>,
    /// Comma-separated kinds: cluster, host, guest, package, migration, ha (host failures and failovers).
    #[arg(long)]
    kind: Option<String>,
}

pub async fn run(ctx: &Ctx, a: Args) -> Out {
    let (from, follow) = match a.from {
        Some(from) => (from, a.follow),
        // From now on: the next revision after the one the cluster has committed.
        None => (ctx.client.identity().await?.revision + 1, true),
    };
    let query = EventQuery {
        from,
        follow,
        guest: a.guest.map(|g| g.to_string()),
        host: a.host.map(|h| h.to_string()),
        kind: a.kind,
        cluster: None,
    };
    let json = ctx.json;
    let mut out = std::io::stdout();
    if !json {
        let _ = writeln!(out, "{EVENTS_HEADER}");
    }
    ctx.client
        .events(&query, |item| {
            let line = match item {
                _ if json => serde_json::to_string(item).expect("stream items serialise to JSON"),
                StreamItem::Event(e) => event_line(e),
                StreamItem::Compacted { first_retained, snapshot_revision } => format!(
                    "history before revision {first_retained} is compacted; re-read state (at revision {snapshot_revision}) and resume from there"
                ),
                StreamItem::Progress { .. } => return true,
            };
            // A closed stdout (e.g. `| head`) ends the subscription.
            writeln!(out, "{line}").is_ok()
        })
        .await?;
    Ok(String::new())
}
