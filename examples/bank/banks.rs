//! The ways to keep the bank's accounts, each behind the same small traits: the store through
//! its handles and through `atomically`, and a `HashMap` behind one `parking_lot::Mutex`, used in
//! one critical section per transfer or in two (read, then check and write).

use std::thread;

use parking_lot::{Condvar, Mutex};
use stm_store::{Error, Store};

/// The mutex maps hash with the store's own default hasher (foldhash), so the comparison is of
/// the ways to share the accounts, not of the hash functions.
type HashMap<K, V> = std::collections::HashMap<K, V, stm_store::DefaultHasher>;

pub const START_BALANCE: i64 = 1_000;

/// Scene 4: the account waited on, and what the waiting thread takes out of it at once.
pub const POT: u64 = 0;
pub const PAYOUT: i64 = 100;
/// On the store, the key that tells the waiting thread that the bank closed.
const CLOSED: u64 = u64::MAX;

/// What a bank needs from the way its accounts are kept.
pub trait Bank: Sync {
    /// The name in the tables, and what it is.
    const NAME: &'static str;
    const WHAT: &'static str;

    /// A bank of `accounts` accounts of `START_BALANCE`.
    fn open(accounts: u64) -> Self;
    /// Moves `amount` from `from` to `to` if `from` holds it (else changes nothing), atomically,
    /// redoing it until it lands. Returns how many times it was redone after a conflict.
    fn transfer(&self, from: u64, to: u64, amount: i64) -> u64;
    /// The total of accounts `0..accounts`, from one consistent snapshot; `alternate` picks
    /// the other way of taking it, where there are two.
    fn audit(&self, accounts: u64, alternate: bool) -> i64;
    /// The store only: commits that a thread finished for the thread that started them.
    fn finished_for_others(&self) -> Option<u64> {
        None
    }
}

/// A bank whose transfer can stop in the middle of its commit (scene 2).
pub trait Stopping: Bank {
    /// [`Bank::transfer`], each try calling `pause` in the middle of its commit.
    fn transfer_stopping(&self, from: u64, to: u64, amount: i64, pause: &dyn Fn()) -> u64;
}

/// A bank with a thread that waits until the pot holds `PAYOUT` (scene 4).
pub trait Waiting: Bank {
    /// How the waiting works.
    const HOW: &'static str;
    /// Moves `amount` from `from` into the pot if `from` holds it; true if it did.
    fn deposit(&self, from: u64, amount: i64) -> bool;
    /// Waits until the pot holds `PAYOUT`, then moves it to `to`, counting each look at the
    /// pot. False, with nothing moved, once the bank is closed.
    fn pay_out(&self, to: u64, looks: &mut u64) -> bool;
    /// Closes the bank: `pay_out` stops waiting.
    fn close(&self);
}

// ---------------------------------------------------------------------------------------------
// The store.

/// A store with `accounts` accounts of `START_BALANCE`, written in one commit.
fn funded_store(accounts: u64) -> Store<u64, i64> {
    let store = Store::new();
    let mut all = store.using(0..accounts).expect("using never fails");
    all.values_mut()
        .for_each(|account| account.set(START_BALANCE));
    all.commit().expect("nobody else is running yet");
    drop(all); // a handle holds its key until dropped
    store
}

/// The total of accounts `0..accounts` in `store`, from one `dump`.
fn dumped_total(store: &Store<u64, i64>, accounts: u64) -> i64 {
    let dump = store.dump();
    let balances = dump.iter().filter(|(key, _, _)| *key < accounts);
    balances.filter_map(|(_, _, balance)| *balance).sum()
}

/// The store through its handles.
pub struct Handles(Store<u64, i64>);

impl Handles {
    fn try_transfer(
        &self,
        from: u64,
        to: u64,
        amount: i64,
        pause: Option<&dyn Fn()>,
    ) -> Result<(), Error> {
        let mut pair = self.0.using([from, to])?;
        let balance = |account: u64| pair[&account].value().copied().unwrap_or(0);
        let (from_balance, to_balance) = (balance(from), balance(to));
        if from_balance >= amount {
            pair[&from].set(from_balance - amount);
            pair[&to].set(to_balance + amount);
        }
        // With nothing set, the commit still checks that both accounts are unchanged: the
        // decision not to transfer was taken on what was read.
        let Some(pause) = pause else {
            return pair.commit();
        };
        // A test hook: the commit stops after it took the first of its two accounts.
        let paused = pair.commit_paused(1);
        pause();
        paused.resume()
    }

    fn redo_until_done(&self, from: u64, to: u64, amount: i64, pause: Option<&dyn Fn()>) -> u64 {
        let mut redone = 0;
        // `BusyRetry` asks for the same call again, as a conflict asks to redo it: both loop.
        while self.try_transfer(from, to, amount, pause).is_err() {
            redone += 1;
        }
        redone
    }
}

impl Bank for Handles {
    const NAME: &'static str = "stm-store";
    const WHAT: &'static str =
        "this crate's handles: using([from, to]), set both, commit; redo on ConcurrentUpdate";

    fn open(accounts: u64) -> Self {
        Self(funded_store(accounts))
    }

    fn transfer(&self, from: u64, to: u64, amount: i64) -> u64 {
        self.redo_until_done(from, to, amount, None)
    }

    /// With `using` over every account, or (`alternate`) with `dump`.
    fn audit(&self, accounts: u64, alternate: bool) -> i64 {
        if alternate {
            return dumped_total(&self.0, accounts);
        }
        loop {
            if let Ok(all) = self.0.using(0..accounts) {
                let balances = all.iter().map(|(_, account)| account.value());
                return balances.map(|balance| balance.copied().unwrap_or(0)).sum();
            } // else BusyRetry: the same call may simply be repeated
        }
    }

    fn finished_for_others(&self) -> Option<u64> {
        Some(self.0.stats().helped)
    }
}

impl Stopping for Handles {
    /// Pauses after the commit took the first of its two accounts.
    fn transfer_stopping(&self, from: u64, to: u64, amount: i64, pause: &dyn Fn()) -> u64 {
        self.redo_until_done(from, to, amount, Some(pause))
    }
}

/// The store through `atomically`.
pub struct Atomically(Store<u64, i64>);

impl Bank for Atomically {
    const NAME: &'static str = "stm-store atomically";
    const WHAT: &'static str =
        "this crate's transactions: store.atomically(|tx| ..), run again for you on a conflict";

    fn open(accounts: u64) -> Self {
        Self(funded_store(accounts))
    }

    fn transfer(&self, from: u64, to: u64, amount: i64) -> u64 {
        self.0.atomically(|tx| {
            let from_balance = tx.get(&from)?.unwrap_or(0);
            let to_balance = tx.get(&to)?.unwrap_or(0);
            if from_balance >= amount {
                tx.set(&from, from_balance - amount)?;
                tx.set(&to, to_balance + amount)?;
            }
            Ok(u64::from(tx.attempt() - 1))
        })
    }

    /// With a transaction reading every account, or (`alternate`) with `dump`.
    fn audit(&self, accounts: u64, alternate: bool) -> i64 {
        if alternate {
            return dumped_total(&self.0, accounts);
        }
        self.0.atomically(|tx| {
            (0..accounts).try_fold(0, |total, account| {
                Ok(total + tx.get(&account)?.unwrap_or(0))
            })
        })
    }
}

impl Waiting for Atomically {
    const HOW: &'static str = "the waiting transaction calls tx.retry() while the pot holds \
less: it sleeps until a commit changes what it read; the depositor's code does not know that \
anyone waits";

    fn deposit(&self, from: u64, amount: i64) -> bool {
        self.0.atomically(|tx| {
            let balance = tx.get(&from)?.unwrap_or(0);
            if balance < amount {
                return Ok(false);
            }
            let pot = tx.get(&POT)?.unwrap_or(0);
            tx.set(&from, balance - amount)?;
            tx.set(&POT, pot + amount)?;
            Ok(true)
        })
    }

    fn pay_out(&self, to: u64, looks: &mut u64) -> bool {
        self.0.atomically(|tx| {
            *looks += 1;
            if tx.get(&CLOSED)?.is_some() {
                return Ok(false);
            }
            let pot = tx.get(&POT)?.unwrap_or(0);
            if pot < PAYOUT {
                return tx.retry(); // sleeps until the pot (or CLOSED) changes, then runs again
            }
            let balance = tx.get(&to)?.unwrap_or(0);
            tx.set(&POT, pot - PAYOUT)?;
            tx.set(&to, balance + PAYOUT)?;
            Ok(true)
        })
    }

    fn close(&self) {
        self.0.atomically(|tx| tx.set(&CLOSED, 1));
    }
}

// ---------------------------------------------------------------------------------------------
// The mutex maps.

/// Accounts to balances, each `START_BALANCE`.
fn funded_map<T>(accounts: u64, balance: impl Fn(i64) -> T) -> HashMap<u64, T> {
    (0..accounts)
        .map(|account| (account, balance(START_BALANCE)))
        .collect()
}

/// The whole transfer in one critical section.
pub struct MutexOne(Mutex<HashMap<u64, i64>>);

impl MutexOne {
    fn transfer_pausing(&self, from: u64, to: u64, amount: i64, pause: Option<&dyn Fn()>) {
        let mut map = self.0.lock();
        let (from_balance, to_balance) = (map[&from], map[&to]);
        if let Some(pause) = pause {
            pause();
        }
        if from_balance >= amount {
            map.insert(from, from_balance - amount);
            map.insert(to, to_balance + amount);
        }
    }
}

impl Bank for MutexOne {
    const NAME: &'static str = "mutex-one";
    const WHAT: &'static str = "a HashMap behind one parking_lot::Mutex, the whole transfer \
inside one lock: what most code does";

    fn open(accounts: u64) -> Self {
        Self(Mutex::new(funded_map(accounts, |balance| balance)))
    }

    fn transfer(&self, from: u64, to: u64, amount: i64) -> u64 {
        self.transfer_pausing(from, to, amount, None);
        0 // nothing changes under the lock
    }

    fn audit(&self, accounts: u64, _alternate: bool) -> i64 {
        let map = self.0.lock();
        (0..accounts).map(|account| map[&account]).sum()
    }
}

impl Stopping for MutexOne {
    /// Pauses holding the lock, between reading and writing.
    fn transfer_stopping(&self, from: u64, to: u64, amount: i64, pause: &dyn Fn()) -> u64 {
        self.transfer_pausing(from, to, amount, Some(pause));
        0
    }
}

/// Read under the lock, then lock again to check the versions read, and write.
pub struct MutexTwice(Mutex<HashMap<u64, (u64, i64)>>);

impl MutexTwice {
    fn try_transfer(
        &self,
        from: u64,
        to: u64,
        amount: i64,
        pause: Option<&dyn Fn()>,
    ) -> Result<(), Error> {
        let read = {
            let map = self.0.lock();
            [map[&from], map[&to]]
        };
        let [(from_version, from_balance), (to_version, to_balance)] = read;
        let mut map = self.0.lock();
        if map[&from].0 != from_version || map[&to].0 != to_version {
            return Err(Error::ConcurrentUpdate);
        }
        if let Some(pause) = pause {
            pause();
        }
        if from_balance >= amount {
            map.insert(from, (from_version + 1, from_balance - amount));
            map.insert(to, (to_version + 1, to_balance + amount));
        }
        Ok(())
    }

    fn redo_until_done(&self, from: u64, to: u64, amount: i64, pause: Option<&dyn Fn()>) -> u64 {
        let mut redone = 0;
        while self.try_transfer(from, to, amount, pause).is_err() {
            redone += 1;
        }
        redone
    }
}

impl Bank for MutexTwice {
    const NAME: &'static str = "mutex";
    const WHAT: &'static str = "the same map with versions: read under the lock, then lock again \
to check that nothing changed and write; an optimistic store built on one lock, as Axon.STM is";

    fn open(accounts: u64) -> Self {
        Self(Mutex::new(funded_map(accounts, |balance| (1, balance))))
    }

    fn transfer(&self, from: u64, to: u64, amount: i64) -> u64 {
        self.redo_until_done(from, to, amount, None)
    }

    fn audit(&self, accounts: u64, _alternate: bool) -> i64 {
        let map = self.0.lock();
        (0..accounts).map(|account| map[&account].1).sum()
    }
}

impl Stopping for MutexTwice {
    /// Pauses holding the lock, between checking the versions and writing.
    fn transfer_stopping(&self, from: u64, to: u64, amount: i64, pause: &dyn Fn()) -> u64 {
        self.redo_until_done(from, to, amount, Some(pause))
    }
}

/// `mutex-one`'s map with a flag that closes the bank, and a `Condvar` for the waiting thread,
/// which sleeps on it or (`POLL`) polls.
pub struct Waited<const POLL: bool> {
    accounts: Mutex<(HashMap<u64, i64>, bool)>,
    changed: Condvar,
}

impl<const POLL: bool> Bank for Waited<POLL> {
    const NAME: &'static str = if POLL {
        "mutex, polling"
    } else {
        "mutex + condvar"
    };
    const WHAT: &'static str = MutexOne::WHAT;

    fn open(accounts: u64) -> Self {
        Self {
            accounts: Mutex::new((funded_map(accounts, |balance| balance), false)),
            changed: Condvar::new(),
        }
    }

    fn transfer(&self, from: u64, to: u64, amount: i64) -> u64 {
        let map = &mut self.accounts.lock().0;
        let (from_balance, to_balance) = (map[&from], map[&to]);
        if from_balance >= amount {
            map.insert(from, from_balance - amount);
            map.insert(to, to_balance + amount);
        }
        0
    }

    fn audit(&self, accounts: u64, _alternate: bool) -> i64 {
        let map = &self.accounts.lock().0;
        (0..accounts).map(|account| map[&account]).sum()
    }
}

impl<const POLL: bool> Waiting for Waited<POLL> {
    const HOW: &'static str = if POLL {
        "mutex-one's map; the waiting thread locks it, looks, unlocks it and yields, until the \
money is there"
    } else {
        "mutex-one's map; the waiting thread sleeps on a Condvar, which every deposit must notify"
    };

    fn deposit(&self, from: u64, amount: i64) -> bool {
        let map = &mut self.accounts.lock().0;
        let balance = map[&from];
        if balance < amount {
            return false;
        }
        map.insert(from, balance - amount);
        *map.get_mut(&POT).expect("the pot is an account") += amount;
        if !POLL {
            self.changed.notify_one();
        }
        true
    }

    fn pay_out(&self, to: u64, looks: &mut u64) -> bool {
        let mut accounts = self.accounts.lock();
        loop {
            *looks += 1;
            let (map, closed) = &mut *accounts;
            if *closed {
                return false;
            }
            if map[&POT] >= PAYOUT {
                *map.get_mut(&POT).expect("the pot is an account") -= PAYOUT;
                *map.get_mut(&to).expect("accounts stay") += PAYOUT;
                return true;
            }
            if POLL {
                drop(accounts);
                thread::yield_now();
                accounts = self.accounts.lock();
            } else {
                self.changed.wait(&mut accounts);
            }
        }
    }

    fn close(&self) {
        self.accounts.lock().1 = true;
        self.changed.notify_all();
    }
}
