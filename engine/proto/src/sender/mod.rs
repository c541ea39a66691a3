//! The server's side of a session, sans-IO (docs/DESIGN.md "Protocol").
//!
//! The sender announces the session, carries the manifest, admits receivers, sends every
//! block once in order (the first pass) at the configured rate, and answers NACKs: NACKs
//! for a block are merged across receivers and answered with parity units (as many as the
//! receiver that misses most still needs), or with the original units where a receiver
//! holds too little of the block for parity to pay. It ends when every accepted receiver
//! holds every block, or at the deadline.
//!
//! Drive it like this: feed every datagram that arrives at the control address to
//! [`Sender::handle_datagram`]; call [`Sender::handle_timeout`] when the instant from
//! [`Sender::poll_timeout`] passes; after either, call [`Sender::poll_transmit`] until it
//! returns `None` and send what it gives; drain [`Sender::poll_event`].

mod carousel;
mod config;
mod first_pass;
mod guard;
mod membership;
mod repair;
mod split;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::auth::Signature;
use crate::bucket::TokenBucket;
use crate::coding;
use crate::endpoint::Endpoint;
use crate::numbering::BlockNumbering;
use crate::pacer::Pacer;
use crate::rate::{RateControl, RateLimits};
use crate::store::BlockSource;
use crate::wire::{
    BlockIndex, DoneReason, Manifest, ObjectId, Packet, ReceiverId, WireError, UNIT_HEADER_LEN,
};
use crate::{Destination, Transmit};

use carousel::Carousel;
pub use config::{
    SenderConfig, MEMBER_REPAIR_SHARE, ORIGINALS_FACTOR, SPLIT_MEMBER_REPAIR_SHARE,
    XOR_GATHER_GRTTS,
};
use first_pass::{AutoRate, FirstPass, SKIP_SCAN, STALL_RECHECK};
pub use guard::DropReason;
use membership::Membership;
use repair::Repairs;
use split::SplitState;

/// What happened, for the node to report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SenderEvent {
    ReceiverJoined {
        receiver: ReceiverId,
        addr: SocketAddr,
    },
    ReceiverLeft {
        receiver: ReceiverId,
        timed_out: bool,
    },
    ReceiverComplete {
        receiver: ReceiverId,
    },
    /// The server dropped a member (it is no longer waited for).
    ReceiverDropped {
        receiver: ReceiverId,
        reason: DropReason,
    },
    /// The first pass began (enough receivers, or the wait ran out).
    FirstPassStarted,
    /// Every block has been sent once.
    FirstPassDone,
    /// A block went out whole ahead of the first pass (a priority request): an external
    /// first pass need not send it again (receivers that lost some of it NACK).
    SentWhole {
        object: ObjectId,
        block: BlockIndex,
    },
    /// The session is over; nothing more will be sent.
    Finished {
        reason: DoneReason,
    },
    /// A datagram could not be decoded (counted in stats too).
    BadPacket {
        from: SocketAddr,
        error: WireError,
    },
}

/// Counters. Bytes are datagram bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SenderStats {
    pub data_units: u64,
    pub data_bytes: u64,
    /// Original units sent again as repairs.
    pub repair_units: u64,
    /// XOR repairs sent (each combines two to four original units).
    pub xor_units: u64,
    /// Original units those XOR repairs carried.
    pub xor_carried: u64,
    pub parity_units: u64,
    pub parity_bytes: u64,
    /// Parity units added to repairs in the tail for the repairs' own loss (counted in
    /// `parity_units` as they go).
    pub tail_parity: u64,
    /// Originals and XOR repairs sent a second time in a small group's tail (counted in
    /// `repair_units` or `xor_units` as they go).
    pub tail_copies: u64,
    /// Units of blocks sent whole ahead of the first pass for a priority request (counted in
    /// `repair_units` as they go; the first pass skips those blocks).
    pub ahead_units: u64,
    pub announces: u64,
    pub manifest_chunks: u64,
    pub control_sent: u64,
    pub nacks: u64,
    pub nack_bytes: u64,
    pub receipts: u64,
    pub receipt_bytes: u64,
    pub joins: u64,
    pub priority_requests: u64,
    pub bad_packets: u64,
    /// NACKs and notices from receivers that are not members (ignored).
    pub strangers: u64,
    /// Packets naming a member from another address than its own, or with a cookie that is
    /// not its (a spoofed source): dropped.
    pub bad_cookies: u64,
    /// Challenges sent (Accepts handing out a cookie to an unproven address).
    pub challenges: u64,
    /// Challenges not sent: more Joins and Solicits came than the challenge rate allows.
    pub challenges_dropped: u64,
    /// Repair units members asked for beyond their budget (refused).
    pub repair_denied: u64,
    /// Priority requests beyond a member's request rate (refused).
    pub priority_denied: u64,
    /// Members dropped as slow.
    pub dropped_slow: u64,
    /// Members that expired after falling silent (complete ones included).
    pub expired: u64,
}

/// One member as the sender sees it (for the node's summary and relay choice).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberReport {
    pub id: ReceiverId,
    pub addr: SocketAddr,
    pub complete: bool,
    /// Measured send -> receipt time, smoothed.
    pub rtt: Option<Duration>,
    /// Loss from its latest receipt notice (ppm).
    pub loss_ppm: u32,
}

/// How far an external first pass got ([`Sender::handle_first_pass`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FirstPassProgress {
    /// Every block numbered below this has been sent by every stripe.
    pub sent_before: u64,
    /// Datagram bytes the stripes sent so far, in all.
    pub bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Waiting,
    Sending,
    Closing { reason: DoneReason, left: u32 },
    Finished,
}

/// The server's state machine for one session.
pub struct Sender<S> {
    cfg: SenderConfig,
    source: S,
    manifest: Manifest,
    numbering: BlockNumbering,
    epoch: Option<Instant>,
    phase: Phase,
    /// Closing: when the next done packet goes out.
    closing_at: Option<Instant>,
    /// Paces what this sender sends itself (repairs, and an internal first pass).
    pacer: Pacer,
    /// The automatic rate, when on.
    auto_rate: Option<AutoRate>,
    first_pass: FirstPass,
    carousel: Carousel,
    membership: Membership,
    repairs: Repairs,
    events: VecDeque<SenderEvent>,
    stats: SenderStats,
    split: Option<SplitState>,
    /// Challenges' budget ([`SenderConfig::challenges_per_sec`]).
    challenges: TokenBucket,
    /// The session statement's signature (signed at the first announce, or a relay's
    /// origin's).
    statement_sig: Option<Signature>,
    /// The latest signed announce, reused while nothing in it changes (split mode sends the
    /// same announce to every member).
    signed_announce: Option<crate::wire::AnnounceRepr>,
}

impl<S: BlockSource> Sender<S> {
    /// A sender for `manifest`, reading block bytes from `source`.
    ///
    /// Fails if the geometry disagrees with the manifest or the parity code cannot use it.
    pub fn new(cfg: SenderConfig, manifest: Manifest, source: S) -> Result<Self, &'static str> {
        let g = cfg.geometry;
        if g.unit_size != manifest.unit_size || g.units_per_block != manifest.units_per_block {
            return Err("geometry differs from the manifest");
        }
        if g.unit_size < 2
            || g.unit_size % 2 != 0
            || usize::from(g.unit_size) + UNIT_HEADER_LEN > crate::wire::MAX_DATAGRAM
        {
            return Err("unit size must be even, at least 2, and fit a datagram");
        }
        if g.units_per_block == 0
            || g.units_per_block > 32_768
            || g.max_parity == 0
            || g.max_parity > 32_768
        {
            return Err("units per block and parity units must be 1..=32768");
        }
        if !coding::supported(g.units_per_block, g.max_parity) {
            return Err(
                "the parity code does not support this many units per block and parity units",
            );
        }
        if cfg.stripes == 0 || cfg.rate == 0 {
            return Err("stripes and rate must be positive");
        }
        if cfg.split.is_some() && cfg.external_first_pass {
            return Err("split mode sends the first pass itself (no external first pass)");
        }
        let carousel = Carousel::new(&manifest)?;
        let cfg_statement = cfg.statement;
        let numbering = BlockNumbering::new(&manifest);
        let blocks = numbering.total();
        let challenge_burst = guard::challenge_burst(cfg.min_receivers, cfg.max_receivers);
        Ok(Sender {
            split: cfg.split.clone().map(SplitState::new),
            pacer: Pacer::new(cfg.rate, cfg.burst).with_quantum(cfg.pace_quantum),
            auto_rate: cfg.rate_control.map(|l| {
                AutoRate::new(RateControl::new(RateLimits {
                    start: cfg.rate,
                    ..l
                }))
            }),
            first_pass: FirstPass::new(blocks, cfg.external_first_pass),
            membership: Membership::new(cfg.max_receivers, blocks, cfg.initial_grtt),
            carousel,
            repairs: Repairs::default(),
            cfg,
            source,
            manifest,
            numbering,
            epoch: None,
            phase: Phase::Waiting,
            closing_at: None,
            events: VecDeque::new(),
            stats: SenderStats::default(),
            challenges: TokenBucket::new(challenge_burst),
            statement_sig: cfg_statement,
            signed_announce: None,
        })
    }

    pub fn stats(&self) -> &SenderStats {
        &self.stats
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// BLAKE3 of the serialized manifest (what every Announce carries).
    pub fn manifest_hash(&self) -> [u8; 32] {
        self.carousel.hash
    }

    /// The key that signs the session statement: this server's, or the origin's that a relay
    /// passes on.
    pub fn statement_signer(&self) -> Option<[u8; 32]> {
        self.statement_sig
            .map(|s| s.key)
            .or_else(|| self.cfg.signer.as_ref().map(|s| s.public_key()))
    }

    pub fn source(&self) -> &S {
        &self.source
    }

    /// The block source, to fill in blocks as they become available (a relay).
    pub fn source_mut(&mut self) -> &mut S {
        &mut self.source
    }

    /// The global number of block `block` of `object` (numbering runs over the manifest's
    /// objects in order), if it exists.
    pub fn global_block(&self, object: ObjectId, block: BlockIndex) -> Option<u64> {
        self.numbering.seq(object, block)
    }

    /// Blocks in the session (global numbering runs over the manifest's objects).
    pub fn total_blocks(&self) -> u64 {
        self.numbering.total()
    }

    /// The session's block numbering.
    pub fn numbering(&self) -> &BlockNumbering {
        &self.numbering
    }

    #[doc(hidden)]
    pub fn debug_state(&self) -> String {
        format!(
            "phase {:?} pass {:?} queue {:?} next_send {:?} announce {:?} closing {:?} members {}",
            self.phase,
            self.first_pass.next,
            self.repairs.queue,
            self.pacer.next_send(),
            self.carousel.next_announce,
            self.closing_at,
            self.membership.members.len()
        )
    }

    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// The session is ending (its Done is going out) or over: a receiver that joins now gets
    /// nothing more.
    pub fn is_closing(&self) -> bool {
        matches!(self.phase, Phase::Closing { .. } | Phase::Finished)
    }

    /// The first pass may run: enough receivers joined, or the wait ran out. An external
    /// first pass starts when this turns true.
    pub fn is_sending(&self) -> bool {
        self.phase != Phase::Waiting
    }

    /// The session's start: unit timestamps are microseconds since this instant.
    pub fn epoch(&self) -> Option<Instant> {
        self.epoch
    }

    /// Changes how many accepted receivers the first pass waits for (before `max_wait`), while
    /// it has not started: an origin holds the first pass for its batching window, then waits
    /// for the receivers it granted the session to.
    pub fn set_min_receivers(&mut self, n: usize) {
        self.cfg.min_receivers = n;
        // A larger group is let in by a larger burst of challenges.
        self.challenges
            .grow_to(guard::challenge_burst(n, self.cfg.max_receivers));
    }

    /// Stop: tell the group the session is over.
    pub fn abort(&mut self, now: Instant) {
        if !matches!(self.phase, Phase::Closing { .. } | Phase::Finished) {
            self.close(now, DoneReason::Aborted);
        }
    }

    fn timestamp(&self, now: Instant) -> u32 {
        crate::micros(now.saturating_duration_since(self.epoch.unwrap_or(now)))
    }

    fn start(&mut self, now: Instant) {
        if self.epoch.is_none() {
            self.epoch = Some(now);
            self.membership.next_scan = Some(now + self.cfg.receiver_timeout / 4);
            self.membership.grtt_window_end = Some(now + self.grtt_window());
            if let Some(a) = self.auto_rate.as_mut() {
                a.stepped_at = now;
                a.sent_then = 0;
            }
        }
    }

    fn since_start(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.epoch.unwrap_or(now))
    }

    /// Handles one datagram that arrived at the control address from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.start(now);
        let packet = match Packet::parse(bytes) {
            Ok(p) => p,
            Err(error) => {
                self.stats.bad_packets += 1;
                self.events
                    .push_back(SenderEvent::BadPacket { from, error });
                return;
            }
        };
        if let Packet::Solicit(sol) = &packet {
            self.on_solicit(now, from, sol);
            return;
        }
        if packet.session() != self.cfg.session {
            self.stats.strangers += 1;
            return;
        }
        match packet {
            Packet::Join(j) => self.on_join(now, from, j.receiver, j.cookie),
            Packet::Leave(l) => {
                if self.authenticate(from, l.receiver, l.cookie) {
                    self.on_leave(l.receiver);
                }
            }
            Packet::Nack(n) => {
                self.stats.nacks += 1;
                self.stats.nack_bytes += bytes.len() as u64;
                if self.authenticate(from, n.receiver, n.cookie) {
                    self.on_nack(now, &n);
                }
            }
            Packet::Receipt(r) => {
                self.stats.receipts += 1;
                self.stats.receipt_bytes += bytes.len() as u64;
                if self.authenticate(from, r.receiver, r.cookie) {
                    self.on_receipt(now, &r);
                    self.on_rate_report(now, &r);
                }
            }
            Packet::Priority(p) => {
                self.stats.priority_requests += 1;
                if self.authenticate(from, p.receiver, p.cookie) {
                    self.on_priority(now, &p);
                }
            }
            // Server-to-receiver kinds arriving here are ignored.
            Packet::Unit(..)
            | Packet::Announce(_)
            | Packet::Manifest(_)
            | Packet::Accept(_)
            | Packet::Plan(_)
            | Packet::Solicit(_)
            | Packet::Xor(..)
            | Packet::Done(_) => self.stats.strangers += 1,
        }
    }

    /// Handles timers: call when the instant from [`Sender::poll_timeout`] has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.start(now);
        if self.carousel.next_announce.is_some_and(|t| now >= t) {
            self.carousel.announce_now = true;
        }
        if self.membership.grtt_window_end.is_some_and(|t| now >= t) {
            self.end_grtt_window(now);
        }
        if self.membership.next_scan.is_some_and(|t| now >= t) {
            self.scan_members(now);
        }
        if self.phase == Phase::Sending {
            if self
                .auto_rate
                .as_ref()
                .and_then(|a| a.next_step)
                .is_some_and(|t| now >= t)
            {
                self.step_rate(now);
            }
            if self.first_pass.next_skip_scan.is_some_and(|t| now >= t) {
                self.scan_skips();
                self.first_pass.next_skip_scan = (!self.first_pass_done()).then(|| now + SKIP_SCAN);
            }
        }
        self.advance_phase(now);
    }

    fn advance_phase(&mut self, now: Instant) {
        match self.phase {
            Phase::Waiting => {
                if self.first_pass_may_start(now) {
                    self.phase = Phase::Sending;
                    self.membership_changed();
                    self.events.push_back(SenderEvent::FirstPassStarted);
                    if let Some(a) = self.auto_rate.as_mut() {
                        a.next_step = Some(now + RateControl::STEP);
                        a.stepped_at = now;
                    }
                    // What the members hold already is skipped from the first block on: the
                    // skip set is filled before anything (a data thread) can send.
                    self.scan_skips();
                    self.first_pass.next_skip_scan = Some(now + SKIP_SCAN);
                }
            }
            Phase::Sending => {
                self.drop_slow_members(now);
                if self
                    .cfg
                    .deadline
                    .is_some_and(|d| self.since_start(now) >= d)
                {
                    self.close(now, DoneReason::Deadline);
                } else if self.first_pass_done()
                    && self.repairs.is_empty()
                    && self.membership.all_complete()
                {
                    // Every member holds everything (also when nobody joined: the node tells
                    // the user that no receiver was there).
                    self.close(now, DoneReason::Complete);
                }
            }
            Phase::Closing { reason, left } => {
                if left == 0 && self.closing_at.is_some_and(|t| now >= t) {
                    self.phase = Phase::Finished;
                    self.events.push_back(SenderEvent::Finished { reason });
                }
            }
            Phase::Finished => {}
        }
    }

    /// Enough receivers joined (or the wait ran out), and each has told what it holds (or
    /// was waited for long enough).
    fn first_pass_may_start(&self, now: Instant) -> bool {
        let enough = self.membership.members.len() >= self.cfg.min_receivers
            || self.since_start(now) >= self.cfg.max_wait;
        enough
            && self
                .membership
                .unreported_until(self.first_receipt_wait())
                .is_none_or(|t| now >= t)
    }

    /// How long the first pass waits for a member's first receipt notice: 4 round trips, at
    /// least 5 ms, at most `first_receipt_wait`.
    fn first_receipt_wait(&self) -> Duration {
        (self.membership.grtt * 4)
            .max(Duration::from_millis(5))
            .min(self.cfg.first_receipt_wait)
    }

    fn close(&mut self, now: Instant, reason: DoneReason) {
        self.phase = Phase::Closing { reason, left: 3 };
        self.closing_at = Some(now);
    }

    /// The next instant at which [`Sender::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Finished => return None,
            // Only the done packets are left to send.
            Phase::Closing { .. } => return self.closing_at,
            _ => {}
        }
        let mut t: Option<Instant> = None;
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        consider(self.carousel.next_announce);
        consider(self.membership.grtt_window_end);
        consider(self.membership.next_scan);
        consider(self.split_timeout());
        if let Some(epoch) = self.epoch {
            match self.phase {
                Phase::Waiting => {
                    // Enough receivers: start at once, not at the next timer (a join arrives
                    // between timers, up to an announce interval before the next one), or
                    // when the wait for their first notices ends.
                    let heard = self.membership.unreported_until(self.first_receipt_wait());
                    if self.membership.members.len() >= self.cfg.min_receivers {
                        consider(Some(heard.unwrap_or(epoch)));
                    }
                    consider(Some(
                        (epoch + self.cfg.max_wait).max(heard.unwrap_or(epoch)),
                    ));
                }
                Phase::Sending => {
                    consider(self.cfg.deadline.map(|d| epoch + d));
                    consider(self.auto_rate.as_ref().and_then(|a| a.next_step));
                    consider(self.first_pass.next_skip_scan);
                    if self.has_paced_work() {
                        // A head repair still gathering NACKs sends nothing before then.
                        let due = match (self.pacer.next_send(), self.repair_gathering()) {
                            (Some(a), Some(b)) if !self.pass_ready() => Some(a.max(b)),
                            (None, Some(b)) if !self.pass_ready() => Some(b),
                            (a, _) => a,
                        };
                        // Split mode: a new plan holds the units back until it has arrived
                        // (with nothing sent yet the pacer names no time: the hold's end).
                        consider(match (due, self.split_hold()) {
                            (Some(d), Some(h)) => Some(d.max(h)),
                            (d, h) => d.or(h),
                        });
                    } else if self.first_pass.next.is_some() {
                        consider(self.first_pass.stall_check);
                    }
                }
                Phase::Closing { .. } => consider(self.closing_at),
                Phase::Finished => {}
            }
        }
        t
    }

    /// Drains one event.
    pub fn poll_event(&mut self) -> Option<SenderEvent> {
        self.events.pop_front()
    }

    /// Writes the next datagram due at `now` into `buf` (at least `unit_size + 64` bytes,
    /// and room for a manifest chunk) and says where it goes, or returns `None` when
    /// nothing is due. For data units only the header is written: the payload follows from
    /// the block source ([`Transmit::payload`]).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        self.start(now);
        if self.phase == Phase::Finished {
            return None;
        }
        if let Some(reply) = self.membership.replies.pop_front() {
            return self.send_reply(reply, buf);
        }
        if self.split.is_some() {
            self.maybe_replan(now);
            if let Some(t) = self.poll_fanout(now, buf) {
                return Some(t);
            }
        }
        if let Phase::Closing { reason, left } = self.phase {
            return self.poll_done(now, buf, reason, left);
        }
        if self.carousel.announce_now && self.split.is_some() {
            if let Some(t) = self.fan_out_announce(now, buf) {
                return Some(t);
            }
        }
        if self.carousel.is_due() {
            return self.poll_carousel(now, buf);
        }
        if self.phase != Phase::Sending {
            self.advance_phase(now);
            return None;
        }
        self.end_work_without_members();
        if self.split_holding(now) {
            return None;
        }
        // Paced data: repairs first, then the first pass.
        if !self.has_paced_work() {
            if self.first_pass.next.is_some() {
                // The first pass waits for its next block to become available.
                self.first_pass.stall_check = Some(now + STALL_RECHECK);
            }
            self.advance_phase(now);
            return None;
        }
        // Most of what is paced is a unit long.
        let unit = UNIT_HEADER_LEN + usize::from(self.cfg.geometry.unit_size);
        if !self.pacer.ready(now, unit) {
            return None;
        }
        let t = self
            .send_repair(now, buf)
            .or_else(|| self.send_first_pass(now, buf))?;
        self.pacer.spend(now, t.datagram_len());
        self.log_sent(now);
        Some(t)
    }

    fn group(&self, len: usize) -> Transmit {
        Transmit {
            destination: Destination::Group,
            len,
            payload: None,
        }
    }
}

impl<S: BlockSource> Endpoint for Sender<S> {
    type Event = SenderEvent;

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        Sender::handle_datagram(self, now, from, bytes)
    }

    fn handle_timeout(&mut self, now: Instant) {
        Sender::handle_timeout(self, now)
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        Sender::poll_transmit(self, now, buf)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Sender::poll_timeout(self)
    }

    fn poll_event(&mut self) -> Option<SenderEvent> {
        Sender::poll_event(self)
    }

    fn is_finished(&self) -> bool {
        Sender::is_finished(self)
    }
}

/// A small sender for the unit tests of the sender's parts.
#[cfg(test)]
mod testing {
    use super::*;
    use crate::wire::{ObjectEntry, UnitPacket};
    use crate::Geometry;

    /// Two blocks of 4 units; only the blocks before `ready` are available.
    pub(super) struct Gated {
        bytes: Vec<u8>,
        pub(super) ready: u32,
    }

    impl BlockSource for Gated {
        fn block(&self, _o: ObjectId, b: BlockIndex) -> &[u8] {
            &self.bytes[b.0 as usize * 32..(b.0 as usize + 1) * 32]
        }
        fn available(&self, _o: ObjectId, b: BlockIndex) -> bool {
            b.0 < self.ready
        }
    }

    pub(super) fn gated_sender() -> Sender<Gated> {
        gated_sender_with(2, 1)
    }

    /// A receipt notice of member `id` with nothing in it and no cookie (tests set what
    /// they need with `..receipt(s, id)`).
    pub(super) fn receipt(s: &Sender<Gated>, id: u64) -> crate::wire::ReceiptRepr {
        crate::wire::ReceiptRepr {
            session: s.cfg.session,
            receiver: ReceiverId(id),
            cookie: 0,
            complete: false,
            echo_timestamp: 0,
            echo_delay_us: 0,
            loss_ppm: 0,
            overflow_ppm: 0,
            queue_ppm: 0,
            watermark_object: ObjectId(0),
            watermark_block: BlockIndex(0),
            blocks_done: 0,
            runs: Vec::new(),
        }
    }

    /// `blocks` blocks of 4 units of 8 bytes; the blocks before `ready` are available.
    pub(super) fn gated_sender_with(blocks: u32, ready: u32) -> Sender<Gated> {
        gated_sender_cfg(blocks, ready, None)
    }

    /// As [`gated_sender_with`], in split mode when `split` is given.
    pub(super) fn gated_sender_cfg(
        blocks: u32,
        ready: u32,
        split: Option<crate::split::SplitConfig>,
    ) -> Sender<Gated> {
        let bytes: Vec<u8> = (0..blocks * 32).map(|i| (i % 251) as u8).collect();
        let manifest = Manifest {
            unit_size: 8,
            units_per_block: 4,
            objects: vec![ObjectEntry {
                name: "a".into(),
                size: bytes.len() as u64,
                hash: *blake3::hash(&bytes).as_bytes(),
                block_hashes: bytes
                    .chunks(32)
                    .map(|c| *blake3::hash(c).as_bytes())
                    .collect(),
            }],
        };
        let cfg = SenderConfig {
            geometry: Geometry {
                unit_size: 8,
                units_per_block: 4,
                max_parity: 4,
            },
            max_wait: Duration::ZERO,
            split,
            ..SenderConfig::default()
        };
        Sender::new(cfg, manifest, Gated { bytes, ready }).unwrap()
    }

    /// Data units the sender gives out at `now`, as (block, unit).
    pub(super) fn units_due(s: &mut Sender<Gated>, now: Instant) -> Vec<(u32, u16)> {
        let mut buf = vec![0u8; 4096];
        let mut out = Vec::new();
        for _ in 0..1000 {
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
            let Some(t) = s.poll_transmit(now, &mut buf) else {
                break;
            };
            if t.payload.is_some() {
                let u = UnitPacket::new_checked(&buf[..t.len + 8]).unwrap();
                out.push((u.block().0, u.index()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::testing::gated_sender;
    use super::*;

    use super::testing::units_due;
    use crate::wire::{BlockRun, ReceiptRepr};

    fn notice(s: &Sender<super::testing::Gated>, id: u64, runs: Vec<BlockRun>) -> ReceiptRepr {
        ReceiptRepr {
            cookie: s.cookie_for(ReceiverId(id), SocketAddr::from(([127, 0, 0, 1], 9))),
            blocks_done: runs.iter().map(|r| u64::from(r.len)).sum(),
            runs,
            ..super::testing::receipt(s, id)
        }
    }

    #[test]
    fn the_first_pass_starts_once_enough_receivers_joined_and_said_what_they_hold() {
        let mut s = gated_sender();
        s.cfg.min_receivers = 1;
        s.cfg.max_wait = Duration::from_secs(10);
        let t0 = Instant::now();
        s.handle_timeout(t0);
        assert!(!s.is_sending());
        // Nothing is due before the next announce while nobody is there.
        assert!(s
            .poll_timeout()
            .is_some_and(|t| t > t0 + Duration::from_millis(50)));
        let t1 = t0 + Duration::from_millis(1);
        s.admit(t1, SocketAddr::from(([127, 0, 0, 1], 9)), ReceiverId(1));
        // Joined, but its first notice (what it holds) is not in: the start waits for it,
        // at most the bounded wait.
        let wait_end = t1 + s.first_receipt_wait();
        assert!(s.poll_timeout().is_some_and(|t| t > t1 && t <= wait_end));
        s.handle_timeout(t1);
        assert!(!s.is_sending());
        // Its notice: due at once, not at the next announce or the end of the wait.
        let t2 = t1 + Duration::from_millis(2);
        let n = notice(&s, 1, Vec::new());
        s.on_receipt(t2, &n);
        assert!(s.poll_timeout().is_some_and(|t| t <= t2));
        s.handle_timeout(t2);
        assert!(s.is_sending());
    }

    /// Announces sent (and the last one's time) by driving `s` from `from` to `to` in 1 ms
    /// steps.
    fn announces_between(s: &mut Sender<super::testing::Gated>, from: Instant, to: Instant) -> u64 {
        let mut buf = vec![0u8; 4096];
        let before = s.stats().announces;
        let mut now = from;
        while now <= to {
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
            while s.poll_transmit(now, &mut buf).is_some() {}
            now += Duration::from_millis(1);
        }
        s.stats().announces - before
    }

    #[test]
    fn a_waiting_origin_session_announces_at_its_shorter_interval_until_it_sends() {
        let mut s = gated_sender();
        s.cfg.min_receivers = 1;
        s.cfg.max_wait = Duration::from_secs(10);
        s.cfg.waiting_announce_interval = Some(Duration::from_millis(10));
        let t0 = Instant::now();
        // 200 ms of waiting: an announce every 10 ms, not every 100.
        let waiting = announces_between(&mut s, t0, t0 + Duration::from_millis(200));
        assert!(
            (19..=21).contains(&waiting),
            "{waiting} announces while waiting"
        );
        assert!(!s.is_sending());
        let t1 = t0 + Duration::from_millis(201);
        s.admit(t1, SocketAddr::from(([127, 0, 0, 1], 9)), ReceiverId(1));
        // The first pass waits for the member's first notice, at most first_receipt_wait.
        let t2 = t1 + s.first_receipt_wait();
        s.handle_timeout(t2);
        assert!(s.is_sending());
        // Sending: back to the announce interval (100 ms).
        let sending = announces_between(&mut s, t2, t2 + Duration::from_millis(400));
        assert!(
            (3..=5).contains(&sending),
            "{sending} announces while sending"
        );
    }

    #[test]
    fn a_large_manifest_goes_round_no_faster_than_the_waiting_byte_rate() {
        let mut s = gated_sender();
        s.cfg.waiting_announce_interval = Some(Duration::from_millis(10));
        // A turn of 64 chunks of 1,200 bytes: 77 KB, 38 ms at 2 MB/s.
        s.cfg.geometry.unit_size = 1200;
        s.carousel.bytes = vec![0; 1 << 20];
        let t = s.announce_interval_now();
        assert!(
            (Duration::from_millis(38)..Duration::from_millis(40)).contains(&t),
            "{t:?}"
        );
        // A megabyte a turn: the usual interval, no longer.
        s.cfg.manifest_chunks_per_announce = 1024;
        assert_eq!(s.announce_interval_now(), s.cfg.announce_interval);
    }

    #[test]
    fn a_receiver_that_never_reports_delays_the_first_pass_by_the_bounded_wait_only() {
        let mut s = gated_sender();
        s.cfg.min_receivers = 1;
        s.cfg.max_wait = Duration::from_secs(10);
        let t0 = Instant::now();
        s.handle_timeout(t0);
        s.admit(t0, SocketAddr::from(([127, 0, 0, 1], 9)), ReceiverId(1));
        let end = t0 + s.first_receipt_wait();
        assert!(end > t0 && s.first_receipt_wait() <= s.cfg.first_receipt_wait);
        s.handle_timeout(end - Duration::from_millis(1));
        assert!(!s.is_sending());
        assert!(s.poll_timeout().is_some_and(|t| t <= end));
        s.handle_timeout(end);
        assert!(s.is_sending());
    }

    #[test]
    fn blocks_every_receiver_reports_at_the_start_are_not_sent() {
        let mut s = gated_sender();
        s.source_mut().ready = 2;
        s.cfg.min_receivers = 2;
        s.cfg.max_wait = Duration::from_secs(10);
        let t0 = Instant::now();
        s.handle_timeout(t0);
        for id in [1, 2] {
            s.admit(t0, SocketAddr::from(([127, 0, 0, 1], 9)), ReceiverId(id));
        }
        let run = |start, len| BlockRun {
            object: ObjectId(0),
            start: BlockIndex(start),
            len,
        };
        // Both hold block 0 (a resumed receive); only one holds block 1.
        let (a, b) = (
            notice(&s, 1, vec![run(0, 2)]),
            notice(&s, 2, vec![run(0, 1)]),
        );
        s.on_receipt(t0, &a);
        s.on_receipt(t0, &b);
        s.handle_timeout(t0);
        assert!(s.is_sending());
        // The skip set is filled when the first pass may start, before anything is sent (a
        // data thread started now must not send block 0).
        assert!(s.skip_set().get(0) && !s.skip_set().get(1));
        let sent = units_due(&mut s, t0 + Duration::from_millis(1));
        assert_eq!(sent, [(1, 0), (1, 1), (1, 2), (1, 3)]);
    }
}
