//! Commits: one etcd transaction that compares what was read and writes what was set, with a
//! marker key that settles an ambiguous answer, for handles and transactions alike.

use std::sync::atomic::Ordering;
use std::time::Instant;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnResponse};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{decode_value, encode_value, KeyCodec};
use crate::error::Error;
use crate::handle::{Attempt, Doubt, Handle, Write};
use crate::store::{ranges, revision_of, Budget, EtcdStore, Failure};

/// The marker's value when the commit wrote it.
const LANDED: &[u8] = b"committed";
/// The marker's value when a resolution wrote it first: the commit can never land.
const FENCED: &[u8] = b"fenced";

/// How a write transaction ended, when it ended.
pub(crate) enum Written {
    /// It landed, at this revision.
    Landed(i64),
    /// A compare failed: nothing was written. The answer holds what the transaction's
    /// `or_else` operations read.
    Refused(TxnResponse),
    /// Its answer was lost, and a resolution made sure that it never lands: nothing was
    /// written. Send it again (a handle commit), or run the transaction again.
    Fenced,
}

/// Why a write transaction has no answer.
pub(crate) enum Unwritten {
    /// Nothing was written: the error to answer.
    Failed(Error),
    /// It may have landed, or may still land; the error to answer ([`Error::OutcomeUnknown`],
    /// or [`Error::Etcd`] if etcd refused the resolution).
    InDoubt(Doubt, Error),
}

/// How a commit in doubt turned out.
pub(crate) enum Resolved {
    /// It landed, at this revision.
    Landed(i64),
    /// Did not land, and now never will.
    Fenced,
    Unknown,
    Lost,
    Fatal(String),
}

impl<K, V> EtcdStore<K, V> {
    /// The lease for commit markers: the current one, or a new one when it is older than a
    /// quarter of its time to live.
    pub(crate) async fn marker_lease(&self) -> Result<i64, Failure> {
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

    pub(crate) fn forget_lease(&self) {
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub(crate) fn next_marker(&self) -> Vec<u8> {
        let n = self.commits.fetch_add(1, Ordering::Relaxed);
        let mut marker = self.markers.clone();
        marker.extend_from_slice(format!("{:016x}-{n:x}", self.nonce).as_bytes());
        marker
    }

    /// Sends one writing transaction: `compares`, then `writes` (and a marker), else
    /// `otherwise` (reads for the caller's next try). A failure that certainly wrote nothing is
    /// retried within `budget`; an ambiguous one is resolved through the marker (a fresh
    /// marker for every send: exactly one of the commit and its resolution writes it).
    pub(crate) async fn write(
        &self,
        compares: &[Compare],
        writes: &[TxnOp],
        otherwise: &[TxnOp],
        budget: &mut Budget,
    ) -> Result<Written, Unwritten> {
        let failed = |e: Error| Err(Unwritten::Failed(e));
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
                Err(Failure::Fatal(reason)) => return failed(Error::Etcd { reason }),
                Err(_) => {
                    if !budget.wait().await {
                        return failed(stm_store::Error::BusyRetry.into());
                    }
                    continue;
                }
            };
            let marker = self.next_marker();
            let mut when = compares.to_vec();
            when.push(Compare::version(marker.clone(), CompareOp::Equal, 0));
            let mut then = writes.to_vec();
            then.push(TxnOp::put(
                marker.clone(),
                LANDED,
                Some(PutOptions::new().with_lease(lease)),
            ));
            let txn = Txn::new()
                .when(when)
                .and_then(then)
                .or_else(otherwise.to_vec());
            match self.txn(txn).await {
                Ok(response) if response.succeeded() => {
                    return Ok(Written::Landed(revision_of(&response)))
                }
                // The marker is new, so a failed compare is one of the caller's.
                Ok(response) => return Ok(Written::Refused(response)),
                Err(Failure::LeaseGone) => self.forget_lease(),
                Err(Failure::Fatal(reason)) => return failed(Error::Etcd { reason }),
                Err(Failure::Refused(_) | Failure::NotSent(_) | Failure::Compacted) => {
                    if !budget.wait().await {
                        return failed(stm_store::Error::BusyRetry.into());
                    }
                }
                Err(Failure::Ambiguous(_)) => {
                    let doubt = Doubt { marker, lease };
                    match self.resolve(&doubt, budget).await {
                        Resolved::Landed(revision) => return Ok(Written::Landed(revision)),
                        // The lease expired within this call (an etcd that lost it): the
                        // marker cannot tell any more; never guess.
                        Resolved::Lost => return failed(Error::OutcomeLost),
                        Resolved::Fenced => return Ok(Written::Fenced),
                        Resolved::Unknown => {
                            return Err(Unwritten::InDoubt(doubt, Error::OutcomeUnknown))
                        }
                        Resolved::Fatal(reason) => {
                            return Err(Unwritten::InDoubt(doubt, Error::Etcd { reason }))
                        }
                    }
                }
            }
        }
    }

    /// Finds out whether a commit in doubt landed, or makes sure it never will: one
    /// transaction writes the marker as "fenced" unless the commit wrote it (the commit's own
    /// transaction requires the marker to be absent, so exactly one of the two can win).
    pub(crate) async fn resolve(&self, doubt: &Doubt, budget: &mut Budget) -> Resolved {
        loop {
            let txn = Txn::new()
                .when([Compare::version(doubt.marker.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    doubt.marker.clone(),
                    FENCED,
                    Some(PutOptions::new().with_lease(doubt.lease)),
                )])
                .or_else([TxnOp::get(doubt.marker.clone(), None)]);
            match self.txn(txn).await {
                Ok(response) if response.succeeded() => return Resolved::Fenced,
                Ok(response) => {
                    return match ranges(&response).into_iter().flatten().next() {
                        // The marker was put once, by the commit: its revision is the commit's.
                        Some(kv) if kv.value() == LANDED => Resolved::Landed(kv.mod_revision()),
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
                    if !budget.wait().await {
                        return Resolved::Unknown;
                    }
                }
            }
        }
    }
}

impl<K, V> EtcdStore<K, V>
where
    K: KeyCodec + Ord,
    V: Serialize + DeserializeOwned,
{
    /// Commits `handles` in one transaction (see the crate docs for the mapping), first
    /// resolving an earlier attempt in doubt.
    pub(crate) async fn commit_handles(
        &self,
        handles: &mut [&mut Handle<K, V>],
        doubt: &mut Option<Attempt>,
    ) -> Result<(), Error> {
        let mut budget = Budget::new(self.options.budget);
        if let Some(attempt) = doubt.take() {
            match self.resolve(&attempt.doubt, &mut budget).await {
                Resolved::Landed(revision) => {
                    landed_earlier(handles, &attempt.written, revision);
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
        // Every handle's revision: a key changed, removed or created again since fails it.
        let compares: Vec<Compare> = handles
            .iter()
            .map(|h| Compare::mod_revision(h.etcd_key.clone(), CompareOp::Equal, h.revision))
            .collect();
        let mut written = Vec::new();
        let mut writes = Vec::new();
        let mut floor = None;
        for (i, handle) in handles.iter().enumerate() {
            let version = handle.version.saturating_add(1);
            match &handle.pending {
                None => {}
                Some(Write::Value(value)) => {
                    let bytes = encode_value(&handle.etcd_key, version, value.as_ref())?;
                    writes.push(TxnOp::put(handle.etcd_key.clone(), bytes.clone(), None));
                    written.push((i, Some(bytes)));
                }
                Some(Write::Remove) => {
                    writes.push(TxnOp::delete(handle.etcd_key.clone(), None));
                    written.push((i, None));
                    floor = floor.max(Some(version));
                }
            }
        }
        if let Some(removed) = floor {
            writes.push(self.raise_floor(removed));
        }
        // The marker takes one operation more on each side.
        let limit = self.options.max_txn_ops - 1 - usize::from(floor.is_some());
        if handles.len() > limit {
            return Err(Error::TooManyKeys {
                keys: handles.len(),
                limit,
            });
        }
        if written.is_empty() {
            // Only validation: idempotent, so any failure may simply be retried.
            let validated = self
                .idempotent(|| self.txn(Txn::new().when(compares.clone())))
                .await;
            return match validated {
                Ok(response) if response.succeeded() => Ok(()),
                Ok(_) => Err(stm_store::Error::ConcurrentUpdate.into()),
                Err(failure) => Err(failure.into_error()),
            };
        }
        loop {
            return match self.write(&compares, &writes, &[], &mut budget).await {
                Ok(Written::Landed(revision)) => {
                    landed(handles, &written, revision);
                    Ok(())
                }
                Ok(Written::Refused(_)) => Err(stm_store::Error::ConcurrentUpdate.into()),
                // Never landed, and never will: the same commit may be sent again.
                Ok(Written::Fenced) => {
                    if budget.wait().await {
                        continue;
                    }
                    Err(stm_store::Error::BusyRetry.into())
                }
                Err(Unwritten::Failed(e)) => Err(e),
                Err(Unwritten::InDoubt(sent, e)) => {
                    *doubt = Some(Attempt {
                        doubt: sent,
                        written,
                    });
                    Err(e)
                }
            };
        }
    }
}

/// After a commit of this call landed at `revision`: each written handle takes its pending
/// value (none for a removal) and version + 1.
fn landed<K, V>(
    handles: &mut [&mut Handle<K, V>],
    written: &[(usize, Option<Vec<u8>>)],
    revision: i64,
) {
    for (i, _) in written {
        let handle = &mut handles[*i];
        if let Some(write) = handle.pending.take() {
            handle.value = match write {
                Write::Value(value) => value,
                Write::Remove => None,
            };
        }
        handle.version += 1;
        handle.revision = revision;
    }
}

/// After an attempt of an earlier call, in doubt until now, turned out to have landed at
/// `revision`: each written handle takes what was written and version + 1.
fn landed_earlier<K, V: DeserializeOwned>(
    handles: &mut [&mut Handle<K, V>],
    written: &[(usize, Option<Vec<u8>>)],
    revision: i64,
) {
    for (i, bytes) in written {
        let handle = &mut handles[*i];
        let pending = handle.pending.take();
        // What was written, decoded back (the handle's pending value may have been changed
        // since an attempt in doubt was sent); a type whose serde does not round-trip keeps
        // its pending value.
        handle.value = match bytes {
            None => None,
            Some(bytes) => match decode_value(&handle.etcd_key, bytes) {
                Ok((_, value)) => value,
                Err(_) => pending.and_then(|write| match write {
                    Write::Value(value) => value,
                    Write::Remove => None,
                }),
            },
        };
        handle.version += 1;
        handle.revision = revision;
    }
}
