//! The first pass: every block once, in order (sent here, or by the node's data threads as
//! an external first pass that reports its progress), past the blocks every member holds
//! already (the skip set); and the rate it and the repairs are paced at, fixed or
//! `--rate auto`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockcast_status::AtomicBitmap;

use super::{FirstPassProgress, Sender, SenderEvent};
use crate::numbering::BlockAddr;
use crate::pacer::Pacer;
use crate::rate::{Congestion, RateControl};
use crate::store::BlockSource;
use crate::stripe::StripePass;
use crate::wire::{ReceiptRepr, ReceiverId, UnitHeaderRepr};
use crate::{Destination, Transmit, UnitRef};

/// How often the first pass's skip set is brought up to date from the status matrix.
pub(super) const SKIP_SCAN: Duration = Duration::from_millis(20);

/// How far ahead of the first pass the skip scan looks, in blocks.
const SKIP_SCAN_AHEAD: u64 = 4096;

/// How often a first pass waiting for an unavailable block looks again.
pub(super) const STALL_RECHECK: Duration = Duration::from_millis(1);

/// The next unit of the first pass: unit `unit` of block number `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PassCursor {
    pub(super) seq: u64,
    unit: u16,
}

/// Where the first pass is.
pub(super) struct FirstPass {
    /// Next first-pass unit, or `None` once the first pass is done (or is external).
    pub(super) next: Option<PassCursor>,
    /// External first pass: every block before this (global numbering) has been sent.
    pub(super) external_sent: u64,
    /// External first pass: datagram bytes its stripes sent.
    external_bytes: u64,
    /// Blocks the first pass skips: every member holds them already.
    pub(super) skip: Arc<AtomicBitmap>,
    /// External first pass: blocks a stripe has started, or that were taken from the pass to
    /// go whole ahead of it; whoever sets a block's bit first sends it.
    claimed: Arc<AtomicBitmap>,
    pub(super) next_skip_scan: Option<Instant>,
    /// The first pass waits for a block that is not available yet: look again at this time.
    pub(super) stall_check: Option<Instant>,
    /// External first pass: when its bytes were last charged to the sender's pacer.
    charged_at: Option<Instant>,
}

/// Queued repairs get the share of the rate that sends them within this long (up to half
/// of it): about a GRTT on a LAN, a small share for the few units a NACK asks for.
const REPAIR_DRAIN: Duration = Duration::from_millis(5);

impl FirstPass {
    /// A first pass over `blocks` blocks, from block 0 unless the node sends it (`external`).
    pub(super) fn new(blocks: u64, external: bool) -> Self {
        FirstPass {
            // Block 0 is the first block of the first object that has any.
            next: (blocks > 0 && !external).then_some(PassCursor { seq: 0, unit: 0 }),
            external_sent: 0,
            external_bytes: 0,
            skip: Arc::new(AtomicBitmap::new(blocks as usize)),
            claimed: Arc::new(AtomicBitmap::new(blocks as usize)),
            next_skip_scan: None,
            stall_check: None,
            charged_at: None,
        }
    }
}

/// How far back the log of what was sent reaches (receivers echo send times up to a full
/// socket buffer's worth of time old).
const SENT_LOG_SPAN: Duration = Duration::from_secs(4);
/// One entry of that log per this much time at most.
const SENT_LOG_STEP: Duration = Duration::from_millis(1);

/// What one member took of what was sent, measured from two of its notices: the sends between
/// the two send times they echo (the last datagram it had read at each), less its overflow,
/// over the time between the notices.
#[derive(Clone, Copy, Debug)]
struct Take {
    echo: u32,
    at: Instant,
    /// The last few samples, datagram bytes per second (0: none yet).
    samples: [u64; TAKE_SAMPLES],
    next: usize,
}

/// A member's take is the most of its last few samples: a receiver thread that was not
/// scheduled for most of one notice's window read little then, which says nothing of what it
/// can take (a max filter, as BBR's bottleneck bandwidth).
const TAKE_SAMPLES: usize = 4;

impl Take {
    fn rate(&self) -> Option<u64> {
        self.samples.iter().copied().max().filter(|&r| r > 0)
    }
}

/// `--rate auto`: the controller, its next step, and the bytes sent at the last one.
pub(super) struct AutoRate {
    control: RateControl,
    /// Datagram bytes sent in all (first pass and repairs), by send timestamp, ascending.
    sent_log: VecDeque<(u32, u64)>,
    /// Each member's take, by receiver.
    takes: BTreeMap<ReceiverId, Take>,
    pub(super) next_step: Option<Instant>,
    /// When the last step was (or the session started).
    pub(super) stepped_at: Instant,
    /// Datagram bytes sent in all at that time.
    pub(super) sent_then: u64,
    /// What went out per second over the last measured interval.
    achieved: u64,
}

impl AutoRate {
    pub(super) fn new(control: RateControl) -> Self {
        AutoRate {
            control,
            next_step: None,
            stepped_at: Instant::now(),
            sent_then: 0,
            achieved: 0,
            sent_log: VecDeque::new(),
            takes: BTreeMap::new(),
        }
    }

    /// Bytes sent in all by send timestamp `ts` (the latest entry at or before it).
    fn sent_by(&self, ts: u32) -> Option<u64> {
        let i = self.sent_log.partition_point(|&(t, _)| t <= ts);
        i.checked_sub(1).map(|i| self.sent_log[i].1)
    }
}

impl<S: BlockSource> Sender<S> {
    /// The rate now (datagram bytes per second, first pass and repairs together): the fixed
    /// one, or where `--rate auto` has taken it.
    pub fn rate(&self) -> u64 {
        self.auto_rate
            .as_ref()
            .map_or(self.cfg.rate, |a| a.control.rate())
    }

    /// An external first pass's share of the rate: what the queued repairs (and priority
    /// blocks) leave of it, they getting what sends them within [`REPAIR_DRAIN`], up to half.
    /// The repairs are paced against the same budget (the stripes' bytes are charged to the
    /// sender's pacer as they are reported), so together they stay within the rate. Before,
    /// repairs had a pacer of their own at half the rate and the first pass the whole rate
    /// whenever none was queued: up to 1.5 times the rate went out (in the simulator, 8.9 MB/s
    /// at a rate of 6.3 overflowed receivers that take 7.8). Then a flat half whenever any
    /// was queued (and the rate they took lately when none was) held the first pass near half
    /// the rate through a lossy transfer, as the NACKs of 5 % loss keep a few units queued
    /// most of the time: at a fixed 120 MB/s across namespaces 5 % loss took 1.40-1.45x the
    /// lossless time for 5-6 % more datagrams (docs/DESIGN.md 2026-12-02, "what 5 % loss
    /// cost across namespaces").
    pub fn first_pass_rate(&self) -> u64 {
        let rate = self.rate();
        let half = rate / 2;
        let queued = self.repair_backlog_bytes();
        let drain = (queued as f64 / REPAIR_DRAIN.as_secs_f64()) as u64;
        let repairs = drain.min(half);
        (rate - repairs).max(1)
    }

    /// Change the rate (datagram bytes per second, first pass and repairs together); with
    /// `--rate auto` the next step starts from the controller's own rate again.
    pub fn set_rate(&mut self, rate: u64) {
        self.cfg.rate = rate.max(1);
        self.apply_rate();
    }

    /// Paces this sender's own sends at the rate (with an external first pass, the stripes'
    /// bytes are charged to the same pacer as they report them: repairs get what the first
    /// pass leaves).
    fn apply_rate(&mut self) {
        let rate = self.rate();
        self.pacer.set_rate(rate);
    }

    /// Datagram bytes sent in all: the first pass (here or by the stripes) and repairs.
    fn bytes_sent(&self) -> u64 {
        self.stats.data_bytes + self.stats.parity_bytes + self.first_pass.external_bytes
    }

    /// `--rate auto`: notes how much has been sent by now (call after sending), so that a
    /// receiver's echo of a send time tells how much it had read.
    pub(super) fn log_sent(&mut self, now: Instant) {
        let sent = self.bytes_sent();
        let ts = self.timestamp(now);
        let Some(a) = self.auto_rate.as_mut() else {
            return;
        };
        match a.sent_log.back_mut() {
            Some(last) if ts.wrapping_sub(last.0) < crate::micros(SENT_LOG_STEP) => {
                last.1 = sent;
                return;
            }
            _ => a.sent_log.push_back((ts, sent)),
        }
        let span = crate::micros(SENT_LOG_SPAN);
        while a
            .sent_log
            .front()
            .is_some_and(|&(t, _)| ts.wrapping_sub(t) > span)
        {
            a.sent_log.pop_front();
        }
    }

    /// `--rate auto`: what member `r.receiver` took between its previous notice and this one.
    fn measure_take(&mut self, now: Instant, r: &ReceiptRepr) {
        let epoch = self.epoch;
        let Some(a) = self.auto_rate.as_mut() else {
            return;
        };
        if r.echo_timestamp == 0 {
            return;
        }
        // A member's first notice measures from the first send: its socket got everything
        // from then on (a late joiner's first sample overstates its take, which only makes
        // a cut shallower). So a receiver already behind at its first notice is measured
        // before its buffer overflows, not a notice later.
        let first_send = a
            .sent_log
            .iter()
            .find(|&&(_, b)| b > 0)
            .zip(epoch)
            .map(|(&(ts, _), e)| (ts, e + Duration::from_micros(u64::from(ts))));
        let prev = a.takes.get(&r.receiver).copied();
        let from = prev.map(|p| (p.echo, p.at)).or(first_send);
        let mut take = prev.unwrap_or(Take {
            echo: r.echo_timestamp,
            at: now,
            samples: [0; TAKE_SAMPLES],
            next: 0,
        });
        if let Some((echo, at)) = from {
            let dt = now.saturating_duration_since(at);
            if dt < Duration::from_millis(10) {
                // Too close to the last to measure: wait for a later notice.
                if prev.is_some() {
                    return;
                }
            } else {
                let sent = a
                    .sent_by(r.echo_timestamp)
                    .zip(a.sent_by(echo).or(Some(0)))
                    .map(|(b, a)| b.saturating_sub(a));
                if let Some(sent) = sent {
                    let kept = 1_000_000 - u64::from(r.overflow_ppm.min(1_000_000));
                    let took =
                        (u128::from(sent) * u128::from(kept) / 1_000_000) as f64 / dt.as_secs_f64();
                    take.samples[take.next] = took as u64;
                    take.next = (take.next + 1) % TAKE_SAMPLES;
                }
            }
        }
        take.echo = r.echo_timestamp;
        take.at = now;
        a.takes.insert(r.receiver, take);
    }

    /// `--rate auto`: one step of the controller, on what went out since the last; the next
    /// is due [`RateControl::STEP`] later.
    pub(super) fn step_rate(&mut self, now: Instant) {
        let sent = self.bytes_sent();
        let congestion = self.rate_congestion();
        if let Some(a) = self.auto_rate.as_mut() {
            let elapsed = now.saturating_duration_since(a.stepped_at);
            // A step soon after the last (a notice asked for a cut) keeps the last measure:
            // paced in quanta, a few milliseconds of sending say little.
            if elapsed >= RateControl::STEP / 4 || a.achieved == 0 {
                let secs = elapsed.as_secs_f64().max(1e-3);
                a.achieved = (sent.saturating_sub(a.sent_then) as f64 / secs) as u64;
                a.stepped_at = now;
                a.sent_then = sent;
            }
            a.control.step(now, congestion, a.achieved);
            a.next_step = Some(now + RateControl::STEP);
        }
        self.apply_rate();
    }

    /// What `--rate auto` sees of the members' notices, fresh meaning since its last cut.
    pub fn rate_congestion(&self) -> Congestion {
        let since = self
            .auto_rate
            .as_ref()
            .and_then(|a| a.control.cut_at())
            .map(|t| (t, self.timestamp(t)));
        let mut c = self.congestion_since(since);
        // What the slowest of the members that are behind (a queue, or overflow) took.
        if let Some(a) = self.auto_rate.as_ref() {
            c.slowest_take = self
                .behind()
                .filter_map(|id| a.takes.get(&id).and_then(Take::rate))
                .min();
        }
        c
    }

    /// A receipt notice came in: with `--rate auto`, fresh news that calls for a cut is
    /// acted on now, not at the next step (up to [`RateControl::STEP`] later, during which
    /// a rate too fast for a receiver overflows its socket).
    pub(super) fn on_rate_report(&mut self, now: Instant, r: &ReceiptRepr) {
        if self.phase != super::Phase::Sending || self.auto_rate.is_none() {
            return;
        }
        self.measure_take(now, r);
        let c = self.rate_congestion();
        let cut = self
            .auto_rate
            .as_mut()
            .is_some_and(|a| a.control.wants_cut(now, &c));
        if cut {
            self.step_rate(now);
        }
    }

    /// The blocks the first pass skips because every member holds them (sent whole ahead
    /// of it for a priority request): shared with the stripes
    /// ([`StripePass`]), which read it lock-free.
    pub fn skip_set(&self) -> Arc<AtomicBitmap> {
        self.first_pass.skip.clone()
    }

    /// Stripe `stripe` of an external first pass, once the first pass may start (the sender
    /// is sending: [`Sender::is_sending`]). Its units are stamped from the session's epoch;
    /// its rate is [`Sender::first_pass_rate`] (keep it up to date with
    /// [`StripePass::set_rate`]).
    pub fn stripe_pass(&self, stripe: u16) -> Option<StripePass<S>>
    where
        S: Clone,
    {
        let epoch = self.epoch.filter(|_| self.is_sending())?;
        (stripe < self.cfg.stripes).then(|| {
            StripePass::new(
                self.cfg.session,
                stripe,
                self.cfg.stripes,
                self.numbering.clone(),
                self.source.clone(),
                self.first_pass.skip.clone(),
                self.first_pass.claimed.clone(),
                epoch,
                Pacer::new(self.first_pass_rate(), self.cfg.burst)
                    .with_quantum(self.cfg.pace_quantum),
            )
        })
    }

    /// External first pass: every block before `sent_before` (global numbering over the
    /// manifest's objects) has been sent by every data thread. Call it as the data threads
    /// progress; a value at or past the last block ends the first pass.
    pub fn handle_first_pass(&mut self, now: Instant, progress: FirstPassProgress) {
        if !self.cfg.external_first_pass {
            return;
        }
        self.repairs.now = Some(now);
        // One budget: what the stripes sent leaves that much less for the repairs.
        let more = progress
            .bytes
            .saturating_sub(self.first_pass.external_bytes);
        let since = self.first_pass.charged_at.replace(now).unwrap_or(now);
        self.pacer.charge(since, now, more);
        self.first_pass.external_bytes = self.first_pass.external_bytes.max(progress.bytes);
        self.log_sent(now);
        let sent_before = progress.sent_before;
        if sent_before <= self.first_pass.external_sent {
            return;
        }
        let was_done = self.first_pass_done();
        let from = self.first_pass.external_sent;
        self.first_pass.external_sent = sent_before.min(self.numbering.total());
        self.tail_fec(now, from, self.first_pass.external_sent);
        if !was_done && self.first_pass_done() {
            self.first_pass_over();
        }
        self.advance_phase(now);
    }

    pub(super) fn first_pass_done(&self) -> bool {
        if self.cfg.external_first_pass {
            self.first_pass.external_sent >= self.numbering.total()
        } else {
            self.first_pass.next.is_none()
        }
    }

    /// Takes block `seq` from the first pass, to go whole ahead of it: false if the pass has
    /// it already (a data thread started it, perhaps since it last reported its position).
    /// A first pass of the sender's own has no such race: its position is exact.
    pub(super) fn take_from_pass(&self, seq: u64) -> bool {
        !self.cfg.external_first_pass || self.first_pass.claimed.set(seq as usize)
    }

    /// Brings the skip set up to date: blocks ahead of the first pass that every member
    /// holds are not sent again.
    pub(super) fn scan_skips(&mut self) {
        let total = self.numbering.total();
        let from = if self.cfg.external_first_pass {
            self.first_pass.external_sent
        } else {
            self.first_pass.next.map_or(total, |p| p.seq)
        };
        let from = from.min(total);
        let to = (from + SKIP_SCAN_AHEAD).min(total);
        for seq in from..to {
            if self.all_hold(seq) {
                // Release: a stripe that sees the bit skips a block every member holds.
                self.first_pass.skip.set(seq as usize);
            }
        }
    }

    pub(super) fn has_paced_work(&self) -> bool {
        self.pass_ready() || !self.repairs.is_empty()
    }

    /// The first pass has a unit to send now (its block is available).
    pub(super) fn pass_ready(&self) -> bool {
        self.first_pass.next.is_some_and(|p| {
            let a = self.numbering.addr(p.seq);
            self.source.available(a.object, a.block)
        })
    }

    /// The first pass is over: say so, and tell receivers at once (and twice more a round
    /// trip apart) so that they NACK the tail.
    fn first_pass_over(&mut self) {
        self.events.push_back(SenderEvent::FirstPassDone);
        self.carousel.announce_now = true;
        self.carousel.pass_end_repeats = 2;
    }

    pub(super) fn send_first_pass(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let PassCursor { mut seq, unit } = self.first_pass.next?;
        let total = self.numbering.total();
        if unit == 0 {
            // Blocks every member holds already are not sent again.
            while self.first_pass.skip.get(seq as usize) {
                if seq + 1 < total {
                    seq += 1;
                } else {
                    self.first_pass.next = None;
                    self.first_pass_over();
                    return None;
                }
            }
            self.first_pass.next = Some(PassCursor { seq, unit: 0 });
        }
        let a = self.numbering.addr(seq);
        if !self.source.available(a.object, a.block) {
            return None;
        }
        let units = self.numbering.units_in(seq);
        let next_unit = unit + 1;
        self.first_pass.next = if next_unit < units {
            Some(PassCursor {
                seq,
                unit: next_unit,
            })
        } else {
            (seq + 1 < total).then_some(PassCursor {
                seq: seq + 1,
                unit: 0,
            })
        };
        if next_unit >= units {
            self.tail_fec(now, seq, seq + 1);
        }
        if self.first_pass.next.is_none() {
            self.first_pass_over();
        }
        self.data_unit(now, buf, seq, unit, false)
    }

    /// Unit `unit` of block `seq` (global numbering), a first-pass unit or a repair: the
    /// header in `buf`, the payload by reference.
    pub(super) fn data_unit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        seq: u64,
        unit: u16,
        repair: bool,
    ) -> Option<Transmit> {
        let us = usize::from(self.cfg.geometry.unit_size);
        let BlockAddr { object, block } = self.numbering.addr(seq);
        let block_len = self.numbering.block_len(seq);
        if block_len == 0 {
            return None;
        }
        let offset = usize::from(unit) * us;
        let len = (block_len - offset).min(us);
        let hdr = UnitHeaderRepr {
            session: self.cfg.session,
            parity: false,
            repair,
            object,
            block,
            index: unit,
            round_end: 0,
            timestamp: self.timestamp(now),
        };
        let n = hdr.emit(buf).ok()?;
        if repair {
            self.stats.repair_units += 1;
        } else {
            self.stats.data_units += 1;
        }
        self.stats.data_bytes += (n + len) as u64;
        let t = Transmit {
            destination: Destination::Group,
            len: n,
            payload: Some(UnitRef {
                object,
                block,
                offset,
                len,
            }),
        };
        self.route(t, buf, seq, false, unit)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{gated_sender, units_due};
    use super::*;

    #[test]
    fn first_pass_waits_for_an_unavailable_block() {
        let mut s = gated_sender();
        let t0 = Instant::now();
        let mut got = units_due(&mut s, t0);
        got.extend(units_due(&mut s, t0 + Duration::from_millis(10)));
        assert_eq!(got, [(0, 0), (0, 1), (0, 2), (0, 3)]);
        // Waiting, it asks to be woken to look again (not never, not in the past).
        let t1 = t0 + Duration::from_millis(20);
        assert!(s.poll_timeout().is_some());
        s.source_mut().ready = 2;
        let later = units_due(&mut s, t1 + Duration::from_millis(10));
        assert_eq!(later, [(1, 0), (1, 1), (1, 2), (1, 3)]);
    }
}
