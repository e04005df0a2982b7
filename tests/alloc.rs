//! Allocations per commit in the steady state, and the memory left behind by a burst of
//! commits once the store is quiet.
//!
//! A counting `#[global_allocator]` around the system allocator. Each thread counts the
//! allocations it makes (a thread-local count, so the test harness's own threads do not mix in),
//! and the process counts its live bytes. The tests take one lock each ([`serial`]), so that one
//! test's memory never shows in another's count.
//!
//! - `*_transfers_*`: 10^5 2-key transfers over 64 accounts, after 10^4 per thread of warm-up,
//!   through the handle API (`using` + `set` + `commit`) and through `atomically`, on 1 and on 2
//!   threads, must make fewer than 0.01 allocations per commit (the allocations of failed
//!   attempts included). Today's core allocates about 4 times per 2-key commit (the
//!   descriptor, a record per key written, the handles), so they are ignored until per-thread
//!   pools land; `cargo test --test alloc -- --ignored --nocapture` prints the count.
//! - `quiet_store_keeps_little`: a burst of 10^5 commits on 2 threads, then quiet (the epoch
//!   advanced until nothing more is freed): what stays allocated beyond the store's own keys
//!   must be under [`QUIET_CAP`]. No pool exists yet, so today this is deferred reclamation
//!   catching up; with pools it bounds what they keep.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Barrier, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use stm_store::Store;

/// The system allocator, counting each thread's allocations and the process's live bytes.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static PEAK_BYTES: AtomicIsize = AtomicIsize::new(0);

thread_local! {
    /// Allocations (`alloc`, `alloc_zeroed`, `realloc`) made by this thread.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn allocated(bytes: isize) {
    let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
    let now = LIVE_BYTES.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK_BYTES.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call goes to `System` with the caller's arguments; the counting around it
// allocates nothing (the thread-local count has a const initializer and no destructor).
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

/// One test at a time in this binary (a failed test's poisoned lock is still a lock).
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// This thread's allocations so far.
fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

fn live_bytes() -> isize {
    LIVE_BYTES.load(Ordering::SeqCst)
}

/// How long [`settled_bytes`] may take: a liveness bound, not a performance threshold.
const SETTLE_LIMIT: Duration = Duration::from_secs(20);

/// The live bytes once deferred reclamation has caught up: advances crossbeam-epoch's epoch
/// (from this thread, the only one left; threads that ended handed their deferred frees to the
/// global queue) until the count has gone no lower for many rounds in a row, bounded by
/// [`SETTLE_LIMIT`]. The lowest count seen: a flush itself moves a bag of deferred frees in
/// and out of the global queue.
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

const ACCOUNTS: u64 = 64;
const BALANCE: u64 = 1_000;
/// Transfers measured, split between the threads.
const TRANSFERS: u64 = 100_000;
/// Transfers per thread before counting.
const WARM_UP: u64 = 10_000;
/// Allocations per commit allowed in the steady state.
const TARGET_PER_COMMIT: f64 = 0.01;

/// A store of [`ACCOUNTS`] accounts of [`BALANCE`] each.
fn bank() -> Store<u64, u64> {
    let store = Store::new();
    for key in 0..ACCOUNTS {
        let mut account = store.usevar(key).unwrap();
        account.set(BALANCE);
        account.commit().unwrap();
    }
    store
}

fn total(store: &Store<u64, u64>) -> u64 {
    let accounts = store.using(0..ACCOUNTS).unwrap();
    accounts.iter().map(|(_, v)| *v.value().unwrap()).sum()
}

/// The two distinct accounts of the next transfer (xorshift, per thread).
fn pick(state: &mut u64) -> (u64, u64) {
    let mut next = || {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    };
    let from = next() % ACCOUNTS;
    let to = (from + 1 + next() % (ACCOUNTS - 1)) % ACCOUNTS;
    (from, to)
}

/// Moves 1 from `from` to `to` through `using` + `set` + `commit`, redone until it lands.
fn transfer_handles(store: &Store<u64, u64>, from: u64, to: u64) {
    loop {
        let Ok(mut accounts) = store.using([from, to]) else {
            continue;
        };
        let (a, b) = (
            *accounts[&from].value().unwrap(),
            *accounts[&to].value().unwrap(),
        );
        accounts[&from].set(a.wrapping_sub(1));
        accounts[&to].set(b.wrapping_add(1));
        if accounts.commit().is_ok() {
            return;
        }
    }
}

/// Moves 1 from `from` to `to` in one `atomically`.
fn transfer_atomically(store: &Store<u64, u64>, from: u64, to: u64) {
    store.atomically(|tx| {
        let a = tx.get(&from)?.unwrap();
        let b = tx.get(&to)?.unwrap();
        tx.set(&from, a.wrapping_sub(1))?;
        tx.set(&to, b.wrapping_add(1))
    });
}

/// Allocations per commit of [`TRANSFERS`] transfers made by `transfer` on `threads` threads
/// after [`WARM_UP`] each: what the transferring threads allocated, over the transfers.
fn allocations_per_commit(
    api: &str,
    threads: usize,
    transfer: impl Fn(&Store<u64, u64>, u64, u64) + Sync,
) -> f64 {
    let store = bank();
    let warm = Barrier::new(threads);
    let counted: u64 = thread::scope(|scope| {
        let workers: Vec<_> = (0..threads as u64)
            .map(|thread| {
                let (store, warm, transfer) = (&store, &warm, &transfer);
                scope.spawn(move || {
                    let mut state = 0x9E37_79B9_7F4A_7C15 ^ (thread + 1);
                    for _ in 0..WARM_UP {
                        let (from, to) = pick(&mut state);
                        transfer(store, from, to);
                    }
                    warm.wait();
                    let before = allocations();
                    for _ in 0..TRANSFERS / threads as u64 {
                        let (from, to) = pick(&mut state);
                        transfer(store, from, to);
                    }
                    allocations() - before
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    assert_eq!(
        total(&store),
        ACCOUNTS * BALANCE,
        "transfers keep the total"
    );
    let per_commit = counted as f64 / TRANSFERS as f64;
    println!(
        "{api}, {threads} thread(s): {counted} allocations over {TRANSFERS} commits: \
         {per_commit:.4} per commit"
    );
    per_commit
}

fn assert_few_allocations(
    api: &str,
    threads: usize,
    transfer: impl Fn(&Store<u64, u64>, u64, u64) + Sync,
) {
    let _serial = serial();
    let per_commit = allocations_per_commit(api, threads, transfer);
    assert!(
        per_commit < TARGET_PER_COMMIT,
        "{api}, {threads} thread(s): {per_commit:.4} allocations per commit, fewer than \
         {TARGET_PER_COMMIT} expected"
    );
}

#[test]
#[ignore = "the core allocates about 4 times per commit until per-thread pools land"]
fn handle_transfers_allocate_nothing_1_thread() {
    assert_few_allocations("handles", 1, transfer_handles);
}

#[test]
#[ignore = "the core allocates about 4 times per commit until per-thread pools land"]
fn handle_transfers_allocate_nothing_2_threads() {
    assert_few_allocations("handles", 2, transfer_handles);
}

#[test]
#[ignore = "the core allocates about 4 times per commit until per-thread pools land"]
fn atomically_transfers_allocate_nothing_1_thread() {
    assert_few_allocations("atomically", 1, transfer_atomically);
}

#[test]
#[ignore = "the core allocates about 4 times per commit until per-thread pools land"]
fn atomically_transfers_allocate_nothing_2_threads() {
    assert_few_allocations("atomically", 2, transfer_atomically);
}

/// What a quiet store may keep allocated beyond its keys after a burst of commits. Nothing is
/// pooled yet, so today only what the epoch has not freed counts; when pools land, this is
/// the documented cap on what they keep once quiet.
const QUIET_CAP: isize = 1 << 20;

/// A burst of [`TRANSFERS`] commits (half through handles, half through `atomically`) on 2
/// threads, then quiet: the memory beyond the store's own keys goes back under
/// [`QUIET_CAP`]. The burst retires tens of megabytes (a descriptor and two records per
/// commit), so a store that kept them, pooled or not, would fail.
#[test]
fn quiet_store_keeps_little() {
    let _serial = serial();
    let store = bank();
    let before = settled_bytes();
    PEAK_BYTES.store(before, Ordering::SeqCst);
    thread::scope(|scope| {
        for thread in 0..2u64 {
            let store = &store;
            scope.spawn(move || {
                let mut state = 0x2545_F491_4F6C_DD1D ^ (thread + 1);
                for n in 0..TRANSFERS / 2 {
                    let (from, to) = pick(&mut state);
                    if n % 2 == 0 {
                        transfer_handles(store, from, to);
                    } else {
                        transfer_atomically(store, from, to);
                    }
                }
            });
        }
    });
    let burst = live_bytes() - before;
    let peak = PEAK_BYTES.load(Ordering::SeqCst) - before;
    let quiet = settled_bytes() - before;
    println!(
        "beyond the store's keys: {burst} bytes right after the burst (peak {peak}), {quiet} once \
         quiet (cap {QUIET_CAP})"
    );
    assert_eq!(
        total(&store),
        ACCOUNTS * BALANCE,
        "transfers keep the total"
    );
    assert!(
        quiet <= QUIET_CAP,
        "{quiet} bytes still allocated once quiet, {QUIET_CAP} at most"
    );
}
