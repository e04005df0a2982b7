use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::ops::RangeBounds;

use crate::handle::{Collection, Value};
use crate::primitive::{pin, Guard};
use crate::shared::{Home, Shared};
use crate::slot::{OnceBox, Record, Shelf, Slot, SlotRef, Table};
use crate::snapshot::{self, version};
use crate::stats::Stats;
use crate::tx::{refuse_nested, Transaction, Tx, TxError};
use crate::view::Snapshot;
use crate::{order, Error};

/// The hasher a store uses unless told otherwise: fast, and seeded per process.
pub type DefaultHasher = foldhash::fast::RandomState;

/// One row of [`Store::dump`]: key, version, value.
type Row<K, V> = (K, u64, Option<V>);

/// A slot and the record a snapshot (`dump`, `snapshot`) read there.
pub(crate) type Found<'g, K, V> = (&'g Slot<K, V>, Option<&'g Record<V>>);

impl<'g, K, V> snapshot::Read<'g, K, V> for Found<'g, K, V> {
    fn slot(&self) -> &Slot<K, V> {
        self.0
    }

    fn take(&mut self, record: Option<&'g Record<V>>) {
        self.1 = record;
    }

    fn version(&self) -> u64 {
        version(self.1)
    }
}

/// A store of versioned key-value pairs with optimistic, atomic multi-key commits.
///
/// Read keys into handles ([`usevar`](Store::usevar), [`using`](Store::using)), change them,
/// and commit: the commit lands atomically or fails with [`Error::ConcurrentUpdate`] (someone
/// committed a key you read: re-read and redo). No lock is taken on the read or commit path;
/// a thread stopped in the middle of a commit never holds anybody else up.
///
/// `S` is the key index's hasher ([`DefaultHasher`] unless you pass one to
/// [`with_hasher`](Store::with_hasher)).
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
pub struct Store<K, V, S = DefaultHasher> {
    /// What handles and transactions reach besides the slots: waiters, counters.
    shared: Shared,
    table: Table<K, V, S>,
    /// Each whole-store snapshot (`dump`, `snapshot`) asks the threads that create keys for help
    /// here (see `snapshot_with_help`).
    dumps: Shelf<DumpRequest<K, V>>,
}

struct DumpRequest<K, V> {
    rows: OnceBox<Vec<Row<K, V>>>,
}

impl<K, V> Store<K, V>
where
    K: Ord + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// An empty store.
    pub fn new() -> Self {
        Self::with_hasher(DefaultHasher::default())
    }
}

impl<K, V, S> Store<K, V, S>
where
    K: Ord + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync,
{
    /// An empty store whose key index hashes with `hasher`.
    ///
    /// ```
    /// let store: stm_store::Store<u64, u64, std::hash::RandomState> =
    ///     stm_store::Store::with_hasher(std::hash::RandomState::new());
    /// assert!(store.dump().is_empty());
    /// ```
    pub fn with_hasher(hasher: S) -> Self {
        Self {
            shared: Shared::new(),
            table: Table::with_hasher(hasher),
            dumps: Shelf::new(),
        }
    }

    /// Reads one key into a handle, creating the key (version 0, no value; above the versions of
    /// removed keys once keys were removed, contract point 23) if it is new.
    ///
    /// The read never waits for a commit in progress: it sees the last committed record and
    /// copies its value out (`V::clone`; use `Arc<T>` for large values).
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
    pub fn usevar(&self, key: K) -> Result<Value<'_, K, V>, Error> {
        let pin = pin();
        let (slot, record) = self.live(self.slot(key), &pin);
        Ok(Value::new(self, slot, record))
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
    pub fn using<I: IntoIterator<Item = K>>(&self, keys: I) -> Result<Collection<'_, K, V>, Error> {
        let mut values: Vec<_> = keys
            .into_iter()
            .map(|key| Value::new(self, self.slot(key), None))
            .collect();
        let pin = pin();
        loop {
            values.sort_unstable_by_key(|value| value.slot_id());
            values.dedup_by_key(|value| value.slot_id());
            snapshot::read_all(&pin, &mut values, &self.shared);
            // A key removed since it was looked up is created again, and all are read again.
            let mut removed = false;
            for value in values.iter_mut().filter(|value| value.read_removed()) {
                value.move_to(self.create(value.key().clone()));
                removed = true;
            }
            if !removed {
                return Ok(Collection::new(values));
            }
        }
    }

    /// Runs `f` as one transaction and returns its result: the way to write new code.
    ///
    /// The closure reads and writes keys through [`Tx`] as it goes (reads see its own writes)
    /// and passes every [`TxError`] up with `?` (never `unwrap` one: see [`Tx`]). When it
    /// returns, its reads are validated and its writes land, all at one instant; if some key it
    /// read had changed, **the closure runs again**, after a short backoff, until it commits. So
    /// it may run more than once: keep side effects out of it (or make them idempotent), and
    /// return what you computed.
    ///
    /// Within one run, every read is consistent with all the earlier ones (opacity): an
    /// invariant that every writer keeps always holds in what the closure sees. [`Tx::retry`]
    /// waits until a key read changes; [`Tx::or_else`] tries an alternative. For an error type
    /// of your own use [`try_atomically`](Store::try_atomically); for a timeout or another
    /// backoff, [`transaction`](Store::transaction); for async code,
    /// [`Transaction::run_async`].
    ///
    /// ```
    /// let store: stm_store::Store<&str, i64> = stm_store::Store::new();
    /// store.atomically(|tx| tx.set(&"alice", 100));
    /// // Move 30 from alice to bob.
    /// store.atomically(|tx| {
    ///     let alice = tx.get(&"alice")?.unwrap_or(0);
    ///     let bob = tx.get(&"bob")?.unwrap_or(0);
    ///     tx.set(&"alice", alice - 30)?;
    ///     tx.set(&"bob", bob + 30)
    /// });
    /// let total = store.atomically(|tx| Ok(tx.get(&"alice")?.unwrap() + tx.get(&"bob")?.unwrap()));
    /// assert_eq!(total, 100);
    /// ```
    ///
    /// # Panics
    ///
    /// If called inside a transaction's closure, on any store (contract point 31: use that
    /// closure's [`Tx`]), or if the closure returns a [`TxError`] that its own attempt did not raise (one kept
    /// from an earlier attempt). A panic in the closure goes on to the caller; nothing is
    /// written.
    #[track_caller]
    pub fn atomically<T>(&self, f: impl FnMut(&mut Tx<'_, K, V, S>) -> Result<T, TxError>) -> T {
        match self.transaction().run_as("Store::atomically", f) {
            Ok(value) => value,
            Err(stale) => panic!("Store::atomically: the closure returned a TxError that its own attempt did not raise ({stale})"),
        }
    }

    /// [`atomically`](Store::atomically) for a closure with its own error type `E` (with
    /// `E: From<TxError>`, so that `?` passes both up). An `Err` of the closure ends the
    /// transaction: nothing is written, and the error comes back unchanged.
    ///
    /// ```
    /// #[derive(Debug, PartialEq)]
    /// enum BankError { Insufficient, Tx(stm_store::TxError) }
    /// impl From<stm_store::TxError> for BankError {
    ///     fn from(e: stm_store::TxError) -> Self { BankError::Tx(e) }
    /// }
    ///
    /// let store: stm_store::Store<&str, i64> = stm_store::Store::new();
    /// let withdraw = store.try_atomically(|tx| {
    ///     let balance = tx.get(&"alice")?.unwrap_or(0);
    ///     if balance < 30 {
    ///         return Err(BankError::Insufficient);
    ///     }
    ///     Ok(tx.set(&"alice", balance - 30)?)
    /// });
    /// assert_eq!(withdraw, Err(BankError::Insufficient));
    /// ```
    ///
    /// # Errors
    ///
    /// The closure's own error.
    ///
    /// # Panics
    ///
    /// If called inside a transaction's closure, on any store (contract point 31). A panic in
    /// the closure goes on to the caller; nothing is written.
    #[track_caller]
    pub fn try_atomically<T, E: From<TxError>>(
        &self,
        f: impl FnMut(&mut Tx<'_, K, V, S>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.transaction().run_as("Store::try_atomically", f)
    }

    /// A transaction with options (a timeout, a backoff) to run blocking or as a future.
    pub fn transaction(&self) -> Transaction<'_, K, V, S> {
        Transaction::new(self)
    }

    /// What the store has counted since it was made: commits, conflicts, helping, snapshots
    /// that fell back to claiming, transaction runs and waits (see [`Stats`]). Each thread
    /// counts on its own cache line, and this call adds them up: counting costs the commit
    /// path no shared write, and the sum is not a snapshot (counts taken while other threads
    /// run need not agree with each other).
    pub fn stats(&self) -> Stats {
        self.shared.counters.sum()
    }

    /// Commits one handle: the same as [`Value::commit`].
    ///
    /// # Panics
    ///
    /// If `value` came from another store.
    #[track_caller]
    pub fn set(&self, value: &mut Value<'_, K, V>) -> Result<(), Error> {
        self.check_origin(value.came_from(&self.shared), "Store::set");
        value.commit()
    }

    /// Commits a collection: the same as [`Collection::commit`].
    ///
    /// # Panics
    ///
    /// If any handle in `values` came from another store.
    #[track_caller]
    pub fn set_values(&self, values: &mut Collection<'_, K, V>) -> Result<(), Error> {
        self.check_origin(values.all_from(&self.shared), "Store::set_values");
        values.commit()
    }

    /// Every key with its version and value, in key order: a consistent snapshot of the whole
    /// store (the keys listed are exactly the keys that existed at its instant), including
    /// keys that were read but never written (no value, at their first version), and none that
    /// was removed.
    ///
    /// It completes whatever other threads do: while it runs, a thread about to create a key
    /// first takes such a snapshot itself (and hands it over), so creating keys cannot starve it.
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
    pub fn dump(&self) -> Vec<(K, u64, Option<V>)> {
        match self.snapshot_with_help(|| self.try_dump()) {
            Ok(rows) | Err(rows) => rows,
        }
    }

    /// The version and value of `key`, or `None` if the store has no such key. Unlike
    /// [`usevar`](Store::usevar), it creates nothing: it leaves no trace in the store. It takes
    /// any borrowed form of the key (`&str` for `String` keys), so a probe allocates nothing.
    ///
    /// ```
    /// let store: stm_store::Store<String, u32> = stm_store::Store::new();
    /// assert_eq!(store.get("alice"), None);
    /// assert!(store.is_empty()); // the probe created nothing
    /// let mut alice = store.usevar("alice".to_string())?;
    /// assert_eq!(store.get("alice"), Some((0, None))); // exists, never written
    /// alice.set(7);
    /// alice.commit()?;
    /// assert_eq!(store.get("alice"), Some((1, Some(7))));
    /// # Ok::<(), stm_store::Error>(())
    /// ```
    pub fn get<Q>(&self, key: &Q) -> Option<(u64, Option<V>)>
    where
        K: Borrow<Q>,
        Q: Hash + Ord + ?Sized,
    {
        let pin = pin();
        let record = self.find(key, &pin)?;
        Some((
            version(record),
            record.and_then(|record| record.value.clone()),
        ))
    }

    /// Whether the store has `key` (created by a read or a write, whether or not it has a
    /// value, and not removed). Creates nothing.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Ord + ?Sized,
    {
        self.find(key, &pin()).is_some()
    }

    /// Writes `value` to `key` in one commit, creating the key if it is new, and returns the
    /// value it replaced (`None`: the key was new, or had no value), as `HashMap::insert` does.
    /// Atomic: if another commit lands on the key first, it reads the key again and writes
    /// over that, so the value returned is always the one this write replaced.
    ///
    /// ```
    /// let store: stm_store::Store<String, u32> = stm_store::Store::new();
    /// assert_eq!(store.insert("alice".to_string(), 5), None);
    /// assert_eq!(store.insert("alice".to_string(), 7), Some(5));
    /// assert_eq!(store.get("alice"), Some((2, Some(7))));
    /// ```
    ///
    /// # Panics
    ///
    /// Inside a transaction's closure, on any store (contract point 31): use its [`Tx::set`].
    #[track_caller]
    pub fn insert(&self, key: K, value: V) -> Option<V> {
        refuse_nested(self, "Store::insert");
        let mut handle = self.usevar(key).expect("usevar does not fail");
        handle.set(value);
        loop {
            match handle.commit_replacing() {
                Ok(replaced) => return replaced,
                Err(Error::ConcurrentUpdate | Error::BusyRetry) => {
                    let value = handle.value().cloned().expect("set above");
                    handle = self
                        .usevar(handle.key().clone())
                        .expect("usevar does not fail");
                    handle.set(value);
                }
            }
        }
    }

    /// Removes `key` in one commit, if the store has it, and returns the value it had (`None`:
    /// no such key, or a key with no value), as `HashMap::remove` does. A key the store does
    /// not have is left alone: nothing is created or written. The removal is the one of
    /// [`Value::remove`] (contract points 22–26).
    ///
    /// ```
    /// let store: stm_store::Store<String, u32> = [("alice".to_string(), 5)].into_iter().collect();
    /// assert_eq!(store.remove("alice"), Some(5));
    /// assert_eq!(store.remove("alice"), None);
    /// assert_eq!(store.remove("nobody"), None);
    /// assert!(store.is_empty());
    /// ```
    ///
    /// # Panics
    ///
    /// Inside a transaction's closure, on any store (contract point 31): use its
    /// [`Tx::remove`].
    #[track_caller]
    pub fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Ord + ?Sized,
    {
        refuse_nested(self, "Store::remove");
        loop {
            let mut handle = self.existing(key)?;
            handle.remove();
            if let Ok(removed) = handle.commit_replacing() {
                return removed;
            }
        }
    }

    /// Sets `key` to `f` of its value (`None`: no value, or a new key, which this creates) in
    /// one commit, and returns the value set. Atomic: if another commit lands on the key between
    /// the read and the write, `f` runs again on the new value, so `f` may run more than once
    /// (keep side effects out of it).
    ///
    /// ```
    /// let store: stm_store::Store<&str, u64> = stm_store::Store::new();
    /// let count = |n: Option<&u64>| n.copied().unwrap_or(0) + 1;
    /// assert_eq!(store.update("hits", count), 1);
    /// assert_eq!(store.update("hits", count), 2);
    /// ```
    ///
    /// # Panics
    ///
    /// Inside a transaction's closure, on any store (contract point 31): use its
    /// [`Tx::update`]. A panic in `f` goes on to the caller, with nothing written.
    #[track_caller]
    pub fn update(&self, key: K, mut f: impl FnMut(Option<&V>) -> V) -> V {
        refuse_nested(self, "Store::update");
        let mut handle = self.usevar(key).expect("usevar does not fail");
        loop {
            let new = f(handle.value());
            handle.set(new);
            if handle.commit().is_ok() {
                return handle.into_read().expect("the value just written");
            }
            handle = self
                .usevar(handle.key().clone())
                .expect("usevar does not fail");
        }
    }

    /// If `key` has a value, sets it to `f` of that value in one commit and returns the value
    /// set; otherwise returns `None`, creating and writing nothing. Atomic, as
    /// [`update`](Store::update) is: `f` may run more than once.
    ///
    /// ```
    /// let store: stm_store::Store<String, i64> = [("alice".to_string(), 100)].into_iter().collect();
    /// assert_eq!(store.modify("alice", |balance| balance - 30), Some(70));
    /// assert_eq!(store.modify("nobody", |balance| balance - 30), None);
    /// assert_eq!(store.len(), 1);
    /// ```
    ///
    /// # Panics
    ///
    /// Inside a transaction's closure, on any store (contract point 31): use its
    /// [`Tx::modify`]. A panic in `f` goes on to the caller, with nothing written.
    #[track_caller]
    pub fn modify<Q>(&self, key: &Q, mut f: impl FnMut(&V) -> V) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Ord + ?Sized,
    {
        refuse_nested(self, "Store::modify");
        loop {
            let mut handle = self.existing(key)?;
            let new = f(handle.value()?);
            handle.set(new);
            if handle.commit().is_ok() {
                return handle.into_read();
            }
        }
    }

    /// A handle on `key` if the store has it (not removed), read now; creates nothing. A
    /// removed key found still listed is unlinked, as in `find`.
    fn existing<Q>(&self, key: &Q) -> Option<Value<'_, K, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Ord + ?Sized,
    {
        let slot = self.table.get(key)?;
        let pin = pin();
        let record = slot.load(&pin).logical(); // read once, as in `find`
        if record.is_some_and(Record::is_removed) {
            self.table.unlink(&slot, &pin);
            return None;
        }
        Some(Value::new(self, slot, record))
    }

    /// The record of `key` (`Some(None)`: version 0), if the store has the key and it is not
    /// removed; a removed key found still listed is unlinked.
    fn find<'g, Q>(&'g self, key: &Q, pin: &'g Guard) -> Option<Option<&'g Record<V>>>
    where
        K: Borrow<Q>,
        Q: Hash + Ord + ?Sized,
    {
        let slot = self.table.find(key, pin)?;
        // One read of the record: a claim's logical record changes when its commit is decided.
        let record = slot.load(pin).logical();
        if record.is_some_and(Record::is_removed) {
            self.table.unlink(slot, pin);
            return None;
        }
        // Deliberate breakage `double_read` (loom-tests/tests/removal_reads.rs): the record is
        // read again after the check, so a removal decided in between leaks its tombstone.
        #[cfg(stm_mutation = "double_read")]
        let record = slot.load(pin).logical();
        Some(record)
    }

    /// How many keys the store has: the number of rows [`dump`](Store::dump) would return.
    /// With other threads creating or removing keys, it is the count at some instant during
    /// the call, give or take the keys being removed by commits still in progress.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the store has no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of every key, unless a key was created while it was taken. The count of keys
    /// created is read before listing the index and again after reading the records: unchanged,
    /// the listing held exactly the keys that existed while the records were read.
    fn try_dump(&self) -> Option<Vec<Row<K, V>>> {
        let pin = pin();
        let found = self.try_read(&pin, &(..))?;
        let rows = found.into_iter().map(|(slot, record)| {
            let value = record.and_then(|record| record.value.clone());
            (slot.key.clone(), version(record), value)
        });
        Some(rows.collect())
    }

    /// The records of the keys in `range` at one instant, in key order, unless a key was
    /// created while they were read (see [`try_dump`](Store::try_dump)).
    fn try_read<'g>(
        &'g self,
        pin: &'g Guard,
        range: &impl RangeBounds<K>,
    ) -> Option<Vec<Found<'g, K, V>>> {
        let created = self.table.created();
        let slots = self.table.slots(pin).into_iter();
        let mut found: Vec<Found<K, V>> = slots
            .filter(|slot| range.contains(&slot.key))
            .map(|slot| (slot, None))
            .collect();
        found.sort_unstable_by_key(|(slot, _)| slot.id);
        snapshot::read_all(pin, &mut found, &self.shared);
        if self.table.created() != created && !cfg!(stm_mutation = "no_birth_check") {
            return None;
        }
        // Removed keys are absent (a removal is final, so absent at the snapshot's instant too).
        found.retain(|(_, record)| !record.is_some_and(Record::is_removed));
        order::sort_by(&mut found, |a, b| a.0.key.cmp(&b.0.key));
        Some(found)
    }

    /// Calls `f` with a consistent snapshot of the whole store: every key with its version and
    /// value, as they all were at one instant, in key order. Unlike [`dump`](Store::dump), it
    /// borrows the values instead of cloning them (replaced values are not freed until `f`
    /// returns, so keep `f` short). Threads that keep creating keys cannot starve it: as `dump`
    /// does, it asks them to help, and if one of their snapshots lands first, the values are
    /// copies from it.
    ///
    /// ```
    /// let store: stm_store::Store<&str, String> =
    ///     [("b", "two".to_string()), ("a", "one".to_string())].into_iter().collect();
    /// let longest = store.snapshot(|snapshot| {
    ///     snapshot.iter().filter_map(|(_, _, value)| value).map(String::len).max()
    /// });
    /// assert_eq!(longest, Some(3));
    /// ```
    pub fn snapshot<R>(&self, f: impl FnOnce(&Snapshot<'_, K, V>) -> R) -> R {
        self.snapshot_range(.., f)
    }

    /// [`snapshot`](Store::snapshot) of the keys in `range` only, in key order: exactly the
    /// keys in the range that existed at its instant.
    ///
    /// ```
    /// let store: stm_store::Store<u32, u32> = (0..10).map(|k| (k, k * k)).collect();
    /// let squares: Vec<u32> = store.snapshot_range(3..6, |snapshot| {
    ///     snapshot.iter().map(|(_, _, square)| *square.unwrap()).collect()
    /// });
    /// assert_eq!(squares, [9, 16, 25]);
    /// ```
    pub fn snapshot_range<R>(
        &self,
        range: impl RangeBounds<K>,
        f: impl FnOnce(&Snapshot<'_, K, V>) -> R,
    ) -> R {
        let pin = pin();
        let snapshot = match self.snapshot_with_help(|| self.try_read(&pin, &range)) {
            Ok(found) => Snapshot::read(found),
            Err(rows) => {
                let in_range = rows.into_iter().filter(|(key, ..)| range.contains(key));
                Snapshot::copied(in_range.collect())
            }
        };
        let result = f(&snapshot);
        hand_back(result, (snapshot, range))
    }

    /// Takes a snapshot with `own` (which tries once: `None` if a key was created meanwhile),
    /// helped by key creators: `Ok` with the first of its own tries that lands, or `Err` with
    /// the rows of a whole-store snapshot that a creator landed first.
    ///
    /// It publishes a request that every key creator serves before creating its key: it tries
    /// snapshots until one lands. Once the creators that were already past the check have
    /// created their keys (at most one each), no key is created until some snapshot lands.
    ///
    /// The request goes up before the first try, not after some failed ones: a creator that
    /// overtakes a try adds keys for as long as the try took, so every snapshot it overtook
    /// would leave the store (and the next one's tries) longer by a fraction of itself.
    fn snapshot_with_help<R>(
        &self,
        mut own: impl FnMut() -> Option<R>,
    ) -> Result<R, Vec<Row<K, V>>> {
        let pin = pin();
        let mut request = Box::new(DumpRequest {
            rows: OnceBox::new(),
        });
        let mine = loop {
            match self.dumps.put(&pin, request) {
                Ok(published) => break published,
                Err(back) => {
                    request = back; // another dump's request is up
                    self.clear_served(&pin);
                    if let Some(taken) = own() {
                        return Ok(taken);
                    }
                }
            }
        };
        // Takes the request down however this call ends: a panic in `try_dump` (a user's
        // `V::clone`, say) must not leave it up for key creators to serve.
        struct TakeDown<'a, K, V> {
            dumps: &'a Shelf<DumpRequest<K, V>>,
            pin: &'a Guard,
            request: &'a DumpRequest<K, V>,
        }
        impl<K, V> Drop for TakeDown<'_, K, V> {
            fn drop(&mut self) {
                self.dumps.remove(self.pin, self.request); // unless a creator already did
            }
        }
        let _take_down = TakeDown {
            dumps: &self.dumps,
            pin: &pin,
            request: mine,
        };
        while !mine.rows.is_filled() {
            if let Some(taken) = own() {
                mine.rows.offer(Box::default()); // served: creators may go on
                return Ok(taken);
            }
        }
        let rows = mine
            .rows
            .take()
            .expect("served, and only its owner takes the rows");
        Err(*rows)
    }

    /// Takes snapshots until one is handed to `request`.
    fn serve(&self, request: &DumpRequest<K, V>) {
        while !request.rows.is_filled() {
            if let Some(rows) = self.try_dump() {
                request.rows.offer(Box::new(rows));
            }
        }
    }

    /// Serves a pending dump request, before creating a key; then takes it down, so that a
    /// request whose owner is gone (it panicked, or stopped) never stays up.
    fn help_dump(&self) {
        let pin = pin();
        if let Some(request) = self.dumps.peek(&pin) {
            self.serve(request);
            self.dumps.remove(&pin, request);
        }
    }

    /// Takes down a request that was served (its owner keeps its own reference to it).
    fn clear_served(&self, pin: &Guard) {
        if let Some(request) = self.dumps.peek(pin).filter(|r| r.rows.is_filled()) {
            self.dumps.remove(pin, request);
        }
    }

    /// The slot listed for `key`, created if there is none; it may be removed (see `live`).
    fn slot(&self, key: K) -> SlotRef<'_, K, V> {
        match self.table.get(&key) {
            Some(slot) => hand_back(slot, key),
            None => self.create(key),
        }
    }

    /// The slot listed for `key` (by any borrowed form of it), created (from an owned copy of
    /// the key) if there is none.
    pub(crate) fn slot_of<Q>(&self, key: &Q) -> SlotRef<'_, K, V>
    where
        K: Borrow<Q> + From<Q::Owned>,
        Q: Hash + Ord + ToOwned + ?Sized,
    {
        match self.table.get(key) {
            Some(slot) => slot,
            None => self.create(K::from(key.to_owned())),
        }
    }

    /// The slot `slot` if it is not removed, with its record; otherwise (it was removed since
    /// it was looked up) the key's new slot (creating it unlinks the removed one).
    pub(crate) fn live<'s, 'g>(
        &'s self,
        mut slot: SlotRef<'s, K, V>,
        pin: &'g Guard,
    ) -> (SlotRef<'s, K, V>, Option<&'g Record<V>>) {
        loop {
            let record = slot.load(pin).logical(); // read once, as in `find`
            if !record.is_some_and(Record::is_removed) {
                // Deliberate breakage `double_read`, as in `find`: a second read.
                #[cfg(stm_mutation = "double_read")]
                let record = slot.load(pin).logical();
                return (slot, record);
            }
            slot = self.create(slot.key.clone());
        }
    }

    /// The slot of a key not found a moment ago (or found removed): serves a pending snapshot
    /// request first.
    fn create(&self, key: K) -> SlotRef<'_, K, V> {
        self.help_dump();
        self.table.get_or_create(key)
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    #[track_caller]
    fn check_origin(&self, ours: bool, call: &str) {
        assert!(
            ours,
            "{call}: this handle belongs to another Store; a handle always commits to the store it was read from"
        );
    }
}

/// Returns `result` once `rest` is dropped. Rust does not drop a function's return value if a
/// local's destructor unwinds after the value was moved out, so a function that returns a
/// user's value (or a slot's count) drops first whatever may panic in `drop` (copies of values,
/// keys); if one does, `result` is still a local, and unwinding drops it.
pub(crate) fn hand_back<T>(result: T, rest: impl Sized) -> T {
    drop(rest);
    result
}

impl<K, V, S> Home<K, V> for Store<K, V, S>
where
    K: Ord + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync,
{
    fn shared(&self) -> &Shared {
        &self.shared
    }

    fn unlink(&self, slot: &Slot<K, V>) {
        self.table.unlink(slot, &pin());
    }
}

impl<K, V, S> Default for Store<K, V, S>
where
    K: Ord + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Default + Send + Sync,
{
    fn default() -> Self {
        Self::with_hasher(S::default())
    }
}

/// Shows the same consistent snapshot as [`Store::dump`], as a map from key to
/// `(version, value)`.
impl<K, V, S> fmt::Debug for Store<K, V, S>
where
    K: Ord + Hash + Clone + Send + Sync + 'static + fmt::Debug,
    V: Clone + Send + Sync + 'static + fmt::Debug,
    S: BuildHasher + Clone + Send + Sync,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows = self.dump();
        let entries = rows
            .iter()
            .map(|(key, version, value)| (key, (version, value)));
        f.debug_map().entries(entries).finish()
    }
}
