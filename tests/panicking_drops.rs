//! Panicking drops (contract point 9): a panic in `V::drop` or `K::drop`, wherever it runs,
//! leaks no other value or key, and a panic in reclamation never escapes into another call.
//! Every copy of every value and key is counted by tag (`common::Counts`); a value or key whose
//! tag is armed panics in every copy's drop ([`Noisy`]).
//!
//! Where such a panic could leak, and the test that fails if it does:
//! - Reclamation frees retired memory in batches (crossbeam-epoch runs a bag of up to 64
//!   deferred functions in a plain loop): a panic escaping one skips the rest of its batch and
//!   surfaces in whichever call happened to collect. Values are dropped caught there; a removed
//!   key's slot used to drop its key uncaught
//!   (`a_panicking_key_drop_in_reclamation_frees_the_rest_of_its_batch`; the same for values:
//!   `panicking_value_drops_in_reclamation_free_the_rest_of_their_batch`).
//! - When the store is dropped, its key index drops its slots in a plain loop (hashbrown's): a
//!   panicking key drop left the rest of the shard unfreed, values included
//!   (`a_panicking_key_drop_when_the_store_is_dropped_frees_every_other_slot`).
//! - Rust does not drop a function's return value when a local's destructor unwinds after the
//!   value was moved out (rust-lang/rust#47949). `atomically` and `run_async` returned the
//!   closure's result while the attempt's copies of values were still to be dropped, and
//!   `or_else` its first branch's while the unused second branch was: a panic there leaked the
//!   result (`a_transactions_result_is_dropped_when_a_copy_it_holds_panics`). A key passed by
//!   value that the store already had was dropped after the slot found for it was returned, so
//!   a panic kept that slot counted for ever
//!   (`a_panicking_drop_of_a_key_passed_in_keeps_no_slot_alive`).
//! - A handle's own paths drop everything (drop glue goes on while it unwinds, and a commit
//!   drops the copy it replaces only after updating the handle):
//!   `every_handle_path_drops_every_copy_when_drops_panic`.
//!
//! `panicking_drops_under_churn_leak_nothing` runs all of it on 2, 4 and 6 threads.

mod common;

use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;

use common::{quiet_planned_panics, Counts, Tracked, XorShift, SCALE};
use stm_store::{Error, Store, Tx, TxError};

/// Which tags panic when dropped, and how many armed drops ran.
#[derive(Default)]
struct Fuse {
    armed: Mutex<BTreeSet<u64>>,
    /// Tags divisible by this are armed too (0: none).
    every: AtomicU64,
    fired: AtomicUsize,
}

impl Fuse {
    fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Arms every tag divisible by `n`.
    fn every(n: u64) -> Arc<Self> {
        let fuse = Self::new();
        fuse.every.store(n, SeqCst);
        fuse
    }

    fn arm(&self, tags: impl IntoIterator<Item = u64>) {
        self.armed.lock().unwrap().extend(tags);
    }

    fn disarm(&self) {
        self.armed.lock().unwrap().clear();
        self.every.store(0, SeqCst);
    }

    fn is_armed(&self, tag: u64) -> bool {
        let every = self.every.load(SeqCst);
        (every != 0 && tag % every == 0) || self.armed.lock().unwrap().contains(&tag)
    }

    fn fired(&self) -> usize {
        self.fired.load(SeqCst)
    }
}

/// A counted value, or key, that panics when dropped while its tag is armed: every copy,
/// wherever it is dropped, unless the thread is already unwinding (that would abort).
/// Unwinding from its `drop` still drops its `Tracked`, so its count stays right. As a key it
/// compares and hashes by tag.
#[derive(Clone)]
struct Noisy {
    tracked: Tracked,
    fuse: Arc<Fuse>,
}

impl Noisy {
    fn new(counts: &Arc<Counts>, tag: u64, fuse: &Arc<Fuse>) -> Self {
        Noisy {
            tracked: Tracked::new(counts, tag, 0),
            fuse: Arc::clone(fuse),
        }
    }

    fn tag(&self) -> u64 {
        self.tracked.tag
    }
}

impl Drop for Noisy {
    fn drop(&mut self) {
        if self.fuse.is_armed(self.tag()) {
            self.fuse.fired.fetch_add(1, SeqCst);
            if !thread::panicking() {
                panic!("PLANNED: {} panicked in drop", self.tag());
            }
        }
    }
}

impl PartialEq for Noisy {
    fn eq(&self, other: &Self) -> bool {
        self.tag() == other.tag()
    }
}

impl Eq for Noisy {}

impl PartialOrd for Noisy {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Noisy {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.tag().cmp(&other.tag())
    }
}

impl Hash for Noisy {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.tag().hash(state);
    }
}

impl std::fmt::Debug for Noisy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Noisy({})", self.tag())
    }
}

/// A test's store, with counters and fuses for its values and for its keys.
struct Run<S = stm_store::DefaultHasher> {
    store: Store<Noisy, Noisy, S>,
    values: Arc<Counts>,
    keys: Arc<Counts>,
    value_fuse: Arc<Fuse>,
    key_fuse: Arc<Fuse>,
}

impl<S: BuildHasher + Clone + Send + Sync> Run<S> {
    fn with(store: Store<Noisy, Noisy, S>, value_fuse: Arc<Fuse>, key_fuse: Arc<Fuse>) -> Self {
        quiet_planned_panics();
        Run {
            store,
            values: Counts::new(),
            keys: Counts::new(),
            value_fuse,
            key_fuse,
        }
    }

    fn key(&self, tag: u64) -> Noisy {
        Noisy::new(&self.keys, tag, &self.key_fuse)
    }

    fn value(&self, tag: u64) -> Noisy {
        Noisy::new(&self.values, tag, &self.value_fuse)
    }

    /// Writes value `tag` to key `key`, nothing armed yet.
    fn write(&self, key: u64, tag: u64) {
        let mut handle = self.store.usevar(self.key(key)).unwrap();
        handle.set(self.value(tag));
        handle.commit().unwrap();
    }

    /// The tag of the value of `key`, or `None`.
    fn tag_of(&self, key: u64) -> Option<(u64, Option<u64>)> {
        let (version, value) = self.store.get(&self.key(key))?;
        Some((version, value.as_ref().map(Noisy::tag)))
    }

    #[track_caller]
    fn settle_to(&self, values: &[(u64, isize)], keys: &[(u64, isize)]) {
        settle_to(&self.values, values, &self.keys, keys);
    }
}

/// Advances the epoch until the live copies per tag are `values` and `keys`, and asserts that
/// they are, and that no panic escaped from reclamation into a flush meanwhile.
#[track_caller]
fn settle_to(
    values: &Counts,
    want_values: &[(u64, isize)],
    keys: &Counts,
    want_keys: &[(u64, isize)],
) {
    let sorted = |want: &[(u64, isize)]| {
        let mut want = want.to_vec();
        want.sort_unstable();
        want
    };
    let (sorted_values, sorted_keys) = (sorted(want_values), sorted(want_keys));
    let mut escaped = 0;
    common::settle_with(
        || values.live_map() == sorted_values && keys.live_map() == sorted_keys,
        || {
            let flush = catch_unwind(|| crossbeam_epoch::pin().flush());
            escaped += usize::from(flush.is_err());
        },
    );
    assert_eq!(
        escaped, 0,
        "a panicking drop escaped from reclamation into an epoch flush"
    );
    values.settle_to(want_values);
    keys.settle_to(want_keys);
}

impl Run {
    fn new() -> Self {
        Self::with(Store::new(), Fuse::new(), Fuse::new())
    }
}

/// Runs `f`, and returns whether it panicked.
fn panics(f: impl FnOnce()) -> bool {
    catch_unwind(AssertUnwindSafe(f)).is_err()
}

#[test]
fn a_panicking_key_drop_in_reclamation_frees_the_rest_of_its_batch() {
    // Key 1 is removed while a handle holds it: dropping the handle retires its slot, then 20
    // commits to key 2 retire the values they replace, all in one batch of this thread (its bag
    // was just flushed). Key 1's key panics when reclamation drops its slot. Everything retired
    // after it must still be freed, and the panic must stay inside reclamation (not escape into
    // the flushes here, nor into another test's calls).
    let run = Run::new();
    run.write(1, 1);
    run.write(2, 100);
    let mut doomed = run.store.usevar(run.key(1)).unwrap();
    doomed.remove();
    doomed.commit().unwrap();
    let mut counter = run.store.usevar(run.key(2)).unwrap();
    crossbeam_epoch::pin().flush();
    run.key_fuse.arm([1]);
    let _ = panics(|| drop(doomed)); // the slot is the last holder of key 1's copy
    for tag in 101..=120 {
        counter.set(run.value(tag));
        counter.commit().unwrap();
    }
    drop(counter);
    run.settle_to(&[(120, 1)], &[(2, 1)]);
    assert_eq!(
        run.key_fuse.fired(),
        1,
        "key 1's copy in its slot was dropped"
    );
    drop(run.store);
    run.values.assert_all_dropped();
    run.keys.assert_all_dropped();
}

#[test]
fn panicking_value_drops_in_reclamation_free_the_rest_of_their_batch() {
    // 100 commits to one key retire the values they replace, about two batches' worth; then
    // every third of them is armed (only the store's retired copies are left). Each armed drop
    // panics inside reclamation: every other retired value is still freed, and nothing escapes.
    let run = Run::new();
    let mut counter = run.store.usevar(run.key(0)).unwrap();
    crossbeam_epoch::pin().flush();
    for tag in 1..=100 {
        counter.set(run.value(tag));
        counter.commit().unwrap();
    }
    drop(counter);
    run.value_fuse.arm((1..100).filter(|tag| tag % 3 == 0));
    run.settle_to(&[(100, 1)], &[(0, 1)]);
    assert!(run.value_fuse.fired() > 0, "no armed value was reclaimed");
    drop(run.store);
    run.values.assert_all_dropped();
    run.keys.assert_all_dropped();
}

/// Hashes every key alike: every slot in one shard of the key index.
#[derive(Clone, Default)]
struct OneShard;

impl BuildHasher for OneShard {
    type Hasher = Constant;

    fn build_hasher(&self) -> Constant {
        Constant
    }
}

struct Constant;

impl Hasher for Constant {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, _: &[u8]) {}
}

#[test]
fn a_panicking_key_drop_when_the_store_is_dropped_frees_every_other_slot() {
    // 16 keys in one shard of the index, each with a value; every key panics when dropped. The
    // store drops every slot (key and value) all the same, and the panics stay inside, as a
    // value's do.
    let run = Run::with(Store::with_hasher(OneShard), Fuse::new(), Fuse::new());
    for key in 0..16 {
        run.write(key, 100 + key);
    }
    run.key_fuse.arm(0..16);
    let Run {
        store,
        values,
        keys,
        key_fuse,
        ..
    } = run;
    assert!(
        !panics(|| drop(store)),
        "a key's panic escaped the store's drop"
    );
    values.assert_all_dropped();
    keys.assert_all_dropped();
    assert!(key_fuse.fired() > 0);
}

#[test]
fn a_transactions_result_is_dropped_when_a_copy_it_holds_panics() {
    // Value 1's copies panic when dropped. A transaction that returns a copy of it drops its own
    // copy after the result is out, and panics: the result must be dropped too (by `atomically`
    // and by `run_async`). Then `or_else` returns its first branch's result (a copy of value 2)
    // and drops its unused second branch, which holds value 3, whose copies panic.
    let run = Run::new();
    run.write(0, 1);
    run.write(1, 2);
    run.value_fuse.arm([1, 3]);
    assert!(panics(|| {
        run.store.atomically(|tx| tx.get(&run.key(0)));
    }));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert!(panics(|| {
        let read = run.store.transaction().run_async(|tx| tx.get(&run.key(0)));
        runtime.block_on(read).unwrap();
    }));
    assert!(panics(|| {
        run.store.atomically(|tx| {
            let spare = run.value(3);
            let second = move |tx: &mut Tx<'_, Noisy, Noisy>| {
                let _holds = &spare;
                tx.retry()
            };
            tx.or_else(|tx| tx.get(&run.key(1)), second)
        });
    }));
    assert!(run.value_fuse.fired() >= 3);
    run.value_fuse.disarm();
    run.settle_to(&[(1, 1), (2, 1)], &[(0, 1), (1, 1)]);
    drop(run.store);
    run.values.assert_all_dropped();
    run.keys.assert_all_dropped();
}

#[test]
fn a_panicking_drop_of_a_key_passed_in_keeps_no_slot_alive() {
    // `usevar` of a key the store has drops the key passed in, and its panic reaches the caller;
    // the slot found for it must not stay counted (once the key is removed, the slot must be
    // freed).
    let run = Run::new();
    run.write(5, 1);
    run.key_fuse.arm([5]);
    assert!(panics(|| drop(run.store.usevar(run.key(5)))));
    assert!(panics(|| drop(run.store.using([run.key(5)]))));
    run.key_fuse.disarm();
    let mut handle = run.store.usevar(run.key(5)).unwrap();
    handle.remove();
    handle.commit().unwrap();
    drop(handle);
    run.settle_to(&[], &[]);
}

#[test]
fn every_handle_path_drops_every_copy_when_drops_panic() {
    // Each way a handle drops a copy of a value in the caller's thread, with that copy's
    // panic: the panic reaches the caller, what landed landed whole, and every copy is dropped.
    let run = Run::new();
    run.write(0, 1);
    run.write(1, 2);

    // A commit drops the copy it replaces in the handle (value 1, armed) after the commit
    // landed and the handle was updated.
    let mut handle = run.store.usevar(run.key(0)).unwrap();
    handle.set(run.value(10));
    run.value_fuse.arm([1]);
    assert!(panics(|| {
        let _ = handle.commit();
    }));
    assert_eq!(run.tag_of(0), Some((2, Some(10))));
    assert_eq!(
        (handle.version(), handle.value().map(Noisy::tag)),
        (2, Some(10))
    );
    drop(handle);

    // A commit that fails drops the copy it made to write (value 11, armed): nothing lands.
    let mut stale = run.store.usevar(run.key(0)).unwrap();
    run.write(0, 12);
    stale.set(run.value(11));
    run.value_fuse.arm([11]);
    assert!(panics(|| assert_eq!(
        stale.commit(),
        Err(Error::ConcurrentUpdate)
    )));
    assert_eq!(run.tag_of(0), Some((3, Some(12))));
    assert!(panics(|| drop(stale))); // its pending copy of 11

    // A dropped handle whose copy of what it read panics still drops its pending value.
    let mut handle = run.store.usevar(run.key(0)).unwrap();
    handle.set(run.value(13));
    run.value_fuse.arm([12]);
    assert!(panics(|| drop(handle)));

    // A dropped collection whose members' copies panic drops every member.
    run.write(1, 14);
    run.value_fuse.disarm();
    run.write(0, 15);
    let mut both = run.store.using([run.key(0), run.key(1)]).unwrap();
    both[&run.key(0)].set(run.value(16));
    both[&run.key(1)].set(run.value(17));
    run.value_fuse.arm([14, 15, 16, 17]);
    assert!(panics(|| drop(both)));
    run.value_fuse.disarm();

    // A collection's commit updates every member, then drops the copies it replaced (both
    // armed): the first panic goes on.
    let mut both = run.store.using([run.key(0), run.key(1)]).unwrap();
    both[&run.key(0)].set(run.value(18));
    both[&run.key(1)].set(run.value(19));
    run.value_fuse.arm([15, 14]);
    assert!(panics(|| {
        let _ = both.commit();
    }));
    let seen: Vec<_> = both
        .values_mut()
        .map(|v| v.value().map(Noisy::tag))
        .collect();
    assert_eq!(seen, [Some(18), Some(19)]);
    assert_eq!(
        (run.tag_of(0), run.tag_of(1)),
        (Some((5, Some(18))), Some((3, Some(19))))
    );
    drop(both);
    run.value_fuse.disarm();

    run.settle_to(&[(18, 1), (19, 1)], &[(0, 1), (1, 1)]);
    drop(run.store);
    run.values.assert_all_dropped();
    run.keys.assert_all_dropped();
}

#[test]
fn panicking_drops_under_churn_leak_nothing() {
    // 2, 4 and 6 threads (one run each) churn over 24 keys: `usevar`/`set`/`commit` mostly,
    // also two-key commits, transactions that return a copy of what they read, removals and
    // dumps. One value in 40 panics in every copy's drop, and so do keys 20 to 23 (so removed
    // slots drop panicking keys in reclamation). Every operation runs inside `catch_unwind`.
    // Then the store is dropped (no panic may escape it), and once the epoch has moved on,
    // every copy of every value and key was dropped exactly once and no panic escaped into a
    // flush.
    const KEYS: u64 = 24;
    const OPS: u64 = 1_000 * SCALE;
    for threads in [2u64, 4, 6] {
        let run = Run::with(Store::new(), Fuse::every(40), Fuse::new());
        run.key_fuse.arm(20..KEYS);
        let next_tag = AtomicU64::new(1);
        let tag = || next_tag.fetch_add(1, SeqCst);
        thread::scope(|s| {
            for t in 0..threads {
                let (run, tag) = (&run, &tag);
                s.spawn(move || {
                    let mut rng = XorShift::new(threads * 100 + t);
                    for _ in 0..OPS {
                        let (a, b) = rng.pair(KEYS);
                        let op = rng.below(10);
                        // The keys are locals, made before and dropped after everything
                        // else: a closure that returned a copy while a temporary key was
                        // dropped after it would leak the copy itself (Rust's unwinding, see
                        // the module docs), not the store.
                        let _ = panics(|| {
                            let (ka, kb) = (run.key(a), run.key(b));
                            match op {
                                0..=4 => {
                                    let mut v = run.store.usevar(ka.clone()).unwrap();
                                    v.set(run.value(tag()));
                                    let _ = v.commit();
                                }
                                5 => {
                                    let mut c = run.store.using([ka.clone(), kb.clone()]).unwrap();
                                    c[&ka].set(run.value(tag()));
                                    c[&kb].set(run.value(tag()));
                                    let _ = c.commit();
                                }
                                6 => {
                                    let read: Result<_, TxError> =
                                        run.store.transaction().run(|tx| {
                                            tx.set(&kb, run.value(tag()))?;
                                            tx.get(&ka)
                                        });
                                    drop(read);
                                }
                                7 => {
                                    let mut v = run.store.usevar(ka.clone()).unwrap();
                                    v.remove();
                                    let _ = v.commit();
                                }
                                8 => run.store.atomically(|tx| tx.remove(&ka)),
                                _ => drop(run.store.dump()),
                            }
                        });
                    }
                });
            }
        });
        assert!(run.value_fuse.fired() > 0 && run.key_fuse.fired() > 0);
        let Run {
            store,
            values,
            keys,
            ..
        } = run;
        assert!(
            !panics(|| drop(store)),
            "{threads} threads: a panic escaped the store's drop"
        );
        settle_to(&values, &[], &keys, &[]);
    }
}
