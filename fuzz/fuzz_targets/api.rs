//! Bytes as API requests against an engine.
//! The harness and its invariants: `netferry::fuzzing::api`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| netferry::fuzzing::api(data));
