//! Readers against a committer: consistent snapshots with `using` and `dump` (model 2), single
//! key reads that never go back in time or see half a commit (model 3), and a snapshot that
//! must fall back from the double collect to the claiming snapshot (`COLLECTS` is 1 under loom,
//! so one moved version is enough).
//!
//! Two threads: the main thread reads, a spawned one commits.
//!
//! The committer always writes `a` and `b` together with the same value and versions that
//! move in step, so a torn read shows as two different versions or values.
#![cfg(loom)]

use std::sync::Arc;

use loom::thread;
use stm_store_loom_tests::*;

/// Commits `a` and `b` together `times` times, each time both set to their version * 10.
fn pair_writer(store: &Arc<S>, times: usize) -> thread::JoinHandle<()> {
    let store = Arc::clone(store);
    thread::spawn(move || {
        for _ in 0..times {
            let mut c = store.using(["a", "b"]).unwrap();
            let next = c["a"].version() + 1;
            let writes = [("a", Some(next as Val * 10)), ("b", Some(next as Val * 10))];
            let attempt = commit_collection(&mut c, &writes);
            assert!(attempt.ok(), "the only writer failed: {attempt:?}");
        }
    })
}

/// The pair `a`, `b` as one snapshot saw it: same version, value = version * 10.
fn assert_pair(rows: &[Row], oldest: u64, newest: u64) {
    let [("a", va, xa), ("b", vb, xb)] = rows else {
        panic!("unexpected snapshot {rows:?}")
    };
    assert_eq!((va, xa), (vb, xb), "torn snapshot {rows:?}");
    assert!((oldest..=newest).contains(va), "{rows:?}");
    assert_eq!(*xa, Some(*va as Val * 10), "wrong record {rows:?}");
}

fn pair_store() -> Arc<S> {
    // `b` first: its slot id is the lower one.
    seeded(&[("b", 10), ("a", 10)])
}

/// Model 2a: a `using(["a", "b"])` snapshot during a two-key commit sees both keys old or
/// both new.
///
/// Catches: decide_before_claims, no_descriptor, single_collect, dirty_read.
#[test]
fn using_snapshot_is_atomic() {
    check("using_snapshot_is_atomic", 4, || {
        let store = pair_store();
        let writer = pair_writer(&store, 1);
        let snapshot = values(&store.using(["a", "b"]).unwrap());
        assert_pair(&snapshot, 1, 2);
        writer.join().unwrap();
        assert_pair(&store.dump(), 2, 2);
    });
}

/// Model 2b: the same with `dump`, which also enumerates the key index.
///
/// Catches: decide_before_claims, no_descriptor, single_collect, dirty_read.
#[test]
fn dump_is_atomic() {
    check("dump_is_atomic", 4, || {
        let store = pair_store();
        let writer = pair_writer(&store, 1);
        assert_pair(&store.dump(), 1, 2);
        writer.join().unwrap();
        assert_pair(&store.dump(), 2, 2);
    });
}

/// Model 3: single-key reads (`usevar`) of `a`, `b`, `a` during a two-key commit: each read is
/// the old or the new record of its key, and once one read saw the commit, no later read in
/// the thread misses it (whatever key it reads).
///
/// Catches: decide_before_claims, no_descriptor, dirty_read.
#[test]
fn single_key_reads_never_go_back() {
    check("single_key_reads_never_go_back", 4, || {
        let store = pair_store();
        let writer = pair_writer(&store, 1);
        let mut newest = 1;
        for key in ["a", "b", "a"] {
            let v = store.usevar(key).unwrap();
            let version = v.version();
            assert!((1..=2).contains(&version), "{key}: version {version}");
            assert_eq!(
                v.value(),
                Some(&(version as Val * 10)),
                "{key}: wrong record"
            );
            assert!(
                version >= newest,
                "{key}: read version {version} after a read saw version {newest}"
            );
            newest = version;
        }
        writer.join().unwrap();
        assert_pair(&store.dump(), 2, 2);
    });
}

/// A `using` snapshot while the writer commits twice: the double collect (one under loom) can
/// see a version move, and then the snapshot claims its keys (the claiming snapshot) while
/// the writer, blocked by those claims, helps it. Still one consistent instant.
///
/// Catches: decide_before_claims, no_descriptor, single_collect, dirty_read.
#[test]
fn snapshot_falls_back_to_claiming() {
    check("snapshot_falls_back_to_claiming", 4, || {
        let store = pair_store();
        let writer = pair_writer(&store, 2);
        let snapshot = values(&store.using(["a", "b"]).unwrap());
        assert_pair(&snapshot, 1, 3);
        writer.join().unwrap();
        assert_pair(&store.dump(), 3, 3);
    });
}
