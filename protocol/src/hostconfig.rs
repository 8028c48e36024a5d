//! The configuration every VM host must hold: the full record of every guest, keyed by name.
//!
//! Agents fold events into it ([`HostConfig::apply`]) and coordinators derive it from their state
//! ([`HostConfig::from_state`]); both compute the same [`HostConfig::digest`] at the same
//! revision, which is how a diverged host is told from a lagging one. One home for "how an event
//! changes a host's guest configuration", so agent and coordinator can never disagree on it.

use std::collections::BTreeMap;

use crate::codec;
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
}

impl HostConfig {
    /// The configuration implied by a coordinator's state.
    pub fn from_state(state: &ClusterState) -> HostConfig {
        HostConfig { guests: state.guests().map(|g| (g.name.clone(), g.clone())).collect() }
    }

    pub fn from_guests(guests: impl IntoIterator<Item = Guest>) -> HostConfig {
        HostConfig { guests: guests.into_iter().map(|g| (g.name.clone(), g)).collect() }
    }

    pub fn guests(&self) -> impl Iterator<Item = &Guest> {
        self.guests.values()
    }

    /// What `event` changes, without changing anything (the agent writes the file first, then
    /// records the change).
    pub fn change_for(&self, event: &Event) -> Option<ConfigChange> {
        match &event.payload {
            EventPayload::GuestCreated { guest } | EventPayload::GuestModified { guest } => {
                Some(ConfigChange::Put(guest.clone()))
            }
            EventPayload::GuestRemoved { guest } => Some(ConfigChange::Remove(guest.clone())),
            EventPayload::GuestOwnerChanged { guest, to, .. } => {
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
        match change {
            ConfigChange::Put(g) => {
                self.guests.insert(g.name.clone(), g);
            }
            ConfigChange::Remove(n) => {
                self.guests.remove(&n);
            }
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

    /// A 64-bit digest of the whole configuration (FNV-1a over the canonical encoding of every
    /// guest, in name order). Equal configurations have equal digests on every host.
    pub fn digest(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for g in self.guests.values() {
            for b in codec::encode(g) {
                h ^= b as u64;
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GuestSpec, RunState};

    fn guest(name: &str, vcpus: u32) -> Guest {
        Guest {
            name: Name::new(name).unwrap(),
            spec: GuestSpec {
                vcpus,
                memory_mib: 512,
                disks: vec![],
                networks: vec![],
                online_migration: true,
                cluster_node: false,
                package: None,
            },
            owner: Name::new("h1").unwrap(),
            run_state: RunState::Running,
            version: 1,
        }
    }

    #[test]
    fn digest_depends_on_content_not_insertion_order() {
        let a = HostConfig::from_guests([guest("a", 1), guest("b", 2)]);
        let b = HostConfig::from_guests([guest("b", 2), guest("a", 1)]);
        assert_eq!(a.digest(), b.digest());
        let c = HostConfig::from_guests([guest("a", 1), guest("b", 3)]);
        assert_ne!(a.digest(), c.digest());
        assert_ne!(a.digest(), HostConfig::default().digest());
    }
}
