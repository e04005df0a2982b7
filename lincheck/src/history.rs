//! What a run records: per operation, who called it, when it was called and when it returned,
//! what it was and what it answered. The format knows nothing of the backend: the in-process
//! recorder ([`crate::record`]) and a client of the etcd backend fill in the same events.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

/// Nanoseconds since the run's [`Clock`] started.
pub type Time = u64;

/// The return time of an operation that may still take effect at any later time: a request
/// that went out and whose answer never came (Jepsen's `:info` that never completes).
pub const NEVER: Time = Time::MAX;

/// A key's row as reads report it: key, version, value (`None`: no value).
pub type Row<K, V> = (K, u64, Option<V>);

/// What a commit does to one key it holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Write<V> {
    /// `set(value)`.
    Set(V),
    /// `clear()`: writes "no value".
    Clear,
    /// `remove()`: the key is gone from the commit's instant on (contract 22-23).
    Remove,
}

/// One key of a handle commit: the version its handle holds (read, or written by the handle's
/// last successful commit) and what the commit writes to it (`None`: only validated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part<K, V> {
    /// The key.
    pub key: K,
    /// The version the handle holds.
    pub version: u64,
    /// The pending write, if any.
    pub write: Option<Write<V>>,
}

/// How a commit ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It landed.
    Ok,
    /// `Error::ConcurrentUpdate`: nothing was written, and some key had changed.
    ConcurrentUpdate,
    /// `Error::BusyRetry`: nothing was written.
    BusyRetry,
    /// It may have landed or not (a paused commit dropped while others could help it; over
    /// etcd, a commit in doubt): the checker accepts either.
    Unknown,
}

/// An operation and what it answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op<K, V> {
    /// `usevar(key)`: creates the key if it is absent, then reads it. `seen` is `None` if the
    /// call failed or its answer is unknown (the key may have been created all the same).
    Usevar {
        /// The key.
        key: K,
        /// Version and value read.
        seen: Option<(u64, Option<V>)>,
    },
    /// `using(keys)`: creates the keys that are absent, then reads them all at one instant.
    /// `rows` is `None` if the call failed or its answer is unknown.
    Using {
        /// The keys asked for.
        keys: Vec<K>,
        /// One row per distinct key.
        rows: Option<Vec<Row<K, V>>>,
    },
    /// `Store::get(key)`: creates nothing. `None`: the key does not exist.
    Get {
        /// The key.
        key: K,
        /// Version and value, if the key exists.
        found: Option<(u64, Option<V>)>,
    },
    /// `dump()`: every key that exists, at one instant.
    Dump {
        /// The rows returned.
        rows: Vec<Row<K, V>>,
    },
    /// `snapshot(f)`: as `dump`, seen through the closure.
    Snapshot {
        /// The rows the closure saw.
        rows: Vec<Row<K, V>>,
    },
    /// A commit of handles: `Value::commit` (one part) or `Collection::commit` (one part per
    /// handle), including a commit started with `commit_paused` and resumed or dropped.
    Commit {
        /// Every handle of the commit, with what it writes.
        parts: Vec<Part<K, V>>,
        /// How it ended.
        outcome: Outcome,
    },
    /// `atomically(f)`: what the closure saw and did in its last run, the one that committed.
    Transaction {
        /// Every key the closure touched in any run (each touch may have created its key).
        touched: Vec<K>,
        /// The committed run's reads: the version and value of each key it touched, as first
        /// read (before its own writes).
        reads: Vec<Row<K, V>>,
        /// Keys the committed run found with no value at this version (`Tx::version`) where
        /// the backend does not say whether they exist: absent (they would be created at this
        /// version) or there with no value. A backend whose transactions create nothing when they
        /// read (etcd) records such reads here; writing such a key makes it this version + 1.
        /// The in-process store's transactions create the keys they read: it leaves this empty.
        absent: Vec<(K, u64)>,
        /// The committed run's writes, one per key (the last one wins).
        writes: Vec<(K, Write<V>)>,
        /// `Ok` (or `Unknown` if the backend cannot tell).
        outcome: Outcome,
    },
    /// A run of an `atomically` closure that did not commit (a read found the state moved, or
    /// its commit failed, and the closure ran again), recorded from the run's start to its end:
    /// what its reads returned. By opacity (contract 12) they were all the committed state at
    /// one instant; each read may also have created its key.
    AbandonedRun {
        /// The version and value of each key the run read, as first read.
        reads: Vec<Row<K, V>>,
    },
}

/// One operation as a client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event<K, V> {
    /// Who called it (a thread, a process, or a stalled commit of one).
    pub client: u32,
    /// Read right before the call.
    pub call: Time,
    /// Read right after the return; [`NEVER`] if it may take effect at any later time.
    pub ret: Time,
    /// The operation and its answer.
    pub op: Op<K, V>,
}

/// Everything one run recorded: its events, in no particular order, and the store's contents
/// when recording started (empty for a new store).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History<K, V> {
    /// The store's rows before the first event.
    pub initial: Vec<Row<K, V>>,
    /// The events.
    pub events: Vec<Event<K, V>>,
}

impl<K, V> Default for History<K, V> {
    fn default() -> Self {
        Self {
            initial: Vec::new(),
            events: Vec::new(),
        }
    }
}

impl<K, V> History<K, V> {
    /// A history of a store that started empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Merges clients' logs into one history, sorted by call time.
    pub fn from_logs(logs: impl IntoIterator<Item = Log<K, V>>) -> Self {
        let mut events: Vec<Event<K, V>> = logs.into_iter().flat_map(|log| log.events).collect();
        events.sort_by_key(|event| (event.call, event.ret));
        Self {
            initial: Vec::new(),
            events,
        }
    }

    /// Adds an event (for histories written by hand).
    pub fn push(&mut self, client: u32, call: Time, ret: Time, op: Op<K, V>) -> &mut Self {
        self.events.push(Event {
            client,
            call,
            ret,
            op,
        });
        self
    }

    /// The number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// The run's monotonic clock, shared by every client (`Instant` is the same clock on every
/// thread of a process).
#[derive(Clone, Debug)]
pub struct Clock(Arc<Instant>);

impl Clock {
    /// Starts the clock.
    pub fn start() -> Self {
        Self(Arc::new(Instant::now()))
    }

    /// Nanoseconds since the start.
    #[inline]
    pub fn now(&self) -> Time {
        // u64 nanoseconds last 584 years.
        self.0.elapsed().as_nanos() as Time
    }

    /// A log for one client, reading this clock.
    pub fn log<K, V>(&self, client: u32) -> Log<K, V> {
        Log {
            client,
            clock: self.clone(),
            events: Vec::with_capacity(1024),
        }
    }
}

/// One client's events, kept apart from the other clients' until the run ends (recording
/// writes nothing shared, so it does not line threads up behind each other).
#[derive(Debug)]
pub struct Log<K, V> {
    client: u32,
    clock: Clock,
    events: Vec<Event<K, V>>,
}

impl<K, V> Log<K, V> {
    /// The time, to read right before a call.
    #[inline]
    pub fn now(&self) -> Time {
        self.clock.now()
    }

    /// The clock it reads.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// This log's client.
    pub fn client(&self) -> u32 {
        self.client
    }

    /// Records an operation called at `call` that returns now (the clock is read first thing).
    #[inline]
    pub fn returned(&mut self, call: Time, op: Op<K, V>) {
        let ret = self.clock.now();
        self.push_as(self.client, call, ret, op);
    }

    /// Records an event with explicit times and client (a stalled commit is a client of its own:
    /// its owner goes on with other operations while it is in flight).
    pub fn push_as(&mut self, client: u32, call: Time, ret: Time, op: Op<K, V>) {
        self.events.push(Event {
            client,
            call,
            ret,
            op,
        });
    }

    /// The number of events so far.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

// ---------------------------------------------------------------------------------------------
// How an operation prints in a violation report
// ---------------------------------------------------------------------------------------------

struct ShowValue<'a, V>(&'a Option<V>);

impl<V: fmt::Debug> fmt::Display for ShowValue<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(value) => write!(f, "{value:?}"),
            None => f.write_str("none"),
        }
    }
}

struct ShowRow<'a, K, V>(&'a K, u64, &'a Option<V>);

impl<K: fmt::Debug, V: fmt::Debug> fmt::Display for ShowRow<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}@v{}={}", self.0, self.1, ShowValue(self.2))
    }
}

fn rows<K: fmt::Debug, V: fmt::Debug>(
    f: &mut fmt::Formatter<'_>,
    rows: &[Row<K, V>],
) -> fmt::Result {
    f.write_str("[")?;
    for (at, (key, version, value)) in rows.iter().enumerate() {
        if at > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{}", ShowRow(key, *version, value))?;
    }
    f.write_str("]")
}

impl<V: fmt::Debug> fmt::Display for Write<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Write::Set(value) => write!(f, "set {value:?}"),
            Write::Clear => f.write_str("clear"),
            Write::Remove => f.write_str("remove"),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Ok => "Ok",
            Outcome::ConcurrentUpdate => "ConcurrentUpdate",
            Outcome::BusyRetry => "BusyRetry",
            Outcome::Unknown => "unknown (may have landed)",
        })
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Display for Op<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Usevar { key, seen } => {
                write!(f, "usevar {key:?} -> ")?;
                match seen {
                    Some((version, value)) => write!(f, "v{version}={}", ShowValue(value)),
                    None => f.write_str("failed or unknown"),
                }
            }
            Op::Using { keys, rows: seen } => {
                write!(f, "using {keys:?} -> ")?;
                match seen {
                    Some(seen) => rows(f, seen),
                    None => f.write_str("failed or unknown"),
                }
            }
            Op::Get { key, found } => {
                write!(f, "get {key:?} -> ")?;
                match found {
                    Some((version, value)) => write!(f, "v{version}={}", ShowValue(value)),
                    None => f.write_str("absent"),
                }
            }
            Op::Dump { rows: seen } => {
                f.write_str("dump -> ")?;
                rows(f, seen)
            }
            Op::Snapshot { rows: seen } => {
                f.write_str("snapshot -> ")?;
                rows(f, seen)
            }
            Op::Commit { parts, outcome } => {
                f.write_str("commit [")?;
                for (at, part) in parts.iter().enumerate() {
                    if at > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{:?}@v{}", part.key, part.version)?;
                    if let Some(write) = &part.write {
                        write!(f, " {write}")?;
                    }
                }
                write!(f, "] -> {outcome}")
            }
            Op::Transaction {
                touched,
                reads,
                absent,
                writes,
                outcome,
            } => {
                f.write_str("atomically: read ")?;
                rows(f, reads)?;
                if !absent.is_empty() {
                    f.write_str(" and as absent or empty [")?;
                    for (at, (key, version)) in absent.iter().enumerate() {
                        if at > 0 {
                            f.write_str(", ")?;
                        }
                        write!(f, "{key:?}@v{version}")?;
                    }
                    f.write_str("]")?;
                }
                if !writes.is_empty() {
                    f.write_str(", then ")?;
                    for (at, (key, write)) in writes.iter().enumerate() {
                        if at > 0 {
                            f.write_str(", ")?;
                        }
                        write!(f, "{key:?} {write}")?;
                    }
                }
                if touched.len() > reads.len() + absent.len() {
                    write!(f, " (earlier runs also touched {touched:?})")?;
                }
                write!(f, " -> {outcome}")
            }
            Op::AbandonedRun { reads } => {
                f.write_str("atomically, a run that did not commit: read ")?;
                rows(f, reads)
            }
        }
    }
}
