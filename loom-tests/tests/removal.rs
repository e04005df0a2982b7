//! Model 9, removing keys (contract points 22-26): a removal writes a tombstone (final: nothing
//! is written over it), its committer then unlinks the key from the index, a lookup that finds
//! a tombstone unlinks it and creates the key anew above the floor (the highest version a
//! removed key reached), and a slot is freed through the epoch once nothing counts it (the
//! index, each handle, each descriptor entry). Under loom a freed slot is leaked and marked,
//! and `Slot::load` asserts "a freed slot was reached": a use-after-free of a slot fails the
//! model.
//!
//! Models: a removal against a write of the same key, the removing handle committed again
//! (`removal_against_write`); a stale handle against the key removed and created again, with
//! versions that never go back (`stale_handle_against_recreated_key`); `dump` and `snapshot`
//! against a multi-key commit that removes a key (`dump_against_closing_account`); the
//! descriptor hazard, both where the design places it (a claiming snapshot helped while a key
//! it names is removed: `claiming_snapshot_helped_during_removal`) and where it is real (a
//! forgotten paused commit: `forgotten_commit_names_removed_key`); and reclamation of a removed
//! key's values and key (`removed_key_is_freed`). Lookups (`get`, `usevar`, a transaction)
//! during a multi-key removal are in `removal_reads.rs`.
//!
//! Two threads in every model: the main thread is one of the actors.
#![cfg(loom)]

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use loom::thread;
use stm_store::{Error, Store};
use stm_store_loom_tests::*;

/// One key as some read saw it: `None` if absent, else its version and value.
type Seen = Option<(u64, Option<Val>)>;

/// The rows `store.dump()` must give when `k` is as `seen` says and no other key exists.
fn only(key: Key, seen: Seen) -> Vec<Row> {
    seen.map(|(version, value)| (key, version, value))
        .into_iter()
        .collect()
}

/// A removal against a write of the same key. The main thread reads `k` (version 1), then the
/// other thread reads it and writes 20 while the main thread removes it. Both read version 1
/// unless the other thread reads after the removal landed: then it finds the key absent (or
/// its tombstone, which it unlinks) and creates it again, at version 3 (one above the
/// tombstone's 2), and both commits land. Otherwise exactly one lands: if the removal does, the
/// writer gets `ConcurrentUpdate` and the key is absent afterwards (`get` is `None`, `dump`
/// and `len` leave it out); if the write does, the removal gets `ConcurrentUpdate`. After its
/// removal landed, the removing handle holds version 2 and no value, and committing it again
/// fails (point 25), both with nothing set (a read-only validation) and with a value set:
/// never a value written over a tombstone.
///
/// Catches: no_floor (the key created again starts at version 0), writable_tombstone (the
/// removing handle's read-only commit validates against its tombstone, whose version lost the
/// removed bit; before 577fc3f its write landed on the tombstone too, but since then
/// `commit_one` and `claim` refuse a tombstone themselves, so no write reaches one under the
/// mutation), double_read (the writer's `usevar` checks the old record, then reads the
/// tombstone: its handle holds version 2 | bit 63).
#[test]
fn removal_against_write() {
    check("removal_against_write", 4, || {
        let store = seeded(&[("k", 10)]);
        let mut remover = store.usevar("k").unwrap();
        assert_eq!((remover.version(), remover.value()), (1, Some(&10)));
        let writer = {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                let mut k = store.usevar("k").unwrap();
                let read = (k.version(), k.value().copied());
                k.set(20);
                let result = k.commit();
                if result.is_ok() {
                    assert_eq!((k.version(), k.value()), (read.0 + 1, Some(&20)));
                }
                (read, result)
            })
        };
        remover.remove();
        let removed = remover.commit();
        assert_ne!(removed, Err(Error::BusyRetry));
        if removed.is_ok() {
            assert_eq!(
                (remover.version(), remover.value()),
                (2, None),
                "the removing handle after its removal landed (point 25)"
            );
            assert_eq!(
                remover.commit(),
                Err(Error::ConcurrentUpdate),
                "the removing handle validated against its own tombstone (point 25)"
            );
            remover.set(30);
            assert_eq!(
                remover.commit(),
                Err(Error::ConcurrentUpdate),
                "a write landed over a tombstone (the removing handle committed again)"
            );
        }
        drop(remover);
        let (read, written) = writer.join().unwrap();
        assert_ne!(written, Err(Error::BusyRetry));
        let get = store.get("k");
        match (removed.is_ok(), written.is_ok()) {
            (true, false) => {
                assert_eq!(
                    read,
                    (1, Some(10)),
                    "the writer failed on a key it read fresh"
                );
                assert_eq!(get, None, "k removed, then read: {get:?}");
            }
            (false, true) => {
                assert_eq!(read, (1, Some(10)), "the removal failed, yet k moved");
                assert_eq!(get, Some((2, Some(20))));
            }
            (true, true) => {
                assert_eq!(
                    read,
                    (3, None),
                    "the writer read k created again: one above its tombstone (version 2)"
                );
                assert_eq!(get, Some((4, Some(20))));
            }
            (false, false) => panic!("neither the removal nor the write landed"),
        }
        assert_eq!(store.dump(), only("k", get));
        assert_eq!(store.contains_key("k"), get.is_some());
        assert_eq!(store.len(), usize::from(get.is_some()));
    });
}

/// How the stale handle commits.
#[derive(Clone, Copy, Debug)]
enum Stale {
    /// `k` alone: the single-key fast path.
    One,
    /// `j` and `k` together: a descriptor, whose claim on `k` must not go over the tombstone.
    Two,
}

/// Every (version, what) of one key that some read or write saw; `what` is `None` for its
/// tombstone. A version must never name two different values of the key, or a value and a
/// tombstone: versions never go back, across a removal too (point 23).
#[derive(Default)]
struct Versions(BTreeMap<u64, Option<Option<Val>>>);

impl Versions {
    fn saw(&mut self, who: &str, version: u64, what: Option<Option<Val>>) {
        let before = *self.0.entry(version).or_insert(what);
        assert_eq!(
            before, what,
            "{who}: version {version} of k seen as {what:?}, and before as {before:?} (all: {:?})",
            self.0
        );
    }
}

/// A stale handle against the key created again. The main thread reads `k` (version 1, 10)
/// into the stale handle; the other thread removes `k` (retried once if the stale commit
/// landed first) and reads it again, which creates it anew, and writes 20; meanwhile the main
/// thread commits the stale handle (30; with `j` too in `Stale::Two`) and then reads `k`. The
/// stale commit lands only if it came before the removal (the removal then read its 30 at
/// version 2); if the removal read version 1, the stale commit fails with `ConcurrentUpdate`
/// (point 24), even against the key created again. The key created again starts one above its
/// tombstone, and no version of `k` is ever seen with two different values (or as a value and
/// a tombstone); the main thread's reads of `k` never go back.
///
/// Catches: no_floor (the key created again starts at version 0: its first write is version
/// 1, which the stale handle read with another value), decide_before_claims, no_descriptor.
#[test]
fn stale_handle_against_recreated_key() {
    for stale in [Stale::One, Stale::Two] {
        let name = format!("stale_handle_against_recreated_key ({stale:?})");
        let bound = match stale {
            Stale::One => 4,
            Stale::Two => 3,
        };
        check(&name, bound, move || {
            let store = seeded(&[("k", 10), ("j", 10)]);
            let keys: &[Key] = match stale {
                Stale::One => &["k"],
                Stale::Two => &["j", "k"],
            };
            let mut mine = store.using(keys.iter().copied()).unwrap();
            let other = {
                let store = Arc::clone(&store);
                thread::spawn(move || {
                    let mut removal_reads = Vec::new();
                    let tombstone = loop {
                        let mut k = store.usevar("k").unwrap();
                        removal_reads.push((k.version(), k.value().copied()));
                        k.remove();
                        match k.commit() {
                            Ok(()) => break k.version(),
                            Err(Error::ConcurrentUpdate) if removal_reads.len() == 1 => {}
                            Err(e) => panic!("removal: {e:?} after reads {removal_reads:?}"),
                        }
                    };
                    let mut k = store.usevar("k").unwrap();
                    let fresh = (k.version(), k.value().copied());
                    k.set(20);
                    assert_eq!(k.commit(), Ok(()), "nobody else writes k created again");
                    (removal_reads, tombstone, fresh)
                })
            };
            assert_eq!((mine["k"].version(), mine["k"].value()), (1, Some(&10)));
            for &key in keys {
                mine[key].set(30);
            }
            let result = mine.commit();
            let later = store.get("k");
            let (removal_reads, tombstone, fresh) = other.join().unwrap();

            let landed_on = *removal_reads.last().unwrap();
            assert_eq!(tombstone, landed_on.0 + 1, "the removal's version");
            match result {
                Ok(()) => assert_eq!(
                    landed_on,
                    (2, Some(30)),
                    "the stale commit landed, so the removal came after it"
                ),
                Err(Error::ConcurrentUpdate) => assert_eq!(
                    landed_on,
                    (1, Some(10)),
                    "the stale commit failed, yet the removal did not land on what it read"
                ),
                Err(e) => panic!("stale commit: {e:?}"),
            }
            let mut versions = Versions::default();
            versions.saw("stale read", 1, Some(Some(10)));
            if result.is_ok() {
                versions.saw("stale commit", 2, Some(Some(30)));
            }
            for &(version, value) in &removal_reads {
                versions.saw("removal's read", version, Some(value));
            }
            versions.saw("tombstone", tombstone, None);
            versions.saw("created again", fresh.0, Some(None));
            versions.saw("write after creation", fresh.0 + 1, Some(Some(20)));
            let newest = if result.is_ok() { 2 } else { 1 };
            if let Some((version, value)) = later {
                versions.saw("main thread's get", version, Some(value));
                assert!(
                    version >= newest,
                    "the main thread read k at version {version} after seeing version {newest}"
                );
            }
            assert_eq!(
                fresh,
                (tombstone + 1, None),
                "k created again starts one above its tombstone (point 23)"
            );
            let end = Some((fresh.0 + 1, Some(20)));
            assert_eq!(store.get("k"), end);
            let j = match (stale, result) {
                (Stale::Two, Ok(())) => (2, Some(30)),
                _ => (1, Some(10)),
            };
            assert_eq!(
                store.dump(),
                [("j", j.0, j.1), ("k", fresh.0 + 1, Some(20))]
            );
        });
    }
}

/// The two states of the accounts around the closing of `a` (10 moved into `b`).
const OPEN: [Row; 2] = [("a", 1, Some(10)), ("b", 1, Some(10))];
const CLOSED: [Row; 1] = [("b", 2, Some(20))];

/// Counts the executions of one model's run that took some path (not loom's: a plain atomic,
/// kept across executions), to report how often it was taken.
struct Tally(AtomicUsize);

impl Tally {
    const fn new() -> Self {
        Self(AtomicUsize::new(0))
    }
    fn add(&self, yes: bool) {
        self.0.fetch_add(usize::from(yes), Relaxed);
    }
    fn get(&self) -> usize {
        self.0.load(Relaxed)
    }
}

/// `dump` and `snapshot` against a removal in a multi-key commit: the other thread closes
/// account `a`, moving its balance into `b` and removing `a` in one commit (then drops its
/// handles: its commit has unlinked `a`, so that was `a`'s last count, and the slot is retired
/// while the main thread may still be reading it); the main thread takes a `dump`, then a
/// `snapshot`. Each sees both accounts open or `a` closed, with the total conserved, never a
/// torn state; the snapshot never goes back to a state before the dump's. A commit landing
/// between the double collect's two passes sends the reader to the claiming snapshot
/// (`COLLECTS` is 1 under loom), which then finds `a` removed or claims its tombstone (at
/// bound 4, a reader claims in about 13500 of the 35692 executions).
///
/// Catches: single_collect, dirty_read, decide_before_claims, no_descriptor.
#[test]
fn dump_against_closing_account() {
    static TALLY: Tally = Tally::new();
    check("dump_against_closing_account", 4, || {
        let store = seeded(&[("a", 10), ("b", 10)]);
        let closer = {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                let mut c = store.using(["a", "b"]).unwrap();
                let (a, b) = (*c["a"].value().unwrap(), *c["b"].value().unwrap());
                c["b"].set(a + b);
                c["a"].remove();
                assert_eq!(c.commit(), Ok(()), "the only writer failed");
            })
        };
        let dump = store.dump();
        assert!(dump == OPEN || dump == CLOSED, "torn dump {dump:?}");
        let snapshot: Vec<Row> =
            store.snapshot(|s| s.iter().map(|(k, v, x)| (*k, v, x.copied())).collect());
        assert!(
            snapshot == OPEN || snapshot == CLOSED,
            "torn snapshot {snapshot:?}"
        );
        assert!(
            dump == OPEN || snapshot == CLOSED,
            "the snapshot went back: {dump:?} then {snapshot:?}"
        );
        closer.join().unwrap();
        assert_eq!(store.dump(), CLOSED);
        assert_eq!(store.get("a"), None);
        assert_eq!(store.len(), 1);
        TALLY.add(store.stats().snapshot_claims > 0);
    });
    println!(
        "  dump_against_closing_account: a reader fell back to claiming in {} executions",
        TALLY.get()
    );
}

/// The descriptor hazard where the design places it (`docs::design`, "Removing keys"): a
/// claiming snapshot whose descriptor is helped by another thread while a key it names is
/// removed, unlinked and its last handle dropped. The other thread closes `b` into `a` (one
/// commit: `a` = 20, `b` removed, then unlinked by the commit), drops its handles (`b`'s last),
/// and then writes `a` again (the same 20: the total stays); the main thread dumps. The dump
/// falls back to claiming when a commit lands between its two passes (in about 5200 of the
/// 10124 executions at bound 4), and the other thread's second write, finding the snapshot's
/// claim on `a`, helps the snapshot: it loads the snapshot's entry for `b`, a slot that is
/// removed, unlinked and held by no handle. The dump is one of the three states, total 20; no
/// thread reaches a freed slot.
///
/// Catches: single_collect, dirty_read, decide_before_claims, no_descriptor. Not
/// uncounted_entries, and no model can catch it through a snapshot: `snapshot::claim_all`
/// holds a count of its own on every slot it gives an entry (`counted`, dropped only after its
/// `Owner`), so while any claim of the snapshot is in a slot, every slot it names is counted
/// and not yet retired. A helper reaches the descriptor only through such a claim, under a pin
/// taken before, and uses it only under that pin (its `Hold` borrows it): any slot of the
/// snapshot is retired after that pin began, and freed only after the helper unpins. Loom
/// does reach the window: a temporary counter in `protocol::claim` (not committed) saw the
/// helper load a removed slot of the snapshot 552 times at bound 4; unmutated, 492 of those
/// loads found the slot counted by `counted` and the entry, 60 by the entry alone (the owner
/// had let go); under uncounted_entries, 492 found it counted by `counted` alone and 60 found
/// it already retired (count zero), yet not freed: the helper's own pin still held it. The
/// entries' counts matter only where a descriptor outlives every handle of its keys, which
/// only a forgotten paused commit does (`forgotten_commit_names_removed_key`).
#[test]
fn claiming_snapshot_helped_during_removal() {
    static TALLY: Tally = Tally::new();
    check("claiming_snapshot_helped_during_removal", 4, || {
        let store = seeded(&[("a", 10), ("b", 10)]);
        let other = {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                let mut c = store.using(["a", "b"]).unwrap();
                let (a, b) = (*c["a"].value().unwrap(), *c["b"].value().unwrap());
                c["a"].set(a + b);
                c["b"].remove();
                assert_eq!(c.commit(), Ok(()), "the only writer failed");
                drop(c); // b's last handle
                let mut a = store.usevar("a").unwrap();
                let same = *a.value().unwrap();
                a.set(same);
                assert_eq!(a.commit(), Ok(()), "the only writer failed");
            })
        };
        let dump = store.dump();
        let states: [&[Row]; 3] = [
            &[("a", 1, Some(10)), ("b", 1, Some(10))],
            &[("a", 2, Some(20))],
            &[("a", 3, Some(20))],
        ];
        assert!(states.contains(&&dump[..]), "torn dump {dump:?}");
        other.join().unwrap();
        assert_eq!(store.dump(), states[2]);
        assert_eq!(store.get("b"), None);
        TALLY.add(store.stats().snapshot_claims > 0);
    });
    println!(
        "  claiming_snapshot_helped_during_removal: the dump claimed in {} executions",
        TALLY.get()
    );
}

/// The values a forgotten commit's descriptor keeps (see `memory::forgotten_commit`): T writes
/// two keys, so two dead records leak with it, whether it committed or aborted.
const LEAKED_BY_FORGOTTEN_COMMIT: usize = 2;

/// The descriptor hazard where it is real: a commit descriptor that outlives every handle of
/// its keys, with a claim still in a slot. The main thread pauses T (writes `a` = 5, `b` = 15)
/// after claiming `a`, forgets it (its descriptor leaks by design) and drops its handles; the
/// other thread writes `a` = 7, which must help T; meanwhile the main thread removes `b` (the
/// removal unlinks it), drops its handle, and flushes the epoch. T's entry for `b` counts the
/// slot, so it is never freed; without that count (uncounted_entries), the main thread's
/// handle was its last, the slot is freed, and the helper that arrives afterwards (pinned
/// after the slot was retired) claims T's entry for `b`: it loads a freed slot. The outcomes:
/// T committed (helped before the removal, which then removes T's `b`) and the write lands
/// after it, or T aborted (its `b` was removed) and the write lands on `a`'s first version.
/// Every value is freed but T's two dead records.
///
/// Catches: uncounted_entries ("a freed slot was reached", in the execution with no
/// preemption at all: the main thread runs to its `join` before the writer starts),
/// dirty_read (the writer reads T's undecided write, so its read versions break the model's
/// cases).
#[test]
fn forgotten_commit_names_removed_key() {
    check("forgotten_commit_names_removed_key", 2, || {
        let counters = Arc::new(Counters::default());
        let store = seeded_counted(&[("a", 10), ("b", 10)], &counters);
        let mut mine = store.using(["a", "b"]).unwrap();
        mine["a"].set(Counted::new(5, &counters));
        mine["b"].set(Counted::new(15, &counters));
        std::mem::forget(mine.commit_paused(1));
        drop(mine);
        let writer = {
            let (store, counters) = (Arc::clone(&store), Arc::clone(&counters));
            spawn_flushing(move || {
                let mut reads = Vec::new();
                loop {
                    let mut a = store.usevar("a").unwrap();
                    reads.push(a.version());
                    a.set(Counted::new(7, &counters));
                    match a.commit() {
                        Ok(()) => return reads,
                        Err(Error::ConcurrentUpdate) if reads.len() == 1 => {}
                        Err(e) => panic!("write of a: {e:?} after reads {reads:?}"),
                    }
                }
            })
        };
        let mut tries = 0;
        loop {
            let mut b = store.usevar("b").unwrap();
            b.remove();
            match b.commit() {
                Ok(()) => break,
                Err(Error::ConcurrentUpdate) if tries == 0 => tries += 1,
                Err(e) => panic!("removal of b: {e:?}"),
            }
        }
        settle(); // frees b's slot if nothing counts it any more
        let reads = writer.join().unwrap();
        let dump = counted_dump(&store);
        match reads[..] {
            [1] => assert_eq!(dump, [("a", 2, Some(7))], "T aborted, then a = 7"),
            [1, 2] | [2] => assert_eq!(dump, [("a", 3, Some(7))], "T committed, then a = 7"),
            _ => panic!("the writer read {reads:?}, dump {dump:?}"),
        }
        assert!(store.get("b").is_none());
        assert_all_freed(store, &counters, LEAKED_BY_FORGOTTEN_COMMIT);
    });
}

/// A key that counts its copies (clones and drops, through a [`Counted`]), ordered, compared
/// and hashed as its name, and borrowed as it (`store.get("a")`, `c["a"]`).
#[derive(Clone, Debug)]
struct Name {
    name: Key,
    _copy: Counted,
}

impl Name {
    fn new(name: Key, keys: &Arc<Counters>) -> Self {
        Self {
            name,
            _copy: Counted::new(0, keys),
        }
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl Eq for Name {}
impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Name {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name.cmp(other.name)
    }
}
impl Hash for Name {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state); // as `str` hashes: `Borrow<str>` requires it
    }
}
impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        self.name
    }
}

type NStore = Store<Name, Counted>;

/// Reclamation of a removed key. The other thread closes account `a` into `b` (one commit that
/// writes `b` and removes `a`, retried once if the main thread's write came first) and then
/// commits its removing handles again, without and with a value (which must fail: point 25);
/// the main thread
/// writes `a` = 7 (retried once: the second try creates `a` again if the closing came first).
/// Once both are done and the epoch is flushed, the store holds one value per key that has one
/// (the removed key's last value, the closing's dead records and the failed attempts' were all
/// dropped), and each listed key has two copies (its slot's and the loom index's) while the
/// removed key has one: the index dropped its copy when it unlinked it. The removed slot's own
/// copy stays because under loom a freed slot is leaked, not dropped (see `Slot::freed`): loom
/// cannot tell a freed slot from one whose count leaked; `tests/removal.rs` and
/// `tests/churn_memory.rs` measure that outside loom. Once the store is dropped, no value is
/// left, and one key copy (the removed slot's).
///
/// Catches: no_floor (`a` created again is written at version 1, not 4), writable_tombstone
/// (the removing collection's read-only commit validates against the tombstone; before
/// 577fc3f its write of 99 landed on the tombstone, in a slot no longer listed, as in
/// `removal_against_write`), decide_before_claims. Its `usevar` of `a` during the closing's commit is where the double
/// read of `Store::live` first showed, before a0603e5: a handle that read the tombstone, and a
/// commit of it that never ended (loom: "Model exceeded maximum number of branches", in
/// `commit_one`); `removal_reads.rs` now checks lookups during a removal.
#[test]
fn removed_key_is_freed() {
    check("removed_key_is_freed", 2, || {
        let values = Arc::new(Counters::default());
        let keys = Arc::new(Counters::default());
        let store = Arc::new(NStore::new());
        for (key, value) in [("a", 10), ("b", 10)] {
            let mut handle = store.usevar(Name::new(key, &keys)).unwrap();
            handle.set(Counted::new(value, &values));
            handle.commit().unwrap();
        }
        let closer = {
            let (store, values, keys) =
                (Arc::clone(&store), Arc::clone(&values), Arc::clone(&keys));
            spawn_flushing(move || {
                let mut tries = 0;
                loop {
                    let names = [Name::new("a", &keys), Name::new("b", &keys)];
                    let mut c = store.using(names).unwrap();
                    let a = c["a"].value().map_or(0, |v| v.n);
                    let b = c["b"].value().unwrap().n;
                    c["b"].set(Counted::new(a + b, &values));
                    c["a"].remove();
                    match c.commit() {
                        Ok(()) => {
                            assert_eq!(
                                c.commit(),
                                Err(Error::ConcurrentUpdate),
                                "the removing handle validated against its tombstone"
                            );
                            c["a"].set(Counted::new(99, &values));
                            assert_eq!(
                                c.commit(),
                                Err(Error::ConcurrentUpdate),
                                "a write landed over a tombstone (the removing handle again)"
                            );
                            return;
                        }
                        Err(Error::ConcurrentUpdate) if tries == 0 => tries += 1,
                        Err(e) => panic!("closing: {e:?}"),
                    }
                }
            })
        };
        let mut reads = Vec::new();
        loop {
            let mut a = store.usevar(Name::new("a", &keys)).unwrap();
            reads.push((a.version(), a.value().map(|v| v.n)));
            a.set(Counted::new(7, &values));
            match a.commit() {
                Ok(()) => break,
                Err(Error::ConcurrentUpdate) if reads.len() == 1 => {}
                Err(e) => panic!("write of a: {e:?} after reads {reads:?}"),
            }
        }
        closer.join().unwrap();
        let dump: Vec<Row> = store
            .dump()
            .into_iter()
            .map(|(k, v, x)| (k.name, v, x.map(|c| c.n)))
            .collect();
        match reads.last().unwrap() {
            (1, Some(10)) => assert_eq!(dump, [("b", 2, Some(17))], "a = 7, then closed"),
            (3, None) => assert_eq!(
                dump,
                [("a", 4, Some(7)), ("b", 2, Some(20))],
                "closed, then a created again (one above its tombstone) = 7"
            ),
            read => panic!("the main thread's write landed on {read:?}; dump {dump:?}"),
        }
        let holding = dump.iter().filter(|row| row.2.is_some()).count();
        settle();
        assert_eq!(
            values.live(),
            holding,
            "values live besides the latest records"
        );
        assert_eq!(
            keys.live(),
            2 * dump.len() + 1,
            "key copies: two per listed key (its slot's, the index's), one of the removed slot"
        );
        let store = Arc::try_unwrap(store).unwrap_or_else(|_| panic!("a thread kept the store"));
        drop(store);
        settle();
        assert_eq!(values.live(), 0, "values left after the store was dropped");
        assert_eq!(keys.live(), 1, "key copies left besides the removed slot's");
    });
}
