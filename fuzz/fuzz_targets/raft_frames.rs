//! A Raft stream's bytes as a coordinator reads them (`POST /raft/stream`, upgraded): frames
//! taken off the stream one after another, each body decoded as the request its kind names, as
//! `raft_server.rs` does. A frame taken reads back as its own bytes when encoded again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openraft::raft::{InstallSnapshotRequest, VoteRequest};
use switchyard_fuzz::FuzzConfig;
use switchyard_protocol::{codec, frame};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    // A small limit as well as the real one: the fuzzer reaches the refusal of a long frame.
    let max = if data.first().is_some_and(|b| b & 1 == 1) { 64 } else { frame::BODY_MAX };
    while let Ok(Some(f)) = frame::split(rest, max) {
        assert!(f.body.len() <= max);
        assert_eq!(frame::encode(f.kind, f.body).unwrap(), &rest[..f.len]);
        match f.kind {
            frame::APPEND => drop(codec::decode::<openraft::raft::AppendEntriesRequest<FuzzConfig>>(f.body)),
            frame::VOTE => drop(codec::decode::<VoteRequest<u64>>(f.body)),
            frame::SNAPSHOT => drop(codec::decode::<InstallSnapshotRequest<FuzzConfig>>(f.body)),
            _ => {}
        }
        rest = &rest[f.len..];
    }
});
