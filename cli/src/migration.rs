//! `switchyard migrate` and `switchyard migration list|show|resolve|abort`.

use std::io::Write;

use clap::{Args, Subcommand};
use switchyard_client::EventQuery;
use switchyard_protocol::api::{AbortRequest, MigrateRequest, MigrationQuery, Order, ResolveRequest, StreamItem};
use switchyard_protocol::{EventPayload, MigrationId, Name, Phase};

use crate::render::{describe, migration_detail, migrations_table, now, to_json};
use crate::{name, timefmt, CliError, Ctx, Out, WriteOpts};

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The guest to move.
    #[arg(value_parser = name)]
    guest: Name,
    /// The host to move it to.
    #[arg(long, value_parser = name)]
    to: Name,
    /// Move the guest while it is down instead of live.
    #[arg(long)]
    offline: bool,
    /// With --offline: a running guest may be stopped on the source for the move; it is started
    /// again on the target. Without it, an offline move of a running guest is refused.
    #[arg(long, requires = "offline")]
    allow_stop: bool,
    /// Follow the phases live; exit non-zero unless the migration completes.
    #[arg(long)]
    wait: bool,
    /// Why (kept in the migration's history).
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    write: WriteOpts,
}

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Migrations, newest first, filtered (one page; --after for the next).
    List {
        /// Only this guest's migrations.
        #[arg(long, value_parser = name)]
        guest: Option<Name>,
        /// Migrations from or to this host.
        #[arg(long, value_parser = name)]
        host: Option<Name>,
        /// A phase (requested … completed, failed, aborted), in_flight or finished.
        #[arg(long)]
        phase: Option<String>,
        /// Requested at or after: a UTC date[-time], epoch ms, or an age like 2h.
        #[arg(long)]
        since: Option<String>,
        /// Requested before (same forms as --since).
        #[arg(long)]
        until: Option<String>,
        /// Oldest first instead of newest first.
        #[arg(long)]
        oldest_first: bool,
        /// Continue after this migration id (the previous page's last).
        #[arg(long, value_parser = migration_id)]
        after: Option<u64>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Every phase with its time and duration, the freeze time, who asked, why, and the error.
    Show {
        #[arg(value_parser = migration_id)]
        id: u64,
    },
    /// End a migration stuck after its owner switch (it cannot roll back): the guest stays
    /// with its new owner; say whether the move worked and why.
    #[command(group(clap::ArgGroup::new("outcome").required(true).args(["completed", "failed"])))]
    Resolve {
        #[arg(value_parser = migration_id)]
        id: u64,
        /// The guest runs on the target: record the migration completed.
        #[arg(long)]
        completed: bool,
        /// Record the migration failed.
        #[arg(long)]
        failed: bool,
        /// Why (required; kept in the migration's history).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        write: WriteOpts,
    },
    /// Roll back a migration that has not switched owner yet.
    Abort {
        #[arg(value_parser = migration_id)]
        id: u64,
        /// Why (kept in the migration's history).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        write: WriteOpts,
    },
}

/// A migration id as printed (`m42`) or bare (`42`).
fn migration_id(s: &str) -> Result<u64, String> {
    s.strip_prefix('m').unwrap_or(s).parse().map_err(|_| format!("{s:?} is not a migration id (like m42 or 42)"))
}

pub async fn migrate(ctx: &Ctx, a: MigrateArgs) -> Out {
    let request_id = a.write.id()?;
    let req = MigrateRequest {
        guest: a.guest.clone(),
        target: a.to.clone(),
        offline: a.offline,
        allow_stop: a.allow_stop,
        reason: a.reason,
        request_id: Some(request_id.clone()),
    };
    let r = ctx.client.migrate(&req).await;
    if !a.wait || r.is_err() {
        if let Ok(w) = &r {
            if !ctx.json && !w.duplicate {
                let id = w.first_revision;
                return Ok(format!(
                    "migration {id} of {} to {} requested (follow it: switchyard migration show {id})\n",
                    a.guest, a.to
                ));
            }
        }
        return ctx.written(&request_id, r);
    }
    let id = r.expect("checked").first_revision;
    wait_migration(ctx, &a.guest, id).await
}

/// Follows a migration's phases from the event history until it ends.
async fn wait_migration(ctx: &Ctx, guest: &Name, id: u64) -> Out {
    let query = EventQuery {
        from: id,
        follow: true,
        guest: Some(guest.to_string()),
        kind: Some("migration".into()),
        ..Default::default()
    };
    let mut out = std::io::stdout();
    let mut end: Option<(Phase, Option<String>)> = None;
    ctx.client
        .events(&query, |item| {
            let StreamItem::Event(e) = item else { return true };
            if e.payload.migration() != Some(MigrationId(id)) {
                return true;
            }
            let line = if ctx.json {
                serde_json::to_string(item).expect("stream items serialise to JSON")
            } else {
                format!("{}  {}", timefmt::format(e.time), describe(&e.payload))
            };
            let _ = writeln!(out, "{line}");
            if let EventPayload::MigrationPhaseChanged { phase, error, .. } = &e.payload {
                if phase.is_terminal() {
                    end = Some((*phase, error.clone()));
                    return false;
                }
            }
            true
        })
        .await?;
    match end {
        Some((Phase::Completed, _)) => Ok(String::new()),
        Some((phase, error)) => Err(CliError::Failed(
            String::new(),
            format!("migration {id} {phase}: {}", error.unwrap_or_else(|| "no reason given".into())),
        )),
        None => Err(CliError::Failed(
            String::new(),
            format!("lost track of migration {id}; see: switchyard migration show {id}"),
        )),
    }
}

pub async fn run(ctx: &Ctx, v: Verb) -> Out {
    let (c, json) = (&ctx.client, ctx.json);
    match v {
        Verb::List { guest, host, phase, since, until, oldest_first, after, limit } => {
            let time = |v: Option<String>| {
                v.map(|v| timefmt::parse(&v, now()).map(|t| t.0)).transpose().map_err(CliError::Usage)
            };
            let q = MigrationQuery {
                stale: false,
                guest,
                host,
                phase,
                since: time(since)?,
                until: time(until)?,
                order: if oldest_first { Order::Oldest } else { Order::Newest },
                after,
                limit: Some(limit),
            };
            let r = c.migrations(&q).await?;
            Ok(if json { to_json(&r) } else { migrations_table(&r.items) })
        }
        Verb::Show { id } => {
            let r = c.migration(MigrationId(id)).await?;
            Ok(if json { to_json(&r) } else { migration_detail(&r.items) })
        }
        Verb::Resolve { id, completed, failed: _, reason, write } => {
            let request_id = write.id()?;
            let outcome = if completed { Phase::Completed } else { Phase::Failed };
            let req = ResolveRequest { outcome, reason, request_id: Some(request_id.clone()) };
            match c.resolve_migration(MigrationId(id), &req).await {
                Ok(r) if !json => Ok(format!("migration {id} resolved as {outcome} (revision {})\n", r.last_revision)),
                r => ctx.written(&request_id, r),
            }
        }
        Verb::Abort { id, reason, write } => {
            let request_id = write.id()?;
            let req = AbortRequest { reason, request_id: Some(request_id.clone()) };
            match c.abort_migration(MigrationId(id), &req).await {
                Ok(r) if !json => {
                    Ok(format!("migration {id} aborted and rolled back (revision {})\n", r.last_revision))
                }
                r => ctx.written(&request_id, r),
            }
        }
    }
}
