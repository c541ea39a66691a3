//! Blocks on their way to verified: where the first pass is (per stripe), units and XOR
//! repairs placed into each block's state, the rebuild a block needs ([`Rebuild`]), and the
//! hash that ends it (here, or on the node's verify thread).

use std::time::Instant;

use blockcast_status::UnitBitmap;

use super::{Receiver, ReceiverEvent};
use crate::coding;
use crate::numbering::BlockAddr;
use crate::store::{BlockStore, HeldBlocks};
use crate::wire::{BlockIndex, ObjectId, UnitView, XorRepr, XOR_NONE, XOR_WIDTH};

/// Split mode: blocks the first pass must be ahead before an earlier block counts as passed
/// (copies take paths of different lengths, so units arrive less in order than by multicast).
const SPLIT_PASS_LAG: u64 = 2;

/// One XOR repair a block took: the unit it rebuilds, the units combined (wire.md §3.2),
/// and the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
struct XorUnit {
    unit: u16,
    units: [u16; XOR_WIDTH],
    payload: Box<[u8]>,
}

/// What a block needs to be made whole: the units XOR repairs rebuild, in arrival order, and
/// the parity units it got with the originals it holds. Handed out with
/// [`ReceiverEvent::VerifyBlock`] so that the rebuild runs where the hash runs (the node's
/// verify thread), not on the receive path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rebuild {
    have: UnitBitmap,
    xors: Vec<XorUnit>,
    parity: Vec<(u16, Box<[u8]>)>,
    k: u16,
    max_parity: u16,
    unit_size: u16,
}

impl Rebuild {
    /// The units [`Rebuild::apply`] writes: those XOR repairs rebuild, and (when parity
    /// stands in for some) every unit not held. A store that rebuilds in a copy of the block
    /// writes these back.
    pub fn rebuilt_units(&self) -> Vec<u16> {
        let mut units: Vec<u16> = self.xors.iter().map(|x| x.unit).collect();
        if !self.parity.is_empty() {
            units.extend(self.have.iter_zeros().map(|u| u as u16));
        }
        units.sort_unstable();
        units.dedup();
        units
    }

    /// The unit size the block is cut into.
    pub fn unit_size(&self) -> u16 {
        self.unit_size
    }

    /// Restores the missing original units of `block` (the block's bytes, with every unit
    /// it holds in place): first each XOR repair's unit from the units it holds (a few
    /// XORs), then, if parity stands in for some, the rest by decoding. False when they
    /// cannot (a damaged unit or too few of them): the block is then failed and fetched again
    /// like a bad hash.
    pub fn apply(&self, block: &mut [u8]) -> bool {
        let us = usize::from(self.unit_size);
        let block_len = block.len();
        let unit_range = |u: u16| {
            let start = (usize::from(u) * us).min(block_len);
            start..(start + us).min(block_len)
        };
        let mut acc = vec![0u8; us];
        for x in &self.xors {
            acc.copy_from_slice(&x.payload);
            for &u in x.units.iter().take_while(|&&u| u != XOR_NONE) {
                if u != x.unit {
                    let r = unit_range(u);
                    for (a, b) in acc.iter_mut().zip(&block[r]) {
                        *a ^= b;
                    }
                }
            }
            let r = unit_range(x.unit);
            let len = r.len();
            block[r].copy_from_slice(&acc[..len]);
        }
        if self.parity.is_empty() {
            return true;
        }
        let parity: Vec<(u16, &[u8])> = self.parity.iter().map(|(i, p)| (*i, &p[..])).collect();
        coding::decode_block(
            block,
            |u| self.have.get(u),
            &parity,
            self.k,
            self.max_parity,
            self.unit_size,
        )
        .is_ok()
    }
}

/// Assembly state of one block that is not yet verified.
pub(super) struct BlockState {
    /// Units held, or rebuilt by an XOR repair in `xors` when the block is finished.
    pub(super) have: UnitBitmap,
    xors: Vec<XorUnit>,
    pub(super) parity: Vec<(u16, Box<[u8]>)>,
    /// Parity indices below this have been seen.
    pub(super) parity_seen: u16,
    pub(super) round_end: u16,
    pub(super) last_parity_at: Option<Instant>,
    pub(super) nack_at: Option<Instant>,
    /// When its last NACK went (its timer is then the retry's); cleared when it is armed anew.
    pub(super) nacked_at: Option<Instant>,
    /// Its loss was counted (once, when its first NACK timer fired).
    pub(super) loss_counted: bool,
    /// Split mode: its NACK timer was armed before any unit had arrived (the copy path's
    /// delay unmeasured); once one has, the timer is armed afresh.
    pub(super) armed_unmeasured: bool,
    /// Whole and handed out for hashing: nothing may write to it until the answer.
    pub(super) verifying: bool,
    /// What is being hashed is what the store held at the start (not units that arrived):
    /// a match is reused, a mismatch is simply fetched.
    checking: bool,
}

impl BlockState {
    fn new(k: u16) -> Self {
        BlockState {
            have: UnitBitmap::new(usize::from(k)),
            xors: Vec::new(),
            parity: Vec::new(),
            parity_seen: 0,
            round_end: 0,
            last_parity_at: None,
            nack_at: None,
            nacked_at: None,
            loss_counted: false,
            armed_unmeasured: false,
            verifying: false,
            checking: false,
        }
    }

    /// Bytes of parity and XOR repair payloads it holds.
    fn payload_bytes(&self) -> usize {
        self.parity.iter().map(|(_, p)| p.len()).sum::<usize>()
            + self.xors.iter().map(|x| x.payload.len()).sum::<usize>()
    }

    /// Units it holds or can rebuild from parity.
    pub(super) fn held(&self) -> usize {
        self.have.count_ones() + self.parity.len()
    }
}

/// Every block's state, by block number (global numbering).
pub(super) struct Blocks {
    /// Blocks not yet verified that have some state (units, or a NACK timer).
    pub(super) states: Vec<Option<Box<BlockState>>>,
    /// Verified blocks.
    pub(super) done: UnitBitmap,
    /// Blocks before this (global numbering) are verified: the in-order prefix.
    pub(super) prefix: u64,
    /// Bytes of parity and XOR payloads held in `states` (bounded by
    /// `ReceiverConfig::max_parity_bytes`).
    pub(super) held_bytes: usize,
}

impl Blocks {
    pub(super) fn new(blocks: u64) -> Self {
        Blocks {
            states: (0..blocks).map(|_| None).collect(),
            done: UnitBitmap::new(blocks as usize),
            prefix: 0,
            held_bytes: 0,
        }
    }

    /// Drops block `seq`'s state, releasing the payloads it held; returns it.
    pub(super) fn take_state(&mut self, seq: u64) -> Option<Box<BlockState>> {
        let state = self.states.get_mut(seq as usize)?.take()?;
        self.held_bytes = self.held_bytes.saturating_sub(state.payload_bytes());
        Some(state)
    }

    /// Block `seq`'s state, new (for `k` units) if it had none.
    pub(super) fn state(&mut self, seq: u64, k: u16) -> &mut BlockState {
        self.states[seq as usize].get_or_insert_with(|| Box::new(BlockState::new(k)))
    }
}

/// Where the first pass is, as far as this receiver can tell.
pub(super) struct PassFrontier {
    /// Blocks before this have had their first pass.
    passed: u64,
    /// Blocks whose first pass is over (from either rule below).
    passed_map: UnitBitmap,
    /// Per stripe, the next block of that stripe whose first pass is not known to be over.
    pub(super) stripe_next: Vec<u64>,
    /// The furthest block the first pass has been seen sending.
    pub(super) frontier: u64,
}

impl PassFrontier {
    pub(super) fn new(blocks: u64) -> Self {
        PassFrontier {
            passed: 0,
            passed_map: UnitBitmap::new(blocks as usize),
            stripe_next: Vec::new(),
            frontier: 0,
        }
    }
}

impl<S: BlockStore> Receiver<S> {
    #[doc(hidden)]
    pub fn debug_blocks(&self) -> String {
        let mut out = format!(
            "row {:?} passed {} due {:?} timers {}\n",
            self.row,
            self.first_pass.passed,
            self.feedback.nack_due,
            self.feedback.timers.len()
        );
        for (i, b) in self.blocks.states.iter().enumerate() {
            if let Some(b) = b {
                out += &format!(
                    "  block {i}: have {} parity {} seen {} round_end {} nack_at {:?}\n",
                    b.have.count_ones(),
                    b.parity.len(),
                    b.parity_seen,
                    b.round_end,
                    b.nack_at.is_some()
                );
            }
        }
        out
    }

    /// Verified blocks in all.
    pub fn blocks_done(&self) -> u64 {
        self.blocks.done.count_ones() as u64
    }

    /// Blocks verified in order from the start (global numbering over the manifest's
    /// objects): what may be played.
    pub fn verified_prefix(&self) -> u64 {
        self.blocks.prefix
    }

    /// Whether block `block` of `object` is verified.
    pub fn is_verified(&self, object: ObjectId, block: BlockIndex) -> bool {
        self.numbering
            .seq(object, block)
            .is_some_and(|s| self.blocks.done.get(s as usize))
    }

    /// The first pass has gone by every block before `end` (the announce says so).
    pub(super) fn pass_through(&mut self, now: Instant, end: u64) {
        if self.manifest.is_none() {
            return;
        }
        let end = end.min(self.numbering.total());
        let was_over = self.first_pass_over();
        while self.first_pass.passed < end {
            let seq = self.first_pass.passed;
            self.first_pass.passed += 1;
            self.mark_passed(now, seq);
        }
        if !was_over && self.first_pass_over() {
            self.pull_in_timers(now);
        }
    }

    /// Whether the last first-pass unit of the last block is the first pass's last unit: one
    /// stripe sends every block in order, each unit in order; not in split mode, where copies
    /// come from members in no set order.
    fn ends_the_pass(&self) -> bool {
        self.cfg.split.is_none() && self.stripes() == 1
    }

    /// The first pass has gone by every block (the announce said so, or its last unit came).
    pub(super) fn first_pass_over(&self) -> bool {
        self.manifest.is_some() && self.first_pass.passed >= self.numbering.total()
    }

    /// A first-pass unit of block `seq` arrived: its stripe's sender is done with every
    /// earlier block of the same stripe (stripes send in block order, independently).
    fn pass_stripe(&mut self, now: Instant, seq: u64) {
        self.first_pass.frontier = self.first_pass.frontier.max(seq);
        let stripes = self.stripes();
        if self.first_pass.stripe_next.len() as u64 != stripes {
            self.first_pass.stripe_next = (0..stripes).collect();
        }
        let s = (seq % stripes) as usize;
        let seq = if self.cfg.split.is_some() {
            seq.saturating_sub(SPLIT_PASS_LAG * stripes)
        } else {
            seq
        };
        while self.first_pass.stripe_next[s] < seq {
            let b = self.first_pass.stripe_next[s];
            self.first_pass.stripe_next[s] += stripes;
            self.mark_passed(now, b);
        }
    }

    /// Block `seq`'s first pass is over: if it is incomplete it misses units, so arm its
    /// NACK timer (its loss is counted when that fires, [`Feedback::count_loss`]).
    fn mark_passed(&mut self, now: Instant, seq: u64) {
        if !self
            .first_pass
            .passed_map
            .try_set(seq as usize)
            .unwrap_or(false)
        {
            return;
        }
        if self.blocks.done.get(seq as usize) {
            // Whole already: nothing of it lost.
            self.feedback.count_loss(self.numbering.units_in(seq), 0);
        }
        self.arm(seq, now);
    }

    /// The block a unit or XOR repair is for, if it still needs units: otherwise the packet
    /// is counted (early, bad, or a duplicate for a verified block) and `None` returned.
    fn open_block(&mut self, object: ObjectId, block: BlockIndex) -> Option<u64> {
        let Some(seq) = self.numbering.seq(object, block) else {
            if self.manifest.is_none() {
                self.stats.early_units += 1;
            } else {
                self.stats.bad_packets += 1;
            }
            return None;
        };
        if self.blocks.done.get(seq as usize) {
            self.stats.duplicates += 1;
            return None;
        }
        Some(seq)
    }

    pub(super) fn on_unit(&mut self, now: Instant, unit: &impl UnitView) {
        let Some(seq) = self.open_block(unit.object(), unit.block()) else {
            return;
        };
        let (Some(m), Some(a)) = (self.manifest.as_ref(), self.announce.as_ref()) else {
            return;
        };
        let us = usize::from(m.unit_size);
        let max_parity = a.max_parity;
        let (object, block) = (unit.object(), unit.block());
        let block_len = self.numbering.block_len(seq);
        let k = self.numbering.units_in(seq);
        let index = unit.index();
        let payload = unit.payload();
        let valid = if unit.is_parity() {
            index < max_parity && unit.round_end() <= max_parity && payload.len() == us
        } else {
            index < k && payload.len() == (block_len - usize::from(index) * us).min(us)
        };
        if !valid {
            self.stats.bad_packets += 1;
            return;
        }
        if !unit.is_parity() && !unit.is_repair() {
            self.pass_stripe(now, seq);
            if index + 1 == k && seq + 1 == self.numbering.total() && self.ends_the_pass() {
                // The last unit of the last block: the pass is over (the announce that says
                // so comes after it, one in twenty lost at 5 %).
                self.pass_through(now, seq + 1);
            }
        } else if unit.is_parity() || (unit.is_repair() && index + 1 == k) {
            // Parity: the server repairs a block only once its first pass is over (another
            // receiver NACKed it), so this one's is over too, even if the announce that says
            // so for the last blocks was lost. The last unit of a block sent whole ahead of
            // the first pass (a priority request): what is missing now was lost. Either way,
            // NACK it without waiting for more.
            self.mark_passed(now, seq);
        }
        let full = self.blocks.held_bytes + us > self.cfg.max_parity_bytes;
        let mut added = 0;
        let state = self.blocks.state(seq, k);
        if state.verifying {
            self.stats.duplicates += 1;
            return;
        }
        if unit.is_parity() {
            state.parity_seen = state.parity_seen.max(index + 1);
            state.round_end = state.round_end.max(unit.round_end());
            state.last_parity_at = Some(now);
            if state.parity.iter().any(|(i, _)| *i == index) {
                self.stats.duplicates += 1;
                return;
            }
            if full {
                // The parity memory bound: drop it; the block is NACKed again.
                self.stats.parity_dropped += 1;
                return;
            }
            self.stats.parity_units += 1;
            state.parity.push((index, payload.into()));
            added = us;
        } else {
            let offset = usize::from(index) * us;
            if state.have.get(usize::from(index)) {
                self.stats.duplicates += 1;
                return;
            }
            self.stats.data_units += 1;
            self.store
                .write_unit(object, block, block_len, offset, payload);
            state.have.set(usize::from(index));
        }
        let whole = state.held() >= usize::from(k);
        self.blocks.held_bytes += added;
        if whole {
            self.finish_block(now, seq);
        }
    }

    /// An XOR repair: if this receiver misses exactly one of its units, that unit will be
    /// rebuilt from it (and the others, held) when the block is finished.
    pub(super) fn on_xor(&mut self, now: Instant, x: &XorRepr, payload: &[u8]) {
        let Some(seq) = self.open_block(x.object, x.block) else {
            return;
        };
        let Some(m) = self.manifest.as_ref() else {
            return;
        };
        let us = usize::from(m.unit_size);
        let k = self.numbering.units_in(seq);
        if payload.len() != us || x.iter().any(|u| u >= k) {
            self.stats.bad_packets += 1;
            return;
        }
        // As with parity: repairs come only for blocks whose first pass is over.
        self.mark_passed(now, seq);
        let full = self.blocks.held_bytes + us > self.cfg.max_parity_bytes;
        let state = self.blocks.state(seq, k);
        if state.verifying {
            self.stats.duplicates += 1;
            return;
        }
        let mut missing = x.iter().filter(|&u| !state.have.get(usize::from(u)));
        let unit = match (missing.next(), missing.next()) {
            (Some(u), None) => u,
            (None, _) => {
                self.stats.duplicates += 1;
                return;
            }
            (Some(_), Some(_)) => {
                self.stats.xor_unusable += 1;
                return;
            }
        };
        if full {
            self.stats.parity_dropped += 1;
            return;
        }
        state.have.set(usize::from(unit));
        state.xors.push(XorUnit {
            unit,
            units: x.units,
            payload: payload.into(),
        });
        self.stats.xor_units += 1;
        let whole = state.held() >= usize::from(k);
        self.blocks.held_bytes += us;
        if whole {
            self.finish_block(now, seq);
        }
    }

    /// What the store held when it was prepared: blocks verified before count at once, the
    /// others are hashed before they count (on the node's verify thread, or here).
    pub(super) fn take_held(&mut self, now: Instant, held: HeldBlocks) {
        for (object, block) in held.verified {
            if let Some(seq) = self.numbering.seq(object, block) {
                if !self.blocks.done.get(seq as usize) {
                    self.mark_done(now, seq, true);
                }
            }
        }
        for (object, block) in held.check {
            let Some(seq) = self.numbering.seq(object, block) else {
                continue;
            };
            if self.blocks.done.get(seq as usize) {
                continue;
            }
            let k = self.numbering.units_in(seq);
            let state = self.blocks.state(seq, k);
            if state.verifying {
                continue;
            }
            state.verifying = true;
            state.checking = true;
            self.checking += 1;
            let Some(m) = self.manifest.as_ref() else {
                continue;
            };
            let expected = m.objects[object.0 as usize].block_hashes[block.0 as usize];
            if self.cfg.external_verify {
                self.events.push_back(ReceiverEvent::VerifyBlock {
                    object,
                    block,
                    expected,
                    rebuild: None,
                });
            } else {
                let len = self.numbering.block_len(seq);
                let ok =
                    blake3::hash(self.store.block_mut(object, block, len)).as_bytes() == &expected;
                self.verified(now, seq, ok);
            }
        }
    }

    /// Rebuilds (if needed) and verifies block `seq`, which has at least `k` units.
    fn finish_block(&mut self, now: Instant, seq: u64) {
        let BlockAddr { object, block } = self.numbering.addr(seq);
        let block_len = self.numbering.block_len(seq);
        let k = self.numbering.units_in(seq);
        let (Some(m), Some(a)) = (self.manifest.as_ref(), self.announce.as_ref()) else {
            return;
        };
        let (unit_size, max_parity) = (m.unit_size, a.max_parity);
        let expected = m.objects[object.0 as usize].block_hashes[block.0 as usize];
        let Some(state) = self.blocks.states[seq as usize].as_mut() else {
            return;
        };
        // Whatever happens next, the block's state is dropped (verified) or started afresh
        // (failed): its parity units can be moved out.
        let decode = state.have.count_ones() < usize::from(k);
        let before = state.payload_bytes();
        let rebuild = (decode || !state.xors.is_empty()).then(|| Rebuild {
            have: state.have.clone(),
            xors: std::mem::take(&mut state.xors),
            parity: if decode {
                std::mem::take(&mut state.parity)
            } else {
                Vec::new()
            },
            k,
            max_parity,
            unit_size,
        });
        // Moved out to the rebuild: no longer held here.
        self.blocks.held_bytes = self
            .blocks
            .held_bytes
            .saturating_sub(before - state.payload_bytes());
        if decode {
            self.stats.decodes += 1;
        }
        if self.cfg.external_verify {
            // The node rebuilds and hashes the block on another core and calls
            // `handle_verified`; nothing writes to the block meanwhile.
            state.verifying = true;
            self.events.push_back(ReceiverEvent::VerifyBlock {
                object,
                block,
                expected,
                rebuild,
            });
            return;
        }
        let bytes = self.store.block_mut(object, block, block_len);
        let ok =
            rebuild.is_none_or(|r| r.apply(bytes)) && blake3::hash(bytes).as_bytes() == &expected;
        self.verified(now, seq, ok);
    }

    /// External verification ([`ReceiverConfig::external_verify`]): the block asked for by
    /// [`ReceiverEvent::VerifyBlock`] hashed to its manifest hash (`ok`) or not.
    ///
    /// [`ReceiverConfig::external_verify`]: super::ReceiverConfig::external_verify
    pub fn handle_verified(&mut self, now: Instant, object: ObjectId, block: BlockIndex, ok: bool) {
        let Some(seq) = self.numbering.seq(object, block) else {
            return;
        };
        if self.blocks.states[seq as usize]
            .as_ref()
            .is_some_and(|s| s.verifying)
        {
            self.verified(now, seq, ok);
        }
    }

    /// Block `seq` has been hashed: it is done, or it is discarded and fetched again.
    fn verified(&mut self, now: Instant, seq: u64, ok: bool) {
        let BlockAddr { object, block } = self.numbering.addr(seq);
        let k = self.numbering.units_in(seq);
        let checked = self.blocks.states[seq as usize]
            .as_ref()
            .is_some_and(|s| s.checking);
        if checked {
            self.checking = self.checking.saturating_sub(1);
            if self.checking == 0 && self.row.is_none() && self.feedback.next_join.is_none() {
                // Everything the store held is checked: join now.
                self.feedback.next_join = Some(now);
            }
        }
        if ok {
            if let Some(state) = self.blocks.take_state(seq) {
                if let Some(at) = state.nack_at {
                    self.feedback.cancel_nack(seq, at);
                }
                if !state.loss_counted && self.first_pass.passed_map.get(seq as usize) {
                    // Whole before its NACK timer fired: what it missed at the pass came in
                    // the time a late unit may take, so nothing of it was lost.
                    self.feedback.count_loss(k, 0);
                }
            }
            self.mark_done(now, seq, checked);
        } else if checked {
            // The store's bytes are not this block: fetch it like any other.
            let old = self.blocks.states[seq as usize].take();
            if let Some(at) = old.and_then(|o| o.nack_at) {
                self.feedback.cancel_nack(seq, at);
            }
            if self.first_pass.passed_map.get(seq as usize) {
                self.arm(seq, now);
            }
        } else {
            // Discard what we have and fetch the block again.
            self.stats.blocks_failed += 1;
            self.events
                .push_back(ReceiverEvent::BlockFailed { object, block });
            let old = self.blocks.take_state(seq);
            let mut fresh = BlockState::new(k);
            if let Some(old) = old {
                fresh.parity_seen = old.parity_seen;
                if let Some(at) = old.nack_at {
                    self.feedback.cancel_nack(seq, at);
                }
            }
            self.blocks.states[seq as usize] = Some(Box::new(fresh));
            if self.first_pass.passed_map.get(seq as usize) {
                self.arm(seq, now);
            }
        }
    }

    /// Block `seq` is verified: from units that arrived, or (`reused`) as the store held it.
    fn mark_done(&mut self, now: Instant, seq: u64, reused: bool) {
        let BlockAddr { object, block } = self.numbering.addr(seq);
        self.blocks.done.set(seq as usize);
        let bytes = self.numbering.block_len(seq) as u64;
        if reused {
            self.stats.blocks_reused += 1;
            self.stats.reused_bytes += bytes;
        } else {
            self.stats.blocks_verified += 1;
            self.stats.received_bytes += bytes;
        }
        // Reused blocks too: one the store only might have held (hashed now) is final now,
        // and a store that records what is verified records it.
        self.store.block_verified(object, block);
        self.events
            .push_back(ReceiverEvent::BlockVerified { object, block });
        while self.blocks.prefix < self.numbering.total()
            && self.blocks.done.get(self.blocks.prefix as usize)
        {
            self.blocks.prefix += 1;
        }
        if self.blocks.done.is_full() {
            self.finish(now);
        }
    }

    /// Every block is verified: report complete at once.
    pub(super) fn finish(&mut self, now: Instant) {
        if !self.complete {
            self.complete = true;
            self.events.push_back(ReceiverEvent::Complete);
            self.feedback.next_receipt = Some(now);
        }
    }
}
