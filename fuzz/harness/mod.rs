//! Differential fuzzing harness for `stm-store`: a byte decoder, a sequential reference model of
//! the contract (`src/docs/contract.md`), and two runners that drive the real store and the
//! model side by side and panic on the first difference.
//!
//! This one file is shared by the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`) and the stable
//! replay test (`tests/fuzz_corpus.rs`); it depends on nothing but `stm_store`, `std` and
//! `crossbeam-epoch` (to advance the epoch before counting what reclamation has freed).
//!
//! * [`run_ops`]: one client, at most [`MAX_HANDLES`] live handles over [`KEYS`] keys. Every
//!   answer of the store (`Ok` or which error, versions, values, collection contents, `dump`,
//!   `get`, `contains_key`, `len`, snapshots) must equal the model's.
//! * [`run_interleave`]: 2 or 3 clients whose steps the input interleaves, on one thread. With
//!   the `test-hooks` feature a client can also stop in the middle of a multi-key commit
//!   (`Collection::commit_paused`) while the others keep going; that commit then takes effect at
//!   some instant between its start and its resume, so the model tracks the few possible
//!   "worlds" and each observation must be explained by at least one of them (linearizability).
//!   At the end, replaying the successful commits and the key creations serially, in their
//!   order, must give the final `dump`.
//!
//! The model is written from the contract only: keys hold `(version, Option<value>)`, a key never
//! seen is `(0, None)` and is created by `usevar`/`using`; a handle remembers its key, read
//! version, read value and pending write; a commit fails with `ConcurrentUpdate` (and changes
//! nothing, handles included) if any key's current version differs from the handle's read
//! version (or the key is gone), otherwise writes exactly the `set`/`clear`ed/`remove`d handles
//! with version = read + 1 and leaves them clean holding the new version and value.
//!
//! Removal (contract 22-26): a removal is a write; once its commit lands the key is absent, and
//! the store's *floor* (the highest version any removed key reached: a removal's version is its
//! read version + 1) rises to it. A key created after that starts at floor + 1 with no value.
//! Since a key's successive lives have disjoint versions (each starts above the floor, which is
//! at least the last one's removal), the version a handle read also says which life of the key
//! it read: comparing versions is enough to refuse a handle of a removed life (no ABA).
#![allow(dead_code)]

use std::borrow::Borrow;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::{self, Debug, Write as _};
use std::hash::{Hash, Hasher};
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicIsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stm_store::{Backoff, Collection, Error, Store, Tx, TxError, Value};

/// A key as the model and the decoder see it (the store's keys are [`Key`]s that count
/// themselves).
pub type K = u8;
/// Value type of the store under test: [`N`] with a count of live copies.
pub type V = Val;
/// A value as the model and the decoder see it.
pub type N = u16;
/// The store under test.
type S = Store<Key, V>;

/// Keys `0..KEYS` are the only keys ever created.
pub const KEYS: u8 = 4;
/// Keys probed with `Collection::get`, `Store::get` and `contains_key`: one more than can
/// exist, to see `None` answers too.
const PROBE_KEYS: u8 = KEYS + 1;
/// Live handles at most, over all clients.
pub const MAX_HANDLES: usize = 6;
/// Longest key list passed to `using` (duplicates included).
const MAX_USING: u8 = 6;
/// Operations decoded from one input at most (keeps every run short).
pub const MAX_OPS: usize = 256;
/// Whether `Collection::commit_paused` is available (the `test-hooks` feature).
pub const PAUSE_SUPPORTED: bool = cfg!(feature = "test-hooks");

// ---------------------------------------------------------------------------------------------
// Values and keys that count themselves
// ---------------------------------------------------------------------------------------------

/// Live [`Val`]s (or [`Key`]s) of one run, every copy counted (a read clones the value out of
/// the store). The copies hold the counter themselves: replaced values, and removed keys'
/// slots, are dropped by deferred (epoch-based) reclamation, some time after they were replaced
/// and on whichever thread collects, so a thread-local count would be wrong, and runs in
/// parallel (the replay test) must not mix.
#[derive(Clone, Default)]
pub struct Live(Arc<AtomicIsize>);

impl Live {
    /// Copies alive now (negative: some copy was dropped twice).
    fn get(&self) -> isize {
        self.0.load(SeqCst)
    }

    fn add(&self) -> Live {
        self.0.fetch_add(1, SeqCst);
        self.clone()
    }
}

/// The two counters of a run: values, and keys (each slot of the store holds one copy of its
/// key, so the key count is the count of slots not freed yet).
#[derive(Clone, Default)]
pub struct Lives {
    vals: Live,
    keys: Live,
}

impl Lives {
    fn val(&self, n: N) -> Val {
        Val {
            n,
            live: self.vals.add(),
        }
    }

    fn key(&self, n: K) -> Key {
        Key {
            n,
            live: self.keys.add(),
        }
    }
}

/// The store's value type: a number that counts its live copies, so a run can check what the
/// store keeps alive (semantics 9). LeakSanitizer cannot do this: it does not report memory
/// that reclamation never gets to (garbage kept in an epoch bag, or kept alive by a reference
/// cycle such as `Slot -> claim -> Txn -> entries -> Slot` that stays reachable), nor memory
/// freed too early as long as nothing reads it.
pub struct Val {
    n: N,
    live: Live,
}

impl Val {
    fn get(&self) -> N {
        self.n
    }
}

impl Clone for Val {
    fn clone(&self) -> Self {
        Val {
            n: self.n,
            live: self.live.add(),
        }
    }
}

impl Drop for Val {
    fn drop(&mut self) {
        self.live.0.fetch_sub(1, SeqCst);
    }
}

impl Debug for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Val({})", self.n)
    }
}

impl PartialEq for Val {
    fn eq(&self, other: &Self) -> bool {
        self.n == other.n
    }
}

impl Eq for Val {}

/// The store's key type: a [`K`] that counts its live copies. A slot holds one copy of its
/// key, so counting keys counts the slots that are not freed yet: a removed key's slot must be
/// freed once no handle, transaction or commit holds it (contract 26), and not before.
/// It hashes, compares and borrows as its number (`Store::get(&k)` with `k: u8`).
pub struct Key {
    n: K,
    live: Live,
}

impl Clone for Key {
    fn clone(&self) -> Self {
        Key {
            n: self.n,
            live: self.live.add(),
        }
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        self.live.0.fetch_sub(1, SeqCst);
    }
}

impl Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.n)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.n == other.n
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.n.cmp(&other.n)
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.n.hash(state); // as `K` hashes: `Borrow<K>` requires it
    }
}

impl Borrow<K> for Key {
    fn borrow(&self) -> &K {
        &self.n
    }
}

/// How long a memory check keeps advancing the epoch before it gives up on values that are due
/// to be freed: a liveness bound, not a performance threshold (one run alone needs a few
/// flushes; the replay test runs several at once, and a pinned thread that the OS descheduled
/// holds the epoch back).
const SETTLE_LIMIT: Duration = Duration::from_secs(20);

/// Memory is checked after every this many steps, and after the last one: settling takes a few
/// epoch advances, and doing it after every step made a fuzz run ten times slower.
const MEMORY_EVERY: usize = 16;

/// Whether step `index` (0-based) of `len` is followed by a memory check.
fn memory_due(index: usize, len: usize) -> bool {
    index % MEMORY_EVERY == MEMORY_EVERY - 1 || index + 1 == len
}

/// Advances crossbeam-epoch (for at most [`SETTLE_LIMIT`]) until at most `target` copies are
/// alive, and returns how many are. Replaced values are freed by deferred reclamation:
/// `pin().flush()` hands this thread's deferred drops to the global queue, tries to advance the
/// epoch and runs what has expired. Reclamation only lowers the count: a copy that leaks keeps
/// it above `target` for good.
fn settle(live: &Live, target: isize) -> isize {
    let start = Instant::now();
    for round in 0u64.. {
        let now = live.get();
        if now <= target || start.elapsed() > SETTLE_LIMIT {
            return now;
        }
        crossbeam_epoch::pin().flush();
        if round >= 1_000 {
            std::thread::sleep(Duration::from_millis(1));
        } else if round % 64 == 63 {
            std::thread::yield_now();
        }
    }
    unreachable!()
}

/// Checks semantics 9 and 26 while a run goes on, once the epoch has moved on. Values: live
/// handles hold at most two per member (the one read and a pending one), a stopped commit also
/// the copies it is to write (one per member), and each key exactly its latest record (replaced
/// records, and an aborted commit's copies, are freed by reclamation). Keys (slots): at most
/// one listed in the index per key, plus one per handle member (a removed key's slot lives on
/// while a handle holds it; a stopped commit's members are counted in `members`).
fn check_memory(lives: &Lives, members: usize, paused: usize, keys: usize) -> Result<(), String> {
    let bound = (2 * members + paused + keys) as isize;
    let now = settle(&lives.vals, bound);
    if !(0..=bound).contains(&now) {
        return Err(format!(
            "memory: {now} values are alive after advancing the epoch, but {members} handle \
             members ({paused} of them in a stopped commit) and {keys} keys may keep at most \
             {bound} (semantics 9: replaced records are reclaimed; a negative count is a double \
             drop)"
        ));
    }
    let bound = (usize::from(KEYS) + members) as isize;
    let now = settle(&lives.keys, bound);
    if !(0..=bound).contains(&now) {
        return Err(format!(
            "memory: {now} slots (keys) are alive after advancing the epoch, but the index lists \
             at most {KEYS} and {members} handle members hold at most one each (contract 26: a \
             removed key's slot is freed once nothing holds it; a negative count is a double \
             drop)"
        ));
    }
    Ok(())
}

/// `ops`: once the epoch has moved on, exactly the copies the model accounts for are alive.
fn check_memory_exact(live: &Live, what: &str, expected: usize) -> Result<(), String> {
    let expected = expected as isize;
    match settle(live, expected) {
        now if now == expected => Ok(()),
        now if now > expected => Err(format!(
            "memory: {now} {what} are alive after advancing the epoch, the model accounts for \
             {expected}: {} leaked or not reclaimed (semantics 9, 26)",
            now - expected
        )),
        now => Err(format!(
            "memory: {now} {what} are alive, the model accounts for {expected}: one was \
             dropped twice, or freed while still held"
        )),
    }
}

/// After the stores and every handle are dropped, and the epoch has moved on, nothing may be
/// left (semantics 9).
fn check_all_freed(lives: &Lives) -> Result<(), String> {
    for (live, what) in [(&lives.vals, "values"), (&lives.keys, "keys (slots)")] {
        match settle(live, 0) {
            0 => {}
            left => {
                return Err(format!(
                    "memory: {left} {what} are still alive after the store and every handle \
                     were dropped and the epoch advanced (semantics 9: everything is freed \
                     once the store is dropped; a negative count is a double drop)"
                ))
            }
        }
    }
    Ok(())
}

/// `store.dump()` as `(key, version, number)`.
fn dump_of(store: &S) -> Vec<Seen> {
    store
        .dump()
        .into_iter()
        .map(|(key, version, value)| (key.n, version, value.as_ref().map(Val::get)))
        .collect()
}

/// A row of a snapshot as `(key, version, number)`.
fn row_of((key, version, value): (&Key, u64, Option<&Val>)) -> Seen {
    (key.n, version, value.map(Val::get))
}

// ---------------------------------------------------------------------------------------------
// Decoder
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Reference model
// ---------------------------------------------------------------------------------------------

/// A pending write of a handle (or a transaction's key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// `set` (`Some`) or `clear` (`None`)
    Value(Option<N>),
    /// `remove`
    Remove,
}

impl Write {
    /// The value it shows (`value()`, `tx.get`): a removal shows none.
    fn value(self) -> Option<N> {
        match self {
            Write::Value(value) => value,
            Write::Remove => None,
        }
    }
}

/// The model of one handle (`Value`, or a collection member).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MVal {
    key: K,
    /// The version read, or written by the last successful commit.
    version: u64,
    /// The value read, or written by the last successful commit.
    value: Option<N>,
    /// The write for the next commit, after `set`/`clear`/`remove`.
    pending: Option<Write>,
}

impl MVal {
    /// What `(key(), version(), value())` must answer: `value()` shows the pending write.
    fn seen(&self) -> Seen {
        let value = self.pending.map_or(self.value, Write::value);
        (self.key, self.version, value)
    }

    /// After a successful commit: written handles hold the new version and value, clean. One
    /// that removed holds the removal's version and no value (contract 25).
    fn committed(&mut self) {
        if let Some(write) = self.pending.take() {
            self.version += 1;
            self.value = write.value();
        }
    }

    fn removes(&self) -> bool {
        self.pending == Some(Write::Remove)
    }
}

/// `(key, version, value)` as a handle or `dump` shows it.
pub type Seen = (K, u64, Option<N>);

/// A key that exists, in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct KeyState {
    version: u64,
    value: Option<N>,
    /// The version it was created at: 0, or the floor + 1 then. With the key, it names the
    /// slot (one life of the key); `ops` uses it to count the slots alive.
    born: u64,
}

/// What happened to a model, in order: the serial history that `interleave` replays at the end.
#[derive(Clone, Debug)]
enum Event {
    /// A key was created at this version.
    Create(K, u64),
    /// A commit landed (its handles as they were when it started).
    Commit(Vec<MVal>),
}

/// The model of a store: every key that exists, with its committed `(version, value)`, and the
/// floor for new keys.
#[derive(Clone, Debug, Default)]
pub struct Model {
    keys: BTreeMap<K, KeyState>,
    /// The highest version any removed key reached (its removal's version), 0 if none was
    /// removed: a key created from now on starts at `floor + 1` (contract 23).
    floor: u64,
    /// Removed keys that the store may still count in `len` (contract 26: "`len` may still
    /// count a key whose removal is landing"): removals that landed while their committer has
    /// not returned yet (a stopped commit, helped to its end by another client, or dropped
    /// there), until some call names the key (the store unlinks it then) or the committer
    /// returns. Key -> the removal's version (which says which life of the key it was).
    /// Always empty in `ops`, where every commit returns before the next step.
    landing: BTreeMap<K, u64>,
    /// Not part of the state: the history, for `interleave`'s serial replay.
    log: Vec<Event>,
}

/// Two models are the same state whatever their history (worlds that differ only in the order
/// of their past commits are interchangeable).
impl PartialEq for Model {
    fn eq(&self, other: &Self) -> bool {
        self.keys == other.keys && self.floor == other.floor && self.landing == other.landing
    }
}

impl Eq for Model {}

impl Model {
    /// A key named by a call (`usevar`, `using`, a transaction, `get`, `contains_key`): a
    /// removal of it that is still landing is over (the store unlinks the key).
    fn name(&mut self, key: K) {
        self.landing.remove(&key);
    }

    /// `get`: the key's committed `(version, value)`, if it exists; creates nothing.
    fn get(&mut self, key: K) -> Option<(u64, Option<N>)> {
        self.name(key);
        self.keys.get(&key).map(|k| (k.version, k.value))
    }

    /// Reads `key`, creating it if it does not exist: version 0 in a store where no key was
    /// removed, else floor + 1; no value (contract 1, 23).
    fn read(&mut self, key: K) -> KeyState {
        self.name(key);
        if let Some(&state) = self.keys.get(&key) {
            return state;
        }
        let version = match self.floor {
            0 => 0,
            floor => floor + 1,
        };
        let state = KeyState {
            version,
            value: None,
            born: version,
        };
        self.keys.insert(key, state);
        self.log.push(Event::Create(key, version));
        state
    }

    /// `usevar`: reads `key`, creating it if new.
    fn usevar(&mut self, key: K) -> MVal {
        let KeyState { version, value, .. } = self.read(key);
        MVal {
            key,
            version,
            value,
            pending: None,
        }
    }

    /// `using`: one member per distinct key, in key order.
    fn using(&mut self, keys: &[K]) -> Vec<MVal> {
        let mut distinct = keys.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        distinct.into_iter().map(|key| self.usevar(key)).collect()
    }

    /// A commit of `members` (distinct keys): all-or-nothing. It fails if a key is gone or
    /// has another version than the one read (a key removed and created again starts above
    /// every version of its earlier lives, so this refuses handles of those too: no ABA).
    /// Only the store changes here; the handles change with [`MVal::committed`] once the
    /// answer is known, and [`Model::returned`] says that the committer got its answer.
    fn commit(&mut self, members: &[MVal]) -> Result<(), Error> {
        let unchanged = members
            .iter()
            .all(|m| self.keys.get(&m.key).map(|k| k.version) == Some(m.version));
        if !unchanged {
            return Err(Error::ConcurrentUpdate);
        }
        for m in members {
            match m.pending {
                None => {}
                Some(Write::Value(value)) => {
                    let key = self.keys.get_mut(&m.key).expect("validated");
                    key.version = m.version + 1;
                    key.value = value;
                }
                Some(Write::Remove) => {
                    self.keys.remove(&m.key);
                    self.floor = self.floor.max(m.version + 1);
                    self.landing.insert(m.key, m.version + 1);
                }
            }
        }
        self.log.push(Event::Commit(members.to_vec()));
        Ok(())
    }

    /// The committer of `members`, which landed, got its answer: the keys it removed are
    /// unlinked (unless the key was named since, and perhaps removed again).
    fn returned(&mut self, members: &[MVal]) {
        for m in members.iter().filter(|m| m.removes()) {
            if self.landing.get(&m.key) == Some(&(m.version + 1)) {
                self.landing.remove(&m.key);
            }
        }
    }

    /// A commit that returns before anything else happens (every commit in `ops`).
    fn commit_now(&mut self, members: &[MVal]) -> Result<(), Error> {
        self.commit(members)?;
        self.returned(members);
        Ok(())
    }

    /// `dump`: every key that exists, in key order.
    fn dump(&self) -> Vec<Seen> {
        self.keys
            .iter()
            .map(|(&key, k)| (key, k.version, k.value))
            .collect()
    }

    /// What `len` may answer (contract 18, 26): the keys that exist, and perhaps some of those
    /// whose removal is landing.
    fn len_bounds(&self) -> (usize, usize) {
        (self.keys.len(), self.keys.len() + self.landing.len())
    }

    /// The answer the store must give to `look` (creates nothing). `actual` picks the answer
    /// among those allowed where the contract leaves a choice (`len`).
    fn look(&mut self, look: &Look, actual: &Looked) -> Looked {
        match *look {
            Look::Get(key) => Looked::Get(self.get(key)),
            Look::Contains(key) => Looked::Contains(self.get(key).is_some()),
            Look::Len => {
                let (lo, hi) = self.len_bounds();
                match *actual {
                    Looked::Len(len, empty) if (lo..=hi).contains(&len) && empty == (len == 0) => {
                        Looked::Len(len, empty)
                    }
                    _ => Looked::LenIn(lo, hi),
                }
            }
            Look::Snapshot(start, end) => Looked::Rows(
                self.dump()
                    .into_iter()
                    .filter(|row| (start, end).contains(&row.0))
                    .collect(),
            ),
        }
    }
}

/// What an [`Op::Look`] answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Looked {
    Get(Option<(u64, Option<N>)>),
    Contains(bool),
    /// `len()` and `is_empty()`
    Len(usize, bool),
    /// Model only: `len` must be in this range (and `is_empty` agree with it).
    LenIn(usize, usize),
    /// The snapshot's rows (its `len` and `is_empty` are checked against them).
    Rows(Vec<Seen>),
}

/// Calls `look` on the store.
fn look_at(store: &S, lives: &Lives, look: &Look) -> Result<Looked, String> {
    Ok(match *look {
        Look::Get(key) => Looked::Get(
            store
                .get(&key)
                .map(|(version, value)| (version, value.as_ref().map(Val::get))),
        ),
        Look::Contains(key) => Looked::Contains(store.contains_key(&key)),
        Look::Len => Looked::Len(store.len(), store.is_empty()),
        Look::Snapshot(start, end) => {
            let read = |snapshot: &stm_store::Snapshot<'_, Key, V>| {
                let rows: Vec<Seen> = snapshot.iter().map(row_of).collect();
                (rows, snapshot.len(), snapshot.is_empty())
            };
            let (rows, len, empty) = match (start, end) {
                (Bound::Unbounded, Bound::Unbounded) => store.snapshot(read),
                _ => {
                    let key = |n| lives.key(n);
                    store.snapshot_range((start.map(key), end.map(key)), read)
                }
            };
            expect_eq(
                "snapshot (len, is_empty)",
                (len, empty),
                (rows.len(), rows.is_empty()),
            )?;
            Looked::Rows(rows)
        }
    })
}

/// The model of a slot's handle.
#[derive(Clone, Debug, PartialEq, Eq)]
enum MHandle {
    Value(MVal),
    Coll(Vec<MVal>),
}

impl MHandle {
    fn members(&self) -> &[MVal] {
        match self {
            MHandle::Value(v) => std::slice::from_ref(v),
            MHandle::Coll(c) => c,
        }
    }

    /// The member a `Set`/`Clear` with this key reaches: a `Value` ignores the key.
    fn member_mut(&mut self, key: K) -> Option<&mut MVal> {
        match self {
            MHandle::Value(v) => Some(v),
            MHandle::Coll(c) => c.iter_mut().find(|m| m.key == key),
        }
    }

    fn committed(&mut self) {
        match self {
            MHandle::Value(v) => v.committed(),
            MHandle::Coll(c) => c.iter_mut().for_each(MVal::committed),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The real handles, and comparing them with the model
// ---------------------------------------------------------------------------------------------

enum Handle<'s> {
    Value(Value<'s, Key, V>),
    Coll(Collection<'s, Key, V>),
}

fn seen(value: &Value<'_, Key, V>) -> Seen {
    (value.key().n, value.version(), value.value().map(Val::get))
}

fn seen_all(coll: &Collection<'_, Key, V>) -> Vec<Seen> {
    coll.iter().map(|(_, v)| seen(v)).collect()
}

fn expect_eq<T: PartialEq + Debug>(what: &str, actual: T, expected: T) -> Result<(), String> {
    if actual == expected {
        Ok(())
    } else {
        Err(format!(
            "{what}: the store gives {actual:?}, the model expects {expected:?}"
        ))
    }
}

/// Compares everything the public API shows of a handle with its model (without allocating
/// when they agree: this runs after every step).
fn check_handle(handle: &Handle<'_>, model: &MHandle) -> Result<(), String> {
    let agree = match (handle, model) {
        (Handle::Value(v), MHandle::Value(m)) => seen(v) == m.seen(),
        (Handle::Coll(c), MHandle::Coll(ms)) => {
            c.len() == ms.len()
                && c.is_empty() == ms.is_empty()
                && c.iter().count() == ms.len()
                && c.iter()
                    .zip(ms)
                    .all(|((k, v), m)| k.n == m.key && seen(v) == m.seen())
                && c.keys().map(|k| k.n).eq(ms.iter().map(|m| m.key))
                && (0..PROBE_KEYS).all(|probe| {
                    c.get(&probe).map(seen) == ms.iter().find(|m| m.key == probe).map(MVal::seen)
                })
        }
        _ => false,
    };
    if agree {
        Ok(())
    } else {
        explain_handle(handle, model)
    }
}

/// The slow path of [`check_handle`]: says what differs.
fn explain_handle(handle: &Handle<'_>, model: &MHandle) -> Result<(), String> {
    match (handle, model) {
        (Handle::Value(v), MHandle::Value(m)) => {
            expect_eq("Value (key, version(), value())", seen(v), m.seen())
        }
        (Handle::Coll(c), MHandle::Coll(ms)) => {
            let expected: Vec<Seen> = ms.iter().map(MVal::seen).collect();
            expect_eq(
                "Collection members (key, version, value)",
                seen_all(c),
                expected,
            )?;
            for (key, value) in c.iter() {
                expect_eq("Collection::iter key vs Value::key", key, value.key())?;
            }
            expect_eq("Collection::len", c.len(), ms.len())?;
            expect_eq("Collection::is_empty", c.is_empty(), ms.is_empty())?;
            let keys: Vec<K> = ms.iter().map(|m| m.key).collect();
            expect_eq("Collection::keys", c.keys().map(|k| k.n).collect(), keys)?;
            for probe in 0..PROBE_KEYS {
                let expected = ms.iter().find(|m| m.key == probe).map(MVal::seen);
                expect_eq(
                    &format!("Collection::get(&{probe})"),
                    c.get(&probe).map(seen),
                    expected,
                )?;
            }
            Err("the handle differs from its model".to_string())
        }
        _ => panic!("harness bug: the slot holds a handle of another kind than its model"),
    }
}

/// Applies a `Set`, `Clear` or `Remove` to the real handle and its model.
fn write_member(
    lives: &Lives,
    handle: &mut Handle<'_>,
    model: &mut MHandle,
    key: K,
    write: Write,
    via: Via,
) -> Result<(), String> {
    let apply = |v: &mut Value<'_, Key, V>| match write {
        Write::Value(Some(new)) => v.set(lives.val(new)),
        Write::Value(None) => v.clear(),
        Write::Remove => v.remove(),
    };
    let member = model.member_mut(key);
    let expected_present = member.is_some();
    if let Some(m) = member {
        m.pending = Some(write);
    }
    match handle {
        Handle::Value(v) => {
            apply(v);
            Ok(())
        }
        Handle::Coll(c) => {
            let found = match via {
                Via::GetMut => c.get_mut(&key),
                Via::Index if expected_present => Some(&mut c[&key]),
                Via::Index => c.get_mut(&key),
                Via::ValuesMut => c.values_mut().find(|v| v.key().n == key),
            };
            let present = found.is_some();
            if let Some(v) = found {
                expect_eq("the member reached by key", v.key().n, key)?;
                apply(v);
            }
            if present == expected_present {
                Ok(())
            } else {
                expect_eq(
                    &format!("whether the collection has key {key} ({via:?})"),
                    present,
                    expected_present,
                )
            }
        }
    }
}

/// Reads `(key, version, value)` of what `using` returned.
fn using_seen(coll: &Collection<'_, Key, V>) -> Vec<Seen> {
    seen_all(coll)
}

fn model_of(members: Vec<MVal>) -> MHandle {
    MHandle::Coll(members)
}

/// A read (`usevar`/`using`) must not fail on one thread: there is no contention at all, and
/// `BusyRetry` is never the answer because of another commit in progress (semantics 6).
fn read_ok<T>(what: &str, result: Result<T, Error>) -> Result<T, String> {
    result.map_err(|e| format!("{what} failed with {e:?} on a single thread"))
}

fn divergence<T: Debug>(target: &str, program: &[T], step: usize, msg: &str) -> ! {
    let mut listing = String::new();
    for (i, op) in program.iter().enumerate() {
        let mark = if i == step { ">>" } else { "  " };
        let _ = writeln!(listing, "  {mark} {i:3}: {op:?}");
    }
    panic!(
        "stm-store diverged from the reference model ({target} target)\n\
         at step {step}: {msg}\n\
         decoded program:\n{listing}"
    );
}

// ---------------------------------------------------------------------------------------------
// Transactions: the real run and the model's
// ---------------------------------------------------------------------------------------------

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
fn run_tx(
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
struct TxSim {
    log: Vec<Ans>,
    end: TxEnd,
}

/// Runs the model of a transaction over `model` (changed as the store would be). `deadline`:
/// the call has a deadline already past, so the first attempt that does not end the call
/// (a conflict or a retry) times out.
fn simulate_tx(model: &mut Model, body: &[TxOp], deadline: bool) -> TxSim {
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
fn effective_kind(kind: TxKind, ends: &[TxEnd]) -> TxKind {
    if ends.contains(&TxEnd::Blocks) {
        TxKind::Deadline
    } else if kind == TxKind::Atomically && ends.iter().any(|e| matches!(e, TxEnd::Failed(_))) {
        TxKind::TryAtomically
    } else {
        kind
    }
}

// ---------------------------------------------------------------------------------------------
// `ops`: one client, exact model
// ---------------------------------------------------------------------------------------------

struct OpsSlot<'s> {
    handle: Handle<'s>,
    model: MHandle,
    /// Which store (generation) the handle came from.
    generation: usize,
    /// For each member: the version its key was created at, which names the slot it holds
    /// (see [`OpsRun::check_memory`]).
    born: Vec<u64>,
}

struct OpsRun<'s> {
    /// Every store of the run, made up front: one, and one more per `NewStore`. A handle
    /// borrows its store, so every store lives until the run ends.
    stores: &'s [S],
    /// One model per store started so far; the last is the current store's.
    models: Vec<Model>,
    slots: Vec<Option<OpsSlot<'s>>>,
    lives: Lives,
    stats: Stats,
}

/// Runs the `ops` program of `data` on a store and on the model; panics on any difference.
pub fn run_ops(data: &[u8]) {
    run_ops_counting(data);
}

/// [`run_ops`], returning what it did.
pub fn run_ops_counting(data: &[u8]) -> Stats {
    let ops = decode_ops(data);
    let lives = Lives::default();
    let new_stores = ops.iter().filter(|op| matches!(op, Op::NewStore)).count();
    let stores: Vec<S> = (0..=new_stores).map(|_| Store::new()).collect();
    let mut run = OpsRun {
        stores: &stores,
        models: vec![Model::default()],
        slots: (0..MAX_HANDLES).map(|_| None).collect(),
        lives: lives.clone(),
        stats: Stats::default(),
    };
    for (i, op) in ops.iter().enumerate() {
        let checked =
            run.step(op)
                .and_then(|()| run.check_handles())
                .and_then(|()| match memory_due(i, ops.len()) {
                    true => run.check_memory(),
                    false => Ok(()),
                });
        if let Err(msg) = checked {
            divergence("ops", &ops, i, &msg);
        }
    }
    if let Err(msg) = run.dump("final dump") {
        divergence("ops", &ops, ops.len(), &msg);
    }
    let mut stats = run.stats;
    for model in &run.models {
        stats.count_history(model);
    }
    drop(run);
    drop(stores);
    if let Err(msg) = check_all_freed(&lives) {
        divergence("ops", &ops, ops.len(), &msg);
    }
    stats
}

impl<'s> OpsRun<'s> {
    fn generation(&self) -> usize {
        self.models.len() - 1
    }

    /// The current store.
    fn store(&self) -> &'s S {
        &self.stores[self.generation()]
    }

    fn dump(&self, what: &str) -> Result<(), String> {
        let model = self.models.last().expect("there is always a store");
        expect_eq(what, dump_of(self.store()), model.dump())
    }

    /// Exactly, for values: one copy of every key's value in every store, and each handle's
    /// copies of the value it read and of its pending value. For keys (one per slot not freed):
    /// one per key that exists in each store (listed in its index), and one per removed key's
    /// slot that some handle still holds; a slot is named by (store, key, version it was
    /// created at), and handles of the same key's same life share it.
    fn check_memory(&self) -> Result<(), String> {
        let in_stores: usize = self
            .models
            .iter()
            .flat_map(|m| m.keys.values())
            .filter(|k| k.value.is_some())
            .count();
        let in_handles: usize = self
            .slots
            .iter()
            .flatten()
            .flat_map(|s| s.model.members())
            .map(|m| {
                let pending = matches!(m.pending, Some(Write::Value(Some(_))));
                usize::from(m.value.is_some()) + usize::from(pending)
            })
            .sum();
        check_memory_exact(&self.lives.vals, "values", in_stores + in_handles)?;
        let listed: usize = self
            .models
            .iter()
            .map(|m| m.keys.len() + m.landing.len())
            .sum();
        let mut held: Vec<(usize, K, u64)> = Vec::new();
        for s in self.slots.iter().flatten() {
            let model = &self.models[s.generation];
            for (m, &born) in s.model.members().iter().zip(&s.born) {
                let linked = model.keys.get(&m.key).is_some_and(|k| k.born == born);
                if !linked && !held.contains(&(s.generation, m.key, born)) {
                    held.push((s.generation, m.key, born));
                }
            }
        }
        check_memory_exact(&self.lives.keys, "keys (slots)", listed + held.len())
    }

    fn check_handles(&self) -> Result<(), String> {
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some(s) = slot {
                check_handle(&s.handle, &s.model).map_err(|e| format!("slot {i}: {e}"))?;
            }
        }
        Ok(())
    }

    /// A handle just read from the current store, and its model: its slot in the run.
    fn keep(&mut self, slot: usize, handle: Handle<'s>, model: MHandle) {
        let generation = self.generation();
        let keys = &self.models[generation].keys;
        let born = model.members().iter().map(|m| keys[&m.key].born).collect();
        self.slots[slot] = Some(OpsSlot {
            handle,
            model,
            generation,
            born,
        });
    }

    fn step(&mut self, op: &Op) -> Result<(), String> {
        let generation = self.generation();
        match op {
            &Op::UseVar { slot, key } => {
                let value = read_ok("usevar", self.store().usevar(self.lives.key(key)))?;
                let model = self.models[generation].usevar(key);
                expect_eq("usevar (key, version, value)", seen(&value), model.seen())?;
                self.keep(slot, Handle::Value(value), MHandle::Value(model));
            }
            Op::Using { slot, keys } => {
                let named = keys.iter().map(|&k| self.lives.key(k));
                let coll = read_ok("using", self.store().using(named))?;
                let members = self.models[generation].using(keys);
                let expected: Vec<Seen> = members.iter().map(MVal::seen).collect();
                expect_eq("using snapshot", using_seen(&coll), expected)?;
                self.keep(*slot, Handle::Coll(coll), model_of(members));
            }
            &Op::Set {
                slot,
                key,
                value,
                via,
            } => self.write(slot, key, Write::Value(Some(value)), via)?,
            &Op::Clear { slot, key } => self.write(slot, key, Write::Value(None), Via::GetMut)?,
            &Op::Remove { slot, key, via } => self.write(slot, key, Write::Remove, via)?,
            &Op::Commit { slot, via_store } => {
                let Some(s) = &mut self.slots[slot] else {
                    return Ok(());
                };
                // `Store::set` with a handle of another store panics (semantics 10): a handle
                // of an older store commits through its own store.
                let store = &self.stores[s.generation];
                let actual = match &mut s.handle {
                    Handle::Value(v) if via_store => store.set(v),
                    Handle::Value(v) => v.commit(),
                    Handle::Coll(c) if via_store => store.set_values(c),
                    Handle::Coll(c) => c.commit(),
                };
                let expected = self.models[s.generation].commit_now(s.model.members());
                if expected.is_ok() {
                    s.model.committed();
                }
                expect_eq("commit answer", actual, expected)?;
            }
            Op::Pause { .. } => unreachable!("the ops decoder makes no Pause"),
            Op::Dump => {
                self.dump("dump")?;
                let _ = format!("{:?}", self.store());
            }
            Op::Look(look) => {
                let actual = look_at(self.store(), &self.lives, look)?;
                let expected = self.models[generation].look(look, &actual);
                expect_eq(&format!("{look:?}"), actual, expected)?;
            }
            &Op::Drop { slot } => self.slots[slot] = None,
            &Op::Read { slot } => {
                if let Some(s) = &self.slots[slot] {
                    let _ = match &s.handle {
                        Handle::Value(v) => format!("{v:?}"),
                        Handle::Coll(c) => format!("{c:?}"),
                    };
                }
            }
            Op::NewStore => {
                // The next store (made up front) becomes the current one; the old one stays
                // for its handles, which may still commit.
                self.models.push(Model::default());
            }
            Op::Tx { kind, body } => {
                let model = &self.models[generation];
                let mut after = model.clone();
                let mut sim = simulate_tx(&mut after, body, *kind == TxKind::Deadline);
                let kind = effective_kind(*kind, std::slice::from_ref(&sim.end));
                if kind == TxKind::Deadline && sim.end == TxEnd::Blocks {
                    after = model.clone();
                    sim = simulate_tx(&mut after, body, true);
                }
                let actual = run_tx(self.store(), &self.lives, kind, body)?;
                expect_eq(
                    &format!("transaction ({kind:?}): (answers, end)"),
                    &actual,
                    &(sim.log, sim.end),
                )?;
                self.stats.count_tx(&actual.0, &actual.1);
                self.models[generation] = after;
            }
        }
        Ok(())
    }

    /// `Set`, `Clear` or `Remove` on a slot's handle (nothing if the slot is empty).
    fn write(&mut self, slot: usize, key: K, write: Write, via: Via) -> Result<(), String> {
        match &mut self.slots[slot] {
            Some(s) => write_member(&self.lives, &mut s.handle, &mut s.model, key, write, via),
            None => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `interleave`: 2-3 clients, commits that may stop half-way, linearizability
// ---------------------------------------------------------------------------------------------

/// One commit attempt, as its handles were when it started.
struct Attempt {
    /// Index of the step that started it.
    step: usize,
    client: usize,
    members: Vec<MVal>,
}

/// One possible state of the world: the committed state (whose log is the order in which
/// commits took effect and keys were created), the paused commits that have not taken effect
/// yet, and those that have (with their answer) but were not resumed yet.
#[derive(Clone, Debug)]
struct World {
    model: Model,
    pending: Vec<usize>,
    decided: Vec<(usize, bool)>,
}

impl World {
    /// Worlds that differ only in their history are interchangeable: any one serial order
    /// will do.
    fn same_state(&self, other: &World) -> bool {
        self.model == other.model && self.pending == other.pending && self.decided == other.decided
    }
}

struct Client<'s> {
    slots: Vec<Option<(Handle<'s>, MHandle)>>,
    /// Stopped inside a paused commit.
    paused: bool,
}

struct Interleave<'p, 's> {
    program: &'p [Step],
    /// The next step to run.
    pos: usize,
    /// The step being run (for messages).
    current: usize,
    store: &'s S,
    clients: Vec<Client<'s>>,
    worlds: Vec<World>,
    attempts: Vec<Attempt>,
    stats: Stats,
    /// The run's values and keys.
    lives: Lives,
    /// Members of the collections stopped inside a commit (out of their slots meanwhile).
    paused_members: usize,
}

/// What a run did (for tests that check the corpus reaches the interesting paths).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// `interleave`: commits (`commit`, `Store::set`, `Store::set_values`) that answered `Ok`.
    pub commits_ok: usize,
    /// `interleave`: commits that answered `ConcurrentUpdate`.
    pub commits_failed: usize,
    /// Paused commits resumed with `Ok`.
    pub resumed_ok: usize,
    /// Paused commits resumed with `ConcurrentUpdate`.
    pub resumed_failed: usize,
    /// Paused commits dropped without resuming.
    pub abandoned: usize,
    /// The most worlds the model had to keep at once.
    pub max_worlds: usize,
    /// Transactions that committed.
    pub tx_ok: usize,
    /// Transactions that ended with the closure's own error.
    pub tx_failed: usize,
    /// Transactions that timed out (a retry, or a conflict, under a deadline already past).
    pub tx_timed_out: usize,
    /// Transactions that ran their closure more than once.
    pub tx_reruns: usize,
    /// `interleave`: transactions not run because a client was stopped inside a commit.
    pub tx_skipped: usize,
    /// Keys removed by commits that landed (handles, transactions, paused commits).
    pub removals: usize,
    /// Keys created above version 0, in a store where keys were removed (the floor).
    pub recreations: usize,
    /// `interleave`: removals that may have landed without their key being unlinked, looked up
    /// before a step that may create a key (see [`Interleave::unlink_landed`]).
    pub looked_up_landed: usize,
}

impl Stats {
    /// Counts a transaction that ended with `end` after the answers `log`.
    fn count_tx(&mut self, log: &[Ans], end: &TxEnd) {
        match end {
            TxEnd::Ok => self.tx_ok += 1,
            TxEnd::Failed(_) => self.tx_failed += 1,
            TxEnd::TimedOut => self.tx_timed_out += 1,
            TxEnd::Blocks => {}
        }
        if log.contains(&Ans::Attempt(2)) {
            self.tx_reruns += 1;
        }
    }

    /// Counts the removals and the keys created above version 0 in a model's history.
    fn count_history(&mut self, model: &Model) {
        for event in &model.log {
            match event {
                Event::Create(_, version) => self.recreations += usize::from(*version > 0),
                Event::Commit(members) => {
                    self.removals += members.iter().filter(|m| m.removes()).count()
                }
            }
        }
    }
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, other: Stats) {
        self.commits_ok += other.commits_ok;
        self.commits_failed += other.commits_failed;
        self.resumed_ok += other.resumed_ok;
        self.resumed_failed += other.resumed_failed;
        self.abandoned += other.abandoned;
        self.max_worlds = self.max_worlds.max(other.max_worlds);
        self.tx_ok += other.tx_ok;
        self.tx_failed += other.tx_failed;
        self.tx_timed_out += other.tx_timed_out;
        self.tx_reruns += other.tx_reruns;
        self.tx_skipped += other.tx_skipped;
        self.removals += other.removals;
        self.recreations += other.recreations;
        self.looked_up_landed += other.looked_up_landed;
    }
}

/// Why a run of steps stopped.
enum Exit {
    /// The program ended.
    End,
    /// A step of this paused client: it resumes (`abandon: false`) or is dropped (`true`).
    Wake { client: usize, abandon: bool },
}

/// Runs the `interleave` program of `data`; panics on any behaviour the contract forbids.
pub fn run_interleave(data: &[u8]) -> Stats {
    let (clients, program) = decode_interleave(data);
    let slots = MAX_HANDLES / clients;
    let lives = Lives::default();
    let store = Store::new();
    let mut run = Interleave {
        program: &program,
        pos: 0,
        current: 0,
        store: &store,
        clients: (0..clients)
            .map(|_| Client {
                slots: (0..slots).map(|_| None).collect(),
                paused: false,
            })
            .collect(),
        worlds: vec![World {
            model: Model::default(),
            pending: Vec::new(),
            decided: Vec::new(),
        }],
        attempts: Vec::new(),
        stats: Stats::default(),
        lives: lives.clone(),
        paused_members: 0,
    };
    if let Err(msg) = run.exec().and_then(|_| run.finish()) {
        divergence("interleave", &program, run.current, &msg);
    }
    let mut stats = run.stats;
    stats.count_history(&run.worlds[0].model);
    let end = run.program.len();
    drop(run);
    drop(store);
    if let Err(msg) = check_all_freed(&lives) {
        divergence("interleave", &program, end, &msg);
    }
    stats
}

impl Interleave<'_, '_> {
    /// Runs steps until the program ends or a paused client (one of the enclosing frames) has
    /// a step. A paused commit runs the following steps in a nested call, so that its
    /// `Paused` guard (which borrows the collection) lives across them; paused commits
    /// therefore resume innermost first.
    fn exec(&mut self) -> Result<Exit, String> {
        while let Some(step) = self.program.get(self.pos) {
            self.current = self.pos;
            self.pos += 1;
            let client = step.client;
            if self.clients[client].paused {
                let abandon = matches!(step.op, Op::Drop { .. });
                return Ok(Exit::Wake { client, abandon });
            }
            if let Op::Pause { slot, claims } = step.op {
                if let Some(exit) = self.pause(client, slot, claims)? {
                    return Ok(exit);
                }
            } else {
                self.step(client, &step.op)?;
            }
            self.check_handles()?;
            if memory_due(self.current, self.program.len()) {
                self.check_memory()?;
            }
        }
        Ok(Exit::End)
    }

    /// Ends the run: every paused commit has been resumed; compare the handles, the final dump,
    /// and the serial replay of the history.
    fn finish(&mut self) -> Result<(), String> {
        self.current = self.program.len();
        self.check_handles()?;
        let dump = dump_of(self.store);
        self.observe("final dump", &dump, |w, _| w.model.dump())?;
        let world = &self.worlds[0];
        expect_eq("paused commits left", world.pending.len(), 0)?;
        replay(&world.model.log, &dump)
    }

    fn check_memory(&self) -> Result<(), String> {
        let slots = self.clients.iter().flat_map(|c| c.slots.iter().flatten());
        let members: usize = slots.map(|(_, m)| m.members().len()).sum();
        // Worlds may differ in which keys exist (a removal landed or not).
        let keys = self.worlds.iter().map(|w| w.model.keys.len()).max();
        check_memory(
            &self.lives,
            members + self.paused_members,
            self.paused_members,
            keys.unwrap_or(0),
        )
    }

    fn check_handles(&self) -> Result<(), String> {
        for (c, client) in self.clients.iter().enumerate() {
            for (i, slot) in client.slots.iter().enumerate() {
                if let Some((handle, model)) = slot {
                    check_handle(handle, model).map_err(|e| format!("client {c} slot {i}: {e}"))?;
                }
            }
        }
        Ok(())
    }

    /// Lets any paused commit take effect now, in any order: every world that could be.
    fn expand(&mut self) {
        if self.worlds.iter().all(|w| w.pending.is_empty()) {
            return;
        }
        let mut todo = std::mem::take(&mut self.worlds);
        let mut done: Vec<World> = Vec::new();
        while let Some(world) = todo.pop() {
            for (i, &id) in world.pending.iter().enumerate() {
                let mut next = world.clone();
                next.pending.remove(i);
                let ok = next.model.commit(&self.attempts[id].members).is_ok();
                next.decided.push((id, ok));
                if !done.iter().chain(&todo).any(|w| w.same_state(&next)) {
                    todo.push(next);
                }
            }
            if !done.iter().any(|w| w.same_state(&world)) {
                done.push(world);
            }
        }
        self.stats.max_worlds = self.stats.max_worlds.max(done.len());
        self.worlds = done;
    }

    /// An answer of the store: keeps the worlds (after any paused commit may have taken
    /// effect) in which `predict` gives the same answer, advanced by it.
    fn observe<P: PartialEq + Debug>(
        &mut self,
        what: &str,
        actual: &P,
        predict: impl Fn(&mut World, &[Attempt]) -> P,
    ) -> Result<(), String> {
        self.expand();
        let mut kept: Vec<World> = Vec::new();
        let mut allowed: Vec<P> = Vec::new();
        for mut world in std::mem::take(&mut self.worlds) {
            let p = predict(&mut world, &self.attempts);
            if p == *actual {
                if !kept.iter().any(|w| w.same_state(&world)) {
                    kept.push(world);
                }
            } else if !allowed.contains(&p) {
                allowed.push(p);
            }
        }
        if kept.is_empty() {
            return Err(format!(
                "{what}: the store gives {actual:?}, the model allows only {}",
                OneOf(&allowed)
            ));
        }
        self.worlds = kept;
        Ok(())
    }

    /// A stopped commit `id` resumed and answered `ok` (`Ok` or `ConcurrentUpdate`).
    fn observe_resume(&mut self, id: usize, ok: bool) -> Result<(), String> {
        // By its end the commit has taken effect or failed: a world in which it is still
        // pending has a sibling in which it is decided.
        self.expand();
        self.worlds.retain(|w| !w.pending.contains(&id));
        self.observe("resumed commit answer (Ok?)", &ok, |w, _| {
            let at = w.decided.iter().position(|&(p, _)| p == id);
            w.decided.remove(at.expect("decided in every world left")).1
        })?;
        if ok {
            for world in &mut self.worlds {
                world.model.returned(&self.attempts[id].members);
            }
        }
        Ok(())
    }

    /// Before a step that may create a key: looks up (`Store::get`) every key whose removal
    /// may have landed while its committer has not returned (a paused commit helped to its end,
    /// or one dropped there), but `keep`.
    ///
    /// The store raises its floor when it unlinks a removed key (its committer, once the
    /// commit returns, or the next call that names the key), not at the removal's instant, so a
    /// key created while a removal has landed but is not unlinked starts below that removal's
    /// version, which the contract (1, 23) does not allow: see `fuzz/README.md`, "Findings".
    /// The look-ups unlink every such key first (a lookup may: contract 26), so that the
    /// model's floor, raised at the removal's instant, is the store's at every creation.
    /// `keep` is the one such key a `usevar` or `using` may find landing itself (the store then
    /// unlinks it before it creates the key again, which is the path this keeps reachable).
    fn unlink_landed(&mut self, keep: Option<K>) -> Result<(), String> {
        self.expand();
        let mut keys: Vec<K> = self
            .worlds
            .iter()
            .flat_map(|w| w.model.landing.keys().copied())
            .filter(|&k| Some(k) != keep)
            .collect();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            self.stats.looked_up_landed += 1;
            let actual = self
                .store
                .get(&key)
                .map(|(version, value)| (version, value.as_ref().map(Val::get)));
            self.observe(
                &format!("get(&{key}), before a step that may create a key"),
                &actual,
                |w, _| w.model.get(key),
            )?;
        }
        Ok(())
    }

    /// The key of `keys` that `using` may find landing without it changing the floor of the
    /// keys it creates (see [`Interleave::unlink_landed`]): one whose removal may be landing,
    /// if every other key of the list exists in every world (so `using` creates no other key).
    fn using_keeps(&mut self, keys: &[K]) -> Option<K> {
        self.expand();
        let worlds = &self.worlds;
        let landing = |k: &K| worlds.iter().any(|w| w.model.landing.contains_key(k));
        let exists = |k: &K| worlds.iter().all(|w| w.model.keys.contains_key(k));
        let kept = *keys.iter().find(|&b| landing(b))?;
        keys.iter().all(|k| *k == kept || exists(k)).then_some(kept)
    }

    fn step(&mut self, client: usize, op: &Op) -> Result<(), String> {
        match op {
            &Op::UseVar { slot, key } => {
                self.unlink_landed(Some(key))?;
                let value = read_ok("usevar", self.store.usevar(self.lives.key(key)))?;
                let actual = seen(&value);
                self.observe("usevar (key, version, value)", &actual, |w, _| {
                    w.model.usevar(key).seen()
                })?;
                let model = MVal {
                    key,
                    version: actual.1,
                    value: actual.2,
                    pending: None,
                };
                self.clients[client].slots[slot] =
                    Some((Handle::Value(value), MHandle::Value(model)));
            }
            Op::Using { slot, keys } => {
                let keep = self.using_keeps(keys);
                self.unlink_landed(keep)?;
                let named = keys.iter().map(|&k| self.lives.key(k));
                let coll = read_ok("using", self.store.using(named))?;
                let actual = using_seen(&coll);
                self.observe("using snapshot", &actual, |w, _| {
                    w.model.using(keys).iter().map(MVal::seen).collect()
                })?;
                let members = actual
                    .iter()
                    .map(|&(key, version, value)| MVal {
                        key,
                        version,
                        value,
                        pending: None,
                    })
                    .collect();
                self.clients[client].slots[*slot] = Some((Handle::Coll(coll), model_of(members)));
            }
            &Op::Set {
                slot,
                key,
                value,
                via,
            } => self.write(client, slot, key, Write::Value(Some(value)), via)?,
            &Op::Clear { slot, key } => {
                self.write(client, slot, key, Write::Value(None), Via::GetMut)?
            }
            &Op::Remove { slot, key, via } => self.write(client, slot, key, Write::Remove, via)?,
            &Op::Commit { slot, via_store } => self.commit(client, slot, via_store)?,
            Op::Pause { .. } => unreachable!("exec runs Pause itself"),
            Op::Dump => {
                let dump = dump_of(self.store);
                self.observe("dump", &dump, |w, _| w.model.dump())?;
            }
            Op::Look(look) => {
                let actual = look_at(self.store, &self.lives, look)?;
                self.observe(&format!("{look:?}"), &actual, |w, _| {
                    w.model.look(look, &actual)
                })?;
            }
            &Op::Drop { slot } => self.clients[client].slots[slot] = None,
            Op::Read { .. } => {}
            Op::NewStore => unreachable!("the interleave decoder makes no NewStore"),
            Op::Tx { kind, body } => self.transaction(*kind, body)?,
        }
        Ok(())
    }

    /// `Set`, `Clear` or `Remove` on a client's slot (nothing if the slot is empty).
    fn write(
        &mut self,
        client: usize,
        slot: usize,
        key: K,
        write: Write,
        via: Via,
    ) -> Result<(), String> {
        match &mut self.clients[client].slots[slot] {
            Some((handle, model)) => write_member(&self.lives, handle, model, key, write, via),
            None => Ok(()),
        }
    }

    /// A transaction, run whole within this step. Its answers (every read, with the version
    /// read, and how it ended) must be what the model predicts in one of the possible worlds;
    /// its commits (from inside its closure, and its own) join that world's history.
    ///
    /// Not while a client is stopped inside a commit: the transaction's commits could help
    /// that commit to take effect between two of its reads, which this model does not follow
    /// (the step is skipped and counted).
    fn transaction(&mut self, kind: TxKind, body: &[TxOp]) -> Result<(), String> {
        if self.clients.iter().any(|c| c.paused) {
            self.stats.tx_skipped += 1;
            return Ok(());
        }
        self.unlink_landed(None)?;
        let deadline = kind == TxKind::Deadline;
        let ends: Vec<TxEnd> = self
            .worlds
            .iter()
            .map(|w| simulate_tx(&mut w.model.clone(), body, deadline).end)
            .collect();
        let kind = effective_kind(kind, &ends);
        let deadline = kind == TxKind::Deadline;
        let actual = run_tx(self.store, &self.lives, kind, body)?;
        self.observe(
            &format!("transaction ({kind:?}): (answers, end)"),
            &actual,
            |w, _| {
                let sim = simulate_tx(&mut w.model, body, deadline);
                (sim.log, sim.end)
            },
        )?;
        self.stats.count_tx(&actual.0, &actual.1);
        Ok(())
    }

    fn commit(&mut self, client: usize, slot: usize, via_store: bool) -> Result<(), String> {
        let Some((handle, model)) = self.clients[client].slots[slot].take() else {
            return Ok(());
        };
        let (mut handle, mut model) = (handle, model);
        let id = self.attempts.len();
        self.attempts.push(Attempt {
            step: self.current,
            client,
            members: model.members().to_vec(),
        });
        let actual = match &mut handle {
            Handle::Value(v) if via_store => self.store.set(v),
            Handle::Value(v) => v.commit(),
            Handle::Coll(c) if via_store => self.store.set_values(c),
            Handle::Coll(c) => c.commit(),
        };
        self.observe("commit answer", &actual, |w, attempts| {
            w.model.commit_now(&attempts[id].members)
        })?;
        if actual.is_ok() {
            self.stats.commits_ok += 1;
            model.committed();
        } else {
            self.stats.commits_failed += 1;
        }
        self.clients[client].slots[slot] = Some((handle, model));
        Ok(())
    }

    /// `Pause` on a collection: starts its commit, runs the next steps while it is stopped
    /// there, then resumes (or drops) it. Returns the exit of an enclosing frame's client.
    #[cfg(feature = "test-hooks")]
    fn pause(&mut self, client: usize, slot: usize, claims: usize) -> Result<Option<Exit>, String> {
        if !matches!(self.clients[client].slots[slot], Some((Handle::Coll(_), _))) {
            // A `Value` (or nothing): an ordinary commit.
            return self.commit(client, slot, false).map(|()| None);
        }
        let Some((Handle::Coll(mut coll), mut model)) = self.clients[client].slots[slot].take()
        else {
            unreachable!("checked just above");
        };
        let id = self.attempts.len();
        self.attempts.push(Attempt {
            step: self.current,
            client,
            members: model.members().to_vec(),
        });
        for world in &mut self.worlds {
            world.pending.push(id);
        }
        let paused = coll.commit_paused(claims);
        self.clients[client].paused = true;
        self.paused_members += model.members().len();
        let exit = self.exec()?;
        self.paused_members -= model.members().len();
        self.clients[client].paused = false;
        let (abandon, outer) = match exit {
            Exit::Wake { client: c, abandon } if c == client => (abandon, None),
            other => (false, Some(other)),
        };
        if abandon {
            // The stopped committer goes away: its commit took effect already, or never will.
            // If it took effect, the keys it removed stay listed until a call names them.
            drop(paused);
            self.stats.abandoned += 1;
            self.expand();
            for world in &mut self.worlds {
                world.pending.retain(|&p| p != id);
                world.decided.retain(|&(p, _)| p != id);
            }
            let worlds = std::mem::take(&mut self.worlds);
            for world in worlds {
                if !self.worlds.iter().any(|w| w.same_state(&world)) {
                    self.worlds.push(world);
                }
            }
        } else {
            let actual = paused.resume();
            let ok = actual.is_ok();
            if actual != Ok(()) && actual != Err(Error::ConcurrentUpdate) {
                return Err(format!("resumed commit answered {actual:?}"));
            }
            self.observe_resume(id, ok)?;
            if ok {
                self.stats.resumed_ok += 1;
                model.committed();
            } else {
                self.stats.resumed_failed += 1;
            }
        }
        self.clients[client].slots[slot] = Some((Handle::Coll(coll), model));
        Ok(outer)
    }

    /// Without `test-hooks` there is no paused commit: `Pause` is an ordinary commit.
    #[cfg(not(feature = "test-hooks"))]
    fn pause(
        &mut self,
        client: usize,
        slot: usize,
        _claims: usize,
    ) -> Result<Option<Exit>, String> {
        self.commit(client, slot, false).map(|()| None)
    }
}

/// Replays a world's history serially from an empty store, independently of [`Model`]: each
/// key is created absent, at version 0 while nothing was removed, else at one above the
/// highest version a removed key reached; each commit validates at its turn (every key it
/// read exists, at the version read) and writes its keys (a removal deletes the key and raises
/// that highest version); the result must be the final `dump`.
fn replay(log: &[Event], dump: &[Seen]) -> Result<(), String> {
    let mut state: BTreeMap<K, (u64, Option<N>)> = BTreeMap::new();
    let mut removed_max = 0;
    for (i, event) in log.iter().enumerate() {
        match event {
            Event::Create(key, version) => {
                let expected = if removed_max == 0 { 0 } else { removed_max + 1 };
                if state.contains_key(key) || *version != expected {
                    return Err(format!(
                        "serial replay, event {i}: key {key} created at version {version}, but \
                         replayed serially it is {:?} and new keys start at {expected}",
                        state.get(key)
                    ));
                }
                state.insert(*key, (*version, None));
            }
            Event::Commit(members) => {
                for m in members {
                    let version = state.get(&m.key).map(|s| s.0);
                    if version != Some(m.version) {
                        return Err(format!(
                            "serial replay, event {i}: the commit {members:?} read key {} at \
                             version {} but replayed serially the key is at {version:?}",
                            m.key, m.version
                        ));
                    }
                }
                for m in members {
                    match m.pending {
                        None => {}
                        Some(Write::Value(value)) => {
                            state.insert(m.key, (m.version + 1, value));
                        }
                        Some(Write::Remove) => {
                            state.remove(&m.key);
                            removed_max = removed_max.max(m.version + 1);
                        }
                    }
                }
            }
        }
    }
    let replayed: Vec<Seen> = state.into_iter().map(|(k, (n, v))| (k, n, v)).collect();
    expect_eq(
        "final dump vs serial replay of the history",
        dump.to_vec(),
        replayed,
    )
}

/// Formats the answers the model allows.
struct OneOf<'a, P>(&'a [P]);

impl<P: Debug> fmt::Display for OneOf<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" or ")?;
            }
            write!(f, "{p:?}")?;
        }
        Ok(())
    }
}

/// Checks of the harness itself: the world model must reject what the contract forbids.
#[cfg(test)]
mod self_test {
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
}
