//! Loom models of stm-store's protocol live in `tests/`; this crate only holds what they share:
//! a model runner that reports its execution count and time, a serializability checker that
//! also places snapshots, a drop-counting value type, and the epoch flush the memory models
//! count after. (`removal.rs` has its own checks: the serializability checker knows no
//! removals.)
//!
//! Run them with
//! `CARGO_TARGET_DIR=target/loom RUSTFLAGS='--cfg loom --cfg crossbeam_loom' cargo test
//! -p stm-store-loom-tests --release` (add `-- --nocapture --test-threads 1` to see each
//! model's execution count and time; the whole suite takes about 4 minutes of model time on
//! two cores, 233 s at 63b18b6, and twice that when the machine is busy). crossbeam-epoch is built under loom too (`--cfg crossbeam_loom` and its `loom`
//! feature), so the models run the real reclamation code: its pins, bags and epoch advances
//! add many interleavings, so every model sets its own small preemption bound (1 to 4);
//! `LOOM_MAX_PREEMPTIONS`, if set, overrides them all. Models have two threads (the main
//! thread is one of the actors), except `commit::transfers_with_auditor`, whose third thread
//! is its point (bound 1). Each model creates its store inside the execution: nothing of the
//! store outlives one (crossbeam's default collector is a loom `lazy_static`, reset per
//! execution).
//!
//! Files: `commit.rs` (committers against committers: claims, validation, write skew, the fast
//! path), `read.rs` (readers against a committer: `using`, `dump`, `usevar`, the claiming
//! snapshot), `helping.rs` (a committer stalled mid-commit, helping chains, resuming a helped
//! transaction where it was blocked), `keys.rs` (key creation racing commits and `dump`, the
//! dump's help request), `memory.rs` (everything freed, a late claim taken out again, a paused
//! commit dropped or forgotten), `transactions.rs` (`atomically`: opacity against a commit, and
//! the `retry` handshake against a single-key and a multi-key commit, and against a commit
//! decided by a thread other than its stalled owner; a lost wake-up leaves the waiter parked,
//! which loom reports as a deadlock), `removal.rs` (removing keys: a removal against a write,
//! a stale handle against the key created again, `dump` and `snapshot` during a multi-key
//! removal, the descriptor hazard through a claiming snapshot and through a forgotten commit,
//! and the reclamation of a removed key), `removal_reads.rs` (`get`, `usevar` and a
//! transaction during a multi-key removal never see its tombstone).
//!
//! `mutations.sh` runs them once per deliberate breakage that the core implements
//! (`cfg(stm_mutation = "...")`): skip_read_validation, decide_before_claims, no_descriptor,
//! single_collect, dirty_read, no_birth_check, no_opacity, lost_wakeup, helper_silent,
//! writable_tombstone, no_floor, uncounted_entries, double_read. Each model's doc comment
//! names the mutations it catches, as measured by `mutations.sh` at the model's own bound.
//! The core does not implement overwrite_undecided_claim, no_status_check and late_claim_stays
//! (the slot module never replaces an undecided claim, and a late claim left in its slot would
//! be a use-after-free), so the script does not run them.
//!
//! What loom cannot check here (each one is written up where it bites):
//! - SeqCst loads, stores and read-modify-writes are AcqRel to loom (loom's README): a
//!   store-buffering pair that is correct only under SeqCst fails under loom. The core had one,
//!   between a helper's late claim and the owner's release after an abort; its late check is
//!   now a read-modify-write of the status (`Txn::status_synced`), which loom checks
//!   (`memory::late_claim_after_abort`).
//! - Loom's DPOR remembers only the last access to each object, so a write that follows the
//!   same thread's load of that object never shows a race with another thread's earlier load:
//!   loom never runs a key creator between `dump`'s listing of the index and its slot reads,
//!   and no model catches no_birth_check (`keys::dump_sees_created_key_with_its_commit`).
//! - A use-after-free shows only when the freed memory is reused (then a loom atomic in it
//!   panics with an index out of bounds). Slots are the exception: under loom a freed slot is
//!   leaked and marked, and loading it fails the model ("a freed slot was reached"). The price:
//!   a model cannot tell a freed slot from one whose count leaked (both stay allocated, with
//!   their keys), so `removal::removed_key_is_freed` checks the values and the index's copy
//!   of the key, not the slot itself.
//! - Under loom, `join` returns before the joined thread's thread-locals are dropped, so a
//!   thread's crossbeam participant (and the garbage in its bag) may outlive the `join`: the
//!   memory models' threads flush before they end (`spawn_flushing`).

#[cfg(loom)]
pub use model::*;

#[cfg(loom)]
mod model {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    use stm_store::{Collection, Error, Store};

    /// Keys are short names; values small integers.
    pub type Key = &'static str;
    pub type Val = i64;
    pub type S = Store<Key, Val>;
    /// One row of `Store::dump` (or of a snapshot): key, version, value.
    pub type Row<V = Val> = (Key, u64, Option<V>);

    /// A preemption bound of "none": loom explores every interleaving.
    pub const EXHAUSTIVE: usize = usize::MAX;

    /// Runs `model` under loom with `preemptions` as the preemption bound ([`EXHAUSTIVE`] for
    /// none) unless `LOOM_MAX_PREEMPTIONS` overrides it, and prints how many executions it
    /// took and how long.
    pub fn check<F>(name: &str, preemptions: usize, model: F)
    where
        F: Fn() + Sync + Send + 'static,
    {
        let mut builder = loom::model::Builder::new();
        // crossbeam-epoch's pins and flushes are long runs of atomics, each a branch for loom:
        // the default of 1000 branches per execution is too few for the memory models.
        // `LOOM_MAX_BRANCHES`, if set, overrides it.
        if std::env::var_os("LOOM_MAX_BRANCHES").is_none() {
            builder.max_branches = 20_000;
        }
        if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
            builder.preemption_bound = (preemptions != EXHAUSTIVE).then_some(preemptions);
        }
        let bound = builder.preemption_bound;
        let iterations = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&iterations);
        let start = Instant::now();
        builder.check(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            model();
        });
        println!(
            "loom model {name}: {} executions in {:.1?} (preemption bound {})",
            iterations.load(Ordering::Relaxed),
            start.elapsed(),
            bound.map_or("none".to_string(), |b| b.to_string()),
        );
    }

    /// A store whose keys are created in the order given (so slot ids, the claim order, follow
    /// that order, not key order), each written once: version 1 and the given value.
    pub fn seeded(rows: &[(Key, Val)]) -> Arc<S> {
        let store = Arc::new(S::new());
        for &(key, value) in rows {
            let mut handle = store.usevar(key).unwrap();
            handle.set(value);
            handle.commit().unwrap();
        }
        store
    }

    /// What one commit attempt read, wrote, and answered.
    #[derive(Clone, Debug)]
    pub struct Attempt {
        /// Every key of the commit, with the version its handle read.
        pub reads: Vec<(Key, u64)>,
        /// The keys that were set or cleared, with what was written.
        pub writes: Vec<(Key, Option<Val>)>,
        pub result: Result<(), Error>,
    }

    impl Attempt {
        pub fn ok(&self) -> bool {
            self.result.is_ok()
        }
    }

    /// The read versions of a collection, in key order.
    pub fn reads(c: &Collection<'_, Key, Val>) -> Vec<(Key, u64)> {
        c.iter().map(|(k, v)| (*k, v.version())).collect()
    }

    /// The rows read (version and value), in key order.
    pub fn values(c: &Collection<'_, Key, Val>) -> Vec<Row> {
        c.iter()
            .map(|(k, v)| (*k, v.version(), v.value().copied()))
            .collect()
    }

    /// Sets `writes` on `c`, commits it, checks the handles afterwards (contract points 5 and
    /// 7), and reports the attempt.
    pub fn commit_collection(
        c: &mut Collection<'_, Key, Val>,
        writes: &[(Key, Option<Val>)],
    ) -> Attempt {
        let reads = reads(c);
        for &(key, value) in writes {
            match value {
                Some(value) => c[key].set(value),
                None => c[key].clear(),
            }
        }
        let result = c.commit();
        check_handles(c, &reads, writes, result);
        Attempt {
            reads,
            writes: writes.to_vec(),
            result,
        }
    }

    /// A single-key commit (`Value::commit`, the fast path when it writes) of `value` to `key`.
    pub fn commit_one(store: &S, key: Key, value: Val) -> Attempt {
        let mut handle = store.usevar(key).unwrap();
        let read = handle.version();
        handle.set(value);
        let result = handle.commit();
        assert_ne!(result, Err(Error::BusyRetry), "a commit answered BusyRetry");
        let expected = if result.is_ok() { read + 1 } else { read };
        assert_eq!(handle.version(), expected, "{key}: version after commit");
        assert_eq!(handle.value(), Some(&value), "{key}: value after commit");
        Attempt {
            reads: vec![(key, read)],
            writes: vec![(key, Some(value))],
            result,
        }
    }

    /// After a commit: on success the written handles hold version + 1 and their value; on
    /// failure every handle still has its read version and its pending value.
    pub fn check_handles(
        c: &Collection<'_, Key, Val>,
        reads: &[(Key, u64)],
        writes: &[(Key, Option<Val>)],
        result: Result<(), Error>,
    ) {
        assert_ne!(result, Err(Error::BusyRetry), "a commit answered BusyRetry");
        for &(key, version) in reads {
            let written = writes.iter().find(|(k, _)| *k == key);
            let handle = &c[key];
            match (result, written) {
                (Ok(()), Some(&(_, value))) => {
                    assert_eq!(handle.version(), version + 1, "{key}: version after commit");
                    assert_eq!(handle.value().copied(), value, "{key}: value after commit");
                }
                (_, Some(&(_, value))) => {
                    assert_eq!(
                        handle.version(),
                        version,
                        "{key}: failed commit moved version"
                    );
                    assert_eq!(
                        handle.value().copied(),
                        value,
                        "{key}: failed commit lost value"
                    );
                }
                (_, None) => assert_eq!(handle.version(), version, "{key}: read-only moved"),
            }
        }
    }

    /// Every answer is `Ok` or `ConcurrentUpdate`; the successful commits, applied one by one
    /// in some order starting from `initial`, each find exactly the versions they read and
    /// produce `final_state`; every failed commit read a key whose version has since moved.
    pub fn check_serial(initial: &[Row], attempts: &[Attempt], final_state: &[Row]) {
        check_history(initial, attempts, &[], &[], final_state);
    }

    /// As [`check_serial`], with some more commits whose outcome nobody reported (a paused
    /// commit dropped or forgotten: a helper may have committed it): each may or may not have
    /// landed.
    pub fn check_serial_with_unknown(
        initial: &[Row],
        attempts: &[Attempt],
        unknown: &[Attempt],
        final_state: &[Row],
    ) {
        check_history(initial, attempts, unknown, &[], final_state);
    }

    /// The whole check: as [`check_serial_with_unknown`], and one serial order exists in which
    /// moreover every snapshot in `snapshots` (rows of some keys, read by `using`, `dump` or
    /// `usevar`) is the state of its keys after some prefix of that order: no read saw part of
    /// a commit, or a state that never was.
    pub fn check_history(
        initial: &[Row],
        attempts: &[Attempt],
        unknown: &[Attempt],
        snapshots: &[Vec<Row>],
        final_state: &[Row],
    ) {
        for attempt in attempts {
            assert_ne!(
                attempt.result,
                Err(Error::BusyRetry),
                "BusyRetry: {attempt:?}"
            );
        }
        let committed: Vec<&Attempt> = attempts.iter().filter(|a| a.ok()).collect();
        let found = (0..1usize << unknown.len()).any(|landed| {
            let mut txns = committed.clone();
            txns.extend(
                (0..unknown.len())
                    .filter(|i| landed >> i & 1 == 1)
                    .map(|i| &unknown[i]),
            );
            serial_order_exists(initial, &txns, snapshots, final_state)
        });
        assert!(
            found,
            "no serial order of the successful commits gives the final state and every \
             snapshot\n  initial: {initial:?}\n  attempts: {attempts:#?}\n  unknown outcome: \
             {unknown:#?}\n  snapshots: {snapshots:?}\n  final: {final_state:?}"
        );
        for attempt in attempts.iter().filter(|a| !a.ok()) {
            let moved = attempt.reads.iter().any(|(k, v)| {
                final_state
                    .iter()
                    .find(|row| row.0 == *k)
                    .map_or(0, |row| row.1)
                    != *v
            });
            assert!(
                moved,
                "ConcurrentUpdate although none of its keys changed: {attempt:?}, final \
                 {final_state:?}"
            );
        }
    }

    type State = BTreeMap<Key, (u64, Option<Val>)>;

    fn matches(state: &State, rows: &[Row]) -> bool {
        rows.iter()
            .all(|&(k, v, x)| state.get(k).cloned().unwrap_or((0, None)) == (v, x))
    }

    fn serial_order_exists(
        initial: &[Row],
        txns: &[&Attempt],
        snapshots: &[Vec<Row>],
        final_state: &[Row],
    ) -> bool {
        let initial: State = initial.iter().map(|&(k, v, x)| (k, (v, x))).collect();
        let wanted: State = final_state.iter().map(|&(k, v, x)| (k, (v, x))).collect();
        permutations(txns.len()).into_iter().any(|order| {
            let mut state = initial.clone();
            let mut seen = vec![false; snapshots.len()];
            let mut note = |state: &State| {
                for (seen, snapshot) in seen.iter_mut().zip(snapshots) {
                    *seen |= matches(state, snapshot);
                }
            };
            note(&state);
            for &i in &order {
                let txn = txns[i];
                let unchanged = txn
                    .reads
                    .iter()
                    .all(|(k, v)| state.get(k).map_or(0, |s| s.0) == *v);
                if !unchanged {
                    return false;
                }
                for &(k, value) in &txn.writes {
                    let version = state.get(k).map_or(0, |s| s.0);
                    state.insert(k, (version + 1, value));
                }
                note(&state);
            }
            let keys: BTreeSet<Key> = state.keys().chain(wanted.keys()).copied().collect();
            let same = keys.iter().all(|k| {
                state.get(k).cloned().unwrap_or((0, None))
                    == wanted.get(k).cloned().unwrap_or((0, None))
            });
            same && seen.iter().all(|&s| s)
        })
    }

    /// Runs `attempt` until it commits, at most `max` times; returns every attempt.
    pub fn retry(max: usize, mut attempt: impl FnMut() -> Attempt) -> Vec<Attempt> {
        let mut attempts = Vec::new();
        loop {
            let a = attempt();
            let ok = a.ok();
            attempts.push(a);
            if ok {
                return attempts;
            }
            assert!(
                attempts.len() < max,
                "no success in {max} attempts: {attempts:#?}"
            );
        }
    }

    fn permutations(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![vec![]];
        }
        let mut all = Vec::new();
        for shorter in permutations(n - 1) {
            for at in 0..=shorter.len() {
                let mut p = shorter.clone();
                p.insert(at, n - 1);
                all.push(p);
            }
        }
        all
    }

    /// Spawns a loom thread that runs `f` and then hands its garbage to the collector
    /// ([`flush`]). Under loom, `join` returns as soon as `f` has, before the thread's
    /// thread-locals are dropped: crossbeam's participant of that thread, whose bag holds the
    /// records it retired, would otherwise hand them over only at some later point, and
    /// [`settle`] in the main thread could not free them.
    pub fn spawn_flushing<T, F>(f: F) -> loom::thread::JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        loom::thread::spawn(move || {
            let result = f();
            flush();
            result
        })
    }

    /// Hands this thread's garbage (its crossbeam bag) to the collector.
    pub fn flush() {
        crossbeam_epoch::pin().flush();
    }

    /// Frees the garbage retired so far, once every other thread of the model has joined and
    /// flushed ([`spawn_flushing`]): each pin-and-flush hands this thread's bag over and
    /// advances the epoch, and a bag is freed two epochs after it was sealed. A joined thread
    /// may still be unregistering from the collector (under loom, after `join` returned), which
    /// pins it for a moment and can hold the epoch back: each round yields to it. Bounded:
    /// 4 rounds free all that the small models retire.
    pub fn settle() {
        for _ in 0..4 {
            flush();
            loom::thread::yield_now();
        }
    }

    /// Counts how many values were made and dropped in one execution of a model. Plain std
    /// atomics: a fresh `Counters` is made inside each execution, and loom runs one thread at
    /// a time, so they add no interleavings of their own.
    #[derive(Default, Debug)]
    pub struct Counters {
        made: AtomicUsize,
        dropped: AtomicUsize,
    }

    impl Counters {
        pub fn live(&self) -> usize {
            self.made.load(Ordering::SeqCst) - self.dropped.load(Ordering::SeqCst)
        }
        pub fn made(&self) -> usize {
            self.made.load(Ordering::SeqCst)
        }
    }

    /// A value that counts its own creations (including clones) and drops.
    #[derive(Debug)]
    pub struct Counted {
        pub n: i64,
        counters: Arc<Counters>,
    }

    impl Counted {
        pub fn new(n: i64, counters: &Arc<Counters>) -> Self {
            counters.made.fetch_add(1, Ordering::SeqCst);
            Self {
                n,
                counters: Arc::clone(counters),
            }
        }
    }

    impl Clone for Counted {
        fn clone(&self) -> Self {
            Self::new(self.n, &self.counters)
        }
    }

    impl PartialEq for Counted {
        fn eq(&self, other: &Self) -> bool {
            self.n == other.n
        }
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.counters.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A store of counted values.
    pub type CStore = Store<Key, Counted>;

    /// A store of counted values: `rows` created in this order (slot ids follow it), each
    /// written once.
    pub fn seeded_counted(rows: &[(Key, Val)], counters: &Arc<Counters>) -> Arc<CStore> {
        let store = Arc::new(CStore::new());
        for &(key, value) in rows {
            let mut handle = store.usevar(key).unwrap();
            handle.set(Counted::new(value, counters));
            handle.commit().unwrap();
        }
        store
    }

    /// The plain view of a counted store: `dump` with the numbers.
    pub fn counted_dump(store: &CStore) -> Vec<Row> {
        store
            .dump()
            .into_iter()
            .map(|(k, v, x)| (k, v, x.map(|c| c.n)))
            .collect()
    }

    /// Once every thread but this one has joined and no handle is left: after the epoch is
    /// flushed, the store holds exactly one value per key that has one (its latest record:
    /// every replaced record, aborted write, claim and descriptor was reclaimed) plus `leaked`,
    /// and once the store is dropped too, exactly `leaked` values are left: 0, unless the
    /// model forgot a paused commit (`mem::forget`), whose descriptor leaks with the records it
    /// owns (see `memory::forgotten_commit`).
    pub fn assert_all_freed(store: Arc<CStore>, counters: &Counters, leaked: usize) {
        let holding = store.dump().iter().filter(|row| row.2.is_some()).count();
        settle();
        assert_eq!(
            counters.live(),
            holding + leaked,
            "values live besides the latest records (made {}, {leaked} leaked by design)",
            counters.made()
        );
        let store = Arc::try_unwrap(store).unwrap_or_else(|_| panic!("a thread kept the store"));
        drop(store);
        settle();
        assert_eq!(
            counters.live(),
            leaked,
            "values left after the store was dropped (made {}, {leaked} leaked by design)",
            counters.made()
        );
    }
}
