//! What every benchmark shares: one small trait, [`Kv`], over the implementations compared,
//! and the multi-threaded driver.
//!
//! Implementations:
//!
//! - [`Ours`]: `stm_store::Store<u64, u64>` through `usevar` / `using` / `commit`, with retry
//!   loops that count `ConcurrentUpdate` and `BusyRetry`.
//! - [`Atomically`]: the same store through `Store::atomically` (the store's own retry loop).
//! - [`MutexKv`] (`mutex`): one `parking_lot::Mutex` over a `HashMap<u64, (version,
//!   Option<u64>)>`, used as Axon.STM uses its lock: a read copies under the lock, a commit
//!   takes the lock again, checks the versions it read and writes.
//! - [`MutexOne`] (`mutex-one`): the same map, every operation in one critical section (a
//!   transfer locks once, reads both accounts and writes both): what most users write.
//! - [`RwLockKv`]: the Axon-shaped map over a `parking_lot::RwLock` (reads share it, commits
//!   take it exclusively).
//! - [`StmCrate`]: the `stm` crate, one `TVar<u64>` per key, every operation in `atomically`.
//! - [`Floor`] (`floor`): the lock-free multi-word compare-and-swap that a commit cannot do
//!   with less: one versioned word per key in a fixed array (no index, no allocation), a commit
//!   claims its words in key order, decides with one CAS on its descriptor's status, installs
//!   (2k + 1 CASes for k keys), inside a crossbeam-epoch pin.
//! - [`ArcSwapCell`] (`arcswap`): one `ArcSwap<(version, value)>` per key in a fixed array;
//!   single-key operations only: the bare per-key compare-and-swap of a copy-on-write record.
//!
//! Every retry loop uses the same [`Backoff`] (or none, where a benchmark says so), so the
//! implementations differ only in how they read and commit.

use std::cell::Cell;
/// The lock maps hash with the store's own default hasher, so the comparison is of the
/// concurrency schemes, not of the hash functions.
type HashMap<K, V> = std::collections::HashMap<K, V, stm_store::DefaultHasher>;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex as StdMutex};
use std::thread;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_epoch as epoch;
use parking_lot::{Mutex, RwLock};
use stm_store::{Error, Store};

/// What one operation took: how many attempts (the first included), and why the failed ones
/// failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tries {
    pub attempts: u64,
    pub conflicts: u64,
    pub busy: u64,
}

impl Tries {
    pub const ONE: Tries = Tries {
        attempts: 1,
        conflicts: 0,
        busy: 0,
    };

    pub fn add(&mut self, other: Tries) {
        self.attempts += other.attempts;
        self.conflicts += other.conflicts;
        self.busy += other.busy;
    }
}

/// The operations a workload uses. Keys are `0..keys`; every key starts with a value.
pub trait Kv: Send + Sync + 'static {
    /// The name in benchmark ids.
    const NAME: &'static str;
    /// Whether the implementation has atomic multi-key operations (`transfer`, `snapshot`,
    /// `write_all`). The `ArcSwap` cell has not.
    const MULTI_KEY: bool = true;

    /// `keys` keys, each committed once with the value `initial`.
    fn new(keys: usize, initial: u64) -> Self;

    /// The value of one key.
    fn read(&self, key: u64) -> u64;

    /// Adds 1 to one key (read, then commit; retried until it lands).
    fn incr(&self, key: u64, backoff: Backoff) -> Tries;

    /// Moves `amount` from `from` to `to` atomically (`from != to`).
    fn transfer(&self, from: u64, to: u64, amount: u64, backoff: Backoff) -> Tries;

    /// The values of `keys` at one instant, into `out`.
    fn snapshot(&self, keys: &[u64], out: &mut Vec<u64>) -> Tries;

    /// Adds 1 to every key of `keys` (distinct) atomically. The `ArcSwap` cell does it with one
    /// CAS per key, not atomically: that is the cost it stands for.
    fn write_all(&self, keys: &[u64], backoff: Backoff) -> Tries;
}

/// The retry policy after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backoff {
    /// Retry at once.
    None,
    /// Spin `2^n` pause instructions after the n-th consecutive failure (n capped at
    /// [`SPIN_LIMIT`]); past that, yield the CPU. Truncated exponential backoff, as
    /// crossbeam's `Backoff::snooze`.
    Exponential,
}

/// Past this many consecutive failures, [`Backoff::Exponential`] yields instead of spinning.
pub const SPIN_LIMIT: u32 = 6;

impl Backoff {
    /// Waits after the `failures`-th consecutive failure (1 for the first).
    #[inline]
    pub fn wait(self, failures: u64) {
        if self == Backoff::None {
            return;
        }
        if failures <= u64::from(SPIN_LIMIT) {
            for _ in 0..1u32 << failures {
                std::hint::spin_loop();
            }
        } else {
            thread::yield_now();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// stm-store

/// `stm_store::Store<u64, u64>`.
pub struct Ours(pub Store<u64, u64>);

impl Ours {
    /// Counts a failed commit into `tries`, waits as `backoff` says.
    #[inline]
    fn failed(tries: &mut Tries, error: Error, backoff: Backoff) {
        match error {
            Error::ConcurrentUpdate => tries.conflicts += 1,
            Error::BusyRetry => tries.busy += 1,
        }
        backoff.wait(tries.conflicts + tries.busy);
    }
}

impl Kv for Ours {
    const NAME: &'static str = "ours";

    fn new(keys: usize, initial: u64) -> Self {
        let store = Store::new();
        for key in 0..keys as u64 {
            let mut value = store.usevar(key).expect("usevar");
            value.set(initial);
            value.commit().expect("no contention during setup");
        }
        Ours(store)
    }

    #[inline]
    fn read(&self, key: u64) -> u64 {
        let value = self.0.usevar(key).expect("usevar never fails today");
        value.value().copied().unwrap_or(0)
    }

    fn incr(&self, key: u64, backoff: Backoff) -> Tries {
        let mut tries = Tries::default();
        loop {
            tries.attempts += 1;
            let mut value = match self.0.usevar(key) {
                Ok(value) => value,
                Err(error) => {
                    Self::failed(&mut tries, error, backoff);
                    continue;
                }
            };
            let next = value.value().copied().unwrap_or(0).wrapping_add(1);
            value.set(next);
            match value.commit() {
                Ok(()) => return tries,
                Err(error) => Self::failed(&mut tries, error, backoff),
            }
        }
    }

    fn transfer(&self, from: u64, to: u64, amount: u64, backoff: Backoff) -> Tries {
        let mut tries = Tries::default();
        loop {
            tries.attempts += 1;
            let mut accounts = match self.0.using([from, to]) {
                Ok(accounts) => accounts,
                Err(error) => {
                    Self::failed(&mut tries, error, backoff);
                    continue;
                }
            };
            let a = accounts[&from].value().copied().unwrap_or(0);
            let b = accounts[&to].value().copied().unwrap_or(0);
            accounts[&from].set(a.wrapping_sub(amount));
            accounts[&to].set(b.wrapping_add(amount));
            match accounts.commit() {
                Ok(()) => return tries,
                Err(error) => Self::failed(&mut tries, error, backoff),
            }
        }
    }

    fn snapshot(&self, keys: &[u64], out: &mut Vec<u64>) -> Tries {
        let mut tries = Tries::default();
        loop {
            tries.attempts += 1;
            match self.0.using(keys.iter().copied()) {
                Ok(values) => {
                    out.clear();
                    out.extend(
                        keys.iter()
                            .map(|key| values[key].value().copied().unwrap_or(0)),
                    );
                    return tries;
                }
                Err(error) => Self::failed(&mut tries, error, Backoff::Exponential),
            }
        }
    }

    fn write_all(&self, keys: &[u64], backoff: Backoff) -> Tries {
        let mut tries = Tries::default();
        loop {
            tries.attempts += 1;
            let mut values = match self.0.using(keys.iter().copied()) {
                Ok(values) => values,
                Err(error) => {
                    Self::failed(&mut tries, error, backoff);
                    continue;
                }
            };
            for value in values.values_mut() {
                let next = value.value().copied().unwrap_or(0).wrapping_add(1);
                value.set(next);
            }
            match values.commit() {
                Ok(()) => return tries,
                Err(error) => Self::failed(&mut tries, error, backoff),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// stm-store through transactions (`Store::atomically`).

/// `stm_store::Store<u64, u64>` through [`Store::atomically`]: reads as the closure goes, the
/// store's own retry loop with its default backoff (spins 1, 2, 4, ... up to 1,024, then also
/// yields), so the benchmark's [`Backoff`] is not used. Attempts are counted with
/// `Tx::attempt` (every attempt after the first followed a conflict: the workloads never
/// `retry`); a commit that found a key busy counts as a conflict too.
pub struct Atomically(pub Store<u64, u64>);

impl Atomically {
    /// The attempts of a call whose last attempt was `last`.
    #[inline]
    fn tries(last: u32) -> Tries {
        let attempts = u64::from(last);
        Tries {
            attempts,
            conflicts: attempts - 1,
            busy: 0,
        }
    }
}

impl Kv for Atomically {
    const NAME: &'static str = "atomically";

    fn new(keys: usize, initial: u64) -> Self {
        Atomically(Ours::new(keys, initial).0)
    }

    #[inline]
    fn read(&self, key: u64) -> u64 {
        self.0.atomically(|tx| tx.get(&key)).unwrap_or(0)
    }

    fn incr(&self, key: u64, _backoff: Backoff) -> Tries {
        let mut last = 0;
        self.0.atomically(|tx| {
            last = tx.attempt();
            let value = tx.get(&key)?.unwrap_or(0);
            tx.set(&key, value.wrapping_add(1))
        });
        Self::tries(last)
    }

    fn transfer(&self, from: u64, to: u64, amount: u64, _backoff: Backoff) -> Tries {
        let mut last = 0;
        self.0.atomically(|tx| {
            last = tx.attempt();
            let a = tx.get(&from)?.unwrap_or(0);
            let b = tx.get(&to)?.unwrap_or(0);
            tx.set(&from, a.wrapping_sub(amount))?;
            tx.set(&to, b.wrapping_add(amount))
        });
        Self::tries(last)
    }

    fn snapshot(&self, keys: &[u64], out: &mut Vec<u64>) -> Tries {
        let mut last = 0;
        self.0.atomically(|tx| {
            last = tx.attempt();
            out.clear();
            for key in keys {
                out.push(tx.get(key)?.unwrap_or(0));
            }
            Ok(())
        });
        Self::tries(last)
    }

    fn write_all(&self, keys: &[u64], _backoff: Backoff) -> Tries {
        let mut last = 0;
        self.0.atomically(|tx| {
            last = tx.attempt();
            for key in keys {
                let value = tx.get(key)?.unwrap_or(0);
                tx.set(key, value.wrapping_add(1))?;
            }
            Ok(())
        });
        Self::tries(last)
    }
}

// ---------------------------------------------------------------------------------------------
// One lock over a map of versioned records (Axon.STM's design), as a Mutex and as a RwLock.

/// A versioned record: (version, value).
type Versioned = (u64, Option<u64>);

/// The lock a map of versioned records sits behind: `parking_lot`'s `Mutex` or `RwLock`.
pub trait MapLock: Send + Sync + 'static {
    const NAME: &'static str;
    fn new(map: HashMap<u64, Versioned>) -> Self;
    fn read<R>(&self, f: impl FnOnce(&HashMap<u64, Versioned>) -> R) -> R;
    fn write<R>(&self, f: impl FnOnce(&mut HashMap<u64, Versioned>) -> R) -> R;
}

impl MapLock for Mutex<HashMap<u64, Versioned>> {
    const NAME: &'static str = "mutex";
    fn new(map: HashMap<u64, Versioned>) -> Self {
        Mutex::new(map)
    }
    #[inline]
    fn read<R>(&self, f: impl FnOnce(&HashMap<u64, Versioned>) -> R) -> R {
        f(&self.lock())
    }
    #[inline]
    fn write<R>(&self, f: impl FnOnce(&mut HashMap<u64, Versioned>) -> R) -> R {
        f(&mut self.lock())
    }
}

impl MapLock for RwLock<HashMap<u64, Versioned>> {
    const NAME: &'static str = "rwlock";
    fn new(map: HashMap<u64, Versioned>) -> Self {
        RwLock::new(map)
    }
    #[inline]
    fn read<R>(&self, f: impl FnOnce(&HashMap<u64, Versioned>) -> R) -> R {
        f(&self.read())
    }
    #[inline]
    fn write<R>(&self, f: impl FnOnce(&mut HashMap<u64, Versioned>) -> R) -> R {
        f(&mut self.write())
    }
}

/// Axon.STM's design: `usevar`/`using` copy records out under the lock; a commit takes the lock
/// again, checks every version it read and writes (or fails with a conflict).
pub struct Locked<L>(L);

/// The mutex variant.
pub type MutexKv = Locked<Mutex<HashMap<u64, Versioned>>>;
/// The RwLock variant.
pub type RwLockKv = Locked<RwLock<HashMap<u64, Versioned>>>;

impl<L: MapLock> Locked<L> {
    /// Like Axon.STM's `usevar`: copies the record out (creating the key if it is new).
    #[inline]
    fn get(map: &HashMap<u64, Versioned>, key: u64) -> Versioned {
        map.get(&key).copied().unwrap_or((0, None))
    }

    /// Like Axon.STM's `set`/`set_values`: every version still the one read, then write.
    #[inline]
    fn commit(&self, writes: &[(u64, u64, u64)]) -> bool {
        self.commit_pausing(writes, || {})
    }

    /// [`commit`](Self::commit) that runs `pause` while it holds the lock, between validating
    /// and writing (whether or not the validation passed).
    #[inline]
    fn commit_pausing(&self, writes: &[(u64, u64, u64)], pause: impl FnOnce()) -> bool {
        self.0.write(|map| {
            let valid = writes
                .iter()
                .all(|&(key, version, _)| Self::get(map, key).0 == version);
            pause();
            if !valid {
                return false;
            }
            for &(key, version, value) in writes {
                map.insert(key, (version + 1, Some(value)));
            }
            true
        })
    }
}

impl<L: MapLock> Kv for Locked<L> {
    const NAME: &'static str = L::NAME;

    fn new(keys: usize, initial: u64) -> Self {
        let map = (0..keys as u64)
            .map(|key| (key, (1, Some(initial))))
            .collect();
        Locked(L::new(map))
    }

    #[inline]
    fn read(&self, key: u64) -> u64 {
        self.0.read(|map| Self::get(map, key).1.unwrap_or(0))
    }

    fn incr(&self, key: u64, backoff: Backoff) -> Tries {
        let mut tries = Tries::default();
        loop {
            tries.attempts += 1;
            let (version, value) = self.0.read(|map| Self::get(map, key));
            let next = value.unwrap_or(0).wrapping_add(1);
            if self.commit(&[(key, version, next)]) {
                return tries;
            }
            tries.conflicts += 1;
            backoff.wait(tries.conflicts);
        }
    }

    fn transfer(&self, from: u64, to: u64, amount: u64, backoff: Backoff) -> Tries {
        let mut tries = Tries::default();
        loop {
            tries.attempts += 1;
            let (a, b) = self
                .0
                .read(|map| (Self::get(map, from), Self::get(map, to)));
            let writes = [
                (from, a.0, a.1.unwrap_or(0).wrapping_sub(amount)),
                (to, b.0, b.1.unwrap_or(0).wrapping_add(amount)),
            ];
            if self.commit(&writes) {
                return tries;
            }
            tries.conflicts += 1;
            backoff.wait(tries.conflicts);
        }
    }

    fn snapshot(&self, keys: &[u64], out: &mut Vec<u64>) -> Tries {
        out.clear();
        self.0.read(|map| {
            out.extend(keys.iter().map(|&key| Self::get(map, key).1.unwrap_or(0)));
        });
        Tries::ONE
    }

    fn write_all(&self, keys: &[u64], backoff: Backoff) -> Tries {
        let mut tries = Tries::default();
        let mut writes = Vec::with_capacity(keys.len());
        loop {
            tries.attempts += 1;
            writes.clear();
            self.0.read(|map| {
                writes.extend(keys.iter().map(|&key| {
                    let (version, value) = Self::get(map, key);
                    (key, version, value.unwrap_or(0).wrapping_add(1))
                }));
            });
            if self.commit(&writes) {
                return tries;
            }
            tries.conflicts += 1;
            backoff.wait(tries.conflicts);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One lock over the same map, every operation in one critical section.

/// The mutex map most users write: the same `parking_lot::Mutex` over the same map of
/// versioned records as [`MutexKv`], but every operation takes the lock once and does all its
/// work inside (a transfer reads both accounts and writes both). Nothing can conflict, so every
/// operation is one attempt.
pub struct MutexOne(Mutex<HashMap<u64, Versioned>>);

impl MutexOne {
    /// Adds `delta` (wrapping) to `key` in `map`, bumping its version.
    #[inline]
    fn add(map: &mut HashMap<u64, Versioned>, key: u64, delta: u64) {
        let (version, value) = map.get(&key).copied().unwrap_or((0, None));
        map.insert(
            key,
            (version + 1, Some(value.unwrap_or(0).wrapping_add(delta))),
        );
    }

    /// A transfer in one critical section; `pause` runs while it holds the lock, between
    /// reading and writing.
    #[inline]
    fn transfer_pausing(&self, from: u64, to: u64, amount: u64, pause: impl FnOnce()) {
        let mut map = self.0.lock();
        let a = map.get(&from).copied().unwrap_or((0, None));
        let b = map.get(&to).copied().unwrap_or((0, None));
        pause();
        map.insert(from, (a.0 + 1, Some(a.1.unwrap_or(0).wrapping_sub(amount))));
        map.insert(to, (b.0 + 1, Some(b.1.unwrap_or(0).wrapping_add(amount))));
    }
}

impl Kv for MutexOne {
    const NAME: &'static str = "mutex-one";

    fn new(keys: usize, initial: u64) -> Self {
        MutexOne(Mutex::new(
            (0..keys as u64)
                .map(|key| (key, (1, Some(initial))))
                .collect(),
        ))
    }

    #[inline]
    fn read(&self, key: u64) -> u64 {
        self.0
            .lock()
            .get(&key)
            .and_then(|record| record.1)
            .unwrap_or(0)
    }

    fn incr(&self, key: u64, _backoff: Backoff) -> Tries {
        Self::add(&mut self.0.lock(), key, 1);
        Tries::ONE
    }

    fn transfer(&self, from: u64, to: u64, amount: u64, _backoff: Backoff) -> Tries {
        self.transfer_pausing(from, to, amount, || {});
        Tries::ONE
    }

    fn snapshot(&self, keys: &[u64], out: &mut Vec<u64>) -> Tries {
        let map = self.0.lock();
        out.clear();
        out.extend(
            keys.iter()
                .map(|key| map.get(key).and_then(|record| record.1).unwrap_or(0)),
        );
        Tries::ONE
    }

    fn write_all(&self, keys: &[u64], _backoff: Backoff) -> Tries {
        let mut map = self.0.lock();
        for &key in keys {
            Self::add(&mut map, key, 1);
        }
        Tries::ONE
    }
}

// ---------------------------------------------------------------------------------------------
// A committer stalled mid-commit (the `lockfree` benchmark).

/// One attempt of a two-key transfer whose commit may stop in the middle, as a committer that
/// is descheduled or page-faults there would.
pub trait Stalling: Kv {
    /// Reads `from` and `to`, moves `amount`, commits once; true if the commit landed. With
    /// `stall`, the commit stops for that long in its middle: the store after claiming its
    /// first key (`Collection::commit_paused(1)`), the Axon-shaped lock maps while holding the
    /// lock between validating and writing, `mutex-one` while holding the lock between reading
    /// and writing, the floor after claiming its first key.
    fn try_transfer(&self, from: u64, to: u64, amount: u64, stall: Option<Duration>) -> bool;
}

impl Stalling for Ours {
    fn try_transfer(&self, from: u64, to: u64, amount: u64, stall: Option<Duration>) -> bool {
        let Ok(mut accounts) = self.0.using([from, to]) else {
            return false;
        };
        let a = accounts[&from].value().copied().unwrap_or(0);
        let b = accounts[&to].value().copied().unwrap_or(0);
        accounts[&from].set(a.wrapping_sub(amount));
        accounts[&to].set(b.wrapping_add(amount));
        match stall {
            None => accounts.commit().is_ok(),
            Some(pause) => {
                let paused = accounts.commit_paused(1);
                thread::sleep(pause);
                paused.resume().is_ok()
            }
        }
    }
}

impl<L: MapLock> Stalling for Locked<L> {
    fn try_transfer(&self, from: u64, to: u64, amount: u64, stall: Option<Duration>) -> bool {
        let (a, b) = self
            .0
            .read(|map| (Self::get(map, from), Self::get(map, to)));
        let writes = [
            (from, a.0, a.1.unwrap_or(0).wrapping_sub(amount)),
            (to, b.0, b.1.unwrap_or(0).wrapping_add(amount)),
        ];
        self.commit_pausing(&writes, || {
            if let Some(pause) = stall {
                thread::sleep(pause);
            }
        })
    }
}

impl Stalling for MutexOne {
    /// Always lands: nothing can conflict inside the one critical section.
    fn try_transfer(&self, from: u64, to: u64, amount: u64, stall: Option<Duration>) -> bool {
        self.transfer_pausing(from, to, amount, || {
            if let Some(pause) = stall {
                thread::sleep(pause);
            }
        });
        true
    }
}

impl Stalling for Floor {
    /// Stops after claiming the first key (in key order); whoever needs that key meanwhile
    /// fails and retries, or waits (a read): the floor does not help.
    fn try_transfer(&self, from: u64, to: u64, amount: u64, stall: Option<Duration>) -> bool {
        self.try_transfer_pausing(from, to, amount, || {
            if let Some(pause) = stall {
                thread::sleep(pause);
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The `stm` crate.

/// The `stm` crate: one `TVar<u64>` per key. `atomically` retries by itself, at once (no
/// backoff can be put into its loop); attempts are counted by running the closure.
pub struct StmCrate(Vec<stm::TVar<u64>>);

impl StmCrate {
    /// Runs `f` in `atomically`, counting the attempts.
    #[inline]
    fn atomically<T>(f: impl Fn(&mut stm::Transaction) -> stm::StmResult<T>) -> (T, Tries) {
        let attempts = Cell::new(0u64);
        let result = stm::atomically(|tx| {
            attempts.set(attempts.get() + 1);
            f(tx)
        });
        let attempts = attempts.get();
        let tries = Tries {
            attempts,
            conflicts: attempts - 1,
            busy: 0,
        };
        (result, tries)
    }
}

impl Kv for StmCrate {
    const NAME: &'static str = "stm-crate";

    fn new(keys: usize, initial: u64) -> Self {
        StmCrate((0..keys).map(|_| stm::TVar::new(initial)).collect())
    }

    #[inline]
    fn read(&self, key: u64) -> u64 {
        self.0[key as usize].read_atomic()
    }

    fn incr(&self, key: u64, _backoff: Backoff) -> Tries {
        let var = &self.0[key as usize];
        Self::atomically(|tx| {
            let value = var.read(tx)?;
            var.write(tx, value.wrapping_add(1))
        })
        .1
    }

    fn transfer(&self, from: u64, to: u64, amount: u64, _backoff: Backoff) -> Tries {
        let (from, to) = (&self.0[from as usize], &self.0[to as usize]);
        Self::atomically(|tx| {
            let a = from.read(tx)?;
            let b = to.read(tx)?;
            from.write(tx, a.wrapping_sub(amount))?;
            to.write(tx, b.wrapping_add(amount))
        })
        .1
    }

    fn snapshot(&self, keys: &[u64], out: &mut Vec<u64>) -> Tries {
        let (values, tries) = Self::atomically(|tx| {
            keys.iter()
                .map(|&key| self.0[key as usize].read(tx))
                .collect::<Result<Vec<_>, _>>()
        });
        *out = values;
        tries
    }

    fn write_all(&self, keys: &[u64], _backoff: Backoff) -> Tries {
        Self::atomically(|tx| {
            for &key in keys {
                let var = &self.0[key as usize];
                let value = var.read(tx)?;
                var.write(tx, value.wrapping_add(1))?;
            }
            Ok(())
        })
        .1
    }
}

// ---------------------------------------------------------------------------------------------
// The floor: a lock-free multi-word compare-and-swap over versioned words.

/// A word holding a committing thread's tag (its claim) instead of a version and a value.
const CLAIM: u64 = 1 << 63;
/// The value's bits of an unclaimed word; the version counts in bits 32 to 62.
const VALUE_BITS: u64 = u32::MAX as u64;
/// One version step.
const VERSION_ONE: u64 = 1 << 32;
/// The most keys one floor commit takes (the workloads use up to 8): its loads stay on the
/// stack.
const FLOOR_MAX_KEYS: usize = 8;

/// One word on its own pair of cache lines, so that neighbouring keys share no line (the
/// spatial prefetcher fetches lines in pairs).
#[repr(align(128))]
struct Line(AtomicU64);

thread_local! {
    /// The committing thread's descriptor: the status word a commit decides with. Only its
    /// own thread writes it, and a commit's tag is its address.
    static STATUS: Line = const { Line(AtomicU64::new(0)) };
}

/// The physical floor of an atomic multi-key commit on this machine: what a commit costs that
/// allocates nothing, looks nothing up and frees nothing, and still lets every thread commit
/// at once. One word per key in a fixed array: bit 63 clear, a 31-bit version and a 32-bit
/// value (read back sign-extended, so that wrapping sums over keys come out as in `u64`).
///
/// A k-key commit (the cell `mcas+pin` of the floor measurement, reproduced here): inside a
/// crossbeam-epoch pin, load the k words and fail if one is claimed; claim them in key order
/// with a CAS from the word loaded to this thread's tag (`CLAIM` | the address of its
/// [`STATUS`]; on a failure, put back the words claimed so far and fail); decide with one CAS
/// on the status; install every word's successor (version + 1, new value) with a CAS from the
/// tag. 2k + 1 read-modify-writes on shared words, and nothing else.
///
/// No thread helps another: whoever finds a word claimed fails (a commit) or waits for it
/// (a read), so a thread stopped between its claims and its installs blocks the keys it
/// claimed, as a lock per key would. That costs nothing while nobody stops, which is what the
/// floor measures; the `stall` workload of `lockfree.rs` shows what it costs when one does.
/// A snapshot is a double collect: the words loaded twice, equal, none claimed.
pub struct Floor(Vec<Line>);

impl Floor {
    #[inline]
    fn word(&self, key: u64) -> &AtomicU64 {
        &self.0[key as usize].0
    }

    /// The value of an unclaimed word.
    #[inline]
    fn value(word: u64) -> u64 {
        word as u32 as i32 as i64 as u64
    }

    /// One attempt at the k-key commit described on [`Floor`]: `keys` distinct and in
    /// increasing order, key `i`'s new value `update(i, value)`. `pause` runs after the first
    /// claim (a committer stalled there, in the `stall` workload). False on a conflict.
    #[inline]
    fn mcas(&self, keys: &[u64], update: impl Fn(usize, u64) -> u64, pause: impl FnOnce()) -> bool {
        assert!(
            keys.len() <= FLOOR_MAX_KEYS,
            "the floor commits at most {FLOOR_MAX_KEYS} keys at once"
        );
        let _pin = epoch::pin();
        let mut seen = [0u64; FLOOR_MAX_KEYS];
        for (i, &key) in keys.iter().enumerate() {
            seen[i] = self.word(key).load(Ordering::Acquire);
            if seen[i] & CLAIM != 0 {
                return false;
            }
        }
        STATUS.with(|status| {
            let tag = CLAIM | std::ptr::from_ref(status) as u64;
            status.0.store(0, Ordering::Relaxed);
            let mut pause = Some(pause);
            for (i, &key) in keys.iter().enumerate() {
                let claimed = self.word(key).compare_exchange(
                    seen[i],
                    tag,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                if claimed.is_err() {
                    for (&key, &word) in keys[..i].iter().zip(&seen) {
                        self.word(key).store(word, Ordering::Release);
                    }
                    return false;
                }
                if let Some(pause) = pause.take() {
                    pause();
                }
            }
            let _ = status
                .0
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire);
            for (i, &key) in keys.iter().enumerate() {
                let version = (seen[i] + VERSION_ONE) & !CLAIM & !VALUE_BITS;
                let next = version | (update(i, Self::value(seen[i])) & VALUE_BITS);
                let _ =
                    self.word(key)
                        .compare_exchange(tag, next, Ordering::AcqRel, Ordering::Acquire);
            }
            true
        })
    }

    /// One attempt at a transfer (`from != to`), `pause` as in [`mcas`](Self::mcas).
    #[inline]
    fn try_transfer_pausing(&self, from: u64, to: u64, amount: u64, pause: impl FnOnce()) -> bool {
        let keys = [from.min(to), from.max(to)];
        self.mcas(
            &keys,
            |i, value| {
                if keys[i] == from {
                    value.wrapping_sub(amount)
                } else {
                    value.wrapping_add(amount)
                }
            },
            pause,
        )
    }

    /// Retries `attempt` until it lands, waiting as `backoff` says after each failure.
    #[inline]
    fn retried(backoff: Backoff, mut attempt: impl FnMut() -> bool) -> Tries {
        let mut tries = Tries::default();
        loop {
            tries.attempts += 1;
            if attempt() {
                return tries;
            }
            tries.conflicts += 1;
            backoff.wait(tries.conflicts);
        }
    }
}

impl Kv for Floor {
    const NAME: &'static str = "floor";

    fn new(keys: usize, initial: u64) -> Self {
        let word = VERSION_ONE | (initial & VALUE_BITS);
        Floor((0..keys).map(|_| Line(AtomicU64::new(word))).collect())
    }

    /// Waits while the word is claimed: the floor has no descriptor to read the value from.
    #[inline]
    fn read(&self, key: u64) -> u64 {
        let _pin = epoch::pin();
        let word = self.word(key);
        let mut failures = 0;
        loop {
            let current = word.load(Ordering::Acquire);
            if current & CLAIM == 0 {
                return Self::value(current);
            }
            failures += 1;
            Backoff::Exponential.wait(failures);
        }
    }

    fn incr(&self, key: u64, backoff: Backoff) -> Tries {
        Self::retried(backoff, || {
            self.mcas(&[key], |_, value| value.wrapping_add(1), || {})
        })
    }

    fn transfer(&self, from: u64, to: u64, amount: u64, backoff: Backoff) -> Tries {
        Self::retried(backoff, || {
            self.try_transfer_pausing(from, to, amount, || {})
        })
    }

    fn snapshot(&self, keys: &[u64], out: &mut Vec<u64>) -> Tries {
        let _pin = epoch::pin();
        Self::retried(Backoff::Exponential, || {
            out.clear();
            out.extend(
                keys.iter()
                    .map(|&key| self.word(key).load(Ordering::Acquire)),
            );
            let still = out.iter().zip(keys).all(|(&word, &key)| {
                word & CLAIM == 0 && self.word(key).load(Ordering::Acquire) == word
            });
            if still {
                out.iter_mut().for_each(|word| *word = Self::value(*word));
            }
            still
        })
    }

    fn write_all(&self, keys: &[u64], backoff: Backoff) -> Tries {
        assert!(
            keys.len() <= FLOOR_MAX_KEYS,
            "the floor commits at most {FLOOR_MAX_KEYS} keys at once"
        );
        let mut sorted = [0u64; FLOOR_MAX_KEYS];
        let sorted = &mut sorted[..keys.len()];
        sorted.copy_from_slice(keys);
        sorted.sort_unstable();
        Self::retried(backoff, || {
            self.mcas(sorted, |_, value| value.wrapping_add(1), || {})
        })
    }
}

// ---------------------------------------------------------------------------------------------
// One ArcSwap per key.

/// One `ArcSwap<(version, value)>` per key in a fixed array: the bare per-key CAS of a
/// copy-on-write record (one allocation per write, freed through arc-swap's debts).
pub struct ArcSwapCell(Vec<ArcSwap<(u64, u64)>>);

impl ArcSwapCell {
    /// One CAS of one key from the record just loaded to its successor; false on a conflict.
    #[inline]
    fn cas_incr(slot: &ArcSwap<(u64, u64)>) -> bool {
        let current = slot.load();
        let next = Arc::new((current.0 + 1, current.1.wrapping_add(1)));
        let previous = slot.compare_and_swap(&current, next);
        Arc::ptr_eq(&previous, &current)
    }
}

impl Kv for ArcSwapCell {
    const NAME: &'static str = "arcswap";
    const MULTI_KEY: bool = false;

    fn new(keys: usize, initial: u64) -> Self {
        ArcSwapCell(
            (0..keys)
                .map(|_| ArcSwap::from_pointee((1, initial)))
                .collect(),
        )
    }

    #[inline]
    fn read(&self, key: u64) -> u64 {
        self.0[key as usize].load().1
    }

    fn incr(&self, key: u64, backoff: Backoff) -> Tries {
        let slot = &self.0[key as usize];
        let mut tries = Tries::default();
        loop {
            tries.attempts += 1;
            if Self::cas_incr(slot) {
                return tries;
            }
            tries.conflicts += 1;
            backoff.wait(tries.conflicts);
        }
    }

    fn transfer(&self, _: u64, _: u64, _: u64, _: Backoff) -> Tries {
        unimplemented!("the ArcSwap cell has no multi-key operations")
    }

    fn snapshot(&self, _: &[u64], _: &mut Vec<u64>) -> Tries {
        unimplemented!("the ArcSwap cell has no multi-key operations")
    }

    /// One CAS per key, each retried on its own: not atomic, only the cost of k CASes.
    fn write_all(&self, keys: &[u64], backoff: Backoff) -> Tries {
        let mut tries = Tries::default();
        for &key in keys {
            tries.add(self.incr(key, backoff));
        }
        tries.attempts -= keys.len() as u64 - 1;
        tries
    }
}

// ---------------------------------------------------------------------------------------------
// Driver.

/// The criterion configuration every benchmark binary uses (no plots: the tables come from
/// `benches/report.py`).
pub fn config() -> criterion::Criterion {
    criterion::Criterion::default().without_plots()
}

/// A benchmark group with the multi-threaded benchmarks' settings: 10 samples, 0.5 s warm-up,
/// 2 s measurement.
pub fn group<'a>(
    c: &'a mut criterion::Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    group
}

/// Whether criterion runs in test mode (`cargo test --benches`, `cargo bench -- --test`): then
/// every benchmark runs once, and the benchmarks keep their setup small.
pub fn test_mode() -> bool {
    let args: Vec<String> = std::env::args().collect();
    !args.iter().any(|arg| arg == "--bench") || args.iter().any(|arg| arg == "--test")
}

/// A fast per-thread random number generator (xorshift64*): the workloads' key choice must
/// cost the same for every implementation and touch no shared state.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n a power of two or not: the bias is negligible here).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// A different random stream for every thread of every run.
pub fn rng(thread: usize) -> Rng {
    static RUN: AtomicU64 = AtomicU64::new(0);
    Rng::new(RUN.fetch_add(1, Ordering::Relaxed) << 8 | thread as u64)
}

/// Runs `work(thread index)` on `threads` threads started together on a barrier, and returns
/// the wall time from the start to the last thread's end.
pub fn run_threads<F>(threads: usize, work: F) -> Duration
where
    F: Fn(usize) + Sync,
{
    let barrier = Barrier::new(threads + 1);
    thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|index| {
                let (barrier, work) = (&barrier, &work);
                scope.spawn(move || {
                    barrier.wait();
                    work(index);
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for handle in handles {
            handle.join().expect("benchmark thread panicked");
        }
        start.elapsed()
    })
}

/// Operations per thread per iteration of the multi-threaded workloads (`contention.rs`,
/// `transactions.rs`).
pub const OPS: u64 = 5_000;

/// Accounts of the `transfer` workload.
pub const ACCOUNTS: u64 = 64;
/// What every account (and every key of the `snapshot` workload) starts with.
pub const BALANCE: u64 = 1_000;

/// The `transfer` workload (`contention.rs`, `transactions.rs`): [`OPS`] transfers of 1 per
/// thread per iteration between two distinct random accounts of [`ACCOUNTS`], on `threads`
/// threads, as `label` in group `name`; then checks that the total is unchanged.
pub fn bench_transfer<K: Kv>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    label: &str,
    threads: usize,
) {
    let kv = K::new(ACCOUNTS as usize, BALANCE);
    bench_ops(group, name, label, threads, &kv, |kv, rng| {
        let from = rng.below(ACCOUNTS);
        let to = (from + 1 + rng.below(ACCOUNTS - 1)) % ACCOUNTS;
        kv.transfer(from, to, 1, Backoff::Exponential)
    });
    let mut total = Vec::new();
    kv.snapshot(&(0..ACCOUNTS).collect::<Vec<_>>(), &mut total);
    assert_eq!(
        total.iter().fold(0u64, |sum, v| sum.wrapping_add(*v)),
        ACCOUNTS * BALANCE,
        "{label}: transfers must keep the total"
    );
}

/// Runs `op(kv, rng)` [`OPS`] times per iteration on each of `threads` threads (each with its
/// own [`rng`]), and prints the attempt counts as `name/label/threads`.
pub fn bench_ops<K: Kv>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    label: &str,
    threads: usize,
    kv: &K,
    op: impl Fn(&K, &mut Rng) -> Tries + Sync,
) {
    let counts = Counts::default();
    group.throughput(criterion::Throughput::Elements(OPS * threads as u64));
    group.bench_function(criterion::BenchmarkId::new(label, threads), |b| {
        b.iter_custom(|iters| {
            run_threads(threads, |thread| {
                let mut rng = rng(thread);
                let mut tries = Tries::default();
                let ops = iters * OPS;
                for _ in 0..ops {
                    tries.add(op(kv, &mut rng));
                }
                counts.add(ops, tries);
            })
        })
    });
    counts.print(&format!("{name}/{label}/{threads}"));
}

/// Attempt counts summed over every run of one benchmark (warm-up included), printed once.
#[derive(Default)]
pub struct Counts {
    ops: AtomicU64,
    attempts: AtomicU64,
    conflicts: AtomicU64,
    busy: AtomicU64,
    /// Side counts a benchmark wants to print (e.g. the snapshot writer's transfers).
    side: StdMutex<Vec<(&'static str, u64)>>,
}

impl Counts {
    /// Adds one thread's totals for `ops` operations.
    pub fn add(&self, ops: u64, tries: Tries) {
        self.ops.fetch_add(ops, Ordering::Relaxed);
        self.attempts.fetch_add(tries.attempts, Ordering::Relaxed);
        self.conflicts.fetch_add(tries.conflicts, Ordering::Relaxed);
        self.busy.fetch_add(tries.busy, Ordering::Relaxed);
    }

    /// Adds to a named side count.
    pub fn add_side(&self, name: &'static str, value: u64) {
        let mut side = self.side.lock().expect("counts lock");
        match side.iter_mut().find(|(n, _)| *n == name) {
            Some((_, total)) => *total += value,
            None => side.push((name, value)),
        }
    }

    /// Prints one line to stderr: `TRIES <id> ops=.. attempts=.. conflicts=.. busy=..
    /// busy_share=..%`, which `benches/report.py` reads back. Nothing if the benchmark did not
    /// run (filtered out).
    pub fn print(&self, id: &str) {
        let ops = self.ops.load(Ordering::Relaxed);
        if ops == 0 {
            return; // filtered out
        }
        let attempts = self.attempts.load(Ordering::Relaxed);
        let conflicts = self.conflicts.load(Ordering::Relaxed);
        let busy = self.busy.load(Ordering::Relaxed);
        let share = |n: u64| {
            if attempts == 0 {
                0.0
            } else {
                100.0 * n as f64 / attempts as f64
            }
        };
        let mut line = format!(
            "TRIES {id} ops={ops} attempts={attempts} conflicts={conflicts} \
             conflict_share={:.3}% busy={busy} busy_share={:.4}%",
            share(conflicts),
            share(busy)
        );
        for (name, value) in self.side.lock().expect("counts lock").iter() {
            line.push_str(&format!(" {name}={value}"));
        }
        eprintln!("{line}");
    }
}

/// A stop flag for background threads (the snapshot workload's writer).
#[derive(Default)]
pub struct Stop(AtomicBool);

impl Stop {
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
