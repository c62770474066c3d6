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
//! the last several), netferry does not spin:
//! in a bulk transfer the next frame comes anyway, and a spinning
//! netferry holds a CPU that the transfer's own ends need (measured on 2
//! vCPUs: guest->host iperf3 about 5 % slower, at 0.54 instead of 0.35
//! CPU s/GB, with spinning after every wake-up; 0.33-0.39 with this
//! rule, as without busy polling).

use std::io;
use std::time::{Duration, Instant};

use mio::{Events, Poll};

/// The window after the first short wait; it doubles from here.
const START: Duration = Duration::from_micros(4);

/// Payload bytes moved per wake-up, on average, from which traffic
/// counts as bulk.
const BULK: u64 = 4 * 1024;

pub struct BusyPoll {
    window: Duration,
    max: Duration,
    /// Payload bytes moved per wake-up, a moving average (each new
    /// wake-up weighs an eighth).
    moved: u64,
}

impl BusyPoll {
    /// `max` zero turns busy polling off.
    pub fn new(max: Duration) -> Self {
        BusyPoll {
            window: Duration::ZERO,
            max,
            moved: 0,
        }
    }

    /// `Poll::poll`, spinning first for up to the current window (never
    /// past `timeout`) unless traffic is bulk; `moved` is the payload
    /// bytes the wake-up before moved.
    pub fn poll(
        &mut self,
        poll: &mut Poll,
        events: &mut Events,
        timeout: Option<Duration>,
        moved: u64,
    ) -> io::Result<()> {
        let window = self.window_after(moved);
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

    /// The window to spin for now, after a wake-up that moved `moved`
    /// payload bytes: none while traffic is bulk.
    fn window_after(&mut self, moved: u64) -> Duration {
        self.moved = self.moved - self.moved / 8 + moved / 8;
        if self.moved >= BULK {
            Duration::ZERO
        } else {
            self.window
        }
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

    #[test]
    fn bulk_traffic_does_not_spin_and_small_traffic_spins_again() {
        let mut b = BusyPoll::new(MAX);
        b.window = MAX;
        assert_eq!(b.window_after(100), MAX);
        let bulk: Vec<Duration> = (0..6).map(|_| b.window_after(64 * 1024)).collect();
        assert_eq!(bulk[..2], [Duration::ZERO; 2], "one 64 KiB wake-up is bulk");
        assert!(bulk.iter().all(|w| w.is_zero()));
        // Small ones bring the average down again within a few dozen.
        let small: Vec<Duration> = (0..40).map(|_| b.window_after(100)).collect();
        assert_eq!(small[..5], [Duration::ZERO; 5]);
        assert_eq!(small[39], MAX);
    }

    #[test]
    fn an_idle_loop_never_spins() {
        let mut poll = Poll::new().unwrap();
        let mut events = Events::with_capacity(4);
        let mut b = BusyPoll::new(MAX);
        for _ in 0..3 {
            b.poll(&mut poll, &mut events, Some(Duration::from_millis(2)), 0)
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
        b.poll(&mut poll, &mut events, Some(Duration::from_micros(10)), 0)
            .unwrap();
        assert_eq!(b.window, Duration::ZERO);
    }
}
