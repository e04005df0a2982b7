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
    pub fn get(&mut self, key: &K) -> Result<Option<V>, TxError> {
        let at = self.touch(key)?;
        Ok(self.keys[at].current().cloned())
    }

    /// Whether `key` has a value (as written by this transaction or else as read): false for a
    /// key never written, or cleared.
    ///
    /// # Errors
    ///
    /// [`TxError`] if this attempt must stop: pass it up with `?`.
    pub fn exists(&mut self, key: &K) -> Result<bool, TxError> {
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
    pub fn version(&mut self, key: &K) -> Result<u64, TxError> {
        let at = self.touch(key)?;
        Ok(self.keys[at].version)
    }

    /// Writes `value` to `key` when the transaction commits. The key counts as read too (its
    /// version is validated at the commit).
    ///
    /// # Errors
    ///
    /// [`TxError`] if this attempt must stop: pass it up with `?`.
    pub fn set(&mut self, key: &K, value: V) -> Result<(), TxError> {
        self.write(key, Write::Value(Some(value)))
    }

    /// Writes "no value" to `key` when the transaction commits (a write, not an undo).
    ///
    /// # Errors
    ///
    /// [`TxError`] if this attempt must stop: pass it up with `?`.
    pub fn clear(&mut self, key: &K) -> Result<(), TxError> {
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
    pub fn remove(&mut self, key: &K) -> Result<(), TxError> {
        self.write(key, Write::Remove)
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
    /// let store = stm_store::Store::new();
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

    fn write(&mut self, key: &K, value: Write<V>) -> Result<(), TxError> {
        let at = self.touch(key)?;
        let replaced = self.keys[at].write.replace(value);
        if self.branches > 0 {
            self.undo.push((at, replaced));
        }
        Ok(())
    }

    /// The index of `key` among the keys this attempt touched, reading it first if it is new.
    fn touch(&mut self, key: &K) -> Result<usize, TxError> {
        if let Some(stop) = self.stop {
            return Err(TxError(stop));
        }
        if let Some(at) = self.keys.iter().position(|k| k.slot.key == *key) {
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

    /// Runs `f` as this attempt and commits what it did.
    fn run<T, E>(&mut self, f: &mut impl FnMut(&mut Self) -> Result<T, E>) -> Attempt<T, E> {
        self.store.shared().count(Count::TxAttempt);
        let running = Nesting::enter(self.store);
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

    /// Waits, without blocking the thread, until a key read has changed.
    async fn changed_async(&self) {
        self.store.shared().count(Count::TxWait);
        while let Some(watch) = self.watch() {
            watch.notified().await;
        }
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

    /// Gives up at `deadline`: [`run`](Transaction::run) then returns a [`TxError`] that
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
    /// If called from inside a transaction's closure on the same store (the outer transaction
    /// would run again for ever): use the outer closure's [`Tx`].
    #[track_caller]
    pub fn run<T, E: From<TxError>>(
        self,
        mut f: impl FnMut(&mut Tx<'s, K, V, S>) -> Result<T, E>,
    ) -> Result<T, E> {
        Nesting::refuse(self.store);
        let mut backing = Backing::new(self.backoff);
        for attempt in attempts() {
            let mut tx = Tx::new(self.store, attempt);
            let waited = match tx.run(&mut f) {
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

    /// [`run`](Transaction::run) as a future: [`Tx::retry`] waits for a change without
    /// blocking the thread, and a conflict yields to the executor at the backoff's bound.
    /// Runtime-agnostic (it needs no timer). Dropping the future at any point writes nothing.
    ///
    /// For a time limit, wrap the future in your runtime's timeout (`tokio::time::timeout`).
    ///
    /// # Errors
    ///
    /// The closure's own error (nothing written).
    ///
    /// # Panics
    ///
    /// When first polled, if a [`deadline`](Transaction::deadline) or
    /// [`timeout`](Transaction::timeout) was set: a future cannot wake itself at a deadline
    /// without a runtime's timer.
    pub async fn run_async<T, E: From<TxError>>(
        self,
        mut f: impl FnMut(&mut Tx<'s, K, V, S>) -> Result<T, E>,
    ) -> Result<T, E> {
        assert!(
            self.deadline.is_none(),
            "Transaction::run_async: a deadline needs a timer; wrap the future in your runtime's timeout instead"
        );
        let mut backing = Backing::new(self.backoff);
        for attempt in attempts() {
            let mut tx = Tx::new(self.store, attempt);
            match tx.run(&mut f) {
                Attempt::Done(result) => return hand_back(result, (tx, f)),
                Attempt::Conflict if backing.spin() => YieldNow(false).await,
                Attempt::Conflict => {}
                Attempt::Retry => tx.changed_async().await,
            }
        }
        unreachable!("attempts never end")
    }
}

/// 1, 2, 3, ..., then `u32::MAX` for ever.
fn attempts() -> impl Iterator<Item = u32> {
    (1..u32::MAX).chain(std::iter::repeat(u32::MAX))
}

/// Marks the store whose transaction this thread is running, to refuse a nested one: the inner
/// transaction's commit would change what the outer one read, and the outer one would run
/// again for ever.
struct Nesting(usize);

// Not a `const` initializer: loom's `thread_local!` takes none.
#[allow(clippy::missing_const_for_thread_local)]
mod running {
    crate::primitive::thread_local!(pub(super) static RUNNING: std::cell::Cell<usize> = std::cell::Cell::new(0));
}
use running::RUNNING;

impl Nesting {
    /// Panics if this thread is running a closure of a transaction of `store`.
    #[track_caller]
    fn refuse<K, V, S>(store: &Store<K, V, S>) {
        let nested = RUNNING.with(|running| running.get() == Self::id(store));
        assert!(
            !nested,
            "Store::atomically inside a transaction of the same store: use the outer closure's Tx instead"
        );
    }

    /// Marks `store` as the one whose transaction's closure runs, until dropped.
    fn enter<K, V, S>(store: &Store<K, V, S>) -> Self {
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
