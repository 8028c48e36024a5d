//! Randomized tests' seeds and their small deterministic generator. A seed comes from
//! `SWITCHYARD_SEED` when set, else a fresh one, and is printed either way, so a failing run is
//! replayed with `SWITCHYARD_SEED=<seed> cargo test ... <test>`.

/// The seed of randomized test `test` (printed with the variable that replays it).
pub fn seed(test: &str) -> u64 {
    let seed = match std::env::var("SWITCHYARD_SEED") {
        Ok(s) => s.trim().parse().unwrap_or_else(|_| panic!("SWITCHYARD_SEED={s:?} is not an unsigned number")),
        Err(_) => fresh(),
    };
    println!("{test}: SWITCHYARD_SEED={seed}");
    eprintln!("{test}: SWITCHYARD_SEED={seed}");
    seed
}

fn fresh() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.write_u32(std::process::id());
    h.finish()
}

/// A linear congruential generator: the same seed, the same numbers, on every machine.
pub struct Lcg(pub u64);

impl Lcg {
    /// A number in `0..bound` (`bound` > 0).
    pub fn next(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}
