//! `atomically` over etcd: a closure run as one transaction, retried for you, as etcd's own Go
//! client runs its STM (`concurrency.NewSTM`, serializable isolation). The attempt itself
//! ([`Tx`]) is in `tx`; this is the loop around it.
//!
//! **The commit** is one etcd transaction: compare every key read, written keys included, with
//! the modification revision it had at the attempt's revision (0 for a key that was absent),
//! then put every key written (delete every key removed). A key changed since, or removed, or
//! removed and created again, fails the compare: no write skew, no ABA. A transaction that
//! wrote nothing does not commit at all: its reads were one linearizable snapshot already.
//!
//! **A failed compare** reruns the closure: the first time at once, from a snapshot that the
//! failed commit read (its `else` branch reads every key the attempt had read, at the revision
//! of the failure), so the next attempt starts without a read; then after a backoff
//! ([`Backoff`]), rereading the same keys in its first request.
//!
//! **`retry`** gives the attempt up and watches the keys it read from the revision after the
//! attempt's (see `watch`): any change since, even one made before the watch was set up, wakes
//! it (no lost wake-up, no polling).

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, TxnOp};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{encode_value, KeyCodec};
use crate::commit::{Resolved, Unwritten, Written};
use crate::error::Error;
use crate::handle::Write;
use crate::store::{ranges, revision_of, Budget, EtcdStore};
use crate::tx::{At, Cache, Stop, Tx, TxError, TxKey};

/// How long a transaction waits after a conflict (a failed commit) before it runs the closure
/// again.
///
/// The first conflict of a call reruns the closure at once, from the snapshot that the failed
/// commit read in the same round trip (as etcd's Go STM does): it is as fresh as a new read,
/// and waiting would only make it stale. From the second conflict on, the transaction waits a
/// random time between half and all of a bound that starts at `first` and doubles after each
/// conflict, up to `max`, and then reads the keys the failed attempt read afresh, all in its
/// first request. Randomness keeps clients that conflicted together from meeting again; the
/// wait lets a crowd of clients on the same keys thin out instead of sending commits that
/// fail (each costs etcd a write to its log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
}

impl Backoff {
    /// Waits up to `first` after the second conflict of a call, then up to twice as long after
    /// each conflict more, up to `max`.
    pub const fn exponential(first: Duration, max: Duration) -> Self {
        Self { first, max }
    }

    /// Runs the closure again at once after every conflict, from the snapshot the failed
    /// commit read.
    pub const fn none() -> Self {
        Self {
            first: Duration::ZERO,
            max: Duration::ZERO,
        }
    }

    /// The `n`-th wait of a call (from 1), `random` picking within it.
    fn delay(&self, n: u32, random: u64) -> Duration {
        let doublings = n.saturating_sub(1).min(30);
        let bound = self.first.saturating_mul(1 << doublings).min(self.max);
        let half = bound / 2;
        let spread = u64::try_from((bound - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(random % spread.saturating_add(1))
    }
}

/// At once after the first conflict; then up to 1 ms, doubling to 10 ms (a commit costs a
/// millisecond or more against a local etcd; longer waits only lengthened the slowest
/// transactions in the project's measurements).
impl Default for Backoff {
    fn default() -> Self {
        Self::exponential(Duration::from_millis(1), Duration::from_millis(10))
    }
}

/// A transaction with options (a timeout, a backoff, keys to prefetch): [`EtcdStore::transaction`],
/// then [`run`](Transaction::run).
///
/// ```no_run
/// # async fn demo(store: stm_store_etcd::EtcdStore<String, u64>) -> Result<(), stm_store_etcd::Error> {
/// use std::time::Duration;
///
/// let job = "job".to_string();
/// let job = &job;
/// // Wait at most 2 s for "job" to get a value, then take it.
/// let taken: Result<u64, stm_store_etcd::TxError> = store
///     .transaction()
///     .timeout(Duration::from_secs(2))
///     .run(|tx| async move {
///         match tx.get(job).await? {
///             Some(id) => tx.remove(job).await.map(|()| id),
///             None => tx.retry(),
///         }
///     })
///     .await;
/// match taken {
///     Ok(id) => println!("took job {id}"),
///     Err(e) if e.is_timeout() => println!("no job"),
///     Err(e) => return Err(e.into_error().expect("not a timeout")),
/// }
/// # Ok(())
/// # }
/// ```
#[must_use = "a transaction runs only when `run` is called"]
pub struct Transaction<'s, K, V> {
    store: &'s EtcdStore<K, V>,
    backoff: Backoff,
    deadline: Option<Instant>,
    prefetch: Vec<K>,
}

impl<K, V> fmt::Debug for Transaction<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
            .field("backoff", &self.backoff)
            .field("deadline", &self.deadline)
            .field("prefetch", &self.prefetch.len())
            .finish()
    }
}

impl<'s, K, V> Transaction<'s, K, V>
where
    K: KeyCodec,
    V: Serialize + DeserializeOwned,
{
    pub(crate) fn new(store: &'s EtcdStore<K, V>) -> Self {
        Self {
            store,
            backoff: Backoff::default(),
            deadline: None,
            prefetch: Vec::new(),
        }
    }

    /// How to wait after a conflict before running the closure again.
    pub fn backoff(self, backoff: Backoff) -> Self {
        Self { backoff, ..self }
    }

    /// Gives up at `deadline`: [`run`](Transaction::run) then returns a [`TxError`] that
    /// [`is_timeout`](TxError::is_timeout), with nothing written. It bounds waits in
    /// [`Tx::retry`] and new attempts after a conflict; it never cuts a commit short (that
    /// could leave it in doubt), and each request to etcd keeps its own bound
    /// ([`Options`](crate::Options)).
    pub fn deadline(self, deadline: Instant) -> Self {
        Self {
            deadline: Some(deadline),
            ..self
        }
    }

    /// Gives up after `timeout`, from now: see [`deadline`](Transaction::deadline). A timeout
    /// too long for the clock (`Duration::MAX`) means no deadline.
    pub fn timeout(self, timeout: Duration) -> Self {
        Self {
            deadline: Instant::now().checked_add(timeout),
            ..self
        }
    }

    /// Keys the closure will read: each attempt that starts without a snapshot reads them with
    /// its first read, in the same round trip, instead of one round trip each (etcd's Go STM
    /// calls this `WithPrefetch`). Naming a key that the closure does not read costs a little
    /// bandwidth, nothing more (it is not compared at the commit, nor watched by `retry`).
    /// One etcd transaction holds at most [`Options::max_txn_ops`](crate::Options) − 2 of
    /// them (126 by default); any more are read when the closure asks for them.
    pub fn prefetch(mut self, keys: impl IntoIterator<Item = K>) -> Self {
        self.prefetch.extend(keys);
        self
    }

    /// Runs `f` as one transaction, as often as it takes, and returns its result: see
    /// [`EtcdStore::try_atomically`].
    ///
    /// # Errors
    ///
    /// The closure's own error (nothing written), or `E::from` a [`TxError`]: a timeout
    /// ([`is_timeout`](TxError::is_timeout)), or etcd's failure ([`error`](TxError::error)).
    pub async fn run<T, E, F, Fut>(self, mut f: F) -> Result<T, E>
    where
        E: From<TxError>,
        F: FnMut(Tx<'s, K, V>) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut runner = self.runner()?;
        loop {
            let tx = runner.start();
            let result = f(tx.clone()).await;
            if let Some(done) = runner.finish(&tx, result).await {
                return done;
            }
        }
    }

    /// The loop of attempts, for [`run`](Transaction::run) and the blocking facade.
    pub(crate) fn runner(self) -> Result<Runner<'s, K, V>, TxError> {
        let prefetch = self
            .prefetch
            .iter()
            .map(|key| self.store.etcd_key(key))
            .collect::<Result<Vec<_>, Error>>()
            .map_err(|e| TxError(Stop::Failed(e)))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Ok(Runner {
            store: self.store,
            backoff: self.backoff,
            deadline: self.deadline,
            prefetch,
            attempt: 0,
            conflicts: 0,
            snapshot: None,
            reread: Vec::new(),
            random: (self.store.nonce ^ u64::from(nanos)) | 1,
        })
    }
}

/// The loop of attempts of one transaction: [`start`](Runner::start) an attempt, run the
/// closure with its [`Tx`], then [`finish`](Runner::finish) it (commit, wait, back off).
pub(crate) struct Runner<'s, K, V> {
    store: &'s EtcdStore<K, V>,
    backoff: Backoff,
    deadline: Option<Instant>,
    prefetch: Vec<Vec<u8>>,
    attempt: u32,
    conflicts: u32,
    /// What the last failed commit read, for the next attempt.
    snapshot: Option<(At, Cache)>,
    /// Keys the last attempt read, to read again in the next attempt's first read (when a
    /// wait made the snapshot stale).
    reread: Vec<Vec<u8>>,
    /// xorshift64 state for the backoff's jitter.
    random: u64,
}

/// What an attempt that ended asks for.
enum Next<V> {
    Commit(Plan<V>),
    Conflict,
    Wait(Vec<Vec<u8>>, Option<i64>),
    Fail(Error),
}

/// A commit, as the attempt left it.
struct Plan<V> {
    at: Option<At>,
    keys: Vec<TxKey<V>>,
    /// Keys read at the revision but not touched (prefetched): read again on a conflict too.
    cached: Vec<Vec<u8>>,
}

impl<'s, K, V> Runner<'s, K, V>
where
    K: KeyCodec,
    V: Serialize + DeserializeOwned,
{
    /// A new attempt.
    pub(crate) fn start(&mut self) -> Tx<'s, K, V> {
        self.attempt = self.attempt.saturating_add(1);
        let tx = Tx::new(self.store, self.attempt, self.snapshot.take());
        let mut prefetch = self.prefetch.clone();
        prefetch.extend(std::mem::take(&mut self.reread));
        prefetch.sort();
        prefetch.dedup();
        tx.state().prefetch = prefetch;
        tx
    }

    /// Ends the attempt `tx` whose closure returned `result`: commits it, or waits for a change
    /// (retry), or backs off (conflict). `Some`: the call's answer; `None`: run the closure
    /// again.
    pub(crate) async fn finish<T, E: From<TxError>>(
        &mut self,
        tx: &Tx<'s, K, V>,
        result: Result<T, E>,
    ) -> Option<Result<T, E>> {
        let next = {
            let mut state = tx.state();
            state.ended = true;
            match (state.stop.take(), &result) {
                (Some(Stop::Retry), _) => Next::Wait(
                    state.keys.iter().map(|k| k.etcd_key.clone()).collect(),
                    state.at.map(|at| at.revision),
                ),
                (Some(Stop::Conflict), _) => Next::Conflict,
                (Some(Stop::Failed(e)), _) => Next::Fail(e),
                (Some(Stop::Timeout), _) => unreachable!("an attempt never times out itself"),
                (None, Err(_)) => return Some(result), // the closure's own error: nothing written
                (None, Ok(_)) => Next::Commit(Plan {
                    at: state.at,
                    keys: std::mem::take(&mut state.keys),
                    cached: state.cache.keys().cloned().collect(),
                }),
            }
        };
        let failed = |e: Error| Some(Err(E::from(TxError(Stop::Failed(e)))));
        let timeout = || Some(Err(E::from(TxError(Stop::Timeout))));
        match next {
            Next::Fail(e) => failed(e),
            Next::Wait(keys, revision) => {
                match self.store.changed(&keys, revision, self.deadline).await {
                    Ok(true) => None,
                    Ok(false) => timeout(),
                    Err(e) => failed(e),
                }
            }
            Next::Conflict => self.back_off().await.then(timeout).flatten(),
            Next::Commit(plan) => match self.commit(plan).await {
                Ok(true) => Some(result),
                Ok(false) => self.back_off().await.then(timeout).flatten(),
                Err(e) => failed(e),
            },
        }
    }

    /// Waits after a conflict; true if the deadline has passed (give up).
    async fn back_off(&mut self) -> bool {
        self.conflicts = self.conflicts.saturating_add(1);
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        // The first conflict reruns at once, from the snapshot the failed commit read: as
        // fresh as a new read. A wait would make it stale, so after one the next attempt
        // reads the same keys afresh, in one request.
        let delay = match self.conflicts {
            1 => Duration::ZERO,
            n => self.backoff.delay(n - 1, self.random),
        };
        if !delay.is_zero() {
            // Read the same keys again, all in the next attempt's first read.
            if let Some((_, cache)) = self.snapshot.take() {
                self.reread = cache.into_keys().collect();
            }
        }
        let now = Instant::now();
        match self.deadline {
            Some(deadline) if now + delay >= deadline => {
                tokio::time::sleep_until(deadline.into()).await;
                true
            }
            _ => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                false
            }
        }
    }

    /// Commits the attempt's writes: `Ok(true)` if it landed (or wrote nothing), `Ok(false)`
    /// on a failed compare (then the next attempt starts from what the commit read).
    async fn commit(&mut self, plan: Plan<V>) -> Result<bool, Error> {
        let Plan { at, keys, cached } = plan;
        let Some(at) = at.filter(|_| keys.iter().any(|k| k.write.is_some())) else {
            // Read only: every read was of one linearizable snapshot, taken during the call.
            return Ok(true);
        };
        let store = self.store;
        let mut compares = Vec::with_capacity(keys.len() + 1);
        let mut writes = Vec::new();
        let mut creates = false;
        let mut removed = None;
        for key in &keys {
            compares.push(Compare::mod_revision(
                key.etcd_key.clone(),
                CompareOp::Equal,
                key.revision,
            ));
            let version = key.version.saturating_add(1);
            match &key.write {
                None => {}
                Some(Write::Value(value)) => {
                    let bytes = encode_value(&key.etcd_key, version, value.as_ref())?;
                    writes.push(TxnOp::put(key.etcd_key.clone(), bytes, None));
                    creates |= key.revision == 0;
                }
                Some(Write::Remove) => {
                    if key.revision != 0 {
                        writes.push(TxnOp::delete(key.etcd_key.clone(), None));
                    }
                    removed = removed.max(Some(version));
                }
            }
        }
        if creates {
            // The version of a key created here came from the floor at the attempt's revision.
            compares.push(store.floor_unchanged(&at.floor));
        }
        if let Some(version) = removed {
            writes.push(store.raise_floor(version));
        }
        // Besides a compare and a write per key: the marker on each side, the floor's compare
        // and its raise. One limit for every writing transaction, whatever it writes.
        let limit = store.options.max_txn_ops;
        if keys.len() + 3 > limit {
            return Err(Error::TooManyKeys {
                keys: keys.len(),
                limit: limit.saturating_sub(3),
            });
        }
        // On a failed compare, read everything again in the same round trip: the next
        // attempt's snapshot.
        let mut again: Vec<Vec<u8>> = keys.iter().map(|k| k.etcd_key.clone()).collect();
        again.extend(cached);
        let otherwise: Vec<TxnOp> = if again.len() < limit {
            let mut gets: Vec<TxnOp> = again.iter().map(|k| TxnOp::get(k.clone(), None)).collect();
            gets.push(store.get_floor());
            gets
        } else {
            again.clear();
            Vec::new()
        };
        let mut budget = Budget::new(store.options.budget);
        let sent = Instant::now();
        match store
            .write(&compares, &writes, &otherwise, &mut budget)
            .await
        {
            Ok(Written::Landed(_)) => Ok(true),
            // Never landed, and now never will: run the closure again.
            Ok(Written::Fenced) => Ok(false),
            Ok(Written::Refused(response)) => {
                if !again.is_empty() {
                    let mut kvs = ranges(&response);
                    let floor = store.floor_from(kvs.pop().flatten().as_ref())?;
                    let at = At {
                        revision: revision_of(&response),
                        floor,
                    };
                    self.snapshot = Some((at, again.into_iter().zip(kvs).collect()));
                }
                Ok(false)
            }
            Err(Unwritten::Failed(e)) => Err(e),
            Err(Unwritten::InDoubt(doubt, Error::OutcomeUnknown)) => {
                // Nobody could commit this attempt again later: settle it now, for as long as
                // its marker surely lives (half the lease's time to live from the send; the
                // lease was at most a quarter old then), or until the deadline.
                let patience = sent + store.options.lease_ttl / 2;
                let until = self.deadline.map_or(patience, |d| d.min(patience));
                loop {
                    match store.resolve(&doubt, &mut Budget::until(until)).await {
                        Resolved::Landed(_) => return Ok(true),
                        // Never landed, and now never will: run the closure again.
                        Resolved::Fenced => return Ok(false),
                        Resolved::Lost => return Err(Error::OutcomeLost),
                        Resolved::Fatal(reason) => return Err(Error::Etcd { reason }),
                        Resolved::Unknown if Instant::now() >= until => {
                            return Err(Error::OutcomeUnknown)
                        }
                        Resolved::Unknown => {}
                    }
                }
            }
            Err(Unwritten::InDoubt(_, e)) => Err(e),
        }
    }
}

impl<K, V> EtcdStore<K, V>
where
    K: KeyCodec,
    V: Serialize + DeserializeOwned,
{
    /// Runs `f` as one transaction and returns its result: the way to write new code.
    ///
    /// The closure gets a [`Tx`] (by value: move it into the future, `|tx| async move { ... }`),
    /// reads and writes keys through it as it goes (reads see its own writes) and passes every
    /// [`TxError`] up with `?`. When its future returns `Ok`, its reads are compared and its
    /// writes land, all in one etcd transaction; if some key it read had changed, **the
    /// closure runs again**, after a short backoff, until it commits. So it may run more than
    /// once: keep side effects out of it (or make them idempotent), and return what you
    /// computed.
    ///
    /// Every read of one run is at one etcd revision: the closure never sees a state that did
    /// not exist at one instant. [`Tx::retry`] waits (through an etcd watch) until a key read
    /// changes; [`Tx::or_else`] tries an alternative. For an error type of your own use
    /// [`try_atomically`](EtcdStore::try_atomically); for a timeout, another backoff, or keys
    /// to read in the first round trip, [`transaction`](EtcdStore::transaction).
    ///
    /// ```no_run
    /// # async fn demo(store: stm_store_etcd::EtcdStore<String, i64>) -> Result<(), stm_store_etcd::Error> {
    /// let (alice, bob) = ("alice".to_string(), "bob".to_string());
    /// let (alice, bob) = (&alice, &bob);
    /// // Move 30 from alice to bob.
    /// store
    ///     .atomically(|tx| async move {
    ///         let a = tx.get(alice).await?.unwrap_or(0);
    ///         let b = tx.get(bob).await?.unwrap_or(0);
    ///         tx.set(alice, a - 30).await?;
    ///         tx.set(bob, b + 30).await
    ///     })
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// What etcd failed the call with (see [`TxError::error`]): `BusyRetry` when etcd did not
    /// answer within the budget (nothing was written), [`Error::OutcomeUnknown`] when the
    /// commit's answer was lost and etcd did not answer again in time, [`Error::Decode`], ...
    ///
    /// # Panics
    ///
    /// If the closure returns a [`TxError`] that its own attempt did not raise (one kept from
    /// an earlier attempt). A panic in the closure goes on to the caller; nothing is written.
    pub async fn atomically<'s, T, F, Fut>(&'s self, f: F) -> Result<T, Error>
    where
        F: FnMut(Tx<'s, K, V>) -> Fut,
        Fut: Future<Output = Result<T, TxError>>,
    {
        finish_atomically(self.transaction().run(f).await, "EtcdStore::atomically")
    }

    /// [`atomically`](EtcdStore::atomically) for a closure with its own error type `E` (with
    /// `E: From<TxError>`, so that `?` passes both up). An `Err` of the closure ends the
    /// transaction: nothing is written, and the error comes back unchanged.
    ///
    /// # Errors
    ///
    /// The closure's own error, or `E::from` a [`TxError`] carrying etcd's failure
    /// ([`TxError::error`]).
    pub async fn try_atomically<'s, T, E, F, Fut>(&'s self, f: F) -> Result<T, E>
    where
        E: From<TxError>,
        F: FnMut(Tx<'s, K, V>) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.transaction().run(f).await
    }

    /// A transaction with options (a timeout, a backoff, keys to prefetch).
    pub fn transaction(&self) -> Transaction<'_, K, V> {
        Transaction::new(self)
    }
}

/// `atomically`'s answer from the transaction's: etcd's failure as [`Error`].
#[track_caller]
pub(crate) fn finish_atomically<T>(result: Result<T, TxError>, call: &str) -> Result<T, Error> {
    match result {
        Ok(value) => Ok(value),
        Err(TxError(Stop::Failed(e))) => Err(e),
        Err(stale) => panic!(
            "{call}: the closure returned a TxError that its own attempt did not raise ({stale})"
        ),
    }
}
