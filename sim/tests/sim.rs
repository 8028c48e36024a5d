//! The deterministic simulation under test.
//!
//! - `seeds`: `SWITCHYARD_SIM_SEEDS` seeds (default 400) from `SWITCHYARD_SIM_FROM` (default 1),
//!   or the one seed `SWITCHYARD_SIM_SEED` (then its whole trace is printed); ends with the fault
//!   mix and "0 violations".
//! - a seed replays byte for byte;
//! - each deliberately broken store is caught by the checkers.

use std::time::Duration;

use switchyard_sim::{run, run_many, Bug, Options};

fn env(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not an unsigned number")))
}

#[test]
fn seeds() {
    if let Some(seed) = env("SWITCHYARD_SIM_SEED") {
        let r = run(&Options::new(seed));
        for line in &r.trace {
            println!("{line}");
        }
        println!("SWITCHYARD_SIM_SEED={seed}: trace digest {:016x}", r.digest);
        assert!(r.violations.is_empty(), "seed {seed}: {:#?}", r.violations);
        return;
    }
    let (from, count) = (env("SWITCHYARD_SIM_FROM").unwrap_or(1), env("SWITCHYARD_SIM_SEEDS").unwrap_or(400));
    let summary = run_many((from..from + count).map(Options::new).collect(), 2);
    println!("{summary}");
    assert_eq!(summary.failed(), 0, "{summary}");
    assert!(summary.ops > count * 20, "the clients got too little done to check: {summary}");
}

#[test]
fn a_seed_replays_byte_for_byte() {
    let seed = env("SWITCHYARD_SIM_SEED").unwrap_or(7);
    let (a, b) = (run(&Options::new(seed)), run(&Options::new(seed)));
    assert!(a.trace.len() > 50, "a run this short shows nothing: {:?}", a.trace);
    if a.trace != b.trace {
        let at = a.trace.iter().zip(&b.trace).position(|(x, y)| x != y).unwrap_or(a.trace.len().min(b.trace.len()));
        panic!("seed {seed} ran twice differently from line {at}:\n  {:?}\n  {:?}", a.trace.get(at), b.trace.get(at));
    }
    assert_eq!(a.digest, b.digest);
    // And another seed runs differently.
    assert_ne!(run(&Options::new(seed + 1)).digest, a.digest);
}

/// Runs seeds with `bug` until the simulation's own checkers catch it (openraft's debug
/// assertions may notice some runs first: those are printed and the search goes on); returns
/// what the checkers said.
fn caught(bug: Bug, seeds: u64) -> Vec<String> {
    for seed in 1..=seeds {
        let r = run(&Options { bug, duration: Duration::from_secs(6), ..Options::new(seed) });
        let (panics, checks): (Vec<String>, Vec<String>) =
            r.violations.into_iter().partition(|v| v.starts_with("panic") || v.contains("ended in a panic"));
        if !panics.is_empty() {
            println!("{bug:?}, seed {seed}: openraft noticed: {panics:?}");
        }
        if !checks.is_empty() {
            println!("{bug:?} caught at seed {seed}: {checks:#?}");
            return checks;
        }
    }
    panic!("{bug:?} went unnoticed by the checkers over {seeds} seeds");
}

#[test]
fn a_store_that_acknowledges_appends_before_its_flush_is_caught() {
    let v = caught(Bug::AckBeforeFlush, 200);
    assert!(v
        .iter()
        .any(|v| v.contains("applied") || v.contains("not in the final history") || v.contains("linearizable")));
}

#[test]
fn a_store_that_does_not_sync_the_vote_is_caught() {
    let v = caught(Bug::VoteNotSynced, 300);
    assert!(v.iter().any(|v| v.contains("vote went back") || v.contains("applied")), "{v:#?}");
}

#[test]
fn an_agent_that_ignores_its_lease_is_caught() {
    let v = caught(Bug::NoFence, 100);
    assert!(v.iter().any(|v| v.contains("two running copies")), "{v:#?}");
}

#[test]
fn a_hung_agent_without_a_watchdog_is_caught() {
    let v = caught(Bug::NoWatchdog, 150);
    assert!(v.iter().any(|v| v.contains("two running copies")), "{v:#?}");
}
