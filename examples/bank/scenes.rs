//! The four scenes: each runs its workload on every side for `--seconds` (the throughput scene
//! `--runs` times per side, alternating), checks the accounts' total after every run, and prints
//! what it measured.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::banks::{
    Atomically, Bank, Handles, MutexOne, MutexTwice, Stopping, Waited, Waiting, PAYOUT, POT,
    START_BALANCE,
};
use crate::common::{grouped, plural, short, spread, timed, wrapped, Latencies, XorShift};
use crate::{progress, Checks, Config};

/// Scene 2: how long the stopped thread stops inside each commit, and rests between them.
const STOP: Duration = Duration::from_millis(1);
const BETWEEN_STOPS: Duration = Duration::from_millis(1);

/// Scene 4: what the depositor puts into the pot, and how often.
const DEPOSIT: i64 = 10;
const DEPOSIT_EVERY: Duration = Duration::from_micros(100);

/// What the threads of one timed run counted.
#[derive(Default)]
struct Tally {
    transfers: u64,
    redone: u64,
    audits: u64,
    wrong_audits: u64,
    /// Each transfer's time from its start until it landed, if asked for.
    latency: Latencies,
    /// Scene 2: the transfers that landed while the stopped thread was stopped; for the
    /// stopped thread, the time it spent stopped and the commits it made.
    while_stopped: u64,
    stopped: Duration,
    stopped_commits: u64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.transfers += other.transfers;
        self.redone += other.redone;
        self.audits += other.audits;
        self.wrong_audits += other.wrong_audits;
        self.latency.add(&other.latency);
        self.while_stopped += other.while_stopped;
        self.stopped += other.stopped;
        self.stopped_commits += other.stopped_commits;
    }

    fn sum<'a>(tallies: impl IntoIterator<Item = &'a Tally>) -> Tally {
        let mut total = Tally::default();
        tallies.into_iter().for_each(|tally| total.add(tally));
        total
    }
}

/// What a transferring thread measures besides its count.
#[derive(Clone, Copy, Default)]
struct Measure<'a> {
    /// Each transfer's time.
    latency: bool,
    /// Counts the transfers that land while this is set.
    stopped_now: Option<&'a AtomicBool>,
}

fn rng_for(thread: usize) -> XorShift {
    XorShift(0x9E37_79B9_7F4A_7C15 ^ (thread as u64 + 1))
}

/// Two distinct random accounts in `first..accounts`, and an amount of 1 to 10.
fn random_transfer(rng: &mut XorShift, first: u64, accounts: u64) -> (u64, u64, i64) {
    let span = accounts - first;
    let from = rng.below(span);
    let to = (from + 1 + rng.below(span - 1)) % span;
    (first + from, first + to, 1 + rng.below(10) as i64)
}

/// Thread `thread`'s random transfers among accounts `first..accounts` until `stop`, each
/// redone until it lands.
fn transfer_until(
    bank: &impl Bank,
    (first, accounts): (u64, u64),
    thread: usize,
    stop: &AtomicBool,
    measure: Measure,
) -> Tally {
    let mut rng = rng_for(thread);
    let mut tally = Tally::default();
    while !stop.load(Ordering::Relaxed) {
        let (from, to, amount) = random_transfer(&mut rng, first, accounts);
        let began = measure.latency.then(Instant::now);
        tally.redone += bank.transfer(from, to, amount);
        tally.transfers += 1;
        if let Some(began) = began {
            tally.latency.record(began.elapsed());
        }
        if measure
            .stopped_now
            .is_some_and(|now| now.load(Ordering::Relaxed))
        {
            tally.while_stopped += 1;
        }
    }
    tally
}

/// Checks the end state of a run: the total of every account.
fn check_end<B: Bank>(checks: &mut Checks, scene: &str, bank: &B, config: &Config) {
    let (total, expected) = (bank.audit(config.accounts, true), config.expected_total());
    if total != expected {
        checks.fail(format!(
            "{scene}, {}: the accounts ended with {} instead of {}",
            B::NAME,
            grouped(total),
            grouped(expected)
        ));
    }
}

fn heading(number: u32, text: &str) {
    println!("\n{}", wrapped(text, &format!("{number}. "), "   "));
}

fn note(text: &str) {
    println!("{}", wrapped(text, "   (", "    "));
}

// ---------------------------------------------------------------------------------------------
// Scene 1: throughput.

/// One timed run of a scene.
struct Run {
    tally: Tally,
    elapsed: Duration,
}

impl Run {
    fn rate(&self) -> f64 {
        self.tally.transfers as f64 / self.elapsed.as_secs_f64()
    }
}

fn race_run<B: Bank>(config: &Config, checks: &mut Checks) -> Run {
    let bank = B::open(config.accounts);
    let threads = config.threads + config.auditors;
    let (tallies, elapsed) = timed(threads, config.seconds, |i, stop| {
        if i < config.threads {
            let accounts = (0, config.accounts);
            return transfer_until(&bank, accounts, i, stop, Measure::default());
        }
        // An auditor: snapshots back to back, alternating the two ways where there are two.
        let mut tally = Tally::default();
        while !stop.load(Ordering::Relaxed) {
            let total = bank.audit(config.accounts, tally.audits % 2 == 1);
            tally.audits += 1;
            tally.wrong_audits += u64::from(total != config.expected_total());
        }
        tally
    });
    check_end(checks, "throughput", &bank, config);
    let tally = Tally::sum(&tallies);
    if tally.wrong_audits > 0 {
        checks.fail(format!(
            "throughput, {}: {} of {} audits had a wrong total",
            B::NAME,
            grouped(tally.wrong_audits),
            grouped(tally.audits)
        ));
    }
    Run { tally, elapsed }
}

pub fn race(config: &Config, checks: &mut Checks) {
    heading(
        1,
        &format!(
            "Throughput: {} transferring and {} summing every account in one consistent \
             snapshot, {} per side of {} s, alternating",
            plural(config.threads, "thread"),
            plural(config.auditors, "auditor"),
            plural(config.runs, "run"),
            config.seconds,
        ),
    );
    type RaceRun = fn(&Config, &mut Checks) -> Run;
    let mut sides: [(&str, RaceRun, Vec<Run>); 4] = [
        (Handles::NAME, race_run::<Handles>, Vec::new()),
        (Atomically::NAME, race_run::<Atomically>, Vec::new()),
        (MutexOne::NAME, race_run::<MutexOne>, Vec::new()),
        (MutexTwice::NAME, race_run::<MutexTwice>, Vec::new()),
    ];
    for i in 1..=config.runs {
        for (side, run, runs) in &mut sides {
            progress(format_args!(
                "throughput: run {i}/{} of {side}",
                config.runs
            ));
            runs.push(run(config, checks));
        }
    }
    progress(format_args!(""));

    let median = |runs: &[Run]| spread(runs.iter().map(Run::rate).collect());
    let (mutex_one, mutex) = (median(&sides[2].2).0, median(&sides[3].2).0);
    println!(
        "   {:<21} {:>12} {:<28} {:>8} {:>12} {:>8} {:>11}",
        "", "transfers/s", "  (min to max)", "× mutex", "× mutex-one", "redone", "audits"
    );
    for (side, _, runs) in &sides {
        let (rate, min, max) = median(runs);
        let total = Tally::sum(runs.iter().map(|run| &run.tally));
        let redone = match *side {
            MutexOne::NAME => "never".to_owned(),
            _ => format!(
                "{:.2}%",
                100.0 * total.redone as f64 / total.transfers as f64
            ),
        };
        println!(
            "   {side:<21} {:>12} {:<28} {:>7.2}x {:>11.2}x {:>8} {:>11}",
            grouped(rate),
            format!("  ({} to {})", grouped(min), grouped(max)),
            rate / mutex,
            rate / mutex_one,
            redone,
            grouped(total.audits),
        );
    }
    note(
        "transfers/s: the median run's; redone: redos after a conflict, per transfer; audits: \
         every one had the right total)",
    );
    // The store's handles against each mutex, in the words `benches/report.py` reads.
    for (mutex, _, runs) in [&sides[3], &sides[2]] {
        let pairs = sides[0].2.iter().zip(runs);
        let (_, low, high) = spread(
            pairs
                .map(|(ours, theirs)| ours.rate() / theirs.rate())
                .collect(),
        );
        println!(
            "throughput ratio stm-store / {mutex}: {:.2}x of the medians (per pair of runs: \
             {low:.2}x to {high:.2}x)",
            median(&sides[0].2).0 / median(runs).0,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Scene 2: a thread stopped in the middle of a commit.

/// `config.threads` threads transferring, and one more whose transfers each stop for `STOP`
/// in the middle of their commit, `BETWEEN_STOPS` apart. Returns the others' run, the stopped
/// thread's tally, and what the store counted.
fn stall_run<B: Stopping>(config: &Config, checks: &mut Checks) -> (Run, Tally, Option<u64>) {
    let bank = B::open(config.accounts);
    let stopped_now = AtomicBool::new(false);
    let (mut tallies, elapsed) = timed(config.threads + 1, config.seconds, |i, stop| {
        if i < config.threads {
            let measure = Measure {
                latency: false,
                stopped_now: Some(&stopped_now),
            };
            return transfer_until(&bank, (0, config.accounts), i, stop, measure);
        }
        let stopped = Cell::new(Duration::ZERO);
        let pause = || {
            let began = Instant::now();
            stopped_now.store(true, Ordering::Relaxed);
            thread::sleep(STOP);
            stopped_now.store(false, Ordering::Relaxed);
            stopped.set(stopped.get() + began.elapsed());
        };
        let (mut rng, mut tally) = (rng_for(i), Tally::default());
        while !stop.load(Ordering::Relaxed) {
            let (from, to, amount) = random_transfer(&mut rng, 0, config.accounts);
            tally.redone += bank.transfer_stopping(from, to, amount, &pause);
            tally.stopped_commits += 1;
            thread::sleep(BETWEEN_STOPS);
        }
        tally.stopped = stopped.get();
        tally
    });
    check_end(checks, "a thread stopped", &bank, config);
    let stopper = tallies.pop().expect("the stopping thread ran");
    let others = Run {
        tally: Tally::sum(&tallies),
        elapsed,
    };
    (others, stopper, bank.finished_for_others())
}

pub fn stall(config: &Config, checks: &mut Checks) {
    heading(
        2,
        &format!(
            "A thread stopped in the middle of a commit: {} transferring, and one more that \
             stops for {} inside each of its commits (as a thread does when it is descheduled, \
             page-faults or sits in a debugger), {} apart; {} s per side",
            plural(config.threads, "thread"),
            short(STOP),
            short(BETWEEN_STOPS),
            config.seconds,
        ),
    );
    println!(
        "   {:<21} {:>20} {:>21} {:>7} {:>22}",
        "", "while one is stopped", "the rest of the time", "share", "time it spent stopped"
    );
    type StallRun = fn(&Config, &mut Checks) -> (Run, Tally, Option<u64>);
    let sides: [(&str, StallRun); 3] = [
        (Handles::NAME, stall_run::<Handles>),
        (MutexOne::NAME, stall_run::<MutexOne>),
        (MutexTwice::NAME, stall_run::<MutexTwice>),
    ];
    let mut finished = None;
    for (side, run) in sides {
        progress(format_args!("a thread stopped: {side}"));
        let (others, stopper, finished_for_others) = run(config, checks);
        progress(format_args!(""));
        let (stopped, elapsed) = (stopper.stopped.as_secs_f64(), others.elapsed.as_secs_f64());
        let during = others.tally.while_stopped as f64 / stopped;
        let rest = others.tally.transfers - others.tally.while_stopped;
        let otherwise = rest as f64 / (elapsed - stopped);
        let measured = stopped > 0.0 && elapsed > stopped;
        let or_dash = |text: String| if measured { text } else { "-".to_owned() };
        println!(
            "   {side:<21} {:>20} {:>21} {:>7} {:>22}",
            or_dash(grouped(during)),
            or_dash(grouped(otherwise)),
            or_dash(format!("{:.0}%", 100.0 * during / otherwise)),
            format!("{:.0}% of the run", 100.0 * stopped / elapsed),
        );
        if let Some(count) = finished_for_others {
            finished = Some((count, stopper.stopped_commits));
        }
    }
    note(&format!(
        "the transfers per second of the {} others while one thread was stopped in a commit, \
         and the rest of the time; share: the first over the second)",
        config.threads
    ));
    if let Some((count, commits)) = finished {
        println!(
            "{}",
            wrapped(
                &format!(
                    "stm-store: {} commits were finished by a thread other than the one that \
                     started them; the stopped thread started {}.",
                    grouped(count),
                    grouped(commits),
                ),
                "   ",
                "   ",
            )
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Scene 3: more threads than cores.

/// A run of scene 3, and the fewest transfers one thread made over the average thread's.
fn crowd_run<B: Bank>(config: &Config, checks: &mut Checks) -> (Run, f64) {
    let bank = B::open(config.accounts);
    let (tallies, elapsed) = timed(config.crowd, config.seconds, |i, stop| {
        let measure = Measure {
            latency: true,
            stopped_now: None,
        };
        transfer_until(&bank, (0, config.accounts), i, stop, measure)
    });
    check_end(checks, "more threads than cores", &bank, config);
    let tally = Tally::sum(&tallies);
    let fewest = tallies.iter().map(|thread| thread.transfers).min();
    let average = tally.transfers as f64 / tallies.len() as f64;
    let fewest = fewest.unwrap_or(0) as f64 / average.max(1.0);
    (Run { tally, elapsed }, fewest)
}

pub fn crowd(config: &Config, cores: usize, checks: &mut Checks) {
    heading(
        3,
        &format!(
            "More threads than cores: {} transferring on {}, {} s per side; the time each \
             transfer took, from its start until it landed",
            plural(config.crowd, "thread"),
            plural(cores, "core"),
            config.seconds,
        ),
    );
    println!(
        "   {:<21} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>15}",
        "", "transfers/s", "median", "p99", "p99.9", "p99.99", "max", "slowest thread"
    );
    type CrowdRun = fn(&Config, &mut Checks) -> (Run, f64);
    let sides: [(&str, CrowdRun); 3] = [
        (Handles::NAME, crowd_run::<Handles>),
        (MutexOne::NAME, crowd_run::<MutexOne>),
        (MutexTwice::NAME, crowd_run::<MutexTwice>),
    ];
    for (side, run) in sides {
        progress(format_args!("more threads than cores: {side}"));
        let (run, fewest) = run(config, checks);
        progress(format_args!(""));
        let latency = &run.tally.latency;
        println!(
            "   {side:<21} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>15}",
            grouped(run.rate()),
            short(latency.quantile(0.5)),
            short(latency.quantile(0.99)),
            short(latency.quantile(0.999)),
            short(latency.quantile(0.9999)),
            short(latency.max()),
            format!("{:.0}%", 100.0 * fewest),
        );
    }
    note(
        "slowest thread: the transfers of the thread that made the fewest, over the average \
         thread's)",
    );
}

// ---------------------------------------------------------------------------------------------
// Scene 4: waiting for money.

/// What one run of scene 4 measured.
struct WaitRun {
    payouts: usize,
    /// From the start of each deposit that filled the pot until its payout landed.
    reaction: Latencies,
    looks: u64,
    /// The waiting thread's CPU time over the run's length, where the system says.
    cpu_share: Option<f64>,
}

/// Thread 0 waits and pays out; thread 1 deposits every `DEPOSIT_EVERY`, then closes the bank.
/// Each notes the times (since `origin`) of its marks: the starts of the deposits that brought
/// the deposits to a whole number of payouts, and the landings of the payouts.
fn wait_run<B: Waiting>(config: &Config, checks: &mut Checks) -> WaitRun {
    let bank = B::open(config.accounts);
    // The pot starts empty, so that payout k follows the deposit that brought the deposits to
    // k payouts' worth.
    bank.transfer(POT, 1, START_BALANCE);
    let other_account = |rng: &mut XorShift| 1 + rng.below(config.accounts - 1);
    let origin = Instant::now();
    let (mut threads, elapsed) = timed(2, config.seconds, |i, stop| {
        let (mut rng, mut marks, mut looks, mut cpu) = (rng_for(i), Vec::new(), 0, None);
        if i == 0 {
            let start = crate::common::thread_cpu_time();
            while bank.pay_out(other_account(&mut rng), &mut looks) {
                marks.push(origin.elapsed());
            }
            let end = crate::common::thread_cpu_time();
            cpu = start.zip(end).map(|(start, end)| end - start);
        } else {
            let (mut deposits, mut next) = (0, Instant::now());
            while !stop.load(Ordering::Relaxed) {
                next += DEPOSIT_EVERY;
                match next.checked_duration_since(Instant::now()) {
                    Some(wait) => thread::sleep(wait),
                    None => next = Instant::now(), // late: no burst to catch up
                }
                let began = origin.elapsed();
                if bank.deposit(other_account(&mut rng), DEPOSIT) {
                    deposits += 1;
                    if deposits % (PAYOUT / DEPOSIT) == 0 {
                        marks.push(began);
                    }
                }
            }
            bank.close();
        }
        (marks, looks, cpu)
    });
    check_end(checks, "waiting", &bank, config);
    let (filled, _, _) = threads.pop().expect("the depositor ran");
    let (paid, looks, cpu) = threads.pop().expect("the waiting thread ran");
    let mut reaction = Latencies::default();
    for (filled, paid) in filled.iter().zip(&paid) {
        reaction.record(paid.saturating_sub(*filled));
    }
    WaitRun {
        payouts: paid.len(),
        reaction,
        looks,
        cpu_share: cpu.map(|cpu| cpu.as_secs_f64() / elapsed.as_secs_f64()),
    }
}

pub fn wait(config: &Config, checks: &mut Checks) {
    heading(
        4,
        &format!(
            "Waiting for money: one thread waits until account {POT} (the pot) holds {PAYOUT}, \
             then moves it to another account; another thread puts {DEPOSIT} into the pot \
             every {}; {} s per side",
            short(DEPOSIT_EVERY),
            config.seconds,
        ),
    );
    type WaitRunOf = fn(&Config, &mut Checks) -> WaitRun;
    let sides: [(&str, &str, WaitRunOf); 3] = [
        ("stm-store retry", Atomically::HOW, wait_run::<Atomically>),
        (
            Waited::<false>::NAME,
            Waited::<false>::HOW,
            wait_run::<Waited<false>>,
        ),
        (
            Waited::<true>::NAME,
            Waited::<true>::HOW,
            wait_run::<Waited<true>>,
        ),
    ];
    for (side, how, _) in &sides {
        println!(
            "{}",
            wrapped(how, &format!("   {side:<21} "), &" ".repeat(25))
        );
    }
    println!(
        "   {:<21} {:>8} {:>18} {:>9} {:>17} {:>21}",
        "", "payouts", "reaction: median", "p99", "looks per payout", "waiting thread's CPU"
    );
    for (side, _, run) in sides {
        progress(format_args!("waiting: {side}"));
        let run = run(config, checks);
        progress(format_args!(""));
        let cpu = run
            .cpu_share
            .map(|share| format!("{:.0}% of a core", 100.0 * share));
        println!(
            "   {side:<21} {:>8} {:>18} {:>9} {:>17.1} {:>21}",
            grouped(run.payouts),
            short(run.reaction.quantile(0.5)),
            short(run.reaction.quantile(0.99)),
            run.looks as f64 / run.payouts.max(1) as f64,
            cpu.unwrap_or_else(|| "n/a".to_owned()),
        );
    }
    note(
        "reaction: from the start of the deposit that filled the pot until the payout landed; \
         CPU: the waiting thread's, over the run)",
    );
}
