//! Commits/s and latency percentiles of the etcd store for 1, 4 and 16 concurrent clients.
//!
//! Each client is a task with its own connection (its own `EtcdStore`), on a Tokio runtime
//! with two worker threads. Two workloads:
//! - `own key`: each client increments its own key (`usevar`, `set`, `commit`): no conflicts,
//!   so this is what etcd and the client cost per commit;
//! - `transfer`: each client moves 1 between two of 16 shared accounts (`using` of two keys,
//!   two `set`s, `commit`), so clients conflict.
//!
//! Latency is of the `commit` call alone, and of the whole read-modify-write (the read too),
//! recorded in an HDR histogram (microseconds) for successful commits.
//!
//! ```text
//! cargo run --release -p stm-store-etcd --example bench -- --endpoints 127.0.0.1:2379 --seconds 3
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use stm_store_etcd::{Error, EtcdStore};

const USAGE: &str = "usage: bench [--endpoints HOST:PORT[,...]] [--seconds S] [--clients 1,4,16]";

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    OwnKey,
    Transfer,
}

struct Outcome {
    commits: u64,
    conflicts: u64,
    busy: u64,
    commit_latency: Histogram<u64>,
    rmw_latency: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("histogram")
}

async fn client(
    endpoints: Arc<Vec<String>>,
    prefix: String,
    id: usize,
    workload: Workload,
    start: Arc<tokio::sync::Barrier>,
    seconds: f64,
) -> Result<Outcome, Error> {
    let store = EtcdStore::<String, i64>::connect(endpoints.as_slice(), prefix).await?;
    let mut outcome = Outcome {
        commits: 0,
        conflicts: 0,
        busy: 0,
        commit_latency: histogram(),
        rmw_latency: histogram(),
    };
    // Everyone connected: measure from here.
    start.wait().await;
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let mut n = id as u64;
    while Instant::now() < until {
        let started = Instant::now();
        let (answer, commit_started) = match workload {
            Workload::OwnKey => {
                let mut v = store.usevar(format!("own/{id}")).await?;
                v.set(v.value().copied().unwrap_or(0) + 1);
                let commit_started = Instant::now();
                (v.commit().await, commit_started)
            }
            Workload::Transfer => {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let from = (n >> 33) % 16;
                let to = (from + 1 + (n >> 40) % 15) % 16;
                let (from, to) = (format!("acct/{from:02}"), format!("acct/{to:02}"));
                let mut c = store.using([from.clone(), to.clone()]).await?;
                let a = c[from.as_str()].value().copied().unwrap_or(0);
                let b = c[to.as_str()].value().copied().unwrap_or(0);
                c[from.as_str()].set(a - 1);
                c[to.as_str()].set(b + 1);
                let commit_started = Instant::now();
                (c.commit().await, commit_started)
            }
        };
        let done = Instant::now();
        match answer {
            Ok(()) => {
                outcome.commits += 1;
                let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
                let commit = micros(done - commit_started);
                outcome.commit_latency.record(commit).expect("in bounds");
                outcome
                    .rmw_latency
                    .record(micros(done - started))
                    .expect("in bounds");
            }
            Err(e) if e == stm_store::Error::ConcurrentUpdate => outcome.conflicts += 1,
            Err(e) if e == stm_store::Error::BusyRetry => outcome.busy += 1,
            Err(e) => return Err(e),
        }
    }
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
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let Some(value) = args.next() else {
            eprintln!("{USAGE}");
            std::process::exit(2);
        };
        match flag.as_str() {
            "--endpoints" => endpoints = value.split(',').map(str::to_string).collect(),
            "--seconds" => seconds = value.parse().expect("--seconds: a number"),
            "--clients" => {
                clients = value
                    .split(',')
                    .map(|c| c.parse().expect("--clients: counts"))
                    .collect()
            }
            _ => {
                eprintln!("{USAGE}");
                std::process::exit(2);
            }
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
    println!("| workload | clients | commits/s | conflicts/s | BusyRetry | commit p50 | commit p99 | read+commit p50 | read+commit p99 |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for workload in [Workload::OwnKey, Workload::Transfer] {
        for &count in &clients {
            let prefix = format!("bench/{run}/{count}/");
            let start = Arc::new(tokio::sync::Barrier::new(count + 1));
            let (outcomes, elapsed): (Vec<Outcome>, f64) = runtime.block_on(async {
                let tasks: Vec<_> = (0..count)
                    .map(|id| {
                        let start = start.clone();
                        let (endpoints, prefix) = (endpoints.clone(), prefix.clone());
                        tokio::spawn(client(endpoints, prefix, id, workload, start, seconds))
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
            let mut commit = histogram();
            let mut rmw = histogram();
            let (mut commits, mut conflicts, mut busy) = (0, 0, 0);
            for o in &outcomes {
                commits += o.commits;
                conflicts += o.conflicts;
                busy += o.busy;
                commit.add(&o.commit_latency).expect("same bounds");
                rmw.add(&o.rmw_latency).expect("same bounds");
            }
            let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            println!(
                "| {} | {count} | {:.0} | {:.0} | {busy} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
                if workload == Workload::OwnKey { "own key" } else { "transfer, 16 accounts" },
                commits as f64 / elapsed,
                conflicts as f64 / elapsed,
                ms(&commit, 0.5),
                ms(&commit, 0.99),
                ms(&rmw, 0.5),
                ms(&rmw, 0.99),
            );
        }
    }
}
