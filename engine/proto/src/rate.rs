//! `--rate auto`: the sender's rate follows congestion at the receivers (docs/DESIGN.md,
//! "`--rate auto`").
//!
//! Each receipt notice carries the share of datagrams the receiver's own socket dropped for
//! lack of buffer space (`overflow_ppm`, from `SO_RXQ_OVFL`) and how full that buffer got
//! (`queue_ppm`, from `SO_MEMINFO`). Every [`RateControl::STEP`]:
//! - Overflow, or a buffer found more than half full: the sender is too fast for that
//!   receiver. Back off (hard under real overflow, gently otherwise), then hold for
//!   [`RateControl::SETTLE`]: notices lag the sends by up to a notice interval, and backing
//!   off again on the same stale news would take the rate far below what the receivers take.
//! - A little overflow, or a buffer more than a quarter full: no faster.
//! - Neither: faster, by a quarter per step until the first sign of a queue (slow start, as
//!   TCP's), by 12 % per step after, never more than twice what actually went out in the
//!   last step (a rate the sender cannot reach says nothing, and would take many steps to
//!   come down). The receivers' delivery rate is not a cap here: under loss, blocks are
//!   verified late (after their repairs), so it understates what they take.
//!
//! Loss on the way (a lossy link) does not slow the sender down unless it is heavy (over
//! [`HEAVY_LOSS_PPM`]): slowing down does not make a lossy link lose less, and the repairs
//! cover it.

use std::time::{Duration, Instant};

/// Loss (not overflow) a receiver may report before it is taken for congestion on the way:
/// a link that collapses under the rate. Steady loss below it is left to the repairs.
pub const HEAVY_LOSS_PPM: u32 = 200_000;
/// A receiver whose socket buffer was found more than half full is falling behind.
pub const QUEUE_HIGH_PPM: u32 = 500_000;
/// More than a quarter: no faster.
pub const QUEUE_RISING_PPM: u32 = 250_000;

/// Bounds of the automatic rate, datagram bytes per second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// Where it starts: about what one receiver takes on a host's loopback (the queue reports
    /// bring it down within a step or two where receivers take less).
    pub start: u64,
    pub min: u64,
    pub max: u64,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            start: 1_000_000_000,
            min: 10_000_000,
            max: 8_000_000_000,
        }
    }
}

/// What the receivers reported, as the sender sums it up for one step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Congestion {
    /// The worst socket overflow share among the members' latest notices (ppm).
    pub overflow_ppm: u32,
    /// The fullest receive buffer among the members' latest notices (ppm of the buffer).
    pub queue_ppm: u32,
    /// The worst loss among the members' latest notices (ppm).
    pub loss_ppm: u32,
    /// The slowest incomplete member's delivery rate (bytes per second), if measured.
    pub slowest_delivery: Option<u64>,
}

/// The automatic rate's state.
#[derive(Clone, Debug)]
pub struct RateControl {
    limits: RateLimits,
    rate: u64,
    slow_start: bool,
    hold_until: Option<Instant>,
}

impl RateControl {
    /// How often the rate is stepped.
    pub const STEP: Duration = Duration::from_millis(100);
    /// How long the rate holds after a backoff.
    pub const SETTLE: Duration = Duration::from_millis(300);

    pub fn new(limits: RateLimits) -> Self {
        RateControl {
            rate: limits.start.clamp(limits.min, limits.max),
            limits,
            slow_start: true,
            hold_until: None,
        }
    }

    /// The rate now, datagram bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// One step: `achieved` is what went out since the last, bytes per second. Returns the
    /// new rate.
    pub fn step(&mut self, now: Instant, c: Congestion, achieved: u64) -> u64 {
        let congestion = c.overflow_ppm.max(if c.loss_ppm > HEAVY_LOSS_PPM {
            c.loss_ppm
        } else {
            0
        });
        let rate = self.rate;
        let settled = self.hold_until.is_none_or(|t| now >= t);
        self.rate = if congestion > 1_000 || c.queue_ppm > QUEUE_HIGH_PPM {
            self.slow_start = false;
            if settled {
                self.hold_until = Some(now + Self::SETTLE);
                let backed_off = if congestion > 10_000 {
                    rate * 7 / 10
                } else {
                    rate * 9 / 10
                };
                // Straight down to what the slowest receiver verified lately, if that is
                // lower (but no lower than half): one step instead of many.
                match c.slowest_delivery {
                    Some(d) => backed_off.min(d.max(rate / 2)),
                    None => backed_off,
                }
            } else {
                rate
            }
        } else if congestion > 100 || c.queue_ppm > QUEUE_RISING_PPM {
            self.slow_start = false;
            rate
        } else {
            // Not far past what went out.
            let up = if self.slow_start { rate / 4 } else { rate / 8 };
            (rate + up).min(achieved.saturating_mul(2).max(self.limits.start))
        }
        .clamp(self.limits.min, self.limits.max);
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rises_in_slow_start_backs_off_on_overflow_then_holds_for_the_settle_time() {
        let t0 = Instant::now();
        let mut rc = RateControl::new(RateLimits {
            start: 100,
            min: 10,
            max: 1_000,
        });
        assert_eq!(rc.step(t0, Congestion::default(), 1_000), 125);
        let hot = Congestion {
            overflow_ppm: 20_000,
            ..Congestion::default()
        };
        let down = rc.step(t0 + RateControl::STEP, hot, 125);
        assert_eq!(down, 125 * 7 / 10);
        // Stale news within the settle time does not take it down again.
        assert_eq!(rc.step(t0 + RateControl::STEP * 2, hot, 100), down);
        // After it, quietly: +12 % (slow start is over), capped by twice what went out.
        let up = rc.step(t0 + RateControl::SETTLE * 2, Congestion::default(), 1_000);
        assert_eq!(up, down + down / 8);
        assert_eq!(
            rc.step(t0 + RateControl::SETTLE * 3, Congestion::default(), 0),
            100,
            "no higher than the start when nothing went out"
        );
    }

    #[test]
    fn light_loss_on_the_way_does_not_slow_it_but_a_collapsing_link_does() {
        let t0 = Instant::now();
        let mut rc = RateControl::new(RateLimits {
            start: 1_000,
            min: 10,
            max: 10_000,
        });
        let lossy = Congestion {
            loss_ppm: 50_000,
            ..Congestion::default()
        };
        assert!(rc.step(t0, lossy, 1_000) > 1_000);
        let collapsing = Congestion {
            loss_ppm: 300_000,
            ..Congestion::default()
        };
        assert!(rc.step(t0 + RateControl::STEP, collapsing, 1_000) < 1_000);
    }
}
