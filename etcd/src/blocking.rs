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

use std::borrow::Borrow;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::runtime::Runtime;

use crate::codec::KeyCodec;
use crate::error::Error;
use crate::handle::{Attempt, Handle};
use crate::Options;

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
                endpoints: endpoints
                    .as_ref()
                    .iter()
                    .map(|e| e.as_ref().to_string())
                    .collect(),
                reason: format!("cannot start the client's runtime: {e}"),
            })?;
        let inner = runtime.block_on(crate::EtcdStore::connect_with(endpoints, prefix, options))?;
        Ok(Self { inner, runtime })
    }

    /// The options this store was connected with.
    pub fn options(&self) -> &Options {
        self.inner.options()
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
        let mut handles = self.runtime.block_on(self.inner.read(vec![key]))?;
        let handle = handles.pop().expect("one key read");
        Ok(Value::new(self, handle))
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
            values: handles.into_iter().map(|h| Value::new(self, h)).collect(),
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
    handle: Handle<K, V>,
    doubt: Option<Attempt>,
}

impl<'s, K, V> Value<'s, K, V> {
    fn new(store: &'s EtcdStore<K, V>, handle: Handle<K, V>) -> Self {
        Self {
            store,
            handle,
            doubt: None,
        }
    }

    /// The key.
    pub fn key(&self) -> &K {
        &self.handle.key
    }

    /// The version read (0 for a key never written), or the version last committed.
    pub fn version(&self) -> u64 {
        self.handle.version
    }

    /// The pending value after `set`/`clear`; otherwise the value read.
    pub fn value(&self) -> Option<&V> {
        self.handle.value()
    }

    /// Sets the value to write at the next commit.
    pub fn set(&mut self, value: V) {
        self.handle.pending = Some(Some(value));
    }

    /// Sets "no value" as the value to write at the next commit (a write).
    pub fn clear(&mut self) {
        self.handle.pending = Some(None);
    }

    /// Whether an earlier commit answered [`Error::OutcomeUnknown`] and is still to be
    /// resolved by committing again.
    pub fn in_doubt(&self) -> bool {
        self.doubt.is_some()
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
        let store = self.store;
        store.runtime.block_on(
            store
                .inner
                .commit_handles(&mut [&mut self.handle], &mut self.doubt),
        )
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for Value<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Value")
            .field("key", &self.handle.key)
            .field("version", &self.handle.version)
            .field("value", &self.handle.value)
            .field("pending", &self.handle.pending)
            .finish()
    }
}

/// [`crate::Collection`] for synchronous callers.
pub struct Collection<'s, K, V> {
    store: &'s EtcdStore<K, V>,
    values: Vec<Value<'s, K, V>>,
    doubt: Option<Attempt>,
}

impl<'s, K, V> Collection<'s, K, V> {
    fn all_from(&self, store: &EtcdStore<K, V>) -> bool {
        std::ptr::eq(self.store, store) && self.values.iter().all(|v| std::ptr::eq(v.store, store))
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
        self.values.iter().map(|value| (value.key(), value))
    }

    /// The handles, mutably, in key order.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Value<'s, K, V>> {
        self.values.iter_mut()
    }

    /// Whether an earlier commit answered [`Error::OutcomeUnknown`] and is still to be
    /// resolved by committing again.
    pub fn in_doubt(&self) -> bool {
        self.doubt.is_some()
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
        assert!(
            self.all_from(self.store),
            "Collection::commit: this collection holds handles of different stores (moved in with std::mem::swap); commit each store's handles separately"
        );
        let store = self.store;
        let mut handles: Vec<&mut Handle<K, V>> =
            self.values.iter_mut().map(|v| &mut v.handle).collect();
        store
            .runtime
            .block_on(store.inner.commit_handles(&mut handles, &mut self.doubt))
    }

    fn position<Q>(&self, key: &Q) -> Option<usize>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.values
            .binary_search_by(|value| value.key().borrow().cmp(key))
            .ok()
    }
}

impl<'s, K, V, Q> std::ops::Index<&Q> for Collection<'s, K, V>
where
    K: Borrow<Q>,
    Q: Ord + ?Sized,
{
    type Output = Value<'s, K, V>;

    #[track_caller]
    fn index(&self, key: &Q) -> &Self::Output {
        self.get(key)
            .expect("Collection: no such key in this collection")
    }
}

impl<K, V, Q> std::ops::IndexMut<&Q> for Collection<'_, K, V>
where
    K: Borrow<Q>,
    Q: Ord + ?Sized,
{
    #[track_caller]
    fn index_mut(&mut self, key: &Q) -> &mut Self::Output {
        self.get_mut(key)
            .expect("Collection: no such key in this collection")
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for Collection<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.values).finish()
    }
}
