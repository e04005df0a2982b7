//! One client, at most 6 handles over 4 keys: every answer must equal the reference model's.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../harness/mod.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::run_ops(data));
