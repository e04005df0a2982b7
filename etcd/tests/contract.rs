//! Points 1–7 of the contract (and the handle/store checks of point 10), written once and run
//! against both backends: the in-process `stm_store::Store` and the etcd store (blocking
//! API). A scenario is a macro body, so the same text compiles against each backend's types.

mod common;

use common::{err, k, Rows};
use stm_store::Error::BusyRetry;

macro_rules! contract_scenarios {
    ($new:expr) => {
        use super::common::{err, k, Rows};
        use stm_store::Error::ConcurrentUpdate;

        /// Point 1: a key never seen has version 0 and no value; usevar and using create
        /// the keys they name, and dump lists them (version 0, no value).
        #[test]
        fn p1_new_keys_are_version_0_no_value_and_created() {
            let store = $new;
            let v = store.usevar(k("b")).unwrap();
            assert_eq!((v.version(), v.value()), (0, None));
            let c = store.using([k("c"), k("a")]).unwrap();
            assert_eq!(c["a"].version(), 0);
            assert_eq!(c["c"].value(), None);
            assert_eq!(
                store.dump().rows(),
                vec![(k("a"), 0, None), (k("b"), 0, None), (k("c"), 0, None)]
            );
            // Reading again creates nothing new and changes no version.
            let again = store.using([k("a"), k("b")]).unwrap();
            assert_eq!(again["b"].version(), 0);
            assert_eq!(store.dump().rows().len(), 3);
        }

        /// Point 2: using merges duplicates, keeps key order, and an empty list gives an
        /// empty collection whose commit succeeds.
        #[test]
        fn p2_using_merges_duplicates_and_empty_commits() {
            let store = $new;
            let mut c = store.using([k("b"), k("a"), k("b"), k("a")]).unwrap();
            assert_eq!(c.len(), 2);
            assert_eq!(c.keys().cloned().collect::<Vec<_>>(), [k("a"), k("b")]);
            c["a"].set(1);
            c.commit().unwrap();
            assert_eq!(c["a"].version(), 1);
            let mut empty = store.using(Vec::<String>::new()).unwrap();
            assert!(empty.is_empty());
            assert_eq!(err(empty.commit()), None);
            assert!(c.get("zz").is_none());
        }

        /// Points 2 and 3: while a writer commits a and b together (always equal), every
        /// using and every dump sees them equal: consistent snapshots, atomic commits.
        #[test]
        fn p2_p3_snapshots_never_see_half_a_commit() {
            let store = $new;
            let mut init = store.using([k("a"), k("b")]).unwrap();
            init["a"].set(0);
            init["b"].set(0);
            init.commit().unwrap();
            const ROUNDS: i64 = 40;
            std::thread::scope(|s| {
                s.spawn(|| {
                    let mut done = 0;
                    while done < ROUNDS {
                        let mut c = store.using([k("a"), k("b")]).unwrap();
                        let next = c["a"].value().unwrap() + 1;
                        c["a"].set(next);
                        c["b"].set(next);
                        match err(c.commit()) {
                            None => done += 1,
                            Some(e) => assert_eq!(e, ConcurrentUpdate),
                        }
                    }
                });
                let mut seen = 0;
                while seen < ROUNDS {
                    let c = store.using([k("b"), k("a")]).unwrap();
                    assert_eq!(c["a"].value(), c["b"].value(), "torn using");
                    assert_eq!(c["a"].version(), c["b"].version());
                    let rows = store.dump().rows();
                    assert_eq!(rows[0].2, rows[1].2, "torn dump: {rows:?}");
                    seen = *c["a"].value().unwrap();
                }
            });
        }

        /// Point 3: a commit that fails writes none of its keys.
        #[test]
        fn p3_a_failed_commit_writes_nothing() {
            let store = $new;
            let mut c = store.using([k("a"), k("b")]).unwrap();
            let mut other = store.usevar(k("b")).unwrap();
            other.set(7);
            other.commit().unwrap();
            c["a"].set(1);
            c["b"].set(1);
            assert_eq!(err(c.commit()), Some(ConcurrentUpdate));
            assert_eq!(
                store.dump().rows(),
                vec![(k("a"), 0, None), (k("b"), 1, Some(7))]
            );
        }

        /// Point 4: only set/cleared handles are written (version + 1); read-only ones are
        /// validated and keep their versions; value() shows the pending value.
        #[test]
        fn p4_only_written_handles_change() {
            let store = $new;
            let mut c = store.using([k("r"), k("w"), k("x")]).unwrap();
            c["w"].set(5);
            assert_eq!(c["w"].value(), Some(&5));
            c["x"].set(9);
            c["x"].clear();
            assert_eq!(c["x"].value(), None);
            c.commit().unwrap();
            assert_eq!(
                store.dump().rows(),
                vec![(k("r"), 0, None), (k("w"), 1, Some(5)), (k("x"), 1, None)]
            );
            assert_eq!(
                (c["r"].version(), c["w"].version(), c["x"].version()),
                (0, 1, 1)
            );
            // clear is a write, not an undo: version 2, no value.
            let mut w = store.usevar(k("w")).unwrap();
            w.clear();
            w.commit().unwrap();
            assert_eq!(store.dump().rows()[1], (k("w"), 2, None));
        }

        /// Point 4: a commit with nothing set only validates: it fails if a key it read
        /// changed, and otherwise writes nothing.
        #[test]
        fn p4_nothing_set_only_validates() {
            let store = $new;
            let mut c = store.using([k("a")]).unwrap();
            c.commit().unwrap();
            assert_eq!(store.dump().rows(), vec![(k("a"), 0, None)]);
            let mut v = store.usevar(k("a")).unwrap();
            v.set(1);
            v.commit().unwrap();
            assert_eq!(err(c.commit()), Some(ConcurrentUpdate));
            let mut single = store.usevar(k("a")).unwrap();
            single.commit().unwrap();
            assert_eq!(store.dump().rows(), vec![(k("a"), 1, Some(1))]);
        }

        /// Point 4: no write skew: two transactions read {x, y} and each writes a different
        /// one; the second fails because a key it only read changed.
        #[test]
        fn p4_no_write_skew() {
            let store = $new;
            let mut one = store.using([k("x"), k("y")]).unwrap();
            let mut two = store.using([k("x"), k("y")]).unwrap();
            one["x"].set(1);
            two["y"].set(1);
            one.commit().unwrap();
            assert_eq!(err(two.commit()), Some(ConcurrentUpdate));
            assert_eq!(
                store.dump().rows(),
                vec![(k("x"), 1, Some(1)), (k("y"), 0, None)]
            );
        }

        /// Point 5: after ConcurrentUpdate the handles are unchanged (versions, pending
        /// values), so committing again fails again; re-reading and redoing succeeds.
        #[test]
        fn p5_concurrent_update_leaves_handles_unchanged() {
            let store = $new;
            let mut c = store.using([k("a"), k("b")]).unwrap();
            c["a"].set(10);
            let mut rival = store.usevar(k("b")).unwrap();
            rival.set(20);
            store.set(&mut rival).unwrap();
            assert_eq!(err(store.set_values(&mut c)), Some(ConcurrentUpdate));
            assert_eq!((c["a"].version(), c["a"].value()), (0, Some(&10)));
            assert_eq!((c["b"].version(), c["b"].value()), (0, None));
            assert_eq!(err(c.commit()), Some(ConcurrentUpdate));
            let mut v = store.usevar(k("a")).unwrap();
            v.set(1);
            let mut stale = store.usevar(k("a")).unwrap();
            v.commit().unwrap();
            stale.set(2);
            assert_eq!(err(stale.commit()), Some(ConcurrentUpdate));
            assert_eq!((stale.version(), stale.value()), (0, Some(&2)));
            let mut fresh = store.using([k("a"), k("b")]).unwrap();
            fresh["a"].set(10);
            fresh.commit().unwrap();
            assert_eq!(
                store.dump().rows(),
                vec![(k("a"), 2, Some(10)), (k("b"), 1, Some(20))]
            );
        }

        /// Point 6: BusyRetry is never the answer just because others are committing:
        /// four threads incrementing one key see only Ok and ConcurrentUpdate, and no
        /// increment is lost.
        #[test]
        fn p6_contention_gives_concurrent_update_not_busy_retry() {
            let store = $new;
            const EACH: i64 = 15;
            std::thread::scope(|s| {
                for _ in 0..4 {
                    s.spawn(|| {
                        let mut done = 0;
                        while done < EACH {
                            let mut v = store.usevar(k("n")).unwrap();
                            v.set(v.value().copied().unwrap_or(0) + 1);
                            match err(v.commit()) {
                                None => done += 1,
                                Some(e) => assert_eq!(e, ConcurrentUpdate),
                            }
                        }
                    });
                }
            });
            assert_eq!(
                store.dump().rows(),
                vec![(k("n"), 4 * EACH as u64, Some(4 * EACH))]
            );
        }

        /// Point 7: after a successful commit a handle holds its new version and value and
        /// is clean: it can be set and committed again (Axon.STM's greeting).
        #[test]
        fn p7_committed_handles_are_clean() {
            let store = $new;
            let mut greeting = store.usevar(k("greeting")).unwrap();
            greeting.set(1);
            greeting.commit().unwrap();
            assert_eq!((greeting.version(), greeting.value()), (1, Some(&1)));
            greeting.set(2);
            greeting.commit().unwrap();
            assert_eq!(greeting.version(), 2);
            greeting.commit().unwrap(); // nothing pending: validates
            assert_eq!(greeting.version(), 2);
            let mut c = store.using([k("greeting"), k("other")]).unwrap();
            c["other"].set(3);
            c.commit().unwrap();
            c["other"].set(4);
            c.commit().unwrap();
            assert_eq!(
                store.dump().rows(),
                vec![(k("greeting"), 2, Some(2)), (k("other"), 2, Some(4))]
            );
        }

        /// Point 10: a handle commits only to the store it came from.
        #[test]
        #[should_panic(expected = "belongs to another")]
        fn p10_set_with_a_handle_of_another_store_panics() {
            let one = $new;
            let two = $new;
            let mut v = one.usevar(k("a")).unwrap();
            v.set(1);
            let _ = two.set(&mut v);
        }
    };
}

mod in_process {
    contract_scenarios!(stm_store::Store::<String, i64>::new());
}

mod etcd {
    contract_scenarios!(super::common::etcd_store::<i64>("contract"));
}

/// The etcd backend's version mapping, seen from etcd's side: contract version = etcd
/// version - 1 (a key created by a read is etcd version 1, "no value").
#[test]
fn etcd_versions_are_etcd_versions_minus_one() {
    let store = common::etcd_store::<i64>("mapping");
    let mut v = store.usevar(k("a")).unwrap();
    assert_eq!(v.version(), 0);
    for expected in 1..=3 {
        v.set(expected as i64);
        v.commit().unwrap();
        assert_eq!(v.version(), expected);
    }
    assert_eq!(store.dump().rows(), vec![(k("a"), 3, Some(3))]);
    // Not a single BusyRetry in this file: the contract's "rare" is "never" on a healthy etcd.
    assert_ne!(err(store.usevar(k("a"))), Some(BusyRetry));
}
