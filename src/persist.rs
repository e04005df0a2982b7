//! Building stores from data, and saving them: `FromIterator`, `Extend`, and (with the `serde`
//! feature) `Serialize`/`Deserialize` of a consistent snapshot.

use std::hash::{BuildHasher, Hash};

use crate::Store;

#[cfg(feature = "serde")]
impl<K, V, S> Store<K, V, S>
where
    K: Ord + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync,
{
    /// Adds `rows` (as [`dump`](Store::dump) returns them) to a store that has none of their
    /// keys yet: each key gets exactly its version and value.
    pub(crate) fn restore(
        &self,
        rows: impl IntoIterator<Item = (K, u64, Option<V>)>,
    ) -> Result<(), RestoreError> {
        for (key, version, value) in rows {
            if version == 0 && value.is_some() {
                return Err(RestoreError::ValueAtVersionZero);
            }
            // Every version a store can hold loads: a loaded store saves again and loads back.
            if version > crate::protocol::MAX_VERSION {
                return Err(RestoreError::VersionTooLarge);
            }
            if self.contains_key(&key) {
                return Err(RestoreError::DuplicateKey);
            }
            let slot = self.slot_of(&key);
            if version > 0 {
                let record = Box::new(crate::slot::Record { version, value });
                if slot.restore(record).is_err() {
                    return Err(RestoreError::DuplicateKey); // another thread wrote it meanwhile
                }
            }
        }
        Ok(())
    }
}

/// Why rows could not be restored.
#[cfg(feature = "serde")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RestoreError {
    DuplicateKey,
    ValueAtVersionZero,
    VersionTooLarge,
}

#[cfg(feature = "serde")]
impl std::fmt::Display for RestoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::DuplicateKey => "a key appears twice in the snapshot",
            Self::ValueAtVersionZero => "a key has a value at version 0 (never written)",
            Self::VersionTooLarge => {
                "a key's version is above 2^62 - 1, the highest version a store can hold"
            }
        })
    }
}

/// Writes each pair as its own commit, in order: a key gets the value of its last pair, and
/// its version goes up by one for each pair (a new key's first write is version 1, in a store
/// that never removed a key: contract point 23).
///
/// ```
/// let mut store: stm_store::Store<&str, u32> = [("a", 1), ("b", 2)].into_iter().collect();
/// store.extend([("a", 10)]);
/// assert_eq!(store.dump(), vec![("a", 2, Some(10)), ("b", 1, Some(2))]);
/// ```
impl<K, V, S> Extend<(K, V)> for Store<K, V, S>
where
    K: Ord + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync,
{
    #[track_caller]
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, pairs: I) {
        for (key, value) in pairs {
            self.insert(key, value);
        }
    }
}

/// A store with the pairs written in order: see [`Extend`](#impl-Extend<(K,+V)>-for-Store<K,+V,+S>).
impl<K, V, S> FromIterator<(K, V)> for Store<K, V, S>
where
    K: Ord + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Default + Send + Sync,
{
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let mut store = Self::default();
        store.extend(pairs);
        store
    }
}

#[cfg(feature = "serde")]
mod with_serde {
    use std::fmt;
    use std::hash::{BuildHasher, Hash};
    use std::marker::PhantomData;

    use serde::de::{Deserialize, Deserializer, Error as _, SeqAccess, Visitor};
    use serde::ser::{Serialize, SerializeSeq, Serializer};

    use crate::Store;

    /// A consistent snapshot of the store (as [`Store::dump`] takes it): a sequence of
    /// `(key, version, value)` rows in key order.
    impl<K, V, S> Serialize for Store<K, V, S>
    where
        K: Ord + Hash + Clone + Send + Sync + 'static + Serialize,
        V: Clone + Send + Sync + 'static + Serialize,
        S: BuildHasher + Clone + Send + Sync,
    {
        fn serialize<Ser: Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
            let rows = self.dump();
            let mut seq = serializer.serialize_seq(Some(rows.len()))?;
            for row in &rows {
                seq.serialize_element(row)?;
            }
            seq.end()
        }
    }

    /// A store holding exactly the rows of a serialized snapshot: each key with its version
    /// and value. A key given twice, or a value at version 0, is an error. Only the rows are
    /// saved, not which keys were removed: in the loaded store, a key removed before the save
    /// starts again at version 0 when it is read.
    impl<'de, K, V, S> Deserialize<'de> for Store<K, V, S>
    where
        K: Ord + Hash + Clone + Send + Sync + 'static + Deserialize<'de>,
        V: Clone + Send + Sync + 'static + Deserialize<'de>,
        S: BuildHasher + Clone + Default + Send + Sync,
    {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_seq(Rows(PhantomData))
        }
    }

    struct Rows<K, V, S>(PhantomData<(K, V, S)>);

    impl<'de, K, V, S> Visitor<'de> for Rows<K, V, S>
    where
        K: Ord + Hash + Clone + Send + Sync + 'static + Deserialize<'de>,
        V: Clone + Send + Sync + 'static + Deserialize<'de>,
        S: BuildHasher + Clone + Default + Send + Sync,
    {
        type Value = Store<K, V, S>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a sequence of (key, version, value) rows")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let store = Store::default();
            let mut rows = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(row) = seq.next_element::<(K, u64, Option<V>)>()? {
                rows.push(row);
            }
            store.restore(rows).map_err(A::Error::custom)?;
            Ok(store)
        }
    }
}
