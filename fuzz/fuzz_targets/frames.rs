//! Guest frames, host events and clock steps into the engine.
//! The harness and its invariants: `netferry::fuzzing::frames::run`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| netferry::fuzzing::frames::run(data));
