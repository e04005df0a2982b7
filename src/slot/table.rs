//! The key index: finds or creates the slot of a key, and unlinks removed ones.
//!
//! A slot found here is used either under the pin it was looked up with, or through a count
//! taken while the index's lock still held it listed ([`SlotRef`]). The index owns its count
//! on each slot it lists, and gives it up when it unlinks a removed slot; it frees the slots
//! still listed when it is dropped.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::ptr::NonNull;

use super::{drop_caught, Record, Slot, SlotRef, REMOVED};
use crate::primitive::{AtomicU64, Guard, IdCounter, Ordering::SeqCst};

/// A slot's allocation, owned by the table while it lists it.
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
        // SAFETY: allocated in `new`, freed in `drop` or, once unlinked, by its last count.
        unsafe { self.0.as_ref() }
    }

    /// Unlinked: the index's ownership becomes its count, let go of here.
    fn unlinked(self) {
        let slot = std::mem::ManuallyDrop::new(self);
        slot.get().unref();
    }
}

impl<K, V> Drop for SlotBox<K, V> {
    /// A slot never published, or still listed when the table is dropped. A panicking
    /// `K::drop` is caught: the index drops its slots in a plain loop that a panic would stop,
    /// leaking the rest; and a slot never published is dropped as `get_or_create` returns,
    /// where a panic would leak the count it returns (Rust does not drop a return value when a
    /// local's destructor unwinds).
    fn drop(&mut self) {
        // SAFETY: allocated by `Box::leak` in `new`. Either it was never published, or the
        // table is being dropped, with no call in progress: no handle or transaction can hold
        // a count (they borrow the store), and a descriptor still naming it was forgotten and
        // is never used again.
        drop_caught(unsafe { Box::from_raw(self.0.as_ptr()) });
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
    /// The highest version reached by the removed keys unlinked so far (a tombstone's, without
    /// the bit): a key created after it starts one above. A removed key is unlinked before it is
    /// created again, and the floor is raised before the unlinking, so a key's versions never
    /// go back, even across its removal (no ABA on versions).
    floor: AtomicU64,
}

impl<K: Hash + Ord + Clone, V, S: BuildHasher + Clone> Table<K, V, S> {
    pub(crate) fn with_hasher(hasher: S) -> Self {
        Self {
            index: index::Index::with_hasher(hasher),
            created: AtomicU64::new(0),
            ids: IdCounter::new(),
            floor: AtomicU64::new(0),
        }
    }

    /// The slot listed for `key` (by any borrowed form of the key), for use under `pin`. It may
    /// be removed (a tombstone not unlinked yet).
    pub(crate) fn find<'g, Q>(&'g self, key: &Q, pin: &'g Guard) -> Option<&'g Slot<K, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Ord + ?Sized,
    {
        self.index.find(key, pin)
    }

    /// A counted reference to the slot listed for `key`, which may be removed.
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<SlotRef<'_, K, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Ord + ?Sized,
    {
        self.index.get(key)
    }

    /// A counted reference to the slot of `key`: the one listed, or a new one if none is or the
    /// one listed is removed (which this call unlinks). It may be removed by the time the
    /// caller reads it.
    pub(crate) fn get_or_create(&self, key: K) -> SlotRef<'_, K, V> {
        let mut new = SlotBox::new(self.ids.next(), key);
        loop {
            let (slot, unused) = self.index.get_or_insert(new, |slot| self.start(slot));
            let Some(unused) = unused else {
                return slot; // created
            };
            let pin = crate::primitive::pin();
            if !slot.load(&pin).removed() {
                return slot; // `unused` is freed: it was never listed
            }
            self.unlink(&slot, &pin);
            new = unused;
        }
    }

    /// Starts a new slot, under the index's lock on its key's shard, before it is listed: above
    /// the floor, and counted as created.
    fn start(&self, slot: &Slot<K, V>) {
        let floor = self.floor.load(SeqCst);
        if floor > 0 && !cfg!(stm_mutation = "no_floor") {
            let record = Box::new(Record {
                version: floor + 1,
                value: None,
            });
            let started = slot.restore(record);
            debug_assert!(started.is_ok(), "a new slot is empty");
        }
        self.created.fetch_add(1, SeqCst);
    }

    /// Unlinks `slot`, a removed one, if the index still lists it: the slot is freed once
    /// nobody counts it and no thread pinned now could still reach it.
    pub(crate) fn unlink(&self, slot: &Slot<K, V>, pin: &Guard) {
        self.raise_floor(slot, pin);
        self.index.unlink(slot);
    }

    fn raise_floor(&self, removed: &Slot<K, V>, pin: &Guard) {
        let tombstone = removed.load(pin);
        debug_assert!(tombstone.removed(), "only a removed key is unlinked");
        // Before the unlinking: a creator that no longer finds the key sees this floor.
        let version = tombstone.version() & !REMOVED;
        if self.floor.load(SeqCst) < version {
            self.floor.fetch_max(version, SeqCst);
        }
    }

    /// How many keys were created so far.
    pub(crate) fn created(&self) -> u64 {
        self.created.load(SeqCst)
    }

    /// Every slot listed, in no particular order, for use under `pin`.
    pub(crate) fn slots<'g>(&'g self, pin: &'g Guard) -> Vec<&'g Slot<K, V>> {
        self.index.slots(pin)
    }

    /// How many keys there are.
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }
}

#[cfg(not(loom))]
mod index {
    use super::{Guard, Slot, SlotBox, SlotRef};
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

        pub(super) fn find<'g, Q>(&'g self, key: &Q, _pin: &'g Guard) -> Option<&'g Slot<K, V>>
        where
            K: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            let slot = self.0.get(Borrowed::new(key))?.key().0;
            // SAFETY: listed after the caller pinned, so retired (if ever) after that pin began
            // and freed after it ends; or freed with the table, which 'g borrows.
            Some(unsafe { slot.as_ref() })
        }

        pub(super) fn get<Q>(&self, key: &Q) -> Option<SlotRef<'_, K, V>>
        where
            K: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            Some(self.0.get(Borrowed::new(key))?.key().get().add_ref())
        }

        pub(super) fn len(&self) -> usize {
            self.0.len()
        }

        /// The slot listed for `new`'s key, counted, with `new` back if it was not listed; or
        /// `new` itself, listed after `start` ran on it under the shard's lock.
        pub(super) fn get_or_insert(
            &self,
            new: SlotBox<K, V>,
            start: impl FnOnce(&Slot<K, V>),
        ) -> (SlotRef<'_, K, V>, Option<SlotBox<K, V>>) {
            match self.0.entry(new) {
                Entry::Occupied(found) => {
                    let slot = found.key().get().add_ref();
                    (slot, Some(found.into_key()))
                }
                Entry::Vacant(vacant) => {
                    start(vacant.key().get());
                    let slot = vacant.key().get().add_ref();
                    vacant.insert(());
                    (slot, None)
                }
            }
        }

        /// Unlinks `slot` if it is still listed, and lets go of the index's count on it.
        pub(super) fn unlink(&self, slot: &Slot<K, V>) {
            let listed = |b: &SlotBox<K, V>, _: &()| std::ptr::eq(b.get(), slot);
            if let Some((unlinked, ())) = self.0.remove_if(Borrowed::new(&slot.key), listed) {
                unlinked.unlinked();
            }
        }

        pub(super) fn slots<'g>(&'g self, _pin: &'g Guard) -> Vec<&'g Slot<K, V>> {
            // SAFETY: as in `find`.
            self.0
                .iter()
                .map(|e| unsafe { e.key().0.as_ref() })
                .collect()
        }
    }
}

#[cfg(loom)]
mod index {
    use super::{Guard, Slot, SlotBox, SlotRef};
    use loom::sync::Mutex;
    use std::borrow::Borrow;
    use std::collections::BTreeMap;
    use std::marker::PhantomData;

    /// A `BTreeMap`, not a `HashMap`: loom needs every run of a model to visit slots in the
    /// same order.
    pub(super) struct Index<K, V, S>(Mutex<BTreeMap<K, SlotBox<K, V>>>, PhantomData<S>);

    impl<K: Ord + Clone, V, S> Index<K, V, S> {
        pub(super) fn with_hasher(_: S) -> Self {
            Self(Mutex::new(BTreeMap::new()), PhantomData)
        }

        pub(super) fn find<'g, Q>(&'g self, key: &Q, _pin: &'g Guard) -> Option<&'g Slot<K, V>>
        where
            K: Borrow<Q>,
            Q: Ord + ?Sized,
        {
            let slot = self.0.lock().unwrap().get(key)?.0;
            // SAFETY: as in the `DashMap` index's `find`.
            Some(unsafe { slot.as_ref() })
        }

        pub(super) fn get<Q>(&self, key: &Q) -> Option<SlotRef<'_, K, V>>
        where
            K: Borrow<Q>,
            Q: Ord + ?Sized,
        {
            Some(self.0.lock().unwrap().get(key)?.get().add_ref())
        }

        pub(super) fn len(&self) -> usize {
            self.0.lock().unwrap().len()
        }

        pub(super) fn get_or_insert(
            &self,
            new: SlotBox<K, V>,
            start: impl FnOnce(&Slot<K, V>),
        ) -> (SlotRef<'_, K, V>, Option<SlotBox<K, V>>) {
            let mut index = self.0.lock().unwrap();
            if let Some(listed) = index.get(&new.get().key) {
                return (listed.get().add_ref(), Some(new));
            }
            start(new.get());
            let slot = new.get().add_ref();
            index.insert(new.get().key.clone(), new);
            (slot, None)
        }

        pub(super) fn unlink(&self, slot: &Slot<K, V>) {
            let mut index = self.0.lock().unwrap();
            if index
                .get(&slot.key)
                .is_some_and(|b| std::ptr::eq(b.get(), slot))
            {
                let unlinked = index.remove(&slot.key).expect("listed");
                drop(index);
                unlinked.unlinked();
            }
        }

        pub(super) fn slots<'g>(&'g self, _pin: &'g Guard) -> Vec<&'g Slot<K, V>> {
            let index = self.0.lock().unwrap();
            // SAFETY: as in `find`.
            index.values().map(|b| unsafe { b.0.as_ref() }).collect()
        }
    }
}
