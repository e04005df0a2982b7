//! Loom models live in `tests/`; this crate only holds what they share: a model runner that
//! reports its iteration count, a serializability checker, and a drop-counting value type.
//!
//! Run them with
//! `CARGO_TARGET_DIR=target/loom RUSTFLAGS='--cfg loom' cargo test -p stm-store-loom-tests
//! --release` (add `-- --nocapture` to see each model's execution count). Each model sets its own
//! preemption bound; `LOOM_MAX_PREEMPTIONS`, if set, overrides them all.
//!
//! `mutations.sh` runs them once per deliberate breakage of the protocol
//! (`cfg(stm_mutation = "...")`, registered in the root `Cargo.toml`); each model's doc comment
//! names the mutations it catches. "skip_read_validation (snapshot)" there means: that
//! mutation also drops the read-only claims of the claiming snapshot, which `using` and `dump`
//! fall back to (after one failed double collect under loom), so the model fails on the
//! library's own "every claim of a committed snapshot noted its record" panic rather than on
//! its own check; `write_skew` and `read_only_validation` catch it by their own checks.

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
    /// One row of `Store::dump`.
    pub type Row<V = Val> = (Key, u64, Option<V>);

    /// A preemption bound of "none": loom explores every interleaving.
    pub const EXHAUSTIVE: usize = usize::MAX;

    /// Runs `model` under loom with `preemptions` as the preemption bound ([`EXHAUSTIVE`] for
    /// none) unless `LOOM_MAX_PREEMPTIONS` overrides it, and prints how many executions it
    /// took.
    pub fn check<F>(name: &str, preemptions: usize, model: F)
    where
        F: Fn() + Sync + Send + 'static,
    {
        let mut builder = loom::model::Builder::new();
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

    /// A store whose keys are created in the order given (so slot ids follow that order, not
    /// key order), each written once: version 1 and the given value.
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
    pub fn reads(c: &Collection<Key, Val>) -> Vec<(Key, u64)> {
        c.iter().map(|(k, v)| (*k, v.version())).collect()
    }

    /// The values read, in key order.
    pub fn values(c: &Collection<Key, Val>) -> Vec<(Key, u64, Option<Val>)> {
        c.iter()
            .map(|(k, v)| (*k, v.version(), v.value().copied()))
            .collect()
    }

    /// Sets `writes` on `c`, commits it, checks the handles afterwards (contract points 5 and
    /// 7), and reports the attempt.
    pub fn commit_collection(
        c: &mut Collection<Key, Val>,
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

    /// After a commit: on success the written handles hold version + 1 and their value; on
    /// failure every handle still has its read version and its pending value.
    pub fn check_handles(
        c: &Collection<Key, Val>,
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
        check_serial_with_unknown(initial, attempts, &[], final_state);
    }

    /// As [`check_serial`], with some more commits whose outcome nobody reported (a paused
    /// commit dropped without resuming: a helper may have committed it): each may or may not
    /// have landed.
    pub fn check_serial_with_unknown(
        initial: &[Row],
        attempts: &[Attempt],
        unknown: &[Attempt],
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
            serial_order_exists(initial, &txns, final_state)
        });
        assert!(
            found,
            "no serial order of the successful commits gives the final state\n  initial: \
             {initial:?}\n  attempts: {attempts:#?}\n  unknown outcome: {unknown:#?}\n  \
             final: {final_state:?}"
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

    fn serial_order_exists(initial: &[Row], txns: &[&Attempt], final_state: &[Row]) -> bool {
        let initial: BTreeMap<Key, (u64, Option<Val>)> =
            initial.iter().map(|&(k, v, x)| (k, (v, x))).collect();
        let wanted: BTreeMap<Key, (u64, Option<Val>)> =
            final_state.iter().map(|&(k, v, x)| (k, (v, x))).collect();
        permutations(txns.len()).into_iter().any(|order| {
            let mut state = initial.clone();
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
            }
            let keys: BTreeSet<Key> = state.keys().chain(wanted.keys()).copied().collect();
            keys.iter().all(|k| {
                state.get(k).cloned().unwrap_or((0, None))
                    == wanted.get(k).cloned().unwrap_or((0, None))
            })
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
}
