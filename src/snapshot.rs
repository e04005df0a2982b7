//! Consistent multi-key reads, for `using` and `dump`.
//!
//! Double collect: read every record, then re-read every version. Versions only grow, so if
//! nothing changed, every record was the committed one at the instant between the two passes.
//! After a few failed passes (writers keep landing on these keys) the snapshot claims its keys
//! instead, with snapshot claims that accept whatever they find: once all are in place those
//! keys cannot change, so it cannot fail either, and no snapshot ever answers `BusyRetry`.

use crate::primitive::Guard;
use crate::protocol::{drive, outcome};
use crate::slot::{EntryInit, Kind, Owner, Record, Slot};

/// How many double collects to try before claiming (one under loom: models reach the claiming
/// snapshot with a single concurrent commit, within a small preemption bound).
const COLLECTS: usize = if cfg!(loom) { 1 } else { 3 };

/// The records of `slots` (distinct, in id order) at one instant during this call.
pub(crate) fn read_all<'g, K: 'g, V: 'g>(
    pin: &'g Guard,
    slots: &[&Slot<K, V>],
) -> Vec<Option<&'g Record<V>>> {
    if let [slot] = slots {
        return vec![slot.load(pin).logical()]; // one load is its own instant
    }
    for _ in 0..COLLECTS {
        let records: Vec<_> = slots.iter().map(|slot| slot.load(pin).logical()).collect();
        let unchanged = slots
            .iter()
            .zip(&records)
            .all(|(slot, record)| slot.load(pin).version() == version(*record));
        if unchanged || cfg!(stm_mutation = "single_collect") {
            return records;
        }
    }
    claim_all(pin, slots)
}

pub(crate) fn version<V>(record: Option<&Record<V>>) -> u64 {
    record.map_or(0, |record| record.version)
}

/// The claiming snapshot: the records its claims froze, all at the instant it was decided.
fn claim_all<'g, K: 'g, V: 'g>(
    pin: &'g Guard,
    slots: &[&Slot<K, V>],
) -> Vec<Option<&'g Record<V>>> {
    let entries = slots.iter().map(|slot| EntryInit {
        slot,
        expect: 0,
        after: None,
    });
    let owner = Owner::new(Kind::Snapshot, slots.len(), entries);
    drive(pin, owner.claimer(), 0);
    outcome(owner.txn()).expect("a snapshot accepts any version, so it always commits");
    owner
        .txn()
        .entries()
        .iter()
        .map(|entry| {
            entry
                .noted(pin)
                .expect("the decider noted every claim's record")
        })
        .collect()
}
