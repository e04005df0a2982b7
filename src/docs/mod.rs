//! Long-form documentation (no code).
//!
//! - [`design`]: how a commit stays atomic without a lock, and why a stalled thread cannot
//!   hold anyone up.
//! - [`axon_stm`]: for users of Kamaelia's `Axon.STM`: what is the same and what is not.

#[doc = include_str!("design.md")]
pub mod design {}

#[doc = include_str!("axon_stm.md")]
pub mod axon_stm {}
