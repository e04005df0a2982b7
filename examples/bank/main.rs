//! The main demonstration: a bank kept in the store and in a `Mutex<HashMap>`, in four scenes,
//! every number measured in the run that prints it.
//!
//! Accounts are keys; a transfer moves money between two random accounts, both balances
//! changing together or neither. Four ways to keep them (`banks.rs`):
//!
//! - **stm-store**: the store through its handles: `using([from, to])`, set both, `commit`,
//!   read again and redo on `ConcurrentUpdate`.
//! - **stm-store atomically**: the store through `Store::atomically`.
//! - **mutex-one**: a `HashMap<u64, i64>` behind one `parking_lot::Mutex`, the whole transfer in
//!   one critical section: what most code does.
//! - **mutex**: a `HashMap<u64, (version, balance)>` behind one `parking_lot::Mutex`, read under
//!   the lock, then locked again to check that nothing changed and write: the shape of an
//!   optimistic store built on one lock, as Kamaelia's `Axon.STM` is.
//!
//! Both maps hash with the store's own default hasher. The scenes (`scenes.rs`):
//!
//! 1. **Throughput**: transfer threads and auditors (each summing every account in one
//!    consistent snapshot, which must always give the same total), several runs per side,
//!    alternating so that the machine's noise hits every side.
//! 2. **A thread stopped in the middle of a commit**, as a thread is when it is descheduled,
//!    page-faults or sits in a debugger: one more thread stops for 1 ms inside each of its
//!    commits, and the others' rate while it is stopped is compared with their rate the rest of
//!    the time. The store's commit stops after it took the first of its two accounts
//!    (`Collection::commit_paused`, a test hook of the `test-hooks` feature, which the crate's
//!    dev-dependency on itself turns on for its examples and tests); the mutexes' stop while
//!    holding the lock.
//! 3. **More threads than cores**: the time each transfer takes, redos included, in
//!    percentiles, with 32 threads.
//! 4. **Waiting for money**: a thread waits until one account holds enough, then pays it out,
//!    while another deposits into it. On the store the waiting transaction calls `retry` (it
//!    sleeps until the account changes; the depositor's code knows nothing about it); on the
//!    mutex it sleeps on a `Condvar` that every deposit must notify, or polls.
//!
//! ```text
//! cargo run --release --example bank -- [--threads 4] [--auditors 1] [--accounts 64]
//!                                       [--crowd 32] [--seconds 2] [--runs 3]
//! cargo run --release --example bank -- --help
//! ```
//!
//! The last line is `total conserved: yes` when every audit and every end state had the right
//! total; otherwise the example says what was wrong, ends with `total conserved: NO` and exits
//! with 1. A bad option exits with 2.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::thread;

mod banks;
#[path = "../common/mod.rs"]
mod common;
mod scenes;

use banks::{Atomically, Bank, Handles, MutexOne, MutexTwice, START_BALANCE};
use common::{grouped, number, plural, wrapped};

const USAGE: &str = "usage: cargo run --release --example bank -- \
[--threads N] [--auditors N] [--accounts N] [--crowd N] [--seconds S] [--runs N]";

pub struct Config {
    threads: usize,
    auditors: usize,
    accounts: u64,
    crowd: usize,
    seconds: f64,
    runs: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            threads: 4,
            auditors: 1,
            accounts: 64,
            crowd: 32,
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

/// What went wrong: an audit or an end state with a wrong total.
#[derive(Default)]
pub struct Checks(Vec<String>);

impl Checks {
    fn fail(&mut self, what: String) {
        self.0.push(what);
    }
}

/// Progress on stderr when it is a terminal (nothing in a log); an empty message clears it.
fn progress(message: std::fmt::Arguments) {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[K{message}");
    }
}

fn main() -> ExitCode {
    let config = match common::options_or_exit(parse_args(std::env::args().skip(1)), help, USAGE) {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let bank = format!(
        "A bank of {} of {} each (total {}), on {}. A transfer moves 1 to 10 between two random \
         accounts: both balances change, or neither. Four ways to keep the accounts:",
        plural(grouped(config.accounts), "account"),
        grouped(START_BALANCE),
        grouped(config.expected_total()),
        plural(cores, "core"),
    );
    println!("{}", wrapped(&bank, "", ""));
    for (name, what) in [
        (Handles::NAME, Handles::WHAT),
        (Atomically::NAME, Atomically::WHAT),
        (MutexOne::NAME, MutexOne::WHAT),
        (MutexTwice::NAME, MutexTwice::WHAT),
    ] {
        println!(
            "{}",
            wrapped(what, &format!("   {name:<21} "), &" ".repeat(25))
        );
    }

    let mut checks = Checks::default();
    scenes::race(&config, &mut checks);
    scenes::stall(&config, &mut checks);
    scenes::crowd(&config, cores, &mut checks);
    scenes::wait(&config, &mut checks);

    println!();
    for failure in &checks.0 {
        println!("wrong: {failure}");
    }
    let conserved = checks.0.is_empty();
    println!("total conserved: {}", if conserved { "yes" } else { "NO" });
    if conserved {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn help() -> String {
    let default = Config::default();
    format!(
        "\
A bank kept in stm-store and in a Mutex<HashMap>, in four scenes: throughput (with auditors
checking the total), a thread stopped in the middle of a commit, more threads than cores, and
a thread waiting for money (retry, against a Condvar and polling). Prints what each measured,
then `total conserved: yes` if every audit and every end state had the right total (exit
status 0; 1 otherwise, 2 for a bad option).

{USAGE}

options:
  --threads N    threads transferring in the throughput scene, and beside the stopped thread
                 (default {})
  --auditors N   auditor threads in the throughput scene, each taking snapshots back to back
                 (default {})
  --accounts N   accounts, each starting with {START_BALANCE}; at least 3 (default {})
  --crowd N      threads in the more-threads-than-cores scene (default {})
  --seconds S    length of every timed run, in seconds (default {}); there are 4 per
                 throughput run, then 9
  --runs N       runs per side in the throughput scene, alternating the sides (default {})
  -h, --help     print this help
",
        default.threads,
        default.auditors,
        default.accounts,
        default.crowd,
        default.seconds,
        default.runs,
    )
}

/// The options, or `None` for `--help`. Takes `--name value` and `--name=value`.
fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<Config>, String> {
    let mut config = Config::default();
    let run = common::parse_options(args, |name, value| {
        match name {
            "--threads" => config.threads = number(name, &value()?, 1)?,
            "--auditors" => config.auditors = number(name, &value()?, 0)?,
            "--accounts" => config.accounts = number(name, &value()?, 3)?,
            "--crowd" => config.crowd = number(name, &value()?, 1)?,
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
