//! Raft RPC bodies as a coordinator receives them (`POST /raft/{append,vote,snapshot}`) and their
//! answers as the sender decodes them, through the one codec.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use switchyard_fuzz::FuzzConfig;
use switchyard_protocol::codec;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    match which % 6 {
        0 => drop(codec::decode::<AppendEntriesRequest<FuzzConfig>>(bytes)),
        1 => drop(codec::decode::<VoteRequest<u64>>(bytes)),
        2 => drop(codec::decode::<InstallSnapshotRequest<FuzzConfig>>(bytes)),
        3 => drop(codec::decode::<Result<AppendEntriesResponse<u64>, RaftError<u64>>>(bytes)),
        4 => drop(codec::decode::<Result<VoteResponse<u64>, RaftError<u64>>>(bytes)),
        _ => drop(codec::decode::<Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>>(bytes)),
    }
});
