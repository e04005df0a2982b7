//! A key's slot, the nodes it can point to, who owns each node, and when each is freed.
//!
//! This is the only module with `unsafe` code, and its API is safe: whatever the protocol asks
//! of it, no node is freed while a thread can still reach it. Everything else in the crate
//! (claim order, helping, validation, snapshots) is safe code built on it.
//!
//! **A slot** is one word: a plain record (null stands for version 0, no value), a *commit
//! claim* (a pointer to an entry inside a transaction descriptor, tag 1) or a *snapshot claim*
//! (a small `(before, txn)` node, tag 2). A claim's logical record is the entry's `after` once
//! its transaction is committed and its `before` otherwise; a snapshot claim's is always its
//! `before`.
//!
//! **Checked here**, so that no protocol bug can make a pointer dangle:
//! - I1: an undecided claim is never replaced (the protocol must help it instead);
//! - I4: a plain record goes in only over a logical record one version older, and a commit
//!   claim only over a logical record of the entry's expected version. Per slot, versions
//!   strictly increase, so a version names one record: every helper that installs the same
//!   commit claim stores the same `before`.
//! - I5: neither goes in over a tombstone (a removed key's record): removal is final.
//!
//! **Removal.** A removed key's slot holds a *tombstone*: a record whose version has the top
//! bit ([`REMOVED`]) set. No commit expects such a version (versions stay far below it), and I5
//! refuses any write over it anyway: a slot, once removed, stays removed.
//!
//! **Ownership.**
//! - A slot is counted: one count for the key index while it lists the slot, one for each
//!   handle or transaction key that holds it ([`SlotRef`]), one for each descriptor entry that
//!   names it. The index lets go of its count only once it has unlinked a removed slot, so a
//!   count of zero means removed and unreachable from the index; the slot is then retired. A
//!   thread may also use a slot it found in the index without a count, under the pin it looked
//!   it up with: the slot was linked after that pin began, so it is retired after it.
//! - A slot owns its logical record. The compare-and-swap that stops a record being logical
//!   retires it: a plain write over it, or a write over a decided claim whose logical record
//!   it is. A claim taking its place keeps it alive as its `before`.
//! - A transaction owns its `after` records until it is decided, and then what will never be
//!   logical again: the `before` records of its written entries if it committed, the `after`
//!   records if it aborted. They are freed with the descriptor (one deferred free a commit).
//! - A snapshot claim node is retired by whoever takes it out of its slot.
//! - A descriptor is counted: its owner holds one count until it has taken all its claims out
//!   of their slots, and each helper holds one while it helps. A helper whose claim lands after
//!   the decision (possible only where the slot got the claim's `before` back) takes it out
//!   again before it lets go. So no slot points at a descriptor once the count is zero, and the
//!   last count out retires it.
//! - To retire is to hand to crossbeam-epoch: freed once every thread pinned at that moment has
//!   unpinned. Every pointer followed here was loaded under the caller's pin, and a reference
//!   into a node never outlives that pin (`'g`).
//! - A panicking `V::drop` or `K::drop` where this module frees nodes is caught and
//!   discarded. In reclamation it runs in whichever thread advances the epoch, inside
//!   crossbeam-epoch's batch of deferred functions, which runs them in a plain loop: a panic
//!   escaping one would skip the rest of the batch (up to 63 records, descriptors and slots,
//!   never freed) and surface in an unrelated call. When the store is dropped, the key index
//!   drops its slots in a plain loop too (hashbrown's), and a panic would leak the rest.

mod shelf;
mod table;
mod txn;

use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};

use std::ops::Deref;
use std::ptr::NonNull;

use crate::primitive::{AtomicUsize, Guard, Ordering::SeqCst};

pub(crate) use shelf::{OnceBox, Shelf};
pub(crate) use table::Table;

pub(crate) use txn::{Claimer, Entry, EntryInit, Hold, Kind, Owner, Status, Txn};

/// An immutable committed state of one key.
pub(crate) struct Record<V> {
    pub(crate) version: u64,
    pub(crate) value: Option<V>,
}

/// The version bit of a tombstone: the record a removal writes (module docs: removal).
pub(crate) const REMOVED: u64 = 1 << 63;

impl<V> Record<V> {
    pub(crate) fn is_removed(&self) -> bool {
        self.version & REMOVED != 0
    }
}

/// One key's home: created with its key, freed once it was removed and nobody counts it.
pub(crate) struct Slot<K, V> {
    /// Fixed at creation and unique in its store: the order in which commits claim slots
    /// (never the user's `Ord`, which may be broken).
    pub(crate) id: u64,
    pub(crate) key: K,
    word: AtomicUsize,
    /// The index's count, and one per [`SlotRef`] and per descriptor entry (module docs).
    refs: AtomicUsize,
    /// Under loom, a freed slot is kept (leaked) and marked here instead, so that a model in
    /// which a thread reaches a slot after it was freed fails instead of reading freed memory.
    #[cfg(loom)]
    freed: crate::primitive::AtomicU8,
    _records: PhantomData<Box<Record<V>>>,
}

/// A counted reference to a slot: keeps it alive (not its key in the index) while it lives.
pub(crate) struct SlotRef<'s, K, V> {
    slot: NonNull<Slot<K, V>>,
    /// Counted references come from a store's index and are used with that store.
    _store: PhantomData<&'s Slot<K, V>>,
}

// SAFETY: a `SlotRef` is a shared reference with a count; `Slot` is shared between threads by
// design (atomics and immutable fields only).
unsafe impl<K: Send + Sync, V: Send + Sync> Send for SlotRef<'_, K, V> {}
// SAFETY: as above.
unsafe impl<K: Send + Sync, V: Send + Sync> Sync for SlotRef<'_, K, V> {}

impl<'s, K, V> SlotRef<'s, K, V> {
    /// A count on `slot` unless it has none left (then it is removed, and retired or about to
    /// be). `slot` must be live for this call: counted by the caller, or found under its pin.
    pub(crate) fn acquire(slot: &Slot<K, V>) -> Option<Self> {
        increment_unless_zero(&slot.refs).then(|| Self::counted(slot))
    }

    /// Takes over a count the caller added to `slot`.
    fn counted(slot: &Slot<K, V>) -> Self {
        Self {
            slot: NonNull::from(slot),
            _store: PhantomData,
        }
    }

    /// Gives up the reference but not its count, which the caller now owns (a descriptor
    /// entry; see [`SlotRef::release_raw`]).
    fn into_raw(self) -> *const Slot<K, V> {
        let slot = self.slot.as_ptr();
        std::mem::forget(self);
        slot
    }

    /// Lets go of the count behind `slot` that `into_raw` handed over.
    ///
    /// # Safety
    /// `slot` came from `into_raw`, and its count is let go of once.
    unsafe fn release_raw(slot: *const Slot<K, V>) {
        // SAFETY: the count handed over keeps the slot alive until this call.
        unsafe { (*slot).unref() }
    }
}

impl<K, V> Clone for SlotRef<'_, K, V> {
    fn clone(&self) -> Self {
        self.add_ref() // not zero: this reference counts
    }
}

impl<K, V> Deref for SlotRef<'_, K, V> {
    type Target = Slot<K, V>;

    fn deref(&self) -> &Slot<K, V> {
        // SAFETY: this reference's count keeps the slot alive.
        unsafe { self.slot.as_ref() }
    }
}

impl<K, V> Drop for SlotRef<'_, K, V> {
    fn drop(&mut self) {
        self.unref();
    }
}

const TAG: usize = 0b11;
const CLAIM: usize = 0b01;
const SNAP: usize = 0b10;

/// A snapshot's claim on one slot: it freezes `before` until the snapshot is decided.
struct SnapClaim<K, V> {
    before: *mut Record<V>,
    txn: *const Txn<K, V>,
}

/// A record some claim froze, as the protocol passes it on to be noted; valid under the pin
/// `'g`. Memory is freed only through pointers like this one, never through a reference.
pub(crate) struct Frozen<'g, V>(*mut Record<V>, PhantomData<&'g Record<V>>);

impl<K, V> SnapClaim<K, V> {
    fn txn(&self) -> &Txn<K, V> {
        // SAFETY: a descriptor outlives every claim that points at it (module docs).
        unsafe { &*self.txn }
    }
}

/// What one load of a slot saw; valid while the guard it was loaded under lives.
pub(crate) struct Loaded<'g, K, V> {
    word: usize,
    _pin: PhantomData<(&'g Guard, &'g Slot<K, V>)>,
}

impl<K, V> Clone for Loaded<'_, K, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, V> Copy for Loaded<'_, K, V> {}

enum Node<'g, K, V> {
    Plain,
    Claim(&'g Entry<K, V>),
    Snap(&'g SnapClaim<K, V>),
}

impl<'g, K, V> Loaded<'g, K, V> {
    /// The node's address, with the provenance of the allocation it came from.
    fn ptr<T>(self) -> *mut T {
        (self.word & !TAG) as *mut T
    }

    fn node(self) -> Node<'g, K, V> {
        let ptr = self.word & !TAG;
        // SAFETY: the word was loaded from a slot under the guard that 'g borrows. A node is
        // retired only once no slot points at it (module docs), and freed only after every
        // thread pinned at that time has unpinned, so it is live for 'g. Tags name the type.
        unsafe {
            match self.word & TAG {
                CLAIM => Node::Claim(&*(ptr as *const Entry<K, V>)),
                SNAP => Node::Snap(&*(ptr as *const SnapClaim<K, V>)),
                _ => Node::Plain,
            }
        }
    }

    /// The committed record this load stands for (`None`: version 0, no value).
    pub(crate) fn logical(self) -> Option<&'g Record<V>> {
        // SAFETY: a logical record is owned by its slot and retired only after a
        // compare-and-swap takes it out; this load was made under the pin 'g (as in `node`).
        unsafe { self.logical_ptr().as_ref() }
    }

    fn logical_ptr(self) -> *mut Record<V> {
        match self.node() {
            Node::Plain => self.ptr(),
            Node::Claim(entry) => entry.logical_ptr(),
            Node::Snap(snap) => snap.before,
        }
    }

    /// The logical version, with the bit of a tombstone: no handle can have read it, so no
    /// commit expects it (the deliberate breakage `writable_tombstone` drops the bit, so that
    /// commits land over removals).
    pub(crate) fn version(self) -> u64 {
        let version = self.logical().map_or(0, |record| record.version);
        match cfg!(stm_mutation = "writable_tombstone") {
            true => version & !REMOVED,
            false => version,
        }
    }

    /// Whether the key was removed (a tombstone: final).
    pub(crate) fn removed(self) -> bool {
        self.logical().is_some_and(Record::is_removed)
    }

    /// Whether nothing may be written over this (I5): a tombstone, unless the deliberate
    /// breakage `writable_tombstone` lets commits land over removals.
    pub(crate) fn is_final(self) -> bool {
        self.removed() && !cfg!(stm_mutation = "writable_tombstone")
    }

    /// The transaction of an undecided claim here: help it, never replace it (I1).
    pub(crate) fn blocker(self) -> Option<&'g Txn<K, V>> {
        let txn = match self.node() {
            Node::Plain => return None,
            Node::Claim(entry) => entry.txn(),
            Node::Snap(snap) => snap.txn(),
        };
        (txn.status() == Status::Undecided).then_some(txn)
    }

    /// Whether this is a claim of `txn`; if so, also the record it froze.
    pub(crate) fn claim_of(self, txn: &Txn<K, V>) -> Option<Frozen<'g, V>> {
        match self.node() {
            Node::Claim(entry) if std::ptr::eq(entry.txn(), txn) => {
                Some(Frozen(entry.logical_ptr(), PhantomData))
            }
            Node::Snap(snap) if std::ptr::eq(snap.txn, txn) => {
                Some(Frozen(snap.before, PhantomData))
            }
            _ => None,
        }
    }
}

impl<K, V> Slot<K, V> {
    /// A new slot at version 0, with the index's count.
    pub(crate) fn new(id: u64, key: K) -> Self {
        Self {
            id,
            key,
            word: AtomicUsize::new(0),
            refs: AtomicUsize::new(1),
            #[cfg(loom)]
            freed: crate::primitive::AtomicU8::new(0),
            _records: PhantomData,
        }
    }

    /// Adds a count for a caller who knows the count is not zero: it holds one, or it found the
    /// slot listed in the index and holds the index's lock, so the index's count is there.
    pub(crate) fn add_ref<'s>(&self) -> SlotRef<'s, K, V> {
        self.refs.fetch_add(1, SeqCst);
        SlotRef::counted(self)
    }

    /// Lets go of one count; the last one out retires the slot. Every count but the index's is
    /// a [`SlotRef`] or a descriptor entry's; the index lets go of its own once it unlinked
    /// the slot.
    pub(crate) fn unref(&self) {
        if self.refs.fetch_sub(1, SeqCst) == 1 {
            self.retire(&crate::primitive::pin());
        }
    }

    /// Hands the slot to the epoch, at count zero. Pinning only now is enough: the threads that
    /// can still reach the slot found it in the index before it was unlinked, under pins that
    /// began before this one, and the slot is freed only once they have all ended.
    fn retire(&self, pin: &Guard) {
        let slot = self as *const Self as *mut Self;
        #[cfg(loom)]
        {
            // Leaked under loom, and marked (see `freed`).
            let slot = slot as usize;
            // SAFETY: the closure only writes an atomic of a slot that is never freed.
            unsafe {
                pin.defer_unchecked(move || {
                    (*(slot as *const Self)).freed.store(1, SeqCst);
                })
            }
        }
        #[cfg(not(loom))]
        // SAFETY: the count is zero, so the index has unlinked the slot and nothing counts it:
        // only threads pinned now can reach it (above). It was allocated as a `Box` by the
        // table, and is freed once, after they unpin. Its key's drop is caught (module docs).
        unsafe {
            pin.defer_unchecked(move || drop_caught(Box::from_raw(slot)))
        }
    }

    pub(crate) fn load<'g>(&self, _pin: &'g Guard) -> Loaded<'g, K, V> {
        #[cfg(loom)]
        assert_eq!(self.freed.load(SeqCst), 0, "a freed slot was reached");
        Loaded {
            word: self.word.load(SeqCst),
            _pin: PhantomData,
        }
    }

    fn cas(&self, current: usize, new: usize) -> bool {
        self.word
            .compare_exchange(current, new, SeqCst, SeqCst)
            .is_ok()
    }

    /// Gives a slot still at version 0 (no record, no claim) its first record, at any version
    /// (I4 holds: versions grow from 0): how a new key starts above the versions of removed
    /// ones, and how a store is rebuilt from a saved snapshot. Refused, with the record handed
    /// back, if the slot has anything in it.
    pub(crate) fn restore(&self, record: Box<Record<V>>) -> Result<(), Box<Record<V>>> {
        let new = Box::into_raw(record);
        if self.cas(0, new as usize) {
            Ok(())
        } else {
            // SAFETY: `new` came from `Box::into_raw` above and was never published.
            Err(unsafe { Box::from_raw(new) })
        }
    }

    /// Replaces `current` by the plain `record` and retires what it replaced. Refused, with the
    /// record handed back, if `current` is an undecided claim, if `record` is not one version
    /// newer, or if the slot has changed since `current` was loaded.
    pub(crate) fn replace(
        &self,
        pin: &Guard,
        current: Loaded<'_, K, V>,
        record: Box<Record<V>>,
    ) -> Result<(), Box<Record<V>>> {
        // Decided or plain from here (no blocker), so its logical record is fixed. A tombstone is
        // one version newer too; nothing goes over a tombstone (I5).
        if current.blocker().is_some()
            || current.is_final()
            || record.version & !REMOVED != current.version() + 1
        {
            return Err(record);
        }
        let new = Box::into_raw(record);
        if self.cas(current.word, new as usize) {
            retire_record(pin, current.logical_ptr());
            if let Node::Snap(_) = current.node() {
                retire_snap::<K, V>(pin, current.ptr());
            }
            Ok(())
        } else {
            // SAFETY: `new` came from `Box::into_raw` above and was never published.
            Err(unsafe { Box::from_raw(new) })
        }
    }

    /// Puts `claimer`'s commit claim for `entry` (one of its entries, for this slot) in place
    /// of `current`. Refused if `current` is an undecided claim, if its logical version is not
    /// the entry's expected one, or if the slot has changed since it was loaded.
    pub(crate) fn install_claim(
        &self,
        pin: &Guard,
        current: Loaded<'_, K, V>,
        claimer: Claimer<'_, K, V>,
        entry: &Entry<K, V>,
    ) -> bool {
        debug_assert!(std::ptr::eq(entry.txn(), claimer.txn()) && entry.id == self.id);
        if current.blocker().is_some() || current.is_final() || current.version() != entry.expect {
            return false;
        }
        // Every installer stores the same record here: the one of this version (I4).
        entry.freeze(current.logical_ptr());
        let claim = entry.address() | CLAIM;
        if !self.cas(current.word, claim) {
            return false;
        }
        if let Node::Snap(_) = current.node() {
            // Its `before` stays logical, as this claim's `before`.
            retire_snap::<K, V>(pin, current.ptr());
        }
        if claimer.txn().status_synced() != Status::Undecided {
            // Late: the transaction was decided meanwhile. Take the claim out again before
            // this helper lets go of its count.
            self.release(entry);
        }
        true
    }

    /// Puts a snapshot claim of `claimer` in place of `current` and returns the record it
    /// froze; `None` if `current` is an undecided claim or the slot has changed.
    pub(crate) fn install_snapshot_claim<'g>(
        &self,
        pin: &'g Guard,
        current: Loaded<'g, K, V>,
        claimer: Claimer<'_, K, V>,
    ) -> Option<Frozen<'g, V>> {
        if current.blocker().is_some() {
            return None;
        }
        let before = current.logical_ptr();
        let node = Box::into_raw(Box::new(SnapClaim {
            before,
            txn: claimer.txn() as *const Txn<K, V>,
        }));
        if !self.cas(current.word, node as usize | SNAP) {
            // SAFETY: `node` came from `Box::into_raw` above and was never published.
            drop(unsafe { Box::from_raw(node) });
            return None;
        }
        if let Node::Snap(_) = current.node() {
            retire_snap::<K, V>(pin, current.ptr());
        }
        if claimer.txn().status_synced() != Status::Undecided {
            self.release_snapshot_claim(pin, claimer.txn()); // late, as in `install_claim`
        }
        Some(Frozen(before, PhantomData))
    }

    /// Takes `entry`'s claim out of this slot, if it is there, leaving its logical record
    /// (fixed: the transaction is decided).
    pub(crate) fn release(&self, entry: &Entry<K, V>) {
        debug_assert!(entry.txn().status() != Status::Undecided);
        let claim = entry.address() | CLAIM;
        if self.word.load(SeqCst) == claim {
            self.cas(claim, entry.logical_ptr() as usize);
        }
    }

    /// Takes `txn`'s snapshot claim out of this slot, if it is there.
    pub(crate) fn release_snapshot_claim(&self, pin: &Guard, txn: &Txn<K, V>) {
        let current = self.load(pin);
        if let Node::Snap(snap) = current.node() {
            if std::ptr::eq(snap.txn, txn) && self.cas(current.word, snap.before as usize) {
                retire_snap::<K, V>(pin, current.ptr());
            }
        }
    }
}

impl<K, V> Drop for Slot<K, V> {
    /// Frees what the slot holds. Only the table drops slots, with the store, when no call is
    /// in progress: nobody can reach these nodes any more.
    fn drop(&mut self) {
        let word = self.word.load(SeqCst);
        let ptr = word & !TAG;
        // SAFETY: exclusive access (see above); the word names a live node of its tag's type.
        // A commit claim still here belongs to an owner that was forgotten (`mem::forget` of
        // a paused commit): its descriptor is leaked with the records it owns, never freed, so
        // it cannot dangle; deciding it fixes which record is this slot's.
        unsafe {
            match word & TAG {
                CLAIM => {
                    let entry = &*(ptr as *const Entry<K, V>);
                    entry.txn().decide(Status::Aborted);
                    free_record(entry.logical_ptr());
                }
                SNAP => {
                    let snap = Box::from_raw(ptr as *mut SnapClaim<K, V>);
                    free_record(snap.before);
                }
                _ => free_record(ptr as *mut Record<V>),
            }
        }
    }
}

/// Adds one to a count unless it is zero (then what it counts is retired, or about to be);
/// true if it did.
fn increment_unless_zero(count: &AtomicUsize) -> bool {
    let mut now = count.load(SeqCst);
    while now != 0 {
        match count.compare_exchange(now, now + 1, SeqCst, SeqCst) {
            Ok(_) => return true,
            Err(seen) => now = seen,
        }
    }
    false
}

/// Retires a record that stopped being logical (module docs: ownership); null is no record.
fn retire_record<V>(pin: &Guard, record: *mut Record<V>) {
    if record.is_null() {
        return;
    }
    // SAFETY: the caller made it unreachable from every slot with its compare-and-swap, and
    // retires it exactly once (module docs); threads pinned before may still read it, so it
    // is freed only after they unpin. The closure holds one pointer and frees it once.
    unsafe { pin.defer_unchecked(move || free_record(record)) }
}

/// Retires a snapshot claim node that a successful compare-and-swap took out of its slot.
fn retire_snap<K, V>(pin: &Guard, snap: *mut SnapClaim<K, V>) {
    // SAFETY: as in `retire_record`: a node leaves its slot once.
    unsafe { pin.defer_unchecked(move || drop(Box::from_raw(snap))) }
}

/// Frees a record nobody else can reach, now; null is no record.
///
/// # Safety
/// `record` is null or came from `Box::into_raw`, and no other thread can reach it.
pub(super) unsafe fn free_record<V>(record: *mut Record<V>) {
    if !record.is_null() {
        // SAFETY: the caller's contract.
        drop_caught(unsafe { Box::from_raw(record) });
    }
}

/// Drops `item`; a panic in its destructor is caught and discarded (module docs). The rest of
/// `item` is still dropped: drop glue goes on through the remaining fields while it unwinds.
fn drop_caught<T>(item: T) {
    let _ = catch_unwind(AssertUnwindSafe(move || drop(item)));
}
