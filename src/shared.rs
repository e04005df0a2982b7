//! What every handle and transaction of a store reaches besides the slots: the waiters its
//! commits wake, and the counters its calls add to. Its address also names the store: a handle
//! commits only to the store it came from.

use crate::slot::Slot;
use crate::stats::{Count, Counters};
use crate::wake::Waiters;

pub(crate) struct Shared {
    pub(crate) waiters: Waiters,
    pub(crate) counters: Counters,
    /// Test hook: multi-key snapshots claim their keys at once (`Store::force_claiming_snapshots`).
    /// A plain flag, outside loom's model: no model sets it.
    #[cfg(feature = "test-hooks")]
    pub(crate) claiming_snapshots: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Self {
            waiters: Waiters::new(),
            counters: Counters::new(),
            #[cfg(feature = "test-hooks")]
            claiming_snapshots: std::sync::atomic::AtomicBool::new(false),
        }
    }

    #[inline]
    pub(crate) fn count(&self, count: Count) {
        self.counters.add(count);
    }

    /// Whether snapshots skip the double collect (test hook; always false without it).
    #[inline]
    pub(crate) fn claiming_snapshots(&self) -> bool {
        #[cfg(feature = "test-hooks")]
        return self
            .claiming_snapshots
            .load(std::sync::atomic::Ordering::Relaxed);
        #[cfg(not(feature = "test-hooks"))]
        false
    }
}

/// A store as its handles and commits reach it, whatever its hasher: what it shares, and its
/// key index, to unlink the keys a commit removed.
pub(crate) trait Home<K, V>: Sync {
    fn shared(&self) -> &Shared;

    /// Unlinks `slot`, removed by a commit that landed, if the index still lists it.
    fn unlink(&self, slot: &Slot<K, V>);
}
