//! The contract's scenarios, written once and run against every backend: the in-process
//! `stm_store::Store` (from `tests/shared_scenarios.rs`) and the etcd store's blocking API
//! (from `etcd/tests/contract.rs`), so that the two cannot drift apart.
//!
//! A scenario is the body of a macro, so the same text compiles against each backend's types.
//! The including file instantiates [`scenarios!`] with an expression that makes a fresh empty
//! store and that store's type; the store's `atomically` must return the closure's value (the
//! etcd instantiation wraps its store to unwrap the `Result`), everything else is the
//! backend's own API. What a scenario may rely on is what both backends promise: exact
//! versions, `dump`, handles, transactions. Which keys a transaction's reads create is left out
//! (the in-process store creates a key that a transaction reads, etcd does not).
//!
//! Orderings that another thread would make are forced with a second handle on the same
//! thread, or with channels (a waiter reports after its read, and only then does the test
//! commit), never with sleeps; time appears only as liveness bounds and as the timeouts under
//! test.
#![allow(dead_code)]

use std::sync::mpsc;
use std::time::Duration;

/// The contract's error out of either backend's error.
pub trait AsContract {
    fn as_contract(&self) -> stm_store::Error;
}

impl AsContract for stm_store::Error {
    fn as_contract(&self) -> stm_store::Error {
        *self
    }
}

/// `Err(e)` as the contract's error, `Ok` as `None`.
pub fn err<T, E: AsContract>(r: Result<T, E>) -> Option<stm_store::Error> {
    r.err().map(|e| e.as_contract())
}

/// Either backend's `dump()` as rows.
pub trait Rows<K, V> {
    fn rows(self) -> Vec<(K, u64, Option<V>)>;
}

impl<K, V> Rows<K, V> for Vec<(K, u64, Option<V>)> {
    fn rows(self) -> Vec<(K, u64, Option<V>)> {
        self
    }
}

pub fn k(s: &str) -> String {
    s.to_string()
}

/// A liveness bound: a call that must finish at all (never a performance threshold).
pub const LIVENESS: Duration = Duration::from_secs(60);

/// Receives one message, failing the test (instead of hanging) if none comes within the
/// liveness bound.
#[track_caller]
pub fn recv<T>(rx: &mpsc::Receiver<T>, what: &str) -> T {
    match rx.recv_timeout(LIVENESS) {
        Ok(value) => value,
        Err(e) => panic!("{what}: nothing received within {LIVENESS:?} ({e})"),
    }
}

/// An error type of the caller's own, as `try_atomically` users write them.
#[derive(Debug)]
pub enum AppError<E> {
    Refused(i64),
    Tx(E),
}

impl<E> From<E> for AppError<E> {
    fn from(e: E) -> Self {
        AppError::Tx(e)
    }
}

/// Every scenario: `$new` makes a fresh, empty store of type `$store` (keys `String`, values
/// `i64`), whose `atomically` returns the closure's value.
macro_rules! scenarios {
    ($new:expr, $store:ty) => {
        #[allow(unused_imports)]
        use super::scenarios::{err, k, recv, AppError, Rows, LIVENESS};
        use std::sync::mpsc;
        use std::time::Duration;
        use stm_store::Error::ConcurrentUpdate;

        type S = $store;

        /// The version and value of `key`, from `dump` (`None`: the key does not exist).
        fn get(store: &S, key: &str) -> Option<(u64, Option<i64>)> {
            store
                .dump()
                .rows()
                .into_iter()
                .find(|(k, _, _)| k == key)
                .map(|(_, version, value)| (version, value))
        }

        /// Sets each key of `pairs` to its value, in one commit.
        fn put(store: &S, pairs: &[(&str, i64)]) {
            let mut c = store.using(pairs.iter().map(|(key, _)| k(key))).unwrap();
            for (key, value) in pairs {
                c[*key].set(*value);
            }
            c.commit().unwrap();
        }

        /// Removes `key` through a fresh handle.
        fn remove(store: &S, key: &str) {
            let mut handle = store.usevar(k(key)).unwrap();
            handle.remove();
            handle.commit().unwrap();
        }

        // -------------------------------------------------------------------------------------
        // Points 1-10: handles
        // -------------------------------------------------------------------------------------

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
            put(&store, &[("a", 0), ("b", 0)]);
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

        // -------------------------------------------------------------------------------------
        // Points 11-17: transactions
        // -------------------------------------------------------------------------------------

        /// Point 11: a transaction reads and writes as it goes (reads see its own writes), and
        /// commits every write at once, each at its read version + 1; a transaction that
        /// writes nothing commits too. When a key it read changes before its commit (a handle
        /// commits it from inside the first run), the closure runs again, and `attempt`
        /// numbers the runs.
        #[test]
        fn p11_atomically_commits_at_one_instant_and_reruns_on_a_conflict() {
            let store = $new;
            put(&store, &[("alice", 100), ("bob", 0)]);
            let (alice, bob) = (k("alice"), k("bob"));
            let mut runs = Vec::new();
            let moved = store.atomically(|tx| {
                let a = tx.get(&alice)?.unwrap_or(0);
                runs.push((tx.attempt(), a));
                if tx.attempt() == 1 {
                    // Someone else takes 10 from alice between this run's read and its commit.
                    let mut other = store.usevar(k("alice")).unwrap();
                    other.set(a - 10);
                    other.commit().unwrap();
                }
                tx.set(&alice, a - 30)?;
                assert_eq!(tx.get(&alice)?, Some(a - 30), "a read sees the write");
                let b = tx.get(&bob)?.unwrap_or(0);
                tx.set(&bob, b + 30)?;
                Ok(a - 30)
            });
            assert_eq!(moved, 60);
            assert_eq!(runs, [(1, 100), (2, 90)], "the first run's commit failed");
            assert_eq!(
                store.dump().rows(),
                vec![(k("alice"), 3, Some(60)), (k("bob"), 2, Some(30))]
            );
            let total =
                store.atomically(|tx| Ok(tx.get(&alice)?.unwrap() + tx.get(&bob)?.unwrap()));
            assert_eq!(total, 90);
            let versions = store.atomically(|tx| Ok((tx.version(&alice)?, tx.version(&bob)?)));
            assert_eq!(versions, (3, 2), "reading wrote nothing");
        }

        /// Point 11: no write skew through transactions: the doctors. Each goes off call if the
        /// other is on call; the second commits after the first changed a key it only read,
        /// so it runs again, sees the first off call, and stays.
        #[test]
        fn p11_no_write_skew_through_transactions() {
            let store = $new;
            put(&store, &[("alice", 1), ("bob", 1)]);
            let (alice, bob) = (k("alice"), k("bob"));
            let mut runs = 0;
            let went = store.atomically(|tx| {
                runs += 1;
                let on_call = tx.get(&alice)?.unwrap() + tx.get(&bob)?.unwrap();
                if tx.attempt() == 1 {
                    // Bob goes off call between this run's reads and its commit.
                    let mut c = store.using([k("alice"), k("bob")]).unwrap();
                    c["bob"].set(0);
                    c.commit().unwrap();
                }
                if on_call < 2 {
                    return Ok(false);
                }
                tx.set(&alice, 0)?;
                Ok(true)
            });
            assert!(!went, "alice saw bob off call and stayed");
            assert_eq!(runs, 2);
            assert_eq!(
                store.dump().rows(),
                vec![(k("alice"), 1, Some(1)), (k("bob"), 2, Some(0))]
            );
        }

        /// Point 12: within a run, every read is consistent with the earlier ones. A handle
        /// moves 5 from a to b (a + b stays 0) between the run's read of a and its read of b:
        /// the run never sees a pair that breaks the invariant (it stops at the read, or reads
        /// b as it was with a), and its commit, which depends on both, lands on a run that saw
        /// the state after the move.
        #[test]
        fn p12_opacity_a_run_never_sees_a_broken_invariant() {
            let store = $new;
            put(&store, &[("a", 0), ("b", 0)]);
            let (a, b, sum) = (k("a"), k("b"), k("sum"));
            let mut seen = Vec::new();
            let committed = store.atomically(|tx| {
                let x = tx.get(&a)?.unwrap();
                if tx.attempt() == 1 {
                    let mut c = store.using([k("a"), k("b")]).unwrap();
                    c["a"].set(x - 5);
                    c["b"].set(5 - x);
                    c.commit().unwrap();
                }
                let y = tx.get(&b)?.unwrap();
                seen.push((tx.attempt(), x, y));
                tx.set(&sum, x + y)?;
                Ok((x, y))
            });
            assert!(seen.iter().all(|(_, x, y)| x + y == 0), "{seen:?}");
            assert_eq!(committed, (-5, 5));
            assert_eq!(get(&store, "sum"), Some((1, Some(0))));
        }

        /// Point 13: an error of the closure's own ends the call with that error, nothing
        /// written (its writes before the error included); a panic goes on to the caller,
        /// nothing written.
        #[test]
        fn p13_a_user_error_or_a_panic_writes_nothing() {
            let store = $new;
            put(&store, &[("alice", 20), ("bob", 0)]);
            let (alice, bob) = (k("alice"), k("bob"));
            let before = store.dump().rows();
            let refused = store.try_atomically(|tx| {
                tx.set(&bob, 30).map_err(AppError::Tx)?;
                let balance = tx.get(&alice).map_err(AppError::Tx)?.unwrap_or(0);
                if balance < 30 {
                    return Err(AppError::Refused(balance));
                }
                tx.set(&alice, balance - 30).map_err(AppError::Tx)
            });
            assert!(matches!(refused, Err(AppError::Refused(20))), "{refused:?}");
            assert_eq!(store.dump().rows(), before);
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                store.atomically(|tx| {
                    tx.set(&alice, 0)?;
                    tx.set(&bob, 20)?;
                    panic!("the closure panics after its writes");
                    #[allow(unreachable_code)]
                    Ok(())
                })
            }));
            assert!(panicked.is_err());
            assert_eq!(store.dump().rows(), before);
            // The keys are free: a transaction commits on them at once.
            store.atomically(|tx| tx.set(&alice, 1));
            assert_eq!(get(&store, "alice"), Some((2, Some(1))));
        }

        /// Point 14: `retry` waits until a key the run read is committed by someone else, and
        /// not before: a commit to another key does not rerun it. The waiter reports after its
        /// read, and only then are the commits made, so they come after the read; whether they
        /// come before or after it starts waiting, it must wake (no lost wake-up).
        #[test]
        fn p14_retry_wakes_on_a_change_to_a_key_read_and_not_before() {
            let store = $new;
            put(&store, &[("job", 0), ("other", 0)]);
            let job = k("job");
            let (attempt_tx, attempts) = mpsc::channel();
            std::thread::scope(|s| {
                let waiter = s.spawn(|| {
                    store.transaction().timeout(LIVENESS).run(|tx| {
                        let found = tx.get(&job)?;
                        attempt_tx.send((tx.attempt(), found)).unwrap();
                        match found {
                            Some(id) if id > 0 => {
                                tx.clear(&job)?;
                                Ok(id)
                            }
                            _ => tx.retry(),
                        }
                    })
                });
                assert_eq!(recv(&attempts, "the first run"), (1, Some(0)));
                put(&store, &[("other", 1)]);
                put(&store, &[("job", 42)]);
                assert_eq!(waiter.join().unwrap().expect("woken by the commit"), 42);
            });
            assert_eq!(
                attempts.try_iter().collect::<Vec<_>>(),
                [(2, Some(42))],
                "exactly one more run: the commit to another key did not wake it"
            );
            assert_eq!(get(&store, "job"), Some((3, None)));
        }

        /// Point 14: no lost wake-up: a change committed after the run's read but before it
        /// starts waiting (here, by the run itself, through a handle, just before it retries)
        /// wakes it at once.
        #[test]
        fn p14_retry_wakes_on_a_change_made_before_it_waits() {
            let store = $new;
            put(&store, &[("job", 0)]);
            let job = k("job");
            let mut runs = Vec::new();
            let found = store.transaction().timeout(LIVENESS).run(|tx| {
                let found = tx.get(&job)?.unwrap();
                runs.push((tx.attempt(), found));
                if found > 0 {
                    return Ok(found);
                }
                put(&store, &[("job", 7)]);
                tx.retry()
            });
            assert_eq!(found.expect("woken by the commit before the wait"), 7);
            assert_eq!(runs, [(1, 0), (2, 7)]);
        }

        /// Point 14: `or_else` undoes the first branch's writes when it retries and runs the
        /// second; when both retry, the transaction waits for a change to a key either read.
        #[test]
        fn p14_or_else_runs_the_second_branch_and_waits_for_either() {
            let store = $new;
            put(&store, &[("main", 0), ("spare", 2), ("log", 0)]);
            let (main, spare, log) = (k("main"), k("spare"), k("log"));
            let took = store.atomically(|tx| {
                tx.or_else(
                    |tx| {
                        tx.set(&log, 1)?; // undone: this branch retries
                        match tx.get(&main)?.unwrap() {
                            n if n > 0 => tx.set(&main, n - 1).map(|()| "main"),
                            _ => tx.retry(),
                        }
                    },
                    |tx| match tx.get(&spare)?.unwrap() {
                        n if n > 0 => tx.set(&spare, n - 1).map(|()| "spare"),
                        _ => tx.retry(),
                    },
                )
            });
            assert_eq!(took, "spare");
            assert_eq!(
                store.dump().rows(),
                vec![
                    (k("log"), 1, Some(0)),
                    (k("main"), 1, Some(0)),
                    (k("spare"), 2, Some(1))
                ]
            );
            // Both empty: the transaction waits until either gets something. It reports after
            // both branches read (so the commit comes after the reads) and before it waits.
            put(&store, &[("spare", 0)]);
            let (attempt_tx, attempts) = mpsc::channel();
            std::thread::scope(|s| {
                let waiter = s.spawn(|| {
                    store.transaction().timeout(LIVENESS).run(|tx| {
                        tx.or_else(
                            |tx| match tx.get(&main)?.unwrap() {
                                n if n > 0 => tx.set(&main, n - 1).map(|()| "main"),
                                _ => tx.retry(),
                            },
                            |tx| {
                                let n = tx.get(&spare)?.unwrap();
                                attempt_tx.send((tx.attempt(), n)).unwrap();
                                if n > 0 {
                                    tx.set(&spare, n - 1).map(|()| "spare")
                                } else {
                                    tx.retry()
                                }
                            },
                        )
                    })
                });
                assert_eq!(recv(&attempts, "the first run"), (1, 0));
                put(&store, &[("spare", 1)]);
                assert_eq!(
                    waiter.join().unwrap().expect("woken by the commit"),
                    "spare"
                );
            });
            assert_eq!(
                attempts.try_iter().collect::<Vec<_>>(),
                [(2, 1)],
                "exactly one more run, after the change"
            );
            assert_eq!(get(&store, "spare"), Some((5, Some(0))));
        }

        /// Point 15: a timeout ends a wait in `retry` with a timeout error, nothing written.
        #[test]
        fn p15_a_timeout_ends_the_wait_and_writes_nothing() {
            let store = $new;
            put(&store, &[("job", 0), ("log", 0)]);
            let (job, log) = (k("job"), k("log"));
            let before = store.dump().rows();
            let waited = store
                .transaction()
                .timeout(Duration::from_millis(50))
                .run(|tx| {
                    tx.set(&log, 1)?;
                    match tx.get(&job)? {
                        Some(n) if n > 0 => Ok(n),
                        _ => tx.retry(),
                    }
                });
            assert!(waited.unwrap_err().is_timeout());
            assert_eq!(store.dump().rows(), before);
        }

        /// Point 17: transactions and handles transfer between the same accounts at the same
        /// time; every audit (a transaction and a `using`) sees the total, and at the end no
        /// transfer is lost.
        #[test]
        fn p17_handles_and_transactions_together_conserve_the_total() {
            let store = $new;
            const ACCOUNTS: usize = 4;
            const EACH: usize = 12;
            let names: Vec<String> = (0..ACCOUNTS).map(|i| format!("acct{i}")).collect();
            let opening: Vec<(&str, i64)> = names.iter().map(|n| (n.as_str(), 100)).collect();
            put(&store, &opening);
            let total = 100 * ACCOUNTS as i64;
            std::thread::scope(|s| {
                for t in 0..2 {
                    let (store, names) = (&store, &names);
                    s.spawn(move || {
                        for i in 0..EACH {
                            let (from, to) =
                                (&names[(i + t) % ACCOUNTS], &names[(i + t + 1) % ACCOUNTS]);
                            if t == 0 {
                                store.atomically(|tx| {
                                    let a = tx.get(from)?.unwrap();
                                    let b = tx.get(to)?.unwrap();
                                    tx.set(from, a - 1)?;
                                    tx.set(to, b + 1)
                                });
                            } else {
                                loop {
                                    let mut c = store.using([from.clone(), to.clone()]).unwrap();
                                    let (a, b) =
                                        (*c[from].value().unwrap(), *c[to].value().unwrap());
                                    c[from].set(a - 1);
                                    c[to].set(b + 1);
                                    match err(c.commit()) {
                                        None => break,
                                        Some(e) => assert_eq!(e, ConcurrentUpdate),
                                    }
                                }
                            }
                        }
                    });
                }
                for _ in 0..EACH {
                    let seen = store.atomically(|tx| {
                        let mut sum = 0;
                        for name in &names {
                            sum += tx.get(name)?.unwrap();
                        }
                        Ok(sum)
                    });
                    assert_eq!(seen, total, "a transaction saw a torn total");
                    let c = store.using(names.iter().cloned()).unwrap();
                    assert_eq!(
                        c.iter().map(|(_, v)| *v.value().unwrap()).sum::<i64>(),
                        total
                    );
                }
            });
            let rows = store.dump().rows();
            assert_eq!(rows.iter().map(|(_, _, v)| v.unwrap()).sum::<i64>(), total);
            let writes: u64 = rows.iter().map(|(_, version, _)| version - 1).sum();
            assert_eq!(
                writes,
                2 * 2 * EACH as u64,
                "a transfer was lost or applied twice"
            );
        }

        // -------------------------------------------------------------------------------------
        // Points 22-25: removal
        // -------------------------------------------------------------------------------------

        /// Point 22: `remove` replaces a pending `set`/`clear` and is replaced by them (handles
        /// and transactions, and `or_else` undoes it); it conflicts as a write does, both ways;
        /// closing an account lands with the rest of its commit, or not at all.
        #[test]
        fn p22_removal_is_a_write() {
            let store = $new;
            put(&store, &[("a", 1), ("b", 1)]);
            let mut a = store.usevar(k("a")).unwrap();
            a.set(5);
            a.remove();
            assert_eq!(a.value(), None, "a pending removal reads as no value");
            a.commit().unwrap();
            assert_eq!(get(&store, "a"), None, "the removal replaced the set");
            let mut b = store.usevar(k("b")).unwrap();
            b.remove();
            b.set(7);
            assert_eq!(b.value(), Some(&7));
            b.commit().unwrap();
            assert_eq!(
                get(&store, "b"),
                Some((2, Some(7))),
                "the set replaced the removal"
            );
            b.remove();
            b.clear();
            b.commit().unwrap();
            assert_eq!(store.dump().rows(), vec![(k("b"), 3, None)]);

            // A transaction: the same, and it reads its own pending removal as no value.
            let store = $new;
            put(&store, &[("x", 1), ("y", 1), ("z", 1)]);
            let (x, y, z) = (k("x"), k("y"), k("z"));
            store.atomically(|tx| {
                tx.set(&x, 10)?;
                tx.remove(&x)?;
                assert_eq!(tx.get(&x)?, None, "its own removal reads as no value");
                assert!(!tx.exists(&x)?);
                tx.remove(&y)?;
                tx.set(&y, 20)?;
                tx.remove(&z)?;
                tx.clear(&z)
            });
            assert_eq!(
                store.dump().rows(),
                vec![(k("y"), 2, Some(20)), (k("z"), 2, None)],
                "x removed; the set and the clear after a removal won"
            );
            // `or_else` undoes a first branch's removal when it retries.
            store.atomically(|tx| {
                tx.or_else(
                    |tx| {
                        tx.remove(&y)?;
                        tx.retry()
                    },
                    |tx| tx.set(&z, 3),
                )
            });
            assert_eq!(
                store.dump().rows(),
                vec![(k("y"), 2, Some(20)), (k("z"), 3, Some(3))]
            );

            // A removal of a key written since it was read fails, writes nothing, and leaves the
            // handle as it was; the other way round, a write, a validation and another removal
            // of a key removed since they read it all fail, and none brings the key back.
            let store = $new;
            put(&store, &[("k", 1)]);
            let mut remover = store.usevar(k("k")).unwrap();
            put(&store, &[("k", 2)]);
            remover.remove();
            assert_eq!(err(remover.commit()), Some(ConcurrentUpdate));
            assert_eq!(
                get(&store, "k"),
                Some((2, Some(2))),
                "the failed removal removed nothing"
            );
            assert_eq!((remover.version(), remover.value()), (1, None));
            let mut writer = store.usevar(k("k")).unwrap();
            let mut reader = store.usevar(k("k")).unwrap();
            let mut second_remover = store.usevar(k("k")).unwrap();
            remove(&store, "k");
            writer.set(3);
            assert_eq!(
                err(writer.commit()),
                Some(ConcurrentUpdate),
                "a write over a removal"
            );
            assert_eq!(
                err(reader.commit()),
                Some(ConcurrentUpdate),
                "a read of a removed key"
            );
            second_remover.remove();
            assert_eq!(err(second_remover.commit()), Some(ConcurrentUpdate));
            assert!(store.dump().rows().is_empty());

            // Closing an account moves its balance and removes it, in one commit; a commit that
            // read the account before fails though it writes another key; a close whose other
            // key was written meanwhile fails as a whole.
            let store = $new;
            put(
                &store,
                &[("alice", 30), ("bob", 70), ("carol", 0), ("dave", 5)],
            );
            let mut close = store.using([k("alice"), k("bob")]).unwrap();
            let mut read_alice = store.using([k("alice"), k("carol")]).unwrap();
            let balance = *close["alice"].value().unwrap();
            let bob = *close["bob"].value().unwrap();
            close["bob"].set(bob + balance);
            close["alice"].remove();
            close.commit().unwrap();
            assert_eq!(
                store.dump().rows(),
                vec![
                    (k("bob"), 2, Some(100)),
                    (k("carol"), 1, Some(0)),
                    (k("dave"), 1, Some(5))
                ]
            );
            let alice = *read_alice["alice"].value().unwrap();
            read_alice["carol"].set(alice);
            assert_eq!(err(read_alice.commit()), Some(ConcurrentUpdate));
            let mut close = store.using([k("dave"), k("bob")]).unwrap();
            close["bob"].set(105);
            close["dave"].remove();
            put(&store, &[("bob", 99)]);
            assert_eq!(err(close.commit()), Some(ConcurrentUpdate));
            assert_eq!(
                get(&store, "dave"),
                Some((1, Some(5))),
                "not removed: all or nothing"
            );

            // A transaction's removal conflicts as its write would: the first run fails.
            let store = $new;
            put(&store, &[("t", 1), ("u", 0)]);
            let (t, u) = (k("t"), k("u"));
            let mut runs = Vec::new();
            store.atomically(|tx| {
                let seen = tx.get(&t)?;
                runs.push(seen);
                if tx.attempt() == 1 {
                    put(&store, &[("t", 2)]);
                }
                tx.set(&u, seen.unwrap_or(0))?;
                tx.remove(&t)
            });
            assert_eq!(runs, [Some(1), Some(2)], "the first run's commit failed");
            assert_eq!(store.dump().rows(), vec![(k("u"), 2, Some(2))]);
        }

        /// Point 22: a transaction waiting in `retry` for a key to go wakes when it is removed,
        /// by a handle, a collection or a transaction, and reads it again as created anew.
        #[test]
        fn p22_retry_wakes_on_a_removal() {
            for remover in 0..3 {
                let store = $new;
                put(&store, &[("job", 1)]); // version 1; its removal is version 2
                let job = k("job");
                let (attempt_tx, attempts) = mpsc::channel();
                std::thread::scope(|s| {
                    let waiter = s.spawn(|| {
                        store.transaction().timeout(LIVENESS).run(|tx| {
                            let found = tx.get(&job)?;
                            attempt_tx.send((tx.attempt(), found)).unwrap();
                            match found {
                                Some(_) => tx.retry(),
                                None => Ok(tx.version(&job)?),
                            }
                        })
                    });
                    assert_eq!(recv(&attempts, "the first run"), (1, Some(1)));
                    match remover {
                        0 => remove(&store, "job"),
                        1 => {
                            let mut c = store.using([k("job"), k("elsewhere")]).unwrap();
                            c["job"].remove();
                            c["elsewhere"].set(1);
                            c.commit().unwrap();
                        }
                        _ => store.atomically(|tx| tx.remove(&k("job"))),
                    }
                    let version = waiter.join().unwrap().expect("woken by the removal");
                    assert_eq!(version, 3, "remover {remover}: one above the removal");
                });
                assert_eq!(
                    attempts.try_iter().collect::<Vec<_>>(),
                    [(2, None)],
                    "remover {remover}"
                );
            }
        }

        /// Point 23: removed keys are absent from `dump`; reading one again (`usevar`,
        /// `using`, a transaction) finds no value, one version above the highest removed
        /// version of the store, and so does a brand-new key; over rounds of writing, removing
        /// and reading again, a key's versions only grow.
        #[test]
        fn p23_a_removed_key_is_absent_and_starts_above_its_removal() {
            let store = $new;
            put(&store, &[("a", 1), ("b", 2), ("c", 3), ("d", 4)]);
            put(&store, &[("b", 20)]); // b: version 2
            store.usevar(k("e")).unwrap(); // e: exists, never written (version 0)
            remove(&store, "b"); // removal version 3
            store.atomically(|tx| tx.remove(&k("d"))); // removal version 2
            let mut e = store.usevar(k("e")).unwrap();
            assert_eq!(e.version(), 0);
            e.remove();
            e.commit().unwrap(); // removal version 1
            assert_eq!(
                store.dump().rows(),
                vec![(k("a"), 1, Some(1)), (k("c"), 1, Some(3))]
            );
            let gone = store.atomically(|tx| Ok((tx.get(&k("b"))?, tx.exists(&k("d"))?)));
            assert_eq!(gone, (None, false));

            let b = store.usevar(k("b")).unwrap();
            assert_eq!((b.version(), b.value()), (4, None));
            let c = store.using([k("d"), k("f")]).unwrap();
            let read: Vec<_> = c
                .iter()
                .map(|(key, v)| (key.clone(), v.version(), v.value().copied()))
                .collect();
            assert_eq!(read, [(k("d"), 4, None), (k("f"), 4, None)]);
            let e = store.atomically(|tx| Ok((tx.version(&k("e"))?, tx.get(&k("e"))?)));
            assert_eq!(e, (4, None));
            let mut b = b;
            b.set(21);
            b.commit().unwrap();
            assert_eq!(get(&store, "b"), Some((5, Some(21))));

            // Versions never go back: "v" is written, removed and read again, round after round,
            // through every way of removing; "w", removed halfway, raises the floor for all.
            let store = $new;
            let mut floor = 0;
            let mut seen = Vec::new();
            for round in 0..6u64 {
                if round == 3 {
                    for n in 0..=12 {
                        put(&store, &[("w", n)]);
                    }
                    let (w, _) = get(&store, "w").unwrap();
                    remove(&store, "w");
                    floor = floor.max(w + 1);
                }
                let created = store.usevar(k("v")).unwrap();
                let start = if floor == 0 { 0 } else { floor + 1 };
                assert_eq!(
                    (created.version(), created.value()),
                    (start, None),
                    "round {round}"
                );
                seen.push(created.version());
                drop(created);
                for n in 0..=round as i64 {
                    put(&store, &[("v", n)]);
                    seen.push(get(&store, "v").unwrap().0);
                }
                let last = start + round + 1;
                assert_eq!(get(&store, "v"), Some((last, Some(round as i64))));
                match round % 3 {
                    0 => remove(&store, "v"),
                    1 => {
                        let mut c = store.using([k("v"), k("elsewhere")]).unwrap();
                        c["v"].remove();
                        c["elsewhere"].set(round as i64);
                        c.commit().unwrap();
                    }
                    _ => store.atomically(|tx| tx.remove(&k("v"))),
                }
                assert_eq!(get(&store, "v"), None);
                floor = floor.max(last + 1);
            }
            assert!(
                seen.windows(2).all(|w| w[0] < w[1]),
                "a version of \"v\" went back: {seen:?}"
            );
        }

        /// Point 23: a transaction that found a key absent and creates it, while another
        /// incarnation of the key was created, written and removed in between, does not commit
        /// below that removal: its first run fails, and its second starts above the removal.
        #[test]
        fn p23_a_key_created_by_a_transaction_starts_above_removals_made_meanwhile() {
            let store = $new;
            let n = k("n");
            let mut runs = Vec::new();
            store.atomically(|tx| {
                runs.push((tx.attempt(), tx.version(&n)?, tx.get(&n)?));
                if tx.attempt() == 1 {
                    put(&store, &[("n", 1)]);
                    put(&store, &[("n", 2)]);
                    remove(&store, "n"); // removal version 3
                }
                tx.set(&n, 10)
            });
            assert_eq!(runs, [(1, 0, None), (2, 4, None)]);
            assert_eq!(store.dump().rows(), vec![(k("n"), 5, Some(10))]);
        }

        /// Point 24: handles, collections and transactions that read "k" before its removal
        /// never validate against the "k" created again after it, even once the new "k" has
        /// their version and value.
        #[test]
        fn p24_no_aba_a_stale_read_never_validates_against_the_key_created_again() {
            let store = $new;
            put(&store, &[("k", 1), ("other", 0)]);
            let mut stale_write = store.usevar(k("k")).unwrap();
            let mut stale_read = store.usevar(k("k")).unwrap();
            let mut stale_remove = store.usevar(k("k")).unwrap();
            let mut stale_pair = store.using([k("k"), k("other")]).unwrap();
            let mut stale_pair_read = store.using([k("k"), k("other")]).unwrap();
            remove(&store, "k");
            let mut again = store.usevar(k("k")).unwrap();
            loop {
                again.set(1); // the value the stale handles read, too
                again.commit().unwrap();
                if again.version() >= stale_write.version() {
                    break;
                }
            }
            let now = get(&store, "k");
            stale_write.set(5);
            assert_eq!(
                err(stale_write.commit()),
                Some(ConcurrentUpdate),
                "a stale write"
            );
            assert_eq!(
                err(stale_read.commit()),
                Some(ConcurrentUpdate),
                "a stale validation"
            );
            stale_remove.remove();
            assert_eq!(
                err(stale_remove.commit()),
                Some(ConcurrentUpdate),
                "a stale removal"
            );
            stale_pair["other"].set(1);
            assert_eq!(
                err(stale_pair.commit()),
                Some(ConcurrentUpdate),
                "it only read k"
            );
            assert_eq!(
                err(stale_pair_read.commit()),
                Some(ConcurrentUpdate),
                "read only"
            );
            assert_eq!(get(&store, "k"), now, "no stale commit touched the new key");
            assert_eq!(get(&store, "other"), Some((1, Some(0))));

            // A transaction that read "k" before its removal and its creation again fails its
            // commit, and its second run commits from the new key.
            let key = k("k");
            let mut runs = Vec::new();
            let written = store.atomically(|tx| {
                let (version, value) = (tx.version(&key)?, tx.get(&key)?.unwrap());
                runs.push((tx.attempt(), version, value));
                if tx.attempt() == 1 {
                    remove(&store, "k");
                    put(&store, &[("k", value)]);
                }
                tx.set(&key, value + 10)?;
                Ok(value + 10)
            });
            assert_eq!(written, 11);
            assert_eq!(runs.len(), 2, "the first run's commit failed: {runs:?}");
            let (_, read_again, _) = runs[1];
            assert!(read_again > runs[0].1, "{runs:?}");
            assert_eq!(get(&store, "k"), Some((read_again + 1, Some(11))));

            // Opacity across a removal: k and other swap roles in the middle of a run (other
            // gets k's value, k is removed and created again with other's: the sum stays 11 at
            // every instant); the run never sees a sum other than 11.
            let other = k("other");
            let mut sums = Vec::new();
            store.atomically(|tx| {
                let x = tx.get(&key)?.unwrap();
                if tx.attempt() == 1 {
                    let mut c = store.using([k("k"), k("other")]).unwrap();
                    let o = *c["other"].value().unwrap();
                    c["other"].set(x);
                    c["k"].remove();
                    c.commit().unwrap();
                    put(&store, &[("k", o)]);
                }
                let y = tx.get(&other)?.unwrap();
                sums.push(x + y);
                tx.set(&k("sum"), x + y)
            });
            assert!(sums.iter().all(|&s| s == 11), "{sums:?}");
            assert_eq!(get(&store, "sum").map(|(_, v)| v), Some(Some(11)));
        }

        /// Point 25: the handle that removed holds the removed key (the removal's version, no
        /// value); committing it again fails, whatever it has pending, and brings nothing back.
        #[test]
        fn p25_the_removing_handle_holds_the_removed_key() {
            let store = $new;
            put(&store, &[("k", 1)]);
            put(&store, &[("k", 2)]);
            let mut h = store.usevar(k("k")).unwrap();
            assert_eq!(h.version(), 2);
            h.remove();
            h.commit().unwrap();
            assert_eq!((h.key().as_str(), h.version(), h.value()), ("k", 3, None));
            assert_eq!(err(h.commit()), Some(ConcurrentUpdate), "nothing pending");
            h.set(4);
            assert_eq!(err(h.commit()), Some(ConcurrentUpdate), "a write");
            h.clear();
            assert_eq!(err(h.commit()), Some(ConcurrentUpdate), "a clear");
            h.remove();
            assert_eq!(err(h.commit()), Some(ConcurrentUpdate), "a removal");
            assert_eq!(h.version(), 3);
            assert!(store.dump().rows().is_empty());
            let again = store.usevar(k("k")).unwrap();
            assert_eq!((again.version(), again.value()), (4, None));
            h.set(5);
            assert_eq!(err(h.commit()), Some(ConcurrentUpdate));
            assert_eq!(get(&store, "k"), Some((4, None)));

            let store = $new;
            put(&store, &[("gone", 7), ("kept", 1)]);
            let mut c = store.using([k("gone"), k("kept")]).unwrap();
            c["gone"].remove();
            c["kept"].set(8);
            c.commit().unwrap();
            let state: Vec<_> = c
                .iter()
                .map(|(key, v)| (key.clone(), v.version(), v.value().copied()))
                .collect();
            assert_eq!(state, [(k("gone"), 2, None), (k("kept"), 2, Some(8))]);
            c["kept"].set(9);
            assert_eq!(err(c.commit()), Some(ConcurrentUpdate));
            assert_eq!(store.dump().rows(), vec![(k("kept"), 2, Some(8))]);
            store.atomically(|tx| tx.remove(&k("kept"))); // removal at 3
            assert_eq!(store.atomically(|tx| tx.version(&k("kept"))), 4);
        }
    };
}
