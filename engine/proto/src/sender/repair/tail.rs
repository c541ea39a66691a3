//! The tail of a transfer: the first pass is over or nearly, and a repair lost on the way
//! costs a NACK round trip of added time. A large group's repairs there carry parity for
//! their own loss and the pass's last blocks get parity before any NACK; a small group's
//! (repairs by originals) go twice instead, since parity costs each receiver that uses it a
//! decode of the whole block (docs/DESIGN.md 2026-12-02, "what 5 % loss cost across
//! namespaces").

use std::time::Instant;

use super::super::guard::{affords, Allowance};
use super::super::Sender;
use crate::store::BlockSource;
use crate::wire::{ReceiverId, XOR_WIDTH};

/// The tail: the first pass is over, or will be within this many GRTTs (a NACK retried for a
/// repair lost on the way waits about six: its backoff window and the round trip). A repair
/// answered there goes with parity for its own loss ([`tail_parity`]) in a large group, twice
/// in a small one ([`Sender::tail_copies`]), so that one round mends the block: a retry there
/// is time added to the transfer, not hidden behind the pass.
const TAIL_GRTTS: u32 = 8;

/// The last blocks of the first pass that get parity before any NACK ([`Sender::tail_fec`]):
/// those whose pass ends within this many GRTTs of the pass's end, whose NACK (after a backoff
/// of up to 4.25 GRTTs, about one on average in small groups) and its repair would come after
/// it. Each costs a receiver that lost any of it a decode of the block, so no more than that.
const FEC_GRTTS: u32 = 4;

/// The most loss a member's estimate may claim for the tail's extra parity (parts per
/// million): a member reporting more gets no more.
const TAIL_LOSS_CAP_PPM: u32 = 100_000;

/// Extra parity units for a repair of `units` units to a member losing `loss_ppm`: its
/// expected loss of them and two standard deviations (independent loss), so that it
/// completes the block from this round in about 98 cases in 100.
fn tail_parity(units: u64, loss_ppm: u32) -> u16 {
    if units == 0 || loss_ppm == 0 {
        return 0;
    }
    let p = f64::from(loss_ppm.min(TAIL_LOSS_CAP_PPM)) / 1e6;
    let mean = units as f64 * p;
    (mean + 2.0 * mean.sqrt()).ceil().min(f64::from(u16::MAX)) as u16
}

/// A repair sent in the tail to a small group, to go once more ([`Repair::again`]).
///
/// [`Repair::again`]: super::Repair
#[derive(Clone, Copy, Debug)]
pub(super) enum Again {
    Original(u16),
    Xor([u16; XOR_WIDTH], usize),
}

impl<S: BlockSource> Sender<S> {
    /// Queues `n` more parity units of block `seq` for the tail ([`tail_parity`]).
    pub(super) fn queue_parity(&mut self, seq: u64, n: u16) {
        let r = self.repairs.blocks.entry(seq).or_default();
        r.parity_end += n;
        self.stats.tail_parity += u64::from(n);
        if !r.queued {
            r.queued = true;
            self.repairs.queue.push_back(seq);
        }
    }

    /// In the tail, parity for the own loss of a repair of `units` units to `receiver` (on
    /// top of the `adds` parity units it queues for block `seq`), so that one round mends the
    /// block: charged to the member with the repair's `cost`, and left out where its budget
    /// would not stretch to it (the repair itself is what it asked for).
    pub(super) fn tail_extra(
        &mut self,
        now: Instant,
        receiver: ReceiverId,
        seq: u64,
        adds: u16,
        units: u64,
        cost: f64,
    ) -> u16 {
        // A small group's repairs are originals and XOR repairs; in the tail they go twice
        // ([`Repair::again`]) instead of with parity.
        if !self.in_tail() || self.repairs.by_originals {
            return 0;
        }
        let allowance = self.allowance();
        let queued = self.repairs.blocks.get(&seq).map_or(0, |r| r.parity_end);
        let room = self
            .cfg
            .geometry
            .max_parity
            .saturating_sub(queued.saturating_add(adds));
        let Some(m) = self.membership.members.get_mut(&receiver) else {
            return 0;
        };
        let more = tail_parity(units, m.loss_est_ppm).min(room);
        if affords(m, now, allowance, cost + f64::from(more)) {
            more
        } else {
            0
        }
    }

    /// Blocks `from..to` have just had their first pass. In the tail ([`TAIL_GRTTS`]), each
    /// gets parity for the loss the members measure, before any NACK: a NACK for one of the
    /// pass's last blocks would come after the pass, a round trip of added time, so the end of
    /// the pass should leave little to NACK. The count is [`tail_parity`] of the block's units
    /// at the highest smoothed loss among the members still receiving (capped); nothing where
    /// nobody reports loss. It is the server's own choice, charged to nobody, and bounded by
    /// the blocks in the tail and `max_parity`. Not for a small group (repairs by originals):
    /// parity there costs each receiver that lost any of the block a decode of all of it
    /// (1.46 ms per MiB on one core, whatever was lost: 7x the hash), and across namespaces,
    /// where the receivers share the cores, that decode cost more time than the NACK round
    /// trip it saves (docs/DESIGN.md 2026-12-02, "the tail of a small group").
    pub(in crate::sender) fn tail_fec(&mut self, now: Instant, from: u64, to: u64) {
        if from >= to || self.split.is_some() || !self.pass_ends_within(FEC_GRTTS) {
            return;
        }
        if self.repair_by_originals(now) {
            return;
        }
        let loss = self
            .membership
            .members
            .values()
            .filter(|m| !m.complete)
            .map(|m| m.loss_est_ppm)
            .max()
            .unwrap_or(0);
        let max_parity = self.cfg.geometry.max_parity;
        for seq in from..to.min(self.numbering.total()) {
            if self.all_hold(seq) || self.first_pass.skip.get(seq as usize) {
                continue;
            }
            let k = u64::from(self.numbering.units_in(seq));
            let r = self.repairs.blocks.entry(seq).or_default();
            let n = tail_parity(k, loss).min(max_parity.saturating_sub(r.parity_end));
            if n > 0 {
                self.queue_parity(seq, n);
            }
        }
    }

    /// Whether a repair costing `cost` that `receiver` asked for goes twice: in a small
    /// group's tail (repairs by originals, the first pass over or ending within
    /// [`TAIL_GRTTS`]), where one of them lost costs a NACK round trip at the end of the
    /// transfer, if the member's budget stretches to both. Parity covered such a loss before,
    /// but costs every receiver that uses it a decode of the whole block (docs/DESIGN.md
    /// 2026-12-02, "the tail of a small group").
    pub(super) fn tail_copies(
        &mut self,
        now: Instant,
        receiver: ReceiverId,
        allowance: Allowance,
        cost: f64,
    ) -> bool {
        if !self.repairs.by_originals || !self.in_tail() {
            return false;
        }
        if self.receivers_behind() {
            return false;
        }
        self.membership
            .members
            .get_mut(&receiver)
            .is_some_and(|m| affords(m, now, allowance, cost * 2.0))
    }

    /// Whether a repair queued now is in the tail ([`TAIL_GRTTS`]): the first pass is over,
    /// or what it has left takes less at its rate.
    pub(super) fn in_tail(&self) -> bool {
        self.pass_ends_within(TAIL_GRTTS)
    }

    /// The first pass is over, or what it has left takes less than `grtts` GRTTs at its rate.
    fn pass_ends_within(&self, grtts: u32) -> bool {
        if self.first_pass_done() {
            return true;
        }
        let passed = self.allowance().passed;
        let left =
            self.numbering.total().saturating_sub(passed) * self.numbering.block_size() as u64;
        let secs = left as f64 / self.first_pass_rate().max(1) as f64;
        secs < (self.grtt() * grtts).as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_s_extra_parity_covers_a_repair_s_own_loss_and_no_more_than_the_cap() {
        // 35 units at 5 %: 1.75 expected lost, two standard deviations more.
        assert_eq!(tail_parity(35, 50_000), 5);
        assert_eq!(tail_parity(1, 50_000), 1);
        assert_eq!(tail_parity(0, 50_000), 0);
        assert_eq!(tail_parity(35, 0), 0);
        // A member claiming to lose everything gets what the cap allows.
        assert_eq!(
            tail_parity(700, 1_000_000),
            tail_parity(700, TAIL_LOSS_CAP_PPM)
        );
    }
}
