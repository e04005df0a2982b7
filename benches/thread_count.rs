//! Workload 7, `thread_count`: single-key commit and read cost on one thread after 1, 16 and
//! 64 threads have used the store.
//!
//! The store reclaims through crossbeam-epoch, whose global list holds one entry per thread
//! that ever pinned (a dead thread's entry is unlinked lazily), and whose epoch advance walks
//! that list. `arc-swap`, which version 1 of the core used, keeps one debt node per thread that
//! ever loaded through it, in a prepend-only list that every successful store or
//! compare-and-swap walks. So both costs may grow with the number of threads that used them.
//! Measured here: the store itself, and two bare cells as references.
//!
//! Before each group, `n` threads are started together; each one reads a key of the store and
//! commits another, loads the bare `ArcSwap` cell and the bare epoch cell; then they all exit
//! (`64-alive`: they stay parked during the measurement). The groups run in increasing order
//! (the arc-swap list only grows), all in this process, which runs no other threads.
//!
//! - `ours-commit`: `usevar` + `set` + `commit` of one key (the one-key fast path);
//! - `ours-read`: `usevar` of one key (the key index plus one slot load, the value copied out);
//! - `arcswap-commit`: an `ArcSwap<(version, value)>`: load, compare the version, CAS in a new
//!   `Arc` record;
//! - `epoch-commit`: a crossbeam-epoch `Atomic<(version, value)>`: pin, load, compare the
//!   version, CAS in a new record, `defer_destroy` the old one (the store's slot without its
//!   claims and index);
//! - `arcswap-read` / `epoch-read`: load and copy the record out (what a handle keeps).
//!
//! The target: `ours-commit` after 64 threads within 1.2x of after 1 thread.

#[allow(dead_code)]
mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use arc_swap::ArcSwap;
use common::{Backoff, Kv, Ours};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use crossbeam_epoch::{self as epoch, Atomic, Owned};

/// A version and a value: the record a cell holds.
type Record = (u64, u64);

/// A bare epoch-reclaimed cell: one `crossbeam_epoch::Atomic` pointer to an immutable record,
/// replaced by compare-and-swap, the replaced record freed after a grace period.
pub struct EpochCell(Atomic<Record>);

impl EpochCell {
    pub fn new(record: Record) -> Self {
        Self(Atomic::new(record))
    }

    /// The current record, copied out.
    pub fn read(&self) -> Record {
        let guard = epoch::pin();
        let current = self.0.load(Ordering::Acquire, &guard);
        // SAFETY: the cell always holds a valid record, and a replaced record is freed only
        // through `defer_destroy`, after every guard pinned before the replacement (`guard`
        // included) has been dropped.
        *unsafe { current.deref() }
    }

    /// Replaces the record by its successor (version + 1, value + 1) if its version is still
    /// `expect`; false on a conflict.
    pub fn commit(&self, expect: u64) -> bool {
        let guard = epoch::pin();
        let current = self.0.load(Ordering::Acquire, &guard);
        // SAFETY: as in `read`.
        let record = unsafe { current.deref() };
        if record.0 != expect {
            return false;
        }
        let next = Owned::new((record.0 + 1, record.1 + 1));
        match self
            .0
            .compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire, &guard)
        {
            Ok(_) => {
                // SAFETY: `current` is out of the cell, so no thread can load it any more; it
                // is freed after every thread that may have loaded it has unpinned.
                unsafe { guard.defer_destroy(current) };
                true
            }
            Err(_) => false,
        }
    }
}

impl Drop for EpochCell {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no other thread can reach the cell, and its record was never
        // retired (only replaced records are).
        drop(unsafe {
            self.0
                .load(Ordering::Relaxed, epoch::unprotected())
                .into_owned()
        });
    }
}

/// Everything the threads touch: one store (key 0 measured, key 1 committed by the threads
/// that use it), one bare `ArcSwap` cell, one bare epoch cell.
struct Subjects {
    ours: Ours,
    arcswap: ArcSwap<Record>,
    epoch: EpochCell,
}

impl Subjects {
    /// Each of `threads` threads uses the store and reads both cells; all are alive together. If
    /// `keep_alive`, they park until the returned barrier is passed by the caller's `release`.
    fn touch(self: &Arc<Self>, threads: usize, keep_alive: bool) -> Option<Release> {
        let started = Arc::new(Barrier::new(threads + 1));
        let release = Arc::new(Barrier::new(threads + 1));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (subjects, started, release) =
                    (Arc::clone(self), Arc::clone(&started), Arc::clone(&release));
                thread::spawn(move || {
                    std::hint::black_box(subjects.ours.read(0));
                    subjects.ours.incr(1, Backoff::Exponential);
                    std::hint::black_box(subjects.arcswap.load_full());
                    std::hint::black_box(subjects.epoch.read());
                    started.wait();
                    if keep_alive {
                        release.wait();
                    }
                })
            })
            .collect();
        started.wait();
        if keep_alive {
            return Some(Release {
                barrier: release,
                handles,
            });
        }
        for handle in handles {
            handle.join().expect("toucher thread");
        }
        None
    }
}

/// Parked threads, let go on drop.
struct Release {
    barrier: Arc<Barrier>,
    handles: Vec<thread::JoinHandle<()>>,
}

impl Drop for Release {
    fn drop(&mut self) {
        self.barrier.wait();
        for handle in self.handles.drain(..) {
            handle.join().expect("parked thread");
        }
    }
}

fn thread_count(c: &mut Criterion) {
    let subjects = Arc::new(Subjects {
        ours: Ours::new(2, 0),
        arcswap: ArcSwap::from_pointee((1, 0)),
        epoch: EpochCell::new((1, 0)),
    });
    for (label, threads, keep_alive) in [
        ("1", 1, false),
        ("16", 16, false),
        ("64", 64, false),
        ("64-alive", 64, true),
    ] {
        let parked = subjects.touch(threads, keep_alive);
        let mut group = c.benchmark_group(format!("thread_count/{label}"));
        group
            .sample_size(15)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
            .throughput(Throughput::Elements(1));
        let store = &subjects.ours.0;
        group.bench_function("ours-commit", |b| {
            b.iter(|| {
                let mut value = store.usevar(0).expect("usevar never fails today");
                let next = value.value().copied().unwrap_or(0) + 1;
                value.set(next);
                value.commit().expect("nobody else commits")
            })
        });
        group.bench_function("ours-read", |b| b.iter(|| subjects.ours.read(0)));
        group.bench_function("arcswap-commit", |b| {
            b.iter(|| {
                let cell = &subjects.arcswap;
                let current = cell.load();
                assert!(current.0 > 0);
                let next = Arc::new((current.0 + 1, current.1 + 1));
                let previous = cell.compare_and_swap(&current, next);
                assert!(Arc::ptr_eq(&previous, &current), "nobody else commits");
            })
        });
        group.bench_function("arcswap-read", |b| b.iter(|| **subjects.arcswap.load()));
        let mut version = subjects.epoch.read().0;
        group.bench_function("epoch-commit", |b| {
            b.iter(|| {
                assert!(subjects.epoch.commit(version), "nobody else commits");
                version += 1;
            })
        });
        group.bench_function("epoch-read", |b| b.iter(|| subjects.epoch.read()));
        group.finish();
        drop(parked);
    }
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = thread_count
}
criterion_main!(benches);
