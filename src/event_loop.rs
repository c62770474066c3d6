//! The one thread that runs netferry once setup is done.
//!
//! It owns the `mio::Poll` over the tap, the exit fd, a signalfd, the API
//! socket and every host socket (through [`NetHost`]'s registry clone),
//! with the engine's next deadline as the timeout. On each wake-up it
//! reads a bounded batch of frames from the tap, hands host readiness to
//! the engine by flow id, then lets the engine flush. It never blocks on
//! anything but `poll` itself.

use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant as StdInstant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use smoltcp::time::Instant;
use thiserror::Error;

use crate::api::ApiServer;
use crate::busy_poll::{BusyPoll, Moved};
use crate::engine::{Engine, EngineConfig, FrameSink, Readiness, send_cut};
use crate::host::{NetHost, Outbound, Splice};
use crate::pages::Pages;
use crate::relay::{Relay, RelayRule};
use crate::setup::{self, Offload};
use crate::tokens::{self, EXIT_FD, NETNS_WATCH, SIGNALS, TAP};
use crate::vnet;

/// Large enough for any frame a tap can hold (MTU 65521, or a 64 KiB
/// segment with offload, plus headers), so a guest with a larger MTU than
/// ours never has frames cut short.
const RX_BUFFER_LEN: usize = 65536 + 128;
/// Frames read from the tap per wake-up before host sockets, the API and
/// timers get their turn: a guest sending flat out must not starve them.
const TAP_BATCH: usize = 256;
/// How often the periodic work runs (pasta's port scan, the relay's UDP
/// expiry): pasta re-scans its namespace's ports once a second.
const TICK: Duration = Duration::from_secs(1);

/// Work the loop runs every [`TICK`] (pasta's `auto` port scans), with
/// the relay and the namespace's connector where there are both.
pub type Tick = Box<dyn FnMut(&mut Engine<NetHost>, Option<(&mut Relay, &mut setup::Connector)>)>;

#[derive(Debug, Error)]
pub enum LoopError {
    #[error("cannot set up the event loop: {0}")]
    Poll(io::Error),
    #[error("cannot set up signal handling: {0}")]
    Signals(nix::Error),
}

/// Why the loop ended; all of these are a clean exit.
#[derive(Debug, PartialEq)]
pub enum Exit {
    ExitFd,
    Signal(Signal),
    TapGone,
    /// The namespace file was deleted (pasta's way to end).
    NetnsGone,
    /// The command of `netferry run` ended with this status.
    Child(WaitStatus),
}

/// Frames out to the tap. A full or failing tap drops the frame: TCP
/// retransmits, and nothing else in netferry may stall on the guest.
struct TapSink<'a> {
    tap: &'a File,
    offload: Offload,
    mtu: usize,
}

impl TapSink<'_> {
    /// Write `frame`, behind `vnet` (zero-padded to the tap's header
    /// length) on a tap with a virtio-net header, bare on one without.
    fn write(&mut self, vnet: [u8; vnet::HEADER_LEN], frame: &[u8]) {
        let written = match self.offload {
            Offload::Off => self.tap.write(frame),
            Offload::Vnet { header_len, .. } => {
                // The same length reads take off (at most MAX_HEADER_LEN,
                // which setup ensures).
                let mut header = [0u8; vnet::MAX_HEADER_LEN];
                header[..vnet::HEADER_LEN].copy_from_slice(&vnet);
                let Some(header) = header.get(..header_len) else {
                    return;
                };
                self.tap
                    .write_vectored(&[IoSlice::new(header), IoSlice::new(frame)])
            }
        };
        if let Err(e) = written {
            log::debug!("tap write of {} bytes failed: {e}", frame.len());
        }
    }
}

impl FrameSink for TapSink<'_> {
    fn send_frame(&mut self, frame: &mut [u8]) {
        let header = if self.offload.segments() {
            vnet::header_for(frame, self.mtu)
        } else {
            [0; vnet::HEADER_LEN]
        };
        self.write(header, frame);
    }

    fn send_udp_train(&mut self, frame: &mut [u8], size: usize) {
        if !self.offload.splits_udp() {
            // Never asked of a tap that does not cut trains; cut it here.
            return send_cut(self, frame, size);
        }
        self.write(vnet::udp_train_header(frame, size), frame);
    }
}

/// What reading a batch from the tap found.
enum TapRead {
    Drained,
    /// The batch ran out before the tap did.
    More,
    Gone,
}

pub struct EventLoop {
    poll: Poll,
    tap: File,
    offload: Offload,
    mtu: usize,
    /// The tap may still hold frames (epoll is edge-triggered: no new
    /// event comes for frames already waiting).
    tap_pending: bool,
    engine: Engine<NetHost>,
    signals: SignalFd,
    exit_fd: Option<RawFd>,
    api: Option<ApiServer>,
    /// `netferry run`'s command: signals go to it, and its end is ours.
    child: Option<Pid>,
    /// pasta mode: the namespace file, whose deletion ends netferry.
    netns: Option<setup::NetnsWatch>,
    /// pasta's `-T`/`-U`: sockets inside the namespace relayed to the
    /// host's loopback.
    relay: Option<Relay>,
    /// pasta's splice: makes the sockets inside the namespace that host
    /// loopback clients of `-t` are carried to.
    connector: Option<setup::Connector>,
    tick: Option<Tick>,
    next_tick: StdInstant,
    start: StdInstant,
    /// Mapped, not allocated: an idle instance touches one page of it.
    rx: Pages,
    busy_poll: BusyPoll,
}

impl EventLoop {
    /// Register everything. SIGINT, SIGTERM and SIGHUP are blocked and
    /// read from a signalfd, so they are handled between events, never
    /// mid-frame.
    /// `busy_poll` is the most the loop polls before sleeping.
    pub fn new(
        (tap, offload): (File, Offload),
        (engine_cfg, busy_poll): (&EngineConfig, Duration),
        host: (Outbound, &Path),
        exit_fd: Option<RawFd>,
        mut api: Option<ApiServer>,
    ) -> Result<Self, LoopError> {
        let poll = Poll::new().map_err(LoopError::Poll)?;
        let registry = poll.registry().try_clone().map_err(LoopError::Poll)?;
        let (outbound, resolv_conf) = host;
        let host = NetHost::new(registry, outbound, resolv_conf);
        let mut engine_cfg = engine_cfg.clone();
        engine_cfg.offload = offload.segments();
        engine_cfg.split_udp = offload.splits_udp();
        let engine = Engine::new(&engine_cfg, Instant::from_millis(0), host);
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGINT);
        mask.add(Signal::SIGTERM);
        // A hang-up ends netferry (or its command) as SIGTERM does, but
        // not under nohup: a blocked signal reaches the signalfd even
        // when its disposition says to ignore it.
        if !setup::signal_ignored(Signal::SIGHUP) {
            mask.add(Signal::SIGHUP);
        }
        // Only `netferry run` has a child to hear of; otherwise ignored.
        mask.add(Signal::SIGCHLD);
        mask.thread_block().map_err(LoopError::Signals)?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(LoopError::Signals)?;
        let registry = poll.registry();
        registry
            .register(&mut SourceFd(&tap.as_raw_fd()), TAP, Interest::READABLE)
            .map_err(LoopError::Poll)?;
        registry
            .register(
                &mut SourceFd(&signals.as_raw_fd()),
                SIGNALS,
                Interest::READABLE,
            )
            .map_err(LoopError::Poll)?;
        if let Some(api) = &mut api {
            api.register(registry).map_err(LoopError::Poll)?;
        }
        let mut this = EventLoop {
            poll,
            tap,
            offload,
            mtu: engine_cfg.mtu,
            tap_pending: true,
            engine,
            signals,
            exit_fd: None,
            api,
            child: None,
            netns: None,
            relay: None,
            connector: None,
            tick: None,
            next_tick: StdInstant::now(),
            start: StdInstant::now(),
            rx: Pages::zeroed(RX_BUFFER_LEN),
            busy_poll: BusyPoll::new(busy_poll),
        };
        if let Some(fd) = exit_fd {
            // An exit fd that cannot be watched counts as already hung up;
            // run() notices and exits at once.
            match this
                .poll
                .registry()
                .register(&mut SourceFd(&fd), EXIT_FD, Interest::READABLE)
            {
                Ok(()) => this.exit_fd = Some(fd),
                Err(e) => {
                    log::warn!("exit fd {fd} cannot be watched ({e}); exiting");
                    this.exit_fd = Some(-1);
                }
            }
        }
        Ok(this)
    }

    /// Serve until `child` ends; SIGINT, SIGTERM and SIGHUP are passed
    /// to it.
    pub fn watch_child(&mut self, child: Pid) {
        self.child = Some(child);
    }

    /// Serve until the namespace file `watch` follows is deleted.
    pub fn watch_netns(&mut self, watch: setup::NetnsWatch) -> Result<(), LoopError> {
        self.poll
            .registry()
            .register(
                &mut SourceFd(&watch.raw_fd()),
                NETNS_WATCH,
                Interest::READABLE,
            )
            .map_err(LoopError::Poll)?;
        self.netns = Some(watch);
        Ok(())
    }

    /// Relay `rules`' sockets (made inside the namespace) to the host's
    /// loopback; UDP flows end after `udp_timeout` without traffic.
    pub fn relay(&mut self, rules: Vec<RelayRule>, udp_timeout: Duration) -> io::Result<()> {
        if self.relay.is_none() && !rules.is_empty() {
            let registry = self.poll.registry().try_clone()?;
            self.relay = Some(Relay::new(registry, udp_timeout));
        }
        if let Some(relay) = &mut self.relay {
            for rule in rules {
                relay.add(rule)?;
            }
        }
        Ok(())
    }

    /// Carry forwarded TCP clients on the host's loopback as pasta
    /// splices them: from a socket `connector` makes inside the
    /// namespace, to `splice`'s address there, through the relay.
    pub fn splice_loopback(
        &mut self,
        connector: setup::Connector,
        splice: Splice,
        udp_timeout: Duration,
    ) -> io::Result<()> {
        if self.relay.is_none() {
            let registry = self.poll.registry().try_clone()?;
            self.relay = Some(Relay::new(registry, udp_timeout));
        }
        self.engine.host_mut().splice_loopback(splice);
        self.connector = Some(connector);
        Ok(())
    }

    /// Connect the clients the host took from the engine since last time,
    /// each from a fresh socket inside the namespace. One that cannot be
    /// carried is reset, as a refused connect would be.
    fn carry_spliced(&mut self) {
        let carried = self.engine.host_mut().take_carried();
        let (Some(connector), Some(relay)) = (&mut self.connector, &mut self.relay) else {
            return;
        };
        for (client, to) in carried {
            let carried = match connector.socket(to.is_ipv6()) {
                Ok(server) => relay.carry(client, server, to),
                Err(e) => {
                    crate::relay::refuse(client);
                    Err(e)
                }
            };
            if let Err(e) = carried {
                log::debug!("splice: cannot carry a client to {to}: {e}");
            }
        }
    }

    /// Run `tick` about once a second, with the engine.
    pub fn every_tick(&mut self, tick: Tick) {
        self.tick = Some(tick);
    }

    /// Run the periodic work now: the first `auto` scans, before the
    /// caller hears that pasta is ready, as pasta's.
    pub fn tick_now(&mut self) {
        self.next_tick = StdInstant::now();
        self.run_tick();
    }

    /// The periodic work, when it is due; how long until it is due next.
    fn run_tick(&mut self) -> Option<Duration> {
        if self.relay.is_none() && self.tick.is_none() {
            return None;
        }
        let now = StdInstant::now();
        if now >= self.next_tick {
            if let Some(tick) = &mut self.tick {
                let ns = self.relay.as_mut().zip(self.connector.as_mut());
                tick(&mut self.engine, ns);
            }
            if let Some(relay) = &mut self.relay {
                relay.expire(now);
            }
            self.next_tick = now + TICK;
        }
        Some(self.next_tick.saturating_duration_since(now))
    }

    /// Whether the child has ended, reaped.
    fn child_status(&self) -> Option<WaitStatus> {
        let child = self.child?;
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => None,
            Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => Some(status),
            Ok(_) => None,
        }
    }

    pub fn engine_mut(&mut self) -> &mut Engine<NetHost> {
        &mut self.engine
    }

    fn now(&self) -> Instant {
        Instant::from_micros(self.start.elapsed().as_micros() as i64)
    }

    /// Run until the exit fd hangs up, a signal arrives or the tap is gone.
    pub fn run(&mut self) -> Result<Exit, LoopError> {
        if self.exit_fd == Some(-1) {
            return Ok(Exit::ExitFd);
        }
        // A command that ended before we listened for it.
        if let Some(status) = self.child_status() {
            return Ok(Exit::Child(status));
        }
        let mut events = Events::with_capacity(256);
        // What moved before the last wake-up, for busy polling.
        let mut moved_before = Moved::default();
        loop {
            let until_tick = self.run_tick();
            let now = self.now();
            let timeout = if self.tap_pending {
                Some(Duration::ZERO)
            } else {
                let engine = self
                    .engine
                    .poll_timeout(now)
                    .map(|d| Duration::from_micros(d.total_micros()));
                match (engine, until_tick) {
                    (Some(e), Some(t)) => Some(e.min(t)),
                    (e, t) => e.or(t),
                }
            };
            let stats = self.engine.stats();
            let moved = Moved {
                bytes: stats.bytes_to_host + stats.bytes_to_guest,
                packets: stats.frames_from_guest + stats.datagrams_to_guest,
                datagrams: stats.datagrams_from_guest + stats.datagrams_to_guest,
            };
            let result = self.busy_poll.poll(
                &mut self.poll,
                &mut events,
                timeout,
                moved.since(std::mem::replace(&mut moved_before, moved)),
            );
            if let Err(e) = result {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(LoopError::Poll(e));
            }
            for event in events.iter() {
                match event.token() {
                    TAP => self.tap_pending = true,
                    EXIT_FD => {
                        log::info!("exit fd hung up; exiting");
                        return Ok(Exit::ExitFd);
                    }
                    NETNS_WATCH => {
                        if self.netns.as_ref().is_some_and(|w| w.gone()) {
                            log::info!("the namespace is gone; exiting");
                            return Ok(Exit::NetnsGone);
                        }
                    }
                    SIGNALS => {
                        while let Ok(Some(info)) = self.signals.read_signal() {
                            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                                continue;
                            };
                            match (sig, self.child) {
                                (Signal::SIGCHLD, _) => {
                                    if let Some(status) = self.child_status() {
                                        log::debug!("the command ended: {status:?}");
                                        return Ok(Exit::Child(status));
                                    }
                                }
                                (_, Some(child)) => {
                                    log::debug!("passing {sig} to the command");
                                    let _ = kill(child, sig);
                                }
                                (_, None) => {
                                    log::info!("received {sig}; exiting");
                                    return Ok(Exit::Signal(sig));
                                }
                            }
                        }
                    }
                    token if Relay::is_ours(token) => {
                        if let Some(relay) = &mut self.relay {
                            relay.handle(token);
                        }
                    }
                    token if ApiServer::is_ours(token) => {
                        if let Some(api) = &mut self.api {
                            api.handle(token, self.poll.registry(), &mut self.engine);
                        }
                    }
                    token => {
                        let Some(id) = tokens::flow_of(token) else {
                            continue;
                        };
                        let ready = Readiness {
                            readable: event.is_readable()
                                || event.is_read_closed()
                                || event.is_error(),
                            writable: event.is_writable()
                                || event.is_write_closed()
                                || event.is_error(),
                            read_closed: event.is_read_closed() || event.is_error(),
                        };
                        self.engine.handle_host_event(id, ready);
                    }
                }
            }
            if self.tap_pending {
                match self.read_tap() {
                    TapRead::Gone => return Ok(Exit::TapGone),
                    TapRead::Drained => self.tap_pending = false,
                    TapRead::More => {}
                }
            }
            let now = self.now();
            let mut sink = TapSink {
                tap: &self.tap,
                offload: self.offload,
                mtu: self.mtu,
            };
            self.engine.poll_transmit(now, &mut sink);
            if self.connector.is_some() {
                self.carry_spliced();
            }
        }
    }

    /// Read up to a batch of frames.
    fn read_tap(&mut self) -> TapRead {
        let mut now = self.now();
        for i in 0..TAP_BATCH {
            // The clock is read every few frames, not for each: with small
            // frames that was a few percent of netferry's time, and 16
            // frames take well under smoltcp's millisecond tick.
            if i % 16 == 15 {
                now = self.now();
            }
            match (&self.tap).read(&mut self.rx) {
                Ok(0) => return TapRead::Drained,
                Ok(n) => {
                    let mut sink = TapSink {
                        tap: &self.tap,
                        offload: self.offload,
                        mtu: self.mtu,
                    };
                    let read = &self.rx[..n];
                    self.engine
                        .handle_tap_read(now, read, self.offload.header_len(), &mut sink);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return TapRead::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // EBADFD: the interface was deleted (or its namespace
                // destroyed) under us.
                Err(e) if e.raw_os_error() == Some(libc::EBADFD) => {
                    log::warn!("the tap device is gone ({e}); exiting");
                    return TapRead::Gone;
                }
                Err(e) => {
                    log::warn!("tap read failed: {e}");
                    return TapRead::Drained;
                }
            }
        }
        TapRead::More
    }
}
