//! `retry`'s wait: an etcd watch on the keys an attempt read, from the revision after the
//! attempt's, so that a change made at any moment after the reads wakes it (even one made
//! before the watch was set up), without polling.

use std::time::Instant;

use etcd_client::WatchOptions;

use crate::error::Error;
use crate::store::{Budget, EtcdStore, Failure};

impl<K, V> EtcdStore<K, V> {
    /// Waits until one of `keys` (read at `revision`) changes after it: `Ok(true)`; or until
    /// `deadline` passes: `Ok(false)`. With no keys (an attempt that read nothing) it waits
    /// for the deadline alone, or forever.
    ///
    /// A watch that breaks (etcd restarting, a lost connection) is set up again from the same
    /// revision, so nothing is missed, for as long as the wait lasts. A revision compacted
    /// away meanwhile counts as a change (the closure runs again and reads anew).
    pub(crate) async fn changed(
        &self,
        keys: &[Vec<u8>],
        revision: Option<i64>,
        deadline: Option<Instant>,
    ) -> Result<bool, Error> {
        let changed = async {
            match revision {
                Some(revision) if !keys.is_empty() => self.watch(keys, revision).await,
                _ => std::future::pending().await,
            }
        };
        match deadline {
            None => changed.await.map(|()| true),
            Some(deadline) => match tokio::time::timeout_at(deadline.into(), changed).await {
                Ok(changed) => changed.map(|()| true),
                Err(_) => Ok(false),
            },
        }
    }

    async fn watch(&self, keys: &[Vec<u8>], revision: i64) -> Result<(), Error> {
        // A wait may be long: an etcd that stops answering meanwhile (restarting, a lost
        // connection) is waited for too, with the budget's backoff between tries, for as long
        // as the transaction waits.
        let mut budget = Budget::new(self.options.budget);
        loop {
            match self.watch_once(keys, revision).await {
                Ok(()) => return Ok(()),
                Err(Failure::Fatal(reason)) => return Err(Error::Etcd { reason }),
                Err(_) => {
                    if !budget.wait().await {
                        budget = Budget::new(self.options.budget);
                    }
                }
            }
        }
    }

    /// One watch stream with a watch per key, from `revision + 1`; returns at the first event
    /// (or compaction).
    async fn watch_once(&self, keys: &[Vec<u8>], revision: i64) -> Result<(), Failure> {
        let options = WatchOptions::new().with_start_revision(revision + 1);
        let mut client = self.watches.clone();
        let (first, more) = keys.split_first().expect("keys to watch");
        let first = first.clone();
        let first_options = options.clone();
        let (mut watcher, mut stream) = self
            .request(async move { client.watch(first, Some(first_options)).await })
            .await?;
        for key in more {
            watcher
                .watch(key.clone(), Some(options.clone()))
                .await
                .map_err(Failure::from_client)?;
        }
        loop {
            match stream.message().await {
                Ok(Some(response)) => {
                    if response.compact_revision() != 0 || !response.events().is_empty() {
                        return Ok(());
                    }
                    if response.canceled() {
                        return Err(Failure::Fatal(format!(
                            "etcd cancelled the watch: {}",
                            response.cancel_reason()
                        )));
                    }
                }
                Ok(None) => return Err(Failure::Ambiguous("the watch stream ended".into())),
                Err(e) => return Err(Failure::from_client(e)),
            }
        }
    }
}
