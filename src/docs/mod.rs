//! Long-form documentation (no code).
//!
//! - [`contract`]: what the store promises, numbered; the rest of the documentation cites it.
//! - [`design`]: how a commit stays atomic without a lock, why a stalled thread cannot hold
//!   anyone up, and who frees what.
//! - [`axon_stm`]: for users of Kamaelia's `Axon.STM`: what is the same and what is not.
//! - [`loom`]: model-checking your own use of the store with loom.

#[doc = include_str!("contract.md")]
pub mod contract {}

#[doc = include_str!("design.md")]
pub mod design {}

#[doc = include_str!("axon_stm.md")]
pub mod axon_stm {}

#[doc = include_str!("loom.md")]
pub mod loom {}
