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

use std::io;
use std::time::{Duration, Instant};

use mio::{Events, Poll};

/// The window after the first short wait; it doubles from here.
const START: Duration = Duration::from_micros(4);

pub struct BusyPoll {
    window: Duration,
    max: Duration,
}

impl BusyPoll {
    /// `max` zero turns busy polling off.
    pub fn new(max: Duration) -> Self {
        BusyPoll {
            window: Duration::ZERO,
            max,
        }
    }

    /// `Poll::poll`, spinning first for up to the current window (never
    /// past `timeout`).
    pub fn poll(
        &mut self,
        poll: &mut Poll,
        events: &mut Events,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        if self.max.is_zero() || timeout == Some(Duration::ZERO) {
            return poll.poll(events, timeout);
        }
        let start = Instant::now();
        let spin = timeout.map_or(self.window, |t| t.min(self.window));
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
    fn an_idle_loop_never_spins() {
        let mut poll = Poll::new().unwrap();
        let mut events = Events::with_capacity(4);
        let mut b = BusyPoll::new(MAX);
        for _ in 0..3 {
            b.poll(&mut poll, &mut events, Some(Duration::from_millis(2)))
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
        b.poll(&mut poll, &mut events, Some(Duration::from_micros(10)))
            .unwrap();
        assert_eq!(b.window, Duration::ZERO);
    }
}
