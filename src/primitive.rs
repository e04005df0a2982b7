//! The loom shim: the only module that chooses between `std` and `loom`.
//!
//! Under `cfg(loom)` every atomic the protocol touches is loom's, and crossbeam-epoch (built
//! with `--cfg crossbeam_loom` and its `loom` feature) uses loom's atomics and thread-locals
//! for its own pins and reclamation, so the models run the real reclamation code. The key
//! index, which loom cannot model, is a loom `Mutex` around a `BTreeMap` there (see
//! `slot::table`).

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU64, AtomicU8, AtomicUsize, Ordering};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU64, AtomicU8, AtomicUsize, Ordering};

pub(crate) use crossbeam_epoch::{pin, Guard};

/// Thread-locals that each loom thread has its own of (loom runs its threads on one OS thread).
#[cfg(loom)]
pub(crate) use loom::thread_local;
#[cfg(not(loom))]
pub(crate) use std::thread_local;

/// Hands out distinct numbers (a store's slot ids). It stays `std` under loom: it is touched
/// only when a key is created, and the models need not interleave it.
pub(crate) struct IdCounter(std::sync::atomic::AtomicU64);

impl IdCounter {
    pub(crate) const fn new() -> Self {
        Self(std::sync::atomic::AtomicU64::new(1))
    }

    pub(crate) fn next(&self) -> u64 {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}
