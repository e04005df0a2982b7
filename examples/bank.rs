//! The main demonstration: a contended bank.
//!
//! Transfer threads move money between random accounts while auditor threads take consistent
//! snapshots of every account and check the total. The same workload then runs on the store a
//! user would otherwise write (one mutex over a map of versioned records: Axon.STM's design),
//! and the example prints the throughput ratio measured in this run.
//!
//! ```text
//! cargo run --release --example bank -- [--threads 4] [--auditors 1] [--accounts 64] [--seconds 2] [--floor]
//! ```
//!
//! Exits non-zero if any snapshot, or the end state, shows a different total.
//!
//! `--floor` also runs the *floor*: each account its own `ArcSwap`, a transfer two independent
//! compare-and-swap loops (not atomic, no index, no handles). No store built on one `ArcSwap`
//! per key can do less work per transfer, so its rate bounds what such a store can reach here.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use stm_store::{Error, Store};

const START_BALANCE: i64 = 1_000;

struct Config {
    threads: usize,
    auditors: usize,
    accounts: u64,
    seconds: f64,
    floor: bool,
}

/// What a bank needs from a store: a consistent read of some accounts, and an atomic commit
/// of new balances that fails if any account read has changed since.
trait Bank: Send + Sync + 'static {
    /// Reads both accounts and commits the transfer (or just validates, if `from` is short).
    fn transfer(&self, from: u64, to: u64, amount: i64) -> Attempt;
    /// The sum of accounts `0..accounts`, read as one consistent snapshot.
    fn audit(&self, accounts: u64) -> i64;
    fn name(&self) -> &'static str;
}

enum Attempt {
    Committed,
    Conflict,
    Busy,
}

impl Bank for Store<u64, i64> {
    fn transfer(&self, from: u64, to: u64, amount: i64) -> Attempt {
        let mut pair = self.using([from, to]).expect("using never fails here");
        let balance = |c: &stm_store::Collection<u64, i64>, k| c[&k].value().copied().unwrap_or(0);
        let (a, b) = (balance(&pair, from), balance(&pair, to));
        if a < amount {
            // Validate the read anyway: a decision taken on what we saw must still hold.
            return outcome(pair.commit());
        }
        pair[&from].set(a - amount);
        pair[&to].set(b + amount);
        outcome(pair.commit())
    }

    fn audit(&self, accounts: u64) -> i64 {
        let all = self.using(0..accounts).expect("using never fails here");
        all.iter()
            .map(|(_, v)| v.value().copied().unwrap_or(0))
            .sum()
    }

    fn name(&self) -> &'static str {
        "stm-store"
    }
}

fn outcome(result: Result<(), Error>) -> Attempt {
    match result {
        Ok(()) => Attempt::Committed,
        Err(Error::ConcurrentUpdate) => Attempt::Conflict,
        Err(Error::BusyRetry) => Attempt::Busy,
    }
}

/// The mutex variant: one lock over a map of `key -> (version, value)`. Reads copy records out
/// under the lock; a commit takes the lock, checks every version read, and writes.
struct MutexBank(Mutex<HashMap<u64, (u64, Option<i64>)>>);

impl MutexBank {
    fn read(&self, keys: &[u64]) -> Vec<(u64, Option<i64>)> {
        let map = self.0.lock();
        keys.iter()
            .map(|k| map.get(k).copied().unwrap_or((0, None)))
            .collect()
    }
}

impl Bank for MutexBank {
    fn transfer(&self, from: u64, to: u64, amount: i64) -> Attempt {
        let read = self.read(&[from, to]);
        let (a, b) = (read[0].1.unwrap_or(0), read[1].1.unwrap_or(0));
        let mut map = self.0.lock();
        let unchanged = [from, to]
            .iter()
            .zip(&read)
            .all(|(k, (version, _))| map.get(k).map_or(0, |r| r.0) == *version);
        if !unchanged {
            return Attempt::Conflict;
        }
        if a >= amount {
            map.insert(from, (read[0].0 + 1, Some(a - amount)));
            map.insert(to, (read[1].0 + 1, Some(b + amount)));
        }
        Attempt::Committed
    }

    fn audit(&self, accounts: u64) -> i64 {
        let keys: Vec<u64> = (0..accounts).collect();
        self.read(&keys).iter().map(|(_, v)| v.unwrap_or(0)).sum()
    }

    fn name(&self) -> &'static str {
        "mutex"
    }
}

/// The floor: one `ArcSwap` per account, and a transfer is two compare-and-swap loops, one per
/// account. Money is conserved, but the pair is not atomic and audits are not consistent (so
/// they are not checked): it is a bound on cost, not a store.
struct FloorBank(Vec<arc_swap::ArcSwap<(u64, i64)>>);

impl FloorBank {
    fn add(&self, account: u64, delta: i64) {
        let slot = &self.0[account as usize];
        loop {
            let current = slot.load();
            let next = Arc::new((current.0 + 1, current.1 + delta));
            if Arc::ptr_eq(&slot.compare_and_swap(&current, next), &current) {
                return;
            }
        }
    }
}

impl Bank for FloorBank {
    fn transfer(&self, from: u64, to: u64, amount: i64) -> Attempt {
        if self.0[from as usize].load().1 >= amount {
            self.add(from, -amount);
            self.add(to, amount);
        }
        Attempt::Committed
    }

    fn audit(&self, accounts: u64) -> i64 {
        (0..accounts).map(|k| self.0[k as usize].load().1).sum()
    }

    fn name(&self) -> &'static str {
        "floor"
    }
}

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

/// Runs the workload for `config.seconds` and returns what every thread counted.
fn run(bank: Arc<dyn Bank>, config: &Config) -> (Tally, Duration) {
    let expected = START_BALANCE * config.accounts as i64;
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(config.threads + config.auditors + 1));
    let mut workers = Vec::new();
    for id in 0..config.threads + config.auditors {
        let (bank, stop, start) = (Arc::clone(&bank), Arc::clone(&stop), Arc::clone(&start));
        let (auditor, accounts) = (id >= config.threads, config.accounts);
        workers.push(std::thread::spawn(move || {
            let mut tally = Tally::default();
            let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1));
            start.wait();
            while !stop.load(Ordering::Relaxed) {
                if auditor {
                    tally.audits += 1;
                    tally.bad_audits += u64::from(bank.audit(accounts) != expected);
                    continue;
                }
                let from = rng.below(accounts);
                let to = (from + 1 + rng.below(accounts - 1)) % accounts;
                let amount = 1 + rng.below(10) as i64;
                // Retry until the transfer lands: the redo is part of the work.
                loop {
                    match bank.transfer(from, to, amount) {
                        Attempt::Committed => break tally.commits += 1,
                        Attempt::Conflict => tally.conflicts += 1,
                        Attempt::Busy => tally.busy += 1,
                    }
                }
            }
            tally
        }));
    }
    start.wait();
    let began = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(config.seconds));
    stop.store(true, Ordering::Relaxed);
    let mut total = Tally::default();
    for worker in workers {
        total.add(&worker.join().expect("worker panicked"));
    }
    (total, began.elapsed())
}

fn report(name: &str, tally: &Tally, elapsed: Duration) -> f64 {
    let rate = tally.commits as f64 / elapsed.as_secs_f64();
    let attempts = tally.commits + tally.conflicts + tally.busy;
    println!(
        "{name:>9}: {} commits in {:.2} s = {:.0} commits/s; {} ConcurrentUpdate ({:.2}% of attempts), {} BusyRetry ({:.4}%); {} audits",
        tally.commits,
        elapsed.as_secs_f64(),
        rate,
        tally.conflicts,
        percent(tally.conflicts, attempts),
        tally.busy,
        percent(tally.busy, attempts),
        tally.audits,
    );
    rate
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

fn main() -> ExitCode {
    let config = match parse_args() {
        Ok(config) => config,
        Err(message) => {
            eprintln!(
                "{message}\nusage: bank [--threads N] [--auditors N] [--accounts N] [--seconds S] [--floor]"
            );
            return ExitCode::from(2);
        }
    };
    let expected = START_BALANCE * config.accounts as i64;
    println!(
        "bank: {} transfer threads and {} auditors on {} cores, {} accounts of {}, {} s per store",
        config.threads,
        config.auditors,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        config.accounts,
        START_BALANCE,
        config.seconds
    );

    let store = Arc::new(Store::<u64, i64>::new());
    let mut all = store.using(0..config.accounts).expect("using never fails");
    all.values_mut()
        .for_each(|account| account.set(START_BALANCE));
    all.commit().expect("nobody else is running yet");
    let (ours, elapsed) = run(store.clone(), &config);
    let our_rate = report(store.name(), &ours, elapsed);
    let end_total: i64 = store.dump().iter().filter_map(|(_, _, v)| *v).sum();

    let map = (0..config.accounts).map(|k| (k, (1, Some(START_BALANCE))));
    let mutex = Arc::new(MutexBank(Mutex::new(map.collect())));
    let (theirs, elapsed) = run(mutex.clone(), &config);
    let mutex_rate = report(mutex.name(), &theirs, elapsed);
    let mutex_total = mutex.audit(config.accounts);

    println!(
        "throughput ratio (stm-store / mutex): {:.2}x",
        our_rate / mutex_rate
    );
    if config.floor {
        let accounts =
            (0..config.accounts).map(|_| arc_swap::ArcSwap::from_pointee((1, START_BALANCE)));
        let floor = Arc::new(FloorBank(accounts.collect()));
        let (bare, elapsed) = run(floor.clone(), &config);
        let floor_rate = report(floor.name(), &bare, elapsed);
        println!(
            "floor (two bare per-key CASes, not atomic) / mutex: {:.2}x; stm-store / floor: {:.2}x",
            floor_rate / mutex_rate,
            our_rate / floor_rate
        );
    }
    let conserved = ours.bad_audits == 0 && end_total == expected;
    println!(
        "audits: {} snapshots, {} with a wrong total; end total {} (expected {})",
        ours.audits, ours.bad_audits, end_total, expected
    );
    if theirs.bad_audits != 0 || mutex_total != expected {
        println!("mutex variant lost money: its own bug, not the store's");
    }
    println!("total conserved: {}", if conserved { "yes" } else { "NO" });
    if conserved {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn parse_args() -> Result<Config, String> {
    let mut config = Config {
        threads: 4,
        auditors: 1,
        accounts: 64,
        seconds: 2.0,
        floor: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--floor" {
            config.floor = true;
            continue;
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let bad = || format!("{flag}: not a valid number: {value}");
        match flag.as_str() {
            "--threads" => config.threads = value.parse().map_err(|_| bad())?,
            "--auditors" => config.auditors = value.parse().map_err(|_| bad())?,
            "--accounts" => config.accounts = value.parse().map_err(|_| bad())?,
            "--seconds" => config.seconds = value.parse().map_err(|_| bad())?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if config.threads == 0
        || config.accounts < 2
        || !config.seconds.is_finite()
        || config.seconds <= 0.0
    {
        return Err("need --threads >= 1, --accounts >= 2 and --seconds > 0".into());
    }
    Ok(config)
}

/// A tiny deterministic generator: the example needs speed, not quality.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}
