//! Transactions at their edges, each found by a review: a commit decided by a helper wakes
//! waiters, a swallowed retry stays a retry, and an endless timeout is no deadline (nesting,
//! refused on any store, is contract point 31: `tests/conveniences.rs`).

use std::sync::mpsc;
use std::time::Duration;
use stm_store::{Store, TxError};

/// Bounds a wait that must end, so that a lost wake-up fails the test instead of hanging it.
const WATCHDOG: Duration = Duration::from_secs(60);

#[cfg(feature = "test-hooks")]
#[test]
fn retry_wakes_when_another_thread_decides_a_stalled_commit() {
    let store: Store<&str, i32> = Store::new();
    store.atomically(|tx| {
        tx.clear(&"a")?;
        tx.set(&"b", 0)
    });
    let mut c = store.using(["a", "b"]).unwrap();
    c["a"].set(1);
    c["b"].set(1);
    let paused = c.commit_paused(2); // both claimed, undecided: its owner stalls here
    let (read, reads) = mpsc::channel();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            store
                .transaction()
                .timeout(WATCHDOG)
                .run(|tx| match tx.get(&"a")? {
                    Some(a) => Ok(a),
                    None => {
                        read.send(()).unwrap();
                        tx.retry()
                    }
                })
        });
        reads.recv().unwrap(); // the waiter read "a" before the stalled commit landed
                               // Blocked by the claim on "b", this commit decides the stalled one (then conflicts).
        let mut b = store.usevar("b").unwrap();
        b.set(2);
        let _ = b.commit();
        let woken: Result<i32, TxError> = waiter.join().unwrap();
        assert_eq!(
            woken,
            Ok(1),
            "the waiter was not woken by the helped commit"
        );
    });
    paused.resume().unwrap();
}

#[test]
fn a_swallowed_retry_is_not_cleared_by_or_else() {
    let store: Store<&str, i32> = Store::new();
    let result: Result<(), TxError> =
        store
            .transaction()
            .timeout(Duration::from_millis(20))
            .run(|tx| {
                let _ = tx.retry::<()>(); // swallowed: the run is still over
                tx.or_else(|tx| tx.get(&"a").map(drop), |_| Ok(()))?;
                tx.set(&"b", 1)
            });
    assert!(result.unwrap_err().is_timeout());
    assert_eq!(store.get("b"), None, "a retried run wrote");
}

#[test]
fn an_endless_timeout_is_no_deadline() {
    let store: Store<&str, i32> = Store::new();
    let got: Result<i32, TxError> = store
        .transaction()
        .timeout(Duration::MAX)
        .run(|tx| tx.set(&"k", 3).map(|()| 3));
    assert_eq!(got, Ok(3));
}
