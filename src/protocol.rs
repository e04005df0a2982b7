//! The commit protocol: ordered claims on a shared descriptor, with helping.
//!
//! **Invariants.** I1: an undecided claim is never replaced. I2: a plain node, or a claim whose
//! transaction is decided, has a fixed logical record. I3: a claim's `before` and `after` are
//! plain. I4: per slot, logical versions strictly increase, and no two records of one version
//! are ever visible. Every compare-and-swap below starts from a node the caller loaded and still
//! holds (so its address cannot be reused): it succeeds only if the slot's logical state is
//! still that node's, so a late helper's claim is harmless and releasing a claim is safe.
//!
//! **Linearization points.** A multi-key commit: the CAS of its status from Undecided to
//! Committed, which flips every claimed key at once. A single-key commit: its slot CAS. A
//! read-only commit: the instant of its first load, when every key still held its read version.
//!
//! **Progress.** Nobody waits: a thread blocked by another transaction's undecided claim helps
//! that transaction to its decision (claiming its remaining keys in slot-id order), so a thread
//! stopped anywhere inside a commit delays nobody. Helping follows strictly increasing slot ids,
//! so it cannot cycle. Another transaction is never aborted by a helper except for failing its
//! own validation, so `Aborted` always means a real conflict.

use crate::primitive::Arc;
use crate::record::{logical, logical_version, Claim, Entry, Expect, Node, Rec, Slot, Status, Txn};
use crate::Error;

/// What a successful commit replaced, for the caller to drop once its handles are updated:
/// dropping an old record may run a user's `V::drop`, and if that panics, the commit has
/// still landed and the handles must already say so.
pub(crate) type Replaced<K, V> = Option<Arc<Node<K, V>>>;

/// A handle's part in a commit: its slot, the version it read, and what it writes.
pub(crate) struct Part<'a, K, V> {
    pub(crate) slot: &'a Arc<Slot<K, V>>,
    pub(crate) version: u64,
    pub(crate) write: Option<&'a Rec<K, V>>,
}

/// Commits `parts` (distinct slots) atomically: `Ok` once every write is visible,
/// `ConcurrentUpdate` if some key had changed since it was read; then nothing was written.
pub(crate) fn commit<K, V>(parts: &[Part<'_, K, V>]) -> Result<Replaced<K, V>, Error> {
    let writes = parts.iter().filter(|part| part.write.is_some()).count();
    match (writes, parts) {
        (0, _) => validate(parts).map(|()| None),
        (
            1,
            [Part {
                slot,
                version,
                write: Some(write),
            }],
        ) => commit_one(slot, *version, write),
        _ => Commit::new(entries(parts)).run().map(|()| None),
    }
}

/// The transaction's entries: one per slot, in slot-id order.
pub(crate) fn entries<K, V>(parts: &[Part<'_, K, V>]) -> Vec<Entry<K, V>> {
    let mut entries: Vec<_> = parts
        .iter()
        .map(|part| Entry::new(part.slot, Expect::Version(part.version), part.write))
        .collect();
    entries.sort_unstable_by_key(|entry| entry.id);
    // Only reachable by moving handles between collections with `std::mem::swap`.
    let twice = entries.windows(2).any(|pair| pair[0].id == pair[1].id);
    assert!(!twice, "a commit holds two handles of the same key");
    entries
}

/// A commit that only read: it holds if, in one pass, every key still has its read version.
fn validate<K, V>(parts: &[Part<'_, K, V>]) -> Result<(), Error> {
    if cfg!(stm_mutation = "skip_read_validation") {
        return Ok(());
    }
    match parts.iter().all(|part| part.slot.version() == part.version) {
        true => Ok(()),
        false => Err(Error::ConcurrentUpdate),
    }
}

/// The fast path: one key written, nothing else read, no descriptor.
fn commit_one<K, V>(
    slot: &Slot<K, V>,
    version: u64,
    write: &Rec<K, V>,
) -> Result<Replaced<K, V>, Error> {
    loop {
        let current = slot.state.load();
        if let Node::Claim(claim) = &*current {
            if claim.txn.is_undecided() && !cfg!(stm_mutation = "no_status_check") {
                let blocker = Arc::clone(&claim.txn);
                drop(current);
                help(&blocker);
                continue;
            }
        }
        if logical_version(&current) != version {
            return Err(Error::ConcurrentUpdate);
        }
        if let Some(old) = slot.state.compare_exchange(&current, write.node()) {
            return Ok(Some(old));
        }
    }
}

/// One multi-key transaction, from its owner's side. Dropping it undecided (a panic, say a
/// user's `V::drop` run by a replaced record, or a paused commit never resumed) aborts it, so
/// nothing stays claimed.
pub(crate) struct Commit<K, V> {
    txn: Arc<Txn<K, V>>,
}

impl<K, V> Commit<K, V> {
    pub(crate) fn new(entries: Vec<Entry<K, V>>) -> Self {
        Self {
            txn: Arc::new(Txn::new(entries)),
        }
    }

    /// Drives the transaction to its decision (helping whoever is in the way) and reports it.
    pub(crate) fn run(&mut self) -> Result<(), Error> {
        #[cfg(stm_mutation = "no_descriptor")]
        return self.run_without_descriptor();

        help(&self.txn);
        match self.txn.status() {
            Status::Committed => Ok(()),
            Status::Aborted => Err(Error::ConcurrentUpdate),
            Status::Undecided => unreachable!("helping runs a transaction to its decision"),
        }
    }

    /// The entries, in slot-id order.
    pub(crate) fn entries(&self) -> &[Entry<K, V>] {
        &self.txn.entries
    }

    /// Runs the owner's claiming steps for the first `count` entries and stops there, as a
    /// committer stalled mid-commit would (test hook).
    #[cfg(any(loom, feature = "test-hooks"))]
    pub(crate) fn claim_first(&mut self, count: usize) {
        let mut claimed = 0;
        while claimed < count.min(self.txn.entries.len()) {
            match claim(&self.txn, &self.txn.entries[claimed]) {
                Claimed::Done => claimed += 1,
                Claimed::Blocked(other) => help(&other),
                Claimed::Conflict => {
                    self.txn.decide(Status::Aborted);
                    return;
                }
            }
        }
    }

    /// The broken protocol: validate every key, then CAS each one (no descriptor).
    #[cfg(stm_mutation = "no_descriptor")]
    fn run_without_descriptor(&mut self) -> Result<(), Error> {
        self.txn.decide(Status::Aborted);
        let slots: Vec<_> = self
            .txn
            .entries
            .iter()
            .map(|e| e.slot.upgrade().unwrap())
            .collect();
        for (entry, slot) in self.txn.entries.iter().zip(&slots) {
            if !entry.accepts(&slot.read()) {
                return Err(Error::ConcurrentUpdate);
            }
        }
        for (entry, slot) in self.txn.entries.iter().zip(&slots) {
            let Some(write) = entry.write.as_ref().and_then(|w| w.upgrade()) else {
                continue;
            };
            let current = slot.state.load();
            if !entry.accepts(&logical(&current)) {
                return Err(Error::ConcurrentUpdate);
            }
            if slot.state.compare_exchange(&current, write).is_none() {
                return Err(Error::ConcurrentUpdate);
            }
        }
        Ok(())
    }
}

impl<K, V> Drop for Commit<K, V> {
    fn drop(&mut self) {
        if self.txn.is_undecided() {
            self.txn.decide(Status::Aborted);
        }
    }
}

enum Claimed<K, V> {
    /// The entry's slot holds this transaction's claim (or the transaction is decided).
    Done,
    /// The transaction failed validation on this entry.
    Conflict,
    /// Another transaction's undecided claim is in the way.
    Blocked(Arc<Txn<K, V>>),
}

/// Helps `root` to its decision, helping in turn every transaction in its way (an explicit
/// stack: along it, blocking slot ids strictly increase, so it is finite).
fn help<K, V>(root: &Arc<Txn<K, V>>) {
    let Some(blocker) = advance(root) else {
        return;
    };
    let mut stack = vec![Arc::clone(root), blocker];
    while let Some(txn) = stack.last() {
        match advance(txn) {
            Some(blocker) => stack.push(blocker),
            None => {
                stack.pop();
            }
        }
    }
}

/// Claims `txn`'s entries in order and decides it; or returns the transaction in the way.
/// Decided claims stay in their slots: the next writer of each key replaces them.
fn advance<K, V>(txn: &Arc<Txn<K, V>>) -> Option<Arc<Txn<K, V>>> {
    for entry in &txn.entries {
        match claim(txn, entry) {
            Claimed::Done if cfg!(stm_mutation = "decide_before_claims") => break,
            Claimed::Done => {}
            Claimed::Blocked(other) => return Some(other),
            Claimed::Conflict => {
                txn.decide(Status::Aborted);
                return None;
            }
        }
    }
    txn.decide(Status::Committed);
    None
}

/// Makes `entry`'s slot hold `txn`'s claim, unless the transaction is decided meanwhile.
fn claim<K, V>(txn: &Arc<Txn<K, V>>, entry: &Entry<K, V>) -> Claimed<K, V> {
    if cfg!(stm_mutation = "skip_read_validation") && entry.write.is_none() && !entry.is_snapshot()
    {
        return Claimed::Done;
    }
    // Both upgrades fail only once the owner is gone, and it leaves only after the decision.
    let Some(slot) = entry.slot.upgrade() else {
        return Claimed::Done;
    };
    loop {
        if !txn.is_undecided() {
            return Claimed::Done;
        }
        let current = slot.state.load();
        if let Node::Claim(claim) = &*current {
            if Arc::ptr_eq(&claim.txn, txn) {
                entry.found(&claim.before);
                return Claimed::Done;
            }
            if claim.txn.is_undecided() && !cfg!(stm_mutation = "overwrite_undecided_claim") {
                return Claimed::Blocked(Arc::clone(&claim.txn));
            }
        }
        let before = logical(&current);
        if !entry.accepts(&before) {
            return Claimed::Conflict;
        }
        let Some(after) = entry.after(&before) else {
            return Claimed::Done;
        };
        let snapshot = entry.is_snapshot().then(|| before.clone());
        let claim = Node::Claim(Claim {
            before,
            after,
            txn: Arc::clone(txn),
        });
        // What this replaces is dropped right here: if that runs a panicking `V::drop`, the
        // owner's `Commit` aborts the transaction as the panic unwinds.
        if slot
            .state
            .compare_exchange(&current, Arc::new(claim))
            .is_some()
        {
            if let Some(before) = snapshot {
                entry.found(&before);
            }
            return Claimed::Done;
        }
    }
}
