//! Checks of the harness itself: the world model must reject what the contract forbids.

use std::ops::Bound;

use super::decode::{Look, Op, TxKind, TxOp, Via};
use super::interleave::{replay, Attempt, Interleave, World};
use super::memory::Lives;
use super::model::{Looked, MVal, Seen, Write};
use super::tx::simulate_tx;
use super::*;

/// A program (2 clients) where a commit is stopped after claiming key 0 and the other client
/// commits key 0 meanwhile (the implementation helps the stopped commit to its end first).
pub(super) const HELPED: &[u8] = &[
    0, // 2 clients
    4, 0, 2, 0, 1, // c0: using(slot 0, [0, 1])
    8, 0, 0, 5, // c0: slot 0 [0].set(5)
    8, 0, 1, 6, // c0: slot 0 [1].set(6)
    30, 0, 1, // c0: pause slot 0 after 1 claim
    1, 0, 0, // c1: usevar(slot 0, key 0)
    9, 0, 0, 9, // c1: slot 0 .set(9)
    19, 0,  // c1: commit slot 0
    25, // c1: dump
    24, // c0: (wakes) resume
];

/// [`HELPED`] with snapshots that claim their keys (bit 1 of the first byte), and a dump in
/// place of the other client's commit: the dump's claim on key 0 meets the stopped commit's
/// claim and helps that commit to its end, so the dump already shows it whole.
pub(super) const CLAIMING_HELPS: &[u8] = &[
    2, // 2 clients; snapshots claim
    4, 0, 2, 0, 1, // c0: using(slot 0, [0, 1]): a claiming snapshot
    8, 0, 0, 5, // c0: slot 0 [0].set(5)
    8, 0, 1, 6, // c0: slot 0 [1].set(6)
    30, 0, 1,  // c0: pause slot 0 after 1 claim
    25, // c1: dump: helps c0's commit to its end
    24, // c0: (wakes) resume: Ok
];

#[test]
fn a_claiming_snapshot_helps_a_paused_commit() {
    let (clients, steps) = decode_interleave(CLAIMING_HELPS);
    assert_eq!((clients, steps.len()), (2, 6), "{steps:?}");
    let stats = run_interleave(CLAIMING_HELPS);
    if CLAIM_SUPPORTED {
        // `using`, the dump, and the final dump each claimed their two keys.
        assert_eq!(stats.snapshot_claims, 3, "{stats:?}");
        assert_eq!(stats.resumed_ok, 1, "{stats:?}");
    }
    // Without the bit, no snapshot on one thread ever claims (its double collect succeeds).
    let mut collecting = CLAIMING_HELPS.to_vec();
    collecting[0] = 0;
    assert_eq!(run_interleave(&collecting).snapshot_claims, 0);
}

#[test]
fn a_helped_paused_commit_decodes_and_runs() {
    let (clients, steps) = decode_interleave(HELPED);
    assert_eq!((clients, steps.len()), (2, 9), "{steps:?}");
    let stats = run_interleave(HELPED);
    if PAUSE_SUPPORTED {
        // Both commits write key 0 read at version 0: exactly one of them lands (which one
        // is the implementation's choice; helping makes it the stopped one).
        assert_eq!(stats.commits_ok + stats.resumed_ok, 1, "{stats:?}");
        assert_eq!(stats.commits_failed + stats.resumed_failed, 1, "{stats:?}");
        assert!(stats.max_worlds >= 2, "{stats:?}");
    } else {
        assert_eq!(
            (stats.commits_ok, stats.commits_failed),
            (2, 0),
            "{stats:?}"
        );
    }
}

fn with_pending_commit(store: &S) -> Interleave<'static, '_> {
    with_pending(store, |key| Write::Value(Some(5 + N::from(key))))
}

/// Keys 0 and 1 created, and a commit of both (writing `write(key)`) stopped half-way.
fn with_pending(store: &S, write: impl Fn(K) -> Write) -> Interleave<'static, '_> {
    let mut model = Model::default();
    let members: Vec<MVal> = model
        .using(&[0, 1])
        .into_iter()
        .map(|mut m| {
            m.pending = Some(write(m.key));
            m
        })
        .collect();
    Interleave {
        program: &[],
        pos: 0,
        current: 0,
        store,
        clients: Vec::new(),
        worlds: vec![World {
            model,
            pending: vec![0],
            decided: Vec::new(),
        }],
        attempts: vec![Attempt {
            step: 0,
            client: 0,
            members,
        }],
        stats: Stats::default(),
        lives: Lives::default(),
        paused_members: 0,
    }
}

fn dump(run: &mut Interleave<'_, '_>, seen: &[Seen]) -> Result<(), String> {
    run.observe("dump", &seen.to_vec(), |w, _| w.model.dump())
}

const BEFORE: &[Seen] = &[(0, 0, None), (1, 0, None)];
const AFTER: &[Seen] = &[(0, 1, Some(5)), (1, 1, Some(6))];

#[test]
fn a_pending_commit_is_seen_whole_or_not_at_all() {
    let store = Store::new();
    let mut run = with_pending_commit(&store);
    assert!(dump(&mut run, &[(0, 1, Some(5)), (1, 0, None)]).is_err());
    let mut run = with_pending_commit(&store);
    assert!(dump(&mut run, &[(0, 0, None), (1, 1, Some(6))]).is_err());
    let mut run = with_pending_commit(&store);
    assert!(dump(&mut run, &[(0, 1, Some(5)), (1, 1, Some(7))]).is_err());
}

#[test]
fn a_pending_commit_takes_effect_once_and_stays() {
    let store = Store::new();
    let mut run = with_pending_commit(&store);
    dump(&mut run, BEFORE).unwrap();
    dump(&mut run, BEFORE).unwrap();
    dump(&mut run, AFTER).unwrap();
    assert!(dump(&mut run, BEFORE).is_err(), "a commit cannot be undone");
}

#[test]
fn a_resumed_commit_must_answer_as_it_took_effect() {
    let store = Store::new();
    let resume = |run: &mut Interleave<'_, '_>, ok: bool| run.observe_resume(0, ok);
    let mut run = with_pending_commit(&store);
    dump(&mut run, AFTER).unwrap();
    assert!(resume(&mut run, false).is_err());
    let mut run = with_pending_commit(&store);
    resume(&mut run, true).unwrap();
    assert!(dump(&mut run, BEFORE).is_err());
    // Nobody else wrote, so the paused commit cannot fail.
    let mut run = with_pending_commit(&store);
    assert!(resume(&mut run, false).is_err());
}

/// `ops`: a transaction whose first attempt is broken by a commit from inside the
/// closure (between its reads of keys 0 and 1) and runs again; then a dump.
const TX_RERUN: &[u8] = &[
    3, 16, // Tx, atomically, 4 operations:
    0, 0, //   get(0)
    9, 0, 7, //   on attempt 1: usevar(0), set(7), commit
    0, 1, //   get(1): stops attempt 1 (key 0 changed)
    4, 1, 5,  //   set(1, 5)
    12, // dump
];

#[test]
fn a_transaction_program_decodes_and_reruns_after_a_conflict() {
    let ops = decode_ops(TX_RERUN);
    let body = vec![
        TxOp::Get {
            key: 0,
            swallow: false,
        },
        TxOp::Bump { key: 0, value: 7 },
        TxOp::Get {
            key: 1,
            swallow: false,
        },
        TxOp::Set {
            key: 1,
            value: 5,
            swallow: false,
        },
    ];
    let tx = Op::Tx {
        kind: TxKind::Atomically,
        body: body.clone(),
    };
    assert_eq!(ops, vec![tx, Op::Dump]);
    let stats = run_ops_counting(TX_RERUN);
    assert_eq!((stats.tx_ok, stats.tx_reruns), (1, 1), "{stats:?}");
    // The same in `interleave` (2 clients): client 0 runs it (opcode byte = 2 x opcode).
    let stats = run_interleave(&[0, 6, 16, 0, 0, 9, 0, 7, 0, 1, 4, 1, 5, 24]);
    assert_eq!((stats.tx_ok, stats.tx_reruns), (1, 1), "{stats:?}");

    let mut model = Model::default();
    let sim = simulate_tx(&mut model, &body, false);
    assert_eq!(
        sim.log,
        vec![
            Ans::Attempt(1),
            Ans::Got(0, None, 0),
            Ans::Bumped(0, 0, true),
            Ans::Stopped,
            Ans::Attempt(2),
            Ans::Got(0, Some(7), 1),
            Ans::Got(1, None, 0),
            Ans::Wrote(1, 0),
        ]
    );
    assert_eq!(sim.end, TxEnd::Ok);
    assert_eq!(model.dump(), vec![(0, 1, Some(7)), (1, 1, Some(5))]);
    // Under a deadline already past, the conflict times out instead.
    let sim = simulate_tx(&mut Model::default(), &body, true);
    assert_eq!(sim.end, TxEnd::TimedOut);
}

/// `or_else` whose first branch writes key 2 and retries: the second branch reads key 2
/// back as never written; then the closure fails with its own error (nothing written).
/// And a retry with nothing to wait for, under `atomically`: run with a deadline instead.
const TX_OR_ELSE: &[u8] = &[
    3, 9, // Tx, try_atomically, 2 operations:
    10, 10, //   or_else(first: 2 operations, second: 1)
    4, 2, 9, //     first: set(2, 9)
    7, //     first: retry
    0, 2, //     second: get(2)
    8, 3, //   fail with 3
    3, 8, // Tx, atomically, 2 operations:
    0, 0, //   get(0)
    7, //   retry
];

#[test]
fn a_transaction_program_with_or_else_a_user_error_and_a_retry() {
    let stats = run_ops_counting(TX_OR_ELSE);
    assert_eq!((stats.tx_failed, stats.tx_timed_out), (1, 1), "{stats:?}");
    let Op::Tx { body, .. } = &decode_ops(TX_OR_ELSE)[0] else {
        panic!("a transaction first");
    };
    let mut model = Model::default();
    let sim = simulate_tx(&mut model, body, false);
    assert_eq!(
        sim.log,
        vec![
            Ans::Attempt(1),
            Ans::Wrote(2, 0),
            Ans::Retried,
            Ans::Got(2, None, 0),
            Ans::OrElse(true),
        ]
    );
    assert_eq!(sim.end, TxEnd::Failed(3));
    assert_eq!(model.dump(), vec![(2, 0, None)], "created, not written");
    // The same in `interleave` (3 clients): clients 2 and 1 run them.
    let stats = run_interleave(&[1, 11, 9, 10, 10, 4, 2, 9, 7, 0, 2, 8, 3, 10, 8, 0, 0, 7]);
    assert_eq!((stats.tx_failed, stats.tx_timed_out), (1, 1), "{stats:?}");
}

#[test]
fn the_serial_replay_rejects_a_commit_that_would_not_validate() {
    let store = Store::new();
    let run = with_pending_commit(&store);
    let commit = Event::Commit(run.attempts[0].members.clone());
    let created = [Event::Create(0, 0), Event::Create(1, 0)];
    let history = |events: &[Event]| [&created[..], events].concat();
    // The same commit twice: the second read version 0 of keys now at 1.
    assert!(replay(&history(&[commit.clone(), commit.clone()]), AFTER).is_err());
    replay(&history(std::slice::from_ref(&commit)), AFTER).unwrap();
    assert!(replay(&history(&[]), AFTER).is_err());
    // A key created twice, or a commit of a key never created.
    assert!(replay(&history(&[Event::Create(0, 0)]), BEFORE).is_err());
    assert!(replay(&[commit], AFTER).is_err());
}

/// Key 0 removed (at version 1) and key 1 set, by one commit stopped half-way.
fn with_pending_removal(store: &S) -> Interleave<'static, '_> {
    with_pending(store, |key| match key {
        0 => Write::Remove,
        _ => Write::Value(Some(6)),
    })
}

/// Whether the model must accept each step of [`removal_step`] after the accepted ones
/// before it.
const REMOVAL_ACCEPTED: [bool; 14] = [
    false, false, true, true, false, true, true, false, false, true, true, true, false, true,
];

/// The steps of [`a_pending_removal_is_seen_whole_and_raises_the_floor_at_its_instant`].
fn removal_step(run: &mut Interleave<'_, '_>, step: usize) -> Result<(), String> {
    let usevar = |run: &mut Interleave<'_, '_>, key: K, seen: Seen| {
        run.observe("usevar", &seen, |w, _| w.model.usevar(key).seen())
    };
    let len = |run: &mut Interleave<'_, '_>, len: usize| {
        let actual = Looked::Len(len, len == 0);
        run.observe("len", &actual, |w, _| w.model.look(&Look::Len, &actual))
    };
    match step {
        // Torn: the removal without the set, or the set without the removal.
        0 => dump(run, &[(0, 0, None), (1, 1, Some(6))]),
        1 => dump(run, &[(1, 0, None)]),
        2 => dump(run, BEFORE),
        3 => dump(run, &[(1, 1, Some(6))]),
        4 => dump(run, BEFORE), // a removal cannot be undone
        // `len` may still count key 0 until a call names it.
        5 => len(run, 2),
        6 => len(run, 1),
        7 => len(run, 0),
        // From the removal's instant on, a new key starts above it (contract 1, 23), and
        // so does key 0 read again.
        8 => usevar(run, 2, (2, 0, None)),
        9 => usevar(run, 2, (2, 2, None)),
        10 => usevar(run, 0, (0, 2, None)),
        11 => len(run, 3),
        12 => len(run, 4), // key 0 was named: its old life is unlinked
        _ => dump(run, REMOVED_DUMP),
    }
}

const REMOVED_DUMP: &[Seen] = &[(0, 2, None), (1, 1, Some(6)), (2, 2, None)];

#[test]
fn a_pending_removal_is_seen_whole_and_raises_the_floor_at_its_instant() {
    let store = Store::new();
    let accepted_before = |run: &mut Interleave<'_, '_>, end: usize| {
        for step in (0..end).filter(|&step| REMOVAL_ACCEPTED[step]) {
            removal_step(run, step).unwrap_or_else(|e| panic!("step {step}: {e}"));
        }
    };
    for (step, accepted) in REMOVAL_ACCEPTED.into_iter().enumerate() {
        let mut run = with_pending_removal(&store);
        accepted_before(&mut run, step);
        let result = removal_step(&mut run, step);
        assert_eq!(result.is_ok(), accepted, "step {step}: {result:?}");
    }
    // The history replays: the removal, then the two keys created above it.
    let mut run = with_pending_removal(&store);
    accepted_before(&mut run, REMOVAL_ACCEPTED.len());
    replay(&run.worlds[0].model.log, REMOVED_DUMP).unwrap();
    assert!(replay(&run.worlds[0].model.log, &[(1, 1, Some(6))]).is_err());
}

/// `ops`: a key set, removed, committed again by the handle that removed it (refused,
/// contract 25) and by a handle that read it before (refused, 24), looked at, read again
/// (above the floor, 23), a new key (above it too), and a transaction that removes.
const REMOVAL: &[u8] = &[
    0, 0, 1, // usevar(slot 0, key 1)
    4, 0, 0, 7, // slot 0 .set(7)
    9, 0, // commit slot 0: key 1 at version 1
    0, 1, 1, // usevar(slot 1, key 1): version 1
    1, 0, 0, // slot 0 .remove()
    9, 0, // commit slot 0: removed at version 2
    9, 0, // commit slot 0 again: ConcurrentUpdate
    9, 1, // commit slot 1 (read before the removal): ConcurrentUpdate
    10, 4, // get(&1): None
    10, 5, // contains_key(&1): false
    10, 2, // len: 0
    0, 2, 1, // usevar(slot 2, key 1): version 3 (floor 2 + 1)
    0, 3, 3,  // usevar(slot 3, key 3): version 3
    12, // dump
    10, 3, 0, // snapshot(..)
    13, 1, // drop slot 1
    3, 4, 5, 3,  // Tx, atomically, 1 operation: remove(3)
    12, // dump
];

#[test]
fn a_removal_program_decodes_and_runs() {
    let ops = decode_ops(REMOVAL);
    assert_eq!(ops.len(), 18, "{ops:?}");
    assert_eq!(
        ops[4],
        Op::Remove {
            slot: 0,
            key: 0,
            via: Via::GetMut
        }
    );
    assert_eq!(ops[10], Op::Look(Look::Len));
    assert_eq!(
        ops[14],
        Op::Look(Look::Snapshot(Bound::Unbounded, Bound::Unbounded))
    );
    let stats = run_ops_counting(REMOVAL);
    assert_eq!(
        (stats.removals, stats.recreations, stats.tx_ok),
        (2, 2, 1),
        "{stats:?}"
    );
    let mut model = Model::default();
    let mut handle = model.usevar(1);
    handle.pending = Some(Write::Value(Some(7)));
    model.commit_now(std::slice::from_ref(&handle)).unwrap();
    handle.committed();
    handle.pending = Some(Write::Remove);
    model.commit_now(std::slice::from_ref(&handle)).unwrap();
    handle.committed();
    assert_eq!(handle.seen(), (1, 2, None));
    assert!(model.commit_now(std::slice::from_ref(&handle)).is_err());
    assert_eq!(model.usevar(3).seen(), (3, 3, None));
}

/// `interleave` (2 clients): client 0's commit, which removes key 0 and sets key 1, stops
/// after claiming both; client 1's commit of key 1 helps it to its end (and fails), then
/// creates key 2. Key 0 is looked up first, so that key 2 starts above key 0's removal.
pub(super) const HELPED_REMOVAL: &[u8] = &[
    0, // 2 clients
    4, 0, 2, 0, 1, // c0: using(slot 0, [0, 1])
    2, 0, 0, // c0: slot 0 [0].remove()
    8, 0, 1, 5, // c0: slot 0 [1].set(5)
    30, 0, 2, // c0: pause slot 0 after 2 claims
    1, 0, 1, // c1: usevar(slot 0, key 1)
    9, 0, 0, 9, // c1: slot 0 .set(9)
    19, 0, // c1: commit slot 0: helps c0's commit, then ConcurrentUpdate
    1, 1, 2,  // c1: usevar(slot 1, key 2): key 0 looked up first
    25, // c1: dump
    24, // c0: (wakes) resume: Ok
];

#[test]
fn a_helped_removal_decodes_and_runs() {
    let stats = run_interleave(HELPED_REMOVAL);
    if PAUSE_SUPPORTED {
        assert_eq!(
            (stats.resumed_ok, stats.commits_failed),
            (1, 1),
            "{stats:?}"
        );
        assert_eq!(
            (stats.removals, stats.looked_up_landed),
            (1, 2),
            "{stats:?}"
        );
        assert_eq!(stats.recreations, 1, "{stats:?}");
    }
}
