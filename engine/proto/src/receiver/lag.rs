//! One-way delays against the server's clock: how much later than the quickest of its packets
//! one arrives. The server stamps every packet with its send time ([`crate::micros`] since its
//! epoch); the receiver compares that with its own clock at handling. The two clocks are not
//! synchronised, so only differences between packets mean anything: the least offset seen is
//! the path with nothing queued, and a packet's offset beyond it is the time it spent queued
//! (in this receiver's socket, for the most part: the receiver handles a packet when its
//! thread takes it out).

use std::time::{Duration, Instant};

/// The local instant and server timestamp of the first packet measured: the base every
/// offset is taken against.
#[derive(Clone, Copy, Debug)]
pub(super) struct ClockBase {
    local: Instant,
    server: u32,
}

impl ClockBase {
    /// The time offset (local handling - server send) of a packet, microseconds, against the
    /// first packet's (that packet is the base if there is none yet).
    pub(super) fn offset(base: &mut Option<ClockBase>, now: Instant, timestamp: u32) -> i64 {
        let base = *base.get_or_insert(ClockBase {
            local: now,
            server: timestamp,
        });
        let local = now.saturating_duration_since(base.local).as_micros() as i64;
        let remote = i64::from(timestamp.wrapping_sub(base.server) as i32);
        local - remote
    }
}

/// How long the server's packets wait in this receiver's socket before it handles them: a
/// repair asked for now comes behind all of that. Measured on every packet straight from the
/// server: its offset beyond the least offset of the last [`QueueLag::WINDOW`] or two (a
/// least kept for ever would take the clocks' drift, tens of microseconds per second, for
/// queueing; one of a window or two still sees a queue that stands for less than that).
#[derive(Clone, Debug, Default)]
pub(super) struct QueueLag {
    base: Option<ClockBase>,
    /// The least offset in the window before this one, and in this one, and when this one
    /// began.
    least_before: Option<i64>,
    least: Option<i64>,
    window_start: Option<Instant>,
    lag: Duration,
}

impl QueueLag {
    const WINDOW: Duration = Duration::from_secs(10);

    /// A packet from the server, sent at `timestamp`, is handled now.
    pub(super) fn sample(&mut self, now: Instant, timestamp: u32) {
        let o = ClockBase::offset(&mut self.base, now, timestamp);
        let start = *self.window_start.get_or_insert(now);
        if now.saturating_duration_since(start) >= Self::WINDOW {
            self.least_before = self.least;
            self.least = None;
            self.window_start = Some(now);
        }
        let least_now = self.least.map_or(o, |l| l.min(o));
        self.least = Some(least_now);
        let least = self.least_before.map_or(least_now, |b| b.min(least_now));
        self.lag = Duration::from_micros((o - least).clamp(0, 10_000_000) as u64);
    }

    /// The latest packet's time in the queue.
    pub(super) fn lag(&self) -> Duration {
        self.lag
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_handled_later_than_the_quickest_reads_as_queued_that_long() {
        let t0 = Instant::now();
        let mut q = QueueLag::default();
        // Sent at 1,000 us, handled at t0; sent at 2,000 us, handled 1 ms later: no queue.
        q.sample(t0, 1_000);
        q.sample(t0 + Duration::from_millis(1), 2_000);
        assert_eq!(q.lag(), Duration::ZERO);
        // Sent at 3,000 us, handled 32 ms after the first: 30 ms in the queue.
        q.sample(t0 + Duration::from_millis(32), 3_000);
        assert_eq!(q.lag(), Duration::from_millis(30));
        // The server's clock wraps: the offset still reads.
        let mut w = QueueLag::default();
        w.sample(t0, u32::MAX - 499);
        w.sample(t0 + Duration::from_millis(6), 4_500);
        assert_eq!(w.lag(), Duration::from_millis(1));
    }

    #[test]
    fn the_least_offset_is_forgotten_after_two_windows() {
        let t0 = Instant::now();
        let mut q = QueueLag::default();
        q.sample(t0, 0);
        // A queue of 5 ms that stands: read as queued through this window and the next ...
        let w = QueueLag::WINDOW;
        let stamp = |d: Duration| d.as_micros() as u32;
        let at = |d: Duration| (t0 + d + Duration::from_millis(5), stamp(d));
        for d in [w / 2, w + w / 2] {
            let (t, s) = at(d);
            q.sample(t, s);
            assert_eq!(q.lag(), Duration::from_millis(5));
        }
        // ... and taken for the path's delay from the third on (drift is not a queue).
        let (t, s) = at(w * 2 + w / 2);
        q.sample(t, s);
        assert_eq!(q.lag(), Duration::ZERO);
    }
}
