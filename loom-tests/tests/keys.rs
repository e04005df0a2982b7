//! Model 6, key creation: threads that `usevar`/`using` the same new keys race to create
//! their slots (the index's find-or-insert) and then commit to them.
#![cfg(loom)]

use std::sync::Arc;

use loom::thread;
use stm_store_loom_tests::*;

/// Two threads create the same new key and commit to it: at most one commit lands on the
/// version each read (0), the other gets `ConcurrentUpdate` unless it read after the first
/// landed; the key exists once in `dump`.
///
/// Catches: none of the declared mutations (both commits take the fast path and never meet a
/// claim, which none of them changes); it guards the index's find-or-insert: both handles
/// must share one slot, or both commits would land on version 1.
#[test]
fn racing_key_creation() {
    check("racing_key_creation", EXHAUSTIVE, || {
        let store = Arc::new(S::new());
        let create = |value: Val| {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                let mut k = store.usevar("k").unwrap();
                let read = k.version();
                let read_value = k.value().copied();
                assert!(
                    read == 0 && read_value.is_none() || read == 1,
                    "{read} {read_value:?}"
                );
                k.set(value);
                Attempt {
                    reads: vec![("k", read)],
                    writes: vec![("k", Some(value))],
                    result: k.commit(),
                }
            })
        };
        let one = create(1);
        let two = create(2);
        let attempts = [one.join().unwrap(), two.join().unwrap()];
        assert!(attempts.iter().any(Attempt::ok), "{attempts:?}");
        let dump = store.dump();
        assert_eq!(dump.len(), 1, "{dump:?}");
        check_serial(&[], &attempts, &dump);
    });
}

/// Two threads create the same two new keys in opposite orders (so which slot gets the lower
/// id, the claim order, depends on the race) and commit both; a `dump` runs meanwhile. The
/// dump lists each key at most once, and whatever was written, both keys together.
///
/// Catches: decide_before_claims, overwrite_undecided_claim, no_descriptor, single_collect;
/// skip_read_validation (snapshot).
#[test]
fn racing_creation_of_two_keys() {
    check("racing_creation_of_two_keys", 2, || {
        let store = Arc::new(S::new());
        let create = |keys: [Key; 2], value: Val| {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                let mut c = store.using(keys).unwrap();
                commit_collection(&mut c, &[("j", Some(value)), ("k", Some(value))])
            })
        };
        let one = create(["j", "k"], 1);
        let two = create(["k", "j"], 2);
        let dump = store.dump();
        let keys: Vec<Key> = dump.iter().map(|row| row.0).collect();
        assert!(
            [&[][..], &["j"], &["k"], &["j", "k"]].contains(&&keys[..]),
            "{dump:?}"
        );
        if dump.iter().any(|row| row.1 > 0) {
            assert!(
                dump.len() == 2 && dump[0].1 == dump[1].1 && dump[0].2 == dump[1].2,
                "torn dump {dump:?}"
            );
        }
        let attempts = [one.join().unwrap(), two.join().unwrap()];
        assert!(attempts.iter().any(Attempt::ok), "{attempts:?}");
        check_serial(&[], &attempts, &store.dump());
    });
}
