//! [`Snapshot`]: a consistent view of a store's keys, to iterate in key order.

use std::fmt;

use crate::snapshot::version;
use crate::store::Found;

/// Every key of a store (or of a key range) with its version and value, as they all were at one
/// instant, in key order: see [`Store::snapshot`](crate::Store::snapshot).
///
/// It borrows the values from the store's memory rather than copying them, so replaced values
/// are not freed while it lives; it is given to a closure, which bounds that time.
pub struct Snapshot<'a, K, V> {
    rows: Rows<'a, K, V>,
}

enum Rows<'a, K, V> {
    /// The records read, borrowed (the caller's pin keeps them alive).
    Read(Vec<Found<'a, K, V>>),
    /// Copies, when a key creator's whole-store snapshot (taken on this one's behalf) landed
    /// first.
    Copied(Vec<(K, u64, Option<V>)>),
}

impl<'a, K, V> Snapshot<'a, K, V> {
    pub(crate) fn read(rows: Vec<Found<'a, K, V>>) -> Self {
        Self {
            rows: Rows::Read(rows),
        }
    }

    pub(crate) fn copied(rows: Vec<(K, u64, Option<V>)>) -> Self {
        Self {
            rows: Rows::Copied(rows),
        }
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        match &self.rows {
            Rows::Read(rows) => rows.len(),
            Rows::Copied(rows) => rows.len(),
        }
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each key with its version and value (`None`: no value), in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, u64, Option<&V>)> {
        let (read, copied) = match &self.rows {
            Rows::Read(rows) => (rows.as_slice(), &[][..]),
            Rows::Copied(rows) => (&[][..], rows.as_slice()),
        };
        let read = read.iter().map(|&(slot, record)| {
            let value = record.and_then(|record| record.value.as_ref());
            (&slot.key, version(record), value)
        });
        let copied = copied.iter().map(|(k, v, value)| (k, *v, value.as_ref()));
        read.chain(copied)
    }
}

impl<'s, K, V> IntoIterator for &'s Snapshot<'_, K, V> {
    type Item = (&'s K, u64, Option<&'s V>);
    type IntoIter = Box<dyn Iterator<Item = Self::Item> + 's>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

/// A map from key to `(version, value)`, in key order, as [`Store`](crate::Store)'s `Debug`
/// shows the whole store.
///
/// ```
/// let store: stm_store::Store<&str, u32> = [("b", 2), ("a", 1)].into_iter().collect();
/// let shown = store.snapshot(|snapshot| format!("{snapshot:?}"));
/// assert_eq!(shown, r#"{"a": (1, Some(1)), "b": (1, Some(2))}"#);
/// ```
impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for Snapshot<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries = self
            .iter()
            .map(|(key, version, value)| (key, (version, value)));
        f.debug_map().entries(entries).finish()
    }
}
