//! The data the protocol shares between threads: slots, records, claims and descriptors.
//!
//! A slot holds one [`Node`]: either a plain record `(version, value)` or a *claim* that a
//! multi-key transaction put there. A claim's logical record is `after` once its transaction
//! is committed and `before` otherwise; nodes are immutable, so "changing a key" always means
//! swapping the slot's `Arc` for a new node.

use crate::primitive::{
    Arc, AtomicArc, AtomicArcOption, AtomicU8, IdCounter, Keyed, Loaded, Ordering, Weak,
};

/// One key's home. Handles keep it alive, so a commit never needs the key index.
pub(crate) struct Slot<K, V> {
    /// Fixed at creation and unique in the process: the order in which commits claim slots
    /// (never the user's `Ord`, which may be broken). Unique across stores too, so even handles
    /// of two stores mixed in one collection cannot make two commits claim in opposite orders.
    pub(crate) id: u64,
    pub(crate) key: K,
    pub(crate) state: AtomicArc<Node<K, V>>,
}

pub(crate) enum Node<K, V> {
    Plain { version: u64, value: Option<V> },
    Claim(Claim<K, V>),
}

pub(crate) struct Claim<K, V> {
    pub(crate) before: Rec<K, V>,
    pub(crate) after: Rec<K, V>,
    pub(crate) txn: Arc<Txn<K, V>>,
}

/// A node that is known to be plain: what handles hold and claims point to (invariant I3).
pub(crate) struct Rec<K, V>(Arc<Node<K, V>>);

/// A multi-key transaction's descriptor. Claims point to it; it points back only weakly, so
/// a claim left in a slot after the decision forms no cycle and pins no other key's records.
pub(crate) struct Txn<K, V> {
    status: AtomicU8,
    /// Sorted by slot id, one per slot.
    pub(crate) entries: Vec<Entry<K, V>>,
}

/// One key of a transaction. Its references are weak: while the transaction is undecided its
/// owner's handles keep the slot and the record to write alive, and after the decision nobody
/// needs them (so a failed upgrade means "decided").
pub(crate) struct Entry<K, V> {
    /// The slot's id: the order of claims.
    pub(crate) id: u64,
    pub(crate) slot: Weak<Slot<K, V>>,
    pub(crate) expect: Expect<K, V>,
    /// The record to install on commit; `None` for a key that is only validated.
    pub(crate) write: Option<Weak<Node<K, V>>>,
    /// The deliberate breakage `strong_entries`: a strong reference closes the cycle
    /// slot -> claim -> txn -> entry -> slot.
    #[cfg(stm_mutation = "strong_entries")]
    pub(crate) pin: Arc<Slot<K, V>>,
}

pub(crate) enum Expect<K, V> {
    /// The version the handle read: the claim fails validation on any other.
    Version(u64),
    /// A snapshot's claim: takes whatever it finds and keeps the record here until the
    /// snapshot's owner takes it.
    Any(AtomicArcOption<Node<K, V>>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Undecided = 0,
    Committed = 1,
    Aborted = 2,
}

impl<K, V> Keyed for Slot<K, V> {
    type Key = K;
    fn key(&self) -> &K {
        &self.key
    }
}

impl<K, V> Slot<K, V> {
    pub(crate) fn new(key: K) -> Self {
        static IDS: IdCounter = IdCounter::new();
        let empty = Rec::new(0, None);
        Self {
            id: IDS.next(),
            key,
            state: AtomicArc::new(empty.0),
        }
    }

    /// The committed record right now: one load, no loop, no help.
    pub(crate) fn read(&self) -> Rec<K, V> {
        logical(&self.state.load())
    }

    /// The committed version right now, without taking a reference to the record.
    pub(crate) fn version(&self) -> u64 {
        logical_version(&self.state.load())
    }
}

/// The logical record of what a slot held.
pub(crate) fn logical<K, V>(loaded: &Loaded<Node<K, V>>) -> Rec<K, V> {
    match &**loaded {
        Node::Plain { .. } => Rec(loaded.to_arc()),
        Node::Claim(claim) => claim.logical().clone(),
    }
}

pub(crate) fn logical_version<K, V>(node: &Node<K, V>) -> u64 {
    match node {
        Node::Plain { version, .. } => *version,
        Node::Claim(claim) => claim.logical().version(),
    }
}

impl<K, V> Claim<K, V> {
    pub(crate) fn logical(&self) -> &Rec<K, V> {
        match self.txn.status() {
            Status::Committed => &self.after,
            // The deliberate breakage `dirty_read` shows undecided writes.
            Status::Undecided if cfg!(stm_mutation = "dirty_read") => &self.after,
            Status::Undecided | Status::Aborted => &self.before,
        }
    }
}

impl<K, V> Rec<K, V> {
    pub(crate) fn new(version: u64, value: Option<V>) -> Self {
        Self(Arc::new(Node::Plain { version, value }))
    }

    pub(crate) fn version(&self) -> u64 {
        self.plain().0
    }

    pub(crate) fn value(&self) -> Option<&V> {
        self.plain().1.as_ref()
    }

    pub(crate) fn node(&self) -> Arc<Node<K, V>> {
        Arc::clone(&self.0)
    }

    fn plain(&self) -> (u64, &Option<V>) {
        match &*self.0 {
            Node::Plain { version, value } => (*version, value),
            Node::Claim(_) => unreachable!("a Rec always holds a plain node"),
        }
    }
}

impl<K, V> Clone for Rec<K, V> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<K, V> Txn<K, V> {
    pub(crate) fn new(entries: Vec<Entry<K, V>>) -> Self {
        Self {
            status: AtomicU8::new(Status::Undecided as u8),
            entries,
        }
    }

    pub(crate) fn status(&self) -> Status {
        match self.status.load(Ordering::SeqCst) {
            0 => Status::Undecided,
            1 => Status::Committed,
            _ => Status::Aborted,
        }
    }

    pub(crate) fn is_undecided(&self) -> bool {
        self.status() == Status::Undecided
    }

    /// Moves the status from Undecided to `outcome`; true for the one caller that did it.
    pub(crate) fn decide(&self, outcome: Status) -> bool {
        self.status
            .compare_exchange(
                Status::Undecided as u8,
                outcome as u8,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    }
}

impl<K, V> Entry<K, V> {
    pub(crate) fn new(
        slot: &Arc<Slot<K, V>>,
        expect: Expect<K, V>,
        write: Option<&Rec<K, V>>,
    ) -> Self {
        Self {
            id: slot.id,
            slot: Arc::downgrade(slot),
            expect,
            write: write.map(|record| Arc::downgrade(&record.0)),
            #[cfg(stm_mutation = "strong_entries")]
            pin: Arc::clone(slot),
        }
    }

    /// The record to install on commit (`after == before` for a key only validated); `None`
    /// once the transaction is decided and the handle that held the record is gone.
    pub(crate) fn after(&self, before: &Rec<K, V>) -> Option<Rec<K, V>> {
        match &self.write {
            Some(write) => write.upgrade().map(Rec),
            None => Some(before.clone()),
        }
    }

    /// Whether this is a snapshot's entry (it accepts any version and notes what it claimed).
    pub(crate) fn is_snapshot(&self) -> bool {
        matches!(self.expect, Expect::Any(_))
    }

    /// Notes the record a snapshot's claim holds (the first note wins; see `protocol`).
    pub(crate) fn found(&self, record: &Rec<K, V>) {
        if let Expect::Any(found) = &self.expect {
            found.set_if_empty(record.node());
        }
    }

    /// Takes the record a snapshot's claim held, once the snapshot transaction is committed,
    /// leaving `tombstone` (a record nobody else holds) so that a late helper cannot note a
    /// record there again and pin it.
    pub(crate) fn take_found(&self, tombstone: &Rec<K, V>) -> Option<Rec<K, V>> {
        match &self.expect {
            Expect::Any(found) => found.swap(tombstone.node()).map(Rec),
            Expect::Version(_) => None,
        }
    }

    /// Whether this entry accepts `record` as the key's current state.
    pub(crate) fn accepts(&self, record: &Rec<K, V>) -> bool {
        match &self.expect {
            Expect::Version(version) => record.version() == *version,
            Expect::Any(_) => true,
        }
    }
}
