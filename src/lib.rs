//! An in-process store of versioned key-value pairs with optimistic, atomic multi-key commits
//! and no lock on the read or commit path: a redesign of Kamaelia's `Axon.STM`.
//!
//! New code writes transactions as closures with [`Store::atomically`]: the closure reads keys
//! as it goes and writes them through a [`Tx`]; the store commits it atomically and runs it
//! again if a key it read changed meanwhile (so **the closure may run more than once**). Within
//! one run every read is consistent with the earlier ones, [`Tx::retry`] waits for a change,
//! [`Tx::or_else`] tries an alternative, and [`Transaction`] adds timeouts and an async form.
//!
//! ```
//! use stm_store::Store;
//!
//! let store: Store<&str, i64> = Store::new();
//! store.atomically(|tx| tx.set(&"alice", 100));
//! // Move 30 from alice to bob: both writes land, or neither.
//! store.atomically(|tx| {
//!     let alice = tx.get(&"alice")?.unwrap_or(0);
//!     let bob = tx.get(&"bob")?.unwrap_or(0);
//!     tx.set(&"alice", alice - 30)?;
//!     tx.set(&"bob", bob + 30)
//! });
//! assert_eq!(store.dump(), vec![("alice", 2, Some(70)), ("bob", 1, Some(30))]);
//! ```
//!
//! Underneath is `Axon.STM`'s model, which stays available as it was: a thread reads keys into
//! handles ([`Store::usevar`], [`Store::using`]), changes them, and commits. The commit either
//! lands atomically or fails with [`Error::ConcurrentUpdate`] (someone committed a key you read:
//! re-read and redo). Transactions and handles work on the same keys at once, atomically with
//! respect to each other.
//!
//! ```
//! use stm_store::{Error, Store};
//!
//! let store: Store<&str, i64> = Store::new();
//! let mut accounts = store.using(["alice", "bob"])?;
//! accounts["alice"].set(100);
//! accounts["bob"].set(0);
//! accounts.commit()?;
//!
//! // Move 30 from alice to bob, retrying if someone else got there first.
//! loop {
//!     let mut accounts = store.using(["alice", "bob"])?;
//!     let alice = accounts["alice"].value().copied().unwrap_or(0);
//!     let bob = accounts["bob"].value().copied().unwrap_or(0);
//!     accounts["alice"].set(alice - 30);
//!     accounts["bob"].set(bob + 30);
//!     match accounts.commit() {
//!         Ok(()) => break,
//!         Err(Error::ConcurrentUpdate | Error::BusyRetry) => continue,
//!     }
//! }
//! assert_eq!(store.dump(), vec![("alice", 2, Some(70)), ("bob", 2, Some(30))]);
//! # Ok::<(), Error>(())
//! ```
//!
//! The [`docs`] module holds the long-form documentation: the numbered
//! [contract](docs::contract) (what the store promises; the rest of the documentation cites
//! its points), the [design](docs::design) (the protocol, its invariants, who frees what),
//! how this crate differs from Axon.STM, and how to model-check your own code with loom.
#![deny(
    unsafe_code,
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks
)]
#![warn(missing_docs)]

pub mod docs;
mod error;
mod handle;
mod order;
mod persist;
mod primitive;
mod protocol;
mod shared;
#[allow(unsafe_code)] // the one module with `unsafe`: every block says why it is sound
mod slot;
mod snapshot;
mod stats;
mod store;
mod tx;
mod view;
mod wake;

pub use error::Error;
#[cfg(any(loom, feature = "test-hooks"))]
pub use handle::Paused;
pub use handle::{Collection, IterMut, Value};
pub use stats::Stats;
pub use store::{DefaultHasher, Store};
pub use tx::{Backoff, Transaction, Tx, TxError};
pub use view::Snapshot;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
