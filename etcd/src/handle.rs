//! Handles: a key's version and value as read, and its pending write.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::KeyCodec;
use crate::error::Error;
use crate::store::EtcdStore;

/// What the async and the blocking collection share: key lookup, iteration, indexing,
/// `in_doubt`, `Debug`, and the check and gathering before a commit. `$collection` has
/// `store`, `values: Vec<$value>` in key order (each with `key()`, and its [`Handle`] at
/// `.$handle`), `doubt: Option<Attempt>` and `all_from(store)`.
macro_rules! collection_api {
    ($collection:ident, $value:ident, $($handle:ident).+) => {
        impl<'s, K, V> $collection<'s, K, V> {
            /// The handle of `key`, if the collection has it.
            pub fn get<Q>(&self, key: &Q) -> Option<&$value<'s, K, V>>
            where
                K: ::std::borrow::Borrow<Q>,
                Q: Ord + ?Sized,
            {
                self.position(key).map(|at| &self.values[at])
            }

            /// The handle of `key`, mutably, if the collection has it.
            pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut $value<'s, K, V>>
            where
                K: ::std::borrow::Borrow<Q>,
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
                self.values.iter().map($value::key)
            }

            /// The keys and their handles, in key order.
            pub fn iter(&self) -> impl Iterator<Item = (&K, &$value<'s, K, V>)> {
                self.values.iter().map(|value| (value.key(), value))
            }

            /// The handles, mutably, in key order.
            pub fn values_mut(&mut self) -> impl Iterator<Item = &mut $value<'s, K, V>> {
                self.values.iter_mut()
            }

            /// Whether an earlier commit answered [`Error::OutcomeUnknown`] and is still to be
            /// resolved by committing again.
            pub fn in_doubt(&self) -> bool {
                self.doubt.is_some()
            }

            /// What a commit sends: every handle, and the commit in doubt.
            ///
            /// # Panics
            ///
            /// If the collection holds handles of another store.
            #[track_caller]
            fn commit_parts(
                &mut self,
            ) -> (
                Vec<&mut $crate::handle::Handle<K, V>>,
                &mut Option<$crate::handle::Attempt>,
            ) {
                assert!(
                    self.all_from(self.store),
                    "Collection::commit: this collection holds handles of different stores (moved in with std::mem::swap); commit each store's handles separately"
                );
                let handles = self.values.iter_mut().map(|v| &mut v.$($handle).+).collect();
                (handles, &mut self.doubt)
            }

            /// Where `key` is in `values` (a binary search: they are in key order).
            fn position<Q>(&self, key: &Q) -> Option<usize>
            where
                K: ::std::borrow::Borrow<Q>,
                Q: Ord + ?Sized,
            {
                self.values
                    .binary_search_by(|value| value.key().borrow().cmp(key))
                    .ok()
            }
        }

        impl<'s, K, V, Q> ::std::ops::Index<&Q> for $collection<'s, K, V>
        where
            K: ::std::borrow::Borrow<Q>,
            Q: Ord + ?Sized,
        {
            type Output = $value<'s, K, V>;

            #[track_caller]
            fn index(&self, key: &Q) -> &Self::Output {
                self.get(key)
                    .expect("Collection: no such key in this collection")
            }
        }

        impl<K, V, Q> ::std::ops::IndexMut<&Q> for $collection<'_, K, V>
        where
            K: ::std::borrow::Borrow<Q>,
            Q: Ord + ?Sized,
        {
            #[track_caller]
            fn index_mut(&mut self, key: &Q) -> &mut Self::Output {
                self.get_mut(key)
                    .expect("Collection: no such key in this collection")
            }
        }

        impl<K: ::std::fmt::Debug, V: ::std::fmt::Debug> ::std::fmt::Debug
            for $collection<'_, K, V>
        {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_list().entries(&self.values).finish()
            }
        }
    };
}
pub(crate) use collection_api;

/// A write to make at the next commit.
#[derive(Debug, Clone)]
pub(crate) enum Write<V> {
    /// A value, or "no value" (`clear`).
    Value(Option<V>),
    /// Removal: the key is deleted.
    Remove,
}

impl<V> Write<V> {
    /// What a read sees after this write: a removed key has no value.
    pub(crate) fn value(&self) -> Option<&V> {
        match self {
            Write::Value(value) => value.as_ref(),
            Write::Remove => None,
        }
    }
}

/// What a handle knows, shared by the async and the blocking handles.
pub(crate) struct Handle<K, V> {
    pub(crate) key: K,
    pub(crate) etcd_key: Vec<u8>,
    /// etcd's modification revision of the key as read (or as this handle's last commit left
    /// it): the commit compares it, so any change since, a removal and creation again
    /// included, fails the commit.
    pub(crate) revision: i64,
    /// The contract's version (stored in the value).
    pub(crate) version: u64,
    pub(crate) value: Option<V>,
    /// What to write at the next commit.
    pub(crate) pending: Option<Write<V>>,
}

impl<K, V> Handle<K, V> {
    pub(crate) fn new(
        key: K,
        etcd_key: Vec<u8>,
        revision: i64,
        version: u64,
        value: Option<V>,
    ) -> Self {
        Self {
            key,
            etcd_key,
            revision,
            version,
            value,
            pending: None,
        }
    }

    pub(crate) fn value(&self) -> Option<&V> {
        match &self.pending {
            Some(write) => write.value(),
            None => self.value.as_ref(),
        }
    }
}

/// A commit whose outcome is in doubt: its marker key and the marker's lease.
#[derive(Debug, Clone)]
pub(crate) struct Doubt {
    pub(crate) marker: Vec<u8>,
    pub(crate) lease: i64,
}

/// A handle commit in doubt, and what it wrote (handle index, encoded value or `None` for a
/// removal).
#[derive(Debug)]
pub(crate) struct Attempt {
    pub(crate) doubt: Doubt,
    pub(crate) written: Vec<(usize, Option<Vec<u8>>)>,
}

/// One key as read by [`EtcdStore::usevar`]: its version, its value and a pending write.
///
/// ```no_run
/// # async fn demo(store: stm_store_etcd::EtcdStore<String, String>) -> Result<(), stm_store_etcd::Error> {
/// let mut greeting = store.usevar("greeting".to_string()).await?;
/// greeting.set("hello".to_string());
/// greeting.commit().await?;
/// greeting.set("goodbye".to_string()); // a committed handle is clean: use it again
/// greeting.commit().await?;
/// # Ok(())
/// # }
/// ```
pub struct Value<'s, K, V> {
    store: &'s EtcdStore<K, V>,
    pub(crate) handle: Handle<K, V>,
    doubt: Option<Attempt>,
}

impl<'s, K, V> Value<'s, K, V> {
    pub(crate) fn new(store: &'s EtcdStore<K, V>, handle: Handle<K, V>) -> Self {
        Self {
            store,
            handle,
            doubt: None,
        }
    }

    pub(crate) fn store(&self) -> &'s EtcdStore<K, V> {
        self.store
    }

    /// The key.
    pub fn key(&self) -> &K {
        &self.handle.key
    }

    /// The version read (0 for a key never written); after a successful commit that wrote
    /// this handle, the version it wrote.
    pub fn version(&self) -> u64 {
        self.handle.version
    }

    /// The pending value after [`set`](Value::set) or [`clear`](Value::clear); otherwise the
    /// value read. `None` means "no value".
    pub fn value(&self) -> Option<&V> {
        self.handle.value()
    }

    /// Sets the value to write at the next commit.
    pub fn set(&mut self, value: V) {
        self.handle.pending = Some(Write::Value(Some(value)));
    }

    /// Sets "no value" as the value to write at the next commit: a write, not an undo (etcd
    /// stores the explicit "no value" encoding).
    pub fn clear(&mut self) {
        self.handle.pending = Some(Write::Value(None));
    }

    /// Marks the key for removal at the next commit (replacing a pending `set` or `clear`;
    /// they replace it too). The removal lands with the rest of its commit, atomically: the
    /// etcd key is deleted, so the key is absent from `dump`, and a transaction reads it as
    /// having no value. Reading it again with `usevar` or `using` creates a new key, whose
    /// versions start above every removed one's (see the crate docs: the floor).
    ///
    /// After the removal commits, this handle holds the removed key: its version is the
    /// removal's (one above the version read), with no value, and committing it again answers
    /// `ConcurrentUpdate` (read the key again instead).
    ///
    /// ```no_run
    /// # async fn demo(store: stm_store_etcd::EtcdStore<String, i64>) -> Result<(), stm_store_etcd::Error> {
    /// let mut session = store.usevar("session/42".to_string()).await?;
    /// session.remove();
    /// session.commit().await?;
    /// assert!(store.dump().await?.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    pub fn remove(&mut self) {
        self.handle.pending = Some(Write::Remove);
    }

    /// Whether an earlier commit of this handle answered [`Error::OutcomeUnknown`] and is
    /// still to be resolved by committing again.
    pub fn in_doubt(&self) -> bool {
        self.doubt.is_some()
    }

    /// Commits this handle: writes the pending value with version = read version + 1, or, if
    /// nothing is pending, checks that the key is unchanged. One etcd transaction.
    ///
    /// # Errors
    ///
    /// `ConcurrentUpdate` if the key was committed by someone else since it was read;
    /// `BusyRetry` if etcd did not answer within the budget; [`Error::OutcomeUnknown`] if the
    /// request went out and etcd did not answer again in time. In each case the handle is
    /// unchanged.
    pub async fn commit(&mut self) -> Result<(), Error>
    where
        K: KeyCodec + Ord,
        V: Serialize + DeserializeOwned,
    {
        self.store
            .commit_handles(&mut [&mut self.handle], &mut self.doubt)
            .await
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

/// Several keys read at one etcd revision by [`EtcdStore::using`]: one [`Value`] per distinct
/// key, in key order, committed together.
///
/// ```no_run
/// # async fn demo(store: stm_store_etcd::EtcdStore<String, i64>) -> Result<(), stm_store_etcd::Error> {
/// let mut c = store.using(["a".to_string(), "b".to_string()]).await?;
/// c["a"].set(1);
/// assert!(c.get("z").is_none());
/// assert_eq!(c.keys().collect::<Vec<_>>(), ["a", "b"]);
/// c.commit().await?; // writes a, validates b
/// # Ok(())
/// # }
/// ```
pub struct Collection<'s, K, V> {
    store: &'s EtcdStore<K, V>,
    values: Vec<Value<'s, K, V>>,
    doubt: Option<Attempt>,
}

impl<'s, K, V> Collection<'s, K, V> {
    /// `values` in key order.
    pub(crate) fn new(store: &'s EtcdStore<K, V>, values: Vec<Value<'s, K, V>>) -> Self {
        Self {
            store,
            values,
            doubt: None,
        }
    }

    pub(crate) fn all_from(&self, store: &EtcdStore<K, V>) -> bool {
        std::ptr::eq(self.store, store) && self.values.iter().all(|v| std::ptr::eq(v.store, store))
    }

    /// Commits every handle in one etcd transaction: the ones that were set or cleared are
    /// written (version = read version + 1), all of them are compared (read-only keys too:
    /// no write skew). An empty collection commits without asking etcd.
    ///
    /// # Errors
    ///
    /// As [`Value::commit`]; every handle is unchanged after an error.
    ///
    /// # Panics
    ///
    /// If the collection holds handles of another store (only `std::mem::swap` can put them
    /// there).
    pub async fn commit(&mut self) -> Result<(), Error>
    where
        K: KeyCodec + Ord,
        V: Serialize + DeserializeOwned,
    {
        let store = self.store;
        let (mut handles, doubt) = self.commit_parts();
        store.commit_handles(&mut handles, doubt).await
    }
}

collection_api!(Collection, Value, handle);
