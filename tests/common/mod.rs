//! Helpers shared by the integration tests: a deterministic PRNG, a value type that counts its
//! creations and drops, and a watchdog for calls that must not block.
//!
//! Each test binary uses only some of these.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// How much longer the multi-threaded tests run in an optimised build (where each operation is
/// much cheaper, so the same count would barely let threads overlap). Debug builds keep each
/// stress test under a couple of seconds.
pub const SCALE: u64 = if cfg!(debug_assertions) { 1 } else { 20 };

/// xorshift64: small, deterministic, good enough to pick accounts and amounts.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        // Spread small seeds and never start at 0 (a fixed point of xorshift).
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Two distinct numbers in `0..n` (n >= 2).
    pub fn pair(&mut self, n: u64) -> (u64, u64) {
        let a = self.below(n);
        let b = (a + 1 + self.below(n - 1)) % n;
        (a, b)
    }
}

/// Creation and drop counts of [`Tracked`] values. Every test makes its own, so tests running in
/// parallel in one binary never see each other's values.
#[derive(Default)]
pub struct Counts {
    created: AtomicUsize,
    dropped: AtomicUsize,
    /// Live copies per tag (a clone, as `dump` makes, shares its original's tag).
    live: Mutex<HashMap<u64, isize>>,
}

impl Counts {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn created(&self) -> usize {
        self.created.load(Ordering::SeqCst)
    }

    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }

    /// Values created and not yet dropped.
    pub fn live(&self) -> usize {
        self.created() - self.dropped()
    }

    /// Asserts that every value ever created has been dropped (nothing leaked).
    #[track_caller]
    pub fn assert_all_dropped(&self) {
        assert_eq!(
            self.live(),
            0,
            "created {}, dropped {}",
            self.created(),
            self.dropped()
        );
    }

    /// Live copies of the value(s) tagged `tag`.
    pub fn live_tag(&self, tag: u64) -> isize {
        self.live
            .lock()
            .unwrap()
            .get(&tag)
            .copied()
            .unwrap_or_default()
    }

    fn born(&self, tag: u64) {
        self.created.fetch_add(1, Ordering::SeqCst);
        *self.live.lock().unwrap().entry(tag).or_default() += 1;
    }

    fn died(&self, tag: u64) {
        *self.live.lock().unwrap().entry(tag).or_default() -= 1;
        self.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// A value that reports its creation, clones and drop to a [`Counts`].
pub struct Tracked {
    pub tag: u64,
    pub n: i64,
    counts: Arc<Counts>,
}

impl Tracked {
    pub fn new(counts: &Arc<Counts>, tag: u64, n: i64) -> Self {
        counts.born(tag);
        Self {
            tag,
            n,
            counts: Arc::clone(counts),
        }
    }
}

impl Clone for Tracked {
    fn clone(&self) -> Self {
        Self::new(&self.counts, self.tag, self.n)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.counts.died(self.tag);
    }
}

impl std::fmt::Debug for Tracked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tracked(tag {}, {})", self.tag, self.n)
    }
}

/// Runs `f` on its own thread and returns its result; fails the test if it has not finished
/// after a generous minute. For calls that must complete while another thread is stalled in the
/// middle of a commit: if they waited for it, they would never finish, and this turns that hang
/// into a failure.
pub fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, finished) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = done.send(f());
    });
    match finished.recv_timeout(Duration::from_secs(60)) {
        Ok(value) => {
            worker.join().unwrap();
            value
        }
        // The worker panicked: re-raise its panic here.
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the worker sends before it ends"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what} did not finish: it is blocked behind a stalled commit")
        }
    }
}
