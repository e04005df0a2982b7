//! The [`stm_store`] contract over etcd: versioned keys, atomic multi-key transactions that
//! never see half of another, and no lock held while user code runs, for a service whose
//! processes run on many machines.
//!
//! The API mirrors [`stm_store::Store`], async ([`EtcdStore`]) or blocking
//! ([`blocking::EtcdStore`]): [`atomically`](EtcdStore::atomically) runs a closure as one
//! transaction ([`Tx`]: `get`, `set`, `remove`, `retry`, `or_else`), retried for you;
//! `usevar`, `using` and `dump` give Axon-style handles ([`Value`], [`Collection`]). Errors are
//! [`Error`]: the contract's [`stm_store::Error`] in [`Error::Contract`], plus what only a
//! remote store can meet (cannot connect, a value that does not decode, a commit whose answer
//! was lost).
//!
//! ```no_run
//! # async fn demo() -> Result<(), stm_store_etcd::Error> {
//! use stm_store_etcd::EtcdStore;
//!
//! let store = EtcdStore::<String, u64>::connect(["127.0.0.1:2379"], "bank/").await?;
//! let (alice, bob) = ("alice".to_string(), "bob".to_string());
//! let (alice, bob) = (&alice, &bob);
//! store
//!     .transaction()
//!     .prefetch([alice.clone(), bob.clone()]) // both read in one round trip
//!     .run(|tx| async move {
//!         let a = tx.get(alice).await?.unwrap_or(100);
//!         let b = tx.get(bob).await?.unwrap_or(100);
//!         tx.set(alice, a - 1).await?;
//!         tx.set(bob, b + 1).await
//!     })
//!     .await
//!     .map_err(|e| e.into_error().expect("no deadline was set"))?;
//! # Ok(())
//! # }
//! ```
//!
//! # The mapping onto etcd
//!
//! - A key `k` is the etcd key `prefix` + `k/` + [`KeyCodec::encode_key`]; its value is a tag
//!   byte (`0x02` "no value", `0x03` a value), the contract version (8 bytes, big-endian), then
//!   CBOR.
//! - **Versions** live in the values, so etcd's own per-key counters (which start again at 0
//!   when a key is deleted) play no part. A removal deletes the etcd key and raises the store's
//!   **floor** (the etcd key `prefix` + `f`: the highest version a removal gave); a key created
//!   afterwards starts one above it, and its creation compares the floor. In a store that
//!   never removed a key, new keys start at version 0.
//! - **Commits compare modification revisions**, which etcd never reuses: one etcd `Txn`
//!   compares the mod revision of every key read (read-only keys too: no write skew; a key
//!   removed and created again since: no ABA) and that a marker key `prefix` + `m/<commit id>`
//!   does not exist, then puts every written key, deletes every removed one, and puts the
//!   marker under a lease ([`Options::lease_ttl`]). A failed compare is `ConcurrentUpdate`, or
//!   for a transaction, a rerun of its closure.
//! - **Transactions** read at one revision, the first read's (a linearizable read of that key,
//!   the prefetched keys and the floor in one `Txn`); a failed commit reads every key the run
//!   read, in the same round trip, for the next run. [`Tx::retry`] watches the keys read from
//!   the revision after the run's.
//! - **`usevar` and `using`** read every key in one `Txn` (one revision). If some keys do not
//!   exist yet, a second `Txn` creates them ("no value") if nothing read has changed; that
//!   `Txn`'s revision is then the snapshot. **`dump`** is one range request (one revision).
//! - **Failures.** A request that fails in a way that may pass (etcd unreachable, no leader,
//!   no answer within [`Options::request_timeout`]) is retried, with backoff from 20 ms to
//!   500 ms, until [`Options::budget`] is spent; then the call answers `BusyRetry` with
//!   nothing written and the handles unchanged. After a failure, a commit first checks that
//!   etcd answers (a one-key read) before it sends anything.
//! - **Ambiguous outcomes.** If a commit's request went out and no answer came back, the
//!   store resolves it: one `Txn` writes the marker as "fenced" unless the commit wrote it.
//!   Exactly one of the two can succeed, so afterwards either the marker says the commit landed
//!   or the commit can never land. A commit is never applied twice. A transaction settles this
//!   within its call; handles answer [`Error::OutcomeUnknown`] if etcd does not answer within
//!   the budget, remember the attempt, and resolve it when committed again.
//!
//! See the crate's README for when to use this backend, how to run etcd for it, what differs
//! from the in-process store, and how it compares with etcd's Go STM.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod blocking;
mod codec;
mod commit;
mod error;
mod handle;
mod run;
mod store;
mod tx;
mod watch;

pub use codec::{KeyCodec, KeyCodecError};
pub use error::Error;
pub use handle::{Collection, Value};
pub use run::{Backoff, Transaction};
pub use store::{EtcdStore, Options};
pub use tx::{Tx, TxError};

/// The README's examples, compiled as doctests.
#[doc = include_str!("../README.md")]
#[doc(hidden)]
pub struct ReadmeDoctests;
