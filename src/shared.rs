//! What every handle and transaction of a store reaches besides the slots: the waiters its
//! commits wake, and the counters its calls add to. Its address also names the store: a handle
//! commits only to the store it came from.

use crate::slot::Slot;
use crate::stats::{Count, Counters};
use crate::wake::Waiters;

pub(crate) struct Shared {
    pub(crate) waiters: Waiters,
    pub(crate) counters: Counters,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Self {
            waiters: Waiters::new(),
            counters: Counters::new(),
        }
    }

    #[inline]
    pub(crate) fn count(&self, count: Count) {
        self.counters.add(count);
    }
}

/// A store as its handles and commits reach it, whatever its hasher: what it shares, and its
/// key index, to unlink the keys a commit removed.
pub(crate) trait Home<K, V>: Sync {
    fn shared(&self) -> &Shared;

    /// Unlinks `slot`, removed by a commit that landed, if the index still lists it.
    fn unlink(&self, slot: &Slot<K, V>);
}
