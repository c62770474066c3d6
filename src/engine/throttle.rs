//! Log lines a guest can cause, held to one per interval.
//!
//! A guest that exhausts the DHCP pool, or trips a defect on every
//! frame, must not fill the host's log (and its disk) at frame rate.
//! Each such warning has its own [`Throttle`]: the first line goes out,
//! later ones within [`INTERVAL`] are counted, and the count rides along
//! with the next line that goes out.

use smoltcp::time::{Duration, Instant};

/// At most one line of each kind this often.
pub const INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct Throttle {
    /// When the next line may go out; `None` before the first.
    next: Option<Instant>,
    /// Lines held back since the last one that went out.
    held: u64,
}

impl Throttle {
    /// Whether a line may go out now: `Some` with the number held back
    /// since the last one, or `None` (and the line counted) when not.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.next.is_some_and(|next| now < next) {
            self.held += 1;
            return None;
        }
        self.next = Some(now + INTERVAL);
        Some(std::mem::take(&mut self.held))
    }
}

/// " (N more like it since the last)" for a line that held others back.
pub fn held_note(held: u64) -> String {
    if held == 0 {
        String::new()
    } else {
        format!(" ({held} more like it since the last)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_the_rest_are_counted() {
        let mut t = Throttle::default();
        let t0 = Instant::from_secs(100);
        assert_eq!(t.allow(t0), Some(0));
        for ms in 1..1000 {
            assert_eq!(t.allow(t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(t.allow(t0 + INTERVAL), Some(999));
        assert_eq!(t.allow(t0 + INTERVAL), None);
        assert_eq!(held_note(0), "");
        assert_eq!(held_note(3), " (3 more like it since the last)");
    }
}
