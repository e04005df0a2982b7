//! Issue #11, what exists so far: reads that do not create keys, the store's size, the
//! collection idioms, building and saving stores, statistics, and snapshots to iterate.

use stm_store::Store;

#[test]
fn get_by_borrowed_key_creates_nothing() {
    let store: Store<String, u32> = Store::new();
    for probe in ["a", "b", "c"] {
        assert_eq!(store.get(probe), None);
        assert!(!store.contains_key(probe));
    }
    assert_eq!((store.len(), store.is_empty()), (0, true));
    assert!(store.dump().is_empty());
}

#[test]
fn get_sees_what_usevar_created_and_commits_wrote() {
    let store: Store<String, u32> = Store::new();
    let mut a = store.usevar("a".to_string()).unwrap();
    assert_eq!(store.get("a"), Some((0, None)));
    assert!(store.contains_key("a"));
    a.set(5);
    a.commit().unwrap();
    assert_eq!(store.get("a"), Some((1, Some(5))));
    a.clear();
    a.commit().unwrap();
    assert_eq!(store.get("a"), Some((2, None)));
    assert_eq!(store.get("b"), None);
    assert_eq!((store.len(), store.is_empty()), (1, false));
}

#[test]
fn len_counts_the_keys_dump_lists() {
    let store: Store<u32, u32> = Store::new();
    store.using(0..10).unwrap();
    store.usevar(3).unwrap();
    store.atomically(|tx| tx.set(&20, 1));
    assert_eq!(store.len(), store.dump().len());
    assert_eq!(store.len(), 11);
}

#[cfg(feature = "test-hooks")]
#[test]
fn a_read_that_sees_a_pending_transaction_sees_the_committed_state() {
    // `get` reads the committed record, whatever claim is in the slot.
    let store: Store<&str, i32> = Store::new();
    store.atomically(|tx| {
        tx.set(&"x", 1)?;
        tx.set(&"y", 2)
    });
    let mut c = store.using(["x", "y"]).unwrap();
    c["x"].set(10);
    c["y"].set(20);
    let paused = c.commit_paused(1); // "x" (created first) claimed, undecided
    assert_eq!(store.get("x"), Some((1, Some(1))));
    paused.resume().unwrap();
    assert_eq!(store.get("x"), Some((2, Some(10))));
}

#[test]
fn collections_iterate_by_reference_and_mutably() {
    let store: Store<&str, usize> = Store::new();
    let mut c = store.using(["bb", "a", "ccc"]).unwrap();
    for (key, value) in &mut c {
        value.set(key.len());
    }
    c.commit().unwrap();
    let seen: Vec<(&str, usize)> = (&c)
        .into_iter()
        .map(|(k, v)| (*k, *v.value().unwrap()))
        .collect();
    assert_eq!(seen, [("a", 1), ("bb", 2), ("ccc", 3)]);
    assert_eq!(store.get("ccc"), Some((1, Some(3))));
}

#[test]
fn from_iterator_and_extend_write_each_pair_in_order() {
    let mut store: Store<&str, u32> = [("a", 1), ("b", 2), ("a", 3)].into_iter().collect();
    assert_eq!(store.dump(), vec![("a", 2, Some(3)), ("b", 1, Some(2))]);
    store.extend([("b", 20), ("c", 30)]);
    assert_eq!(
        store.dump(),
        vec![("a", 2, Some(3)), ("b", 2, Some(20)), ("c", 1, Some(30))]
    );
}

#[cfg(feature = "serde")]
mod serde_snapshots {
    use stm_store::Store;

    #[test]
    fn a_store_round_trips_with_versions_and_empty_keys() {
        let store: Store<String, Vec<u8>> = Store::new();
        store.atomically(|tx| {
            tx.set(&"a".to_string(), vec![1, 2])?;
            tx.set(&"b".to_string(), vec![])
        });
        store.atomically(|tx| tx.clear(&"b".to_string()));
        store.usevar("never written".to_string()).unwrap();
        let json = serde_json::to_string(&store).unwrap();
        let back: Store<String, Vec<u8>> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.dump(), store.dump());
        assert_eq!(back.get("b"), Some((2, None)));
        // The restored versions are live ones: a commit goes on from them.
        let mut a = back.usevar("a".to_string()).unwrap();
        a.set(vec![3]);
        a.commit().unwrap();
        assert_eq!(back.get("a"), Some((2, Some(vec![3]))));
    }

    #[test]
    fn bad_snapshots_are_refused_with_a_clear_error() {
        let twice = r#"[["a", 1, 5], ["a", 2, 6]]"#;
        let err = serde_json::from_str::<Store<String, u32>>(twice).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
        let zero = r#"[["a", 0, 5]]"#;
        let err = serde_json::from_str::<Store<String, u32>>(zero).unwrap_err();
        assert!(err.to_string().contains("version 0"), "{err}");
        // Above 2^62 - 1, the highest version a store can hold (contract point 32, checked in
        // tests/conveniences.rs), up to the bit that marks removed keys (2^63) and on it.
        for version in [1u64 << 62, (1 << 63) - 1, 1 << 63, u64::MAX] {
            let too_new = format!(r#"[["a", {version}, 5]]"#);
            let err = serde_json::from_str::<Store<String, u32>>(&too_new).unwrap_err();
            assert!(err.to_string().contains("above 2^62 - 1"), "{err}");
        }
        // One below the highest loads, and a commit goes on from it, to the highest.
        let below = format!(r#"[["a", {}, 5]]"#, (1u64 << 62) - 2);
        let store = serde_json::from_str::<Store<String, u32>>(&below).unwrap();
        let mut a = store.usevar("a".to_string()).unwrap();
        a.set(6);
        assert_eq!(a.commit(), Ok(()));
        assert_eq!(store.get("a"), Some(((1 << 62) - 1, Some(6))));
        let not_rows = r#"{"a": 1}"#;
        assert!(serde_json::from_str::<Store<String, u32>>(not_rows).is_err());
    }
}

mod statistics {
    use std::sync::mpsc;
    use stm_store::Store;

    #[test]
    fn commits_and_conflicts_are_counted_on_every_thread() {
        let store: Store<u32, u64> = Store::new();
        let (threads, each) = (4, 500);
        std::thread::scope(|s| {
            for t in 0..threads {
                let store = &store;
                s.spawn(move || {
                    for i in 0..each {
                        // A key of its own: no conflicts.
                        let mut v = store.usevar(t).unwrap();
                        v.set(i);
                        v.commit().unwrap();
                    }
                });
            }
        });
        let mut stale = store.usevar(0).unwrap();
        store.atomically(|tx| tx.set(&0, 7));
        stale.set(1);
        assert!(stale.commit().is_err());
        let stats = store.stats();
        assert_eq!(stats.commits, u64::from(threads * each as u32) + 1);
        assert_eq!(stats.conflicts, 1);
        assert_eq!(stats.tx_attempts, 1);
        assert_eq!(stats.busy_retries, 0);
    }

    #[cfg(feature = "test-hooks")]
    #[test]
    fn a_commit_finished_by_another_thread_counts_as_helped() {
        let store: Store<&str, i32> = Store::new();
        let mut c = store.using(["a", "b"]).unwrap();
        c["a"].set(1);
        c["b"].set(2);
        let paused = c.commit_paused(1); // "a" claimed, undecided
        assert_eq!(store.stats().helped, 0);
        let mut a = store.usevar("a").unwrap();
        a.set(10);
        // Blocked by the claim, this commit finishes the paused one first (then conflicts:
        // "a" changed since it was read).
        assert!(a.commit().is_err());
        assert_eq!(store.stats().helped, 1);
        paused.resume().unwrap();
        assert_eq!(store.stats().helped, 1); // its owner only reports the outcome
    }

    #[cfg(feature = "test-hooks")]
    #[test]
    fn snapshots_forced_to_claim_are_counted_and_read_the_same() {
        // The test hook makes every snapshot of several keys claim them at once (what a double
        // collect falls back to under contention, which one thread never meets): each such
        // snapshot is counted once and reads what a double collect reads; a snapshot of one
        // key is a single load and claims nothing. A claiming snapshot that meets a stopped
        // commit helps it to its end, and sees it whole.
        let store: Store<&str, i32> = [("a", 1), ("b", 2), ("c", 3)].into_iter().collect();
        type Row = (&'static str, u64, Option<i32>);
        let rows = |s: &stm_store::Snapshot<'_, &'static str, i32>| -> Vec<Row> {
            s.iter().map(|(k, v, x)| (*k, v, x.copied())).collect()
        };
        let (dump, snapshot) = (store.dump(), store.snapshot(rows));
        let first_two = store.snapshot_range("a".."c", rows);
        assert_eq!(store.stats().snapshot_claims, 0);

        store.force_claiming_snapshots(true);
        assert_eq!(store.dump(), dump);
        assert_eq!(store.snapshot(rows), snapshot);
        assert_eq!(store.snapshot_range("a".."c", rows), first_two);
        let c = store.using(["c", "a"]).unwrap();
        let read: Vec<_> = c
            .iter()
            .map(|(k, v)| (*k, v.version(), v.value().copied()))
            .collect();
        assert_eq!(read, [dump[0], dump[2]]);
        drop(c);
        drop(store.using(["b"]).unwrap()); // one key: no claim
        assert_eq!(store.stats().snapshot_claims, 4);

        let mut c = store.using(["a", "b"]).unwrap();
        c["a"].set(10);
        c["b"].set(20);
        let paused = c.commit_paused(1); // "a" claimed, undecided
        assert_eq!(
            store.dump(),
            [("a", 2, Some(10)), ("b", 2, Some(20)), ("c", 1, Some(3))]
        );
        assert_eq!(store.stats().helped, 1);
        paused.resume().unwrap();
        assert_eq!(store.stats().snapshot_claims, 6);

        store.force_claiming_snapshots(false);
        assert_eq!(store.dump().len(), 3);
        assert_eq!(store.stats().snapshot_claims, 6);
    }

    #[test]
    fn a_run_stopped_by_a_stale_read_counts_as_a_conflict() {
        let store: Store<&str, i32> = Store::new();
        store.atomically(|tx| {
            tx.set(&"a", 1)?;
            tx.set(&"b", 2)
        });
        let sum = store.atomically(|tx| {
            let a = tx.get(&"a")?.unwrap();
            if tx.attempt() == 1 {
                let mut other = store.usevar("a").unwrap(); // another writer, between two reads
                other.set(10);
                other.commit().unwrap();
            }
            Ok(a + tx.get(&"b")?.unwrap()) // the first run stops here
        });
        assert_eq!(sum, 12);
        let stats = store.stats();
        assert_eq!(
            (stats.tx_attempts, stats.conflicts, stats.commits),
            (3, 1, 3)
        );
    }

    #[test]
    fn a_transaction_that_waits_counts_its_runs_and_its_wait() {
        let store: Store<&str, i32> = Store::new();
        let (ran, runs) = mpsc::channel();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                store.atomically(|tx| match tx.get(&"job")? {
                    Some(job) => Ok(job),
                    None => {
                        ran.send(()).unwrap();
                        tx.retry()
                    }
                })
            });
            runs.recv().unwrap(); // the first run read no job: it waits (or finds it at once)
            store.atomically(|tx| tx.set(&"job", 5));
            assert_eq!(waiter.join().unwrap(), 5);
        });
        let stats = store.stats();
        assert_eq!(stats.tx_waits, 1);
        assert_eq!(stats.tx_attempts, 3); // two runs of the waiter, one of the writer
    }
}

mod snapshots {
    use std::sync::atomic::{AtomicBool, Ordering};
    use stm_store::Store;

    #[test]
    fn a_snapshot_lists_keys_in_order_and_a_range_only_its_keys() {
        let store: Store<u32, u32> = [5, 1, 9, 3, 7].into_iter().map(|k| (k, k * 10)).collect();
        store.usevar(4).unwrap(); // exists, no value
        let all: Vec<(u32, u64, Option<u32>)> =
            store.snapshot(|s| s.iter().map(|(k, v, x)| (*k, v, x.copied())).collect());
        assert_eq!(all, store.dump());
        let keys: Vec<u32> =
            store.snapshot_range(3..=7, |s| s.iter().map(|(k, _, _)| *k).collect());
        assert_eq!(keys, [3, 4, 5, 7]);
        let (len, empty) = store.snapshot_range(10.., |s| (s.len(), s.is_empty()));
        assert_eq!((len, empty), (0, true));
    }

    #[test]
    fn every_snapshot_conserves_the_total_while_transfers_run() {
        const ACCOUNTS: u32 = 8;
        let store: Store<u32, i64> = (0..ACCOUNTS).map(|k| (k, 100)).collect();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            for t in 0..2u32 {
                let (store, stop) = (&store, &stop);
                s.spawn(move || {
                    let mut i = t;
                    while !stop.load(Ordering::Relaxed) {
                        let (from, to) = (i % ACCOUNTS, (i * 7 + 3) % ACCOUNTS);
                        i = i.wrapping_add(1);
                        store.atomically(|tx| {
                            let (a, b) = (tx.get(&from)?.unwrap(), tx.get(&to)?.unwrap());
                            tx.set(&from, a - 1)?;
                            tx.set(&to, b + 1)
                        });
                    }
                });
            }
            for _ in 0..300 {
                let total: i64 = store.snapshot(|s| s.iter().map(|(_, _, v)| *v.unwrap()).sum());
                assert_eq!(total, 100 * i64::from(ACCOUNTS));
                let keys: Vec<u32> =
                    store.snapshot_range(2..4, |s| s.iter().map(|(k, _, _)| *k).collect());
                assert_eq!(keys, [2, 3]);
            }
            stop.store(true, Ordering::Relaxed);
        });
    }

    #[test]
    fn snapshots_complete_while_keys_are_created() {
        let store: Store<u64, u64> = Store::new();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut key = 0;
                while !stop.load(Ordering::Relaxed) {
                    let mut v = store.usevar(key).unwrap();
                    v.set(key);
                    v.commit().unwrap();
                    key += 1;
                }
            });
            let mut seen = 0;
            for _ in 0..20 {
                let keys: Vec<u64> = store.snapshot(|s| s.iter().map(|(k, _, _)| *k).collect());
                // Keys are created in order and never removed: a snapshot holds a prefix.
                assert!(
                    keys.iter().copied().eq(0..keys.len() as u64),
                    "not a prefix"
                );
                assert!(keys.len() >= seen);
                seen = keys.len();
            }
            stop.store(true, Ordering::Relaxed);
        });
    }
}
