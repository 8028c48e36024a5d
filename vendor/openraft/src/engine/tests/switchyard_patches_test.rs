//! [switchyard patches 3, 4, 6 and 7] Engine-level tests of the election changes
//! (`vendor/openraft/SWITCHYARD.md`). Each fails on stock 0.9.25.

use std::sync::Arc;
use std::time::Duration;

use maplit::btreeset;

use crate::core::ServerState;
use crate::engine::testing::UTConfig;
use crate::engine::Engine;
use crate::engine::LogIdList;
use crate::raft::VoteRequest;
use crate::testing::log_id;
use crate::utime::UTime;
use crate::EffectiveMembership;
use crate::Membership;
use crate::TokioInstant;
use crate::Vote;

fn m012() -> Membership<u64, ()> {
    Membership::<u64, ()>::new(vec![btreeset! {0,1,2}], None)
}

/// Node 1 of {0,1,2}, with the log up to (2,0,5), following leader 0 of term 2 whose lease ran
/// out on this node long ago.
fn follower() -> Engine<UTConfig> {
    let mut eng = Engine::<UTConfig>::default();
    eng.state.enable_validation(false);
    eng.config.id = 1;
    eng.state.membership_state.set_effective(Arc::new(EffectiveMembership::new(Some(log_id(1, 0, 1)), m012())));
    eng.state.log_ids = LogIdList::new([log_id(1, 0, 1), log_id(2, 0, 5)]);
    eng.state.vote = UTime::new(TokioInstant::now() - Duration::from_secs(10), Vote::new_committed(2, 0));
    eng.state.server_state = ServerState::Follower;
    eng.output.take_commands();
    eng
}

/// Patch 4: a node refused a candidate of term 7 for its shorter log (its own vote stays at
/// term 2); its own campaign then starts above term 7, not at term 3, where the refused
/// candidate already voted for itself and the campaign would be refused in turn.
#[test]
fn test_an_election_starts_above_every_term_seen_in_a_vote_request() {
    let mut eng = follower();
    let resp = eng.handle_vote_req(VoteRequest { vote: Vote::new(7, 2), last_log_id: Some(log_id(1, 0, 1)) });
    assert!(!resp.vote_granted);
    assert_eq!(*eng.state.vote_ref(), Vote::new_committed(2, 0), "the refusal does not move the vote");

    eng.elect();

    assert_eq!(*eng.state.vote_ref(), Vote::new(8, 1), "stock 0.9 campaigns in term 3");
}

/// Patch 6: refusing a shorter-logged candidate after its leader's lease ran out, the node
/// campaigns at its next tick; not while the lease runs, and not once it voted for someone.
#[test]
fn test_refusing_a_shorter_log_after_the_lease_campaigns_soon() {
    let mut eng = follower();
    eng.handle_vote_req(VoteRequest { vote: Vote::new(3, 2), last_log_id: Some(log_id(1, 0, 1)) });
    assert!(eng.campaign_soon, "the refusing node holds the longer log: it should campaign at once");

    // Within the leader's lease: refused by the lease, no early campaign.
    let mut eng = follower();
    eng.state.vote = UTime::new(TokioInstant::now(), Vote::new_committed(2, 0));
    eng.handle_vote_req(VoteRequest { vote: Vote::new(3, 2), last_log_id: Some(log_id(1, 0, 1)) });
    assert!(!eng.campaign_soon);

    // A vote granted to a candidate with a log as long clears it.
    let mut eng = follower();
    eng.handle_vote_req(VoteRequest { vote: Vote::new(3, 2), last_log_id: Some(log_id(1, 0, 1)) });
    let resp = eng.handle_vote_req(VoteRequest { vote: Vote::new(4, 2), last_log_id: Some(log_id(2, 0, 5)) });
    assert!(resp.vote_granted);
    assert!(!eng.campaign_soon);
}

/// Patch 3: "a greater log was seen" delays this node's next election; accepting a leader's
/// AppendEntries ends that election, so the flag is cleared (stock 0.9 kept it until this node
/// campaigned again, and it delayed the election after the next leader loss).
#[test]
fn test_accepting_a_leader_clears_a_stale_greater_log_flag() {
    let mut eng = follower();
    eng.set_greater_log();
    let accepted = eng.handle_append_entries(&Vote::new_committed(3, 2), Some(log_id(2, 0, 5)), vec![], None);
    assert!(accepted);
    assert!(!eng.is_there_greater_log());
}

/// Patch 7: a follower refuses every candidate while its lease of the leader runs; told that
/// this leader is handing over (`expire_leader_lease` with the leader's vote), it judges the
/// next vote request as if the lease had run out. A notice naming another vote is ignored.
#[test]
fn test_a_handover_notice_ends_the_lease_of_that_leader_only() {
    let fresh = || {
        let mut eng = follower();
        eng.state.vote = UTime::new(TokioInstant::now(), Vote::new_committed(2, 0));
        eng
    };
    let request = VoteRequest { vote: Vote::new(3, 2), last_log_id: Some(log_id(2, 0, 5)) };

    // Within the lease: refused.
    let mut eng = fresh();
    assert!(!eng.handle_vote_req(request.clone()).vote_granted);

    // A notice for another leader's vote changes nothing.
    let mut eng = fresh();
    eng.expire_leader_lease(&Vote::new_committed(2, 2));
    assert!(!eng.handle_vote_req(request.clone()).vote_granted);

    // The notice of the leader it follows: the vote is granted.
    let mut eng = fresh();
    eng.expire_leader_lease(&Vote::new_committed(2, 0));
    let resp = eng.handle_vote_req(request);
    assert!(resp.vote_granted);
    assert_eq!(*eng.state.vote_ref(), Vote::new(3, 2));
}

/// Patch 7: a message the leader sent before it stopped and handed over can reach this node
/// after the handover notice. It is still accepted, but it does not renew the lease the notice
/// ended, so the chosen candidate is not refused for a whole lease. A message of a later
/// leader renews that leader's lease as usual.
#[test]
fn test_a_message_in_flight_from_a_leader_that_handed_over_does_not_renew_its_lease() {
    let mut eng = follower();
    eng.state.vote = UTime::new(TokioInstant::now(), Vote::new_committed(2, 0));
    eng.expire_leader_lease(&Vote::new_committed(2, 0));
    // A heartbeat of leader 0 sent before it stopped, arriving after the notice.
    assert!(eng.handle_append_entries(&Vote::new_committed(2, 0), Some(log_id(2, 0, 5)), vec![], None));
    let resp = eng.handle_vote_req(VoteRequest { vote: Vote::new(3, 2), last_log_id: Some(log_id(2, 0, 5)) });
    assert!(resp.vote_granted);

    // The next leader's heartbeat renews its own lease: a rival candidate is refused.
    assert!(eng.handle_append_entries(&Vote::new_committed(3, 2), Some(log_id(2, 0, 5)), vec![], None));
    let resp = eng.handle_vote_req(VoteRequest { vote: Vote::new(4, 0), last_log_id: Some(log_id(2, 0, 5)) });
    assert!(!resp.vote_granted);
}
