//! Waking transactions that wait in `retry` for a key they read to change.
//!
//! **The handshake.** A waiter counts itself in, registers a listener, then checks its reads
//! again, and sleeps only if none changed. A commit that wrote anything checks the count after
//! its linearization point and, if anyone waits, notifies. All of these accesses are SeqCst
//! (the slot and status accesses of the protocol are too), so in the single order of SeqCst
//! operations either the waiter's check comes after the commit (it sees the change and does not
//! sleep) or the commit's check comes after the count went up (its notification reaches the
//! listener, registered before the check: event-listener fences after registering and before
//! notifying). No wake-up is lost; the loom model `wake::retry_wakes_on_commit` checks it.
//!
//! **Cost when nobody waits**: one load of the count, read-shared by every committer and
//! written only when a transaction starts or stops waiting.
//!
//! Waiters share one event per store: a commit wakes them all, and each checks its own reads
//! again (a spurious wake-up costs a check, never a run of the closure).

use event_listener::{Event, EventListener, Listener};
use std::time::Instant;

use crate::primitive::{fence, AtomicUsize, Ordering::SeqCst};

pub(crate) struct Waiters {
    /// How many transactions are between counting themselves in and waking up.
    waiting: AtomicUsize,
    event: Event,
}

impl Waiters {
    pub(crate) fn new() -> Self {
        Self {
            waiting: AtomicUsize::new(0),
            event: Event::new(),
        }
    }

    /// Called after a commit that wrote something has landed.
    pub(crate) fn committed(&self) {
        // SeqCst accesses already order the commit's compare-and-swap before this load (see the
        // module docs); loom models SeqCst accesses as AcqRel only, and supports SeqCst fences,
        // so the models get that order from a fence.
        if cfg!(loom) {
            fence(SeqCst);
        }
        if self.waiting.load(SeqCst) != 0 {
            self.event.notify(usize::MAX);
        }
    }

    /// Counts a waiter in and registers its listener: check the reads after this, then wait.
    pub(crate) fn watch(&self) -> Watch<'_> {
        self.waiting.fetch_add(1, SeqCst);
        let listener = self.event.listen();
        fence(SeqCst); // the checks that follow come after the registration
        Watch {
            listener,
            _counted: Counted(self),
        }
    }
}

/// A registered waiter: wait on it after checking the reads.
pub(crate) struct Watch<'a> {
    listener: EventListener,
    _counted: Counted<'a>,
}

/// Counts the waiter out however its wait ends (woken, timed out, or a dropped future).
struct Counted<'a>(&'a Waiters);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, SeqCst);
    }
}

impl Watch<'_> {
    /// Blocks until a commit wakes this waiter.
    pub(crate) fn wait(self) {
        self.listener.wait();
    }

    /// Blocks until a commit wakes this waiter (true) or `deadline` passes (false).
    pub(crate) fn wait_deadline(self, deadline: Instant) -> bool {
        self.listener.wait_deadline(deadline).is_some()
    }

    /// Waits, without blocking the thread, until a commit wakes this waiter.
    pub(crate) async fn notified(self) {
        let Self { listener, _counted } = self;
        listener.await;
    }
}
