//! The smoltcp `Device` that the engine hands to its interface.
//!
//! It holds at most one received frame (the one the engine just decided
//! smoltcp should see) and writes every transmitted frame into one reused
//! buffer before passing it to the sink: no allocation per frame.

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Where the engine's outgoing Ethernet frames go: the tap in production,
/// a vector in tests.
pub trait FrameSink {
    /// The frame is the engine's scratch space: a sink may rewrite it
    /// (the tap's offload puts a partial checksum in TCP segments).
    fn send_frame(&mut self, frame: &mut [u8]);

    /// A frame carrying a train of UDP datagrams of `size` bytes each
    /// (the last may be shorter) behind one IP and UDP header, for the
    /// tap to cut into one frame per datagram (see `crate::vnet`). The
    /// engine sends trains only when told the tap cuts them
    /// (`EngineConfig::split_udp`); a sink that is no tap cuts the train
    /// itself, as the kernel would.
    fn send_udp_train(&mut self, frame: &mut [u8], size: usize) {
        send_cut(self, frame, size);
    }
}

/// A train's datagrams through `sink` one frame each, cut as the kernel
/// would: what a sink that does not hand trains on does with one.
pub fn send_cut<S: FrameSink + ?Sized>(sink: &mut S, frame: &[u8], size: usize) {
    // The engine's own trains stay far below the segment bound.
    let _ = crate::vnet::cut_udp_train(frame, size, &mut Vec::new(), |d| sink.send_frame(d));
}

impl FrameSink for Vec<Vec<u8>> {
    fn send_frame(&mut self, frame: &mut [u8]) {
        self.push(frame.to_vec());
    }
}

/// Ethernet header length; smoltcp's MTU counts it.
pub use smoltcp::wire::ETHERNET_HEADER_LEN;

/// The largest IP packet: with segmentation offload, smoltcp's TCP
/// segments may be this large whatever the tap's MTU.
pub const MAX_IP_PACKET: usize = 65535;

/// What smoltcp may assume of the link. With `offload`, the tap splits
/// TCP segments and completes their checksums for us (see `crate::vnet`),
/// so smoltcp sends segments of up to 64 KiB and no TCP checksum.
pub fn capabilities(mtu: usize, verify_checksums: bool, offload: bool) -> DeviceCapabilities {
    let mut caps = DeviceCapabilities::default();
    caps.medium = Medium::Ethernet;
    let ip_mtu = if offload { MAX_IP_PACKET } else { mtu };
    caps.max_transmission_unit = ip_mtu + ETHERNET_HEADER_LEN;
    if !verify_checksums {
        // Frames from the tap were made by the guest kernel: trust them,
        // but always compute checksums on what we send.
        let mut c = ChecksumCapabilities::default();
        c.ipv4 = Checksum::Tx;
        c.udp = Checksum::Tx;
        c.tcp = if offload {
            Checksum::None
        } else {
            Checksum::Tx
        };
        c.icmpv4 = Checksum::Tx;
        c.icmpv6 = Checksum::Tx;
        caps.checksum = c;
    }
    caps
}

pub struct SmolDevice<'a, S: FrameSink> {
    pub rx: Option<&'a [u8]>,
    pub tx: &'a mut Vec<u8>,
    pub sink: &'a mut S,
    pub caps: &'a DeviceCapabilities,
}

pub struct RxFrame<'a>(&'a [u8]);

pub struct TxSlot<'a, S: FrameSink> {
    tx: &'a mut Vec<u8>,
    sink: &'a mut S,
}

impl<S: FrameSink> phy::Device for SmolDevice<'_, S> {
    type RxToken<'b>
        = RxFrame<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = TxSlot<'b, S>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let frame = self.rx.take()?;
        Some((
            RxFrame(frame),
            TxSlot {
                tx: self.tx,
                sink: self.sink,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        Some(TxSlot {
            tx: self.tx,
            sink: self.sink,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}

impl phy::RxToken for RxFrame<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl<S: FrameSink> phy::TxToken for TxSlot<'_, S> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        if self.tx.len() < len {
            self.tx.resize(len, 0);
        }
        let frame = &mut self.tx[..len];
        let r = f(frame);
        self.sink.send_frame(frame);
        r
    }
}
