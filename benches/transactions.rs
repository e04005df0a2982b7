//! Transactions on 1, 2, 4 and 8 threads, measured as `contention.rs` measures
//! (a fixed number of operations per thread per iteration, threads started together on a
//! barrier, the wall time of the batch; criterion's throughput is the total per second).
//!
//! 7. `tx_transfer`: the `transfer` workload of `contention.rs` (two distinct random accounts
//!    of 64, read both, move 1, commit) through three APIs:
//!    - `atomically`: `Store::atomically` (reads as the closure goes, the store's retry loop
//!      and its default backoff);
//!    - `using-commit`: the Axon-style `using([from, to])`, `set`, `commit` with a hand-written
//!      retry loop (`common::Ours`, the `ours` of `contention.rs`);
//!    - `stm-crate`: the `stm` crate's `atomically` over one `TVar<u64>` per account;
//!    - and, as references in the same run, both mutex maps (`mutex`, `mutex-one`) and the
//!      floor (`floor`), exactly as in `contention.rs`'s `transfer`.
//! 8. `tx_queue`: a bounded FIFO queue of 16 items with N/2 producers and N/2 consumers, each
//!    pushing (popping) `QUEUE_OPS` items per iteration; throughput counts items through the
//!    queue. `atomically-retry`: the queue in the store (a head and a tail counter and 16 item
//!    keys), consumers `retry` when it is empty and producers when it is full;
//!    `mutex-condvar`: a `parking_lot::Mutex<VecDeque<u64>>` with a `Condvar` for "not empty"
//!    and one for "not full". Every item is checked through (sum of items popped = pushed).
//!
//! Every benchmark prints one `TRIES` line to stderr. The queue's counts pushes and pops as
//! operations, the runs of a transaction (checks of the condition, for the mutex) as attempts,
//! and how often producers and consumers waited.

#[allow(dead_code)]
mod common;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use common::{
    bench_transfer, group, run_threads, Atomically, Counts, Floor, Kv, MutexKv, MutexOne, Ours,
    StmCrate, Tries,
};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use parking_lot::{Condvar, Mutex};
use stm_store::Store;

const THREADS: [usize; 4] = [1, 2, 4, 8];
/// Queue capacity.
const CAPACITY: u64 = 16;
/// Items each producer pushes (and each consumer pops) per iteration.
const QUEUE_OPS: u64 = 5_000;
/// Threads of the queue workload, half producers and half consumers.
const QUEUE_THREADS: [usize; 3] = [2, 4, 8];

// 7. transfer ---------------------------------------------------------------------------------

fn tx_transfer(c: &mut Criterion) {
    let mut group = group(c, "tx_transfer");
    for threads in THREADS {
        bench_transfer::<Atomically>(&mut group, "tx_transfer", "atomically", threads);
        bench_transfer::<Ours>(&mut group, "tx_transfer", "using-commit", threads);
        bench_transfer::<StmCrate>(&mut group, "tx_transfer", "stm-crate", threads);
        bench_transfer::<MutexKv>(&mut group, "tx_transfer", MutexKv::NAME, threads);
        bench_transfer::<MutexOne>(&mut group, "tx_transfer", MutexOne::NAME, threads);
        bench_transfer::<Floor>(&mut group, "tx_transfer", Floor::NAME, threads);
    }
    group.finish();
}

// 8. producer/consumer queue ------------------------------------------------------------------

/// A bounded FIFO queue of `u64`s shared by producer and consumer threads.
trait Queue: Sync {
    fn new() -> Self;
    /// Appends `item`, waiting while the queue is full.
    fn push(&self, item: u64) -> Waited;
    /// Takes the oldest item, waiting while the queue is empty.
    fn pop(&self) -> (u64, Waited);
}

/// How one queue operation went: `tries.attempts` counts the runs of the transaction (the
/// checks of the condition, for the mutex), `tries.conflicts` the runs that ended in a
/// conflict, `waits` the ones that waited.
#[derive(Clone, Copy, Default)]
struct Waited {
    tries: Tries,
    waits: u64,
}

impl Waited {
    /// A transaction whose last attempt was `last`, of which `waits` waited.
    fn transaction(last: u32, waits: u64) -> Self {
        let attempts = u64::from(last);
        Waited {
            tries: Tries {
                attempts,
                conflicts: attempts - 1 - waits,
                busy: 0,
            },
            waits,
        }
    }

    /// A lock-based operation that waited `waits` times (and checked once more).
    fn locked(waits: u64) -> Self {
        Waited {
            tries: Tries {
                attempts: waits + 1,
                conflicts: 0,
                busy: 0,
            },
            waits,
        }
    }

    fn add(&mut self, other: Waited) {
        self.tries.add(other.tries);
        self.waits += other.waits;
    }
}

/// The queue in the store: `HEAD` counts items popped, `TAIL` items pushed; item `n` is at key
/// `FIRST_ITEM + n % CAPACITY`.
struct StoreQueue(Store<u64, u64>);

const HEAD: u64 = 0;
const TAIL: u64 = 1;
const FIRST_ITEM: u64 = 2;

impl Queue for StoreQueue {
    fn new() -> Self {
        // Every key gets a value up front: the transactions then never create keys.
        StoreQueue(Ours::new((FIRST_ITEM + CAPACITY) as usize, 0).0)
    }

    fn push(&self, item: u64) -> Waited {
        let (mut waits, mut last) = (0, 0);
        self.0.atomically(|tx| {
            last = tx.attempt();
            let head = tx.get(&HEAD)?.unwrap_or(0);
            let tail = tx.get(&TAIL)?.unwrap_or(0);
            if tail - head == CAPACITY {
                waits += 1;
                return tx.retry();
            }
            tx.set(&(FIRST_ITEM + tail % CAPACITY), item)?;
            tx.set(&TAIL, tail + 1)
        });
        Waited::transaction(last, waits)
    }

    fn pop(&self) -> (u64, Waited) {
        let (mut waits, mut last) = (0, 0);
        let item = self.0.atomically(|tx| {
            last = tx.attempt();
            let head = tx.get(&HEAD)?.unwrap_or(0);
            let tail = tx.get(&TAIL)?.unwrap_or(0);
            if head == tail {
                waits += 1;
                return tx.retry();
            }
            let item = tx.get(&(FIRST_ITEM + head % CAPACITY))?.unwrap_or(0);
            tx.set(&HEAD, head + 1)?;
            Ok(item)
        });
        (item, Waited::transaction(last, waits))
    }
}

/// The lock-based queue: a `VecDeque` under a mutex, with a condition variable for each way
/// of waiting.
struct MutexQueue {
    items: Mutex<VecDeque<u64>>,
    not_empty: Condvar,
    not_full: Condvar,
}

impl Queue for MutexQueue {
    fn new() -> Self {
        MutexQueue {
            items: Mutex::new(VecDeque::with_capacity(CAPACITY as usize)),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
        }
    }

    fn push(&self, item: u64) -> Waited {
        let mut waits = 0;
        let mut items = self.items.lock();
        while items.len() as u64 == CAPACITY {
            waits += 1;
            self.not_full.wait(&mut items);
        }
        items.push_back(item);
        drop(items);
        self.not_empty.notify_one();
        Waited::locked(waits)
    }

    fn pop(&self) -> (u64, Waited) {
        let mut waits = 0;
        let mut items = self.items.lock();
        let item = loop {
            match items.pop_front() {
                Some(item) => break item,
                None => {
                    waits += 1;
                    self.not_empty.wait(&mut items);
                }
            }
        };
        drop(items);
        self.not_full.notify_one();
        (item, Waited::locked(waits))
    }
}

/// `threads / 2` producers push `QUEUE_OPS` items each per iteration (1, 2, 3, ...), as many
/// consumers pop as many; the sum popped must be the sum pushed.
fn queue_one<Q: Queue>(group: &mut BenchmarkGroup<'_, WallTime>, label: &str, threads: usize) {
    let pairs = threads / 2;
    let queue = Q::new();
    let counts = Counts::default();
    group.throughput(Throughput::Elements(QUEUE_OPS * pairs as u64));
    group.bench_function(BenchmarkId::new(label, threads), |b| {
        b.iter_custom(|iters| {
            let popped = AtomicU64::new(0);
            let ops = iters * QUEUE_OPS;
            let time = run_threads(threads, |thread| {
                let mut total = Waited::default();
                if thread < pairs {
                    for item in 1..=ops {
                        total.add(queue.push(item));
                    }
                    counts.add_side("producer_waits", total.waits);
                } else {
                    let mut sum = 0u64;
                    for _ in 0..ops {
                        let (item, waited) = queue.pop();
                        sum = sum.wrapping_add(item);
                        total.add(waited);
                    }
                    popped.fetch_add(sum, Ordering::Relaxed);
                    counts.add_side("consumer_waits", total.waits);
                }
                // ops counts pushes and pops alike (twice the items through the queue).
                counts.add(ops, total.tries);
            });
            let pushed = (ops * (ops + 1) / 2).wrapping_mul(pairs as u64);
            assert_eq!(
                popped.load(Ordering::Relaxed),
                pushed,
                "{label}: every item pushed must be popped once"
            );
            time
        })
    });
    counts.print(&format!("tx_queue/{label}/{threads}"));
}

fn tx_queue(c: &mut Criterion) {
    let mut group = group(c, "tx_queue");
    for threads in QUEUE_THREADS {
        queue_one::<StoreQueue>(&mut group, "atomically-retry", threads);
        queue_one::<MutexQueue>(&mut group, "mutex-condvar", threads);
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = tx_transfer, tx_queue
}
criterion_main!(benches);
