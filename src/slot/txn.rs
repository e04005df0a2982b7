//! The transaction descriptor: a status, a count, and its entries, in one allocation.
//!
//! A commit's claims are its entries: a slot claimed by a commit points at the entry itself,
//! so a commit allocates one descriptor besides the records it writes.

use std::alloc::{self, Layout};
use std::ptr::{self, NonNull};

use super::{free_record, increment_unless_zero, Frozen, Record, Slot, SlotRef};
use crate::primitive::{pin, AtomicU8, AtomicUsize, Guard, Ordering::Release, Ordering::SeqCst};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Undecided = 0,
    Committed = 1,
    Aborted = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Claims each entry's slot with the entry itself, if its version is the expected one.
    Commit,
    /// Claims each slot, whatever its version, with a snapshot claim node.
    Snapshot,
}

/// The descriptor's header; its entries follow it in the same allocation.
#[repr(C)]
pub(crate) struct Txn<K, V> {
    status: AtomicU8,
    pub(crate) kind: Kind,
    /// The owner's count (until its claims are out of their slots) plus one per helper.
    refs: AtomicUsize,
    len: usize,
    /// The allocation, for freeing it (never through a shared reference).
    this: *mut Txn<K, V>,
    _entries: [Entry<K, V>; 0],
}

/// One key of a transaction. For a commit, also its claim.
#[repr(C)]
pub(crate) struct Entry<K, V> {
    /// The slot's id: entries are sorted by it, which is the order of claims.
    pub(crate) id: u64,
    /// Counted (from the entry's `SlotRef`) until the descriptor's count reaches zero.
    slot: *const Slot<K, V>,
    txn: *const Txn<K, V>,
    /// The version the handle read (commits).
    pub(crate) expect: u64,
    /// The record the claim froze, tagged with 1 once known (0: not yet). A commit's
    /// installers all store the same one (I4); a snapshot's helpers note the first they see.
    frozen: AtomicUsize,
    /// The record a commit installs; null for a key that is only validated.
    after: *mut Record<V>,
}

/// What an entry starts from.
pub(crate) struct EntryInit<'s, K, V> {
    /// The entry takes this count over.
    pub(crate) slot: SlotRef<'s, K, V>,
    pub(crate) expect: u64,
    pub(crate) after: Option<Box<Record<V>>>,
}

impl<K, V> Txn<K, V> {
    fn layout(len: usize) -> Layout {
        let entries = Layout::array::<Entry<K, V>>(len).expect("transaction too large");
        let (layout, offset) = Layout::new::<Self>()
            .extend(entries)
            .expect("transaction too large");
        debug_assert_eq!(offset, std::mem::size_of::<Self>());
        layout.pad_to_align()
    }

    pub(crate) fn entries(&self) -> &[Entry<K, V>] {
        // SAFETY: `Owner::new` allocated `len` initialized entries right after the header
        // (`repr(C)`, and the zero-length array gives the header the entries' alignment, so
        // they start at `size_of::<Self>()`); they live as long as the header.
        unsafe { std::slice::from_raw_parts(self._entries.as_ptr(), self.len) }
    }

    /// The status, read with a read-modify-write: the latest in its modification order. A
    /// helper re-checks the status this way right after installing a claim. With the owner's
    /// decision followed by its release pass, the two form a store-buffering pair; SeqCst loads
    /// would do under Rust's memory model, but loom models them as acquire loads, so only the
    /// read-modify-write lets the models check that a late claim is always taken out.
    pub(crate) fn status_synced(&self) -> Status {
        Self::status_of(self.status.fetch_or(0, SeqCst))
    }

    pub(crate) fn status(&self) -> Status {
        Self::status_of(self.status.load(SeqCst))
    }

    fn status_of(status: u8) -> Status {
        match status {
            0 => Status::Undecided,
            1 => Status::Committed,
            _ => Status::Aborted,
        }
    }

    /// Moves the status from Undecided to `outcome`; true for the one caller that does.
    pub(crate) fn decide(&self, outcome: Status) -> bool {
        self.status
            .compare_exchange(Status::Undecided as u8, outcome as u8, SeqCst, SeqCst)
            .is_ok()
    }

    /// The index of the entry for slot `id`, where a helper resumes this transaction when
    /// it found it blocking that slot: every entry before it is claimed (claims go in order,
    /// and an undecided claim stays put).
    pub(crate) fn position(&self, id: u64) -> usize {
        self.entries()
            .binary_search_by_key(&id, |entry| entry.id)
            .unwrap_or_else(|at| at)
    }

    /// A helper's count on this transaction, unless it is already on its way to be freed
    /// (then it is decided, and its claims are out of their slots or about to be).
    pub(crate) fn hold<'g>(&'g self, pin: &'g Guard) -> Option<Hold<'g, K, V>> {
        increment_unless_zero(&self.refs).then_some(Hold { txn: self, pin })
    }

    fn unref(&self, pin: &Guard) {
        if self.refs.fetch_sub(1, SeqCst) == 1 {
            // The entries' slot counts go now, not with the descriptor: a slot retired now is
            // freed only after the threads pinned now unpin, and only those can still reach it
            // through this descriptor (the module docs' hazard: a helper that pins later cannot
            // find the descriptor any more).
            if !cfg!(stm_mutation = "uncounted_entries") {
                for entry in self.entries() {
                    // SAFETY: each entry's count is let go of once, here, at the last count.
                    unsafe { SlotRef::release_raw(entry.slot) }
                }
            }
            let ptr = self.this;
            // SAFETY: the count is zero: the owner has taken every claim out of its slot and
            // no helper can install one any more (`hold` fails), so nothing reaches the
            // descriptor except threads pinned now. It is freed once, after they unpin.
            unsafe { pin.defer_unchecked(move || Self::free(ptr)) }
        }
    }

    /// Frees the descriptor with the records it still owns: the ones that can never be
    /// logical again (module docs: ownership).
    ///
    /// # Safety
    /// `ptr` came from `Owner::new`, the transaction is decided, and nobody can reach the
    /// descriptor any more.
    unsafe fn free(ptr: *mut Self) {
        // SAFETY: the caller's contract. A committed transaction's `before` records and an
        // aborted one's `after` records left every slot at the decision (claims are taken out
        // before the count reaches zero), and nobody else frees them.
        unsafe {
            let txn = &*ptr;
            for entry in txn.entries().iter().filter(|e| e.writes()) {
                match txn.status() {
                    Status::Committed => free_record(entry.before()),
                    _ => free_record(entry.after),
                }
            }
            alloc::dealloc(ptr.cast(), Self::layout(txn.len));
        }
    }
}

impl<K, V> Entry<K, V> {
    pub(crate) fn slot(&self) -> &Slot<K, V> {
        // SAFETY: the entry counts its slot until the descriptor's count reaches zero, and
        // whoever reaches the entry either holds a count on the descriptor or was pinned
        // before it reached zero (`Txn::unref`).
        unsafe { &*self.slot }
    }

    pub(crate) fn txn(&self) -> &Txn<K, V> {
        // SAFETY: an entry lives inside its transaction's allocation.
        unsafe { &*self.txn }
    }

    pub(crate) fn writes(&self) -> bool {
        !self.after.is_null()
    }

    /// The address of this entry, which is also its claim.
    pub(super) fn address(&self) -> usize {
        self as *const Self as usize
    }

    /// The record the claim froze (null: none, or not yet known).
    fn before(&self) -> *mut Record<V> {
        (self.frozen.load(SeqCst) & !1) as *mut Record<V>
    }

    /// The claim's logical record: `after` once committed, `before` otherwise.
    pub(super) fn logical_ptr(&self) -> *mut Record<V> {
        let committed = match self.txn().status() {
            Status::Committed => true,
            // The deliberate breakage `dirty_read` shows undecided writes.
            Status::Undecided => cfg!(stm_mutation = "dirty_read"),
            Status::Aborted => false,
        };
        if committed && self.writes() {
            self.after
        } else {
            self.before()
        }
    }

    pub(super) fn freeze(&self, record: *mut Record<V>) {
        // Published by the claim's compare-and-swap.
        self.frozen.store(record as usize | 1, Release);
    }

    /// Notes the record a snapshot claim froze; the first note wins (a note made after the
    /// decision, by a late helper, may be of a later claim, but never comes first: the
    /// decider noted every entry before deciding).
    pub(crate) fn note(&self, record: Frozen<'_, V>) {
        let _ = self
            .frozen
            .compare_exchange(0, record.0 as usize | 1, SeqCst, SeqCst);
    }

    /// The record noted by `note`, for the snapshot's owner, who has been pinned since
    /// before the decision.
    pub(crate) fn noted<'g>(&self, _pin: &'g Guard) -> Option<Option<&'g Record<V>>> {
        let frozen = self.frozen.load(SeqCst);
        // SAFETY: the noted record was logical at the decision, after the owner pinned, so it
        // is freed only after the owner's guard 'g is gone (null if nothing was noted).
        let record = unsafe { ((frozen & !1) as *const Record<V>).as_ref() };
        (frozen != 0).then_some(record)
    }
}

/// The owner's side of a transaction: its count, until its claims are out of their slots.
/// Dropping it undecided (an error, a panic, a paused commit dropped) aborts the transaction.
/// Forgetting it (`mem::forget`) leaks the descriptor and the records it owns, nothing else:
/// anyone can still drive the transaction to its decision from the entries, which own the
/// records to write, so it lands whole or not at all.
pub(crate) struct Owner<K, V> {
    txn: NonNull<Txn<K, V>>,
}

// SAFETY: the descriptor is shared between threads by design; everything in it is atomic or
// immutable, and it hands out `K` and `V` only by reference (`K, V: Send + Sync`).
unsafe impl<K: Send + Sync, V: Send + Sync> Send for Owner<K, V> {}
// SAFETY: as above.
unsafe impl<K: Send + Sync, V: Send + Sync> Sync for Owner<K, V> {}

impl<K, V> Owner<K, V> {
    /// A new, undecided transaction of `kind` over `entries` (exactly `len` of them), sorted
    /// by slot id.
    pub(crate) fn new<'s>(
        kind: Kind,
        len: usize,
        entries: impl IntoIterator<Item = EntryInit<'s, K, V>>,
    ) -> Self
    where
        K: 's,
        V: 's,
    {
        let layout = Txn::<K, V>::layout(len);
        // SAFETY: the layout has a non-zero size (the header).
        let raw = unsafe { alloc::alloc(layout) }.cast::<Txn<K, V>>();
        let Some(txn) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        // Frees what was built if `entries` panics (a user's `V::clone`) or falls short.
        struct Building<K, V> {
            txn: NonNull<Txn<K, V>>,
            layout: Layout,
            built: usize,
        }
        impl<K, V> Drop for Building<K, V> {
            fn drop(&mut self) {
                // SAFETY: the first `built` entries were written; nothing was published.
                unsafe {
                    let first = (*self.txn.as_ptr())._entries.as_mut_ptr();
                    for i in 0..self.built {
                        free_record((*first.add(i)).after);
                        SlotRef::release_raw((*first.add(i)).slot);
                    }
                    alloc::dealloc(self.txn.as_ptr().cast(), self.layout);
                }
            }
        }
        let mut building = Building {
            txn,
            layout,
            built: 0,
        };
        // SAFETY: `raw` is a fresh allocation of `layout`: room for the header and `len`
        // entries; each is written once, in bounds, before anything reads it.
        unsafe {
            raw.write(Txn {
                status: AtomicU8::new(Status::Undecided as u8),
                kind,
                refs: AtomicUsize::new(1),
                len,
                this: raw,
                _entries: [],
            });
            let first = (*raw)._entries.as_mut_ptr();
            for init in entries.into_iter().take(len) {
                first.add(building.built).write(Entry {
                    id: init.slot.id,
                    slot: if cfg!(stm_mutation = "uncounted_entries") {
                        &*init.slot // the deliberate breakage: the entry's count is dropped
                    } else {
                        init.slot.into_raw()
                    },
                    txn: raw,
                    expect: init.expect,
                    frozen: AtomicUsize::new(0),
                    after: init.after.map_or(ptr::null_mut(), Box::into_raw),
                });
                building.built += 1;
            }
            assert_eq!(building.built, len, "fewer entries than announced");
            std::slice::from_raw_parts_mut(first, len).sort_unstable_by_key(|e| e.id);
        }
        std::mem::forget(building);
        Self { txn }
    }

    pub(crate) fn txn(&self) -> &Txn<K, V> {
        // SAFETY: the owner's count keeps the descriptor alive.
        unsafe { self.txn.as_ref() }
    }

    pub(crate) fn claimer(&self) -> Claimer<'_, K, V> {
        Claimer {
            txn: self.txn(),
            helping: false,
        }
    }
}

impl<K, V> Drop for Owner<K, V> {
    fn drop(&mut self) {
        let pin = pin();
        let txn = self.txn();
        if txn.status() == Status::Undecided {
            txn.decide(Status::Aborted);
        }
        for entry in txn.entries() {
            match txn.kind {
                Kind::Commit => entry.slot().release(entry),
                Kind::Snapshot => entry.slot().release_snapshot_claim(&pin, txn),
            }
        }
        txn.unref(&pin);
    }
}

/// A helper's count on a transaction it found in its way; let go when dropped.
pub(crate) struct Hold<'g, K, V> {
    txn: &'g Txn<K, V>,
    pin: &'g Guard,
}

impl<'g, K, V> Hold<'g, K, V> {
    pub(crate) fn claimer(&self) -> Claimer<'g, K, V> {
        Claimer {
            txn: self.txn,
            helping: true,
        }
    }
}

impl<K, V> Drop for Hold<'_, K, V> {
    fn drop(&mut self) {
        self.txn.unref(self.pin);
    }
}

/// Proof that the caller holds a count on a transaction: needed to install its claims.
pub(crate) struct Claimer<'a, K, V> {
    txn: &'a Txn<K, V>,
    /// Whether the caller helps another thread's transaction (else it owns it).
    helping: bool,
}

impl<K, V> Clone for Claimer<'_, K, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, V> Copy for Claimer<'_, K, V> {}

impl<'a, K, V> Claimer<'a, K, V> {
    pub(crate) fn txn(self) -> &'a Txn<K, V> {
        self.txn
    }

    pub(crate) fn helping(self) -> bool {
        self.helping
    }
}
