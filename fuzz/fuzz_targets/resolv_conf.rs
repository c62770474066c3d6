//! Bytes as /etc/resolv.conf.
//! The harness and its invariants: `netferry::fuzzing::resolv_conf`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| netferry::fuzzing::resolv_conf(data));
