//! Consistent multi-key reads, for `using` and `dump`.
//!
//! Double collect: read every record, then re-read every version. Versions only grow, so if
//! nothing changed, every record was the committed one at the instant between the two passes.
//! After a few failed passes (writers keep landing on these keys) the snapshot claims its keys
//! instead, with snapshot claims that accept whatever they find: once all are in place those
//! keys cannot change, so it cannot fail either, and no snapshot ever answers `BusyRetry`. (A
//! test hook, `Store::force_claiming_snapshots`, skips the double collect, so that tests reach
//! the claiming snapshot at will.)

use crate::primitive::Guard;
use crate::protocol::{drive, outcome};
use crate::shared::Shared;
use crate::slot::{EntryInit, Kind, Owner, Record, Slot, SlotRef};
use crate::stats::Count;

#[cfg(feature = "test-hooks")]
impl<K, V, S> crate::Store<K, V, S>
where
    K: Ord + std::hash::Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: std::hash::BuildHasher + Clone + Send + Sync,
{
    /// Test hook (`test-hooks` feature): while `on`, this store's snapshots of several keys
    /// (`using`, `dump`, `snapshot`, `snapshot_range`) skip the double collect and claim their
    /// keys at once, as they otherwise do only after repeated failed collects (rare on few
    /// cores). Each such snapshot is counted in [`Stats::snapshot_claims`](crate::Stats).
    #[doc(hidden)]
    pub fn force_claiming_snapshots(&self, on: bool) {
        let flag = &self.shared().claiming_snapshots;
        flag.store(on, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How many double collects to try before claiming (one under loom: models reach the claiming
/// snapshot with a single concurrent commit, within a small preemption bound).
const COLLECTS: usize = if cfg!(loom) { 1 } else { 3 };

/// Something that reads one slot's record: a handle, or a row of `dump`.
pub(crate) trait Read<'g, K, V> {
    fn slot(&self) -> &Slot<K, V>;
    /// Takes `record` as what was read (again, if an earlier pass was not consistent).
    fn take(&mut self, record: Option<&'g Record<V>>);
    /// The version taken.
    fn version(&self) -> u64;
}

/// Reads every item's record (slots distinct, in id order) at one instant during this call.
pub(crate) fn read_all<'g, K: 'g, V: 'g>(
    pin: &'g Guard,
    items: &mut [impl Read<'g, K, V>],
    shared: &Shared,
) {
    if let [item] = items {
        return item.take(item.slot().load(pin).logical()); // one load is its own instant
    }
    let collects = match shared.claiming_snapshots() {
        true => 0, // test hook: straight to claiming
        false => COLLECTS,
    };
    for _ in 0..collects {
        for item in items.iter_mut() {
            item.take(item.slot().load(pin).logical());
        }
        let unchanged = items
            .iter()
            .all(|item| item.slot().load(pin).version() == item.version());
        if unchanged || cfg!(stm_mutation = "single_collect") {
            return;
        }
    }
    shared.count(Count::SnapshotClaim);
    claim_all(pin, items, shared)
}

pub(crate) fn version<V>(record: Option<&Record<V>>) -> u64 {
    record.map_or(0, |record| record.version)
}

/// The claiming snapshot: the records its claims froze, all at the instant it was decided.
///
/// Its entries count their slots (a helper may reach them after this thread let go of its
/// pin). A slot with no count left was removed and unlinked: it is absent at any later
/// instant, so it gets no entry, and its item takes the tombstone it holds (final).
fn claim_all<'g, K: 'g, V: 'g>(pin: &'g Guard, items: &mut [impl Read<'g, K, V>], shared: &Shared) {
    let counted: Vec<Option<SlotRef<'_, K, V>>> = items
        .iter()
        .map(|item| SlotRef::acquire(item.slot()))
        .collect();
    let claimed: Vec<bool> = counted.iter().map(Option::is_some).collect();
    let len = claimed.iter().filter(|&&claimed| claimed).count();
    let entries = counted.into_iter().flatten().map(|slot| EntryInit {
        slot, // the entry takes the count over
        expect: 0,
        after: None,
    });
    let owner = Owner::new(Kind::Snapshot, len, entries);
    drive(pin, owner.claimer(), 0, shared);
    outcome(owner.txn()).expect("a snapshot accepts any version, so it always commits");
    let mut entries = owner.txn().entries().iter();
    for (item, claimed) in items.iter_mut().zip(claimed) {
        let record = match claimed {
            true => entries
                .next()
                .and_then(|entry| entry.noted(pin))
                .expect("the decider noted every claim's record"),
            false => item.slot().load(pin).logical(),
        };
        item.take(record);
    }
}
