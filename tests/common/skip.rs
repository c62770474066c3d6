//! What a test does when something it needs is missing from the machine
//! (a tool, an image, a kernel feature): outside CI it says so loudly and
//! passes; under CI it fails, so a CI machine that lost an image cannot
//! pass with fewer tests run. `NETFERRY_ALLOW_SKIP=1` allows the skip
//! where it is expected; `.ci/run` never sets it. Whether a test can run
//! is decided from the fact itself (a file, an ioctl), never from the
//! wording of a log line.

use std::io::Write;

/// The variable that allows a skip under CI.
pub const ALLOW_SKIP: &str = "NETFERRY_ALLOW_SKIP";

/// `CI=true` (as CI services set it) or `NETFERRY_ALLOW_SKIP=1`; empty,
/// `0` and `false` count as unset.
fn on(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

/// The caller cannot run because of `why`, and returns after this:
/// panics with `why` under CI unless skips are allowed, otherwise prints
/// a SKIPPED line straight to stderr, past the test harness's capture.
pub fn skip_or_fail(why: &str) {
    if on("CI") && !on(ALLOW_SKIP) {
        panic!("cannot run under CI: {why} ({ALLOW_SKIP}=1 allows the skip)");
    }
    let _ = writeln!(std::io::stderr(), "\n!!! SKIPPED: {why} !!!\n");
}
