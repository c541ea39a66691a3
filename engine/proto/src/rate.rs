//! `--rate auto`: the sender's rate follows congestion at the receivers (docs/DESIGN.md,
//! "`--rate auto`").
//!
//! Each receipt notice carries the share of datagrams the receiver's own socket dropped for
//! lack of buffer space (`overflow_ppm`, from `SO_RXQ_OVFL`) and how full that buffer got
//! (`queue_ppm`, from `SO_MEMINFO`). Every [`RateControl::STEP`] (and at once when a notice
//! calls for a cut, [`RateControl::wants_cut`]), [`RateControl::step`] cuts on fresh news of
//! overflow to what the receivers took, cuts on a fresh buffer over a quarter full that is
//! still filling (past slow start only a standing one: seen at two notices in a row, or over
//! three quarters full), holds on any sign of a queue, and otherwise rises. A notice is fresh when it covers only what was
//! sent after the last cut: a receiver with a full buffer reports, a buffer's worth of time
//! later, what the rate before the cut did, and cutting again on that news took the rate far
//! below what the receivers take (docs/DESIGN.md, the collapse entry).
//!
//! Loss on the way (a lossy link) does not slow the sender down unless it is heavy (over
//! [`HEAVY_LOSS_PPM`]): slowing down does not make a lossy link lose less, and the repairs
//! cover it.

use std::time::{Duration, Instant};

/// Loss (not overflow) a receiver may report before it is taken for congestion on the way:
/// a link that collapses under the rate. Steady loss below it is left to the repairs.
pub const HEAVY_LOSS_PPM: u32 = 200_000;
/// A receiver whose socket buffer was found more than a quarter full (and no emptier than at
/// its previous notice) is falling behind. A node asks for 32 MiB: a quarter of it is a
/// quarter of a second of queueing at 100 MB/s, and every NACK timer scales with the round
/// trip that queue adds.
pub const QUEUE_HIGH_PPM: u32 = 250_000;
/// More than a tenth: no faster.
pub const QUEUE_RISING_PPM: u32 = 100_000;
/// More than three quarters full: a queue that cuts at once, standing or not (a notice or
/// two from overflowing). Below it a queue seen once, after a notice that found the buffer
/// near empty, is a stall's excursion ([`Congestion::fresh_standing_queue_ppm`]): at half, a
/// 45 ms stall at 400 MB/s still cut (the simulator, docs/DESIGN.md "short stalls").
pub const QUEUE_FULL_PPM: u32 = 750_000;

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

/// What the receivers reported, as the sender sums it up for one step. "Latest" is every
/// incomplete member's latest notice; "fresh" only the notices that cover nothing sent before
/// the rate's last cut ([`RateControl::cut_at`]): a notice echoes the send time of the last
/// datagram the receiver had taken when it wrote (and its previous notice where its window
/// began), so the sender can tell what the old rate did from what the new one does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Congestion {
    /// The worst socket overflow share among the members' latest notices (ppm).
    pub overflow_ppm: u32,
    /// The fullest receive buffer among the members' latest notices (ppm of the buffer).
    pub queue_ppm: u32,
    /// The worst loss among the members' latest notices (ppm).
    pub loss_ppm: u32,
    /// The same three among the fresh notices (0 where there is none).
    pub fresh_overflow_ppm: u32,
    pub fresh_queue_ppm: u32,
    pub fresh_loss_ppm: u32,
    /// The fullest receive buffer among the latest notices that found it no emptier than the
    /// member's notice before (a buffer draining holds nothing back). One a receive thread
    /// found on coming back to its core holds the rate but is not fresh news that cuts
    /// (`fresh_queue_ppm`) until its next notice says the buffer still fills.
    pub filling_queue_ppm: u32,
    /// The same as `fresh_queue_ppm`, among the members whose notice before found their
    /// buffer more than a tenth full too (or whose buffer is more than three quarters full,
    /// [`QUEUE_FULL_PPM`]): a standing queue. One notice's queue after one before that found
    /// the buffer near empty is an excursion (the receive thread was off its core a while,
    /// shorter than a pause the notices' pace shows) and cuts only in slow start; the next
    /// notice says whether it drains.
    pub fresh_standing_queue_ppm: u32,
    /// The slowest incomplete member's delivery rate (bytes per second), if measured (for
    /// logs: blocks are verified in lumps, after their repairs, so it is no rate to follow).
    pub slowest_delivery: Option<u64>,
    /// The least that a member that is behind (overflow, or a buffer over a quarter full)
    /// took between its last two notices, datagram bytes per second: what reached its socket
    /// of the sends between the send times its notices echo, over the time between them.
    /// What it can take, since it could not keep up.
    pub slowest_take: Option<u64>,
}

/// Overflow or loss, whichever says congestion (loss only when it is heavy).
fn congestion_ppm(overflow_ppm: u32, loss_ppm: u32) -> u32 {
    overflow_ppm.max(if loss_ppm > HEAVY_LOSS_PPM {
        loss_ppm
    } else {
        0
    })
}

/// The automatic rate's state.
#[derive(Clone, Debug)]
pub struct RateControl {
    limits: RateLimits,
    rate: u64,
    slow_start: bool,
    /// When the rate was last cut: notices that cover sends from before then are stale.
    cut_at: Option<Instant>,
    /// When a member last reported socket overflow.
    overflow_at: Option<Instant>,
    /// The last measured take of a member that was behind ([`Congestion::slowest_take`]).
    known_take: Option<u64>,
}

impl RateControl {
    /// How often the rate is stepped.
    pub const STEP: Duration = Duration::from_millis(100);
    /// Heavy loss counts as congestion only this long after the last overflow report: loss is
    /// counted once a block's NACK backoff is over, so the units a receiver's own socket
    /// dropped come back as "loss" for a while after the overflow (and cut the rate again,
    /// on old news, to its floor).
    const LOSS_QUIET: Duration = Duration::from_secs(2);
    /// The deepest one cut goes without a measured take, as a share of the rate: a report
    /// is a sample, and the next fresh one is a round trip away.
    const FLOOR_SHARE: u64 = 4;

    pub fn new(limits: RateLimits) -> Self {
        RateControl {
            rate: limits.start.clamp(limits.min, limits.max),
            limits,
            slow_start: true,
            cut_at: None,
            overflow_at: None,
            known_take: None,
        }
    }

    /// The rate now, datagram bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// When the rate was last cut (`None`: never): only notices covering what was sent since
    /// then may cut it again.
    pub fn cut_at(&self) -> Option<Instant> {
        self.cut_at
    }

    /// Heavy loss, unless it may be the aftermath of overflow.
    fn heavy_loss(&self, now: Instant, loss_ppm: u32) -> u32 {
        let quiet = self
            .overflow_at
            .is_none_or(|t| now.saturating_duration_since(t) >= Self::LOSS_QUIET);
        if quiet {
            loss_ppm
        } else {
            0
        }
    }

    /// Takes in what the members reported (call on every notice) and says whether the fresh
    /// notices call for a cut (the sender may step at once, not at the next tick).
    pub fn wants_cut(&mut self, now: Instant, c: &Congestion) -> bool {
        if c.overflow_ppm > 0 {
            self.overflow_at = Some(now);
        }
        if c.slowest_take.is_some() {
            self.known_take = c.slowest_take;
        }
        // Past slow start only a standing queue cuts: a receiver kept off its core for a
        // few tens of milliseconds comes back to a queue of the rate times that, which it
        // then drains; cutting on each such excursion ratcheted the rate down to where it
        // stayed under a quarter of the buffer (docs/DESIGN.md, "short stalls").
        let queue = if self.slow_start {
            c.fresh_queue_ppm
        } else {
            c.fresh_standing_queue_ppm
        };
        congestion_ppm(c.fresh_overflow_ppm, self.heavy_loss(now, c.fresh_loss_ppm)) > 1_000
            || queue > QUEUE_HIGH_PPM
    }

    /// One step: `achieved` is what went out since the last, bytes per second. Returns the
    /// new rate.
    ///
    /// - A fresh notice says its socket overflowed, or its buffer is more than a quarter full and
    ///   not draining (past slow start: a standing queue, [`Congestion::fresh_standing_queue_ppm`]):
    ///   go to seven eighths of what the slowest receiver that is behind
    ///   took ([`Congestion::slowest_take`]: its buffer must drain, and while it does, the
    ///   receiver is busy with what is queued), unless the rate is below that already. Not measured yet: to what went out less the share that overflowed,
    ///   or a tenth down, no deeper than a quarter.
    /// - Any latest notice (fresh or not) says a little overflow, or a buffer more than a
    ///   quarter full, or more than a tenth and not draining: no faster. (A receive thread
    ///   that another process kept off its core comes back to a queue it then drains; held
    ///   on every such queue, four receivers taking turns held the rate at the three quarters
    ///   of their take that the last cut left.)
    /// - Else faster: by a quarter per step until the first cut or hold (slow start), by an
    ///   eighth after, at once to three quarters of the last measured take if below it, never
    ///   past twice what went out (or the start rate).
    ///
    /// Heavy loss counts as congestion only when no socket overflowed in the last
    /// [`RateControl::LOSS_QUIET`]: the units an overflow dropped are reported as loss once
    /// their NACK backoff is over, long after the overflow.
    ///
    /// Stale notices (sent before their receiver saw anything of the new rate) never cut: cutting again on the same
    /// news would take the rate far below what the receivers take, and holding a rate for a
    /// fixed time regardless of fresh news lets a rate that is still too fast overflow them
    /// all that while.
    pub fn step(&mut self, now: Instant, c: Congestion, achieved: u64) -> u64 {
        let cut = self.wants_cut(now, &c);
        let fresh = congestion_ppm(c.fresh_overflow_ppm, self.heavy_loss(now, c.fresh_loss_ppm));
        let latest = congestion_ppm(c.overflow_ppm, self.heavy_loss(now, c.loss_ppm));
        let rate = self.rate;
        self.rate = if cut {
            self.slow_start = false;
            match c.slowest_take {
                // Seven eighths of what the slowest receiver that is behind took: its
                // buffer drains at an eighth of its pace while it stays busy with what is
                // queued (no time lost), and a rate below that already is held. At three
                // quarters the buffer emptied within a few steps and the receiver then
                // idled a quarter of the time until the rate had risen back (docs/DESIGN.md,
                // "a cut to seven eighths").
                Some(take) => rate.min(take * 7 / 8),
                None => {
                    let target = if fresh > 1_000 {
                        // What got into the sockets of what went out, less a tenth.
                        let sent = if achieved >= rate / 2 {
                            achieved.min(rate)
                        } else {
                            rate
                        };
                        let kept = u128::from(1_000_000 - fresh.min(1_000_000));
                        (sent as u128 * kept / 1_000_000) as u64 * 9 / 10
                    } else {
                        rate * 9 / 10
                    };
                    // A guess goes no deeper than a quarter.
                    target.min(rate * 9 / 10).max(rate / Self::FLOOR_SHARE)
                }
            }
        } else if latest > 100
            || c.filling_queue_ppm > QUEUE_RISING_PPM
            || c.queue_ppm > QUEUE_HIGH_PPM
        {
            self.slow_start = false;
            rate
        } else {
            // Not far past what went out; straight back to three quarters of what a receiver
            // that was behind was measured to take, if the rate is below that (after a cut
            // on news that turned out old, or a receiver that caught up).
            let up = if self.slow_start { rate / 4 } else { rate / 8 };
            let back = self.known_take.map_or(0, |t| t * 3 / 4);
            (rate + up)
                .max(back)
                .min(achieved.saturating_mul(2).max(self.limits.start))
        }
        .clamp(self.limits.min, self.limits.max);
        if self.rate < rate {
            self.cut_at = Some(now);
        }
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh_overflow(ppm: u32) -> Congestion {
        Congestion {
            overflow_ppm: ppm,
            fresh_overflow_ppm: ppm,
            ..Congestion::default()
        }
    }

    #[test]
    fn rises_in_slow_start_and_cuts_to_what_the_receivers_took() {
        let t0 = Instant::now();
        let mut rc = RateControl::new(RateLimits {
            start: 1_000,
            min: 10,
            max: 10_000,
        });
        assert_eq!(rc.step(t0, Congestion::default(), 1_000), 1_250);
        // A fifth of what went out overflowed: they took 1,000 of 1,250; nine tenths of it.
        let t1 = t0 + RateControl::STEP;
        assert_eq!(rc.step(t1, fresh_overflow(200_000), 1_250), 900);
        assert_eq!(rc.cut_at(), Some(t1));
        // The same news, now stale (no notice since the cut covers only newer sends): held,
        // not cut again.
        let stale = Congestion {
            overflow_ppm: 200_000,
            ..Congestion::default()
        };
        assert_eq!(rc.step(t1 + RateControl::STEP, stale, 900), 900);
        // Quiet: an eighth up (slow start is over), no more than twice what went out.
        assert_eq!(
            rc.step(t1 + RateControl::STEP * 2, Congestion::default(), 900),
            1_012
        );
        assert_eq!(
            rc.step(t1 + RateControl::STEP * 3, Congestion::default(), 0),
            1_000,
            "no higher than the start when nothing went out"
        );
    }

    #[test]
    fn a_cut_goes_no_deeper_than_a_quarter_and_a_full_queue_cuts_a_tenth() {
        let t0 = Instant::now();
        let mut rc = RateControl::new(RateLimits {
            start: 1_000,
            min: 10,
            max: 10_000,
        });
        assert_eq!(rc.step(t0, fresh_overflow(990_000), 1_000), 250);
        let full = Congestion {
            queue_ppm: 800_000,
            fresh_queue_ppm: 800_000,
            fresh_standing_queue_ppm: 800_000,
            ..Congestion::default()
        };
        assert_eq!(rc.step(t0 + RateControl::STEP, full, 250), 225);
        // A quarter full: held.
        let filling = Congestion {
            queue_ppm: 300_000,
            filling_queue_ppm: 300_000,
            ..Congestion::default()
        };
        assert_eq!(rc.step(t0 + RateControl::STEP * 2, filling, 225), 225);
        // Over a quarter full, even draining: held.
        let draining = Congestion {
            queue_ppm: 300_000,
            ..Congestion::default()
        };
        assert_eq!(rc.step(t0 + RateControl::STEP * 3, draining, 225), 225);
        // A fifth full and emptier than at the notice before: no reason to hold.
        let draining = Congestion {
            queue_ppm: 200_000,
            ..Congestion::default()
        };
        assert!(rc.step(t0 + RateControl::STEP * 4, draining, 225) > 225);
    }

    #[test]
    fn a_cut_goes_to_seven_eighths_of_what_the_slowest_receiver_behind_took() {
        let t0 = Instant::now();
        let mut rc = RateControl::new(RateLimits {
            start: 1_000,
            min: 10,
            max: 10_000,
        });
        let behind = |take: u64| Congestion {
            slowest_take: Some(take),
            ..fresh_overflow(50_000)
        };
        // Its buffer drains at an eighth of its pace while it stays busy.
        assert_eq!(rc.step(t0, behind(800), 1_000), 700);
        // A rate below that already is held.
        assert_eq!(rc.step(t0 + RateControl::STEP, behind(900), 700), 700);
    }

    #[test]
    fn past_slow_start_a_queue_seen_once_holds_the_rate_and_a_standing_one_cuts_it() {
        let t0 = Instant::now();
        let mut rc = RateControl::new(RateLimits {
            start: 1_000,
            min: 10,
            max: 10_000,
        });
        // In slow start any fresh queue over a quarter cuts: the rate may be far above what
        // the receivers take, and the next notice may find the buffer overflowed.
        let once = Congestion {
            queue_ppm: 400_000,
            fresh_queue_ppm: 400_000,
            filling_queue_ppm: 400_000,
            ..Congestion::default()
        };
        assert!(rc.wants_cut(t0, &once));
        assert_eq!(rc.step(t0, once, 1_000), 900);
        // Past it, the same queue seen once (the notice before found the buffer near empty)
        // is a stall's excursion: no cut, and no rise either.
        let t1 = t0 + RateControl::STEP;
        assert!(!rc.wants_cut(t1, &once));
        assert_eq!(rc.step(t1, once, 900), 900);
        // Seen again and still filling: a standing queue, cut.
        let standing = Congestion {
            fresh_standing_queue_ppm: 400_000,
            ..once
        };
        let t2 = t1 + RateControl::STEP;
        assert!(rc.wants_cut(t2, &standing));
        assert_eq!(rc.step(t2, standing, 900), 810);
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
            fresh_loss_ppm: 50_000,
            ..Congestion::default()
        };
        assert!(rc.step(t0, lossy, 1_000) > 1_000);
        let collapsing = Congestion {
            loss_ppm: 300_000,
            fresh_loss_ppm: 300_000,
            ..Congestion::default()
        };
        assert!(rc.step(t0 + RateControl::STEP, collapsing, 1_000) < 1_000);
    }

    #[test]
    fn loss_soon_after_overflow_is_its_aftermath_not_a_collapsing_link() {
        let t0 = Instant::now();
        let mut rc = RateControl::new(RateLimits {
            start: 1_000,
            min: 10,
            max: 10_000,
        });
        let cut = rc.step(t0, fresh_overflow(50_000), 1_000);
        assert!(cut < 1_000);
        // The units the overflow dropped are reported lost once their NACK backoff is over.
        let lossy = Congestion {
            loss_ppm: 500_000,
            fresh_loss_ppm: 500_000,
            ..Congestion::default()
        };
        let t1 = t0 + Duration::from_millis(500);
        assert!(rc.step(t1, lossy, cut) >= cut, "cut again on old news");
        // Long after the last overflow, the same loss is a link collapsing under the rate.
        let r = rc.rate();
        assert!(rc.step(t0 + Duration::from_secs(3), lossy, r) < r);
    }
}
