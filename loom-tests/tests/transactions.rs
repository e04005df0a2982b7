//! `atomically` against commits: opacity (a transaction never sees a state that did not exist
//! at one instant) and the `retry` handshake (a commit landing between a waiter's last check
//! and its sleep still wakes it).
//!
//! The retry models block for real: a lost wake-up leaves the waiter parked forever, and loom
//! reports the deadlock.
#![cfg(loom)]

use std::sync::Arc;

use loom::thread;
use stm_store_loom_tests::*;

/// A transaction reads `x` then `y` while another moves 1 from `y` to `x` (`x + y == 0`
/// always holds in the store); the reader asserts the invariant inside its closure, so a torn
/// view panics in the model.
///
/// Catches: no_opacity.
#[test]
fn transaction_never_sees_torn_state() {
    check("transaction_never_sees_torn_state", 2, || {
        let store = seeded(&[("x", 0), ("y", 0)]);
        let writer = {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                store.atomically(|tx| {
                    let (x, y) = (tx.get(&"x")?.unwrap(), tx.get(&"y")?.unwrap());
                    tx.set(&"x", x + 1)?;
                    tx.set(&"y", y - 1)
                })
            })
        };
        let seen = store.atomically(|tx| {
            let x = tx.get(&"x")?.unwrap();
            let y = tx.get(&"y")?.unwrap();
            assert_eq!(x + y, 0, "a torn view: x = {x}, y = {y}");
            Ok(x)
        });
        writer.join().unwrap();
        assert!(seen == 0 || seen == 1);
        assert_eq!(store.dump(), vec![("x", 2, Some(1)), ("y", 2, Some(-1))]);
    });
}

/// A transaction retries until `k` has a value; the other thread writes it with a handle's
/// single-key commit (the fast path, whose compare-and-swap is its linearization point).
///
/// Catches: lost_wakeup.
#[test]
fn retry_wakes_on_single_key_commit() {
    check("retry_wakes_on_single_key_commit", 3, || {
        let store = seeded(&[]);
        let waiter = {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                store.atomically(|tx| match tx.get(&"k")? {
                    Some(v) => Ok(v),
                    None => tx.retry(),
                })
            })
        };
        commit_one(&store, "k", 7);
        assert_eq!(waiter.join().unwrap(), 7);
    });
}

/// A transaction retries until `a` and `b` both have values; the other thread writes both in
/// one transaction (a descriptor, whose status change is its linearization point).
///
/// Catches: lost_wakeup.
#[test]
fn retry_wakes_on_multi_key_commit() {
    check("retry_wakes_on_multi_key_commit", 2, || {
        let store = seeded(&[]);
        let waiter = {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                store.atomically(|tx| match (tx.get(&"a")?, tx.get(&"b")?) {
                    (Some(a), Some(b)) => Ok(a + b),
                    _ => tx.retry(),
                })
            })
        };
        store.atomically(|tx| {
            tx.set(&"a", 1)?;
            tx.set(&"b", 2)
        });
        assert_eq!(waiter.join().unwrap(), 3);
    });
}

/// A transaction retries until `a` has a value; the commit that writes it stalls after
/// claiming its keys, and another thread, blocked by it, decides it: the decider must wake the
/// waiter (the stalled owner never does, here, before the waiter is joined).
///
/// Catches: helper_silent.
#[test]
fn retry_wakes_when_a_helper_decides() {
    check("retry_wakes_when_a_helper_decides", 2, || {
        let store = seeded(&[("b", 0)]);
        let mut c = store.using(["a", "b"]).unwrap();
        c["a"].set(1);
        c["b"].set(1);
        let paused = c.commit_paused(2);
        let waiter = {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                store.atomically(|tx| match tx.get(&"a")? {
                    Some(v) => Ok(v),
                    None => tx.retry(),
                })
            })
        };
        let helped = commit_one(&store, "b", 2); // blocked by the claim: decides the commit
        assert!(!helped.ok(), "b changed under it");
        assert_eq!(waiter.join().unwrap(), 1);
        paused.resume().unwrap();
    });
}
