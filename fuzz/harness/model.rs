//! The sequential reference model, written from the contract only: a store's keys with their
//! committed `(version, value)` and the floor for new keys, and the model of each handle.

use std::collections::BTreeMap;
use std::ops::RangeBounds;

use stm_store::Error;

use super::decode::Look;
use super::{K, N};

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
    pub(super) fn value(self) -> Option<N> {
        match self {
            Write::Value(value) => value,
            Write::Remove => None,
        }
    }
}

/// The model of one handle (`Value`, or a collection member).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MVal {
    pub(super) key: K,
    /// The version read, or written by the last successful commit.
    pub(super) version: u64,
    /// The value read, or written by the last successful commit.
    pub(super) value: Option<N>,
    /// The write for the next commit, after `set`/`clear`/`remove`.
    pub(super) pending: Option<Write>,
}

impl MVal {
    /// What `(key(), version(), value())` must answer: `value()` shows the pending write.
    pub(super) fn seen(&self) -> Seen {
        let value = self.pending.map_or(self.value, Write::value);
        (self.key, self.version, value)
    }

    /// After a successful commit: written handles hold the new version and value, clean. One
    /// that removed holds the removal's version and no value (contract 25).
    pub(super) fn committed(&mut self) {
        if let Some(write) = self.pending.take() {
            self.version += 1;
            self.value = write.value();
        }
    }

    pub(super) fn removes(&self) -> bool {
        self.pending == Some(Write::Remove)
    }
}

/// `(key, version, value)` as a handle or `dump` shows it.
pub type Seen = (K, u64, Option<N>);

/// A key that exists, in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct KeyState {
    pub(super) version: u64,
    pub(super) value: Option<N>,
    /// The version it was created at: 0, or the floor + 1 then. With the key, it names the
    /// slot (one life of the key); `ops` uses it to count the slots alive.
    pub(super) born: u64,
}

/// What happened to a model, in order: the serial history that `interleave` replays at the end.
#[derive(Clone, Debug)]
pub(super) enum Event {
    /// A key was created at this version.
    Create(K, u64),
    /// A commit landed (its handles as they were when it started).
    Commit(Vec<MVal>),
}

/// The model of a store: every key that exists, with its committed `(version, value)`, and the
/// floor for new keys.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub(super) keys: BTreeMap<K, KeyState>,
    /// The highest version any removed key reached (its removal's version), 0 if none was
    /// removed: a key created from now on starts at `floor + 1` (contract 23).
    floor: u64,
    /// Removed keys that the store may still count in `len` (contract 26: "`len` may still
    /// count a key whose removal is landing"): removals that landed while their committer has
    /// not returned yet (a stopped commit, helped to its end by another client, or dropped
    /// there), until some call names the key (the store unlinks it then) or the committer
    /// returns. Key -> the removal's version (which says which life of the key it was).
    /// Always empty in `ops`, where every commit returns before the next step.
    pub(super) landing: BTreeMap<K, u64>,
    /// Not part of the state: the history, for `interleave`'s serial replay.
    pub(super) log: Vec<Event>,
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
    pub(super) fn get(&mut self, key: K) -> Option<(u64, Option<N>)> {
        self.name(key);
        self.keys.get(&key).map(|k| (k.version, k.value))
    }

    /// Reads `key`, creating it if it does not exist: version 0 in a store where no key was
    /// removed, else floor + 1; no value (contract 1, 23).
    pub(super) fn read(&mut self, key: K) -> KeyState {
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
    pub(super) fn usevar(&mut self, key: K) -> MVal {
        let KeyState { version, value, .. } = self.read(key);
        MVal {
            key,
            version,
            value,
            pending: None,
        }
    }

    /// `using`: one member per distinct key, in key order.
    pub(super) fn using(&mut self, keys: &[K]) -> Vec<MVal> {
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
    pub(super) fn commit(&mut self, members: &[MVal]) -> Result<(), Error> {
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
    pub(super) fn returned(&mut self, members: &[MVal]) {
        for m in members.iter().filter(|m| m.removes()) {
            if self.landing.get(&m.key) == Some(&(m.version + 1)) {
                self.landing.remove(&m.key);
            }
        }
    }

    /// A commit that returns before anything else happens (every commit in `ops`).
    pub(super) fn commit_now(&mut self, members: &[MVal]) -> Result<(), Error> {
        self.commit(members)?;
        self.returned(members);
        Ok(())
    }

    /// `dump`: every key that exists, in key order.
    pub(super) fn dump(&self) -> Vec<Seen> {
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
    pub(super) fn look(&mut self, look: &Look, actual: &Looked) -> Looked {
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

/// The model of a slot's handle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum MHandle {
    Value(MVal),
    Coll(Vec<MVal>),
}

impl MHandle {
    pub(super) fn members(&self) -> &[MVal] {
        match self {
            MHandle::Value(v) => std::slice::from_ref(v),
            MHandle::Coll(c) => c,
        }
    }

    /// The member a `Set`/`Clear` with this key reaches: a `Value` ignores the key.
    pub(super) fn member_mut(&mut self, key: K) -> Option<&mut MVal> {
        match self {
            MHandle::Value(v) => Some(v),
            MHandle::Coll(c) => c.iter_mut().find(|m| m.key == key),
        }
    }

    pub(super) fn committed(&mut self) {
        match self {
            MHandle::Value(v) => v.committed(),
            MHandle::Coll(c) => c.iter_mut().for_each(MVal::committed),
        }
    }
}
