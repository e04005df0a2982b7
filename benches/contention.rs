//! Contention workloads on 1, 2, 4 and 8 threads (the machine may have fewer cores: the
//! oversubscribed runs are intended). Each thread runs a fixed number of operations per
//! iteration; the threads start together on a barrier and the wall time of the whole batch is
//! measured (`iter_custom`), so criterion's throughput is the total operations per second.
//!
//! 1. `read_mostly`: 95% single-key reads, 5% single-key increments, uniform over 1024 keys.
//! 2. `transfer`: two-key read-modify-write between two distinct random accounts of 64.
//! 3. `hot_key`: every thread increments the same key through a retry loop.
//! 4. `snapshot`: one writer transfers among 8 keys; the other threads read all 8 at one
//!    instant (and check that the total is unchanged). Throughput counts the readers' snapshots.
//!
//! Every workload runs the store (`ours`), both mutex maps (`mutex`, Axon-shaped; `mutex-one`,
//! one critical section per operation), the RwLock map, the `stm` crate and the floor (the
//! lock-free multi-word CAS over versioned words), so that every number has its ratios to both
//! mutex maps and to the floor from the same run (`benches/report.py`).
//!
//! Every benchmark prints one `TRIES` line to stderr: attempts, `ConcurrentUpdate` conflicts and
//! `BusyRetry` answers over all its runs.

#[allow(dead_code)]
mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{
    bench_ops, bench_transfer, group, rng, run_threads, Backoff, Counts, Floor, Kv, MutexKv,
    MutexOne, Ours, RwLockKv, StmCrate, Stop, Tries, BALANCE, OPS,
};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};

const KEYS: u64 = 1024;
const THREADS: [usize; 4] = [1, 2, 4, 8];
/// Keys of the snapshot workload.
const SNAPSHOT_KEYS: [u64; 8] = [0, 1, 2, 3, 4, 5, 6, 7];

// 1. read-mostly ------------------------------------------------------------------------------

fn read_mostly_one<K: Kv>(group: &mut BenchmarkGroup<'_, WallTime>, threads: usize) {
    let kv = K::new(KEYS as usize, 0);
    bench_ops(group, "read_mostly", K::NAME, threads, &kv, |kv, rng| {
        let key = rng.below(KEYS);
        if rng.below(20) == 0 {
            kv.incr(key, Backoff::Exponential)
        } else {
            black_box(kv.read(key));
            Tries::ONE
        }
    });
}

fn read_mostly(c: &mut Criterion) {
    let mut group = group(c, "read_mostly");
    for threads in THREADS {
        read_mostly_one::<Ours>(&mut group, threads);
        read_mostly_one::<MutexKv>(&mut group, threads);
        read_mostly_one::<MutexOne>(&mut group, threads);
        read_mostly_one::<RwLockKv>(&mut group, threads);
        read_mostly_one::<StmCrate>(&mut group, threads);
        read_mostly_one::<Floor>(&mut group, threads);
    }
    group.finish();
}

// 2. transfer ---------------------------------------------------------------------------------

fn transfer(c: &mut Criterion) {
    let mut group = group(c, "transfer");
    for threads in THREADS {
        bench_transfer::<Ours>(&mut group, "transfer", Ours::NAME, threads);
        bench_transfer::<MutexKv>(&mut group, "transfer", MutexKv::NAME, threads);
        bench_transfer::<MutexOne>(&mut group, "transfer", MutexOne::NAME, threads);
        bench_transfer::<RwLockKv>(&mut group, "transfer", RwLockKv::NAME, threads);
        bench_transfer::<StmCrate>(&mut group, "transfer", StmCrate::NAME, threads);
        bench_transfer::<Floor>(&mut group, "transfer", Floor::NAME, threads);
    }
    group.finish();
}

// 3. hot key ----------------------------------------------------------------------------------

fn hot_key_one<K: Kv>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    label: &str,
    threads: usize,
    backoff: Backoff,
) {
    let kv = K::new(KEYS as usize, 0);
    bench_ops(group, "hot_key", label, threads, &kv, |kv, _| {
        kv.incr(0, backoff)
    });
}

fn hot_key(c: &mut Criterion) {
    let mut group = group(c, "hot_key");
    let backoff = Backoff::Exponential;
    for threads in THREADS {
        hot_key_one::<Ours>(&mut group, "ours", threads, backoff);
        hot_key_one::<Ours>(&mut group, "ours-nobackoff", threads, Backoff::None);
        hot_key_one::<MutexKv>(&mut group, "mutex", threads, backoff);
        hot_key_one::<MutexOne>(&mut group, "mutex-one", threads, backoff);
        hot_key_one::<RwLockKv>(&mut group, "rwlock", threads, backoff);
        hot_key_one::<StmCrate>(&mut group, "stm-crate", threads, backoff);
        hot_key_one::<Floor>(&mut group, "floor", threads, backoff);
    }
    group.finish();
}

// 4. snapshot ---------------------------------------------------------------------------------

/// `threads - 1` readers take `OPS` snapshots each per iteration while thread 0 transfers among
/// the same keys until the last reader is done.
fn snapshot_one<K: Kv>(group: &mut BenchmarkGroup<'_, WallTime>, threads: usize) {
    let readers = threads - 1;
    let kv = K::new(SNAPSHOT_KEYS.len(), BALANCE);
    let total = SNAPSHOT_KEYS.len() as u64 * BALANCE;
    let counts = Counts::default();
    group.throughput(Throughput::Elements(OPS * readers as u64));
    group.bench_function(BenchmarkId::new(K::NAME, threads), |b| {
        b.iter_custom(|iters| {
            let remaining = AtomicUsize::new(readers);
            let stop = Stop::default();
            run_threads(threads, |thread| {
                let mut rng = rng(thread);
                let mut tries = Tries::default();
                if thread == 0 {
                    let mut transfers = 0;
                    while !stop.is_set() {
                        let from = rng.below(8);
                        let to = (from + 1 + rng.below(7)) % 8;
                        let writer = kv.transfer(from, to, 1, Backoff::Exponential);
                        tries.conflicts += writer.conflicts;
                        tries.busy += writer.busy;
                        transfers += 1;
                    }
                    counts.add_side("writer_transfers", transfers);
                    counts.add_side("writer_conflicts", tries.conflicts);
                    counts.add(
                        0,
                        Tries {
                            attempts: 0,
                            ..tries
                        },
                    );
                    return;
                }
                let mut values = Vec::with_capacity(SNAPSHOT_KEYS.len());
                let ops = iters * OPS;
                for _ in 0..ops {
                    tries.add(kv.snapshot(&SNAPSHOT_KEYS, &mut values));
                    let sum = values.iter().fold(0u64, |sum, v| sum.wrapping_add(*v));
                    assert_eq!(sum, total, "{}: a snapshot saw a torn transfer", K::NAME);
                }
                counts.add(ops, tries);
                if remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    stop.set();
                }
            })
        })
    });
    counts.print(&format!("snapshot/{}/{threads}", K::NAME));
}

fn snapshot(c: &mut Criterion) {
    let mut group = group(c, "snapshot");
    for threads in [2, 4, 8] {
        snapshot_one::<Ours>(&mut group, threads);
        snapshot_one::<MutexKv>(&mut group, threads);
        snapshot_one::<MutexOne>(&mut group, threads);
        snapshot_one::<RwLockKv>(&mut group, threads);
        snapshot_one::<StmCrate>(&mut group, threads);
        snapshot_one::<Floor>(&mut group, threads);
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = read_mostly, transfer, hot_key, snapshot
}
criterion_main!(benches);
