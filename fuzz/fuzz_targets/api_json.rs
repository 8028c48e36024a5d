//! The API's JSON request bodies, decoded as the coordinator does (`serde_json`), turned into
//! commands and applied to a small cluster: a hostile body must be refused with a reason, never
//! panic the decoder, the conversion or `apply`, and never break an invariant.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use switchyard_fuzz::{apply, sample_state};
use switchyard_protocol::api::*;
use switchyard_protocol::{Command, MigrationId, Name};

fn json<T: DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    serde_json::from_slice(bytes).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    let g = Name::new("g1").unwrap();
    let h = Name::new("h1").unwrap();
    let p = Name::new("p1").unwrap();
    let command: Option<Command> = match which % 14 {
        0 => json::<CreateGuestRequest>(bytes).map(Command::from),
        1 => json::<ModifyGuestRequest>(bytes).and_then(|r| Command::try_from((g, r)).ok()),
        2 => json::<RegisterHostRequest>(bytes).map(Command::from),
        3 => json::<MaintenanceRequest>(bytes).map(|r| Command::from((h, r))),
        4 => json::<RepairRequest>(bytes).map(|r| Command::from((h, r))),
        5 => json::<FailoverReportRequest>(bytes).map(|r| Command::from((h, r))),
        6 => json::<ModifyPackageRequest>(bytes).map(|r| Command::from((p, r))),
        7 => json::<SwitchingRequest>(bytes).map(|r| Command::from((p, r))),
        8 => json::<AbortRequest>(bytes).map(|r| Command::from((MigrationId(4), r))),
        9 => json::<ImportRequest>(bytes).map(Command::from),
        10 => json::<MigrateRequest>(bytes).map(|_| None).unwrap_or(None),
        11 => json::<HostReport>(bytes).map(|_| None).unwrap_or(None),
        12 => json::<MigrationReport>(bytes).map(|_| None).unwrap_or(None),
        _ => json::<InitRequest>(bytes).map(|_| None).unwrap_or(None),
    };
    if let Some(c) = command {
        let mut st = sample_state();
        apply(&mut st, c);
        let bad = st.check_invariants();
        assert!(bad.is_empty(), "an accepted body broke an invariant: {bad:?}");
    }
});
