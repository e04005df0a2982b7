//! Memory (contract point 9) and panics: values count their creations and drops (each test
//! has its own counters, so tests running in parallel do not mix), and
//! - once the store and every handle are gone, every value ever created was dropped, whatever
//!   ran before: contended commits, failed commits, snapshots, stalled-then-dropped commits;
//! - while the store lives, a write frees the value it replaced (once no handle holds it),
//!   and the store keeps one value per key;
//! - a panic in user code (between read and commit, or in a value's `Drop` run by a commit)
//!   leaves nothing claimed: other handles commit normally afterwards.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use common::{Counts, Tracked, XorShift, SCALE};
use stm_store::{Error, Store};

type TrackedStore = Store<u32, Tracked>;

/// The tag of each key's value, by `using` (no clones), in key order.
fn tags(store: &TrackedStore, keys: impl IntoIterator<Item = u32>) -> Vec<Option<u64>> {
    let c = store.using(keys).unwrap();
    c.iter().map(|(_, v)| v.value().map(|t| t.tag)).collect()
}

/// With every handle gone: each key keeps its latest value, plus at most one more (the
/// transient state of its last commit, e.g. a decided claim left for the next writer).
fn assert_at_most_transient(counts: &Counts, store: &TrackedStore, keys: u32) {
    let holding = tags(store, 0..keys).iter().filter(|t| t.is_some()).count();
    let live = counts.live();
    assert!(
        holding <= live && live <= holding + keys as usize,
        "{live} values alive for {holding} keys holding one"
    );
}

/// Writes every key of `0..keys` twice more (single-key commits, values tagged `tag` and
/// `tag + 1`): afterwards, by "freed no later than the key's next write", only those values
/// may be alive.
fn assert_older_values_freed_by_two_writes(
    counts: &Arc<Counts>,
    store: &TrackedStore,
    keys: u32,
    tag: u64,
) {
    for t in [tag, tag + 1] {
        for k in 0..keys {
            let mut v = store.usevar(k).unwrap();
            v.set(Tracked::new(counts, t, 0));
            v.commit().unwrap();
        }
    }
    let recent = counts.live_tag(tag) + counts.live_tag(tag + 1);
    assert_eq!(counts.live() as isize, recent, "older values still alive");
    assert!(counts.live_tag(tag + 1) == keys as isize);
}

#[test]
fn everything_is_freed_after_a_single_threaded_workload() {
    let counts = Counts::new();
    let mut tag = 0;
    let mut t = |n: i64| {
        tag += 1;
        Tracked::new(&counts, tag, n)
    };
    let store: TrackedStore = Store::new();
    for round in 0..20 {
        // Multi-key writes, a clear, and a read-only key.
        let mut c = store.using([0, 1, 2, 3]).unwrap();
        c[&0].set(t(round));
        c[&1].set(t(round));
        if round % 3 == 0 {
            c[&2].clear();
        } else {
            c[&2].set(t(round));
        }
        let mut stale = store.using([1, 2]).unwrap();
        stale[&1].set(t(-1));
        c.commit().unwrap();
        // A failed commit, a failed single-key commit, a validation.
        assert_eq!(stale.commit(), Err(Error::ConcurrentUpdate));
        let mut single = store.usevar(3).unwrap();
        single.set(t(round));
        let mut loser = store.usevar(3).unwrap();
        loser.set(t(-1));
        single.commit().unwrap();
        assert_eq!(loser.commit(), Err(Error::ConcurrentUpdate));
        assert_eq!(store.usevar(0).unwrap().commit(), Ok(()));
        // Snapshots, the cloning one included.
        let dump = store.dump();
        assert_eq!(dump.len(), 4);
        let _ = format!("{store:?}");
    }
    // With every handle gone, the store keeps the latest value of each key and at most the
    // transient state of its last commit (one more value per key).
    assert_at_most_transient(&counts, &store, 4);
    drop(store);
    counts.assert_all_dropped();
}

#[test]
fn an_old_value_is_freed_no_later_than_the_next_write() {
    // Key 0 is written again and again through every path; key 1 is only read, by the
    // multi-key commits. Write n stores value n on key 0 (a clear stores none).
    let counts = Counts::new();
    let t = |tag: u64| Tracked::new(&counts, tag, 0);
    let store: TrackedStore = Store::new();
    let mut c = store.using([0, 1]).unwrap();
    c[&1].set(t(1_000));
    c.commit().unwrap();
    drop(c);
    for n in 1..=20u64 {
        match n % 4 {
            0 => {
                let mut v = store.usevar(0).unwrap();
                v.set(t(n));
                v.commit().unwrap();
            }
            1 | 2 => {
                let mut c = store.using([0, 1]).unwrap();
                c[&0].set(t(n));
                c.commit().unwrap();
            }
            _ => {
                let mut c = store.using([1, 0]).unwrap();
                c[&0].clear();
                c.commit().unwrap();
            }
        }
        // Value n - 1 may be the transient state of write n; older ones must be gone.
        for old in 1..n.saturating_sub(1) {
            assert_eq!(counts.live_tag(old), 0, "value {old} alive after write {n}");
        }
        assert_eq!(
            counts.live_tag(1_000),
            1,
            "the key only read keeps its one value"
        );
    }
    // A handle holding an old value keeps it alive until the handle goes.
    let holder = store.usevar(1).unwrap();
    for n in [2_000, 2_001, 2_002] {
        let mut c = store.using([0, 1]).unwrap();
        c[&1].set(t(n));
        c.commit().unwrap();
    }
    assert_eq!(counts.live_tag(1_000), 1);
    drop(holder);
    assert_eq!(counts.live_tag(1_000), 0);
    assert_eq!(counts.live_tag(2_000), 0);
    assert_at_most_transient(&counts, &store, 2);
    drop(store);
    counts.assert_all_dropped();
}

#[test]
fn everything_is_freed_after_contended_commits_and_snapshots() {
    const THREADS: u64 = 3;
    const OPS: u64 = 400 * SCALE;
    const KEYS: u32 = 4;
    let counts = Counts::new();
    let store: Arc<TrackedStore> = Arc::new(Store::new());
    let start = Arc::new(Barrier::new(THREADS as usize));
    let threads: Vec<_> = (0..THREADS)
        .map(|th| {
            let (store, start, counts) = (store.clone(), start.clone(), counts.clone());
            thread::spawn(move || {
                let mut rng = XorShift::new(th + 11);
                let (mut ok, mut failed) = (0, 0);
                start.wait();
                for i in 0..OPS {
                    let tag = th * 1_000_000 + i;
                    let result = match rng.below(4) {
                        0 => {
                            let mut v = store.usevar(rng.below(KEYS as u64) as u32).unwrap();
                            v.set(Tracked::new(&counts, tag, 0));
                            v.commit()
                        }
                        1 | 2 => {
                            let (a, b) = rng.pair(KEYS as u64);
                            let mut c = store.using([a as u32, b as u32]).unwrap();
                            c[&(a as u32)].set(Tracked::new(&counts, tag, 0));
                            if rng.below(2) == 0 {
                                c[&(b as u32)].clear();
                            }
                            c.commit()
                        }
                        _ => {
                            let mut c = store.using(0..KEYS).unwrap();
                            let _ = store.dump();
                            c.commit()
                        }
                    };
                    match result {
                        Ok(()) => ok += 1,
                        Err(Error::ConcurrentUpdate) => failed += 1,
                        Err(Error::BusyRetry) => panic!("BusyRetry"),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(results.iter().all(|&(ok, _)| ok > 0), "{results:?}");
    // Handles are gone: the store keeps the latest values and transient states only, and two
    // more writes per key free everything older.
    assert_at_most_transient(&counts, &store, KEYS);
    assert_older_values_freed_by_two_writes(&counts, &store, KEYS, u64::MAX - 1);
    drop(store);
    counts.assert_all_dropped();
}

#[cfg(feature = "test-hooks")]
#[test]
fn everything_is_freed_after_stalled_commits() {
    let counts = Counts::new();
    let t = |tag: u64| Tracked::new(&counts, tag, 0);
    let store: TrackedStore = Store::new();
    let mut c = store.using([0, 1, 2]).unwrap();
    c.values_mut().for_each(|v| v.set(t(0)));
    c.commit().unwrap();
    drop(c);
    for claims in 0..=3 {
        // Stalled, then dropped.
        let mut c = store.using([0, 1, 2]).unwrap();
        c[&0].set(t(1));
        c[&2].set(t(1));
        drop(c.commit_paused(claims));
        drop(c);
        // Stalled, finished by another commit, then resumed.
        let mut c = store.using([0, 1, 2]).unwrap();
        c[&0].set(t(2));
        c[&1].set(t(2));
        let paused = c.commit_paused(claims);
        let mut other = store.usevar(2).unwrap();
        other.set(t(3));
        other.commit().unwrap();
        drop(other);
        let _ = paused.resume();
        drop(c);
        // Stalled, finished by another commit, then dropped.
        let mut c = store.using([0, 1]).unwrap();
        c[&0].set(t(4));
        let paused = c.commit_paused(claims.min(2));
        let mut other = store.using([0, 1]).unwrap();
        other[&1].set(t(5));
        let _ = other.commit();
        drop(other);
        drop(paused);
        drop(c);
        assert_at_most_transient(&counts, &store, 3);
    }
    assert_older_values_freed_by_two_writes(&counts, &store, 3, 1_000);
    drop(store);
    counts.assert_all_dropped();
}

/// A store whose keys 0 and 1 hold values tagged 1 and 2, at version 1.
fn keys_0_and_1_tagged_1_and_2(counts: &Arc<Counts>) -> TrackedStore {
    let store: TrackedStore = Store::new();
    let mut c = store.using([0, 1]).unwrap();
    c[&0].set(Tracked::new(counts, 1, 0));
    c[&1].set(Tracked::new(counts, 2, 0));
    c.commit().unwrap();
    store
}

#[test]
fn a_panic_between_read_and_commit_leaves_nothing_claimed() {
    let counts = Counts::new();
    let store = keys_0_and_1_tagged_1_and_2(&counts);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut c = store.using([0, 1]).unwrap();
        c[&0].set(Tracked::new(&counts, 3, 0));
        panic!("user code failed between read and commit");
    }));
    assert!(outcome.is_err());
    assert_eq!(tags(&store, [0, 1]), [Some(1), Some(2)]);
    assert_eq!(
        counts.live_tag(3),
        0,
        "the pending value went with its handle"
    );
    // Other handles commit at once, single- and multi-key.
    let mut v = store.usevar(0).unwrap();
    v.set(Tracked::new(&counts, 4, 0));
    assert_eq!(v.commit(), Ok(()));
    let mut c = store.using([0, 1]).unwrap();
    c[&1].set(Tracked::new(&counts, 5, 0));
    assert_eq!(c.commit(), Ok(()));
    drop((v, c));
    assert_eq!(tags(&store, [0, 1]), [Some(4), Some(5)]);
    drop(store);
    counts.assert_all_dropped();
}

#[cfg(feature = "test-hooks")]
#[test]
fn a_panic_while_a_commit_is_stalled_leaves_nothing_claimed() {
    let counts = Counts::new();
    let store = keys_0_and_1_tagged_1_and_2(&counts);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut c = store.using([0, 1]).unwrap();
        c[&0].set(Tracked::new(&counts, 3, 0));
        c[&1].set(Tracked::new(&counts, 3, 0));
        let _paused = c.commit_paused(1);
        panic!("user code failed with a commit half done");
    }));
    assert!(outcome.is_err());
    // Unwinding dropped the stalled commit: aborted, nothing written, nothing claimed (its
    // claim on key 0 may stay, decided, until the next write of key 0).
    assert_eq!(tags(&store, [0, 1]), [Some(1), Some(2)]);
    assert!(counts.live_tag(3) <= 1);
    let mut c = store.using([0, 1]).unwrap();
    c[&0].set(Tracked::new(&counts, 4, 0));
    assert_eq!(c.commit(), Ok(()));
    assert_eq!((c[&0].version(), c[&1].version()), (2, 1));
    drop(c);
    assert_eq!(counts.live_tag(3), 0);
    drop(store);
    counts.assert_all_dropped();
}

/// A value whose `Drop` panics if its fuse was lit (a value of its own, so that at most one
/// drop panics per unwinding).
struct Bomb {
    tracked: Tracked,
    fuse: AtomicBool,
}

impl Drop for Bomb {
    fn drop(&mut self) {
        if self.fuse.load(Ordering::SeqCst) {
            panic!("value {} panicked in drop", self.tracked.tag);
        }
    }
}

/// How a commit in the panicking-drop test writes.
#[derive(Clone, Copy, Debug)]
enum Path {
    /// One key, nothing else read.
    Single,
    /// Keys 0 and 1 written together.
    Both,
    /// Key 0 written, key 1 only read.
    ReadOne,
}

#[test]
fn a_panicking_drop_during_a_commit_leaves_the_store_consistent() {
    // Key 0 holds a value whose drop panics. Commits replace it until it is dropped (by the
    // commit that replaced it, or by the next one, if the replaced value lingered as transient
    // state), each inside catch_unwind. Whichever commit panicked, it landed whole or not at all,
    // and afterwards nothing is claimed: new commits on those keys succeed at the first try.
    // Keys 0 and 1 are only ever written together or key 0 alone, so key 1's version tells
    // how many "Both" commits landed.
    let paths = [Path::Single, Path::Both, Path::ReadOne];
    for first in paths {
        for then in paths {
            let counts = Counts::new();
            let bomb = |tag: u64| Bomb {
                tracked: Tracked::new(&counts, tag, 0),
                fuse: AtomicBool::new(false),
            };
            let store: Store<u32, Bomb> = Store::new();
            let state = || -> Vec<(u64, Option<u64>)> {
                let c = store.using([0, 1]).unwrap();
                c.iter()
                    .map(|(_, v)| (v.version(), v.value().map(|b| b.tracked.tag)))
                    .collect()
            };
            // Returns whether the commit landed (a panic counts as not known: None).
            let write = |path: Path, tag: u64| -> Option<bool> {
                catch_unwind(AssertUnwindSafe(|| match path {
                    Path::Single => {
                        let mut v = store.usevar(0).unwrap();
                        v.set(bomb(tag));
                        v.commit() == Ok(())
                    }
                    Path::Both | Path::ReadOne => {
                        let mut c = store.using([0, 1]).unwrap();
                        c[&0].set(bomb(tag));
                        if let Path::Both = path {
                            c[&1].set(bomb(tag));
                        }
                        c.commit() == Ok(())
                    }
                }))
                .ok()
            };
            assert_eq!(write(Path::Both, 1), Some(true));
            let fused = store.usevar(0).unwrap();
            fused.value().unwrap().fuse.store(true, Ordering::SeqCst);
            drop(fused);

            let mut expected = state();
            let mut panicked = false;
            for (i, path) in [first, then].into_iter().enumerate() {
                let tag = 10 + i as u64;
                let before = state();
                let outcome = write(path, tag);
                let after = state();
                let landed = match path {
                    Path::Both => vec![(before[0].0 + 1, Some(tag)), (before[1].0 + 1, Some(tag))],
                    Path::Single | Path::ReadOne => vec![(before[0].0 + 1, Some(tag)), before[1]],
                };
                match outcome {
                    Some(true) => assert_eq!(after, landed),
                    Some(false) => panic!("{path:?}: ConcurrentUpdate with no other writer"),
                    None => {
                        assert!(!panicked, "the value panicked twice");
                        panicked = true;
                        assert!(
                            after == before || after == landed,
                            "{path:?}: torn: {before:?} -> {after:?}"
                        );
                    }
                }
                expected = after;
            }
            assert!(
                panicked,
                "{first:?} then {then:?}: the replaced value was never dropped"
            );

            // Nothing stays claimed: both kinds of commit land at the first try.
            assert_eq!(write(Path::Single, 20), Some(true));
            assert_eq!(write(Path::Both, 21), Some(true));
            let (v0, v1) = (expected[0].0, expected[1].0);
            assert_eq!(state(), [(v0 + 2, Some(21)), (v1 + 1, Some(21))]);
            drop(store);
            counts.assert_all_dropped();
        }
    }
}
