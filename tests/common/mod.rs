//! Shared pieces of the integration tests: a real network namespace to
//! stand in for a container, and a real netferry process serving it.
//!
//! Everything here touches only namespaces the test creates itself, so no
//! test traffic can leave the machine. Waits have deadlines and
//! poll for the condition; no test depends on a fixed sleep being enough.
//!
//! One file per subject: `ns` (the container namespace and the test's
//! host and remote namespaces), `netferry` (starting and watching the
//! process under test), `dns` (the tests' DNS server), `rootless` and
//! `podman` (the callers that start netferry, and what their guests see),
//! `pasta` (a rootless caller of pasta mode and the real pasta beside it),
//! `skip` (a missing prerequisite), `tools` (scratch directories, waits,
//! commands, TCP and payload helpers). The most used items are
//! re-exported here, so a test writes `common::TestNet`.

#![allow(dead_code)] // each test binary uses a different part of this

pub mod dns;
pub mod netferry;
pub mod ns;
pub mod pasta;
pub mod podman;
pub mod rootless;
pub mod skip;
pub mod tools;

// Each test binary uses a different few of these.
#[allow(unused_imports)]
pub use self::{
    dns::dns_server,
    netferry::{EXIT_FD, Netferry, Options, READY_FD, Served, netferry_bin, serve, serve_from},
    ns::{BindMount, HOST_ADDR, Namespace, REMOTE_ADDR, TestNet, in_netns},
    rootless::{Found, ROOTLESSKIT2, Rootlesskit, rootlesskit2},
    skip::skip_or_fail,
    tools::{
        KillOnDrop, NOBODY, TempDir, as_user_args, connect, echo_until_eof, pattern, run_ok,
        wait_until,
    },
};
