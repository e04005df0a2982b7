//! What lock-freedom is for: commit throughput and latency when a committer stops in the
//! middle of a commit, and when there are many more threads than cores. The store against both
//! mutex maps and the floor. Not a criterion benchmark: it reports latency percentiles
//! (`hdrhistogram`), from plain timed runs.
//!
//! Both workloads are two-key transfers between distinct random accounts of 64, each retried
//! until it lands (with the same [`Backoff::Exponential`] as the contention benchmarks). A
//! transfer's latency runs from its start until it committed, retries included.
//!
//! - `stall`: two threads (one per core on a 2-core machine) for `STALL_SECONDS` seconds
//!   (default 2). Thread 0 stops for 1 ms in the middle of every 100th transfer: the store's
//!   commit after claiming its first key (`Collection::commit_paused(1)`, sleep, `resume`);
//!   the Axon-shaped mutex map's while it holds the lock between validating and writing;
//!   `mutex-one`'s while it holds the lock between reading and writing; the floor's after
//!   claiming its first key (the floor does not help: whoever needs that key waits). Thread 1,
//!   the worker, is measured, and every implementation runs twice: with the stalls (`stall`)
//!   and without (`unstalled`, thread 0 transferring normally), so that the worker's
//!   throughput is given relative to its own run without stalls.
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

use common::{test_mode, Backoff, Floor, Kv, MutexKv, MutexOne, Ours, Rng, Stalling};
use hdrhistogram::Histogram;

const ACCOUNTS: u64 = 64;
const BALANCE: u64 = 1_000;
/// How long the stalled committer stops, and how often (in every `STALL_EVERY`-th transfer).
const STALL: Duration = Duration::from_millis(1);
const STALL_EVERY: u64 = 100;
/// The stalled thread and the worker.
const STALL_THREADS: usize = 2;
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
    /// How many times the stalled thread stopped, and the time its stalled attempts took.
    stalls: u64,
    stalled_ns: u64,
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
    stalled_ns: u64,
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

/// What thread 0 of a run does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Thread0 {
    /// Transfers and is measured, as every other thread.
    Measured,
    /// Transfers, and is left out of the outcome.
    Unmeasured,
    /// Stops mid-commit in every `STALL_EVERY`-th transfer, and is left out of the outcome.
    Stalling,
}

/// Transfers on `threads` threads for `duration`, thread 0 as `thread0` says.
fn run<K: Stalling>(threads: usize, duration: Duration, thread0: Thread0) -> Outcome {
    let kv = K::new(ACCOUNTS as usize, BALANCE);
    let stop = AtomicBool::new(false);
    let barrier = Barrier::new(threads + 1);
    let (tallies, seconds) = thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|index| {
                let (kv, stop, barrier) = (&kv, &stop, &barrier);
                let stalls = thread0 == Thread0::Stalling && index == 0;
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
    let skip = usize::from(thread0 != Thread0::Measured);
    let mut outcome = Outcome {
        seconds,
        threads,
        measured: threads - skip,
        commits: 0,
        attempts: 0,
        conflicts: 0,
        stalls: tallies.iter().map(|tally| tally.stalls).sum(),
        stalled_ns: tallies.iter().map(|tally| tally.stalled_ns).sum(),
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
        stalled_ns: 0,
        latency: histogram(),
    };
    barrier.wait();
    while !stop.load(Ordering::Relaxed) {
        let from = rng.below(ACCOUNTS);
        let to = (from + 1 + rng.below(ACCOUNTS - 1)) % ACCOUNTS;
        let start = Instant::now();
        // Every STALL_EVERY-th transfer stops in its first attempt.
        let stalled = stalls && tally.commits % STALL_EVERY == STALL_EVERY - 1;
        let mut failures = 0;
        loop {
            tally.attempts += 1;
            let stall = (stalled && failures == 0).then_some(STALL);
            let stalled_from = stall.map(|_| Instant::now());
            let landed = kv.try_transfer(from, to, 1, stall);
            if let Some(stalled_from) = stalled_from {
                tally.stalls += 1;
                tally.stalled_ns += u64::try_from(stalled_from.elapsed().as_nanos()).unwrap_or(0);
            }
            if landed {
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

/// Prints one row of the table and its `LOCKFREE` line.
fn report(workload: &str, name: &str, outcome: &Outcome) {
    println!(
        "{workload:<15} {name:<9} {:>7} {:>9.0} {:>9.1} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7.3}% {:>6}",
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
         conflicts={} stalls={} stalled_ns={}",
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
        outcome.stalled_ns,
    );
}

/// The stall workload for one implementation: its worker without stalls, then with; returns
/// (stalled, unstalled).
fn stall<K: Stalling>(duration: Duration) -> (Outcome, Outcome) {
    let unstalled = run::<K>(STALL_THREADS, duration, Thread0::Unmeasured);
    report("unstalled", K::NAME, &unstalled);
    let stalled = run::<K>(STALL_THREADS, duration, Thread0::Stalling);
    report("stall", K::NAME, &stalled);
    (stalled, unstalled)
}

/// One line of the stall summary: the worker's throughput with stalls relative to without,
/// and its p99.99 relative to each mutex map's.
fn stall_summary(
    name: &str,
    (stalled, unstalled): &(Outcome, Outcome),
    mutexes: &[(&str, &Outcome)],
) -> String {
    let mut line = format!(
        "stall, {name:<9}: worker throughput with / without stalls {}; p99.99 {} us, max {} us",
        ratio(stalled.throughput(), unstalled.throughput()),
        us(stalled.quantile_ns(0.9999)),
        us(stalled.latency.max()),
    );
    for (mutex, outcome) in mutexes {
        line.push_str(&format!(
            "; p99.99 / {mutex}'s {}",
            ratio(
                stalled.quantile_ns(0.9999) as f64,
                outcome.quantile_ns(0.9999) as f64
            )
        ));
    }
    line
}

/// The oversubscribed workload for one implementation.
fn oversubscribed<K: Stalling>(duration: Duration) -> Outcome {
    let outcome = run::<K>(OVERSUBSCRIBED_THREADS, duration, Thread0::Measured);
    report("oversubscribed", K::NAME, &outcome);
    outcome
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
         {STALL_THREADS} threads for {stall_seconds} s each run, thread 0 sleeps {} ms \
         mid-commit in every {STALL_EVERY}th transfer, thread 1 measured; oversubscribed: \
         {OVERSUBSCRIBED_THREADS} threads for {oversubscribed_seconds} s",
        STALL.as_millis()
    );
    println!(
        "{:<15} {:<9} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>6}",
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
    let mut summary = Vec::new();
    if wanted("stall") {
        let duration = Duration::from_secs_f64(stall_seconds);
        let mutex = stall::<MutexKv>(duration);
        let mutex_one = stall::<MutexOne>(duration);
        let ours = stall::<Ours>(duration);
        let floor = stall::<Floor>(duration);
        let mutexes = [(MutexKv::NAME, &mutex.0), (MutexOne::NAME, &mutex_one.0)];
        summary.push(stall_summary(Ours::NAME, &ours, &mutexes));
        summary.push(stall_summary(MutexKv::NAME, &mutex, &[]));
        summary.push(stall_summary(MutexOne::NAME, &mutex_one, &[]));
        summary.push(stall_summary(Floor::NAME, &floor, &mutexes));
    }
    if wanted("oversubscribed") {
        let duration = Duration::from_secs_f64(oversubscribed_seconds);
        let mutex = oversubscribed::<MutexKv>(duration);
        let mutex_one = oversubscribed::<MutexOne>(duration);
        let ours = oversubscribed::<Ours>(duration);
        oversubscribed::<Floor>(duration);
        for (name, baseline) in [(MutexKv::NAME, &mutex), (MutexOne::NAME, &mutex_one)] {
            summary.push(format!(
                "oversubscribed ({} threads): ours / {name}: throughput {}; p99 {}; p99.9 {}",
                ours.threads,
                ratio(ours.throughput(), baseline.throughput()),
                ratio(
                    ours.quantile_ns(0.99) as f64,
                    baseline.quantile_ns(0.99) as f64
                ),
                ratio(
                    ours.quantile_ns(0.999) as f64,
                    baseline.quantile_ns(0.999) as f64
                ),
            ));
        }
    }
    for line in summary {
        println!("{line}");
    }
}
