//! What a receiver tells the server: NACKs after a random backoff (docs/DESIGN.md
//! "Protocol"), receipt notices with what they report (receive status, loss, the socket's
//! overflow and fill, the echoed timestamp), joins, leaves and priority requests.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Receiver, ReceiverEvent};
use crate::numbering::BlockAddr;
use crate::store::BlockStore;
use crate::wire::{
    AcceptRepr, BlockIndex, BlockRun, Holes, JoinRepr, LeaveReason, LeaveRepr, NackEntry, NackRepr,
    ObjectId, Packet, PriorityRepr, ReceiptRepr, SessionId, UnitIndex,
};
use crate::{micros, Destination, Transmit};

/// Blocks just ahead of the first pass that a priority request leaves to it.
const PRIORITY_MARGIN: u64 = 4;

/// Once the first pass is over, a NACK is asked again this many GRTTs (and 1 ms) after it:
/// nothing is gathered then, the repair follows the NACK within a round trip and the quarter
/// is for the queue ahead of it (docs/DESIGN.md, 2026-12-03, "the tail's NACKs sooner").
const TAIL_RETRY_GRTTS: f64 = 1.25;

/// Groups of at most this many receivers NACK the tail after a backoff window of
/// [`TAIL_BACKOFF_FACTOR`] GRTTs instead of `backoff_factor`: the window is there so that the
/// first NACKs' repairs spare the others theirs, which in a group this small spares few
/// (simulated: the same NACK count at 16 to 100 receivers, 60 % more at 1,000).
const QUICK_TAIL_GROUP: u32 = 128;

/// The tail's backoff window in GRTTs for a group of at most [`QUICK_TAIL_GROUP`].
const TAIL_BACKOFF_FACTOR: f64 = 1.0;

/// Runs of verified blocks a periodic receipt notice reports (the first one after an accept
/// carries as many as fit the datagram).
const NOTICE_RUNS: usize = 32;

enum Out {
    Join,
    Leave(LeaveReason),
    Receipt,
    Priority(PriorityRepr),
}

/// When block `seq`'s NACK timer fires (ordered by time, then block).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct NackTimer {
    at: Instant,
    seq: u64,
}

/// The latest server timestamp and when we took its packet, echoed in receipt notices (with
/// how long that packet had waited in our socket, [`super::lag::QueueLag::lag`]).
#[derive(Clone, Copy, Debug)]
pub(super) struct Echo {
    pub(super) timestamp: u32,
    pub(super) at: Instant,
}

/// The data socket's counters, from the node: datagrams received, and dropped for lack of
/// buffer space (`SO_RXQ_OVFL`, wrapping).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SocketCounts {
    received: u64,
    dropped: u32,
}

/// The first repeat of an unanswered join; later ones wait twice as long each, up to
/// [`ReceiverConfig::join_interval`](super::ReceiverConfig::join_interval).
const FIRST_JOIN_RETRY: Duration = Duration::from_millis(10);

/// The NACK timers, the out-queue, and what the next receipt notice reports.
pub(super) struct Feedback {
    pub(super) timers: BTreeSet<NackTimer>,
    pub(super) nack_due: BTreeSet<u64>,
    out: VecDeque<Out>,
    /// A priority request made before the server accepted us.
    held_priority: Option<PriorityRepr>,
    pub(super) next_join: Option<Instant>,
    /// Joins sent since the last accept or new source (the retry interval doubles with each).
    join_tries: u32,
    pub(super) next_receipt: Option<Instant>,
    pub(super) complete_acked: bool,
    complete_tries: u32,
    /// The latest server timestamp and when it arrived, echoed in receipt notices.
    pub(super) echo: Option<Echo>,
    loss_units: u64,
    expected_units: u64,
    /// The data socket's datagrams received and dropped for lack of buffer space (from the
    /// node), now and at the last receipt notice.
    socket: SocketCounts,
    socket_at_receipt: SocketCounts,
    /// The fullest the data socket's receive buffer was seen since the last notice (ppm).
    queue_max: u32,
    /// Where the next notice's runs of verified blocks start (global numbering): each
    /// notice goes on from where the last one stopped, so over a few notices the server hears
    /// of every run, however many there are.
    runs_from: u64,
    /// Notices sent since the server accepted us.
    notices: u64,
}

impl Feedback {
    /// A block of `k` units whose first pass is over lost `lost` of them: counted together,
    /// when its loss is known (its first NACK timer, or whole before that), so that a notice's
    /// `loss_ppm` is the loss of the blocks it counts. Counted apart (the units when the pass
    /// went by, the loss a backoff later), the notices after the pass counted loss against
    /// nothing: 30 % where 5 % was lost, and the rate was cut to a third for the tail
    /// (docs/DESIGN.md, "loss counted against its own blocks").
    pub(super) fn count_loss(&mut self, k: u16, lost: u64) {
        self.expected_units += u64::from(k);
        self.loss_units += lost;
    }

    pub(super) fn new() -> Self {
        Feedback {
            timers: BTreeSet::new(),
            nack_due: BTreeSet::new(),
            out: VecDeque::new(),
            held_priority: None,
            next_join: None,
            join_tries: 0,
            next_receipt: None,
            complete_acked: false,
            complete_tries: 0,
            echo: None,
            loss_units: 0,
            expected_units: 0,
            socket: SocketCounts::default(),
            socket_at_receipt: SocketCounts::default(),
            queue_max: 0,
            runs_from: 0,
            notices: 0,
        }
    }

    /// Drops block `seq`'s NACK timer, set for `at`.
    pub(super) fn cancel_nack(&mut self, seq: u64, at: Instant) {
        self.timers.remove(&NackTimer { at, seq });
    }

    /// A fail-over: a new server, a new socket. Join it at `join` (once the manifest is
    /// here); nothing is echoed or acknowledged yet.
    pub(super) fn new_source(&mut self, join: Option<Instant>) {
        self.complete_acked = false;
        self.complete_tries = 0;
        self.echo = None;
        self.next_receipt = None;
        self.next_join = join;
        self.join_tries = 0;
        self.socket = SocketCounts::default();
        self.socket_at_receipt = SocketCounts::default();
        self.runs_from = 0;
        self.notices = 0;
    }

    /// The earliest timer: a NACK, or (not yet accepted) a join, or (accepted) a notice.
    pub(super) fn next_timeout(&self, accepted: bool) -> Option<Instant> {
        let nack = self.timers.first().map(|t| t.at);
        let join = self.next_join.filter(|_| !accepted);
        let receipt = self.next_receipt.filter(|_| accepted);
        [nack, join, receipt].into_iter().flatten().min()
    }
}

impl<S: BlockStore> Receiver<S> {
    /// Ask the server to send these blocks next (play and seek).
    pub fn request_priority(
        &mut self,
        object: ObjectId,
        block: BlockIndex,
        unit: UnitIndex,
        count: u32,
    ) {
        let Some(session) = self.session else {
            return;
        };
        // Ask only when the block wanted now is one the first pass is not about to deliver:
        // blocks it has gone by are repaired by NACKs, blocks just ahead of it arrive anyway.
        // Asking for those would only send them twice.
        let (mut block, mut count, mut unit) = (block.0, count.max(1), unit);
        if let Some(first) = self.numbering.seq(object, BlockIndex(block)) {
            if first <= self.first_pass.frontier + PRIORITY_MARGIN {
                return;
            }
            let end = first + u64::from(count);
            // Blocks already verified, or already arriving (some units here: NACKs finish
            // them), are not asked for again.
            let untouched = |s: u64| {
                !self.blocks.done.get(s as usize)
                    && self.blocks.states[s as usize].as_ref().is_none_or(|b| {
                        b.have.count_ones() == 0 && b.parity.is_empty() && !b.verifying
                    })
            };
            let Some(start) = (first..end).find(|&s| untouched(s)) else {
                return;
            };
            if start != first {
                unit = UnitIndex(0);
            }
            // Only the run of untouched blocks from there: the rest is arriving already.
            let run_end = (start..end).find(|&s| !untouched(s)).unwrap_or(end);
            block += (start - first) as u32;
            count = (run_end - start) as u32;
        }
        let p = PriorityRepr {
            session,
            receiver: self.cfg.id,
            cookie: 0,
            object,
            block: BlockIndex(block),
            unit,
            count,
        };
        if self.row.is_some() {
            self.feedback.out.push_back(Out::Priority(p));
        } else {
            // The server ignores requests from receivers it has not accepted: hold the latest
            // until it has.
            self.feedback.held_priority = Some(p);
        }
    }

    /// Leave the session (tells the server).
    pub fn leave(&mut self, reason: LeaveReason) {
        if self.session.is_some() && !self.ended {
            self.feedback.out.push_back(Out::Leave(reason));
        }
        self.ended = true;
        self.feedback.timers.clear();
    }

    /// The node's count of datagrams its data socket received and of those the socket dropped
    /// for lack of buffer space (`SO_RXQ_OVFL`, wrapping), both since it was opened. Receipt
    /// notices report the dropped share since the previous notice (`overflow_ppm`): the
    /// server slows down for that, not for loss on the way.
    pub fn note_socket(&mut self, received: u64, dropped: u32) {
        self.feedback.socket = SocketCounts { received, dropped };
        self.stats.socket_drops = u64::from(dropped);
    }

    /// How full the node found its data socket's receive buffer (parts per million of it),
    /// before a read. Receipt notices report the fullest since the previous one
    /// (`queue_ppm`): the server's automatic rate stops rising before the socket overflows.
    pub fn note_queue(&mut self, ppm: u32) {
        self.feedback.queue_max = self.feedback.queue_max.max(ppm.min(1_000_000));
    }

    /// The server asks us to prove our address (wire.md §6.1): ask again at once, echoing
    /// its cookie (a Join, or in split mode before the manifest a Solicit).
    pub(super) fn on_challenge(&mut self, now: Instant, cookie: u64) {
        if self.row.is_some() {
            return;
        }
        self.cookie = cookie;
        if self.cfg.split.is_some() && self.manifest.is_none() {
            self.split.solicit_now();
        } else if self.feedback.next_join.is_some() {
            self.send_join(now);
        }
    }

    /// The server accepted our join: notices start, and NACKs held back until now can go.
    pub(super) fn on_accept(&mut self, now: Instant, a: &AcceptRepr) {
        self.last_heard = Some(now);
        if a.is_challenge() {
            self.on_challenge(now, a.cookie);
            return;
        }
        if self.row.is_none() {
            self.cookie = a.cookie;
            self.row = Some(a.row);
            self.feedback.next_join = None;
            self.feedback.join_tries = 0;
            self.events
                .push_back(ReceiverEvent::Accepted { row: a.row });
            // Holding blocks already (a resumed receive), the first notice goes at once: the
            // server's first pass waits for it and skips what every receiver holds. With
            // nothing to tell, at the usual interval (a group joining together does not
            // answer its accepts with a burst of notices).
            let first = if self.blocks.done.count_ones() > 0 {
                now
            } else {
                now + self.receipt_interval()
            };
            self.feedback.next_receipt = Some(first);
            // NACKs held back until now can go.
            let held: Vec<u64> = self.feedback.nack_due.iter().copied().collect();
            for seq in held {
                self.arm(seq, now);
            }
            self.feedback.nack_due.clear();
            // A priority request made before we were accepted goes now.
            if let Some(p) = self.feedback.held_priority.take() {
                self.feedback.out.push_back(Out::Priority(p));
            }
        }
    }

    /// Schedules a NACK for block `seq` after a random backoff.
    pub(super) fn arm(&mut self, seq: u64, now: Instant) {
        if self.blocks.done.get(seq as usize) {
            return;
        }
        let unmeasured = self.cfg.split.is_some() && !self.split.units_seen();
        let at = now + self.backoff(seq);
        let k = self.numbering.units_in(seq);
        let state = self.blocks.state(seq, k);
        state.armed_unmeasured = unmeasured;
        state.nacked_at = None;
        if let Some(old) = state.nack_at.replace(at) {
            self.feedback.timers.remove(&NackTimer { at: old, seq });
        }
        self.feedback.timers.insert(NackTimer { at, seq });
    }

    /// A fresh draw of block `seq`'s first-NACK backoff.
    fn backoff(&mut self, seq: u64) -> Duration {
        let k = self.numbering.units_in(seq);
        let grtt = self.grtt();
        let n = f64::from(self.group_size()) + 1.0;
        let x = self.rng.unit();
        let window = grtt.as_secs_f64() * self.backoff_factor();
        let missing = usize::from(k).saturating_sub(self.blocks.state(seq, k).held());
        // NORM-style backoff: most receivers draw near the top of the window, few early, so
        // the first NACKs' repairs reach the rest before their timers fire. Receivers that
        // miss more units go earlier: their repairs cover those that miss fewer.
        let spread = (1.0 + x.ln() / n.ln()).max(0.0);
        let bias = 0.5 + 0.5 / (missing.max(1) as f64).min(8.0);
        // Split mode: copies come later than the server's own packets by the copy path's
        // delay; a NACK before that would ask for units on their way. And whatever answers
        // another member's NACK reaches us behind what our socket holds now.
        Duration::from_secs_f64(window * spread * bias)
            + grtt / 4
            + self.split.copy_lag
            + self.lag.lag()
    }

    /// Queues a join and sets when to repeat it: [`FIRST_JOIN_RETRY`] after the first,
    /// doubling up to `join_interval`, jittered (a group that heard the same announce does
    /// not repeat together), and never sooner than two GRTTs. Each step of the handshake (the
    /// join, the challenge, the join with the cookie, the accept) can be lost; waiting the
    /// whole interval for each made a lossy start up to 100 ms later per loss (measured,
    /// docs/DESIGN.md 2026-12-02).
    fn send_join(&mut self, now: Instant) {
        self.feedback.out.push_back(Out::Join);
        let tries = self.feedback.join_tries.min(16);
        self.feedback.join_tries = self.feedback.join_tries.saturating_add(1);
        let base = FIRST_JOIN_RETRY
            .saturating_mul(1 << tries)
            .min(self.cfg.join_interval);
        let jittered = base.mul_f64(0.75 + 0.5 * self.rng.unit());
        self.feedback.next_join = Some(now + jittered.max(self.grtt() * 2));
    }

    fn receipt_interval(&mut self) -> Duration {
        let spread = f64::from(self.group_size()) / self.cfg.group_receipt_rate.max(1.0);
        let base = self.cfg.min_receipt_interval.as_secs_f64().max(spread);
        // Jitter so that a group that joined together does not report together.
        Duration::from_secs_f64(base * (0.75 + 0.5 * self.rng.unit()))
    }

    /// Timers: a join until accepted, receipt notices once accepted, and NACK timers.
    pub(super) fn feedback_timeout(&mut self, now: Instant) {
        if self.feedback.next_join.is_some_and(|t| now >= t) && self.row.is_none() {
            self.send_join(now);
        }
        if self.feedback.next_receipt.is_some_and(|t| now >= t) && self.row.is_some() {
            if self.complete && self.cfg.split.is_some() {
                // Split mode: still forwarding copies, so still reporting (the server times
                // out a member that falls silent, complete or not).
                self.feedback.out.push_back(Out::Receipt);
                self.feedback.next_receipt = Some(now + self.receipt_interval());
            } else if self.complete && self.feedback.complete_acked {
                self.feedback.next_receipt = None;
            } else {
                self.feedback.out.push_back(Out::Receipt);
                self.feedback.next_receipt = if self.complete {
                    self.feedback.complete_tries += 1;
                    (self.feedback.complete_tries < 20)
                        .then(|| now + (self.grtt() * 4).max(Duration::from_millis(20)))
                } else {
                    Some(now + self.receipt_interval())
                };
            }
        }
        while let Some(&NackTimer { at, seq }) = self.feedback.timers.first() {
            if at > now {
                break;
            }
            self.feedback.timers.pop_first();
            self.on_nack_timer(now, seq);
        }
    }

    fn on_nack_timer(&mut self, now: Instant, seq: u64) {
        let k = self.numbering.units_in(seq);
        let grtt = self.grtt();
        let retry = self.nack_retry();
        let Some(state) = self.blocks.states[seq as usize].as_mut() else {
            return;
        };
        state.nack_at = None;
        if state.verifying {
            // Out for rebuild and hashing: the answer decides (a failure re-arms it).
            return;
        }
        if self.cfg.split.is_some() && state.armed_unmeasured {
            if self.split.wait_for_copies(now, grtt) {
                // No unit yet: look again a round trip later, not asking for units that may
                // be on their way.
                let at = now + grtt.max(Duration::from_millis(1));
                state.nack_at = Some(at);
                self.feedback.timers.insert(NackTimer { at, seq });
                return;
            }
            if self.split.units_seen() {
                // Copies are coming: the backoff again, with the copy lag as measured now.
                self.arm(seq, now);
                return;
            }
            // No unit within the wait: the path is taken to be broken, NACK now.
            state.armed_unmeasured = false;
        }
        if let Some(due) = state.nacked_at.map(|t| t + retry) {
            if now < due {
                // A retry, but our socket's queue grew since the NACK: its repair may be
                // waiting in it.
                state.nack_at = Some(due);
                self.feedback.timers.insert(NackTimer { at: due, seq });
                return;
            }
        }
        let held = state.held();
        let missing = usize::from(k).saturating_sub(held);
        if !state.loss_counted {
            // Units still missing once the backoff has passed were lost (late ones were not).
            state.loss_counted = true;
            let lost = usize::from(k) - state.have.count_ones();
            self.feedback.count_loss(k, lost as u64);
        }
        if missing == 0 {
            return;
        }
        // Parity of a round still on its way counts as coming.
        let wait_until = state.last_parity_at.map(|t| t + grtt * 2);
        let coming = if wait_until.is_some_and(|t| now < t) {
            usize::from(state.round_end.saturating_sub(state.parity_seen))
        } else {
            0
        };
        if missing <= coming {
            let at = wait_until.unwrap_or(now + grtt);
            state.nack_at = Some(at);
            self.feedback.timers.insert(NackTimer { at, seq });
            return;
        }
        if self.row.is_none() {
            // Not accepted yet: the server would ignore it. Send once accepted.
            self.feedback.nack_due.insert(seq);
            return;
        }
        state.nacked_at = Some(now);
        self.feedback.nack_due.insert(seq);
        // If neither the NACK nor its repair arrives, ask again.
        let at = now + retry;
        state.nack_at = Some(at);
        self.feedback.timers.insert(NackTimer { at, seq });
    }

    /// The NACK backoff window in GRTTs: `backoff_factor`, or once the first pass is over
    /// in a group of at most [`QUICK_TAIL_GROUP`], [`TAIL_BACKOFF_FACTOR`] (not in split
    /// mode, whose tail waits for members' copies and was not measured with it).
    fn backoff_factor(&self) -> f64 {
        if self.first_pass_over()
            && self.group_size() <= QUICK_TAIL_GROUP
            && self.cfg.split.is_none()
        {
            self.cfg.backoff_factor.min(TAIL_BACKOFF_FACTOR)
        } else {
            self.cfg.backoff_factor
        }
    }

    /// How long after a NACK it is asked again if neither it nor its repair arrived: while
    /// the first pass runs, after the others' backoff window (the server gathers their NACKs
    /// for a block) and two round trips; once the pass is over nothing is gathered and the
    /// answer follows the NACK within a round trip, so after [`TAIL_RETRY_GRTTS`] (a repair
    /// lost at the end of a transfer otherwise cost six GRTTs of idle time there, then two).
    fn nack_retry(&self) -> Duration {
        let grtts = if self.first_pass_over() {
            TAIL_RETRY_GRTTS
        } else {
            2.0 + self.cfg.backoff_factor
        };
        // The repair comes behind what our socket holds now: the GRTT leaves that out.
        self.grtt().mul_f64(grtts) + Duration::from_millis(1) + self.split.copy_lag + self.lag.lag()
    }

    /// The first pass is over: a retry armed while it ran (six GRTTs after its NACK) comes
    /// [`TAIL_RETRY_GRTTS`] after the NACK instead, as one armed from now on would
    /// ([`Self::on_nack_timer`]); and a first NACK still in its backoff is drawn again from
    /// the tail's window if that makes it sooner.
    pub(super) fn pull_in_timers(&mut self, now: Instant) {
        let soon = self.nack_retry();
        let redraw = self.backoff_factor() < self.cfg.backoff_factor;
        let timers: Vec<NackTimer> = self.feedback.timers.iter().copied().collect();
        for t in timers {
            let Some(state) = self
                .blocks
                .states
                .get(t.seq as usize)
                .and_then(Option::as_ref)
            else {
                continue;
            };
            let at = match state.nacked_at {
                Some(nacked) => (nacked + soon).max(now),
                None if redraw && !state.armed_unmeasured => now + self.backoff(t.seq),
                None => continue,
            };
            if at < t.at {
                self.feedback.timers.remove(&t);
                self.feedback.timers.insert(NackTimer { at, seq: t.seq });
                if let Some(state) = self.blocks.states[t.seq as usize].as_mut() {
                    state.nack_at = Some(at);
                }
            }
        }
    }

    /// The next packet for the server: what is queued (joins, leaves, priority requests,
    /// receipt notices), else a NACK of the blocks due.
    pub(super) fn poll_feedback(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let session = self.session?;
        let control = self.control_addr()?;
        let receiver = self.cfg.id;
        let cookie = self.cookie;
        let packet = if let Some(out) = self.feedback.out.pop_front() {
            match out {
                Out::Join => Packet::Join(JoinRepr {
                    session,
                    receiver,
                    cookie,
                }),
                Out::Leave(reason) => Packet::Leave(LeaveRepr {
                    session,
                    receiver,
                    cookie,
                    reason,
                }),
                Out::Priority(p) => Packet::Priority(PriorityRepr { cookie, ..p }),
                Out::Receipt => {
                    let r = self.receipt(now);
                    self.stats.receipts += 1;
                    self.stats.receipt_bytes += r.buffer_len() as u64;
                    Packet::Receipt(r)
                }
            }
        } else if self.row.is_some() && !self.feedback.nack_due.is_empty() && !self.ended {
            let n = self.build_nack(session);
            self.stats.nacks += 1;
            self.stats.nack_entries += n.entries.len() as u64;
            self.stats.nack_bytes += n.buffer_len() as u64;
            Packet::Nack(n)
        } else {
            return None;
        };
        let len = packet.emit(buf).ok()?;
        Some(peer(control, len))
    }

    fn build_nack(&mut self, session: SessionId) -> NackRepr {
        let mut n = NackRepr {
            session,
            receiver: self.cfg.id,
            cookie: self.cookie,
            entries: Vec::new(),
        };
        let mut len = n.buffer_len();
        while let Some(&seq) = self.feedback.nack_due.first() {
            let k = self.numbering.units_in(seq);
            let Some(state) = self.blocks.states[seq as usize].as_ref() else {
                self.feedback.nack_due.pop_first();
                continue;
            };
            let missing = usize::from(k).saturating_sub(state.held());
            if missing == 0 || state.verifying {
                self.feedback.nack_due.pop_first();
                continue;
            }
            let runs: Vec<(u16, u16)> = state
                .have
                .zero_runs()
                .map(|(s, l)| (s as u16, l as u16))
                .collect();
            let holes = if runs.len() * 4 <= usize::from(k).div_ceil(8) {
                Holes::Ranges(runs)
            } else {
                let mut bits = vec![0u8; usize::from(k).div_ceil(8)];
                for u in state.have.iter_zeros() {
                    bits[u / 8] |= 0x80 >> (u % 8);
                }
                Holes::Bitmap(bits)
            };
            let BlockAddr { object, block } = self.numbering.addr(seq);
            let entry = NackEntry {
                object,
                block,
                missing: missing as u16,
                // A NACK goes only once the last round is over: its parity is sent, whether
                // it arrived or was lost.
                parity_seen: state.parity_seen.max(state.round_end),
                holes,
            };
            let add = NackRepr::entry_len(&entry);
            if !n.entries.is_empty() && len + add > self.cfg.max_datagram {
                break;
            }
            len += add;
            n.entries.push(entry);
            self.feedback.nack_due.pop_first();
        }
        n
    }

    fn receipt(&mut self, now: Instant) -> ReceiptRepr {
        let (echo_timestamp, echo_delay_us) = match self.feedback.echo {
            // Held since we took it, and in our socket before that: the server's round trip
            // is the path's. Counted in, a receiver behind a full buffer made the GRTT 70 ms
            // where the path takes 0.2, and every repair round of the tail waited that long
            // after the buffers had drained (docs/DESIGN.md, "the GRTT leaves the receivers'
            // queues out").
            Some(e) => (
                e.timestamp,
                micros(now.saturating_duration_since(e.at) + self.lag.lag()),
            ),
            None => (0, 0),
        };
        let total = self.numbering.total();
        let (watermark_object, watermark_block) = if self.blocks.prefix >= total {
            (ObjectId(self.numbering.objects() as u32), BlockIndex(0))
        } else {
            let a = self.numbering.addr(self.blocks.prefix);
            (a.object, a.block)
        };
        // The first notice after an accept reports as many runs as the datagram holds; later
        // ones a few, going on from where the last stopped.
        let limit = if self.feedback.notices == 0 {
            (self.cfg.max_datagram.saturating_sub(ReceiptRepr::BASE_LEN) / ReceiptRepr::RUN_LEN)
                .max(NOTICE_RUNS)
        } else {
            NOTICE_RUNS
        };
        let from = self.feedback.runs_from.max(self.blocks.prefix);
        let mut runs = self.done_runs(from, limit);
        if runs.len() < limit && from > self.blocks.prefix {
            // The end was reached: start over from the watermark.
            let more = self.done_runs(self.blocks.prefix, limit - runs.len());
            runs.extend(more.into_iter().filter(|r| {
                self.numbering
                    .seq(r.object, r.start)
                    .is_some_and(|s| s < from)
            }));
        }
        self.feedback.runs_from = match runs.last() {
            Some(r) if runs.len() >= limit => self
                .numbering
                .seq(r.object, r.start)
                .map_or(0, |s| s + u64::from(r.len)),
            _ => 0,
        };
        self.feedback.notices += 1;
        let fb = &mut self.feedback;
        let loss_ppm = (fb.loss_units * 1_000_000)
            .checked_div(fb.expected_units)
            .map_or(0, |p| p.min(1_000_000) as u32);
        fb.loss_units = 0;
        fb.expected_units = 0;
        let SocketCounts { received, dropped } = fb.socket;
        let SocketCounts {
            received: r0,
            dropped: d0,
        } = fb.socket_at_receipt;
        // Counters that went backwards belong to a new socket (a fail-over): count from 0.
        let (got, lost) = if received < r0 || dropped < d0 {
            (received, u64::from(dropped))
        } else {
            (received - r0, u64::from(dropped - d0))
        };
        let overflow_ppm = (lost * 1_000_000)
            .checked_div(got + lost)
            .map_or(0, |p| p.min(1_000_000) as u32);
        fb.socket_at_receipt = fb.socket;
        ReceiptRepr {
            session: self.session.unwrap_or_default(),
            receiver: self.cfg.id,
            cookie: self.cookie,
            complete: self.complete,
            echo_timestamp,
            echo_delay_us,
            loss_ppm,
            overflow_ppm,
            queue_ppm: std::mem::take(&mut self.feedback.queue_max),
            watermark_object,
            watermark_block,
            blocks_done: self.blocks.done.count_ones() as u64,
            runs,
        }
    }

    /// Up to `limit` runs of verified blocks from `from` on, each inside its object.
    fn done_runs(&self, from: u64, limit: usize) -> Vec<BlockRun> {
        let total = self.numbering.total();
        let mut runs = Vec::new();
        let mut seq = from;
        while seq < total && runs.len() < limit {
            if !self.blocks.done.get(seq as usize) {
                seq += 1;
                continue;
            }
            let BlockAddr {
                object,
                block: start,
            } = self.numbering.addr(seq);
            let obj_end = self.numbering.object_end(object);
            let mut end = seq;
            while end < obj_end && self.blocks.done.get(end as usize) {
                end += 1;
            }
            runs.push(BlockRun {
                object,
                start,
                len: (end - seq) as u32,
            });
            seq = end;
        }
        runs
    }
}

/// A datagram of `len` bytes to `to` by unicast.
pub(super) fn peer(to: SocketAddr, len: usize) -> Transmit {
    Transmit {
        destination: Destination::Peer(to),
        len,
        payload: None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use crate::wire::{BlockIndex, Manifest, ObjectEntry, ObjectId, Packet, ReceiverId, UnitIndex};
    use crate::{
        Destination, Geometry, MemStore, Receiver, ReceiverConfig, Sender, SenderConfig,
        SliceSource,
    };

    /// Sends what `from` has due to `to`, as the simulator would (no loss).
    fn deliver_sender(s: &mut Sender<SliceSource<'_>>, r: &mut Receiver<MemStore>, now: Instant) {
        let mut buf = vec![0u8; 4096];
        while let Some(t) = s.poll_transmit(now, &mut buf) {
            if t.payload.is_none() {
                r.handle_datagram(now, SocketAddr::from(([127, 0, 0, 1], 1)), &buf[..t.len]);
            }
        }
    }

    #[test]
    fn a_priority_request_made_before_acceptance_goes_once_accepted() {
        // 32 blocks of 8 units of 256 bytes.
        let content = vec![7u8; 2048 * 32];
        let geometry = Geometry {
            unit_size: 256,
            units_per_block: 8,
            max_parity: 8,
        };
        let manifest = Manifest {
            unit_size: 256,
            units_per_block: 8,
            objects: vec![ObjectEntry::from_content("a", &content, 2048)],
        };
        let t0 = Instant::now();
        let mut s = Sender::new(
            SenderConfig {
                geometry,
                control: SocketAddr::from(([127, 0, 0, 1], 4000)),
                min_receivers: 2,
                max_wait: Duration::from_secs(60),
                ..SenderConfig::default()
            },
            manifest,
            SliceSource::new(vec![&content[..]], 2048),
        )
        .expect("sender");
        let mut r = Receiver::new(
            ReceiverConfig {
                id: ReceiverId(9),
                ..ReceiverConfig::default()
            },
            MemStore::default(),
        );
        deliver_sender(&mut s, &mut r, t0);
        assert!(r.manifest().is_some(), "announce and manifest arrived");
        r.request_priority(ObjectId(0), BlockIndex(20), UnitIndex(0), 2);
        let mut buf = vec![0u8; 4096];
        r.handle_timeout(t0);
        let mut kinds = Vec::new();
        while let Some(t) = r.poll_transmit(t0, &mut buf) {
            let Destination::Peer(_) = t.destination else {
                panic!("a receiver sends to the server");
            };
            let p = Packet::parse(&buf[..t.len]).expect("valid");
            kinds.push(matches!(p, Packet::Priority(_)));
            s.handle_datagram(t0, SocketAddr::from(([127, 0, 0, 2], 2)), &buf[..t.len]);
        }
        assert_eq!(kinds, vec![false], "only the join before acceptance");
        // The challenge, the join that echoes its cookie, the accept; then the held request.
        let mut priority = 0;
        for _ in 0..4 {
            deliver_sender(&mut s, &mut r, t0);
            while let Some(t) = r.poll_transmit(t0, &mut buf) {
                if let Ok(Packet::Priority(p)) = Packet::parse(&buf[..t.len]) {
                    assert_eq!((p.block, p.count), (BlockIndex(20), 2));
                    priority += 1;
                }
                s.handle_datagram(t0, SocketAddr::from(([127, 0, 0, 2], 2)), &buf[..t.len]);
            }
        }
        assert_eq!(priority, 1, "the held request went after the accept");
    }
}
