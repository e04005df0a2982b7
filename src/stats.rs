//! What a store counts: commits, conflicts, helping, claiming snapshots, transaction runs and
//! waits. Counting must not become the shared hot spot the protocol avoids: each thread counts
//! in a shard of its own (a cache line, picked once per thread), and [`Store::stats`] sums the
//! shards. The first threads of the process (four per core) each own a shard outright and count
//! with a plain load and store, no locked instruction (nobody else writes there); later threads
//! share the overflow shards and count with a relaxed `fetch_add`. The sum is not a snapshot,
//! and the counts need not agree with each other at any one instant.
//!
//! [`Store::stats`]: crate::Store::stats

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;

/// What a store has counted since it was made ([`Store::stats`](crate::Store::stats)).
///
/// ```
/// let store: stm_store::Store<&str, u32> = stm_store::Store::new();
/// store.atomically(|tx| tx.set(&"k", 1));
/// let mut stale = store.usevar("k")?;
/// store.atomically(|tx| tx.set(&"k", 2));
/// stale.set(3);
/// assert!(stale.commit().is_err());
/// let stats = store.stats();
/// assert_eq!((stats.commits, stats.conflicts, stats.tx_attempts), (2, 1, 2));
/// # Ok::<(), stm_store::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Commits that landed (handles and transactions; a commit that only validated included;
    /// not the commit of an empty collection, which touches no store).
    pub commits: u64,
    /// Commits that failed with [`Error::ConcurrentUpdate`](crate::Error::ConcurrentUpdate)
    /// (transactions' included), and transaction runs stopped by a read that found a key read
    /// earlier changed: each of those is followed by another run of the closure.
    pub conflicts: u64,
    /// Calls that answered [`Error::BusyRetry`](crate::Error::BusyRetry): this implementation
    /// never does.
    pub busy_retries: u64,
    /// Multi-key commits that another thread, blocked by them, committed on their behalf (it
    /// found them stopped or slow, and finished them).
    pub helped: u64,
    /// Snapshots (`using`, `dump`) that kept meeting commits and fell back to claiming their
    /// keys.
    pub snapshot_claims: u64,
    /// Runs of transaction closures ([`Store::atomically`](crate::Store::atomically) and
    /// the like): one per transaction, plus one per conflict or wake-up.
    pub tx_attempts: u64,
    /// Times a transaction waited in [`Tx::retry`](crate::Tx::retry) for a change.
    pub tx_waits: u64,
}

/// One counter of [`Stats`].
#[derive(Clone, Copy)]
pub(crate) enum Count {
    Commit,
    Conflict,
    Helped,
    SnapshotClaim,
    TxAttempt,
    TxWait,
}

const COUNTS: usize = 6;

/// A cache line of counters, written by the threads whose shard it is.
#[repr(align(128))]
#[derive(Default)]
struct Shard([AtomicU64; COUNTS]);

pub(crate) struct Counters {
    /// `shard_count()` shards owned by one thread each (thread number `i` owns shard `i`),
    /// then as many shared by the threads numbered above.
    shards: Box<[Shard]>,
}

impl Counters {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..2 * shard_count()).map(|_| Shard::default()).collect(),
        }
    }

    #[inline]
    pub(crate) fn add(&self, count: Count) {
        let owned = self.shards.len() / 2;
        let thread = this_thread();
        if thread < owned {
            // Only this thread writes here: no read-modify-write needed.
            let counter = &self.shards[thread].0[count as usize];
            counter.store(counter.load(Relaxed) + 1, Relaxed);
        } else {
            let shard = &self.shards[owned + (thread & (owned - 1))];
            shard.0[count as usize].fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn sum(&self) -> Stats {
        let total = |count: Count| -> u64 {
            self.shards
                .iter()
                .map(|shard| shard.0[count as usize].load(Relaxed))
                .sum()
        };
        Stats {
            commits: total(Count::Commit),
            conflicts: total(Count::Conflict),
            busy_retries: 0,
            helped: total(Count::Helped),
            snapshot_claims: total(Count::SnapshotClaim),
            tx_attempts: total(Count::TxAttempt),
            tx_waits: total(Count::TxWait),
        }
    }
}

/// A power of two, four per core: threads rarely share a shard.
fn shard_count() -> usize {
    static SHARDS: OnceLock<usize> = OnceLock::new();
    *SHARDS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        (cores * 4).next_power_of_two()
    })
}

/// This thread's number, handed out in order of first use.
#[inline]
fn this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static THIS: Cell<usize> = const { Cell::new(usize::MAX) });
    THIS.with(|this| {
        if this.get() == usize::MAX {
            this.set(NEXT.fetch_add(1, Relaxed));
        }
        this.get()
    })
}
