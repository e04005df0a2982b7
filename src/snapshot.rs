//! Consistent multi-key reads, for `using` and `dump`.
//!
//! Double collect: read every record, then re-read every version. Versions only grow, so if
//! nothing changed, every record was the committed one at the instant between the two passes.
//! After a few failed passes (writers keep landing on these keys) the snapshot claims its keys
//! instead, with read-only claims that accept whatever they find: once all are in place those
//! keys cannot change, so it cannot fail either, and no snapshot ever answers `BusyRetry`.

use crate::primitive::Arc;
use crate::primitive::AtomicArcOption;
use crate::protocol::Commit;
use crate::record::{Entry, Expect, Rec, Slot};

/// How many double collects to try before claiming (one under loom: models reach the claiming
/// snapshot with a single concurrent commit, within a small preemption bound).
const COLLECTS: usize = if cfg!(loom) { 1 } else { 3 };

/// The records of `slots` (distinct, in id order) at one instant during this call.
pub(crate) fn read_all<K, V>(slots: &[Arc<Slot<K, V>>]) -> Vec<Rec<K, V>> {
    if let [slot] = slots {
        return vec![slot.read()]; // one load is its own instant
    }
    for _ in 0..COLLECTS {
        let records: Vec<_> = slots.iter().map(|slot| slot.read()).collect();
        if cfg!(stm_mutation = "single_collect") || unchanged(slots, &records) {
            return records;
        }
    }
    claim_all(slots)
}

fn unchanged<K, V>(slots: &[Arc<Slot<K, V>>], records: &[Rec<K, V>]) -> bool {
    slots
        .iter()
        .zip(records)
        .all(|(slot, record)| slot.version() == record.version())
}

/// The claiming snapshot: the records its claims held, all at the instant it was decided.
fn claim_all<K, V>(slots: &[Arc<Slot<K, V>>]) -> Vec<Rec<K, V>> {
    let entries = slots
        .iter()
        .map(|slot| Entry::new(slot, Expect::Any(AtomicArcOption::new(None)), None))
        .collect();
    let mut commit = Commit::new(entries);
    commit
        .run()
        .expect("a snapshot's claims accept any version, so it always commits");
    let tombstone = Rec::new(0, None);
    commit
        .entries()
        .iter()
        .map(|entry| {
            entry
                .take_found(&tombstone)
                .expect("every claim of a committed snapshot noted its record")
        })
        .collect()
}
