//! The only module that names `std::sync`, `arc_swap`, `dashmap` or `loom`.
//!
//! Under `cfg(loom)` every primitive the protocol touches is swapped for a loom model, so the
//! model checker sees every shared-memory step of the real protocol code. `arc-swap` and
//! `dashmap` have no loom support; they are modelled by a loom `Mutex` around the same data,
//! which is a faithful model of a linearizable `ArcSwap` (load / compare-and-swap / swap) and
//! of a concurrent map's "find or insert".

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU8, Ordering};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU8, Ordering};

/// `std`'s even under loom: loom's `Arc` has no `Weak`, and reference counting is not what the
/// models check (they count drops of the values themselves).
pub(crate) use std::sync::{Arc, Weak};

pub(crate) use atomic_arc::{AtomicArc, AtomicArcOption, Loaded};

/// Hands out distinct numbers (slot and store ids). It stays `std` under loom: it is touched
/// only when a key or store is created, and the models need not interleave it.
pub(crate) struct IdCounter(std::sync::atomic::AtomicU64);

impl IdCounter {
    pub(crate) const fn new() -> Self {
        Self(std::sync::atomic::AtomicU64::new(0))
    }

    pub(crate) fn next(&self) -> u64 {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}
pub(crate) use index::Index;

#[cfg(not(loom))]
mod atomic_arc {
    use super::Arc;
    use arc_swap::{ArcSwap, ArcSwapOption, Guard};
    use std::ops::Deref;

    /// A shared, atomically replaceable `Arc<T>`.
    pub(crate) struct AtomicArc<T>(ArcSwap<T>);

    /// What [`AtomicArc::load`] saw; keeps it alive, so its address cannot be reused (no ABA).
    pub(crate) struct Loaded<T>(Guard<Arc<T>>);

    impl<T> AtomicArc<T> {
        pub(crate) fn new(value: Arc<T>) -> Self {
            Self(ArcSwap::new(value))
        }

        pub(crate) fn load(&self) -> Loaded<T> {
            Loaded(self.0.load())
        }

        /// Replaces `current` by `new` if `current` is still there, and returns what it
        /// replaced; otherwise changes nothing.
        pub(crate) fn compare_exchange(&self, current: &Loaded<T>, new: Arc<T>) -> Option<Arc<T>> {
            let previous = self.0.compare_and_swap(&current.0, new);
            Arc::ptr_eq(&previous, &current.0).then(|| Guard::into_inner(previous))
        }
    }

    impl<T> Loaded<T> {
        pub(crate) fn to_arc(&self) -> Arc<T> {
            Arc::clone(&self.0)
        }
    }

    impl<T> Deref for Loaded<T> {
        type Target = T;
        fn deref(&self) -> &T {
            &self.0
        }
    }

    /// A shared, atomically replaceable `Option<Arc<T>>`.
    pub(crate) struct AtomicArcOption<T>(ArcSwapOption<T>);

    impl<T> AtomicArcOption<T> {
        pub(crate) fn new(value: Option<Arc<T>>) -> Self {
            Self(ArcSwapOption::new(value))
        }

        pub(crate) fn swap(&self, value: Arc<T>) -> Option<Arc<T>> {
            self.0.swap(Some(value))
        }

        /// Stores `value` if nothing is stored yet; reports whether it did.
        pub(crate) fn set_if_empty(&self, value: Arc<T>) -> bool {
            let previous = self.0.compare_and_swap(&None::<Arc<T>>, Some(value));
            previous.is_none()
        }
    }
}

#[cfg(loom)]
mod atomic_arc {
    use super::Arc;
    use loom::sync::Mutex;
    use std::ops::Deref;

    pub(crate) struct AtomicArc<T>(Mutex<Arc<T>>);

    pub(crate) struct Loaded<T>(Arc<T>);

    impl<T> AtomicArc<T> {
        pub(crate) fn new(value: Arc<T>) -> Self {
            Self(Mutex::new(value))
        }

        pub(crate) fn load(&self) -> Loaded<T> {
            Loaded(Arc::clone(&self.0.lock().unwrap()))
        }

        pub(crate) fn compare_exchange(&self, current: &Loaded<T>, new: Arc<T>) -> Option<Arc<T>> {
            let mut slot = self.0.lock().unwrap();
            Arc::ptr_eq(&slot, &current.0).then(|| std::mem::replace(&mut *slot, new))
        }
    }

    impl<T> Loaded<T> {
        pub(crate) fn to_arc(&self) -> Arc<T> {
            Arc::clone(&self.0)
        }
    }

    impl<T> Deref for Loaded<T> {
        type Target = T;
        fn deref(&self) -> &T {
            &self.0
        }
    }

    pub(crate) struct AtomicArcOption<T>(Mutex<Option<Arc<T>>>);

    impl<T> AtomicArcOption<T> {
        pub(crate) fn new(value: Option<Arc<T>>) -> Self {
            Self(Mutex::new(value))
        }

        pub(crate) fn swap(&self, value: Arc<T>) -> Option<Arc<T>> {
            self.0.lock().unwrap().replace(value)
        }

        pub(crate) fn set_if_empty(&self, value: Arc<T>) -> bool {
            let mut slot = self.0.lock().unwrap();
            let empty = slot.is_none();
            if empty {
                *slot = Some(value);
            }
            empty
        }
    }
}

/// A slot's key, as the index sees it: the index stores each slot once, found by its key.
pub(crate) trait Keyed {
    type Key;
    fn key(&self) -> &Self::Key;
}

#[cfg(not(loom))]
mod index {
    use super::{Arc, Keyed};
    use dashmap::DashMap;
    use std::borrow::Borrow;
    use std::hash::{Hash, Hasher};
    use std::marker::PhantomData;

    /// The key index: finds or creates the slot of a key.
    pub(crate) struct Index<K, S>(DashMap<BySlotKey<K, S>, ()>);

    /// A slot, hashed and compared by its key: the table holds one pointer per key instead of
    /// a copy of the key beside the pointer (8 bytes an entry, not 16; the key is stored once).
    /// `K` is a parameter only so that `Borrow<K>` does not overlap `Borrow<Self>`.
    struct BySlotKey<K, S>(Arc<S>, PhantomData<fn() -> K>);

    impl<K: Hash, S: Keyed<Key = K>> Hash for BySlotKey<K, S> {
        fn hash<H: Hasher>(&self, state: &mut H) {
            self.0.key().hash(state);
        }
    }

    impl<K: Eq, S: Keyed<Key = K>> PartialEq for BySlotKey<K, S> {
        fn eq(&self, other: &Self) -> bool {
            self.0.key() == other.0.key()
        }
    }

    impl<K: Eq, S: Keyed<Key = K>> Eq for BySlotKey<K, S> {}

    impl<K, S: Keyed<Key = K>> Borrow<K> for BySlotKey<K, S> {
        fn borrow(&self) -> &K {
            self.0.key()
        }
    }

    impl<K: Hash + Eq, S: Keyed<Key = K>> Index<K, S> {
        pub(crate) fn new() -> Self {
            // More shards than dashmap's default (4 per core): every lookup takes a shard's
            // read lock, and threads sharing a shard bounce its cache line between cores.
            // Asked once: `available_parallelism` reads cgroup files on every call.
            static SHARDS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
            let shards = *SHARDS.get_or_init(|| {
                let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
                (cores * 32).next_power_of_two()
            });
            Self(DashMap::with_shard_amount(shards))
        }

        pub(crate) fn get(&self, key: &K) -> Option<Arc<S>> {
            self.0.get(key).map(|entry| Arc::clone(&entry.key().0))
        }

        /// The slot of `slot`'s key: the one already there, or `slot` itself if there was none.
        pub(crate) fn get_or_insert(&self, slot: Arc<S>) -> Arc<S> {
            let entry = self.0.entry(BySlotKey(slot, PhantomData)).or_insert(());
            Arc::clone(&entry.key().0)
        }

        /// Every slot, copied out so that no user code runs under a shard lock.
        pub(crate) fn slots(&self) -> Vec<Arc<S>> {
            self.0
                .iter()
                .map(|entry| Arc::clone(&entry.key().0))
                .collect()
        }
    }
}

#[cfg(loom)]
mod index {
    use super::{Arc, Keyed};
    use loom::sync::Mutex;
    use std::collections::BTreeMap;

    /// A `BTreeMap`, not a `HashMap`: loom needs every run of a model to visit slots in the
    /// same order.
    pub(crate) struct Index<K, S>(Mutex<BTreeMap<K, Arc<S>>>);

    impl<K: Ord + Clone, S: Keyed<Key = K>> Index<K, S> {
        pub(crate) fn new() -> Self {
            Self(Mutex::new(BTreeMap::new()))
        }

        pub(crate) fn get(&self, key: &K) -> Option<Arc<S>> {
            self.0.lock().unwrap().get(key).cloned()
        }

        pub(crate) fn get_or_insert(&self, slot: Arc<S>) -> Arc<S> {
            let mut index = self.0.lock().unwrap();
            Arc::clone(index.entry(slot.key().clone()).or_insert(slot))
        }

        pub(crate) fn slots(&self) -> Vec<Arc<S>> {
            self.0.lock().unwrap().values().cloned().collect()
        }
    }
}
