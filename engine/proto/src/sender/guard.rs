//! What a peer can make the server do, bounded (docs/wire.md §6.1, §12.11; docs/SECURITY.md):
//! return-routability cookies (a member's packets count only from its proven address), the
//! stateless challenges that hand them out at a bounded rate, each member's repair budget
//! (what it can have missed, at most a share of the rate beyond a burst), and the slow members
//! dropped once everybody else is done.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::membership::{Member, Reply};
use super::{Sender, SenderEvent};
use crate::bucket::TokenBucket;
use crate::store::BlockSource;
use crate::wire::{ReceiverId, UNIT_HEADER_LEN};

/// Stateless challenges (Accepts that hand out a cookie) sent per second at most, and in a
/// burst: the answer to a Join from an unproven address is hardly larger than the Join, and
/// no more of them than this go out whatever arrives.
pub(super) const CHALLENGES_PER_SEC: f64 = 10_000.0;
pub(super) const CHALLENGE_BURST: f64 = 1_000.0;

/// The challenge burst for a server that waits for `min_receivers` (and admits at most
/// `max_receivers`): [`CHALLENGE_BURST`], or the whole group the first pass waits for if
/// larger, so that a group that starts together is let in at once (each member needs one
/// challenge; at 3,000 members a burst of 1,000 left 2,000 waiting for the rate, and the first
/// pass started 200 ms later). The sustained rate stays [`CHALLENGES_PER_SEC`], and a challenge
/// is still at most 1.15 times the datagram it answers: what a spoofer can reflect off the
/// server grows by one challenge per expected member, once.
pub(super) fn challenge_burst(min_receivers: usize, max_receivers: usize) -> f64 {
    CHALLENGE_BURST.max(min_receivers.min(max_receivers) as f64)
}

/// Priority requests one member may make per second (and in a burst).
const PRIORITY_PER_SEC: f64 = 8.0;

/// Blocks ahead of the first pass one member may have sent whole for free (the first pass then
/// skips them), in a burst and per second: a player seeking ahead gets its blocks at once; a
/// member asking for every block ahead cannot move the whole first pass onto the repair path.
const AHEAD_BURST: f64 = 16.0;
const AHEAD_PER_SEC: f64 = 4.0;

/// The part of what it can have missed (the first pass so far, and the repairs sent since
/// it joined: it loses those as it loses the rest) that a member may ask for at any speed: an
/// honest receiver loses in bursts (a socket buffer that overflowed while its thread was not
/// scheduled: 5 % of a first pass at once on loopback), and the whole link is the fastest way
/// to mend that; at least one block (a priority request for a block behind the pass, or an
/// overflow before the pass has gone far). Beyond it, a share of the rate, from a bucket that
/// starts empty ([`charge`]): what a member gets in all is at most this allowance plus its
/// share of the rate for as long as it is a member, whatever it asks for and when. A member
/// that claims to miss everything, and whose notices do not report heavier loss
/// ([`LOSS_ALLOWANCE_MAX`]), gets 1/17 of the first pass (its own repairs counted) plus its
/// share: within the 1.10x that docs/SECURITY.md promises. 1/18, not 1/20: an honest
/// receiver losing 5 % needs 5.26 % of what was sent (it loses its repairs too), and at 1/20
/// it was held to its bucket from the middle of the transfer on: 58,000 units refused in
/// the simulator and a tail of 70 ms at 120 MB/s, none at 1/18 (docs/DESIGN.md 2026-12-02).
const LOSS_ALLOWANCE: f64 = 1.0 / 18.0;

/// The most of what it can have missed that a member may ask for at any speed, once its
/// receipt notices report that much loss (or socket overflow): a third, what loss of 23 %
/// needs ([`RepairBudget::loss_share`]). A receiver whose socket overflowed while the rate
/// found its pace loses a burst on top of the link's loss (in the simulator, 3-25 % of the
/// object behind a 32 MiB buffer that filled before the first notice came back), and a lossy
/// link loses 10 % and more; held to [`LOSS_ALLOWANCE`] and its bucket beyond, such a
/// receiver waited 0.4-1.5 s for repairs the link could send in 20-80 ms (docs/DESIGN.md,
/// "an allowance that follows the reported loss"; at a quarter, the 25 % burst still waited
/// 0.35 s). A member that lies in its notices can have half the first pass sent again (a
/// third of the pass and of its own repairs), where one that only floods NACKs gets 1/17: a
/// member can do worse to the session by reporting overflow it did not have (the rate
/// follows the worst member), so its word is taken here too, within this bound.
const LOSS_ALLOWANCE_MAX: f64 = 1.0 / 3.0;

/// A slow member whose reported progress has not moved for this long (or for two blocks'
/// time at its share of the rate, if longer) is dropped once every other member is complete.
const SLOW_STALL: Duration = Duration::from_secs(1);

/// A member's allowance of repairs: charged for every unit its NACKs and priority requests
/// add to the repair queue.
#[derive(Clone, Debug)]
pub(super) struct RepairBudget {
    /// Its share of the rate beyond its loss allowance: empty as it joins, filling at the
    /// share up to one block.
    bucket: TokenBucket,
    priority: TokenBucket,
    ahead: TokenBucket,
    /// Units charged so far, less what other members took over of them ([`Shares`]).
    charged: f64,
    /// Repair units the server had sent when the member joined.
    repairs_at_join: u64,
    /// Since when it has been a slow member: a demand of its was refused (it asks for more
    /// than its share) and it has reported no progress since.
    pub(super) slow_since: Option<Instant>,
    /// Verified blocks it last reported.
    blocks_done: u64,
    /// The worst loss (or socket overflow) its receipt notices reported, ppm.
    reported_loss_ppm: u32,
}

impl RepairBudget {
    /// A member's budget as it joins at `now`: its bucket fills from then on.
    pub(super) fn new(burst_units: f64, repairs_sent: u64, now: Instant) -> Self {
        RepairBudget {
            bucket: TokenBucket::empty(burst_units, now),
            priority: TokenBucket::new(PRIORITY_PER_SEC),
            ahead: TokenBucket::new(AHEAD_BURST),
            charged: 0.0,
            repairs_at_join: repairs_sent,
            slow_since: None,
            blocks_done: 0,
            reported_loss_ppm: 0,
        }
    }

    /// Its receipt notice says it verified `blocks_done` blocks: progress ends slowness.
    pub(super) fn progress(&mut self, blocks_done: u64) {
        if blocks_done > self.blocks_done {
            self.blocks_done = blocks_done;
            self.slow_since = None;
        }
    }

    /// Its receipt notice reports `ppm` of loss (or socket overflow, whichever is more).
    pub(super) fn reported_loss(&mut self, ppm: u32) {
        self.reported_loss_ppm = self.reported_loss_ppm.max(ppm.min(1_000_000));
    }

    /// The share of what it can have missed that it may ask for at any speed: what the worst
    /// loss it reported needs (a receiver losing a share `p` needs `p / (1 - p)` of what is
    /// sent: it loses repairs too), and an eighth more; at least [`LOSS_ALLOWANCE`], at most
    /// [`LOSS_ALLOWANCE_MAX`].
    fn loss_share(&self) -> f64 {
        let p = f64::from(self.reported_loss_ppm) / 1e6;
        let needs = if p < 1.0 { p / (1.0 - p) } else { 1.0 };
        (needs * 9.0 / 8.0).clamp(LOSS_ALLOWANCE, LOSS_ALLOWANCE_MAX)
    }
}

/// What a member may be charged now: its bucket's refill rate, and the most it can have
/// missed (`cap`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Allowance {
    per_sec: f64,
    burst: f64,
    /// Units of the blocks the first pass has gone by, plus repairs sent since it joined.
    missable: u64,
    repairs_sent: u64,
    /// Blocks (global numbering) before this have had their first pass.
    pub(super) passed: u64,
}

/// Charges `m` for `units` of repairs: true if its budget allows them (what it can have
/// missed; within its loss allowance of that at once, [`RepairBudget::loss_share`], beyond it
/// from its bucket), else it is marked slow and nothing is charged.
pub(super) fn charge(m: &mut Member, now: Instant, a: Allowance, units: f64) -> bool {
    if units <= 0.0 {
        return true;
    }
    let b = &mut m.budget;
    let Some(beyond) = within(b, now, a, units) else {
        b.slow_since.get_or_insert(now);
        return false;
    };
    if beyond > 0.0 {
        b.bucket.take(now, a.per_sec, beyond);
    }
    b.charged += units;
    true
}

/// Whether `m` could be charged `units` now ([`charge`]), without charging it.
pub(super) fn affords(m: &mut Member, now: Instant, a: Allowance, units: f64) -> bool {
    units <= 0.0 || within(&mut m.budget, now, a, units).is_some()
}

/// If budget `b` allows `units` more: how many of them come out of its bucket (only what goes
/// past the loss allowance does).
fn within(b: &mut RepairBudget, now: Instant, a: Allowance, units: f64) -> Option<f64> {
    b.bucket.set_burst(a.burst);
    let missable = a.missable + a.repairs_sent.saturating_sub(b.repairs_at_join);
    let lost = b.charged + units;
    let allowance = (missable as f64 * b.loss_share()).max(a.burst);
    let beyond = (lost - allowance).min(units);
    let ok = lost <= missable as f64 && (beyond <= 0.0 || b.bucket.holds(now, a.per_sec, beyond));
    ok.then_some(beyond)
}

/// Gives `m` back `units` it was charged (another member now shares them).
pub(super) fn refund(m: &mut Member, units: f64) {
    m.budget.charged = (m.budget.charged - units).max(0.0);
}

/// The key of parity unit `index` in [`Shares`] (original units are keyed by their index).
pub(super) fn parity_key(index: u16) -> u32 {
    0x1_0000 + u32::from(index)
}

/// Who pays for the repairs of one block that are queued and not yet sent: a repair unit that
/// several members asked for is charged to each of them in equal shares, so that a loss four
/// members share costs each a quarter of it, whichever asked first. Keys name the repair:
/// an original unit's index, or [`parity_key`].
///
/// The shares add up to one for every key someone asked for: the units sent for one member
/// alone are charged to it in full, so its budget still bounds what it can make the server
/// send. A share is fixed once its unit is sent.
#[derive(Default, Debug)]
pub(super) struct Shares {
    /// Each member that asked, with the keys it was charged for (ascending).
    askers: Vec<(ReceiverId, Vec<u32>)>,
}

/// What one request costs ([`Shares::quote`]).
#[derive(Debug, Default)]
pub(super) struct Quote {
    /// Units charged to the member asking.
    pub(super) cost: f64,
    /// Keys it takes a share of (ascending).
    keys: Vec<u32>,
    /// What each earlier asker gets back.
    pub(super) refunds: Vec<(ReceiverId, f64)>,
}

impl Shares {
    /// What `receiver` pays for `keys` (ascending): nothing for a key it already pays for, or
    /// one queued without a payer (`queued`: a block sent whole ahead of the first pass, a
    /// payer that left); 1 for a new key; `1/(m+1)` for a key `m` others pay for, who each get
    /// back the difference between `1/m` and `1/(m+1)`.
    pub(super) fn quote(
        &self,
        receiver: ReceiverId,
        keys: impl IntoIterator<Item = u32>,
        queued: impl Fn(u32) -> bool,
    ) -> Quote {
        let has = |l: &Vec<u32>, k: u32| l.binary_search(&k).is_ok();
        let own = self.askers.iter().find(|(r, _)| *r == receiver);
        let mut q = Quote::default();
        for k in keys {
            if own.is_some_and(|(_, l)| has(l, k)) {
                continue;
            }
            let m = self
                .askers
                .iter()
                .filter(|(r, l)| *r != receiver && has(l, k))
                .count();
            if m == 0 {
                if !queued(k) {
                    q.cost += 1.0;
                    q.keys.push(k);
                }
                continue;
            }
            let (now, was) = (1.0 / (m + 1) as f64, 1.0 / m as f64);
            q.cost += now;
            q.keys.push(k);
            for (r, l) in &self.askers {
                if *r != receiver && has(l, k) {
                    match q.refunds.iter_mut().find(|(x, _)| x == r) {
                        Some((_, v)) => *v += was - now,
                        None => q.refunds.push((*r, was - now)),
                    }
                }
            }
        }
        q
    }

    /// `receiver` paid `q`: it shares its keys from now on.
    pub(super) fn commit(&mut self, receiver: ReceiverId, q: Quote) {
        if q.keys.is_empty() {
            return;
        }
        let i = match self.askers.iter().position(|(r, _)| *r == receiver) {
            Some(i) => i,
            None => {
                self.askers.push((receiver, Vec::new()));
                self.askers.len() - 1
            }
        };
        let l = &mut self.askers[i].1;
        l.extend(q.keys);
        l.sort_unstable();
        l.dedup();
    }

    /// The repair `key` went out: its shares are final.
    pub(super) fn sent(&mut self, key: u32) {
        for (_, l) in &mut self.askers {
            if let Ok(i) = l.binary_search(&key) {
                l.remove(i);
            }
        }
        self.askers.retain(|(_, l)| !l.is_empty());
    }

    /// Nothing of the block is queued any more.
    pub(super) fn clear(&mut self) {
        self.askers.clear();
    }
}

impl<S: BlockSource> Sender<S> {
    /// The cookie of receiver `id` at `addr` (wire.md §6.1): a keyed BLAKE3 of the session,
    /// the id and the address under the server's secret, never 0.
    pub(super) fn cookie_for(&self, id: ReceiverId, addr: SocketAddr) -> u64 {
        let mut h = blake3::Hasher::new_keyed(&self.cfg.cookie_key);
        h.update(&self.cfg.session.0.to_be_bytes());
        h.update(&id.0.to_be_bytes());
        let ip = match addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        h.update(&ip);
        h.update(&addr.port().to_be_bytes());
        let b = h.finalize();
        u64::from_be_bytes(b.as_bytes()[..8].try_into().unwrap_or([0; 8])).max(1)
    }

    /// A packet from `from` that says it is member `id` and echoes `cookie`: true if it is that
    /// member, from its proven address. Otherwise it is dropped and counted (a stranger, or a
    /// bad cookie: a spoofed source or another address than the member's).
    pub(super) fn authenticate(&mut self, from: SocketAddr, id: ReceiverId, cookie: u64) -> bool {
        match self.membership.members.get(&id) {
            None => {
                self.stats.strangers += 1;
                false
            }
            Some(m) if m.addr == from && m.cookie == cookie => true,
            Some(_) => {
                self.stats.bad_cookies += 1;
                false
            }
        }
    }

    /// Answers `id` at `from` with a challenge (an Accept that admits nobody, carrying the
    /// cookie for that address), within the challenge rate.
    pub(super) fn challenge(&mut self, now: Instant, from: SocketAddr, id: ReceiverId) {
        if self.challenges.take(now, self.cfg.challenges_per_sec, 1.0) {
            let cookie = self.cookie_for(id, from);
            self.stats.challenges += 1;
            self.membership.replies.push_back(Reply::Challenge {
                to: from,
                receiver: id,
                cookie,
            });
        } else {
            self.stats.challenges_dropped += 1;
        }
    }

    /// Repair units (of every kind) sent so far. Blocks sent whole ahead of the first pass
    /// are not among them: the first pass skips them, and they count once, as part of the
    /// blocks it has gone by (counted twice, a member asking for every block ahead raised its
    /// own allowance by 1/18 of them: 1,000 units of a 64 MiB flood, 2 % of the session).
    fn repairs_sent(&self) -> u64 {
        self.stats.repair_units + self.stats.parity_units + self.stats.xor_carried
            - self.stats.ahead_units
    }

    /// What members may be charged now ([`charge`]).
    pub(super) fn allowance(&self) -> Allowance {
        let unit = (usize::from(self.cfg.geometry.unit_size) + UNIT_HEADER_LEN) as f64;
        let k = u64::from(self.cfg.geometry.units_per_block);
        let passed = if self.first_pass_done() {
            self.numbering.total()
        } else {
            self.first_pass
                .next
                .map_or(self.first_pass.external_sent, |p| p.seq)
        };
        Allowance {
            per_sec: self.rate() as f64 * self.cfg.member_repair_share / unit,
            burst: self.repair_burst(),
            missable: passed * k,
            repairs_sent: self.repairs_sent(),
            passed,
        }
    }

    /// A member's repair burst, in units: one block (at least 64 units): the least loss
    /// allowance it has, and the most its bucket holds.
    pub(super) fn repair_burst(&self) -> f64 {
        f64::from(self.cfg.geometry.units_per_block.max(64))
    }

    /// A new member's budget.
    pub(super) fn new_budget(&self, now: Instant) -> RepairBudget {
        RepairBudget::new(self.repair_burst(), self.repairs_sent(), now)
    }

    /// A priority request from member `id`: within its request rate?
    pub(super) fn priority_allowed(&mut self, now: Instant, id: ReceiverId) -> bool {
        let ok = self
            .membership
            .members
            .get_mut(&id)
            .is_some_and(|m| m.budget.priority.take(now, PRIORITY_PER_SEC, 1.0));
        if !ok {
            self.stats.priority_denied += 1;
        }
        ok
    }

    /// Whether member `id` may have one more block ahead of the first pass sent whole without
    /// charge ([`AHEAD_BURST`]).
    pub(super) fn free_ahead(&mut self, now: Instant, id: ReceiverId) -> bool {
        self.membership
            .members
            .get_mut(&id)
            .is_some_and(|m| m.budget.ahead.take(now, AHEAD_PER_SEC, 1.0))
    }

    /// Once the first pass is over and every member that kept within its budget is
    /// complete, the slow ones (refused repairs, and no progress reported in the
    /// [`SLOW_STALL`] since) are dropped, as UFTP drops slow clients: the session does not wait on a member that
    /// asks for everything and completes nothing.
    pub(super) fn drop_slow_members(&mut self, now: Instant) {
        if !self.first_pass_done() || !self.membership.any_denied {
            return;
        }
        // A slow member that is catching up completes a block at least every block's time at
        // its share of the rate (grants go to its lowest blocks first): give it two.
        let share = self.rate() as f64 * self.cfg.member_repair_share;
        let block = self.numbering.block_size() as f64;
        let stall = SLOW_STALL.max(Duration::from_secs_f64(
            (2.0 * block / share.max(1.0)).min(3600.0),
        ));
        let members = &self.membership.members;
        let others_done = members
            .values()
            .all(|m| m.complete || m.budget.slow_since.is_some());
        if !others_done {
            return;
        }
        let slow: Vec<ReceiverId> = members
            .iter()
            .filter(|(_, m)| {
                !m.complete
                    && m.budget
                        .slow_since
                        .is_some_and(|t| now.saturating_duration_since(t) >= stall)
            })
            .map(|(id, _)| *id)
            .collect();
        if slow.is_empty() {
            return;
        }
        for id in slow {
            if let Some(m) = self.membership.members.remove(&id) {
                self.membership.matrix.remove_receiver(m.row);
            }
            self.stats.dropped_slow += 1;
            self.events.push_back(SenderEvent::ReceiverDropped {
                receiver: id,
                reason: DropReason::Slow,
            });
        }
        self.membership_changed();
        if self.membership.all_complete() {
            // Nobody left needs the repairs still queued.
            self.repairs.clear();
        }
    }
}

/// Why the server dropped a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// It asked for more repairs than its share of the rate and made no progress while every
    /// other member completed.
    Slow,
}

#[cfg(test)]
mod tests {
    use super::super::testing::{gated_sender_cfg, gated_sender_with, Gated};
    use super::*;
    use crate::wire::{
        AcceptRepr, BlockIndex, Holes, JoinRepr, LeaveReason, LeaveRepr, NackEntry, NackRepr,
        ObjectId, Packet, PriorityRepr, ReceiptRepr, SessionId, UnitIndex,
    };
    use crate::{Destination, Transmit};

    const A: ([u8; 4], u16) = ([10, 0, 0, 1], 7000);
    const B: ([u8; 4], u16) = ([10, 0, 0, 2], 7000);
    const C: ([u8; 4], u16) = ([10, 0, 0, 3], 7000);

    fn addr(a: ([u8; 4], u16)) -> SocketAddr {
        SocketAddr::from(a)
    }

    /// A sender of `blocks` blocks of 4 units that waits for `members` receivers.
    fn sender(blocks: u32, members: usize) -> Sender<Gated> {
        let mut s = gated_sender_with(blocks, blocks);
        s.cfg.min_receivers = members;
        s.cfg.max_wait = Duration::from_secs(3600);
        s
    }

    /// A split-mode sender of 64 blocks that waits for one member.
    fn split_sender() -> Sender<Gated> {
        let mut s = gated_sender_cfg(64, 64, Some(crate::split::SplitConfig::default()));
        s.cfg.min_receivers = 1;
        s.cfg.max_wait = Duration::from_secs(3600);
        s
    }

    fn send(s: &mut Sender<Gated>, now: Instant, from: SocketAddr, p: Packet<'_>) -> usize {
        let mut buf = vec![0u8; 4096];
        let n = p.emit(&mut buf).unwrap();
        s.handle_datagram(now, from, &buf[..n]);
        n
    }

    /// Everything the sender sends at `now`: (where, datagram length, parsed if not a unit).
    fn drain(s: &mut Sender<Gated>, now: Instant) -> Vec<(Transmit, Option<Vec<u8>>)> {
        let mut buf = vec![0u8; 4096];
        let mut out = Vec::new();
        for _ in 0..100_000 {
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
            let Some(t) = s.poll_transmit(now, &mut buf) else {
                break;
            };
            let bytes = t.payload.is_none().then(|| buf[..t.len].to_vec());
            out.push((t, bytes));
        }
        out
    }

    fn accepts(out: &[(Transmit, Option<Vec<u8>>)]) -> Vec<(SocketAddr, AcceptRepr, usize)> {
        out.iter()
            .filter_map(
                |(t, b)| match (t.destination, b.as_deref().map(Packet::parse)) {
                    (Destination::Peer(to), Some(Ok(Packet::Accept(a)))) => Some((to, a, t.len)),
                    _ => None,
                },
            )
            .collect()
    }

    /// Receiver `id` joins from `from` the way a receiver does (challenge, then the join that
    /// echoes the cookie); returns its cookie.
    fn join(s: &mut Sender<Gated>, now: Instant, from: SocketAddr, id: u64) -> u64 {
        let session = s.cfg.session;
        let receiver = ReceiverId(id);
        send(
            s,
            now,
            from,
            Packet::Join(JoinRepr {
                session,
                receiver,
                cookie: 0,
            }),
        );
        let c = accepts(&drain(s, now));
        assert!(c.len() == 1 && c[0].1.is_challenge(), "{c:?}");
        let cookie = c[0].1.cookie;
        send(
            s,
            now,
            from,
            Packet::Join(JoinRepr {
                session,
                receiver,
                cookie,
            }),
        );
        let a = accepts(&drain(s, now));
        assert!(
            a.len() == 1 && !a[0].1.is_challenge() && a[0].1.cookie == cookie,
            "{a:?} {}",
            s.debug_state()
        );
        cookie
    }

    fn every_block_nack(s: &Sender<Gated>, id: u64, cookie: u64) -> Packet<'static> {
        Packet::Nack(NackRepr {
            session: s.cfg.session,
            receiver: ReceiverId(id),
            cookie,
            entries: (0..s.total_blocks() as u32)
                .map(|b| NackEntry {
                    object: ObjectId(0),
                    block: BlockIndex(b),
                    missing: 4,
                    parity_seen: 0,
                    holes: Holes::Ranges(Vec::new()),
                })
                .collect(),
        })
    }

    fn receipt(s: &Sender<Gated>, id: u64, cookie: u64, complete: bool) -> Packet<'static> {
        Packet::Receipt(ReceiptRepr {
            cookie,
            complete,
            ..super::super::testing::receipt(s, id)
        })
    }

    /// Sends the first pass, from `t0` in steps of 10 ms: the time it is over.
    fn past_the_first_pass(s: &mut Sender<Gated>, t0: Instant) -> Instant {
        let mut now = t0;
        while !s.first_pass_done() {
            now += Duration::from_millis(10);
            drain(s, now);
        }
        now
    }

    /// Repair units in `out` (data units sent again).
    fn repair_units(out: &[(Transmit, Option<Vec<u8>>)]) -> usize {
        out.iter().filter(|(t, _)| t.payload.is_some()).count()
    }

    #[test]
    fn a_join_from_an_unproven_address_gets_only_a_challenge_no_bigger_than_it() {
        let mut s = sender(4, 1);
        let t0 = Instant::now();
        let session = s.cfg.session;
        let n = send(
            &mut s,
            t0,
            addr(A),
            Packet::Join(JoinRepr {
                session,
                receiver: ReceiverId(1),
                cookie: 0,
            }),
        );
        let c = accepts(&drain(&mut s, t0));
        assert_eq!(c.len(), 1);
        assert!(c[0].1.is_challenge());
        assert_eq!(c[0].0, addr(A));
        assert!(
            c[0].2 <= 2 * n,
            "challenge {} bytes for a {n}-byte join",
            c[0].2
        );
        assert_eq!(s.receivers(), 0, "nothing is kept before the proof");
        // A cookie is bound to the address: the one for A is wrong from B.
        let cookie = c[0].1.cookie;
        send(
            &mut s,
            t0,
            addr(B),
            Packet::Join(JoinRepr {
                session,
                receiver: ReceiverId(1),
                cookie,
            }),
        );
        assert_eq!(s.receivers(), 0);
        assert!(accepts(&drain(&mut s, t0))[0].1.is_challenge());
    }

    #[test]
    fn spoofed_leave_receipt_nack_and_priority_change_nothing() {
        let mut s = sender(4, 2);
        let t0 = Instant::now();
        let cookie = join(&mut s, t0, addr(A), 1);
        drain(&mut s, t0);
        let session = s.cfg.session;
        let leave = |cookie| {
            Packet::Leave(LeaveRepr {
                session,
                receiver: ReceiverId(1),
                cookie,
                reason: LeaveReason::Stopped,
            })
        };
        // From the member's own address with a guessed cookie, and from another address
        // with the right one.
        for (from, c) in [(addr(A), cookie ^ 1), (addr(B), cookie)] {
            send(&mut s, t0, from, leave(c));
            let p = receipt(&s, 1, c, true);
            send(&mut s, t0, from, p);
            let p = every_block_nack(&s, 1, c);
            send(&mut s, t0, from, p);
            let p = Packet::Priority(PriorityRepr {
                session,
                receiver: ReceiverId(1),
                cookie: c,
                object: ObjectId(0),
                block: BlockIndex(2),
                unit: UnitIndex(0),
                count: 2,
            });
            send(&mut s, t0, from, p);
        }
        assert_eq!(s.stats().bad_cookies, 8);
        let r = s.receiver_report();
        assert_eq!(r.len(), 1, "not removed");
        assert!(!r[0].complete, "not marked complete");
        assert_eq!(r[0].addr, addr(A), "not moved");
        assert_eq!(repair_units(&drain(&mut s, t0)), 0, "nothing repaired");
        // The member itself is heard.
        send(&mut s, t0, addr(A), leave(cookie));
        assert_eq!(s.receivers(), 0);
    }

    #[test]
    fn a_members_address_moves_only_with_a_join_answered_at_the_new_address() {
        let mut s = sender(4, 2);
        let t0 = Instant::now();
        let old = join(&mut s, t0, addr(A), 1);
        let session = s.cfg.session;
        // A join from B with A's cookie (a spoofer who knows the id): a challenge to B only.
        send(
            &mut s,
            t0,
            addr(B),
            Packet::Join(JoinRepr {
                session,
                receiver: ReceiverId(1),
                cookie: old,
            }),
        );
        let c = accepts(&drain(&mut s, t0));
        assert!(c[0].1.is_challenge() && c[0].0 == addr(B));
        assert_eq!(s.receiver_report()[0].addr, addr(A));
        // Whoever gets the challenge at B and answers it moves the member there.
        let new = join(&mut s, t0, addr(B), 1);
        assert_ne!(new, old);
        assert_eq!(s.receiver_report()[0].addr, addr(B));
        assert_eq!(s.receivers(), 1);
    }

    #[test]
    fn nothing_is_repaired_that_was_never_sent() {
        // Waiting for a second member: the first pass has sent nothing.
        let mut s = sender(64, 2);
        let t0 = Instant::now();
        let cookie = join(&mut s, t0, addr(A), 1);
        let p = every_block_nack(&s, 1, cookie);
        send(&mut s, t0, addr(A), p);
        assert_eq!(s.stats().repair_denied, 64 * 4);
    }

    /// One member, and the whole first pass (256 units) sent at 1,000 datagrams of 34 bytes
    /// per second: the sender, the member's cookie and the time then.
    fn one_member_after_the_first_pass() -> (Sender<Gated>, u64, Instant, Instant) {
        one_member_after_a_first_pass_of(64)
    }

    /// [`one_member_after_the_first_pass`], of `blocks` blocks of 4 units.
    fn one_member_after_a_first_pass_of(blocks: u32) -> (Sender<Gated>, u64, Instant, Instant) {
        let mut s = sender(blocks, 1);
        s.set_rate(34_000);
        let t0 = Instant::now();
        let cookie = join(&mut s, t0, addr(A), 1);
        let now = past_the_first_pass(&mut s, t0);
        (s, cookie, t0, now)
    }

    #[test]
    fn a_member_that_claims_to_miss_everything_gets_its_loss_allowance_then_its_share() {
        let (mut s, cookie, t0, now) = one_member_after_the_first_pass();
        assert_eq!(s.stats().data_units, 256);
        let p = every_block_nack(&s, 1, cookie);
        send(&mut s, now, addr(A), p);
        // What an honest receiver may have lost at once (1/18 of 256 units, at least one
        // block of 64), then what its share of the rate has filled its bucket with since it
        // joined, in whole blocks (a NACK entry is granted whole or not at all).
        let allowance = (256.0 * LOSS_ALLOWANCE).max(s.repair_burst());
        assert_eq!(allowance, 64.0);
        let filled = ((now - t0).as_secs_f64() * s.allowance().per_sec).min(s.repair_burst());
        assert!(filled > 4.0, "{filled}");
        let burst = ((allowance + filled) / 4.0) as u64 * 4;
        assert_eq!(s.stats().repair_denied, 256 - burst);
        let mut sent = 0;
        for i in 1..=40 {
            sent += repair_units(&drain(&mut s, now + Duration::from_millis(i * 10)));
        }
        assert_eq!(sent as u64, burst, "its burst, sent");
        // 800 ms later: a share of 1,000 units per second for 800 ms more, no more
        // (and within the second after which a slow member is dropped).
        let later = now + Duration::from_millis(800);
        let p = every_block_nack(&s, 1, cookie);
        send(&mut s, later, addr(A), p);
        let mut sent = 0;
        for i in 1..=15 {
            sent += repair_units(&drain(&mut s, later + Duration::from_millis(i * 10)));
        }
        let share = (800.0 * s.cfg.member_repair_share).ceil() as usize;
        assert!(
            sent > 0 && sent <= share + 4,
            "{sent} units granted in 1 s: {:?} {}",
            s.stats(),
            s.debug_state()
        );
    }

    #[test]
    fn a_member_that_reports_heavy_loss_may_ask_for_up_to_a_third_at_once() {
        // What a NACK for every block of a 1,024-unit first pass gets at once, after a
        // notice that reports `loss_ppm` of loss and `overflow_ppm` of socket overflow: its
        // allowance, and what its bucket filled with since it joined, in whole blocks (an
        // entry is granted whole or not at all).
        let granted = |loss_ppm: u32, overflow_ppm: u32| {
            let (mut s, cookie, t0, now) = one_member_after_a_first_pass_of(256);
            assert_eq!(s.stats().data_units, 1024);
            let notice = Packet::Receipt(ReceiptRepr {
                cookie,
                loss_ppm,
                overflow_ppm,
                ..super::super::testing::receipt(&s, 1)
            });
            send(&mut s, now, addr(A), notice);
            let p = every_block_nack(&s, 1, cookie);
            send(&mut s, now, addr(A), p);
            let filled = ((now - t0).as_secs_f64() * s.allowance().per_sec).min(s.repair_burst());
            assert!(filled > 4.0, "{filled}");
            let whole_blocks = move |allowance: f64| ((allowance + filled) / 4.0) as u64 * 4;
            (1024 - s.stats().repair_denied, whole_blocks)
        };
        // 5 % needs no more than 1/18 (57 units), and one block (64 units) is more.
        let (got, whole_blocks) = granted(50_000, 0);
        assert_eq!(got, whole_blocks(64.0));
        // 10 %, lost on the way or in its own socket: a ninth of what was sent, and an eighth
        // more (128 units).
        let (got, whole_blocks) = granted(100_000, 0);
        assert_eq!(got, whole_blocks(1024.0 / 9.0 * 9.0 / 8.0));
        assert_eq!(granted(0, 100_000).0, got);
        // Claiming to lose everything gets a third, no more.
        let (got, whole_blocks) = granted(1_000_000, 1_000_000);
        assert_eq!(got, whole_blocks(1024.0 / 3.0));
    }

    /// Member `id`'s NACK of unit `unit` of block 3.
    fn nack_of_block_3(s: &Sender<Gated>, id: u64, cookie: u64, unit: u16) -> Packet<'static> {
        Packet::Nack(NackRepr {
            session: s.cfg.session,
            receiver: ReceiverId(id),
            cookie,
            entries: vec![NackEntry {
                object: ObjectId(0),
                block: BlockIndex(3),
                missing: 1,
                parity_seen: 0,
                holes: Holes::Ranges(vec![(unit, 1)]),
            }],
        })
    }

    /// One member, the first pass over, whose latest notice found its buffer `queue_ppm` full,
    /// NACKs one unit: the repair units sent for it in the next 100 ms.
    fn one_unit_repaired_in_the_tail(queue_ppm: u32) -> (usize, Sender<Gated>) {
        let (mut s, cookie, _, now) = one_member_after_the_first_pass();
        let notice = Packet::Receipt(ReceiptRepr {
            cookie,
            queue_ppm,
            ..super::super::testing::receipt(&s, 1)
        });
        send(&mut s, now, addr(A), notice);
        let p = nack_of_block_3(&s, 1, cookie, 2);
        send(&mut s, now, addr(A), p);
        let mut sent = 0;
        for i in 1..=10 {
            sent += repair_units(&drain(&mut s, now + Duration::from_millis(i * 10)));
        }
        (sent, s)
    }

    #[test]
    fn a_small_group_s_tail_repairs_go_twice_and_without_parity() {
        // One member, the first pass over: the unit it lost goes twice (a copy lost would cost
        // a round trip at the end), and no parity goes with it (a decode of the block).
        let (sent, s) = one_unit_repaired_in_the_tail(0);
        assert_eq!(sent, 2, "{:?}", s.stats());
        assert_eq!(s.stats().tail_copies, 1);
        assert_eq!(s.stats().parity_units, 0);
        assert_eq!(s.stats().repair_denied, 0);
    }

    #[test]
    fn a_small_group_s_tail_repairs_go_once_while_a_member_s_buffer_is_filled() {
        // The same, but the member's latest notice found its socket buffer 30 % full: the
        // receivers set the pace, and a copy costs each of them the time to read and drop it
        // (with 5 % loss and receivers taking 300 MB/s the tail was as long as the first pass).
        let (sent, s) = one_unit_repaired_in_the_tail(300_000);
        assert_eq!(sent, 1, "{:?}", s.stats());
        assert_eq!(s.stats().tail_copies, 0);
        assert_eq!(s.stats().repair_denied, 0);
    }

    #[test]
    fn after_the_pass_nacks_wait_for_each_other_while_the_receivers_set_the_pace() {
        // Two members, the first pass over, each NACKing a different unit of block 3, the
        // second 1 ms after the first. In the tail nothing waits: each unit goes at once,
        // alone (and twice). While a member's buffer is over a tenth full, every repair
        // datagram costs each receiver a read, so the first NACK waits for the second and both
        // go as one XOR repair (with 5 % loss and receivers taking 300 MB/s, lone originals
        // were half the repairs).
        for queue_ppm in [0, 300_000] {
            let mut s = sender(64, 2);
            s.set_rate(34_000);
            let t0 = Instant::now();
            let ca = join(&mut s, t0, addr(A), 1);
            let cb = join(&mut s, t0, addr(B), 2);
            let now = past_the_first_pass(&mut s, t0);
            let notice = Packet::Receipt(ReceiptRepr {
                cookie: ca,
                queue_ppm,
                ..super::super::testing::receipt(&s, 1)
            });
            send(&mut s, now, addr(A), notice);
            let before = s.stats().clone();
            let p = nack_of_block_3(&s, 1, ca, 1);
            send(&mut s, now, addr(A), p);
            drain(&mut s, now);
            let then = now + Duration::from_millis(1);
            let p = nack_of_block_3(&s, 2, cb, 2);
            send(&mut s, then, addr(B), p);
            for i in 0..10 {
                drain(&mut s, then + Duration::from_millis(i * 10));
            }
            let st = s.stats();
            let originals = st.repair_units - before.repair_units;
            let xors = st.xor_units - before.xor_units;
            if queue_ppm == 0 {
                assert!(originals >= 2 && xors == 0, "{st:?}");
            } else {
                assert_eq!(
                    (originals, xors, st.xor_carried - before.xor_carried),
                    (0, 1, 2)
                );
            }
            assert_eq!(st.repair_denied, 0);
        }
    }

    #[test]
    fn a_member_that_lost_a_burst_gets_all_of_it_repaired_at_once() {
        let (mut s, cookie, _, now) = one_member_after_the_first_pass();
        // 5 % of the first pass lost at once (a socket buffer that overflowed): more than one
        // repair burst, all of it granted, none refused.
        let lost = (256.0 * 0.05) as u32 / 4 * 4;
        assert!(u64::from(lost) > s.repair_burst() as u64 / 8);
        let p = Packet::Nack(NackRepr {
            session: s.cfg.session,
            receiver: ReceiverId(1),
            cookie,
            entries: (0..lost / 4)
                .map(|b| NackEntry {
                    object: ObjectId(0),
                    block: BlockIndex(b * 5),
                    missing: 4,
                    parity_seen: 0,
                    holes: Holes::Ranges(Vec::new()),
                })
                .collect(),
        });
        // Its burst spent first (an earlier loss), so only the allowance can grant this one.
        s.membership
            .members
            .get_mut(&ReceiverId(1))
            .unwrap()
            .budget
            .bucket = TokenBucket::new(0.0);
        send(&mut s, now, addr(A), p);
        assert_eq!(s.stats().repair_denied, 0);
        let mut sent = 0;
        for i in 1..=10 {
            sent += repair_units(&drain(&mut s, now + Duration::from_millis(i * 10)));
        }
        assert_eq!(sent as u32, lost);
    }

    #[test]
    fn a_repair_four_members_ask_for_costs_each_a_quarter_and_one_alone_all_of_it() {
        let mut sh = Shares::default();
        let ids: Vec<ReceiverId> = (1..=4).map(ReceiverId).collect();
        let mut paid = [0.0f64; 4];
        let idx = |r: ReceiverId| ids.iter().position(|&x| x == r).unwrap();
        // Units 0..8 lost by all four, unit 9 by the last alone; they ask in turn.
        for (i, &id) in ids.iter().enumerate() {
            let keys: Vec<u32> = if i == 3 {
                (0..10).collect()
            } else {
                (0..8).collect()
            };
            let q = sh.quote(id, keys, |_| false);
            paid[i] += q.cost;
            for &(r, back) in &q.refunds {
                paid[idx(r)] -= back;
            }
            sh.commit(id, q);
        }
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        for p in &paid[..3] {
            assert!(close(*p, 2.0), "{paid:?}");
        }
        assert!(close(paid[3], 2.0 + 2.0), "{paid:?}");
        assert!(
            close(paid.iter().sum::<f64>(), 10.0),
            "the shares add up to the units"
        );
        // Asking again for what it pays for costs nothing; once sent, a unit asked for again
        // is a new repair.
        assert_eq!(sh.quote(ids[0], 0..8, |_| false).cost, 0.0);
        sh.sent(0);
        assert_eq!(sh.quote(ids[0], 0..8, |_| false).cost, 1.0);
        // A unit queued without a payer (a block sent whole ahead of the first pass) is free.
        assert_eq!(sh.quote(ids[0], [20], |k| k == 20).cost, 0.0);
    }

    #[test]
    fn priority_requests_are_rate_limited_per_member() {
        let mut s = sender(64, 2);
        let t0 = Instant::now();
        let cookie = join(&mut s, t0, addr(A), 1);
        let session = s.cfg.session;
        for i in 0..32 {
            let p = Packet::Priority(PriorityRepr {
                session,
                receiver: ReceiverId(1),
                cookie,
                object: ObjectId(0),
                block: BlockIndex(i),
                unit: UnitIndex(0),
                count: 1,
            });
            send(&mut s, t0, addr(A), p);
        }
        assert_eq!(s.stats().priority_denied, 32 - PRIORITY_PER_SEC as u64);
    }

    #[test]
    fn blocks_sent_whole_ahead_of_the_first_pass_count_once_in_what_a_member_can_have_missed() {
        let mut s = sender(64, 1);
        let t0 = Instant::now();
        let cookie = join(&mut s, t0, addr(A), 1);
        let p = Packet::Priority(PriorityRepr {
            session: s.cfg.session,
            receiver: ReceiverId(1),
            cookie,
            object: ObjectId(0),
            block: BlockIndex(32),
            unit: UnitIndex(0),
            count: 16,
        });
        send(&mut s, t0, addr(A), p);
        past_the_first_pass(&mut s, t0);
        let st = s.stats();
        assert_eq!(
            (st.repair_units, st.ahead_units),
            (64, 64),
            "16 blocks ahead"
        );
        assert_eq!(st.data_units, 192, "the first pass skipped them");
        // What the member can have missed: every unit once (counted twice, a member asking
        // for blocks ahead raised its own loss allowance with them).
        let a = s.allowance();
        assert_eq!(a.missable + a.repairs_sent, 256);
    }

    #[test]
    fn a_unit_one_member_wants_as_an_xor_repair_and_another_in_the_whole_block_goes_once() {
        let mut s = sender(64, 2);
        let t0 = Instant::now();
        let a = join(&mut s, t0, addr(A), 1);
        let b = join(&mut s, t0, addr(B), 2);
        let now = past_the_first_pass(&mut s, t0);
        let nack = |id: u64, cookie: u64, missing: u16, holes: Holes| {
            Packet::Nack(NackRepr {
                session: s.cfg.session,
                receiver: ReceiverId(id),
                cookie,
                entries: vec![NackEntry {
                    object: ObjectId(0),
                    block: BlockIndex(3),
                    missing,
                    parity_seen: 0,
                    holes,
                }],
            })
        };
        // A lost units 1 and 2 of block 3 (an XOR repair's list); B has nothing of it.
        let (pa, pb) = (
            nack(1, a, 2, Holes::Ranges(vec![(1, 2)])),
            nack(2, b, 4, Holes::Ranges(Vec::new())),
        );
        send(&mut s, now, addr(A), pa);
        send(&mut s, now, addr(B), pb);
        let mut sent = 0;
        for i in 1..=50 {
            sent += repair_units(&drain(&mut s, now + Duration::from_millis(i)));
        }
        assert_eq!(s.stats().repair_denied, 0);
        // The block once (A's two units are in it), and A's two units again: in a small
        // group's tail A paid for its repairs twice; B's block goes once.
        assert_eq!((sent, s.stats().tail_copies), (6, 2));
    }

    #[test]
    fn a_slow_member_is_dropped_once_every_other_member_is_complete() {
        let mut s = sender(64, 2);
        let t0 = Instant::now();
        let good = join(&mut s, t0, addr(A), 1);
        let bad = join(&mut s, t0, addr(B), 2);
        let now = past_the_first_pass(&mut s, t0);
        let p = every_block_nack(&s, 2, bad);
        send(&mut s, now, addr(B), p);
        assert!(s.stats().repair_denied > 0);
        let p = receipt(&s, 1, good, true);
        send(&mut s, now, addr(A), p);
        drain(&mut s, now);
        assert!(
            !s.is_finished() && s.receivers() == 2,
            "not before its stall"
        );
        let later = now + SLOW_STALL + Duration::from_millis(1);
        drain(&mut s, later);
        assert_eq!(s.stats().dropped_slow, 1);
        assert_eq!(s.receivers(), 1);
        for i in 1..=50 {
            drain(&mut s, later + Duration::from_millis(100 * i));
        }
        assert!(s.is_finished(), "{}", s.debug_state());
    }

    #[test]
    fn in_split_mode_a_slow_member_is_not_dropped_as_a_silent_member_expires() {
        // Until the silent member expires, the plan routes units and repairs through it: the
        // slow member's stall is counted again from the plan without it.
        let mut s = gated_sender_cfg(64, 64, Some(crate::split::SplitConfig::default()));
        s.cfg.min_receivers = 3;
        s.cfg.max_wait = Duration::from_secs(3600);
        let t0 = Instant::now();
        let good = join(&mut s, t0, addr(A), 1);
        let bad = join(&mut s, t0, addr(B), 2);
        join(&mut s, t0, addr(C), 3);
        let mut now = past_the_first_pass(&mut s, t0);
        let p = every_block_nack(&s, 2, bad);
        send(&mut s, now, addr(B), p);
        assert!(s.stats().repair_denied > 0);
        // The good member completes; both keep reporting, the third is silent.
        let report = |s: &mut Sender<Gated>, now: Instant| {
            let p = receipt(s, 1, good, true);
            send(s, now, addr(A), p);
            let p = receipt(s, 2, bad, false);
            send(s, now, addr(B), p);
            drain(s, now);
        };
        while s.stats().expired == 0 {
            assert!(now < t0 + s.cfg.receiver_timeout * 2, "never expired");
            now += Duration::from_millis(100);
            report(&mut s, now);
        }
        assert_eq!(
            (s.stats().dropped_slow, s.receivers()),
            (0, 2),
            "not as the silent member expires"
        );
        let later = now + SLOW_STALL + Duration::from_millis(100);
        while now < later {
            now += Duration::from_millis(100);
            report(&mut s, now);
        }
        assert_eq!(s.stats().dropped_slow, 1, "a stall after the new plan");
    }

    #[test]
    fn in_split_mode_the_first_unit_leaves_when_the_plan_s_hold_ends() {
        // The first plan holds the units back for half an rtt; the sender must ask to be
        // woken then (the pacer names no time before anything was sent), not at its next
        // announce.
        let mut s = split_sender();
        let t0 = Instant::now();
        join(&mut s, t0, addr(A), 1);
        let mut now = t0;
        let mut planned = None;
        let unit_at = loop {
            let out = drain(&mut s, now);
            if out.iter().any(|(t, _)| t.payload.is_some()) {
                break now;
            }
            let plan = out
                .iter()
                .any(|(_, b)| matches!(b.as_deref().map(Packet::parse), Some(Ok(Packet::Plan(_)))));
            if plan && planned.is_none() {
                planned = Some(now);
            }
            let next = s.poll_timeout().expect("a timer while sending");
            assert!(next < t0 + Duration::from_secs(10), "no unit sent");
            now = next.max(now);
        };
        let planned = planned.expect("a plan before the first unit");
        assert!(
            unit_at <= planned + s.grtt(),
            "plan at {:?}, first unit {:?} later, grtt {:?}",
            planned - t0,
            unit_at - planned,
            s.grtt()
        );
    }

    #[test]
    fn a_group_that_starts_together_is_challenged_at_once_and_a_flood_only_at_the_rate() {
        let mut s = gated_sender_cfg(64, 64, Some(crate::split::SplitConfig::default()));
        s.cfg.max_wait = Duration::from_secs(3600);
        let group = 3 * CHALLENGE_BURST as usize;
        s.set_min_receivers(group);
        let t0 = Instant::now();
        let solicit = |i: usize| {
            Packet::Solicit(crate::wire::SolicitRepr {
                session: SessionId(0),
                receiver: ReceiverId(i as u64 + 1),
                cookie: 0,
                zone: 0,
            })
        };
        let from = |i: usize| SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 7000));
        // The whole group asks at once, then twice as many spoofed Solicits in the same
        // instant: each member gets its challenge, the flood nothing.
        for i in 0..3 * group {
            send(&mut s, t0, from(i), solicit(i));
        }
        let c = accepts(&drain(&mut s, t0));
        assert_eq!(c.len(), group);
        assert!(c.iter().all(|(_, a, _)| a.is_challenge()));
        assert_eq!(s.stats().challenges_dropped, 2 * group as u64);
        // A flood that goes on gets the sustained rate, not the burst again.
        let later = t0 + Duration::from_millis(100);
        for i in 0..group {
            send(&mut s, later, from(i), solicit(i));
        }
        let answered = accepts(&drain(&mut s, later)).len();
        assert_eq!(answered, (CHALLENGES_PER_SEC / 10.0) as usize);
    }

    #[test]
    fn in_split_mode_a_new_plan_goes_three_times_within_two_round_trips() {
        // A member that misses its Plan forwards nothing (or by an old plan) until the plan is
        // sent again: a new plan is repeated as the units' hold ends and a round trip later,
        // not only every plan interval.
        let mut s = split_sender();
        let t0 = Instant::now();
        join(&mut s, t0, addr(A), 1);
        let mut now = t0;
        let mut plans = Vec::new();
        let mut first_unit = None;
        while now < t0 + Duration::from_millis(400) {
            for (t, b) in drain(&mut s, now) {
                if t.payload.is_some() {
                    first_unit.get_or_insert(now);
                }
                if matches!(b.as_deref().map(Packet::parse), Some(Ok(Packet::Plan(_)))) {
                    assert_eq!(t.destination, Destination::Peer(addr(A)));
                    plans.push(now);
                }
            }
            now += Duration::from_micros(100);
        }
        assert_eq!(plans.len(), 3, "plans at {plans:?}");
        let first_unit = first_unit.expect("units sent");
        assert!(
            plans[1] <= first_unit,
            "the repeat leaves ahead of the units"
        );
        assert!(
            plans[2] <= plans[0] + s.grtt() * 2,
            "plans at {:?}, grtt {:?}",
            plans.iter().map(|t| *t - t0).collect::<Vec<_>>(),
            s.grtt()
        );
    }

    #[test]
    fn complete_members_expire_once_silent_and_stay_in_the_summary() {
        let mut s = sender(4, 2);
        let t0 = Instant::now();
        drain(&mut s, t0);
        let c = join(&mut s, t0, addr(A), 1);
        let p = receipt(&s, 1, c, true);
        send(&mut s, t0, addr(A), p);
        let later = t0 + s.cfg.receiver_timeout * 2;
        drain(&mut s, later);
        assert_eq!(s.receivers(), 0, "its row is free");
        assert_eq!(s.stats().expired, 1);
        let r = s.receiver_report();
        assert!(r.len() == 1 && r[0].complete);
    }

    #[test]
    fn a_solicit_from_an_unproven_address_gets_a_challenge_and_no_manifest() {
        let mut s = split_sender();
        s.cfg.control = SocketAddr::from(([10, 0, 0, 9], 4000));
        let t0 = Instant::now();
        let solicit = |cookie| {
            Packet::Solicit(crate::wire::SolicitRepr {
                session: SessionId(0),
                receiver: ReceiverId(5),
                cookie,
                zone: 0,
            })
        };
        // A reflection attempt: many solicits "from" a victim's address.
        let mut asked = 0;
        for _ in 0..100 {
            asked += send(&mut s, t0, addr(B), solicit(0));
        }
        let out = drain(&mut s, t0);
        let to_b: usize = out
            .iter()
            .filter(|(t, _)| t.destination == Destination::Peer(addr(B)))
            .map(|(t, _)| t.datagram_len())
            .sum();
        let c = accepts(&out);
        assert!(c.iter().all(|(_, a, _)| a.is_challenge()));
        assert_eq!(c.len(), out.len(), "nothing but challenges");
        assert!(to_b <= 2 * asked, "{to_b} bytes answered to {asked}");
        // Whoever gets the challenge and echoes it gets the session.
        let cookie = c[0].1.cookie;
        send(&mut s, t0, addr(B), solicit(cookie));
        let out = drain(&mut s, t0);
        let to_b = |announce: bool| {
            out.iter()
                .filter(|(t, _)| t.destination == Destination::Peer(addr(B)))
                .filter_map(|(_, b)| b.as_deref().map(Packet::parse))
                .filter(|p| match p {
                    Ok(Packet::Announce(_)) => announce,
                    Ok(Packet::Manifest(_)) => !announce,
                    _ => false,
                })
                .count()
        };
        assert!(
            to_b(true) >= 1 && to_b(false) >= 1,
            "{} datagrams",
            out.len()
        );
    }
}
