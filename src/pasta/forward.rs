//! pasta's port specs made into what netferry binds: `-T`/`-U` as ports
//! relayed from the namespace's loopback to the host's.
//!
//! pasta binds a `-T`/`-U` port inside the namespace on every address of
//! both families, restricted to `lo` (fwd_rule.c, `fwd_rule_parse`), and
//! carries what arrives to the same loopback address on the host at the
//! mapped port (fwd.c, `fwd_nat_from_splice`).

use anyhow::bail;

use super::ports::{Forwards, PortSpec, Ports};
use crate::relay::RelayProto;

/// One port relayed from the namespace's loopback to the host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NsForward {
    pub proto: RelayProto,
    /// Bound inside the namespace.
    pub port: u16,
    /// Connected to on the host's loopback.
    pub to_port: u16,
}

/// The `-T` and `-U` ports to bind inside the namespace.
pub fn ns_forwards(tcp_ns: &Forwards, udp_ns: &Forwards) -> anyhow::Result<Vec<NsForward>> {
    let mut out = Vec::new();
    for (flag, proto, f) in [
        ("-T", RelayProto::Tcp, tcp_ns),
        ("-U", RelayProto::Udp, udp_ns),
    ] {
        let specs = match f {
            Forwards::Default => {
                log::warn!(
                    "{flag} auto (pasta's default) is not supported by netferry's pasta mode yet: \
                     no ports are forwarded from the namespace to the host"
                );
                continue;
            }
            Forwards::Given(specs) => specs,
        };
        for spec in specs {
            out.extend(spec_ns_forwards(flag, proto, spec)?);
        }
    }
    Ok(out)
}

fn spec_ns_forwards(
    flag: &str,
    proto: RelayProto,
    spec: &PortSpec,
) -> anyhow::Result<Vec<NsForward>> {
    let ranges = match &spec.ports {
        Ports::Ranges(r) if !spec.auto => r,
        _ => bail!(
            "{flag}: 'all' and 'auto' are not supported by netferry's pasta mode yet; \
             list the ports"
        ),
    };
    let mut out = Vec::new();
    for r in ranges {
        if let Some(addr) = r.to_addr {
            bail!(
                "{flag}: a target address ({addr}) is not supported by netferry's pasta mode; \
                 ports go to the host's loopback"
            );
        }
        for (port, to_port) in r.ports.clone().zip(r.to_first..) {
            if spec.exclude.iter().any(|x| x.contains(&port)) {
                continue;
            }
            out.push(NsForward {
                proto,
                port,
                to_port,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pasta::ports::PortOption;

    fn given(option: PortOption, args: &[&str]) -> Forwards {
        let mut f = Forwards::Default;
        for arg in args {
            f.add(option, arg).unwrap();
        }
        f
    }

    #[test]
    fn ns_ports_expand_ranges_maps_and_exclusions() {
        let tcp = given(PortOption::TcpNs, &["5432", "8000-8003:9000-9003,~8001"]);
        let udp = given(PortOption::UdpNs, &["53"]);
        let got: Vec<_> = ns_forwards(&tcp, &udp)
            .unwrap()
            .into_iter()
            .map(|f| (f.proto, f.port, f.to_port))
            .collect();
        use RelayProto::{Tcp, Udp};
        assert_eq!(
            got,
            [
                (Tcp, 5432, 5432),
                (Tcp, 8000, 9000),
                (Tcp, 8002, 9002),
                (Tcp, 8003, 9003),
                (Udp, 53, 53)
            ]
        );
        let none = given(PortOption::TcpNs, &["none"]);
        assert!(ns_forwards(&none, &none).unwrap().is_empty());
    }

    #[test]
    fn ns_auto_and_all_are_refused_by_name() {
        let none = given(PortOption::UdpNs, &["none"]);
        for arg in ["auto", "all", "~22"] {
            let e = ns_forwards(&given(PortOption::TcpNs, &[arg]), &none).unwrap_err();
            assert!(
                e.to_string().starts_with("-T: 'all' and 'auto'"),
                "{arg}: {e}"
            );
        }
    }
}
