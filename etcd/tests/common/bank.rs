//! The bank workload over the etcd store, shared by the multi-process and fault tests and the
//! bank example: transfers between accounts, each also counting itself in its worker's ledger
//! key in the same commit, so that a transfer applied twice or lost shows as a ledger that
//! does not match the worker's own count.
#![allow(dead_code)]

use stm_store::Error::{BusyRetry, ConcurrentUpdate};
use stm_store_etcd::blocking::EtcdStore;
use stm_store_etcd::Error;

/// Every account's opening balance.
pub const OPENING: i64 = 1_000;

pub fn account(i: usize) -> String {
    format!("acct/{i:04}")
}

pub fn ledger(worker: usize) -> String {
    format!("ledger/{worker:04}")
}

/// Opens `accounts` accounts at [`OPENING`] in one commit (once: a second call finds them
/// open and does nothing).
pub fn open(store: &EtcdStore<String, i64>, accounts: usize) -> Result<(), Error> {
    loop {
        let mut c = store.using((0..accounts).map(account))?;
        if c.iter().all(|(_, v)| v.version() > 0) {
            return Ok(());
        }
        for v in c.values_mut() {
            v.set(OPENING);
        }
        match c.commit() {
            Ok(()) => return Ok(()),
            Err(e) if e == ConcurrentUpdate || e == BusyRetry => continue,
            Err(e) => return Err(e),
        }
    }
}

/// What one worker saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub commits: u64,
    pub conflicts: u64,
    pub busy: u64,
    pub unknown: u64,
}

impl Tally {
    pub fn line(&self, who: &str) -> String {
        format!(
            "{who}: commits {} conflicts {} busy {} unknown {}",
            self.commits, self.conflicts, self.busy, self.unknown
        )
    }

    pub fn parse(line: &str) -> Option<(String, Tally)> {
        let (who, rest) = line.split_once(": commits ")?;
        let mut n = rest
            .split(' ')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, s)| s.parse::<u64>());
        let tally = Tally {
            commits: n.next()?.ok()?,
            conflicts: n.next()?.ok()?,
            busy: n.next()?.ok()?,
            unknown: n.next()?.ok()?,
        };
        Some((who.to_string(), tally))
    }
}

/// A small deterministic generator (xorshift64*), so the workload needs no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// One transfer attempt by `worker`: reads two accounts and its ledger at one revision, moves
/// 1..=10 from one to the other and counts itself in the ledger, all in one commit.
/// `BusyRetry` and `ConcurrentUpdate` are counted and end the attempt (nothing was written;
/// the next attempt re-reads). `OutcomeUnknown` is counted and the same commit is repeated
/// until its outcome is known (it may have landed: re-reading and redoing could apply it
/// twice). `answered` is called at each of these error answers, as it comes. Returns whether
/// the transfer landed.
pub fn transfer(
    store: &EtcdStore<String, i64>,
    worker: usize,
    accounts: usize,
    rng: &mut Rng,
    tally: &mut Tally,
    answered: &mut dyn FnMut(&Error),
) -> Result<bool, Error> {
    let from = rng.below(accounts as u64) as usize;
    let to = (from + 1 + rng.below(accounts as u64 - 1) as usize) % accounts;
    let amount = 1 + rng.below(10) as i64;
    let mut c = match store.using([account(from), account(to), ledger(worker)]) {
        Ok(c) => c,
        Err(e) if e == BusyRetry => {
            tally.busy += 1;
            answered(&e);
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    let balance = |c: &stm_store_etcd::blocking::Collection<String, i64>, k: &str| {
        c[k].value().copied().unwrap_or(0)
    };
    let (a, b, n) = (
        balance(&c, &account(from)),
        balance(&c, &account(to)),
        balance(&c, &ledger(worker)),
    );
    c[account(from).as_str()].set(a - amount);
    c[account(to).as_str()].set(b + amount);
    c[ledger(worker).as_str()].set(n + 1);
    loop {
        match c.commit() {
            Ok(()) => {
                tally.commits += 1;
                return Ok(true);
            }
            Err(e) if e == ConcurrentUpdate => {
                tally.conflicts += 1;
                answered(&e);
                return Ok(false);
            }
            Err(e) if e == BusyRetry => {
                tally.busy += 1;
                answered(&e);
                return Ok(false);
            }
            Err(Error::OutcomeUnknown) => {
                tally.unknown += 1;
                answered(&Error::OutcomeUnknown);
            }
            Err(e) => return Err(e),
        }
    }
}

/// One audit: every account at one revision; their total. `None` on `BusyRetry`.
pub fn audit(store: &EtcdStore<String, i64>, accounts: usize) -> Result<Option<i64>, Error> {
    match store.using((0..accounts).map(account)) {
        Ok(c) => Ok(Some(
            c.iter().map(|(_, v)| v.value().copied().unwrap_or(0)).sum(),
        )),
        Err(e) if e == BusyRetry => Ok(None),
        Err(e) => Err(e),
    }
}

/// Each worker's ledger as the store has it.
pub fn ledgers(store: &EtcdStore<String, i64>, workers: usize) -> Result<Vec<i64>, Error> {
    let c = store.using((0..workers).map(ledger))?;
    Ok(c.iter()
        .map(|(_, v)| v.value().copied().unwrap_or(0))
        .collect())
}
