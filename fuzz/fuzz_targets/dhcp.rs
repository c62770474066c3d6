//! DHCP packets to the DHCP server.
//! The harness and its invariants: `netferry::fuzzing::dhcp`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| netferry::fuzzing::dhcp(data));
