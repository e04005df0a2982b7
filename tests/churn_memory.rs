//! Memory under churn (contract point 26, the requirement): a sessions workload creates
//! and removes 10^6 keys (fewer in a debug build, see [`SESSIONS`]) with about 1,000 alive at any
//! time, while readers and writers run throughout. Once the workers are joined and the epoch has
//! moved on, the store holds no more memory than twice a store that only ever held 1,000 keys.
//!
//! Memory is counted as bytes requested from the allocator and not yet given back (a counting
//! `#[global_allocator]` around the system allocator), not RSS: what the allocator keeps for
//! later, and its own overhead, do not count. The allocator counts the whole process, so this
//! binary has one test, and measures differences around its own phases, each after the epoch
//! settled (see [`settled_bytes`]). The bound is a memory bound, never a timing; the time and
//! the figures are printed (`--nocapture`) for the record.
//!
//! Were removed keys never freed, every one of them would stay: tens of bytes of slot and index
//! each, for 10^5 keys at the least, against a baseline of about 100 bytes per live key.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use stm_store::{Error, Store};

/// The system allocator, counting the bytes it has handed out and not got back.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static PEAK_BYTES: AtomicIsize = AtomicIsize::new(0);

fn allocated(bytes: isize) {
    let now = LIVE_BYTES.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK_BYTES.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call goes to `System` with the caller's arguments; the counting around it
// allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            allocated(layout.size() as isize);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            allocated(layout.size() as isize);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            allocated(new_size as isize - layout.size() as isize);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes live now.
fn live_bytes() -> isize {
    LIVE_BYTES.load(Ordering::SeqCst)
}

/// How long [`settled_bytes`] may take: a liveness bound, not a performance threshold.
const SETTLE_LIMIT: Duration = Duration::from_secs(20);

/// The bytes live once deferred reclamation has caught up: advances crossbeam-epoch's epoch
/// (`pin().flush()`, from this thread: the only one left once the workers are joined; threads
/// that ended handed their deferred frees to the global queue) until the count has gone no
/// lower for a good many rounds in a row, bounded by [`SETTLE_LIMIT`]. The lowest count seen:
/// a flush itself moves one bag of deferred frees (2 KB) in and out of the global queue, so the
/// count alternates between two values even when nothing is left to free.
fn settled_bytes() -> isize {
    const STILL: u32 = 500;
    let start = Instant::now();
    let (mut lowest, mut still) = (live_bytes(), 0);
    while still < STILL && start.elapsed() < SETTLE_LIMIT {
        crossbeam_epoch::pin().flush();
        let now = live_bytes();
        if now < lowest {
            (lowest, still) = (now, 0);
        } else {
            still += 1;
        }
    }
    lowest
}

/// A session: a small value, as a web service would keep per login.
#[derive(Clone, Debug)]
#[allow(dead_code)] // `token` is only carried, as a session's payload would be
struct Session {
    user: u64,
    hits: u64,
    token: [u64; 4],
}

impl Session {
    fn new(id: u64) -> Self {
        Session {
            user: id,
            hits: 0,
            token: [id.wrapping_mul(0x9E37_79B9_7F4A_7C15); 4],
        }
    }

    fn hit(&self, hits: u64) -> Self {
        Session {
            hits: self.hits + hits,
            ..self.clone()
        }
    }
}

type Sessions = Store<u64, Session>;

/// Sessions alive at a time (about: each worker keeps its share, plus one being created).
const ALIVE: u64 = 1_000;
/// Sessions created and removed in all: 10^6 in an optimised build; a quarter of that in a debug
/// build, where 10^6 takes about 40 s on two cores (250,000 about 10 s), too long for
/// `cargo test`. `cargo test --release --test churn_memory -- --nocapture` runs the full count
/// and prints its figures.
const SESSIONS: u64 = if cfg!(debug_assertions) {
    250_000
} else {
    1_000_000
};
/// Threads that own sessions: each creates its own, touches them, and removes the oldest.
const WORKERS: u64 = 2;
/// Threads that touch random recent sessions of any worker (a transaction that finds the
/// session gone removes the key its read created).
const TOUCHERS: usize = 1;
/// Threads that only look: `get`, `contains_key`, `snapshot`, `dump`.
const READERS: usize = 2;

/// What the threads of one churn did.
#[derive(Debug, Default)]
struct Churned {
    created: u64,
    removed: u64,
    touched: u64,
    cleaned: u64,
    looked: u64,
    snapshots: u64,
}

/// Retries a handle operation until its commit lands (`ConcurrentUpdate`: another thread
/// committed the key since it was read).
fn until_landed(mut attempt: impl FnMut() -> Result<(), Error>) {
    while let Err(error) = attempt() {
        assert_eq!(error, Error::ConcurrentUpdate);
    }
}

/// Runs the sessions workload on `store`: `sessions` sessions created and removed, `ALIVE`
/// alive at a time, with touchers and readers throughout.
fn churn(store: &Sessions, sessions: u64) -> Churned {
    let share = ALIVE / WORKERS;
    // Per worker: how many sessions it has created (the next one's number).
    let created: Vec<AtomicU64> = (0..WORKERS).map(|_| AtomicU64::new(0)).collect();
    let running = AtomicBool::new(true);
    let start = Barrier::new(WORKERS as usize + TOUCHERS + READERS);
    let id = |worker: u64, n: u64| n * WORKERS + worker;
    // At any instant: each worker's share plus the one it is creating, and a key each toucher
    // may have created by reading a removed session (its commit removes it again).
    let most_keys = (WORKERS * (share + 1)) as usize + TOUCHERS;

    thread::scope(|scope| {
        let (created, running, start) = (&created, &running, &start);
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                scope.spawn(move || {
                    start.wait();
                    let mut mine = VecDeque::new();
                    let mut done = Churned::default();
                    for n in 0..sessions / WORKERS {
                        let key = id(w, n);
                        // Create: a handle, or a transaction.
                        if n % 2 == 0 {
                            until_landed(|| {
                                let mut session = store.usevar(key)?;
                                session.set(Session::new(key));
                                session.commit()
                            });
                        } else {
                            store.atomically(|tx| tx.set(&key, Session::new(key)));
                        }
                        created[w as usize].store(n + 1, Ordering::SeqCst);
                        mine.push_back(key);
                        done.created += 1;
                        // Touch one of its own sessions.
                        let touched = mine[(n % mine.len() as u64) as usize];
                        until_landed(|| {
                            let mut session = store.usevar(touched)?;
                            let hit = session.value().expect("alive").hit(1);
                            session.set(hit);
                            session.commit()
                        });
                        if mine.len() as u64 <= share {
                            continue;
                        }
                        // Remove the oldest: a handle, a transaction, or closing it into the
                        // newest (its hits move there), in one commit.
                        let oldest = mine.pop_front().expect("more than its share");
                        match n % 3 {
                            0 => until_landed(|| {
                                let mut session = store.usevar(oldest)?;
                                session.remove();
                                session.commit()
                            }),
                            1 => store.atomically(|tx| tx.remove(&oldest)),
                            _ => until_landed(|| {
                                let mut both = store.using([oldest, key])?;
                                let hits = both[&oldest].value().expect("alive").hits;
                                let merged = both[&key].value().expect("alive").hit(hits);
                                both[&key].set(merged);
                                both[&oldest].remove();
                                both.commit()
                            }),
                        }
                        done.removed += 1;
                    }
                    done
                })
            })
            .collect();
        let touchers: Vec<_> = (0..TOUCHERS)
            .map(|t| {
                scope.spawn(move || {
                    start.wait();
                    let mut rng = t as u64 * 7 + 1;
                    let mut done = Churned::default();
                    while running.load(Ordering::SeqCst) {
                        rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                        let worker = (rng >> 33) % WORKERS;
                        let made = created[worker as usize].load(Ordering::SeqCst);
                        let Some(n) = made.checked_sub(1 + (rng >> 17) % (share + share / 2))
                        else {
                            continue;
                        };
                        let key = id(worker, n);
                        // A session still alive is touched; one removed already was read
                        // (which created its key again): remove that key in the same commit.
                        let touched = store.atomically(|tx| match tx.get(&key)? {
                            Some(session) => tx.set(&key, session.hit(1)).map(|()| true),
                            None => tx.remove(&key).map(|()| false),
                        });
                        match touched {
                            true => done.touched += 1,
                            false => done.cleaned += 1,
                        }
                    }
                    done
                })
            })
            .collect();
        let readers: Vec<_> = (0..READERS)
            .map(|r| {
                scope.spawn(move || {
                    start.wait();
                    let mut rng = r as u64 * 13 + 5;
                    let mut done = Churned::default();
                    while running.load(Ordering::SeqCst) {
                        rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                        let worker = (rng >> 33) % WORKERS;
                        let made = created[worker as usize].load(Ordering::SeqCst);
                        let Some(n) = made.checked_sub(1 + (rng >> 17) % (2 * share)) else {
                            continue;
                        };
                        let key = id(worker, n);
                        if let Some((_, Some(session))) = store.get(&key) {
                            assert_eq!(session.user, key, "another session's value");
                        }
                        let _ = store.contains_key(&key);
                        done.looked += 1;
                        if done.looked % 64 == 0 {
                            let keys = if done.looked % 1024 == 0 {
                                store.dump().len()
                            } else {
                                store.snapshot(|s| s.len())
                            };
                            assert!(
                                keys <= most_keys,
                                "a snapshot of {keys} keys: removed keys are still listed"
                            );
                            done.snapshots += 1;
                        }
                    }
                    done
                })
            })
            .collect();
        // Stops the touchers and readers once the workers are done, or one of them failed.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        let stop = Stop(running);
        let mut total = Churned::default();
        for worker in workers {
            let done = worker.join().unwrap();
            total.created += done.created;
            total.removed += done.removed;
        }
        drop(stop);
        for thread in touchers.into_iter().chain(readers) {
            let done = thread.join().unwrap();
            total.touched += done.touched;
            total.cleaned += done.cleaned;
            total.looked += done.looked;
            total.snapshots += done.snapshots;
        }
        total
    })
}

/// A store that only ever held `ALIVE` sessions, each written three times.
fn baseline() -> Sessions {
    let store = Sessions::new();
    for round in 0..3 {
        for key in 0..ALIVE {
            let mut session = store.usevar(key).unwrap();
            session.set(Session::new(key).hit(round));
            session.commit().unwrap();
        }
    }
    store
}

#[test]
fn churn_of_a_million_sessions_stays_within_twice_a_store_of_a_thousand() {
    // Warm-up: a small churn, so that whatever the process allocates once and keeps (the
    // epoch's global state, thread-spawning machinery, lazily made statics) is allocated before
    // anything is measured.
    churn(&Sessions::new(), 4 * ALIVE);
    drop(baseline());

    let before = settled_bytes();
    let small = baseline();
    let baseline_bytes = settled_bytes() - before;
    assert_eq!(small.len() as u64, ALIVE);
    drop(small);

    let before = settled_bytes();
    let store = Sessions::new();
    let started = Instant::now();
    let churned = churn(&store, SESSIONS);
    let took = started.elapsed();
    let churn_bytes = settled_bytes() - before;
    let alive = store.len() as u64;
    let peak = PEAK_BYTES.load(Ordering::SeqCst) - before;
    let ratio = churn_bytes as f64 / baseline_bytes as f64;
    println!(
        "churn: {} sessions created and {} removed ({} alive at the end), {WORKERS} workers, \
         {TOUCHERS} toucher(s) ({} touches, {} keys read after their removal and removed again), \
         {READERS} readers ({} lookups, {} snapshots), in {:.2} s",
        churned.created,
        churned.removed,
        alive,
        churned.touched,
        churned.cleaned,
        churned.looked,
        churned.snapshots,
        took.as_secs_f64()
    );
    println!(
        "memory: a store of {ALIVE} keys {baseline_bytes} bytes; after the churn {churn_bytes} \
         bytes; ratio {ratio:.3} (at most 2); peak during the churn {peak} bytes"
    );
    // Every session created was removed but each worker's last share.
    assert_eq!(churned.created, SESSIONS);
    assert_eq!(churned.removed, SESSIONS - ALIVE);
    assert_eq!(alive, ALIVE, "the store holds exactly the sessions alive");
    assert!(
        ratio <= 2.0,
        "after creating and removing {SESSIONS} keys with {ALIVE} alive, the store holds \
         {churn_bytes} bytes: {ratio:.2} times a store of {ALIVE} keys ({baseline_bytes} bytes)"
    );
    drop(store);
    println!(
        "after dropping the store: {} bytes left of the churn",
        settled_bytes() - before
    );
}
