//! Randomized runs of the in-process store: threads that mix every operation the store has on a
//! handful of keys, recorded, then checked.
//!
//! Every write writes a value never written before (the thread's number and a counter), so a
//! read names the write it saw. Threads keep handles for a while before committing them, so
//! stale handles meet `ConcurrentUpdate`; stalled commits (`commit_paused`) stay claimed while
//! their thread does a few other operations, so that other threads meet the claims and help
//! them, and are then resumed or dropped (an outcome nobody reports: recorded as unknown).
//! Removal and creating keys again are in the mix too.

use std::collections::{HashMap, VecDeque};

use stm_store::{Stats, Store};

use crate::history::{Clock, History, Op};
use crate::record::{Handle, Handles, Recorder};

/// Keys and values of the runs.
pub type Key = u32;
/// Values: `(thread + 1) << 40 | n`, each written once.
pub type Val = u64;

/// What a run does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Client threads.
    pub threads: usize,
    /// Keys `0..keys`.
    pub keys: u32,
    /// Operations to record, over all threads.
    pub ops: usize,
    /// Seeds every choice (the interleaving is the machine's).
    pub seed: u64,
    /// `Value::remove` and `Tx::remove` in the mix.
    pub removal: bool,
    /// Stalled commits (`commit_paused`) in the mix.
    pub pauses: bool,
    /// `dump` and `snapshot` in the mix (they see every key, so the checker cannot split the
    /// history by keys).
    pub whole_store_reads: bool,
    /// Keys fall into this many groups (`key % groups`), and no operation touches keys of two
    /// groups (but `dump` and `snapshot`): with more than one, the checker can check the groups
    /// apart.
    pub groups: u32,
    /// Contention on purpose: every operation touches all the keys of its group (multi-key
    /// commits from fresh reads, `using` of the whole group, `dump`), so that reads overlap
    /// commits on the same keys as often as possible.
    pub contended: bool,
    /// A deliberate bug, to show that the checker catches it: `get` goes through a per-thread
    /// cache that keeps the value read last past later commits (see [`StaleCache`]).
    pub stale_gets: bool,
}

impl Config {
    /// A run of `threads` threads on `keys` keys, `ops` operations in all, everything in the
    /// mix.
    pub fn new(threads: usize, keys: u32, ops: usize, seed: u64) -> Self {
        Self {
            threads,
            keys,
            ops,
            seed,
            removal: true,
            pauses: true,
            whole_store_reads: true,
            groups: 1,
            contended: false,
            stale_gets: false,
        }
    }

    /// A configuration drawn from `seed`: 2-8 threads, 2-8 keys, `ops` operations, each kind of
    /// operation in the mix most of the time.
    pub fn random(seed: u64, ops: usize) -> Self {
        let mut rng = Rng::new(seed);
        Self {
            threads: 2 + rng.below(7) as usize,
            keys: 2 + rng.below(7) as u32,
            ops,
            seed,
            removal: rng.below(4) != 0,
            pauses: rng.below(4) != 0,
            whole_store_reads: rng.below(3) != 0,
            groups: 1,
            contended: rng.below(4) == 0,
            stale_gets: false,
        }
    }
}

/// splitmix64: small and deterministic.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Runs `config`, recording every operation, and returns the history with what the store
/// counted (commits helped to their end by another thread, among others).
pub fn record(config: &Config) -> (History<Key, Val>, Stats) {
    assert!(
        config.threads > 0 && config.keys > 0,
        "a run needs threads and keys"
    );
    let store: Store<Key, Val> = Store::new();
    let clock = Clock::start();
    let per_thread = config.ops.div_ceil(config.threads);
    let logs = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..config.threads)
            .map(|thread| {
                let log = clock.log(thread as u32);
                let store = &store;
                let config = config.clone();
                scope.spawn(move || {
                    let mut client = Client::new(store, log, thread, &config);
                    while client.recorder.len() < per_thread {
                        client.step(true);
                    }
                    client.finish()
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("a client thread panicked"))
            .collect::<Vec<_>>()
    });
    (History::from_logs(logs), store.stats())
}

/// The deliberate bug of [`Config::stale_gets`]: a `get` answered from a copy of the value this
/// thread read last, kept past any commit since (as a careless cache in front of the store
/// would). Half of the gets of a key read before take the copy.
#[derive(Default)]
pub struct StaleCache {
    copies: HashMap<Key, Option<(u64, Option<Val>)>>,
}

impl StaleCache {
    /// `Store::get` through the cache, recorded as the caller saw it.
    pub fn get(
        &mut self,
        recorder: &mut Recorder<'_, Key, Val>,
        key: Key,
        rng: &mut Rng,
    ) -> Option<(u64, Option<Val>)> {
        match self.copies.get(&key) {
            Some(copy) if rng.chance(50) => {
                let log = recorder.log_mut();
                let call = log.now();
                let found = *copy;
                let ret = log.now();
                log.push_as(log.client(), call, ret, Op::Get { key, found });
                found
            }
            _ => {
                let found = recorder.get(&key);
                self.copies.insert(key, found);
                found
            }
        }
    }
}

/// One client thread: its recorder, the handles it holds, its choices.
struct Client<'s> {
    recorder: Recorder<'s, Key, Val>,
    rng: Rng,
    thread: usize,
    written: u64,
    keys: u32,
    config: Config,
    handles: VecDeque<Handle<'s, Key, Val>>,
    collections: VecDeque<Handles<'s, Key, Val>>,
    cache: StaleCache,
}

impl<'s> Client<'s> {
    fn new(
        store: &'s Store<Key, Val>,
        log: crate::history::Log<Key, Val>,
        thread: usize,
        config: &Config,
    ) -> Self {
        Self {
            recorder: Recorder::new(store, log),
            rng: Rng::new(
                config
                    .seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add(thread as u64),
            ),
            thread,
            written: 0,
            keys: config.keys,
            config: config.clone(),
            handles: VecDeque::new(),
            collections: VecDeque::new(),
            cache: StaleCache::default(),
        }
    }

    fn finish(self) -> crate::history::Log<Key, Val> {
        drop(self.handles);
        drop(self.collections);
        self.recorder.into_log()
    }

    /// A value never written before.
    fn fresh(&mut self) -> Val {
        self.written += 1;
        ((self.thread as u64 + 1) << 40) | self.written
    }

    fn key(&mut self) -> Key {
        self.rng.below(u64::from(self.keys)) as Key
    }

    /// The keys of one group, chosen at random.
    fn group(&mut self) -> Vec<Key> {
        let groups = self.config.groups.clamp(1, self.keys);
        let group = self.rng.below(u64::from(groups)) as u32;
        (0..self.keys).filter(|key| key % groups == group).collect()
    }

    /// 1 to 3 distinct keys of one group (fewer if it has fewer).
    fn some_keys(&mut self) -> Vec<Key> {
        let group = self.group();
        self.some_keys_of(group)
    }

    /// 1 to 3 distinct keys of `group` (fewer if it has fewer).
    fn some_keys_of(&mut self, mut group: Vec<Key>) -> Vec<Key> {
        let n = 1 + self.rng.below(3.min(group.len() as u64)) as usize;
        let mut keys = Vec::new();
        while keys.len() < n {
            let at = self.rng.below(group.len() as u64) as usize;
            keys.push(group.swap_remove(at));
        }
        keys
    }

    /// One operation (or a few: a stalled commit brackets others), chosen at random.
    fn step(&mut self, may_pause: bool) {
        if self.config.contended {
            return self.contended_step(may_pause);
        }
        let roll = self.rng.below(100);
        match roll {
            0..=9 => {
                let key = self.key();
                let handle = self.recorder.usevar(key);
                self.handles.push_back(handle);
                if self.handles.len() > 3 {
                    self.handles.pop_front();
                }
            }
            10..=19 => {
                let keys = self.some_keys();
                let handles = self.recorder.using(keys);
                self.collections.push_back(handles);
                if self.collections.len() > 2 {
                    self.collections.pop_front();
                }
            }
            20..=36 => self.commit_handle(),
            37..=51 => self.commit_collection(),
            52..=57 if may_pause && self.config.pauses => self.stalled_commit(),
            52..=68 => self.transaction(),
            69..=86 => {
                let key = self.key();
                if self.config.stale_gets {
                    self.cache.get(&mut self.recorder, key, &mut self.rng);
                } else {
                    self.recorder.get(&key);
                }
            }
            87..=92 if self.config.whole_store_reads => {
                if self.rng.chance(50) {
                    self.recorder.dump();
                } else {
                    self.recorder.snapshot();
                }
            }
            _ => {
                // Let go of a handle or collection (a removed key is freed once nobody holds it).
                if self.rng.chance(50) {
                    self.handles.pop_front();
                } else {
                    self.collections.pop_front();
                }
            }
        }
    }

    /// One operation on all the keys of a group: a read-modify-write commit, a read, a
    /// stalled commit, a transaction, or a whole-store read.
    fn contended_step(&mut self, may_pause: bool) {
        let keys = self.group();
        match self.rng.below(100) {
            0..=39 => {
                let mut handles = self.recorder.using(keys);
                self.prepare(&mut handles);
                let _ = self.recorder.commit_all(&mut handles);
            }
            40..=69 => {
                self.recorder.using(keys);
            }
            70..=74 if may_pause && self.config.pauses => self.stalled_commit(),
            70..=84 => self.transaction(),
            _ if self.config.whole_store_reads => {
                self.recorder.dump();
            }
            _ => {
                self.recorder.using(keys);
            }
        }
    }

    /// What to do to one handle before a commit: set (most often), clear, remove, or nothing
    /// (the commit then only validates it).
    fn change(&mut self) -> Change {
        match self.rng.below(100) {
            0..=59 => Change::Set(self.fresh()),
            60..=69 => Change::Clear,
            70..=81 if self.config.removal => Change::Remove,
            _ => Change::Keep,
        }
    }

    fn commit_handle(&mut self) {
        if self.handles.is_empty() {
            let key = self.key();
            let handle = self.recorder.usevar(key);
            self.handles.push_back(handle);
        }
        let at = self.rng.below(self.handles.len() as u64) as usize;
        let change = self.change();
        let mut handle = self.handles.remove(at).expect("in range");
        match change {
            Change::Set(value) => handle.set(value),
            Change::Clear => handle.clear(),
            Change::Remove => handle.remove(),
            Change::Keep => {}
        }
        let _ = self.recorder.commit(&mut handle);
        self.handles.push_back(handle);
    }

    fn prepare(&mut self, handles: &mut Handles<'s, Key, Val>) {
        let keys: Vec<Key> = handles.keys().copied().collect();
        for key in keys {
            match self.change() {
                Change::Set(value) => handles.set(&key, value),
                Change::Clear => handles.clear(&key),
                Change::Remove => handles.remove(&key),
                Change::Keep => {}
            }
        }
    }

    fn commit_collection(&mut self) {
        if self.collections.is_empty() {
            let keys = self.some_keys();
            let handles = self.recorder.using(keys);
            self.collections.push_back(handles);
        }
        let at = self.rng.below(self.collections.len() as u64) as usize;
        let mut handles = self.collections.remove(at).expect("in range");
        self.prepare(&mut handles);
        let _ = self.recorder.commit_all(&mut handles);
        self.collections.push_back(handles);
    }

    /// A commit stalled after claiming some of its keys while this thread does 1 to 4 other
    /// operations, then resumed (most often) or dropped.
    fn stalled_commit(&mut self) {
        let keys = self.some_keys();
        let mut handles = self.recorder.using(keys);
        self.prepare(&mut handles);
        let claims = 1 + self.rng.below(handles.len() as u64) as usize;
        let paused = self.recorder.commit_paused(&mut handles, claims);
        for _ in 0..1 + self.rng.below(4) {
            self.step(false);
        }
        if self.rng.chance(70) {
            let _ = self.recorder.resume(paused);
        } else {
            self.recorder.abandon(paused);
        }
        self.collections.push_back(handles);
    }

    /// A transaction of one of four shapes: a transfer between two keys, a read of a few
    /// keys, a read-then-write of one key (removing it now and then), or blind writes.
    fn transaction(&mut self) {
        let shape = self.rng.below(4);
        let group = self.group();
        let keys = self.some_keys_of(group.clone());
        // The transfer's second key: the next one in the group.
        let at = group
            .iter()
            .position(|k| *k == keys[0])
            .expect("in its group");
        let other = group[(at + 1) % group.len()];
        let removal = self.config.removal;
        let mut rng = self.rng.clone();
        self.rng.next_u64();
        let first = self.fresh();
        let second = self.fresh();
        self.recorder.atomically(|tx| {
            match shape {
                0 => {
                    // Values are unique: a transfer writes two new ones, after reading both.
                    tx.get(&keys[0])?;
                    tx.get(&other)?;
                    tx.set(&keys[0], first)?;
                    tx.set(&other, second)
                }
                1 => {
                    for key in &keys {
                        tx.get(key)?;
                    }
                    Ok(())
                }
                2 => match tx.get(&keys[0])? {
                    Some(value) if removal && value % 3 == 0 => tx.remove(&keys[0]),
                    Some(_) if rng.chance(20) => tx.clear(&keys[0]),
                    _ => tx.set(&keys[0], first),
                },
                _ => {
                    tx.set(&keys[0], first)?;
                    if keys.len() > 1 {
                        tx.set(&keys[1], second)?;
                    }
                    Ok(())
                }
            }
        });
    }
}

enum Change {
    Set(Val),
    Clear,
    Remove,
    Keep,
}

/// What a set of runs exercised, counted from their histories (and the stores' statistics), to
/// see that the mix does what it should.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Histories.
    pub histories: u64,
    /// Operations recorded.
    pub operations: u64,
    /// The longest history.
    pub longest: u64,
    /// Commits (handles and transactions) that landed.
    pub landed: u64,
    /// Handle commits that answered `ConcurrentUpdate`.
    pub conflicts: u64,
    /// Stalled commits (resumed or dropped).
    pub stalled: u64,
    /// Stalled commits dropped (outcome unknown).
    pub dropped: u64,
    /// Multi-key commits another thread finished on their owner's behalf.
    pub helped: u64,
    /// Removals that landed (handles and transactions).
    pub removals: u64,
    /// Keys created again after a removal, as reads saw them (a version that no commit wrote,
    /// above a removal of the key).
    pub recreated: u64,
    /// `dump` and `snapshot` calls.
    pub whole_store_reads: u64,
    /// Runs of transactions that did not commit (their reads checked too).
    pub abandoned_runs: u64,
}

impl Tally {
    /// Adds one run.
    pub fn add(&mut self, history: &History<Key, Val>, stats: &Stats) {
        use crate::history::{Outcome, Write};
        self.histories += 1;
        self.operations += history.len() as u64;
        self.longest = self.longest.max(history.len() as u64);
        self.helped += stats.helped;
        // (key, version) written by a commit that landed, and each key's first removal.
        let mut written = std::collections::HashSet::new();
        let mut removed: HashMap<Key, u64> = HashMap::new();
        let mut seen = Vec::new();
        let mut removals = 0;
        for event in &history.events {
            let stalled = event.client >= crate::record::PAUSED_CLIENT;
            let mut landed = |key: Key, version: u64, write: Option<&Write<Val>>| match write {
                Some(Write::Remove) => {
                    removals += 1;
                    let first = removed.entry(key).or_insert(version + 1);
                    *first = (*first).min(version + 1);
                }
                Some(_) => {
                    written.insert((key, version + 1));
                }
                None => {}
            };
            match &event.op {
                Op::Commit { parts, outcome } => {
                    self.stalled += u64::from(stalled);
                    match outcome {
                        Outcome::Ok => {
                            self.landed += 1;
                            for part in parts {
                                landed(part.key, part.version, part.write.as_ref());
                            }
                        }
                        Outcome::ConcurrentUpdate => self.conflicts += 1,
                        Outcome::Unknown => {
                            self.dropped += 1;
                            // It may have landed: what it would write is no new key's version.
                            for part in parts.iter().filter(|p| p.write.is_some()) {
                                written.insert((part.key, part.version + 1));
                            }
                        }
                        Outcome::BusyRetry => {}
                    }
                }
                Op::Transaction { reads, writes, .. } => {
                    self.landed += 1;
                    for (key, write) in writes {
                        let version = reads.iter().find(|r| r.0 == *key).map_or(0, |r| r.1);
                        landed(*key, version, Some(write));
                    }
                    seen.extend(reads.iter().map(|r| (r.0, r.1)));
                }
                Op::Usevar {
                    key,
                    seen: Some((version, _)),
                } => seen.push((*key, *version)),
                Op::Using {
                    rows: Some(rows), ..
                } => seen.extend(rows.iter().map(|r| (r.0, r.1))),
                Op::Dump { .. } | Op::Snapshot { .. } => self.whole_store_reads += 1,
                Op::AbandonedRun { reads } => {
                    self.abandoned_runs += 1;
                    seen.extend(reads.iter().map(|r| (r.0, r.1)));
                }
                Op::Get { .. } | Op::Usevar { .. } | Op::Using { .. } => {}
            }
        }
        self.removals += removals;
        seen.sort_unstable();
        seen.dedup();
        self.recreated += seen
            .iter()
            .filter(|&&(key, version)| {
                !written.contains(&(key, version))
                    && removed.get(&key).is_some_and(|&tomb| version > tomb)
            })
            .count() as u64;
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} histories, {} operations (longest {}): {} commits landed, {} conflicts, {} stalled \
             commits ({} dropped), {} helped by another thread, {} removals, {} keys created again, \
             {} dumps and snapshots, {} transaction runs that did not commit",
            self.histories,
            self.operations,
            self.longest,
            self.landed,
            self.conflicts,
            self.stalled,
            self.dropped,
            self.helped,
            self.removals,
            self.recreated,
            self.whole_store_reads,
            self.abandoned_runs
        )
    }
}
