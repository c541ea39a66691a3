//! Repairs: NACKs merged per block and answered with parity, originals or XOR repairs
//! (docs/DESIGN.md "Protocol"), priority requests sent whole ahead of the first pass, and
//! the parity cache.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use blockcast_status::UnitBitmap;

use super::guard::{charge, parity_key, refund, Allowance, Quote, Shares};
use super::{Sender, SenderEvent, XOR_GATHER_GRTTS};
use crate::coding;
use crate::numbering::BlockAddr;
use crate::store::BlockSource;
use crate::wire::{
    Holes, NackEntry, NackRepr, PriorityRepr, ReceiverId, UnitHeaderRepr, XorRepr, UNIT_HEADER_LEN,
    XOR_NONE, XOR_WIDTH,
};
use crate::{Destination, Transmit};

mod tail;

use tail::Again;

/// Most blocks one priority request may ask for.
const PRIORITY_BLOCKS: u32 = 16;

/// What one receiver's latest NACK for a block asked for, for XOR repairs.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Wanted {
    receiver: ReceiverId,
    /// Units not yet sent, ascending.
    units: Vec<u16>,
}

/// Repair state of one block.
#[derive(Default)]
pub(super) struct Repair {
    /// Parity indices allocated so far (the current round ends here).
    parity_end: u16,
    /// Next parity index to send.
    parity_next: u16,
    /// When the last parity unit of the block went out.
    last_sent: Option<Instant>,
    /// When the block was last sent whole for a priority request.
    whole_sent_at: Option<Instant>,
    /// The originals queued are the whole block (a priority request).
    whole: bool,
    /// Of the originals queued, those of a block ahead of the first pass, which skips it: the
    /// first pass's units, sent early (`SenderStats::ahead_units`), not repairs.
    ahead: Option<UnitBitmap>,
    /// Original units to send again.
    originals: Option<UnitBitmap>,
    /// XOR repairs: what each receiver's latest NACK for the block asked for and is not yet
    /// sent (ascending unit indices).
    wants: Vec<Wanted>,
    /// XOR repairs wait until then for the other receivers' NACKs.
    gather_until: Option<Instant>,
    queued: bool,
    /// Who pays for what is queued.
    shares: Shares,
    /// The units whose originals and XOR repairs go twice ([`Sender::tail_copies`]): a NACK
    /// in a small group's tail asked for them, and its member paid for both. Per unit: with
    /// one flag for the block, a block another member asked for whole went twice as well,
    /// unpaid for.
    twice: Option<UnitBitmap>,
    /// Those sent once so far, to go again after the block's other repairs.
    again: Vec<Again>,
}

impl Repair {
    /// Until when the block waits for more NACKs, if XOR repairs are all it has left to send
    /// and it is still waiting at `now`.
    fn gathering(&self, now: Option<Instant>) -> Option<Instant> {
        let idle = self.parity_next >= self.parity_end
            && self.originals.as_ref().is_none_or(|o| o.count_ones() == 0);
        self.gather_until
            .filter(|&t| idle && !self.wants.is_empty() && now.is_none_or(|now| now < t))
    }
}

/// What one NACK entry adds to a block's repairs.
enum How {
    /// This many more parity units.
    Parity(u16),
    /// The member's wanted units for XOR repairs (ascending).
    Xor(Vec<u16>),
    /// These original units.
    Originals(Vec<u16>),
}

/// Parity units per block, computed once and kept for the most recently computed blocks.
#[derive(Default)]
struct ParityCache {
    blocks: HashMap<u64, Vec<u8>>,
    /// The blocks kept, oldest first.
    lru: VecDeque<u64>,
}

impl ParityCache {
    /// Block `seq`'s parity units, from `encode` if they are not kept; keeps at most `keep`
    /// blocks (the oldest goes).
    fn get_or_encode(
        &mut self,
        seq: u64,
        keep: usize,
        encode: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Option<&[u8]> {
        if !self.blocks.contains_key(&seq) {
            let parity = encode()?;
            if self.lru.len() >= keep.max(1) {
                if let Some(old) = self.lru.pop_front() {
                    self.blocks.remove(&old);
                }
            }
            self.blocks.insert(seq, parity);
            self.lru.push_back(seq);
        }
        self.blocks.get(&seq).map(Vec::as_slice)
    }
}

/// The sender's repair state: per block, and the order blocks are served in.
#[derive(Default)]
pub(super) struct Repairs {
    /// Repair state by block number (global numbering).
    blocks: HashMap<u64, Repair>,
    /// Blocks with repairs to send: NACK answers at the back, priority blocks at the front.
    pub(super) queue: VecDeque<u64>,
    parity: ParityCache,
    /// Repairs go as originals ([`Sender::repair_by_originals`]), as decided at this instant.
    by_originals: bool,
    originals_checked: Option<Instant>,
    /// The latest time the sender was called with: a block whose gathering has ended by then
    /// is backlog, not waiting.
    pub(super) now: Option<Instant>,
}

impl Repairs {
    /// Nothing is queued.
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Drops every repair (nobody is left to send them to).
    pub(super) fn clear(&mut self) {
        self.queue.clear();
        self.blocks.clear();
    }
}

impl<S: BlockSource> Sender<S> {
    /// XOR repairs wait for other members' NACKs ([`Repair::gather_until`]) while the first
    /// pass runs, and after it while the receivers set the pace
    /// ([`Sender::receivers_behind`]): in the tail otherwise, where each round trip is time
    /// added to the transfer, nothing waits.
    fn gathers(&self) -> bool {
        !self.first_pass_done() || self.receivers_behind()
    }

    /// The queued blocks whose repairs can go now: before the first pass is over, blocks
    /// whose XOR repairs wait for more NACKs have nothing to send yet.
    fn ready_repairs(&self) -> impl Iterator<Item = u64> + '_ {
        let now = self.repairs.now;
        let gathers = self.gathers();
        self.repairs.queue.iter().copied().filter(move |s| {
            !gathers
                || self
                    .repairs
                    .blocks
                    .get(s)
                    .and_then(|r| r.gathering(now))
                    .is_none()
        })
    }

    /// Blocks waiting in the repair queue (NACK answers and priority blocks) with something
    /// to send now.
    pub fn repair_backlog(&self) -> usize {
        self.ready_repairs().count()
    }

    /// Datagram bytes of the repairs queued and ready to go: parity, originals, one XOR
    /// repair per unit a member wants (an upper bound), and tail copies.
    pub fn repair_backlog_bytes(&self) -> u64 {
        let datagram = (UNIT_HEADER_LEN + usize::from(self.cfg.geometry.unit_size)) as u64;
        let units: u64 = self
            .ready_repairs()
            .filter_map(|s| self.repairs.blocks.get(&s))
            .map(|r| {
                let parity = u64::from(r.parity_end.saturating_sub(r.parity_next));
                let originals = r.originals.as_ref().map_or(0, |o| o.count_ones()) as u64;
                let wanted: usize = r.wants.iter().map(|w| w.units.len()).sum();
                parity + originals + wanted as u64 + r.again.len() as u64
            })
            .sum();
        units * datagram
    }

    /// A NACK from a member: each block it names joins that block's repairs.
    pub(super) fn on_nack(&mut self, now: Instant, n: &NackRepr) {
        if self.heard_from(now, n.receiver).is_none() {
            self.stats.strangers += 1;
            return;
        }
        self.repairs.now = Some(now);
        let incomplete = self.membership.incomplete();
        let allowance = self.allowance();
        for e in &n.entries {
            self.on_nack_entry(now, n.receiver, incomplete, allowance, e);
        }
    }

    /// Charges member `receiver` for `units` of repairs ([`charge`]); counts a refusal.
    fn charge_member(
        &mut self,
        now: Instant,
        receiver: ReceiverId,
        allowance: Allowance,
        units: u64,
    ) -> bool {
        self.pay(now, receiver, allowance, units as f64, units)
    }

    /// Charges member `receiver` `cost` units for a request of `units` repair units
    /// ([`charge`]); counts `units` refused if its budget does not allow it.
    fn pay(
        &mut self,
        now: Instant,
        receiver: ReceiverId,
        allowance: Allowance,
        cost: f64,
        units: u64,
    ) -> bool {
        let Some(m) = self.membership.members.get_mut(&receiver) else {
            return false;
        };
        if charge(m, now, allowance, cost) {
            return true;
        }
        self.membership.any_denied = true;
        self.stats.repair_denied += units;
        false
    }

    /// Charges member `receiver` for its share of block `seq`'s repairs (`q`), gives the
    /// members it now shares them with their difference back, and records its keys. False
    /// (and nothing changes) if its budget does not allow it.
    fn pay_share(
        &mut self,
        now: Instant,
        receiver: ReceiverId,
        allowance: Allowance,
        seq: u64,
        q: Quote,
        units: u64,
    ) -> bool {
        if !self.pay(now, receiver, allowance, q.cost, units) {
            return false;
        }
        for (r, back) in &q.refunds {
            if let Some(m) = self.membership.members.get_mut(r) {
                refund(m, *back);
            }
        }
        if let Some(r) = self.repairs.blocks.get_mut(&seq) {
            r.shares.commit(receiver, q);
        }
        true
    }

    /// A priority request from a member: the blocks it names go out whole, first.
    pub(super) fn on_priority(&mut self, now: Instant, p: &PriorityRepr) {
        let Some(first) = self.numbering.seq(p.object, p.block) else {
            return;
        };
        let Some(row) = self.heard_from(now, p.receiver) else {
            return;
        };
        if !self.priority_allowed(now, p.receiver) {
            return;
        }
        let allowance = self.allowance();
        // A request covers at most PRIORITY_BLOCKS blocks, inside its object: a
        // player asks again as it goes, and one receiver cannot claim the link.
        let obj_end = self.numbering.object_end(p.object);
        let end = (first + u64::from(p.count.min(PRIORITY_BLOCKS))).min(obj_end);
        // Last first: each goes to the front, so the first asked for leaves first.
        for seq in (first..end).rev() {
            // Request status per receiver and block; requests merge: a block
            // already on its way (asked for by anyone) is not queued twice.
            self.membership.matrix.request(row, seq as usize);
            // Not while it is queued or just went out (it may still be on its way).
            let settle = self.grtt() * 2;
            let busy = self.repairs.blocks.get(&seq).is_some_and(|r| {
                r.queued
                    || r.whole_sent_at
                        .is_some_and(|t| now.saturating_duration_since(t) < settle)
            });
            let a = self.numbering.addr(seq);
            if !busy && self.source.available(a.object, a.block) {
                // A block the first pass has gone by, or one already sent whole, is sent
                // again: that many repair units of this member's budget. One ahead of it
                // costs nothing more (the first pass skips it), within the member's
                // allowance of blocks ahead.
                let k = u64::from(self.numbering.units_in(seq));
                // The blocks at the first pass's position (one per stripe) are on their way.
                let in_flight = allowance.passed + u64::from(self.cfg.stripes);
                let again = seq < in_flight || self.first_pass.skip.get(seq as usize);
                let mut free = !again && self.free_ahead(now, p.receiver);
                if !free && !self.charge_member(now, p.receiver, allowance, k) {
                    return;
                }
                if !again && !self.take_from_pass(seq) {
                    // A data thread started it since it last reported where it is: it goes
                    // again, paid for (taken as ahead, two blocks of a 64 MiB priority flood
                    // went out twice for nothing, 2 % of the session).
                    if free && !self.charge_member(now, p.receiver, allowance, k) {
                        return;
                    }
                    free = false;
                }
                self.queue_priority(seq, free);
                if !free {
                    // It paid for the whole block: others that NACK units of it share them.
                    if let Some(r) = self.repairs.blocks.get_mut(&seq) {
                        let q = r.shares.quote(p.receiver, 0..k as u32, |_| false);
                        r.shares.commit(p.receiver, q);
                    }
                }
            }
        }
    }

    /// Sends block `seq` whole, ahead of the repairs already queued: a receiver is waiting to
    /// play or serve it. The first pass goes on meanwhile (data threads are not held).
    /// `ahead`: the block is ahead of the first pass, sent whole in its place.
    fn queue_priority(&mut self, seq: u64, ahead: bool) {
        let k = usize::from(self.numbering.units_in(seq));
        let r = self.repairs.blocks.entry(seq).or_default();
        r.ahead = ahead.then(|| {
            let mut all = UnitBitmap::new(k);
            for u in 0..k {
                all.set(u);
            }
            all
        });
        let originals = r.originals.get_or_insert_with(|| UnitBitmap::new(k));
        for u in 0..k {
            originals.set(u);
        }
        r.whole = true;
        r.queued = true;
        self.repairs.queue.push_front(seq);
        // The first pass skips it from now on (Release: a stripe that sees the bit skips the
        // block): were it set only once the block had gone out whole, a stripe reaching the
        // block meanwhile would send it a second time.
        self.first_pass.skip.set(seq as usize);
    }

    /// One block of a NACK from `receiver`; `incomplete` members are still receiving (when
    /// all of them asked for a block, its XOR repairs need not wait for more NACKs).
    fn on_nack_entry(
        &mut self,
        now: Instant,
        receiver: ReceiverId,
        incomplete: usize,
        allowance: Allowance,
        e: &NackEntry,
    ) {
        let Some(seq) = self.numbering.seq(e.object, e.block) else {
            return;
        };
        if !self.source.available(e.object, e.block) {
            // Not here yet (a relay still receiving it): the first pass brings it.
            return;
        }
        let k = self.numbering.units_in(seq);
        let max_parity = self.cfg.geometry.max_parity;
        let by_originals = self.repair_by_originals(now);
        let xor = by_originals && self.cfg.xor_repairs && self.split.is_none();
        let settle = self.grtt() * 2;
        let r = self.repairs.blocks.entry(seq).or_default();
        // Parity this receiver may still get: what is queued, and what was sent so recently
        // that it may not have arrived when the receiver wrote. Parity sent longer ago either
        // arrived (and the receiver counted it) or was lost (or sent before it listened).
        let settled = if r
            .last_sent
            .is_some_and(|t| now.saturating_duration_since(t) > settle)
        {
            r.parity_next
        } else {
            0
        };
        let seen = e.parity_seen.max(settled);
        let in_flight = r.parity_end.saturating_sub(seen);
        let want = e.missing.saturating_sub(in_flight);
        // Of the parity in flight it will use, what is still queued is shared with whoever
        // else asked for it; what went out already is paid for.
        let queued_from = seen.max(r.parity_next);
        let use_queued = e
            .missing
            .min(in_flight)
            .saturating_sub(r.parity_next.saturating_sub(seen));
        let queued_parity = (queued_from..queued_from.saturating_add(use_queued)).map(parity_key);
        if want == 0 {
            let mut q = r.shares.quote(receiver, queued_parity, |_| false);
            // Covered by parity in flight; in the tail, enough more of it that losing some
            // does not cost another round (what is in flight beyond its need counts).
            let spare = in_flight - e.missing;
            let extra = if e.missing < k {
                self.tail_extra(now, receiver, seq, 0, u64::from(e.missing), q.cost)
                    .saturating_sub(spare)
            } else {
                0
            };
            q.cost += f64::from(extra);
            if self.pay_share(now, receiver, allowance, seq, q, 0) && extra > 0 {
                self.queue_parity(seq, extra);
            }
            return;
        }
        let whole = e.missing >= k;
        let listed = !matches!(&e.holes, Holes::Ranges(r) if r.is_empty());
        // What this entry adds to the repair queue.
        let how = if !whole && !by_originals && r.parity_end + want <= max_parity {
            How::Parity(want)
        } else if xor && !whole && listed {
            How::Xor(hole_units(e, k))
        } else if listed {
            // Parity cannot cover it: the originals it lists.
            How::Originals(hole_units(e, k))
        } else {
            // The receiver has nothing of the block.
            How::Originals((0..k).collect())
        };
        // Its share of every repair unit it needs that is queued, and all of what it adds.
        let (mut q, units) = match &how {
            How::Parity(n) => {
                let end = r.parity_end;
                let keys = queued_parity.chain((end..end.saturating_add(*n)).map(parity_key));
                (r.shares.quote(receiver, keys, |_| false), u64::from(*n))
            }
            How::Xor(list) | How::Originals(list) => {
                let keys = list.iter().map(|&u| u32::from(u));
                let queued = |key: u32| {
                    r.originals
                        .as_ref()
                        .is_some_and(|o| key < u32::from(k) && o.get(key as usize))
                };
                (r.shares.quote(receiver, keys, queued), list.len() as u64)
            }
        };
        let adds = match &how {
            How::Parity(n) => *n,
            _ => 0,
        };
        let extra = if whole {
            0
        } else {
            self.tail_extra(now, receiver, seq, adds, units, q.cost)
        };
        q.cost += f64::from(extra);
        let twice = !whole
            && !matches!(how, How::Parity(_))
            && self.tail_copies(now, receiver, allowance, q.cost);
        if twice {
            q.cost *= 2.0;
        }
        if !self.pay_share(now, receiver, allowance, seq, q, units) {
            return;
        }
        if extra > 0 {
            self.queue_parity(seq, extra);
        }
        self.queue_entry(now, seq, receiver, how, twice, incomplete);
    }

    /// Queues what one NACK entry of `receiver`, paid for, adds to block `seq`'s repairs
    /// (`twice`: its originals and XOR repairs go twice); its XOR repairs wait for the other
    /// members' NACKs ([`XOR_GATHER_GRTTS`]), no longer once all `incomplete` members have
    /// asked.
    fn queue_entry(
        &mut self,
        now: Instant,
        seq: u64,
        receiver: ReceiverId,
        how: How,
        twice: bool,
        incomplete: usize,
    ) {
        let k = self.numbering.units_in(seq);
        let gather = self.grtt() * XOR_GATHER_GRTTS;
        let Some(r) = self.repairs.blocks.get_mut(&seq) else {
            return;
        };
        if twice {
            if let How::Xor(list) | How::Originals(list) = &how {
                let t = r
                    .twice
                    .get_or_insert_with(|| UnitBitmap::new(usize::from(k)));
                for &u in list {
                    t.set(usize::from(u));
                }
            }
        }
        match how {
            How::Parity(n) => r.parity_end += n,
            How::Xor(list) => {
                match r.wants.iter_mut().find(|w| w.receiver == receiver) {
                    Some(w) => w.units = list,
                    None => r.wants.push(Wanted {
                        receiver,
                        units: list,
                    }),
                }
                r.gather_until.get_or_insert(now + gather);
                if r.wants.len() >= incomplete {
                    // Everybody asked: nothing more to wait for.
                    r.gather_until = Some(now);
                }
            }
            How::Originals(units) => {
                let originals = r
                    .originals
                    .get_or_insert_with(|| UnitBitmap::new(usize::from(k)));
                for u in units {
                    originals.set(usize::from(u));
                }
            }
        }
        if !r.queued {
            r.queued = true;
            self.repairs.queue.push_back(seq);
        }
    }

    /// Whether repairs go as originals now ([`SenderConfig::originals_factor`]); decided
    /// again at most every 100 ms (it looks at every member).
    ///
    /// [`SenderConfig::originals_factor`]: super::SenderConfig::originals_factor
    fn repair_by_originals(&mut self, now: Instant) -> bool {
        let factor = u64::from(self.cfg.originals_factor);
        if factor == 0 {
            return false;
        }
        if self
            .repairs
            .originals_checked
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_millis(100))
        {
            return self.repairs.by_originals;
        }
        let (mut sum, mut max, mut n) = (0u64, 0u64, 0u64);
        for m in self.membership.members.values().filter(|m| !m.complete) {
            let p = u64::from(m.loss_est_ppm);
            sum += p;
            max = max.max(p);
            n += 1;
        }
        self.repairs.by_originals = if max == 0 {
            n <= factor
        } else {
            sum <= factor * max
        };
        self.repairs.originals_checked = Some(now);
        self.repairs.by_originals
    }

    /// When every queued repair is an XOR repair still gathering NACKs: the earliest time one
    /// of them is done gathering.
    pub(super) fn repair_gathering(&self) -> Option<Instant> {
        if !self.gathers() {
            return None;
        }
        let mut first: Option<Instant> = None;
        for seq in &self.repairs.queue {
            let t = self.repairs.blocks.get(seq)?.gathering(None)?;
            first = Some(first.map_or(t, |f| f.min(t)));
        }
        first
    }

    pub(super) fn send_repair(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        // Blocks still gathering NACKs for their XOR repairs step aside, once each; after the
        // first pass nothing waits (the tail's round trips are the transfer's end).
        self.repairs.now = Some(now);
        let mut rotations = self.repairs.queue.len();
        let tail = !self.gathers();
        while let Some(&seq) = self.repairs.queue.front() {
            let BlockAddr { object, block } = self.numbering.addr(seq);
            let r = self.repairs.blocks.get_mut(&seq)?;
            if r.parity_next < r.parity_end {
                let index = r.parity_next;
                let round_end = r.parity_end;
                r.parity_next += 1;
                r.last_sent = Some(now);
                r.shares.sent(parity_key(index));
                return self.parity_unit(now, buf, seq, index, round_end);
            }
            if let Some(orig) = r.originals.as_mut() {
                if let Some(u) = orig.iter_ones().next() {
                    orig.clear(u);
                    r.shares.sent(u as u32);
                    // A member that wants it as an XOR repair gets it now (all of a block's
                    // originals go before its XOR repairs). Left in, it went out a second time
                    // for nothing: a member NACKing a block sent whole ahead of the pass, which
                    // the pass had gone by, got it whole and again unit by unit (4,615 units
                    // of a 64 MiB priority flood, 10 % of the session).
                    let unit = u as u16;
                    for w in &mut r.wants {
                        if let Ok(i) = w.units.binary_search(&unit) {
                            w.units.remove(i);
                        }
                    }
                    r.wants.retain(|w| !w.units.is_empty());
                    if !r.whole && r.twice.as_ref().is_some_and(|t| t.get(u)) {
                        r.again.push(Again::Original(u as u16));
                    }
                    if r.ahead.as_mut().is_some_and(|a| a.clear(u)) {
                        self.stats.ahead_units += 1;
                    }
                    if orig.count_ones() == 0 {
                        r.ahead = None;
                        r.whole_sent_at = Some(now);
                        if std::mem::take(&mut r.whole) {
                            // The group got it whole (the first pass skips it since it was
                            // queued). Receivers that lost some of it NACK.
                            self.events
                                .push_back(SenderEvent::SentWhole { object, block });
                        }
                    }
                    return self.data_unit(now, buf, seq, u as u16, true);
                }
            }
            r.originals = None;
            if !r.wants.is_empty() {
                if !tail && r.gather_until.is_some_and(|t| now < t) {
                    // Other receivers' NACKs for this block may still come: wait for them,
                    // and let the blocks behind it go first.
                    if rotations == 0 {
                        return None;
                    }
                    rotations -= 1;
                    self.repairs.queue.rotate_left(1);
                    continue;
                }
                let (units, n) = next_combo(&mut r.wants);
                for &u in &units[..n] {
                    r.shares.sent(u32::from(u));
                }
                let paid_twice = |t: &UnitBitmap| units[..n].iter().any(|&u| t.get(usize::from(u)));
                if r.twice.as_ref().is_some_and(paid_twice) {
                    r.again.push(Again::Xor(units, n));
                }
                r.wants.retain(|w| !w.units.is_empty());
                if r.wants.is_empty() {
                    r.gather_until = None;
                }
                return match n {
                    0 => continue,
                    1 => self.data_unit(now, buf, seq, units[0], true),
                    _ => self.xor_unit(buf, seq, units, n),
                };
            }
            if let Some(a) = r.again.pop() {
                self.stats.tail_copies += 1;
                return match a {
                    Again::Original(u) | Again::Xor([u, ..], 1) => {
                        self.data_unit(now, buf, seq, u, true)
                    }
                    Again::Xor(units, n) => self.xor_unit(buf, seq, units, n),
                };
            }
            r.gather_until = None;
            r.queued = false;
            r.twice = None;
            r.shares.clear();
            self.repairs.queue.pop_front();
        }
        None
    }

    /// An XOR repair of `units[..n]` of a block (wire.md §3.2).
    fn xor_unit(
        &mut self,
        buf: &mut [u8],
        seq: u64,
        units: [u16; XOR_WIDTH],
        n: usize,
    ) -> Option<Transmit> {
        let us = usize::from(self.cfg.geometry.unit_size);
        let BlockAddr { object, block } = self.numbering.addr(seq);
        let block_len = self.numbering.block_len(seq);
        if block_len == 0 {
            return None;
        }
        let hdr = XorRepr {
            session: self.cfg.session,
            object,
            block,
            units,
        };
        let h = hdr.emit(buf).ok()?;
        let out = buf.get_mut(h..h + us)?;
        out.fill(0);
        let data = self.source.block(object, block);
        for &u in &units[..n] {
            let off = usize::from(u) * us;
            let len = block_len.checked_sub(off)?.min(us);
            for (o, d) in out[..len].iter_mut().zip(data.get(off..off + len)?) {
                *o ^= d;
            }
        }
        self.stats.xor_units += 1;
        self.stats.xor_carried += n as u64;
        self.stats.data_bytes += (h + us) as u64;
        Some(Transmit {
            destination: Destination::Group,
            len: h + us,
            payload: None,
        })
    }

    fn parity_unit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        seq: u64,
        index: u16,
        round_end: u16,
    ) -> Option<Transmit> {
        let g = self.cfg.geometry;
        let us = usize::from(g.unit_size);
        let BlockAddr { object, block } = self.numbering.addr(seq);
        let k = self.numbering.units_in(seq);
        let hdr = UnitHeaderRepr {
            session: self.cfg.session,
            parity: true,
            repair: false,
            object,
            block,
            index,
            round_end,
            timestamp: self.timestamp(now),
        };
        let source = &self.source;
        let parity =
            self.repairs
                .parity
                .get_or_encode(seq, self.cfg.parity_cache_blocks, || {
                    let data = source.block(object, block);
                    coding::encode_block(data, k, g.max_parity, g.unit_size).ok()
                })?;
        let n = hdr.emit(buf).ok()?;
        let start = usize::from(index) * us;
        buf.get_mut(n..n + us)?
            .copy_from_slice(&parity[start..start + us]);
        self.stats.parity_units += 1;
        self.stats.parity_bytes += (UNIT_HEADER_LEN + us) as u64;
        let t = Transmit {
            destination: Destination::Group,
            len: n + us,
            payload: None,
        };
        self.route(t, buf, seq, true, index)
    }
}

/// The units below `k` a NACK entry lists as missing, ascending, each once.
fn hole_units(e: &NackEntry, k: u16) -> Vec<u16> {
    let mut list: Vec<u16> = e
        .holes
        .units()
        .take(usize::from(k))
        .filter(|&u| u < k)
        .collect();
    list.sort_unstable();
    list.dedup();
    list
}

/// Picks the next XOR repair from what each receiver wants of one block: up to
/// [`XOR_WIDTH`] units such that every receiver wanting any of them holds all the others (as
/// its NACK says), so each rebuilds its unit from the one datagram. Starts from the receiver
/// that wants most; the units picked leave every list. Returns the units (ascending, unused
/// slots [`XOR_NONE`]) and how many; one unit is a plain original repair, 0 when nothing is
/// wanted.
fn next_combo(wants: &mut [Wanted]) -> ([u16; XOR_WIDTH], usize) {
    let misses = |l: &Vec<u16>, u: u16| l.binary_search(&u).is_ok();
    let mut order: Vec<usize> = (0..wants.len())
        .filter(|&i| !wants[i].units.is_empty())
        .collect();
    order.sort_by_key(|&i| std::cmp::Reverse(wants[i].units.len()));
    let Some(&first) = order.first() else {
        return ([XOR_NONE; XOR_WIDTH], 0);
    };
    let mut combo: Vec<u16> = vec![wants[first].units[0]];
    let mut covered: Vec<bool> = wants.iter().map(|w| misses(&w.units, combo[0])).collect();
    for &i in &order[1..] {
        if combo.len() == XOR_WIDTH {
            break;
        }
        if covered[i] {
            continue;
        }
        // A unit this receiver misses that every receiver missing it can use: each of them
        // holds every unit already picked. (Then every receiver misses at most one.)
        let pick = wants[i].units.iter().copied().find(|&y| {
            wants
                .iter()
                .all(|w| !misses(&w.units, y) || combo.iter().all(|&c| !misses(&w.units, c)))
        });
        if let Some(y) = pick {
            for (j, w) in wants.iter().enumerate() {
                covered[j] |= misses(&w.units, y);
            }
            combo.push(y);
        }
    }
    for w in wants.iter_mut() {
        w.units.retain(|u| !combo.contains(u));
    }
    combo.sort_unstable();
    let mut units = [XOR_NONE; XOR_WIDTH];
    units[..combo.len()].copy_from_slice(&combo);
    (units, combo.len())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{gated_sender, Gated};
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn xor_combinations_serve_each_receiver_one_unit_at_a_time() {
        // Four receivers; units 9 and 20 are missed by two of them.
        let lists: [&[u16]; 4] = [&[1, 9, 12], &[2, 9, 30], &[3, 20], &[4, 20, 31, 40]];
        let mut wants: Vec<Wanted> = lists
            .iter()
            .enumerate()
            .map(|(i, l)| Wanted {
                receiver: ReceiverId(i as u64),
                units: l.to_vec(),
            })
            .collect();
        let mut delivered: Vec<Vec<u16>> = vec![Vec::new(); 4];
        let mut datagrams = 0;
        loop {
            let before: Vec<Vec<u16>> = wants.iter().map(|w| w.units.clone()).collect();
            let (units, n) = next_combo(&mut wants);
            if n == 0 {
                break;
            }
            datagrams += 1;
            let picked = &units[..n];
            assert!(picked.windows(2).all(|w| w[0] < w[1]), "{units:?}");
            assert!(units[n..].iter().all(|&u| u == XOR_NONE));
            for (i, l) in before.iter().enumerate() {
                let missed: Vec<u16> = picked.iter().copied().filter(|u| l.contains(u)).collect();
                // Each receiver misses at most one unit of a combination (so it can use it).
                assert!(
                    missed.len() <= 1,
                    "receiver {i} misses {missed:?} of {picked:?}"
                );
                delivered[i].extend(missed);
            }
        }
        for (i, l) in lists.iter().enumerate() {
            let mut d = delivered[i].clone();
            d.sort_unstable();
            assert_eq!(d, l.to_vec(), "receiver {i}");
        }
        // 11 distinct units (12 wants) in fewer datagrams than originals would take.
        assert!(datagrams < 11, "{datagrams} datagrams");
    }

    #[test]
    fn repairs_go_as_originals_while_they_cost_at_most_the_factor_times_parity() {
        let mut s = gated_sender();
        let t0 = Instant::now();
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        // Members with these smoothed loss rates (ppm); the decision at a fresh instant.
        let decide = |s: &mut Sender<Gated>, losses: &[u32], at: Duration| {
            for (i, &p) in losses.iter().enumerate() {
                let id = ReceiverId(i as u64 + 1);
                s.admit(t0, addr, id);
                s.membership.members.get_mut(&id).unwrap().loss_est_ppm = p;
            }
            s.repair_by_originals(t0 + at)
        };
        // No loss reported yet: the member count decides (4 by default).
        assert!(decide(&mut s, &[0; 4], Duration::ZERO));
        // Decided again only after 100 ms.
        assert!(decide(&mut s, &[0; 5], Duration::from_millis(50)));
        assert!(!decide(&mut s, &[0; 5], Duration::from_millis(200)));
        // 20 members losing alike: originals would cost 20x parity's bandwidth.
        assert!(!decide(&mut s, &[10_000; 20], Duration::from_millis(400)));
        // One of them loses far more: the others' holes add little to its own.
        let mut losses = [1_000; 20];
        losses[7] = 50_000;
        assert!(decide(&mut s, &losses, Duration::from_millis(600)));
        // Complete members do not count: 20 alike, of which 17 are done.
        assert!(!decide(&mut s, &[10_000; 20], Duration::from_millis(800)));
        for (i, m) in s.membership.members.values_mut().enumerate() {
            m.complete = i >= 3;
        }
        assert!(s.repair_by_originals(t0 + Duration::from_millis(1000)));
        // Factor 0: parity always.
        s.cfg.originals_factor = 0;
        assert!(!s.repair_by_originals(t0 + Duration::from_millis(1200)));
    }
}
