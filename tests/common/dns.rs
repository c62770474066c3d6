//! The tests' DNS: a dnsmasq in the test's host namespace answering one
//! test name. `TestNet` points the host namespace's resolv.conf at
//! 127.0.0.1 (through /etc/netns), so netferry started there asks this
//! server and never the machine's real resolver.

use std::process::Stdio;
use std::time::Duration;

use super::ns::TestNet;
use super::tools::{KillOnDrop, wait_until};

/// dnsmasq on `addr` port 53 of the test's host namespace, answering
/// probe.netferry.test with each of `answers` (A or AAAA records by their
/// form); returns once it answers. The tests' only DNS server: nothing
/// ever asks the machine's real resolver.
pub fn dns_server(net: &TestNet, addr: &str, answers: &[&str]) -> KillOnDrop {
    let mut args = vec![
        "dnsmasq".to_string(),
        "--no-daemon".into(),
        "--no-resolv".into(),
        "--no-hosts".into(),
        format!("--listen-address={addr}"),
        "--bind-interfaces".into(),
        "--port=53".into(),
        "--pid-file=".into(),
        "--user=root".into(),
    ];
    args.extend(
        answers
            .iter()
            .map(|a| format!("--address=/probe.netferry.test/{a}")),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = net
        .host_cmd(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq (package dnsmasq-base) is needed");
    let guard = KillOnDrop(child);
    let first = answers.first().copied().unwrap_or_default();
    let up = wait_until(Duration::from_secs(5), || {
        net.host_cmd(&["dig", "+short", "+tries=1", "+time=1", &format!("@{addr}")])
            .arg("probe.netferry.test")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(first))
    });
    assert!(up, "dnsmasq on {addr} did not come up");
    guard
}
