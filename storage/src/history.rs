//! The retained event history and its secondary indexes: how events are written (one home for
//! "which rows an event produces", used by apply and by snapshot install alike) and how history
//! is read back (by revision range, by guest, migrations by id, guest and host).
//!
//! Architecture invariant: a revision's event is written once and never changes; rewriting the
//! same revision always writes identical bytes (apply is deterministic).

use rocksdb::{Direction, IteratorMode, WriteBatch};
use switchyard_protocol::api::{MigrationDetail, MigrationResolution};
use switchyard_protocol::codec::{self, RecordKind};
use switchyard_protocol::{Event, EventPayload, Migration, MigrationId, Name, Phase, Revision};

use crate::db::{cf, key, DataDir};
use crate::error::StoreError;

/// How many of a guest's events after a failed or aborted migration's last phase are searched
/// for its target's word ([`History::migration_detail`]). The target gives it within seconds of
/// the failure, while the guest is held by the migration on both hosts.
pub const TARGET_CHECK_WINDOW: usize = 1024;

/// Adds to `batch` the rows one event produces: the event and its guest index row, and, when
/// the event concerns a migration, the migration's record after it (`migration`).
pub(crate) fn write_event(dir: &DataDir, batch: &mut WriteBatch, event: &Event, migration: Option<&Migration>) {
    let (k, v) = event_row(event);
    batch.put_cf(dir.cf(cf::EVENTS), k, v);
    if let Some(g) = event.payload.guest() {
        batch.put_cf(dir.cf(cf::GUEST_EVENTS), key::named(g.as_str(), event.revision), []);
    }
    if let Some(m) = migration {
        write_migration(dir, batch, m);
    }
}

/// An event's own row in [`cf::EVENTS`]: its key and its sealed bytes.
pub(crate) fn event_row(event: &Event) -> ([u8; 8], Vec<u8>) {
    (key::u64(event.revision), codec::seal(RecordKind::Event, event))
}

/// Appends to `out` the value of an event's row ([`event_row`]) made from the event's encoded
/// bytes (`codec::encode`), as an export holds them.
pub(crate) fn event_value_encoded_into(out: &mut Vec<u8>, encoded: &[u8]) {
    codec::seal_encoded_into(out, RecordKind::Event, encoded)
}

/// Adds a migration record and its guest and host index rows to `batch`.
pub(crate) fn write_migration(dir: &DataDir, batch: &mut WriteBatch, m: &Migration) {
    batch.put_cf(dir.cf(cf::MIGRATIONS), key::u64(m.id.0), codec::seal(RecordKind::Migration, m));
    batch.put_cf(dir.cf(cf::MIGRATIONS_BY_GUEST), key::named(m.guest.as_str(), m.id.0), []);
    batch.put_cf(dir.cf(cf::MIGRATIONS_BY_HOST), key::named(m.source.as_str(), m.id.0), []);
    batch.put_cf(dir.cf(cf::MIGRATIONS_BY_HOST), key::named(m.target.as_str(), m.id.0), []);
}

/// Every stored migration record as it was at `revision` (see `Migration::at_revision`).
pub(crate) fn migrations_at(dir: &DataDir, revision: Revision) -> Result<Vec<Migration>, StoreError> {
    let mut out = Vec::new();
    scan_migrations(dir, 0, |m| {
        out.extend(m.at_revision(revision));
        true
    })?;
    Ok(out)
}

/// Calls `f` with every stored migration record whose id is at least `from`, in id order, until
/// it returns false.
fn scan_migrations(dir: &DataDir, from: u64, f: impl FnMut(Migration) -> bool) -> Result<(), StoreError> {
    scan_migrations_in(dir, from, Direction::Forward, f)
}

/// Migration records from id `from` on in `direction` (down to the first with `Reverse`).
fn scan_migrations_in(
    dir: &DataDir,
    from: u64,
    direction: Direction,
    mut f: impl FnMut(Migration) -> bool,
) -> Result<(), StoreError> {
    let start = key::u64(from);
    for item in dir.db.iterator_cf(dir.cf(cf::MIGRATIONS), IteratorMode::From(&start, direction)) {
        let (k, v) = item.map_err(|e| StoreError::rocks("iterate migrations", e))?;
        let id = key::parse_u64(&k).unwrap_or(0);
        let m: Migration = codec::open(RecordKind::Migration, &v).map_err(|source| StoreError::Corrupt {
            cf: cf::MIGRATIONS,
            key: format!("migration {}", MigrationId(id)),
            source,
        })?;
        if !f(m) {
            break;
        }
    }
    Ok(())
}

/// Read access to the retained history.
#[derive(Clone, Debug)]
pub struct History {
    dir: DataDir,
}

impl History {
    pub fn new(dir: DataDir) -> History {
        History { dir }
    }

    fn decode_event(rev: u64, bytes: &[u8]) -> Result<Event, StoreError> {
        codec::open(RecordKind::Event, bytes).map_err(|source| StoreError::Corrupt {
            cf: cf::EVENTS,
            key: format!("revision {rev}"),
            source,
        })
    }

    /// The event at `revision`, if retained.
    pub fn event(&self, revision: Revision) -> Result<Option<Event>, StoreError> {
        self.dir.get(cf::EVENTS, &key::u64(revision), RecordKind::Event, format!("revision {revision}"))
    }

    /// Up to `limit` events from revision `from` on, in order.
    pub fn events_from(&self, from: Revision, limit: usize) -> Result<Vec<Event>, StoreError> {
        let start = key::u64(from);
        let mut out = Vec::new();
        for item in self.dir.db.iterator_cf(self.dir.cf(cf::EVENTS), IteratorMode::From(&start, Direction::Forward)) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(|e| StoreError::rocks("iterate events", e))?;
            let rev = key::parse_u64(&k).unwrap_or(0);
            out.push(Self::decode_event(rev, &v)?);
        }
        Ok(out)
    }

    /// The oldest and newest retained revisions, if any event is stored.
    pub fn bounds(&self) -> Result<Option<(Revision, Revision)>, StoreError> {
        let events = self.dir.cf(cf::EVENTS);
        let first = self.dir.db.iterator_cf(events, IteratorMode::Start).next();
        let last = self.dir.db.iterator_cf(events, IteratorMode::End).next();
        match (first, last) {
            (Some(f), Some(l)) => {
                let (fk, _) = f.map_err(|e| StoreError::rocks("read first event", e))?;
                let (lk, _) = l.map_err(|e| StoreError::rocks("read last event", e))?;
                Ok(Some((key::parse_u64(&fk).unwrap_or(0), key::parse_u64(&lk).unwrap_or(0))))
            }
            _ => Ok(None),
        }
    }

    /// Revisions of the events about `guest`, from `from` on, at most `limit`.
    pub fn guest_revisions(&self, guest: &Name, from: Revision, limit: usize) -> Result<Vec<Revision>, StoreError> {
        self.scan_named(cf::GUEST_EVENTS, guest, from, limit)
    }

    /// The latest record of a migration, from the retained history.
    pub fn migration(&self, id: MigrationId) -> Result<Option<Migration>, StoreError> {
        self.dir.get(cf::MIGRATIONS, &key::u64(id.0), RecordKind::Migration, format!("migration {id}"))
    }

    /// A migration's record with what the history holds about it beside its phases: the
    /// hypervisor's figures of its transfer (its `MigrationTransferStats` event), an operator's
    /// resolution (its `MigrationResolved` event) and, after it failed or was aborted, its
    /// target's first word on whether the guest runs there (`MigrationTargetChecked`); each
    /// `None` when there is none or the history no longer holds it. Only the guest's events from
    /// the migration's request on are read: up to its last phase, then, for the target's word,
    /// at most [`TARGET_CHECK_WINDOW`] more. The guest's next migration may be requested before
    /// the word comes (it waits for it on both hosts), so the search goes on past it.
    pub fn migration_detail(&self, migration: Migration) -> Result<MigrationDetail, StoreError> {
        let (first, last) = (migration.history[0].revision, migration.current().revision);
        let checked = matches!(migration.phase, Phase::Failed | Phase::Aborted);
        let mut d = MigrationDetail { migration, transfer: None, resolution: None, target_runs: None };
        let id = d.migration.id;
        let (mut from, mut after_last) = (first, 0);
        loop {
            let revisions = self.guest_revisions(&d.migration.guest, from, 256)?;
            for r in &revisions {
                if *r > last {
                    after_last += 1;
                    if !checked || after_last > TARGET_CHECK_WINDOW {
                        return Ok(d);
                    }
                }
                let Some(e) = self.event(*r)? else { continue };
                match e.payload {
                    EventPayload::MigrationTransferStats { id: i, stats, .. } if i == id => d.transfer = Some(stats),
                    EventPayload::MigrationResolved { id: i, outcome, reason, .. } if i == id => {
                        d.resolution = Some(MigrationResolution { outcome, reason, by: e.actor, at: e.time })
                    }
                    EventPayload::MigrationTargetChecked { id: i, runs_there, .. } if i == id => {
                        d.target_runs = Some(runs_there);
                        return Ok(d);
                    }
                    _ => {}
                }
            }
            match revisions.last() {
                Some(r) if revisions.len() == 256 => from = r + 1,
                _ => return Ok(d),
            }
        }
    }

    /// Migration records with an id of at least `from`, oldest first, while `f` returns true.
    pub fn scan_migrations(&self, from: u64, f: impl FnMut(Migration) -> bool) -> Result<(), StoreError> {
        scan_migrations(&self.dir, from, f)
    }

    /// Migration records with ids below `before`, newest first, until `f` returns `false`.
    pub fn scan_migrations_back(&self, before: u64, f: impl FnMut(Migration) -> bool) -> Result<(), StoreError> {
        match before.checked_sub(1) {
            Some(from) => scan_migrations_in(&self.dir, from, Direction::Reverse, f),
            None => Ok(()),
        }
    }

    /// Ids of the migrations of `guest`, oldest first.
    pub fn migrations_of_guest(&self, guest: &Name, limit: usize) -> Result<Vec<MigrationId>, StoreError> {
        Ok(self.scan_named(cf::MIGRATIONS_BY_GUEST, guest, 0, limit)?.into_iter().map(MigrationId).collect())
    }

    /// Ids of the migrations from or to `host`, oldest first.
    pub fn migrations_of_host(&self, host: &Name, limit: usize) -> Result<Vec<MigrationId>, StoreError> {
        Ok(self.scan_named(cf::MIGRATIONS_BY_HOST, host, 0, limit)?.into_iter().map(MigrationId).collect())
    }

    fn scan_named(&self, family: &'static str, name: &Name, from: u64, limit: usize) -> Result<Vec<u64>, StoreError> {
        let prefix = key::name_prefix(name.as_str());
        let start = key::named(name.as_str(), from);
        let mut out = Vec::new();
        for item in self.dir.db.iterator_cf(self.dir.cf(family), IteratorMode::From(&start, Direction::Forward)) {
            let (k, _) = item.map_err(|e| StoreError::rocks(format!("iterate {family}"), e))?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            let n = key::parse_u64(&k[prefix.len()..])
                .ok_or_else(|| StoreError::Inconsistent(format!("malformed key in {family}: {k:?}")))?;
            out.push(n);
        }
        Ok(out)
    }
}
