//! Faults, each against a private etcd (own ports, own data directory) that the test stops
//! (`SIGSTOP`), resumes (`SIGCONT`) or kills (`SIGKILL`) and restarts on the same data.
//!
//! Nothing here waits for time to pass to make a race happen: a stopped etcd is stopped until
//! the test says otherwise, and every wait polls for a state with a liveness bound.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::bank::{self, Rng, Tally, OPENING};
use common::{k, EtcdServer};
use stm_store::Error::BusyRetry;
use stm_store_etcd::blocking::EtcdStore;
use stm_store_etcd::{Error, Options};

/// Short budgets, so that a stopped etcd is answered for quickly (but not so short that a
/// loaded machine's fsync looks like a fault).
fn short() -> Options {
    Options {
        request_timeout: Duration::from_millis(1000),
        budget: Duration::from_millis(2500),
        ..Options::default()
    }
}

fn connect(endpoint: &str, prefix: &str) -> EtcdStore<String, i64> {
    EtcdStore::connect_with([endpoint], prefix, short()).unwrap()
}

/// Polls `done` until it holds; panics after `bound` (a liveness bound: the test hangs
/// otherwise, it never decides anything by timing).
fn wait_for(what: &str, bound: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < bound, "gave up waiting for: {what}");
        std::thread::yield_now();
    }
}

/// A stopped etcd: reads, dumps and commits answer `BusyRetry` (they return instead of
/// hanging), nothing is written and the handles are unchanged; once etcd runs again, the
/// same commit succeeds and lands once.
#[test]
fn a_stopped_etcd_gives_busy_retry_and_nothing_is_written() {
    let server = EtcdServer::start("stopped");
    let store = connect(&server.endpoint, "bank/");
    let mut c = store.using([k("a"), k("b")]).unwrap();
    c["a"].set(1);
    c["b"].set(2);
    server.pause();
    assert_eq!(store.usevar(k("a")).unwrap_err(), BusyRetry);
    assert_eq!(store.using([k("a"), k("b")]).unwrap_err(), BusyRetry);
    assert_eq!(store.dump().unwrap_err(), BusyRetry);
    // The reads failed, so the commit first checks that etcd answers: it does not, and the
    // commit is not sent.
    assert_eq!(c.commit().unwrap_err(), BusyRetry);
    assert!(!c.in_doubt());
    assert_eq!((c["a"].version(), c["a"].value()), (0, Some(&1)));
    server.resume();
    assert_eq!(
        store.dump().unwrap(),
        vec![(k("a"), 0, None), (k("b"), 0, None)],
        "a BusyRetry commit wrote something"
    );
    c.commit().unwrap();
    assert_eq!(
        store.dump().unwrap(),
        vec![(k("a"), 1, Some(1)), (k("b"), 1, Some(2))]
    );
}

/// A commit sent to an etcd that stops before answering is in doubt. The call does not guess:
/// it answers `OutcomeUnknown`, the handles keep the attempt, and committing them again
/// resolves it exactly once, whether etcd then resumes (and may apply the buffered request)
/// or is killed and restarted (and the request may be lost).
#[test]
fn a_commit_in_doubt_is_resolved_exactly_once() {
    for kill in [false, true] {
        let mut server = EtcdServer::start(if kill { "doubt-kill" } else { "doubt-cont" });
        let store = connect(&server.endpoint, "bank/");
        let mut v = store.usevar(k("n")).unwrap();
        v.set(10);
        v.commit().unwrap();
        v.set(11);
        // etcd answered the last request, so the commit is sent without a check first.
        server.pause();
        assert_eq!(v.commit().unwrap_err(), Error::OutcomeUnknown);
        assert!(v.in_doubt());
        assert_eq!((v.version(), v.value()), (1, Some(&11)), "handle changed");
        if kill {
            server.kill_and_restart();
        } else {
            server.resume();
        }
        // Whether it landed or not, committing the same handle again answers Ok exactly once:
        // landed earlier -> Ok without writing again; never landed -> fenced, then written.
        v.commit().unwrap();
        assert!(!v.in_doubt());
        assert_eq!((v.version(), v.value()), (2, Some(&11)));
        assert_eq!(
            store.dump().unwrap(),
            vec![(k("n"), 2, Some(11))],
            "kill = {kill}"
        );
    }
}

/// A bank run with workers and an auditor, during which etcd is stopped, then killed and
/// restarted on the same data: every call returns (BusyRetry or OutcomeUnknown) while etcd
/// is stopped, the run continues after the restart, the total is conserved in every audit and
/// at the end, and each worker's ledger matches the transfers it saw land (none applied twice
/// or lost).
#[test]
fn bank_survives_stop_kill_and_restart() {
    const WORKERS: usize = 3;
    const ACCOUNTS: usize = 5;
    let mut server = EtcdServer::start("bank");
    let endpoint = server.endpoint.clone();
    let setup = connect(&server.endpoint, "bank/");
    bank::open(&setup, ACCOUNTS).unwrap();

    let stop = AtomicBool::new(false);
    let commits = AtomicU64::new(0);
    // Per worker: errors (BusyRetry or OutcomeUnknown) answered so far.
    let answered: Vec<AtomicU64> = (0..WORKERS).map(|_| AtomicU64::new(0)).collect();
    let audits_busy = AtomicU64::new(0);
    let audits = AtomicU64::new(0);
    let tallies = Arc::new(Mutex::new(vec![Tally::default(); WORKERS]));

    std::thread::scope(|s| {
        for w in 0..WORKERS {
            let (stop, commits, answered, tallies) = (&stop, &commits, &answered, &tallies);
            let endpoint = endpoint.as_str();
            s.spawn(move || {
                let store = connect(endpoint, "bank/");
                let mut rng = Rng::new(w as u64 + 1);
                let mut tally = Tally::default();
                while !stop.load(Ordering::SeqCst) {
                    // `transfer` repeats a commit in doubt until its outcome is known;
                    // every BusyRetry or OutcomeUnknown is counted as it is answered.
                    let mut answer = |e: &Error| {
                        if *e == BusyRetry || *e == Error::OutcomeUnknown {
                            answered[w].fetch_add(1, Ordering::SeqCst);
                        }
                    };
                    if bank::transfer(&store, w, ACCOUNTS, &mut rng, &mut tally, &mut answer)
                        .unwrap()
                    {
                        commits.fetch_add(1, Ordering::SeqCst);
                    }
                }
                tallies.lock().unwrap()[w] = tally;
            });
        }
        {
            let (stop, audits, audits_busy) = (&stop, &audits, &audits_busy);
            let endpoint = endpoint.as_str();
            s.spawn(move || {
                let store = connect(endpoint, "bank/");
                while !stop.load(Ordering::SeqCst) {
                    match bank::audit(&store, ACCOUNTS).unwrap() {
                        Some(total) => {
                            assert_eq!(
                                total,
                                OPENING * ACCOUNTS as i64,
                                "audit: total not conserved"
                            );
                            audits.fetch_add(1, Ordering::SeqCst);
                        }
                        None => {
                            audits_busy.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            });
        }
        let bound = Duration::from_secs(120);
        wait_for("transfers before the stop", bound, || {
            commits.load(Ordering::SeqCst) >= 20
        });

        server.pause();
        // Every worker and the auditor answer while etcd is stopped (none hangs).
        let marks: Vec<u64> = answered.iter().map(|a| a.load(Ordering::SeqCst)).collect();
        let busy_mark = audits_busy.load(Ordering::SeqCst);
        wait_for(
            "every worker answers an error while etcd is stopped",
            bound,
            || {
                answered
                    .iter()
                    .zip(&marks)
                    .all(|(a, m)| a.load(Ordering::SeqCst) > *m)
            },
        );
        wait_for(
            "the auditor answers BusyRetry while etcd is stopped",
            bound,
            || audits_busy.load(Ordering::SeqCst) > busy_mark,
        );

        server.kill_and_restart();
        let mark = commits.load(Ordering::SeqCst);
        let audit_mark = audits.load(Ordering::SeqCst);
        wait_for("transfers after the restart", bound, || {
            commits.load(Ordering::SeqCst) >= mark + 20
                && audits.load(Ordering::SeqCst) > audit_mark
        });
        stop.store(true, Ordering::SeqCst);
    });

    let tallies = tallies.lock().unwrap().clone();
    let busy: u64 =
        tallies.iter().map(|t| t.busy).sum::<u64>() + audits_busy.load(Ordering::SeqCst);
    assert!(busy > 0, "no BusyRetry while etcd was stopped: {tallies:?}");
    let check = connect(&server.endpoint, "bank/");
    let total = bank::audit(&check, ACCOUNTS).unwrap().unwrap();
    assert_eq!(total, OPENING * ACCOUNTS as i64, "total not conserved");
    let ledgers = bank::ledgers(&check, WORKERS).unwrap();
    for (w, tally) in tallies.iter().enumerate() {
        assert_eq!(
            ledgers[w] as u64, tally.commits,
            "worker {w}: the ledger counts {} transfers, the worker saw {} land: {tally:?}",
            ledgers[w], tally.commits
        );
    }
    eprintln!(
        "bank with faults: {tallies:?}, audits {}",
        audits.load(Ordering::SeqCst)
    );
    // The accounts' history is one transfer per ledger entry: no commit wrote twice.
    let rows = check.dump().unwrap();
    let ledger_versions: u64 = rows
        .iter()
        .filter(|(key, _, _)| key.starts_with("ledger/"))
        .map(|(_, version, _)| *version)
        .sum();
    assert_eq!(
        ledger_versions,
        tallies.iter().map(|t| t.commits).sum::<u64>()
    );
}

/// A stopped etcd: a transaction answers `BusyRetry` (its first read gets no answer within
/// the budget), carried by its `TxError` for a closure with its own error type; nothing is
/// written.
#[test]
fn a_stopped_etcd_fails_a_transaction_with_busy_retry() {
    let server = EtcdServer::start("tx-stopped");
    let store = connect(&server.endpoint, "bank/");
    store.atomically(|tx| tx.set(&k("a"), 1)).unwrap();
    server.pause();
    let e = store.atomically(|tx| tx.set(&k("a"), 2)).unwrap_err();
    assert_eq!(e, BusyRetry);
    let e: Result<(), stm_store_etcd::TxError> = store.try_atomically(|tx| tx.set(&k("b"), 2));
    assert_eq!(e.unwrap_err().error(), Some(&Error::from(BusyRetry)));
    server.resume();
    assert_eq!(store.dump().unwrap(), vec![(k("a"), 1, Some(1))]);
}

/// A transaction whose commit is sent to an etcd that stops before answering: nobody could
/// commit it again later, so the call itself settles it, past its budget, once etcd answers
/// again (after `SIGCONT`, or after `SIGKILL` and a restart on the same data): either the
/// commit landed (the call returns the closure's value) or it is fenced and the closure runs
/// again. Either way the increment lands exactly once.
#[test]
fn a_transaction_commit_in_doubt_is_settled_within_the_call() {
    for kill in [false, true] {
        let server = Mutex::new(EtcdServer::start(if kill {
            "tx-doubt-kill"
        } else {
            "tx-doubt-cont"
        }));
        let endpoint = server.lock().unwrap().endpoint.clone();
        let store = connect(&endpoint, "bank/");
        store.atomically(|tx| tx.set(&k("n"), 0)).unwrap(); // and the markers' lease
        let before = store.requests();
        let mut attempts = Vec::new();
        let counted = std::thread::scope(|s| {
            s.spawn(|| {
                // The read, the commit, and tries to settle it until the call's budget was
                // spent (a try per request timeout: two within the budget) and then some: the
                // call is still settling it after its budget, and only then does etcd come back.
                wait_for(
                    "tries to settle it past the budget",
                    Duration::from_secs(60),
                    || store.requests() >= before + 6,
                );
                let mut server = server.lock().unwrap();
                if kill {
                    server.kill_and_restart();
                } else {
                    server.resume();
                }
            });
            store.atomically(|tx| {
                let n = tx.get(&k("n"))?.unwrap();
                attempts.push(tx.attempt());
                if tx.attempt() == 1 {
                    // etcd answered the read, so the commit is sent without a check first.
                    server.lock().unwrap().pause();
                }
                tx.set(&k("n"), n + 1)?;
                Ok(n + 1)
            })
        });
        eprintln!("commit in doubt, kill = {kill}: attempts {attempts:?}");
        assert_eq!(counted.unwrap(), 1, "kill = {kill}, attempts {attempts:?}");
        assert_eq!(
            store.dump().unwrap(),
            vec![(k("n"), 2, Some(1))],
            "kill = {kill}: the increment landed exactly once (attempts {attempts:?})"
        );
    }
}

/// A transaction waiting in `retry` while etcd is killed, down for longer than a call's budget,
/// and restarted: its watch breaks, is set up again from the same revision once etcd is back,
/// and the commit made after the restart wakes it.
#[test]
fn retry_waits_through_an_etcd_restart() {
    let mut server = EtcdServer::start("tx-retry-restart");
    let store = connect(&server.endpoint, "bank/");
    store.atomically(|tx| tx.set(&k("job"), 0)).unwrap();
    let (reported, first_run) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            store
                .transaction()
                .timeout(Duration::from_secs(120))
                .run(|tx| {
                    let job = tx.get(&k("job"))?.unwrap();
                    let _ = reported.send(store.requests());
                    if job > 0 {
                        Ok(job)
                    } else {
                        tx.retry()
                    }
                })
        });
        let mark = first_run.recv_timeout(Duration::from_secs(60)).unwrap();
        // The watch has been asked for.
        wait_for("the watch", Duration::from_secs(60), || {
            store.requests() > mark
        });
        server.kill();
        // Tries to set the watch up again, refused, past the budget (about nine in 2.5 s).
        let down = store.requests();
        wait_for("tries past the budget", Duration::from_secs(60), || {
            store.requests() >= down + 12
        });
        server.restart();
        let mut job = store.usevar(k("job")).unwrap();
        job.set(5);
        job.commit().unwrap();
        assert_eq!(waiter.join().unwrap().expect("woken after the restart"), 5);
    });
}
