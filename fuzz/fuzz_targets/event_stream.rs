//! An event stream as the client reads it (`GET /v1/events`, JSON lines): every complete line is
//! an item or a clear protocol error, however the bytes arrive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_client::events::next_item;

fuzz_target!(|data: &[u8]| {
    let mut start = 0;
    while let Some(parsed) = next_item(data, start) {
        match parsed {
            Ok((_, after)) => {
                assert!(after > start && after <= data.len());
                start = after;
            }
            Err(_) => break,
        }
    }
});
