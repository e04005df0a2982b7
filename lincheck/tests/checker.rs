//! The checker itself, on histories written by hand: linearizable ones are accepted,
//! non-linearizable ones rejected with the smallest window that shows it (its events named
//! exactly), and operations whose outcome is unknown accepted whichever way they went.

use stm_store_lincheck::{check, CheckError, Checker, History, Op, Outcome, Part, Write, NEVER};

type H = History<&'static str, i64>;

fn usevar(key: &'static str, version: u64, value: Option<i64>) -> Op<&'static str, i64> {
    Op::Usevar {
        key,
        seen: Some((version, value)),
    }
}

fn get(key: &'static str, found: Option<(u64, Option<i64>)>) -> Op<&'static str, i64> {
    Op::Get { key, found }
}

fn part(key: &'static str, version: u64, write: Option<Write<i64>>) -> Part<&'static str, i64> {
    Part {
        key,
        version,
        write,
    }
}

fn commit(parts: Vec<Part<&'static str, i64>>, outcome: Outcome) -> Op<&'static str, i64> {
    Op::Commit { parts, outcome }
}

fn set(key: &'static str, version: u64, value: i64) -> Part<&'static str, i64> {
    part(key, version, Some(Write::Set(value)))
}

type Rows = Vec<(&'static str, u64, Option<i64>)>;

fn using(rows: Rows) -> Op<&'static str, i64> {
    Op::Using {
        keys: rows.iter().map(|r| r.0).collect(),
        rows: Some(rows),
    }
}

fn tx(reads: Rows, writes: Vec<(&'static str, Write<i64>)>) -> Op<&'static str, i64> {
    Op::Transaction {
        touched: reads.iter().map(|r| r.0).collect(),
        reads,
        absent: Vec::new(),
        writes,
        outcome: Outcome::Ok,
    }
}

#[track_caller]
fn accepted(history: &H) {
    if let Err(e) = check(history) {
        panic!("a linearizable history was rejected:\n{e}");
    }
    // Checking every key together gives the same verdict.
    if let Err(e) = Checker::default().partition(false).check(history) {
        panic!("rejected when not partitioned:\n{e}");
    }
}

/// Rejected, with exactly the events `window` (indices in the order pushed) in the smallest
/// window; returns the report.
#[track_caller]
fn rejected(history: &H, window: &[usize]) -> String {
    let violation = match check(history) {
        Ok(summary) => panic!("a non-linearizable history was accepted ({summary:?})"),
        Err(CheckError::NotLinearizable(violation)) => violation,
        Err(other) => panic!("not a violation: {other}"),
    };
    let report = violation.to_string();
    println!("{report}");
    let mut got = violation.window.clone();
    got.sort_unstable();
    assert_eq!(got, window, "the window is not the expected one:\n{report}");
    assert!(!violation.needed.is_empty(), "nothing needed:\n{report}");
    assert!(violation
        .needed
        .iter()
        .all(|e| violation.window.contains(e)));
    assert!(
        Checker::default().partition(false).check(history).is_err(),
        "accepted when not partitioned"
    );
    report
}

// ---------------------------------------------------------------------------------------------
// Accepted
// ---------------------------------------------------------------------------------------------

#[test]
fn a_sequential_history_is_accepted() {
    let mut h = H::new();
    h.push(0, 0, 1, usevar("k", 0, None))
        .push(0, 2, 3, commit(vec![set("k", 0, 7)], Outcome::Ok))
        .push(1, 4, 5, get("k", Some((1, Some(7)))))
        .push(
            1,
            6,
            7,
            Op::Dump {
                rows: vec![("k", 1, Some(7))],
            },
        );
    accepted(&h);
}

#[test]
fn a_read_overlapping_a_commit_may_see_either_side() {
    for seen in [(0, None), (1, Some(7))] {
        let mut h = H::new();
        h.push(0, 0, 1, usevar("k", 0, None))
            .push(0, 2, 10, commit(vec![set("k", 0, 7)], Outcome::Ok))
            .push(1, 3, 4, get("k", Some(seen)));
        accepted(&h);
    }
}

#[test]
fn concurrent_commits_land_in_either_order() {
    // The commit called later lands first, and the earlier one then fails.
    let mut h = H::new();
    h.push(0, 0, 1, using(vec![("a", 0, None), ("b", 0, None)]))
        .push(
            0,
            2,
            20,
            commit(
                vec![set("a", 0, 10), set("b", 0, 20)],
                Outcome::ConcurrentUpdate,
            ),
        )
        .push(1, 3, 4, usevar("a", 0, None))
        .push(1, 5, 10, commit(vec![set("a", 0, 5)], Outcome::Ok))
        .push(2, 21, 22, using(vec![("a", 1, Some(5)), ("b", 0, None)]));
    accepted(&h);
    // The commit called first lands, and the later one fails.
    let mut h = H::new();
    h.push(0, 0, 1, using(vec![("a", 0, None), ("b", 0, None)]))
        .push(
            0,
            2,
            20,
            commit(vec![set("a", 0, 10), set("b", 0, 20)], Outcome::Ok),
        )
        .push(1, 3, 4, usevar("a", 0, None))
        .push(
            1,
            5,
            10,
            commit(vec![set("a", 0, 5)], Outcome::ConcurrentUpdate),
        )
        .push(
            2,
            21,
            22,
            using(vec![("a", 1, Some(10)), ("b", 1, Some(20))]),
        );
    accepted(&h);
}

#[test]
fn an_unknown_outcome_is_accepted_either_way() {
    for landed in [false, true] {
        let mut h = H::new();
        let seen = if landed { (1, Some(5)) } else { (0, None) };
        h.push(0, 0, 1, usevar("k", 0, None))
            .push(0, 2, 10, commit(vec![set("k", 0, 5)], Outcome::Unknown))
            .push(1, 20, 21, get("k", Some(seen)));
        accepted(&h);
    }
    // An answer never came: it may land at any time after its call, even after other reads.
    let mut h = H::new();
    h.push(0, 0, 1, usevar("k", 0, None))
        .push(0, 2, NEVER, commit(vec![set("k", 0, 5)], Outcome::Unknown))
        .push(1, 20, 21, get("k", Some((0, None))))
        .push(1, 30, 31, get("k", Some((1, Some(5)))));
    accepted(&h);
}

#[test]
fn a_key_may_appear_while_a_call_that_creates_it_is_in_flight() {
    let mut h = H::new();
    h.push(0, 0, 100, usevar("k", 0, None))
        .push(1, 10, 20, get("k", Some((0, None))))
        .push(
            1,
            21,
            30,
            Op::Dump {
                rows: vec![("k", 0, None)],
            },
        );
    accepted(&h);
}

#[test]
fn removal_and_creating_the_key_again() {
    let mut h = H::new();
    h.push(0, 0, 1, usevar("k", 0, None))
        .push(0, 2, 3, commit(vec![set("k", 0, 1)], Outcome::Ok))
        .push(
            0,
            4,
            5,
            commit(vec![part("k", 1, Some(Write::Remove))], Outcome::Ok),
        )
        .push(1, 6, 7, get("k", None))
        .push(1, 8, 9, Op::Snapshot { rows: vec![] })
        // The handle that removed holds the removal's version; committing it again fails.
        .push(
            0,
            10,
            11,
            commit(vec![part("k", 2, None)], Outcome::ConcurrentUpdate),
        )
        // Created again above the removal (version 2): at 3.
        .push(1, 12, 13, usevar("k", 3, None))
        // Another key created meanwhile may start at 0 (the removal not unlinked yet) or above.
        .push(2, 12, 13, usevar("j", 0, None));
    accepted(&h);
}

#[test]
fn a_transaction_is_one_atomic_step() {
    let mut h = H::new();
    h.push(0, 0, 1, using(vec![("a", 0, None), ("b", 0, None)]))
        .push(
            0,
            2,
            3,
            commit(vec![set("a", 0, 10), set("b", 0, 0)], Outcome::Ok),
        )
        .push(
            1,
            4,
            10,
            tx(
                vec![("a", 1, Some(10)), ("b", 1, Some(0))],
                vec![("a", Write::Set(7)), ("b", Write::Set(3))],
            ),
        )
        .push(2, 5, 6, using(vec![("a", 1, Some(10)), ("b", 1, Some(0))]))
        .push(2, 11, 12, using(vec![("a", 2, Some(7)), ("b", 2, Some(3))]));
    accepted(&h);
}

/// A transaction of a backend whose reads create nothing (etcd): it found the keys of `absent`
/// with no value, absent or not.
fn tx_absent(
    reads: Rows,
    absent: Vec<(&'static str, u64)>,
    writes: Vec<(&'static str, Write<i64>)>,
) -> Op<&'static str, i64> {
    Op::Transaction {
        touched: Vec::new(),
        reads,
        absent,
        writes,
        outcome: Outcome::Ok,
    }
}

#[test]
fn a_transaction_whose_reads_create_nothing_creates_a_key_only_by_writing_it() {
    // "a" is found with no value and written: created at version 1. "b" is found with no value
    // and not written: it stays absent.
    let mut h = H::new();
    let found = vec![("a", 0), ("b", 0)];
    h.push(
        0,
        0,
        1,
        tx_absent(vec![], found, vec![("a", Write::Set(7))]),
    );
    h.push(
        1,
        2,
        3,
        Op::Dump {
            rows: vec![("a", 1, Some(7))],
        },
    );
    accepted(&h);
    // A key there with no value reads the same.
    let mut h = H::new();
    h.push(0, 0, 1, usevar("a", 0, None));
    h.push(
        1,
        2,
        3,
        tx_absent(vec![], vec![("a", 0)], vec![("a", Write::Set(7))]),
    );
    h.push(1, 4, 5, get("a", Some((1, Some(7)))));
    accepted(&h);
    // A key with a value does not.
    let mut h = H::new();
    h.push(0, 0, 1, usevar("a", 0, None));
    h.push(0, 2, 3, commit(vec![set("a", 0, 5)], Outcome::Ok));
    h.push(
        1,
        4,
        5,
        tx_absent(vec![], vec![("a", 1)], vec![("a", Write::Set(7))]),
    );
    rejected(&h, &[1, 2]);
}

#[test]
fn a_history_may_start_from_a_store_that_holds_keys() {
    let mut h = H::new();
    h.initial = vec![("k", 3, Some(1))];
    h.push(0, 0, 1, get("k", Some((3, Some(1)))))
        .push(0, 2, 3, commit(vec![set("k", 3, 2)], Outcome::Ok))
        .push(1, 4, 5, get("k", Some((4, Some(2)))));
    accepted(&h);
    let mut h = H::new();
    h.initial = vec![("k", 3, Some(1))];
    h.push(0, 0, 1, get("k", None));
    rejected(&h, &[0]);
}

#[test]
fn ten_thousand_operations_on_a_few_keys_are_decided() {
    // A counter per key, bumped in turn by two interleaved clients, and read by a third.
    let mut h = H::new();
    let mut versions = [0u64; 4];
    let keys = ["a", "b", "c", "d"];
    for (at, key) in keys.iter().enumerate() {
        h.push(0, at as u64 * 2, at as u64 * 2 + 1, usevar(key, 0, None));
    }
    let mut t = 100;
    for i in 0..3_300u64 {
        let k = (i % 4) as usize;
        let v = versions[k];
        h.push(
            1 + (i % 2) as u32,
            t,
            t + 15,
            commit(vec![set(keys[k], v, i as i64)], Outcome::Ok),
        );
        h.push(
            3,
            t + 5,
            t + 8,
            get(
                keys[k],
                Some((v, if v == 0 { None } else { Some(i as i64 - 4) })),
            ),
        );
        h.push(
            4,
            t + 9,
            t + 30,
            get(keys[k], Some((v + 1, Some(i as i64)))),
        );
        versions[k] += 1;
        t += 10;
    }
    assert!(h.len() >= 9_900);
    accepted(&h);
}

// ---------------------------------------------------------------------------------------------
// Rejected
// ---------------------------------------------------------------------------------------------

#[test]
fn a_stale_read_after_a_returned_commit_is_rejected() {
    let mut h = H::new();
    h.push(0, 0, 1, usevar("k", 0, None))
        .push(0, 2, 3, commit(vec![set("k", 0, 7)], Outcome::Ok))
        .push(1, 4, 5, get("k", Some((0, None))));
    let report = rejected(&h, &[1, 2]);
    assert!(report.contains("get \"k\" -> v0=none"), "{report}");
    assert!(report.contains("commit [\"k\"@v0 set 7] -> Ok"), "{report}");
}

#[test]
fn a_torn_multi_key_read_is_rejected() {
    let mut h = H::new();
    h.push(0, 0, 1, using(vec![("a", 0, None), ("b", 0, None)]))
        .push(
            0,
            2,
            3,
            commit(vec![set("a", 0, 1), set("b", 0, 2)], Outcome::Ok),
        )
        .push(1, 2, 10, using(vec![("a", 1, Some(1)), ("b", 0, None)]));
    rejected(&h, &[1, 2]);
    // The same through dump, which sees every key.
    let mut h = H::new();
    h.push(0, 0, 1, using(vec![("a", 0, None), ("b", 0, None)]))
        .push(
            0,
            2,
            3,
            commit(vec![set("a", 0, 1), set("b", 0, 2)], Outcome::Ok),
        )
        .push(
            1,
            2,
            10,
            Op::Dump {
                rows: vec![("a", 0, None), ("b", 1, Some(2))],
            },
        );
    rejected(&h, &[1, 2]);
}

#[test]
fn a_lost_update_is_rejected() {
    let mut h = H::new();
    h.push(0, 0, 1, usevar("k", 0, None))
        .push(1, 0, 1, usevar("k", 0, None))
        .push(0, 2, 5, commit(vec![set("k", 0, 1)], Outcome::Ok))
        .push(1, 3, 6, commit(vec![set("k", 0, 2)], Outcome::Ok));
    rejected(&h, &[2, 3]);
}

#[test]
fn a_commit_applied_twice_is_rejected() {
    // A commit in doubt, sent again; a later read shows both landed.
    let mut h = H::new();
    h.push(0, 0, 1, usevar("k", 0, None))
        .push(0, 2, 3, commit(vec![set("k", 0, 5)], Outcome::Unknown))
        .push(0, 4, 5, commit(vec![set("k", 0, 5)], Outcome::Ok))
        .push(1, 6, 7, get("k", Some((2, Some(5)))));
    // From any state, the commit that landed from version 0 and a later read of version 2
    // with nobody else writing already contradict each other.
    rejected(&h, &[2, 3]);
}

#[test]
fn write_skew_is_rejected() {
    // Two transactions read both keys at the same versions and each writes one.
    let mut h = H::new();
    h.push(0, 0, 1, using(vec![("a", 0, None), ("b", 0, None)]))
        .push(
            1,
            2,
            10,
            tx(
                vec![("a", 0, None), ("b", 0, None)],
                vec![("a", Write::Set(1))],
            ),
        )
        .push(
            2,
            3,
            11,
            tx(
                vec![("a", 0, None), ("b", 0, None)],
                vec![("b", Write::Set(1))],
            ),
        );
    rejected(&h, &[1, 2]);
}

#[test]
fn a_conflict_with_nothing_is_rejected() {
    let mut h = H::new();
    h.push(0, 0, 1, usevar("k", 0, None))
        .push(
            0,
            2,
            3,
            commit(vec![set("k", 0, 1)], Outcome::ConcurrentUpdate),
        )
        .push(1, 4, 5, get("k", Some((0, None))));
    rejected(&h, &[0, 1]);
}

#[test]
fn a_dirty_read_of_a_commit_that_failed_is_rejected() {
    let mut h = H::new();
    h.push(0, 0, 1, using(vec![("a", 0, None), ("b", 0, None)]))
        .push(
            0,
            2,
            10,
            commit(
                vec![set("a", 0, 1), set("b", 0, 1)],
                Outcome::ConcurrentUpdate,
            ),
        )
        .push(1, 3, 4, get("a", Some((1, Some(1)))));
    rejected(&h, &[0, 1, 2]);
}

#[test]
fn a_key_created_again_below_its_removal_is_rejected() {
    let mut h = H::new();
    h.push(0, 0, 1, usevar("k", 0, None))
        .push(0, 2, 3, commit(vec![set("k", 0, 1)], Outcome::Ok))
        .push(
            0,
            4,
            5,
            commit(vec![part("k", 1, Some(Write::Remove))], Outcome::Ok),
        )
        .push(1, 6, 7, usevar("k", 0, None));
    rejected(&h, &[2, 3]);
}

#[test]
fn a_read_of_a_key_nobody_is_creating_is_rejected() {
    let mut h = H::new();
    h.push(1, 0, 1, get("k", Some((0, None))))
        .push(0, 2, 3, usevar("k", 0, None));
    rejected(&h, &[0]);
}

#[test]
fn the_operations_shown_are_the_ones_that_contradict_each_other() {
    // Key "k" is created, removed and created again, and written through handles; then a get
    // finds "j", which no call ever created, after a dump found it absent (the dump also puts
    // both keys in one part). The dump and the get are to blame: the reads that created "k" may
    // lose their answers, but not the keys they created, or the commits would seem to write a
    // key that does not exist.
    let mut h = H::new();
    h.push(1, 0, 1, Op::Dump { rows: vec![] })
        .push(0, 2, 3, usevar("k", 0, None))
        .push(
            0,
            4,
            5,
            commit(vec![part("k", 0, Some(Write::Remove))], Outcome::Ok),
        )
        .push(0, 6, 7, usevar("k", 2, None))
        .push(0, 8, 9, commit(vec![set("k", 2, 5)], Outcome::Ok))
        .push(1, 10, 11, get("j", Some((0, None))));
    let violation = match check(&h) {
        Err(CheckError::NotLinearizable(violation)) => violation,
        other => panic!("not rejected: {other:?}"),
    };
    println!("{violation}");
    assert_eq!(violation.needed, [0, 5], "{violation}");
}

#[test]
fn a_dump_that_misses_a_key_is_rejected() {
    let mut h = H::new();
    h.push(0, 0, 1, using(vec![("a", 0, None), ("b", 0, None)]))
        .push(
            1,
            2,
            3,
            Op::Dump {
                rows: vec![("a", 0, None)],
            },
        );
    rejected(&h, &[0, 1]);
}

#[test]
fn a_stale_read_is_shown_in_a_small_window_of_a_long_history() {
    // A long linearizable history, then one stale read: the window holds the last commit and
    // the read, not the thousands of operations before.
    let mut h = H::new();
    h.push(0, 0, 1, usevar("k", 0, None));
    let mut t = 10;
    for v in 0..2_000u64 {
        h.push(
            0,
            t,
            t + 3,
            commit(vec![set("k", v, v as i64)], Outcome::Ok),
        );
        let before = if v == 0 { None } else { Some(v as i64 - 1) };
        h.push(1, t + 1, t + 2, get("k", Some((v, before))));
        t += 10;
    }
    let last = h.len();
    h.push(1, t, t + 1, get("k", Some((1_999, Some(1_998)))));
    let report = rejected(&h, &[last - 2, last - 1, last]);
    assert!(report.contains("call µs"), "{report}");
}

#[test]
fn a_malformed_history_is_refused() {
    let mut h = H::new();
    h.push(0, 5, 1, usevar("k", 0, None));
    assert!(matches!(check(&h), Err(CheckError::Malformed(_))));
    let mut h = H::new();
    h.push(
        0,
        0,
        1,
        commit(vec![set("k", 0, 1), set("k", 0, 2)], Outcome::Ok),
    );
    assert!(matches!(check(&h), Err(CheckError::Malformed(_))));
}
