//! Values and keys that count their live copies, and the memory checks (semantics 9, 26): once
//! the epoch has moved on, the copies alive are what the model accounts for.

use std::borrow::Borrow;
use std::fmt::{self, Debug};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicIsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{K, KEYS, N};

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
    pub(super) vals: Live,
    pub(super) keys: Live,
}

impl Lives {
    pub(super) fn val(&self, n: N) -> Val {
        Val {
            n,
            live: self.vals.add(),
        }
    }

    pub(super) fn key(&self, n: K) -> Key {
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
    pub(super) fn get(&self) -> N {
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
    pub(super) n: K,
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
pub(super) fn memory_due(index: usize, len: usize) -> bool {
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
pub(super) fn check_memory(
    lives: &Lives,
    members: usize,
    paused: usize,
    keys: usize,
) -> Result<(), String> {
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
pub(super) fn check_memory_exact(live: &Live, what: &str, expected: usize) -> Result<(), String> {
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
pub(super) fn check_all_freed(lives: &Lives) -> Result<(), String> {
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
