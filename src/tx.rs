//! `atomically`: a closure run as one transaction, retried for you.
//!
//! **Reads as you go, with opacity.** A transaction reads each key once, when the closure first
//! asks for it, and then checks that every key it read before still has the version it read.
//! Versions only grow, so if they all match, every read of the attempt held at the instant of
//! the newest read: the closure never sees a state that did not exist at one instant. If one
//! does not match, the attempt stops there (the read returns [`TxError`]) and runs again.
//! Checking costs one load per key already read, so a read costs O(keys read so far).
//!
//! **The commit** goes through the same protocol as [`Collection::commit`]: every key read is
//! validated, the keys written are written, all at one instant. Transactions and handles work on
//! the same keys at the same time and are atomic with respect to each other.
//!
//! **Retry** gives up the attempt and waits until a key it read changes (see the `wake` module
//! for the handshake that loses no wake-up); [`Tx::or_else`] runs a second branch when the
//! first retries, both in one transaction.
//!
//! [`Collection::commit`]: crate::Collection::commit

use std::borrow::Borrow;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::primitive::pin;
use crate::protocol::{self, Part, Write};
use crate::slot::SlotRef;
use crate::snapshot::version;
use crate::stats::Count;
use crate::store::hand_back;
use crate::wake::Watch;
use crate::Store;

/// Why a transaction's attempt stopped, or why its call gave up: what [`Tx`]'s reads and
/// writes return when the closure must not go on. Pass it up with `?`; the transaction then runs
/// the closure again, or waits (after [`Tx::retry`]). The call itself returns one only on a
/// timeout ([`Transaction::timeout`], see [`is_timeout`](TxError::is_timeout)), or if the
/// closure kept one from an earlier run and returned it as its own error (don't).
///
/// A closure with its own error type `E` needs `E: From<TxError>` (so that `?` works on both);
/// `Box<dyn Error + Send + Sync>` and `anyhow::Error` already are.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TxError(Stop);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stop {
    /// A key read earlier changed: this attempt cannot see one consistent state.
    Conflict,
    /// The closure called [`Tx::retry`].
    Retry,
    /// The deadline passed.
    Timeout,
}

impl TxError {
    /// Whether the transaction gave up because its deadline passed ([`Transaction::timeout`]).
    pub fn is_timeout(&self) -> bool {
        self.0 == Stop::Timeout
    }
}

impl fmt::Debug for TxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TxError::{:?}", self.0)
    }
}

impl fmt::Display for TxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Stop::Conflict => "a key read by this attempt changed: the transaction runs again",
            Stop::Retry => "the transaction retries: it waits for a key it read to change",
            Stop::Timeout => "the transaction timed out waiting for a key it read to change",
        })
    }
}

impl std::error::Error for TxError {}

/// A transaction in progress: what [`Store::atomically`]'s closure reads and writes through.
///
/// Reads see the transaction's own writes. Nothing is written to the store until the closure
/// returns `Ok` and the commit lands; then all of it is, at one instant.
///
/// **Pass every [`TxError`] up with `?`; never `unwrap` it.** Each read or write returns one
/// when the attempt must stop: a key it read changed (normal under contention), or the
/// closure called [`retry`](Tx::retry). Passed up, it makes the transaction run the closure
/// again (or wait); unwrapped, it panics where the store would simply have run the closure
/// again. So write `tx.get(&key)?`, then look at the `Option` it gives.
///
/// Keys are taken by any borrowed form, as [`Store::get`] takes them (`K: Borrow<Q>`, and
/// `K: From<Q::Owned>` to make the key if the transaction creates it):
///
/// ```
/// use std::sync::Arc;
/// use stm_store::Store;
///
/// let accounts: Store<String, i64> = Store::new();
/// accounts.atomically(|tx| tx.set("acct-0", 10)); // a `&str` for a `String` key
/// let owned = "acct-0".to_string();
/// assert_eq!(accounts.atomically(|tx| tx.get(&owned)), Some(10)); // or a `&String`
///
/// let names: Store<&'static str, i64> = Store::new();
/// names.atomically(|tx| tx.set(&"x", 1)); // a `&&str` for a `&'static str` key
///
/// let numbers: Store<u64, i64> = Store::new();
/// numbers.atomically(|tx| tx.set(&5, 1));
/// assert!(numbers.atomically(|tx| tx.exists(&5)));
///
/// let shared: Store<Arc<str>, i64> = Store::new();
/// shared.atomically(|tx| tx.set("k", 1)); // a `&str` for an `Arc<str>` key
/// assert_eq!(shared.atomically(|tx| tx.version("k")), 1);
/// ```
pub struct Tx<'s, K, V, S = crate::DefaultHasher> {
    store: &'s Store<K, V, S>,
    /// Every key read or written, in the order first touched.
    keys: Vec<TxKey<'s, K, V>>,
    /// Inside [`Tx::or_else`]'s first branch: the writes it replaced (key index, old write),
    /// to put back if it retries.
    undo: Vec<(usize, Option<Write<V>>)>,
    branches: usize,
    stop: Option<Stop>,
    attempt: u32,
}

struct TxKey<'s, K, V> {
    slot: SlotRef<'s, K, V>,
    version: u64,
    value: Option<V>,
    /// What to write.
    write: Option<Write<V>>,
}

impl<'s, K, V, S> Tx<'s, K, V, S>
where
    K: Ord + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync,
{
    fn new(store: &'s Store<K, V, S>, attempt: u32) -> Self {
        Self {
            store,
            keys: Vec::new(),
            undo: Vec::new(),
            branches: 0,
            stop: None,
            attempt,
        }
    }

    /// The value of `key` (`None`: no value), as written by this transaction or else as read.
    /// Creates the key if it is new, as [`Store::usevar`] does.
    ///
    /// # Errors
    ///
    /// [`TxError`] if this attempt must stop: pass it up with `?`.
    pub fn get<Q>(&mut self, key: &Q) -> Result<Option<V>, TxError>
    where
        K: Borrow<Q> + From<Q::Owned>,
        Q: Hash + Ord + ToOwned + ?Sized,
    {
        let at = self.touch(key)?;
        Ok(self.keys[at].current().cloned())
    }

    /// Whether `key` has a value (as written by this transaction or else as read): false for a
    /// key never written, or cleared.
    ///
    /// # Errors
    ///
    /// [`TxError`] if this attempt must stop: pass it up with `?`.
    pub fn exists<Q>(&mut self, key: &Q) -> Result<bool, TxError>
    where
        K: Borrow<Q> + From<Q::Owned>,
        Q: Hash + Ord + ToOwned + ?Sized,
    {
        let at = self.touch(key)?;
        Ok(self.keys[at].current().is_some())
    }

    /// The version of `key` as read by this transaction (0 for a key never written, in a store that never
    /// removed a key: contract point 23). A key
    /// this transaction writes gets this version + 1 when it commits.
    ///
    /// # Errors
    ///
    /// [`TxError`] if this attempt must stop: pass it up with `?`.
    pub fn version<Q>(&mut self, key: &Q) -> Result<u64, TxError>
    where
        K: Borrow<Q> + From<Q::Owned>,
        Q: Hash + Ord + ToOwned + ?Sized,
    {
        let at = self.touch(key)?;
        Ok(self.keys[at].version)
    }

    /// Writes `value` to `key` when the transaction commits. The key counts as read too (its
    /// version is validated at the commit).
    ///
    /// # Errors
    ///
    /// [`TxError`] if this attempt must stop: pass it up with `?`.
    pub fn set<Q>(&mut self, key: &Q, value: V) -> Result<(), TxError>
    where
        K: Borrow<Q> + From<Q::Owned>,
        Q: Hash + Ord + ToOwned + ?Sized,
    {
        self.write(key, Write::Value(Some(value)))
    }

    /// Writes "no value" to `key` when the transaction commits (a write, not an undo).
    ///
    /// # Errors
    ///
    /// [`TxError`] if this attempt must stop: pass it up with `?`.
    pub fn clear<Q>(&mut self, key: &Q) -> Result<(), TxError>
    where
        K: Borrow<Q> + From<Q::Owned>,
        Q: Hash + Ord + ToOwned + ?Sized,
    {
        self.write(key, Write::Value(None))
    }

    /// Removes `key` when the transaction commits (see [`Value::remove`]): from then on it is
    /// absent from the store. Until then, this transaction reads it as having no value; a
    /// later `set` or `clear` of the key in this transaction replaces the removal.
    ///
    /// ```
    /// let store: stm_store::Store<&str, u32> = [("alice", 5)].into_iter().collect();
    /// store.atomically(|tx| tx.remove(&"alice"));
    /// assert_eq!(store.get("alice"), None);
    /// assert!(store.is_empty());
    /// ```
    ///
    /// # Errors
    ///
    /// [`TxError`] if this attempt must stop: pass it up with `?`.
    ///
    /// [`Value::remove`]: crate::Value::remove
    pub fn remove<Q>(&mut self, key: &Q) -> Result<(), TxError>
    where
        K: Borrow<Q> + From<Q::Owned>,
        Q: Hash + Ord + ToOwned + ?Sized,
    {
        self.write(key, Write::Remove)
    }

    /// Sets `key` to `f` of its value (`None`: no value, or a new key), as this transaction
    /// sees it, and returns the value set: a read and a write of the key in one call.
    ///
    /// ```
    /// let store: stm_store::Store<String, u64> = stm_store::Store::new();
    /// let hits = store.atomically(|tx| tx.update("hits", |n| n.copied().unwrap_or(0) + 1));
    /// assert_eq!(hits, 1);
    /// assert_eq!(store.atomically(|tx| tx.update("hits", |n| n.unwrap() * 10)), 10);
    /// ```
    ///
    /// # Errors
    ///
    /// [`TxError`] if this attempt must stop: pass it up with `?` (`f` did not run).
    pub fn update<Q>(&mut self, key: &Q, f: impl FnOnce(Option<&V>) -> V) -> Result<V, TxError>
    where
        K: Borrow<Q> + From<Q::Owned>,
        Q: Hash + Ord + ToOwned + ?Sized,
    {
        let at = self.touch(key)?;
        let new = f(self.keys[at].current());
        self.write_at(at, Write::Value(Some(new.clone())));
        Ok(new)
    }

    /// If `key` has a value (as this transaction sees it), sets it to `f` of that value and
    /// returns the value set; otherwise writes nothing and returns `None` (the key is still
    /// read, and validated at the commit).
    ///
    /// ```
    /// let store: stm_store::Store<&str, i64> = [("alice", 100)].into_iter().collect();
    /// let paid = store.atomically(|tx| {
    ///     let alice = tx.modify(&"alice", |balance| balance - 30)?;
    ///     let nobody = tx.modify(&"nobody", |balance| balance + 30)?;
    ///     Ok((alice, nobody))
    /// });
    /// assert_eq!(paid, (Some(70), None));
    /// assert_eq!(store.get("alice"), Some((2, Some(70))));
    /// ```
    ///
    /// # Errors
    ///
    /// [`TxError`] if this attempt must stop: pass it up with `?` (`f` did not run).
    pub fn modify<Q>(&mut self, key: &Q, f: impl FnOnce(&V) -> V) -> Result<Option<V>, TxError>
    where
        K: Borrow<Q> + From<Q::Owned>,
        Q: Hash + Ord + ToOwned + ?Sized,
    {
        let at = self.touch(key)?;
        let Some(current) = self.keys[at].current() else {
            return Ok(None);
        };
        let new = f(current);
        self.write_at(at, Write::Value(Some(new.clone())));
        Ok(Some(new))
    }

    /// Gives up this attempt and waits until some key it read has changed, then runs the
    /// closure again (GHC's `retry`). Return what it returns: `return tx.retry();`, or
    /// `tx.retry()?` in a closure with its own error type.
    ///
    /// A closure that read nothing waits forever (or until [`Transaction::timeout`]).
    ///
    /// # Errors
    ///
    /// Always: a [`TxError`] that makes the transaction wait.
    pub fn retry<T>(&mut self) -> Result<T, TxError> {
        self.stopped(Stop::Retry)
    }

    /// Runs `first`; if it retries, undoes its writes and runs `second` instead, in the same
    /// transaction (GHC's `orElse`). If both retry, the transaction waits for a change to a key
    /// that either read.
    ///
    /// ```
    /// let store: stm_store::Store<&str, u32> = stm_store::Store::new();
    /// store.atomically(|tx| tx.set(&"spare", 1));
    /// // Take from "main" if it has anything, else from "spare".
    /// let took = store.atomically(|tx| {
    ///     tx.or_else(
    ///         |tx| match tx.get(&"main")? {
    ///             Some(n) if n > 0 => { tx.set(&"main", n - 1)?; Ok("main") }
    ///             _ => tx.retry(),
    ///         },
    ///         |tx| match tx.get(&"spare")? {
    ///             Some(n) if n > 0 => { tx.set(&"spare", n - 1)?; Ok("spare") }
    ///             _ => tx.retry(),
    ///         },
    ///     )
    /// });
    /// assert_eq!(took, "spare");
    /// ```
    ///
    /// Only a retry of `first` runs `second`: any other `Err` of `first` comes back as it is,
    /// with `first`'s writes kept (pass it up, and the transaction writes nothing).
    ///
    /// # Errors
    ///
    /// What the branch that ran last returns; or, if this run was already stopped (a
    /// [`TxError`] the closure did not pass up), that stop, without running either branch.
    pub fn or_else<T, E: From<TxError>>(
        &mut self,
        first: impl FnOnce(&mut Self) -> Result<T, E>,
        second: impl FnOnce(&mut Self) -> Result<T, E>,
    ) -> Result<T, E> {
        if let Some(stop) = self.stop {
            return Err(TxError(stop).into());
        }
        let mark = self.undo.len();
        self.branches += 1;
        let result = first(self);
        self.branches -= 1;
        if self.stop != Some(Stop::Retry) {
            return hand_back(result, second);
        }
        drop(result); // before `second` runs, not after its result is out (`hand_back`)
        while self.undo.len() > mark {
            let (at, write) = self.undo.pop().expect("above the mark");
            self.keys[at].write = write;
        }
        self.stop = None;
        second(self)
    }

    /// Which attempt this is: 1 the first time the closure runs, then 2, 3, ... (it stays at
    /// `u32::MAX` from there).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    fn write<Q>(&mut self, key: &Q, value: Write<V>) -> Result<(), TxError>
    where
        K: Borrow<Q> + From<Q::Owned>,
        Q: Hash + Ord + ToOwned + ?Sized,
    {
        let at = self.touch(key)?;
        self.write_at(at, value);
        Ok(())
    }

    /// Writes to the key touched at `at` (undone if an `or_else` branch around it retries).
    fn write_at(&mut self, at: usize, value: Write<V>) {
        let replaced = self.keys[at].write.replace(value);
        if self.branches > 0 {
            self.undo.push((at, replaced));
        }
    }

    /// The index of `key` among the keys this attempt touched, reading it first if it is new.
    fn touch<Q>(&mut self, key: &Q) -> Result<usize, TxError>
    where
        K: Borrow<Q> + From<Q::Owned>,
        Q: Hash + Ord + ToOwned + ?Sized,
    {
        if let Some(stop) = self.stop {
            return Err(TxError(stop));
        }
        // Compared in the borrowed form: finding a key already touched copies nothing.
        let touched = |k: &TxKey<'s, K, V>| Borrow::<Q>::borrow(&k.slot.key) == key;
        if let Some(at) = self.keys.iter().position(touched) {
            return Ok(at);
        }
        let pin = pin();
        let (slot, record) = self.store.live(self.store.slot_of(key), &pin);
        // Opacity: every earlier read still holds now, at the instant of this one.
        if !self.unchanged() && !cfg!(stm_mutation = "no_opacity") {
            return self.stopped(Stop::Conflict);
        }
        self.keys.push(TxKey {
            slot,
            version: version(record),
            value: record.and_then(|record| record.value.clone()),
            write: None,
        });
        Ok(self.keys.len() - 1)
    }

    /// Stops this run (a stop already raised stays: a swallowed conflict is not turned into a
    /// retry).
    fn stopped<T>(&mut self, stop: Stop) -> Result<T, TxError> {
        Err(TxError(*self.stop.get_or_insert(stop)))
    }

    /// Whether every key read still has the version read.
    fn unchanged(&self) -> bool {
        let pin = pin();
        self.keys
            .iter()
            .all(|k| k.slot.load(&pin).version() == k.version)
    }

    /// Runs `f` as this attempt (of the call `call`) and commits what it did.
    #[track_caller]
    fn run<T, E>(
        &mut self,
        call: &str,
        f: &mut impl FnMut(&mut Self) -> Result<T, E>,
    ) -> Attempt<T, E> {
        self.store.shared().count(Count::TxAttempt);
        let running = Nesting::enter(self.store, call);
        let result = f(self);
        drop(running);
        match (self.stop, result) {
            (Some(Stop::Retry), _) => Attempt::Retry,
            (Some(_), _) => {
                self.store.shared().count(Count::Conflict); // a read found an earlier one stale
                Attempt::Conflict
            }
            (None, Err(error)) => Attempt::Done(Err(error)), // nothing written
            (None, Ok(value)) => match self.commit() {
                Ok(()) => Attempt::Done(Ok(value)),
                Err(_) => Attempt::Conflict,
            },
        }
    }

    fn commit(&self) -> Result<(), crate::Error> {
        let parts = self.keys.iter().map(|k| Part {
            slot: &k.slot,
            version: k.version,
            write: k.write.as_ref(),
        });
        protocol::commit(self.store, parts)
    }

    /// Blocks until a key read has changed (true), or `deadline` passes (false).
    fn wait_for_change(&self, deadline: Option<Instant>) -> bool {
        self.store.shared().count(Count::TxWait);
        while let Some(watch) = self.watch() {
            if !watch.wait(deadline) {
                return !self.unchanged();
            }
        }
        true
    }

    /// Waits, without blocking the thread, until a key read has changed (true) or `timer`
    /// fires (false).
    async fn changed_before(&self, mut timer: Option<&mut futures_timer::Delay>) -> bool {
        self.store.shared().count(Count::TxWait);
        let changed = async {
            while let Some(watch) = self.watch() {
                watch.notified().await;
            }
        };
        let mut changed = std::pin::pin!(changed);
        std::future::poll_fn(|cx| {
            if changed.as_mut().poll(cx).is_ready() {
                return Poll::Ready(true);
            }
            match timer.as_deref_mut().map(|timer| Pin::new(timer).poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(false),
                _ => Poll::Pending,
            }
        })
        .await
    }

    /// Registers as a waiter, then checks the reads: `None` if one changed (nothing to wait
    /// for). The mutation `lost_wakeup` checks before registering, so that a commit landing in
    /// between is never noticed.
    fn watch(&self) -> Option<Watch<'s>> {
        let waiters = &self.store.shared().waiters;
        let ids = || self.keys.iter().map(|k| k.slot.id);
        if cfg!(stm_mutation = "lost_wakeup") {
            return self.unchanged().then(|| waiters.watch(ids()));
        }
        let watch = waiters.watch(ids());
        self.unchanged().then_some(watch)
    }
}

/// What the transaction did so far: its attempt, and each key it touched with the version
/// read and its value as this transaction sees it (`pending`: written by it), as
/// [`Value`](crate::Value) shows a handle.
///
/// ```
/// let store: stm_store::Store<&str, i64> = [("alice", 100)].into_iter().collect();
/// store.atomically(|tx| {
///     tx.set(&"alice", 70)?;
///     let shown = format!("{tx:?}");
///     assert!(shown.contains(r#"key: "alice", version: 1, value: Some(70), pending: true"#));
///     Ok(())
/// });
/// ```
impl<K: fmt::Debug, V: fmt::Debug, S> fmt::Debug for Tx<'_, K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Key<'a, 's, K, V>(&'a TxKey<'s, K, V>);
        impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for Key<'_, '_, K, V> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct("Key")
                    .field("key", &self.0.slot.key)
                    .field("version", &self.0.version)
                    .field("value", &self.0.current())
                    .field("pending", &self.0.write.is_some())
                    .finish()
            }
        }
        f.debug_struct("Tx")
            .field("attempt", &self.attempt)
            .field("keys", &self.keys.iter().map(Key).collect::<Vec<_>>())
            .field("stopped", &self.stop.map(TxError))
            .finish()
    }
}

impl<K, V> TxKey<'_, K, V> {
    fn current(&self) -> Option<&V> {
        match &self.write {
            Some(write) => write.value(),
            None => self.value.as_ref(),
        }
    }
}

enum Attempt<T, E> {
    Done(Result<T, E>),
    Conflict,
    Retry,
}

/// How long a transaction waits after a conflict before it runs the closure again: a spin
/// that doubles after each conflict, from 1 up to a bound; at the bound it also yields the
/// thread (in [`Transaction::run_async`]: the task).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    max_spins: u32,
}

impl Backoff {
    /// Spins 1, 2, 4, ... up to `max_spins` after consecutive conflicts, then also yields.
    pub const fn exponential(max_spins: u32) -> Self {
        Self { max_spins }
    }

    /// Runs the closure again at once.
    pub const fn none() -> Self {
        Self { max_spins: 0 }
    }
}

/// Spins up to 1,024 times (a few microseconds), then yields.
impl Default for Backoff {
    fn default() -> Self {
        Self::exponential(1 << 10)
    }
}

struct Backing {
    policy: Backoff,
    spins: u32,
}

impl Backing {
    fn new(policy: Backoff) -> Self {
        Self { policy, spins: 1 }
    }

    /// Spins for this round; true if it is time to yield too.
    fn spin(&mut self) -> bool {
        if self.policy.max_spins == 0 || cfg!(loom) {
            return false;
        }
        for _ in 0..self.spins.min(self.policy.max_spins) {
            std::hint::spin_loop();
        }
        let at_bound = self.spins >= self.policy.max_spins;
        self.spins = self.spins.saturating_mul(2);
        at_bound
    }
}

/// A transaction with options: [`Store::transaction`], then [`run`](Transaction::run) or
/// [`run_async`](Transaction::run_async).
///
/// ```
/// use std::time::Duration;
///
/// let store: stm_store::Store<&str, u32> = stm_store::Store::new();
/// // Wait at most 10 ms for "job" to get a value.
/// let job: Result<u32, stm_store::TxError> = store
///     .transaction()
///     .timeout(Duration::from_millis(10))
///     .run(|tx| match tx.get(&"job")? {
///         Some(job) => Ok(job),
///         None => tx.retry(),
///     });
/// assert!(job.unwrap_err().is_timeout());
/// ```
#[must_use = "a transaction runs only when `run` or `run_async` is called"]
pub struct Transaction<'s, K, V, S = crate::DefaultHasher> {
    store: &'s Store<K, V, S>,
    backoff: Backoff,
    deadline: Option<Instant>,
}

/// The options set: the backoff, and the deadline (`None`: none).
impl<K, V, S> fmt::Debug for Transaction<'_, K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
            .field("backoff", &self.backoff)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl<'s, K, V, S> Transaction<'s, K, V, S>
where
    K: Ord + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync,
{
    pub(crate) fn new(store: &'s Store<K, V, S>) -> Self {
        Self {
            store,
            backoff: Backoff::default(),
            deadline: None,
        }
    }

    /// How to wait after a conflict before running the closure again.
    pub fn backoff(self, backoff: Backoff) -> Self {
        Self { backoff, ..self }
    }

    /// Gives up at `deadline`: [`run`](Transaction::run) (or
    /// [`run_async`](Transaction::run_async), on any executor) then returns a [`TxError`] that
    /// [`is_timeout`](TxError::is_timeout), with nothing written. It bounds the whole call:
    /// waits in [`Tx::retry`], and new attempts after a conflict.
    pub fn deadline(self, deadline: Instant) -> Self {
        Self {
            deadline: Some(deadline),
            ..self
        }
    }

    /// Gives up after `timeout`, from now: see [`deadline`](Transaction::deadline). A timeout
    /// too long for the clock (`Duration::MAX`) means no deadline.
    pub fn timeout(self, timeout: Duration) -> Self {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.deadline(deadline),
            None => Self {
                deadline: None,
                ..self
            },
        }
    }

    /// Runs `f` as one transaction, as often as it takes, and returns its result: see
    /// [`Store::try_atomically`].
    ///
    /// # Errors
    ///
    /// The closure's own error (nothing written), or a timeout (`E::from` a [`TxError`] that
    /// [`is_timeout`](TxError::is_timeout)).
    ///
    /// # Panics
    ///
    /// If called inside a transaction's closure, on any store (contract point 31): use the
    /// outer closure's [`Tx`].
    #[track_caller]
    pub fn run<T, E: From<TxError>>(
        self,
        f: impl FnMut(&mut Tx<'s, K, V, S>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.run_as("Transaction::run", f)
    }

    /// [`run`](Transaction::run), on behalf of `call` (which a refused nesting names).
    #[track_caller]
    pub(crate) fn run_as<T, E: From<TxError>>(
        self,
        call: &str,
        mut f: impl FnMut(&mut Tx<'s, K, V, S>) -> Result<T, E>,
    ) -> Result<T, E> {
        refuse_nested(self.store, call);
        let mut backing = Backing::new(self.backoff);
        for attempt in attempts() {
            let mut tx = Tx::new(self.store, attempt);
            let waited = match tx.run(call, &mut f) {
                // The attempt's copies of values go before the result does (`hand_back`).
                Attempt::Done(result) => return hand_back(result, (tx, f)),
                Attempt::Conflict => {
                    if backing.spin() {
                        std::thread::yield_now();
                    }
                    true
                }
                Attempt::Retry => tx.wait_for_change(self.deadline),
            };
            if !waited || self.deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(TxError(Stop::Timeout).into());
            }
        }
        unreachable!("attempts never end")
    }

    /// [`run`](Transaction::run) as a future, for any executor: [`Tx::retry`] waits for a
    /// change without blocking the thread, and a conflict yields to the executor at the
    /// backoff's bound. Dropping the future at any point writes nothing.
    ///
    /// A [`deadline`](Transaction::deadline) or [`timeout`](Transaction::timeout) bounds it as
    /// it bounds `run`, whatever the executor: the wake-up at the deadline comes from
    /// `futures-timer` (one thread for the whole process, started by the first future that has
    /// a deadline; a future without one uses no timer).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # async fn wait_for_job(store: &stm_store::Store<&'static str, u32>) {
    /// let job: Result<u32, stm_store::TxError> = store
    ///     .transaction()
    ///     .timeout(Duration::from_millis(10))
    ///     .run_async(|tx| match tx.get(&"job")? {
    ///         Some(job) => Ok(job),
    ///         None => tx.retry(), // awaits a change to "job", or the deadline
    ///     })
    ///     .await;
    /// assert!(job.unwrap_err().is_timeout());
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The closure's own error (nothing written), or a timeout (`E::from` a [`TxError`] that
    /// [`is_timeout`](TxError::is_timeout)).
    ///
    /// # Panics
    ///
    /// If polled inside a transaction's closure, on any store (contract point 31). A nested
    /// future can only be driven there by blocking on it inside the closure.
    pub async fn run_async<T, E: From<TxError>>(
        self,
        mut f: impl FnMut(&mut Tx<'s, K, V, S>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut timer = self.deadline.map(|deadline| {
            futures_timer::Delay::new(deadline.saturating_duration_since(Instant::now()))
        });
        let mut backing = Backing::new(self.backoff);
        for attempt in attempts() {
            let mut tx = Tx::new(self.store, attempt);
            let waited = match tx.run("Transaction::run_async", &mut f) {
                Attempt::Done(result) => return hand_back(result, (tx, f)),
                Attempt::Conflict => {
                    if backing.spin() {
                        YieldNow(false).await;
                    }
                    true
                }
                Attempt::Retry => tx.changed_before(timer.as_mut()).await,
            };
            if !waited || self.deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(TxError(Stop::Timeout).into());
            }
        }
        unreachable!("attempts never end")
    }
}

/// 1, 2, 3, ..., then `u32::MAX` for ever.
fn attempts() -> impl Iterator<Item = u32> {
    (1..u32::MAX).chain(std::iter::repeat(u32::MAX))
}

/// Marks the store whose transaction's closure this thread is running, to refuse a transaction
/// started inside it, on any store: on the same store, the inner commit would change what the
/// outer transaction read, and the outer one would run again for ever; on another store, it
/// would commit on its own, not atomically with the outer one. As every such start is refused,
/// a thread runs at most one closure at a time: the mark is the whole stack of transactions.
struct Nesting(usize);

// Not a `const` initializer: loom's `thread_local!` takes none.
#[allow(clippy::missing_const_for_thread_local)]
mod running {
    // The address of the store whose transaction's closure runs on this thread; 0 for none.
    crate::primitive::thread_local!(pub(super) static RUNNING: std::cell::Cell<usize> = std::cell::Cell::new(0));
}
use running::RUNNING;

/// Panics if this thread is running a transaction's closure, on any store: `call` (a
/// transaction, or a single-key change that is one) would not be part of that transaction.
#[track_caller]
pub(crate) fn refuse_nested<K, V, S>(store: &Store<K, V, S>, call: &str) {
    let running = RUNNING.with(std::cell::Cell::get);
    if running == 0 {
        return;
    }
    if running == Nesting::id(store) {
        panic!(
            "{call} inside the closure of a transaction on the same store: transactions do not \
             nest; use the outer closure's Tx"
        );
    }
    panic!(
        "{call} inside the closure of a transaction on another store: a transaction covers one \
         store, and this one would commit on its own, not atomically with the outer one; keep \
         the keys that change together in one store"
    );
}

impl Nesting {
    /// Marks `store` as the one whose transaction's closure runs, until dropped; refused (as
    /// `call`) if this thread already runs one.
    #[track_caller]
    fn enter<K, V, S>(store: &Store<K, V, S>, call: &str) -> Self {
        refuse_nested(store, call);
        Self(RUNNING.with(|running| running.replace(Self::id(store))))
    }

    fn id<K, V, S>(store: &Store<K, V, S>) -> usize {
        store as *const Store<K, V, S> as usize
    }
}

impl Drop for Nesting {
    fn drop(&mut self) {
        RUNNING.with(|running| running.set(self.0));
    }
}

/// Yields to the executor once.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
