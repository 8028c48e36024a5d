//! Sealed records as read back from disk (`codec::open`): the first byte picks the record kind,
//! the rest is the record. Every kind whose type lives outside the store is here; a record
//! must decode or be refused, never panic or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_fuzz::FuzzConfig;
use switchyard_protocol::codec::{self, RecordKind};
use switchyard_protocol::{ClusterState, Event, Migration, Proposal};

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    match which % 8 {
        0 => drop(codec::open::<openraft::Entry<FuzzConfig>>(RecordKind::LogEntry, bytes)),
        1 => drop(codec::open::<openraft::Vote<u64>>(RecordKind::Vote, bytes)),
        2 => drop(codec::open::<Option<openraft::LogId<u64>>>(RecordKind::LogId, bytes)),
        3 => drop(codec::open::<Event>(RecordKind::Event, bytes)),
        4 => drop(codec::open::<Migration>(RecordKind::Migration, bytes)),
        5 => {
            if let Ok(mut st) = codec::open::<ClusterState>(RecordKind::ClusterState, bytes) {
                st.rebuild_indexes();
                let _ = st.check_invariants();
            }
        }
        6 => drop(codec::decode::<Event>(bytes)),
        _ => drop(codec::decode::<Proposal>(bytes)),
    }
});
