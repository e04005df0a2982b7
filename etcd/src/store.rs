//! The store: connecting, one request and its retries, the reads (`usevar`, `using`, `dump`)
//! and the floor that removals raise. Commits are in `commit`, transactions in `tx`.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, KvClient, LeaseClient, Txn,
    TxnOp, TxnOpResponse, TxnResponse, WatchClient,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{decode_value, encode_value, KeyCodec};
use crate::error::{show_key, Error};
use crate::handle::{Collection, Handle, Value};

/// How long calls wait for etcd, and the limits of one transaction.
///
/// ```
/// use std::time::Duration;
/// let options = stm_store_etcd::Options {
///     budget: Duration::from_secs(2),
///     ..Default::default()
/// };
/// assert_eq!(options.request_timeout, Duration::from_secs(2));
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    /// How long one request to etcd may take before it counts as failed (default 2 s).
    pub request_timeout: Duration,
    /// How long a call keeps retrying after failures that may pass (etcd unreachable, no
    /// leader, a timeout) before it answers `BusyRetry` (default 5 s). A new attempt is
    /// started only before the budget is spent, so a call answers within about
    /// `budget + request_timeout`. `connect` uses the same budget.
    pub budget: Duration,
    /// The time to live of the lease under which commit markers are written (default 120 s;
    /// at least 4 × (`budget` + `request_timeout`), checked by `connect`).
    /// A new lease is granted when the current one is older than a quarter of this, so a
    /// commit in doubt ([`Error::OutcomeUnknown`]) can be resolved for at least three quarters
    /// of it after it was sent. A transaction whose commit is in doubt keeps trying to settle
    /// it for half of it.
    pub lease_ttl: Duration,
    /// The most operations this store puts in one etcd transaction (default 128, etcd's
    /// default `--max-txn-ops`). `using` reads at most this many keys; a commit holds at most
    /// this many minus one (its marker).
    pub max_txn_ops: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(2),
            budget: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(120),
            max_txn_ops: 128,
        }
    }
}

/// The contract's store over etcd: versioned keys under a prefix, atomic multi-key commits
/// as etcd transactions. Handles ([`Value`], [`Collection`]) borrow it.
///
/// ```no_run
/// # async fn demo() -> Result<(), stm_store_etcd::Error> {
/// use stm_store_etcd::EtcdStore;
/// let store = EtcdStore::<String, i64>::connect(["127.0.0.1:2379"], "bank/").await?;
/// let mut accounts = store.using(["alice".to_string(), "bob".to_string()]).await?;
/// let alice = accounts["alice"].value().copied().unwrap_or(100);
/// let bob = accounts["bob"].value().copied().unwrap_or(100);
/// accounts["alice"].set(alice - 10);
/// accounts["bob"].set(bob + 10);
/// match accounts.commit().await {
///     Ok(()) => {}
///     Err(e) if e == stm_store::Error::ConcurrentUpdate => { /* re-read and redo */ }
///     Err(e) => return Err(e),
/// }
/// # Ok(())
/// # }
/// ```
pub struct EtcdStore<K, V> {
    pub(crate) kv: KvClient,
    pub(crate) leases: LeaseClient,
    pub(crate) watches: WatchClient,
    /// `prefix` + `k/`: the keys.
    keys: Vec<u8>,
    /// `prefix` + `m/`: the commit markers.
    pub(crate) markers: Vec<u8>,
    /// `prefix` + `f`: the floor (see [`Floor`]).
    floor: Vec<u8>,
    pub(crate) options: Options,
    /// The lease for markers, and when it was asked for.
    pub(crate) lease: Mutex<Option<(i64, Instant)>>,
    /// Names this store's commits (with `commits`), and seeds the backoff's jitter.
    pub(crate) nonce: u64,
    pub(crate) commits: AtomicU64,
    /// Requests sent, for [`requests`](EtcdStore::requests).
    requests: AtomicU64,
    /// A request failed and none succeeded since: check that etcd answers before sending a
    /// write (so that an unresponsive etcd gives `BusyRetry`, not a commit in doubt).
    pub(crate) suspect: AtomicBool,
    types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> std::fmt::Debug for EtcdStore<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("keys", &show_key(&self.keys))
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Why one request failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Certainly not applied: nothing listens at the endpoint (connection refused); retrying
    /// may help once etcd is up.
    Refused(String),
    /// Certainly not applied (the connection could not be made); retrying may help.
    NotSent(String),
    /// Maybe applied (timed out, connection lost, no leader); retrying may help.
    Ambiguous(String),
    /// The lease named in a put does not exist (expired); certainly not applied.
    LeaseGone,
    /// A read at a revision that etcd has compacted away; certainly not applied.
    Compacted,
    /// Certainly not applied, and retrying will not help.
    Fatal(String),
}

impl Failure {
    pub(crate) fn from_client(e: etcd_client::Error) -> Self {
        use etcd_client::Error as E;
        match e {
            E::GRpcStatus(status) => {
                use tonic::Code;
                let message = status.message().to_string();
                if refused(&status) {
                    return Failure::Refused(status.to_string());
                }
                if status.message().contains("tcp connect error") {
                    return Failure::NotSent(status.to_string());
                }
                match status.code() {
                    Code::NotFound if message.contains("lease not found") => Failure::LeaseGone,
                    Code::OutOfRange if message.contains("compacted") => Failure::Compacted,
                    Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::Cancelled
                    | Code::Unknown
                    | Code::Aborted
                    | Code::Internal
                    | Code::ResourceExhausted => Failure::Ambiguous(status.to_string()),
                    _ => Failure::Fatal(format!("{:?}: {message}", status.code())),
                }
            }
            E::TransportError(e) => Failure::Ambiguous(e.to_string()),
            E::IoError(e) => Failure::Ambiguous(e.to_string()),
            other => Failure::Fatal(other.to_string()),
        }
    }

    fn reason(&self) -> String {
        match self {
            Failure::Refused(r)
            | Failure::NotSent(r)
            | Failure::Ambiguous(r)
            | Failure::Fatal(r) => r.clone(),
            Failure::LeaseGone => "lease not found".into(),
            Failure::Compacted => "the revision read was compacted".into(),
        }
    }
}

/// Whether the connection was refused (nothing listens there, so the request was never sent).
fn refused(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = e.source();
    }
    status.message().contains("Connection refused")
}

/// A call's retry budget: waits between retries, 20 ms doubling to 500 ms, never past the
/// deadline.
pub(crate) struct Budget {
    deadline: Instant,
    next: Duration,
}

impl Budget {
    pub(crate) fn new(budget: Duration) -> Self {
        Self::until(Instant::now() + budget)
    }

    pub(crate) fn until(deadline: Instant) -> Self {
        Self {
            deadline,
            next: Duration::from_millis(20),
        }
    }

    /// Waits before the next try; `false` when the budget is spent (do not try again).
    pub(crate) async fn wait(&mut self) -> bool {
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        tokio::time::sleep(self.next.min(self.deadline - now)).await;
        self.next = (self.next * 2).min(Duration::from_millis(500));
        true
    }

    pub(crate) fn spent(&self) -> bool {
        Instant::now() >= self.deadline
    }
}

impl<K, V> EtcdStore<K, V> {
    /// Connects to etcd with the default [`Options`] and checks that it answers. Keys live
    /// under `prefix` (`prefix` + `k/` + the key's bytes; commit markers under `prefix` +
    /// `m/`): give each store its own prefix.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), stm_store_etcd::Error> {
    /// let store = stm_store_etcd::EtcdStore::<u64, String>::connect(
    ///     ["http://127.0.0.1:2379"],
    ///     "app/",
    /// )
    /// .await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] if an endpoint is malformed, or etcd did not answer within the
    /// budget.
    pub async fn connect<E, S>(endpoints: S, prefix: impl Into<Vec<u8>>) -> Result<Self, Error>
    where
        E: AsRef<str>,
        S: AsRef<[E]>,
    {
        Self::connect_with(endpoints, prefix, Options::default()).await
    }

    /// [`connect`](Self::connect) with the given [`Options`].
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_with<E, S>(
        endpoints: S,
        prefix: impl Into<Vec<u8>>,
        options: Options,
    ) -> Result<Self, Error>
    where
        E: AsRef<str>,
        S: AsRef<[E]>,
    {
        let names = endpoint_names(endpoints.as_ref());
        let fail = |reason: String| Error::Connect {
            endpoints: names.clone(),
            reason,
        };
        if names.is_empty() {
            return Err(fail("no endpoints given".into()));
        }
        if options.lease_ttl < (options.budget + options.request_timeout) * 4 {
            return Err(fail(format!(
                "Options: lease_ttl ({:?}) must be at least 4 x (budget + request_timeout) ({:?}), \
                 so that a commit in doubt can be resolved while its marker lives",
                options.lease_ttl,
                (options.budget + options.request_timeout) * 4
            )));
        }
        let connect_options = ConnectOptions::new()
            .with_connect_timeout(options.request_timeout)
            .with_timeout(options.request_timeout);
        let connecting = Client::connect(&names, Some(connect_options));
        let client = match tokio::time::timeout(options.budget, connecting).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(fail(e.to_string())),
            Err(_) => return Err(fail(format!("no answer within {:?}", options.budget))),
        };
        let prefix = prefix.into();
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        let store = Self {
            kv: client.kv_client(),
            leases: client.lease_client(),
            watches: client.watch_client(),
            keys: [&prefix[..], b"k/"].concat(),
            markers: [&prefix[..], b"m/"].concat(),
            floor: [&prefix[..], b"f"].concat(),
            options,
            lease: Mutex::new(None),
            nonce: hasher.finish(),
            commits: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            suspect: AtomicBool::new(false),
            types: PhantomData,
        };
        // The client connects lazily: ask etcd something to know that it answers. Nothing
        // listening there is an answer too: waiting for the budget would only delay it.
        let mut budget = Budget::new(store.options.budget);
        loop {
            match store.probe().await {
                Ok(()) => return Ok(store),
                Err(Failure::Fatal(reason)) => return Err(fail(reason)),
                Err(Failure::Refused(reason)) => {
                    return Err(fail(format!(
                        "connection refused: is etcd running and listening there? ({reason})"
                    )))
                }
                Err(failure) => {
                    if !budget.wait().await {
                        return Err(fail(format!(
                            "no answer within {:?} (last: {})",
                            store.options.budget,
                            failure.reason()
                        )));
                    }
                }
            }
        }
    }

    /// The options this store was connected with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// How many requests this store has sent to etcd since it connected: reads, commits,
    /// retries, lease grants, watches set up. Each is a round trip (at least), so this is
    /// what a piece of code costs over the network: a transaction that reads two keys and
    /// writes them costs three (two reads and the commit), or two with the keys named to
    /// [`Transaction::prefetch`](crate::Transaction::prefetch).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// One request, with the request timeout; any success clears `suspect`, any failure
    /// that may pass sets it.
    pub(crate) async fn request<T, F>(&self, call: F) -> Result<T, Failure>
    where
        F: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let answer = match tokio::time::timeout(self.options.request_timeout, call).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(Failure::from_client(e)),
            Err(_) => Err(Failure::Ambiguous(format!(
                "no answer within {:?}",
                self.options.request_timeout
            ))),
        };
        match &answer {
            Ok(_) => self.suspect.store(false, Ordering::Relaxed),
            Err(Failure::Refused(_) | Failure::NotSent(_) | Failure::Ambiguous(_)) => {
                self.suspect.store(true, Ordering::Relaxed)
            }
            Err(_) => {}
        }
        answer
    }

    /// A request that may be repeated (a read, a validation) until it gets an answer or the
    /// budget is spent (`BusyRetry`). A compacted revision is [`Error::Etcd`]; callers that
    /// read at a revision catch [`Failure::Compacted`] themselves.
    pub(crate) async fn idempotent<T, F, Fut>(&self, mut call: F) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let mut budget = Budget::new(self.options.budget);
        loop {
            match call().await {
                Ok(answer) => return Ok(answer),
                Err(failure @ (Failure::Fatal(_) | Failure::Compacted | Failure::LeaseGone)) => {
                    return Err(failure)
                }
                Err(failure) => {
                    if !budget.wait().await {
                        return Err(failure);
                    }
                }
            }
        }
    }

    pub(crate) async fn txn(&self, txn: Txn) -> Result<TxnResponse, Failure> {
        let mut kv = self.kv.clone();
        self.request(async move { kv.txn(txn).await }).await
    }

    /// A cheap read: does etcd answer (linearizable, so it needs a leader)?
    pub(crate) async fn probe(&self) -> Result<(), Failure> {
        let mut kv = self.kv.clone();
        let key = [&self.markers[..], b"probe"].concat();
        self.request(async move { kv.get(key, None).await })
            .await
            .map(drop)
    }

    pub(crate) fn etcd_key(&self, key: &K) -> Result<Vec<u8>, Error>
    where
        K: KeyCodec,
    {
        let bytes = key.encode_key().map_err(|e| Error::KeyCodec {
            reason: e.to_string(),
        })?;
        Ok([&self.keys[..], &bytes[..]].concat())
    }
}

/// The endpoints as given, for [`Error::Connect`].
pub(crate) fn endpoint_names<E: AsRef<str>>(endpoints: &[E]) -> Vec<String> {
    endpoints.iter().map(|e| e.as_ref().to_string()).collect()
}

/// The floor: the highest version that a removal gave a key of this store (a removal is a
/// version, one above the removed key's last), kept in the etcd key `prefix` + `f` as 8 bytes,
/// big-endian. etcd forgets everything about a deleted key, so this is what keeps a key's
/// versions from going back: a key created after removals starts one above the floor. Every
/// removal raises it in its own commit (never lowers it), and every creation compares it, so a
/// removal between a creator's read and its write makes the creator read again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Floor {
    /// The highest removal version so far (0: no key was ever removed).
    pub(crate) value: u64,
    /// The floor key's modification revision (0: it does not exist).
    pub(crate) revision: i64,
}

impl Floor {
    /// The version of a key created at this floor: 0 in a store that never removed a key, else
    /// one above the highest removal.
    pub(crate) fn first_version(&self) -> u64 {
        if self.value == 0 {
            0
        } else {
            self.value.saturating_add(1)
        }
    }
}

/// The first key-value of each range response, in order.
pub(crate) fn ranges(response: &TxnResponse) -> Vec<Option<KeyValue>> {
    response
        .op_responses()
        .into_iter()
        .filter_map(|op| match op {
            TxnOpResponse::Get(mut get) => Some(get.take_kvs().into_iter().next()),
            _ => None,
        })
        .collect()
}

/// The revision a transaction's answer is at.
pub(crate) fn revision_of(response: &TxnResponse) -> i64 {
    response.header().map_or(0, |h| h.revision())
}

/// The etcd key's modification revision, version and value (contract version, from the value).
pub(crate) fn decode_read<V: DeserializeOwned>(
    kv: &KeyValue,
) -> Result<(i64, u64, Option<V>), Error> {
    let (version, value) = decode_value(kv.key(), kv.value())?;
    Ok((kv.mod_revision(), version, value))
}

impl<K, V> EtcdStore<K, V> {
    /// A read of the floor, to put in a transaction.
    pub(crate) fn get_floor(&self) -> TxnOp {
        TxnOp::get(self.floor.clone(), None)
    }

    /// The floor from the answer to [`get_floor`](Self::get_floor).
    pub(crate) fn floor_from(&self, kv: Option<&KeyValue>) -> Result<Floor, Error> {
        let Some(kv) = kv else {
            return Ok(Floor::default());
        };
        let value = <[u8; 8]>::try_from(kv.value()).map_err(|_| Error::Decode {
            key: show_key(kv.key()),
            reason: format!(
                "the floor is {} bytes, expected 8 (a big-endian version)",
                kv.value().len()
            ),
        })?;
        Ok(Floor {
            value: u64::from_be_bytes(value),
            revision: kv.mod_revision(),
        })
    }

    /// A compare that holds while the floor is as read.
    pub(crate) fn floor_unchanged(&self, floor: &Floor) -> Compare {
        Compare::mod_revision(self.floor.clone(), CompareOp::Equal, floor.revision)
    }

    /// An operation that raises the floor to `to` unless it is higher already: a nested
    /// transaction (etcd compares values byte by byte, and big-endian bytes of equal length
    /// compare as the numbers do), so removals never conflict with each other over it.
    pub(crate) fn raise_floor(&self, to: u64) -> TxnOp {
        let bytes = to.to_be_bytes().to_vec();
        let put = || TxnOp::put(self.floor.clone(), bytes.clone(), None);
        let higher = Txn::new()
            .when([Compare::value(
                self.floor.clone(),
                CompareOp::Less,
                bytes.clone(),
            )])
            .and_then([put()]);
        TxnOp::txn(
            Txn::new()
                .when([Compare::version(self.floor.clone(), CompareOp::Equal, 0)])
                .and_then([put()])
                .or_else([TxnOp::txn(higher)]),
        )
    }
}

impl<K, V> EtcdStore<K, V>
where
    K: KeyCodec + Ord,
    V: Serialize + DeserializeOwned,
{
    /// Reads one key into a [`Value`] handle, creating it if it is new (see the crate docs
    /// for what creating means over etcd).
    ///
    /// ```no_run
    /// # async fn demo(store: stm_store_etcd::EtcdStore<String, i64>) -> Result<(), stm_store_etcd::Error> {
    /// let mut counter = store.usevar("counter".to_string()).await?;
    /// counter.set(counter.value().copied().unwrap_or(0) + 1);
    /// counter.commit().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// `BusyRetry` when etcd did not answer within the budget; [`Error::KeyCodec`],
    /// [`Error::Decode`] for a key or value that does not convert.
    pub async fn usevar(&self, key: K) -> Result<Value<'_, K, V>, Error> {
        let mut values = self.read(vec![key]).await?;
        let handle = values.pop().expect("one key read");
        Ok(Value::new(self, handle))
    }

    /// Reads several keys in one etcd transaction (one revision: a consistent snapshot) into
    /// a [`Collection`], creating the keys that are new. Duplicates are merged.
    ///
    /// ```no_run
    /// # async fn demo(store: stm_store_etcd::EtcdStore<String, i64>) -> Result<(), stm_store_etcd::Error> {
    /// let mut c = store.using(["a".to_string(), "b".to_string(), "a".to_string()]).await?;
    /// assert_eq!(c.len(), 2);
    /// c["a"].set(1);
    /// c["b"].set(2);
    /// c.commit().await?; // both land, or neither
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`usevar`](Self::usevar), and [`Error::TooManyKeys`] past
    /// [`Options::max_txn_ops`].
    pub async fn using<I: IntoIterator<Item = K>>(
        &self,
        keys: I,
    ) -> Result<Collection<'_, K, V>, Error> {
        let handles = self.read(keys.into_iter().collect()).await?;
        Ok(Collection::new(
            self,
            handles.into_iter().map(|h| Value::new(self, h)).collect(),
        ))
    }

    /// Commits one handle: the same as [`Value::commit`].
    ///
    /// # Panics
    ///
    /// If `value` came from another store.
    pub async fn set(&self, value: &mut Value<'_, K, V>) -> Result<(), Error> {
        assert!(
            std::ptr::eq(value.store(), self),
            "EtcdStore::set: this handle belongs to another store; commit it with its own store (or Value::commit)"
        );
        value.commit().await
    }

    /// Commits a collection: the same as [`Collection::commit`].
    ///
    /// # Panics
    ///
    /// If any handle in `values` came from another store.
    pub async fn set_values(&self, values: &mut Collection<'_, K, V>) -> Result<(), Error> {
        assert!(
            values.all_from(self),
            "EtcdStore::set_values: this collection holds handles of another store; commit it with its own store (or Collection::commit)"
        );
        values.commit().await
    }

    /// Every key under the prefix with its version and value, in key order: one range
    /// request, so one revision (a consistent snapshot). Keys created by `usevar`/`using` and
    /// never written are listed with version 0 and no value.
    ///
    /// ```no_run
    /// # async fn demo(store: stm_store_etcd::EtcdStore<String, i64>) -> Result<(), stm_store_etcd::Error> {
    /// for (key, version, value) in store.dump().await? {
    ///     println!("{key} v{version}: {value:?}");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// `BusyRetry` when etcd did not answer within the budget; [`Error::KeyCodec`] or
    /// [`Error::Decode`] for a key or value under the prefix that does not convert.
    pub async fn dump(&self) -> Result<Vec<(K, u64, Option<V>)>, Error> {
        let kvs = match self
            .idempotent(|| {
                let mut kv = self.kv.clone();
                let prefix = self.keys.clone();
                let options = GetOptions::new().with_prefix();
                self.request(async move { kv.get(prefix, Some(options)).await })
            })
            .await
        {
            Ok(mut response) => response.take_kvs(),
            Err(failure) => return Err(failure.into_error()),
        };
        let mut rows = kvs
            .iter()
            .map(|kv| {
                let key =
                    K::decode_key(&kv.key()[self.keys.len()..]).map_err(|e| Error::KeyCodec {
                        reason: format!("etcd key {}: {e}", show_key(kv.key())),
                    })?;
                let (_, version, value) = decode_read(kv)?;
                Ok((key, version, value))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(rows)
    }

    /// Reads `keys` (deduplicated) in one transaction, creating the missing ones; in key order.
    pub(crate) async fn read(&self, keys: Vec<K>) -> Result<Vec<Handle<K, V>>, Error> {
        let mut entries = keys
            .into_iter()
            .map(|key| Ok((self.etcd_key(&key)?, key)))
            .collect::<Result<Vec<_>, Error>>()?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|a, b| a.0 == b.0);
        // One more operation reads (or compares) the floor.
        if entries.len() + 1 > self.options.max_txn_ops {
            return Err(Error::TooManyKeys {
                keys: entries.len(),
                limit: self.options.max_txn_ops - 1,
            });
        }
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let etcd_keys: Vec<Vec<u8>> = entries.iter().map(|(e, _)| e.clone()).collect();
        let found = self.read_creating(&etcd_keys).await?;
        let mut handles = entries
            .into_iter()
            .zip(found)
            .map(|((etcd_key, key), (revision, version, value))| {
                Handle::new(key, etcd_key, revision, version, value)
            })
            .collect::<Vec<_>>();
        handles.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(handles)
    }

    /// The (modification revision, version, value) of each key, from one transaction; keys that
    /// do not exist are created ("no value", at the floor's first version) in the transaction
    /// that reads the others.
    async fn read_creating(&self, keys: &[Vec<u8>]) -> Result<Vec<(i64, u64, Option<V>)>, Error> {
        let gets = |which: &mut dyn Iterator<Item = &Vec<u8>>| -> Vec<TxnOp> {
            which.map(|k| TxnOp::get(k.clone(), None)).collect()
        };
        let mut budget = Budget::new(self.options.budget);
        // The first transaction only reads; later ones also create what was missing. Each
        // reads the floor last.
        let mut found: Option<(Vec<Option<KeyValue>>, Floor)> = None;
        loop {
            let attempt = match &found {
                None => {
                    let mut ops = gets(&mut keys.iter());
                    ops.push(self.get_floor());
                    self.txn(Txn::new().and_then(ops)).await.map(|r| ranges(&r))
                }
                Some((known, floor)) => {
                    // Creates the missing keys if nothing read has changed: the present keys
                    // keep their revisions, the missing ones are still missing, the floor is
                    // as read. Then everything read holds at this transaction's revision.
                    let first = floor.first_version();
                    let mut compares = Vec::with_capacity(keys.len() + 1);
                    let mut create = Vec::new();
                    for (key, kv) in keys.iter().zip(known) {
                        let revision = kv.as_ref().map_or(0, KeyValue::mod_revision);
                        compares.push(Compare::mod_revision(
                            key.clone(),
                            CompareOp::Equal,
                            revision,
                        ));
                        if kv.is_none() {
                            let bytes = encode_value::<V>(key, first, None)?;
                            create.push(TxnOp::put(key.clone(), bytes, None));
                        }
                    }
                    compares.push(self.floor_unchanged(floor));
                    let mut again = gets(&mut keys.iter());
                    again.push(self.get_floor());
                    let txn = Txn::new().when(compares).and_then(create).or_else(again);
                    match self.txn(txn).await {
                        Ok(response) if response.succeeded() => {
                            let created = revision_of(&response);
                            return known
                                .iter()
                                .map(|kv| match kv {
                                    Some(kv) => decode_read(kv),
                                    None => Ok((created, first, None)),
                                })
                                .collect();
                        }
                        Ok(response) => Ok(ranges(&response)),
                        Err(failure) => Err(failure),
                    }
                }
            };
            match attempt {
                Ok(mut read) => {
                    let floor = self.floor_from(read.pop().flatten().as_ref())?;
                    if read.iter().all(Option::is_some) {
                        return read.iter().flatten().map(decode_read).collect();
                    }
                    // A value that does not decode fails the call before anything is created.
                    for kv in read.iter().flatten() {
                        decode_value::<V>(kv.key(), kv.value())?;
                    }
                    // Someone else may create or remove a key, or move the floor, between two
                    // tries; then try again at once (each try sees a later revision).
                    found = Some((read, floor));
                    if budget.spent() {
                        return Err(stm_store::Error::BusyRetry.into());
                    }
                }
                Err(Failure::Fatal(reason)) => return Err(Error::Etcd { reason }),
                Err(_) => {
                    if !budget.wait().await {
                        return Err(stm_store::Error::BusyRetry.into());
                    }
                }
            }
        }
    }
}

impl Failure {
    /// The error a call answers once it gives up on this failure: a final one as itself,
    /// anything that may pass as `BusyRetry` (nothing was written).
    pub(crate) fn into_error(self) -> Error {
        match self {
            Failure::Fatal(reason) => Error::Etcd { reason },
            _ => stm_store::Error::BusyRetry.into(),
        }
    }
}
