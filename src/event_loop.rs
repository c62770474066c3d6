//! The one thread that runs netferry once setup is done.
//!
//! A `mio::Poll` over the tap, the exit fd and a signalfd, with smoltcp's
//! next deadline as the timeout. On each wake-up it drains the tap until
//! WouldBlock, feeding every frame to the engine, then lets the engine
//! flush. It never blocks on anything but `poll` itself.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant as StdInstant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use smoltcp::time::Instant;
use thiserror::Error;

use crate::api::ApiServer;
use crate::engine::{Engine, EngineConfig, FLOW_TOKEN_BASE, FrameSink, Readiness};

const TAP: Token = Token(0);
const EXIT_FD: Token = Token(1);
const SIGNALS: Token = Token(2);

/// Large enough for any frame a tap can hold (MTU 65521 plus headers), so
/// a guest with a larger MTU than ours never has frames cut short.
const RX_BUFFER_LEN: usize = 65536 + 64;

#[derive(Debug, Error)]
pub enum LoopError {
    #[error("cannot set up the event loop: {0}")]
    Poll(io::Error),
    #[error("cannot set up signal handling: {0}")]
    Signals(nix::Error),
}

/// Why the loop ended; all of these are a clean exit.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    ExitFd,
    Signal(Signal),
    TapGone,
}

/// Frames out to the tap. A full or failing tap drops the frame: TCP
/// retransmits, and nothing else in netferry may stall on the guest.
struct TapSink<'a>(&'a File);

impl FrameSink for TapSink<'_> {
    fn send_frame(&mut self, frame: &[u8]) {
        if let Err(e) = self.0.write(frame) {
            log::debug!("tap write of {} bytes failed: {e}", frame.len());
        }
    }
}

pub struct EventLoop {
    poll: Poll,
    tap: File,
    engine: Engine,
    signals: SignalFd,
    exit_fd: Option<RawFd>,
    api: Option<ApiServer>,
    start: StdInstant,
    rx: Vec<u8>,
}

impl EventLoop {
    /// Register everything. SIGINT and SIGTERM are blocked and read from
    /// a signalfd, so they are handled between events, never mid-frame.
    pub fn new(
        tap: File,
        engine_cfg: &EngineConfig,
        exit_fd: Option<RawFd>,
        mut api: Option<ApiServer>,
    ) -> Result<Self, LoopError> {
        let poll = Poll::new().map_err(LoopError::Poll)?;
        let registry = poll.registry().try_clone().map_err(LoopError::Poll)?;
        let engine = Engine::new(engine_cfg, Instant::from_millis(0), registry);
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGINT);
        mask.add(Signal::SIGTERM);
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
            engine,
            signals,
            exit_fd: None,
            api,
            start: StdInstant::now(),
            rx: vec![0; RX_BUFFER_LEN],
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

    fn now(&self) -> Instant {
        Instant::from_micros(self.start.elapsed().as_micros() as i64)
    }

    /// Run until the exit fd hangs up, a signal arrives or the tap is gone.
    pub fn run(&mut self) -> Result<Exit, LoopError> {
        if self.exit_fd == Some(-1) {
            return Ok(Exit::ExitFd);
        }
        let mut events = Events::with_capacity(64);
        loop {
            let now = self.now();
            let timeout = self
                .engine
                .poll_at(now)
                .map(|at| Duration::from_micros((at - now).total_micros()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(LoopError::Poll(e));
            }
            for event in events.iter() {
                match event.token() {
                    TAP if self.drain_tap() => return Ok(Exit::TapGone),
                    EXIT_FD => {
                        log::info!("exit fd hung up; exiting");
                        return Ok(Exit::ExitFd);
                    }
                    SIGNALS => {
                        if let Ok(Some(info)) = self.signals.read_signal()
                            && let Ok(sig) = Signal::try_from(info.ssi_signo as i32)
                        {
                            log::info!("received {sig}; exiting");
                            return Ok(Exit::Signal(sig));
                        }
                    }
                    token if ApiServer::is_ours(token) => {
                        if let Some(api) = &mut self.api {
                            api.handle(token, self.poll.registry(), &mut self.engine);
                        }
                    }
                    token if token.0 >= FLOW_TOKEN_BASE => {
                        let ready = Readiness {
                            readable: event.is_readable()
                                || event.is_read_closed()
                                || event.is_error(),
                            writable: event.is_writable()
                                || event.is_write_closed()
                                || event.is_error(),
                            read_closed: event.is_read_closed() || event.is_error(),
                        };
                        self.engine.host_event(token, ready);
                    }
                    _ => {}
                }
            }
            let now = self.now();
            self.engine.poll(now, &mut TapSink(&self.tap));
        }
    }

    /// Read frames until WouldBlock. Returns true when the tap is gone.
    fn drain_tap(&mut self) -> bool {
        loop {
            match (&self.tap).read(&mut self.rx) {
                Ok(0) => return false,
                Ok(n) => {
                    let now = self.now();
                    self.engine
                        .process_frame(now, &self.rx[..n], &mut TapSink(&self.tap));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // EBADFD: the interface was deleted (or its namespace
                // destroyed) under us.
                Err(e) if e.raw_os_error() == Some(libc::EBADFD) => {
                    log::warn!("the tap device is gone ({e}); exiting");
                    return true;
                }
                Err(e) => {
                    log::warn!("tap read failed: {e}");
                    return false;
                }
            }
        }
    }
}
