//! Waking transactions that wait in `retry` for a key they read to change.
//!
//! **Buckets.** Slots map to a fixed number of buckets by id; each bucket has a count of the
//! waiters that read one of its slots, and an event they listen on. A commit wakes only the
//! buckets of the keys it wrote, and only those with waiters: a waiter on one key does not make
//! unrelated commits notify, nor wake for them (only for a key that shares its bucket).
//!
//! **The handshake.** A waiter counts itself in on each bucket of its keys, registers a
//! listener on each, then checks its reads again, and sleeps only if none changed. A commit that
//! wrote checks its keys' bucket counts after its linearization point and notifies the buckets
//! that have waiters. All of these accesses are SeqCst (the slot and status accesses of the
//! protocol are too), so in the single order of SeqCst operations either the waiter's check
//! comes after the commit (it sees the change and does not sleep) or the commit's check comes
//! after the count went up (its notification reaches the listener, registered before the check:
//! event-listener fences after registering and before notifying). No wake-up is lost; the loom
//! models in `transactions.rs` check it.
//!
//! **Cost when nobody waits**: one load per key written, of a count that only waiters write.
//!
//! A waiter listens on several events at once: its listeners are futures, polled together; a
//! thread blocks on them with a parker from the `parking` crate (event-listener's own).

use event_listener::{Event, EventListener};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::primitive::{fence, AtomicUsize, Ordering::SeqCst};

/// Enough that waiters on different keys rarely share one; 1 KiB a store.
const BUCKETS: usize = 64;

pub(crate) struct Waiters {
    buckets: Box<[Bucket]>,
}

struct Bucket {
    /// How many waiters read a slot of this bucket (counted in until they wake).
    waiting: AtomicUsize,
    event: Event,
}

impl Bucket {
    #[cold]
    fn wake(&self) {
        self.event.notify(usize::MAX);
    }
}

impl Waiters {
    pub(crate) fn new() -> Self {
        let bucket = || Bucket {
            waiting: AtomicUsize::new(0),
            event: Event::new(),
        };
        Self {
            buckets: (0..BUCKETS).map(|_| bucket()).collect(),
        }
    }

    fn bucket(id: u64) -> usize {
        (id % BUCKETS as u64) as usize
    }

    /// Called after a commit that wrote the slots `ids` has landed.
    #[inline]
    pub(crate) fn committed(&self, ids: impl Iterator<Item = u64>) {
        // SeqCst accesses already order the commit's compare-and-swap before these loads (see
        // the module docs); loom models SeqCst accesses as AcqRel only, and supports SeqCst
        // fences, so the models get that order from a fence.
        if cfg!(loom) {
            fence(SeqCst);
        }
        for id in ids {
            let bucket = &self.buckets[Self::bucket(id)];
            if bucket.waiting.load(SeqCst) != 0 {
                bucket.wake();
            }
        }
    }

    /// Counts a waiter in on the buckets of the slots `ids` and registers its listeners: check
    /// the reads after this, then wait.
    pub(crate) fn watch(&self, ids: impl Iterator<Item = u64>) -> Watch<'_> {
        let mut buckets: Vec<usize> = ids.map(Self::bucket).collect();
        buckets.sort_unstable();
        buckets.dedup();
        let mut listeners = Vec::with_capacity(buckets.len());
        for &at in &buckets {
            self.buckets[at].waiting.fetch_add(1, SeqCst);
            listeners.push(self.buckets[at].event.listen());
        }
        fence(SeqCst); // the checks that follow come after the registrations
        Watch {
            woken: AnyOf(listeners),
            _counted: Counted {
                waiters: self,
                buckets,
            },
        }
    }
}

/// A registered waiter: wait on it after checking the reads.
pub(crate) struct Watch<'a> {
    woken: AnyOf,
    _counted: Counted<'a>,
}

/// Counts the waiter out however its wait ends (woken, timed out, or a dropped future).
struct Counted<'a> {
    waiters: &'a Waiters,
    buckets: Vec<usize>,
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        for &at in &self.buckets {
            self.waiters.buckets[at].waiting.fetch_sub(1, SeqCst);
        }
    }
}

impl Watch<'_> {
    /// Blocks until a commit wakes this waiter (true), or `deadline` passes (false).
    pub(crate) fn wait(mut self, deadline: Option<Instant>) -> bool {
        let (parker, unparker) = parking::pair();
        let waker = Waker::from(unparker);
        let mut context = Context::from_waker(&waker);
        loop {
            if Pin::new(&mut self.woken).poll(&mut context).is_ready() {
                return true;
            }
            match deadline {
                None => parker.park(),
                Some(deadline) => {
                    if !park_deadline(&parker, deadline) {
                        return Pin::new(&mut self.woken).poll(&mut context).is_ready();
                    }
                }
            }
        }
    }

    /// Waits, without blocking the thread, until a commit wakes this waiter.
    pub(crate) async fn notified(self) {
        let Self { woken, _counted } = self;
        woken.await;
    }
}

#[cfg(not(loom))]
fn park_deadline(parker: &parking::Parker, deadline: Instant) -> bool {
    parker.park_deadline(deadline)
}

#[cfg(loom)]
fn park_deadline(_: &parking::Parker, _: Instant) -> bool {
    unreachable!("loom has no clock: the models set no deadline")
}

/// Ready once any of its listeners is notified.
struct AnyOf(Vec<EventListener>);

impl Future for AnyOf {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        let woken = self
            .0
            .iter_mut()
            .any(|listener| Pin::new(listener).poll(context).is_ready());
        if woken {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}
