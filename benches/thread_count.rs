//! Workload 7, `thread_count`: single-key commit (and read) cost on one thread after 1, 16 and
//! 64 threads have used the store.
//!
//! `arc-swap` keeps one debt node per thread that ever loaded through it, in a global,
//! prepend-only list (a dead thread's node is reused by the next new thread, never freed), and
//! every successful store or compare-and-swap walks the whole list. So its write cost grows with
//! the largest number of threads that were ever alive together and used any `ArcSwap`. The
//! alternatives measured here are two bench-local epoch slots: an `Arc::into_raw` pointer in an
//! `AtomicPtr`, loaded under a `crossbeam_epoch` guard and replaced by compare-and-swap.
//!
//! - [`EpochArc`] (`epoch-*`): the replaced record's strong count is released through `defer`,
//!   so its value is dropped only after a grace period (the plain epoch scheme);
//! - [`EpochWeakArc`] (`epochweak-*`): the replaced record's strong count is released at once
//!   (its value dropped as soon as no handle holds it, as the store's contract point 9 wants)
//!   and only its allocation waits, through a deferred `Weak`; a load upgrades under the guard.
//!
//! Before each group, `n` threads are started together; each one reads a key of the store,
//! loads the bare `ArcSwap` slot and pins the epoch; then they all exit (`64-alive`: they stay
//! parked during the measurement). The groups run in increasing order (the arc-swap list only
//! grows), all in this process, which runs no other threads.
//!
//! - `ours-commit`: a `Value` kept across iterations, set and committed (the one-key fast path:
//!   one load and one CAS of the slot);
//! - `ours-read`: `Store::usevar` of one key (the key index plus one slot load);
//! - `arcswap-commit` / `epoch-commit` / `epochweak-commit`: load, compare the version, CAS in
//!   a new record;
//! - `arcswap-read` / `epoch-read` / `epochweak-read`: load and take an `Arc` of the record
//!   (what a handle keeps).

#[allow(dead_code)]
mod common;

use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Barrier, Weak};
use std::thread;
use std::time::Duration;

use arc_swap::ArcSwap;
use common::{Kv, Ours};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use crossbeam_epoch::{self as epoch, Guard};

/// A version and a value: the record a slot holds.
type Record = (u64, u64);

/// A minimal epoch-based atomic `Arc<T>`: what the core's `AtomicArc` would be on
/// crossbeam-epoch instead of arc-swap.
pub struct EpochArc<T> {
    /// Always a pointer from `Arc::into_raw`, owning one strong count.
    ptr: AtomicPtr<T>,
}

impl<T> EpochArc<T> {
    pub fn new(value: Arc<T>) -> Self {
        Self {
            ptr: AtomicPtr::new(Arc::into_raw(value).cast_mut()),
        }
    }

    /// The current record, valid while `guard` is pinned.
    pub fn load<'g>(&self, _guard: &'g Guard) -> &'g T {
        // SAFETY: the pointer came from `Arc::into_raw` and its strong count is released only
        // through `defer`, after every guard pinned before the release has been dropped.
        unsafe { &*self.ptr.load(Ordering::Acquire) }
    }

    /// The current record as an `Arc` (one increment), as a handle would keep it.
    pub fn load_full(&self) -> Arc<T> {
        let _guard = epoch::pin();
        let ptr = self.ptr.load(Ordering::Acquire);
        // SAFETY: as in `load`: the record is alive while `guard` is pinned, so its strong
        // count is at least 1.
        unsafe {
            Arc::increment_strong_count(ptr);
            Arc::from_raw(ptr)
        }
    }

    /// Replaces `current` (loaded under `guard`) by `new` if it is still there. No ABA: the
    /// record `current` cannot be freed, so its address cannot be reused, while `guard` lives.
    pub fn compare_exchange(&self, current: &T, new: Arc<T>, guard: &Guard) -> Result<(), Arc<T>> {
        let new = Arc::into_raw(new).cast_mut();
        let current = std::ptr::from_ref(current).cast_mut();
        match self
            .ptr
            .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(old) => {
                let old = SendPtr(old);
                // SAFETY: `old` owned one strong count, now given up by the slot; it is dropped
                // once no thread can still hold a reference loaded before the exchange.
                unsafe { guard.defer_unchecked(move || drop(Arc::from_raw(old.into_inner()))) };
                Ok(())
            }
            // SAFETY: the exchange failed, so `new` is still ours.
            Err(_) => Err(unsafe { Arc::from_raw(new) }),
        }
    }
}

impl<T> Drop for EpochArc<T> {
    fn drop(&mut self) {
        // SAFETY: the slot owns one strong count of its pointer.
        drop(unsafe { Arc::from_raw(*self.ptr.get_mut()) });
    }
}

/// A raw pointer moved into a deferred function.
struct SendPtr<T>(*mut T);

// SAFETY: only used to carry an `Arc<T>`'s pointer to the thread that runs the deferred drop;
// the records here are `Send + Sync`.
unsafe impl<T> Send for SendPtr<T> {}

impl<T> SendPtr<T> {
    fn into_inner(self) -> *mut T {
        self.0
    }
}

/// The epoch slot that keeps the store's memory contract: a replaced record loses the slot's
/// strong count at once (its value is dropped as soon as no handle holds it, "no later than the
/// key's next write"); only its allocation waits for the epoch, through a `Weak`. A load
/// upgrades under the guard and loads again if the record it saw was already dropped (it lost
/// a race with a completed write).
pub struct EpochWeakArc<T> {
    /// Always a pointer from `Arc::into_raw`, owning one strong count.
    ptr: AtomicPtr<T>,
}

impl<T> EpochWeakArc<T> {
    pub fn new(value: Arc<T>) -> Self {
        Self {
            ptr: AtomicPtr::new(Arc::into_raw(value).cast_mut()),
        }
    }

    /// The current record, with a strong count (what a handle keeps).
    pub fn load_full(&self) -> Arc<T> {
        let _guard = epoch::pin();
        loop {
            let ptr = self.ptr.load(Ordering::Acquire);
            // SAFETY: the allocation behind `ptr` is alive: the slot owns it, or its replacement
            // deferred the drop of a `Weak` to it past our guard. The `Weak` made here only
            // borrows it (never dropped).
            let weak = ManuallyDrop::new(unsafe { Weak::from_raw(ptr) });
            if let Some(arc) = weak.upgrade() {
                return arc;
            }
        }
    }

    /// Replaces `current` by `new` if it is still there; returns the replaced record (its
    /// value is dropped when the caller drops it, if nobody else holds it).
    pub fn compare_exchange(&self, current: &Arc<T>, new: Arc<T>) -> Result<Arc<T>, Arc<T>> {
        let new = Arc::into_raw(new).cast_mut();
        match self.ptr.compare_exchange(
            Arc::as_ptr(current).cast_mut(),
            new,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(old) => {
                // SAFETY: the slot's strong count of `old` is now ours.
                let old = unsafe { Arc::from_raw(old) };
                let keep = Arc::downgrade(&old);
                let guard = epoch::pin();
                // SAFETY: the closure only drops a `Weak`: nothing of `T` is touched.
                unsafe { guard.defer_unchecked(move || drop(keep)) };
                Ok(old)
            }
            // SAFETY: the exchange failed, so `new` is still ours.
            Err(_) => Err(unsafe { Arc::from_raw(new) }),
        }
    }
}

impl<T> Drop for EpochWeakArc<T> {
    fn drop(&mut self) {
        // SAFETY: the slot owns one strong count of its pointer.
        drop(unsafe { Arc::from_raw(*self.ptr.get_mut()) });
    }
}

/// Everything the threads touch: one store, one bare `ArcSwap`, two epoch slots.
struct Subjects {
    ours: Ours,
    arcswap: ArcSwap<Record>,
    epoch: EpochArc<Record>,
    epoch_weak: EpochWeakArc<Record>,
}

impl Subjects {
    /// Each of `threads` threads reads through all three; all are alive together. If
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
                    std::hint::black_box(subjects.arcswap.load_full());
                    std::hint::black_box(subjects.epoch.load_full());
                    std::hint::black_box(subjects.epoch_weak.load_full());
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
        ours: Ours::new(1, 0),
        arcswap: ArcSwap::from_pointee((1, 0)),
        epoch: EpochArc::new(Arc::new((1, 0))),
        epoch_weak: EpochWeakArc::new(Arc::new((1, 0))),
    });
    let mut value = subjects.ours.0.usevar(0).expect("usevar");
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
        group.bench_function("ours-commit", |b| {
            b.iter(|| {
                let next = value.value().copied().unwrap_or(0) + 1;
                value.set(next);
                value.commit().expect("nobody else commits")
            })
        });
        group.bench_function("ours-read", |b| b.iter(|| subjects.ours.read(0)));
        group.bench_function("arcswap-commit", |b| {
            b.iter(|| {
                let slot = &subjects.arcswap;
                let current = slot.load();
                assert!(current.0 > 0);
                let next = Arc::new((current.0 + 1, current.1 + 1));
                let previous = slot.compare_and_swap(&current, next);
                assert!(Arc::ptr_eq(&previous, &current), "nobody else commits");
            })
        });
        group.bench_function("arcswap-read", |b| b.iter(|| subjects.arcswap.load_full()));
        group.bench_function("epoch-commit", |b| {
            b.iter(|| {
                let slot = &subjects.epoch;
                let guard = epoch::pin();
                let current = slot.load(&guard);
                assert!(current.0 > 0);
                let next = Arc::new((current.0 + 1, current.1 + 1));
                slot.compare_exchange(current, next, &guard)
                    .expect("nobody else commits");
            })
        });
        group.bench_function("epoch-read", |b| b.iter(|| subjects.epoch.load_full()));
        group.bench_function("epochweak-commit", |b| {
            b.iter(|| {
                let slot = &subjects.epoch_weak;
                let current = slot.load_full();
                assert!(current.0 > 0);
                let next = Arc::new((current.0 + 1, current.1 + 1));
                slot.compare_exchange(&current, next)
                    .expect("nobody else commits")
            })
        });
        group.bench_function("epochweak-read", |b| {
            b.iter(|| subjects.epoch_weak.load_full())
        });
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
