//! The same API for synchronous callers: each call runs the async one to completion on a
//! runtime that the store owns.
//!
//! **Never from inside an async runtime.** Blocking a runtime's worker thread on a network
//! call stalls every task of that runtime (and on a single-threaded one, deadlocks). So every
//! call here, [`EtcdStore::connect`] included, first checks
//! `tokio::runtime::Handle::try_current()` and **panics** with a message naming the call if it
//! runs inside a Tokio runtime; use [`crate::EtcdStore`] there (or move the blocking code to
//! `tokio::task::spawn_blocking`, where this check passes). Dropping the blocking store inside
//! a runtime panics too (Tokio refuses to drop a runtime there).
//!
//! ```no_run
//! use stm_store_etcd::blocking::EtcdStore;
//!
//! let store = EtcdStore::<String, i64>::connect(["127.0.0.1:2379"], "bank/")?;
//! let mut c = store.using(["alice".to_string(), "bob".to_string()])?;
//! c["alice"].set(90);
//! c["bob"].set(110);
//! c.commit()?;
//! assert_eq!(store.usevar("alice".to_string())?.value(), Some(&90));
//! # Ok::<(), stm_store_etcd::Error>(())
//! ```

use std::fmt;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::runtime::Runtime;

use crate::codec::KeyCodec;
use crate::error::Error;
use crate::handle::{collection_api, Attempt};
use crate::run::finish_atomically;
use crate::store::endpoint_names;
use crate::{Backoff, Options, TxError};

/// Panics if called from inside a Tokio runtime (see the [module docs](self)).
#[track_caller]
fn outside_runtime(call: &str) {
    assert!(
        tokio::runtime::Handle::try_current().is_err(),
        "stm_store_etcd::blocking::{call} called from inside an async runtime: it would block \
         the runtime's thread; use stm_store_etcd::EtcdStore (the async API) there, or call it \
         from tokio::task::spawn_blocking"
    );
}

/// [`crate::EtcdStore`] for synchronous callers; it owns a small Tokio runtime (one worker
/// thread) that runs the client.
pub struct EtcdStore<K, V> {
    inner: crate::EtcdStore<K, V>,
    runtime: Runtime,
}

impl<K, V> fmt::Debug for EtcdStore<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("blocking::EtcdStore")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<K, V> EtcdStore<K, V> {
    /// Connects with the default [`Options`]: see [`crate::EtcdStore::connect`].
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] if an endpoint is malformed or etcd does not answer.
    ///
    /// # Panics
    ///
    /// Inside an async runtime (see the [module docs](self)).
    #[track_caller]
    pub fn connect<E, S>(endpoints: S, prefix: impl Into<Vec<u8>>) -> Result<Self, Error>
    where
        E: AsRef<str>,
        S: AsRef<[E]>,
    {
        Self::connect_with(endpoints, prefix, Options::default())
    }

    /// Connects with the given [`Options`].
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    ///
    /// # Panics
    ///
    /// Inside an async runtime (see the [module docs](self)).
    #[track_caller]
    pub fn connect_with<E, S>(
        endpoints: S,
        prefix: impl Into<Vec<u8>>,
        options: Options,
    ) -> Result<Self, Error>
    where
        E: AsRef<str>,
        S: AsRef<[E]>,
    {
        outside_runtime("EtcdStore::connect");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("stm-store-etcd")
            .enable_all()
            .build()
            .map_err(|e| Error::Connect {
                endpoints: endpoint_names(endpoints.as_ref()),
                reason: format!("cannot start the client's runtime: {e}"),
            })?;
        let inner = runtime.block_on(crate::EtcdStore::connect_with(endpoints, prefix, options))?;
        Ok(Self { inner, runtime })
    }

    /// The options this store was connected with.
    pub fn options(&self) -> &Options {
        self.inner.options()
    }

    /// How many requests this store has sent to etcd: see [`crate::EtcdStore::requests`].
    pub fn requests(&self) -> u64 {
        self.inner.requests()
    }
}

impl<K, V> EtcdStore<K, V>
where
    K: KeyCodec + Ord,
    V: Serialize + DeserializeOwned,
{
    /// Reads one key: see [`crate::EtcdStore::usevar`].
    ///
    /// # Errors
    ///
    /// As [`crate::EtcdStore::usevar`].
    ///
    /// # Panics
    ///
    /// Inside an async runtime (see the [module docs](self)).
    #[track_caller]
    pub fn usevar(&self, key: K) -> Result<Value<'_, K, V>, Error> {
        outside_runtime("EtcdStore::usevar");
        let inner = self.runtime.block_on(self.inner.usevar(key))?;
        Ok(Value { store: self, inner })
    }

    /// Reads several keys at one revision: see [`crate::EtcdStore::using`].
    ///
    /// # Errors
    ///
    /// As [`crate::EtcdStore::using`].
    ///
    /// # Panics
    ///
    /// Inside an async runtime (see the [module docs](self)).
    #[track_caller]
    pub fn using<I: IntoIterator<Item = K>>(&self, keys: I) -> Result<Collection<'_, K, V>, Error> {
        outside_runtime("EtcdStore::using");
        let handles = self
            .runtime
            .block_on(self.inner.read(keys.into_iter().collect()))?;
        Ok(Collection {
            store: self,
            values: handles
                .into_iter()
                .map(|h| Value {
                    store: self,
                    inner: crate::Value::new(&self.inner, h),
                })
                .collect(),
            doubt: None,
        })
    }

    /// Commits one handle: the same as [`Value::commit`].
    ///
    /// # Errors
    ///
    /// As [`Value::commit`].
    ///
    /// # Panics
    ///
    /// If `value` came from another store, or inside an async runtime.
    #[track_caller]
    pub fn set(&self, value: &mut Value<'_, K, V>) -> Result<(), Error> {
        assert!(
            std::ptr::eq(value.store, self),
            "blocking::EtcdStore::set: this handle belongs to another store; commit it with its own store (or Value::commit)"
        );
        value.commit()
    }

    /// Commits a collection: the same as [`Collection::commit`].
    ///
    /// # Errors
    ///
    /// As [`Collection::commit`].
    ///
    /// # Panics
    ///
    /// If any handle in `values` came from another store, or inside an async runtime.
    #[track_caller]
    pub fn set_values(&self, values: &mut Collection<'_, K, V>) -> Result<(), Error> {
        assert!(
            values.all_from(self),
            "blocking::EtcdStore::set_values: this collection holds handles of another store; commit it with its own store (or Collection::commit)"
        );
        values.commit()
    }

    /// Runs `f` as one transaction and returns its result: see
    /// [`crate::EtcdStore::atomically`]. The closure is a plain one here, and [`Tx`]'s calls
    /// block:
    ///
    /// ```no_run
    /// # let store = stm_store_etcd::blocking::EtcdStore::<String, i64>::connect(["127.0.0.1:2379"], "bank/")?;
    /// let (alice, bob) = ("alice".to_string(), "bob".to_string());
    /// store.atomically(|tx| {
    ///     let a = tx.get(&alice)?.unwrap_or(0);
    ///     let b = tx.get(&bob)?.unwrap_or(0);
    ///     tx.set(&alice, a - 30)?;
    ///     tx.set(&bob, b + 30)
    /// })?;
    /// # Ok::<(), stm_store_etcd::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`crate::EtcdStore::atomically`].
    ///
    /// # Panics
    ///
    /// Inside an async runtime (see the [module docs](self)), or as
    /// [`crate::EtcdStore::atomically`].
    #[track_caller]
    pub fn atomically<'s, T>(
        &'s self,
        f: impl FnMut(&mut Tx<'s, K, V>) -> Result<T, TxError>,
    ) -> Result<T, Error> {
        outside_runtime("EtcdStore::atomically");
        finish_atomically(self.transaction().run(f), "blocking::EtcdStore::atomically")
    }

    /// [`atomically`](EtcdStore::atomically) for a closure with its own error type: see
    /// [`crate::EtcdStore::try_atomically`].
    ///
    /// # Errors
    ///
    /// As [`crate::EtcdStore::try_atomically`].
    ///
    /// # Panics
    ///
    /// Inside an async runtime (see the [module docs](self)).
    #[track_caller]
    pub fn try_atomically<'s, T, E: From<TxError>>(
        &'s self,
        f: impl FnMut(&mut Tx<'s, K, V>) -> Result<T, E>,
    ) -> Result<T, E> {
        outside_runtime("EtcdStore::try_atomically");
        self.transaction().run(f)
    }

    /// A transaction with options (a timeout, a backoff, keys to prefetch): see
    /// [`crate::EtcdStore::transaction`].
    pub fn transaction(&self) -> Transaction<'_, K, V> {
        Transaction {
            inner: self.inner.transaction(),
            runtime: &self.runtime,
        }
    }

    /// Every key with its version and value: see [`crate::EtcdStore::dump`].
    ///
    /// # Errors
    ///
    /// As [`crate::EtcdStore::dump`].
    ///
    /// # Panics
    ///
    /// Inside an async runtime (see the [module docs](self)).
    #[track_caller]
    pub fn dump(&self) -> Result<Vec<(K, u64, Option<V>)>, Error> {
        outside_runtime("EtcdStore::dump");
        self.runtime.block_on(self.inner.dump())
    }
}

/// [`crate::Value`] for synchronous callers.
pub struct Value<'s, K, V> {
    store: &'s EtcdStore<K, V>,
    inner: crate::Value<'s, K, V>,
}

impl<K, V> Value<'_, K, V> {
    /// See [`crate::Value::key`].
    pub fn key(&self) -> &K {
        self.inner.key()
    }

    /// See [`crate::Value::version`].
    pub fn version(&self) -> u64 {
        self.inner.version()
    }

    /// See [`crate::Value::value`].
    pub fn value(&self) -> Option<&V> {
        self.inner.value()
    }

    /// See [`crate::Value::set`].
    pub fn set(&mut self, value: V) {
        self.inner.set(value);
    }

    /// See [`crate::Value::clear`].
    pub fn clear(&mut self) {
        self.inner.clear();
    }

    /// See [`crate::Value::remove`].
    pub fn remove(&mut self) {
        self.inner.remove();
    }

    /// See [`crate::Value::in_doubt`].
    pub fn in_doubt(&self) -> bool {
        self.inner.in_doubt()
    }

    /// Commits this handle: see [`crate::Value::commit`].
    ///
    /// # Errors
    ///
    /// As [`crate::Value::commit`].
    ///
    /// # Panics
    ///
    /// Inside an async runtime (see the [module docs](self)).
    #[track_caller]
    pub fn commit(&mut self) -> Result<(), Error>
    where
        K: KeyCodec + Ord,
        V: Serialize + DeserializeOwned,
    {
        outside_runtime("Value::commit");
        self.store.runtime.block_on(self.inner.commit())
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for Value<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

/// [`crate::Collection`] for synchronous callers.
pub struct Collection<'s, K, V> {
    store: &'s EtcdStore<K, V>,
    values: Vec<Value<'s, K, V>>,
    doubt: Option<Attempt>,
}

impl<K, V> Collection<'_, K, V> {
    fn all_from(&self, store: &EtcdStore<K, V>) -> bool {
        std::ptr::eq(self.store, store) && self.values.iter().all(|v| std::ptr::eq(v.store, store))
    }

    /// Commits every handle in one etcd transaction: see [`crate::Collection::commit`].
    ///
    /// # Errors
    ///
    /// As [`crate::Collection::commit`].
    ///
    /// # Panics
    ///
    /// If the collection holds handles of another store, or inside an async runtime.
    #[track_caller]
    pub fn commit(&mut self) -> Result<(), Error>
    where
        K: KeyCodec + Ord,
        V: Serialize + DeserializeOwned,
    {
        outside_runtime("Collection::commit");
        let store = self.store;
        let (mut handles, doubt) = self.commit_parts();
        store
            .runtime
            .block_on(store.inner.commit_handles(&mut handles, doubt))
    }
}

collection_api!(Collection, Value, inner.handle);

/// [`crate::Tx`] for synchronous closures: each call blocks until etcd answers.
pub struct Tx<'s, K, V> {
    inner: crate::Tx<'s, K, V>,
    runtime: &'s Runtime,
}

impl<K, V> fmt::Debug for Tx<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl<K, V> Tx<'_, K, V>
where
    K: KeyCodec,
    V: Serialize + DeserializeOwned,
{
    /// See [`crate::Tx::get`].
    ///
    /// # Errors
    ///
    /// [`TxError`] if this attempt must stop: pass it up with `?`.
    pub fn get(&mut self, key: &K) -> Result<Option<V>, TxError>
    where
        V: Clone,
    {
        self.runtime.block_on(self.inner.get(key))
    }

    /// See [`crate::Tx::exists`].
    ///
    /// # Errors
    ///
    /// [`TxError`] if this attempt must stop: pass it up with `?`.
    pub fn exists(&mut self, key: &K) -> Result<bool, TxError> {
        self.runtime.block_on(self.inner.exists(key))
    }

    /// See [`crate::Tx::version`].
    ///
    /// # Errors
    ///
    /// [`TxError`] if this attempt must stop: pass it up with `?`.
    pub fn version(&mut self, key: &K) -> Result<u64, TxError> {
        self.runtime.block_on(self.inner.version(key))
    }

    /// See [`crate::Tx::set`].
    ///
    /// # Errors
    ///
    /// [`TxError`] if this attempt must stop: pass it up with `?`.
    pub fn set(&mut self, key: &K, value: V) -> Result<(), TxError> {
        self.runtime.block_on(self.inner.set(key, value))
    }

    /// See [`crate::Tx::clear`].
    ///
    /// # Errors
    ///
    /// [`TxError`] if this attempt must stop: pass it up with `?`.
    pub fn clear(&mut self, key: &K) -> Result<(), TxError> {
        self.runtime.block_on(self.inner.clear(key))
    }

    /// See [`crate::Tx::remove`].
    ///
    /// # Errors
    ///
    /// [`TxError`] if this attempt must stop: pass it up with `?`.
    pub fn remove(&mut self, key: &K) -> Result<(), TxError> {
        self.runtime.block_on(self.inner.remove(key))
    }
}

impl<K, V> Tx<'_, K, V> {
    /// See [`crate::Tx::retry`].
    ///
    /// # Errors
    ///
    /// Always: a [`TxError`] that makes the transaction wait.
    pub fn retry<T>(&mut self) -> Result<T, TxError> {
        self.inner.retry()
    }

    /// See [`crate::Tx::or_else`]: runs `first`; if it retries, undoes its writes and runs
    /// `second` instead, in the same transaction.
    ///
    /// # Errors
    ///
    /// As [`crate::Tx::or_else`].
    pub fn or_else<T, E: From<TxError>>(
        &mut self,
        first: impl FnOnce(&mut Self) -> Result<T, E>,
        second: impl FnOnce(&mut Self) -> Result<T, E>,
    ) -> Result<T, E> {
        let mark = self.inner.enter_branch()?;
        let result = first(self);
        if !self.inner.leave_branch(mark) {
            return result;
        }
        second(self)
    }

    /// See [`crate::Tx::attempt`].
    pub fn attempt(&self) -> u32 {
        self.inner.attempt()
    }
}

/// [`crate::Transaction`] for synchronous callers: [`EtcdStore::transaction`], then
/// [`run`](Transaction::run).
#[must_use = "a transaction runs only when `run` is called"]
pub struct Transaction<'s, K, V> {
    inner: crate::Transaction<'s, K, V>,
    runtime: &'s Runtime,
}

impl<K, V> fmt::Debug for Transaction<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl<'s, K, V> Transaction<'s, K, V>
where
    K: KeyCodec,
    V: Serialize + DeserializeOwned,
{
    /// See [`crate::Transaction::backoff`].
    pub fn backoff(self, backoff: Backoff) -> Self {
        Self {
            inner: self.inner.backoff(backoff),
            ..self
        }
    }

    /// See [`crate::Transaction::deadline`].
    pub fn deadline(self, deadline: Instant) -> Self {
        Self {
            inner: self.inner.deadline(deadline),
            ..self
        }
    }

    /// See [`crate::Transaction::timeout`].
    pub fn timeout(self, timeout: Duration) -> Self {
        Self {
            inner: self.inner.timeout(timeout),
            ..self
        }
    }

    /// See [`crate::Transaction::prefetch`].
    pub fn prefetch(self, keys: impl IntoIterator<Item = K>) -> Self {
        Self {
            inner: self.inner.prefetch(keys),
            ..self
        }
    }

    /// Runs `f` as one transaction, as often as it takes: see [`crate::Transaction::run`].
    ///
    /// # Errors
    ///
    /// As [`crate::Transaction::run`].
    ///
    /// # Panics
    ///
    /// Inside an async runtime (see the [module docs](self)).
    #[track_caller]
    pub fn run<T, E: From<TxError>>(
        self,
        mut f: impl FnMut(&mut Tx<'s, K, V>) -> Result<T, E>,
    ) -> Result<T, E> {
        outside_runtime("Transaction::run");
        let runtime = self.runtime;
        let mut runner = self.inner.runner()?;
        loop {
            let tx = runner.start();
            let mut blocking = Tx {
                inner: tx.clone(),
                runtime,
            };
            let result = f(&mut blocking);
            if let Some(done) = runtime.block_on(runner.finish(&tx, result)) {
                return done;
            }
        }
    }
}
