//! Two OS processes transfer money between the same accounts while a third audits with
//! `using`: the total holds in every audit and at the end, and each transferring process's
//! ledger key counts exactly the transfers it saw land.
//!
//! The processes are this test binary again, running the ignored `child` test with its role
//! in the environment.

mod common;

use std::process::{Command, Stdio};

use common::bank::{self, Rng, Tally, OPENING};
use common::{endpoints, fresh_prefix};
use stm_store_etcd::blocking::EtcdStore;

const ACCOUNTS: usize = 6;
const TRANSFERS: u64 = 120;
const WORKERS: usize = 2;

fn spawn(role: &str, prefix: &str, worker: usize) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("STM_BANK_ROLE", role)
        .env("STM_BANK_PREFIX", prefix)
        .env("STM_BANK_WORKER", worker.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn a child process")
}

/// The lines a child printed that start with `RESULT `, after checking it succeeded.
fn results(child: std::process::Child, what: &str) -> Vec<String> {
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{what} failed: {stdout}");
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT ").map(str::to_string))
        .collect()
}

#[test]
fn two_processes_transfer_while_a_third_audits() {
    let prefix = fresh_prefix("processes");
    let store = EtcdStore::<String, i64>::connect(endpoints(), prefix.clone()).unwrap();
    bank::open(&store, ACCOUNTS).unwrap();
    let auditor = spawn("audit", &prefix, 0);
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| spawn("transfer", &prefix, w))
        .collect();

    let mut tallies = Vec::new();
    for (w, child) in workers.into_iter().enumerate() {
        let lines = results(child, &format!("transfer process {w}"));
        let (_, tally) = Tally::parse(&lines[0]).expect("a tally line");
        assert_eq!(tally.commits, TRANSFERS);
        tallies.push(tally);
    }
    let audit = results(auditor, "audit process");
    // "audits N": each one checked the total inside the auditor (it fails otherwise).
    let audits: u64 = audit[0].strip_prefix("audits ").unwrap().parse().unwrap();
    assert!(audits >= 1);

    let total = bank::audit(&store, ACCOUNTS).unwrap().unwrap();
    assert_eq!(total, OPENING * ACCOUNTS as i64, "total not conserved");
    let ledgers = bank::ledgers(&store, WORKERS).unwrap();
    for (w, tally) in tallies.iter().enumerate() {
        assert_eq!(
            ledgers[w] as u64, tally.commits,
            "worker {w}: ledger says {} transfers landed, the worker saw {}",
            ledgers[w], tally.commits
        );
    }
}

/// The child processes' entry point (run by the test above, not on its own).
#[test]
#[ignore = "a child process of two_processes_transfer_while_a_third_audits"]
fn child() {
    let role =
        std::env::var("STM_BANK_ROLE").expect("run by two_processes_transfer_while_a_third_audits");
    let prefix = std::env::var("STM_BANK_PREFIX").unwrap();
    let worker: usize = std::env::var("STM_BANK_WORKER").unwrap().parse().unwrap();
    let store = EtcdStore::<String, i64>::connect(endpoints(), prefix).unwrap();
    match role.as_str() {
        "transfer" => {
            let mut tally = Tally::default();
            let mut rng = Rng::new(std::process::id() as u64);
            while tally.commits < TRANSFERS {
                bank::transfer(&store, worker, ACCOUNTS, &mut rng, &mut tally, &mut |_| {})
                    .unwrap();
            }
            println!("\nRESULT {}", tally.line(&format!("worker {worker}")));
        }
        "audit" => {
            // Audit until both workers' ledgers show all their transfers (read in the same
            // snapshot as the accounts).
            let mut audits = 0u64;
            loop {
                let keys = (0..ACCOUNTS)
                    .map(bank::account)
                    .chain((0..WORKERS).map(bank::ledger));
                let c = store.using(keys).unwrap();
                let value = |k: String| c[k.as_str()].value().copied().unwrap_or(0);
                let total: i64 = (0..ACCOUNTS).map(|a| value(bank::account(a))).sum();
                assert_eq!(
                    total,
                    OPENING * ACCOUNTS as i64,
                    "audit {audits}: total not conserved"
                );
                audits += 1;
                if (0..WORKERS).all(|w| value(bank::ledger(w)) as u64 >= TRANSFERS) {
                    break;
                }
            }
            println!("\nRESULT audits {audits}");
        }
        other => panic!("unknown role {other}"),
    }
}
