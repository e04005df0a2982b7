//! Helpers shared by the integration tests: a deterministic PRNG, a value type that counts its
//! creations and drops, a bounded epoch flush to count them after deferred reclamation, a
//! watchdog for calls that must not block, a way to see that a thread is asleep (a waiter in
//! `retry`), and a panic hook that keeps quiet about the panics tests make on purpose.
//!
//! Each test binary uses only some of these.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

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
///
/// A read clones the value out of the store, so every copy counts: a clone is a creation (with
/// its original's tag) and each copy is dropped once. Replaced values are dropped by deferred
/// (epoch-based) reclamation, possibly by another thread, some time after they are replaced:
/// count them only after [`Counts::settle_to`] (or [`settle`]) has advanced the epoch.
#[derive(Default)]
pub struct Counts {
    created: AtomicUsize,
    dropped: AtomicUsize,
    /// Live copies per tag (a clone, as reads and `dump` make, shares its original's tag). A
    /// negative count means a copy was dropped twice.
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

    /// Values created (clones included) and not yet dropped.
    ///
    /// # Panics
    /// If more drops than creations were counted: some value was dropped twice.
    #[track_caller]
    pub fn live(&self) -> usize {
        // Read `dropped` first: a drop is counted after its creation, so this never sees more
        // drops than creations unless a value really was dropped twice.
        let dropped = self.dropped();
        let created = self.created();
        assert!(
            dropped <= created,
            "{dropped} drops for {created} values created: a value was dropped twice"
        );
        created - dropped
    }

    /// Asserts that every value ever created has been dropped exactly once (nothing leaked,
    /// nothing dropped twice), after advancing the epoch until it holds (bounded).
    #[track_caller]
    pub fn assert_all_dropped(&self) {
        self.settle_to(&[]);
        assert_eq!(
            self.live(),
            0,
            "created {}, dropped {}",
            self.created(),
            self.dropped()
        );
    }

    /// Live copies of the value(s) tagged `tag` (negative: dropped more often than created).
    pub fn live_tag(&self, tag: u64) -> isize {
        self.live
            .lock()
            .unwrap()
            .get(&tag)
            .copied()
            .unwrap_or_default()
    }

    /// `(tag, live copies)` of every tag whose count is not 0, by tag: a leak shows as an entry
    /// too many or a count too high, a double drop as a count too low (or negative).
    pub fn live_map(&self) -> Vec<(u64, isize)> {
        let mut map: Vec<_> = self
            .live
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, &n)| n != 0)
            .map(|(&tag, &n)| (tag, n))
            .collect();
        map.sort_unstable();
        map
    }

    /// Advances the epoch (bounded) until the live copies per tag are exactly `expected`
    /// (`(tag, copies)`, any order, no zero counts), then asserts that they are. Reclamation
    /// only ever lowers the counts, so this waits only for values that are due to be freed: a
    /// value that leaks keeps its tag above the expectation forever, and a value dropped twice
    /// takes its tag below it; either fails.
    #[track_caller]
    pub fn settle_to(&self, expected: &[(u64, isize)]) {
        let mut expected = expected.to_vec();
        expected.sort_unstable();
        settle(|| self.live_map() == expected);
        assert_eq!(
            self.live_map(),
            expected,
            "live copies per tag (tag, copies) after advancing the epoch"
        );
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

/// How long [`settle`] keeps advancing the epoch before it gives up: a liveness bound (a value
/// that is due to be freed must be freed at all), not a performance threshold. Generous,
/// because one thread of another test, descheduled while it is pinned, holds the epoch back.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(20);

/// Advances crossbeam-epoch's global epoch until `done()` holds, for at most [`SETTLE_LIMIT`];
/// returns whether it held. Replaced values are freed by deferred reclamation: a retired value
/// is dropped once every thread pinned when it was retired has unpinned, by whichever thread
/// collects. `pin().flush()` moves this thread's deferred drops to the global queue, tries to
/// advance the epoch and runs what has expired (threads that ended have flushed theirs). Other
/// tests of the same binary pin too, and a pinned thread that the OS has descheduled holds the
/// epoch back: so it flushes in a tight loop first, then with short sleeps. A value that leaks
/// never makes `done()` true, and the caller's assertion fails after the limit.
pub fn settle(done: impl FnMut() -> bool) -> bool {
    settle_with(done, || {
        crossbeam_epoch::pin().flush();
    })
}

/// [`settle`] with `flush` in place of `pin().flush()`: to watch what a flush does (a panic
/// that escapes from reclamation into it, say).
pub fn settle_with(mut done: impl FnMut() -> bool, mut flush: impl FnMut()) -> bool {
    let start = Instant::now();
    for round in 0u64.. {
        if done() {
            return true;
        }
        if start.elapsed() > SETTLE_LIMIT {
            return false;
        }
        flush();
        if round >= 1_000 {
            std::thread::sleep(Duration::from_millis(1));
        } else if round % 64 == 63 {
            std::thread::yield_now();
        }
    }
    unreachable!()
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
    within_for(
        what,
        Duration::from_secs(60),
        "it is blocked behind a stalled commit",
        f,
    )
}

/// [`within`] with its own time limit and explanation of a hang. The limit is a liveness check
/// (the call must finish at all), never a performance threshold: keep it generous.
pub fn within_for<T: Send + 'static>(
    what: &str,
    limit: Duration,
    hang: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (done, finished) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = done.send(f());
    });
    match finished.recv_timeout(limit) {
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
            panic!("{what} did not finish within {limit:?}: {hang}")
        }
    }
}

/// The kernel id of the calling thread (Linux), to watch it sleep.
pub fn current_tid() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// Whether the thread `tid` of this process is asleep (state `S`: blocked in the kernel).
fn asleep(tid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")) else {
        return false;
    };
    // "tid (comm) S ...": the command may hold spaces and parentheses; the state follows the
    // last ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        == Some('S')
}

/// Waits (yielding, no sleep) until the thread `tid` is asleep, for at most `patience`. A
/// waiter in `retry` sleeps in the kernel only once it has registered and found nothing
/// changed, so after this a commit can reach it only by waking it. Without `/proc` (`tid` is
/// `None`) it returns at once (the test checks less).
#[track_caller]
pub fn wait_until_asleep(tid: Option<u32>, patience: Duration) {
    let Some(tid) = tid else { return };
    let start = Instant::now();
    while !asleep(tid) {
        assert!(
            start.elapsed() < patience,
            "the waiter thread never went to sleep: is `retry` spinning instead of waiting?"
        );
        std::thread::yield_now();
    }
}

/// Installs (once per test binary) a panic hook that keeps quiet about the panics tests make on
/// purpose (their message starts with `PLANNED`) and passes every other panic on.
pub fn quiet_planned_panics() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("");
            if !message.starts_with("PLANNED") {
                previous(info);
            }
        }));
    });
}
