//! The recorder for the in-process store: the store's calls, each logged with the time read
//! right before the call and right after the return, and what it answered.
//!
//! A [`Recorder`] belongs to one client thread and writes only to that thread's [`Log`]; the
//! logs are merged when the run ends ([`History::from_logs`](crate::History::from_logs)), so
//! recording adds two clock reads and a push to each call and no shared write.
//!
//! Handles are wrapped ([`Handle`], [`Handles`]) so that a commit can be recorded with what each
//! handle holds (its version) and what it will write (the wrapper remembers the pending write,
//! which the store's handles do not show).

use std::hash::{BuildHasher, Hash};

use stm_store::{Collection, Error, Paused, Store, Tx, TxError, Value};

use crate::history::{Log, Op, Outcome, Part, Row, Time, Write};

/// The client number of a stalled commit of client `n`: `n + PAUSED_CLIENT` (its owner goes on
/// with other operations while it is in flight, so it is a client of its own).
pub const PAUSED_CLIENT: u32 = 1000;

fn outcome(result: &Result<(), Error>) -> Outcome {
    match result {
        Ok(()) => Outcome::Ok,
        Err(Error::ConcurrentUpdate) => Outcome::ConcurrentUpdate,
        Err(Error::BusyRetry) => Outcome::BusyRetry,
    }
}

/// One key read with `usevar`, and the write it will commit.
pub struct Handle<'s, K, V> {
    value: Value<'s, K, V>,
    pending: Option<Write<V>>,
}

impl<K: Clone, V: Clone> Handle<'_, K, V> {
    /// The key.
    pub fn key(&self) -> &K {
        self.value.key()
    }

    /// The version the handle holds.
    pub fn version(&self) -> u64 {
        self.value.version()
    }

    /// The value read, or the pending one.
    pub fn value(&self) -> Option<&V> {
        self.value.value()
    }

    /// `Value::set`.
    pub fn set(&mut self, value: V) {
        self.value.set(value.clone());
        self.pending = Some(Write::Set(value));
    }

    /// `Value::clear`.
    pub fn clear(&mut self) {
        self.value.clear();
        self.pending = Some(Write::Clear);
    }

    /// `Value::remove`.
    pub fn remove(&mut self) {
        self.value.remove();
        self.pending = Some(Write::Remove);
    }

    fn part(&self) -> Part<K, V> {
        Part {
            key: self.key().clone(),
            version: self.version(),
            write: self.pending.clone(),
        }
    }
}

/// Keys read together with `using`, and the writes they will commit.
pub struct Handles<'s, K, V> {
    collection: Collection<'s, K, V>,
    /// Per handle, in the collection's (key) order.
    pending: Vec<Option<Write<V>>>,
}

impl<'s, K: Ord + Clone, V: Clone> Handles<'s, K, V> {
    /// The keys, in key order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.collection.keys()
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The handle of `key`.
    ///
    /// # Panics
    ///
    /// If `key` is not in the collection.
    pub fn get(&self, key: &K) -> &Value<'s, K, V> {
        &self.collection[key]
    }

    fn at(&self, key: &K) -> usize {
        self.collection
            .keys()
            .position(|k| k == key)
            .expect("the key is in the collection")
    }

    /// `set` on the handle of `key`.
    pub fn set(&mut self, key: &K, value: V) {
        self.collection[key].set(value.clone());
        let at = self.at(key);
        self.pending[at] = Some(Write::Set(value));
    }

    /// `clear` on the handle of `key`.
    pub fn clear(&mut self, key: &K) {
        self.collection[key].clear();
        let at = self.at(key);
        self.pending[at] = Some(Write::Clear);
    }

    /// `remove` on the handle of `key`.
    pub fn remove(&mut self, key: &K) {
        self.collection[key].remove();
        let at = self.at(key);
        self.pending[at] = Some(Write::Remove);
    }

    fn parts(&self) -> Vec<Part<K, V>> {
        self.collection
            .iter()
            .zip(&self.pending)
            .map(|((key, value), write)| Part {
                key: key.clone(),
                version: value.version(),
                write: write.clone(),
            })
            .collect()
    }
}

/// A commit stopped after claiming some of its keys
/// ([`Collection::commit_paused`](stm_store::Collection::commit_paused)): other threads that
/// meet its claims help it to its end. Finish it with [`Recorder::resume`] or
/// [`Recorder::abandon`].
pub struct PausedCommit<'a, 's, K, V> {
    paused: Paused<'a, 's, K, V>,
    pending: &'a mut Vec<Option<Write<V>>>,
    parts: Vec<Part<K, V>>,
    call: Time,
}

/// A run of a transaction's closure: its start, its end, and what it read.
type Run<K, V> = (Time, Time, Vec<Row<K, V>>);

/// What a transaction's closure saw and did in its current run.
struct Seen<K, V> {
    touched: Vec<K>,
    reads: Vec<Row<K, V>>,
    writes: Vec<(K, Write<V>)>,
}

/// A transaction being recorded: [`Tx`]'s reads and writes, noting each key's version and
/// value when the run first touches it, and the run's last write to each key.
pub struct RecordedTx<'t, 's, K, V, S> {
    tx: &'t mut Tx<'s, K, V, S>,
    seen: &'t mut Seen<K, V>,
}

impl<K, V, S> RecordedTx<'_, '_, K, V, S>
where
    K: Ord + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync,
{
    fn touch(&mut self, key: &K) -> Result<(), TxError> {
        if self.seen.reads.iter().any(|(k, ..)| k == key) {
            return Ok(());
        }
        // Noted before the read: a read that stops the run may still have created the key.
        if !self.seen.touched.contains(key) {
            self.seen.touched.push(key.clone());
        }
        let version = self.tx.version(key)?;
        let value = self.tx.get(key)?;
        self.seen.reads.push((key.clone(), version, value));
        Ok(())
    }

    fn wrote(&mut self, key: &K, write: Write<V>) {
        match self.seen.writes.iter_mut().find(|(k, _)| k == key) {
            Some((_, last)) => *last = write,
            None => self.seen.writes.push((key.clone(), write)),
        }
    }

    /// `Tx::get`.
    ///
    /// # Errors
    ///
    /// As `Tx::get`: pass it up with `?`.
    pub fn get(&mut self, key: &K) -> Result<Option<V>, TxError> {
        self.touch(key)?;
        self.tx.get(key)
    }

    /// `Tx::set`.
    ///
    /// # Errors
    ///
    /// As `Tx::set`: pass it up with `?`.
    pub fn set(&mut self, key: &K, value: V) -> Result<(), TxError> {
        self.touch(key)?;
        self.tx.set(key, value.clone())?;
        self.wrote(key, Write::Set(value));
        Ok(())
    }

    /// `Tx::clear`.
    ///
    /// # Errors
    ///
    /// As `Tx::clear`: pass it up with `?`.
    pub fn clear(&mut self, key: &K) -> Result<(), TxError> {
        self.touch(key)?;
        self.tx.clear(key)?;
        self.wrote(key, Write::Clear);
        Ok(())
    }

    /// `Tx::remove`.
    ///
    /// # Errors
    ///
    /// As `Tx::remove`: pass it up with `?`.
    pub fn remove(&mut self, key: &K) -> Result<(), TxError> {
        self.touch(key)?;
        self.tx.remove(key)?;
        self.wrote(key, Write::Remove);
        Ok(())
    }
}

/// One client's recorded view of a store.
pub struct Recorder<'s, K, V, S = stm_store::DefaultHasher> {
    store: &'s Store<K, V, S>,
    log: Log<K, V>,
}

impl<'s, K, V, S> Recorder<'s, K, V, S>
where
    K: Ord + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher + Clone + Send + Sync,
{
    /// Records `store`'s calls into `log`.
    pub fn new(store: &'s Store<K, V, S>, log: Log<K, V>) -> Self {
        Self { store, log }
    }

    /// The log, when the client is done.
    pub fn into_log(self) -> Log<K, V> {
        self.log
    }

    /// The events recorded so far.
    pub fn len(&self) -> usize {
        self.log.len()
    }

    /// Whether nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
    }

    /// `Store::usevar`.
    pub fn usevar(&mut self, key: K) -> Handle<'s, K, V> {
        let call = self.log.now();
        let value = self.store.usevar(key.clone());
        let ret = self.log.now();
        let (seen, value) = match value {
            Ok(value) => (Some((value.version(), value.value().cloned())), Some(value)),
            Err(_) => (None, None),
        };
        self.log
            .push_as(self.log.client(), call, ret, Op::Usevar { key, seen });
        let value = value.expect("usevar does not fail in process");
        Handle {
            value,
            pending: None,
        }
    }

    /// `Store::using`.
    pub fn using(&mut self, keys: Vec<K>) -> Handles<'s, K, V> {
        let call = self.log.now();
        let collection = self.store.using(keys.iter().cloned());
        let ret = self.log.now();
        let collection = collection.expect("using does not fail in process");
        let rows = collection
            .iter()
            .map(|(key, value)| (key.clone(), value.version(), value.value().cloned()))
            .collect();
        self.log.push_as(
            self.log.client(),
            call,
            ret,
            Op::Using {
                keys,
                rows: Some(rows),
            },
        );
        Handles {
            pending: vec![None; collection.len()],
            collection,
        }
    }

    /// `Value::commit`.
    ///
    /// # Errors
    ///
    /// As `Value::commit`.
    pub fn commit(&mut self, handle: &mut Handle<'s, K, V>) -> Result<(), Error> {
        let parts = vec![handle.part()];
        let call = self.log.now();
        let result = handle.value.commit();
        self.log.returned(
            call,
            Op::Commit {
                parts,
                outcome: outcome(&result),
            },
        );
        if result.is_ok() {
            handle.pending = None;
        }
        result
    }

    /// `Collection::commit`.
    ///
    /// # Errors
    ///
    /// As `Collection::commit`.
    pub fn commit_all(&mut self, handles: &mut Handles<'s, K, V>) -> Result<(), Error> {
        let parts = handles.parts();
        let call = self.log.now();
        let result = handles.collection.commit();
        self.log.returned(
            call,
            Op::Commit {
                parts,
                outcome: outcome(&result),
            },
        );
        if result.is_ok() {
            handles.pending.iter_mut().for_each(|p| *p = None);
        }
        result
    }

    /// `Collection::commit_paused`: starts the commit, claims its first `claims` keys and
    /// stops. Nothing is recorded until it is resumed or abandoned.
    pub fn commit_paused<'a>(
        &self,
        handles: &'a mut Handles<'s, K, V>,
        claims: usize,
    ) -> PausedCommit<'a, 's, K, V> {
        let parts = handles.parts();
        let call = self.log.now();
        let Handles {
            collection,
            pending,
        } = handles;
        PausedCommit {
            paused: collection.commit_paused(claims),
            pending,
            parts,
            call,
        }
    }

    /// Finishes a paused commit (`Paused::resume`).
    ///
    /// # Errors
    ///
    /// As `Paused::resume`.
    pub fn resume(&mut self, paused: PausedCommit<'_, 's, K, V>) -> Result<(), Error> {
        let result = paused.paused.resume();
        let ret = self.log.now();
        self.log.push_as(
            self.log.client() + PAUSED_CLIENT,
            paused.call,
            ret,
            Op::Commit {
                parts: paused.parts,
                outcome: outcome(&result),
            },
        );
        if result.is_ok() {
            paused.pending.iter_mut().for_each(|p| *p = None);
        }
        result
    }

    /// Drops a paused commit: it is aborted unless another thread decided it meanwhile, and
    /// nobody says which, so its outcome is unknown. The handles are left as they were.
    pub fn abandon(&mut self, paused: PausedCommit<'_, 's, K, V>) {
        drop(paused.paused);
        let ret = self.log.now();
        self.log.push_as(
            self.log.client() + PAUSED_CLIENT,
            paused.call,
            ret,
            Op::Commit {
                parts: paused.parts,
                outcome: Outcome::Unknown,
            },
        );
    }

    /// `Store::get`.
    pub fn get(&mut self, key: &K) -> Option<(u64, Option<V>)> {
        let call = self.log.now();
        let found = self.store.get(key);
        let ret = self.log.now();
        let op = Op::Get {
            key: key.clone(),
            found: found.clone(),
        };
        self.log.push_as(self.log.client(), call, ret, op);
        found
    }

    /// `Store::dump`.
    pub fn dump(&mut self) -> Vec<Row<K, V>> {
        let call = self.log.now();
        let rows = self.store.dump();
        let ret = self.log.now();
        let op = Op::Dump { rows: rows.clone() };
        self.log.push_as(self.log.client(), call, ret, op);
        rows
    }

    /// `Store::snapshot`, collecting every row.
    pub fn snapshot(&mut self) -> Vec<Row<K, V>> {
        let call = self.log.now();
        let rows: Vec<Row<K, V>> = self.store.snapshot(|snapshot| {
            snapshot
                .iter()
                .map(|(key, version, value)| (key.clone(), version, value.cloned()))
                .collect()
        });
        let ret = self.log.now();
        let op = Op::Snapshot { rows: rows.clone() };
        self.log.push_as(self.log.client(), call, ret, op);
        rows
    }

    /// `Store::atomically`, with the closure's reads and writes recorded as its last run (the
    /// one that committed) saw and did them, and each earlier run's reads recorded on their own
    /// (opacity: they too were the committed state at one instant).
    pub fn atomically<T>(
        &mut self,
        mut f: impl FnMut(&mut RecordedTx<'_, '_, K, V, S>) -> Result<T, TxError>,
    ) -> T {
        let mut seen = Seen {
            touched: Vec::new(),
            reads: Vec::new(),
            writes: Vec::new(),
        };
        let clock = self.log.clock().clone();
        let mut runs: Vec<Run<K, V>> = Vec::new();
        let call = clock.now();
        let result = self.store.atomically(|tx| {
            seen.reads.clear();
            seen.writes.clear();
            let start = clock.now();
            let result = f(&mut RecordedTx {
                tx,
                seen: &mut seen,
            });
            runs.push((start, clock.now(), seen.reads.clone()));
            result
        });
        let ret = clock.now();
        let client = self.log.client();
        runs.pop(); // the run that committed: recorded whole below
        for (start, end, reads) in runs.into_iter().filter(|run| !run.2.is_empty()) {
            self.log
                .push_as(client, start, end, Op::AbandonedRun { reads });
        }
        self.log.push_as(
            client,
            call,
            ret,
            Op::Transaction {
                touched: seen.touched,
                reads: seen.reads,
                absent: Vec::new(), // the in-process store's reads create their keys
                writes: seen.writes,
                outcome: Outcome::Ok,
            },
        );
        result
    }

    /// Records an operation done some other way (for wrappers that change what the store
    /// answers, such as a cache).
    pub fn log_mut(&mut self) -> &mut Log<K, V> {
        &mut self.log
    }

    /// The store.
    pub fn store(&self) -> &'s Store<K, V, S> {
        self.store
    }
}
