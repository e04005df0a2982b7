//! Committers against committers: overlapping multi-key commits (model 1), read-only
//! validation and write skew (model 4), and the single-key fast path against a multi-key
//! commit (model 8). Every model checks that the successful commits are serializable: applied
//! one by one in some order, each finds the versions it read and together they give the final
//! `dump` (so nothing is half-applied), and that every `ConcurrentUpdate` is honest.
//!
//! The main thread is one of the committers (two threads in all), except in
//! `transfers_with_auditor`, where the auditor is the third.
#![cfg(loom)]

use std::sync::Arc;

use loom::sync::atomic::{AtomicBool, Ordering};
use loom::thread;
use stm_store::Error;
use stm_store_loom_tests::*;

/// A transfer of `amount` from `from` to `to`, reading the keys in the order of `keys`.
fn transfer(store: &S, from: Key, to: Key, amount: Val, keys: [Key; 2]) -> Attempt {
    let mut c = store.using(keys).unwrap();
    let (f, t) = (*c[from].value().unwrap(), *c[to].value().unwrap());
    commit_collection(&mut c, &[(from, Some(f - amount)), (to, Some(t + amount))])
}

/// Model 1a: two transfers on the same two keys, one reading them as `[a, b]`, the other as
/// `[b, a]`; `b` is created first, so claim (slot-id) order is the opposite of key order.
///
/// Catches: decide_before_claims, no_descriptor.
#[test]
fn opposite_order_transfers() {
    check("opposite_order_transfers", 3, || {
        let store = seeded(&[("b", 5), ("a", 10)]);
        let initial = store.dump();
        let other = {
            let store = Arc::clone(&store);
            thread::spawn(move || transfer(&store, "b", "a", 2, ["b", "a"]))
        };
        let mine = transfer(&store, "a", "b", 1, ["a", "b"]);
        let attempts = [mine, other.join().unwrap()];
        let dump = store.dump();
        check_serial(&initial, &attempts, &dump);
        assert_eq!(
            dump.iter().map(|r| r.2.unwrap()).sum::<Val>(),
            15,
            "{dump:?}"
        );
    });
}

/// Model 1b: two committers that each increment both keys (one of them also clears a third,
/// read-only for the other: a read-only entry inside a descriptor), so a lost update shows as
/// a missing increment.
///
/// Catches: decide_before_claims, no_descriptor.
#[test]
fn overlapping_increments() {
    check("overlapping_increments", 3, || {
        let store = seeded(&[("b", 0), ("a", 0), ("c", 7)]);
        let initial = store.dump();
        let other = {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                let mut c = store.using(["a", "b", "c"]).unwrap();
                let (a, b) = (*c["a"].value().unwrap(), *c["b"].value().unwrap());
                commit_collection(&mut c, &[("a", Some(a + 1)), ("b", Some(b + 1))])
            })
        };
        let mine = {
            let mut c = store.using(["c", "b", "a"]).unwrap();
            let (a, b) = (*c["a"].value().unwrap(), *c["b"].value().unwrap());
            commit_collection(
                &mut c,
                &[("a", Some(a + 10)), ("b", Some(b + 10)), ("c", None)],
            )
        };
        let attempts = [mine, other.join().unwrap()];
        check_serial(&initial, &attempts, &store.dump());
    });
}

/// Model 4a, write skew: both threads read `a` and `b` and each writes one of them (an
/// "at least one stays on call" rule). Both may not commit on the same stale reads: the key
/// a thread only read is validated.
///
/// Catches: skip_read_validation, decide_before_claims, no_descriptor.
#[test]
fn write_skew() {
    check("write_skew", 3, || {
        let store = seeded(&[("a", 1), ("b", 1)]);
        let initial = store.dump();
        let go_off = |store: &S, me: Key| {
            let mut c = store.using(["a", "b"]).unwrap();
            let on_call = *c["a"].value().unwrap() + *c["b"].value().unwrap();
            let writes: &[(Key, Option<Val>)] = if on_call == 2 { &[(me, Some(0))] } else { &[] };
            commit_collection(&mut c, writes)
        };
        let other = {
            let store = Arc::clone(&store);
            thread::spawn(move || go_off(&store, "b"))
        };
        let mine = go_off(&store, "a");
        let attempts = [mine, other.join().unwrap()];
        let dump = store.dump();
        check_serial(&initial, &attempts, &dump);
        assert!(dump.iter().any(|r| r.2 == Some(1)), "write skew: {dump:?}");
    });
}

/// Model 4b, read-only validation against a writer: a commit that only read `a` and `b` (no
/// descriptor: one validating pass), and one that writes `a` and only reads `b`, each started
/// after the writer of `b` was seen to finish, must fail if they read the old `b`.
///
/// Catches: skip_read_validation (the assertion on a stale read), decide_before_claims.
#[test]
fn read_only_validation() {
    for write_a in [false, true] {
        let name = if write_a {
            "read_only_validation (writes a)"
        } else {
            "read_only_validation (reads only)"
        };
        check(name, 3, move || {
            let store = seeded(&[("a", 1), ("b", 1)]);
            let initial = store.dump();
            let done = Arc::new(AtomicBool::new(false));
            let writer = {
                let (store, done) = (Arc::clone(&store), Arc::clone(&done));
                thread::spawn(move || {
                    let attempt = commit_one(&store, "b", 2);
                    done.store(true, Ordering::SeqCst);
                    attempt
                })
            };
            let mut c = store.using(["a", "b"]).unwrap();
            let snapshot = values(&c);
            let stale = c["b"].version() == 1;
            let writer_done = done.load(Ordering::SeqCst);
            let writes: &[(Key, Option<Val>)] = if write_a { &[("a", Some(5))] } else { &[] };
            let reader = commit_collection(&mut c, writes);
            if stale && writer_done {
                assert_eq!(
                    reader.result,
                    Err(Error::ConcurrentUpdate),
                    "validated a read of b that was already overwritten"
                );
            }
            let attempts = [reader, writer.join().unwrap()];
            check_history(&initial, &attempts, &[], &[snapshot], &store.dump());
        });
    }
}

/// Model 8: the single-key fast path (one `Value` written, no descriptor) racing a two-key
/// commit on the same key: it must help the two-key commit's claim to its decision, never
/// write over it.
///
/// Catches: decide_before_claims.
#[test]
fn fast_path_against_multi_key() {
    check("fast_path_against_multi_key", 3, || {
        let store = seeded(&[("b", 0), ("a", 0)]);
        let initial = store.dump();
        let single = {
            let store = Arc::clone(&store);
            thread::spawn(move || commit_one(&store, "a", 100))
        };
        let multi = {
            let mut c = store.using(["a", "b"]).unwrap();
            commit_collection(&mut c, &[("a", Some(1)), ("b", Some(1))])
        };
        let attempts = [single.join().unwrap(), multi];
        check_serial(&initial, &attempts, &store.dump());
    });
}

/// Model 1c: the two opposite transfers of model 1a in two threads, with an auditor: a
/// `dump` in the main thread meanwhile sees the total conserved, `a` and `b` at one version
/// (they are always written together), and a state that some serial order of the transfers
/// passes through. Three threads: bound 1.
///
/// Catches: decide_before_claims, no_descriptor.
#[test]
fn transfers_with_auditor() {
    check("transfers_with_auditor", 1, || {
        let store = seeded(&[("b", 5), ("a", 10)]);
        let initial = store.dump();
        let spawn = |from: Key, to: Key, amount: Val| {
            let store = Arc::clone(&store);
            thread::spawn(move || transfer(&store, from, to, amount, [from, to]))
        };
        let one = spawn("a", "b", 1);
        let two = spawn("b", "a", 2);
        let audit = store.dump();
        assert_eq!(
            audit.iter().map(|r| r.2.unwrap()).sum::<Val>(),
            15,
            "{audit:?}"
        );
        assert_eq!(
            audit[0].1, audit[1].1,
            "a and b are always written together: {audit:?}"
        );
        let attempts = [one.join().unwrap(), two.join().unwrap()];
        check_history(&initial, &attempts, &[], &[audit], &store.dump());
    });
}
