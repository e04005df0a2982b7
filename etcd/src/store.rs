//! The store: the contract's calls as etcd transactions, with bounded retries.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, KvClient, LeaseClient,
    PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{decode_value, encode_value, no_value, KeyCodec};
use crate::error::{show_key, Error};
use crate::handle::{Attempt, Collection, Handle, Value};

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
    /// of it after it was sent.
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
    kv: KvClient,
    leases: LeaseClient,
    /// `prefix` + `k/`: the keys.
    keys: Vec<u8>,
    /// `prefix` + `m/`: the commit markers.
    markers: Vec<u8>,
    options: Options,
    /// The lease for markers, and when it was asked for.
    lease: Mutex<Option<(i64, Instant)>>,
    /// Names this store's commits (with `commits`).
    nonce: u64,
    commits: AtomicU64,
    /// A request failed and none succeeded since: check that etcd answers before sending a
    /// write (so that an unresponsive etcd gives `BusyRetry`, not a commit in doubt).
    suspect: AtomicBool,
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
    /// Certainly not applied (the connection could not be made); retrying may help.
    NotSent(String),
    /// Maybe applied (timed out, connection lost, no leader); retrying may help.
    Ambiguous(String),
    /// The lease named in a put does not exist (expired); certainly not applied.
    LeaseGone,
    /// Certainly not applied, and retrying will not help.
    Fatal(String),
}

impl Failure {
    fn from_client(e: etcd_client::Error) -> Self {
        use etcd_client::Error as E;
        match e {
            E::GRpcStatus(status) => {
                use tonic::Code;
                let message = status.message().to_string();
                if connect_failed(&status) {
                    return Failure::NotSent(status.to_string());
                }
                match status.code() {
                    Code::NotFound if message.contains("lease not found") => Failure::LeaseGone,
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
            Failure::NotSent(r) | Failure::Ambiguous(r) | Failure::Fatal(r) => r.clone(),
            Failure::LeaseGone => "lease not found".into(),
        }
    }
}

/// Whether the failure happened while connecting (so the request was never sent).
fn connect_failed(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = e.source();
    }
    let text = status.message();
    text.contains("tcp connect error") || text.contains("Connection refused")
}

/// Waits between retries: 20 ms, doubling to 500 ms, never past the deadline.
struct Backoff {
    deadline: Instant,
    next: Duration,
}

impl Backoff {
    fn new(budget: Duration) -> Self {
        Self {
            deadline: Instant::now() + budget,
            next: Duration::from_millis(20),
        }
    }

    /// Waits before the next try; `false` when the budget is spent (do not try again).
    async fn wait(&mut self) -> bool {
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        tokio::time::sleep(self.next.min(self.deadline - now)).await;
        self.next = (self.next * 2).min(Duration::from_millis(500));
        true
    }

    fn spent(&self) -> bool {
        Instant::now() >= self.deadline
    }
}

/// How a commit in doubt turned out.
enum Resolved {
    Landed,
    /// Did not land, and now never will.
    Fenced,
    Unknown,
    Lost,
    Fatal(String),
}

const LANDED: &[u8] = b"committed";
const FENCED: &[u8] = b"fenced";

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
            keys: [&prefix[..], b"k/"].concat(),
            markers: [&prefix[..], b"m/"].concat(),
            options,
            lease: Mutex::new(None),
            nonce: hasher.finish(),
            commits: AtomicU64::new(0),
            suspect: AtomicBool::new(false),
            types: PhantomData,
        };
        // The client connects lazily: ask etcd something to know that it answers.
        let mut backoff = Backoff::new(store.options.budget);
        loop {
            match store.probe().await {
                Ok(()) => return Ok(store),
                Err(Failure::Fatal(reason)) => return Err(fail(reason)),
                Err(failure) => {
                    if !backoff.wait().await {
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

    /// One request, with the request timeout; any success clears `suspect`, any failure
    /// that may pass sets it.
    async fn request<T, F>(&self, call: F) -> Result<T, Failure>
    where
        F: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
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
            Err(Failure::NotSent(_) | Failure::Ambiguous(_)) => {
                self.suspect.store(true, Ordering::Relaxed)
            }
            Err(_) => {}
        }
        answer
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, Failure> {
        let mut kv = self.kv.clone();
        self.request(async move { kv.txn(txn).await }).await
    }

    /// A cheap read: does etcd answer (linearizable, so it needs a leader)?
    async fn probe(&self) -> Result<(), Failure> {
        let mut kv = self.kv.clone();
        let key = [&self.markers[..], b"probe"].concat();
        self.request(async move { kv.get(key, None).await })
            .await
            .map(drop)
    }

    /// The lease for commit markers: the current one, or a new one when it is older than a
    /// quarter of its time to live.
    async fn marker_lease(&self) -> Result<i64, Failure> {
        let ttl = self.options.lease_ttl;
        if let Some((id, asked)) = *self.lease.lock().unwrap_or_else(|e| e.into_inner()) {
            if asked.elapsed() < ttl / 4 {
                return Ok(id);
            }
        }
        let asked = Instant::now();
        let mut leases = self.leases.clone();
        let seconds = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let granted = self
            .request(async move { leases.grant(seconds, None).await })
            .await?;
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some((granted.id(), asked));
        Ok(granted.id())
    }

    fn forget_lease(&self) {
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn next_marker(&self) -> Vec<u8> {
        let n = self.commits.fetch_add(1, Ordering::Relaxed);
        let mut marker = self.markers.clone();
        marker.extend_from_slice(format!("{:016x}-{n:x}", self.nonce).as_bytes());
        marker
    }

    fn etcd_key(&self, key: &K) -> Result<Vec<u8>, Error>
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

/// The first key-value of each range response, in order.
fn ranges(response: &TxnResponse) -> Vec<Option<KeyValue>> {
    response
        .op_responses()
        .into_iter()
        .filter_map(|op| match op {
            TxnOpResponse::Get(mut get) => Some(get.take_kvs().into_iter().next()),
            _ => None,
        })
        .collect()
}

/// The contract's version and value of a key read from etcd. A key that exists has etcd
/// version >= 1 (its creation by a read wrote "no value" at etcd version 1): contract version
/// = etcd version - 1.
fn decode_read<V: DeserializeOwned>(kv: &KeyValue) -> Result<(u64, Option<V>), Error> {
    let version = u64::try_from(kv.version()).unwrap_or(0).saturating_sub(1);
    Ok((version, decode_value(kv.key(), kv.value())?))
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
        let mut backoff = Backoff::new(self.options.budget);
        let kvs = loop {
            let mut kv = self.kv.clone();
            let prefix = self.keys.clone();
            let options = GetOptions::new().with_prefix();
            match self
                .request(async move { kv.get(prefix, Some(options)).await })
                .await
            {
                Ok(mut response) => break response.take_kvs(),
                Err(Failure::Fatal(reason)) => return Err(Error::Etcd { reason }),
                Err(_) => {
                    if !backoff.wait().await {
                        return Err(stm_store::Error::BusyRetry.into());
                    }
                }
            }
        };
        let mut rows = kvs
            .iter()
            .map(|kv| {
                let key =
                    K::decode_key(&kv.key()[self.keys.len()..]).map_err(|e| Error::KeyCodec {
                        reason: format!("etcd key {}: {e}", show_key(kv.key())),
                    })?;
                let (version, value) = decode_read(kv)?;
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
        if entries.len() > self.options.max_txn_ops {
            return Err(Error::TooManyKeys {
                keys: entries.len(),
                limit: self.options.max_txn_ops,
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
            .map(|((etcd_key, key), (version, value))| Handle::new(key, etcd_key, version, value))
            .collect::<Vec<_>>();
        handles.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(handles)
    }

    /// The (version, value) of each key, from one transaction; keys that do not exist are
    /// created ("no value", etcd version 1) in the transaction that reads the others.
    async fn read_creating(&self, keys: &[Vec<u8>]) -> Result<Vec<(u64, Option<V>)>, Error> {
        let gets = |which: &mut dyn Iterator<Item = &Vec<u8>>| -> Vec<TxnOp> {
            which.map(|k| TxnOp::get(k.clone(), None)).collect()
        };
        let mut backoff = Backoff::new(self.options.budget);
        // The first transaction only reads; later ones also create what was missing.
        let mut found: Option<Vec<Option<KeyValue>>> = None;
        loop {
            let attempt = match &found {
                None => self
                    .txn(Txn::new().and_then(gets(&mut keys.iter())))
                    .await
                    .map(|r| ranges(&r)),
                Some(known) => {
                    let missing: Vec<usize> =
                        (0..keys.len()).filter(|&i| known[i].is_none()).collect();
                    let compares: Vec<Compare> = missing
                        .iter()
                        .map(|&i| Compare::version(keys[i].clone(), CompareOp::Equal, 0))
                        .collect();
                    let mut create: Vec<TxnOp> = missing
                        .iter()
                        .map(|&i| TxnOp::put(keys[i].clone(), no_value(), None))
                        .collect();
                    let present: Vec<usize> =
                        (0..keys.len()).filter(|&i| known[i].is_some()).collect();
                    create.extend(gets(&mut present.iter().map(|&i| &keys[i])));
                    let txn = Txn::new()
                        .when(compares)
                        .and_then(create)
                        .or_else(gets(&mut keys.iter()));
                    match self.txn(txn).await {
                        Ok(response) if response.succeeded() => {
                            // Created keys read as etcd version 1, "no value": contract (0, None).
                            let mut read = ranges(&response).into_iter();
                            let mut out = Vec::with_capacity(keys.len());
                            for was in known {
                                if was.is_some() {
                                    match read.next().flatten() {
                                        Some(kv) => out.push(decode_read(&kv)?),
                                        None => out.push((0, None)),
                                    }
                                } else {
                                    out.push((0, None));
                                }
                            }
                            return Ok(out);
                        }
                        Ok(response) => Ok(ranges(&response)),
                        Err(failure) => Err(failure),
                    }
                }
            };
            match attempt {
                Ok(read) => {
                    if read.iter().all(Option::is_some) {
                        return read.iter().flatten().map(decode_read).collect();
                    }
                    // A value that does not decode fails the call before anything is created.
                    for kv in read.iter().flatten() {
                        decode_read::<V>(kv)?;
                    }
                    // Someone else may create a key between two tries; then try again
                    // at once (each try creates or finds at least one key more).
                    found = Some(read);
                    if backoff.spent() {
                        return Err(stm_store::Error::BusyRetry.into());
                    }
                }
                Err(Failure::Fatal(reason)) => return Err(Error::Etcd { reason }),
                Err(_) => {
                    if !backoff.wait().await {
                        return Err(stm_store::Error::BusyRetry.into());
                    }
                }
            }
        }
    }

    /// Commits `handles` in one transaction (see the crate docs for the mapping), first
    /// resolving an earlier attempt in doubt.
    pub(crate) async fn commit_handles(
        &self,
        handles: &mut [&mut Handle<K, V>],
        doubt: &mut Option<Attempt>,
    ) -> Result<(), Error> {
        let mut backoff = Backoff::new(self.options.budget);
        if let Some(attempt) = doubt.take() {
            match self.resolve(&attempt, &mut backoff).await {
                Resolved::Landed => {
                    landed_earlier(handles, &attempt.written);
                    return Ok(());
                }
                Resolved::Fenced => {}
                Resolved::Unknown => {
                    *doubt = Some(attempt);
                    return Err(Error::OutcomeUnknown);
                }
                Resolved::Lost => return Err(Error::OutcomeLost),
                Resolved::Fatal(reason) => {
                    *doubt = Some(attempt);
                    return Err(Error::Etcd { reason });
                }
            }
        }
        if handles.is_empty() {
            return Ok(());
        }
        if handles.len() + 1 > self.options.max_txn_ops {
            return Err(Error::TooManyKeys {
                keys: handles.len(),
                limit: self.options.max_txn_ops - 1,
            });
        }
        let mut written = Vec::new();
        for (i, handle) in handles.iter().enumerate() {
            if let Some(pending) = &handle.pending {
                written.push((i, encode_value(&handle.etcd_key, pending.as_ref())?));
            }
        }
        let mut compares: Vec<Compare> = handles
            .iter()
            .map(|h| {
                let etcd_version = i64::try_from(h.version + 1).unwrap_or(i64::MAX);
                Compare::version(h.etcd_key.clone(), CompareOp::Equal, etcd_version)
            })
            .collect();
        if written.is_empty() {
            // Only validation: idempotent, so any failure may simply be retried.
            loop {
                match self.txn(Txn::new().when(compares.clone())).await {
                    Ok(response) if response.succeeded() => return Ok(()),
                    Ok(_) => return Err(stm_store::Error::ConcurrentUpdate.into()),
                    Err(Failure::Fatal(reason)) => return Err(Error::Etcd { reason }),
                    Err(_) => {
                        if !backoff.wait().await {
                            return Err(stm_store::Error::BusyRetry.into());
                        }
                    }
                }
            }
        }
        loop {
            let ready = if self.suspect.load(Ordering::Relaxed) {
                self.probe().await
            } else {
                Ok(())
            };
            let lease = match ready {
                Ok(()) => self.marker_lease().await,
                Err(failure) => Err(failure),
            };
            let lease = match lease {
                Ok(lease) => lease,
                Err(Failure::Fatal(reason)) => return Err(Error::Etcd { reason }),
                Err(_) => {
                    if !backoff.wait().await {
                        return Err(stm_store::Error::BusyRetry.into());
                    }
                    continue;
                }
            };
            let marker = self.next_marker();
            let mut when = compares.clone();
            when.push(Compare::version(marker.clone(), CompareOp::Equal, 0));
            let mut then: Vec<TxnOp> = written
                .iter()
                .map(|(i, bytes)| TxnOp::put(handles[*i].etcd_key.clone(), bytes.clone(), None))
                .collect();
            then.push(TxnOp::put(
                marker.clone(),
                LANDED,
                Some(PutOptions::new().with_lease(lease)),
            ));
            match self.txn(Txn::new().when(when).and_then(then)).await {
                Ok(response) if response.succeeded() => {
                    landed(handles, &written);
                    return Ok(());
                }
                // The marker is new, so a failed compare is one of the keys.
                Ok(_) => return Err(stm_store::Error::ConcurrentUpdate.into()),
                Err(Failure::LeaseGone) => self.forget_lease(),
                Err(Failure::Fatal(reason)) => return Err(Error::Etcd { reason }),
                Err(Failure::NotSent(_)) => {
                    if !backoff.wait().await {
                        return Err(stm_store::Error::BusyRetry.into());
                    }
                }
                Err(Failure::Ambiguous(_)) => {
                    let attempt = Attempt {
                        marker,
                        lease,
                        written,
                    };
                    match self.resolve(&attempt, &mut backoff).await {
                        Resolved::Landed => {
                            landed(handles, &attempt.written);
                            return Ok(());
                        }
                        // The lease expired within this call (an etcd that lost it): the
                        // marker cannot tell any more; never guess.
                        Resolved::Lost => return Err(Error::OutcomeLost),
                        Resolved::Fenced => {
                            written = attempt.written;
                            if !backoff.wait().await {
                                return Err(stm_store::Error::BusyRetry.into());
                            }
                        }
                        Resolved::Unknown => {
                            *doubt = Some(attempt);
                            return Err(Error::OutcomeUnknown);
                        }
                        Resolved::Fatal(reason) => {
                            *doubt = Some(attempt);
                            return Err(Error::Etcd { reason });
                        }
                    }
                }
            }
            compares.truncate(handles.len());
        }
    }

    /// Finds out whether the attempt landed, or makes sure it never will: one transaction
    /// writes the marker as "fenced" unless the commit wrote it (the commit's own transaction
    /// requires the marker to be absent, so exactly one of the two can win).
    async fn resolve(&self, attempt: &Attempt, backoff: &mut Backoff) -> Resolved {
        loop {
            let txn = Txn::new()
                .when([Compare::version(
                    attempt.marker.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then([TxnOp::put(
                    attempt.marker.clone(),
                    FENCED,
                    Some(PutOptions::new().with_lease(attempt.lease)),
                )])
                .or_else([TxnOp::get(attempt.marker.clone(), None)]);
            match self.txn(txn).await {
                Ok(response) if response.succeeded() => return Resolved::Fenced,
                Ok(response) => {
                    return match ranges(&response).into_iter().flatten().next() {
                        Some(kv) if kv.value() == LANDED => Resolved::Landed,
                        Some(_) => Resolved::Fenced,
                        // Cannot happen: the compare saw it exist in this transaction.
                        None => Resolved::Unknown,
                    };
                }
                // The lease expired: the attempt (whose marker needs it) can no longer land,
                // and its marker, if it landed, expired with it.
                Err(Failure::LeaseGone) => return Resolved::Lost,
                Err(Failure::Fatal(reason)) => return Resolved::Fatal(reason),
                Err(_) => {
                    if !backoff.wait().await {
                        return Resolved::Unknown;
                    }
                }
            }
        }
    }
}

/// After a commit of this call landed: each written handle takes its pending value and
/// version + 1.
fn landed<K, V>(handles: &mut [&mut Handle<K, V>], written: &[(usize, Vec<u8>)]) {
    for (i, _) in written {
        let handle = &mut handles[*i];
        if let Some(pending) = handle.pending.take() {
            handle.value = pending;
        }
        handle.version += 1;
    }
}

/// After an attempt of an earlier call, in doubt until now, turned out to have landed: each
/// written handle takes what was written and version + 1.
fn landed_earlier<K, V: DeserializeOwned>(
    handles: &mut [&mut Handle<K, V>],
    written: &[(usize, Vec<u8>)],
) {
    for (i, bytes) in written {
        let handle = &mut handles[*i];
        let pending = handle.pending.take();
        // What was written, decoded back (the handle's pending value may have been changed
        // since an attempt in doubt was sent); a type whose serde does not round-trip keeps
        // its pending value.
        handle.value = match decode_value(&handle.etcd_key, bytes) {
            Ok(value) => value,
            Err(_) => pending.flatten(),
        };
        handle.version += 1;
    }
}
