//! The contract of DESIGN.md, Part 1: one test (or a few) per numbered point, named after it,
//! plus bad input (duplicate keys, empty `using`, indexing a missing key, a broken `Ord`).
//!
//! Every check compares what the store reports with what the sequence of operations implies,
//! so a store that loses, tears, reorders or invents a write fails here.

mod common;

use std::cmp::Ordering as CmpOrdering;
use std::hash::{Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;

use common::{Counts, Tracked, XorShift, SCALE};
use stm_store::{Collection, Error, Store, Value};

/// The (version, value) of every handle of a collection, in its order.
fn state<K: Clone, V: Clone>(c: &Collection<K, V>) -> Vec<(K, u64, Option<V>)> {
    c.iter()
        .map(|(k, v)| (k.clone(), v.version(), v.value().cloned()))
        .collect()
}

/// Sets each key of `pairs` to its value, in one commit.
fn put(store: &Store<&'static str, i64>, pairs: &[(&'static str, i64)]) {
    let mut c = store.using(pairs.iter().map(|(k, _)| *k)).unwrap();
    for (k, v) in pairs {
        c[*k].set(*v);
    }
    c.commit().unwrap();
}

#[test]
fn p1_new_key_has_version_0_and_no_value() {
    let store: Store<&str, i64> = Store::new();
    let a = store.usevar("a").unwrap();
    assert_eq!((a.key(), a.version(), a.value()), (&"a", 0, None));
    let c = store.using(["c", "b"]).unwrap();
    assert_eq!(state(&c), [("b", 0, None), ("c", 0, None)]);
    // usevar and using created the keys they named.
    assert_eq!(
        store.dump(),
        [("a", 0, None), ("b", 0, None), ("c", 0, None)]
    );

    // A key that exists is found, not created again: a write to it is seen by later reads,
    // however they name it.
    let mut a = store.usevar("a").unwrap();
    assert_eq!((a.version(), a.value()), (0, None));
    a.set(5);
    a.commit().unwrap();
    let again = store.usevar("a").unwrap();
    assert_eq!((again.version(), again.value()), (1, Some(&5)));
    let c = store.using(["d", "a"]).unwrap();
    assert_eq!(state(&c), [("a", 1, Some(5)), ("d", 0, None)]);
    assert_eq!(
        store.dump(),
        [
            ("a", 1, Some(5)),
            ("b", 0, None),
            ("c", 0, None),
            ("d", 0, None)
        ]
    );
}

#[test]
fn p2_using_and_dump_return_consistent_snapshots() {
    // Sequential part: keys created out of key order (slot order differs from key order),
    // some written, some never written.
    let store: Store<&str, i64> = Store::new();
    store.usevar("m").unwrap();
    put(&store, &[("z", 26), ("b", 2)]);
    put(&store, &[("b", 20)]);
    store.using(["q", "a"]).unwrap();
    put(&store, &[("a", 1)]);

    let c = store.using(["z", "m", "b", "a", "m", "nobody"]).unwrap();
    assert_eq!(
        state(&c),
        [
            ("a", 1, Some(1)),
            ("b", 2, Some(20)),
            ("m", 0, None),
            ("nobody", 0, None),
            ("z", 1, Some(26)),
        ]
    );
    // Every key that exists, written or not, in key order.
    assert_eq!(
        store.dump(),
        [
            ("a", 1, Some(1)),
            ("b", 2, Some(20)),
            ("m", 0, None),
            ("nobody", 0, None),
            ("q", 0, None),
            ("z", 1, Some(26)),
        ]
    );

    // Concurrent part. One writer sets every data key (0, i) to the same number in each commit;
    // another thread creates keys (1, 0), (1, 1), ... one after the other. A snapshot taken at
    // one instant shows equal values and versions on the data keys, and a set of created keys
    // that is a prefix (whoever sees (1, j) also sees every earlier one).
    const DATA: u32 = 4;
    const COMMITS: i64 = 1_500 * SCALE as i64;
    const CREATED: u32 = 1_500 * SCALE as u32;
    let store: Arc<Store<(u8, u32), i64>> = Arc::new(Store::new());
    store.using((0..DATA).map(|i| (0, i))).unwrap();
    let start = Arc::new(Barrier::new(4));
    let writing = Arc::new(AtomicBool::new(true));

    let writer = {
        let (store, start, writing) = (store.clone(), start.clone(), writing.clone());
        thread::spawn(move || {
            start.wait();
            for i in 1..=COMMITS {
                let mut c = store.using((0..DATA).map(|k| (0, k))).unwrap();
                c.values_mut().for_each(|v| v.set(i));
                // The only writer: snapshots are not commits and never make it fail.
                c.commit().unwrap();
            }
            writing.store(false, Ordering::SeqCst);
        })
    };
    let creator = {
        let (store, start) = (store.clone(), start.clone());
        thread::spawn(move || {
            start.wait();
            for j in 0..CREATED {
                store.usevar((1, j)).unwrap();
            }
        })
    };
    let using_reader = {
        let (store, start, writing) = (store.clone(), start.clone(), writing.clone());
        thread::spawn(move || {
            start.wait();
            let mut snapshots = 0;
            while writing.load(Ordering::SeqCst) || snapshots == 0 {
                let c = store.using((0..DATA).map(|k| (0, k))).unwrap();
                let first = (c[&(0, 0)].version(), c[&(0, 0)].value().copied());
                for (k, v) in c.iter() {
                    assert_eq!(
                        (v.version(), v.value().copied()),
                        first,
                        "torn using at {k:?}"
                    );
                }
                snapshots += 1;
            }
        })
    };
    start.wait();
    let mut dumps = 0;
    while writing.load(Ordering::SeqCst) || dumps == 0 {
        let dump = store.dump();
        assert!(
            dump.windows(2).all(|w| w[0].0 < w[1].0),
            "dump not in key order"
        );
        let data: Vec<_> = dump.iter().filter(|(k, _, _)| k.0 == 0).collect();
        assert_eq!(data.len(), DATA as usize);
        assert!(
            data.iter()
                .all(|(_, v, x)| (*v, *x) == (data[0].1, data[0].2)),
            "torn dump: {data:?}"
        );
        let created: Vec<u32> = dump
            .iter()
            .filter(|(k, _, _)| k.0 == 1)
            .map(|(k, _, _)| k.1)
            .collect();
        assert!(
            created.iter().enumerate().all(|(i, j)| i as u32 == *j),
            "dump's key set is not one instant's: {created:?}"
        );
        dumps += 1;
    }
    for t in [writer, creator, using_reader] {
        t.join().unwrap();
    }
    let dump = store.dump();
    assert_eq!(dump.len(), (DATA + CREATED) as usize);
    for (k, v, x) in &dump[..DATA as usize] {
        assert_eq!((*v, *x), (COMMITS as u64, Some(COMMITS)), "{k:?}");
    }
}

#[test]
fn p3_commit_is_atomic() {
    // A commit that fails on its last key (in slot order, so the earlier keys were already
    // claimed) or on its first key writes none of them.
    let store: Store<&str, i64> = Store::new();
    put(&store, &[("a", 1), ("b", 2), ("c", 3)]);
    for stale in ["a", "b", "c"] {
        let mut c = store.using(["a", "b", "c"]).unwrap();
        c.values_mut().for_each(|v| {
            let x = v.value().unwrap();
            v.set(x * 100);
        });
        let mut other = store.usevar(stale).unwrap();
        let x = *other.value().unwrap();
        other.set(x + 1);
        other.commit().unwrap();
        let before = store.dump();
        assert_eq!(c.commit(), Err(Error::ConcurrentUpdate));
        assert_eq!(
            store.dump(),
            before,
            "a failed commit wrote (stale key {stale})"
        );
    }
    // All three land together, each one version up.
    let before = store.dump();
    let mut c = store.using(["a", "b", "c"]).unwrap();
    c.values_mut().for_each(|v| {
        let x = v.value().unwrap();
        v.set(x * 10);
    });
    c.commit().unwrap();
    let after: Vec<_> = before
        .into_iter()
        .map(|(k, v, x)| (k, v + 1, x.map(|x| x * 10)))
        .collect();
    assert_eq!(store.dump(), after);

    // Concurrent part: two writers race to set all keys to a number of their own, so many of
    // their commits fail; readers must never see a mix, and a failed commit must leave nothing.
    const KEYS: u32 = 4;
    const ROUNDS: i64 = 800 * SCALE as i64;
    let store: Arc<Store<u32, i64>> = Arc::new(Store::new());
    let start = Arc::new(Barrier::new(3));
    let writers_left = Arc::new(AtomicUsize::new(2));
    let commits = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..2i64)
        .map(|w| {
            let (store, start) = (store.clone(), start.clone());
            let (left, commits) = (writers_left.clone(), commits.clone());
            thread::spawn(move || {
                start.wait();
                for i in 0..ROUNDS {
                    let mut c = store.using(0..KEYS).unwrap();
                    c.values_mut().for_each(|v| v.set(w * 1_000_000 + i));
                    match c.commit() {
                        Ok(()) => {
                            commits.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(Error::ConcurrentUpdate) => {}
                        Err(Error::BusyRetry) => panic!("BusyRetry"),
                    }
                }
                left.fetch_sub(1, Ordering::SeqCst);
            })
        })
        .collect();
    start.wait();
    let mut reads = 0;
    while writers_left.load(Ordering::SeqCst) > 0 || reads == 0 {
        let c = store.using(0..KEYS).unwrap();
        let first = (c[&0].version(), c[&0].value().copied());
        assert!(
            c.iter()
                .all(|(_, v)| (v.version(), v.value().copied()) == first),
            "torn using: {:?}",
            state(&c)
        );
        let dump = store.dump();
        assert!(
            dump.iter()
                .all(|(_, v, x)| (*v, *x) == (dump[0].1, dump[0].2)),
            "torn dump: {dump:?}"
        );
        reads += 1;
    }
    for t in writers {
        t.join().unwrap();
    }
    // Each successful commit wrote every key once, and the failed ones wrote nothing.
    let commits = commits.load(Ordering::SeqCst);
    let dump = store.dump();
    assert!(commits > 0);
    for (k, v, x) in &dump {
        assert_eq!((*v, *x), (commits, dump[0].2), "key {k}");
    }
}

#[test]
fn p4_commit_writes_only_set_or_cleared_handles() {
    let store: Store<&str, i64> = Store::new();
    put(&store, &[("a", 1), ("b", 2), ("c", 3)]);
    put(&store, &[("a", 11)]);

    let mut c = store.using(["a", "b", "c"]).unwrap();
    c["a"].set(100);
    c["b"].clear();
    // value() is the pending value after set/clear, the value read otherwise; version() stays
    // the version read until the commit.
    assert_eq!(
        state(&c),
        [("a", 2, Some(100)), ("b", 1, None), ("c", 1, Some(3))]
    );
    // Nothing is visible before the commit.
    assert_eq!(
        store.dump(),
        [("a", 2, Some(11)), ("b", 1, Some(2)), ("c", 1, Some(3))]
    );
    c.commit().unwrap();
    // Each written key: its read version + 1. The key only read: untouched.
    let expected = [("a", 3, Some(100)), ("b", 2, None), ("c", 1, Some(3))];
    assert_eq!(store.dump(), expected);
    assert_eq!(state(&c), expected);

    // The last of set/clear wins, and clear on a key never written is a write too.
    let mut d = store.usevar("d").unwrap();
    let mut stale_d = store.usevar("d").unwrap();
    d.set(4);
    d.clear();
    assert_eq!(d.value(), None);
    d.commit().unwrap();
    assert_eq!((d.version(), d.value()), (1, None));
    let mut e = store.usevar("e").unwrap();
    e.clear();
    e.set(5);
    assert_eq!(e.value(), Some(&5));
    e.commit().unwrap();
    assert_eq!(store.dump()[3..], [("d", 1, None), ("e", 1, Some(5))]);
    // A reader of d's version 0 is now stale: the clear was a write.
    assert_eq!(stale_d.commit(), Err(Error::ConcurrentUpdate));
}

#[test]
fn p4_read_only_handles_are_validated_not_written() {
    let store: Store<&str, i64> = Store::new();
    put(&store, &[("x", 1), ("y", 1)]);

    // One key written, one only read: a change to the read key makes it fail.
    let mut c = store.using(["x", "y"]).unwrap();
    c["x"].set(0);
    let mut c2 = store.using(["x", "y"]).unwrap();
    let mut nothing_set = store.using(["x", "y"]).unwrap();
    let mut single = store.usevar("y").unwrap();
    // With nothing set, commits only validate: they succeed and write nothing.
    nothing_set.commit().unwrap();
    single.commit().unwrap();
    assert_eq!(store.dump(), [("x", 1, Some(1)), ("y", 1, Some(1))]);
    assert_eq!(state(&nothing_set), [("x", 1, Some(1)), ("y", 1, Some(1))]);
    assert_eq!((single.version(), single.value()), (1, Some(&1)));

    put(&store, &[("y", 0)]);
    assert_eq!(c.commit(), Err(Error::ConcurrentUpdate));
    assert_eq!(nothing_set.commit(), Err(Error::ConcurrentUpdate));
    assert_eq!(single.commit(), Err(Error::ConcurrentUpdate));
    assert_eq!(store.dump(), [("x", 1, Some(1)), ("y", 2, Some(0))]);

    // Read-only participants cause no conflict: both commits below read "x" and write a key of
    // their own; Axon.STM rewrote "x" in both and failed the second one.
    let mut d = store.using(["x", "d"]).unwrap();
    c2["y"].set(7);
    d["d"].set(8);
    // c2 read y before it changed, so it fails; re-read it.
    assert_eq!(c2.commit(), Err(Error::ConcurrentUpdate));
    let mut c2 = store.using(["x", "y"]).unwrap();
    c2["y"].set(7);
    c2.commit().unwrap();
    d.commit().unwrap();
    assert_eq!(
        store.dump(),
        [("d", 1, Some(8)), ("x", 1, Some(1)), ("y", 3, Some(7))]
    );
    assert_eq!((d["x"].version(), c2["x"].version()), (1, 1));
}

#[test]
fn p5_concurrent_update_writes_nothing_and_leaves_handles_unchanged() {
    let store: Store<&str, i64> = Store::new();
    put(&store, &[("a", 1), ("b", 2)]);
    let mut mine = store.using(["a", "b"]).unwrap();
    mine["a"].set(10);
    mine["b"].set(20);
    let mut single = store.usevar("b").unwrap();
    single.set(200);
    let mut cleared = store.usevar("a").unwrap();
    cleared.clear();

    let mut theirs = store.using(["a", "b"]).unwrap();
    theirs["a"].set(3);
    theirs["b"].set(4);
    theirs.commit().unwrap();
    let before = store.dump();
    assert_eq!(before, [("a", 2, Some(3)), ("b", 2, Some(4))]);

    // Committing stale handles fails, writes nothing and changes nothing: so it fails again.
    for _ in 0..3 {
        assert_eq!(mine.commit(), Err(Error::ConcurrentUpdate));
        assert_eq!(single.commit(), Err(Error::ConcurrentUpdate));
        assert_eq!(cleared.commit(), Err(Error::ConcurrentUpdate));
        assert_eq!(store.dump(), before);
        assert_eq!(state(&mine), [("a", 1, Some(10)), ("b", 1, Some(20))]);
        assert_eq!((single.version(), single.value()), (1, Some(&200)));
        assert_eq!((cleared.version(), cleared.value()), (1, None));
    }

    // Re-read and redo.
    let mut mine = store.using(["a", "b"]).unwrap();
    let (a, b) = (*mine["a"].value().unwrap(), *mine["b"].value().unwrap());
    mine["a"].set(a + 10);
    mine["b"].set(b + 20);
    mine.commit().unwrap();
    assert_eq!(store.dump(), [("a", 3, Some(13)), ("b", 3, Some(24))]);
}

#[test]
fn p6_busy_retry_is_rare_and_error_has_exactly_two_variants() {
    // An exhaustive match with no wildcard: a third variant would not compile.
    fn name(e: Error) -> &'static str {
        match e {
            Error::BusyRetry => "BusyRetry",
            Error::ConcurrentUpdate => "ConcurrentUpdate",
        }
    }
    let (busy, conflict) = (Error::BusyRetry, Error::ConcurrentUpdate);
    assert_ne!(busy, conflict);
    assert_eq!(format!("{busy:?}"), name(busy));
    assert_eq!(format!("{conflict:?}"), name(conflict));
    let (shown_busy, shown_conflict) = (busy.to_string(), conflict.to_string());
    assert!(!shown_busy.is_empty() && !shown_conflict.is_empty());
    assert_ne!(shown_busy, shown_conflict);
    let as_error: Box<dyn std::error::Error + Send + Sync> = Box::new(conflict);
    assert_eq!(as_error.to_string(), shown_conflict);
    assert!(as_error.source().is_none());
    let copied = busy;
    assert_eq!(copied, busy);

    // Under contention (single- and multi-key commits and snapshots on the same keys), calls
    // fail only with ConcurrentUpdate: being in the middle of someone's commit is no reason to
    // answer BusyRetry.
    const THREADS: u64 = 3;
    const OPS: u64 = 600 * SCALE;
    let store: Arc<Store<u64, u64>> = Arc::new(Store::new());
    let start = Arc::new(Barrier::new(THREADS as usize));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (store, start) = (store.clone(), start.clone());
            thread::spawn(move || {
                let mut rng = XorShift::new(t);
                let (mut ok, mut busy) = (0u64, 0u64);
                start.wait();
                for _ in 0..OPS {
                    let result = match rng.below(3) {
                        0 => {
                            let mut v = store.usevar(rng.below(2)).unwrap();
                            v.set(v.value().unwrap_or(&0) + 1);
                            v.commit()
                        }
                        1 => {
                            let mut c = store.using([0, 1]).unwrap();
                            c.values_mut()
                                .for_each(|v| v.set(v.value().unwrap_or(&0) + 1));
                            c.commit()
                        }
                        _ => store.using([0, 1]).map(|_| ()),
                    };
                    match result {
                        Ok(()) => ok += 1,
                        Err(Error::ConcurrentUpdate) => {}
                        Err(Error::BusyRetry) => busy += 1,
                    }
                }
                (ok, busy)
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(results.iter().all(|&(_, busy)| busy == 0), "{results:?}");
    assert!(results.iter().all(|&(ok, _)| ok > 0), "{results:?}");
}

#[test]
fn p7_committed_handle_is_clean_and_can_be_set_again() {
    // Axon.STM's greeting example.
    let store: Store<&str, String> = Store::new();
    let mut greeting = store.usevar("greeting").unwrap();
    greeting.set("hello".into());
    greeting.commit().unwrap();
    assert_eq!(
        (greeting.version(), greeting.value()),
        (1, Some(&"hello".into()))
    );
    greeting.set("goodbye".into());
    greeting.commit().unwrap();
    assert_eq!(greeting.version(), 2);
    assert_eq!(store.dump(), [("greeting", 2, Some("goodbye".into()))]);
    // Clean: committing again, with nothing set, writes nothing.
    greeting.commit().unwrap();
    assert_eq!(store.dump(), [("greeting", 2, Some("goodbye".into()))]);
    // A stale reader of version 1 still fails: version 2 is a different record.
    let mut other = store.usevar("greeting").unwrap();
    other.set("hi".into());
    other.commit().unwrap();
    greeting.set("again".into());
    assert_eq!(greeting.commit(), Err(Error::ConcurrentUpdate));

    // The same for a collection: commit, set again, commit.
    let mut c = store.using(["x", "y"]).unwrap();
    c["x"].set("1".into());
    c["y"].set("1".into());
    c.commit().unwrap();
    c["x"].set("2".into());
    c.commit().unwrap();
    c.commit().unwrap();
    c["y"].clear();
    c.commit().unwrap();
    assert_eq!(state(&c), [("x", 2, Some("2".into())), ("y", 2, None)]);
    assert_eq!(
        store.dump()[1..],
        [("x", 2, Some("2".into())), ("y", 2, None)]
    );
}

/// A commit stopped after claiming keys delays neither reads nor commits of those keys. (The
/// stalled-committer tests in `stall.rs` go further.)
#[cfg(feature = "test-hooks")]
#[test]
fn p8_a_stalled_commit_blocks_no_read_and_no_commit() {
    use common::within;

    let store: Arc<Store<&str, i64>> = Arc::new(Store::new());
    put(&store, &[("a", 100), ("b", 100)]);
    let old = store.dump();

    // Reads return the committed state at once, and do not help the stalled commit: after
    // they ran, it is still undecided, so dropping it leaves the old values.
    let mut p = store.using(["a", "b"]).unwrap();
    p["a"].set(90);
    p["b"].set(110);
    for claims in 1..=2 {
        let paused = p.commit_paused(claims);
        let s = store.clone();
        let seen = within("reads", move || {
            let a = s.usevar("a").unwrap();
            let c = s.using(["a", "b"]).unwrap();
            ((a.version(), a.value().copied()), state(&c), s.dump())
        });
        assert_eq!(seen.0, (1, Some(100)));
        assert_eq!(seen.1, old);
        assert_eq!(seen.2, old);
        drop(paused);
        assert_eq!(
            store.dump(),
            old,
            "a read helped the stalled commit ({claims} claims)"
        );
    }

    // A commit on a claimed key completes while the commit is stalled.
    let paused = p.commit_paused(1);
    let s = store.clone();
    let attempts = within("a commit", move || {
        for attempt in 1..=1_000 {
            let mut a = s.usevar("a").unwrap();
            let x = *a.value().unwrap();
            a.set(x + 1);
            match a.commit() {
                Ok(()) => return attempt,
                Err(Error::ConcurrentUpdate) => continue,
                Err(Error::BusyRetry) => panic!("BusyRetry behind a stalled commit"),
            }
        }
        panic!("no commit in 1000 attempts");
    });
    assert!(attempts <= 1_000);
    let outcome = paused.resume();
    // Whatever the order, the result is one a serial order gives: the +1 landed, and p's
    // transfer landed exactly when it reports Ok.
    match outcome {
        Ok(()) => {
            assert_eq!(state(&p), [("a", 2, Some(90)), ("b", 2, Some(110))]);
            assert_eq!(store.dump(), [("a", 3, Some(91)), ("b", 2, Some(110))]);
        }
        Err(Error::ConcurrentUpdate) => {
            assert_eq!(state(&p), [("a", 1, Some(90)), ("b", 1, Some(110))]);
            assert_eq!(store.dump(), [("a", 2, Some(101)), ("b", 1, Some(100))]);
        }
        Err(Error::BusyRetry) => panic!("BusyRetry"),
    }
}

#[test]
fn p9_old_values_are_freed_and_nothing_leaks() {
    let counts = Counts::new();
    let t = |tag: u64| Tracked::new(&counts, tag, tag as i64);
    let store: Store<&str, Tracked> = Store::new();
    put_tracked(&store, "b", t(1_000));

    // Write n to "a", in turn through the single-key path, a multi-key commit (with "b" only
    // read) and a multi-key clear; write n stores value n (a clear stores none). Replaced values
    // are freed by deferred reclamation: once the epoch has moved on, with every handle gone,
    // exactly the latest value of each key is alive, once. (`settle_to` fails on a value left
    // behind, and on a value dropped twice.)
    for n in 1..=12u64 {
        match n % 3 {
            0 => {
                let mut v = store.usevar("a").unwrap();
                v.set(t(n));
                v.commit().unwrap();
            }
            1 => {
                let mut c = store.using(["a", "b"]).unwrap();
                c["a"].set(t(n));
                c.commit().unwrap();
            }
            _ => {
                let mut c = store.using(["a", "b"]).unwrap();
                c["a"].clear();
                c.commit().unwrap();
            }
        }
        let mut expected = vec![(1_000, 1)];
        if n % 3 != 2 {
            expected.push((n, 1));
        }
        counts.settle_to(&expected);
    }
    assert_eq!(
        store.usevar("b").unwrap().version(),
        1,
        "b was only read: never rewritten"
    );

    // A handle holds its own copy of what it read: the copy lives however many writes follow,
    // until the handle goes, while the store's copy goes with the write that replaced it.
    let holder = store.usevar("b").unwrap();
    put_tracked(&store, "b", t(2_000));
    put_tracked(&store, "b", t(2_001));
    counts.settle_to(&[(12, 1), (1_000, 1), (2_001, 1)]);
    drop(holder);
    counts.settle_to(&[(12, 1), (2_001, 1)]);
    // A failed commit's pending value lives in its handle, and no longer (both paths).
    let mut stale = store.usevar("a").unwrap();
    stale.set(t(3_000));
    let mut stale_pair = store.using(["a", "b"]).unwrap();
    stale_pair["a"].set(t(3_002));
    put_tracked(&store, "a", t(3_001));
    assert_eq!(stale.commit(), Err(Error::ConcurrentUpdate));
    assert_eq!(stale_pair.commit(), Err(Error::ConcurrentUpdate));
    // Value 12: the two stale handles' copies; 2001: the store's and stale_pair's.
    counts.settle_to(&[(12, 2), (2_001, 2), (3_000, 1), (3_001, 1), (3_002, 1)]);
    drop((stale, stale_pair));
    counts.settle_to(&[(2_001, 1), (3_001, 1)]);
    // dump's copies go with the dump.
    let dump = store.dump();
    counts.settle_to(&[(2_001, 2), (3_001, 2)]);
    drop(dump);
    counts.settle_to(&[(2_001, 1), (3_001, 1)]);
    // Everything goes with the store.
    drop(store);
    counts.assert_all_dropped();
    assert_eq!(counts.created(), counts.dropped());
}

fn put_tracked(store: &Store<&'static str, Tracked>, key: &'static str, value: Tracked) {
    let mut v = store.usevar(key).unwrap();
    v.set(value);
    v.commit().unwrap();
}

#[test]
#[should_panic(expected = "Store::set: this handle belongs to another Store")]
fn p10_store_set_with_a_handle_of_another_store_panics() {
    let (one, other): (Store<&str, i64>, Store<&str, i64>) = (Store::new(), Store::new());
    let mut v = one.usevar("a").unwrap();
    v.set(1);
    let _ = other.set(&mut v);
}

#[test]
#[should_panic(expected = "Store::set_values: this handle belongs to another Store")]
fn p10_store_set_values_with_a_collection_of_another_store_panics() {
    let (one, other): (Store<&str, i64>, Store<&str, i64>) = (Store::new(), Store::new());
    let mut c = one.using(["a"]).unwrap();
    c["a"].set(1);
    let _ = other.set_values(&mut c);
}

#[test]
fn p10_handle_commits_to_the_store_it_came_from() {
    let (one, other): (Store<&str, i64>, Store<&str, i64>) = (Store::new(), Store::new());
    put(&other, &[("a", 7)]);
    let mut v = one.usevar("a").unwrap();
    v.set(1);
    one.set(&mut v).unwrap();
    let mut c = one.using(["a", "b"]).unwrap();
    c["a"].set(2);
    c["b"].set(3);
    one.set_values(&mut c).unwrap();
    v.set(4);
    // Stale in its own store, whatever the other store holds under the same key.
    assert_eq!(v.commit(), Err(Error::ConcurrentUpdate));
    assert_eq!(one.dump(), [("a", 2, Some(2)), ("b", 1, Some(3))]);
    assert_eq!(other.dump(), [("a", 1, Some(7))]);
    // (A handle cannot outlive its store: that is a compile error now, so there is nothing
    // left to test at run time.)
}

#[test]
#[should_panic(expected = "Store::set_values: this handle belongs to another Store")]
fn p10_store_set_values_with_a_handle_swapped_in_from_another_store_panics() {
    // `std::mem::swap` is the one way to put a foreign handle into a collection.
    let (one, other): (Store<&str, i64>, Store<&str, i64>) = (Store::new(), Store::new());
    let mut mine = one.using(["a", "b"]).unwrap();
    let mut theirs = other.using(["a"]).unwrap();
    std::mem::swap(&mut mine["a"], &mut theirs["a"]);
    mine["a"].set(1);
    let _ = one.set_values(&mut mine);
}

/// The message of a caught panic.
fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// Runs `f`, which must panic, and returns the panic's message.
#[track_caller]
fn must_panic<T>(what: &str, f: impl FnOnce() -> T) -> String {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(_) => panic!("{what} did not panic"),
        Err(panic) => panic_message(panic),
    }
}

#[test]
fn p10_set_values_goes_by_where_the_handles_came_from() {
    // `std::mem::swap` of two whole collections of two stores: each collection value, built by
    // one store, now holds only the other store's handles. A store must accept exactly the
    // collections whose handles are its own. Catches: a store check made on anything but the
    // handles (it would refuse the right store and accept the wrong one), and a commit that
    // writes through the store it was called on instead of the handles' own.
    let (one, other): (Store<&str, i64>, Store<&str, i64>) = (Store::new(), Store::new());
    put(&one, &[("a", 1)]);
    put(&other, &[("a", 100)]);
    let mut built_by_one = one.using(["a", "b"]).unwrap();
    let mut built_by_other = other.using(["a", "b"]).unwrap();
    let before = (one.dump(), other.dump());
    std::mem::swap(&mut built_by_one, &mut built_by_other);
    // `built_by_one` now holds other's handles, `built_by_other` one's.
    assert_eq!(state(&built_by_one), [("a", 1, Some(100)), ("b", 0, None)]);
    built_by_one["a"].set(101);
    built_by_one["b"].set(102);
    built_by_other["a"].set(2);

    let message = must_panic("one.set_values(other's handles)", || {
        one.set_values(&mut built_by_one)
    });
    assert!(
        message.contains("Store::set_values: this handle belongs to another Store"),
        "{message}"
    );
    let message = must_panic("other.set_values(one's handles)", || {
        other.set_values(&mut built_by_other)
    });
    assert!(
        message.contains("Store::set_values: this handle belongs to another Store"),
        "{message}"
    );
    assert_eq!((one.dump(), other.dump()), before, "a refused call wrote");

    // The refusals changed nothing: each store takes its own handles.
    assert_eq!(other.set_values(&mut built_by_one), Ok(()));
    assert_eq!(one.set_values(&mut built_by_other), Ok(()));
    assert_eq!(one.dump(), [("a", 2, Some(2)), ("b", 0, None)]);
    assert_eq!(other.dump(), [("a", 2, Some(101)), ("b", 1, Some(102))]);
    assert_eq!(
        state(&built_by_one),
        [("a", 2, Some(101)), ("b", 1, Some(102))]
    );
}

#[test]
fn p10_a_collection_mixing_two_stores_panics_on_commit_and_writes_nothing() {
    // Single handles swapped between collections of two stores (`get_mut` + `std::mem::swap`):
    // each collection now holds a handle of each store. Committing it, by any call, must panic
    // with a message that says what is wrong, and write nothing to either store. Catches: a
    // mixed commit that goes ahead (it would claim slots of another store under this store's
    // transaction, or write half of it), a check that looks at one handle only, and a panic
    // raised after some key was claimed or written.
    let (one, other): (Store<&str, i64>, Store<&str, i64>) = (Store::new(), Store::new());
    put(&one, &[("a", 1), ("b", 2)]);
    put(&other, &[("a", 10), ("b", 20)]);
    let before = (one.dump(), other.dump());
    let mut mine = one.using(["a", "b"]).unwrap();
    let mut theirs = other.using(["a", "b"]).unwrap();
    std::mem::swap(mine.get_mut("b").unwrap(), theirs.get_mut("b").unwrap());
    for c in [&mut mine, &mut theirs] {
        c.values_mut().for_each(|v| {
            let x = *v.value().unwrap();
            v.set(x + 1);
        });
    }
    for (name, c) in [("mine", &mut mine), ("theirs", &mut theirs)] {
        let message = must_panic("commit of a mixed collection", || c.commit());
        assert!(
            message.contains("Collection::commit")
                && message.contains("handles of different stores"),
            "{name}: {message}"
        );
        for store in [&one, &other] {
            let message = must_panic("set_values of a mixed collection", || store.set_values(c));
            assert!(
                message.contains("Store::set_values: this handle belongs to another Store"),
                "{name}: {message}"
            );
        }
        assert_eq!(
            (one.dump(), other.dump()),
            before,
            "{name}: a refused commit wrote"
        );
    }
    // Nothing is left claimed: swapped back, both commit at the first try.
    std::mem::swap(mine.get_mut("b").unwrap(), theirs.get_mut("b").unwrap());
    assert_eq!(mine.commit(), Ok(()));
    assert_eq!(other.set_values(&mut theirs), Ok(()));
    assert_eq!(one.dump(), [("a", 2, Some(2)), ("b", 2, Some(3))]);
    assert_eq!(other.dump(), [("a", 2, Some(11)), ("b", 2, Some(21))]);
}

/// Runs `f`, which must panic on this thread, and returns the panic's message and the location
/// the panic hook was given. Other threads' panics meanwhile go to the previous hook.
fn panic_location(f: impl FnOnce()) -> (String, Option<(String, u32)>) {
    let me = thread::current().id();
    let seen: Arc<Mutex<Option<(String, u32)>>> = Arc::default();
    let previous = Arc::new(std::panic::take_hook());
    {
        let (seen, previous) = (seen.clone(), previous.clone());
        std::panic::set_hook(Box::new(move |info| {
            if thread::current().id() == me {
                *seen.lock().unwrap() =
                    info.location().map(|at| (at.file().to_string(), at.line()));
            } else {
                (*previous)(info);
            }
        }));
    }
    let outcome = catch_unwind(AssertUnwindSafe(f));
    drop(std::panic::take_hook());
    std::panic::set_hook(Box::new(move |info| (*previous)(info)));
    let message = panic_message(outcome.expect_err("the call did not panic"));
    let at = seen.lock().unwrap().take();
    (message, at)
}

#[test]
fn p10_the_panic_for_a_foreign_handle_points_at_the_caller() {
    // `#[track_caller]` all the way from the public call to the assertion: the location the
    // panic reports is the line of this file that made the call, not a line of the library.
    // Catches: a missing `#[track_caller]` on `Store::set`, `Store::set_values`,
    // `Collection::commit` or on a helper they call to check.
    let (one, other): (Store<&str, i64>, Store<&str, i64>) = (Store::new(), Store::new());
    let mut v = one.usevar("a").unwrap();
    v.set(1);
    let mut c = one.using(["a", "b"]).unwrap();
    c["a"].set(1);
    let mut mixed = one.using(["a", "b"]).unwrap();
    let mut foreign = other.usevar("b").unwrap();
    std::mem::swap(mixed.get_mut("b").unwrap(), &mut foreign);

    // Each call sits between two `line!()` marks: the panic must point between them.
    let mark = line!();
    let set = panic_location(|| {
        let _ = other.set(&mut v);
    });
    let after_set = line!();
    let set_values = panic_location(|| {
        let _ = other.set_values(&mut c);
    });
    let after_set_values = line!();
    let commit = panic_location(|| {
        let _ = mixed.commit();
    });
    let after_commit = line!();
    let calls = [
        ("Store::set", set, mark..after_set),
        ("Store::set_values", set_values, after_set..after_set_values),
        ("Collection::commit", commit, after_set_values..after_commit),
    ];
    for (call, (message, at), lines) in calls {
        assert!(message.contains(call), "{call}: {message}");
        let (file, line) = at.unwrap_or_else(|| panic!("{call}: the hook saw no location"));
        assert_eq!(file, file!(), "{call}: the panic points into the library");
        assert!(
            lines.contains(&line),
            "{call}: the panic points at line {line}, the call is in lines {lines:?}"
        );
    }
}

#[test]
#[should_panic(expected = "two handles of the same key")]
fn two_handles_of_one_key_swapped_into_a_collection_panic_on_commit() {
    let store: Store<&str, i64> = Store::new();
    let mut c = store.using(["a", "b"]).unwrap();
    let mut a = store.usevar("a").unwrap();
    std::mem::swap(&mut c["b"], &mut a);
    c["a"].set(1);
    let _ = c.commit();
}

#[test]
fn store_debug_shows_the_snapshot() {
    let store: Store<&str, i64> = Store::new();
    put(&store, &[("b", 2)]);
    store.usevar("a").unwrap();
    assert_eq!(
        format!("{store:?}"),
        r#"{"a": (0, None), "b": (1, Some(2))}"#
    );
}

#[test]
fn send_and_sync_bounds_hold() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Store<String, Vec<u8>>>();
    send::<Value<String, Vec<u8>>>();
    send::<Collection<String, Vec<u8>>>();
    send_sync::<Error>();
    // Sync where K and V are: handles can be shared between threads by reference.
    send_sync::<Value<String, Vec<u8>>>();
    send_sync::<Collection<String, Vec<u8>>>();
    // And in practice: handles (which borrow their store) move to another thread and commit
    // there, inside a scope that the store outlives; a collection is read from two threads.
    let store: Store<String, i64> = Store::new();
    let mut c = store.using(["k".to_string()]).unwrap();
    c["k"].set(1);
    let mut v = store.usevar("v".to_string()).unwrap();
    v.set(2);
    let (c, v) = thread::scope(|s| {
        let c = s.spawn(move || {
            c.commit().unwrap();
            c
        });
        let v = s.spawn(move || {
            v.commit().unwrap();
            v
        });
        (c.join().unwrap(), v.join().unwrap())
    });
    assert_eq!((c["k"].version(), v.version()), (1, 1));
    let versions = thread::scope(|s| {
        let c = &c;
        let readers: Vec<_> = (0..2).map(|_| s.spawn(move || c["k"].version())).collect();
        readers
            .into_iter()
            .map(|r| r.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert_eq!(versions, [1, 1]);
    assert_eq!(
        store.dump(),
        [("k".to_string(), 1, Some(1)), ("v".to_string(), 1, Some(2))]
    );
}

// ---- Bad input ----

#[test]
fn duplicate_keys_in_using_are_merged() {
    let store: Store<&str, i64> = Store::new();
    let mut c = store.using(["b", "a", "b", "a", "a"]).unwrap();
    assert_eq!(
        (c.len(), c.keys().copied().collect::<Vec<_>>()),
        (2, vec!["a", "b"])
    );
    c["a"].set(1);
    c["b"].set(2);
    c.commit().unwrap();
    // Written once each: version 1, not one version per mention.
    assert_eq!(store.dump(), [("a", 1, Some(1)), ("b", 1, Some(2))]);
    let c = store.using(["a", "a"]).unwrap();
    assert_eq!(state(&c), [("a", 1, Some(1))]);
}

#[test]
fn empty_using_gives_an_empty_collection_that_commits() {
    let store: Store<&str, i64> = Store::new();
    put(&store, &[("a", 1)]);
    let mut c = store.using(Vec::new()).unwrap();
    assert!(c.is_empty());
    assert_eq!((c.len(), c.keys().count(), c.iter().count()), (0, 0, 0));
    assert!(c.get("a").is_none());
    c.commit().unwrap();
    put(&store, &[("a", 2)]);
    // It read nothing, so nothing can make it stale.
    c.commit().unwrap();
    assert_eq!(store.set_values(&mut c), Ok(()));
    assert_eq!(store.dump(), [("a", 2, Some(2))]);
}

#[test]
#[should_panic(expected = "key not in this Collection")]
fn indexing_a_key_not_in_the_collection_panics() {
    let store: Store<&str, i64> = Store::new();
    let c = store.using(["a", "b"]).unwrap();
    let _ = c["missing"].version();
}

#[test]
#[should_panic(expected = "key not in this Collection")]
fn mutably_indexing_a_key_not_in_the_collection_panics() {
    let store: Store<&str, i64> = Store::new();
    let mut c = store.using(["a", "b"]).unwrap();
    c["missing"].set(1);
}

#[test]
fn get_and_get_mut_find_keys_by_borrowed_form() {
    let store: Store<String, i64> = Store::new();
    let mut c = store.using(["b".to_string(), "a".to_string()]).unwrap();
    assert!(c.get("zz").is_none() && c.get_mut("zz").is_none());
    c.get_mut("b").unwrap().set(2);
    assert_eq!(c.get("b").unwrap().value(), Some(&2));
    assert_eq!(c["a"].key(), "a");
    c.commit().unwrap();
    assert_eq!(
        store.dump(),
        [("a".into(), 0, None), ("b".into(), 1, Some(2))]
    );
}

/// How a broken `Ord` behaves.
#[derive(Clone, Copy, Debug)]
enum Broken {
    /// Every key compares Equal to every other.
    AlwaysEqual,
    /// Comparisons answer at random.
    Random,
}

/// A key whose `Eq` and `Hash` are sound (the index relies on them) and whose `Ord` is not.
#[derive(Clone, Debug)]
struct BadKey(u32, Broken);

impl PartialEq for BadKey {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for BadKey {}
impl Hash for BadKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.0.hash(h);
    }
}
impl PartialOrd for BadKey {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for BadKey {
    fn cmp(&self, _: &Self) -> CmpOrdering {
        static SEED: AtomicU64 = AtomicU64::new(0x2545_F491_4F6C_DD1D);
        match self.1 {
            Broken::AlwaysEqual => CmpOrdering::Equal,
            Broken::Random => {
                let mut x = SEED.load(Ordering::Relaxed);
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                SEED.store(x, Ordering::Relaxed);
                [CmpOrdering::Less, CmpOrdering::Equal, CmpOrdering::Greater][(x % 3) as usize]
            }
        }
    }
}

/// Keys are matched by `Eq`/`Hash` and commits are ordered by slot, never by the user's `Ord`,
/// so a broken `Ord` must lose no key and no write. What it does change: the order of
/// `keys()`/`iter()`/`dump()` is unspecified. Lookups by key are checked on their own (below);
/// here handles are reached through `values_mut()` and recognised by `Value::key()`.
fn broken_ord_keeps_keys_and_commits(broken: Broken) {
    // More keys than the standard library's small-sort threshold, where its sort starts to
    // detect inconsistent orders.
    const KEYS: u32 = 40;
    const THREADS: u32 = 2;
    const TRANSFERS: u32 = 150 * SCALE as u32;
    let key = move |i: u32| BadKey(i, broken);
    let attempt = |what: &str, f: &mut dyn FnMut()| {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(f)) {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            panic!("{what} panicked with a broken Ord ({broken:?}): {msg}");
        }
    };
    let store: Arc<Store<BadKey, i64>> = Arc::new(Store::new());
    attempt("using", &mut || {
        let mut c = store.using((0..KEYS).chain(0..KEYS).map(key)).unwrap();
        assert_eq!(
            c.len(),
            KEYS as usize,
            "duplicates merged by Eq, not by Ord"
        );
        c.values_mut().for_each(|v| {
            let i = v.key().0;
            v.set(i as i64 * 10);
        });
        c.commit().unwrap();
    });
    // Concurrent transfers among the keys: the total is conserved, no write is lost.
    let start = Arc::new(Barrier::new(THREADS as usize));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (store, start) = (store.clone(), start.clone());
            thread::spawn(move || {
                let mut rng = XorShift::new(t as u64 + 40);
                let mut commits = 0u64;
                start.wait();
                for _ in 0..TRANSFERS {
                    let (from, to) = rng.pair(KEYS as u64);
                    loop {
                        let mut c = store.using([key(from as u32), key(to as u32)]).unwrap();
                        for v in c.values_mut() {
                            let x = *v.value().unwrap();
                            v.set(if v.key().0 as u64 == from {
                                x - 1
                            } else {
                                x + 1
                            });
                        }
                        match c.commit() {
                            Ok(()) => break,
                            Err(Error::ConcurrentUpdate) => continue,
                            Err(Error::BusyRetry) => panic!("BusyRetry"),
                        }
                    }
                    commits += 1;
                }
                commits
            })
        })
        .collect();
    let commits: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    attempt("dump", &mut || {
        let mut dump = store.dump();
        dump.sort_by_key(|(k, _, _)| k.0);
        assert_eq!(dump.len(), KEYS as usize);
        assert!(dump
            .iter()
            .enumerate()
            .all(|(i, (k, _, _))| k.0 == i as u32));
        let total: i64 = dump.iter().map(|(_, _, x)| x.unwrap()).sum();
        assert_eq!(total, (0..KEYS as i64).map(|i| i * 10).sum::<i64>());
        // One initial write per key, two writes per transfer.
        let versions: u64 = dump.iter().map(|(_, v, _)| v).sum();
        assert_eq!(versions, KEYS as u64 + 2 * commits);
    });
    // Every key is still found by usevar (the index uses Eq and Hash).
    for i in 0..KEYS {
        let v = store.usevar(key(i)).unwrap();
        assert_eq!(v.key().0, i);
        assert!(v.version() >= 1);
    }
}

#[test]
fn broken_ord_always_equal_keeps_keys_and_commits() {
    broken_ord_keeps_keys_and_commits(Broken::AlwaysEqual);
}

#[test]
fn broken_ord_random_keeps_keys_and_commits() {
    broken_ord_keeps_keys_and_commits(Broken::Random);
}

/// `get` and indexing find a key's own handle, and no handle for a key not in the collection,
/// even with a broken `Ord` (the key is there by `Eq`, whatever a binary search by `Ord` says).
fn broken_ord_lookup_finds_the_right_handle(broken: Broken) {
    const KEYS: u32 = 40;
    let store: Store<BadKey, i64> = Store::new();
    let mut c = store.using((0..KEYS).map(|i| BadKey(i, broken))).unwrap();
    let mut wrong = Vec::new();
    for i in 0..KEYS + 5 {
        let k = BadKey(i, broken);
        let found = c.get(&k).map(|v| v.key().0);
        let expected = (i < KEYS).then_some(i);
        if found != expected || c.get_mut(&k).map(|v| v.key().0) != expected {
            wrong.push((i, found));
        }
    }
    assert!(
        wrong.is_empty(),
        "{broken:?}: (key, handle found) {wrong:?}"
    );
    for i in 0..KEYS {
        c[&BadKey(i, broken)].set(i as i64);
    }
    c.commit().unwrap();
    let mut dump = store.dump();
    dump.sort_by_key(|(k, _, _)| k.0);
    assert!(dump
        .iter()
        .all(|(k, v, x)| (*v, *x) == (1, Some(k.0 as i64))));
}

#[test]
fn broken_ord_always_equal_lookup_finds_the_right_handle() {
    broken_ord_lookup_finds_the_right_handle(Broken::AlwaysEqual);
}

#[test]
fn broken_ord_random_lookup_finds_the_right_handle() {
    broken_ord_lookup_finds_the_right_handle(Broken::Random);
}

/// A value whose `clone` panics while its flag is set.
#[derive(Debug)]
struct CloneBomb(Arc<AtomicBool>);

impl Clone for CloneBomb {
    fn clone(&self) -> Self {
        assert!(!self.0.load(Ordering::SeqCst), "CloneBomb went off");
        CloneBomb(self.0.clone())
    }
}

#[test]
fn p9_a_dump_that_panics_leaves_key_creation_unharmed() {
    // `dump` asks key creators for help while it runs; if its own `V::clone` panics, the request
    // must go down with it. Catches: a request left up, which every later key creation would
    // serve by cloning the same value, and panic in its turn.
    let armed = Arc::new(AtomicBool::new(false));
    let store: Store<u64, CloneBomb> = Store::new();
    let mut v = store.usevar(1).unwrap();
    v.set(CloneBomb(armed.clone()));
    v.commit().unwrap();
    armed.store(true, Ordering::SeqCst);
    let dumped = catch_unwind(AssertUnwindSafe(|| store.dump()));
    assert!(dumped.is_err(), "the dump cloned the armed value");
    for key in 2..6 {
        let created = catch_unwind(AssertUnwindSafe(|| store.usevar(key).map(|v| v.version())));
        assert!(
            matches!(created, Ok(Ok(0))),
            "creating key {key} panicked or failed"
        );
    }
    armed.store(false, Ordering::SeqCst);
    assert_eq!(store.dump().len(), 5);
}
