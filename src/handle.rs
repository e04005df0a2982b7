use crate::order;
use crate::protocol::{self, Part, Write};
use crate::shared::{Home, Shared};
use crate::slot::{Record, Slot, SlotRef};
use crate::snapshot;
use crate::Error;
use std::borrow::Borrow;
use std::fmt;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

/// One key read from a [`Store`](crate::Store): its version and a copy of its value as read,
/// and a pending change made with [`set`](Value::set) or [`clear`](Value::clear).
///
/// The handle borrows its store (it cannot outlive it) and always commits to it.
///
/// ```
/// let store = stm_store::Store::new();
/// let mut greeting = store.usevar("greeting")?;
/// greeting.set("hello");
/// greeting.commit()?;
/// assert_eq!((greeting.version(), greeting.value()), (1, Some(&"hello")));
/// greeting.set("goodbye"); // a committed handle is clean: use it again
/// greeting.commit()?;
/// assert_eq!(greeting.version(), 2);
/// # Ok::<(), stm_store::Error>(())
/// ```
pub struct Value<'s, K, V> {
    /// The store, as commits reach it; its shared part's address says which store this handle
    /// came from (`Store::set` refuses handles of another store).
    store: &'s dyn Home<K, V>,
    slot: SlotRef<'s, K, V>,
    version: u64,
    value: Option<V>,
    /// What to write at the next commit.
    pending: Option<Write<V>>,
}

impl<'s, K, V> Value<'s, K, V> {
    pub(crate) fn new(
        store: &'s dyn Home<K, V>,
        slot: SlotRef<'s, K, V>,
        read: Option<&Record<V>>,
    ) -> Self
    where
        V: Clone,
    {
        let mut value = Self {
            store,
            slot,
            version: 0,
            value: None,
            pending: None,
        };
        snapshot::Read::take(&mut value, read);
        value
    }

    /// Whether this handle came from the store that `store` belongs to.
    pub(crate) fn came_from(&self, store: &Shared) -> bool {
        std::ptr::eq(self.store.shared(), store)
    }

    pub(crate) fn slot_id(&self) -> u64 {
        self.slot.id
    }

    /// Whether the record read was a tombstone: the key was removed after it was looked up.
    pub(crate) fn read_removed(&self) -> bool {
        self.version & crate::slot::REMOVED != 0
    }

    /// Moves this handle, not read yet, to `slot`: the key's new slot (`Store::using`).
    pub(crate) fn move_to(&mut self, slot: SlotRef<'s, K, V>) {
        self.slot = slot;
    }

    /// The key.
    pub fn key(&self) -> &K {
        &self.slot.key
    }

    /// The version read (0 for a key never written, in a store that never removed a key); after a successful commit that wrote this
    /// handle, the version it wrote.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The pending value after [`set`](Value::set) or [`clear`](Value::clear); otherwise the
    /// value read. `None` means "no value".
    pub fn value(&self) -> Option<&V> {
        match &self.pending {
            Some(write) => write.value(),
            None => self.value.as_ref(),
        }
    }

    /// Sets the value to write at the next commit.
    pub fn set(&mut self, value: V) {
        self.pending = Some(Write::Value(Some(value)));
    }

    /// Sets "no value" as the value to write at the next commit (a write, not an undo).
    ///
    /// ```
    /// let store = stm_store::Store::new();
    /// let mut v = store.usevar("k")?;
    /// v.set(1);
    /// v.commit()?;
    /// v.clear();
    /// v.commit()?;
    /// assert_eq!(store.dump(), vec![("k", 2, None)]);
    /// # Ok::<(), stm_store::Error>(())
    /// ```
    pub fn clear(&mut self) {
        self.pending = Some(Write::Value(None));
    }

    /// Marks the key for removal at the next commit (which replaces any `set` or `clear`;
    /// those replace it too). The removal lands with the rest of its commit, atomically: from
    /// then on the key is absent ([`Store::get`](crate::Store::get) answers `None`, and it is
    /// in no `dump` or snapshot) and its memory is reclaimed. Reading the key again creates a
    /// new key, whose versions start above the removed one's.
    ///
    /// After the removal commits, this handle holds the removed key: its version is the
    /// removal's, with no value, and committing it again answers
    /// [`Error::ConcurrentUpdate`] (read the key again instead).
    ///
    /// ```
    /// let store = stm_store::Store::new();
    /// let mut accounts = store.using(["alice", "bob"])?;
    /// accounts["alice"].set(0);
    /// accounts["bob"].set(100);
    /// accounts.commit()?;
    /// // Close alice's account, moving its balance to bob, in one commit.
    /// let mut accounts = store.using(["alice", "bob"])?;
    /// let balance = accounts["alice"].value().copied().unwrap_or(0);
    /// accounts["bob"].set(100 + balance);
    /// accounts["alice"].remove();
    /// accounts.commit()?;
    /// assert_eq!(store.get("alice"), None);
    /// assert_eq!(store.dump(), vec![("bob", 2, Some(100))]);
    /// # Ok::<(), stm_store::Error>(())
    /// ```
    pub fn remove(&mut self) {
        self.pending = Some(Write::Remove);
    }

    /// Commits this handle: writes the pending value with version = read version + 1, or, if
    /// nothing is pending, checks that the key is unchanged.
    ///
    /// # Errors
    ///
    /// [`Error::ConcurrentUpdate`] if the key was committed by someone else since it was read;
    /// then nothing was written and the handle is unchanged.
    pub fn commit(&mut self) -> Result<(), Error>
    where
        V: Clone,
    {
        self.commit_replacing().map(drop)
    }

    /// The value read (after a commit that wrote: the value written), moved out of the handle.
    pub(crate) fn into_read(mut self) -> Option<V> {
        self.value.take()
    }

    /// [`commit`](Value::commit), handing back the value read that the write replaced instead
    /// of dropping it (`Store::insert` returns it).
    pub(crate) fn commit_replacing(&mut self) -> Result<Option<V>, Error>
    where
        V: Clone,
    {
        protocol::commit(self.store, std::iter::once(self.part()))?;
        Ok(self.committed())
    }

    fn part(&self) -> Part<'_, 's, K, V> {
        Part {
            slot: &self.slot,
            version: self.version,
            write: self.pending.as_ref(),
        }
    }

    /// After a successful commit: the written value becomes the read one; returns the value it
    /// replaces, for the caller to drop.
    #[must_use]
    fn committed(&mut self) -> Option<V> {
        let written = match self.pending.take()? {
            Write::Value(value) => value,
            Write::Remove => None,
        };
        self.version += 1;
        std::mem::replace(&mut self.value, written)
    }
}

impl<'g, K, V: Clone> snapshot::Read<'g, K, V> for Value<'_, K, V> {
    fn slot(&self) -> &Slot<K, V> {
        &self.slot
    }

    fn take(&mut self, record: Option<&'g Record<V>>) {
        self.version = snapshot::version(record);
        self.value = record.and_then(|record| record.value.clone());
    }

    fn version(&self) -> u64 {
        self.version
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for Value<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Value")
            .field("key", self.key())
            .field("version", &self.version())
            .field("value", &self.value())
            .field("pending", &self.pending.is_some())
            .finish()
    }
}

/// Several keys read together by [`Store::using`](crate::Store::using): one [`Value`] per
/// distinct key, in key order, committed all at once or not at all.
///
/// Index it by key to reach a value; indexing with a key that is not in the collection panics,
/// as a map's index does ([`get`](Collection::get) returns an `Option` instead).
///
/// ```
/// let store = stm_store::Store::new();
/// let mut c = store.using(["a", "b"])?;
/// c["a"].set(1);
/// c["b"].set(2);
/// c.commit()?;
/// let c = store.using(["a", "b"])?;
/// assert_eq!(c.keys().copied().collect::<Vec<_>>(), ["a", "b"]);
/// assert_eq!(c["b"].value(), Some(&2));
/// assert!(c.get("z").is_none());
/// # Ok::<(), stm_store::Error>(())
/// ```
pub struct Collection<'s, K, V> {
    /// Sorted by key.
    values: Vec<Value<'s, K, V>>,
    /// The handles' slots, counted again while `&mut` iteration lends out their keys (a
    /// handle lent out mutably could be swapped away and dropped, and its slot freed with it).
    lent: Vec<SlotRef<'s, K, V>>,
}

impl<'s, K, V> Collection<'s, K, V> {
    pub(crate) fn new(mut values: Vec<Value<'s, K, V>>) -> Self
    where
        K: Ord,
    {
        order::sort_by(&mut values, |a, b| a.key().cmp(b.key()));
        Self {
            values,
            lent: Vec::new(),
        }
    }

    /// Whether every handle in it came from the store that `store` belongs to (only
    /// `std::mem::swap` can mix them).
    pub(crate) fn all_from(&self, store: &Shared) -> bool {
        self.values.iter().all(|value| value.came_from(store))
    }

    /// The handle of `key`, if the collection has it.
    pub fn get<Q>(&self, key: &Q) -> Option<&Value<'s, K, V>>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.position(key).map(|at| &self.values[at])
    }

    /// The handle of `key`, mutably, if the collection has it.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut Value<'s, K, V>>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.position(key).map(|at| &mut self.values[at])
    }

    /// The number of distinct keys.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the collection has no keys.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The keys, in key order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.values.iter().map(Value::key)
    }

    /// The keys and their handles, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &Value<'s, K, V>)> {
        self.into_iter()
    }

    /// The handles, mutably, in key order.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Value<'s, K, V>> {
        self.values.iter_mut()
    }

    /// The keys and their handles, mutably, in key order.
    ///
    /// ```
    /// let store = stm_store::Store::new();
    /// let mut c = store.using(["a", "b"])?;
    /// for (key, value) in &mut c {
    ///     value.set(key.len());
    /// }
    /// c.commit()?;
    /// let sum: usize = (&c).into_iter().map(|(_, v)| v.value().unwrap()).sum();
    /// assert_eq!(sum, 2);
    /// # Ok::<(), stm_store::Error>(())
    /// ```
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut Value<'s, K, V>)> {
        self.into_iter()
    }

    /// Commits every handle at once: the ones that were set or cleared are written (version =
    /// read version + 1), the others are only checked to be unchanged. An empty collection, or
    /// one with nothing set, commits by validating.
    ///
    /// # Errors
    ///
    /// [`Error::ConcurrentUpdate`] if any key was committed by someone else since it was read;
    /// then nothing was written and every handle is unchanged.
    ///
    /// # Panics
    ///
    /// If the collection holds handles of two stores, or two handles of one key (only
    /// `std::mem::swap` between collections can make either).
    #[track_caller]
    pub fn commit(&mut self) -> Result<(), Error>
    where
        V: Clone,
    {
        let Some(store) = self.check_one_store() else {
            return Ok(()); // empty: nothing to validate
        };
        protocol::commit(store, self.values.iter().map(Value::part))?;
        self.committed();
        Ok(())
    }

    /// The one store this collection's handles came from (`None`: empty).
    #[track_caller]
    fn check_one_store(&self) -> Option<&'s dyn Home<K, V>> {
        let store = self.values.first()?.store;
        assert!(
            self.all_from(store.shared()),
            "Collection::commit: this collection holds handles of different stores (moved in with std::mem::swap); commit each store's handles separately"
        );
        Some(store)
    }

    /// After a successful commit. A panicking `V::drop` of a replaced copy cannot leave some
    /// handles updated and others not: every handle is updated first, then the first panic
    /// goes on.
    fn committed(&mut self) {
        let mut panic = None;
        for value in &mut self.values {
            let replaced = value.committed();
            if let Err(caught) = catch_unwind(AssertUnwindSafe(move || drop(replaced))) {
                panic.get_or_insert(caught);
            }
        }
        if let Some(panic) = panic {
            resume_unwind(panic);
        }
    }

    fn position<Q>(&self, key: &Q) -> Option<usize>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let found = self
            .values
            .binary_search_by(|value| value.key().borrow().cmp(key));
        // `Eq` has the last word: a broken `Ord` may hide a key from the binary search, or
        // point it at another key.
        found
            .ok()
            .filter(|&at| self.values[at].key().borrow() == key)
            .or_else(|| {
                self.values
                    .iter()
                    .position(|value| value.key().borrow() == key)
            })
    }

    /// Starts a commit through the multi-key protocol, claims its first `claims` keys, and
    /// stops there, as a committer stalled mid-commit would. For tests of the protocol's
    /// progress guarantee; other threads may finish (help) the commit meanwhile.
    #[cfg(any(loom, feature = "test-hooks"))]
    pub fn commit_paused(&mut self, claims: usize) -> Paused<'_, 's, K, V>
    where
        V: Clone,
    {
        let commit = self.check_one_store().map(|store| {
            let parts = self.values.iter().map(Value::part);
            (store, protocol::Paused::new(store.shared(), parts, claims))
        });
        Paused {
            commit,
            collection: self,
        }
    }
}

/// A commit stopped after claiming some keys (see [`Collection::commit_paused`]). Dropping it
/// without resuming aborts the commit if nobody has decided it yet; forgetting it
/// (`mem::forget`) leaks its descriptor, and other threads can still finish it.
#[cfg(any(loom, feature = "test-hooks"))]
pub struct Paused<'a, 's, K, V> {
    /// `None` for an empty collection: nothing to commit.
    commit: Option<PausedCommit<'s, K, V>>,
    collection: &'a mut Collection<'s, K, V>,
}

/// A paused commit, and the store it will finish in.
#[cfg(any(loom, feature = "test-hooks"))]
type PausedCommit<'s, K, V> = (&'s dyn Home<K, V>, protocol::Paused<K, V>);

#[cfg(any(loom, feature = "test-hooks"))]
impl<K, V> Paused<'_, '_, K, V> {
    /// Finishes the commit and reports it, as [`Collection::commit`] would have.
    pub fn resume(self) -> Result<(), Error> {
        if let Some((store, commit)) = self.commit {
            commit.resume(store, self.collection.values.iter().map(Value::part))?;
        }
        self.collection.committed();
        Ok(())
    }
}

impl<'s, K, V, Q> std::ops::Index<&Q> for Collection<'s, K, V>
where
    K: Borrow<Q>,
    Q: Ord + ?Sized,
{
    type Output = Value<'s, K, V>;

    /// # Panics
    ///
    /// If `key` is not in the collection.
    #[track_caller]
    fn index(&self, key: &Q) -> &Value<'s, K, V> {
        self.get(key).expect(NOT_IN_COLLECTION)
    }
}

impl<'s, K, V, Q> std::ops::IndexMut<&Q> for Collection<'s, K, V>
where
    K: Borrow<Q>,
    Q: Ord + ?Sized,
{
    #[track_caller]
    fn index_mut(&mut self, key: &Q) -> &mut Value<'s, K, V> {
        self.get_mut(key).expect(NOT_IN_COLLECTION)
    }
}

impl<'a, 's, K, V> IntoIterator for &'a Collection<'s, K, V> {
    type Item = (&'a K, &'a Value<'s, K, V>);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, Value<'s, K, V>>,
        fn(&'a Value<'s, K, V>) -> (&'a K, &'a Value<'s, K, V>),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.values.iter().map(|value| (value.key(), value))
    }
}

impl<'a, 's, K, V> IntoIterator for &'a mut Collection<'s, K, V> {
    type Item = (&'a K, &'a mut Value<'s, K, V>);
    type IntoIter = IterMut<'a, 's, K, V>;

    fn into_iter(self) -> IterMut<'a, 's, K, V> {
        self.lent.clear();
        self.lent
            .extend(self.values.iter().map(|value| value.slot.clone()));
        IterMut {
            keys: self.lent.iter(),
            values: self.values.iter_mut(),
        }
    }
}

/// The keys of a [`Collection`] and their handles, mutably, in key order (`&mut Collection`'s
/// iterator).
pub struct IterMut<'a, 's, K, V> {
    keys: std::slice::Iter<'a, SlotRef<'s, K, V>>,
    values: std::slice::IterMut<'a, Value<'s, K, V>>,
}

impl<'a, 's, K, V> Iterator for IterMut<'a, 's, K, V> {
    type Item = (&'a K, &'a mut Value<'s, K, V>);

    fn next(&mut self) -> Option<Self::Item> {
        Some((&self.keys.next()?.key, self.values.next()?))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.values.size_hint()
    }
}

impl<K, V> ExactSizeIterator for IterMut<'_, '_, K, V> {}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for IterMut<'_, '_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IterMut")
            .field("remaining", &self.values.len())
            .finish()
    }
}

const NOT_IN_COLLECTION: &str =
    "key not in this Collection: index only by keys passed to `using` (or use `get`)";

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for Collection<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.values).finish()
    }
}
