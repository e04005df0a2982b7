//! Committers against committers: overlapping multi-key commits (model 1), read-only
//! validation and write skew (model 4), and the single-key fast path against a multi-key
//! commit (model 8). Every model checks that the successful commits are serializable: applied
//! one by one in some order, each finds the versions it read and together they give the final
//! `dump` (so nothing is half-applied), and that every `ConcurrentUpdate` is honest.
#![cfg(loom)]

use std::sync::Arc;

use loom::sync::atomic::{AtomicBool, Ordering};
use loom::thread;
use stm_store::Error;
use stm_store_loom_tests::*;

/// Model 1a: two transfers on the same two keys, one reading them as `[a, b]`, the other as
/// `[b, a]`; `b` is created first, so claim (slot-id) order is the opposite of key order.
///
/// Catches: decide_before_claims, overwrite_undecided_claim, no_descriptor;
/// skip_read_validation (snapshot).
#[test]
fn opposite_order_transfers() {
    check("opposite_order_transfers", 4, || {
        let store = seeded(&[("b", 5), ("a", 10)]);
        let initial = store.dump();
        let transfer = |from: Key, to: Key, amount: Val, keys: [Key; 2]| {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                let mut c = store.using(keys).unwrap();
                let (f, t) = (*c[from].value().unwrap(), *c[to].value().unwrap());
                commit_collection(&mut c, &[(from, Some(f - amount)), (to, Some(t + amount))])
            })
        };
        let one = transfer("a", "b", 1, ["a", "b"]);
        let two = transfer("b", "a", 2, ["b", "a"]);
        let attempts = [one.join().unwrap(), two.join().unwrap()];
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
/// read-only for the other), so a lost update shows as a missing increment.
///
/// Catches: decide_before_claims, overwrite_undecided_claim, no_descriptor;
/// skip_read_validation (snapshot).
#[test]
fn overlapping_increments() {
    check("overlapping_increments", 3, || {
        let store = seeded(&[("b", 0), ("a", 0), ("c", 7)]);
        let initial = store.dump();
        let one = {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                let mut c = store.using(["a", "b"]).unwrap();
                let (a, b) = (*c["a"].value().unwrap(), *c["b"].value().unwrap());
                commit_collection(&mut c, &[("a", Some(a + 1)), ("b", Some(b + 1))])
            })
        };
        let two = {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                let mut c = store.using(["c", "b", "a"]).unwrap();
                let (a, b) = (*c["a"].value().unwrap(), *c["b"].value().unwrap());
                commit_collection(
                    &mut c,
                    &[("a", Some(a + 10)), ("b", Some(b + 10)), ("c", None)],
                )
            })
        };
        let attempts = [one.join().unwrap(), two.join().unwrap()];
        check_serial(&initial, &attempts, &store.dump());
    });
}

/// Model 4a, write skew: both threads read `a` and `b` and each writes one of them (an
/// "at least one stays on call" rule). Both may not commit on the same stale reads: the key
/// a thread only read is validated.
///
/// Catches: skip_read_validation, decide_before_claims, overwrite_undecided_claim,
/// no_descriptor.
#[test]
fn write_skew() {
    check("write_skew", 4, || {
        let store = seeded(&[("a", 1), ("b", 1)]);
        let initial = store.dump();
        let go_off = |me: Key| {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                let mut c = store.using(["a", "b"]).unwrap();
                let on_call = *c["a"].value().unwrap() + *c["b"].value().unwrap();
                let writes: &[(Key, Option<Val>)] =
                    if on_call == 2 { &[(me, Some(0))] } else { &[] };
                commit_collection(&mut c, writes)
            })
        };
        let one = go_off("a");
        let two = go_off("b");
        let attempts = [one.join().unwrap(), two.join().unwrap()];
        let dump = store.dump();
        check_serial(&initial, &attempts, &dump);
        assert!(dump.iter().any(|r| r.2 == Some(1)), "write skew: {dump:?}");
    });
}

/// Model 4b, read-only validation against a writer: a commit that only read `a` and `b` (no
/// descriptor: one validating pass), and one that writes `a` and only reads `b`, each started
/// after the writer of `b` was seen to finish, must fail if they read the old `b`.
///
/// Catches: skip_read_validation (both paths, by the assertion above), decide_before_claims,
/// no_descriptor.
#[test]
fn read_only_validation() {
    for write_a in [false, true] {
        let name = if write_a {
            "read_only_validation (writes a)"
        } else {
            "read_only_validation (reads only)"
        };
        check(name, 5, move || {
            let store = seeded(&[("a", 1), ("b", 1)]);
            let initial = store.dump();
            let done = Arc::new(AtomicBool::new(false));
            let writer = {
                let (store, done) = (Arc::clone(&store), Arc::clone(&done));
                thread::spawn(move || {
                    let mut b = store.usevar("b").unwrap();
                    b.set(2);
                    let result = b.commit();
                    done.store(true, Ordering::SeqCst);
                    Attempt {
                        reads: vec![("b", 1)],
                        writes: vec![("b", Some(2))],
                        result,
                    }
                })
            };
            let mut c = store.using(["a", "b"]).unwrap();
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
            check_serial(&initial, &attempts, &store.dump());
        });
    }
}

/// Model 8: the single-key fast path (one `Value` written, no descriptor) racing a two-key
/// commit on the same key, and a third key read by the two-key commit.
///
/// Catches: no_status_check (the only model that does: the fast path writes over the
/// undecided claim, then the two-key commit decides), decide_before_claims, no_descriptor;
/// skip_read_validation (snapshot). Not overwrite_undecided_claim: the fast path does not claim.
#[test]
fn fast_path_against_multi_key() {
    check("fast_path_against_multi_key", 5, || {
        let store = seeded(&[("b", 0), ("a", 0)]);
        let initial = store.dump();
        let single = {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                let mut a = store.usevar("a").unwrap();
                let read = a.version();
                a.set(100);
                let result = a.commit();
                assert_ne!(result, Err(Error::BusyRetry));
                let expected = if result.is_ok() { read + 1 } else { read };
                assert_eq!(a.version(), expected);
                Attempt {
                    reads: vec![("a", read)],
                    writes: vec![("a", Some(100))],
                    result,
                }
            })
        };
        let multi = {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                let mut c = store.using(["a", "b"]).unwrap();
                commit_collection(&mut c, &[("a", Some(1)), ("b", Some(1))])
            })
        };
        let attempts = [single.join().unwrap(), multi.join().unwrap()];
        check_serial(&initial, &attempts, &store.dump());
    });
}

/// Model 1c: the two opposite transfers of model 1a with an auditor: a `dump` in the main
/// thread meanwhile sees the total conserved and each key at a version some serial order
/// produces.
///
/// Catches: no_descriptor, decide_before_claims, overwrite_undecided_claim, single_collect;
/// skip_read_validation (snapshot).
#[test]
fn transfers_with_auditor() {
    check("transfers_with_auditor", 2, || {
        let store = seeded(&[("b", 5), ("a", 10)]);
        let initial = store.dump();
        let transfer = |from: Key, to: Key, amount: Val| {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                let mut c = store.using([from, to]).unwrap();
                let (f, t) = (*c[from].value().unwrap(), *c[to].value().unwrap());
                commit_collection(&mut c, &[(from, Some(f - amount)), (to, Some(t + amount))])
            })
        };
        let one = transfer("a", "b", 1);
        let two = transfer("b", "a", 2);
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
        check_serial(&initial, &attempts, &store.dump());
    });
}
