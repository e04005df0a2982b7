//! A transaction's attempt: [`Tx`], what the closure reads and writes through, and
//! [`TxError`], what stops it. The loop of attempts (commit, rerun, wait) is in `run`.
//!
//! **Reads at one revision.** The attempt's first read is a linearizable read of that key (and
//! of the keys named to [`Transaction::prefetch`], and of the floor) in one etcd transaction;
//! its revision is the attempt's. Every later read of the attempt reads at that revision, so
//! the closure sees the store as it was at one instant (opacity), however long it runs.
//!
//! **Nothing is written until the commit.** Writes are kept in the attempt; reads see them.
//! A key read that does not exist reads as absent and is compared as absent at the commit:
//! reads create nothing.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use etcd_client::{GetOptions, KeyValue, Txn, TxnOp};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{decode_value, KeyCodec};
use crate::error::Error;
use crate::handle::Write;
use crate::store::{ranges, revision_of, EtcdStore, Failure, Floor};

/// Why a transaction's attempt stopped, or why its call gave up: what [`Tx`]'s reads and
/// writes return when the closure must not go on. Pass it up with `?`; the transaction then
/// runs the closure again, or waits (after [`Tx::retry`]), or ends.
///
/// A call ends with one when its deadline passed ([`is_timeout`](TxError::is_timeout)) or when
/// etcd failed it ([`error`](TxError::error): etcd did not answer within the budget, a value
/// that does not decode, a commit whose outcome is unknown, ...). A closure with its own error
/// type `E` needs `E: From<TxError>` (so that `?` works on both).
#[derive(Clone, PartialEq, Eq)]
pub struct TxError(pub(crate) Stop);

#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) enum Stop {
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

pub(crate) struct Shared<V> {
    state: Mutex<State<V>>,
    /// Held across a read: one read at a time per attempt, so that the first read alone
    /// decides the attempt's revision.
    io: tokio::sync::Mutex<()>,
}

/// The revision an attempt reads at, and the floor at that revision.
#[derive(Clone, Copy, Debug)]
pub(crate) struct At {
    pub(crate) revision: i64,
    pub(crate) floor: Floor,
}

/// Keys read at an attempt's revision before the closure asked for them (prefetched, or read
/// by a failed commit), by etcd key.
pub(crate) type Cache = HashMap<Vec<u8>, Option<KeyValue>>;

/// What an attempt's read brings: the attempt's revision (for its first read), the key, and
/// the keys prefetched with it.
type Read = (Option<At>, Option<KeyValue>, Cache);

pub(crate) struct State<V> {
    attempt: u32,
    pub(crate) ended: bool,
    pub(crate) stop: Option<Stop>,
    pub(crate) at: Option<At>,
    /// Every key read or written, in the order first touched.
    pub(crate) keys: Vec<TxKey<V>>,
    pub(crate) cache: Cache,
    /// etcd keys to read with the first read (when the attempt starts without a snapshot).
    pub(crate) prefetch: Vec<Vec<u8>>,
    /// Inside [`Tx::or_else`]'s first branch: the writes it replaced (key index, old write),
    /// to put back if it retries.
    undo: Vec<(usize, Option<Write<V>>)>,
    branches: usize,
}

pub(crate) struct TxKey<V> {
    pub(crate) etcd_key: Vec<u8>,
    /// The modification revision at the attempt's revision (0: the key was absent).
    pub(crate) revision: i64,
    pub(crate) version: u64,
    pub(crate) value: Option<V>,
    pub(crate) write: Option<Write<V>>,
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
    pub(crate) fn new(
        store: &'s EtcdStore<K, V>,
        attempt: u32,
        snapshot: Option<(At, Cache)>,
    ) -> Self {
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

    pub(crate) fn state(&self) -> MutexGuard<'_, State<V>> {
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
    async fn read(
        &self,
        etcd_key: &[u8],
        at: Option<At>,
        prefetch: Vec<Vec<u8>>,
    ) -> Result<Read, Failure> {
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
