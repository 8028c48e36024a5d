//! Decoding an event into one decoded before, reusing its buffers.
//!
//! `log replay` decodes millions of events on one thread, and a fresh decode allocates every
//! string and vector of an event (seven for a guest with one disk and one network), which the
//! same thread frees again once the event is folded. [`decode_event_into`] writes the next
//! event's fields into the strings and vectors of an event already held, so a reader that keeps
//! its decoded events and overwrites them allocates nothing once it runs: the buffers stay where
//! they are.
//!
//! Only the guest changes (`GuestCreated`, `GuestModified`: nearly every event of a long history)
//! are decoded in place, and only into a held event of the same kind. Anything else, and any byte
//! string this decoder does not take, goes to [`super::decode`], so the result is always exactly
//! what that function gives, error messages included: this module is a fast path, never a second
//! grammar with its own verdicts. It follows bincode's grammar field by field in declaration
//! order and reads every number with bincode's own decoders; the tests hold it to
//! [`super::decode`] for arbitrary events, held events and damaged bytes.

use bincode::de::read::Reader;
use bincode::de::{Decode, Decoder, DecoderImpl};
use bincode::error::DecodeError;

use super::{config, decode, CodecError};
use crate::event::{Event, EventPayload};
use crate::model::{Guest, RequestId, RunState, Timestamp};
use crate::name::Name;

/// `EventPayload`'s variant indices as bincode writes them (declaration order).
const GUEST_CREATED: u32 = 4;
const GUEST_MODIFIED: u32 = 5;

/// Decodes the event in `bytes` into `event`, reusing its buffers where the two are guest changes
/// of the same kind. Equivalent to `*event = decode(bytes)?`, except that on an error `event`
/// holds an unspecified mix of old and new fields.
pub fn decode_event_into(bytes: &[u8], event: &mut Event) -> Result<(), CodecError> {
    let mut d = DecoderImpl::new(bincode::de::read::SliceReader::new(bytes), config(), ());
    match event_into(&mut d, event) {
        Ok(()) if d.reader().peek_read(1).is_none() => Ok(()),
        // Another kind of event, trailing bytes or damage: the full decoder decides (and names
        // the problem).
        _ => {
            *event = decode(bytes)?;
            Ok(())
        }
    }
}

/// Not an error of the bytes: this decoder does not take them (the full decoder will).
const NOT_IN_PLACE: DecodeError = DecodeError::Other("not decoded in place");

fn event_into<D: Decoder<Context = ()>>(d: &mut D, e: &mut Event) -> Result<(), DecodeError> {
    e.revision = u64::decode(d)?;
    e.term = u64::decode(d)?;
    e.time = Timestamp(u64::decode(d)?);
    string_into(d, &mut e.actor)?;
    e.request_id = RequestId(u128::decode(d)?);
    let guest = match (u32::decode(d)?, &mut e.payload) {
        (GUEST_CREATED, EventPayload::GuestCreated { guest }) => guest,
        (GUEST_MODIFIED, EventPayload::GuestModified { guest }) => guest,
        _ => return Err(NOT_IN_PLACE),
    };
    guest_into(d, guest)
}

fn guest_into<D: Decoder<Context = ()>>(d: &mut D, g: &mut Guest) -> Result<(), DecodeError> {
    name_into(d, &mut g.name)?;
    let spec = &mut g.spec;
    spec.vcpus = u32::decode(d)?;
    spec.memory_mib = u64::decode(d)?;
    strings_into(d, &mut spec.disks)?;
    strings_into(d, &mut spec.networks)?;
    spec.online_migration = bool::decode(d)?;
    spec.cluster_node = bool::decode(d)?;
    match (u8::decode(d)?, &mut spec.package) {
        (0, package) => *package = None,
        (1, Some(package)) => name_into(d, package)?,
        _ => return Err(NOT_IN_PLACE),
    }
    match (u8::decode(d)?, &mut spec.anti_affinity) {
        (0, a) => *a = None,
        (1, Some(a)) => {
            name_into(d, &mut a.group)?;
            opt_name_into(d, &mut a.spread_by)?;
        }
        _ => return Err(NOT_IN_PLACE),
    }
    name_into(d, &mut g.owner)?;
    g.run_state = match u32::decode(d)? {
        0 => RunState::Running,
        1 => RunState::Stopped,
        _ => return Err(NOT_IN_PLACE),
    };
    g.version = u64::decode(d)?;
    Ok(())
}

/// The bytes of a length-prefixed string, as bincode reads them.
fn str_bytes<D: Decoder<Context = ()>>(d: &mut D, use_bytes: impl FnOnce(&str) -> bool) -> Result<(), DecodeError> {
    let len = usize::try_from(u64::decode(d)?).map_err(|_| NOT_IN_PLACE)?;
    d.claim_container_read::<u8>(len)?;
    let Some(bytes) = d.reader().peek_read(len) else { return Err(NOT_IN_PLACE) };
    let s = std::str::from_utf8(bytes).map_err(|_| NOT_IN_PLACE)?;
    if !use_bytes(s) {
        return Err(NOT_IN_PLACE);
    }
    d.reader().consume(len);
    Ok(())
}

fn string_into<D: Decoder<Context = ()>>(d: &mut D, s: &mut String) -> Result<(), DecodeError> {
    str_bytes(d, |new| {
        s.clear();
        s.push_str(new);
        true
    })
}

fn name_into<D: Decoder<Context = ()>>(d: &mut D, n: &mut Name) -> Result<(), DecodeError> {
    str_bytes(d, |new| n.overwrite(new).is_ok())
}

fn opt_name_into<D: Decoder<Context = ()>>(d: &mut D, n: &mut Option<Name>) -> Result<(), DecodeError> {
    match (u8::decode(d)?, n) {
        (0, n) => *n = None,
        (1, Some(n)) => name_into(d, n)?,
        _ => return Err(NOT_IN_PLACE),
    }
    Ok(())
}

fn strings_into<D: Decoder<Context = ()>>(d: &mut D, v: &mut Vec<String>) -> Result<(), DecodeError> {
    let len = usize::decode(d)?;
    v.truncate(len);
    for i in 0..len {
        // Grown one string at a time: a damaged length cannot make this allocate ahead of the
        // bytes that are there.
        if i == v.len() {
            v.push(String::new());
        }
        string_into(d, &mut v[i])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::codec::encode;
    use crate::model::{AntiAffinity, GuestSpec};

    fn name() -> impl Strategy<Value = Name> {
        "[a-z0-9][a-z0-9._-]{0,20}".prop_map(|s| Name::new(s).expect("valid by construction"))
    }

    fn guest() -> impl Strategy<Value = Guest> {
        let spec = (
            any::<u32>(),
            any::<u64>(),
            proptest::collection::vec(".{0,30}", 0..4),
            proptest::collection::vec("[a-z:0-9]{0,12}", 0..3),
            any::<bool>(),
            any::<bool>(),
            proptest::option::of(name()),
            proptest::option::of((name(), proptest::option::of(name()))),
        )
            .prop_map(|(vcpus, memory_mib, disks, networks, online_migration, cluster_node, package, aa)| {
                let anti_affinity = aa.map(|(group, spread_by)| AntiAffinity { group, spread_by });
                GuestSpec { vcpus, memory_mib, disks, networks, online_migration, cluster_node, package, anti_affinity }
            });
        (name(), spec, name(), any::<bool>(), any::<u64>()).prop_map(|(name, spec, owner, stopped, version)| Guest {
            name,
            spec,
            owner,
            run_state: if stopped { RunState::Stopped } else { RunState::Running },
            version,
        })
    }

    fn event() -> impl Strategy<Value = Event> {
        let payload = prop_oneof![
            guest().prop_map(|guest| EventPayload::GuestCreated { guest }),
            guest().prop_map(|guest| EventPayload::GuestModified { guest }),
            name().prop_map(|guest| EventPayload::GuestRemoved { guest }),
            (name(), any::<bool>())
                .prop_map(|(host, maintenance)| EventPayload::HostMaintenanceChanged { host, maintenance }),
        ];
        (any::<u64>(), any::<u64>(), any::<u64>(), ".{0,20}", any::<u128>(), payload).prop_map(
            |(revision, term, time, actor, request_id, payload)| Event {
                revision,
                term,
                time: Timestamp(time),
                actor,
                request_id: RequestId(request_id),
                payload,
            },
        )
    }

    /// How a byte string may be damaged.
    #[derive(Debug, Clone)]
    enum Damage {
        Flip { at: usize, bits: u8 },
        Cut { at: usize },
        Append(Vec<u8>),
    }

    fn damage() -> impl Strategy<Value = Damage> {
        prop_oneof![
            (any::<usize>(), 1..=255u8).prop_map(|(at, bits)| Damage::Flip { at, bits }),
            any::<usize>().prop_map(|at| Damage::Cut { at }),
            proptest::collection::vec(any::<u8>(), 1..4).prop_map(Damage::Append),
        ]
    }

    fn damaged(mut bytes: Vec<u8>, how: &Damage) -> Vec<u8> {
        match how {
            Damage::Flip { at, bits } => {
                let at = at % bytes.len();
                bytes[at] ^= bits;
            }
            Damage::Cut { at } => bytes.truncate(at % bytes.len()),
            Damage::Append(more) => bytes.extend_from_slice(more),
        }
        bytes
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn decoding_into_a_held_event_gives_what_a_fresh_decode_gives(held in event(), next in event()) {
            let mut into = held;
            decode_event_into(&encode(&next), &mut into).unwrap();
            prop_assert_eq!(into, next);
        }

        #[test]
        fn damaged_bytes_get_the_fresh_decoders_verdict(held in event(), next in event(), how in damage()) {
            let bytes = damaged(encode(&next), &how);
            let mut into = held;
            match (decode::<Event>(&bytes), decode_event_into(&bytes, &mut into)) {
                (Ok(fresh), Ok(())) => prop_assert_eq!(into, fresh),
                (Err(fresh), Err(in_place)) => prop_assert_eq!(in_place, fresh),
                (fresh, in_place) => prop_assert!(false, "fresh {:?}, in place {:?}", fresh, in_place),
            }
        }
    }

    #[test]
    fn the_guest_variant_indices_are_the_encoded_ones() {
        let g = crate::testing::guest("g1", 1);
        let created = encode(&EventPayload::GuestCreated { guest: g.clone() });
        let modified = encode(&EventPayload::GuestModified { guest: g.clone() });
        assert_eq!((u32::from(created[0]), u32::from(modified[0])), (GUEST_CREATED, GUEST_MODIFIED));
        assert_eq!(encode(&RunState::Running), [0]);
        assert_eq!(encode(&RunState::Stopped), [1]);
    }
}
