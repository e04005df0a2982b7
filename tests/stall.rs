//! Stalled committers (needs the `test-hooks` feature): a commit stopped for good after claiming
//! some of its keys must not stop anyone else. Other threads read the claimed keys (and see
//! the committed state, not the stalled commit's pending one) and commit on them, all while the
//! stalled thread is blocked; a watchdog turns a hang into a failure. When the stalled commit
//! resumes, its answer must match what happened to the store; a stalled commit that is
//! dropped instead leaves nothing claimed; one whose owner is forgotten (`mem::forget`) is
//! finished or aborted whole by whoever runs into it, and never seen half done. Large stalled
//! commits (16 000 keys), and chains of 8 000 stalled commits each blocking the one before, are
//! helped to their end by a single-key commit.
#![cfg(feature = "test-hooks")]

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;

use common::{within, XorShift, SCALE};
use stm_store::{Error, Store};

type Bank = Store<u32, i64>;

const START: i64 = 100;

/// A store with accounts `0..n`, created in that order (so slot order is key order), each
/// holding `START` at version 1.
fn bank(n: u32) -> Arc<Bank> {
    let store = Arc::new(Store::new());
    let mut all = store.using(0..n).unwrap();
    all.values_mut().for_each(|v| v.set(START));
    all.commit().unwrap();
    drop(all);
    store
}

/// `(version, value)` of accounts `0..n`, from one `dump`.
fn balances(store: &Bank) -> Vec<(u64, i64)> {
    store
        .dump()
        .into_iter()
        .map(|(_, v, x)| (v, x.unwrap()))
        .collect()
}

/// What the stalled thread does once it is told to go on.
enum Then {
    Resume,
    Drop,
}

/// What the stalled thread reports when it ends: its commit's answer (None if dropped) and its
/// handles' `(version, value)`.
type Report = (Option<Result<(), Error>>, Vec<(u64, i64)>);

/// A thread parked in the middle of a commit.
struct Stalled {
    /// What the stalled commit read: `(version, value)` per key, in key order.
    read: Vec<(u64, i64)>,
    /// What it does to each key: `Some(delta)` writes value + delta, `None` only reads.
    deltas: Vec<Option<i64>>,
    go: mpsc::Sender<Then>,
    /// Its answer (None if dropped), and its handles' `(version, value)` afterwards.
    done: thread::JoinHandle<Report>,
}

/// Starts thread P: reads `keys`, applies `deltas` (see [`Stalled::deltas`]), starts the
/// commit, claims its first `claims` keys, and parks there until told to resume or drop it.
/// Returns once P is parked.
fn stall(store: &Arc<Bank>, keys: Vec<u32>, deltas: Vec<Option<i64>>, claims: usize) -> Stalled {
    let (parked, is_parked) = mpsc::channel();
    let (go, wait) = mpsc::channel();
    let store = store.clone();
    let plan = deltas.clone();
    let done = thread::spawn(move || {
        let mut c = store.using(keys).unwrap();
        let read: Vec<_> = c
            .iter()
            .map(|(_, v)| (v.version(), *v.value().unwrap()))
            .collect();
        for (v, delta) in c.values_mut().zip(&plan) {
            if let Some(d) = delta {
                let x = *v.value().unwrap();
                v.set(x + d);
            }
        }
        let paused = c.commit_paused(claims);
        parked.send(read).unwrap();
        // Blocked for as long as the test likes: a committer stalled mid-commit.
        let answer = match wait.recv().unwrap() {
            Then::Resume => Some(paused.resume()),
            Then::Drop => {
                drop(paused);
                None
            }
        };
        let handles = c
            .iter()
            .map(|(_, v)| (v.version(), *v.value().unwrap()))
            .collect();
        (answer, handles)
    });
    let read = is_parked.recv().unwrap();
    Stalled {
        read,
        deltas,
        go,
        done,
    }
}

impl Stalled {
    /// Lets P go on, and checks its answer against its handles: Ok means each written handle
    /// holds the version it wrote (read + 1), ConcurrentUpdate that they are unchanged (read
    /// version, pending value); read-only handles keep their version either way. Returns the
    /// answer (None if dropped).
    fn finish(self, then: Then) -> Option<Result<(), Error>> {
        self.go.send(then).unwrap();
        let (answer, handles) = self.done.join().unwrap();
        let bump = match answer {
            Some(Ok(())) => 1,
            Some(Err(Error::ConcurrentUpdate)) | None => 0,
            Some(Err(Error::BusyRetry)) => panic!("BusyRetry from a resumed commit"),
        };
        let expected: Vec<_> = self
            .read
            .iter()
            .zip(&self.deltas)
            .map(|(&(version, x), delta)| match delta {
                Some(d) => (version + bump, x + d),
                None => (version, x),
            })
            .collect();
        assert_eq!(handles, expected, "handles after {answer:?}");
        answer
    }

    /// How many keys P writes.
    fn writes(&self) -> u64 {
        self.deltas.iter().filter(|d| d.is_some()).count() as u64
    }
}

/// Moves one unit between two random accounts of `0..n`, retrying on conflict; panics if it
/// takes more than a bounded number of attempts or sees BusyRetry. Returns the attempts.
fn transfer(store: &Bank, rng: &mut XorShift, n: u32, multi: bool) -> u64 {
    for attempt in 1..=10_000 {
        let result = if multi {
            let (from, to) = rng.pair(n as u64);
            let (from, to) = (from as u32, to as u32);
            let mut c = store.using([from, to]).unwrap();
            let (f, t) = (*c[&from].value().unwrap(), *c[&to].value().unwrap());
            c[&from].set(f - 1);
            c[&to].set(t + 1);
            c.commit()
        } else {
            // A single-key write that keeps the total: take one and give it back.
            let k = rng.below(n as u64) as u32;
            let mut v = store.usevar(k).unwrap();
            let x = *v.value().unwrap();
            v.set(x);
            v.commit()
        };
        match result {
            Ok(()) => return attempt,
            Err(Error::ConcurrentUpdate) => continue,
            Err(Error::BusyRetry) => panic!("BusyRetry while a commit is stalled"),
        }
    }
    panic!("no commit in 10 000 attempts while a commit is stalled");
}

/// The full scenario, for `n` keys with P claiming `claims` of them: reads see the old state,
/// workers commit on the claimed keys while P is blocked, then P resumes and everything adds
/// up. P moves 10 from key 0 to the last key; with three keys, it only reads the middle one.
fn stalled_committer_does_not_stop_others(n: u32, claims: usize) {
    const WORKERS: u64 = 2;
    const TRANSFERS: u64 = 150 * SCALE;
    let store = bank(n);
    let before = balances(&store);
    let mut deltas = vec![None; n as usize];
    deltas[0] = Some(-10);
    deltas[n as usize - 1] = Some(10);
    let p = stall(&store, (0..n).collect(), deltas, claims);
    assert_eq!(p.read, before);

    // Reads, while P is parked: the committed state, not P's pending one.
    let s = store.clone();
    let seen = within("reads of claimed keys", move || {
        let singles: Vec<_> = (0..n)
            .map(|k| {
                let v = s.usevar(k).unwrap();
                (v.version(), *v.value().unwrap())
            })
            .collect();
        let c = s.using(0..n).unwrap();
        let together: Vec<_> = c
            .iter()
            .map(|(_, v)| (v.version(), *v.value().unwrap()))
            .collect();
        (singles, together, balances(&s))
    });
    assert_eq!(seen, (before.clone(), before.clone(), before.clone()));

    // Commits on the very keys P claimed, from several threads at once, while P is parked.
    let s = store.clone();
    let transfers = within("commits on claimed keys", move || {
        let start = Arc::new(Barrier::new(WORKERS as usize));
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let (s, start) = (s.clone(), start.clone());
                thread::spawn(move || {
                    let mut rng = XorShift::new(w + 100);
                    let mut transfers = 0;
                    start.wait();
                    for i in 0..TRANSFERS {
                        let multi = i % 3 != 0;
                        transfer(&s, &mut rng, n, multi);
                        transfers += multi as u64;
                        // Every snapshot conserves the total, P's commit included or not.
                        let c = s.using(0..n).unwrap();
                        let total: i64 = c.iter().map(|(_, v)| v.value().unwrap()).sum();
                        assert_eq!(total, START * n as i64);
                    }
                    transfers
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum::<u64>()
    });

    // Only now does P go on.
    let p_writes = p.writes();
    let answer = p.finish(Then::Resume).unwrap();
    let end = balances(&store);
    assert_eq!(end.iter().map(|(_, x)| x).sum::<i64>(), START * n as i64);
    // Versions count the writes: n initial ones, one per single-key commit, two per transfer,
    // and P's exactly if it reports Ok.
    let singles = WORKERS * TRANSFERS - transfers;
    let p_writes = if answer.is_ok() { p_writes } else { 0 };
    let versions: u64 = end.iter().map(|(v, _)| v).sum();
    assert_eq!(
        versions,
        n as u64 + singles + 2 * transfers + p_writes,
        "P: {answer:?}"
    );
}

#[test]
fn stalled_committer_with_one_of_two_keys_claimed() {
    stalled_committer_does_not_stop_others(2, 1);
}

#[test]
fn stalled_committer_with_all_keys_claimed() {
    stalled_committer_does_not_stop_others(2, 2);
    stalled_committer_does_not_stop_others(3, 3);
}

#[test]
fn stalled_committer_with_some_of_three_keys_claimed() {
    stalled_committer_does_not_stop_others(3, 1);
    stalled_committer_does_not_stop_others(3, 2);
}

/// P claims key 0 (of 0 and 1) and stalls. By the design, a commit that runs into P's claim
/// helps P to its end and never aborts it or writes over its claim: P's transfer lands first,
/// and the other commit, which read key 0 before that, fails and redoes. P, resumed, reports
/// Ok. The other commit writes key 0 alone (`multi` false) or keys 0 and 2 together.
fn stalled_commit_finished_by_another_thread(multi: bool) {
    let store = bank(3);
    let p = stall(&store, vec![0, 1], vec![Some(-10), Some(10)], 1);
    let s = store.clone();
    let add_one = move |keys: &[u32]| {
        let mut c = s.using(keys.iter().copied()).unwrap();
        let seen: Vec<_> = c
            .iter()
            .map(|(_, v)| (v.version(), *v.value().unwrap()))
            .collect();
        c.values_mut().for_each(|v| {
            let x = *v.value().unwrap();
            v.set(x + 1);
        });
        (seen, c.commit())
    };
    let keys: &'static [u32] = if multi { &[0, 2] } else { &[0] };
    let (first, again) = within("a commit on a claimed key", move || {
        (add_one(keys), add_one(keys))
    });
    let untouched = (1, START);
    assert_eq!(first.0[0], untouched, "saw P's pending write");
    assert_eq!(
        first.1,
        Err(Error::ConcurrentUpdate),
        "P's commit did not land first"
    );
    assert_eq!(again.0[0], (2, START - 10));
    assert_eq!(again.1, Ok(()));
    assert_eq!(p.finish(Then::Resume), Some(Ok(())));
    let key2 = if multi { (2, START + 1) } else { untouched };
    assert_eq!(balances(&store), [(3, START - 9), (2, START + 10), key2]);
}

#[test]
fn stalled_commit_finished_by_a_single_key_commit_reports_ok() {
    stalled_commit_finished_by_another_thread(false);
}

#[test]
fn stalled_commit_finished_by_a_multi_key_commit_reports_ok() {
    stalled_commit_finished_by_another_thread(true);
}

#[test]
fn stalled_commit_that_read_a_stale_key_reports_concurrent_update() {
    // P reads keys 0 and 1; key 1 changes; P then claims key 0 and stalls. P must fail (it read
    // key 1 before that change), and whoever runs into its claim on key 0 must not wait for it.
    let store = bank(2);
    let (parked, is_parked) = mpsc::channel();
    let read = Arc::new(Barrier::new(2));
    let (changed, key_changed) = mpsc::channel::<()>();
    let (go, wait) = mpsc::channel::<()>();
    let (s, has_read) = (store.clone(), read.clone());
    let p = thread::spawn(move || {
        let mut c = s.using([0, 1]).unwrap();
        has_read.wait();
        c[&0].set(START - 10);
        c[&1].set(START + 10);
        key_changed.recv().unwrap();
        let paused = c.commit_paused(1);
        parked.send(()).unwrap();
        wait.recv().unwrap();
        let answer = paused.resume();
        let handles: Vec<_> = c
            .iter()
            .map(|(_, v)| (v.version(), *v.value().unwrap()))
            .collect();
        (answer, handles)
    });
    read.wait();
    let mut one = store.usevar(1).unwrap();
    one.set(START + 5);
    one.commit().unwrap();
    changed.send(()).unwrap();
    is_parked.recv().unwrap();

    let s = store.clone();
    let attempts = within("commits on a claimed key", move || {
        let mut rng = XorShift::new(7);
        (0..20)
            .map(|_| transfer(&s, &mut rng, 2, false))
            .sum::<u64>()
    });
    // P was doomed: running into it can only abort it, so no commit here had to retry.
    assert_eq!(attempts, 20);
    go.send(()).unwrap();
    let (answer, handles) = p.join().unwrap();
    assert_eq!(answer, Err(Error::ConcurrentUpdate));
    assert_eq!(
        handles,
        [(1, START - 10), (1, START + 10)],
        "handles unchanged"
    );
    let end = balances(&store);
    assert_eq!((end[0].1, end[1].1), (START, START + 5));
    // 2 initial writes, the one to key 1, and the 20 above: none of P's.
    assert_eq!(end[0].0 + end[1].0, 2 + 1 + 20);
}

#[test]
fn stalled_commits_blocking_each_other_are_both_finished() {
    // P1 (keys 0, 1) claims 0; P2 (keys 1, 2) claims 1; both stall. A commit on key 0 runs into
    // P1, whose next key is claimed by P2: it must see both through. Both wrote key 1 from the
    // same read, so they cannot both succeed.
    let store = bank(3);
    let p1 = stall(&store, vec![0, 1], vec![Some(-10), Some(10)], 1);
    let p2 = stall(&store, vec![1, 2], vec![Some(-20), Some(20)], 1);
    let s = store.clone();
    within("commits behind two stalled commits", move || {
        let mut rng = XorShift::new(3);
        for _ in 0..10 {
            transfer(&s, &mut rng, 1, false);
        }
    });
    let a2 = p2.finish(Then::Resume).unwrap();
    let a1 = p1.finish(Then::Resume).unwrap();
    assert!(
        !(a1.is_ok() && a2.is_ok()),
        "both wrote key 1 from the same read"
    );
    let end = balances(&store);
    assert_eq!(end.iter().map(|(_, x)| x).sum::<i64>(), 3 * START);
    let (ok1, ok2) = (a1.is_ok() as u64, a2.is_ok() as u64);
    assert_eq!(
        end.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        [1 + 10 + ok1, 1 + ok1 + ok2, 1 + ok2]
    );
}

#[test]
fn dropped_stalled_commit_leaves_nothing_claimed() {
    for claims in 0..=3 {
        let store = bank(3);
        let before = balances(&store);
        let p = stall(&store, vec![0, 1, 2], vec![Some(-2), None, Some(2)], claims);
        assert_eq!(p.finish(Then::Drop), None);
        // Values unchanged; reads and commits behave as if the commit never started: nothing
        // fails, nothing has to help.
        assert_eq!(balances(&store), before, "{claims} claims");
        let s = store.clone();
        within("commits after a dropped stalled commit", move || {
            for k in 0..3 {
                let mut v = s.usevar(k).unwrap();
                assert_eq!((v.version(), v.value()), (1, Some(&START)));
                v.set(START + k as i64);
                assert_eq!(v.commit(), Ok(()));
            }
            let mut c = s.using(0..3).unwrap();
            c.values_mut().for_each(|v| {
                let x = *v.value().unwrap();
                v.set(x * 2);
            });
            assert_eq!(c.commit(), Ok(()));
        });
        assert_eq!(
            balances(&store),
            [(3, 2 * START), (3, 2 * (START + 1)), (3, 2 * (START + 2))],
            "{claims} claims"
        );
    }
}

#[test]
fn dropped_stalled_commit_can_be_committed_again() {
    // Dropping the paused commit aborts it: the handles are unchanged and the keys too, so the
    // same collection commits afterwards.
    let store = bank(2);
    let mut c = store.using([0, 1]).unwrap();
    c[&0].set(1);
    c[&1].set(2);
    drop(c.commit_paused(2));
    assert_eq!(balances(&store), [(1, START), (1, START)]);
    assert_eq!(c.commit(), Ok(()));
    assert_eq!(balances(&store), [(2, 1), (2, 2)]);
    // And a paused commit with nothing claimed resumes like a plain commit.
    c[&0].set(3);
    assert_eq!(c.commit_paused(0).resume(), Ok(()));
    assert_eq!(balances(&store), [(3, 3), (2, 2)]);
}

/// P (keys 0, 1, 2) moves 30 from key 0 to keys 1 (+10) and 2 (+20), claims key 0 and stalls;
/// then its owner is forgotten (`mem::forget` of the paused commit): nobody will ever resume or
/// drop it. Returns P's handles' `(version, value)` afterwards: unchanged, pending values shown.
fn forgotten_commit(store: &Bank) -> Vec<(u64, i64)> {
    let mut c = store.using([0, 1, 2]).unwrap();
    for (k, delta) in [(0, -30), (1, 10), (2, 20)] {
        let x = *c[&k].value().unwrap();
        c[&k].set(x + delta);
    }
    std::mem::forget(c.commit_paused(1));
    c.iter()
        .map(|(_, v)| (v.version(), *v.value().unwrap()))
        .collect()
}

/// P's three writes, all visible: what the store holds once P landed (nothing else written).
const P_LANDED: [(u64, i64); 3] = [(2, START - 30), (2, START + 10), (2, START + 20)];

#[test]
fn a_forgotten_paused_commit_is_finished_whole_by_whoever_runs_into_it() {
    // Catches: a claim whose owner is gone blocking a key forever (the watchdog), a read that
    // shows the forgotten commit's pending writes, and a helper that finishes only part of it.
    let store = bank(3);
    let before = balances(&store);
    let handles = forgotten_commit(&store);
    assert_eq!(handles, [(1, START - 30), (1, START + 10), (1, START + 20)]);
    let s = store.clone();
    let (seen, first, again) = within("a commit on a forgotten commit's key", move || {
        // Reads neither wait nor help: the old state.
        let c = s.using([0, 1, 2]).unwrap();
        let seen: Vec<_> = c.iter().map(|(_, v)| *v.value().unwrap()).collect();
        let dump = balances(&s);
        // A commit on key 0 runs into the claim, helps P to its end (P read fresh values: it
        // commits), then fails: it read key 0 before P landed.
        let add = |k: u32| {
            let mut v = s.usevar(k).unwrap();
            let read = (v.version(), *v.value().unwrap());
            v.set(read.1 + 1);
            (read, v.commit())
        };
        let first = add(0);
        assert_eq!(balances(&s), P_LANDED, "P did not land whole");
        ((seen, dump), first, add(0))
    });
    assert_eq!(seen.0, [START; 3]);
    assert_eq!(seen.1, before);
    assert_eq!(first, ((1, START), Err(Error::ConcurrentUpdate)));
    assert_eq!(again, ((2, START - 30), Ok(())));
    assert_eq!(
        balances(&store),
        [(3, START - 29), P_LANDED[1], P_LANDED[2]]
    );
}

#[test]
fn a_forgotten_paused_commit_that_conflicts_is_aborted_whole() {
    // Key 1 changes after P read it; a commit on key 0 then runs into P's claim: helping P finds
    // the conflict and aborts it, so none of P's writes appear. Catches: a helper that writes
    // P's claimed key 0 anyway (half a commit), or that cannot get past a forgotten claim.
    let store = bank(3);
    let _ = forgotten_commit(&store);
    let s = store.clone();
    within("commits around a forgotten commit", move || {
        let mut one = s.usevar(1).unwrap();
        one.set(START + 5);
        assert_eq!(one.commit(), Ok(()));
        let mut zero = s.usevar(0).unwrap();
        assert_eq!((zero.version(), zero.value()), (1, Some(&START)));
        zero.set(START - 5);
        assert_eq!(zero.commit(), Ok(()), "P should have been aborted");
    });
    assert_eq!(
        balances(&store),
        [(2, START - 5), (2, START + 5), (1, START)]
    );
}

#[test]
fn a_forgotten_paused_commit_is_never_seen_half_done_under_load() {
    // P conserves the total, as the workers' transfers do: any snapshot that saw some of P's
    // writes and not the others would see money appear or vanish. Workers commit on all three
    // keys (single- and multi-key) and audit the total with `using` and `dump` while P's claim
    // sits in key 0; at the end P's writes are all there or none are (versions add up either
    // way), and the store still commits on every key. Catches: a torn read of a commit whose
    // owner is gone, a helper that completes part of it, and a key left blocked.
    const WORKERS: u64 = 2;
    const TRANSFERS: u64 = 200 * SCALE;
    let store = bank(3);
    let _ = forgotten_commit(&store);
    let s = store.clone();
    let transfers = within("commits around a forgotten commit", move || {
        let start = Arc::new(Barrier::new(WORKERS as usize));
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let (s, start) = (s.clone(), start.clone());
                thread::spawn(move || {
                    let mut rng = XorShift::new(w + 500);
                    let mut transfers = 0;
                    start.wait();
                    for i in 0..TRANSFERS {
                        let multi = i % 3 != 0;
                        transfer(&s, &mut rng, 3, multi);
                        transfers += multi as u64;
                        let c = s.using(0..3).unwrap();
                        let total: i64 = c.iter().map(|(_, v)| v.value().unwrap()).sum();
                        assert_eq!(total, 3 * START, "torn using: {c:?}");
                        let dump = balances(&s);
                        let total: i64 = dump.iter().map(|(_, x)| x).sum();
                        assert_eq!(total, 3 * START, "torn dump: {dump:?}");
                    }
                    transfers
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum::<u64>()
    });
    let end = balances(&store);
    assert_eq!(end.iter().map(|(_, x)| x).sum::<i64>(), 3 * START);
    let singles = WORKERS * TRANSFERS - transfers;
    let versions: u64 = end.iter().map(|(v, _)| v).sum();
    let p_writes = versions - (3 + singles + 2 * transfers);
    assert!(
        p_writes == 0 || p_writes == 3,
        "P's writes that landed: {p_writes} of 3"
    );
    // The store still works: every key commits at the first try.
    let s = store.clone();
    within("commits after the load", move || {
        let mut c = s.using(0..3).unwrap();
        c.values_mut().for_each(|v| {
            let x = *v.value().unwrap();
            v.set(x);
        });
        assert_eq!(c.commit(), Ok(()));
    });
}

/// Keys of the large stalled commit below: P writes keys `0..BIG`, and stalls after claiming
/// the first `BIG_CLAIMED` (slot order is key order: `bank` creates them in order).
const BIG: u32 = 16_000;
const BIG_CLAIMED: usize = 8_000;

/// P: a commit that writes START + 1 to every key of `0..BIG`, stopped after claiming
/// `BIG_CLAIMED` keys. Returns the collection; the caller pauses it.
fn big_writer(store: &Bank) -> stm_store::Collection<'_, u32, i64> {
    let mut p = store.using(0..BIG).unwrap();
    p.values_mut().for_each(|v| v.set(START + 1));
    p
}

/// `(version, value)` of every key of `store`, run-length encoded: `(count, version, value)`.
fn runs(store: &Bank) -> Vec<(usize, u64, i64)> {
    let mut runs: Vec<(usize, u64, i64)> = Vec::new();
    for (version, value) in balances(store) {
        match runs.last_mut() {
            Some((count, v, x)) if (*v, *x) == (version, value) => *count += 1,
            _ => runs.push((1, version, value)),
        }
    }
    runs
}

#[test]
fn a_large_stalled_commit_is_helped_to_its_end_by_a_single_key_commit() {
    // P (16 000 keys) stalls after claiming 8 000; a thread commits key 7 999 (P's last claim)
    // alone: it must finish P's 8 000 remaining claims and decision, whole, before its own
    // commit can be judged (it then fails: it read key 7 999 before P landed). No timing is
    // asserted; helping resumes P where it was blocked, so this is linear in P's size (a helper
    // that restarted P, or rescanned its entries per claim, would make it quadratic, and slow
    // this test down by orders of magnitude). Catches: a helper that finishes part of a large
    // commit, or decides it before claiming every key; a single-key commit that overwrites an
    // undecided claim; a paused commit that reports something else than what happened.
    let store = bank(BIG);
    let mut p = big_writer(&store);
    let paused = p.commit_paused(BIG_CLAIMED);
    assert_eq!(
        runs(&store),
        [(BIG as usize, 1, START)],
        "P is not visible yet"
    );
    let s = store.clone();
    let single = within(
        "a single-key commit on a large stalled commit's key",
        move || {
            let mut v = s.usevar(BIG_CLAIMED as u32 - 1).unwrap();
            let read = (v.version(), *v.value().unwrap());
            v.set(read.1 + 5);
            (read, v.commit())
        },
    );
    assert_eq!(single, ((1, START), Err(Error::ConcurrentUpdate)));
    assert_eq!(
        runs(&store),
        [(BIG as usize, 2, START + 1)],
        "P did not land whole"
    );
    assert_eq!(paused.resume(), Ok(()));
    assert!(p
        .iter()
        .all(|(_, v)| (v.version(), v.value()) == (2, Some(&(START + 1)))));
}

#[test]
fn a_large_stalled_commit_is_helped_through_a_long_chain_of_stalled_commits() {
    // P (keys 0..16 000) stalls after claiming 8 000 keys; then for each key j of P's last
    // 8 000, Q_j, a read-only commit of keys j and j + 1, stalls after claiming key j. A commit
    // on P's key 0 runs into P, which runs into Q_8000, which runs into Q_8001, ... : a chain
    // of 8 000 stalled commits, each to be helped to its end before the one before it can go
    // on. All of them must land (the Qs only validate), P whole. Catches: helping by recursion
    // (8 000 nested frames overflow a thread's stack), a helper that loses its place in P or
    // in a Q when it comes back from helping, and helping that restarts from P's first entry
    // after each of the 8 000 helps (quadratic: no time is asserted, but it would be slow).
    let store = bank(BIG + 1);
    let mut p = big_writer(&store);
    let paused = p.commit_paused(BIG_CLAIMED);
    let mut qs: Vec<_> = (BIG_CLAIMED as u32..BIG)
        .map(|j| store.using([j, j + 1]).unwrap())
        .collect();
    let paused_qs: Vec<_> = qs.iter_mut().map(|q| q.commit_paused(1)).collect();
    let s = store.clone();
    let single = within("a commit behind a chain of stalled commits", move || {
        let mut v = s.usevar(0).unwrap();
        let read = (v.version(), *v.value().unwrap());
        v.set(read.1 + 5);
        (read, v.commit())
    });
    assert_eq!(single, ((1, START), Err(Error::ConcurrentUpdate)));
    assert_eq!(
        runs(&store),
        [(BIG as usize, 2, START + 1), (1, 1, START)],
        "P did not land whole"
    );
    for q in paused_qs {
        assert_eq!(q.resume(), Ok(()), "a read-only Q failed");
    }
    assert_eq!(paused.resume(), Ok(()));
    drop(qs);
    // The store still works: the key P just wrote commits at once.
    let mut v = store.usevar(0).unwrap();
    v.set(0);
    assert_eq!(v.commit(), Ok(()));
}

#[test]
fn a_large_stalled_commit_that_conflicts_is_aborted_whole() {
    // As above, but key 12 000 (not claimed yet) changes first; the commit on key 0 then
    // helps P, which finds the conflict at key 12 000 and is aborted: none of its 16 000 writes
    // appear, and the commit on key 0 lands. Catches: an abort that leaves some of P's claimed
    // keys written, and a helper that aborts the wrong transaction.
    let store = bank(BIG);
    let mut p = big_writer(&store);
    let paused = p.commit_paused(BIG_CLAIMED);
    let s = store.clone();
    let results = within("commits around a large stalled commit", move || {
        let mut far = s.usevar(12_000).unwrap();
        far.set(0);
        let far = far.commit();
        let mut zero = s.usevar(0).unwrap();
        zero.set(START + 5);
        (far, zero.commit())
    });
    assert_eq!(results, (Ok(()), Ok(())));
    assert_eq!(
        runs(&store),
        [
            (1, 2, START + 5),
            (11_999, 1, START),
            (1, 2, 0),
            (BIG as usize - 12_001, 1, START)
        ]
    );
    assert_eq!(paused.resume(), Err(Error::ConcurrentUpdate));
    assert!(p
        .iter()
        .all(|(_, v)| (v.version(), v.value()) == (1, Some(&(START + 1)))));
}
