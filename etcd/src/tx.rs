//! `atomically` over etcd: a closure run as one transaction, retried for you, as etcd's own Go
//! client runs its STM (`concurrency.NewSTM`, serializable isolation).
//!
//! **Reads at one revision.** The attempt's first read is a linearizable read of that key (and
//! of the keys named to [`Transaction::prefetch`], and of the floor) in one etcd transaction;
//! its revision is the attempt's. Every later read of the attempt reads at that revision, so
//! the closure sees the store as it was at one instant (opacity), however long it runs.
//!
//! **The commit** is one etcd transaction: compare every key read, written keys included, with
//! the modification revision it had at the attempt's revision (0 for a key that was absent),
//! then put every key written (delete every key removed). A key changed since, or removed, or
//! removed and created again, fails the compare: no write skew, no ABA. A transaction that
//! wrote nothing does not commit at all: its reads were one linearizable snapshot already.
//!
//! **A failed compare** reruns the closure after a backoff, from a snapshot that the failed
//! commit read in the same round trip (its `else` branch reads every key the attempt had read,
//! at the revision of the failure), so the next attempt starts without a read.
//!
//! **`retry`** gives the attempt up and watches the keys it read from the revision after the
//! attempt's: any change since, even one made before the watch was set up, wakes it (no lost
//! wake-up, no polling).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{decode_value, encode_value, KeyCodec};
use crate::commit::{Unwritten, Written};
use crate::error::Error;
use crate::handle::Write;
use crate::store::{ranges, revision_of, Budget, EtcdStore, Failure, Floor};

/// Why a transaction's attempt stopped, or why its call gave up: what [`Tx`]'s reads and
/// writes return when the closure must not go on. Pass it up with `?`; the transaction then
/// runs the closure again, or waits (after [`Tx::retry`]), or ends.
///
/// A call ends with one when its deadline passed ([`is_timeout`](TxError::is_timeout)) or when
/// etcd failed it ([`error`](TxError::error): etcd did not answer within the budget, a value
/// that does not decode, a commit whose outcome is unknown, ...). A closure with its own error
/// type `E` needs `E: From<TxError>` (so that `?` works on both).
#[derive(Clone, PartialEq, Eq)]
pub struct TxError(Stop);

#[derive(Clone, PartialEq, Eq, Debug)]
enum Stop {
    /// A read found a revision compacted away: run again from a fresh one.
    Conflict,
    /// The closure called [`Tx::retry`].
    Retry,
    /// The deadline passed.
    Timeout,
    /// etcd failed the call.
    Failed(Error),
}

impl TxError {
    /// Whether the transaction gave up because its deadline passed ([`Transaction::timeout`]).
    pub fn is_timeout(&self) -> bool {
        self.0 == Stop::Timeout
    }

    /// The store's error, if etcd failed the transaction: `BusyRetry` (etcd did not answer
    /// within the budget; nothing was written), [`Error::OutcomeUnknown`] (its commit's answer
    /// was lost and could not be settled), [`Error::Decode`], ... (see [`Error`]).
    pub fn error(&self) -> Option<&Error> {
        match &self.0 {
            Stop::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// The store's error, if etcd failed the transaction (see [`error`](TxError::error)).
    pub fn into_error(self) -> Option<Error> {
        match self.0 {
            Stop::Failed(e) => Some(e),
            _ => None,
        }
    }
}

impl fmt::Debug for TxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Stop::Failed(e) => write!(f, "TxError::Failed({e:?})"),
            stop => write!(f, "TxError::{stop:?}"),
        }
    }
}

impl fmt::Display for TxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Stop::Conflict => f.write_str("this attempt must stop: the transaction runs again"),
            Stop::Retry => {
                f.write_str("the transaction retries: it waits for a key it read to change")
            }
            Stop::Timeout => f.write_str("the transaction's deadline passed"),
            Stop::Failed(e) => write!(f, "the transaction failed: {e}"),
        }
    }
}

impl std::error::Error for TxError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error().map(|e| e as _)
    }
}

/// A transaction's attempt in progress: what [`EtcdStore::atomically`]'s closure reads and
/// writes through. It is a cheap handle (clone it freely); the closure gets it by value and
/// moves it into its future (`|tx| async move { ... }`).
///
/// Reads see the transaction's own writes. Nothing is written to etcd until the closure's
/// future returns `Ok` and the commit lands; then all of it is, at one revision.
///
/// # Panics
///
/// Its calls panic once its attempt has ended (a clone kept past the closure's future).
pub struct Tx<'s, K, V> {
    store: &'s EtcdStore<K, V>,
    shared: Arc<Shared<V>>,
}

impl<K, V> Clone for Tx<'_, K, V> {
    fn clone(&self) -> Self {
        Self {
            store: self.store,
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K, V> fmt::Debug for Tx<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("Tx")
            .field("attempt", &state.attempt)
            .field("revision", &state.at.map(|at| at.revision))
            .field("keys", &state.keys.len())
            .field(
                "writes",
                &state.keys.iter().filter(|k| k.write.is_some()).count(),
            )
            .finish()
    }
}

struct Shared<V> {
    state: Mutex<State<V>>,
    /// Held across a read: one read at a time per attempt, so that the first read alone
    /// decides the attempt's revision.
    io: tokio::sync::Mutex<()>,
}

/// The revision an attempt reads at, and the floor at that revision.
#[derive(Clone, Copy, Debug)]
struct At {
    revision: i64,
    floor: Floor,
}

/// Keys read at an attempt's revision before the closure asked for them (prefetched, or read
/// by a failed commit), by etcd key.
type Cache = HashMap<Vec<u8>, Option<KeyValue>>;

struct State<V> {
    attempt: u32,
    ended: bool,
    stop: Option<Stop>,
    at: Option<At>,
    /// Every key read or written, in the order first touched.
    keys: Vec<TxKey<V>>,
    cache: Cache,
    /// etcd keys to read with the first read (when the attempt starts without a snapshot).
    prefetch: Vec<Vec<u8>>,
    /// Inside [`Tx::or_else`]'s first branch: the writes it replaced (key index, old write),
    /// to put back if it retries.
    undo: Vec<(usize, Option<Write<V>>)>,
    branches: usize,
}

struct TxKey<V> {
    etcd_key: Vec<u8>,
    /// The modification revision at the attempt's revision (0: the key was absent).
    revision: i64,
    version: u64,
    value: Option<V>,
    write: Option<Write<V>>,
}

impl<V> TxKey<V> {
    fn current(&self) -> Option<&V> {
        match &self.write {
            Some(write) => write.value(),
            None => self.value.as_ref(),
        }
    }
}

impl<V> State<V> {
    #[track_caller]
    fn check(&self) -> Result<(), TxError> {
        assert!(
            !self.ended,
            "stm_store_etcd::Tx used after its attempt ended (a clone kept past the closure's future)"
        );
        match &self.stop {
            Some(stop) => Err(TxError(stop.clone())),
            None => Ok(()),
        }
    }

    /// Stops this attempt (a stop already raised stays: a swallowed conflict is not turned
    /// into a retry).
    fn stopped<T>(&mut self, stop: Stop) -> Result<T, TxError> {
        Err(TxError(self.stop.get_or_insert(stop).clone()))
    }

    fn position(&self, etcd_key: &[u8]) -> Option<usize> {
        self.keys.iter().position(|k| k.etcd_key == etcd_key)
    }
}

impl<V: DeserializeOwned> State<V> {
    /// Adds a key read at the attempt's revision (`None`: absent there).
    fn push(&mut self, etcd_key: Vec<u8>, kv: Option<&KeyValue>) -> Result<usize, TxError> {
        let at = self.at.expect("a key is read at the attempt's revision");
        let read = match kv {
            Some(kv) => decode_value(kv.key(), kv.value()).map(|(v, x)| (kv.mod_revision(), v, x)),
            None => Ok((0, at.floor.first_version(), None)),
        };
        let (revision, version, value) = match read {
            Ok(read) => read,
            Err(e) => return self.stopped(Stop::Failed(e)),
        };
        self.keys.push(TxKey {
            etcd_key,
            revision,
            version,
            value,
            write: None,
        });
        Ok(self.keys.len() - 1)
    }
}

impl<'s, K, V> Tx<'s, K, V> {
    fn new(store: &'s EtcdStore<K, V>, attempt: u32, snapshot: Option<(At, Cache)>) -> Self {
        let (at, cache) = match snapshot {
            Some((at, cache)) => (Some(at), cache),
            None => (None, Cache::new()),
        };
        let state = State {
            attempt,
            ended: false,
            stop: None,
            at,
            keys: Vec::new(),
            cache,
            prefetch: Vec::new(),
            undo: Vec::new(),
            branches: 0,
        };
        Self {
            store,
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                io: tokio::sync::Mutex::new(()),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State<V>> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Gives up this attempt and waits until some key it read has changed (watched in etcd
    /// from the attempt's revision on), then runs the closure again. Return what it returns:
    /// `return tx.retry();`, or `tx.retry()?` in a closure with its own error type.
    ///
    /// A closure that read nothing waits forever (or until [`Transaction::timeout`]).
    ///
    /// # Errors
    ///
    /// Always: a [`TxError`] that makes the transaction wait.
    #[track_caller]
    pub fn retry<T>(&self) -> Result<T, TxError> {
        let mut state = self.state();
        state.check()?;
        state.stopped(Stop::Retry)
    }

    /// Which attempt this is: 1 the first time the closure runs, then 2, 3, ... (it stays at
    /// `u32::MAX` from there).
    pub fn attempt(&self) -> u32 {
        self.state().attempt
    }

    /// Opens an [`or_else`](Tx::or_else) branch: the mark to undo writes back to.
    #[track_caller]
    pub(crate) fn enter_branch(&self) -> Result<usize, TxError> {
        let mut state = self.state();
        state.check()?;
        state.branches += 1;
        Ok(state.undo.len())
    }

    /// Closes the first branch of an [`or_else`](Tx::or_else): if it retried, undoes its
    /// writes, clears the retry and answers true (run the second branch).
    pub(crate) fn leave_branch(&self, mark: usize) -> bool {
        let mut state = self.state();
        state.branches -= 1;
        if state.stop != Some(Stop::Retry) {
            return false;
        }
        while state.undo.len() > mark {
            let (at, write) = state.undo.pop().expect("above the mark");
            state.keys[at].write = write;
        }
        state.stop = None;
        true
    }

    /// Runs `first`; if it retries, undoes its writes and runs `second` instead, in the same
    /// transaction (GHC's `orElse`). If both retry, the transaction waits for a change to a
    /// key that either read.
    ///
    /// ```no_run
    /// # async fn demo(store: stm_store_etcd::EtcdStore<String, i64>) -> Result<(), stm_store_etcd::Error> {
    /// let (main, spare) = ("main".to_string(), "spare".to_string());
    /// let (main, spare) = (&main, &spare);
    /// // Take one from "main" if it has any, else from "spare"; else wait for either.
    /// let took = store
    ///     .atomically(|tx| async move {
    ///         tx.or_else(
    ///             |tx| async move {
    ///                 match tx.get(main).await? {
    ///                     Some(n) if n > 0 => tx.set(main, n - 1).await.map(|()| "main"),
    ///                     _ => tx.retry(),
    ///                 }
    ///             },
    ///             |tx| async move {
    ///                 match tx.get(spare).await? {
    ///                     Some(n) if n > 0 => tx.set(spare, n - 1).await.map(|()| "spare"),
    ///                     _ => tx.retry(),
    ///                 }
    ///             },
    ///         )
    ///         .await
    ///     })
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Only a retry of `first` runs `second`: any other `Err` of `first` comes back as it is,
    /// with `first`'s writes kept (pass it up, and the transaction writes nothing).
    ///
    /// # Errors
    ///
    /// What the branch that ran last returns; or, if this attempt was already stopped (a
    /// [`TxError`] the closure did not pass up), that stop, without running either branch.
    pub async fn or_else<T, E, F1, F2>(
        &self,
        first: impl FnOnce(Self) -> F1,
        second: impl FnOnce(Self) -> F2,
    ) -> Result<T, E>
    where
        E: From<TxError>,
        F1: Future<Output = Result<T, E>>,
        F2: Future<Output = Result<T, E>>,
    {
        let mark = self.enter_branch()?;
        let result = first(self.clone()).await;
        if !self.leave_branch(mark) {
            return result;
        }
        second(self.clone()).await
    }
}

impl<K, V> Tx<'_, K, V>
where
    K: KeyCodec,
    V: Serialize + DeserializeOwned,
{
    /// The value of `key` (`None`: no value, or absent), as written by this transaction or
    /// else as read at the attempt's revision. Unlike `usevar`, it creates nothing.
    ///
    /// # Errors
    ///
    /// [`TxError`] if this attempt must stop: pass it up with `?`.
    pub async fn get(&self, key: &K) -> Result<Option<V>, TxError>
    where
        V: Clone,
    {
        let at = self.touch(key).await?;
        Ok(self.state().keys[at].current().cloned())
    }

    /// Whether `key` has a value (as written by this transaction or else as read): false for a
    /// key absent, never written, cleared or removed.
    ///
    /// # Errors
    ///
    /// [`TxError`] if this attempt must stop: pass it up with `?`.
    pub async fn exists(&self, key: &K) -> Result<bool, TxError> {
        let at = self.touch(key).await?;
        Ok(self.state().keys[at].current().is_some())
    }

    /// The version of `key` as read by this attempt. A key that does not exist reads as the
    /// version it would be created at (0, in a store that never removed a key). A key this
    /// transaction writes gets this version + 1 when it commits.
    ///
    /// # Errors
    ///
    /// [`TxError`] if this attempt must stop: pass it up with `?`.
    pub async fn version(&self, key: &K) -> Result<u64, TxError> {
        let at = self.touch(key).await?;
        Ok(self.state().keys[at].version)
    }

    /// Writes `value` to `key` when the transaction commits. The key counts as read too (it
    /// is read first if it was not, and compared at the commit).
    ///
    /// # Errors
    ///
    /// [`TxError`] if this attempt must stop: pass it up with `?`.
    pub async fn set(&self, key: &K, value: V) -> Result<(), TxError> {
        self.write(key, Write::Value(Some(value))).await
    }

    /// Writes "no value" to `key` when the transaction commits (a write, not an undo).
    ///
    /// # Errors
    ///
    /// [`TxError`] if this attempt must stop: pass it up with `?`.
    pub async fn clear(&self, key: &K) -> Result<(), TxError> {
        self.write(key, Write::Value(None)).await
    }

    /// Removes `key` when the transaction commits (see [`Value::remove`](crate::Value::remove)):
    /// from then on it is absent. Until then, this transaction reads it as having no value; a
    /// later `set` or `clear` of the key in this transaction replaces the removal.
    ///
    /// # Errors
    ///
    /// [`TxError`] if this attempt must stop: pass it up with `?`.
    pub async fn remove(&self, key: &K) -> Result<(), TxError> {
        self.write(key, Write::Remove).await
    }

    async fn write(&self, key: &K, write: Write<V>) -> Result<(), TxError> {
        let at = self.touch(key).await?;
        let mut state = self.state();
        let replaced = state.keys[at].write.replace(write);
        if state.branches > 0 {
            state.undo.push((at, replaced));
        }
        Ok(())
    }

    /// The index of `key` among the keys this attempt touched, reading it first if it is new.
    async fn touch(&self, key: &K) -> Result<usize, TxError> {
        self.state().check()?;
        let etcd_key = match self.store.etcd_key(key) {
            Ok(etcd_key) => etcd_key,
            Err(e) => return self.state().stopped(Stop::Failed(e)),
        };
        let _one_read = self.shared.io.lock().await;
        let (at, prefetch) = {
            let mut state = self.state();
            state.check()?;
            if let Some(at) = state.position(&etcd_key) {
                return Ok(at);
            }
            if let Some(kv) = state.cache.remove(&etcd_key) {
                return state.push(etcd_key, kv.as_ref());
            }
            let prefetch = match state.at {
                None => std::mem::take(&mut state.prefetch),
                Some(_) => Vec::new(),
            };
            (state.at, prefetch)
        };
        let read = self.read(&etcd_key, at, prefetch).await;
        let mut state = self.state();
        state.check()?;
        match read {
            Ok((first, kv, cache)) => {
                if let Some(first) = first {
                    state.at = Some(first);
                    state.cache.extend(cache);
                }
                state.push(etcd_key, kv.as_ref())
            }
            // The attempt's revision is gone from etcd's history: start again from a new one.
            Err(Failure::Compacted) => state.stopped(Stop::Conflict),
            Err(failure) => state.stopped(Stop::Failed(failure.into_error())),
        }
    }

    /// Reads `etcd_key` at `at`; or, for the attempt's first read, at the current revision
    /// with the keys to prefetch and the floor, in one etcd transaction (then the new
    /// revision and the prefetched keys come back too).
    #[allow(clippy::type_complexity)]
    async fn read(
        &self,
        etcd_key: &[u8],
        at: Option<At>,
        prefetch: Vec<Vec<u8>>,
    ) -> Result<(Option<At>, Option<KeyValue>, Cache), Failure> {
        let store = self.store;
        if let Some(at) = at {
            let mut response = store
                .idempotent(|| {
                    let key = etcd_key.to_vec();
                    let options = GetOptions::new().with_revision(at.revision);
                    let mut kv = store.kv.clone();
                    store.request(async move { kv.get(key, Some(options)).await })
                })
                .await?;
            return Ok((None, response.take_kvs().into_iter().next(), Cache::new()));
        }
        // As many as fit in one etcd transaction with the key and the floor; the others are
        // read when the closure asks for them.
        let others: Vec<Vec<u8>> = prefetch
            .into_iter()
            .filter(|k| k.as_slice() != etcd_key)
            .take(store.options.max_txn_ops.saturating_sub(2))
            .collect();
        let mut ops = vec![TxnOp::get(etcd_key.to_vec(), None)];
        ops.extend(others.iter().map(|k| TxnOp::get(k.clone(), None)));
        ops.push(store.get_floor());
        let response = store
            .idempotent(|| store.txn(Txn::new().and_then(ops.clone())))
            .await?;
        let mut kvs = ranges(&response);
        let floor = store
            .floor_from(kvs.pop().flatten().as_ref())
            .map_err(|e| Failure::Fatal(e.to_string()))?;
        let mut kvs = kvs.into_iter();
        let kv = kvs.next().flatten();
        let at = At {
            revision: revision_of(&response),
            floor,
        };
        Ok((Some(at), kv, others.into_iter().zip(kvs).collect()))
    }
}

/// How long a transaction waits after a conflict (a failed commit) before it runs the closure
/// again.
///
/// The first conflict of a call reruns the closure at once, from the snapshot that the failed
/// commit read in the same round trip (as etcd's Go STM does): it is as fresh as a new read,
/// and waiting would only make it stale. From the second conflict on, the transaction waits a
/// random time between half and all of a bound that starts at `first` and doubles after each
/// conflict, up to `max`, and then reads the keys the failed attempt read afresh, all in its
/// first request. Randomness keeps clients that conflicted together from meeting again; the
/// wait lets a crowd of clients on the same keys thin out instead of sending commits that
/// fail (each costs etcd a write to its log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
}

impl Backoff {
    /// Waits up to `first` after the second conflict of a call, then up to twice as long after
    /// each conflict more, up to `max`.
    pub const fn exponential(first: Duration, max: Duration) -> Self {
        Self { first, max }
    }

    /// Runs the closure again at once after every conflict, from the snapshot the failed
    /// commit read.
    pub const fn none() -> Self {
        Self {
            first: Duration::ZERO,
            max: Duration::ZERO,
        }
    }

    /// The `n`-th wait of a call (from 1), `random` picking within it.
    fn delay(&self, n: u32, random: u64) -> Duration {
        let doublings = n.saturating_sub(1).min(30);
        let bound = self.first.saturating_mul(1 << doublings).min(self.max);
        let half = bound / 2;
        let spread = u64::try_from((bound - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(random % spread.saturating_add(1))
    }
}

/// At once after the first conflict; then up to 1 ms, doubling to 10 ms (a commit costs a
/// millisecond or more against a local etcd; longer waits only lengthened the slowest
/// transactions in the project's measurements).
impl Default for Backoff {
    fn default() -> Self {
        Self::exponential(Duration::from_millis(1), Duration::from_millis(10))
    }
}

/// A transaction with options (a timeout, a backoff, keys to prefetch): [`EtcdStore::transaction`],
/// then [`run`](Transaction::run).
///
/// ```no_run
/// # async fn demo(store: stm_store_etcd::EtcdStore<String, u64>) -> Result<(), stm_store_etcd::Error> {
/// use std::time::Duration;
///
/// let job = "job".to_string();
/// let job = &job;
/// // Wait at most 2 s for "job" to get a value, then take it.
/// let taken: Result<u64, stm_store_etcd::TxError> = store
///     .transaction()
///     .timeout(Duration::from_secs(2))
///     .run(|tx| async move {
///         match tx.get(job).await? {
///             Some(id) => tx.remove(job).await.map(|()| id),
///             None => tx.retry(),
///         }
///     })
///     .await;
/// match taken {
///     Ok(id) => println!("took job {id}"),
///     Err(e) if e.is_timeout() => println!("no job"),
///     Err(e) => return Err(e.into_error().expect("not a timeout")),
/// }
/// # Ok(())
/// # }
/// ```
#[must_use = "a transaction runs only when `run` is called"]
pub struct Transaction<'s, K, V> {
    store: &'s EtcdStore<K, V>,
    backoff: Backoff,
    deadline: Option<Instant>,
    prefetch: Vec<K>,
}

impl<K, V> fmt::Debug for Transaction<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
            .field("backoff", &self.backoff)
            .field("deadline", &self.deadline)
            .field("prefetch", &self.prefetch.len())
            .finish()
    }
}

impl<'s, K, V> Transaction<'s, K, V>
where
    K: KeyCodec,
    V: Serialize + DeserializeOwned,
{
    pub(crate) fn new(store: &'s EtcdStore<K, V>) -> Self {
        Self {
            store,
            backoff: Backoff::default(),
            deadline: None,
            prefetch: Vec::new(),
        }
    }

    /// How to wait after a conflict before running the closure again.
    pub fn backoff(self, backoff: Backoff) -> Self {
        Self { backoff, ..self }
    }

    /// Gives up at `deadline`: [`run`](Transaction::run) then returns a [`TxError`] that
    /// [`is_timeout`](TxError::is_timeout), with nothing written. It bounds waits in
    /// [`Tx::retry`] and new attempts after a conflict; it never cuts a commit short (that
    /// could leave it in doubt), and each request to etcd keeps its own bound
    /// ([`Options`](crate::Options)).
    pub fn deadline(self, deadline: Instant) -> Self {
        Self {
            deadline: Some(deadline),
            ..self
        }
    }

    /// Gives up after `timeout`, from now: see [`deadline`](Transaction::deadline). A timeout
    /// too long for the clock (`Duration::MAX`) means no deadline.
    pub fn timeout(self, timeout: Duration) -> Self {
        Self {
            deadline: Instant::now().checked_add(timeout),
            ..self
        }
    }

    /// Keys the closure will read: each attempt that starts without a snapshot reads them with
    /// its first read, in the same round trip, instead of one round trip each (etcd's Go STM
    /// calls this `WithPrefetch`). Naming a key that the closure does not read costs a little
    /// bandwidth, nothing more (it is not compared at the commit, nor watched by `retry`).
    /// One etcd transaction holds at most [`Options::max_txn_ops`](crate::Options) − 2 of
    /// them (126 by default); any more are read when the closure asks for them.
    pub fn prefetch(mut self, keys: impl IntoIterator<Item = K>) -> Self {
        self.prefetch.extend(keys);
        self
    }

    /// Runs `f` as one transaction, as often as it takes, and returns its result: see
    /// [`EtcdStore::try_atomically`].
    ///
    /// # Errors
    ///
    /// The closure's own error (nothing written), or `E::from` a [`TxError`]: a timeout
    /// ([`is_timeout`](TxError::is_timeout)), or etcd's failure ([`error`](TxError::error)).
    pub async fn run<T, E, F, Fut>(self, mut f: F) -> Result<T, E>
    where
        E: From<TxError>,
        F: FnMut(Tx<'s, K, V>) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut runner = self.runner()?;
        loop {
            let tx = runner.start();
            let result = f(tx.clone()).await;
            if let Some(done) = runner.finish(&tx, result).await {
                return done;
            }
        }
    }

    /// The loop of attempts, for [`run`](Transaction::run) and the blocking facade.
    pub(crate) fn runner(self) -> Result<Runner<'s, K, V>, TxError> {
        let prefetch = self
            .prefetch
            .iter()
            .map(|key| self.store.etcd_key(key))
            .collect::<Result<Vec<_>, Error>>()
            .map_err(|e| TxError(Stop::Failed(e)))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Ok(Runner {
            store: self.store,
            backoff: self.backoff,
            deadline: self.deadline,
            prefetch,
            attempt: 0,
            conflicts: 0,
            snapshot: None,
            reread: Vec::new(),
            random: (self.store.nonce ^ u64::from(nanos)) | 1,
        })
    }
}

/// The loop of attempts of one transaction: [`start`](Runner::start) an attempt, run the
/// closure with its [`Tx`], then [`finish`](Runner::finish) it (commit, wait, back off).
pub(crate) struct Runner<'s, K, V> {
    store: &'s EtcdStore<K, V>,
    backoff: Backoff,
    deadline: Option<Instant>,
    prefetch: Vec<Vec<u8>>,
    attempt: u32,
    conflicts: u32,
    /// What the last failed commit read, for the next attempt.
    snapshot: Option<(At, Cache)>,
    /// Keys the last attempt read, to read again in the next attempt's first read (when a
    /// wait made the snapshot stale).
    reread: Vec<Vec<u8>>,
    /// xorshift64 state for the backoff's jitter.
    random: u64,
}

/// What an attempt that ended asks for.
enum Next<V> {
    Commit(Plan<V>),
    Conflict,
    Wait(Vec<Vec<u8>>, Option<i64>),
    Fail(Error),
}

/// A commit, as the attempt left it.
struct Plan<V> {
    at: Option<At>,
    keys: Vec<TxKey<V>>,
    /// Keys read at the revision but not touched (prefetched): read again on a conflict too.
    cached: Vec<Vec<u8>>,
}

impl<'s, K, V> Runner<'s, K, V>
where
    K: KeyCodec,
    V: Serialize + DeserializeOwned,
{
    /// A new attempt.
    pub(crate) fn start(&mut self) -> Tx<'s, K, V> {
        self.attempt = self.attempt.saturating_add(1);
        let tx = Tx::new(self.store, self.attempt, self.snapshot.take());
        let mut prefetch = self.prefetch.clone();
        prefetch.extend(std::mem::take(&mut self.reread));
        prefetch.sort();
        prefetch.dedup();
        tx.state().prefetch = prefetch;
        tx
    }

    /// Ends the attempt `tx` whose closure returned `result`: commits it, or waits for a change
    /// (retry), or backs off (conflict). `Some`: the call's answer; `None`: run the closure
    /// again.
    pub(crate) async fn finish<T, E: From<TxError>>(
        &mut self,
        tx: &Tx<'s, K, V>,
        result: Result<T, E>,
    ) -> Option<Result<T, E>> {
        let next = {
            let mut state = tx.state();
            state.ended = true;
            match (state.stop.take(), &result) {
                (Some(Stop::Retry), _) => Next::Wait(
                    state.keys.iter().map(|k| k.etcd_key.clone()).collect(),
                    state.at.map(|at| at.revision),
                ),
                (Some(Stop::Conflict), _) => Next::Conflict,
                (Some(Stop::Failed(e)), _) => Next::Fail(e),
                (Some(Stop::Timeout), _) => unreachable!("an attempt never times out itself"),
                (None, Err(_)) => return Some(result), // the closure's own error: nothing written
                (None, Ok(_)) => Next::Commit(Plan {
                    at: state.at,
                    keys: std::mem::take(&mut state.keys),
                    cached: state.cache.keys().cloned().collect(),
                }),
            }
        };
        let failed = |e: Error| Some(Err(E::from(TxError(Stop::Failed(e)))));
        let timeout = || Some(Err(E::from(TxError(Stop::Timeout))));
        match next {
            Next::Fail(e) => failed(e),
            Next::Wait(keys, revision) => {
                match self.store.changed(&keys, revision, self.deadline).await {
                    Ok(true) => None,
                    Ok(false) => timeout(),
                    Err(e) => failed(e),
                }
            }
            Next::Conflict => self.back_off().await.then(timeout).flatten(),
            Next::Commit(plan) => match self.commit(plan).await {
                Ok(true) => Some(result),
                Ok(false) => self.back_off().await.then(timeout).flatten(),
                Err(e) => failed(e),
            },
        }
    }

    /// Waits after a conflict; true if the deadline has passed (give up).
    async fn back_off(&mut self) -> bool {
        self.conflicts = self.conflicts.saturating_add(1);
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        // The first conflict reruns at once, from the snapshot the failed commit read: as
        // fresh as a new read. A wait would make it stale, so after one the next attempt
        // reads the same keys afresh, in one request.
        let delay = match self.conflicts {
            1 => Duration::ZERO,
            n => self.backoff.delay(n - 1, self.random),
        };
        if !delay.is_zero() {
            // Read the same keys again, all in the next attempt's first read.
            if let Some((_, cache)) = self.snapshot.take() {
                self.reread = cache.into_keys().collect();
            }
        }
        let now = Instant::now();
        match self.deadline {
            Some(deadline) if now + delay >= deadline => {
                tokio::time::sleep_until(deadline.into()).await;
                true
            }
            _ => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                false
            }
        }
    }

    /// Commits the attempt's writes: `Ok(true)` if it landed (or wrote nothing), `Ok(false)`
    /// on a failed compare (then the next attempt starts from what the commit read).
    async fn commit(&mut self, plan: Plan<V>) -> Result<bool, Error> {
        let Plan { at, keys, cached } = plan;
        let Some(at) = at.filter(|_| keys.iter().any(|k| k.write.is_some())) else {
            // Read only: every read was of one linearizable snapshot, taken during the call.
            return Ok(true);
        };
        let store = self.store;
        let mut compares = Vec::with_capacity(keys.len() + 1);
        let mut writes = Vec::new();
        let mut creates = false;
        let mut removed = None;
        for key in &keys {
            compares.push(Compare::mod_revision(
                key.etcd_key.clone(),
                CompareOp::Equal,
                key.revision,
            ));
            let version = key.version.saturating_add(1);
            match &key.write {
                None => {}
                Some(Write::Value(value)) => {
                    let bytes = encode_value(&key.etcd_key, version, value.as_ref())?;
                    writes.push(TxnOp::put(key.etcd_key.clone(), bytes, None));
                    creates |= key.revision == 0;
                }
                Some(Write::Remove) => {
                    if key.revision != 0 {
                        writes.push(TxnOp::delete(key.etcd_key.clone(), None));
                    }
                    removed = removed.max(Some(version));
                }
            }
        }
        if creates {
            // The version of a key created here came from the floor at the attempt's revision.
            compares.push(store.floor_unchanged(&at.floor));
        }
        if let Some(version) = removed {
            writes.push(store.raise_floor(version));
        }
        // Besides a compare and a write per key: the marker on each side, the floor's compare
        // and its raise. One limit for every writing transaction, whatever it writes.
        let limit = store.options.max_txn_ops;
        if keys.len() + 3 > limit {
            return Err(Error::TooManyKeys {
                keys: keys.len(),
                limit: limit.saturating_sub(3),
            });
        }
        // On a failed compare, read everything again in the same round trip: the next
        // attempt's snapshot.
        let mut again: Vec<Vec<u8>> = keys.iter().map(|k| k.etcd_key.clone()).collect();
        again.extend(cached);
        let otherwise: Vec<TxnOp> = if again.len() < limit {
            let mut gets: Vec<TxnOp> = again.iter().map(|k| TxnOp::get(k.clone(), None)).collect();
            gets.push(store.get_floor());
            gets
        } else {
            again.clear();
            Vec::new()
        };
        let mut budget = Budget::new(store.options.budget);
        match store
            .write(&compares, &writes, &otherwise, &mut budget)
            .await
        {
            Ok(Written::Landed(_)) => Ok(true),
            // Never landed, and now never will: run the closure again.
            Ok(Written::Fenced) => Ok(false),
            Ok(Written::Refused(response)) => {
                if !again.is_empty() {
                    let mut kvs = ranges(&response);
                    let floor = store.floor_from(kvs.pop().flatten().as_ref())?;
                    let at = At {
                        revision: revision_of(&response),
                        floor,
                    };
                    self.snapshot = Some((at, again.into_iter().zip(kvs).collect()));
                }
                Ok(false)
            }
            Err(Unwritten::Failed(e) | Unwritten::InDoubt(_, e)) => Err(e),
        }
    }
}

impl<K, V> EtcdStore<K, V>
where
    K: KeyCodec,
    V: Serialize + DeserializeOwned,
{
    /// Runs `f` as one transaction and returns its result: the way to write new code.
    ///
    /// The closure gets a [`Tx`] (by value: move it into the future, `|tx| async move { ... }`),
    /// reads and writes keys through it as it goes (reads see its own writes) and passes every
    /// [`TxError`] up with `?`. When its future returns `Ok`, its reads are compared and its
    /// writes land, all in one etcd transaction; if some key it read had changed, **the
    /// closure runs again**, after a short backoff, until it commits. So it may run more than
    /// once: keep side effects out of it (or make them idempotent), and return what you
    /// computed.
    ///
    /// Every read of one run is at one etcd revision: the closure never sees a state that did
    /// not exist at one instant. [`Tx::retry`] waits (through an etcd watch) until a key read
    /// changes; [`Tx::or_else`] tries an alternative. For an error type of your own use
    /// [`try_atomically`](EtcdStore::try_atomically); for a timeout, another backoff, or keys
    /// to read in the first round trip, [`transaction`](EtcdStore::transaction).
    ///
    /// ```no_run
    /// # async fn demo(store: stm_store_etcd::EtcdStore<String, i64>) -> Result<(), stm_store_etcd::Error> {
    /// let (alice, bob) = ("alice".to_string(), "bob".to_string());
    /// let (alice, bob) = (&alice, &bob);
    /// // Move 30 from alice to bob.
    /// store
    ///     .atomically(|tx| async move {
    ///         let a = tx.get(alice).await?.unwrap_or(0);
    ///         let b = tx.get(bob).await?.unwrap_or(0);
    ///         tx.set(alice, a - 30).await?;
    ///         tx.set(bob, b + 30).await
    ///     })
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// What etcd failed the call with (see [`TxError::error`]): `BusyRetry` when etcd did not
    /// answer within the budget (nothing was written), [`Error::OutcomeUnknown`] when the
    /// commit's answer was lost and etcd did not answer again in time, [`Error::Decode`], ...
    ///
    /// # Panics
    ///
    /// If the closure returns a [`TxError`] that its own attempt did not raise (one kept from
    /// an earlier attempt). A panic in the closure goes on to the caller; nothing is written.
    pub async fn atomically<'s, T, F, Fut>(&'s self, f: F) -> Result<T, Error>
    where
        F: FnMut(Tx<'s, K, V>) -> Fut,
        Fut: Future<Output = Result<T, TxError>>,
    {
        finish_atomically(self.transaction().run(f).await, "EtcdStore::atomically")
    }

    /// [`atomically`](EtcdStore::atomically) for a closure with its own error type `E` (with
    /// `E: From<TxError>`, so that `?` passes both up). An `Err` of the closure ends the
    /// transaction: nothing is written, and the error comes back unchanged.
    ///
    /// # Errors
    ///
    /// The closure's own error, or `E::from` a [`TxError`] carrying etcd's failure
    /// ([`TxError::error`]).
    pub async fn try_atomically<'s, T, E, F, Fut>(&'s self, f: F) -> Result<T, E>
    where
        E: From<TxError>,
        F: FnMut(Tx<'s, K, V>) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.transaction().run(f).await
    }

    /// A transaction with options (a timeout, a backoff, keys to prefetch).
    pub fn transaction(&self) -> Transaction<'_, K, V> {
        Transaction::new(self)
    }
}

/// `atomically`'s answer from the transaction's: etcd's failure as [`Error`].
#[track_caller]
pub(crate) fn finish_atomically<T>(result: Result<T, TxError>, call: &str) -> Result<T, Error> {
    match result {
        Ok(value) => Ok(value),
        Err(TxError(Stop::Failed(e))) => Err(e),
        Err(stale) => panic!(
            "{call}: the closure returned a TxError that its own attempt did not raise ({stale})"
        ),
    }
}
