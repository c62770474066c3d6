//! The skip policy (tests/common/skip.rs) seen from outside, as CI sees
//! it: this binary runs its own `a_test_whose_tool_is_missing` in a child
//! process with a chosen environment and reads the exit status.

mod common;

use std::process::{Command, Output};

use common::skip::ALLOW_SKIP;

const WHY: &str = "no frobnicator on this machine";

#[test]
#[ignore = "run in a child by a_missing_tool_fails_ci_unless_the_skip_is_allowed"]
fn a_test_whose_tool_is_missing() {
    common::skip_or_fail(WHY);
}

/// The ignored test above, alone, with `env` and neither CI variable
/// inherited from this run.
fn run_child(env: &[(&str, &str)]) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "a_test_whose_tool_is_missing"])
        .env_remove("CI")
        .env_remove(ALLOW_SKIP)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_missing_tool_fails_ci_unless_the_skip_is_allowed() {
    let out = run_child(&[("CI", "true")]);
    assert!(!out.status.success(), "passed under CI:\n{}", text(&out));
    assert!(
        text(&out).contains(&format!("cannot run under CI: {WHY}")),
        "{}",
        text(&out)
    );

    for env in [
        &[("CI", "true"), (ALLOW_SKIP, "1")][..],
        &[][..],
        &[("CI", "false")][..],
    ] {
        let out = run_child(env);
        assert!(out.status.success(), "{env:?}:\n{}", text(&out));
        // Straight to stderr, not held back by the harness's capture.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("!!! SKIPPED: {WHY} !!!")),
            "{env:?}:\n{}",
            text(&out)
        );
    }
}
