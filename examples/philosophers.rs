//! Axon.STM's dining philosophers: each fork is a key whose value names the philosopher holding
//! it. A philosopher takes both forks in one commit, and only if both are free; so two
//! neighbours can never hold the same fork, and nobody holds one fork while waiting for the
//! other (no deadlock). Every philosopher eats a fixed number of meals, then the example ends.
//!
//! ```text
//! cargo run --release --example philosophers -- [PHILOSOPHERS] [MEALS]
//! ```
//!
//! Exits with 1 if a fork is still held at the end, 2 for bad arguments.

use std::fmt::Display;
use std::process::ExitCode;
use std::thread;

use stm_store::{Collection, Error, Store};

/// Fork number -> the philosopher holding it (no value: the fork is on the table).
type Forks = Store<usize, usize>;

const USAGE: &str = "usage: cargo run --release --example philosophers -- [PHILOSOPHERS] [MEALS]";

const DEFAULT_PHILOSOPHERS: usize = 5;
const DEFAULT_MEALS: usize = 1000;

fn main() -> ExitCode {
    let (philosophers, meals) = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{}", help());
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("error: {message}\n{USAGE}\n(--help says more)");
            return ExitCode::from(2);
        }
    };
    println!(
        "{} around the table, {} each",
        plural(philosophers, "philosopher"),
        plural(meals, "meal")
    );

    let forks = Forks::new();
    // Philosopher `me` eats with forks `me` and `me + 1` (the last one with forks `me` and 0).
    let tries: Vec<u64> = thread::scope(|scope| {
        let diners: Vec<_> = (0..philosophers)
            .map(|me| {
                let forks = &forks;
                scope.spawn(move || dine(forks, me, me, (me + 1) % philosophers, meals))
            })
            .collect();
        let finished = diners.into_iter().map(|diner| diner.join());
        finished
            .map(|tries| tries.expect("a philosopher panicked"))
            .collect()
    });

    for (me, tries) in tries.iter().enumerate() {
        println!(
            "philosopher {me} ate {}: {} to take both forks failed",
            plural(meals, "meal"),
            plural(tries - meals as u64, "attempt"),
        );
    }
    let failed: u64 = tries.iter().map(|tries| tries - meals as u64).sum();
    let held = (forks.dump().iter())
        .filter(|(_, _, holder)| holder.is_some())
        .count();
    println!(
        "{} failed in all; forks still held at the end: {held}",
        plural(failed, "attempt")
    );
    if held == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Eats `meals` times with forks `left` and `right`; returns how many times it tried to pick
/// them up.
fn dine(forks: &Forks, me: usize, left: usize, right: usize, meals: usize) -> u64 {
    let mut tries = 0;
    for _ in 0..meals {
        loop {
            tries += 1;
            if pick_up(forks, me, left, right) {
                break;
            }
            thread::yield_now(); // let a neighbour finish eating
        }
        // Eating: both forks must name us, in one consistent read.
        let table = read(forks, left, right);
        assert!(
            table.iter().all(|(_, fork)| fork.value() == Some(&me)),
            "philosopher {me} had a fork taken from them while eating"
        );
        put_down(forks, left, right);
    }
    tries
}

/// Takes both forks if both are free: one atomic commit.
fn pick_up(forks: &Forks, me: usize, left: usize, right: usize) -> bool {
    let mut table = read(forks, left, right);
    if table.iter().any(|(_, fork)| fork.value().is_some()) {
        return false;
    }
    table[&left].set(me);
    table[&right].set(me);
    match table.commit() {
        Ok(()) => true,
        Err(Error::ConcurrentUpdate | Error::BusyRetry) => false,
    }
}

/// Puts both forks down. Only their holder writes held forks, so this commit cannot conflict.
fn put_down(forks: &Forks, left: usize, right: usize) {
    loop {
        let mut table = read(forks, left, right);
        table[&left].clear();
        table[&right].clear();
        match table.commit() {
            Ok(()) => return,
            Err(Error::BusyRetry) => continue,
            Err(Error::ConcurrentUpdate) => unreachable!("only the holder writes held forks"),
        }
    }
}

/// Reads both forks in one consistent snapshot.
fn read(forks: &Forks, left: usize, right: usize) -> Collection<'_, usize, usize> {
    loop {
        match forks.using([left, right]) {
            Ok(table) => return table,
            Err(_) => continue, // BusyRetry: the same call may simply be repeated
        }
    }
}

/// `1 meal`, `2 meals`.
fn plural(n: impl Display, word: &str) -> String {
    let n = n.to_string();
    let s = if n == "1" { "" } else { "s" };
    format!("{n} {word}{s}")
}

fn help() -> String {
    format!(
        "\
Axon.STM's dining philosophers on stm-store: each fork is a key naming its holder, and a
philosopher takes both forks in one commit, only if both are free.

{USAGE}

arguments:
  PHILOSOPHERS   how many sit at the table; at least 2 (default {DEFAULT_PHILOSOPHERS})
  MEALS          how many meals each one eats (default {DEFAULT_MEALS})
  -h, --help     print this help
"
    )
}

/// `(philosophers, meals)`, or `None` for `--help`.
fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<(usize, usize)>, String> {
    let mut numbers = Vec::new();
    for arg in args {
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        numbers.push(arg);
    }
    let number = |at: usize, name: &str, default: usize, min: usize| match numbers.get(at) {
        None => Ok(default),
        Some(arg) => match arg.parse() {
            Ok(n) if n >= min => Ok(n),
            _ => Err(format!(
                "{name} needs a whole number of at least {min}, not `{arg}`"
            )),
        },
    };
    if let Some(extra) = numbers.get(2) {
        return Err(format!("unexpected argument `{extra}`"));
    }
    let philosophers = number(0, "PHILOSOPHERS", DEFAULT_PHILOSOPHERS, 2)?;
    let meals = number(1, "MEALS", DEFAULT_MEALS, 0)?;
    Ok(Some((philosophers, meals)))
}
