//! The long soak: many randomized runs of the in-process store, each history checked.
//!
//! ```sh
//! cargo run --release -p stm-store-lincheck --bin soak -- --runs 2000 --ops 10000
//! ```
//!
//! Options: `--runs N` (default 200), `--ops N` operations per run (default 10000), `--seed S`
//! (default 1; run `i` uses seed S + i), `--stale-gets` (inject the stale-cache bug: every run
//! should then fail). Prints the first three violations with their windows, and ends with one summary line:
//! `soak: H histories checked, O operations, longest history L, violations V (...)`.
//! Exits non-zero if any history is not linearizable.

use std::time::{Duration, Instant};

use stm_store_lincheck::run::{record, Config, Tally};
use stm_store_lincheck::{CheckError, Checker};

fn main() {
    let mut runs = 200u64;
    let mut ops = 10_000usize;
    let mut seed = 1u64;
    let mut stale = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| usage(&arg))
        };
        match arg.as_str() {
            "--runs" => runs = value(),
            "--ops" => ops = value() as usize,
            "--seed" => seed = value(),
            "--stale-gets" => stale = true,
            _ => usage(&arg),
        }
    }
    let mut tally = Tally::default();
    let mut violations = 0u64;
    let (mut recording, mut checks) = (Duration::ZERO, Vec::new());
    for i in 0..runs {
        let mut config = Config::random(seed + i, ops);
        if stale {
            config.stale_gets = true;
            config.contended = false; // the contended mix has no get
        }
        let started = Instant::now();
        let (history, stats) = record(&config);
        recording += started.elapsed();
        let started = Instant::now();
        // Only the violations printed are worth their smallest window.
        let verdict = Checker::default().minimize(violations < 3).check(&history);
        checks.push(started.elapsed());
        tally.add(&history, &stats);
        match verdict {
            Ok(_) => {}
            Err(CheckError::NotLinearizable(violation)) => {
                violations += 1;
                if violations <= 3 {
                    println!("run {i} ({config:?}):\n{violation}");
                }
            }
            Err(malformed) => {
                violations += 1;
                println!("run {i} ({config:?}): {malformed}");
            }
        }
    }
    checks.sort_unstable();
    let checking: Duration = checks.iter().sum();
    let ms = |at: f64| {
        let i = ((checks.len() as f64 - 1.0) * at).round() as usize;
        checks.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    println!("exercised: {tally}");
    println!(
        "checking one history: median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(0.5),
        ms(0.99),
        ms(1.0)
    );
    println!(
        "soak: {} histories checked, {} operations, longest history {}, violations {violations} \
         (recording {:.1} s, checking {:.1} s)",
        tally.histories,
        tally.operations,
        tally.longest,
        recording.as_secs_f64(),
        checking.as_secs_f64(),
    );
    if violations > 0 {
        std::process::exit(1);
    }
}

fn usage(arg: &str) -> ! {
    eprintln!("soak: unexpected argument {arg:?}; usage: soak [--runs N] [--ops N] [--seed S] [--stale-gets]");
    std::process::exit(2);
}
