//! `-c`: bring up `lo` and the tap and give the tap its address and route.
//!
//! Plain SIOCSIF* / SIOCADDRT ioctls, as slirp4netns does: no netlink
//! dependency for five calls. Runs in the child, inside the namespace.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use thiserror::Error;

use super::tap::ifreq_for;
use crate::engine::Link4;

#[derive(Debug, Error)]
pub enum IfconfigError {
    #[error("cannot create a socket for interface configuration: {0}")]
    Socket(io::Error),
    #[error("interface name {0:?} is invalid")]
    Name(String),
    #[error("cannot {what} on {name}: {err}")]
    Ioctl {
        what: &'static str,
        name: String,
        err: io::Error,
    },
}

/// What `-c` applies to the tap.
pub struct IfConfig<'a> {
    pub name: &'a str,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    pub link: &'a Link4,
}

pub fn configure(cfg: &IfConfig<'_>) -> Result<(), IfconfigError> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(IfconfigError::Socket(io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh socket that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let ctl = Ctl { sock: &sock };

    ctl.up("lo")?;
    if let Some(mac) = cfg.mac {
        ctl.set_mac(cfg.name, mac)?;
    }
    ctl.set_mtu(cfg.name, cfg.mtu)?;
    ctl.up(cfg.name)?;
    ctl.set_addr(
        cfg.name,
        libc::SIOCSIFADDR,
        "set the address",
        cfg.link.guest,
    )?;
    ctl.set_addr(
        cfg.name,
        libc::SIOCSIFNETMASK,
        "set the netmask",
        cfg.link.netmask(),
    )?;
    ctl.add_default_route(cfg.name, cfg.link.gateway)
}

struct Ctl<'a> {
    sock: &'a OwnedFd,
}

impl Ctl<'_> {
    fn ioctl(
        &self,
        name: &str,
        what: &'static str,
        req: libc::Ioctl,
        fill: impl FnOnce(&mut libc::ifreq),
    ) -> Result<(), IfconfigError> {
        let mut ifr = ifreq_for(name).ok_or_else(|| IfconfigError::Name(name.to_string()))?;
        fill(&mut ifr);
        // SAFETY: every request used here takes a pointer to an ifreq, and
        // `ifr` is a valid, exclusively borrowed one.
        let rc = unsafe { libc::ioctl(self.sock.as_raw_fd(), req, &mut ifr) };
        if rc < 0 {
            return Err(IfconfigError::Ioctl {
                what,
                name: name.to_string(),
                err: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn up(&self, name: &str) -> Result<(), IfconfigError> {
        let flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        self.ioctl(name, "bring the interface up", libc::SIOCSIFFLAGS, |ifr| {
            ifr.ifr_ifru.ifru_flags = flags
        })
    }

    fn set_mtu(&self, name: &str, mtu: u32) -> Result<(), IfconfigError> {
        self.ioctl(name, "set the MTU", libc::SIOCSIFMTU, |ifr| {
            ifr.ifr_ifru.ifru_mtu = mtu as libc::c_int
        })
    }

    fn set_mac(&self, name: &str, mac: [u8; 6]) -> Result<(), IfconfigError> {
        self.ioctl(name, "set the MAC address", libc::SIOCSIFHWADDR, |ifr| {
            let mut sa = libc::sockaddr {
                sa_family: libc::ARPHRD_ETHER,
                sa_data: [0; 14],
            };
            for (dst, src) in sa.sa_data.iter_mut().zip(mac) {
                *dst = src as libc::c_char;
            }
            ifr.ifr_ifru.ifru_hwaddr = sa;
        })
    }

    fn set_addr(
        &self,
        name: &str,
        req: libc::Ioctl,
        what: &'static str,
        addr: Ipv4Addr,
    ) -> Result<(), IfconfigError> {
        self.ioctl(name, what, req, |ifr| {
            ifr.ifr_ifru.ifru_addr = sockaddr_v4(addr)
        })
    }

    fn add_default_route(&self, name: &str, gateway: Ipv4Addr) -> Result<(), IfconfigError> {
        let mut dev = name.as_bytes().to_vec();
        dev.push(0);
        // SAFETY: rtentry is plain old data; all-zero is a valid value.
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr_v4(Ipv4Addr::UNSPECIFIED);
        rt.rt_genmask = sockaddr_v4(Ipv4Addr::UNSPECIFIED);
        rt.rt_gateway = sockaddr_v4(gateway);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        rt.rt_dev = dev.as_mut_ptr().cast();
        // SAFETY: SIOCADDRT takes a pointer to an rtentry; `rt` is valid and
        // its rt_dev points to a NUL-terminated name that outlives the call.
        let rc = unsafe { libc::ioctl(self.sock.as_raw_fd(), libc::SIOCADDRT, &mut rt) };
        if rc < 0 {
            return Err(IfconfigError::Ioctl {
                what: "add the default route",
                name: name.to_string(),
                err: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

fn sockaddr_v4(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes of plain data, and
    // the kernel reads this sockaddr as a sockaddr_in (sa_family AF_INET).
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}
