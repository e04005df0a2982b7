//! The commit protocol: ordered claims on a shared descriptor, with helping.
//!
//! **Invariants.** I1: an undecided claim is never replaced. I2: a plain record, or a claim
//! whose transaction is decided, has a fixed logical record. I3: a claim's `before` and
//! `after` are plain records. I4: per slot, logical versions strictly increase, so a version
//! names one record. The `slot` module enforces I1 and I4 on every compare-and-swap, so no
//! mistake here can free memory early; this module decides what to claim, when, and who
//! helps whom.
//!
//! **Linearization points.** A multi-key commit: the compare-and-swap of its status from
//! Undecided to Committed, which flips every claimed key at once. A single-key commit: its
//! slot's compare-and-swap. A read-only commit: the instant of its first load, when every key
//! still held the version read (versions only grow, and each matched at its own load).
//!
//! **Progress.** Nobody waits. A thread blocked by another transaction's undecided claim helps
//! that transaction to its decision, resuming it at the entry where it was found (its earlier
//! entries are claimed, and stay so until its decision): helping a k-key transaction costs
//! O(k log k), not O(k²). Blocking slot ids strictly increase along the stack of helped
//! transactions, so it is finite, and a thread stopped anywhere inside a commit delays nobody.
//! A helper aborts another transaction only when that transaction fails its own validation,
//! so `Aborted` always means a real conflict, and commits never answer `BusyRetry`.

use crate::primitive::{pin, Guard};
use crate::shared::{Home, Shared};
use crate::slot::{
    Claimer, Entry, EntryInit, Hold, Kind, Owner, Record, Slot, SlotRef, Status, Txn, REMOVED,
};
use crate::stats::Count;
use crate::Error;

/// The highest version a key can have: 2^62 − 1. Bits 62 and 63 belong to the core (63 marks a
/// removed key). A commit that would go above it panics before writing anything (see
/// `check_headroom`); loading a snapshot accepts every version up to it.
pub(crate) const MAX_VERSION: u64 = (1 << 62) - 1;

/// Panics, before anything is written, if writing over version `read` would go above
/// [`MAX_VERSION`]. A removal needs one version more: the key created again after it starts one
/// above the removal's version. Only a store loaded with versions within a commit or two of the
/// top gets here: commits alone would take centuries to.
fn check_headroom<V>(read: u64, write: &Write<V>) {
    let highest = match write {
        Write::Value(_) => MAX_VERSION,
        Write::Remove => MAX_VERSION - 1,
    };
    assert!(
        read < highest,
        "stm-store: this commit would take a key from version {read} past {highest}: versions \
         stop at 2^62 - 1 (a removal needs one more, for the key created again after it), and \
         only a store loaded with versions that near the top gets here; nothing was written"
    );
}

/// What a commit writes to one key.
#[derive(Clone, Debug)]
pub(crate) enum Write<V> {
    /// A value, or "no value" (`None`).
    Value(Option<V>),
    /// The key's removal: a tombstone, then the key is unlinked.
    Remove,
}

impl<V> Write<V> {
    /// The value the key has once this is written (`None`: no value, or removed).
    pub(crate) fn value(&self) -> Option<&V> {
        match self {
            Self::Value(value) => value.as_ref(),
            Self::Remove => None,
        }
    }

    /// The record that writes this over version `read`.
    fn record(&self, read: u64) -> Box<Record<V>>
    where
        V: Clone,
    {
        debug_assert!(read & REMOVED == 0, "no handle keeps a tombstone's version");
        let (removed, value) = match self {
            Self::Value(value) => (0, value.clone()),
            Self::Remove => (REMOVED, None),
        };
        Box::new(Record {
            version: (read + 1) | removed,
            value,
        })
    }
}

/// A handle's part in a commit: its slot, the version it read, and what it writes.
pub(crate) struct Part<'a, 's, K, V> {
    pub(crate) slot: &'a SlotRef<'s, K, V>,
    pub(crate) version: u64,
    pub(crate) write: Option<&'a Write<V>>,
}

impl<K, V> Clone for Part<'_, '_, K, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, V> Copy for Part<'_, '_, K, V> {}

/// Commits `parts` (of the store `home`) atomically: `Ok` once every write is visible,
/// `ConcurrentUpdate` if some key had changed since it was read; then nothing was written. A
/// commit that wrote wakes the store's waiters; one that removed keys unlinks them.
///
/// # Panics
/// If two parts are handles of the same key (only `std::mem::swap` can make that).
pub(crate) fn commit<'a, 's: 'a, K: 's, V: Clone + 's>(
    home: &dyn Home<K, V>,
    parts: impl ExactSizeIterator<Item = Part<'a, 's, K, V>> + Clone,
) -> Result<(), Error> {
    let shared = home.shared();
    let (mut writes, mut removes) = (0, 0);
    for part in parts.clone() {
        let Some(write) = part.write else { continue };
        check_headroom(part.version, write);
        writes += 1;
        removes += usize::from(matches!(write, Write::Remove));
    }
    let result = match (writes, parts.len()) {
        (0, _) => validate(parts.clone()),
        (1, 1) => {
            let part = parts.clone().next().expect("one part");
            let write = part.write.expect("one write");
            commit_one(shared, part.slot, part.version, write)
        }
        _ => commit_many(shared, parts.clone()), // whoever decides it wakes the waiters
    };
    shared.count(if result.is_ok() {
        Count::Commit
    } else {
        Count::Conflict
    });
    if removes > 0 && result.is_ok() {
        unlink_removed(home, parts);
    }
    result
}

/// After a commit that landed: unlinks the keys it removed (a lookup that finds one first
/// unlinks it itself, so a committer stopped before this delays nothing).
fn unlink_removed<'a, 's: 'a, K: 's, V: 's>(
    home: &dyn Home<K, V>,
    parts: impl Iterator<Item = Part<'a, 's, K, V>>,
) {
    for part in parts.filter(|part| matches!(part.write, Some(Write::Remove))) {
        home.unlink(part.slot);
    }
}

/// A commit that only read: it holds if, in one pass, every key still has its read version.
fn validate<'a, 's: 'a, K: 's, V: 's>(
    mut parts: impl Iterator<Item = Part<'a, 's, K, V>>,
) -> Result<(), Error> {
    let pin = pin();
    let unchanged = parts.all(|part| part.slot.load(&pin).version() == part.version);
    match unchanged || cfg!(stm_mutation = "skip_read_validation") {
        true => Ok(()),
        false => Err(Error::ConcurrentUpdate),
    }
}

/// The fast path: one key written, nothing else read, no descriptor.
fn commit_one<K, V: Clone>(
    shared: &Shared,
    slot: &Slot<K, V>,
    version: u64,
    write: &Write<V>,
) -> Result<(), Error> {
    let pin = pin();
    let mut record = write.record(version);
    loop {
        let current = slot.load(&pin);
        if let Some(blocker) = current.blocker() {
            help(&pin, blocker, slot.id, shared);
            continue;
        }
        if current.version() != version || current.is_final() {
            return Err(Error::ConcurrentUpdate);
        }
        match slot.replace(&pin, current, record) {
            Ok(()) => {
                shared.waiters.committed(std::iter::once(slot.id));
                return Ok(());
            }
            Err(back) => record = back,
        }
    }
}

fn commit_many<'a, 's: 'a, K: 's, V: Clone + 's>(
    shared: &Shared,
    parts: impl ExactSizeIterator<Item = Part<'a, 's, K, V>>,
) -> Result<(), Error> {
    #[cfg(stm_mutation = "no_descriptor")]
    return commit_without_descriptor(shared, parts);

    #[allow(unreachable_code)]
    let owner = Owner::new(Kind::Commit, parts.len(), parts.map(entry));
    check_distinct(&owner);
    let pin = pin();
    drive(&pin, owner.claimer(), 0, shared);
    outcome(owner.txn())
}

/// A commit's entry for `part`: the record to write is a copy of the handle's pending value
/// (the handle keeps its own, unchanged if the commit fails).
pub(crate) fn entry<'s, K, V: Clone>(part: Part<'_, 's, K, V>) -> EntryInit<'s, K, V> {
    EntryInit {
        after: part.write.map(|write| write.record(part.version)),
        slot: part.slot.clone(),
        expect: part.version,
    }
}

/// Checks a new transaction's entries (sorted by slot id) for a key given twice.
pub(crate) fn check_distinct<K, V>(owner: &Owner<K, V>) {
    let twice = owner.txn().entries().windows(2).any(|w| w[0].id == w[1].id);
    assert!(!twice, "a commit holds two handles of the same key");
}

/// The deliberate breakage `no_descriptor`: validate every key, then write each one.
#[cfg(stm_mutation = "no_descriptor")]
fn commit_without_descriptor<'a, 's: 'a, K: 's, V: Clone + 's>(
    shared: &Shared,
    parts: impl ExactSizeIterator<Item = Part<'a, 's, K, V>>,
) -> Result<(), Error> {
    let parts: Vec<_> = parts.collect();
    let pin = pin();
    if parts
        .iter()
        .any(|p| p.slot.load(&pin).version() != p.version)
    {
        return Err(Error::ConcurrentUpdate);
    }
    for part in parts.iter().filter(|p| p.write.is_some()) {
        commit_one(shared, part.slot, part.version, part.write.unwrap())?;
    }
    Ok(())
}

pub(crate) fn outcome<K, V>(txn: &Txn<K, V>) -> Result<(), Error> {
    match txn.status() {
        Status::Committed => Ok(()),
        Status::Aborted => Err(Error::ConcurrentUpdate),
        Status::Undecided => unreachable!("driving a transaction decides it"),
    }
}

/// Helps `txn`, found undecided in slot `id`, to its decision.
pub(crate) fn help<K, V>(pin: &Guard, txn: &Txn<K, V>, id: u64, shared: &Shared) {
    if let Some(hold) = txn.hold(pin) {
        drive(pin, hold.claimer(), txn.position(id), shared);
    }
}

/// Drives `root` to its decision from its entry `start`, helping every transaction in its way
/// (an explicit stack: along it, blocking slot ids strictly increase, so it is finite).
pub(crate) fn drive<'g, K: 'g, V: 'g>(
    pin: &'g Guard,
    root: Claimer<'_, K, V>,
    start: usize,
    shared: &Shared,
) {
    let mut root_at = start;
    let mut stack: Vec<(Hold<'g, K, V>, usize)> = Vec::new();
    loop {
        let blocked = match stack.last_mut() {
            Some((hold, at)) => advance(pin, hold.claimer(), at, shared),
            None => advance(pin, root, &mut root_at, shared),
        };
        match blocked {
            Some((txn, id)) => {
                if let Some(hold) = txn.hold(pin) {
                    stack.push((hold, txn.position(id)));
                }
            }
            None if stack.pop().is_none() => return,
            None => {}
        }
    }
}

/// Claims the entries of `claimer`'s transaction from `*at` on, then decides it; or returns
/// the transaction in the way, with the slot where it was found.
fn advance<'g, K, V>(
    pin: &'g Guard,
    claimer: Claimer<'_, K, V>,
    at: &mut usize,
    shared: &Shared,
) -> Option<(&'g Txn<K, V>, u64)> {
    let txn = claimer.txn();
    while let Some(entry) = txn.entries().get(*at) {
        match claim(pin, claimer, entry) {
            Claimed::Done => *at += 1,
            Claimed::Blocked(other) => return Some((other, entry.id)),
            Claimed::Conflict => {
                txn.decide(Status::Aborted);
                return None;
            }
        }
        if cfg!(stm_mutation = "decide_before_claims") {
            break;
        }
    }
    if txn.decide(Status::Committed) && txn.kind == Kind::Commit {
        // Whoever decides wakes the waiters: the owner may be stopped before its decision.
        if !(claimer.helping() && cfg!(stm_mutation = "helper_silent")) {
            let written = txn.entries().iter().filter(|entry| entry.writes());
            shared.waiters.committed(written.map(|entry| entry.id));
        }
        if claimer.helping() {
            shared.count(Count::Helped);
        }
    }
    None
}

pub(crate) enum Claimed<'g, K, V> {
    /// The entry's slot holds this transaction's claim, or the transaction is decided.
    Done,
    /// The transaction failed validation on this entry.
    Conflict,
    /// Another transaction's undecided claim is in the way.
    Blocked(&'g Txn<K, V>),
}

/// Makes `entry`'s slot hold its transaction's claim, unless the transaction is decided
/// meanwhile.
pub(crate) fn claim<'g, K, V>(
    pin: &'g Guard,
    claimer: Claimer<'_, K, V>,
    entry: &Entry<K, V>,
) -> Claimed<'g, K, V> {
    let txn = claimer.txn();
    let slot = entry.slot();
    if txn.kind == Kind::Commit && !entry.writes() && cfg!(stm_mutation = "skip_read_validation") {
        return Claimed::Done;
    }
    loop {
        if txn.status() != Status::Undecided {
            return Claimed::Done;
        }
        let current = slot.load(pin);
        if let Some(frozen) = current.claim_of(txn) {
            entry.note(frozen);
            return Claimed::Done;
        }
        if let Some(other) = current.blocker() {
            return Claimed::Blocked(other);
        }
        match txn.kind {
            Kind::Commit if current.version() != entry.expect || current.is_final() => {
                return Claimed::Conflict
            }
            Kind::Commit => {
                if slot.install_claim(pin, current, claimer, entry) {
                    return Claimed::Done;
                }
            }
            Kind::Snapshot => {
                if let Some(frozen) = slot.install_snapshot_claim(pin, current, claimer) {
                    entry.note(frozen);
                    return Claimed::Done;
                }
            }
        }
    }
}

/// A commit stopped after claiming some keys, as a committer stalled mid-commit would be.
#[cfg(any(loom, feature = "test-hooks"))]
pub(crate) struct Paused<K, V> {
    owner: Owner<K, V>,
}

#[cfg(any(loom, feature = "test-hooks"))]
impl<K, V> Paused<K, V> {
    pub(crate) fn new<'a, 's: 'a>(
        shared: &Shared,
        parts: impl ExactSizeIterator<Item = Part<'a, 's, K, V>>,
        claims: usize,
    ) -> Self
    where
        K: 's,
        V: Clone + 's,
    {
        let owner = Owner::new(Kind::Commit, parts.len(), parts.map(entry));
        check_distinct(&owner);
        let pin = pin();
        let txn = owner.txn();
        let mut claimed = 0;
        while let Some(entry) = txn.entries().get(claimed).filter(|_| claimed < claims) {
            match claim(&pin, owner.claimer(), entry) {
                Claimed::Done => claimed += 1,
                Claimed::Blocked(other) => help(&pin, other, entry.id, shared),
                Claimed::Conflict => {
                    txn.decide(Status::Aborted);
                    break;
                }
            }
        }
        drop(pin);
        Self { owner }
    }

    /// Finishes the commit of `parts` (the ones it was started with).
    pub(crate) fn resume<'a, 's: 'a>(
        self,
        home: &dyn Home<K, V>,
        parts: impl Iterator<Item = Part<'a, 's, K, V>>,
    ) -> Result<(), Error>
    where
        K: 's,
        V: 's,
    {
        let shared = home.shared();
        let pin = pin();
        drive(&pin, self.owner.claimer(), 0, shared);
        let result = outcome(self.owner.txn());
        shared.count(if result.is_ok() {
            Count::Commit
        } else {
            Count::Conflict
        });
        if result.is_ok() {
            unlink_removed(home, parts);
        }
        result
    }
}
