//! The [`stm_store`] contract over etcd: versioned keys, multi-key commits that land
//! atomically or fail with `ConcurrentUpdate`, and no lock held while user code runs, for a
//! service whose processes run on many machines.
//!
//! The API mirrors [`stm_store::Store`], async ([`EtcdStore`]) or blocking
//! ([`blocking::EtcdStore`]): `usevar`, `using`, `set`, `set_values`, `dump`, with [`Value`]
//! and [`Collection`] handles. Errors are [`Error`]: the contract's [`stm_store::Error`] in
//! [`Error::Contract`], plus what only a remote store can meet (cannot connect, a value that
//! does not decode, a commit whose answer was lost).
//!
//! ```no_run
//! # async fn demo() -> Result<(), stm_store_etcd::Error> {
//! use stm_store_etcd::EtcdStore;
//!
//! let store = EtcdStore::<String, u64>::connect(["127.0.0.1:2379"], "bank/").await?;
//! loop {
//!     let mut c = store.using(["alice".to_string(), "bob".to_string()]).await?;
//!     let alice = c["alice"].value().copied().unwrap_or(100);
//!     let bob = c["bob"].value().copied().unwrap_or(100);
//!     c["alice"].set(alice - 1);
//!     c["bob"].set(bob + 1);
//!     match c.commit().await {
//!         Ok(()) => break,
//!         Err(e) if e == stm_store::Error::ConcurrentUpdate => continue, // re-read, redo
//!         Err(e) => return Err(e),
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # The mapping onto etcd
//!
//! - A key `k` is the etcd key `prefix` + `k/` + [`KeyCodec::encode_key`]; a value is one tag
//!   byte then CBOR (`0x01` + CBOR for a value, the single byte `0x00` for "no value").
//! - **Versions.** etcd counts puts per key (version 0: no such key). `usevar` and `using`
//!   create the keys they name, as the contract says, by writing "no value" (guarded by etcd
//!   `version == 0`), which makes etcd's version 1. So **contract version = etcd version − 1**:
//!   a key read but never written is etcd version 1, contract version 0, no value, and `dump`
//!   lists it; the first commit to it makes etcd version 2, contract version 1; and so on.
//!   Keys are never deleted.
//! - **`using`** reads every key in one etcd `Txn` of range requests (one revision). If some
//!   keys do not exist yet, a second `Txn` creates them (compare `version == 0`) and reads the
//!   others in the same revision; that `Txn`'s revision is then the snapshot.
//! - **`dump`** is one range request over `prefix` + `k/` (one revision).
//! - **A commit** is one `Txn`: compare `version(key) == read version + 1` for every key of
//!   the handle or collection (read-only keys too: no write skew), and that a marker key
//!   `prefix` + `m/<commit id>` does not exist; then a put per written key and a put of the
//!   marker, under a lease ([`Options::lease_ttl`]). A failed compare is `ConcurrentUpdate`.
//!   A commit that writes nothing is a `Txn` of compares only. `clear` writes "no value"; a
//!   delete would reset etcd's version to 0 and let an old handle validate against a new
//!   incarnation of the key.
//! - **Failures.** A request that fails in a way that may pass (etcd unreachable, no leader,
//!   no answer within [`Options::request_timeout`]) is retried, with backoff from 20 ms to
//!   500 ms, until [`Options::budget`] is spent; then the call answers `BusyRetry` with
//!   nothing written and the handles unchanged. After a failure, a commit first checks that
//!   etcd answers (a one-key read) before it sends anything.
//! - **Ambiguous outcomes.** If a commit's request went out and no answer came back, the
//!   store resolves it before answering: one `Txn` writes the marker as "fenced" unless the
//!   commit wrote it. Exactly one of the two can succeed, so afterwards either the marker says
//!   the commit landed (the call answers `Ok`) or the commit can never land (the call tries
//!   anew, or answers `BusyRetry`). A commit is never applied twice. If etcd does not answer
//!   within the budget even for that, the call answers [`Error::OutcomeUnknown`] (not
//!   `BusyRetry`: that would say nothing was written, and the commit may still land); the
//!   handles remember the attempt, and committing them again resolves it first.
//!
//! See the crate's README for when to use this backend, how to run etcd for it, and what
//! differs from the in-process store.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod blocking;
mod codec;
mod commit;
mod error;
mod handle;
mod store;
mod tx;
mod watch;

pub use codec::{KeyCodec, KeyCodecError};
pub use error::Error;
pub use handle::{Collection, Value};
pub use store::{EtcdStore, Options};
pub use tx::{Backoff, Transaction, Tx, TxError};

/// The README's examples, compiled as doctests.
#[doc = include_str!("../README.md")]
#[doc(hidden)]
pub struct ReadmeDoctests;
