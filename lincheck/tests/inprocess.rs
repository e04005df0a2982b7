//! Randomized runs of the in-process store, each recorded and checked for linearizability: 2-8
//! threads on 2-8 keys, 10^3-10^4 operations per run, every operation of the store in the mix
//! (stalled commits helped by other threads, removal and keys created again included). And the
//! proof that it bites: a `get` that answers from a stale copy is caught.
//!
//! In an optimised build (`cargo test --release -p stm-store-lincheck`, as CI runs it) the runs
//! are many; a debug build runs a few short ones. The number of runs is fixed, never a time.

use stm_store_lincheck::run::{record, Config, Tally};
use stm_store_lincheck::{check, CheckError, Checker, Op};

/// Runs per test in an optimised build, and in a debug one.
const RUNS: u64 = if cfg!(debug_assertions) { 12 } else { 1_000 };

/// Operations of run `seed`: spread over 10^3..10^4 (short in a debug build).
fn ops(seed: u64) -> usize {
    let spread = if cfg!(debug_assertions) { 1_000 } else { 9_001 };
    1_000 + (seed.wrapping_mul(7_919) % spread) as usize
}

#[test]
fn randomized_runs_are_linearizable() {
    let mut tally = Tally::default();
    for seed in 0..RUNS {
        let config = Config::random(seed, ops(seed));
        let (history, stats) = record(&config);
        tally.add(&history, &stats);
        if let Err(e) = check(&history) {
            panic!("run {seed} ({config:?}) is not linearizable:\n{e}");
        }
    }
    println!("lincheck in-process: {tally}");
    // Each part of the mix happened (a count stays at zero if its part of the driver broke).
    assert!(tally.conflicts > 0, "no commit met a conflict: {tally}");
    assert!(
        tally.stalled > 0 && tally.dropped > 0,
        "no stalled commits: {tally}"
    );
    assert!(tally.helped > 0, "no stalled commit was helped: {tally}");
    assert!(
        tally.removals > 0 && tally.recreated > 0,
        "no removal and creation: {tally}"
    );
    assert!(tally.whole_store_reads > 0, "no dump or snapshot: {tally}");
}

#[test]
fn a_stale_cached_read_is_caught() {
    // Every run: threads commit the keys they read, so a copy kept past a commit shows.
    for seed in 0..8 {
        let mut config = Config::random(seed, 2_000);
        config.stale_gets = true;
        config.contended = false; // the contended mix has no get
        let (history, _) = record(&config);
        match check(&history) {
            Err(CheckError::NotLinearizable(violation)) => {
                if seed == 0 {
                    println!("{violation}");
                }
                let gets = violation
                    .needed
                    .iter()
                    .filter(|&&e| matches!(history.events[e].op, Op::Get { .. }))
                    .count();
                assert!(gets > 0, "the window holds no get:\n{violation}");
            }
            Ok(summary) => panic!("run {seed}: stale reads went unnoticed ({summary:?})"),
            Err(other) => panic!("run {seed}: {other}"),
        }
    }
}

#[test]
fn checking_keys_apart_agrees_with_checking_them_together() {
    let mut split = 0;
    for seed in 0..RUNS.min(40) {
        let mut config = Config::random(1_000 + seed, ops(seed).min(3_000));
        config.whole_store_reads = false;
        config.groups = 2 + (seed % 2) as u32;
        let (history, _) = record(&config);
        let apart = check(&history).unwrap_or_else(|e| panic!("run {seed}:\n{e}"));
        let together = Checker::default().partition(false).check(&history);
        assert!(together.is_ok(), "run {seed}: {together:?}");
        split += u64::from(apart.components > 1);
    }
    assert!(split > 0, "no run split into independent keys");
}
