//! Two small cells that pass boxed values between threads, for the store's fallback dump.

use super::drop_caught;
use crate::primitive::{AtomicUsize, Guard, Ordering::SeqCst};
use std::marker::PhantomData;

/// Holds at most one item that every thread can look at under its pin.
pub(crate) struct Shelf<T> {
    item: AtomicUsize,
    _owns: PhantomData<Box<T>>,
}

impl<T> Shelf<T> {
    pub(crate) fn new() -> Self {
        Self {
            item: AtomicUsize::new(0),
            _owns: PhantomData,
        }
    }

    /// Puts `item` on the shelf if it is empty, and returns it as put there; otherwise hands it
    /// back.
    pub(crate) fn put<'g>(&self, _pin: &'g Guard, item: Box<T>) -> Result<&'g T, Box<T>> {
        let ptr = Box::into_raw(item);
        match self.item.compare_exchange(0, ptr as usize, SeqCst, SeqCst) {
            // SAFETY: as in `peek`: retired only by `remove`, freed after this pin is gone.
            Ok(_) => Ok(unsafe { &*ptr }),
            // SAFETY: `ptr` came from `Box::into_raw` above and was not published.
            Err(_) => Err(unsafe { Box::from_raw(ptr) }),
        }
    }

    pub(crate) fn peek<'g>(&self, _pin: &'g Guard) -> Option<&'g T> {
        let ptr = self.item.load(SeqCst) as *const T;
        // SAFETY: an item leaves the shelf only through `remove`, which retires it: it is
        // freed after every thread pinned then (this one included, for 'g) has unpinned.
        unsafe { ptr.as_ref() }
    }

    /// Takes `item` (found by `peek` or `put`) off the shelf and retires it, unless someone
    /// else already did.
    pub(crate) fn remove(&self, pin: &Guard, item: &T) {
        let ptr = item as *const T as usize;
        if self.item.compare_exchange(ptr, 0, SeqCst, SeqCst).is_ok() {
            // SAFETY: this compare-and-swap made it unreachable, once; see `peek`.
            unsafe { pin.defer_unchecked(move || drop_caught(Box::from_raw(ptr as *mut T))) }
        }
    }
}

impl<T> Drop for Shelf<T> {
    fn drop(&mut self) {
        let ptr = self.item.load(SeqCst) as *mut T;
        if !ptr.is_null() {
            // SAFETY: exclusive access; the item came from `Box::into_raw` in `put`.
            drop_caught(unsafe { Box::from_raw(ptr) });
        }
    }
}

/// A cell that can be filled once and emptied once.
pub(crate) struct OnceBox<T> {
    item: AtomicUsize,
    _owns: PhantomData<Box<T>>,
}

const TAKEN: usize = 1;

impl<T> OnceBox<T> {
    pub(crate) fn new() -> Self {
        Self {
            item: AtomicUsize::new(0),
            _owns: PhantomData,
        }
    }

    /// Fills the cell if it was never filled; otherwise drops `item`.
    pub(crate) fn offer(&self, item: Box<T>) {
        let ptr = Box::into_raw(item);
        if self
            .item
            .compare_exchange(0, ptr as usize, SeqCst, SeqCst)
            .is_err()
        {
            // SAFETY: `ptr` came from `Box::into_raw` above and was not published.
            drop_caught(unsafe { Box::from_raw(ptr) });
        }
    }

    /// Whether an item was ever offered.
    pub(crate) fn is_filled(&self) -> bool {
        self.item.load(SeqCst) != 0
    }

    /// The item, the first time it is asked for after it was offered.
    pub(crate) fn take(&self) -> Option<Box<T>> {
        let ptr = self.item.load(SeqCst);
        if ptr == 0 || ptr == TAKEN {
            return None;
        }
        let won = self.item.compare_exchange(ptr, TAKEN, SeqCst, SeqCst);
        // SAFETY: the one compare-and-swap that moved it to TAKEN owns it.
        won.ok().map(|_| unsafe { Box::from_raw(ptr as *mut T) })
    }
}

impl<T> Drop for OnceBox<T> {
    fn drop(&mut self) {
        let ptr = self.item.load(SeqCst);
        if ptr != 0 && ptr != TAKEN {
            // SAFETY: exclusive access; never taken, so still owned here.
            drop_caught(unsafe { Box::from_raw(ptr as *mut T) });
        }
    }
}
