//! Model 7, reclamation: values that count their creations and drops. In every interleaving,
//! once the handles are dropped a key keeps at most its latest record and the transient state
//! of its last commit (two values), and once the store is dropped too, every value ever made
//! has been dropped: the slot -> claim -> descriptor -> entries -> slot cycle is broken on
//! every path (loom also fails a model on any leaked `Arc`).
#![cfg(loom)]

use std::sync::Arc;

use loom::thread;
use stm_store::Store;
use stm_store_loom_tests::{check, Counted, Counters};

type CStore = Store<&'static str, Counted>;

fn seeded(counters: &Arc<Counters>) -> Arc<CStore> {
    let store = Arc::new(CStore::new());
    let mut c = store.using(["a", "b"]).unwrap();
    c["a"].set(Counted::new(10, counters));
    c["b"].set(Counted::new(10, counters));
    c.commit().unwrap();
    store
}

/// Transfers one from `from` to `to`, retried until it commits.
fn transfer(store: &CStore, counters: &Arc<Counters>, from: &'static str, to: &'static str) {
    loop {
        let mut c = store.using([from, to]).unwrap();
        let (f, t) = (c[from].value().unwrap().n, c[to].value().unwrap().n);
        c[from].set(Counted::new(f - 1, counters));
        c[to].set(Counted::new(t + 1, counters));
        if c.commit().is_ok() {
            return;
        }
    }
}

fn assert_freed(store: Arc<CStore>, counters: &Counters) {
    let dump = store.dump();
    assert_eq!(
        dump.iter().map(|r| r.2.as_ref().unwrap().n).sum::<i64>(),
        20
    );
    drop(dump);
    let keys = 2;
    assert!(
        counters.live() <= 2 * keys,
        "{} values live with no handle left (made {})",
        counters.live(),
        counters.made()
    );
    drop(store);
    assert_eq!(
        counters.live(),
        0,
        "values leaked (made {})",
        counters.made()
    );
}

/// Two transfers in opposite directions (claims, helping, aborts, retries), and a `using`
/// snapshot that may fall back to claiming.
///
/// Catches: strong_entries, decide_before_claims, overwrite_undecided_claim, no_descriptor,
/// single_collect; skip_read_validation (snapshot).
#[test]
fn everything_is_freed() {
    check("everything_is_freed", 2, || {
        let counters = Arc::new(Counters::default());
        let store = seeded(&counters);
        let spawn = |from, to| {
            let (store, counters) = (Arc::clone(&store), Arc::clone(&counters));
            thread::spawn(move || transfer(&store, &counters, from, to))
        };
        let one = spawn("a", "b");
        let two = spawn("b", "a");
        let snapshot = store.using(["a", "b"]).unwrap();
        let sum: i64 = snapshot.iter().map(|(_, v)| v.value().unwrap().n).sum();
        assert_eq!(sum, 20);
        drop(snapshot);
        one.join().unwrap();
        two.join().unwrap();
        assert_freed(store, &counters);
    });
}

/// A paused commit (claims taken, never resumed) that the main thread drops after another
/// committer, who had to help it, has finished.
///
/// Catches: strong_entries, decide_before_claims, overwrite_undecided_claim, no_descriptor;
/// skip_read_validation (snapshot).
#[test]
fn paused_commit_is_freed() {
    check("paused_commit_is_freed", 4, || {
        let counters = Arc::new(Counters::default());
        let store = seeded(&counters);
        let other = {
            let (store, counters) = (Arc::clone(&store), Arc::clone(&counters));
            thread::spawn(move || transfer(&store, &counters, "b", "a"))
        };
        let mut mine = store.using(["a", "b"]).unwrap();
        let (a, b) = (mine["a"].value().unwrap().n, mine["b"].value().unwrap().n);
        mine["a"].set(Counted::new(a - 5, &counters));
        mine["b"].set(Counted::new(b + 5, &counters));
        let paused = mine.commit_paused(1);
        other.join().unwrap();
        drop(paused);
        drop(mine);
        assert_freed(store, &counters);
    });
}
