//! Linearizability, checked: record what the threads of a real run did and saw, and check that
//! some order of those operations, one that respects real time, gives every answer that was
//! recorded when run one by one against a model of the store.
//!
//! - [`history`]: the recorded format (backend-neutral: an etcd client records into it too),
//!   per-client logs and the run's clock.
//! - [`record`]: the recorder for the in-process `stm_store::Store`.
//! - [`mod@check`]: the checker (Wing and Gong's search, memoized as in Lowe's paper and
//!   Porcupine, pruned by versions, partitioned where sound), and its report of the smallest
//!   window of operations that no order fits.
//! - [`run`]: randomized runs of the in-process store, each recorded and checked.
//!
//! The model itself (`model.rs`) follows the contract (`stm_store::docs::contract`) point by
//! point; its documentation says where the contract leaves freedom and how the model keeps it.
#![warn(missing_docs)]

pub mod check;
pub mod history;
mod model;
pub mod record;
pub mod run;

pub use check::{check, CheckError, Checker, Summary, Violation};
pub use history::{Clock, Event, History, Log, Op, Outcome, Part, Row, Time, Write, NEVER};
