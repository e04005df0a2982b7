//! Transactions: the real run of a `Tx` step's closure, recording every answer, and the
//! model's prediction of those answers and of how the call ends.

use std::cell::{Cell, RefCell};
use std::time::Instant;

use stm_store::{Backoff, Tx, TxError};

use super::decode::{TxKind, TxOp};
use super::memory::{Key, Lives, Val};
use super::model::{KeyState, MVal, Model, Write};
use super::{K, N, S, V};

/// What a transaction's closure saw, in order, over all its attempts: the answers that the
/// model must predict one by one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ans {
    /// A run of the closure began (`tx.attempt()`).
    Attempt(u32),
    /// `get`: the value, and the version read (`tx.version` right after).
    Got(K, Option<N>, u64),
    /// `exists`, and the version read.
    Exists(K, bool, u64),
    /// `version`.
    Version(K, u64),
    /// `set` or `clear` accepted; the key's version as read.
    Wrote(K, u64),
    /// A `Tx` operation answered `TxError`.
    Stopped,
    /// `retry` answered (always `TxError`).
    Retried,
    /// `or_else` answered `Ok` (true) or an error.
    OrElse(bool),
    /// A commit from inside the closure: key, version it read, whether it landed.
    Bumped(K, u64, bool),
}

/// How the transaction call ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxEnd {
    /// It committed.
    Ok,
    /// The closure's own error came back.
    Failed(u8),
    /// A `TxError` that `is_timeout` came back.
    TimedOut,
    /// Model only: the call would wait forever in `retry` (the runner then sets a deadline).
    Blocks,
}

/// The closure's error type in the harness.
#[derive(Debug)]
enum TxFail {
    Tx(TxError),
    User(u8),
}

impl From<TxError> for TxFail {
    fn from(e: TxError) -> Self {
        TxFail::Tx(e)
    }
}

/// Attempts beyond this mean the transaction keeps running on one thread: only the first
/// attempt commits from inside the closure (`Bump`, `BumpRemove`), so the second must end the
/// call.
const TX_MAX_ATTEMPTS: u32 = 4;

struct RealTx<'a, 's> {
    store: &'s S,
    lives: &'a Lives,
    log: RefCell<Vec<Ans>>,
    /// Some operation of this run (since it began, or since `or_else` started its second
    /// branch) answered `TxError`: the run is stopped.
    errored: Cell<bool>,
}

impl RealTx<'_, '_> {
    fn push(&self, ans: Ans) {
        self.log.borrow_mut().push(ans);
    }

    /// The `TxError` of a run known to be stopped: any operation answers it.
    fn stop_of(&self, tx: &mut Tx<'_, Key, V>) -> TxFail {
        TxFail::Tx(
            tx.get(&self.lives.key(0))
                .expect_err("the harness's errored run is stopped"),
        )
    }

    /// Runs `ops` as the closure does, recording every answer.
    ///
    /// Once the run is stopped (an error was swallowed), the closure calls neither `retry`
    /// nor `or_else` again: it answers the stop itself. (What those two do on a stopped run is
    /// a corner that changed while the API settled: `retry` used to turn a stop into a retry,
    /// and `or_else` to run its branches; the harness keeps out of it.)
    fn exec(&self, tx: &mut Tx<'_, Key, V>, ops: &[TxOp]) -> Result<(), TxFail> {
        for op in ops {
            let k = |key| self.lives.key(key);
            let (result, swallow) = match *op {
                TxOp::Get { key, swallow } => (
                    tx.get(&k(key)).map(|value| {
                        let version = tx.version(&k(key)).expect("a key read answers");
                        self.push(Ans::Got(key, value.as_ref().map(Val::get), version));
                    }),
                    swallow,
                ),
                TxOp::Exists { key, swallow } => (
                    tx.exists(&k(key)).map(|exists| {
                        let version = tx.version(&k(key)).expect("a key read answers");
                        self.push(Ans::Exists(key, exists, version));
                    }),
                    swallow,
                ),
                TxOp::Version { key, swallow } => (
                    tx.version(&k(key))
                        .map(|version| self.push(Ans::Version(key, version))),
                    swallow,
                ),
                TxOp::Set {
                    key,
                    value,
                    swallow,
                } => (
                    tx.set(&k(key), self.lives.val(value)).map(|()| {
                        let version = tx.version(&k(key)).expect("a key written answers");
                        self.push(Ans::Wrote(key, version));
                    }),
                    swallow,
                ),
                TxOp::Clear { key, swallow } => (
                    tx.clear(&k(key)).map(|()| {
                        let version = tx.version(&k(key)).expect("a key written answers");
                        self.push(Ans::Wrote(key, version));
                    }),
                    swallow,
                ),
                TxOp::Remove { key, swallow } => (
                    tx.remove(&k(key)).map(|()| {
                        let version = tx.version(&k(key)).expect("a key removed answers");
                        self.push(Ans::Wrote(key, version));
                    }),
                    swallow,
                ),
                TxOp::Retry { swallow } => {
                    let e = match self.errored.get() {
                        true => self.stop_of(tx),
                        false => tx.retry::<()>().expect_err("retry answers an error").into(),
                    };
                    self.errored.set(true);
                    self.push(Ans::Retried);
                    if swallow {
                        continue;
                    }
                    return Err(e);
                }
                TxOp::Fail { code } => return Err(TxFail::User(code)),
                TxOp::Bump { key, .. } | TxOp::BumpRemove { key } => {
                    if tx.attempt() == 1 {
                        let mut handle = self.store.usevar(k(key)).expect("usevar never fails");
                        let version = handle.version();
                        match *op {
                            TxOp::Bump { value, .. } => handle.set(self.lives.val(value)),
                            _ => handle.remove(),
                        }
                        let landed = handle.commit().is_ok();
                        self.push(Ans::Bumped(key, version, landed));
                    }
                    continue;
                }
                TxOp::OrElse {
                    ref first,
                    ref second,
                    swallow,
                } => {
                    let result = match self.errored.get() {
                        true => Err(self.stop_of(tx)),
                        false => tx.or_else(
                            |tx| self.exec(tx, first),
                            |tx| {
                                // `or_else` lifted the first branch's retry.
                                self.errored.set(false);
                                self.exec(tx, second)
                            },
                        ),
                    };
                    if let Err(TxFail::Tx(_)) = result {
                        self.errored.set(true);
                    }
                    self.push(Ans::OrElse(result.is_ok()));
                    match result {
                        Err(e) if !swallow => return Err(e),
                        _ => continue,
                    }
                }
            };
            if let Err(e) = result {
                self.errored.set(true);
                self.push(Ans::Stopped);
                if !swallow {
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }
}

/// Runs `body` on `store` as a transaction of `kind`: every answer its closure saw, and how
/// the call ended.
pub(super) fn run_tx(
    store: &S,
    lives: &Lives,
    kind: TxKind,
    body: &[TxOp],
) -> Result<(Vec<Ans>, TxEnd), String> {
    let real = RealTx {
        store,
        lives,
        log: RefCell::new(Vec::new()),
        errored: Cell::new(false),
    };
    let closure = |tx: &mut Tx<'_, Key, V>| -> Result<(), TxFail> {
        assert!(
            tx.attempt() <= TX_MAX_ATTEMPTS,
            "the transaction keeps running its closure on one thread (attempt {}); answers so \
             far: {:?}",
            tx.attempt(),
            real.log.borrow()
        );
        real.push(Ans::Attempt(tx.attempt()));
        real.errored.set(false);
        real.exec(tx, body)
    };
    let result = match kind {
        TxKind::Atomically => {
            store.atomically(|tx| {
                closure(tx).map_err(|e| match e {
                    TxFail::Tx(e) => e,
                    // Only an attempt that stopped ends in a user error under `atomically`
                    // (the runner picks `try_atomically` when the model says the call ends
                    // with one): any operation answers that attempt's `TxError`.
                    TxFail::User(code) => tx.get(&lives.key(0)).err().unwrap_or_else(|| {
                        panic!(
                            "the closure's own error ({code}) ended an attempt that did not \
                             stop, where the model expected the transaction to go on"
                        )
                    }),
                })
            });
            Ok(())
        }
        TxKind::TryAtomically => store.try_atomically(closure),
        TxKind::NoBackoff => store.transaction().backoff(Backoff::none()).run(closure),
        TxKind::Deadline => store.transaction().deadline(Instant::now()).run(closure),
    };
    let end = match result {
        Ok(()) => TxEnd::Ok,
        Err(TxFail::User(code)) => TxEnd::Failed(code),
        Err(TxFail::Tx(e)) if e.is_timeout() => TxEnd::TimedOut,
        Err(TxFail::Tx(e)) => return Err(format!("the transaction call returned {e:?}")),
    };
    Ok((real.log.into_inner(), end))
}

/// One key read by a modelled attempt.
#[derive(Clone, Debug)]
struct MRead {
    key: K,
    version: u64,
    value: Option<N>,
    /// Once written: what (set, cleared or removed).
    write: Option<Write>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MStop {
    Conflict,
    Retry,
}

#[derive(Debug)]
enum MFail {
    Tx,
    User(u8),
}

/// The model of one attempt, written from the transaction semantics (issue #10, `tx` module
/// docs): reads as it goes, each new read checks that every earlier read still holds (else the
/// attempt stops); the transaction's own writes are read back; `retry` stops the attempt for
/// a wait; `or_else` undoes the first branch's writes (keeping its reads) when it retries; the
/// commit validates every key read and writes the keys written. A key the transaction removed
/// reads as having no value until it commits (a later `set` or `clear` replaces the removal).
struct MAttempt<'m> {
    model: &'m mut Model,
    attempt: u32,
    reads: Vec<MRead>,
    stop: Option<MStop>,
    /// As the harness's closure knows it (see `RealTx::exec`): some operation of this run
    /// (since it began, or since `or_else` started its second branch) answered `TxError`.
    errored: bool,
    log: &'m mut Vec<Ans>,
}

impl MAttempt<'_> {
    fn touch(&mut self, key: K) -> Result<usize, MFail> {
        if self.stop.is_some() {
            return Err(MFail::Tx);
        }
        if let Some(at) = self.reads.iter().position(|r| r.key == key) {
            return Ok(at);
        }
        let KeyState { version, value, .. } = self.model.read(key);
        // A key removed since it was read is gone: that read no longer holds either.
        let consistent = self
            .reads
            .iter()
            .all(|r| self.model.keys.get(&r.key).map(|k| k.version) == Some(r.version));
        if !consistent {
            self.stop = Some(MStop::Conflict);
            return Err(MFail::Tx);
        }
        self.reads.push(MRead {
            key,
            version,
            value,
            write: None,
        });
        Ok(self.reads.len() - 1)
    }

    fn current(&self, at: usize) -> Option<N> {
        let r = &self.reads[at];
        r.write.map_or(r.value, Write::value)
    }

    fn exec(&mut self, ops: &[TxOp]) -> Result<(), MFail> {
        for op in ops {
            let (result, swallow) = match *op {
                TxOp::Get { key, swallow } => (
                    self.touch(key).map(|at| {
                        let ans = Ans::Got(key, self.current(at), self.reads[at].version);
                        self.log.push(ans);
                    }),
                    swallow,
                ),
                TxOp::Exists { key, swallow } => (
                    self.touch(key).map(|at| {
                        let ans =
                            Ans::Exists(key, self.current(at).is_some(), self.reads[at].version);
                        self.log.push(ans);
                    }),
                    swallow,
                ),
                TxOp::Version { key, swallow } => (
                    self.touch(key)
                        .map(|at| self.log.push(Ans::Version(key, self.reads[at].version))),
                    swallow,
                ),
                TxOp::Set {
                    key,
                    value,
                    swallow,
                } => (self.write(key, Write::Value(Some(value))), swallow),
                TxOp::Clear { key, swallow } => (self.write(key, Write::Value(None)), swallow),
                TxOp::Remove { key, swallow } => (self.write(key, Write::Remove), swallow),
                TxOp::Retry { swallow } => {
                    // `retry` stops the attempt for a wait. On a run already stopped the
                    // closure does not call it, and the stop stays what it was.
                    if !self.errored {
                        self.stop = Some(MStop::Retry);
                    }
                    self.errored = true;
                    self.log.push(Ans::Retried);
                    if swallow {
                        continue;
                    }
                    return Err(MFail::Tx);
                }
                TxOp::Fail { code } => return Err(MFail::User(code)),
                TxOp::Bump { key, .. } | TxOp::BumpRemove { key } => {
                    if self.attempt == 1 {
                        let mut handle = self.model.usevar(key);
                        handle.pending = Some(match *op {
                            TxOp::Bump { value, .. } => Write::Value(Some(value)),
                            _ => Write::Remove,
                        });
                        let landed = self.model.commit_now(std::slice::from_ref(&handle));
                        self.log
                            .push(Ans::Bumped(key, handle.version, landed.is_ok()));
                    }
                    continue;
                }
                TxOp::OrElse {
                    ref first,
                    ref second,
                    swallow,
                } => {
                    let result = match self.errored {
                        true => Err(MFail::Tx), // not called: the run's stop
                        false => self.or_else(first, second),
                    };
                    if let Err(MFail::Tx) = result {
                        self.errored = true;
                    }
                    self.log.push(Ans::OrElse(result.is_ok()));
                    match result {
                        Err(e) if !swallow => return Err(e),
                        _ => continue,
                    }
                }
            };
            if result.is_err() {
                self.errored = true;
                self.log.push(Ans::Stopped);
                if !swallow {
                    return Err(MFail::Tx);
                }
            }
        }
        Ok(())
    }

    fn write(&mut self, key: K, write: Write) -> Result<(), MFail> {
        let at = self.touch(key)?;
        self.reads[at].write = Some(write);
        self.log.push(Ans::Wrote(key, self.reads[at].version));
        Ok(())
    }

    /// GHC's `orElse`: if the first branch retries, its writes are undone (its reads stay
    /// read) and the second branch runs in the same attempt.
    ///
    /// An attempt already stopped (a swallowed `TxError`) runs neither branch: `or_else`
    /// answers that stop.
    fn or_else(&mut self, first: &[TxOp], second: &[TxOp]) -> Result<(), MFail> {
        if self.stop.is_some() {
            return Err(MFail::Tx);
        }
        let writes: Vec<Option<Write>> = self.reads.iter().map(|r| r.write).collect();
        let result = self.exec(first);
        if self.stop != Some(MStop::Retry) {
            return result;
        }
        for (i, r) in self.reads.iter_mut().enumerate() {
            r.write = writes.get(i).copied().flatten();
        }
        self.stop = None;
        self.errored = false;
        self.exec(second)
    }
}

/// What the model predicts for a transaction: every answer, and the end (the model it ran on
/// holds the store after it, and its commits in its log).
#[derive(Clone, Debug)]
pub(super) struct TxSim {
    pub(super) log: Vec<Ans>,
    pub(super) end: TxEnd,
}

/// Runs the model of a transaction over `model` (changed as the store would be). `deadline`:
/// the call has a deadline already past, so the first attempt that does not end the call
/// (a conflict or a retry) times out.
pub(super) fn simulate_tx(model: &mut Model, body: &[TxOp], deadline: bool) -> TxSim {
    let mut log = Vec::new();
    for attempt in 1..=TX_MAX_ATTEMPTS {
        log.push(Ans::Attempt(attempt));
        let mut run = MAttempt {
            model,
            attempt,
            reads: Vec::new(),
            stop: None,
            errored: false,
            log: &mut log,
        };
        let result = run.exec(body);
        let (stop, reads) = (run.stop, run.reads);
        let end = match (stop, result) {
            (Some(MStop::Retry), _) if deadline => TxEnd::TimedOut,
            (Some(MStop::Retry), _) => TxEnd::Blocks,
            (Some(MStop::Conflict), _) if deadline => TxEnd::TimedOut,
            (Some(MStop::Conflict), _) => continue,
            (None, Err(MFail::User(code))) => TxEnd::Failed(code),
            (None, Err(MFail::Tx)) => unreachable!("only a stopped attempt answers TxError"),
            (None, Ok(())) => {
                let members: Vec<MVal> = reads
                    .iter()
                    .map(|r| MVal {
                        key: r.key,
                        version: r.version,
                        value: r.value,
                        pending: r.write,
                    })
                    .collect();
                match model.commit_now(&members) {
                    Ok(()) => TxEnd::Ok,
                    Err(_) if deadline => TxEnd::TimedOut,
                    Err(_) => continue,
                }
            }
        };
        return TxSim { log, end };
    }
    panic!("harness bug: the model's transaction did not end within {TX_MAX_ATTEMPTS} attempts")
}

/// The kind a transaction really runs with, given what the model predicts in each possible
/// world: one that would wait forever gets a deadline (already past); a user error under
/// `atomically` needs `try_atomically`.
pub(super) fn effective_kind(kind: TxKind, ends: &[TxEnd]) -> TxKind {
    if ends.contains(&TxEnd::Blocks) {
        TxKind::Deadline
    } else if kind == TxKind::Atomically && ends.iter().any(|e| matches!(e, TxEnd::Failed(_))) {
        TxKind::TryAtomically
    } else {
        kind
    }
}
