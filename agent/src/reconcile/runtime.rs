//! The reconciler's runtime: feeds [`Reconciler::step`] the log's changes (from the daemon),
//! observations of the hypervisor (every `reconcile_interval`) and the results of the effects
//! it performed, and performs the effects on blocking threads. What the last reading found
//! (drift, pending changes, repairs made) goes into the agent's reports to the leader.
//!
//! A start is checked against the log before it happens: a linearizable read of the guest must
//! show the very order the start carries (same version, owner this host, `running`, no
//! migration in flight). An agent that lags, or follows a stale coordinator, therefore never
//! starts a guest the log has since moved elsewhere; without a leader it starts nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use switchyard_client::Client;
use switchyard_protocol::api::PackageQuery;
use switchyard_protocol::api::{
    FailoverOutcome, FailoverReportRequest, GuestDrift, HypervisorReport, RepairRequest, HYPERVISOR_REPORT_GUESTS_MAX,
};
use switchyard_protocol::{FencingToken, Guest, Name, Package, Revision, RunState};
use tokio::sync::{mpsc, watch};

use super::{Action, Effect, Input, Reconciler};
use crate::driver::HypervisorDriver;
use crate::lease::{Fence, Lease};
use crate::metrics::Metrics;
use crate::store::AgentStore;

/// What the daemon and the migration worker tell the runtime.
#[derive(Debug)]
pub enum Feed {
    /// A guest as the log now has it, with the token of the change.
    Guest {
        guest: Guest,
        token: FencingToken,
    },
    Removed {
        name: Name,
    },
    /// Every guest the log has (the agent's start, a re-sync).
    Reset {
        guests: Vec<Guest>,
    },
    /// Whether the migration worker holds a migration of the guest (its run state is then the
    /// worker's).
    Migrating {
        name: Name,
        in_flight: bool,
    },
    /// The migration worker has loaded the migrations it takes part in.
    MigrationsKnown,
    /// The log changed a package (its switching, or its guest) at `revision`: read it again.
    Package {
        name: Name,
        revision: Revision,
    },
    /// This host's lease changed ([`crate::lease`]).
    Fence(Fence),
    /// The log asks this host to start a failed host's guest (`FailoverStarted`, whose token
    /// this is): say how the start went once it did.
    Failover {
        guest: Name,
        token: FencingToken,
    },
    /// The leader ended this host's failover attempt on the order `token` (it waited too
    /// long): make sure no copy runs here, then release the attempt.
    AttemptEnded {
        guest: Name,
        token: FencingToken,
    },
}

pub struct Runtime {
    pub host: Name,
    pub driver: Arc<dyn HypervisorDriver>,
    pub client: Client,
    pub store: Arc<AgentStore>,
    pub interval: Duration,
    /// This host's lease, checked again right before a packaged guest starts.
    pub lease: watch::Receiver<Lease>,
    /// Whether a packaged guest runs or is to run here (what the watchdog guards).
    pub protects: watch::Sender<bool>,
    /// The fence the reconciler acts on, published once it does: the migration worker receives
    /// a packaged guest only while it is held, or the reconciler would fence the copy arriving.
    pub fence: watch::Sender<Fence>,
    pub metrics: Arc<Metrics>,
}

impl Runtime {
    /// Runs until the feed closes. Publishes the hypervisor report after every observation.
    pub async fn run(self, mut feed: mpsc::UnboundedReceiver<Feed>, report: watch::Sender<Option<HypervisorReport>>) {
        let started = self.store.started().unwrap_or_else(|e| {
            tracing::error!(%e, "cannot read the start tokens; every start is still checked against the log");
            BTreeMap::new()
        });
        let mut r = Reconciler::new(self.host.clone(), started);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Outcome>();
        // Inputs read from the log by tasks of their own (packages).
        let (read_tx, mut read_rx) = mpsc::unbounded_channel::<Input>();
        let switching = self.driver.switching().is_some();
        // The first feed is the agent's start, whose packages are read just below.
        let mut started_up = false;
        if switching {
            let (client, tx) = (self.client.clone(), read_tx.clone());
            tokio::spawn(async move {
                let _ = tx.send(Input::Packages(all_packages(&client).await));
            });
        }
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut repairs = 0u64;
        // Repairs under way, to record in the log once they succeed.
        let mut repairing: BTreeMap<Name, Action> = BTreeMap::new();
        // Failovers this host is asked to carry out, until it reported how they went.
        let mut failovers: BTreeMap<Name, FencingToken> = BTreeMap::new();
        // Failover orders given up here (by the order's revision): the guest never starts on
        // them again, whatever the reconciler plans meanwhile.
        let gave_up: GaveUp = Arc::default();
        // Attempts given up here, to report once no copy of the guest is left here: with the
        // start's error (this host's failure), or without (the leader ended it).
        let mut releasing: BTreeMap<Name, (FencingToken, Option<String>)> = BTreeMap::new();
        // Attempts the leader ended while this agent was away, read from the log at start.
        let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<(Name, FencingToken)>();
        {
            let (client, host) = (self.client.clone(), self.host.clone());
            tokio::spawn(async move {
                for (guest, token) in ended_attempts(&client, &host).await {
                    let _ = ended_tx.send((guest, token));
                }
            });
        }
        loop {
            let (input, repair) = tokio::select! {
                f = feed.recv() => match f {
                    Some(Feed::Package { name, revision }) => {
                        if switching {
                            let (client, tx) = (self.client.clone(), read_tx.clone());
                            tokio::spawn(async move {
                                if let Some(input) = read_package(&client, name, revision).await {
                                    let _ = tx.send(input);
                                }
                            });
                        }
                        continue;
                    }
                    Some(Feed::Failover { guest, token }) => {
                        failovers.insert(guest.clone(), token);
                        // Already running here (started on an earlier order): done.
                        if r.runs(&guest) {
                            failovers.remove(&guest);
                            self.report_failover(guest, token, FailoverOutcome::Started);
                        }
                        continue;
                    }
                    Some(Feed::AttemptEnded { guest, token }) => {
                        failovers.remove(&guest);
                        give_up(&gave_up, &mut releasing, &guest, token, None)
                    }
                    Some(f) => {
                        if switching && matches!(f, Feed::Reset { .. }) && started_up {
                            // A re-sync: the packages are read again with the guests.
                            let (client, tx) = (self.client.clone(), read_tx.clone());
                            tokio::spawn(async move {
                                let _ = tx.send(Input::Packages(all_packages(&client).await));
                            });
                        }
                        started_up = true;
                        (to_input(f), false)
                    }
                    None => return,
                },
                Some(input) = read_rx.recv() => (input, false),
                Some((guest, token)) = ended_rx.recv() => {
                    failovers.remove(&guest);
                    give_up(&gave_up, &mut releasing, &guest, token, None)
                }
                Some(Outcome { effect, result, by_driver }) = done_rx.recv() => {
                    self.metrics.action(effect.action.name(), result.is_ok());
                    match &result {
                        Ok(()) => tracing::info!(guest = %effect.guest, action = ?effect.action, reason = %effect.reason, "hypervisor updated"),
                        Err(e) => tracing::warn!(guest = %effect.guest, action = ?effect.action, %e, "hypervisor action failed; retried after the next observation"),
                    }
                    if let (Ok(()), Action::Start { .. }) = (&result, &effect.action) {
                        if let Err(e) = self.store.put_started(r.started()) {
                            tracing::error!(%e, "cannot record the start token");
                        }
                    }
                    if let (Action::Start { token }, Some(wanted)) = (&effect.action, failovers.get(&effect.guest).copied()) {
                        // By revision: after a re-sync the agent knows its guests' revisions
                        // only. A start that did not reach the hypervisor (no leader to confirm
                        // the order, the lease too short) is retried, not reported as failed.
                        if token.revision == wanted.revision && (result.is_ok() || by_driver) {
                            failovers.remove(&effect.guest);
                            match &result {
                                Ok(()) => self.report_failover(effect.guest.clone(), wanted, FailoverOutcome::Started),
                                // Reported once no copy is left here (a start that failed
                                // may still have left one).
                                Err(e) => {
                                    let (input, _) = give_up(&gave_up, &mut releasing, &effect.guest, wanted, Some(e.clone()));
                                    for e in r.step(input) {
                                        self.perform(e, done_tx.clone(), gave_up.clone());
                                    }
                                }
                            }
                        }
                    }
                    if repairing.get(&effect.guest) == Some(&effect.action) {
                        repairing.remove(&effect.guest);
                        if result.is_ok() {
                            self.metrics.repairs.inc();
                            self.record_repair(&effect);
                        }
                    }
                    (Input::Done { effect, result }, false)
                }
                _ = tick.tick() => {
                    if switching {
                        let driver = self.driver.clone();
                        match tokio::task::spawn_blocking(move || driver.switching().expect("checked").view()).await {
                            Ok(Ok(seen)) => {
                                let effects = r.step(Input::ObservedSwitching(seen));
                                for e in effects {
                                    repair_started(&e, &mut repairs, &mut repairing);
                                    self.perform(e, done_tx.clone(), gave_up.clone());
                                }
                            }
                            other => tracing::warn!(?other, "cannot read package switching from the cluster manager"),
                        }
                    }
                    let driver = self.driver.clone();
                    let observed = tokio::task::spawn_blocking(move || {
                        driver.lifecycle().expect("the runtime runs only for drivers with a lifecycle").observe()
                    })
                    .await;
                    match observed {
                        Ok(Ok(list)) => (Input::Observed(list), true),
                        Ok(Err(e)) => {
                            tracing::warn!(%e, "cannot read the hypervisor");
                            continue;
                        }
                        Err(e) => {
                            tracing::error!(%e, "hypervisor observation task failed");
                            continue;
                        }
                    }
                }
            };
            let effects = r.step(input);
            self.protects.send_if_modified(|p| std::mem::replace(p, r.protects()) != *p);
            self.fence.send_if_modified(|f| std::mem::replace(f, r.fence()) != *f);
            if repair {
                // The report is the last reading of the hypervisor (what differed then, before
                // the repairs it triggers), so a drift is visible for one interval at least.
                let seen = hypervisor_report(&r, repairs + effects.len() as u64);
                self.metrics.drift_guests.set(i64::try_from(seen.drift_total).unwrap_or(i64::MAX));
                self.metrics.pending_guests.set(i64::try_from(seen.pending_total).unwrap_or(i64::MAX));
                let _ = report.send(Some(seen));
            }
            for e in effects {
                if repair || (matches!(e.action, Action::Start { .. }) && r.went_down(&e.guest)) {
                    // Decided from an observation, not from a log change: the hypervisor had
                    // drifted from the log.
                    repair_started(&e, &mut repairs, &mut repairing);
                }
                self.perform(e, done_tx.clone(), gave_up.clone());
            }
            releasing.retain(|guest, (token, error)| {
                if !r.settled_off(guest) {
                    return true;
                }
                let outcome = match error.take() {
                    Some(error) => FailoverOutcome::Failed { error },
                    None => FailoverOutcome::Released,
                };
                self.report_failover(guest.clone(), *token, outcome);
                false
            });
        }
    }

    /// Commits a `GuestRepaired` event: the guest's history shows what was repaired and why.
    /// Retried with one request id while the cluster has no leader; a guest removed meanwhile
    /// (`unknown_guest`) is only logged.
    fn record_repair(&self, e: &Effect) {
        let req = RepairRequest {
            guest: e.guest.clone(),
            action: e.action.name().to_string(),
            reason: e.reason.chars().take(200).collect(),
            request_id: Some(switchyard_client::new_request_id()),
        };
        let (client, host) = (self.client.clone().retrying_writes(Duration::from_secs(60)), self.host.clone());
        tokio::spawn(async move {
            if let Err(e) = client.record_repair(&host, &req).await {
                tracing::warn!(guest = %req.guest, %e, "cannot record the repair in the log");
            }
        });
    }

    /// Commits how a failover's start went (retried with one request id while the cluster has
    /// no leader). A refusal means the failover moved on (another node, or over): only logged.
    fn report_failover(&self, guest: Name, token: FencingToken, outcome: FailoverOutcome) {
        let outcome = match outcome {
            FailoverOutcome::Failed { error } => FailoverOutcome::Failed { error: error.chars().take(500).collect() },
            other => other,
        };
        let req =
            FailoverReportRequest { guest, token, outcome, request_id: Some(switchyard_client::new_request_id()) };
        let (client, host) = (self.client.clone().retrying_writes(Duration::from_secs(60)), self.host.clone());
        tokio::spawn(async move {
            match client.report_failover(&host, &req).await {
                Ok(_) => tracing::info!(guest = %req.guest, %token, outcome = ?req.outcome, "failover reported"),
                Err(e) => tracing::warn!(guest = %req.guest, %e, "cannot report the failover to the log"),
            }
        });
    }

    fn perform(&self, e: Effect, done: mpsc::UnboundedSender<Outcome>, gave_up: GaveUp) {
        let (driver, client, host) = (self.driver.clone(), self.client.clone(), self.host.clone());
        let lease = self.lease.clone();
        tokio::spawn(async move {
            if let Action::Start { token } = &e.action {
                let abandoned = gave_up.lock().expect("gave-up lock").get(&e.guest) == Some(&token.revision);
                let checked = if abandoned {
                    Err("this host reported its failover attempt failed; the guest goes to another node".into())
                } else {
                    check_order(&client, &host, &e.guest, *token).await
                };
                let checked = checked.and_then(|packaged| {
                    // The plan saw the lease held; it must still hold with room for the start.
                    let left = lease.borrow().remaining(std::time::Instant::now());
                    if packaged && left < START_LEASE_MIN {
                        return Err(format!("not starting: this host's lease holds for {} ms only", left.as_millis()));
                    }
                    Ok(())
                });
                if let Err(why) = checked {
                    let _ = done.send(Outcome { effect: e, result: Err(why), by_driver: false });
                    return;
                }
            }
            let result = async {
                let effect = e.clone();
                tokio::task::spawn_blocking(move || {
                    if let Action::SetSwitching { package, node, enabled } = &effect.action {
                        let s = driver.switching().expect("switching is planned only with a cluster manager");
                        return s.set(package, node.as_ref(), *enabled);
                    }
                    let l = driver.lifecycle().expect("the runtime runs only for drivers with a lifecycle");
                    match &effect.action {
                        Action::Define { spec, version } => l.define(&effect.guest, spec, *version),
                        Action::Undefine => l.undefine(&effect.guest),
                        Action::Start { .. } => l.start(&effect.guest),
                        Action::Stop { hard } => l.stop_if(&effect.guest, *hard, &effect.seen).map(|stopped| {
                            if !stopped {
                                tracing::info!(guest = %effect.guest, "not stopped: its state changed since the decision");
                            }
                        }),
                        Action::SetSwitching { .. } => unreachable!("handled above"),
                    }
                })
                .await
                .map_err(|e| format!("driver task: {e}"))?
                .map_err(|e| e.to_string())
            }
            .await;
            let _ = done.send(Outcome { effect: e, result, by_driver: true });
        });
    }
}

/// Failover orders given up on, by guest: the revision of the order.
type GaveUp = Arc<std::sync::Mutex<BTreeMap<Name, Revision>>>;

/// Gives up the failover order `token` of `guest` here: no start on it any more, a report once
/// no copy is left. Answers the reconciler's input.
fn give_up(
    gave_up: &GaveUp,
    releasing: &mut BTreeMap<Name, (FencingToken, Option<String>)>,
    guest: &Name,
    token: FencingToken,
    error: Option<String>,
) -> (Input, bool) {
    gave_up.lock().expect("gave-up lock").insert(guest.clone(), token.revision);
    releasing.insert(guest.clone(), (token, error));
    (Input::GaveUp { name: guest.clone(), revision: token.revision }, false)
}

/// The failover attempts on `host` the leader ended and that wait for its release, read from
/// the log (retried until a coordinator answers).
async fn ended_attempts(client: &Client, host: &Name) -> Vec<(Name, FencingToken)> {
    loop {
        match client.ha_status().await {
            Ok(s) => {
                return s
                    .items
                    .failovers
                    .into_iter()
                    .filter(|f| f.target == *host && f.attempt_failed.is_some() && !f.released)
                    .map(|f| (f.guest, f.token))
                    .collect()
            }
            Err(e) => {
                tracing::debug!(%e, "cannot read the failovers yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// How an effect ended.
struct Outcome {
    effect: Effect,
    result: Result<(), String>,
    /// Whether the hypervisor (or cluster manager) was asked at all: an effect stopped by a
    /// check before it (the log's order, the lease) did not fail on the hypervisor.
    by_driver: bool,
}

/// How long the lease must still hold when a packaged guest starts.
const START_LEASE_MIN: Duration = Duration::from_millis(500);

/// A start happens only on the order the log holds now (read linearizably). Answers whether
/// the guest is in a package.
async fn check_order(client: &Client, host: &Name, guest: &Name, token: FencingToken) -> Result<bool, String> {
    let view = client.guest(guest).await.map_err(|e| format!("cannot confirm the order with the log: {e}"))?.items;
    let g = &view.guest;
    if g.version != token.revision || g.owner != *host || g.run_state != RunState::Running {
        return Err(format!(
            "the log moved on (version {}, owner {}, {:?}); not starting on the order at revision {}",
            g.version, g.owner, g.run_state, token.revision
        ));
    }
    if let Some(m) = &view.migration {
        return Err(format!("migration {} of the guest is in flight", m.id));
    }
    // A failover attempt on this host that has ended (reported failed, or timed out by the
    // leader) is over: the leader may already be starting the guest on the next node.
    if let Some(f) = view.failover.as_ref().filter(|f| f.target == *host && f.attempt_failed.is_some()) {
        return Err(format!(
            "the failover attempt here ended ({}); the guest goes to another node",
            f.attempt_failed.as_deref().unwrap_or_default()
        ));
    }
    Ok(g.spec.package.is_some())
}

fn to_input(f: Feed) -> Input {
    match f {
        Feed::Guest { guest, token } => Input::Guest { guest, token },
        Feed::Removed { name } => Input::Removed { name },
        // The term of each guest's last change is not kept on the host; orders are compared
        // by revision (see the module docs of `reconcile`).
        Feed::Reset { guests } => Input::Reset {
            guests: guests
                .into_iter()
                .map(|g| {
                    let token = FencingToken { term: 0, revision: g.version };
                    (g, token)
                })
                .collect(),
        },
        Feed::Migrating { name, in_flight } => Input::Migrating { name, in_flight },
        Feed::MigrationsKnown => Input::MigrationsKnown,
        Feed::Fence(fence) => Input::Fence(fence),
        Feed::Package { .. } | Feed::Failover { .. } | Feed::AttemptEnded { .. } => {
            unreachable!("handled by the runtime")
        }
    }
}

/// Every package the log has, page by page; retried until a coordinator answers.
async fn all_packages(client: &Client) -> Vec<Package> {
    loop {
        let mut all = Vec::new();
        let mut q = PackageQuery { limit: Some(1000), ..Default::default() };
        let done = loop {
            match client.packages(&q).await {
                Ok(page) => {
                    all.extend(page.items);
                    match page.next_after {
                        Some(after) => q.after = Some(Name::new(&after).expect("the API names packages")),
                        None => break true,
                    }
                }
                Err(e) => {
                    tracing::warn!(%e, "cannot read the packages yet; retrying");
                    break false;
                }
            }
        };
        if done {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A package as of `revision` or later; `PackageRemoved` when the log no longer has it.
async fn read_package(client: &Client, name: Name, revision: Revision) -> Option<Input> {
    for _ in 0..120 {
        match client.get_since::<Package>(&format!("/v1/packages/{name}"), revision).await {
            Ok(p) => return Some(Input::Package(p.items)),
            Err(e) if e.code() == Some("unknown_package") => return Some(Input::PackageRemoved { name }),
            Err(e) => {
                tracing::debug!(%e, package = %name, "cannot read the package yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    tracing::warn!(package = %name, "gave up reading the package; the next restart reads every package again");
    None
}

/// Counts a repair and remembers it, to record it in the log once it succeeds.
fn repair_started(e: &Effect, repairs: &mut u64, repairing: &mut BTreeMap<Name, Action>) {
    *repairs += 1;
    tracing::warn!(guest = %e.guest, action = ?e.action, reason = %e.reason, "repairing drift from the log");
    repairing.insert(e.guest.clone(), e.action.clone());
}

fn hypervisor_report(r: &Reconciler, repairs: u64) -> HypervisorReport {
    let drift = r.drift();
    let pending = r.pending();
    HypervisorReport {
        drift_total: drift.len() as u64,
        drift: drift
            .into_iter()
            .take(HYPERVISOR_REPORT_GUESTS_MAX)
            .map(|(guest, drift)| GuestDrift { guest, drift })
            .collect(),
        pending_total: pending.len() as u64,
        pending: pending.into_iter().take(HYPERVISOR_REPORT_GUESTS_MAX).collect(),
        repairs,
    }
}
