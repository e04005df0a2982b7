//! Model 5, helping: a committer stopped after claiming some of its keys
//! (`Collection::commit_paused`) never holds anybody up. Another committer on the same keys
//! completes (`Ok` or `ConcurrentUpdate`, and a retry loop of bounded length succeeds) while
//! the paused one never resumes, and what it reads while the claims are in place is the old
//! state.
//!
//! The stalled committer is the model's main thread: it spawns the other committer, pauses its
//! own commit (concurrently with the other thread), then joins: so it cannot resume before the
//! other thread has finished. Only then does it resume (or drop) the paused commit. In
//! `committer_stopping_midway` and `helping_resumes_where_blocked` it acts (drops, resumes,
//! reads) while the other thread is still at work. Two threads in every model.
#![cfg(loom)]

use std::sync::Arc;

use loom::thread;
use stm_store_loom_tests::*;

#[derive(Clone, Copy, Debug)]
enum Finish {
    Resume,
    Drop,
}

/// `a`, `b`, `c`, created in this order: their slot ids (the claim order) follow it.
fn abc() -> Arc<S> {
    seeded(&[("a", 1), ("b", 1), ("c", 1)])
}

/// A transfer of 1 from `from` to `to`, retried until it commits; asserts that the first
/// attempt read the seeded state (version 1 everywhere), whatever claims were in place.
fn transfer(store: &Arc<S>, from: Key, to: Key, max: usize) -> thread::JoinHandle<Vec<Attempt>> {
    let store = Arc::clone(store);
    thread::spawn(move || {
        let mut first = true;
        retry(max, || {
            let mut c = store.using([to, from]).unwrap();
            if first {
                assert_eq!(reads(&c), {
                    let mut r = vec![(from, 1), (to, 1)];
                    r.sort();
                    r
                });
                first = false;
            }
            let (f, t) = (*c[from].value().unwrap(), *c[to].value().unwrap());
            commit_collection(&mut c, &[(from, Some(f - 1)), (to, Some(t + 1))])
        })
    })
}

/// The other committer is a two-key transfer on the paused commit's keys.
///
/// Catches: decide_before_claims, no_descriptor, dirty_read.
#[test]
fn stalled_committer_is_helped() {
    for claims in [1, 2] {
        for finish in [Finish::Resume, Finish::Drop] {
            let name = format!("stalled_committer_is_helped (claims {claims}, {finish:?})");
            check(&name, 3, move || {
                let store = abc();
                let initial = store.dump();
                // Helping the stalled commit can make the first attempt fail; then nobody is in
                // the way.
                let other = transfer(&store, "b", "a", 2);

                let mut mine = store.using(["a", "b"]).unwrap();
                let reads = reads(&mine);
                let writes = [("a", Some(100)), ("b", Some(100))];
                mine["a"].set(100);
                mine["b"].set(100);
                let paused = mine.commit_paused(claims);

                let attempts = other.join().unwrap();
                let mut paused_attempt = Attempt {
                    reads,
                    writes: writes.to_vec(),
                    result: Ok(()),
                };
                match finish {
                    Finish::Resume => {
                        paused_attempt.result = paused.resume();
                        check_handles(&mine, &paused_attempt.reads, &writes, paused_attempt.result);
                        let mut all = attempts;
                        all.push(paused_attempt);
                        check_serial(&initial, &all, &store.dump());
                    }
                    Finish::Drop => {
                        drop(paused);
                        check_serial_with_unknown(
                            &initial,
                            &attempts,
                            &[paused_attempt],
                            &store.dump(),
                        );
                    }
                }
            });
        }
    }
}

/// The other committer is the single-key fast path on the first key the paused commit
/// claimed: it must help the claim's transaction (resuming it at that key), not write over
/// it.
///
/// Catches: decide_before_claims, dirty_read.
#[test]
fn stalled_committer_and_fast_path() {
    for claims in [1, 2] {
        let name = format!("stalled_committer_and_fast_path (claims {claims})");
        check(&name, 3, move || {
            let store = abc();
            let initial = store.dump();
            let other = {
                let store = Arc::clone(&store);
                thread::spawn(move || {
                    let mut first = true;
                    retry(2, || {
                        let attempt = commit_one(&store, "a", 7);
                        if first {
                            assert_eq!(attempt.reads, [("a", 1)], "read a claimed key's new value");
                            first = false;
                        }
                        attempt
                    })
                })
            };

            let mut mine = store.using(["a", "b"]).unwrap();
            let reads = reads(&mine);
            let writes = [("a", Some(100)), ("b", Some(100))];
            mine["a"].set(100);
            mine["b"].set(100);
            let paused = mine.commit_paused(claims);

            let mut attempts = other.join().unwrap();
            let result = paused.resume();
            check_handles(&mine, &reads, &writes, result);
            attempts.push(Attempt {
                reads,
                writes: writes.to_vec(),
                result,
            });
            check_serial(&initial, &attempts, &store.dump());
        });
    }
}

/// The stalled committer drops its paused commit (which aborts it unless a helper decided it
/// first) while the other committer, a transfer on the same keys, may be helping it.
///
/// Catches: decide_before_claims, dirty_read.
#[test]
fn committer_stopping_midway() {
    check("committer_stopping_midway", 3, || {
        let store = abc();
        let initial = store.dump();
        let other = transfer(&store, "a", "b", 2);
        let mut mine = store.using(["a", "b"]).unwrap();
        let reads = reads(&mine);
        mine["a"].set(100);
        mine["b"].set(100);
        drop(mine.commit_paused(1));
        let stopped = Attempt {
            reads,
            writes: vec![("a", Some(100)), ("b", Some(100))],
            result: Ok(()),
        };
        let attempts = other.join().unwrap();
        check_serial_with_unknown(&initial, &attempts, &[stopped], &store.dump());
    });
}

/// A helping chain: the main thread pauses P on `[a, b]` after claiming `a` and Q on `[b, c]`
/// after claiming `b`; a committer on `[a, c]` finds P's claim, helps P, which finds Q's claim,
/// so it helps Q first. Each commit of P or Q can fail one attempt of it, so three attempts
/// suffice.
///
/// Catches: decide_before_claims, no_descriptor, dirty_read.
#[test]
fn helping_chain() {
    check("helping_chain", 3, || {
        let store = abc();
        let initial = store.dump();
        let other = transfer(&store, "c", "a", 3);

        let mut p = store.using(["a", "b"]).unwrap();
        let p_reads = reads(&p);
        p["a"].set(100);
        p["b"].set(100);
        let mut q = store.using(["b", "c"]).unwrap();
        let q_reads = reads(&q);
        q["b"].set(200);
        q["c"].set(200);
        let paused_p = p.commit_paused(1);
        let paused_q = q.commit_paused(1);

        let mut attempts = other.join().unwrap();
        let p_result = paused_p.resume();
        let q_result = paused_q.resume();
        attempts.push(Attempt {
            reads: p_reads,
            writes: vec![("a", Some(100)), ("b", Some(100))],
            result: p_result,
        });
        attempts.push(Attempt {
            reads: q_reads,
            writes: vec![("b", Some(200)), ("c", Some(200))],
            result: q_result,
        });
        check_serial(&initial, &attempts, &store.dump());
    });
}

/// While a paused commit's claims are in place (and it is undecided), every kind of read sees
/// the old state: `usevar`, a `using` snapshot, `dump`, and a read-only commit of what was read
/// succeeds. Readers never help, so the claims stay undecided until the main thread resumes
/// the commit, which then lands.
///
/// Catches: decide_before_claims, dirty_read.
#[test]
fn claims_are_invisible_to_readers() {
    for claims in [1, 2] {
        let name = format!("claims_are_invisible_to_readers (claims {claims})");
        check(&name, 4, move || {
            let store = abc();
            let reader = {
                let store = Arc::clone(&store);
                thread::spawn(move || {
                    let a = store.usevar("a").unwrap();
                    assert_eq!(
                        (a.version(), a.value()),
                        (1, Some(&1)),
                        "usevar saw a claim"
                    );
                    let mut c = store.using(["b", "a"]).unwrap();
                    assert_eq!(values(&c), [("a", 1, Some(1)), ("b", 1, Some(1))]);
                    assert_eq!(c.commit(), Ok(()), "read-only validation failed");
                    let dump = store.dump();
                    assert_eq!(
                        dump,
                        [("a", 1, Some(1)), ("b", 1, Some(1)), ("c", 1, Some(1))]
                    );
                })
            };
            let mut mine = store.using(["a", "b"]).unwrap();
            mine["a"].set(100);
            mine["b"].set(100);
            let paused = mine.commit_paused(claims);
            reader.join().unwrap();
            assert_eq!(paused.resume(), Ok(()));
            assert_eq!(
                store.dump(),
                [("a", 2, Some(100)), ("b", 2, Some(100)), ("c", 1, Some(1))]
            );
        });
    }
}

/// Helping resumes a blocked transaction at the entry where it was found: the main thread
/// pauses T on `[a, b, c]` after claiming `a` and `b`; the other thread commits `b` alone (the
/// fast path), finds T's claim there, and helps T from `b` on (its position, not the first
/// entry): it claims `c` and decides T, then retries its own write. Meanwhile the main thread
/// reads all three keys (`using`, which may fall back to a claiming snapshot that has to help
/// T too) and `c` alone: each read is all of T or none of it. Then T resumes and reports its
/// outcome. A second variant writes `c`, the key T has not claimed yet: no helping, and T,
/// resumed, fails on `c` if the write landed first.
///
/// Catches: decide_before_claims, single_collect, dirty_read.
#[test]
fn helping_resumes_where_blocked() {
    for key in ["b", "c"] {
        let name = format!("helping_resumes_where_blocked (writes {key})");
        check(&name, 3, move || {
            let store = abc();
            let initial = store.dump();
            let other = {
                let store = Arc::clone(&store);
                thread::spawn(move || retry(2, || commit_one(&store, key, 7)))
            };
            let mut mine = store.using(["a", "b", "c"]).unwrap();
            let reads = reads(&mine);
            let writes = [("a", Some(100)), ("b", Some(100)), ("c", Some(100))];
            for (key, value) in writes {
                mine[key].set(value.unwrap());
            }
            let paused = mine.commit_paused(2);
            let all = values(&store.using(["c", "a", "b"]).unwrap());
            let c = store.usevar("c").unwrap();
            let c = vec![("c", c.version(), c.value().copied())];
            let mut attempts = other.join().unwrap();
            let result = paused.resume();
            check_handles(&mine, &reads, &writes, result);
            attempts.push(Attempt {
                reads,
                writes: writes.to_vec(),
                result,
            });
            check_history(&initial, &attempts, &[], &[all, c], &store.dump());
        });
    }
}
