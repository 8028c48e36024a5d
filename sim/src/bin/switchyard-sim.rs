//! `switchyard-sim [--seeds N] [--from SEED] [--threads T] [--seconds S] [--bug ack-before-flush|vote-not-synced|no-fence|no-watchdog]
//! [--seed SEED --trace]`:
//! runs the deterministic simulation over many seeds (a soak run) and prints the fault mix, the
//! totals and every violation with the seed that replays it.

use std::time::Duration;

use switchyard_sim::{run_many, Bug, Options};

fn main() {
    // `RUST_LOG=openraft=debug switchyard-sim --seed S` shows what the nodes did (one seed).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .without_time()
            .with_writer(std::io::stderr)
            .init();
    }
    let mut args = std::env::args().skip(1);
    let (mut seeds, mut from, mut threads, mut seconds, mut one, mut trace) = (300u64, 1u64, 2usize, 6u64, None, false);
    let mut bug = Bug::None;
    while let Some(a) = args.next() {
        let mut value = |name: &str| -> u64 {
            let v = args.next().unwrap_or_else(|| usage(&format!("{name} needs a value")));
            v.parse().unwrap_or_else(|_| usage(&format!("{name} {v}: not a number")))
        };
        match a.as_str() {
            "--seeds" => seeds = value("--seeds"),
            "--from" => from = value("--from"),
            "--threads" => threads = value("--threads").max(1) as usize,
            "--seconds" => seconds = value("--seconds").max(1),
            "--seed" => one = Some(value("--seed")),
            "--trace" => trace = true,
            "--bug" => {
                bug = match args.next().as_deref() {
                    Some("ack-before-flush") => Bug::AckBeforeFlush,
                    Some("vote-not-synced") => Bug::VoteNotSynced,
                    Some("no-fence") => Bug::NoFence,
                    Some("no-watchdog") => Bug::NoWatchdog,
                    other => usage(&format!(
                        "--bug {other:?}: known: ack-before-flush, vote-not-synced, no-fence, no-watchdog"
                    )),
                }
            }
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let base = |seed| Options { duration: Duration::from_secs(seconds), bug, ..Options::new(seed) };
    if let Some(seed) = one {
        let r = switchyard_sim::run(&base(seed));
        if trace {
            for line in &r.trace {
                println!("{line}");
            }
        }
        println!("seed {seed}: trace digest {:016x}, {} violations", r.digest, r.violations.len());
        for v in &r.violations {
            println!("  {v}");
        }
        std::process::exit(i32::from(!r.violations.is_empty()));
    }
    let summary = run_many((from..from + seeds).map(base).collect(), threads);
    println!("{summary}");
    std::process::exit(i32::from(summary.failed() > 0));
}

fn usage(why: &str) -> ! {
    if !why.is_empty() {
        eprintln!("switchyard-sim: {why}");
    }
    eprintln!("usage: switchyard-sim [--seeds N] [--from SEED] [--threads T] [--seconds S] [--bug ack-before-flush|vote-not-synced|no-fence|no-watchdog]\n       switchyard-sim --seed SEED [--trace] [--seconds S] [--bug ack-before-flush|vote-not-synced|no-fence|no-watchdog]");
    std::process::exit(2);
}
