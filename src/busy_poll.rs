//! Adaptive busy polling: keep polling for a few tens of microseconds
//! before going to sleep, while traffic is dense.
//!
//! Most of a request/response round trip through netferry is spent
//! waking sleepers up: the guest's write wakes netferry, netferry's write
//! wakes the host's server, and back. Measured here (sockperf ping-pong,
//! 2 vCPUs), netferry's own code is ~5 % of its time and the round trip
//! drops from ~45 to ~25 µs when netferry does not sleep between the
//! request and the response. So, like the kernel's `busy_poll` and KVM's
//! halt polling, netferry polls without sleeping for up to a window
//! before it blocks, and adapts the window to what it sees: a wait that
//! ended soon grows it (up to `--busy-poll`), a long one shrinks it to
//! nothing. An idle netferry, or one woken every millisecond, never
//! spins; a busy one spends at most the window per wake-up.
//!
//! While wake-ups move a bulk of data (`BULK` or more on average over
//! the last several) or many packets (`STREAM`), netferry does not spin:
//! in a bulk transfer or a stream the next frame comes anyway, and a
//! spinning netferry holds a CPU that the traffic's own ends need
//! (measured on 2 vCPUs: guest->host iperf3 about 5 % slower, at 0.54
//! instead of 0.35 CPU s/GB, with spinning after every wake-up;
//! 0.33-0.39 with the byte rule, as without busy polling). A stream of
//! small datagrams also suffers from being caught one at a time: each
//! then costs a receive and a tap write of its own (host->guest iperf3
//! with 64-byte datagrams: 186-195k datagrams/s spinning, 233-259k not).
//!
//! A stream of datagrams gets the opposite: while datagrams move at
//! `STREAM_RATE` or more (counted every millisecond) and other packets
//! are few beside them, netferry pauses for `COALESCE` before each poll,
//! as a NIC moderates its interrupts, so that a wake-up finds a batch
//! instead of a datagram or two. UDP has no ACK clock for the pause to
//! stall. On a loaded host the stream's ends bound it, and the pause
//! leaves them the CPU: with an unpaced sender on 2 vCPUs, over a third
//! of what netferry passed on at once was then dropped at the
//! receiver's full socket, after netferry had spent on it CPU that the
//! receiver lacked (host->guest iperf3, 64-byte datagrams: 171-215k
//! datagrams/s received without the pause, 291-308k with it). The price
//! is latency while the stream lasts: up to a pause, which timer slack
//! stretches (about 110 µs in all on the 2-vCPU VM measured). Below the
//! rate nothing changes. A TCP transfer is never paused: its ACKs clock
//! the sender, and pausing them cost 10-15 % guest->host.

use std::io;
use std::time::{Duration, Instant};

use mio::{Events, Poll};

/// The window after the first short wait; it doubles from here.
const START: Duration = Duration::from_micros(4);

/// Payload bytes moved per wake-up, on average, from which traffic
/// counts as bulk.
const BULK: u64 = 4 * 1024;

/// Packets moved per wake-up, on average, from which traffic counts as a
/// stream. A request and its response take one or two each.
const STREAM: u64 = 4;

/// How long netferry pauses before polling while datagrams stream. The
/// kernel's timer slack (50 µs by default) may stretch it; measured
/// here, anything from 10 to 200 µs gives the same rates.
const COALESCE: Duration = Duration::from_micros(20);

/// Datagrams a second from which they stream: `STREAM` in each
/// `COALESCE`, so that a pause gathers a batch.
const STREAM_RATE: u64 = STREAM * 1_000_000 / COALESCE.as_micros() as u64;

/// How often the datagram rate is counted.
const RATE_PERIOD: Duration = Duration::from_millis(1);

/// What a wake-up moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    /// Payload bytes, both ways.
    pub bytes: u64,
    /// Frames from the guest and datagrams from the host.
    pub packets: u64,
    /// Datagrams (UDP and ping), both ways.
    pub datagrams: u64,
}

impl Moved {
    /// What moved since `before`, both counting from the start.
    pub fn since(self, before: Moved) -> Moved {
        Moved {
            bytes: self.bytes - before.bytes,
            packets: self.packets - before.packets,
            datagrams: self.datagrams - before.datagrams,
        }
    }
}

pub struct BusyPoll {
    window: Duration,
    max: Duration,
    /// Payload bytes moved per wake-up, a moving average (each new
    /// wake-up weighs an eighth).
    bytes: u64,
    /// Packets moved per wake-up, a moving average likewise, in 16ths of
    /// a packet so that a few per wake-up register.
    packets: u64,
    /// Datagrams and other packets moved since `since`, to tell
    /// whether datagrams stream.
    meter: Meter,
    /// Whether datagrams streamed at the last count: pause before
    /// polling.
    pause: bool,
}

struct Meter {
    since: Instant,
    datagrams: u64,
    others: u64,
}

impl BusyPoll {
    /// `max` zero turns busy polling off.
    pub fn new(max: Duration) -> Self {
        BusyPoll {
            window: Duration::ZERO,
            max,
            bytes: 0,
            packets: 0,
            meter: Meter {
                since: Instant::now(),
                datagrams: 0,
                others: 0,
            },
            pause: false,
        }
    }

    /// `Poll::poll`, spinning first for up to the current window (never
    /// past `timeout`) unless traffic is bulk or a stream, or pausing
    /// first while datagrams stream; `moved` is what the wake-up before
    /// moved.
    pub fn poll(
        &mut self,
        poll: &mut Poll,
        events: &mut Events,
        timeout: Option<Duration>,
        moved: Moved,
    ) -> io::Result<()> {
        let window = self.window_after(moved);
        self.count(moved);
        if self.pause && timeout != Some(Duration::ZERO) {
            let pause = timeout.map_or(COALESCE, |t| t.min(COALESCE));
            std::thread::sleep(pause);
            return poll.poll(events, timeout.map(|t| t - pause));
        }
        if self.max.is_zero() || timeout == Some(Duration::ZERO) {
            return poll.poll(events, timeout);
        }
        let start = Instant::now();
        let spin = timeout.map_or(window, |t| t.min(window));
        while start.elapsed() < spin {
            poll.poll(events, Some(Duration::ZERO))?;
            if !events.is_empty() {
                return Ok(());
            }
            std::hint::spin_loop();
        }
        poll.poll(events, timeout.map(|t| t.saturating_sub(start.elapsed())))?;
        self.waited(start.elapsed());
        Ok(())
    }

    /// The window to spin for now, after a wake-up that moved `moved`:
    /// none while traffic is bulk or a stream.
    fn window_after(&mut self, moved: Moved) -> Duration {
        self.bytes = self.bytes - self.bytes / 8 + moved.bytes / 8;
        self.packets = self.packets - self.packets / 8 + moved.packets * 16 / 8;
        if self.bytes >= BULK || self.packets >= STREAM * 16 {
            Duration::ZERO
        } else {
            self.window
        }
    }

    /// Count what a wake-up moved; every `RATE_PERIOD`, decide whether
    /// datagrams stream: `STREAM_RATE` a second or more, with other
    /// packets fewer than an eighth of them.
    fn count(&mut self, moved: Moved) {
        let m = &mut self.meter;
        m.datagrams += moved.datagrams;
        m.others += moved.packets.saturating_sub(moved.datagrams);
        let now = Instant::now();
        let elapsed = now - m.since;
        if elapsed < RATE_PERIOD {
            return;
        }
        let rate = m.datagrams * 1_000_000 / elapsed.as_micros() as u64;
        self.pause = rate >= STREAM_RATE && m.others * 8 < m.datagrams;
        *m = Meter {
            since: now,
            datagrams: 0,
            others: 0,
        };
    }

    /// Adapt the window to a wait that the spin did not cover. A wait
    /// up to twice the largest window still counts as short: a sleeper's
    /// wake-up alone adds ~10-20 µs, so what took 60 µs asleep comes
    /// within the window when netferry stays awake.
    fn waited(&mut self, waited: Duration) {
        if waited <= 2 * self.max {
            self.window = (self.window * 2).clamp(START, self.max);
        } else {
            self.window /= 2;
            if self.window < START {
                self.window = Duration::ZERO;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(50);

    #[test]
    fn short_waits_grow_the_window_to_the_most() {
        let mut b = BusyPoll::new(MAX);
        assert_eq!(b.window, Duration::ZERO);
        let mut windows = Vec::new();
        for _ in 0..6 {
            b.waited(Duration::from_micros(30));
            windows.push(b.window.as_micros());
        }
        assert_eq!(windows, [4, 8, 16, 32, 50, 50]);
    }

    #[test]
    fn long_waits_shrink_it_to_nothing() {
        let mut b = BusyPoll::new(MAX);
        b.window = MAX;
        let mut windows = Vec::new();
        for _ in 0..5 {
            b.waited(Duration::from_millis(1));
            windows.push(b.window.as_micros());
        }
        assert_eq!(windows, [25, 12, 6, 0, 0]);
    }

    fn moved(bytes: u64, packets: u64) -> Moved {
        Moved {
            bytes,
            packets,
            datagrams: 0,
        }
    }

    /// Count a millisecond's worth of traffic at once.
    fn count_a_period(b: &mut BusyPoll, datagrams: u64, others: u64) {
        b.meter.since = Instant::now() - RATE_PERIOD;
        b.count(Moved {
            bytes: datagrams * 64,
            packets: datagrams + others,
            datagrams,
        });
    }

    #[test]
    fn a_stream_of_datagrams_pauses_and_slower_or_mixed_traffic_does_not() {
        let mut b = BusyPoll::new(MAX);
        // 300 datagrams in a millisecond: 300,000 a second.
        count_a_period(&mut b, 300, 0);
        assert!(b.pause);
        // 100,000 a second: not a stream.
        count_a_period(&mut b, 100, 0);
        assert!(!b.pause);
        // A stream beside a TCP transfer's segments: no pause.
        count_a_period(&mut b, 300, 0);
        count_a_period(&mut b, 300, 100);
        assert!(!b.pause);
        // A few other packets beside the stream do not end it.
        count_a_period(&mut b, 300, 10);
        assert!(b.pause);
        // Within the millisecond nothing is decided yet.
        b.count(moved(0, 0));
        assert!(b.pause);
    }

    #[test]
    fn a_paused_poll_waits_even_with_an_event_ready() {
        let mut poll = Poll::new().unwrap();
        let mut events = Events::with_capacity(4);
        let waker = mio::Waker::new(poll.registry(), mio::Token(7)).unwrap();
        let mut b = BusyPoll::new(MAX);
        count_a_period(&mut b, 300, 0);
        waker.wake().unwrap();
        let start = Instant::now();
        b.poll(
            &mut poll,
            &mut events,
            Some(Duration::from_secs(1)),
            Moved::default(),
        )
        .unwrap();
        assert!(start.elapsed() >= COALESCE);
        assert_eq!(
            events.iter().count(),
            1,
            "the event is there after the pause"
        );
    }

    #[test]
    fn bulk_traffic_does_not_spin_and_small_traffic_spins_again() {
        let mut b = BusyPoll::new(MAX);
        b.window = MAX;
        assert_eq!(b.window_after(moved(100, 1)), MAX);
        let bulk: Vec<Duration> = (0..6)
            .map(|_| b.window_after(moved(64 * 1024, 1)))
            .collect();
        assert_eq!(bulk[..2], [Duration::ZERO; 2], "one 64 KiB wake-up is bulk");
        assert!(bulk.iter().all(|w| w.is_zero()));
        // Small ones bring the average down again within a few dozen.
        let small: Vec<Duration> = (0..40).map(|_| b.window_after(moved(100, 1))).collect();
        assert_eq!(small[..5], [Duration::ZERO; 5]);
        assert_eq!(small[39], MAX);
    }

    #[test]
    fn a_stream_of_small_packets_does_not_spin_and_requests_do() {
        let mut b = BusyPoll::new(MAX);
        b.window = MAX;
        // A request, a response and an ACK: spin.
        let requests: Vec<Duration> = (0..40)
            .map(|i| b.window_after(moved(64, 1 + i % 2)))
            .collect();
        assert!(requests.iter().all(|w| *w == MAX));
        // Eight 64-byte datagrams a wake-up: a stream, within a few.
        let stream: Vec<Duration> = (0..40).map(|_| b.window_after(moved(512, 8))).collect();
        assert_eq!(stream[0], MAX);
        assert!(stream[5..].iter().all(|w| w.is_zero()));
        // Back to one packet a wake-up: spinning again within a few dozen.
        let back: Vec<Duration> = (0..40).map(|_| b.window_after(moved(64, 1))).collect();
        assert_eq!(back[39], MAX);
    }

    #[test]
    fn an_idle_loop_never_spins() {
        let mut poll = Poll::new().unwrap();
        let mut events = Events::with_capacity(4);
        let mut b = BusyPoll::new(MAX);
        for _ in 0..3 {
            b.poll(
                &mut poll,
                &mut events,
                Some(Duration::from_millis(2)),
                Moved::default(),
            )
            .unwrap();
            assert!(events.is_empty());
        }
        assert_eq!(b.window, Duration::ZERO);
    }

    #[test]
    fn off_stays_off() {
        let mut b = BusyPoll::new(Duration::ZERO);
        let mut poll = Poll::new().unwrap();
        let mut events = Events::with_capacity(4);
        b.poll(
            &mut poll,
            &mut events,
            Some(Duration::from_micros(10)),
            Moved::default(),
        )
        .unwrap();
        assert_eq!(b.window, Duration::ZERO);
    }
}
