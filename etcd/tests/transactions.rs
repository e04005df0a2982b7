//! Transactions over etcd, beyond the shared scenarios (`contract.rs`): what they cost in round
//! trips (prefetch, the snapshot a failed commit reads for the next attempt, read-only
//! transactions that send no commit), the async API on a multi-threaded runtime (futures that
//! are `Send`, `retry` awaited in a task), a revision compacted away under a running attempt or
//! a waiting one, and a `Tx` kept past its attempt.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{endpoints, fresh_prefix, k, raw_at, EtcdServer};
use stm_store_etcd::{blocking, EtcdStore, Options, TxError};

/// A lease that no test outlives, so that no lease is granted again in the middle of a count.
fn long_lease() -> Options {
    Options {
        lease_ttl: Duration::from_secs(3600),
        ..Options::default()
    }
}

/// A blocking store on the test etcd whose requests the test counts, and another one on the
/// same prefix for "someone else".
fn two_stores(
    name: &str,
) -> (
    blocking::EtcdStore<String, i64>,
    blocking::EtcdStore<String, i64>,
) {
    let prefix = fresh_prefix(name);
    let connect = || blocking::EtcdStore::connect_with(endpoints(), prefix.clone(), long_lease());
    (connect().unwrap(), connect().unwrap())
}

/// Requests sent by `store` while `f` runs.
fn requests<T>(store: &blocking::EtcdStore<String, i64>, f: impl FnOnce() -> T) -> (T, u64) {
    let before = store.requests();
    let value = f();
    (value, store.requests() - before)
}

fn transfer(tx: &mut blocking::Tx<'_, String, i64>) -> Result<(), TxError> {
    let (a, b) = (k("a"), k("b"));
    let x = tx.get(&a)?.unwrap_or(0);
    let y = tx.get(&b)?.unwrap_or(0);
    tx.set(&a, x - 1)?;
    tx.set(&b, y + 1)
}

/// A transfer reads two keys and commits: three round trips, or two with both keys prefetched
/// (the first read brings both). A transaction that only reads sends no commit: its reads were
/// one linearizable snapshot already. A transaction whose commit fails runs again at once from
/// what the failed commit read, so its second run sends only its commit; after a second
/// conflict it waits, and its third run reads both keys again in one request.
#[test]
fn round_trips_with_and_without_prefetch() {
    let (store, other) = two_stores("trips");
    // The first commit also asks for the markers' lease: keep it out of the counts.
    store.atomically(transfer).unwrap();
    let ((), plain) = requests(&store, || store.atomically(transfer).unwrap());
    assert_eq!(plain, 3, "two reads and the commit");
    let ((), prefetched) = requests(&store, || {
        store
            .transaction()
            .prefetch([k("a"), k("b")])
            .run(transfer)
            .unwrap()
    });
    assert_eq!(prefetched, 2, "one read for both keys, and the commit");
    let (sum, read_only) = requests(&store, || {
        store
            .transaction()
            .prefetch([k("a"), k("b")])
            .run(|tx| Ok::<_, TxError>(tx.get(&k("a"))?.unwrap() + tx.get(&k("b"))?.unwrap()))
            .unwrap()
    });
    assert_eq!((sum, read_only), (0, 1), "one read, no commit");
    assert_eq!(
        store.dump().unwrap(),
        vec![(k("a"), 3, Some(-3)), (k("b"), 3, Some(3))]
    );

    // Someone else writes "b" between the first run's reads and its commit.
    let mut runs = 0;
    let ((), conflicted) = requests(&store, || {
        store
            .transaction()
            .prefetch([k("a"), k("b")])
            .run(|tx| {
                runs += 1;
                let x = tx.get(&k("a"))?.unwrap();
                if runs == 1 {
                    let mut b = other.usevar(k("b")).unwrap();
                    b.set(100);
                    b.commit().unwrap();
                }
                let y = tx.get(&k("b"))?.unwrap();
                tx.set(&k("a"), x - 1)?;
                tx.set(&k("b"), y + 1)
            })
            .unwrap()
    });
    assert_eq!(runs, 2);
    assert_eq!(
        conflicted, 3,
        "the first run's read and failed commit, then the second run's commit alone"
    );
    assert_eq!(
        store.dump().unwrap(),
        vec![(k("a"), 4, Some(-4)), (k("b"), 5, Some(101))]
    );

    // Without prefetch, and someone else writes "b" during the first two runs.
    let mut runs = 0;
    let ((), twice) = requests(&store, || {
        store
            .atomically(|tx| {
                runs += 1;
                let x = tx.get(&k("a"))?.unwrap();
                if runs <= 2 {
                    let mut b = other.usevar(k("b")).unwrap();
                    b.set(200 + runs);
                    b.commit().unwrap();
                }
                let y = tx.get(&k("b"))?.unwrap();
                tx.set(&k("a"), x - 1)?;
                tx.set(&k("b"), y + 1)
            })
            .unwrap()
    });
    assert_eq!(runs, 3);
    assert_eq!(
        twice,
        3 + 1 + 2,
        "run 1: two reads and a failed commit; run 2 (at once, from the snapshot): a failed \
         commit; run 3 (after a wait): one read for both keys, and the commit"
    );
    assert_eq!(
        store.dump().unwrap(),
        vec![(k("a"), 5, Some(-5)), (k("b"), 8, Some(203))]
    );
}

/// The async API on a multi-threaded runtime: transactions run in spawned tasks (their futures
/// are `Send`), transfers from four tasks conserve the total that audits see, and a task
/// waiting in `retry` (inside `or_else`) is woken by another task's commit.
#[test]
fn async_transactions_in_spawned_tasks() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Arc::new(
            EtcdStore::<String, i64>::connect(endpoints(), fresh_prefix("async"))
                .await
                .unwrap(),
        );
        const ACCOUNTS: usize = 4;
        let names: Arc<Vec<String>> = Arc::new((0..ACCOUNTS).map(|i| format!("acct{i}")).collect());
        store
            .atomically(|tx| {
                let names = Arc::clone(&names);
                async move {
                    for name in names.iter() {
                        tx.set(name, 100).await?;
                    }
                    Ok(())
                }
            })
            .await
            .unwrap();

        let waiter = tokio::spawn({
            let store = Arc::clone(&store);
            async move {
                let (main, spare) = (k("main"), k("spare"));
                let (main, spare) = (&main, &spare);
                store
                    .transaction()
                    .timeout(Duration::from_secs(60))
                    .run(|tx| async move {
                        tx.or_else(
                            |tx| async move {
                                match tx.get(main).await? {
                                    Some(n) if n > 0 => tx.set(main, n - 1).await.map(|()| "main"),
                                    _ => tx.retry(),
                                }
                            },
                            |tx| async move {
                                match tx.get(spare).await? {
                                    Some(n) if n > 0 => {
                                        tx.set(spare, n - 1).await.map(|()| "spare")
                                    }
                                    _ => tx.retry(),
                                }
                            },
                        )
                        .await
                    })
                    .await
            }
        });

        let workers: Vec<_> = (0..4)
            .map(|w| {
                let (store, names) = (Arc::clone(&store), Arc::clone(&names));
                tokio::spawn(async move {
                    for i in 0..8 {
                        let from = &names[(w + i) % ACCOUNTS];
                        let to = &names[(w + i + 1) % ACCOUNTS];
                        store
                            .atomically(|tx| async move {
                                let a = tx.get(from).await?.unwrap();
                                let b = tx.get(to).await?.unwrap();
                                tx.set(from, a - 1).await?;
                                tx.set(to, b + 1).await
                            })
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for _ in 0..8 {
            let names = Arc::clone(&names);
            let total = store
                .atomically(|tx| {
                    let names = Arc::clone(&names);
                    async move {
                        let mut sum = 0;
                        for name in names.iter() {
                            sum += tx.get(name).await?.unwrap();
                        }
                        Ok(sum)
                    }
                })
                .await
                .unwrap();
            assert_eq!(total, 100 * ACCOUNTS as i64, "an audit saw a torn total");
        }
        for worker in workers {
            worker.await.unwrap();
        }
        let spare = k("spare");
        store
            .atomically(|tx| {
                let spare = &spare;
                async move { tx.set(spare, 1).await }
            })
            .await
            .unwrap();
        assert_eq!(waiter.await.unwrap().unwrap(), "spare");
        let rows = store.dump().await.unwrap();
        let accounts: i64 = rows
            .iter()
            .filter(|(key, _, _)| key.starts_with("acct"))
            .map(|(_, _, v)| v.unwrap())
            .sum();
        assert_eq!(accounts, 100 * ACCOUNTS as i64);
        let transfers: u64 = rows
            .iter()
            .filter(|(key, _, _)| key.starts_with("acct"))
            .map(|(_, version, _)| version - 1)
            .sum();
        assert_eq!(transfers, 2 * 4 * 8, "a transfer was lost or applied twice");
        assert!(rows.contains(&(k("spare"), 2, Some(0))), "{rows:?}");
    });
}

/// etcd compacts its history under a running attempt (its revision is gone before its second
/// read) and under a waiting one (before or after its watch is set up): the first runs again
/// from a fresh revision, the second still wakes on the change it waits for. On a private etcd,
/// since compaction is global.
#[test]
fn compaction_under_an_attempt_or_a_wait() {
    let server = EtcdServer::start("compact");
    let at = vec![server.endpoint.clone()];
    let store = blocking::EtcdStore::<String, i64>::connect(&at, "compact/").expect("connect");
    let other = blocking::EtcdStore::<String, i64>::connect(&at, "compact/").expect("connect");
    let compact = || {
        raw_at(&at, async |c: &mut etcd_client::Client| {
            let now = c.get("x", None).await.unwrap().header().unwrap().revision();
            c.compact(now, None).await.unwrap();
        })
    };
    let put = |key: &str, value: i64| {
        let mut v = other.usevar(k(key)).unwrap();
        v.set(value);
        v.commit().unwrap();
    };
    put("a", 1);
    put("b", 2);

    let mut runs = Vec::new();
    let sum = store
        .atomically(|tx| {
            let a = tx.get(&k("a"))?.unwrap();
            if tx.attempt() == 1 {
                put("c", 3); // a revision after the attempt's, then compact up to it
                compact();
            }
            let b = tx.get(&k("b"))?.unwrap();
            runs.push((a, b));
            tx.set(&k("sum"), a + b)?;
            Ok(a + b)
        })
        .unwrap();
    assert_eq!(sum, 3);
    assert_eq!(
        runs,
        [(1, 2)],
        "the first run stopped at its read at a compacted revision"
    );

    let (reported, first_run) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            store
                .transaction()
                .timeout(Duration::from_secs(60))
                .run(|tx| {
                    let job = tx.get(&k("job"))?;
                    let _ = reported.send(());
                    match job {
                        Some(job) => Ok(job),
                        None => tx.retry(),
                    }
                })
        });
        first_run.recv_timeout(Duration::from_secs(60)).unwrap();
        put("c", 4);
        compact();
        put("job", 9);
        assert_eq!(waiter.join().unwrap().expect("woken"), 9);
    });
}

/// A `Tx` is the attempt's: a clone kept past the closure's future panics when used, with a
/// message that says so, rather than reading or writing outside any transaction.
#[test]
fn a_tx_kept_past_its_attempt_panics() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = runtime
        .block_on(EtcdStore::<String, i64>::connect(
            endpoints(),
            fresh_prefix("kept"),
        ))
        .unwrap();
    let mut kept = None;
    runtime
        .block_on(store.atomically(|tx| {
            kept = Some(tx.clone());
            async move { tx.set(&k("a"), 1).await }
        }))
        .unwrap();
    let kept = kept.unwrap();
    let used = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(kept.get(&k("a")))
    }));
    let message = used.unwrap_err();
    let message = message
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| message.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(
        message.contains("used after its attempt ended"),
        "{message}"
    );
}
