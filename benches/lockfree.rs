//! What lock-freedom is for: commit throughput and latency when a committer stops in the
//! middle of a commit, and when there are many more threads than cores. The store against the
//! mutex map (Axon.STM's design). Not a criterion benchmark: it reports latency percentiles
//! (`hdrhistogram`), from plain timed runs.
//!
//! Both workloads are two-key transfers between distinct random accounts of 64, each retried
//! until it lands (with the same [`Backoff::Exponential`] as the contention benchmarks). A
//! transfer's latency runs from its start until it committed, retries included.
//!
//! - `stall`: 4 committer threads for `STALL_SECONDS` seconds (default 2). Thread 0 stops for
//!   1 ms in the middle of every 1,000th commit attempt: the store's commit after claiming its
//!   first key (`Collection::commit_paused(1)`, sleep, `resume`); the mutex map's while it
//!   holds the lock, between validating and writing. Reported for the other three threads only.
//! - `oversubscribed`: 32 threads (on however many cores the machine has) for
//!   `OVERSUBSCRIBED_SECONDS` seconds (default: `STALL_SECONDS`, else 2); every thread counts.
//!
//! Prints a table on stdout and one `LOCKFREE` line per run on stderr, which
//! `benches/report.py` reads back. In test mode (`cargo bench -- --test`, `cargo test
//! --benches`) every run lasts 0.05 s. Positional arguments filter the workloads by name, as
//! criterion's do.

#[allow(dead_code)]
mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use common::{test_mode, Backoff, Kv, MutexKv, Ours, Rng, Stalling};
use hdrhistogram::Histogram;

const ACCOUNTS: u64 = 64;
const BALANCE: u64 = 1_000;
/// How long the stalled committer stops, and how often (every `STALL_EVERY`-th commit attempt).
const STALL: Duration = Duration::from_millis(1);
const STALL_EVERY: u64 = 1_000;
const STALL_THREADS: usize = 4;
const OVERSUBSCRIBED_THREADS: usize = 32;
/// Latencies are recorded in nanoseconds, up to 10 s, to 3 significant digits.
const MAX_LATENCY_NS: u64 = 10_000_000_000;

/// What the measured threads of one run did.
struct Outcome {
    /// Wall time of the run (start barrier to the stop signal).
    seconds: f64,
    /// Threads that ran, and threads measured (the stalled one is not).
    threads: usize,
    measured: usize,
    /// Transfers committed by the measured threads.
    commits: u64,
    /// Commit attempts and conflicts (`ConcurrentUpdate` / failed validation) of the measured
    /// threads.
    attempts: u64,
    conflicts: u64,
    /// How many times the stalled thread stopped.
    stalls: u64,
    latency: Histogram<u64>,
}

impl Outcome {
    fn throughput(&self) -> f64 {
        self.commits as f64 / self.seconds
    }

    fn quantile_ns(&self, q: f64) -> u64 {
        self.latency.value_at_quantile(q)
    }
}

/// One thread's tallies.
struct Tally {
    commits: u64,
    attempts: u64,
    conflicts: u64,
    stalls: u64,
    latency: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("histogram bounds")
}

/// A different random stream for every thread of every run.
fn rng(thread: usize) -> Rng {
    static RUN: AtomicU64 = AtomicU64::new(0);
    Rng::new(RUN.fetch_add(1, Ordering::Relaxed) << 8 | thread as u64)
}

/// Transfers on `threads` threads for `duration`; thread 0 stalls if `stall_thread0`, and is
/// then left out of the outcome.
fn run<K: Stalling>(threads: usize, duration: Duration, stall_thread0: bool) -> Outcome {
    let kv = K::new(ACCOUNTS as usize, BALANCE);
    let stop = AtomicBool::new(false);
    let barrier = Barrier::new(threads + 1);
    let (tallies, seconds) = thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|index| {
                let (kv, stop, barrier) = (&kv, &stop, &barrier);
                let stalls = stall_thread0 && index == 0;
                scope.spawn(move || transfers::<K>(kv, index, stalls, stop, barrier))
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
        let seconds = start.elapsed().as_secs_f64();
        let tallies: Vec<Tally> = handles
            .into_iter()
            .map(|handle| handle.join().expect("transfer thread panicked"))
            .collect();
        (tallies, seconds)
    });
    let mut values = Vec::new();
    kv.snapshot(&(0..ACCOUNTS).collect::<Vec<_>>(), &mut values);
    let total = values.iter().fold(0u64, |sum, v| sum.wrapping_add(*v));
    assert_eq!(
        total,
        ACCOUNTS * BALANCE,
        "{}: transfers must keep the total",
        K::NAME
    );
    let skip = usize::from(stall_thread0);
    let mut outcome = Outcome {
        seconds,
        threads,
        measured: threads - skip,
        commits: 0,
        attempts: 0,
        conflicts: 0,
        stalls: tallies.iter().map(|tally| tally.stalls).sum(),
        latency: histogram(),
    };
    for tally in &tallies[skip..] {
        outcome.commits += tally.commits;
        outcome.attempts += tally.attempts;
        outcome.conflicts += tally.conflicts;
        outcome
            .latency
            .add(&tally.latency)
            .expect("histograms of the same bounds");
    }
    outcome
}

/// One thread: transfers until `stop`, each timed from its start until it committed.
fn transfers<K: Stalling>(
    kv: &K,
    index: usize,
    stalls: bool,
    stop: &AtomicBool,
    barrier: &Barrier,
) -> Tally {
    let mut rng = rng(index);
    let mut tally = Tally {
        commits: 0,
        attempts: 0,
        conflicts: 0,
        stalls: 0,
        latency: histogram(),
    };
    barrier.wait();
    while !stop.load(Ordering::Relaxed) {
        let from = rng.below(ACCOUNTS);
        let to = (from + 1 + rng.below(ACCOUNTS - 1)) % ACCOUNTS;
        let start = Instant::now();
        let mut failures = 0;
        loop {
            tally.attempts += 1;
            let stall = (stalls && tally.attempts.is_multiple_of(STALL_EVERY)).then_some(STALL);
            tally.stalls += u64::from(stall.is_some());
            if kv.try_transfer(from, to, 1, stall) {
                break;
            }
            failures += 1;
            tally.conflicts += 1;
            Backoff::Exponential.wait(failures);
        }
        let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        tally.latency.saturating_record(nanos.max(1));
        tally.commits += 1;
    }
    tally
}

/// Seconds from the environment variable `name`, if it is set to a positive number.
fn env_seconds(name: &str) -> Option<f64> {
    let value = std::env::var(name).ok()?;
    let seconds: f64 = value
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{name}={value:?} is not a number of seconds"));
    assert!(seconds > 0.0, "{name} must be positive");
    Some(seconds)
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1e3)
}

fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        "-".to_string()
    } else {
        format!("{:.2}x", a / b)
    }
}

/// The ratio of two runs' latency quantiles.
fn latency_ratio(ours: &Outcome, mutex: &Outcome, quantile: f64) -> String {
    ratio(
        ours.quantile_ns(quantile) as f64,
        mutex.quantile_ns(quantile) as f64,
    )
}

/// Prints one row of the table and its `LOCKFREE` line.
fn report(workload: &str, name: &str, outcome: &Outcome) {
    println!(
        "{workload:<15} {name:<6} {:>7} {:>9.0} {:>9.1} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7.3}% {:>6}",
        format!("{}/{}", outcome.measured, outcome.threads),
        outcome.throughput(),
        outcome.commits as f64 / 1e3,
        us(outcome.quantile_ns(0.5)),
        us(outcome.quantile_ns(0.99)),
        us(outcome.quantile_ns(0.999)),
        us(outcome.quantile_ns(0.9999)),
        us(outcome.latency.max()),
        100.0 * outcome.conflicts as f64 / outcome.attempts.max(1) as f64,
        outcome.stalls,
    );
    eprintln!(
        "LOCKFREE {workload}/{name} threads={} measured={} seconds={:.3} commits={} \
         throughput={:.0} p50_ns={} p99_ns={} p999_ns={} p9999_ns={} max_ns={} attempts={} \
         conflicts={} stalls={}",
        outcome.threads,
        outcome.measured,
        outcome.seconds,
        outcome.commits,
        outcome.throughput(),
        outcome.quantile_ns(0.5),
        outcome.quantile_ns(0.99),
        outcome.quantile_ns(0.999),
        outcome.quantile_ns(0.9999),
        outcome.latency.max(),
        outcome.attempts,
        outcome.conflicts,
        outcome.stalls,
    );
}

/// Runs one workload for both implementations (the mutex map first) and prints the ratios.
fn workload(name: &str, threads: usize, duration: Duration, stall: bool) -> (Outcome, Outcome) {
    let mutex = run::<MutexKv>(threads, duration, stall);
    report(name, MutexKv::NAME, &mutex);
    let ours = run::<Ours>(threads, duration, stall);
    report(name, Ours::NAME, &ours);
    (ours, mutex)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filters: Vec<&String> = args.iter().filter(|arg| !arg.starts_with('-')).collect();
    let wanted =
        |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
    let (stall_seconds, oversubscribed_seconds) = if test_mode() {
        (0.05, 0.05)
    } else {
        let stall = env_seconds("STALL_SECONDS").unwrap_or(2.0);
        (
            stall,
            env_seconds("OVERSUBSCRIBED_SECONDS").unwrap_or(stall),
        )
    };
    let cores = thread::available_parallelism().map_or(1, usize::from);
    println!(
        "lockfree: 2-key transfers over {ACCOUNTS} accounts, {cores} cores; stall: \
         {STALL_THREADS} threads for {stall_seconds} s, thread 0 sleeps {} ms mid-commit every \
         {STALL_EVERY}th commit attempt (not measured); oversubscribed: \
         {OVERSUBSCRIBED_THREADS} threads for {oversubscribed_seconds} s",
        STALL.as_millis()
    );
    println!(
        "{:<15} {:<6} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>6}",
        "workload",
        "impl",
        "threads",
        "commits/s",
        "k commits",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "p99.99 us",
        "max us",
        "conflict",
        "stalls"
    );
    let mut ratios = Vec::new();
    if wanted("stall") {
        let duration = Duration::from_secs_f64(stall_seconds);
        let (ours, mutex) = workload("stall", STALL_THREADS, duration, true);
        ratios.push(format!(
            "stall (the other {} threads): throughput ours/mutex {} (target >= 10x); \
             p99.9 ours/mutex {} (target <= 0.1x); p99.99 ours/mutex {}",
            ours.measured,
            ratio(ours.throughput(), mutex.throughput()),
            latency_ratio(&ours, &mutex, 0.999),
            latency_ratio(&ours, &mutex, 0.9999),
        ));
    }
    if wanted("oversubscribed") {
        let duration = Duration::from_secs_f64(oversubscribed_seconds);
        let (ours, mutex) = workload("oversubscribed", OVERSUBSCRIBED_THREADS, duration, false);
        ratios.push(format!(
            "oversubscribed ({} threads): throughput ours/mutex {}; p50 ours/mutex {}; \
             p99 ours/mutex {}; p99.9 ours/mutex {} (target <= 1x)",
            ours.threads,
            ratio(ours.throughput(), mutex.throughput()),
            latency_ratio(&ours, &mutex, 0.5),
            latency_ratio(&ours, &mutex, 0.99),
            latency_ratio(&ours, &mutex, 0.999),
        ));
    }
    for line in ratios {
        println!("{line}");
    }
}
