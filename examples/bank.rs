//! The main demonstration: a contended bank, on the store and on a mutex.
//!
//! Transfer threads move money between random accounts: each transfer reads two accounts and
//! commits both new balances at once, re-reading and redoing it on `ConcurrentUpdate`. Auditor
//! threads meanwhile take consistent snapshots of every account, alternately with `using` over
//! all accounts and with `dump`, and check that the total never changes.
//!
//! The same workload then runs on the *mutex variant*, the design the store replaces: one
//! `parking_lot::Mutex` over a `HashMap<u64, (version, balance)>`, used the way Axon.STM uses
//! its lock. A transfer reads both accounts under the lock and releases it; it commits by taking
//! the lock again, checking that both versions are still the ones it read, and writing. An audit
//! reads every account under the lock.
//!
//! Each side runs several times, alternating store and mutex so that machine noise hits both.
//! The example prints, per side, the median commits per second and the min–max range; then the
//! ratio of the medians, with the range of the ratios of each store run to its mutex run.
//!
//! ```text
//! cargo run --release --example bank -- [--threads 4] [--auditors 1] [--accounts 64] [--seconds 2] [--runs 3]
//! cargo run --release --example bank -- --help
//! ```
//!
//! The last line is `total conserved: yes` when every snapshot and every end state had the right
//! total; otherwise it is `total conserved: NO` and the example exits with 1. A bad option
//! exits with 2.

/// The mutex map hashes with the store's own default hasher (foldhash), so the comparison is
/// of the concurrency schemes, not of the hash functions.
type HashMap<K, V> = std::collections::HashMap<K, V, stm_store::DefaultHasher>;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use stm_store::{Error, Store};

mod common;
use common::{grouped, number, plural, spread, XorShift};

const START_BALANCE: i64 = 1_000;

const USAGE: &str = "usage: cargo run --release --example bank -- \
[--threads N] [--auditors N] [--accounts N] [--seconds S] [--runs N]";

const MUTEX_VARIANT: &str = "one parking_lot::Mutex over a HashMap<u64, (version, balance)> (foldhash, as the store), \
used as Axon.STM uses its lock: read under the lock, then lock again to check the versions and write";

struct Config {
    threads: usize,
    auditors: usize,
    accounts: u64,
    seconds: f64,
    runs: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            threads: 4,
            auditors: 1,
            accounts: 64,
            seconds: 2.0,
            runs: 3,
        }
    }
}

impl Config {
    fn expected_total(&self) -> i64 {
        START_BALANCE * self.accounts as i64
    }
}

/// What a bank needs from a store.
trait Bank: Sync {
    /// Reads both accounts and commits the transfer, atomically; fails if either account was
    /// committed by someone else since it was read.
    fn transfer(&self, from: u64, to: u64, amount: i64) -> Result<(), Error>;
    /// The total of all accounts, from one consistent snapshot.
    fn audit(&self, accounts: u64, how: Snapshot) -> Result<i64, Error>;
}

#[derive(Clone, Copy)]
enum Snapshot {
    /// Read accounts `0..accounts` with `using`.
    Using,
    /// Read every key with `dump`.
    Dump,
}

impl Bank for Store<u64, i64> {
    fn transfer(&self, from: u64, to: u64, amount: i64) -> Result<(), Error> {
        let mut pair = self.using([from, to])?;
        let balance = |account: u64| pair[&account].value().copied().unwrap_or(0);
        let (from_balance, to_balance) = (balance(from), balance(to));
        if from_balance >= amount {
            pair[&from].set(from_balance - amount);
            pair[&to].set(to_balance + amount);
        }
        // With nothing set, the commit still checks that both accounts are unchanged: the
        // decision not to transfer was taken on what was read.
        pair.commit()
    }

    fn audit(&self, accounts: u64, how: Snapshot) -> Result<i64, Error> {
        Ok(match how {
            Snapshot::Using => self
                .using(0..accounts)?
                .iter()
                .map(|(_, account)| account.value().copied().unwrap_or(0))
                .sum(),
            Snapshot::Dump => self.dump().iter().filter_map(|(_, _, value)| *value).sum(),
        })
    }
}

/// A new store with `accounts` accounts of `START_BALANCE`, written in one commit.
fn funded_store(accounts: u64) -> Store<u64, i64> {
    let store = Store::new();
    let mut all = store.using(0..accounts).expect("using never fails");
    all.values_mut()
        .for_each(|account| account.set(START_BALANCE));
    all.commit().expect("nobody else is running yet");
    drop(all); // a handle holds its key until dropped
    store
}

/// The mutex variant: one lock over every account's `(version, balance)`.
struct MutexBank(Mutex<HashMap<u64, (u64, i64)>>);

impl MutexBank {
    fn new(accounts: u64) -> Self {
        let map = (0..accounts).map(|account| (account, (1, START_BALANCE)));
        Self(Mutex::new(map.collect()))
    }
}

impl Bank for MutexBank {
    fn transfer(&self, from: u64, to: u64, amount: i64) -> Result<(), Error> {
        // Read under the lock...
        let read = {
            let map = self.0.lock();
            [map[&from], map[&to]]
        };
        let [(from_version, from_balance), (to_version, to_balance)] = read;
        // ...then commit under it again: check the versions read, and write.
        let mut map = self.0.lock();
        if map[&from].0 != from_version || map[&to].0 != to_version {
            return Err(Error::ConcurrentUpdate);
        }
        if from_balance >= amount {
            map.insert(from, (from_version + 1, from_balance - amount));
            map.insert(to, (to_version + 1, to_balance + amount));
        }
        Ok(())
    }

    fn audit(&self, accounts: u64, how: Snapshot) -> Result<i64, Error> {
        let map = self.0.lock();
        Ok(match how {
            Snapshot::Using => (0..accounts).map(|account| map[&account].1).sum(),
            Snapshot::Dump => map.values().map(|&(_, balance)| balance).sum(),
        })
    }
}

/// What the threads of one run counted.
#[derive(Default)]
struct Tally {
    commits: u64,
    conflicts: u64,
    busy: u64,
    audits: u64,
    bad_audits: u64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.commits += other.commits;
        self.conflicts += other.conflicts;
        self.busy += other.busy;
        self.audits += other.audits;
        self.bad_audits += other.bad_audits;
    }
}

/// One timed run of one side.
struct Run {
    tally: Tally,
    elapsed: Duration,
    /// The total of all accounts after the run.
    end_total: i64,
}

impl Run {
    fn rate(&self) -> f64 {
        self.tally.commits as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs the workload on `bank` for `config.seconds`.
fn run(bank: &impl Bank, config: &Config) -> Run {
    let stop = AtomicBool::new(false);
    let start = Barrier::new(config.threads + config.auditors + 1);
    let (tally, elapsed) = thread::scope(|scope| {
        let workers: Vec<_> = (0..config.threads + config.auditors)
            .map(|id| {
                let (stop, start) = (&stop, &start);
                scope.spawn(move || {
                    let mut tally = Tally::default();
                    start.wait();
                    if id < config.threads {
                        transfer(bank, config, id as u64, stop, &mut tally);
                    } else {
                        audit(bank, config, stop, &mut tally);
                    }
                    tally
                })
            })
            .collect();
        start.wait();
        let began = Instant::now();
        thread::sleep(Duration::from_secs_f64(config.seconds));
        stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        for worker in workers {
            total.add(&worker.join().expect("a worker panicked"));
        }
        (total, began.elapsed())
    });
    let end_total = bank
        .audit(config.accounts, Snapshot::Dump)
        .expect("nobody else is running");
    Run {
        tally,
        elapsed,
        end_total,
    }
}

/// A transfer thread: random transfers until `stop`, each retried until it lands.
fn transfer(bank: &impl Bank, config: &Config, id: u64, stop: &AtomicBool, tally: &mut Tally) {
    let accounts = config.accounts;
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (id + 1));
    while !stop.load(Ordering::Relaxed) {
        let from = rng.below(accounts);
        let to = (from + 1 + rng.below(accounts - 1)) % accounts;
        let amount = 1 + rng.below(10) as i64;
        // The redo is part of the work: a transfer counts once it has landed.
        loop {
            match bank.transfer(from, to, amount) {
                Ok(()) => break tally.commits += 1,
                Err(Error::ConcurrentUpdate) => tally.conflicts += 1,
                Err(Error::BusyRetry) => tally.busy += 1,
            }
        }
    }
}

/// An auditor thread: snapshots back to back until `stop`, alternately `using` and `dump`.
fn audit(bank: &impl Bank, config: &Config, stop: &AtomicBool, tally: &mut Tally) {
    let mut how = Snapshot::Using;
    while !stop.load(Ordering::Relaxed) {
        match bank.audit(config.accounts, how) {
            Ok(total) => {
                tally.audits += 1;
                tally.bad_audits += u64::from(total != config.expected_total());
                how = match how {
                    Snapshot::Using => Snapshot::Dump,
                    Snapshot::Dump => Snapshot::Using,
                };
            }
            Err(Error::BusyRetry) => tally.busy += 1, // the same call may simply be repeated
            Err(Error::ConcurrentUpdate) => unreachable!("a snapshot commits nothing"),
        }
    }
}

fn main() -> ExitCode {
    let config = match common::options_or_exit(parse_args(std::env::args().skip(1)), help, USAGE) {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "bank: {} and {} on {}; {} of {} each (total {}); {} per side of {} s each, alternating",
        plural(config.threads, "transfer thread"),
        plural(config.auditors, "auditor"),
        plural(cores, "core"),
        plural(grouped(config.accounts), "account"),
        grouped(START_BALANCE),
        grouped(config.expected_total()),
        plural(config.runs, "run"),
        config.seconds,
    );
    println!("mutex variant: {MUTEX_VARIANT}");

    // Alternate the sides, so that a noisy moment of the machine hits both.
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut counted = Vec::new(); // each store's own statistics
    for i in 1..=config.runs {
        let progress = |side: &str| eprint!("run {i}/{}: {side} ...", config.runs);
        let done = |run: &Run| eprintln!(" {} commits/s", grouped(run.rate()));

        progress("stm-store");
        let store = funded_store(config.accounts);
        ours.push(run(&store, &config));
        counted.push(store.stats());
        done(&ours[i - 1]);

        progress("mutex");
        theirs.push(run(&MutexBank::new(config.accounts), &config));
        done(&theirs[i - 1]);
    }

    let (our_median, our_totals_right) = report("stm-store", &ours, &config);
    report_stats(&counted);
    let (their_median, their_totals_right) = report("mutex", &theirs, &config);
    let pair_ratios = ours.iter().zip(&theirs).map(|(s, m)| s.rate() / m.rate());
    let (_, low, high) = spread(pair_ratios.collect());
    println!(
        "throughput ratio stm-store / mutex: {:.2}x of the medians (per pair of runs: {low:.2}x to {high:.2}x)",
        our_median / their_median
    );

    let conserved = our_totals_right && their_totals_right;
    println!("total conserved: {}", if conserved { "yes" } else { "NO" });
    if conserved {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Prints what the stores counted themselves (`Store::stats`), summed over the runs.
fn report_stats(counted: &[stm_store::Stats]) {
    println!("{:>9}  {}", "", common::stats_line(counted));
}

/// Prints one side's throughput, failed commits and audits. Returns its median commits per
/// second, and whether every snapshot and every end state had the right total.
fn report(side: &str, runs: &[Run], config: &Config) -> (f64, bool) {
    let (median, min, max) = spread(runs.iter().map(Run::rate).collect());
    let mut total = Tally::default();
    runs.iter().for_each(|run| total.add(&run.tally));
    let seconds: f64 = runs.iter().map(|run| run.elapsed.as_secs_f64()).sum();
    let commit_tries = total.commits + total.conflicts + total.busy;
    let bad_ends: Vec<String> = (runs.iter().enumerate())
        .filter(|(_, run)| run.end_total != config.expected_total())
        .map(|(i, run)| format!("run {} ended with {}", i + 1, grouped(run.end_total)))
        .collect();

    println!(
        "{side:>9}: median {} commits/s (range {} to {})",
        grouped(median),
        grouped(min),
        grouped(max),
    );
    println!(
        "{:>9}  ConcurrentUpdate: {} ({:.2}% of commit tries, {}/s); BusyRetry: {} ({:.2}% of all tries, {}/s)",
        "",
        grouped(total.conflicts),
        percent(total.conflicts, commit_tries),
        grouped(total.conflicts as f64 / seconds),
        grouped(total.busy),
        percent(total.busy, commit_tries + total.audits),
        grouped(total.busy as f64 / seconds),
    );
    println!(
        "{:>9}  audits: {}, {} with a wrong total; end total {}",
        "",
        plural(grouped(total.audits), "snapshot"),
        grouped(total.bad_audits),
        if bad_ends.is_empty() {
            "right in every run".to_owned()
        } else {
            format!(
                "wrong: {} (expected {})",
                bad_ends.join(", "),
                grouped(config.expected_total())
            )
        },
    );
    (median, total.bad_audits == 0 && bad_ends.is_empty())
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

fn help() -> String {
    let default = Config::default();
    format!(
        "\
A contended bank: transfer threads move money between random accounts while auditor threads
check the total in consistent snapshots. The same workload runs on stm-store and on the mutex
variant: one parking_lot::Mutex over a HashMap<u64, (version, balance)>, used as Axon.STM
uses its lock (read under the lock, then lock again to check the versions and write).
Prints the commits per second of both, then `total conserved: yes` if every snapshot and
every end state had the right total (exit status 0; 1 otherwise, 2 for a bad option).

{USAGE}

options:
  --threads N    transfer threads (default {})
  --auditors N   auditor threads, each taking snapshots back to back (default {})
  --accounts N   accounts, each starting with {START_BALANCE}; at least 2 (default {})
  --seconds S    length of one run, in seconds (default {})
  --runs N       runs per side, alternating stm-store and mutex (default {})
  -h, --help     print this help
",
        default.threads, default.auditors, default.accounts, default.seconds, default.runs,
    )
}

/// The options, or `None` for `--help`. Takes `--name value` and `--name=value`.
fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<Config>, String> {
    let mut config = Config::default();
    let run = common::parse_options(args, |name, value| {
        match name {
            "--threads" => config.threads = number(name, &value()?, 1)?,
            "--auditors" => config.auditors = number(name, &value()?, 0)?,
            "--accounts" => config.accounts = number(name, &value()?, 2)?,
            "--runs" => config.runs = number(name, &value()?, 1)?,
            "--seconds" => config.seconds = seconds(&value()?)?,
            _ => return common::unknown(name),
        }
        Ok(())
    })?;
    Ok(run.then_some(config))
}

/// A number of seconds above 0.
fn seconds(value: &str) -> Result<f64, String> {
    match value.parse() {
        Ok(s) if s > 0.0 && s <= 1e9 => Ok(s),
        _ => Err(format!(
            "--seconds needs a number of seconds above 0 (at most 1e9), not `{value}`"
        )),
    }
}
