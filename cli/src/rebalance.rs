//! `switchyard rebalance`: show the moves that would even out the hosts' static load, and with
//! `--apply` carry them out as ordinary online migrations, a few at a time.
//!
//! The plan is the coordinator's (`GET /v1/rebalance`, `protocol::placement`); applying it is
//! this command's loop: each move is a migration request with its own request id (a retry
//! never moves a guest twice), checked again by the cluster when it commits, and at most
//! `--max-parallel` are in flight, within the coordinators' limits on moves the cluster starts
//! itself (`[migration] max_in_flight_per_target` and `max_in_flight`, sent with the plan and
//! counted against every migration in flight). Every migration is a saga of its own in the log, so a
//! stopped command leaves each guest where it was or fully moved; running it again plans
//! afresh from where the cluster stands.

use std::time::Duration;

use clap::Args;
use switchyard_protocol::api::{MigrateRequest, MigrationQuery, RebalanceQuery};
use switchyard_protocol::placement::{pct, MoveBudget, RebalancePlan};
use switchyard_protocol::{Migration, MigrationId, Phase};

use crate::render::{table, to_json};
use crate::{CliError, Ctx, Out};

#[derive(Args, Debug)]
pub struct RebalanceArgs {
    /// Leave the cluster as it is while the most and the least loaded active host are at most
    /// this many percentage points apart.
    #[arg(long, default_value_t = RebalanceQuery::THRESHOLD_PCT_DEFAULT)]
    threshold_pct: u32,
    /// At most this many moves.
    #[arg(long, default_value_t = RebalanceQuery::MAX_MOVES_DEFAULT)]
    max_moves: usize,
    /// Show the plan only (the default).
    #[arg(long, conflicts_with = "apply")]
    plan: bool,
    /// Carry the plan out: request its migrations, at most --max-parallel at a time, and wait
    /// for them.
    #[arg(long)]
    apply: bool,
    /// With --apply: migrations in flight at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    max_parallel: u32,
}

pub fn plan_text(plan: &RebalancePlan) -> String {
    let rows = plan
        .moves
        .iter()
        .enumerate()
        .map(|(i, m)| {
            vec![
                (i + 1).to_string(),
                m.guest.to_string(),
                m.from.to_string(),
                m.to.to_string(),
                format!("{} → {}", pct(m.from_load.before), pct(m.from_load.after)),
                format!("{} → {}", pct(m.to_load.before), pct(m.to_load.after)),
            ]
        })
        .collect();
    let mut out = String::new();
    if !plan.moves.is_empty() {
        out.push_str(&table(&["#", "GUEST", "FROM", "TO", "FROM LOAD", "TO LOAD"], rows));
        out.push('\n');
    }
    out.push_str(&format!(
        "{} move(s); spread {} → {}; {}\n",
        plan.moves.len(),
        pct(plan.spread_before),
        pct(plan.spread_after),
        plan.outcome
    ));
    out
}

pub async fn run(ctx: &Ctx, a: RebalanceArgs) -> Out {
    let c = &ctx.client;
    let q = RebalanceQuery { threshold_pct: Some(a.threshold_pct), max_moves: Some(a.max_moves), stale: false };
    let plan = c.rebalance_plan(&q).await?.items;
    if !a.apply {
        return Ok(if ctx.json { to_json(&plan) } else { plan_text(&plan) });
    }
    if !ctx.json {
        print!("{}", plan_text(&plan));
    }
    let mut pending = plan.moves.iter().peekable();
    let mut in_flight: Vec<(MigrationId, String)> = Vec::new();
    let (mut done, mut failed) = (Vec::new(), Vec::new());
    loop {
        // The cluster's limits on moves it starts itself, counting every migration in flight
        // (operators', drains', failbacks'): a move waits while the cluster or its target is busy.
        let mut busy = match (plan.limits, pending.peek()) {
            (Some(limits), Some(_)) => Some(MoveBudget::from_migrations(&in_flight_migrations(c).await?, limits)),
            _ => None,
        };
        while in_flight.len() < a.max_parallel as usize {
            let Some(m) = pending.peek() else { break };
            if let Some(b) = &mut busy {
                if !b.allows(&m.to) {
                    break;
                }
                b.take(&m.to);
            }
            let m = pending.next().expect("peeked");
            let req = MigrateRequest {
                guest: m.guest.clone(),
                target: m.to.clone(),
                offline: false,
                allow_stop: false,
                reason: Some(format!("rebalance: {}", m.why)),
                request_id: Some(switchyard_client::new_request_id()),
            };
            match c.migrate(&req).await {
                Ok(w) => {
                    let id = MigrationId(w.first_revision);
                    if !ctx.json {
                        println!("migration {id}: {} {} → {}", m.guest, m.from, m.to);
                    }
                    in_flight.push((id, m.guest.to_string()));
                }
                // The cluster changed since the plan: this move is skipped, the rest go on.
                Err(e) => failed.push(format!("{} → {}: {e}", m.guest, m.to)),
            }
        }
        if in_flight.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        let mut still = Vec::new();
        for (id, guest) in in_flight {
            let m = c.migration(id).await?.items.migration;
            match m.phase {
                Phase::Completed => done.push(guest),
                p if p.is_terminal() => {
                    failed.push(format!("{guest} (migration {id}) {p}: {}", m.error.unwrap_or_default()))
                }
                _ => still.push((id, guest)),
            }
        }
        in_flight = still;
    }
    let summary = format!("{} of {} moves completed", done.len(), plan.moves.len());
    if ctx.json {
        let v = serde_json::json!({"plan": plan, "completed": done, "failed": failed});
        return if failed.is_empty() { Ok(format!("{v}\n")) } else { Err(CliError::Failed(format!("{v}\n"), summary)) };
    }
    if failed.is_empty() {
        Ok(format!("{summary}\n"))
    } else {
        Err(CliError::Failed(
            format!("not moved:\n  {}\n", failed.join("\n  ")),
            format!("{summary}; run it again to plan from where the cluster stands"),
        ))
    }
}

/// Every migration in flight in the cluster, page by page.
async fn in_flight_migrations(c: &switchyard_client::Client) -> Result<Vec<Migration>, CliError> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let q = MigrationQuery { phase: Some("in_flight".into()), after, limit: Some(1000), ..Default::default() };
        let page = c.migrations(&q).await?.items;
        out.extend(page.migrations);
        match page.next_after {
            Some(a) => after = Some(a.0),
            None => return Ok(out),
        }
    }
}
