//! The agent's part in migrations (SPEC §5): the source runs the transfer through its hypervisor
//! driver and reports its end and the freeze time; the target reports that the guest runs there.
//! After a failed or aborted migration, a target that finds the guest running on itself (a
//! transfer that ended after the rollback was committed) moves it back to the source, so the
//! hypervisors agree with the log's single owner. When a packaged guest's source or target
//! failed instead (its fence stopped its copies), nothing can move back: the target holds a
//! copy that arrived until the guest's failover gives it to that host, and a source whose guest
//! left to a failed target starts it again.
//!
//! Orders are committed phase events only, never direct calls from a coordinator, so a deposed
//! leader cannot give one. Each order carries a fencing token (Raft term, revision); the worker
//! acts on a migration's phase once per token (de-duplicated through the durable [`Journal`]),
//! refuses events whose token is not newer than the one it holds, and ignores answers from a
//! leader whose term is older than the newest it has seen.
//!
//! The worker is level-triggered: every tick it looks at each migration it takes part in and
//! does what the committed phase asks, so a restart, a lost report or a leader change only
//! delays it. Before re-reporting after a restart, it asks the driver where the guest runs.
//!
//! A migration's `transferring` phase is the one that waits on agents, so while one is in it the
//! worker ticks fast ([`FAST_TICK`], or the driver's own poll interval when shorter): it
//! notices the end of a transfer (or the guest arriving) within one fast tick, and retries a
//! report no coordinator took within one fast tick (the cluster may be electing a new leader). Each report goes to every coordinator; once one is
//! acknowledged it is repeated only every [`TICK`], for a leader that may not hold it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_client::{Client, ClientError};
use switchyard_protocol::api::{
    HostView, MigrationDetail, MigrationPage, MigrationReport, Read, ReportOutcome, TargetCheckRequest,
};
use switchyard_protocol::{
    Event, EventPayload, FencingToken, HostState, Migration, MigrationId, MigrationKind, Name, Phase, PhaseRecord,
    Revision,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::driver::{DriverError, HypervisorDriver, Moved, Transfer, VmState};
use crate::lease::Fence;
use crate::metrics::Metrics;
use crate::reconcile::runtime::Feed;
use crate::store::{AgentStore, Journal, TransferState};

/// How long a target watches for a guest that arrives after its migration was rolled back.
const ROLLBACK_WATCH: Duration = Duration::from_secs(60);
/// Tick while no migration this host takes part in waits on it; also how often an acknowledged
/// report is repeated.
const TICK: Duration = Duration::from_millis(300);
/// Tick while a migration this host takes part in is `transferring`.
const FAST_TICK: Duration = Duration::from_millis(40);

struct Running {
    cancel: Arc<AtomicBool>,
    handle: JoinHandle<Result<Moved, DriverError>>,
}

/// One migration this host takes part in.
struct Active {
    m: Migration,
    transfer: Option<Running>,
    /// Set once a restarted agent has checked with its driver where the guest runs.
    verified: bool,
    /// Target after a rollback: keep watching for the guest until then.
    watch_until: Option<Instant>,
    /// What this host did for the migration, as on disk.
    journal: Option<Journal>,
    /// When a leader last acknowledged this host's report on the phase with this token.
    reported: Option<(FencingToken, Instant)>,
    /// Reports in a row that no leader took (a warning every 50).
    report_failures: u32,
    /// Target: when it last asked the driver whether the guest arrived.
    polled_at: Option<Instant>,
    /// After a failed or aborted online migration: the target's first word on whether the guest
    /// ran there (`MigrationTargetChecked`), as the log holds it.
    target_runs: Option<bool>,
    /// Target: the request id of its word, kept for retries (a retry commits nothing new).
    check_request: Option<String>,
    /// Source: it said once that it waits for the target's word.
    waiting_told: bool,
    /// It said once that it waits for this host's lease before receiving the guest.
    lease_told: bool,
    /// It said once that it waits for an older migration of the guest to finish here.
    behind_told: bool,
}

/// What the daemon hands the worker.
pub enum Input {
    /// A migration event, in revision order.
    Event(Box<Event>),
    /// The agent re-synced from full state: events were skipped, learn the migrations again.
    Reload,
    /// The agent now follows another cluster (a restored one): what it did for the old
    /// cluster's migrations, and the tokens and terms it saw there, mean nothing here. Forget
    /// them, then learn the new cluster's migrations.
    Reset,
}

pub struct Worker {
    host: Name,
    client: Client,
    driver: Arc<dyn HypervisorDriver>,
    store: Arc<AgentStore>,
    active: HashMap<MigrationId, Active>,
    /// Newest leader term seen in events and answers.
    term: u64,
    /// The newest migration of each guest this agent has heard of (whoever takes part): a
    /// rollback watch ends when a newer migration of the guest exists.
    newest: HashMap<Name, MigrationId>,
    /// Each guest's newest failover start this agent has seen: the host it went to, and the
    /// revision of that order.
    failed_over: HashMap<Name, (Name, Revision)>,
    /// The reconciler (drivers with a lifecycle): told which guests' run state the worker holds,
    /// and the fence it acts on.
    reconciler: Option<(mpsc::UnboundedSender<Feed>, watch::Receiver<Fence>)>,
    metrics: Arc<Metrics>,
}

impl Worker {
    pub fn new(
        host: Name,
        client: Client,
        driver: Arc<dyn HypervisorDriver>,
        store: Arc<AgentStore>,
        reconciler: Option<(mpsc::UnboundedSender<Feed>, watch::Receiver<Fence>)>,
        metrics: Arc<Metrics>,
    ) -> Worker {
        Worker {
            host,
            client,
            driver,
            store,
            active: HashMap::new(),
            term: 0,
            newest: HashMap::new(),
            failed_over: HashMap::new(),
            reconciler,
            metrics,
        }
    }

    /// Tells the reconciler whether the worker holds a migration of `guest`.
    fn tell_reconciler(&self, guest: &Name) {
        if let Some((r, _)) = &self.reconciler {
            let in_flight = self.active.values().any(|a| &a.m.guest == guest);
            let _ = r.send(Feed::Migrating { name: guest.clone(), in_flight });
        }
    }

    /// Runs until the channel closes. `input` carries every migration event the agent applies.
    pub async fn run(mut self, mut input: mpsc::UnboundedReceiver<Input>) {
        self.load().await;
        loop {
            let tick = if self.active.values().any(|a| a.m.phase == Phase::Transferring) {
                FAST_TICK.min(self.driver.poll_interval())
            } else {
                TICK
            };
            tokio::select! {
                i = input.recv() => match i {
                    Some(Input::Event(e)) => self.on_event(&e).await,
                    Some(Input::Reload) => self.load().await,
                    Some(Input::Reset) => {
                        self.forget();
                        self.load().await;
                    }
                    None => return,
                },
                _ = tokio::time::sleep(tick) => {}
            }
            self.step_all().await;
        }
    }

    fn forget(&mut self) {
        for (_, a) in self.active.drain() {
            if let Some(t) = a.transfer {
                t.cancel.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            if let Some((r, _)) = &self.reconciler {
                let _ = r.send(Feed::Migrating { name: a.m.guest.clone(), in_flight: false });
            }
        }
        self.newest.clear();
        self.failed_over.clear();
        self.term = 0;
        match self.store.journals() {
            Ok(js) => {
                for j in js {
                    if let Err(e) = self.store.remove_journal(j.migration) {
                        tracing::error!(%e, "cannot remove a journal entry of the old cluster");
                    }
                }
            }
            Err(e) => tracing::error!(%e, "cannot read the migration journal"),
        }
    }

    /// Learns the in-flight migrations this host takes part in, and the ones its journal
    /// remembers (possibly finished while the agent was down).
    ///
    /// The list must cover every migration event up to where the agent's subscription starts
    /// (its cursor; later events come from the stream). Any coordinator that has applied the
    /// cursor can therefore answer, so an agent that starts while the cluster has no leader
    /// still learns the transfers it was ordered to do.
    async fn load(&mut self) {
        let path = format!("/v1/migrations?host={}&phase=in_flight&limit=1000", self.host);
        let page: Read<MigrationPage> = loop {
            // An unreadable cursor: accept only a linearizable read.
            let cursor = self.store.cursor().unwrap_or(Revision::MAX);
            match self.client.get_since(&path, cursor).await {
                Ok(p) => break p,
                Err(e) => {
                    tracing::warn!(%e, "cannot list migrations yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        let cursor = page.revision;
        let journals: HashMap<MigrationId, Journal> = match self.store.journals() {
            Ok(js) => js.into_iter().map(|j| (j.migration, j)).collect(),
            Err(e) => {
                tracing::error!(%e, "cannot read the migration journal");
                HashMap::new()
            }
        };
        for m in page.items.migrations {
            let journal = journals.get(&m.id).cloned();
            self.adopt(m, false, journal, None);
        }
        for (id, j) in journals {
            if !self.active.contains_key(&id) {
                if let Some(d) = self.fetch(id, cursor).await {
                    self.adopt(d.migration, false, Some(j), d.target_runs);
                }
            }
        }
        // Until here the worker needed a leader (the list is a linearizable read); from now on
        // it follows migrations from the event stream.
        tracing::info!(host = %self.host, in_flight = self.active.len(), "migrations loaded");
        if let Some((r, _)) = &self.reconciler {
            let _ = r.send(Feed::MigrationsKnown);
        }
    }

    fn adopt(&mut self, m: Migration, verified: bool, journal: Option<Journal>, target_runs: Option<bool>) {
        let newest = self.newest.entry(m.guest.clone()).or_insert(m.id);
        *newest = (*newest).max(m.id);
        if !m.involves(&self.host) {
            return;
        }
        self.term = self.term.max(m.current().term);
        let guest = m.guest.clone();
        self.active.entry(m.id).or_insert(Active {
            m,
            transfer: None,
            verified,
            watch_until: None,
            journal,
            reported: None,
            report_failures: 0,
            polled_at: None,
            target_runs,
            check_request: None,
            waiting_told: false,
            lease_told: false,
            behind_told: false,
        });
        self.tell_reconciler(&guest);
    }

    /// A migration (with the target's word after a rollback) as of `revision` or later.
    async fn fetch(&self, id: MigrationId, revision: Revision) -> Option<MigrationDetail> {
        match self.client.get_since::<MigrationDetail>(&format!("/v1/migrations/{}", id.0), revision).await {
            Ok(r) => Some(r.items),
            Err(e) => {
                tracing::warn!(migration = %id, %e, "cannot read migration");
                None
            }
        }
    }

    async fn on_event(&mut self, e: &Event) {
        self.term = self.term.max(e.term);
        match &e.payload {
            EventPayload::MigrationRequested { migration } => {
                let mut m = migration.clone();
                m.history[0].term = e.term;
                self.adopt(m, true, None, None);
            }
            EventPayload::MigrationPhaseChanged { id, phase, freeze_time_ms, error, .. } => {
                let token = e.token();
                match self.active.get_mut(id) {
                    Some(a) if token <= a.m.current().token() => {
                        tracing::debug!(migration = %id, %token, held = %a.m.current().token(),
                            "refusing an order that is not newer than the one already held");
                    }
                    Some(a) => {
                        a.m.phase = *phase;
                        a.m.history.push(PhaseRecord { phase: *phase, at: e.time, revision: e.revision, term: e.term });
                        if freeze_time_ms.is_some() {
                            a.m.freeze_time_ms = *freeze_time_ms;
                        }
                        if error.is_some() {
                            a.m.error = error.clone();
                        }
                    }
                    None => {
                        // Requested before this agent's cursor (or before a re-sync).
                        if let Some(d) = self.fetch(*id, e.revision).await {
                            let journal =
                                self.store.journals().ok().and_then(|js| js.into_iter().find(|j| j.migration == *id));
                            self.adopt(d.migration, true, journal, d.target_runs);
                        }
                    }
                }
            }
            EventPayload::FailoverStarted { guest, to, .. } => {
                self.failed_over.insert(guest.clone(), (to.clone(), e.revision));
            }
            // Only the first word counts: a copy that ran on the target makes the source's stale.
            EventPayload::MigrationTargetChecked { id, runs_there, .. } => {
                if let Some(a) = self.active.get_mut(id) {
                    a.target_runs.get_or_insert(*runs_there);
                }
            }
            _ => {}
        }
    }

    async fn step_all(&mut self) {
        let ids: Vec<MigrationId> = self.active.keys().copied().collect();
        for id in ids {
            let done = self.step(id).await;
            if done {
                if let Some(a) = self.active.remove(&id) {
                    self.tell_reconciler(&a.m.guest);
                }
                if let Err(e) = self.store.remove_journal(id) {
                    tracing::error!(migration = %id, %e, "cannot remove journal entry");
                }
            }
        }
    }

    /// Does what the migration's committed phase asks of this host. True when finished with it.
    ///
    /// A host works on one migration of a guest at a time, oldest first: a newer one waits
    /// while an older one still has work here (a rollback deciding what becomes of a paused
    /// copy, a guest to send back). Each reads the guest's state on this hypervisor as its
    /// own, so a newer migration acting first would take a copy an older one left paused for a
    /// transfer of its own, and the older one would find the newer one's doings.
    async fn step(&mut self, id: MigrationId) -> bool {
        let a = self.active.get(&id).expect("stepping a known migration");
        let m = a.m.clone();
        let is_source = m.source == self.host;
        if let Some(older) = self.active.values().filter(|o| o.m.guest == m.guest && o.m.id < id).map(|o| o.m.id).min()
        {
            let a = self.active.get_mut(&id).expect("known");
            if !a.behind_told {
                a.behind_told = true;
                tracing::info!(migration = %id, guest = %m.guest, %older, "waiting for an older migration of the guest to finish on this host");
            }
            return false;
        }
        match m.phase {
            Phase::Transferring if is_source => self.step_source(id).await,
            Phase::Transferring => {
                if self.active[&id].journal.is_none() {
                    // Remembered across a restart: if the migration fails while this agent is
                    // down, it still checks for a guest that arrived anyway.
                    self.journal(&m, m.current().token(), TransferState::Receiving);
                }
                // Whether the guest arrived is asked at the driver's pace (a call may start a
                // process), not every fast tick.
                let poll = self.driver.poll_interval();
                if self.recently_reported(id) || self.active[&id].polled_at.is_some_and(|t| t.elapsed() < poll) {
                    return false;
                }
                if self.driver.lifecycle().is_some() && self.may_receive(id) {
                    // A hypervisor that must be ready to receive (QEMU listens with -incoming).
                    match self.host_address(&self.host, m.current().revision).await {
                        Ok(address) => {
                            let t = transfer_of(&m, address);
                            let driver = self.driver.clone();
                            match tokio::task::spawn_blocking(move || driver.prepare_incoming(&t)).await {
                                Ok(Ok(())) => {}
                                other => {
                                    tracing::warn!(migration = %id, ?other, "cannot get ready to receive the guest; will retry")
                                }
                            }
                        }
                        Err(e) => tracing::warn!(migration = %id, %e, "cannot read this host's address; will retry"),
                    }
                }
                if self.arrived(&m).await == Some(true) {
                    self.report(&m, ReportOutcome::GuestRunning).await;
                } else if let Some(a) = self.active.get_mut(&id) {
                    a.polled_at = Some(Instant::now());
                }
                false
            }
            Phase::Completed => {
                self.stop_transfer(id).await;
                true
            }
            Phase::Failed | Phase::Aborted if is_source => {
                self.stop_transfer(id).await;
                self.step_source_rollback(id).await
            }
            Phase::Failed | Phase::Aborted => self.step_rollback(id).await,
            _ => false,
        }
    }

    async fn step_source(&mut self, id: MigrationId) -> bool {
        let a = self.active.get_mut(&id).expect("known");
        let m = a.m.clone();
        let token = m.current().token();
        // A transfer under way: collect its end.
        if let Some(t) = &a.transfer {
            if !t.handle.is_finished() {
                return false;
            }
            let t = a.transfer.take().expect("checked");
            let state = match t.handle.await {
                Ok(Ok(moved)) => TransferState::Done { freeze_time_ms: moved.freeze_ms, stats: moved.stats },
                Ok(Err(DriverError::Cancelled)) => return false,
                Ok(Err(DriverError::Failed(error))) => TransferState::Failed { error },
                Err(e) => TransferState::Failed { error: format!("driver task: {e}") },
            };
            tracing::info!(migration = %id, guest = %m.guest, ?state, "transfer ended");
            self.journal(&m, token, state);
        }
        let a = &self.active[&id];
        let state = a
            .journal
            .clone()
            .filter(|j| j.token == token && j.transfer != TransferState::Receiving)
            .map(|j| j.transfer);
        let verified = a.verified;
        match state {
            // Never acted on this order, or (after a restart) a transfer that may or may not
            // have finished: ask the driver where the guest is before anything else.
            // (`Receiving` is the target's state; a host is never both ends of a migration.)
            None | Some(TransferState::Started) | Some(TransferState::Receiving) => {
                let here = self.runs_here(&m.guest, &m.source).await;
                match here {
                    Some(true) => self.start_transfer(&m, token).await,
                    Some(false) => match self.lifecycle_state(&m.guest).await {
                        // A hypervisor that knows its guests tells "moved" from "not running".
                        // Sent by a transfer this agent started for this migration before it
                        // restarted: the transfer reports the figures of the one QEMU completed.
                        Some(VmState::Migrated) if state == Some(TransferState::Started) => {
                            self.start_transfer(&m, token).await
                        }
                        // A copy paused by a transfer of another migration, which this host
                        // never started for this one: it is not this migration's transfer, and
                        // only the rollback of the migration that left it decides whether it
                        // resumes. Moving it would send nothing the target could run.
                        Some(VmState::Migrated) => {
                            let a = self.active.get_mut(&id).expect("known");
                            if !a.waiting_told {
                                a.waiting_told = true;
                                tracing::warn!(migration = %id, guest = %m.guest, "the guest's copy here was left paused by another migration's transfer; waiting for it to be resumed");
                            }
                        }
                        // Not started yet (the guest was created just before the move), or
                        // stopped behind the log's back: the log says it runs here, and an
                        // online move needs it running. Start it first; move it next tick.
                        Some(VmState::ShutOff) if m.kind == MigrationKind::Online => {
                            let (driver, guest) = (self.driver.clone(), m.guest.clone());
                            let r = tokio::task::spawn_blocking(move || {
                                driver.lifecycle().expect("a lifecycle state was read").start(&guest)
                            })
                            .await;
                            match r {
                                Ok(Ok(())) => {
                                    tracing::info!(migration = %id, guest = %m.guest, "started the guest on the source before moving it: the log says it runs")
                                }
                                other => {
                                    tracing::warn!(migration = %id, ?other, "cannot start the guest before moving it; will retry")
                                }
                            }
                        }
                        Some(_) | None if self.driver.lifecycle().is_some() && m.kind == MigrationKind::Online => {
                            tracing::warn!(migration = %id, guest = %m.guest, "the guest is neither running nor moved here; will look again");
                        }
                        _ => {
                            tracing::info!(migration = %id, guest = %m.guest, "guest already left this host");
                            self.journal(&m, token, TransferState::Done { freeze_time_ms: None, stats: None });
                        }
                    },
                    None => {}
                }
            }
            Some(TransferState::Done { .. }) if !verified => {
                // Restarted with a finished transfer on record: confirm the guest really left.
                if self.runs_here(&m.guest, &m.source).await == Some(true) {
                    tracing::warn!(migration = %id, guest = %m.guest, "journal says transferred but the guest runs here; transferring again");
                    self.start_transfer(&m, token).await;
                } else if let Some(a) = self.active.get_mut(&id) {
                    a.verified = true;
                }
            }
            Some(TransferState::Done { freeze_time_ms, stats }) => {
                if !self.recently_reported(id) {
                    self.report(&m, ReportOutcome::TransferDone { freeze_time_ms, stats }).await;
                }
            }
            Some(TransferState::Failed { error }) => {
                if !self.recently_reported(id) {
                    self.report(&m, ReportOutcome::TransferFailed { error }).await;
                }
            }
        }
        false
    }

    /// Whether this host may get ready to receive migration `id`'s guest now. A packaged guest
    /// only while the reconciler holds this host's lease: with the lease lost it stops every
    /// packaged copy here (self-fencing), the one arriving included, and with no renewal
    /// acknowledged yet the guest may not start here. A host the leader has just readmitted
    /// after a failure is in between until its next renewal is answered: the migration waits
    /// for it (the source retries its connection while the target does not listen).
    fn may_receive(&mut self, id: MigrationId) -> bool {
        let fence = self.reconciler.as_ref().map_or(Fence::Held, |(_, f)| *f.borrow());
        let a = self.active.get_mut(&id).expect("known");
        if !a.m.has_package() || fence == Fence::Held {
            a.lease_told = false;
            return true;
        }
        if !a.lease_told {
            a.lease_told = true;
            tracing::info!(migration = %id, guest = %a.m.guest, ?fence, "waiting for this host's lease before receiving the packaged guest");
        }
        false
    }

    /// A host's address, as of `since` (the commit that ordered a transfer, or ended the
    /// migration a guest goes back from) or later. Any coordinator that has applied that commit
    /// can answer (a stale read checked against the revision), so a transfer ordered just before
    /// the leader died starts while the cluster elects the next one, instead of waiting for a
    /// leader to serve a linearizable read. Both reads give an address at or after the commit;
    /// neither can rule out a change right after it, which the fencing token, not the address,
    /// guards against.
    async fn host_address(&self, host: &Name, since: Revision) -> Result<String, ClientError> {
        let h: Read<HostView> = self.client.get_since(&format!("/v1/hosts/{host}"), since).await?;
        Ok(h.items.host.spec.address)
    }

    /// Whether the log says `host` failed, as of `since` or later (false when it cannot be read:
    /// the caller then keeps waiting, the safe side).
    async fn host_failed(&self, host: &Name, since: Revision) -> bool {
        match self.client.get_since::<HostView>(&format!("/v1/hosts/{host}"), since).await {
            Ok(h) => h.items.state == HostState::Failed,
            Err(e) => {
                tracing::warn!(%host, %e, "cannot read the host's state; will retry");
                false
            }
        }
    }

    async fn start_transfer(&mut self, m: &Migration, token: FencingToken) {
        // The cluster manager must not fail the guest over while it moves (hpvmsg_move's
        // `cmmodpkg -d` before `hpvmmigrate -o`): the log disabled the package's switching
        // before ordering the transfer, and the cluster manager is told so before it starts,
        // not whenever the reconciler gets to it. Retried on the next tick if it fails.
        if let (MigrationKind::Online, Some(package), Some(_)) = (m.kind, &m.package, self.driver.switching()) {
            let (driver, p) = (self.driver.clone(), package.clone());
            match tokio::task::spawn_blocking(move || driver.switching().expect("checked").set(&p, None, false)).await {
                Ok(Ok(())) => {
                    tracing::info!(migration = %m.id, %package, "package switching disabled on the cluster manager for the move")
                }
                other => {
                    tracing::warn!(migration = %m.id, %package, ?other, "cannot disable package switching on the cluster manager; the move waits");
                    return;
                }
            }
        }
        let target_address = match self.host_address(&m.target, token.revision).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(migration = %m.id, %e, "cannot read the target's address; will retry");
                return;
            }
        };
        self.journal(m, token, TransferState::Started);
        let t = transfer_of(m, target_address);
        let cancel = Arc::new(AtomicBool::new(false));
        let (driver, flag) = (self.driver.clone(), cancel.clone());
        let handle = tokio::task::spawn_blocking(move || driver.transfer(&t, &flag));
        tracing::info!(migration = %m.id, guest = %m.guest, target = %m.target, "transfer started");
        if let Some(a) = self.active.get_mut(&m.id) {
            a.transfer = Some(Running { cancel, handle });
            a.verified = true;
        }
    }

    /// Stops a transfer of a migration that ended (aborted, failed) and waits for it to stop.
    async fn stop_transfer(&mut self, id: MigrationId) {
        if let Some(t) = self.active.get_mut(&id).and_then(|a| a.transfer.take()) {
            t.cancel.store(true, Ordering::SeqCst);
            let r = t.handle.await;
            tracing::info!(migration = %id, ?r, "transfer stopped: the migration ended");
        }
    }

    /// Source of a failed or aborted migration, on a hypervisor with a lifecycle. If the
    /// transfer completed on the hypervisor before the rollback was committed, this host's copy
    /// sits paused (`Migrated`) and the target decides what happens to it, by its first word in
    /// the log ([`Worker::step_rollback`]):
    /// - the guest ran there: this copy is stale for good; this host gets ready to receive the
    ///   guest back (the target sends it) and holds it until it is back;
    /// - no copy is left there and none can arrive: this copy is the guest's latest state, and
    ///   it resumes here (libvirt's Confirm after a failed Finish).
    ///
    /// Until the word comes, the copy stays paused: resuming it could make two copies, and
    /// replacing it would lose the guest if nothing comes back. True when done.
    async fn step_source_rollback(&mut self, id: MigrationId) -> bool {
        if self.driver.lifecycle().is_none() {
            return true;
        }
        let a = &self.active[&id];
        let (m, word) = (a.m.clone(), a.target_runs);
        // A newer migration of the guest does not end this: it waits for it on this host
        // ([`Worker::step`]), so the state read here is still this migration's doing.
        let state = match self.lifecycle_state(&m.guest).await {
            Some(s @ (VmState::Migrated | VmState::Incoming)) => s,
            // A copy that came back and waits to be started.
            Some(s @ VmState::Paused(_)) if word == Some(true) => s,
            Some(_) => return true,
            // Logged by `lifecycle_state`; asked again next tick.
            None => return false,
        };
        // A packaged guest's target that failed has been fenced (its packaged guests stopped
        // before the leader could declare it failed): nothing runs there and nothing will send
        // the guest back. The reconciler starts it here, where the log says it runs.
        if m.has_package() && self.host_failed(&m.target, m.current().revision).await {
            tracing::warn!(migration = %id, guest = %m.guest, target = %m.target, "the guest left before the rollback and its target failed; starting it here again");
            return true;
        }
        match (word, &state) {
            (Some(false), VmState::Migrated) => {
                let (driver, guest) = (self.driver.clone(), m.guest.clone());
                let r =
                    tokio::task::spawn_blocking(move || driver.lifecycle().expect("checked").resume_migrated(&guest))
                        .await;
                match r {
                    Ok(Ok(())) => {
                        tracing::info!(migration = %id, guest = %m.guest, target = %m.target, "the target holds no copy of the guest; resumed the one the transfer left paused here")
                    }
                    other => tracing::warn!(migration = %id, ?other, "cannot resume the paused copy; will retry"),
                }
                return false;
            }
            (Some(false), _) => {
                tracing::warn!(migration = %id, guest = %m.guest, %state, "the target holds no copy of the guest and this host's copy was replaced; the reconciler starts it afresh");
                return true;
            }
            (None, VmState::Migrated) => {
                let a = self.active.get_mut(&id).expect("known");
                if !a.waiting_told {
                    a.waiting_told = true;
                    tracing::info!(migration = %id, guest = %m.guest, target = %m.target, "the guest left before the rollback; its copy here stays paused until the target says whether it ran there");
                }
                return false;
            }
            _ => {}
        }
        if !self.may_receive(id) {
            return false;
        }
        let address = match self.host_address(&self.host, m.current().revision).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(migration = %id, %e, "cannot read this host's address; will retry");
                return false;
            }
        };
        let back = transfer_back(&m, address);
        let driver = self.driver.clone();
        match tokio::task::spawn_blocking(move || driver.prepare_incoming(&back)).await {
            Ok(Ok(())) => {
                tracing::info!(migration = %id, guest = %m.guest, "the guest ran on the target; waiting to receive it back")
            }
            other => tracing::warn!(migration = %id, ?other, "cannot get ready to receive the guest back; will retry"),
        }
        false
    }

    /// Target of a failed or aborted migration: if the guest shows up here, send it back.
    async fn step_rollback(&mut self, id: MigrationId) -> bool {
        let a = self.active.get_mut(&id).expect("known");
        let until = *a.watch_until.get_or_insert_with(|| Instant::now() + ROLLBACK_WATCH);
        let m = a.m.clone();
        // A transfer may have completed on the source, which then holds its copy paused until
        // this host says whether the guest ran here ([`Worker::step_source_rollback`]). That
        // word, and the guest's way back when it ran here, are owed whatever comes next: a
        // newer migration of the guest waits for them on both hosts.
        let transferred = m.history.iter().any(|r| r.phase == Phase::Transferring);
        let owes_word = self.driver.lifecycle().is_some() && m.kind == MigrationKind::Online && transferred;
        if !owes_word && self.newest.get(&m.guest).is_some_and(|n| *n > id) {
            // A newer migration of the guest decides where it runs now.
            return true;
        }
        // A packaged guest's source that failed has been fenced (its packaged guests stopped
        // before the leader could declare it failed): no transfer can still arrive, and nothing
        // can go back there. The guest's failover comes here first (`ha::copy_left_by_move`):
        // the reconciler keeps or starts the guest if the log makes this host its owner, and
        // stops any copy here otherwise.
        if m.has_package() && self.host_failed(&m.source, m.current().revision).await {
            // A copy running here (the move finished just before the source was lost) stays
            // held, so the reconciler leaves it alone, until the failover has given it to this
            // host; it is stopped only if the log gives it elsewhere once the watch ends.
            let given_here = self
                .failed_over
                .get(&m.guest)
                .is_some_and(|(to, revision)| *to == self.host && *revision > m.current().revision);
            if !given_here && Instant::now() <= until && self.runs_here(&m.guest, &m.source).await == Some(true) {
                return false;
            }
            tracing::warn!(migration = %id, guest = %m.guest, source = %m.source, given_here, "the migration ended and its source failed; the log decides whether the guest runs here");
            return true;
        }
        if owes_word {
            match self.active[&id].target_runs {
                None => {
                    self.check_target(&m).await;
                    return false;
                }
                Some(false) => return true,
                Some(true) => {}
            }
        }
        let runs_here = self.runs_here(&m.guest, &m.source).await;
        if runs_here == Some(true) {
            let source_address = match self.host_address(&m.source, m.current().revision).await {
                Ok(address) => address,
                Err(e) => {
                    tracing::warn!(migration = %id, %e, "cannot read the source's address; will retry");
                    return false;
                }
            };
            let back = transfer_back(&m, source_address);
            let driver = self.driver.clone();
            tracing::warn!(migration = %id, guest = %m.guest, "guest runs here after its migration ended {}; moving it back to {}", m.phase, m.source);
            let r = tokio::task::spawn_blocking(move || driver.transfer(&back, &AtomicBool::new(false))).await;
            match r {
                Ok(Ok(_)) => tracing::info!(migration = %id, guest = %m.guest, "guest moved back to its owner"),
                other => tracing::error!(migration = %id, ?other, "moving the guest back failed; will retry"),
            }
            return false;
        }
        // With the word given nothing can arrive any more (`check_target` stopped any process
        // still waiting for the guest): done once a copy that ran here has gone back.
        if owes_word
            && runs_here == Some(false)
            && matches!(self.lifecycle_state(&m.guest).await, Some(VmState::Migrated | VmState::ShutOff))
        {
            return true;
        }
        Instant::now() > until
    }

    /// Target of a failed or aborted online migration: makes sure no copy that never ran here
    /// is left (nor a process that could still receive one), then commits whether a copy that
    /// ran here is left. Retried each tick, with one request id, until the log holds a word.
    async fn check_target(&mut self, m: &Migration) {
        let (driver, guest) = (self.driver.clone(), m.guest.clone());
        let runs_there =
            match tokio::task::spawn_blocking(move || driver.lifecycle().expect("checked").release_incoming(&guest))
                .await
            {
                Ok(Ok(runs)) => runs,
                other => {
                    tracing::warn!(migration = %m.id, ?other, "cannot tell whether the guest ran here; will retry");
                    return;
                }
            };
        let a = self.active.get_mut(&m.id).expect("known");
        let request_id = a.check_request.get_or_insert_with(switchyard_client::new_request_id).clone();
        let req = TargetCheckRequest { token: m.current().token(), runs_there, request_id: Some(request_id) };
        match self.client.check_migration_target(m.id, &req).await {
            Ok(_) => {
                tracing::info!(migration = %m.id, guest = %m.guest, runs_there, "told the log whether the guest ran here after its migration ended");
                if let Some(a) = self.active.get_mut(&m.id) {
                    a.target_runs.get_or_insert(runs_there);
                }
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(migration = %m.id, %e, "cannot tell the log whether the guest ran here; will retry")
            }
            // Refused for good (the migration left the state's recent history, say): act on
            // what this host found, which is all the log could have been told.
            Err(e) => {
                tracing::error!(migration = %m.id, %e, runs_there, "the log refused this host's word on whether the guest ran here");
                if let Some(a) = self.active.get_mut(&m.id) {
                    a.target_runs.get_or_insert(runs_there);
                }
            }
        }
    }

    /// Records durably (then in memory) what this host did for the phase with `token`.
    fn journal(&mut self, m: &Migration, token: FencingToken, transfer: TransferState) {
        let j = Journal { migration: m.id, guest: m.guest.clone(), token, transfer };
        if let Err(e) = self.store.put_journal(&j) {
            tracing::error!(migration = %m.id, %e, "cannot write the migration journal");
            return;
        }
        if let Some(a) = self.active.get_mut(&m.id) {
            a.journal = Some(j);
        }
    }

    /// The guest's state on a hypervisor with a lifecycle (`None` without one, or on error).
    async fn lifecycle_state(&self, guest: &Name) -> Option<VmState> {
        self.driver.lifecycle()?;
        let (driver, g) = (self.driver.clone(), guest.clone());
        match tokio::task::spawn_blocking(move || driver.lifecycle().expect("checked").state(&g)).await {
            Ok(Ok(state)) => Some(state),
            other => {
                tracing::warn!(%guest, ?other, "cannot read the guest's state");
                None
            }
        }
    }

    /// Target: has the guest arrived? Online, it runs here. Offline, nothing runs: the
    /// guest is defined here (with a lifecycle driver, which defines every guest on every
    /// host), or, with a driver that only moves guests, it runs here.
    async fn arrived(&self, m: &Migration) -> Option<bool> {
        if m.kind.is_offline() && self.driver.lifecycle().is_some() {
            return self.lifecycle_state(&m.guest).await.map(|state| !state.is_live());
        }
        self.runs_here(&m.guest, &m.source).await
    }

    /// Asks the driver (on a blocking thread) whether the guest runs here; `None` on error.
    async fn runs_here(&self, guest: &Name, owner: &Name) -> Option<bool> {
        let (driver, g, o) = (self.driver.clone(), guest.clone(), owner.clone());
        match tokio::task::spawn_blocking(move || driver.runs_here(&g, &o)).await {
            Ok(Ok(b)) => Some(b),
            Ok(Err(e)) => {
                tracing::warn!(%guest, %e, "driver cannot tell where the guest runs");
                None
            }
            Err(e) => {
                tracing::warn!(%guest, %e, "driver task failed");
                None
            }
        }
    }

    /// True if a leader acknowledged this host's report on the migration's current phase less
    /// than a [`TICK`] ago.
    fn recently_reported(&self, id: MigrationId) -> bool {
        let a = &self.active[&id];
        a.reported.is_some_and(|(token, at)| token == a.m.current().token() && at.elapsed() < TICK)
    }

    /// Sends the report to every coordinator (each keeps it; followers forward it to the
    /// leader). Acknowledged once an answer comes from a leader at least as new as any seen.
    async fn report(&mut self, m: &Migration, outcome: ReportOutcome) {
        let token = m.current().token();
        let body = MigrationReport { phase: m.phase, token, outcome };
        let answers = self.client.report_migration(m.id, &body).await;
        let newest = answers.iter().filter_map(|a| a.as_ref().ok()).map(|ack| ack.term).max();
        match newest {
            Some(term) if term >= self.term => {
                self.term = term;
                if let Some(a) = self.active.get_mut(&m.id) {
                    if a.reported.is_none_or(|(t, _)| t != token) {
                        self.metrics.migration_report(body.outcome.kind());
                    }
                    a.reported = Some((token, Instant::now()));
                    a.report_failures = 0;
                }
            }
            Some(term) => {
                tracing::warn!(migration = %m.id, ack_term = term, term = self.term,
                    "ignoring the answer of a deposed leader; will report again");
            }
            None => match answers.iter().find_map(|a| a.as_ref().err().filter(|e| e.code() == Some("stale_report"))) {
                Some(e) => tracing::debug!(migration = %m.id, %e, "report overtaken by a newer phase"),
                None => {
                    let errors: Vec<String> =
                        answers.iter().filter_map(|a| a.as_ref().err()).map(|e| e.to_string()).collect();
                    // Normal for a moment while the coordinators elect a leader; worth a warning
                    // when it lasts (every 50 failures in a row, about 2 s of fast ticks).
                    let lasting = self.active.get_mut(&m.id).is_some_and(|a| {
                        a.report_failures += 1;
                        let lasting = a.report_failures >= 50;
                        if lasting {
                            a.report_failures = 0;
                        }
                        lasting
                    });
                    if lasting {
                        tracing::warn!(migration = %m.id, errors = %errors.join("; "), "no leader took the report in 50 tries; retrying");
                    } else {
                        tracing::debug!(migration = %m.id, errors = %errors.join("; "), "no leader took the report; will retry");
                    }
                }
            },
        }
    }
}

/// The transfer that moves a migrated guest back to its source after a rollback (the
/// migration's target sends, its source receives).
fn transfer_back(m: &Migration, source_address: String) -> Transfer {
    Transfer {
        migration: m.id,
        guest: m.guest.clone(),
        source: m.target.clone(),
        target: m.source.clone(),
        target_address: source_address,
        kind: m.kind,
    }
}

/// The transfer a migration orders, from its source to its target.
fn transfer_of(m: &Migration, target_address: String) -> Transfer {
    Transfer {
        migration: m.id,
        guest: m.guest.clone(),
        source: m.source.clone(),
        target: m.target.clone(),
        target_address,
        kind: m.kind,
    }
}
