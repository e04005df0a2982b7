//! `Store::atomically` and friends (issue #10, part 5): serializability and opacity under
//! threads, `retry` that wakes on a change and not before, timeouts, `or_else`, user errors,
//! panics, swallowed `TxError`s, attempt counting, and the async path under tokio.
//!
//! No test sleeps to provoke a race and none asserts on elapsed time. Orderings are forced with
//! channels and atomic counters; where a test needs to know that a waiter is really asleep (so
//! that a commit reaches it through the wake-up path, not through its own re-check) it waits
//! until the waiter's thread is in the kernel's sleeping state (`/proc`, Linux; elsewhere it
//! only waits for the waiter's first attempt, and the test still runs but checks less). Time
//! limits appear only as liveness watchdogs (a call must finish at all) and as the timeouts
//! under test.

mod common;

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use common::{current_tid, within, Counts, Tracked, XorShift};
use stm_store::{Backoff, Error, Store, Tx, TxError};

/// A liveness bound: a call that must finish at all (never a performance threshold).
const LIVENESS: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Waits until the thread `tid` is asleep (see `common::wait_until_asleep`).
#[track_caller]
fn wait_until_asleep(tid: Option<u32>) {
    common::wait_until_asleep(tid, LIVENESS);
}

/// Inside a closure: says that it reached this point, then waits until the test lets it go. A
/// later attempt that stops here by mistake (a broken count) must not hang: the test drops its
/// sender once done.
fn pause_here(reached: &mpsc::Sender<()>, go: &mpsc::Receiver<()>) {
    reached.send(()).unwrap();
    let _ = go.recv();
}

/// Waits (yielding) until `store` has counted `waits` waits in `retry`: a transaction counts
/// its wait only after its closure returned, so its reads are done by then.
#[track_caller]
fn wait_for_waits<K, V>(store: &Store<K, V>, waits: u64)
where
    K: Ord + std::hash::Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    let start = Instant::now();
    while store.stats().tx_waits < waits {
        assert!(
            start.elapsed() < LIVENESS,
            "no transaction reached its wait in `retry`"
        );
        thread::yield_now();
    }
}

/// Receives one message, failing the test (instead of hanging) if none comes within the
/// liveness bound.
#[track_caller]
fn recv<T>(rx: &mpsc::Receiver<T>, what: &str) -> T {
    match rx.recv_timeout(LIVENESS) {
        Ok(value) => value,
        Err(e) => panic!("{what}: nothing received within {LIVENESS:?} ({e})"),
    }
}

/// An error type of the caller's own, as `try_atomically` users write them.
#[derive(Debug, PartialEq)]
enum AppError {
    Refused(&'static str, i64),
    Tx(TxError),
}

impl From<TxError> for AppError {
    fn from(e: TxError) -> Self {
        AppError::Tx(e)
    }
}

/// The message of a caught panic.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn value_of(store: &Store<&'static str, i64>, key: &'static str) -> (u64, Option<i64>) {
    let v = store.usevar(key).unwrap();
    (v.version(), v.value().copied())
}

type Shared = Arc<Store<&'static str, i64>>;

/// A thread that waits in a transaction. Its body reports each attempt on the sender it is
/// given; the thread is not scoped, so that a waiter that is never woken fails its test (the
/// liveness bound of [`Waiter::result`]) instead of hanging it.
struct Waiter<T> {
    tid: Option<u32>,
    store: Shared,
    /// The store's count of waits in `retry` before the waiter started.
    waits_before: u64,
    attempts: mpsc::Receiver<u32>,
    done: mpsc::Receiver<T>,
    thread: Option<thread::JoinHandle<()>>,
}

fn spawn_waiter<T: Send + 'static>(
    store: &Shared,
    body: impl FnOnce(&Store<&'static str, i64>, mpsc::Sender<u32>) -> T + Send + 'static,
) -> Waiter<T> {
    let waits_before = store.stats().tx_waits;
    let (tid_tx, tid_rx) = mpsc::channel();
    let (attempt_tx, attempts) = mpsc::channel();
    let (done_tx, done) = mpsc::channel();
    let theirs = Arc::clone(store);
    let thread = thread::spawn(move || {
        tid_tx.send(current_tid()).unwrap();
        let _ = done_tx.send(body(&theirs, attempt_tx));
    });
    Waiter {
        tid: recv(&tid_rx, "the waiter's thread id"),
        store: Arc::clone(store),
        waits_before,
        attempts,
        done,
        thread: Some(thread),
    }
}

impl<T> Waiter<T> {
    /// Waits for the first attempt, until it has read its keys (it counts its wait in `retry`
    /// only after its closure returned), then until the thread sleeps. The first wait is what
    /// the tests rely on: a commit after it reaches the waiter by a wake-up or by the waiter's
    /// own check before it sleeps, and either way runs the closure again. Seeing the thread
    /// asleep alone is not enough: it may block briefly elsewhere (a lock of the allocator,
    /// shared with the tests running beside it) before it read anything.
    #[track_caller]
    fn first_attempt_then_asleep(&self) {
        assert_eq!(recv(&self.attempts, "the waiter's first attempt"), 1);
        wait_for_waits(&self.store, self.waits_before + 1);
        wait_until_asleep(self.tid);
    }

    /// The waiter's answer (a panic of the waiter goes on here).
    #[track_caller]
    fn result(&mut self) -> T {
        match self.done.recv_timeout(LIVENESS) {
            Ok(value) => {
                if let Some(t) = self.thread.take() {
                    t.join().unwrap();
                }
                value
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                match self.thread.take().map(thread::JoinHandle::join) {
                    Some(Err(panic)) => std::panic::resume_unwind(panic),
                    _ => panic!("the waiter ended without an answer"),
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("the waiter was not woken within {LIVENESS:?}: a lost wake-up")
            }
        }
    }

    /// The attempts reported since the last look.
    fn later_attempts(&self) -> Vec<u32> {
        self.attempts.try_iter().collect()
    }
}

/// The body of a waiter for `key`: retries until it has a value, returns it.
fn await_key(
    key: &'static str,
) -> impl FnOnce(&Store<&'static str, i64>, mpsc::Sender<u32>) -> i64 {
    move |store, attempts| {
        store.atomically(|tx| {
            attempts.send(tx.attempt()).unwrap();
            match tx.get(&key)? {
                Some(v) => Ok(v),
                None => tx.retry(),
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Serializability: bank, write skew, lost update
// ---------------------------------------------------------------------------------------------

const ACCOUNTS: u32 = 6;
const INITIAL: i64 = 100;
const TOTAL: i64 = ACCOUNTS as i64 * INITIAL;

/// Transfers through `atomically` (two threads) and through `using` + `commit` (one thread),
/// audited all the while by a thread that sums every account in one `atomically` and one that
/// sums a `using` snapshot: every audit and the final state hold the total. Fails if a
/// transaction's commit skipped validating its reads (a transfer computed from a stale balance
/// creates or destroys money) or if transactions and handle commits were not atomic with
/// respect to each other.
#[test]
fn bank_transfers_conserve_the_total_in_every_audit() {
    const TRANSFERS: usize = 400 * common::SCALE as usize;
    const MIN_AUDITS: usize = 20;
    let store: Store<u32, i64> = Store::new();
    store.atomically(|tx| (0..ACCOUNTS).try_for_each(|a| tx.set(&a, INITIAL)));
    let transferring = AtomicUsize::new(3);
    let audits_tx = AtomicUsize::new(0);
    let audits_using = AtomicUsize::new(0);
    thread::scope(|s| {
        for t in 0..3u64 {
            let (store, transferring) = (&store, &transferring);
            s.spawn(move || {
                let mut rng = XorShift::new(t + 1);
                for _ in 0..TRANSFERS {
                    let (from, to) = rng.pair(u64::from(ACCOUNTS));
                    let (from, to) = (from as u32, to as u32);
                    let amount = rng.below(30) as i64;
                    if t == 2 {
                        // The Axon-style way, on the same keys at the same time.
                        loop {
                            let mut c = store.using([from, to]).unwrap();
                            let f = c[&from].value().copied().unwrap();
                            let g = c[&to].value().copied().unwrap();
                            c[&from].set(f - amount);
                            c[&to].set(g + amount);
                            match c.commit() {
                                Ok(()) => break,
                                Err(Error::ConcurrentUpdate | Error::BusyRetry) => continue,
                            }
                        }
                    } else {
                        store.atomically(|tx| {
                            let f = tx.get(&from)?.unwrap();
                            let g = tx.get(&to)?.unwrap();
                            tx.set(&from, f - amount)?;
                            tx.set(&to, g + amount)
                        });
                    }
                }
                transferring.fetch_sub(1, SeqCst);
            });
        }
        s.spawn(|| {
            while transferring.load(SeqCst) > 0 || audits_tx.load(SeqCst) < MIN_AUDITS {
                let total = store.atomically(|tx| {
                    let mut sum = 0;
                    for a in 0..ACCOUNTS {
                        sum += tx.get(&a)?.unwrap();
                    }
                    Ok(sum)
                });
                let n = audits_tx.fetch_add(1, SeqCst);
                assert_eq!(total, TOTAL, "atomically audit {n}");
            }
        });
        s.spawn(|| {
            while transferring.load(SeqCst) > 0 || audits_using.load(SeqCst) < MIN_AUDITS {
                let c = store.using(0..ACCOUNTS).unwrap();
                let total: i64 = c.iter().map(|(_, v)| v.value().copied().unwrap()).sum();
                let n = audits_using.fetch_add(1, SeqCst);
                assert_eq!(total, TOTAL, "using audit {n}");
            }
        });
    });
    let end: i64 = store.dump().iter().map(|(_, _, v)| v.unwrap()).sum();
    assert_eq!(end, TOTAL);
}

/// The two doctors on call: each goes off call only if the other is on call, reading both and
/// writing only its own key. Under snapshot isolation both could go off call (write skew).
fn go_off_call(store: &Store<&'static str, bool>, me: &'static str, other: &'static str) -> bool {
    store.atomically(|tx| {
        let mine = tx.get(&me)?.unwrap();
        let theirs = tx.get(&other)?.unwrap();
        // Some work after the last read: write skew needs the other doctor's commit to land
        // between this transaction's last read (any earlier, and the next read would see it)
        // and its commit.
        for i in 0..20_000u32 {
            std::hint::black_box(i);
        }
        if mine && theirs {
            tx.set(&me, false)?;
            return Ok(true);
        }
        Ok(false)
    })
}

/// Deterministic write skew: alice has read both doctors on call and is stopped (channel
/// handshake) before she writes; bob goes off call and commits; alice's commit must fail
/// validation on bob's key (which she read but does not write), and her second attempt sees
/// bob off call and stays on. Fails if a commit validates only the keys it writes.
#[test]
fn write_skew_is_refused_when_the_other_doctor_commits_in_between() {
    let store: Store<&'static str, bool> = Store::new();
    store.atomically(|tx| {
        tx.set(&"alice", true)?;
        tx.set(&"bob", true)
    });
    let (read_tx, read_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    thread::scope(|s| {
        let store = &store;
        let alice = s.spawn(move || {
            store.atomically(|tx| {
                let mine = tx.get(&"alice")?.unwrap();
                let theirs = tx.get(&"bob")?.unwrap();
                if tx.attempt() == 1 {
                    pause_here(&read_tx, &go_rx);
                }
                if mine && theirs {
                    tx.set(&"alice", false)?;
                }
                Ok((tx.attempt(), mine && theirs))
            })
        });
        recv(&read_rx, "alice's first reads");
        assert!(go_off_call(store, "bob", "alice"), "bob goes off call");
        go_tx.send(()).unwrap();
        drop(go_tx);
        assert_eq!(
            alice.join().unwrap(),
            (2, false),
            "alice's first attempt must fail validation (she read bob, who changed); her \
             second sees bob off call"
        );
    });
    let rows: Vec<_> = store
        .dump()
        .into_iter()
        .filter(|(k, _, _)| ["alice", "bob"].contains(k))
        .collect();
    assert_eq!(rows, [("alice", 1, Some(true)), ("bob", 2, Some(false))]);
}

/// Write skew hammered: rounds of both doctors trying to go off call at once; after every
/// round exactly one is off call. The doctors spin on the round number (a thread woken from a
/// barrier's sleep often finishes its whole transaction before the other is scheduled) while
/// the main thread blocks on a channel (so that it leaves both cores to them), and each does
/// some work between its last read and its commit: their vulnerable windows overlap. A broken
/// round is counted, not asserted at once, so that no thread is left waiting.
#[test]
fn write_skew_never_leaves_nobody_on_call() {
    const ROUNDS: usize = 1_000;
    let store: Store<&'static str, bool> = Store::new();
    let round = AtomicUsize::new(0);
    let (done_tx, done) = mpsc::channel();
    let mut broken = Vec::new();
    thread::scope(|s| {
        for (me, other) in [("alice", "bob"), ("bob", "alice")] {
            let (store, round, done_tx) = (&store, &round, done_tx.clone());
            s.spawn(move || {
                for r in 1..=ROUNDS {
                    while round.load(SeqCst) < r {
                        std::hint::spin_loop();
                        thread::yield_now();
                    }
                    go_off_call(store, me, other);
                    done_tx.send(()).unwrap();
                }
            });
        }
        for r in 1..=ROUNDS {
            store.atomically(|tx| {
                tx.set(&"alice", true)?;
                tx.set(&"bob", true)
            });
            round.store(r, SeqCst);
            recv(&done, "a doctor's transaction");
            recv(&done, "the other doctor's transaction");
            let on_call = store.atomically(|tx| Ok((tx.get(&"alice")?, tx.get(&"bob")?)));
            if on_call != (Some(true), Some(false)) && on_call != (Some(false), Some(true)) {
                broken.push((r, on_call));
            }
        }
    });
    assert_eq!(
        broken,
        [],
        "(round, (alice, bob) on call): exactly one doctor goes off call each round"
    );
}

/// N threads x M increments of one counter through `atomically`: exactly N x M. Fails on a
/// lost update (a commit that does not validate the version it read).
#[test]
fn no_lost_update_through_atomically() {
    const THREADS: i64 = 4;
    let increments = 300 * common::SCALE as i64;
    let store: Store<&'static str, i64> = Store::new();
    thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for _ in 0..increments {
                    store.atomically(|tx| {
                        let n = tx.get(&"counter")?.unwrap_or(0);
                        tx.set(&"counter", n + 1)
                    });
                }
            });
        }
    });
    let expected = THREADS * increments;
    assert_eq!(
        value_of(&store, "counter"),
        (expected as u64, Some(expected))
    );
}

/// The same counter incremented by `atomically` (two threads) and by `usevar` + `commit` with a
/// retry loop on `ConcurrentUpdate` (two threads): every increment lands exactly once.
#[test]
fn no_lost_update_with_transactions_and_handles_mixed() {
    let increments = 300 * common::SCALE as i64;
    let store: Store<&'static str, i64> = Store::new();
    let refused = AtomicUsize::new(0);
    thread::scope(|s| {
        for t in 0..4 {
            let (store, refused) = (&store, &refused);
            s.spawn(move || {
                for _ in 0..increments {
                    if t % 2 == 0 {
                        store.atomically(|tx| {
                            let n = tx.get(&"counter")?.unwrap_or(0);
                            tx.set(&"counter", n + 1)
                        });
                        continue;
                    }
                    loop {
                        let mut v = store.usevar("counter").unwrap();
                        v.set(v.value().copied().unwrap_or(0) + 1);
                        match v.commit() {
                            Ok(()) => break,
                            Err(Error::ConcurrentUpdate | Error::BusyRetry) => {
                                refused.fetch_add(1, SeqCst);
                            }
                        }
                    }
                }
            });
        }
    });
    let expected = 4 * increments;
    assert_eq!(
        value_of(&store, "counter"),
        (expected as u64, Some(expected))
    );
}

// ---------------------------------------------------------------------------------------------
// Opacity
// ---------------------------------------------------------------------------------------------

/// Moves `d` from y to x keeping `x + y == 0`, through `atomically`.
fn shift_tx(store: &Store<&'static str, i64>, d: i64) {
    store.atomically(|tx| {
        let x = tx.get(&"x")?.unwrap();
        let y = tx.get(&"y")?.unwrap();
        tx.set(&"x", x + d)?;
        tx.set(&"y", y - d)
    });
}

/// The same through `using` + `commit`.
fn shift_handles(store: &Store<&'static str, i64>, d: i64) {
    loop {
        let mut c = store.using(["x", "y"]).unwrap();
        let x = c[&"x"].value().copied().unwrap();
        let y = c[&"y"].value().copied().unwrap();
        c[&"x"].set(x + d);
        c[&"y"].set(y - d);
        match c.commit() {
            Ok(()) => return,
            Err(Error::ConcurrentUpdate | Error::BusyRetry) => continue,
        }
    }
}

fn zero_sum_store() -> Store<&'static str, i64> {
    let store = Store::new();
    store.atomically(|tx| {
        tx.set(&"x", 0)?;
        tx.set(&"y", 0)
    });
    store
}

/// The torn view forced: a reader has read x and is stopped (handshake); a writer moves 5 from
/// y to x and commits (through `atomically`, then through `using` + `commit`); the reader's
/// read of y must stop the attempt (an error that `?` passes up) rather than return the new y,
/// which with the old x breaks `x + y == 0`. The invariant is asserted inside the closure, so a
/// torn view panics there. Fails without the per-read validation (mutation `no_opacity`).
#[test]
fn opacity_a_read_after_a_concurrent_commit_stops_the_attempt() {
    for handles in [false, true] {
        let store = zero_sum_store();
        let (read_tx, read_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        thread::scope(|s| {
            let store = &store;
            let reader = s.spawn(move || {
                store.atomically(|tx| {
                    let x = tx.get(&"x")?.unwrap();
                    if tx.attempt() == 1 {
                        pause_here(&read_tx, &go_rx);
                    }
                    let y = tx.get(&"y")?.unwrap();
                    assert_eq!(
                        x + y,
                        0,
                        "torn view on attempt {}: x={x} y={y}",
                        tx.attempt()
                    );
                    Ok((tx.attempt(), x, y))
                })
            });
            recv(&read_rx, "the reader's read of x");
            match handles {
                false => shift_tx(store, 5),
                true => shift_handles(store, 5),
            }
            go_tx.send(()).unwrap();
            drop(go_tx);
            assert_eq!(reader.join().unwrap(), (2, 5, -5), "handles: {handles}");
        });
    }
}

/// Keys that no test writes.
const FILLERS: [&str; 6] = ["f0", "f1", "f2", "f3", "f4", "f5"];

/// Writers (two through `atomically`, one through `using` + `commit`) keep `x + y == 0`;
/// readers inside `atomically` read x then y, or y then x, and assert the sum inside the
/// closure: a torn view panics there and fails the test.
#[test]
fn opacity_readers_never_see_a_broken_invariant() {
    let rounds = 1_500 * common::SCALE as usize;
    let store = zero_sum_store();
    let reads = AtomicUsize::new(0);
    thread::scope(|s| {
        for w in 0..3u64 {
            let store = &store;
            s.spawn(move || {
                let mut rng = XorShift::new(100 + w);
                for _ in 0..rounds {
                    let d = rng.below(9) as i64 - 4;
                    match w {
                        2 => shift_handles(store, d),
                        _ => shift_tx(store, d),
                    }
                }
            });
        }
        for order in [["x", "y"], ["y", "x"]] {
            let (store, reads) = (&store, &reads);
            s.spawn(move || {
                for _ in 0..rounds {
                    store.atomically(|tx| {
                        let a = tx.get(&order[0])?.unwrap();
                        // Keys nobody writes, read in between: a wider window for a commit
                        // to land between the two reads that matter.
                        for filler in FILLERS {
                            tx.get(&filler)?;
                        }
                        let b = tx.get(&order[1])?.unwrap();
                        assert_eq!(a + b, 0, "torn view: {}={a} {}={b}", order[0], order[1]);
                        Ok(())
                    });
                    reads.fetch_add(1, SeqCst);
                }
            });
        }
    });
    assert_eq!(reads.load(SeqCst), 2 * rounds);
    let (x, y) = store.atomically(|tx| Ok((tx.get(&"x")?.unwrap(), tx.get(&"y")?.unwrap())));
    assert_eq!(x + y, 0);
}

// ---------------------------------------------------------------------------------------------
// retry: wakes on a change, and not before
// ---------------------------------------------------------------------------------------------

/// How the tests below write: a transaction, one handle, a collection.
#[derive(Clone, Copy, Debug)]
enum Writer {
    Tx,
    Value,
    Collection,
}

const WRITERS: [Writer; 3] = [Writer::Tx, Writer::Value, Writer::Collection];

fn write(store: &Store<&'static str, i64>, writer: Writer, key: &'static str, value: i64) {
    match writer {
        Writer::Tx => store.atomically(|tx| tx.set(&key, value)),
        Writer::Value => {
            let mut v = store.usevar(key).unwrap();
            v.set(value);
            v.commit().unwrap();
        }
        Writer::Collection => {
            // Two keys: the multi-key commit path.
            let mut c = store.using([key, "elsewhere"]).unwrap();
            c[&key].set(value);
            c[&"elsewhere"].set(value);
            c.commit().unwrap();
        }
    }
}

/// A waiter retries until "job" has a value; its closure reports each attempt on a channel.
/// Once it is asleep, commits to other keys (through a transaction, a handle, a collection)
/// and commits that only read "job" (a read-only transaction, an unchanged handle) must not
/// run its closure again; then a write of "job" must, exactly once. Fails if a wake-up by an
/// unrelated commit reran the closure (the waiter must re-check its reads and sleep again), or
/// if the write did not wake it (the liveness bound). The unrelated commits go to more keys
/// than the store has wake-up buckets (64, by slot id), so some share the waiter's bucket and
/// really wake it.
#[test]
fn retry_wakes_on_a_change_and_not_before() {
    const UNRELATED: usize = 150;
    let store: Shared = Arc::new(zero_sum_store());
    let mut waiter = spawn_waiter(&store, await_key("job"));
    waiter.first_attempt_then_asleep();
    for i in 0..UNRELATED {
        let key: &'static str = Box::leak(format!("unrelated {i}").into_boxed_str());
        write(&store, WRITERS[i % 3], key, i as i64);
        match i % 10 {
            3 => store.atomically(|tx| tx.get(&"job").map(drop)),
            7 => store.usevar("job").unwrap().commit().unwrap(),
            _ => {}
        }
        assert_eq!(
            waiter.later_attempts(),
            [],
            "commit {i} did not change \"job\", yet the waiter's closure ran again"
        );
        wait_until_asleep(waiter.tid);
    }
    write(&store, Writer::Tx, "job", 42);
    assert_eq!(waiter.result(), 42);
    assert_eq!(
        waiter.later_attempts(),
        [2],
        "exactly one more attempt, after the write"
    );
}

/// A waiter asleep in `retry` is woken by a commit through each API: `atomically`,
/// `Value::commit` (single-key fast path) and `Collection::commit` (multi-key protocol).
#[test]
fn retry_is_woken_by_transactions_and_by_handle_commits() {
    for writer in WRITERS {
        let store: Shared = Arc::new(Store::new());
        let mut waiter = spawn_waiter(&store, await_key("job"));
        waiter.first_attempt_then_asleep();
        write(&store, writer, "job", 7);
        assert_eq!(waiter.result(), 7, "{writer:?}");
        assert_eq!(waiter.later_attempts(), [2], "{writer:?}");
    }
}

/// A stalled committer must not keep a waiter asleep (contract point 8: a thread stopped inside
/// a call delays nobody). A multi-key commit stops after claiming its first key; a handle
/// commit of that key helps it to its decision (so it commits, writing the key the waiter
/// reads) and then fails itself. Whoever decided the stalled commit must wake the waiter: the
/// stalled owner cannot.
///
/// Failed at fc5ce18 (only the owner of a commit notified, so the waiter slept until the stalled
/// commit resumed); fixed by f991795.
#[cfg(feature = "test-hooks")]
#[test]
fn retry_is_woken_by_a_commit_that_a_helper_decided_for_a_stalled_owner() {
    let store: Shared = Arc::new(Store::new());
    // Created in this order: "a" gets the lower slot id, so it is claimed first.
    store.usevar("a").unwrap();
    store.usevar("b").unwrap();
    let mut stalled = store.using(["a", "b"]).unwrap();
    stalled[&"a"].set(1);
    stalled[&"b"].set(1);
    let paused = stalled.commit_paused(1);
    let waiter = spawn_waiter(&store, await_key("b"));
    waiter.first_attempt_then_asleep();
    // A commit of "a" finds the stalled claim, helps that commit (which writes "a" and "b"),
    // then fails: it read "a" before the helped commit wrote it.
    let mut helper = store.usevar("a").unwrap();
    helper.set(9);
    assert_eq!(helper.commit(), Err(Error::ConcurrentUpdate));
    assert_eq!(
        value_of(&store, "b"),
        (1, Some(1)),
        "the helped commit landed"
    );
    let woken = waiter.done.recv_timeout(LIVENESS);
    // Resume the stalled commit either way, so that the waiter ends.
    let resumed = paused.resume();
    let late = woken
        .is_err()
        .then(|| recv(&waiter.done, "the waiter, once resumed"));
    assert_eq!(resumed, Ok(()));
    assert_eq!(
        woken.ok(),
        Some(1),
        "the waiter slept through a change of \"b\" for as long as the commit that made it \
         was stalled (it woke only when that commit resumed, with {late:?}): nobody notified it"
    );
}

// ---------------------------------------------------------------------------------------------
// Timeouts
// ---------------------------------------------------------------------------------------------

/// A retry that never gets its change, with a timeout: the call returns a `TxError` that
/// `is_timeout`, and nothing it set is written. Also through a closure error type of the
/// caller's own, and with a deadline already past.
#[test]
fn a_timeout_returns_an_error_and_writes_nothing() {
    let store = Arc::new(Store::<&'static str, i64>::new());
    let s = Arc::clone(&store);
    let result: Result<i64, TxError> = within("a transaction with a timeout", move || {
        s.transaction()
            .timeout(Duration::from_millis(20))
            .run(|tx| {
                tx.set(&"draft", 1)?;
                match tx.get(&"never")? {
                    Some(n) => Ok(n),
                    None => tx.retry(),
                }
            })
    });
    let e = result.unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    assert!(!e.to_string().is_empty());
    let _: &dyn std::error::Error = &e;
    assert_eq!(
        store.dump(),
        vec![("draft", 0, None), ("never", 0, None)],
        "nothing written"
    );

    let s = Arc::clone(&store);
    let result: Result<i64, AppError> = within("a deadline already past", move || {
        s.transaction().deadline(Instant::now()).run(|tx| {
            tx.set(&"draft", 2)?;
            match tx.get(&"never")? {
                Some(n) => Ok(n),
                None => Ok(tx.retry()?),
            }
        })
    });
    match result {
        Err(AppError::Tx(e)) => assert!(e.is_timeout(), "{e:?}"),
        other => panic!("expected a timeout through the caller's error type, got {other:?}"),
    }
    assert_eq!(value_of(&store, "draft"), (0, None));
}

/// The body of a closure for the tests of timeouts after conflicts: it sets "mine" to "x", and
/// on its first `conflicts` runs it also commits "x" through a handle and then reads "y", which
/// stops the run (a key it read changed), so the transaction runs it again.
fn conflicting_run(
    tx: &mut Tx<'_, &'static str, i64>,
    store: &Store<&'static str, i64>,
    runs: &mut u32,
    conflicts: u32,
) -> Result<(), TxError> {
    *runs += 1;
    let x = tx.get(&"x")?.unwrap_or(0);
    tx.set(&"mine", x)?;
    if *runs <= conflicts {
        let mut h = store.usevar("x").unwrap();
        h.set(x + 1);
        h.commit().unwrap();
        tx.get(&"y")?;
    }
    Ok(())
}

/// The timeout bounds new attempts after conflicts too, not only waits: a closure that makes
/// its own attempt conflict every time gives up with a timeout, having written nothing (without
/// the deadline it would run for ever). A deadline that has not passed lets conflicts run the
/// closure again: one that conflicts three times commits on its fourth run. (Whether the
/// always-conflicting closure ran once or more before its deadline depends on the machine's
/// speed, so the test does not ask.)
#[test]
fn a_timeout_bounds_attempts_that_keep_conflicting() {
    for (timeout, conflicts) in [(Duration::from_millis(20), u32::MAX), (LIVENESS, 3)] {
        let store = Arc::new(Store::<&'static str, i64>::new());
        let s = Arc::clone(&store);
        let (result, runs) = within("a transaction that conflicts", move || {
            let mut runs = 0;
            let result: Result<(), TxError> = s
                .transaction()
                .timeout(timeout)
                .run(|tx| conflicting_run(tx, &s, &mut runs, conflicts));
            (result, runs)
        });
        let x = (
            u64::from(runs.min(conflicts)),
            Some(i64::from(runs.min(conflicts))),
        );
        assert_eq!(value_of(&store, "x"), x);
        if conflicts == u32::MAX {
            assert!(result.unwrap_err().is_timeout());
            assert_eq!(value_of(&store, "mine"), (0, None));
        } else {
            assert_eq!((result, runs), (Ok(()), 4));
            assert_eq!(value_of(&store, "mine"), (1, Some(3)));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// or_else
// ---------------------------------------------------------------------------------------------

/// The first branch writes two keys and retries: the second branch runs in the same attempt,
/// sees none of the first branch's writes, and only its own writes land.
#[test]
fn or_else_runs_the_second_branch_when_the_first_retries_and_undoes_its_writes() {
    let store: Store<&'static str, i64> = Store::new();
    store.atomically(|tx| tx.set(&"spare", 1));
    let mut second_runs = 0;
    let took = store.atomically(|tx| {
        tx.or_else(
            |tx| {
                tx.set(&"scratch", 99)?;
                tx.set(&"spare", 1_000)?;
                match tx.get(&"main")? {
                    Some(n) if n > 0 => {
                        tx.set(&"main", n - 1)?;
                        Ok("main")
                    }
                    _ => tx.retry(),
                }
            },
            |tx| {
                second_runs += 1;
                assert_eq!(
                    tx.get(&"scratch")?,
                    None,
                    "the first branch's write is undone"
                );
                let n = tx.get(&"spare")?.unwrap();
                assert_eq!(n, 1, "the first branch's overwrite is undone");
                tx.set(&"spare", n - 1)?;
                Ok("spare")
            },
        )
    });
    assert_eq!((took, second_runs), ("spare", 1));
    assert_eq!(
        store.dump(),
        vec![
            ("main", 0, None),
            ("scratch", 0, None),
            ("spare", 2, Some(0))
        ]
    );
}

/// A first branch that succeeds is the answer: the second never runs. Nested alternatives:
/// everything an outer first branch wrote (its own writes and both inner branches') is undone
/// when it retries.
#[test]
fn or_else_keeps_a_successful_first_branch_and_undoes_nested_branches() {
    let store: Store<&'static str, i64> = Store::new();
    let mut second_runs = 0;
    let got = store.atomically(|tx| {
        tx.or_else(
            |tx| {
                tx.set(&"first", 1)?;
                Ok(1)
            },
            |_| {
                second_runs += 1;
                Ok(2)
            },
        )
    });
    assert_eq!((got, second_runs), (1, 0));
    assert_eq!(value_of(&store, "first"), (1, Some(1)));

    let got = store.atomically(|tx| {
        tx.or_else(
            |tx| {
                tx.set(&"a", 1)?;
                tx.set(&"first", 10)?;
                tx.or_else(
                    |tx| {
                        tx.set(&"b", 2)?;
                        tx.retry()
                    },
                    |tx| {
                        assert_eq!(tx.get(&"b")?, None, "inner first branch undone");
                        tx.set(&"c", 3)?;
                        tx.retry()
                    },
                )
            },
            |tx| {
                for key in ["a", "b", "c"] {
                    assert_eq!(tx.get(&key)?, None, "{key}: undone with the outer branch");
                }
                assert_eq!(tx.get(&"first")?, Some(1), "overwrite undone");
                tx.set(&"d", 4)?;
                Ok(4)
            },
        )
    });
    assert_eq!(got, 4);
    assert_eq!(
        store.dump(),
        vec![
            ("a", 0, None),
            ("b", 0, None),
            ("c", 0, None),
            ("d", 1, Some(4)),
            ("first", 1, Some(1)),
        ]
    );
}

/// Both branches retry: the transaction waits for a change to a key either branch read. Woken
/// through "p", which only the first branch read (its reads are kept although its writes are
/// undone), and through "q", which only the second read.
#[test]
fn or_else_when_both_retry_waits_for_either_branchs_keys() {
    for (key, expected) in [("p", "first"), ("q", "second")] {
        let store: Shared = Arc::new(Store::new());
        let mut waiter = spawn_waiter(&store, |store, attempts| {
            store.atomically(|tx| {
                attempts.send(tx.attempt()).unwrap();
                tx.or_else(
                    |tx| {
                        tx.set(&"scratch", 1)?;
                        match tx.get(&"p")? {
                            Some(_) => Ok("first"),
                            None => tx.retry(),
                        }
                    },
                    |tx| match tx.get(&"q")? {
                        Some(_) => Ok("second"),
                        None => tx.retry(),
                    },
                )
            })
        });
        waiter.first_attempt_then_asleep();
        write(&store, Writer::Value, key, 1);
        assert_eq!(waiter.result(), expected, "woken through {key}");
        assert_eq!(waiter.later_attempts(), [2], "woken through {key}");
        let expected_scratch = if key == "p" { (1, Some(1)) } else { (0, None) };
        assert_eq!(
            value_of(&store, "scratch"),
            expected_scratch,
            "woken through {key}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// User errors, panics, swallowed errors, attempts
// ---------------------------------------------------------------------------------------------

/// A closure error ends the call after one run: the error comes back unchanged and nothing the
/// closure set or cleared is written (keys written earlier keep their old versions).
#[test]
fn a_user_error_comes_back_unchanged_and_writes_nothing() {
    let store: Store<&'static str, i64> = Store::new();
    store.atomically(|tx| {
        tx.set(&"a", 1)?;
        tx.set(&"c", 3)
    });
    let mut runs = 0;
    let result: Result<(), AppError> = store.try_atomically(|tx| {
        runs += 1;
        tx.set(&"a", 2)?;
        tx.set(&"b", 3)?;
        tx.clear(&"c")?;
        Err(AppError::Refused("insufficient", 42))
    });
    assert_eq!(result, Err(AppError::Refused("insufficient", 42)));
    assert_eq!(runs, 1);
    assert_eq!(
        store.dump(),
        vec![("a", 1, Some(1)), ("b", 0, None), ("c", 1, Some(3))]
    );

    // A boxed error, as `?` users write.
    let result: Result<(), Box<dyn std::error::Error + Send + Sync>> = store.try_atomically(|tx| {
        tx.set(&"a", 5)?;
        Err("refused by the closure".into())
    });
    assert_eq!(result.unwrap_err().to_string(), "refused by the closure");
    assert_eq!(value_of(&store, "a"), (1, Some(1)));
}

/// A panic inside the closure, after some sets, goes on to the caller; nothing is written and
/// nothing is left claimed (commits of those keys from handles and from transactions complete
/// at once, under a watchdog), and every value the attempt made is dropped.
#[test]
fn a_panic_in_the_closure_writes_nothing_and_claims_nothing() {
    let counts = Counts::new();
    let store = Arc::new(Store::<&'static str, Tracked>::new());
    store.atomically(|tx| {
        tx.set(&"a", Tracked::new(&counts, 1, 1))?;
        tx.set(&"b", Tracked::new(&counts, 1, 1))
    });
    let caught = catch_unwind(AssertUnwindSafe(|| {
        store.atomically(|tx| {
            tx.set(&"a", Tracked::new(&counts, 2, 10))?;
            tx.set(&"b", Tracked::new(&counts, 2, 20))?;
            tx.get(&"c")?;
            if tx.attempt() > 0 {
                panic!("boom in the closure");
            }
            Ok(())
        })
    }));
    assert_eq!(
        panic_message(caught.unwrap_err().as_ref()),
        "boom in the closure"
    );
    let rows: Vec<_> = store
        .dump()
        .into_iter()
        .map(|(k, n, v)| (k, n, v.map(|v| v.n)))
        .collect();
    assert_eq!(
        rows,
        vec![("a", 1, Some(1)), ("b", 1, Some(1)), ("c", 0, None)]
    );

    let (s, c) = (Arc::clone(&store), Arc::clone(&counts));
    within("commits of the keys the panicking closure set", move || {
        let mut a = s.usevar("a").unwrap();
        a.set(Tracked::new(&c, 3, 2));
        a.commit().unwrap();
        let mut both = s.using(["a", "b"]).unwrap();
        both[&"a"].set(Tracked::new(&c, 3, 3));
        both[&"b"].set(Tracked::new(&c, 3, 3));
        both.commit().unwrap();
        s.atomically(|tx| tx.set(&"b", Tracked::new(&c, 3, 4)));
    });
    assert_eq!(store.usevar("b").unwrap().version(), 3);
    drop(store);
    counts.assert_all_dropped();
}

/// A closure that swallows the `TxError` of a read that found a conflict (`unwrap_or`) and
/// returns `Ok` is still run again: its inconsistent attempt never commits, and the answer and
/// the write come from the next, consistent attempt.
#[test]
fn a_swallowed_conflict_still_reruns_the_attempt() {
    let store = zero_sum_store();
    let (read_tx, read_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    thread::scope(|s| {
        let store = &store;
        let reader = s.spawn(move || {
            store.atomically(|tx| {
                let x = tx.get(&"x")?.unwrap();
                if tx.attempt() == 1 {
                    pause_here(&read_tx, &go_rx);
                }
                // Swallowed: a wrong y on a conflict, and a write that fails silently.
                let y = tx.get(&"y").unwrap_or(Some(1_000)).unwrap();
                let _ = tx.set(&"sum", x + y);
                Ok((tx.attempt(), x + y))
            })
        });
        recv(&read_rx, "the reader's read of x");
        shift_tx(store, 5);
        go_tx.send(()).unwrap();
        drop(go_tx);
        assert_eq!(reader.join().unwrap(), (2, 0));
    });
    assert_eq!(value_of(&store, "sum"), (1, Some(0)));
}

/// A closure that swallows its own `retry` and returns `Ok` does not commit: the transaction
/// waits for a key it read to change, then runs it again. Its first attempt's write never
/// lands (the key is written once, by the second attempt).
#[test]
fn a_swallowed_retry_still_waits_and_commits_nothing() {
    let store: Shared = Arc::new(Store::new());
    let mut waiter = spawn_waiter(&store, |store, attempts| {
        store.atomically(|tx| {
            attempts.send(tx.attempt()).unwrap();
            let ready = tx.get(&"ready")?.is_some();
            tx.set(&"w", i64::from(tx.attempt()))?;
            if !ready {
                let _ = tx.retry::<()>();
            }
            Ok(tx.attempt())
        })
    });
    waiter.first_attempt_then_asleep();
    assert_eq!(value_of(&store, "w"), (0, None), "attempt 1 did not commit");
    write(&store, Writer::Value, "ready", 1);
    assert_eq!(waiter.result(), 2);
    assert_eq!(value_of(&store, "w"), (1, Some(2)));
}

/// A closure that returns a `TxError` kept from an earlier attempt makes `atomically` panic
/// with its documented message (it cannot be a real stop of this attempt).
#[test]
fn returning_a_stale_tx_error_panics() {
    let store: Store<&'static str, i64> = Store::new();
    let mut kept = None;
    let caught = catch_unwind(AssertUnwindSafe(|| {
        store.atomically(|tx| -> Result<(), TxError> {
            if let Some(stale) = kept.take() {
                return Err(stale);
            }
            let x = tx.get(&"x")?.unwrap_or(0);
            let mut h = store.usevar("x").unwrap();
            h.set(x + 1);
            h.commit().unwrap();
            let e = tx.get(&"y").map(drop).unwrap_err();
            kept = Some(e);
            Err(e)
        })
    }));
    let msg = panic_message(caught.unwrap_err().as_ref());
    assert!(
        msg.contains("the closure returned a TxError that its own attempt did not raise"),
        "{msg}"
    );
}

/// `attempt()` counts the runs: 1, then one more after each forced conflict (a handle commits
/// the key read first while the closure is stopped between two reads, on attempts 1 and 2).
/// Also through `transaction().backoff(..)`.
#[test]
fn attempt_counts_runs_after_forced_conflicts() {
    for backoff in [Backoff::default(), Backoff::none(), Backoff::exponential(4)] {
        let store: Store<&'static str, i64> = Store::new();
        let (read_tx, read_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let seen = Mutex::new(Vec::new());
        thread::scope(|s| {
            let (store, seen) = (&store, &seen);
            let t = s.spawn(move || {
                store
                    .transaction()
                    .backoff(backoff)
                    .run(|tx| -> Result<u32, TxError> {
                        seen.lock().unwrap().push(tx.attempt());
                        tx.get(&"x")?;
                        if tx.attempt() < 3 {
                            pause_here(&read_tx, &go_rx);
                        }
                        tx.get(&"y")?;
                        tx.set(&"done", 1)?;
                        Ok(tx.attempt())
                    })
            });
            for i in 0..2 {
                recv(&read_rx, "the closure's read of x");
                write(store, Writer::Value, "x", i);
                go_tx.send(()).unwrap();
            }
            drop(go_tx);
            assert_eq!(t.join().unwrap(), Ok(3), "{backoff:?}");
        });
        assert_eq!(*seen.lock().unwrap(), [1, 2, 3], "{backoff:?}");
        assert_eq!(value_of(&store, "done"), (1, Some(1)));
    }
}

// ---------------------------------------------------------------------------------------------
// Async
// ---------------------------------------------------------------------------------------------

/// A `run_async` waiter for "job" on a task; each attempt is reported on `attempts`, the answer
/// on `done` (std channels: the liveness checks must not depend on the runtime's timer, which
/// blocked workers would not drive).
fn spawn_job_waiter(
    store: &Shared,
    key: &'static str,
    attempts: mpsc::Sender<(&'static str, u32)>,
    done: mpsc::Sender<(&'static str, i64)>,
) -> tokio::task::JoinHandle<()> {
    let store = Arc::clone(store);
    tokio::spawn(async move {
        let job = store
            .transaction()
            .run_async(|tx| -> Result<i64, TxError> {
                attempts.send((key, tx.attempt())).unwrap();
                match tx.get(&key)? {
                    Some(job) => Ok(job),
                    None => tx.retry(),
                }
            })
            .await
            .unwrap();
        done.send((key, job)).unwrap();
    })
}

/// `retry` in `run_async` awaits a change made by a `spawn_blocking` commit (a handle).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_retry_awaits_a_change_from_spawn_blocking() {
    let store: Shared = Arc::new(Store::new());
    let (attempt_tx, attempts) = mpsc::channel();
    let (done_tx, done) = mpsc::channel();
    let waiter = spawn_job_waiter(&store, "job", attempt_tx, done_tx);
    assert_eq!(recv(&attempts, "the first attempt"), ("job", 1));
    wait_for_waits(&store, 1); // it has read "job": the write below must wake it
    let s = Arc::clone(&store);
    tokio::task::spawn_blocking(move || write(&s, Writer::Value, "job", 5))
        .await
        .unwrap();
    assert_eq!(recv(&done, "the woken waiter"), ("job", 5));
    waiter.await.unwrap();
    assert_eq!(attempts.try_iter().collect::<Vec<_>>(), [("job", 2)]);
}

/// Four `run_async` waiters on two worker threads, then another task commits their keys
/// through `run_async`: all four must have reached their first wait (a retry that blocked its
/// worker would let only two run) and all are woken. The runtime is built by hand so that a
/// failure shuts it down in the background: blocked workers would hold a normal shutdown (and
/// the test) for ever.
#[test]
fn async_retry_never_blocks_a_worker_and_wakes_on_another_tasks_commit() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(four_async_waiters_on_two_workers())
    }));
    runtime.shutdown_background();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn four_async_waiters_on_two_workers() {
    const KEYS: [&str; 4] = ["k0", "k1", "k2", "k3"];
    let store: Shared = Arc::new(Store::new());
    let (attempt_tx, attempts) = mpsc::channel();
    let (done_tx, done) = mpsc::channel();
    let waiters: Vec<_> = KEYS
        .iter()
        .map(|key| spawn_job_waiter(&store, key, attempt_tx.clone(), done_tx.clone()))
        .collect();
    let mut first: Vec<_> = (0..4).map(|_| recv(&attempts, "first attempts")).collect();
    first.sort_unstable();
    assert_eq!(first, KEYS.map(|k| (k, 1)));
    let s = Arc::clone(&store);
    tokio::spawn(async move {
        s.transaction()
            .run_async(|tx| -> Result<(), TxError> {
                for (i, key) in KEYS.iter().enumerate() {
                    tx.set(key, i as i64)?;
                }
                Ok(())
            })
            .await
            .unwrap();
    });
    let mut answers: Vec<_> = (0..4).map(|_| recv(&done, "woken waiters")).collect();
    answers.sort_unstable();
    assert_eq!(answers, [("k0", 0), ("k1", 1), ("k2", 2), ("k3", 3)]);
    for w in waiters {
        w.await.unwrap();
    }
}

/// Many async transfer tasks over a few accounts, with async auditors that check the total
/// inside the closure: the total holds in every audit and at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_transfers_conserve_the_total() {
    const ACCTS: u64 = 4;
    let store: Arc<Store<u64, i64>> = Arc::new(Store::new());
    store.atomically(|tx| (0..ACCTS).try_for_each(|a| tx.set(&a, INITIAL)));
    let total = ACCTS as i64 * INITIAL;
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut rng = XorShift::new(t + 7);
            for _ in 0..100 {
                let (from, to) = rng.pair(ACCTS);
                let amount = rng.below(20) as i64;
                store
                    .transaction()
                    .run_async(|tx| -> Result<(), TxError> {
                        let f = tx.get(&from)?.unwrap();
                        let g = tx.get(&to)?.unwrap();
                        tx.set(&from, f - amount)?;
                        tx.set(&to, g + amount)
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for _ in 0..2 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                store
                    .transaction()
                    .run_async(|tx| -> Result<(), TxError> {
                        let mut sum = 0;
                        for a in 0..ACCTS {
                            sum += tx.get(&a)?.unwrap();
                        }
                        assert_eq!(sum, total, "an async audit saw a broken total");
                        Ok(())
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let end: i64 = store.dump().iter().map(|(_, _, v)| v.unwrap()).sum();
    assert_eq!(end, total);
}

/// A waiting future dropped (polled once, so it is registered as a waiter, then dropped by a
/// runtime timeout) writes nothing and leaves nothing behind: later commits complete and a
/// new waiter is woken as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_dropping_a_waiting_future_writes_nothing() {
    let store: Shared = Arc::new(Store::new());
    let runs = AtomicUsize::new(0);
    {
        let mut waiting = pin!(store.transaction().run_async(|tx| -> Result<i64, TxError> {
            runs.fetch_add(1, SeqCst);
            tx.set(&"draft", 1)?;
            match tx.get(&"job")? {
                Some(job) => Ok(job),
                None => tx.retry(),
            }
        }));
        // Polled once: it ran its closure and now waits.
        tokio::select! {
            biased;
            _ = &mut waiting => panic!("nothing wrote \"job\""),
            () = std::future::ready(()) => {}
        }
        assert_eq!(runs.load(SeqCst), 1);
        let timed_out = tokio::time::timeout(Duration::from_millis(10), &mut waiting).await;
        assert!(timed_out.is_err(), "still waiting");
    } // dropped here
    assert_eq!(value_of(&store, "draft"), (0, None));
    let s = Arc::clone(&store);
    tokio::task::spawn_blocking(move || {
        within("a commit after a waiter was dropped", move || {
            write(&s, Writer::Value, "job", 3);
            write(&s, Writer::Collection, "job", 4);
        })
    })
    .await
    .unwrap();
    assert_eq!(runs.load(SeqCst), 1, "a dropped future never runs again");
    assert_eq!(value_of(&store, "draft"), (0, None));

    let (attempt_tx, attempts) = mpsc::channel();
    let (done_tx, done) = mpsc::channel();
    spawn_job_waiter(&store, "next", attempt_tx, done_tx);
    assert_eq!(recv(&attempts, "a new waiter"), ("next", 1));
    write(&store, Writer::Tx, "next", 8);
    assert_eq!(recv(&done, "the new waiter, woken"), ("next", 8));
}

/// A minimal executor: polls `future` on this thread, parking it until a wake-up (no
/// runtime, no timer of its own).
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(thread::Thread, AtomicBool);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.1.store(true, SeqCst);
            self.0.unpark();
        }
    }
    let mut future = pin!(future);
    let unpark = Arc::new(Unpark(thread::current(), AtomicBool::new(false)));
    let waker = Waker::from(Arc::clone(&unpark));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        while !unpark.1.swap(false, SeqCst) {
            thread::park();
        }
    }
}

/// A `run_async` transaction with a timeout that retries until "never" has a value, which
/// nothing writes, after setting "draft": the future it makes under a given executor.
async fn async_wait_for_never(store: &Store<&'static str, i64>) -> Result<i64, TxError> {
    store
        .transaction()
        .timeout(Duration::from_millis(20))
        .run_async(|tx| {
            tx.set(&"draft", 1)?;
            match tx.get(&"never")? {
                Some(n) => Ok(n),
                None => tx.retry(),
            }
        })
        .await
}

/// The timeout of a `run_async` fires under tokio, whose own timer it does not use: the
/// future ends with a `TxError` that `is_timeout`, and nothing is written. A watchdog (not a
/// time threshold) fails the test if it never ends.
#[test]
fn async_a_timeout_fires_under_tokio_and_writes_nothing() {
    let store = Arc::new(Store::<&'static str, i64>::new());
    let s = Arc::clone(&store);
    let result = within("a run_async with a timeout, under tokio", move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        runtime.block_on(async { async_wait_for_never(&s).await })
    });
    assert!(result.unwrap_err().is_timeout());
    assert_eq!(store.get("draft").and_then(|(_, value)| value), None);
    assert_eq!(store.stats().commits, 0, "nothing written");
}

/// The same timeout fires on a minimal executor (park and unpark, no runtime, no timer): the
/// wake-up at the deadline is the store's own.
#[test]
fn async_a_timeout_fires_on_a_minimal_executor_and_writes_nothing() {
    let store = Arc::new(Store::<&'static str, i64>::new());
    let s = Arc::clone(&store);
    let result = within(
        "a run_async with a timeout, on a minimal executor",
        move || block_on(async_wait_for_never(&s)),
    );
    assert!(result.unwrap_err().is_timeout());
    assert_eq!(store.get("draft").and_then(|(_, value)| value), None);
    assert_eq!(store.stats().commits, 0, "nothing written");
}

/// The deadline bounds the attempts after conflicts too, in `run_async` as in `run` (see
/// `a_timeout_bounds_attempts_that_keep_conflicting`): always conflicting, it gives up with a
/// timeout and writes nothing; conflicting three times before its deadline, it commits on its
/// fourth run.
#[test]
fn async_a_timeout_bounds_attempts_that_keep_conflicting() {
    for (timeout, conflicts) in [(Duration::from_millis(20), u32::MAX), (LIVENESS, 3)] {
        let store = Arc::new(Store::<&'static str, i64>::new());
        let s = Arc::clone(&store);
        let (result, runs) = within("an async transaction that conflicts", move || {
            let mut runs = 0;
            let result: Result<(), TxError> = block_on(
                s.transaction()
                    .timeout(timeout)
                    .run_async(|tx| conflicting_run(tx, &s, &mut runs, conflicts)),
            );
            (result, runs)
        });
        let x = (
            u64::from(runs.min(conflicts)),
            Some(i64::from(runs.min(conflicts))),
        );
        assert_eq!(value_of(&store, "x"), x);
        if conflicts == u32::MAX {
            assert!(result.unwrap_err().is_timeout());
            assert_eq!(value_of(&store, "mine"), (0, None));
        } else {
            assert_eq!((result, runs), (Ok(()), 4));
            assert_eq!(value_of(&store, "mine"), (1, Some(3)));
        }
    }
}

/// A deadline that does not pass changes nothing: a `run_async` waiter with a long timeout, on
/// the minimal executor, is woken by a commit and answers its value (the timer and the wake-up
/// are polled together, and the change wins).
#[test]
fn async_a_waiter_with_a_deadline_is_woken_by_a_commit() {
    let store: Shared = Arc::new(Store::new());
    let mut waiter =
        spawn_waiter(&store, |store, attempts| {
            block_on(store.transaction().timeout(LIVENESS).run_async(
                |tx| -> Result<i64, TxError> {
                    attempts.send(tx.attempt()).unwrap();
                    match tx.get(&"job")? {
                        Some(job) => Ok(job),
                        None => tx.retry(),
                    }
                },
            ))
        });
    waiter.first_attempt_then_asleep();
    write(&store, Writer::Value, "job", 12);
    assert_eq!(waiter.result(), Ok(12));
    assert_eq!(waiter.later_attempts(), [2]);
}

/// `run_async` needs no runtime: a minimal executor (park the thread, unpark on wake) drives a
/// waiter that another thread wakes by a commit.
#[test]
fn async_runs_on_a_minimal_executor_without_a_runtime() {
    let store: Shared = Arc::new(Store::new());
    let mut waiter = spawn_waiter(&store, |store, attempts| {
        block_on(store.transaction().run_async(|tx| -> Result<i64, TxError> {
            attempts.send(tx.attempt()).unwrap();
            match tx.get(&"job")? {
                Some(job) => Ok(job),
                None => tx.retry(),
            }
        }))
    });
    waiter.first_attempt_then_asleep();
    write(&store, Writer::Collection, "job", 11);
    assert_eq!(waiter.result(), Ok(11));
    assert_eq!(waiter.later_attempts(), [2]);
}
