//! Memory (contract point 9) and panics: values count their creations, clones and drops (each
//! test has its own counters, so tests running in parallel do not mix), and
//! - once the store and every handle are gone, every copy of every value was dropped exactly
//!   once, whatever ran before: contended commits, failed commits, snapshots, stalled-then-dropped
//!   commits, drops that panic;
//! - while the store lives, a replaced value is freed by deferred reclamation: once the epoch has
//!   moved on (`Counts::settle_to` flushes it, bounded), the store keeps exactly one copy of each
//!   key's latest value, and handles keep their own copies;
//! - a panic in user code (between read and commit, or in a value's `Drop`, run by a handle or
//!   by reclamation) leaves nothing claimed: other handles commit normally afterwards.

mod common;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use common::{quiet_planned_panics, Counts, Tracked, XorShift, SCALE};
use stm_store::{Error, Store};

type TrackedStore = Store<u32, Tracked>;

/// The tag of each key's value, in key order.
fn tags(store: &TrackedStore, keys: impl IntoIterator<Item = u32>) -> Vec<Option<u64>> {
    let c = store.using(keys).unwrap();
    c.iter().map(|(_, v)| v.value().map(|t| t.tag)).collect()
}

/// `(tag, copies)` for a list of tags (a tag may repeat).
fn copies(tags: impl IntoIterator<Item = u64>) -> Vec<(u64, isize)> {
    let mut map = BTreeMap::new();
    for tag in tags {
        *map.entry(tag).or_insert(0) += 1;
    }
    map.into_iter().collect()
}

/// With every handle gone and the epoch moved on: exactly one copy of each key's latest value is
/// alive (the store's), and nothing else. Catches a replaced value, an aborted commit's value or
/// a dump's copy that is never freed, and a value dropped twice.
#[track_caller]
fn assert_only_latest_values(counts: &Counts, store: &TrackedStore, keys: u32) {
    let latest = tags(store, 0..keys).into_iter().flatten();
    counts.settle_to(&copies(latest));
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
    // With every handle gone, the store keeps the latest value of each key, once.
    assert_only_latest_values(&counts, &store, 4);
    drop(store);
    counts.assert_all_dropped();
}

#[test]
fn an_old_value_is_freed_once_the_epoch_moves_on() {
    // Key 0 is written again and again through every path; key 1 is only read, by the
    // multi-key commits. Write n stores value n on key 0 (a clear stores none). After each
    // write, once the epoch has moved on, the only values alive are the latest of each key.
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
        let latest = (n % 4 != 3).then_some(n);
        counts.settle_to(&copies(latest.into_iter().chain([1_000])));
    }
    // A handle's copy of an old value lives until the handle goes; the store's copy goes with
    // the write that replaced it.
    let holder = store.usevar(1).unwrap();
    for n in [2_000, 2_001, 2_002] {
        let mut c = store.using([0, 1]).unwrap();
        c[&1].set(t(n));
        c.commit().unwrap();
    }
    counts.settle_to(&[(20, 1), (1_000, 1), (2_002, 1)]);
    drop(holder);
    counts.settle_to(&[(20, 1), (2_002, 1)]);
    assert_only_latest_values(&counts, &store, 2);
    drop(store);
    counts.assert_all_dropped();
}

#[test]
fn a_multi_key_commit_frees_what_it_replaced_without_another_write() {
    // Keys 0 and 1 are written together, several times, then never touched again: the records
    // each commit replaced must be freed by reclamation alone. Catches replaced records that
    // are retired only when the key is written next (v1 freed an old value "no later than the
    // key's next write"), a decided claim left in its slot that keeps its `before` record alive,
    // and a descriptor that keeps its `after` copies after it committed.
    let counts = Counts::new();
    let t = |tag: u64| Tracked::new(&counts, tag, 0);
    let store: TrackedStore = Store::new();
    let mut reader = None;
    for round in 1..=5u64 {
        let mut c = store.using([0, 1]).unwrap();
        c[&0].set(t(round));
        c[&1].set(t(100 + round));
        c.commit().unwrap();
        if round == 3 {
            // A handle that read round 3 keeps its copies, whatever follows.
            reader = Some(store.using([0, 1]).unwrap());
        }
    }
    // One more round through a commit that writes key 0 and only reads key 1, and one that
    // clears key 0, both kept alive: a committed handle holds its written value (the store
    // holds its own copy).
    let mut read_one = store.using([0, 1]).unwrap();
    read_one[&0].set(t(6));
    read_one.commit().unwrap();
    let mut clear = store.using([1, 0]).unwrap();
    clear[&0].clear();
    clear.commit().unwrap();
    let mut last = store.using([0, 1]).unwrap();
    last[&0].set(t(7));
    last[&1].set(t(107));
    last.commit().unwrap();
    // Alive: the store's 7 and 107 and `last`'s own; `reader`'s 3 and 103; `read_one`'s 6
    // (written) and 105 (read); `clear`'s 105 (read; its key 0 holds no value).
    counts.settle_to(&[(3, 1), (6, 1), (7, 2), (103, 1), (105, 2), (107, 2)]);
    drop((reader, read_one, clear));
    counts.settle_to(&[(7, 2), (107, 2)]);
    drop(last);
    counts.settle_to(&[(7, 1), (107, 1)]);
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
    // Handles are gone: the store keeps the latest values only, once the epoch moves on.
    assert_only_latest_values(&counts, &store, KEYS);
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
        assert_only_latest_values(&counts, &store, 3);
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
        assert_only_latest_values(&counts, &store, 3);
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
        assert_only_latest_values(&counts, &store, 3);
    }
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
    drop(c);
    store
}

#[test]
fn a_panic_between_read_and_commit_leaves_nothing_claimed() {
    quiet_planned_panics();
    let counts = Counts::new();
    let store = keys_0_and_1_tagged_1_and_2(&counts);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut c = store.using([0, 1]).unwrap();
        c[&0].set(Tracked::new(&counts, 3, 0));
        panic!("PLANNED: user code failed between read and commit");
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
    assert_only_latest_values(&counts, &store, 2);
    drop(store);
    counts.assert_all_dropped();
}

#[cfg(feature = "test-hooks")]
#[test]
fn a_panic_while_a_commit_is_stalled_leaves_nothing_claimed() {
    quiet_planned_panics();
    let counts = Counts::new();
    let store = keys_0_and_1_tagged_1_and_2(&counts);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut c = store.using([0, 1]).unwrap();
        c[&0].set(Tracked::new(&counts, 3, 0));
        c[&1].set(Tracked::new(&counts, 3, 0));
        let _paused = c.commit_paused(1);
        panic!("PLANNED: user code failed with a commit half done");
    }));
    assert!(outcome.is_err());
    // Unwinding dropped the stalled commit: aborted, nothing written, nothing claimed; its
    // copies of the pending values are freed by reclamation, the handles' with the handles.
    assert_eq!(tags(&store, [0, 1]), [Some(1), Some(2)]);
    counts.settle_to(&[(1, 1), (2, 1)]);
    let mut c = store.using([0, 1]).unwrap();
    c[&0].set(Tracked::new(&counts, 4, 0));
    assert_eq!(c.commit(), Ok(()));
    assert_eq!((c[&0].version(), c[&1].version()), (2, 1));
    drop(c);
    assert_only_latest_values(&counts, &store, 2);
    drop(store);
    counts.assert_all_dropped();
}

/// What the panicking-drop tests share: how many armed drops ran, and whether the next clone is
/// armed.
#[derive(Default)]
struct Fuse {
    /// Arms the next clone of any value sharing this fuse (then disarms itself).
    arm_next_clone: AtomicBool,
    /// Armed drops that ran (each panicked, unless the thread was already unwinding).
    fired: AtomicUsize,
}

/// A value whose drop panics if this copy is armed: armed by hand (`armed`), or because it is
/// the first clone made after `fuse.arm_next_clone` was set. A commit clones its handle's
/// pending value into the store exactly once, so arming the next clone before a commit arms the
/// store's own copy. Never panics while the thread is already unwinding (that would abort).
struct Bomb {
    tracked: Tracked,
    armed: AtomicBool,
    fuse: Arc<Fuse>,
}

impl Bomb {
    fn new(counts: &Arc<Counts>, tag: u64, fuse: &Arc<Fuse>) -> Self {
        Bomb {
            tracked: Tracked::new(counts, tag, 0),
            armed: AtomicBool::new(false),
            fuse: Arc::clone(fuse),
        }
    }
}

impl Clone for Bomb {
    fn clone(&self) -> Self {
        Bomb {
            tracked: self.tracked.clone(),
            armed: AtomicBool::new(self.fuse.arm_next_clone.swap(false, Ordering::SeqCst)),
            fuse: Arc::clone(&self.fuse),
        }
    }
}

impl Drop for Bomb {
    fn drop(&mut self) {
        if self.armed.load(Ordering::SeqCst) {
            self.fuse.fired.fetch_add(1, Ordering::SeqCst);
            if !thread::panicking() {
                // Unwinding from here still drops `tracked`: its count stays right.
                panic!("PLANNED: value {} panicked in drop", self.tracked.tag);
            }
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

/// Whose copy of key 0's value panics when dropped.
#[derive(Clone, Copy, Debug)]
enum Armed {
    /// The store's: its drop runs in reclamation, after a commit replaced it, in whichever
    /// thread collects; the store catches and discards the panic.
    Store,
    /// The committing handle's copy of what it read: dropped by the commit that replaces it
    /// in the handle (after the commit landed), in the committing thread.
    Handle,
}

#[test]
fn a_panicking_drop_leaves_the_store_consistent() {
    // Key 0 holds a value one copy of which panics when dropped. A commit through each path
    // replaces key 0, inside catch_unwind. Whatever panicked, the commit landed whole or not at
    // all; the armed copy was dropped exactly once; afterwards nothing is claimed (new commits
    // on those keys succeed at the first try) and every copy of every value is freed. Keys 0
    // and 1 are only ever written together or key 0 alone. Catches: a panic in reclamation that
    // escapes into a store call or a user's epoch flush (then `settle` panics), that stops the
    // reclamation of the values retired with it, or that loses a commit; and a handle-side panic
    // that leaves a key claimed or half a commit written.
    quiet_planned_panics();
    let paths = [Path::Single, Path::Both, Path::ReadOne];
    for armed in [Armed::Store, Armed::Handle] {
        for path in paths {
            let counts = Counts::new();
            let fuse = Arc::new(Fuse::default());
            let bomb = |tag: u64| Bomb::new(&counts, tag, &fuse);
            let store: Store<u32, Bomb> = Store::new();
            let state = || -> Vec<(u64, Option<u64>)> {
                let c = store.using([0, 1]).unwrap();
                c.iter()
                    .map(|(_, v)| (v.version(), v.value().map(|b| b.tracked.tag)))
                    .collect()
            };
            // Writes value `tag` through `path`; returns whether the commit landed (None: it
            // panicked). `arm_store` arms the store's copy of key 0's new value (the clone the
            // commit makes); `arm_read`, the handle's copy of key 0's old value.
            let write = |path: Path, tag: u64, arm_store: bool, arm_read: bool| -> Option<bool> {
                catch_unwind(AssertUnwindSafe(|| match path {
                    Path::Single => {
                        let mut v = store.usevar(0).unwrap();
                        if arm_read {
                            v.value().unwrap().armed.store(true, Ordering::SeqCst);
                        }
                        v.set(bomb(tag));
                        fuse.arm_next_clone.store(arm_store, Ordering::SeqCst);
                        v.commit() == Ok(())
                    }
                    Path::Both | Path::ReadOne => {
                        let mut c = store.using([0, 1]).unwrap();
                        if arm_read {
                            c[&0].value().unwrap().armed.store(true, Ordering::SeqCst);
                        }
                        c[&0].set(bomb(tag));
                        if let Path::Both = path {
                            c[&1].set(bomb(tag));
                        }
                        assert!(
                            !arm_store,
                            "arming the store's copy goes by the single path"
                        );
                        c.commit() == Ok(())
                    }
                }))
                .ok()
            };
            assert_eq!(write(Path::Both, 1, false, false), Some(true));
            let before = state();
            let landed = match path {
                Path::Both => vec![(before[0].0 + 1, Some(10)), (before[1].0 + 1, Some(10))],
                Path::Single | Path::ReadOne => vec![(before[0].0 + 1, Some(10)), before[1]],
            };
            match armed {
                Armed::Store => {
                    // Rewrite key 0 with the store's copy armed, then replace it.
                    assert_eq!(write(Path::Single, 2, true, false), Some(true));
                    assert!(
                        !fuse.arm_next_clone.load(Ordering::SeqCst),
                        "no clone armed"
                    );
                    let before = state();
                    let landed = match path {
                        Path::Both => {
                            vec![(before[0].0 + 1, Some(10)), (before[1].0 + 1, Some(10))]
                        }
                        Path::Single | Path::ReadOne => {
                            vec![(before[0].0 + 1, Some(10)), before[1]]
                        }
                    };
                    assert_eq!(write(path, 10, false, false), Some(true), "{path:?}");
                    assert_eq!(state(), landed, "{armed:?} {path:?}");
                    // The replaced copy is dropped by reclamation: its panic stays inside.
                    assert!(
                        common::settle(|| fuse.fired.load(Ordering::SeqCst) > 0),
                        "{armed:?} {path:?}: the replaced value was never dropped"
                    );
                }
                Armed::Handle => {
                    let outcome = write(path, 10, false, true);
                    let after = state();
                    match outcome {
                        Some(true) => assert_eq!(after, landed, "{path:?}"),
                        Some(false) => panic!("{path:?}: ConcurrentUpdate with no other writer"),
                        None => assert!(
                            after == before || after == landed,
                            "{path:?}: torn: {before:?} -> {after:?}"
                        ),
                    }
                    assert_eq!(fuse.fired.load(Ordering::SeqCst), 1, "{path:?}");
                }
            }
            assert_eq!(fuse.fired.load(Ordering::SeqCst), 1, "{armed:?} {path:?}");

            // Nothing stays claimed: both kinds of commit land at the first try.
            let (v0, v1) = {
                let now = state();
                (now[0].0, now[1].0)
            };
            assert_eq!(write(Path::Single, 20, false, false), Some(true));
            assert_eq!(write(Path::Both, 21, false, false), Some(true));
            assert_eq!(state(), [(v0 + 2, Some(21)), (v1 + 1, Some(21))]);
            counts.settle_to(&[(21, 2)]);
            drop(store);
            counts.assert_all_dropped();
            assert_eq!(fuse.fired.load(Ordering::SeqCst), 1, "{armed:?} {path:?}");
        }
    }
}

/// A value whose every copy panics when dropped, if it was made flagged (unless the thread is
/// already unwinding). `n` is an amount of money, for a conserved total.
struct Flagged {
    tracked: Tracked,
    flagged: bool,
    fired: Arc<AtomicUsize>,
}

impl Clone for Flagged {
    fn clone(&self) -> Self {
        Flagged {
            tracked: self.tracked.clone(),
            flagged: self.flagged,
            fired: Arc::clone(&self.fired),
        }
    }
}

impl Drop for Flagged {
    fn drop(&mut self) {
        if self.flagged {
            self.fired.fetch_add(1, Ordering::SeqCst);
            if !thread::panicking() {
                panic!(
                    "PLANNED: flagged value {} panicked in drop",
                    self.tracked.tag
                );
            }
        }
    }
}

#[test]
fn panicking_drops_under_concurrency_leak_nothing_else() {
    // Several threads move money between keys (multi-key commits), rewrite keys (single-key
    // commits), fail stale commits and audit the total with `using` and `dump`, while one value
    // in eight panics in every copy's drop: in reclamation (caught by the store), in a handle
    // dropped by user code, in a commit that drops its handle's old copy or its unused record.
    // Every operation runs inside catch_unwind. Afterwards the total is conserved in every
    // audit, every key commits at the first try (nothing claimed), and once the store is dropped
    // and the epoch flushed, every copy of every value was dropped exactly once, the panicking
    // ones included (their `Tracked` field drops during the unwinding). Catches: a panicking drop
    // in reclamation that leaks the rest of its batch or escapes into another call, a panic in
    // a store call that leaves a key claimed, writes half a commit, or leaks a record.
    quiet_planned_panics();
    const THREADS: u64 = 3;
    const OPS: u64 = 300 * SCALE;
    const KEYS: u32 = 6;
    const START: i64 = 1_000;
    let counts = Counts::new();
    let fired = Arc::new(AtomicUsize::new(0));
    let value = |tag: u64, n: i64| Flagged {
        tracked: Tracked::new(&counts, tag, n),
        flagged: tag % 8 == 5,
        fired: Arc::clone(&fired),
    };
    let store: Store<u32, Flagged> = Store::new();
    let mut all = store.using(0..KEYS).unwrap();
    for k in 0..KEYS {
        // Tags 0, 8, 16, ...: not flagged (this thread drops them, outside catch_unwind).
        all[&k].set(value(8 * u64::from(k), START));
    }
    all.commit().unwrap();
    drop(all);

    // Sums the money of `rows`, then drops them (maybe panicking, after the sum is known).
    let total = |rows: Vec<Option<i64>>| rows.into_iter().map(|n| n.unwrap()).sum::<i64>();
    let start = Barrier::new(THREADS as usize);
    let audits: Vec<Vec<i64>> = thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|th| {
                let (store, start, value) = (&store, &start, &value);
                scope.spawn(move || {
                    let mut rng = XorShift::new(th + 77);
                    let mut audits = Vec::new();
                    start.wait();
                    for i in 0..OPS {
                        let tag = (th + 1) * 1_000_000 + i;
                        let op = rng.below(5);
                        let (a, b) = rng.pair(u64::from(KEYS));
                        let (a, b) = (a as u32, b as u32);
                        let outcome = catch_unwind(AssertUnwindSafe(|| match op {
                            0 | 1 => {
                                // A transfer, retried until it lands or panics.
                                loop {
                                    let mut c = store.using([a, b]).unwrap();
                                    let x = c[&a].value().unwrap().tracked.n;
                                    let y = c[&b].value().unwrap().tracked.n;
                                    c[&a].set(value(tag, x - 1));
                                    c[&b].set(value(tag, y + 1));
                                    match c.commit() {
                                        Ok(()) => return None,
                                        Err(Error::ConcurrentUpdate) => continue,
                                        Err(Error::BusyRetry) => panic!("BusyRetry"),
                                    }
                                }
                            }
                            2 => {
                                // Rewrite a key with the same amount (a fresh value).
                                let mut v = store.usevar(a).unwrap();
                                let x = v.value().unwrap().tracked.n;
                                v.set(value(tag, x));
                                let _ = v.commit();
                                None
                            }
                            3 => {
                                // A stale commit: fails, and drops its copies.
                                let mut stale = store.using([a, b]).unwrap();
                                let mut v = store.usevar(a).unwrap();
                                let x = v.value().unwrap().tracked.n;
                                v.set(value(tag, x));
                                let _ = v.commit();
                                stale[&a].set(value(tag, 0));
                                let _ = stale.commit();
                                None
                            }
                            _ => {
                                let c = store.using(0..KEYS).unwrap();
                                let by_using: Vec<_> = c
                                    .iter()
                                    .map(|(_, v)| v.value().map(|f| f.tracked.n))
                                    .collect();
                                let dump = store.dump();
                                let by_dump: Vec<_> = dump
                                    .iter()
                                    .map(|(_, _, v)| v.as_ref().map(|f| f.tracked.n))
                                    .collect();
                                Some([total(by_using), total(by_dump)])
                            }
                        }));
                        if let Ok(Some(totals)) = outcome {
                            audits.extend(totals);
                        }
                    }
                    audits
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let expected = START * i64::from(KEYS);
    for (th, totals) in audits.iter().enumerate() {
        assert!(
            totals.iter().all(|&t| t == expected),
            "thread {th}: a snapshot saw money appear or vanish: {totals:?}"
        );
    }
    assert!(fired.load(Ordering::SeqCst) > 0, "no drop panicked");

    // Nothing is claimed: one commit over every key lands at the first try (its handles' old
    // copies may panic when dropped by the commit, after it landed).
    let landed = catch_unwind(AssertUnwindSafe(|| {
        let mut c = store.using(0..KEYS).unwrap();
        for k in 0..KEYS {
            let x = c[&k].value().unwrap().tracked.n;
            // Tags 8000, 8008, ...: never flagged.
            c[&k].set(value(8_000 + 8 * u64::from(k), x));
        }
        c.commit()
    }));
    if let Ok(result) = landed {
        assert_eq!(result, Ok(()));
    }
    let final_total = catch_unwind(AssertUnwindSafe(|| {
        let c = store.using(0..KEYS).unwrap();
        let rows = c
            .iter()
            .map(|(_, v)| (v.value().unwrap().tracked.tag, v.value().unwrap().tracked.n))
            .collect::<Vec<_>>();
        rows
    }))
    .expect("the new values are not flagged");
    assert!(
        final_total
            .iter()
            .all(|&(tag, _)| tag >= 8_000 && tag % 8 == 0),
        "the last commit did not land whole: {final_total:?}"
    );
    assert_eq!(final_total.iter().map(|&(_, n)| n).sum::<i64>(), expected);
    drop(store);
    counts.assert_all_dropped();
}
