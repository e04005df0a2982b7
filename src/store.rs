use std::fmt;
use std::hash::Hash;

use crate::handle::{Collection, StoreId, Value};
use crate::primitive::{Arc, Index};
use crate::record::{Rec, Slot};
use crate::{order, snapshot, Error};

/// A slot with the record it held at a snapshot's instant.
type Keyed<K, V> = (Arc<Slot<K, V>>, Rec<K, V>);

/// A store of versioned key-value pairs with optimistic, atomic multi-key commits.
///
/// Read keys into handles ([`usevar`](Store::usevar), [`using`](Store::using)), change them,
/// and commit: the commit lands atomically or fails with [`Error::ConcurrentUpdate`] (someone
/// committed a key you read: re-read and redo). No lock is taken on the read or commit path;
/// a thread stopped in the middle of a commit never holds anybody else up.
///
/// ```
/// use stm_store::Store;
///
/// let store = Store::new();
/// let mut greeting = store.usevar("greeting")?;
/// assert_eq!((greeting.version(), greeting.value()), (0, None));
/// greeting.set("hello");
/// greeting.commit()?;
/// assert_eq!(store.dump(), vec![("greeting", 1, Some("hello"))]);
/// # Ok::<(), stm_store::Error>(())
/// ```
pub struct Store<K, V> {
    id: StoreId,
    index: Index<K, Slot<K, V>>,
}

impl<K, V> Store<K, V>
where
    K: Ord + Hash + Clone + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// An empty store.
    pub fn new() -> Self {
        Self {
            id: StoreId::new(),
            index: Index::new(),
        }
    }

    /// Reads one key into a handle, creating the key (version 0, no value) if it is new.
    ///
    /// The read never waits for a commit in progress: it sees the last committed record.
    ///
    /// ```
    /// let store = stm_store::Store::new();
    /// let mut counter = store.usevar("counter")?;
    /// counter.set(counter.value().copied().unwrap_or(0) + 1);
    /// counter.commit()?;
    /// assert_eq!(store.usevar("counter")?.value(), Some(&1));
    /// # Ok::<(), stm_store::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// None today; the `Result` leaves room for [`Error::BusyRetry`].
    pub fn usevar(&self, key: K) -> Result<Value<K, V>, Error> {
        let slot = self.slot(key);
        let read = slot.read();
        Ok(Value::new(self.id, slot, read))
    }

    /// Reads several keys into a [`Collection`]: a consistent snapshot (every record was the
    /// committed one at a single instant). Creates the keys that are new; duplicates are merged.
    ///
    /// ```
    /// let store = stm_store::Store::new();
    /// let mut accounts = store.using(["alice", "bob", "alice"])?;
    /// assert_eq!(accounts.len(), 2);
    /// accounts["alice"].set(10);
    /// accounts["bob"].set(20);
    /// accounts.commit()?; // both land, or neither
    /// # Ok::<(), stm_store::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// None today; the `Result` leaves room for [`Error::BusyRetry`].
    pub fn using<I: IntoIterator<Item = K>>(&self, keys: I) -> Result<Collection<K, V>, Error> {
        let mut slots: Vec<_> = keys.into_iter().map(|key| self.slot(key)).collect();
        slots.sort_unstable_by_key(|slot| slot.id);
        slots.dedup_by_key(|slot| slot.id);
        let records = snapshot::read_all(&slots);
        let values = slots
            .into_iter()
            .zip(records)
            .map(|(slot, read)| Value::new(self.id, slot, read))
            .collect();
        Ok(Collection::new(self.id, values))
    }

    /// Commits one handle: the same as [`Value::commit`].
    ///
    /// # Panics
    ///
    /// If `value` came from another store.
    pub fn set(&self, value: &mut Value<K, V>) -> Result<(), Error> {
        self.check_origin(value.store_id() == self.id, "Store::set");
        value.commit()
    }

    /// Commits a collection: the same as [`Collection::commit`].
    ///
    /// # Panics
    ///
    /// If `values` came from another store.
    pub fn set_values(&self, values: &mut Collection<K, V>) -> Result<(), Error> {
        self.check_origin(values.all_from(self.id), "Store::set_values");
        values.commit()
    }

    /// Every key with its version and value, in key order: a consistent snapshot of the whole
    /// store, including keys that were read but never written (version 0, no value).
    ///
    /// ```
    /// let store = stm_store::Store::new();
    /// store.usevar("b")?;
    /// let mut a = store.usevar("a")?;
    /// a.set(1);
    /// a.commit()?;
    /// assert_eq!(store.dump(), vec![("a", 1, Some(1)), ("b", 0, None)]);
    /// # Ok::<(), stm_store::Error>(())
    /// ```
    pub fn dump(&self) -> Vec<(K, u64, Option<V>)>
    where
        V: Clone,
    {
        self.snapshot()
            .into_iter()
            .map(|(slot, record)| (slot.key.clone(), record.version(), record.value().cloned()))
            .collect()
    }

    /// Every slot and its record at one instant, in key order. The key set is checked like the
    /// versions: it was the same before and after the records were read, so it was the key set
    /// at that instant too (keys are never removed).
    fn snapshot(&self) -> Vec<Keyed<K, V>> {
        let mut slots = self.slots_by_id();
        loop {
            let records = snapshot::read_all(&slots);
            let after = self.slots_by_id();
            // Keys are never removed, so the same count means the same key set.
            if after.len() == slots.len() {
                let mut pairs: Vec<_> = slots.into_iter().zip(records).collect();
                order::sort_by(&mut pairs, |(a, _), (b, _)| a.key.cmp(&b.key));
                return pairs;
            }
            slots = after;
        }
    }

    fn slots_by_id(&self) -> Vec<Arc<Slot<K, V>>> {
        let mut slots = self.index.slots();
        slots.sort_unstable_by_key(|slot| slot.id);
        slots
    }

    fn slot(&self, key: K) -> Arc<Slot<K, V>> {
        if let Some(slot) = self.index.get(&key) {
            return slot;
        }
        self.index.get_or_insert(Arc::new(Slot::new(key)))
    }

    fn check_origin(&self, ours: bool, call: &str) {
        assert!(
            ours,
            "{call}: this handle belongs to another Store; a handle always commits to the store it was read from"
        );
    }
}

impl<K, V> Default for Store<K, V>
where
    K: Ord + Hash + Clone + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

/// Shows the same consistent snapshot as [`Store::dump`], as a map from key to
/// `(version, value)`.
impl<K, V> fmt::Debug for Store<K, V>
where
    K: Ord + Hash + Clone + Send + Sync + 'static + fmt::Debug,
    V: Send + Sync + 'static + fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snapshot = self.snapshot();
        let entries = snapshot
            .iter()
            .map(|(slot, record)| (&slot.key, (record.version(), record.value())));
        f.debug_map().entries(entries).finish()
    }
}
