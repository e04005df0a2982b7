//! Model 7, reclamation: values that count their creations and drops, and crossbeam-epoch's
//! real reclamation under loom. In every interleaving, once the other thread has joined and
//! the epoch is flushed (`settle`), the store holds exactly its latest record per key (every
//! replaced record, aborted write, snapshot claim and descriptor was retired, and freed), and
//! once the store is dropped too, every value ever made has been dropped (`assert_all_freed`),
//! except the dead records that a forgotten commit's descriptor leaks with it
//! (`forgotten_commit`). Also: a helper's claim that lands after its transaction was decided
//! is taken out again, and a paused commit that is dropped or forgotten is finished or undone
//! whole.
//!
//! Two threads in every model: the main thread is one of the actors. The other thread flushes
//! its garbage to the collector before it ends (`spawn_flushing`), as loom's `join` returns
//! before a thread's thread-locals (its crossbeam participant) are dropped.
#![cfg(loom)]

use std::sync::Arc;

use stm_store::Error;
use stm_store_loom_tests::*;

/// Transfers `amount` from `from` to `to`, retried until it commits; returns the attempts.
fn transfer(
    store: &CStore,
    counters: &Arc<Counters>,
    from: Key,
    to: Key,
    amount: Val,
) -> Vec<Attempt> {
    retry(3, || {
        let mut c = store.using([from, to]).unwrap();
        let reads = vec![(from, c[from].version()), (to, c[to].version())];
        let (f, t) = (c[from].value().unwrap().n, c[to].value().unwrap().n);
        c[from].set(Counted::new(f - amount, counters));
        c[to].set(Counted::new(t + amount, counters));
        Attempt {
            reads,
            writes: vec![(from, Some(f - amount)), (to, Some(t + amount))],
            result: c.commit(),
        }
    })
}

/// A single-key commit of `value` to `key`, retried until it commits.
fn write_one(store: &CStore, counters: &Arc<Counters>, key: Key, value: Val) -> Vec<Attempt> {
    retry(2, || {
        let mut handle = store.usevar(key).unwrap();
        let read = handle.version();
        handle.set(Counted::new(value, counters));
        let result = handle.commit();
        assert_ne!(result, Err(Error::BusyRetry));
        Attempt {
            reads: vec![(key, read)],
            writes: vec![(key, Some(value))],
            result,
        }
    })
}

/// The plain rows of a counted snapshot.
fn rows(c: &stm_store::Collection<'_, Key, Counted>) -> Vec<Row> {
    c.iter()
        .map(|(k, v)| (*k, v.version(), v.value().map(|c| c.n)))
        .collect()
}

/// Two transfers in opposite directions (claims, helping, aborts, retries), the main thread's
/// followed by a `using` snapshot that may fall back to claiming.
///
/// Catches: decide_before_claims, no_descriptor, dirty_read.
#[test]
fn everything_is_freed() {
    check("everything_is_freed", 2, || {
        let counters = Arc::new(Counters::default());
        let store = seeded_counted(&[("a", 10), ("b", 10)], &counters);
        let initial = counted_dump(&store);
        let other = {
            let (store, counters) = (Arc::clone(&store), Arc::clone(&counters));
            spawn_flushing(move || transfer(&store, &counters, "b", "a", 2))
        };
        let mut attempts = transfer(&store, &counters, "a", "b", 1);
        let snapshot = rows(&store.using(["a", "b"]).unwrap());
        attempts.extend(other.join().unwrap());
        check_history(&initial, &attempts, &[], &[snapshot], &counted_dump(&store));
        assert_all_freed(store, &counters, 0);
    });
}

/// A paused commit (claims taken, never resumed) that the main thread drops after another
/// committer, who had to help it or abort it, has finished.
///
/// Catches: decide_before_claims.
#[test]
fn paused_commit_is_freed() {
    check("paused_commit_is_freed", 3, || {
        let counters = Arc::new(Counters::default());
        let store = seeded_counted(&[("a", 10), ("b", 10)], &counters);
        let initial = counted_dump(&store);
        let other = {
            let (store, counters) = (Arc::clone(&store), Arc::clone(&counters));
            spawn_flushing(move || transfer(&store, &counters, "b", "a", 2))
        };
        let mut mine = store.using(["a", "b"]).unwrap();
        let reads = vec![("a", mine["a"].version()), ("b", mine["b"].version())];
        let (a, b) = (mine["a"].value().unwrap().n, mine["b"].value().unwrap().n);
        mine["a"].set(Counted::new(a - 5, &counters));
        mine["b"].set(Counted::new(b + 5, &counters));
        let paused = mine.commit_paused(1);
        let attempts = other.join().unwrap();
        drop(paused);
        drop(mine);
        let paused = Attempt {
            reads,
            writes: vec![("a", Some(a - 5)), ("b", Some(b + 5))],
            result: Ok(()),
        };
        check_serial_with_unknown(&initial, &attempts, &[paused], &counted_dump(&store));
        assert_all_freed(store, &counters, 0);
    });
}

#[derive(Clone, Copy, Debug)]
enum Decided {
    /// T writes `a` and `b`; its owner drops it: aborted (unless the helper committed it).
    ByDrop,
    /// T writes `a` and only reads `b`; its owner resumes it: committed. A read-only entry's
    /// slot gets the claim's `before` back when the claim is taken out.
    ByResume,
}

/// The late-claim model: the main thread pauses T after claiming `a`; the other thread's
/// fast-path write to `a` finds T's claim and helps T, so it loads `b` to claim it. If the
/// owner decides T and takes T's claims out before the helper's compare-and-swap, `b` holds
/// the claim's `before` again and the helper's claim lands after the decision; the helper
/// must take it out again before it lets go of T (T's descriptor is freed when the last count
/// goes). Checks: reads in the main thread meanwhile are all of T or none of it, the final
/// state is serial, and every value is freed. That the claim is taken out is visible to loom
/// only when the freed descriptor's memory is reused (a claim left behind points into it):
/// loom then fails in `Slot::drop`, on a garbage atomic.
fn late_claim(decided: Decided) {
    let name = format!("late_claim ({decided:?})");
    check(&name, 2, move || {
        let counters = Arc::new(Counters::default());
        let store = seeded_counted(&[("a", 10), ("b", 10)], &counters);
        let initial = counted_dump(&store);
        let mut mine = store.using(["a", "b"]).unwrap();
        let reads = vec![("a", 1), ("b", 1)];
        mine["a"].set(Counted::new(100, &counters));
        let mut writes = vec![("a", Some(100))];
        if let Decided::ByDrop = decided {
            mine["b"].set(Counted::new(100, &counters));
            writes.push(("b", Some(100)));
        }
        let paused = mine.commit_paused(1);
        let other = {
            let (store, counters) = (Arc::clone(&store), Arc::clone(&counters));
            spawn_flushing(move || write_one(&store, &counters, "a", 7))
        };
        let t = Attempt {
            reads,
            writes,
            result: Ok(()),
        };
        let (mut attempts, unknown) = match decided {
            Decided::ByDrop => {
                drop(paused);
                (vec![], vec![t])
            }
            Decided::ByResume => {
                let result = paused.resume();
                assert_eq!(result, Ok(()), "nobody else writes b");
                (vec![t], vec![])
            }
        };
        drop(mine);
        let both = rows(&store.using(["a", "b"]).unwrap());
        let b = {
            let b = store.usevar("b").unwrap();
            vec![("b", b.version(), b.value().map(|c| c.n))]
        };
        attempts.extend(other.join().unwrap());
        let dump = counted_dump(&store);
        check_history(&initial, &attempts, &unknown, &[both, b], &dump);
        assert_all_freed(store, &counters, 0);
    });
}

/// A late claim on a read-only entry of a committed transaction: T writes `a` and only reads
/// `b`, and its owner resumes it (commits) while the helper is between its load of `b` and
/// its compare-and-swap. Taking T's claim out of `b` puts the claim's `before` back, so the
/// helper's claim can land after the decision (a late claim lands about 1150 times over the
/// model's 19346 executions).
///
/// Catches: none of the mutations (nobody writes `b`, so deciding T early or showing its
/// undecided write to the helper leaves a serial history; no mutation leaves a late claim in
/// place). It runs the late path against crossbeam's real reclamation.
#[test]
fn late_claim_is_taken_out() {
    late_claim(Decided::ByResume);
}

/// A late claim on a key an aborted transaction never claimed: T writes `a` and `b`, claims
/// `a`, and its owner drops it (aborted) while the helper is between its load of `b` and its
/// compare-and-swap.
///
/// The helper's install-then-check (CAS `b`, then T's status) and the owner's
/// decide-then-release (CAS T's status, then load `b`) are a store-buffering (Dekker) pair:
/// one of them must see the other's write, so that either the helper sees T decided and takes
/// its claim out, or the owner sees the claim and takes it out. Loom models SeqCst accesses
/// as AcqRel, which would let both read the old values (the claim stays in `b`, the last
/// count goes, and T is freed: this model failed so before the core changed), so the core's
/// late check is a read-modify-write of the status (`Txn::status_synced`): it reads the latest
/// status and, when it comes before the decision, is read by it, so the decider then sees the
/// claim. That holds under AcqRel too.
#[test]
fn late_claim_after_abort() {
    late_claim(Decided::ByDrop);
}

/// The values a forgotten commit's descriptor keeps when it leaks: since 323f7d2 a descriptor
/// owns its transaction's dead records after the decision (the `before` records of its
/// written entries if it committed, the `after` records otherwise) and frees them with
/// itself; forgotten, it frees neither. T below writes two keys, so two values stay alive
/// after the store is dropped, whatever happened to T. (Before 323f7d2 the decision retired
/// them, and this was 0.)
const LEAKED_BY_FORGOTTEN_COMMIT: usize = 2;

#[derive(Clone, Copy, Debug)]
enum Other {
    /// Writes `a`, the key T claimed: it helps T to its decision (committed, unless it wrote
    /// `a` before T claimed it: then T aborted), and T's claim on `b` stays in its slot, owned
    /// by nobody, until the store is dropped.
    WritesA,
    /// Only reads (a `using` snapshot and a read-only commit): T stays undecided until the
    /// store is dropped, which aborts it.
    Reads,
}

/// `mem::forget` of a paused commit: T on `[a, b]` claims `a`, and its owner forgets it (its
/// descriptor leaks by design; its entries still own the records to write). The other thread
/// and then the main thread read `a` and `b`: all of T or none of it, whoever finishes T, and
/// the final state is serial. Dropping the store drops every value the store holds (a claim
/// of T still in a slot decides T if nobody did, aborted, and frees the slot's logical
/// record); only T's dead records stay, with its descriptor (`LEAKED_BY_FORGOTTEN_COMMIT`).
///
/// Catches: decide_before_claims, dirty_read.
#[test]
fn forgotten_commit() {
    for other_does in [Other::WritesA, Other::Reads] {
        let name = format!("forgotten_commit ({other_does:?})");
        check(&name, 3, move || {
            let counters = Arc::new(Counters::default());
            let store = seeded_counted(&[("a", 10), ("b", 10)], &counters);
            let initial = counted_dump(&store);
            let other = {
                let (store, counters) = (Arc::clone(&store), Arc::clone(&counters));
                spawn_flushing(move || match other_does {
                    Other::WritesA => (write_one(&store, &counters, "a", 7), vec![]),
                    Other::Reads => {
                        let mut c = store.using(["a", "b"]).unwrap();
                        let seen = rows(&c);
                        let reads = vec![("a", seen[0].1), ("b", seen[1].1)];
                        let result = c.commit();
                        let attempt = Attempt {
                            reads,
                            writes: vec![],
                            result,
                        };
                        (vec![attempt], seen)
                    }
                })
            };
            let mut mine = store.using(["a", "b"]).unwrap();
            let reads = vec![("a", mine["a"].version()), ("b", mine["b"].version())];
            mine["a"].set(Counted::new(5, &counters));
            mine["b"].set(Counted::new(15, &counters));
            std::mem::forget(mine.commit_paused(1));
            drop(mine);
            let (attempts, seen) = other.join().unwrap();
            let both = rows(&store.using(["a", "b"]).unwrap());
            let forgotten = Attempt {
                reads,
                writes: vec![("a", Some(5)), ("b", Some(15))],
                result: Ok(()),
            };
            let dump = counted_dump(&store);
            let snapshots = [both, seen];
            check_history(&initial, &attempts, &[forgotten], &snapshots, &dump);
            if let Other::Reads = other_does {
                assert_eq!(dump, initial, "nobody finished the forgotten commit");
            }
            assert_all_freed(store, &counters, LEAKED_BY_FORGOTTEN_COMMIT);
        });
    }
}
