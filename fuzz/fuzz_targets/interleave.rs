//! 2-3 clients interleaved step by step, with commits paused half-way: every answer must be
//! explained by some serial order of the commits (each taking effect within its call), and the
//! final dump must equal the serial replay of the successful commits.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../harness/mod.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    harness::run_interleave(data);
});
