//! `log seed`: a member's data directory built offline from an export holds what applying the
//! export's import chunks would have written (events, index rows, migration records, the state
//! with the restore in progress), starts as an initialized Raft member whose log is purged up to
//! the seed, and hands the seed on as a snapshot. Bad input leaves nothing behind. And the
//! restore in progress, which is not part of the history, survives a restart.
mod common;
use common::*;

use std::collections::BTreeMap;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, LogId};
use switchyard_protocol::entry::NodeInfo;
use switchyard_protocol::{ClusterState, Command, Event, Proposal, RequestId, Timestamp};
use switchyard_storage::export::{ExportHeader, ExportWriter, Format};
use switchyard_storage::seed::{seed, SeedError};
use switchyard_storage::Proposals;

/// Hosts, packaged guests and one migration through every phase: the state and its events.
fn history() -> (ClusterState, Vec<Event>) {
    let mut all = entries(1, workload(5));
    let next = all.len() as u64 + 1;
    // The request is the event after the 2 hosts and 5 guests: revision 8.
    all.extend(entries(next, full_migration("g0", 8)));
    reference(&all)
}

fn export(events: &[Event], format: Format) -> Vec<u8> {
    let header = ExportHeader {
        source: "storage test".into(),
        cluster: None,
        first_revision: 1,
        last_revision: events.len() as u64,
        exported_at: Timestamp(1),
        format: switchyard_storage::export::EXPORT_FORMAT,
    };
    let mut out = Vec::new();
    let mut w = ExportWriter::new(&mut out, format, &header).unwrap();
    for e in events {
        w.push(e).unwrap();
    }
    w.finish().unwrap();
    out
}

fn members() -> BTreeMap<u64, NodeInfo> {
    (1..=3)
        .map(|id| (id, NodeInfo { raft_addr: format!("127.0.0.1:{id}"), api_addr: format!("127.0.0.1:1{id}") }))
        .collect()
}

#[tokio::test]
async fn a_seeded_directory_holds_what_imports_would_have_written_and_hands_it_on() {
    let (want, events) = history();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("n1");
    let file = export(&events, Format::Binary);
    let seeded = seed(&[(1, path.clone())], members(), &file[..], |_| {}).unwrap();
    let last = events.len() as u64;
    assert_eq!(seeded.revision, last);
    let ends = {
        let f = tmp.path().join("export.bin");
        std::fs::write(&f, &file).unwrap();
        switchyard_storage::export::read_ends(&f).unwrap().expect("both ends")
    };
    assert_eq!((ends.last_revision, &ends.chain), (last, &seeded.chain), "the seed's chain is the file's");
    assert_eq!(ends.last_event.as_ref(), events.last());
    assert!(!tmp.path().join(".n1.seeding").exists(), "the building directory was moved into place");
    assert!(!path.join("ingest").exists(), "the events' table files were moved into the database");

    let (mut log, mut sm) = switchyard_storage::open(&path, 1).unwrap();
    let progress = sm.read(|s| s.importing().cloned()).expect("the restore in progress");
    assert_eq!((progress.through_revision, &progress.chain, &progress.cluster), (last, &seeded.chain, &None));
    let mut plain = sm.read(|s| s.clone());
    plain.resume_import(progress.clone());
    let mut want_importing = want.clone();
    want_importing.resume_import(progress.clone());
    assert_eq!(plain, want_importing, "the state is the export's fold");
    assert_holds_history(&sm.history(), &events);
    let ids = sm.history().migrations_of_guest(&n("g0"), 10).unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!(
        sm.history().migration(ids[0]).unwrap().as_ref(),
        want.migration(ids[0]),
        "the record after its last event"
    );

    // An initialized member: membership at the first log id, the log purged up to it.
    let first = LogId::new(CommittedLeaderId::default(), 0);
    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(first));
    assert_eq!(membership.membership().voter_ids().collect::<Vec<_>>(), vec![1, 2, 3]);
    let state = log.get_log_state().await.unwrap();
    assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(first), Some(first)));

    // A member without the seed gets it as a snapshot (the same state), then the history from a
    // peer.
    let snap = sm.get_current_snapshot().await.unwrap().expect("the seed is the current snapshot");
    assert_eq!(snap.meta.last_log_id, Some(first));
    let (_, mut other) = switchyard_storage::open(&tmp.path().join("n3"), 3).unwrap();
    transfer(snap, &mut other).await;
    assert_eq!(other.read(|s| s.clone()), sm.read(|s| s.clone()));
    assert_eq!(other.history_first().unwrap(), last + 1, "the history comes from a peer, not the snapshot");
    other.backfill(sm.history().events_from(1, usize::MAX).unwrap()).await.unwrap();
    assert_eq!(other.history().events_from(1, usize::MAX).unwrap(), events);
    assert_eq!(other.read(|s| s.importing().cloned()), Some(progress.clone()));
    drop(other);
    let (_, other) = switchyard_storage::open(&tmp.path().join("n3"), 3).unwrap();
    assert_eq!(other.read(|s| s.importing().cloned()), Some(progress), "the installed restore survives a restart");

    // A JSON-lines export seeds the same directory.
    let json = tmp.path().join("n2");
    let again = seed(&[(2, json.clone())], members(), &export(&events, Format::JsonLines)[..], |_| {}).unwrap();
    assert_eq!(again.chain, seeded.chain);
    let (_, from_json) = switchyard_storage::open(&json, 2).unwrap();
    assert_holds_history(&from_json.history(), &events);
}

/// `history` holds `events` and, for each guest, the index of the events about it.
fn assert_holds_history(history: &switchyard_storage::History, events: &[Event]) {
    assert_eq!(history.events_from(1, usize::MAX).unwrap(), events);
    let mut by_guest: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in events {
        if let Some(g) = e.payload.guest() {
            by_guest.entry(g.as_str().to_string()).or_default().push(e.revision);
        }
    }
    assert!(by_guest.len() >= 5, "the history is about several guests");
    for (guest, revisions) in &by_guest {
        assert_eq!(&history.guest_revisions(&n(guest), 0, usize::MAX).unwrap(), revisions, "{guest}'s index");
    }
}

#[test]
fn bad_input_seeds_nothing() {
    let (_, events) = history();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("n1");
    let mut file = export(&events, Format::Binary);
    let mid = file.len() / 2;
    file[mid] ^= 0x10;
    let e = seed(&[(1, path.clone())], members(), &file[..], |_| {}).unwrap_err();
    assert!(matches!(&e, SeedError::Damaged(p) if !p.is_empty()), "{e}");
    assert!(!path.exists() && !tmp.path().join(".n1.seeding").exists(), "nothing is left behind");

    let cut = export(&events, Format::Binary);
    let e = seed(&[(1, path.clone())], members(), &cut[..cut.len() - 10], |_| {}).unwrap_err();
    assert!(matches!(&e, SeedError::Damaged(_)), "{e}");
    assert!(!path.exists());

    let good = export(&events, Format::Binary);
    let e = seed(&[(4, path.clone())], members(), &good[..], |_| {}).unwrap_err();
    assert!(e.to_string().contains("not among the members"), "{e}");
    assert!(!path.exists());

    std::fs::create_dir_all(&path).unwrap();
    std::fs::write(path.join("keep"), b"operator's file").unwrap();
    let e = seed(&[(1, path.clone())], members(), &good[..], |_| {}).unwrap_err();
    assert!(e.to_string().contains("is not empty"), "{e}");
    assert_eq!(std::fs::read(path.join("keep")).unwrap(), b"operator's file");

    // An empty directory is fine (a mount point, say).
    std::fs::remove_file(path.join("keep")).unwrap();
    seed(&[(1, path.clone())], members(), &good[..], |_| {}).unwrap();
    assert!(switchyard_storage::holds_data(&path));
}

/// Members on one machine: one read of the export seeds every directory given; each is its own
/// member (its node id, its own database and snapshot files), they share the table files (hard
/// links, never written again). A refused target seeds none.
#[tokio::test]
async fn members_on_one_machine_are_seeded_from_one_read_and_share_the_table_files() {
    let (want, events) = history();
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<(u64, std::path::PathBuf)> = (1..=3).map(|id| (id, tmp.path().join(format!("n{id}")))).collect();
    let file = export(&events, Format::Binary);

    // A refused target anywhere in the list: no directory is written.
    std::fs::create_dir_all(&dirs[2].1).unwrap();
    std::fs::write(dirs[2].1.join("keep"), b"x").unwrap();
    let e = seed(&dirs, members(), &file[..], |_| {}).unwrap_err();
    assert!(e.to_string().contains("is not empty"), "{e}");
    assert!(!dirs[0].1.exists() && !dirs[1].1.exists());
    std::fs::remove_dir_all(&dirs[2].1).unwrap();
    let twice = [dirs[0].clone(), (2, dirs[0].1.clone())];
    let e = seed(&twice, members(), &file[..], |_| {}).unwrap_err();
    assert!(e.to_string().contains("the same member or the same directory"), "{e}");
    let mut damaged = file.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x10;
    let e = seed(&dirs, members(), &damaged[..], |_| {}).unwrap_err();
    assert!(matches!(&e, SeedError::Damaged(_)), "{e}");
    assert!(dirs.iter().all(|(_, d)| !d.exists()), "a damaged export seeds no directory");

    let seeded = seed(&dirs, members(), &file[..], |_| {}).unwrap();
    assert!(std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().ends_with(".seeding")));
    let tables = |dir: &std::path::Path| -> BTreeMap<String, (u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        std::fs::read_dir(dir.join("db"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".sst"))
            .map(|e| {
                let m = e.metadata().unwrap();
                (e.file_name().to_string_lossy().into_owned(), (m.ino(), m.nlink()))
            })
            .collect()
    };
    let first = tables(&dirs[0].1);
    assert!(!first.is_empty());
    for (_, dir) in &dirs[1..] {
        let t = tables(dir);
        assert_eq!(t.keys().collect::<Vec<_>>(), first.keys().collect::<Vec<_>>(), "the same table files");
        assert!(t.iter().all(|(name, (ino, links))| first[name].0 == *ino && *links == 3), "hard links: {t:?}");
    }
    for (id, dir) in &dirs {
        let wrong = if *id == 1 { 2 } else { 1 };
        let e = switchyard_storage::open(dir, wrong).map(|_| ()).unwrap_err();
        assert!(e.to_string().contains(&format!("belongs to node {id}")), "{e}");
        let (_, mut sm) = switchyard_storage::open(dir, *id).unwrap();
        let progress = sm.read(|s| s.importing().cloned()).expect("the restore in progress");
        assert_eq!((progress.through_revision, &progress.chain), (events.len() as u64, &seeded.chain));
        let mut plain = sm.read(|s| s.clone());
        let mut want = want.clone();
        want.resume_import(progress.clone());
        plain.resume_import(progress);
        assert_eq!(plain, want, "node {id} holds the export's fold");
        assert_eq!(sm.history().events_from(1, usize::MAX).unwrap(), events, "node {id}'s history");
        let snap = sm.get_current_snapshot().await.unwrap().unwrap_or_else(|| panic!("node {id} holds no snapshot"));
        assert_eq!(snap.meta.last_log_id, Some(LogId::new(CommittedLeaderId::default(), 0)));
    }
}

/// Before the restore in progress was stored beside the applied state, a coordinator that
/// restarted during `log restore` rebuilt its state from the events alone and lost it, so it
/// refused the rest of the import (and the identity) that the others accepted.
#[tokio::test]
async fn the_restore_in_progress_survives_a_restart() {
    let (_, events) = history();
    let tmp = tempfile::tempdir().unwrap();
    let chain = "ab".repeat(32);
    {
        let (_, mut sm) = switchyard_storage::open(tmp.path(), 1).unwrap();
        let entry = switchyard_storage::Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Normal(Proposals(vec![Proposal {
                request_id: RequestId(1),
                actor: "restore".into(),
                time: Timestamp(1),
                command: Command::ImportEvents { cluster: None, chain: chain.clone(), events: events.clone() },
            }])),
        };
        let r = sm.apply([entry]).await.unwrap();
        assert!(r[0].results[0].is_ok(), "{:?}", r[0].results);
        assert_eq!(sm.read(|s| s.importing().map(|p| p.through_revision)), Some(events.len() as u64));
    }
    let (_, sm) = switchyard_storage::open(tmp.path(), 1).unwrap();
    let p = sm.read(|s| s.importing().cloned()).expect("still importing after the restart");
    assert_eq!((p.through_revision, p.chain), (events.len() as u64, chain));
}
