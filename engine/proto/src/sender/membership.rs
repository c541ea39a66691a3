//! Who is in the session: joins, leaves and timeouts; receipt notices turned into the status
//! matrix, the group round-trip time, each member's delivery rate and the congestion summary
//! `--rate auto` follows.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use blockcast_status::{RowId, StatusMatrix};

use super::guard::RepairBudget;
use super::{MemberReport, Phase, Sender, SenderEvent};
use crate::rate::Congestion;
use crate::store::BlockSource;
use crate::wire::{AcceptRepr, DoneRepr, Packet, ReceiptRepr, ReceiverId};
use crate::{Destination, Transmit};

pub(super) struct Member {
    pub(super) addr: SocketAddr,
    pub(super) row: RowId,
    /// When it was accepted.
    joined: Instant,
    /// Its first receipt notice arrived (it says what the member holds already).
    reported: bool,
    last_heard: Instant,
    pub(super) complete: bool,
    pub(super) rtt: Option<Duration>,
    /// Its last send->receipt samples, microseconds, oldest overwritten first, and how many
    /// it has had: split mode's capacity weights take the least of them
    /// ([`crate::split::RECENT_RTTS`]).
    pub(super) recent_rtts: [u32; crate::split::RECENT_RTTS],
    pub(super) rtt_samples: u32,
    pub(super) loss_ppm: u32,
    /// Its loss rate, smoothed over the notices that reported any (parts per million).
    pub(super) loss_est_ppm: u32,
    /// Its socket's overflow share, from its latest notice (parts per million).
    overflow_ppm: u32,
    /// How full its socket's receive buffer got, from its latest notice (parts per million).
    queue_ppm: u32,
    /// The buffer fill its previous notice reported (falling: it is draining).
    queue_prev_ppm: u32,
    /// Its notices' pace: when the latest came, and the usual time between two (smoothed
    /// over the gaps that were not pauses).
    notice_at: Option<Instant>,
    notice_gap: Option<Duration>,
    /// Its latest notice came after a pause ([`PAUSE_GAPS`] usual gaps or more): its thread
    /// was off its core, and the queue it found came in while it was away.
    paused: bool,
    /// For `--rate auto` to tell stale notices from fresh ones: the send time its previous
    /// notice echoed (the last unit it had read then: its latest notice's overflow counts
    /// units sent after it) and when that notice came (its latest notice's queue fill was
    /// seen since), and the same of its latest notice.
    window_from: Option<(u32, Instant)>,
    echoed: Option<(u32, Instant)>,
    /// Its verified blocks at its previous notice, and when that notice came.
    delivered: Option<Delivered>,
    /// Bytes per second it verified between notices, smoothed; 0 until measured.
    delivery: u64,
    /// Blocks before this are marked held in the status matrix.
    marked: u64,
    /// The zone it named (split mode; 0 otherwise).
    pub(super) zone: u16,
    /// The cookie for its address, which its packets echo (wire.md §6.1).
    pub(super) cookie: u64,
    /// What it may still ask to be repaired.
    pub(super) budget: RepairBudget,
}

/// Members that left complete (expired after falling silent), kept for the summary: at most
/// this many.
const DEPARTED_KEPT: usize = 4096;

/// A notice that comes this many of its member's usual gaps after the one before comes after
/// a pause: the receive thread was kept off its core (another process, the host's other
/// work), or its notices were lost. Notices are jittered by a quarter either way, so two in a
/// row are never this far apart otherwise.
const PAUSE_GAPS: u32 = 2;

/// A member's count of verified blocks, as of one receipt notice.
#[derive(Clone, Copy, Debug)]
struct Delivered {
    at: Instant,
    blocks: u64,
}

/// A unicast answer to one receiver.
pub(super) enum Reply {
    /// Its join is accepted: it has row `row` of the status matrix.
    Accept {
        to: SocketAddr,
        receiver: ReceiverId,
        row: u32,
        cookie: u64,
    },
    /// Prove your address: send again with this cookie (wire.md §6.1).
    Challenge {
        to: SocketAddr,
        receiver: ReceiverId,
        cookie: u64,
    },
    /// It holds everything (the answer to its final receipt notices).
    Done {
        to: SocketAddr,
        receiver: ReceiverId,
    },
}

/// The members, the status matrix their receipt notices fill, and the group round-trip
/// time their echoes measure.
pub(super) struct Membership {
    pub(super) members: BTreeMap<ReceiverId, Member>,
    pub(super) matrix: StatusMatrix,
    /// Receivers ever accepted.
    pub(super) ever_joined: usize,
    /// Answers to receivers, sent before anything else.
    pub(super) replies: VecDeque<Reply>,
    pub(super) grtt: Duration,
    /// The slowest send->receipt time measured in the current window.
    grtt_window_max: Option<Duration>,
    pub(super) grtt_window_end: Option<Instant>,
    /// When to look for members that fell silent.
    pub(super) next_scan: Option<Instant>,
    /// Some member was refused repairs (there may be slow members to drop).
    pub(super) any_denied: bool,
    /// Members that expired complete, for the summary.
    departed: Vec<MemberReport>,
    /// A member still receiving found its buffer more than a tenth full at its latest notice
    /// ([`Sender::receivers_behind`]), as of `behind_checked` or a notice since.
    behind: bool,
    behind_checked: Option<Instant>,
}

/// How often whether every member's buffer has drained is looked at again (it looks at
/// every member): a notice that finds one filled says so at once.
const BEHIND_CHECK: Duration = Duration::from_millis(100);

impl Membership {
    pub(super) fn new(max_receivers: usize, blocks: u64, grtt: Duration) -> Self {
        Membership {
            members: BTreeMap::new(),
            matrix: StatusMatrix::new(max_receivers, blocks as usize),
            ever_joined: 0,
            replies: VecDeque::new(),
            grtt,
            grtt_window_max: None,
            grtt_window_end: None,
            next_scan: None,
            any_denied: false,
            departed: Vec::new(),
            behind: false,
            behind_checked: None,
        }
    }

    /// Takes in a notice whose member (`member_behind`: still receiving, its buffer more than
    /// a tenth full) came at `now`.
    fn note_behind(&mut self, now: Instant, member_behind: bool) {
        if member_behind {
            self.behind = true;
            return;
        }
        if self
            .behind_checked
            .is_some_and(|t| now.saturating_duration_since(t) < BEHIND_CHECK)
        {
            return;
        }
        self.behind_checked = Some(now);
        self.behind = self.members.values().any(Member::behind);
    }

    /// Members still receiving.
    pub(super) fn incomplete(&self) -> usize {
        self.members.values().filter(|m| !m.complete).count()
    }

    /// Every member holds everything (also when there is none).
    pub(super) fn all_complete(&self) -> bool {
        self.members.values().all(|m| m.complete)
    }

    /// When every member will have told what it holds, or been waited for `wait` since it
    /// joined: `None` if all have been heard, else the latest of those deadlines.
    pub(super) fn unreported_until(&self, wait: Duration) -> Option<Instant> {
        self.members
            .values()
            .filter(|m| !m.reported)
            .map(|m| m.joined + wait)
            .max()
    }

    /// Ends a GRTT window (the estimate follows the slowest receiver seen in it) and starts
    /// the next, `window` long.
    fn end_grtt_window(&mut self, now: Instant, window: Duration) {
        if let Some(w) = self.grtt_window_max.take() {
            // Rise at once to the slowest receiver seen; fall back halfway per window (a
            // receiver's socket queue that has drained leaves no long round trips behind, and
            // every NACK timer scales with this).
            self.grtt = if w > self.grtt {
                w
            } else {
                (self.grtt + w) / 2
            };
            self.grtt = self.grtt.max(Duration::from_micros(100));
        }
        self.grtt_window_end = Some(now + window);
    }
}

impl Member {
    /// Still receiving, and its latest notice found its buffer more than a tenth full.
    fn behind(&self) -> bool {
        !self.complete && self.queue_ppm > crate::rate::QUEUE_RISING_PPM
    }

    fn report(&self, id: ReceiverId) -> MemberReport {
        MemberReport {
            id,
            addr: self.addr,
            complete: self.complete,
            rtt: self.rtt,
            loss_ppm: self.loss_ppm,
        }
    }

    /// A notice came at `now`: was it after a pause ([`PAUSE_GAPS`])? The usual gap follows
    /// the gaps that were not.
    fn note_pace(&mut self, now: Instant) {
        let gap = self.notice_at.map(|t| now.saturating_duration_since(t));
        self.notice_at = Some(now);
        let Some(gap) = gap else {
            return;
        };
        self.paused = self
            .notice_gap
            .is_some_and(|usual| gap > usual * PAUSE_GAPS);
        if !self.paused {
            self.notice_gap = Some(match self.notice_gap {
                Some(usual) => (usual * 3 + gap) / 4,
                None => gap,
            });
        }
    }

    /// The least of its recent send->receipt samples, once it has two
    /// ([`crate::split::MemberInfo::rtt_floor`]).
    pub(super) fn rtt_floor(&self) -> Option<Duration> {
        let n = (self.rtt_samples as usize).min(self.recent_rtts.len());
        (n >= 2).then(|| {
            let us = self.recent_rtts[..n].iter().copied().min().unwrap_or(0);
            Duration::from_micros(u64::from(us))
        })
    }
}

/// Samples in a member's capacity floor.
const RECENT: usize = crate::split::RECENT_RTTS;

impl<S: BlockSource> Sender<S> {
    /// The status matrix: receivers x blocks, receive and request status.
    pub fn status_matrix(&self) -> &StatusMatrix {
        &self.membership.matrix
    }

    /// Every accepted receiver reports holding block `seq` (global numbering).
    pub fn all_hold(&self, seq: u64) -> bool {
        !self.membership.members.is_empty() && self.membership.matrix.all_hold(seq as usize)
    }

    /// Receivers ever accepted in this session.
    pub fn receivers_ever(&self) -> usize {
        self.membership.ever_joined
    }

    /// Accepted receivers now.
    pub fn receivers(&self) -> usize {
        self.membership.members.len()
    }

    /// Each member's measured send->receipt time and reported loss, by id, for the node's
    /// summary and relay choice (members that expired complete included).
    pub fn receiver_report(&self) -> Vec<MemberReport> {
        let mut v: Vec<_> = self
            .membership
            .members
            .iter()
            .map(|(id, m)| m.report(*id))
            .chain(self.membership.departed.iter().copied())
            .collect();
        v.sort_by_key(|r| r.id);
        v
    }

    /// What the members' latest receipt notices say of congestion, summed up for
    /// `--rate auto`.
    pub fn congestion(&self) -> Congestion {
        self.congestion_since(None)
    }

    /// The same, with the worst among the notices that report only on what the rate did since
    /// `since` (an instant, and the send timestamp of it) apart: overflow counted on units
    /// sent since then (the kernel stamps each datagram with the drop count as it queues
    /// it), a buffer's fill seen since then (read as it is). A buffer whose fill fell since
    /// the member's previous notice is draining: no news of a queue.
    pub(super) fn congestion_since(&self, since: Option<(Instant, u32)>) -> Congestion {
        let mut c = Congestion {
            slowest_delivery: self.slowest_delivery(),
            ..Congestion::default()
        };
        for m in self.membership.members.values().filter(|m| !m.complete) {
            c.overflow_ppm = c.overflow_ppm.max(m.overflow_ppm);
            c.queue_ppm = c.queue_ppm.max(m.queue_ppm);
            c.loss_ppm = c.loss_ppm.max(m.loss_ppm);
            let (units_fresh, time_fresh) = match (since, m.window_from) {
                (None, _) => (true, true),
                (Some(_), None) => (false, false),
                // Timestamps wrap after 71 minutes: compare by distance.
                (Some((at, ts)), Some((echo, heard))) => {
                    (echo.wrapping_sub(ts) < u32::MAX / 2, heard >= at)
                }
            };
            if units_fresh {
                c.fresh_overflow_ppm = c.fresh_overflow_ppm.max(m.overflow_ppm);
                c.fresh_loss_ppm = c.fresh_loss_ppm.max(m.loss_ppm);
            }
            // A queue found after a pause filled while the receive thread was away: the
            // next notice says whether it drains, and until then it does not cut. It holds
            // the rate all the same: a rise on one (a receiver 15 % full after a pause, the
            // rate up by an eighth) had the buffer full within 30 ms.
            if m.queue_ppm >= m.queue_prev_ppm {
                c.filling_queue_ppm = c.filling_queue_ppm.max(m.queue_ppm);
                if time_fresh && !m.paused {
                    c.fresh_queue_ppm = c.fresh_queue_ppm.max(m.queue_ppm);
                    if m.queue_prev_ppm > crate::rate::QUEUE_RISING_PPM
                        || m.queue_ppm > crate::rate::QUEUE_FULL_PPM
                    {
                        c.fresh_standing_queue_ppm = c.fresh_standing_queue_ppm.max(m.queue_ppm);
                    }
                }
            }
        }
        c
    }

    /// Incomplete members whose latest notice says they are behind: their socket overflowed,
    /// or its buffer was more than a quarter full.
    pub(super) fn behind(&self) -> impl Iterator<Item = ReceiverId> + '_ {
        self.membership
            .members
            .iter()
            .filter(|(_, m)| {
                !m.complete && (m.overflow_ppm > 0 || m.queue_ppm > crate::rate::QUEUE_RISING_PPM)
            })
            .map(|(id, _)| *id)
    }

    /// The worst socket overflow share among the members' latest receipt notices (parts per
    /// million): congestion at a receiver, the signal `--rate auto` slows down for.
    pub fn worst_overflow_ppm(&self) -> u32 {
        self.membership
            .members
            .values()
            .map(|m| m.overflow_ppm)
            .max()
            .unwrap_or(0)
    }

    /// A member still receiving found its socket buffer more than a tenth full at its latest
    /// notice: the receivers, not the rate, set the pace. Then every repair datagram costs
    /// each receiver the time to read it (and to drop it, if it was for another), so repairs
    /// are gathered into XOR repairs even after the first pass, and none goes twice
    /// (docs/DESIGN.md, "no tail copies while the receivers set the pace").
    ///
    /// Asked for every repair datagram sent: a flag the notices keep
    /// ([`Membership::note_behind`]), not a look at every member.
    pub(super) fn receivers_behind(&self) -> bool {
        self.membership.behind
    }

    /// The fullest receive buffer among the members' latest receipt notices (parts per
    /// million of the buffer): a receiver falling behind, before it overflows.
    pub fn worst_queue_ppm(&self) -> u32 {
        self.membership
            .members
            .values()
            .map(|m| m.queue_ppm)
            .max()
            .unwrap_or(0)
    }

    /// The slowest incomplete member's delivery rate: bytes per second it verified between
    /// its recent notices (smoothed), among those measured; what the group demonstrably takes.
    pub fn slowest_delivery(&self) -> Option<u64> {
        self.membership
            .members
            .values()
            .filter(|m| !m.complete && m.delivery > 0)
            .map(|m| m.delivery)
            .min()
    }

    /// The group round-trip time estimate.
    pub fn grtt(&self) -> Duration {
        self.membership.grtt
    }

    pub(super) fn grtt_window(&self) -> Duration {
        (self.cfg.announce_interval * 4).max(Duration::from_millis(100))
    }

    /// Timers: the GRTT window's end.
    pub(super) fn end_grtt_window(&mut self, now: Instant) {
        let window = self.grtt_window();
        self.membership.end_grtt_window(now, window);
    }

    /// Sends one answer to a receiver (an accept, or done for it).
    pub(super) fn send_reply(&mut self, reply: Reply, buf: &mut [u8]) -> Option<Transmit> {
        let session = self.cfg.session;
        let (addr, p) = match reply {
            Reply::Accept {
                to,
                receiver,
                row,
                cookie,
            } => (
                to,
                Packet::Accept(AcceptRepr {
                    session,
                    receiver,
                    row,
                    cookie,
                }),
            ),
            Reply::Challenge {
                to,
                receiver,
                cookie,
            } => (
                to,
                Packet::Accept(AcceptRepr {
                    session,
                    receiver,
                    row: AcceptRepr::CHALLENGE,
                    cookie,
                }),
            ),
            Reply::Done { to, receiver } => {
                (to, Packet::Done(DoneRepr::Receiver { session, receiver }))
            }
        };
        let len = p.emit(buf).ok()?;
        self.stats.control_sent += 1;
        Some(Transmit {
            destination: Destination::Peer(addr),
            len,
            payload: None,
        })
    }

    /// A Join: from an address it has proven (its cookie for that address), a receiver is
    /// admitted, or a member's address moves there; from any other, it is challenged
    /// (wire.md §6.1). Nothing changes before the proof.
    pub(super) fn on_join(&mut self, now: Instant, from: SocketAddr, id: ReceiverId, cookie: u64) {
        self.stats.joins += 1;
        if matches!(self.phase, Phase::Closing { .. } | Phase::Finished)
            && !self.membership.members.contains_key(&id)
        {
            return;
        }
        if cookie != self.cookie_for(id, from) {
            self.challenge(now, from, id);
            return;
        }
        self.admit(now, from, id);
    }

    /// Admits receiver `id` at `from` (proven), or refreshes a member and moves its address
    /// there.
    pub(super) fn admit(&mut self, now: Instant, from: SocketAddr, id: ReceiverId) {
        let cookie = self.cookie_for(id, from);
        if let Some(m) = self.membership.members.get_mut(&id) {
            m.last_heard = now;
            if m.addr != from {
                m.addr = from;
                m.cookie = cookie;
                if let Some(sp) = self.split.as_mut() {
                    sp.dirty = true;
                }
            }
            let row = m.row.index() as u32;
            self.membership.replies.push_back(Reply::Accept {
                to: from,
                receiver: id,
                row,
                cookie,
            });
            return;
        }
        if matches!(self.phase, Phase::Closing { .. } | Phase::Finished) {
            return;
        }
        let Some(row) = self.membership.matrix.add_receiver() else {
            return;
        };
        // Split mode: the zone it named when it asked for the session (zone 0 otherwise).
        let zone = self
            .split
            .as_mut()
            .and_then(|sp| sp.solicitors.remove(&id))
            .map_or(0, |s| s.zone);
        self.membership_changed();
        let budget = self.new_budget(now);
        self.membership.members.insert(
            id,
            Member {
                addr: from,
                row,
                joined: now,
                reported: false,
                last_heard: now,
                complete: false,
                rtt: None,
                recent_rtts: [0; crate::split::RECENT_RTTS],
                rtt_samples: 0,
                loss_ppm: 0,
                loss_est_ppm: 0,
                overflow_ppm: 0,
                queue_ppm: 0,
                queue_prev_ppm: 0,
                notice_at: None,
                notice_gap: None,
                paused: false,
                window_from: None,
                echoed: None,
                delivered: None,
                delivery: 0,
                marked: 0,
                zone,
                cookie,
                budget,
            },
        );
        self.membership.ever_joined += 1;
        self.membership.replies.push_back(Reply::Accept {
            to: from,
            receiver: id,
            row: row.index() as u32,
            cookie,
        });
        self.events.push_back(SenderEvent::ReceiverJoined {
            receiver: id,
            addr: from,
        });
    }

    /// A member says it leaves.
    pub(super) fn on_leave(&mut self, receiver: ReceiverId) {
        if let Some(m) = self.membership.members.remove(&receiver) {
            self.membership.matrix.remove_receiver(m.row);
            self.membership_changed();
            self.events.push_back(SenderEvent::ReceiverLeft {
                receiver,
                timed_out: false,
            });
        }
    }

    /// A member was heard from (a NACK or a priority request): it is not silent.
    pub(super) fn heard_from(&mut self, now: Instant, receiver: ReceiverId) -> Option<RowId> {
        let m = self.membership.members.get_mut(&receiver)?;
        m.last_heard = now;
        Some(m.row)
    }

    /// Timers: members not heard from for the receiver timeout are dropped, whatever they
    /// claimed: a complete member too (its row is freed; it is kept in the summary).
    pub(super) fn scan_members(&mut self, now: Instant) {
        let timeout = self.cfg.receiver_timeout;
        let gone: Vec<ReceiverId> = self
            .membership
            .members
            .iter()
            .filter(|(_, m)| now.saturating_duration_since(m.last_heard) > timeout)
            .map(|(id, _)| *id)
            .collect();
        let expired = !gone.is_empty();
        for id in gone {
            if let Some(m) = self.membership.members.remove(&id) {
                self.membership.matrix.remove_receiver(m.row);
                self.stats.expired += 1;
                if m.complete && self.membership.departed.len() < DEPARTED_KEPT {
                    self.membership.departed.push(m.report(id));
                }
            }
            self.membership_changed();
            self.events.push_back(SenderEvent::ReceiverLeft {
                receiver: id,
                timed_out: true,
            });
        }
        if let Some(sp) = self.split.as_mut() {
            sp.solicitors
                .retain(|_, s| now.saturating_duration_since(s.last_heard) <= timeout);
            if expired {
                // Until now the plan routed units and repairs through the silent member, so
                // what the others were refused or lost meanwhile is the plan's doing, not
                // theirs: a slow member's stall is counted again from the new plan.
                for m in self.membership.members.values_mut() {
                    if m.budget.slow_since.is_some() {
                        m.budget.slow_since = Some(now);
                    }
                }
            }
        }
        self.membership.next_scan = Some(now + timeout / 4);
    }

    pub(super) fn on_receipt(&mut self, now: Instant, r: &ReceiptRepr) {
        let ts_now = self.timestamp(now);
        // A member's word: it cannot have verified more blocks than the session has (a claim
        // of more made the delivery rate below overflow: found by the `sender` fuzz target).
        let blocks_done = r.blocks_done.min(self.numbering.total());
        let Some(m) = self.membership.members.get_mut(&r.receiver) else {
            self.stats.strangers += 1;
            return;
        };
        m.last_heard = now;
        m.budget.progress(blocks_done);
        m.budget.reported_loss(r.loss_ppm.max(r.overflow_ppm));
        m.reported = true;
        m.loss_ppm = r.loss_ppm;
        if r.loss_ppm > 0 {
            // A notice covering no finished block says 0: keep the last estimate then.
            m.loss_est_ppm = if m.loss_est_ppm == 0 {
                r.loss_ppm
            } else {
                ((3 * u64::from(m.loss_est_ppm) + u64::from(r.loss_ppm)) / 4) as u32
            };
        }
        m.overflow_ppm = r.overflow_ppm;
        m.queue_prev_ppm = std::mem::replace(&mut m.queue_ppm, r.queue_ppm);
        m.note_pace(now);
        if r.echo_timestamp != 0 {
            m.window_from = m.echoed.replace((r.echo_timestamp, now));
        }
        // Delivery rate: what it verified since its previous notice (at least 20 ms ago).
        match m.delivered {
            Some(Delivered { at: t, blocks: b })
                if now.saturating_duration_since(t) >= Duration::from_millis(20) =>
            {
                let block = self.numbering.block_size() as u64;
                let dt = now.saturating_duration_since(t).as_secs_f64();
                let rate = blocks_done.saturating_sub(b).saturating_mul(block) as f64 / dt;
                m.delivery = if m.delivery == 0 {
                    rate as u64
                } else {
                    ((m.delivery as f64 + rate) / 2.0) as u64
                };
                m.delivered = Some(Delivered {
                    at: now,
                    blocks: blocks_done,
                });
            }
            Some(_) => {}
            None => {
                m.delivered = Some(Delivered {
                    at: now,
                    blocks: blocks_done,
                });
            }
        }
        // Send->receipt time: now minus the echoed send time, less the time the receiver held it.
        let elapsed = ts_now.wrapping_sub(r.echo_timestamp);
        if r.echo_timestamp != 0 && elapsed < 60_000_000 {
            let sample = Duration::from_micros(u64::from(elapsed.saturating_sub(r.echo_delay_us)));
            let first = m.rtt.is_none();
            m.rtt = Some(match m.rtt {
                Some(old) => (old * 7 + sample) / 8,
                None => sample,
            });
            let slot = m.rtt_samples as usize % m.recent_rtts.len();
            m.recent_rtts[slot] = u32::try_from(sample.as_micros()).unwrap_or(u32::MAX);
            m.rtt_samples = m.rtt_samples.saturating_add(1);
            // Split mode: a first measurement may change the plan (which zone is served
            // directly, who relays to whom), and so may the capacity floor once it stands on
            // two samples and again on a full window: plan again soon.
            let floor_moved = m.rtt_samples == 2 || m.rtt_samples == RECENT as u32;
            if first || floor_moved {
                if let Some(sp) = self.split.as_mut() {
                    sp.dirty = true;
                }
            }
            let w = &mut self.membership.grtt_window_max;
            *w = Some(w.map_or(sample, |w| w.max(sample)));
            // Rise at once (the window's end only lets it fall): a receiver whose socket
            // queue grew has its repairs that much later, and a NACK retried on the old
            // estimate asks again for repairs still queued in its socket.
            if sample > self.membership.grtt {
                self.membership.grtt = sample;
            }
        }
        let row = m.row;
        let marked = m.marked;
        let newly_complete = r.complete && !m.complete;
        if r.complete {
            m.complete = true;
            let to = m.addr;
            self.membership.replies.push_back(Reply::Done {
                to,
                receiver: r.receiver,
            });
        }
        let member_behind = self
            .membership
            .members
            .get(&r.receiver)
            .is_some_and(Member::behind);
        self.membership.note_behind(now, member_behind);
        // Receive status: the watermark (only what is new since the last notice) and the
        // runs past it.
        let total = self.numbering.total();
        let wm = if r.complete {
            Some(total)
        } else {
            self.numbering
                .seq(r.watermark_object, r.watermark_block)
                .or((r.watermark_object.0 as usize >= self.numbering.objects()).then_some(total))
        };
        if let Some(wm) = wm.filter(|&wm| wm > marked) {
            for seq in marked..wm {
                self.membership.matrix.mark_held(row, seq as usize);
            }
            if let Some(m) = self.membership.members.get_mut(&r.receiver) {
                m.marked = wm;
            }
        }
        for run in &r.runs {
            if let Some(start) = self.numbering.seq(run.object, run.start) {
                // A run stays inside its object.
                let obj_end = self.numbering.object_end(run.object);
                let end = (start + u64::from(run.len)).min(obj_end);
                for seq in start..end {
                    self.membership.matrix.mark_held(row, seq as usize);
                }
            }
        }
        if newly_complete {
            self.events.push_back(SenderEvent::ReceiverComplete {
                receiver: r.receiver,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{gated_sender, gated_sender_with, receipt, Gated};
    use super::*;

    #[test]
    fn delivery_rate_is_what_the_slowest_receiver_verified_between_notices() {
        // 16 blocks: a notice counts at most the session's blocks.
        let mut s = gated_sender_with(16, 1);
        let t0 = Instant::now();
        let base = receipt(&s, 0);
        let notice = |id: u64, blocks_done: u64, queue_ppm: u32| ReceiptRepr {
            receiver: ReceiverId(id),
            blocks_done,
            queue_ppm,
            ..base.clone()
        };
        let (a, b) = (notice(1, 0, 0), notice(2, 0, 0));
        let (a2, b2) = (notice(1, 10, 0), notice(2, 4, 300_000));
        for id in [1, 2] {
            s.admit(t0, SocketAddr::from(([127, 0, 0, 1], 9)), ReceiverId(id));
        }
        s.on_receipt(t0, &a);
        s.on_receipt(t0, &b);
        assert_eq!(s.slowest_delivery(), None, "one notice measures nothing");
        let t1 = t0 + Duration::from_millis(100);
        s.on_receipt(t1, &a2);
        s.on_receipt(t1, &b2);
        // Blocks of 4 units of 8 bytes: 4 blocks in 100 ms is 1,280 bytes per second.
        let d = s.slowest_delivery().unwrap();
        assert!((1_270..=1_290).contains(&d), "{d}");
        assert_eq!(s.worst_queue_ppm(), 300_000);
    }

    #[test]
    fn a_member_claiming_more_blocks_than_exist_is_taken_at_the_session_s_count() {
        // Regression (the `sender` fuzz target): a notice with blocks_done near u64::MAX
        // overflowed the delivery rate's multiplication.
        let mut s = gated_sender();
        let t0 = Instant::now();
        let total = s.numbering.total();
        let base = receipt(&s, 1);
        let notice = |blocks_done: u64| ReceiptRepr {
            blocks_done,
            ..base.clone()
        };
        s.admit(t0, SocketAddr::from(([127, 0, 0, 1], 9)), ReceiverId(1));
        s.on_receipt(t0, &notice(0));
        s.on_receipt(t0 + Duration::from_secs(1), &notice(u64::MAX / 3));
        // All the session's blocks in one second, no more.
        let block = s.numbering.block_size() as u64;
        assert_eq!(s.slowest_delivery(), Some(total * block));
    }

    /// One member, admitted at the instant returned, whose four notices 50 ms apart found its
    /// buffer `queue_ppm` full; and its notice with another fill.
    fn member_at_its_usual_pace(
        queue_ppm: u32,
    ) -> (Sender<Gated>, Instant, impl Fn(u32) -> ReceiptRepr) {
        let mut s = gated_sender();
        let t0 = Instant::now();
        let base = receipt(&s, 1);
        let notice = move |queue_ppm: u32| ReceiptRepr {
            queue_ppm,
            ..base.clone()
        };
        s.admit(t0, SocketAddr::from(([127, 0, 0, 1], 9)), ReceiverId(1));
        for i in 0..4 {
            s.on_receipt(t0 + Duration::from_millis(50 * i), &notice(queue_ppm));
        }
        (s, t0, notice)
    }

    #[test]
    fn a_queue_found_after_a_pause_is_not_news_until_the_next_notice() {
        // A receive thread kept off its core comes back to a queue that filled while it was
        // away: that notice alone does not say the rate is too fast; the next one, at the
        // usual pace, says whether the queue drains.
        let (mut s, t0, notice) = member_at_its_usual_pace(10_000);
        let ms = Duration::from_millis;
        assert_eq!(s.congestion().filling_queue_ppm, 10_000);
        // 250 ms of silence, then a buffer 40 % full.
        let back = t0 + ms(150 + 250);
        s.on_receipt(back, &notice(400_000));
        let c = s.congestion();
        // Not news that cuts; it holds the rate (no rise) until the next notice.
        assert_eq!((c.queue_ppm, c.fresh_queue_ppm), (400_000, 0));
        assert_eq!(c.filling_queue_ppm, 400_000);
        // At the usual pace: fuller still is news of a rate too fast.
        s.on_receipt(back + ms(50), &notice(450_000));
        let c = s.congestion();
        assert_eq!((c.filling_queue_ppm, c.fresh_queue_ppm), (450_000, 450_000));
        // Draining is not.
        s.on_receipt(back + ms(100), &notice(300_000));
        assert_eq!(s.congestion().filling_queue_ppm, 0);
    }

    #[test]
    fn a_queue_is_standing_when_the_notice_before_found_one_too_or_it_is_near_full() {
        let (mut s, t0, notice) = member_at_its_usual_pace(20_000);
        let ms = Duration::from_millis;
        // At the usual pace, 40 % after 2 %: fresh news of a queue, but an excursion.
        s.on_receipt(t0 + ms(200), &notice(400_000));
        let c = s.congestion();
        assert_eq!(
            (c.fresh_queue_ppm, c.fresh_standing_queue_ppm),
            (400_000, 0)
        );
        // Still filling at the next notice: standing.
        s.on_receipt(t0 + ms(250), &notice(420_000));
        let c = s.congestion();
        assert_eq!(c.fresh_standing_queue_ppm, 420_000);
        // Drained, then over three quarters at once: standing all the same.
        s.on_receipt(t0 + ms(300), &notice(20_000));
        assert_eq!(s.congestion().fresh_standing_queue_ppm, 0);
        s.on_receipt(t0 + ms(350), &notice(800_000));
        assert_eq!(s.congestion().fresh_standing_queue_ppm, 800_000);
    }
}
