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
use crate::record::{logical, logical_version, Claim, Entry, Node, Rec, Slot, Status, Txn};
use crate::Error;

/// Nodes replaced during a commit. They are dropped only after the commit's decision, so a
/// panicking `V::drop` can never leave a claim of ours undecided.
pub(crate) type Garbage<K, V> = Vec<Arc<Node<K, V>>>;

/// A handle's part in a commit: its slot, the version it read, and what it writes.
pub(crate) struct Part<'a, K, V> {
    pub(crate) slot: &'a Arc<Slot<K, V>>,
    pub(crate) version: u64,
    pub(crate) write: Option<&'a Rec<K, V>>,
}

/// Commits `parts` (distinct slots) atomically: `Ok` once every write is visible,
/// `ConcurrentUpdate` if some key had changed since it was read; then nothing was written.
pub(crate) fn commit<K, V>(parts: &[Part<'_, K, V>]) -> Result<(), Error> {
    let writes = parts.iter().filter(|part| part.write.is_some()).count();
    match (writes, parts) {
        (0, _) => validate(parts),
        (
            1,
            [Part {
                slot,
                version,
                write: Some(write),
            }],
        ) => commit_one(slot, *version, write),
        _ => Commit::new(entries(parts)).run(),
    }
}

pub(crate) fn entries<K, V>(parts: &[Part<'_, K, V>]) -> Vec<Entry<K, V>> {
    let mut entries: Vec<_> = parts
        .iter()
        .map(|part| Entry {
            slot: Arc::clone(part.slot),
            expect: crate::record::Expect::Version(part.version),
            write: part.write.cloned(),
        })
        .collect();
    entries.sort_unstable_by_key(|entry| entry.slot.id);
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
fn commit_one<K, V>(slot: &Slot<K, V>, version: u64, write: &Rec<K, V>) -> Result<(), Error> {
    loop {
        let current = slot.state.load();
        if let Node::Claim(claim) = &*current {
            if claim.txn.is_undecided() {
                help(Arc::clone(&claim.txn), &mut Vec::new());
                continue;
            }
        }
        if logical_version(&current) != version {
            return Err(Error::ConcurrentUpdate);
        }
        if slot
            .state
            .compare_exchange(&current, write.node())
            .is_some()
        {
            return Ok(());
        }
    }
}

/// One multi-key transaction, from its owner's side. Dropping it undecided (a panic, or a
/// paused commit that is never resumed) aborts it, so nothing stays claimed.
pub(crate) struct Commit<K, V> {
    txn: Arc<Txn<K, V>>,
    /// The owner's own reference to the entries: they outlive the decision (snapshots read
    /// what their claims found).
    entries: Arc<Vec<Entry<K, V>>>,
    garbage: Garbage<K, V>,
}

impl<K, V> Commit<K, V> {
    pub(crate) fn new(entries: Vec<Entry<K, V>>) -> Self {
        let txn = Arc::new(Txn::new(entries));
        let entries = txn.entries().expect("a new transaction has its entries");
        Self {
            txn,
            entries,
            garbage: Vec::new(),
        }
    }

    /// Drives the transaction to its decision (helping whoever is in the way) and reports it.
    pub(crate) fn run(&mut self) -> Result<(), Error> {
        #[cfg(stm_mutation = "no_descriptor")]
        return self.run_without_descriptor();

        help(Arc::clone(&self.txn), &mut self.garbage);
        match self.txn.status() {
            Status::Committed => Ok(()),
            Status::Aborted => Err(Error::ConcurrentUpdate),
            Status::Undecided => unreachable!("helping runs a transaction to its decision"),
        }
    }

    /// The entries, in slot-id order.
    pub(crate) fn entries(&self) -> &[Entry<K, V>] {
        &self.entries
    }

    /// Runs the owner's claiming steps for the first `count` entries and stops there, as a
    /// committer stalled mid-commit would (test hook).
    #[cfg(any(loom, feature = "test-hooks"))]
    pub(crate) fn claim_first(&mut self, count: usize) {
        let mut claimed = 0;
        while claimed < count.min(self.entries.len()) {
            match claim(&self.txn, &self.entries[claimed], &mut self.garbage) {
                Claimed::Done => claimed += 1,
                Claimed::Blocked(other) => help(other, &mut self.garbage),
                Claimed::Conflict => return decide(&self.txn, Status::Aborted, &mut self.garbage),
            }
        }
    }

    /// The broken protocol: validate every key, then CAS each one (no descriptor).
    #[cfg(stm_mutation = "no_descriptor")]
    fn run_without_descriptor(&mut self) -> Result<(), Error> {
        self.txn.decide(Status::Aborted);
        for entry in self.entries.iter() {
            if !entry.accepts(&entry.slot.read()) {
                return Err(Error::ConcurrentUpdate);
            }
        }
        for entry in self.entries.iter() {
            let Some(write) = &entry.write else { continue };
            let current = entry.slot.state.load();
            if logical(&current).version() + 1 != write.version() {
                return Err(Error::ConcurrentUpdate);
            }
            match entry.slot.state.compare_exchange(&current, write.node()) {
                Some(old) => self.garbage.push(old),
                None => return Err(Error::ConcurrentUpdate),
            }
        }
        Ok(())
    }
}

impl<K, V> Drop for Commit<K, V> {
    fn drop(&mut self) {
        if self.txn.decide(Status::Aborted) {
            release(&self.txn, &mut self.garbage);
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
fn help<K, V>(root: Arc<Txn<K, V>>, garbage: &mut Garbage<K, V>) {
    let mut stack = vec![root];
    while let Some(txn) = stack.last() {
        match advance(txn, garbage) {
            Some(blocker) => stack.push(blocker),
            None => {
                stack.pop();
            }
        }
    }
}

/// Claims `txn`'s entries in order and decides it; or returns the transaction in the way.
fn advance<K, V>(txn: &Arc<Txn<K, V>>, garbage: &mut Garbage<K, V>) -> Option<Arc<Txn<K, V>>> {
    let entries = txn.entries()?;
    for entry in entries.iter() {
        match claim(txn, entry, garbage) {
            Claimed::Done if cfg!(stm_mutation = "decide_before_claims") => break,
            Claimed::Done => {}
            Claimed::Blocked(other) => return Some(other),
            Claimed::Conflict => {
                decide(txn, Status::Aborted, garbage);
                return None;
            }
        }
    }
    decide(txn, Status::Committed, garbage);
    None
}

/// Makes `entry`'s slot hold `txn`'s claim, unless the transaction is decided meanwhile.
fn claim<K, V>(
    txn: &Arc<Txn<K, V>>,
    entry: &Entry<K, V>,
    garbage: &mut Garbage<K, V>,
) -> Claimed<K, V> {
    if cfg!(stm_mutation = "skip_read_validation") && entry.write.is_none() {
        return Claimed::Done;
    }
    loop {
        if !cfg!(stm_mutation = "no_status_check") && !txn.is_undecided() {
            return Claimed::Done;
        }
        let current = entry.slot.state.load();
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
        let after = entry.write.clone().unwrap_or_else(|| before.clone());
        let claim = Node::Claim(Claim {
            before: before.clone(),
            after,
            txn: Arc::clone(txn),
        });
        if let Some(old) = entry.slot.state.compare_exchange(&current, Arc::new(claim)) {
            entry.found(&before);
            garbage.push(old);
            return Claimed::Done;
        }
    }
}

/// Decides `txn` if it is still undecided; the thread that decides it also releases it.
fn decide<K, V>(txn: &Txn<K, V>, outcome: Status, garbage: &mut Garbage<K, V>) {
    if txn.decide(outcome) {
        release(txn, garbage);
    }
}

/// Replaces the decided transaction's claims by their logical records, and drops its entries.
fn release<K, V>(txn: &Txn<K, V>, garbage: &mut Garbage<K, V>) {
    if cfg!(stm_mutation = "keep_entries") {
        return;
    }
    let Some(entries) = txn.take_entries() else {
        return;
    };
    for entry in entries.iter() {
        let current = entry.slot.state.load();
        let Node::Claim(claim) = &*current else {
            continue;
        };
        if !std::ptr::eq(&*claim.txn, txn) {
            continue;
        }
        let record = claim.logical().node();
        if let Some(old) = entry.slot.state.compare_exchange(&current, record) {
            garbage.push(old);
        }
    }
}
