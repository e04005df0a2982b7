//! Lookups during a multi-key commit that removes the key they look up (contract points 22-23):
//! a read never answers the tombstone (the record whose version has bit 63 set). While the
//! commit is undecided its claim sits in the key's slot, and the logical record behind that
//! claim is the old record until the commit is decided, the tombstone after: a lookup that
//! checks "not removed" on one read of the record and returns a second read returns the
//! tombstone when the decision falls between the two. `Store::find` (behind `get` and
//! `contains_key`) did exactly that until 577fc3f; `Store::live` (behind `usevar` and the reads
//! of `atomically`) reads once as well.
//!
//! In every model the other thread closes account `a` into `b` in one commit (`b` = `a` + `b`,
//! `a` removed) and the main thread reads `a` with one of those lookups: `get` and
//! `contains_key` (`get_during_removal_commit`), `usevar` whose handle then commits a write
//! (`usevar_during_removal_commit`), and a transaction (`transaction_during_removal_commit`).
//! Each read sees `a` before the commit (version 1, 10) or after it (absent, or created again
//! one above its tombstone: version 3, no value), never the tombstone, and agrees with what it
//! reads of `b`.
//!
//! Catches: double_read (`find` and `live` read the record a second time after checking it),
//! in each model from preemption bound 2 (they run at 3). Each model's doc names the other
//! mutations it catches, as measured at its bound; none catches writable_tombstone,
//! skip_read_validation or single_collect (no write meets a tombstone, nothing is validated
//! read-only against a write, no snapshot is taken).
//!
//! Two threads in every model: the main thread is one of the actors.
#![cfg(loom)]

use std::sync::Arc;

use loom::thread;
use stm_store::Error;
use stm_store_loom_tests::*;

/// The version bit of a tombstone (`slot::REMOVED`): no read may answer a version with it.
const REMOVED: u64 = 1 << 63;

/// Before the closing commit: `a` (version 1, 10).
const A_OPEN: (u64, Option<Val>) = (1, Some(10));
/// `a` read after the closing commit: created again one above its tombstone (version 2).
const A_AGAIN: (u64, Option<Val>) = (3, None);
/// `b` before and after the closing commit.
const B_OPEN: (u64, Option<Val>) = (1, Some(10));
const B_CLOSED: (u64, Option<Val>) = (2, Some(20));

/// Spawns the other thread: closes `a` into `b` in one commit, retried while it fails with
/// `ConcurrentUpdate` at most `retries` times (a write of the main thread may land first).
fn closer(store: &Arc<S>, retries: usize) -> thread::JoinHandle<()> {
    let store = Arc::clone(store);
    thread::spawn(move || {
        for tries in 0.. {
            let mut c = store.using(["a", "b"]).unwrap();
            let a = c["a"].value().copied().unwrap_or(0);
            let b = *c["b"].value().unwrap();
            c["b"].set(a + b);
            c["a"].remove();
            match c.commit() {
                Ok(()) => return,
                Err(Error::ConcurrentUpdate) if tries < retries => {}
                Err(e) => panic!("closing: {e:?} after {tries} retries"),
            }
        }
    })
}

/// `get` and `contains_key` of `a` (then `get` of `b`) during the closing commit. `get("a")`
/// answers `a` open or absent, never the tombstone; once it answered absent, `contains_key`
/// answers false and `b` holds the total; once `contains_key` answered false, so does `b`.
///
/// Catches: double_read (`get` returns version 2 | bit 63, no value: the check read the
/// undecided claim's old record, the second read the decided tombstone), dirty_read and
/// no_descriptor (`a` absent, yet `b` not written), decide_before_claims.
#[test]
fn get_during_removal_commit() {
    check("get_during_removal_commit", 3, || {
        let store = seeded(&[("a", 10), ("b", 10)]);
        let other = closer(&store, 0);
        let a = store.get("a");
        if let Some((version, _)) = a {
            assert_eq!(version & REMOVED, 0, "get answered the tombstone: {a:?}");
        }
        assert!(a.is_none() || a == Some(A_OPEN), "get(a) = {a:?}");
        let has_a = store.contains_key("a");
        assert!(a.is_some() || !has_a, "a absent, then listed again");
        let b = store.get("b").unwrap();
        assert!(has_a || b == B_CLOSED, "a gone, yet b = {b:?}");
        assert!(b == B_OPEN || b == B_CLOSED, "get(b) = {b:?}");
        other.join().unwrap();
        assert_eq!(store.get("a"), None);
        assert!(!store.contains_key("a"));
        assert_eq!(store.get("b"), Some(B_CLOSED));
    });
}

/// `usevar("a")` during the closing commit, and the handle then commits a write of 7. The
/// handle holds `a` open or `a` created again, never the tombstone; its commit answers `Ok` or
/// `ConcurrentUpdate` (it ends: a handle that held the tombstone once made `commit_one` loop),
/// and the closing (retried once if the write landed first) and the write leave one of three
/// states.
///
/// Catches: double_read (the handle holds version 2 | bit 63, no value), no_floor (`a`
/// created again at version 0), decide_before_claims (the write and the closing both land).
#[test]
fn usevar_during_removal_commit() {
    check("usevar_during_removal_commit", 3, || {
        let store = seeded(&[("a", 10), ("b", 10)]);
        let other = closer(&store, 1);
        let mut a = store.usevar("a").unwrap();
        let read = (a.version(), a.value().copied());
        assert_eq!(read.0 & REMOVED, 0, "usevar read the tombstone: {read:?}");
        assert!(read == A_OPEN || read == A_AGAIN, "usevar(a) = {read:?}");
        a.set(7);
        let written = a.commit();
        assert!(
            matches!(written, Ok(()) | Err(Error::ConcurrentUpdate)),
            "the write of a answered {written:?}"
        );
        drop(a);
        other.join().unwrap();
        let dump = store.dump();
        let expected: &[Row] = match (read, written.is_ok()) {
            (A_OPEN, true) => &[("b", 2, Some(17))], // a = 7, then closed
            (A_OPEN, false) => &[("b", 2, Some(20))], // closed first
            (A_AGAIN, true) => &[("a", 4, Some(7)), ("b", 2, Some(20))],
            _ => panic!("the write of a read {read:?} and answered {written:?}; dump {dump:?}"),
        };
        assert_eq!(dump, expected, "read {read:?}, write {written:?}");
    });
}

/// A transaction that reads `a` (its version, then its value) and `b` during the closing
/// commit. Every run of the closure (opacity: those that will not commit too) sees `a` open
/// with `b` open, or `a` created again with `b` closed, never the tombstone.
///
/// Catches: double_read (a run reads `a` at version 2 | bit 63), dirty_read and no_descriptor
/// (`a` created again, `b` not written), no_opacity (`a` open, `b` closed), no_floor (`a`
/// created again at version 0), decide_before_claims.
#[test]
fn transaction_during_removal_commit() {
    check("transaction_during_removal_commit", 3, || {
        let store = seeded(&[("a", 10), ("b", 10)]);
        let other = closer(&store, 0);
        let seen = store.atomically(|tx| {
            let version = tx.version(&"a")?;
            assert_eq!(version & REMOVED, 0, "a transaction read the tombstone");
            let a = (version, tx.get(&"a")?);
            let b = (tx.version(&"b")?, tx.get(&"b")?);
            assert!(
                (a, b) == (A_OPEN, B_OPEN) || (a, b) == (A_AGAIN, B_CLOSED),
                "a transaction saw a = {a:?}, b = {b:?}"
            );
            Ok((a, b))
        });
        other.join().unwrap();
        let after = store.dump();
        match seen {
            (A_OPEN, _) => assert_eq!(after, [("b", 2, Some(20))]),
            _ => assert_eq!(after, [("a", 3, None), ("b", 2, Some(20))]),
        }
    });
}
