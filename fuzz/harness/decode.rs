//! The decoder: input bytes as a program of the `ops` or `interleave` language (the table in
//! `fuzz/README.md`).

use std::ops::Bound;

use super::{K, KEYS, MAX_HANDLES, MAX_OPS, MAX_USING, N, PROBE_KEYS};

/// How `Set` reaches a collection member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// `Collection::get_mut`
    GetMut,
    /// `IndexMut` (`c[&k]`), only when the model says the key is there (else it would panic)
    Index,
    /// `Collection::values_mut`
    ValuesMut,
}

/// One operation of the language. `slot` names a handle slot (of the client, in `interleave`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `store.usevar(key)` into `slot` (dropping what was there)
    UseVar { slot: usize, key: K },
    /// `store.using(keys)` into `slot` (duplicates and empty lists included)
    Using { slot: usize, keys: Vec<K> },
    /// `set(value)` on the slot's `Value`, or on its collection's member `key`
    Set {
        slot: usize,
        key: K,
        value: N,
        via: Via,
    },
    /// `clear()` on the slot's `Value`, or on its collection's member `key`
    Clear { slot: usize, key: K },
    /// `remove()` on the slot's `Value`, or on its collection's member `key`
    Remove { slot: usize, key: K, via: Via },
    /// `commit()`, or `Store::set` / `Store::set_values` when `via_store`
    Commit { slot: usize, via_store: bool },
    /// `interleave` only: `commit_paused(claims)` on the slot's collection; the client stays
    /// inside that commit until its next step resumes it (or drops it, for a `Drop` step)
    Pause { slot: usize, claims: usize },
    /// `store.dump()`
    Dump,
    /// A look at the store that creates nothing: `get`, `contains_key`, `len`, snapshots.
    Look(Look),
    /// drop the slot's handle
    Drop { slot: usize },
    /// read the handle (it is compared after every step anyway; this also formats it)
    Read { slot: usize },
    /// `ops` only: start a new store. The old one stays, with its handles (a handle cannot
    /// outlive its store), which go on committing to it.
    NewStore,
    /// Run `body` as one transaction (`Store::atomically` and friends): see [`TxOp`].
    Tx { kind: TxKind, body: Vec<TxOp> },
}

/// What [`Op::Look`] calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Look {
    /// `Store::get(&key)`
    Get(K),
    /// `Store::contains_key(&key)`
    Contains(K),
    /// `Store::len` and `Store::is_empty`
    Len,
    /// `Store::snapshot` (both bounds unbounded) or `Store::snapshot_range`: the rows, `len`
    /// and `is_empty`
    Snapshot(Bound<K>, Bound<K>),
}

/// One step of the `interleave` language.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub client: usize,
    pub op: Op,
}

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }
}

/// Decodes the operands of opcode `code` (only its value mod 16 matters); `None` when the input
/// ends inside them.
fn decode_op(code: u8, bytes: &mut Bytes<'_>, slots: usize, interleave: bool) -> Option<Op> {
    let slot = |b: u8| usize::from(b) % slots;
    let set = |bytes: &mut Bytes<'_>, via| {
        Some(Op::Set {
            slot: slot(bytes.byte()?),
            key: bytes.byte()? % PROBE_KEYS,
            value: N::from(bytes.byte()?),
            via,
        })
    };
    Some(match code % 16 {
        0 => Op::UseVar {
            slot: slot(bytes.byte()?),
            key: bytes.byte()? % KEYS,
        },
        1 => {
            let slot = slot(bytes.byte()?);
            let b = bytes.byte()?;
            let via = match (b / PROBE_KEYS) % 3 {
                0 => Via::GetMut,
                1 => Via::Index,
                _ => Via::ValuesMut,
            };
            Op::Remove {
                slot,
                key: b % PROBE_KEYS,
                via,
            }
        }
        3 | 5 => decode_tx(bytes)?,
        2 => {
            let slot = slot(bytes.byte()?);
            let count = bytes.byte()? % (MAX_USING + 1);
            let keys = (0..count)
                .map(|_| Some(bytes.byte()? % KEYS))
                .collect::<Option<Vec<_>>>()?;
            Op::Using { slot, keys }
        }
        4 => set(bytes, Via::GetMut)?,
        6 => set(bytes, Via::Index)?,
        7 => set(bytes, Via::ValuesMut)?,
        8 => Op::Clear {
            slot: slot(bytes.byte()?),
            key: bytes.byte()? % PROBE_KEYS,
        },
        10 => Op::Look(decode_look(bytes)?),
        11 | 15 if interleave => Op::Pause {
            slot: slot(bytes.byte()?),
            claims: usize::from(bytes.byte()? % 6),
        },
        9..=11 => {
            let b = usize::from(bytes.byte()?);
            Op::Commit {
                slot: b % slots,
                via_store: (b / slots) % 2 == 1,
            }
        }
        12 => Op::Dump,
        13 => Op::Drop {
            slot: slot(bytes.byte()?),
        },
        14 => Op::Read {
            slot: slot(bytes.byte()?),
        },
        _ => Op::NewStore,
    })
}

/// `Look` operands: a byte (kind = `% 4`, key = `/ 4 % 5`); a snapshot reads one more byte
/// for its range: start bound kind (unbounded, included, excluded) = `% 3`, end bound kind =
/// `/ 3 % 3`, start key = `/ 9 % 5`, end key = `/ 45 % 5`.
fn decode_look(bytes: &mut Bytes<'_>) -> Option<Look> {
    let b = bytes.byte()?;
    let key = (b / 4) % PROBE_KEYS;
    Some(match b % 4 {
        0 => Look::Get(key),
        1 => Look::Contains(key),
        2 => Look::Len,
        _ => {
            let r = bytes.byte()?;
            let bound = |kind: u8, key: u8| match kind % 3 {
                0 => Bound::Unbounded,
                1 => Bound::Included(key % PROBE_KEYS),
                _ => Bound::Excluded(key % PROBE_KEYS),
            };
            Look::Snapshot(bound(r, r / 9), bound(r / 3, r / 45))
        }
    })
}

/// How a `Tx` step runs its closure. The runner may switch (see [`TxKind::effective`]): a
/// closure that would wait forever in `retry` on one thread runs with a deadline in the past,
/// and a user error needs `try_atomically`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxKind {
    /// `Store::atomically` (the closure's error type is `TxError`)
    Atomically,
    /// `Store::try_atomically` with the harness's own error type
    TryAtomically,
    /// `store.transaction().backoff(Backoff::none()).run(..)`
    NoBackoff,
    /// `store.transaction().deadline(<now>).run(..)`: a retry, or a conflict, times out
    Deadline,
}

/// One operation inside a transaction's closure. `swallow`: the closure ignores the
/// operation's `TxError` (`let _ = ...`) instead of passing it up with `?`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxOp {
    /// `tx.get(&key)`, then `tx.version(&key)` to see the version read
    Get { key: K, swallow: bool },
    /// `tx.exists(&key)`
    Exists { key: K, swallow: bool },
    /// `tx.version(&key)`
    Version { key: K, swallow: bool },
    /// `tx.set(&key, value)`
    Set { key: K, value: N, swallow: bool },
    /// `tx.clear(&key)`
    Clear { key: K, swallow: bool },
    /// `tx.remove(&key)`
    Remove { key: K, swallow: bool },
    /// `tx.retry()`
    Retry { swallow: bool },
    /// the closure returns its own error
    Fail { code: u8 },
    /// On the first attempt only: `store.usevar(key)`, `set(value)`, `commit()` from inside the
    /// closure (another writer's commit between two reads of the attempt).
    Bump { key: K, value: N },
    /// As `Bump`, but the commit removes the key (`remove()` instead of `set`).
    BumpRemove { key: K },
    /// `tx.or_else(first, second)`
    OrElse {
        first: Vec<TxOp>,
        second: Vec<TxOp>,
        swallow: bool,
    },
}

/// How deep `OrElse` nests at most.
const TX_DEPTH: usize = 3;
/// Operations in one transaction body (or one branch) at most.
const TX_OPS: u8 = 8;
/// Operations in one `or_else` branch at most.
const TX_BRANCH_OPS: u8 = 3;

/// `Tx` operands: a header byte (kind = byte % 4, body length = byte / 4 % 9), then the body.
fn decode_tx(bytes: &mut Bytes<'_>) -> Option<Op> {
    let head = bytes.byte()?;
    let kind = match head % 4 {
        0 => TxKind::Atomically,
        1 => TxKind::TryAtomically,
        2 => TxKind::NoBackoff,
        _ => TxKind::Deadline,
    };
    let len = (head / 4) % (TX_OPS + 1);
    let body = decode_tx_ops(bytes, len, 0)?;
    Some(Op::Tx { kind, body })
}

/// `len` transaction operations: an opcode byte (`% 16`; bit 4 says whether the closure
/// swallows the operation's error), then its operands.
fn decode_tx_ops(bytes: &mut Bytes<'_>, len: u8, depth: usize) -> Option<Vec<TxOp>> {
    (0..len)
        .map(|_| {
            let code = bytes.byte()?;
            let swallow = code & 0x10 != 0;
            Some(match code % 16 {
                2 => TxOp::Exists {
                    key: bytes.byte()? % KEYS,
                    swallow,
                },
                3 => TxOp::Version {
                    key: bytes.byte()? % KEYS,
                    swallow,
                },
                1 => TxOp::BumpRemove {
                    key: bytes.byte()? % KEYS,
                },
                5 => TxOp::Remove {
                    key: bytes.byte()? % KEYS,
                    swallow,
                },
                4 => TxOp::Set {
                    key: bytes.byte()? % KEYS,
                    value: N::from(bytes.byte()?),
                    swallow,
                },
                6 => TxOp::Clear {
                    key: bytes.byte()? % KEYS,
                    swallow,
                },
                7 => TxOp::Retry { swallow },
                8 => TxOp::Fail {
                    code: bytes.byte()?,
                },
                9 => TxOp::Bump {
                    key: bytes.byte()? % KEYS,
                    value: N::from(bytes.byte()?),
                },
                10 | 11 if depth < TX_DEPTH => {
                    let lens = bytes.byte()?;
                    let first = decode_tx_ops(bytes, lens % (TX_BRANCH_OPS + 1), depth + 1)?;
                    let second = decode_tx_ops(bytes, (lens / 8) % (TX_BRANCH_OPS + 1), depth + 1)?;
                    TxOp::OrElse {
                        first,
                        second,
                        swallow,
                    }
                }
                _ => TxOp::Get {
                    key: bytes.byte()? % KEYS,
                    swallow,
                },
            })
        })
        .collect()
}

/// Whether an `ops` input has its stores take every snapshot of several keys by claiming the
/// keys at once (see [`take_snapshots`](super::handles::take_snapshots)): bit 4 of the first
/// byte, which the first opcode leaves unread (it reads the byte `% 16`).
pub fn ops_claim(data: &[u8]) -> bool {
    data.first().is_some_and(|&b| b & 0x10 != 0)
}

/// As [`ops_claim`], for `interleave`: bit 1 of the first byte (the client count reads bit 0).
pub fn interleave_claim(data: &[u8]) -> bool {
    data.first().is_some_and(|&b| b & 0x02 != 0)
}

/// The `ops` program of an input: opcode byte, operand bytes, repeated.
pub fn decode_ops(data: &[u8]) -> Vec<Op> {
    let mut bytes = Bytes(data);
    let mut ops = Vec::new();
    while ops.len() < MAX_OPS {
        let Some(code) = bytes.byte() else { break };
        let Some(op) = decode_op(code, &mut bytes, MAX_HANDLES, false) else {
            break;
        };
        ops.push(op);
    }
    ops
}

/// The `interleave` program of an input: the client count (2 + first byte % 2), then steps. A
/// step's first byte names the client (byte % clients) and the opcode (byte / clients); operand
/// bytes follow. Each client has `MAX_HANDLES / clients` slots.
pub fn decode_interleave(data: &[u8]) -> (usize, Vec<Step>) {
    let mut bytes = Bytes(data);
    let clients = 2 + usize::from(bytes.byte().unwrap_or(0) % 2);
    let slots = MAX_HANDLES / clients;
    let mut steps = Vec::new();
    while steps.len() < MAX_OPS {
        let Some(head) = bytes.byte() else { break };
        let client = usize::from(head) % clients;
        // `clients` is 2 or 3, so the quotient fits in a byte.
        let code = (usize::from(head) / clients) as u8;
        let Some(op) = decode_op(code, &mut bytes, slots, true) else {
            break;
        };
        steps.push(Step { client, op });
    }
    (clients, steps)
}
