//! The key index: finds or creates the slot of a key. Each slot is allocated once and freed
//! with the table, so a reference to it lives as long as the table borrow (`Value<'s, ..>`).

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::ptr::NonNull;

use super::Slot;
use crate::primitive::{AtomicU64, IdCounter, Ordering::SeqCst};

/// A slot's allocation, owned by the table.
struct SlotBox<K, V>(NonNull<Slot<K, V>>);

// SAFETY: a `SlotBox` owns its slot as a `Box` would; the slot is shared between threads by
// design (atomics and immutable fields only).
unsafe impl<K: Send + Sync, V: Send + Sync> Send for SlotBox<K, V> {}
// SAFETY: as above.
unsafe impl<K: Send + Sync, V: Send + Sync> Sync for SlotBox<K, V> {}

impl<K, V> SlotBox<K, V> {
    fn new(id: u64, key: K) -> Self {
        Self(NonNull::from(Box::leak(Box::new(Slot::new(id, key)))))
    }

    fn get(&self) -> &Slot<K, V> {
        // SAFETY: allocated in `new`, freed only in `drop`.
        unsafe { self.0.as_ref() }
    }
}

impl<K, V> Drop for SlotBox<K, V> {
    fn drop(&mut self) {
        // SAFETY: allocated by `Box::leak` in `new`; dropped once, with the table.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

pub(crate) struct Table<K, V, S> {
    index: index::Index<K, V, S>,
    /// Counts the keys created, inside the index's lock on the new key's shard: a listing of
    /// the index that starts after reading it holds every key counted so far.
    created: AtomicU64,
    /// Slot ids: per store (commits claim one store's slots), so that loom models, which make
    /// a store per execution, see the same ids in every execution.
    ids: IdCounter,
}

impl<K: Hash + Ord + Clone, V, S: BuildHasher + Clone> Table<K, V, S> {
    pub(crate) fn with_hasher(hasher: S) -> Self {
        Self {
            index: index::Index::with_hasher(hasher),
            created: AtomicU64::new(0),
            ids: IdCounter::new(),
        }
    }

    /// The slot of `key`, if it exists (by any borrowed form of the key).
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&Slot<K, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Ord + ?Sized,
    {
        self.index.get(key)
    }

    /// The slot of `key`, created if it is new.
    pub(crate) fn get_or_create(&self, key: K) -> &Slot<K, V> {
        self.index
            .get_or_insert(SlotBox::new(self.ids.next(), key), || {
                self.created.fetch_add(1, SeqCst);
            })
    }

    /// How many keys were created so far.
    pub(crate) fn created(&self) -> u64 {
        self.created.load(SeqCst)
    }

    /// Every slot, in no particular order.
    pub(crate) fn slots(&self) -> Vec<&Slot<K, V>> {
        self.index.slots()
    }

    /// How many keys there are.
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }
}

#[cfg(not(loom))]
mod index {
    use super::{Slot, SlotBox};
    use dashmap::mapref::entry::Entry;
    use dashmap::DashMap;
    use std::borrow::Borrow;
    use std::hash::{BuildHasher, Hash, Hasher};

    /// A `DashMap` that stores each slot once, found by its key (no copy of the key beside
    /// it: 8 bytes an entry).
    pub(super) struct Index<K, V, S>(DashMap<SlotBox<K, V>, (), S>);

    /// A borrowed form `Q` of the key, to look slots up by (`K: Borrow<Q>`). A `SlotBox` cannot
    /// borrow as every such `Q` directly: that impl would overlap `impl Borrow<T> for T`.
    #[repr(transparent)]
    struct Borrowed<Q: ?Sized>(Q);

    impl<Q: ?Sized> Borrowed<Q> {
        fn new(key: &Q) -> &Self {
            // SAFETY: `Borrowed<Q>` is `repr(transparent)` over `Q`, so the two references have
            // the same layout and metadata, and the lifetime is carried over.
            unsafe { &*(key as *const Q as *const Self) }
        }
    }

    impl<Q: Hash + ?Sized> Hash for Borrowed<Q> {
        fn hash<H: Hasher>(&self, state: &mut H) {
            self.0.hash(state); // as `K` hashes: `Borrow` requires it
        }
    }

    impl<Q: Eq + ?Sized> PartialEq for Borrowed<Q> {
        fn eq(&self, other: &Self) -> bool {
            self.0 == other.0
        }
    }

    impl<Q: Eq + ?Sized> Eq for Borrowed<Q> {}

    impl<K: Hash, V> Hash for SlotBox<K, V> {
        fn hash<H: Hasher>(&self, state: &mut H) {
            self.get().key.hash(state);
        }
    }

    impl<K: Eq, V> PartialEq for SlotBox<K, V> {
        fn eq(&self, other: &Self) -> bool {
            self.get().key == other.get().key
        }
    }

    impl<K: Eq, V> Eq for SlotBox<K, V> {}

    impl<K: Borrow<Q>, V, Q: ?Sized> Borrow<Borrowed<Q>> for SlotBox<K, V> {
        fn borrow(&self) -> &Borrowed<Q> {
            Borrowed::new(self.get().key.borrow())
        }
    }

    impl<K: Hash + Eq, V, S: BuildHasher + Clone> Index<K, V, S> {
        pub(super) fn with_hasher(hasher: S) -> Self {
            // More shards than dashmap's default (4 per core): a lookup takes a shard's read
            // lock, and threads sharing a shard bounce its cache line between cores. Asked
            // once: `available_parallelism` reads cgroup files on every call.
            static SHARDS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
            let shards = *SHARDS.get_or_init(|| {
                let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
                (cores * 32).next_power_of_two()
            });
            Self(DashMap::with_capacity_and_hasher_and_shard_amount(
                0, hasher, shards,
            ))
        }

        pub(super) fn get<Q>(&self, key: &Q) -> Option<&Slot<K, V>>
        where
            K: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            let slot = self.0.get(Borrowed::new(key))?.key().0;
            // SAFETY: the slot's allocation outlives the table borrow (`SlotBox`).
            Some(unsafe { slot.as_ref() })
        }

        pub(super) fn len(&self) -> usize {
            self.0.len()
        }

        pub(super) fn get_or_insert(
            &self,
            new: SlotBox<K, V>,
            created: impl FnOnce(),
        ) -> &Slot<K, V> {
            let slot = match self.0.entry(new) {
                Entry::Occupied(found) => found.key().0,
                Entry::Vacant(vacant) => {
                    created(); // under the shard's lock: see `Table::created`
                    vacant.insert(()).key().0
                }
            };
            // SAFETY: as in `get`.
            unsafe { slot.as_ref() }
        }

        pub(super) fn slots(&self) -> Vec<&Slot<K, V>> {
            // SAFETY: as in `get`.
            self.0
                .iter()
                .map(|e| unsafe { e.key().0.as_ref() })
                .collect()
        }
    }
}

#[cfg(loom)]
mod index {
    use super::{Slot, SlotBox};
    use loom::sync::Mutex;
    use std::collections::BTreeMap;
    use std::marker::PhantomData;

    /// A `BTreeMap`, not a `HashMap`: loom needs every run of a model to visit slots in the
    /// same order.
    pub(super) struct Index<K, V, S>(Mutex<BTreeMap<K, SlotBox<K, V>>>, PhantomData<S>);

    impl<K: Ord + Clone, V, S> Index<K, V, S> {
        pub(super) fn with_hasher(_: S) -> Self {
            Self(Mutex::new(BTreeMap::new()), PhantomData)
        }

        pub(super) fn get<Q>(&self, key: &Q) -> Option<&Slot<K, V>>
        where
            K: std::borrow::Borrow<Q>,
            Q: Ord + ?Sized,
        {
            let slot = self.0.lock().unwrap().get(key)?.0;
            // SAFETY: the slot's allocation outlives the table borrow (`SlotBox`).
            Some(unsafe { slot.as_ref() })
        }

        pub(super) fn len(&self) -> usize {
            self.0.lock().unwrap().len()
        }

        pub(super) fn get_or_insert(
            &self,
            new: SlotBox<K, V>,
            created: impl FnOnce(),
        ) -> &Slot<K, V> {
            let mut index = self.0.lock().unwrap();
            let key = new.get().key.clone();
            let slot = index
                .entry(key)
                .or_insert_with(|| {
                    created();
                    new
                })
                .0;
            // SAFETY: as in `get`.
            unsafe { slot.as_ref() }
        }

        pub(super) fn slots(&self) -> Vec<&Slot<K, V>> {
            let index = self.0.lock().unwrap();
            // SAFETY: as in `get`.
            index.values().map(|b| unsafe { b.0.as_ref() }).collect()
        }
    }
}
