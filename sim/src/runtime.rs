//! The simulation's async runtime for openraft: tokio underneath (one current-thread runtime
//! with a paused clock, so time moves only when every task waits), with two things of its own.
//!
//! - **Randomness from the seed.** openraft draws election timeouts from
//!   `AsyncRuntime::thread_rng`; here that is the simulation's generator, so a seed fixes every
//!   draw. (tokio's own generator, which `select!` uses, is seeded by the runtime builder.)
//! - **A clock per node.** Every task runs on behalf of one node (a task-local, inherited by the
//!   tasks it spawns through this runtime), and `Instant::now()` is that node's clock: the
//!   simulated time scaled by the node's rate (a fast or slow oscillator) plus its offset. Timers
//!   convert a node's deadline back into simulated time. So clock skew changes when each node's
//!   election and heartbeat timers fire, which is what skew does to a real cluster.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::ops::{Add, AddAssign, Sub, SubAssign};
use std::time::Duration;

use openraft::async_runtime::TokioOneShotSender;
use openraft::{AsyncRuntime, OptionalSend};

/// SplitMix64: small, fast, and the same numbers for the same seed everywhere.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    /// True with probability `per_mille` / 1000.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    /// A duration in `[lo, hi]` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

thread_local! {
    /// The generator every part of a running simulation draws from (one simulation per thread).
    static RNG: RefCell<Rng> = RefCell::new(Rng::new(0));
}

/// Seeds this thread's generator (at the start of a simulation).
pub fn seed_thread(seed: u64) {
    RNG.with(|r| *r.borrow_mut() = Rng::new(seed));
}

/// Draws from this thread's generator.
pub fn with_rng<R>(f: impl FnOnce(&mut Rng) -> R) -> R {
    RNG.with(|r| f(&mut r.borrow_mut()))
}

/// openraft's view of the simulation's generator.
pub struct ThreadRng;

impl rand::RngCore for ThreadRng {
    fn next_u32(&mut self) -> u32 {
        with_rng(|r| r.next_u64() as u32)
    }
    fn next_u64(&mut self) -> u64 {
        with_rng(|r| r.next_u64())
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for b in dest {
            *b = self.next_u32() as u8;
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// A node's monotonic clock: from simulated time `since` on, it shows `shown` plus the elapsed
/// simulated time × `rate` / 1000. Changing the rate re-bases it where it stands, so the clock
/// never goes back.
#[derive(Clone, Copy, Debug)]
pub struct NodeClock {
    /// Per mille of real speed: 1000 is exact, 1050 runs 5 % fast.
    pub rate: u64,
    since: Duration,
    shown: Duration,
}

impl Default for NodeClock {
    fn default() -> Self {
        NodeClock { rate: 1000, since: Duration::ZERO, shown: Duration::ZERO }
    }
}

impl NodeClock {
    fn at(&self, sim: Duration) -> Duration {
        let elapsed = sim.saturating_sub(self.since).as_nanos();
        self.shown + Duration::from_nanos((elapsed * self.rate as u128 / 1000) as u64)
    }
}

/// Node `node`'s clock runs at `rate` per mille from now on.
pub fn set_rate(node: u64, rate: u64) {
    let now = sim_elapsed();
    let mut c = clock_of(node);
    c.shown = c.at(now);
    c.since = now;
    c.rate = rate.max(1);
    set_clock(node, c);
}

/// Node `node`'s clock leaps `by` ahead (a stalled process or VM: its timers all fire at once).
pub fn leap(node: u64, by: Duration) {
    let now = sim_elapsed();
    let mut c = clock_of(node);
    c.shown = c.at(now) + by;
    c.since = now;
    set_clock(node, c);
}

thread_local! {
    /// The nodes' clocks and the simulated time they count from. Thread-local: a simulation runs
    /// on one current-thread runtime, so every task of it (and every `Instant::now()` openraft
    /// calls) runs on the thread that started it.
    static CLOCKS: RefCell<(Option<tokio::time::Instant>, BTreeMap<u64, NodeClock>)> =
        const { RefCell::new((None, BTreeMap::new())) };
}

/// Starts this thread's clocks: every node's clock counts from now, at the exact rate.
pub fn start_clocks() {
    CLOCKS.with(|c| *c.borrow_mut() = (Some(tokio::time::Instant::now()), BTreeMap::new()));
}

/// Simulated time since the clocks started.
pub fn sim_elapsed() -> Duration {
    let start = CLOCKS.with(|c| c.borrow().0.expect("clocks started"));
    tokio::time::Instant::now().saturating_duration_since(start)
}

fn set_clock(node: u64, clock: NodeClock) {
    CLOCKS.with(|c| c.borrow_mut().1.insert(node, clock));
}

/// What node `node`'s monotonic clock shows now (time since the simulation began, on it).
pub fn node_now(node: u64) -> Duration {
    clock_of(node).at(sim_elapsed())
}

pub fn clock_of(node: u64) -> NodeClock {
    CLOCKS.with(|c| c.borrow().1.get(&node).copied().unwrap_or_default())
}

tokio::task_local! {
    /// The node a task runs for (0: the simulator itself).
    static NODE: u64;
}

/// Runs `f` as node `node`: every task it spawns through [`SimRuntime`] is the node's too.
pub fn as_node<F: Future>(node: u64, f: F) -> impl Future<Output = F::Output> {
    NODE.scope(node, f)
}

/// The node the current task runs for.
pub fn current_node() -> u64 {
    NODE.try_with(|n| *n).unwrap_or(0)
}

/// A point on a node's clock, as time since the simulation began on that clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SimInstant(Duration);

impl SimInstant {
    /// The current node's clock now.
    fn now_local() -> SimInstant {
        SimInstant(clock_of(current_node()).at(sim_elapsed()))
    }

    /// The simulated time at which the current node's clock shows `self` (now, if it did
    /// already).
    fn to_sim(self) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        let local_now = SimInstant::now_local();
        if self <= local_now {
            return now;
        }
        now + to_sim_duration(self.0 - local_now.0) + Duration::from_nanos(1)
    }
}

impl openraft::Instant for SimInstant {
    fn now() -> Self {
        SimInstant::now_local()
    }
}

impl Add<Duration> for SimInstant {
    type Output = SimInstant;
    fn add(self, d: Duration) -> SimInstant {
        SimInstant(self.0 + d)
    }
}

impl AddAssign<Duration> for SimInstant {
    fn add_assign(&mut self, d: Duration) {
        self.0 += d;
    }
}

impl Sub<Duration> for SimInstant {
    type Output = SimInstant;
    fn sub(self, d: Duration) -> SimInstant {
        SimInstant(self.0.saturating_sub(d))
    }
}

impl SubAssign<Duration> for SimInstant {
    fn sub_assign(&mut self, d: Duration) {
        self.0 = self.0.saturating_sub(d);
    }
}

impl Sub<SimInstant> for SimInstant {
    type Output = Duration;
    fn sub(self, o: SimInstant) -> Duration {
        self.0.saturating_sub(o.0)
    }
}

/// Converts a duration on the current node's clock into simulated time.
fn to_sim_duration(d: Duration) -> Duration {
    let c = clock_of(current_node());
    Duration::from_nanos((d.as_nanos() * 1000 / c.rate as u128) as u64)
}

/// openraft's runtime in the simulation.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SimRuntime;

impl AsyncRuntime for SimRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = SimInstant;
    type TimeoutError = tokio::time::error::Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = tokio::time::Timeout<T>;
    type ThreadLocalRng = ThreadRng;
    type OneshotSender<T: OptionalSend> = TokioOneShotSender<T>;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        tokio::spawn(as_node(current_node(), future))
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(to_sim_duration(duration))
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(deadline.to_sim())
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(duration: Duration, future: F) -> Self::Timeout<R, F> {
        tokio::time::timeout(to_sim_duration(duration), future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F> {
        tokio::time::timeout_at(deadline.to_sim(), future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        ThreadRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (TokioOneShotSender(tx), rx)
    }
}

thread_local! {
    /// Panics of this thread's simulation (tasks included), as "message at location".
    static PANICS: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// From now on, panics on this thread are recorded (and not printed) until [`take_panics`].
pub fn record_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let recording = PANICS.with(|p| {
                let mut p = p.borrow_mut();
                let Some(list) = p.as_mut() else { return false };
                let msg = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
                list.push(format!("{msg}{at}"));
                true
            });
            if !recording {
                default(info);
            }
        }));
    });
    PANICS.with(|p| *p.borrow_mut() = Some(Vec::new()));
}

/// The panics recorded since [`record_panics`]; stops recording.
pub fn take_panics() -> Vec<String> {
    PANICS.with(|p| p.borrow_mut().take().unwrap_or_default())
}
