//! Argument vectors through the command-line parser and validation.
//! The harness and its invariants: `netferry::fuzzing::cli`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| netferry::fuzzing::cli(data));
