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

/// Priority requests one member may make per second (and in a burst).
const PRIORITY_PER_SEC: f64 = 8.0;

/// A slow member whose reported progress has not moved for this long is dropped once every
/// other member is complete.
const SLOW_STALL: Duration = Duration::from_secs(1);

/// A member's allowance of repairs: charged for every unit its NACKs and priority requests
/// add to the repair queue.
#[derive(Clone, Debug)]
pub(super) struct RepairBudget {
    bucket: TokenBucket,
    priority: TokenBucket,
    /// Units charged so far.
    charged: u64,
    /// Repair units the server had sent when the member joined.
    repairs_at_join: u64,
    /// When a demand of its was last refused (it asks for more than its share: a slow member).
    pub(super) denied_at: Option<Instant>,
    /// Verified blocks it last reported, and when that count last grew.
    blocks_done: u64,
    pub(super) progress_at: Instant,
}

impl RepairBudget {
    pub(super) fn new(now: Instant, burst_units: f64, repairs_sent: u64) -> Self {
        RepairBudget {
            bucket: TokenBucket::new(burst_units),
            priority: TokenBucket::new(PRIORITY_PER_SEC),
            charged: 0,
            repairs_at_join: repairs_sent,
            denied_at: None,
            blocks_done: 0,
            progress_at: now,
        }
    }

    /// Its receipt notice says it verified `blocks_done` blocks.
    pub(super) fn progress(&mut self, now: Instant, blocks_done: u64) {
        if blocks_done > self.blocks_done {
            self.blocks_done = blocks_done;
            self.progress_at = now;
        }
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
}

/// Charges `m` for `units` of repairs: true if its budget allows them (what it can have
/// missed, and its bucket), else it is marked slow and nothing is charged.
pub(super) fn charge(m: &mut Member, now: Instant, a: Allowance, units: u64) -> bool {
    if units == 0 {
        return true;
    }
    let b = &mut m.budget;
    b.bucket.set_burst(a.burst);
    let missable = a.missable + a.repairs_sent.saturating_sub(b.repairs_at_join);
    if b.charged + units > missable || !b.bucket.take(now, a.per_sec, units as f64) {
        b.denied_at = Some(now);
        return false;
    }
    b.charged += units;
    true
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

    /// Repair units (of every kind) sent so far.
    fn repairs_sent(&self) -> u64 {
        self.stats.repair_units + self.stats.parity_units + self.stats.xor_carried
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
        }
    }

    /// A member's repair burst, in units: one block (at least 64 units).
    pub(super) fn repair_burst(&self) -> f64 {
        f64::from(self.cfg.geometry.units_per_block.max(64))
    }

    /// A new member's budget.
    pub(super) fn new_budget(&self, now: Instant) -> RepairBudget {
        RepairBudget::new(now, self.repair_burst(), self.repairs_sent())
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

    /// Once the first pass is over and every member that kept within its budget is
    /// complete, the slow ones (refused repairs, no progress reported for [`SLOW_STALL`])
    /// are dropped, as UFTP drops slow clients: the session does not wait on a member that
    /// asks for everything and completes nothing.
    pub(super) fn drop_slow_members(&mut self, now: Instant) {
        if !self.first_pass_done() || !self.membership.any_denied {
            return;
        }
        let members = &self.membership.members;
        let others_done = members
            .values()
            .all(|m| m.complete || m.budget.denied_at.is_some());
        if !others_done {
            return;
        }
        let slow: Vec<ReceiverId> = members
            .iter()
            .filter(|(_, m)| {
                !m.complete
                    && m.budget.denied_at.is_some()
                    && now.saturating_duration_since(m.budget.progress_at) >= SLOW_STALL
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
