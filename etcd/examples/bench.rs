//! Commits/s and latency percentiles of the etcd store for 1, 4 and 16 concurrent clients.
//!
//! Each client is a task with its own connection (its own `EtcdStore`), on a Tokio runtime
//! with two worker threads. Workloads:
//! - `own key`: each client increments its own key (`usevar`, `set`, `commit`): no conflicts,
//!   so this is what etcd and the client cost per commit;
//! - `transfer`: each client moves 1 between two of 16 shared accounts, until it lands (so
//!   clients conflict, and a conflict costs another try), three ways:
//!   - `handles`: `using` of the two keys, two `set`s, `commit`; on `ConcurrentUpdate`, read
//!     again and redo (the caller's loop);
//!   - `atomically`: `EtcdStore::atomically`, reading both keys with `Tx::get` (a round trip
//!     each) and writing them; its own loop reruns the closure after a conflict (the first
//!     time at once, from the snapshot the failed commit read; then after its default
//!     backoff);
//!   - `atomically + prefetch`: the same, with both keys named to `Transaction::prefetch`, so
//!     the first read brings both.
//!
//! Latency is of the whole operation (reads, commit, and for transfers every retry until it
//! lands), recorded in an HDR histogram (microseconds); `max` is the slowest one (a client
//! starved by the others would show there). `conflicts/s` counts commits that failed on a
//! changed key; `trips` is round trips to etcd per landed operation (`EtcdStore::requests`).
//!
//! `--backoff none` or `--backoff FIRST_MS,MAX_MS` sets the transactions' [`Backoff`] (default:
//! at once after the first conflict, then 1 ms doubling to 10 ms).
//!
//! ```text
//! cargo run --release -p stm-store-etcd --example bench -- --endpoints 127.0.0.1:2379 --seconds 3
//! ```

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use stm_store_etcd::{Backoff, Error, EtcdStore};

const USAGE: &str = "usage: bench [--endpoints HOST:PORT[,...]] [--seconds S] [--clients 1,4,16] \
                     [--workloads own,handles,atomically,prefetch] [--backoff none|FIRST_MS,MAX_MS]";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Workload {
    OwnKey,
    Handles,
    Atomically,
    Prefetch,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::OwnKey => "own key (handles)",
            Workload::Handles => "transfer: handles",
            Workload::Atomically => "transfer: atomically",
            Workload::Prefetch => "transfer: atomically + prefetch",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "own" => Workload::OwnKey,
            "handles" => Workload::Handles,
            "atomically" => Workload::Atomically,
            "prefetch" => Workload::Prefetch,
            _ => return None,
        })
    }
}

struct Outcome {
    done: u64,
    conflicts: u64,
    busy: u64,
    requests: u64,
    latency: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("histogram")
}

/// Two distinct accounts of 16, from a linear congruential generator.
fn pick(n: &mut u64) -> (String, String) {
    *n = n
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let from = (*n >> 33) % 16;
    let to = (from + 1 + (*n >> 40) % 15) % 16;
    (format!("acct/{from:02}"), format!("acct/{to:02}"))
}

/// One operation of `workload`, until it lands: the conflicts it met on the way.
async fn operation(
    store: &EtcdStore<String, i64>,
    id: usize,
    workload: Workload,
    backoff: Backoff,
    n: &mut u64,
) -> Result<u64, Error> {
    match workload {
        Workload::OwnKey => {
            let mut v = store.usevar(format!("own/{id}")).await?;
            v.set(v.value().copied().unwrap_or(0) + 1);
            v.commit().await?;
            Ok(0)
        }
        Workload::Handles => {
            let (from, to) = pick(n);
            let mut conflicts = 0;
            loop {
                let mut c = store.using([from.clone(), to.clone()]).await?;
                let a = c[&from].value().copied().unwrap_or(0);
                let b = c[&to].value().copied().unwrap_or(0);
                c[&from].set(a - 1);
                c[&to].set(b + 1);
                match c.commit().await {
                    Ok(()) => return Ok(conflicts),
                    Err(e) if e == stm_store::Error::ConcurrentUpdate => conflicts += 1,
                    Err(e) => return Err(e),
                }
            }
        }
        Workload::Atomically | Workload::Prefetch => {
            let (from, to) = pick(n);
            let (from, to) = (&from, &to);
            let attempts = AtomicU32::new(0);
            let attempts = &attempts;
            let mut transaction = store.transaction().backoff(backoff);
            if workload == Workload::Prefetch {
                transaction = transaction.prefetch([from.clone(), to.clone()]);
            }
            transaction
                .run(|tx| async move {
                    attempts.store(tx.attempt(), Ordering::Relaxed);
                    let a = tx.get(from).await?.unwrap_or(0);
                    let b = tx.get(to).await?.unwrap_or(0);
                    tx.set(from, a - 1).await?;
                    tx.set(to, b + 1).await
                })
                .await
                .map_err(|e| e.into_error().expect("no deadline: only etcd fails it"))?;
            Ok(u64::from(attempts.load(Ordering::Relaxed)) - 1)
        }
    }
}

async fn client(
    endpoints: Arc<Vec<String>>,
    prefix: String,
    id: usize,
    workload: Workload,
    backoff: Backoff,
    start: Arc<tokio::sync::Barrier>,
    seconds: f64,
) -> Result<Outcome, Error> {
    let store = EtcdStore::<String, i64>::connect(endpoints.as_slice(), prefix).await?;
    let mut outcome = Outcome {
        done: 0,
        conflicts: 0,
        busy: 0,
        requests: 0,
        latency: histogram(),
    };
    let mut n = id as u64;
    // One operation first (the markers' lease), then everyone connected: measure from here.
    operation(&store, id, workload, backoff, &mut n).await?;
    start.wait().await;
    let requests = store.requests();
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < until {
        let started = Instant::now();
        match operation(&store, id, workload, backoff, &mut n).await {
            Ok(conflicts) => {
                outcome.done += 1;
                outcome.conflicts += conflicts;
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                outcome.latency.record(micros.max(1)).expect("in bounds");
            }
            Err(e) if e == stm_store::Error::BusyRetry => outcome.busy += 1,
            Err(e) => return Err(e),
        }
    }
    outcome.requests = store.requests() - requests;
    Ok(outcome)
}

fn main() {
    let mut endpoints: Vec<String> = std::env::var("STM_ETCD_ENDPOINTS")
        .unwrap_or_else(|_| "127.0.0.1:2379".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let mut seconds = 3.0f64;
    let mut clients = vec![1usize, 4, 16];
    let mut workloads = vec![
        Workload::OwnKey,
        Workload::Handles,
        Workload::Atomically,
        Workload::Prefetch,
    ];
    let mut backoff = Backoff::default();
    let mut args = std::env::args().skip(1);
    let usage = || -> ! {
        eprintln!("{USAGE}");
        std::process::exit(2)
    };
    while let Some(flag) = args.next() {
        let Some(value) = args.next() else { usage() };
        match flag.as_str() {
            "--endpoints" => endpoints = value.split(',').map(str::to_string).collect(),
            "--seconds" => seconds = value.parse().unwrap_or_else(|_| usage()),
            "--clients" => {
                clients = value
                    .split(',')
                    .map(|c| c.parse().unwrap_or_else(|_| usage()))
                    .collect()
            }
            "--workloads" => {
                workloads = value
                    .split(',')
                    .map(|w| Workload::parse(w).unwrap_or_else(|| usage()))
                    .collect()
            }
            "--backoff" => {
                backoff = match value.split_once(',') {
                    _ if value == "none" => Backoff::none(),
                    Some((first, max)) => {
                        let ms =
                            |v: &str| Duration::from_millis(v.parse().unwrap_or_else(|_| usage()));
                        Backoff::exponential(ms(first), ms(max))
                    }
                    None => usage(),
                }
            }
            _ => usage(),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let endpoints = Arc::new(endpoints);
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    println!("| workload | clients | ops/s | conflicts/s | trips | BusyRetry | p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &workload in &workloads {
        for &count in &clients {
            let prefix = format!("bench/{run}/{workload:?}/{count}/");
            let start = Arc::new(tokio::sync::Barrier::new(count + 1));
            let (outcomes, elapsed): (Vec<Outcome>, f64) = runtime.block_on(async {
                let tasks: Vec<_> = (0..count)
                    .map(|id| {
                        let start = start.clone();
                        let (endpoints, prefix) = (endpoints.clone(), prefix.clone());
                        tokio::spawn(client(
                            endpoints, prefix, id, workload, backoff, start, seconds,
                        ))
                    })
                    .collect();
                start.wait().await;
                let started = Instant::now();
                let mut outcomes = Vec::new();
                for task in tasks {
                    outcomes.push(task.await.expect("client task").expect("client"));
                }
                (outcomes, started.elapsed().as_secs_f64())
            });
            let mut latency = histogram();
            let (mut done, mut conflicts, mut busy, mut requests) = (0, 0, 0, 0);
            for o in &outcomes {
                done += o.done;
                conflicts += o.conflicts;
                busy += o.busy;
                requests += o.requests;
                latency.add(&o.latency).expect("same bounds");
            }
            let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
            println!(
                "| {} | {count} | {:.0} | {:.0} | {:.2} | {busy} | {:.2} ms | {:.2} ms | {:.0} ms |",
                workload.name(),
                done as f64 / elapsed,
                conflicts as f64 / elapsed,
                requests as f64 / done.max(1) as f64,
                ms(0.5),
                ms(0.99),
                ms(1.0),
            );
        }
    }
}
