//! What the guest of a rootlesskit run sees, for the rootlesskit and
//! Docker-rootless tests: a script run inside (beside the page server
//! that `Rootlesskit` starts) writes its findings to files, which the
//! test reads back once the script says it is done.

use std::fs;
use std::time::Duration;

use super::podman::HOST_WEB_PORT;
use super::{TempDir, wait_until};

/// How the guest's commands reach the container's network namespace.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Enter {
    /// rootlesskit's child is already in it.
    Child,
    /// `--detach-netns`: the child stays outside and enters the namespace
    /// rootlesskit keeps at `$ROOTLESSKIT_STATE_DIR/netns`.
    Detached,
}

impl Enter {
    fn prefix(self) -> &'static str {
        match self {
            Enter::Child => "",
            Enter::Detached => "nsenter --net=$ROOTLESSKIT_STATE_DIR/netns --",
        }
    }
}

/// The guest's findings: the host's loopback web server through the
/// gateway (10.0.2.2)
/// (see `podman::host_web`), tap0's MTU and, when asked, its SLAAC
/// address.
pub struct Probe {
    dir: TempDir,
    enter: Enter,
    dns: bool,
    gateway: String,
}

impl Probe {
    pub fn new(enter: Enter) -> Self {
        let dir = TempDir::new("rk-probe");
        Probe {
            dir,
            enter,
            dns: false,
            gateway: "10.0.2.2".into(),
        }
    }

    /// Reach the host through `gateway` (for a `--cidr` other than
    /// 10.0.2.0/24).
    pub fn via(mut self, gateway: &str) -> Self {
        self.gateway = gateway.into();
        self
    }

    /// Also look up probe.netferry.test at the first server of the
    /// resolv.conf rootlesskit writes for its child and the daemons
    /// (`$ROOTLESSKIT_STATE_DIR/resolv.conf`, netferry's DNS address); the
    /// test runs the DNS server (`dns_server`) netferry forwards to.
    pub fn with_dns(mut self) -> Self {
        self.dns = true;
        self
    }

    /// The script to hand `Rootlesskit`: `before` (run first, in the
    /// child), the probe in the background, then the prefix that puts the
    /// page server in the container's namespace.
    pub fn script(&self, before: &str, ipv6: bool) -> String {
        let e = self.enter.prefix();
        let gw = &self.gateway;
        let d = self.dir.0.display();
        let wait6 = if ipv6 {
            format!(
                "for i in $(seq 100); do {e} ip -6 addr show tap0 scope global | grep fd00 | grep -qv tentative && break; sleep 0.1; done; \
                 {e} ip -6 addr show tap0 scope global > {d}/ip6;"
            )
        } else {
            String::new()
        };
        let dns = if self.dns {
            // rootlesskit 2 writes it there (bound on /etc/resolv.conf unless
            // detached); rootlesskit 1 only binds it on /etc/resolv.conf.
            format!(
                "rc=$ROOTLESSKIT_STATE_DIR/resolv.conf; [ -e $rc ] || rc=/etc/resolv.conf; \
                 cat $rc > {d}/resolv.conf; {e} busybox nslookup probe.netferry.test \
                 $(awk '/^nameserver/ {{ print $2; exit }}' $rc) > {d}/dns 2>&1;"
            )
        } else {
            String::new()
        };
        format!(
            "{before} ({dns} {e} busybox wget -q -O {d}/host.txt http://{gw}:{HOST_WEB_PORT}/ 2> {d}/host.err; \
             {e} ip -o link show tap0 > {d}/link; {wait6} touch {d}/done) & {e}"
        )
    }

    /// Wait for the script to finish; false on time-out.
    pub fn finished(&self) -> bool {
        wait_until(Duration::from_secs(20), || self.dir.path("done").exists())
    }

    /// Where the guest may write a finding of its own.
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path(name)
    }

    pub fn read(&self, name: &str) -> String {
        fs::read_to_string(self.dir.path(name)).unwrap_or_default()
    }

    /// Assert the guest reached the host's loopback exactly when
    /// `reachable`; refused, it must have been told "Network is
    /// unreachable" (netferry's ICMP), not timed out.
    pub fn assert_host_loopback(&self, reachable: bool, context: &str) {
        let (got, err) = (self.read("host.txt"), self.read("host.err"));
        if reachable {
            assert_eq!(got, "hello from the host\n", "{err}\n{context}");
        } else {
            assert!(got.is_empty(), "reached the host's loopback\n{context}");
            assert!(
                err.contains("Network is unreachable"),
                "wget said {err:?}\n{context}"
            );
        }
    }

    /// The lookup answered with `addr`, asked of `server` as rootlesskit's
    /// resolv.conf says.
    pub fn assert_dns(&self, server: &str, addr: &str) {
        let resolv = self.read("resolv.conf");
        assert!(
            resolv.lines().next() == Some(&format!("nameserver {server}")),
            "{resolv}"
        );
        let dns = self.read("dns");
        assert!(dns.contains(&format!("Address: {addr}")), "{dns}");
    }

    /// tap0's MTU as `ip -o link` printed it.
    pub fn mtu(&self) -> Option<u32> {
        let link = self.read("link");
        let mut words = link.split_whitespace();
        words.find(|w| *w == "mtu")?;
        words.next()?.parse().ok()
    }
}
