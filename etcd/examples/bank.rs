//! The bank demonstration over etcd: several OS processes move money between the same
//! accounts, each transfer one commit (two accounts and the process's ledger key), while this
//! process audits the total with `using` (one etcd revision). At the end: commits/s,
//! conflicts, BusyRetry, and whether the total was conserved in every audit and at the end.
//!
//! ```text
//! cargo run --release -p stm-store-etcd --example bank -- --endpoints 127.0.0.1:2379 --processes 3 --seconds 2
//! ```

#[path = "../tests/common/bank.rs"]
mod bank;

use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use bank::{Rng, Tally, OPENING};
use stm_store_etcd::blocking::EtcdStore;

const USAGE: &str = "usage: bank [--endpoints HOST:PORT[,...]] [--processes N] [--seconds S] [--accounts N] [--prefix P]
  --endpoints  etcd client endpoints (default: $STM_ETCD_ENDPOINTS, else 127.0.0.1:2379)
  --processes  transferring processes (default 3)
  --seconds    how long each transfers (default 2)
  --accounts   accounts to move money between (default 8)
  --prefix     etcd key prefix (default: a fresh one per run)";

struct Args {
    endpoints: Vec<String>,
    processes: usize,
    seconds: f64,
    accounts: usize,
    prefix: String,
    /// Set in the child processes: which worker this is.
    child: Option<usize>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        endpoints: std::env::var("STM_ETCD_ENDPOINTS")
            .unwrap_or_else(|_| "127.0.0.1:2379".into())
            .split(',')
            .map(str::to_string)
            .collect(),
        processes: 3,
        seconds: 2.0,
        accounts: 8,
        prefix: format!(
            "bank-example/{}-{}/",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
        ),
        child: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.into());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = |what: &str| format!("{flag}: {value:?} is not {what}\n{USAGE}");
        match flag.as_str() {
            "--endpoints" => args.endpoints = value.split(',').map(str::to_string).collect(),
            "--processes" => args.processes = value.parse().map_err(|_| number("a count"))?,
            "--seconds" => args.seconds = value.parse().map_err(|_| number("a number"))?,
            "--accounts" => args.accounts = value.parse().map_err(|_| number("a count"))?,
            "--prefix" => args.prefix = value,
            "--child" => args.child = Some(value.parse().map_err(|_| number("a worker number"))?),
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    if args.accounts < 2 || args.processes == 0 || args.seconds.is_nan() || args.seconds <= 0.0 {
        return Err(format!(
            "need at least 2 accounts, 1 process and some seconds\n{USAGE}"
        ));
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let store = match EtcdStore::<String, i64>::connect(&args.endpoints, args.prefix.clone()) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("bank: {e}");
            return ExitCode::FAILURE;
        }
    };
    match args.child {
        Some(worker) => child(&store, &args, worker),
        None => parent(&store, &args),
    }
}

/// A transferring process: transfers until its time is up, then prints its tally.
fn child(store: &EtcdStore<String, i64>, args: &Args, worker: usize) -> ExitCode {
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let mut rng = Rng::new(std::process::id() as u64 ^ worker as u64);
    let mut tally = Tally::default();
    while Instant::now() < deadline {
        if let Err(e) = bank::transfer(
            store,
            worker,
            args.accounts,
            &mut rng,
            &mut tally,
            &mut |_| {},
        ) {
            eprintln!("bank: process {worker}: {e}");
            return ExitCode::FAILURE;
        }
    }
    println!("{}", tally.line(&format!("process {worker}")));
    ExitCode::SUCCESS
}

fn parent(store: &EtcdStore<String, i64>, args: &Args) -> ExitCode {
    println!(
        "etcd bank: {} processes x {} s on {} accounts at {} (prefix {})",
        args.processes,
        args.seconds,
        args.accounts,
        args.endpoints.join(","),
        args.prefix
    );
    if let Err(e) = bank::open(store, args.accounts) {
        eprintln!("bank: opening the accounts: {e}");
        return ExitCode::FAILURE;
    }
    let exe = std::env::current_exe().expect("this program's path");
    let started = Instant::now();
    let mut children = Vec::new();
    for worker in 0..args.processes {
        let child = Command::new(&exe)
            .args(["--child", &worker.to_string()])
            .args(["--endpoints", &args.endpoints.join(",")])
            .args(["--prefix", &args.prefix])
            .args(["--seconds", &args.seconds.to_string()])
            .args(["--accounts", &args.accounts.to_string()])
            .stdout(Stdio::piped())
            .spawn();
        match child {
            Ok(child) => children.push(child),
            Err(e) => {
                eprintln!("bank: cannot start a process: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    // Audit while they run.
    let expected = OPENING * args.accounts as i64;
    let (mut audits, mut audit_busy, mut broken) = (0u64, 0u64, 0u64);
    loop {
        match bank::audit(store, args.accounts) {
            Ok(Some(total)) => {
                audits += 1;
                if total != expected {
                    broken += 1;
                    eprintln!("bank: audit {audits}: total {total}, expected {expected}");
                }
            }
            Ok(None) => audit_busy += 1,
            Err(e) => {
                eprintln!("bank: audit: {e}");
                broken += 1;
            }
        }
        let running = children
            .iter_mut()
            .map(|c| c.try_wait())
            .filter(|status| matches!(status, Ok(None)))
            .count();
        if running == 0 {
            break;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut total = Tally::default();
    let mut tallies = Vec::new();
    let mut failed = false;
    for child in children {
        let output = child.wait_with_output().expect("a child's output");
        let text = String::from_utf8_lossy(&output.stdout);
        match text.lines().find_map(Tally::parse) {
            Some((who, tally)) if output.status.success() => {
                println!("{}", tally.line(&who));
                total.commits += tally.commits;
                total.conflicts += tally.conflicts;
                total.busy += tally.busy;
                total.unknown += tally.unknown;
                tallies.push(tally);
            }
            _ => failed = true,
        }
    }
    println!(
        "commits: {} in {elapsed:.2} s ({:.1}/s), conflicts: {}, BusyRetry: {} (+{audit_busy} in audits), outcome unknown: {}",
        total.commits,
        total.commits as f64 / elapsed,
        total.conflicts,
        total.busy,
        total.unknown
    );
    let final_total = bank::audit(store, args.accounts).ok().flatten();
    let ledgers = bank::ledgers(store, args.processes).unwrap_or_default();
    let ledgers_match = !failed
        && ledgers.len() == tallies.len()
        && ledgers
            .iter()
            .zip(&tallies)
            .all(|(l, t)| *l as u64 == t.commits);
    println!("audits: {audits}, not conserved: {broken}");
    println!(
        "ledgers match the processes' counts: {}",
        if ledgers_match { "yes" } else { "no" }
    );
    let conserved = broken == 0 && final_total == Some(expected);
    println!("total conserved: {}", if conserved { "yes" } else { "no" });
    if conserved && ledgers_match {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
