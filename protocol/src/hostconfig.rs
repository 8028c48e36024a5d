//! The configuration every VM host must hold: the full record of every guest, keyed by name.
//!
//! Agents fold events into it ([`HostConfig::apply`]) and coordinators derive it from their state
//! ([`HostConfig::from_state`]); both compute the same [`HostConfig::digest`] at the same
//! revision, which is how a diverged host is told from a lagging one. One home for "how an event
//! changes a host's guest configuration", so agent and coordinator can never disagree on it.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use crate::event::{Event, EventPayload};
use crate::model::Guest;
use crate::name::Name;
use crate::state::ClusterState;

/// What one event does to a host's guest configuration files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigChange {
    /// Write this guest's configuration (create or replace).
    Put(Guest),
    /// Remove this guest's configuration.
    Remove(Name),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostConfig {
    guests: BTreeMap<Name, Guest>,
    /// [`HostConfig::digest`], kept up to date change by change.
    digest: u64,
}

/// One guest's contribution to a configuration digest: a word-at-a-time hash of the guest's
/// fields (integers little-endian, so every host computes the same value), then a 64-bit
/// finaliser so that sums of these are well spread. Cheap, because coordinators fold it into
/// every guest event (and `log replay` folds millions of those).
pub fn guest_digest(g: &Guest) -> u64 {
    let mut h = StableHasher(0x243f_6a88_85a3_08d3);
    g.hash(&mut h);
    let mut x = h.0;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The same on every platform and every build: no per-process keys, fixed byte order.
struct StableHasher(u64);

impl StableHasher {
    fn word(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for StableHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.word(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        // The rest, little-endian, byte by byte (a copy of a variable length would be a call to
        // `memcpy`); the length goes into the last word, so "ab" and "ab\0" differ.
        let rest = chunks.remainder().iter().enumerate().fold(0u64, |x, (i, b)| x | (u64::from(*b) << (8 * i)));
        self.word(rest ^ ((bytes.len() as u64) << 56));
    }
    fn write_u8(&mut self, i: u8) {
        self.word(u64::from(i))
    }
    fn write_u16(&mut self, i: u16) {
        self.word(u64::from(i))
    }
    fn write_u32(&mut self, i: u32) {
        self.word(u64::from(i))
    }
    fn write_u64(&mut self, i: u64) {
        self.word(i)
    }
    fn write_u128(&mut self, i: u128) {
        self.word(i as u64);
        self.word((i >> 64) as u64);
    }
    fn write_usize(&mut self, i: usize) {
        self.word(i as u64)
    }
    fn write_isize(&mut self, i: isize) {
        self.word(i as u64)
    }
}

impl HostConfig {
    /// The configuration implied by a coordinator's state.
    pub fn from_state(state: &ClusterState) -> HostConfig {
        HostConfig::from_guests(state.guests().cloned())
    }

    pub fn from_guests(guests: impl IntoIterator<Item = Guest>) -> HostConfig {
        let mut c = HostConfig::default();
        for g in guests {
            c.record(ConfigChange::Put(g));
        }
        c
    }

    pub fn guests(&self) -> impl Iterator<Item = &Guest> {
        self.guests.values()
    }

    /// The configuration of one guest.
    pub fn guest(&self, name: &Name) -> Option<&Guest> {
        self.guests.get(name)
    }

    /// What `event` changes, without changing anything (the agent writes the file first, then
    /// records the change).
    pub fn change_for(&self, event: &Event) -> Option<ConfigChange> {
        match &event.payload {
            EventPayload::GuestCreated { guest } | EventPayload::GuestModified { guest } => {
                Some(ConfigChange::Put(guest.clone()))
            }
            EventPayload::GuestRemoved { guest } => Some(ConfigChange::Remove(guest.clone())),
            EventPayload::GuestOwnerChanged { guest, to, .. } | EventPayload::FailoverStarted { guest, to, .. } => {
                // Mirrors ClusterState::evolve: the owner moves and the guest's version is the
                // event's revision.
                let mut g = self.guests.get(guest)?.clone();
                g.owner = to.clone();
                g.version = event.revision;
                Some(ConfigChange::Put(g))
            }
            _ => None,
        }
    }

    /// Records a change.
    pub fn record(&mut self, change: ConfigChange) {
        let (old, new) = match change {
            ConfigChange::Put(g) => {
                let d = guest_digest(&g);
                (self.guests.insert(g.name.clone(), g), Some(d))
            }
            ConfigChange::Remove(n) => (self.guests.remove(&n), None),
        };
        if let Some(old) = old {
            self.digest = self.digest.wrapping_sub(guest_digest(&old));
        }
        if let Some(d) = new {
            self.digest = self.digest.wrapping_add(d);
        }
    }

    /// Folds one event.
    pub fn apply(&mut self, event: &Event) {
        if let Some(c) = self.change_for(event) {
            self.record(c);
        }
    }

    /// The bytes of a guest's configuration file on a host: pretty JSON of the whole record and a
    /// newline. The one definition of the file format, used by agents to write and by tests to
    /// compare.
    pub fn render(guest: &Guest) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(guest).expect("a guest serialises to JSON");
        bytes.push(b'\n');
        bytes
    }

    /// A 64-bit digest of the whole configuration: the sum of every guest's [`guest_digest`],
    /// so it is kept up to date change by change (agents report it after every event, and a
    /// host may hold 100 000 guests). Equal configurations have equal digests on every host;
    /// [`ClusterState::config_digest`] computes the same value from a coordinator's state.
    pub fn digest(&self) -> u64 {
        self.digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::guest;

    #[test]
    fn digest_depends_on_content_not_insertion_order() {
        let a = HostConfig::from_guests([guest("a", 1), guest("b", 2)]);
        let b = HostConfig::from_guests([guest("b", 2), guest("a", 1)]);
        assert_eq!(a.digest(), b.digest());
        let c = HostConfig::from_guests([guest("a", 1), guest("b", 3)]);
        assert_ne!(a.digest(), c.digest());
        assert_ne!(a.digest(), HostConfig::default().digest());
        // Kept change by change: the same as computed from nothing.
        let mut d = HostConfig::from_guests([guest("a", 1), guest("x", 9)]);
        d.record(ConfigChange::Put(guest("b", 2)));
        d.record(ConfigChange::Remove(Name::new("x").unwrap()));
        assert_eq!(d.digest(), a.digest());
        assert_eq!(d, a);
        d.record(ConfigChange::Remove(Name::new("nope").unwrap()));
        assert_eq!(d.digest(), a.digest());
    }

    /// Digests are compared across hosts and releases, so the hasher's words must never change:
    /// byte strings of every length hash as the copy-into-a-zeroed-word definition says.
    #[test]
    fn byte_strings_hash_to_the_defined_words() {
        fn defined(bytes: &[u8]) -> u64 {
            let mut h = StableHasher(7);
            let mut chunks = bytes.chunks_exact(8);
            for c in &mut chunks {
                h.word(u64::from_le_bytes(c.try_into().unwrap()));
            }
            let mut last = [0u8; 8];
            last[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
            h.word(u64::from_le_bytes(last) ^ ((bytes.len() as u64) << 56));
            h.0
        }
        let data: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
        for n in 0..data.len() {
            let mut h = StableHasher(7);
            h.write(&data[..n]);
            assert_eq!(h.0, defined(&data[..n]), "{n} bytes");
        }
    }
}
