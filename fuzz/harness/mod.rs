//! Differential fuzzing harness for `stm-store`: a byte decoder, a sequential reference model of
//! the contract (`src/docs/contract.md`), and two runners that drive the real store and the
//! model side by side and panic on the first difference.
//!
//! It is shared by the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`) and the stable replay test
//! (`tests/fuzz_corpus.rs`), which include this file as a module; it depends on nothing but
//! `stm_store`, `std` and `crossbeam-epoch` (to advance the epoch before counting what
//! reclamation has freed).
//!
//! * [`run_ops`]: one client, at most [`MAX_HANDLES`] live handles over [`KEYS`] keys. Every
//!   answer of the store (`Ok` or which error, versions, values, collection contents, `dump`,
//!   `get`, `contains_key`, `len`, snapshots) must equal the model's.
//! * [`run_interleave`]: 2 or 3 clients whose steps the input interleaves, on one thread. With
//!   the `test-hooks` feature a client can also stop in the middle of a multi-key commit
//!   (`Collection::commit_paused`) while the others keep going; that commit then takes effect at
//!   some instant between its start and its resume, so the model tracks the few possible
//!   "worlds" and each observation must be explained by at least one of them (linearizability).
//!   At the end, replaying the successful commits and the key creations serially, in their
//!   order, must give the final `dump`.
//!
//! The model is written from the contract only: keys hold `(version, Option<value>)`, a key never
//! seen is `(0, None)` and is created by `usevar`/`using`; a handle remembers its key, read
//! version, read value and pending write; a commit fails with `ConcurrentUpdate` (and changes
//! nothing, handles included) if any key's current version differs from the handle's read
//! version (or the key is gone), otherwise writes exactly the `set`/`clear`ed/`remove`d handles
//! with version = read + 1 and leaves them clean holding the new version and value.
//!
//! Removal (contract 22-26): a removal is a write; once its commit lands the key is absent, and
//! the store's *floor* (the highest version any removed key reached: a removal's version is its
//! read version + 1) rises to it. A key created after that starts at floor + 1 with no value.
//! Since a key's successive lives have disjoint versions (each starts above the floor, which is
//! at least the last one's removal), the version a handle read also says which life of the key
//! it read: comparing versions is enough to refuse a handle of a removed life (no ABA).
//!
//! One file per concern, as the core's modules are (this one holds what they share):
//! - `decode`: the input bytes as a program (`decode_ops`, `decode_interleave`);
//! - `model`: the sequential reference model of a store and its handles;
//! - `tx`: transactions, the real run and the model's;
//! - `handles`: the real store and handles, read and written as the model sees them;
//! - `memory`: values and keys that count their live copies, and the memory checks;
//! - `ops` and `interleave`: the two runners;
//! - `self_test` (tests only): the world model must reject what the contract forbids.
#![allow(dead_code)]

mod decode;
mod handles;
mod interleave;
mod memory;
mod model;
mod ops;
#[cfg(test)]
mod self_test;
mod tx;

use std::fmt::{Debug, Write as _};

use stm_store::Store;

// What the includers call; each fuzz target uses only some of it.
#[allow(unused_imports)]
pub use {
    decode::{decode_interleave, decode_ops},
    interleave::run_interleave,
    ops::{run_ops, run_ops_counting},
};

use memory::{Key, Val};
use model::{Event, Model};
use tx::{Ans, TxEnd};

/// A key as the model and the decoder see it (the store's keys are [`Key`]s that count
/// themselves).
pub type K = u8;
/// Value type of the store under test: [`N`] with a count of live copies.
pub type V = Val;
/// A value as the model and the decoder see it.
pub type N = u16;
/// The store under test.
type S = Store<Key, V>;

/// Keys `0..KEYS` are the only keys ever created.
pub const KEYS: u8 = 4;
/// Keys probed with `Collection::get`, `Store::get` and `contains_key`: one more than can
/// exist, to see `None` answers too.
const PROBE_KEYS: u8 = KEYS + 1;
/// Live handles at most, over all clients.
pub const MAX_HANDLES: usize = 6;
/// Longest key list passed to `using` (duplicates included).
const MAX_USING: u8 = 6;
/// Operations decoded from one input at most (keeps every run short).
pub const MAX_OPS: usize = 256;
/// Whether `Collection::commit_paused` is available (the `test-hooks` feature).
pub const PAUSE_SUPPORTED: bool = cfg!(feature = "test-hooks");
/// Whether an input can have its snapshots claim their keys (the `test-hooks` feature).
pub const CLAIM_SUPPORTED: bool = cfg!(feature = "test-hooks");

/// What a run did (for tests that check the corpus reaches the interesting paths).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// `interleave`: commits (`commit`, `Store::set`, `Store::set_values`) that answered `Ok`.
    pub commits_ok: usize,
    /// `interleave`: commits that answered `ConcurrentUpdate`.
    pub commits_failed: usize,
    /// Paused commits resumed with `Ok`.
    pub resumed_ok: usize,
    /// Paused commits resumed with `ConcurrentUpdate`.
    pub resumed_failed: usize,
    /// Paused commits dropped without resuming.
    pub abandoned: usize,
    /// The most worlds the model had to keep at once.
    pub max_worlds: usize,
    /// Transactions that committed.
    pub tx_ok: usize,
    /// Transactions that ended with the closure's own error.
    pub tx_failed: usize,
    /// Transactions that timed out (a retry, or a conflict, under a deadline already past).
    pub tx_timed_out: usize,
    /// Transactions that ran their closure more than once.
    pub tx_reruns: usize,
    /// `interleave`: transactions not run because a client was stopped inside a commit.
    pub tx_skipped: usize,
    /// Keys removed by commits that landed (handles, transactions, paused commits).
    pub removals: usize,
    /// Keys created above version 0, in a store where keys were removed (the floor).
    pub recreations: usize,
    /// Snapshots that claimed their keys (the stores' own `Stats::snapshot_claims`): with
    /// `test-hooks`, every snapshot of several keys in the inputs that ask for it.
    pub snapshot_claims: u64,
    /// `interleave`: removals that may have landed without their key being unlinked, looked up
    /// before a step that may create a key (see [`Interleave::unlink_landed`]).
    pub looked_up_landed: usize,
}

impl Stats {
    /// Counts a transaction that ended with `end` after the answers `log`.
    fn count_tx(&mut self, log: &[Ans], end: &TxEnd) {
        match end {
            TxEnd::Ok => self.tx_ok += 1,
            TxEnd::Failed(_) => self.tx_failed += 1,
            TxEnd::TimedOut => self.tx_timed_out += 1,
            TxEnd::Blocks => {}
        }
        if log.contains(&Ans::Attempt(2)) {
            self.tx_reruns += 1;
        }
    }

    /// Counts the removals and the keys created above version 0 in a model's history.
    fn count_history(&mut self, model: &Model) {
        for event in &model.log {
            match event {
                Event::Create(_, version) => self.recreations += usize::from(*version > 0),
                Event::Commit(members) => {
                    self.removals += members.iter().filter(|m| m.removes()).count()
                }
            }
        }
    }
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, other: Stats) {
        self.commits_ok += other.commits_ok;
        self.commits_failed += other.commits_failed;
        self.resumed_ok += other.resumed_ok;
        self.resumed_failed += other.resumed_failed;
        self.abandoned += other.abandoned;
        self.max_worlds = self.max_worlds.max(other.max_worlds);
        self.tx_ok += other.tx_ok;
        self.tx_failed += other.tx_failed;
        self.tx_timed_out += other.tx_timed_out;
        self.tx_reruns += other.tx_reruns;
        self.tx_skipped += other.tx_skipped;
        self.removals += other.removals;
        self.recreations += other.recreations;
        self.looked_up_landed += other.looked_up_landed;
        self.snapshot_claims += other.snapshot_claims;
    }
}

fn expect_eq<T: PartialEq + Debug>(what: &str, actual: T, expected: T) -> Result<(), String> {
    if actual == expected {
        Ok(())
    } else {
        Err(format!(
            "{what}: the store gives {actual:?}, the model expects {expected:?}"
        ))
    }
}

fn divergence<T: Debug>(target: &str, program: &[T], step: usize, msg: &str) -> ! {
    let mut listing = String::new();
    for (i, op) in program.iter().enumerate() {
        let mark = if i == step { ">>" } else { "  " };
        let _ = writeln!(listing, "  {mark} {i:3}: {op:?}");
    }
    panic!(
        "stm-store diverged from the reference model ({target} target)\n\
         at step {step}: {msg}\n\
         decoded program:\n{listing}"
    );
}
