//! A receiver's side of a session, sans-IO (docs/DESIGN.md "Protocol").
//!
//! The receiver learns the session from an announce, assembles the manifest from its
//! chunks, joins, places units by address into its [`BlockStore`], rebuilds blocks from
//! parity units, verifies every block against its BLAKE3 hash before marking it done (a
//! block that fails is discarded and fetched again), NACKs what it misses after a random
//! backoff scaled to the group size and round-trip time, sends receipt notices, and reports
//! done.
//!
//! Drive it like this: feed every datagram from the group and from the server's control
//! address to [`Receiver::handle_datagram`]; call [`Receiver::handle_timeout`] when the
//! instant from [`Receiver::poll_timeout`] passes; after either, call
//! [`Receiver::poll_transmit`] until it returns `None` and send what it gives to the
//! server's control address; drain [`Receiver::poll_event`].

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use blockcast_status::UnitBitmap;

use crate::coding;
use crate::endpoint::Endpoint;
use crate::numbering::{BlockAddr, BlockNumbering};
use crate::rng::Rng;
use crate::store::{BlockStore, StoreError};
use crate::wire::{
    AnnounceRepr, BlockIndex, BlockRun, CopyFlags, DoneReason, DoneRepr, Holes, JoinRepr,
    LeaveReason, LeaveRepr, Manifest, NackEntry, NackRepr, ObjectId, Packet, PlanRepr,
    PriorityRepr, ReceiptRepr, ReceiverId, SessionId, SolicitRepr, UnitIndex, UnitPacket,
    WireError, XorRepr, XOR_NONE, XOR_WIDTH,
};
use crate::{micros, Destination, Transmit};

/// How a receiver behaves. `Default` gives the values the CLI starts from.
#[derive(Clone, Debug)]
pub struct ReceiverConfig {
    pub id: ReceiverId,
    /// Seeds the backoff draws (a run is reproducible from it).
    pub seed: u64,
    /// Accept only this session; `None` takes the first one announced.
    pub session: Option<SessionId>,
    /// NACK backoff is drawn from `[0, backoff_factor * GRTT]`.
    pub backoff_factor: f64,
    /// Receipt notices the whole group may send the server per second (each receiver's
    /// interval grows with the group size so the server's load stays bounded).
    pub group_receipt_rate: f64,
    /// Shortest interval between one receiver's receipt notices.
    pub min_receipt_interval: Duration,
    /// How often to repeat a join until it is accepted.
    pub join_interval: Duration,
    /// Report the server lost after hearing nothing for this long.
    pub idle_timeout: Duration,
    /// Largest datagram to send (NACKs are packed up to it).
    pub max_datagram: usize,
    /// Do not hash completed blocks here: emit [`ReceiverEvent::VerifyBlock`] and wait for
    /// [`Receiver::handle_verified`] (the node hashes on another core). The block's bytes
    /// are not written meanwhile.
    pub external_verify: bool,
    /// Split mode (wire.md §14): no multicast. The receiver asks the server for the session
    /// by unicast, takes copy plans, and keeps reporting after it is complete (it still
    /// forwards copies until the session ends).
    pub split: Option<SplitMember>,
}

/// A split-mode member's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitMember {
    /// The server's control address, where the receiver asks for the session.
    pub server: SocketAddr,
    /// The zone the member is in (members of a zone copy to each other).
    pub zone: u16,
}

/// Where copies of one unit go (split mode): see [`Receiver::copy_targets`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyTargets<'a> {
    /// Forward a copy with no copy flags to each of these (the other members of my cell).
    pub zone: &'a [SocketAddr],
    /// Forward a copy with both copy flags to this one (my member in the next cell).
    pub next: Option<SocketAddr>,
}

impl CopyTargets<'_> {
    pub fn is_empty(&self) -> bool {
        self.zone.is_empty() && self.next.is_none()
    }
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            id: ReceiverId(1),
            seed: 1,
            session: None,
            backoff_factor: 4.0,
            group_receipt_rate: 5_000.0,
            min_receipt_interval: Duration::from_millis(100),
            join_interval: Duration::from_millis(100),
            idle_timeout: Duration::from_secs(30),
            max_datagram: 1400,
            external_verify: false,
            split: None,
        }
    }
}

/// What happened, for the node to act on and report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiverEvent {
    /// A session was announced and adopted.
    Announced {
        session: SessionId,
        control: SocketAddr,
    },
    /// The manifest is complete and verified; the store has been prepared.
    ManifestReady,
    /// The server accepted the join.
    Accepted { row: u32 },
    /// A block was rebuilt (if needed), hashed, and matched the manifest.
    BlockVerified { object: ObjectId, block: BlockIndex },
    /// External verification: rebuild this block's missing units (`rebuild`, when some
    /// came as parity), hash it (its bytes in the store) against `expected` and answer with
    /// [`Receiver::handle_verified`]. Both the decode and the hash belong off the receive
    /// path: a decode of a large block takes milliseconds, long enough for a socket to
    /// overflow behind it.
    VerifyBlock {
        object: ObjectId,
        block: BlockIndex,
        expected: [u8; 32],
        rebuild: Option<Rebuild>,
    },
    /// A block's bytes did not match its hash; it is discarded and fetched again.
    BlockFailed { object: ObjectId, block: BlockIndex },
    /// Every object is whole and verified.
    Complete,
    /// The server ended the session.
    SessionEnded { reason: DoneReason, complete: bool },
    /// Nothing heard from the server for the idle timeout.
    ServerLost,
    /// The store failed; the receiver has left the session.
    StoreFailed(StoreError),
    /// A datagram could not be decoded (counted in stats too).
    BadPacket(WireError),
}

/// Counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    pub data_units: u64,
    pub parity_units: u64,
    pub duplicates: u64,
    /// Units that arrived before the manifest was known (dropped).
    pub early_units: u64,
    pub decodes: u64,
    pub blocks_verified: u64,
    pub blocks_failed: u64,
    pub nacks: u64,
    pub nack_entries: u64,
    pub nack_bytes: u64,
    pub receipts: u64,
    pub receipt_bytes: u64,
    pub bad_packets: u64,
    /// Packets of other sessions (ignored).
    pub strangers: u64,
    /// Fail-overs to another source ([`Receiver::switch_source`]).
    pub switches: u64,
    /// Datagrams the receiving socket dropped for lack of buffer space, as last reported
    /// through [`Receiver::note_socket`].
    pub socket_drops: u64,
    /// XOR repairs that gave this receiver a unit (wire.md §3.2).
    pub xor_units: u64,
    /// XOR repairs it could not use: it missed two or more of their units.
    pub xor_unusable: u64,
}

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

/// Blocks just ahead of the first pass that a priority request leaves to it.
const PRIORITY_MARGIN: u64 = 4;

/// Assembly state of one block that is not yet verified.
struct BlockState {
    /// Units held, or rebuilt by an XOR repair in `xors` when the block is finished.
    have: UnitBitmap,
    xors: Vec<XorUnit>,
    parity: Vec<(u16, Box<[u8]>)>,
    /// Parity indices below this have been seen.
    parity_seen: u16,
    round_end: u16,
    last_parity_at: Option<Instant>,
    nack_at: Option<Instant>,
    /// Its loss was counted (once, when its first NACK timer fired).
    loss_counted: bool,
    /// Whole and handed out for hashing: nothing may write to it until the answer.
    verifying: bool,
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
            loss_counted: false,
            verifying: false,
        }
    }
}

enum Out {
    Join,
    Leave(LeaveReason),
    Receipt,
    Priority(PriorityRepr),
}

/// A receiver's state machine for one session.
pub struct Receiver<S> {
    cfg: ReceiverConfig,
    store: S,
    rng: Rng,
    session: Option<SessionId>,
    announce: Option<AnnounceRepr>,
    /// The manifest hash of the session we follow, kept across a fail-over.
    known_hash: Option<[u8; 32]>,
    manifest_buf: Vec<u8>,
    /// Byte ranges of the manifest received, sorted and merged.
    manifest_ranges: Vec<(usize, usize)>,
    manifest: Option<Manifest>,
    /// The manifest's block numbering (empty until the manifest is here).
    numbering: BlockNumbering,
    blocks: Vec<Option<Box<BlockState>>>,
    done: UnitBitmap,
    /// Blocks before this (global numbering) are verified: the in-order prefix.
    prefix: u64,
    /// Blocks before this have had their first pass.
    passed: u64,
    /// Blocks whose first pass is over (from either rule below).
    passed_map: UnitBitmap,
    /// Per stripe, the next block of that stripe whose first pass is not known to be over.
    stripe_next: Vec<u64>,
    /// The furthest block the first pass has been seen sending.
    pass_frontier: u64,
    /// A priority request made before the server accepted us.
    held_priority: Option<PriorityRepr>,
    row: Option<u32>,
    timers: BTreeSet<(Instant, u64)>,
    nack_due: BTreeSet<u64>,
    out: VecDeque<Out>,
    next_join: Option<Instant>,
    next_receipt: Option<Instant>,
    complete: bool,
    complete_acked: bool,
    complete_tries: u32,
    ended: bool,
    last_heard: Option<Instant>,
    server_lost: bool,
    /// The latest server timestamp and when it arrived, echoed in receipt notices.
    echo: Option<(u32, Instant)>,
    loss_units: u64,
    expected_units: u64,
    /// The data socket's datagrams received and dropped for lack of buffer space (from the
    /// node), now and at the last receipt notice.
    socket: (u64, u32),
    socket_at_receipt: (u64, u32),
    /// The fullest the data socket's receive buffer was seen since the last notice (ppm).
    queue_max: u32,
    events: VecDeque<ReceiverEvent>,
    stats: ReceiverStats,
    /// Split mode: the newest copy plan.
    plan: Option<PlanRepr>,
    /// Split mode: when to ask for the session again (until the manifest is here).
    next_solicit: Option<Instant>,
    /// Split mode: the local instant and server timestamp of the first direct packet, the
    /// base for comparing one-way delays.
    clock_base: Option<(Instant, u32)>,
    /// Split mode: the smallest (local - server) time offset of a direct packet, us.
    direct_offset: Option<i64>,
    /// Split mode: how much later than a direct packet copies arrive (the copy path's extra
    /// delay), smoothed; NACKs wait this much longer.
    copy_lag: Duration,
}

/// Split mode: blocks the first pass must be ahead before an earlier block counts as passed
/// (copies take paths of different lengths, so units arrive less in order than by multicast).
const SPLIT_PASS_LAG: u64 = 2;

impl<S: BlockStore> Receiver<S> {
    pub fn new(cfg: ReceiverConfig, store: S) -> Self {
        Receiver {
            rng: Rng::new(cfg.seed),
            session: cfg.session,
            cfg,
            store,
            announce: None,
            known_hash: None,
            manifest_buf: Vec::new(),
            manifest_ranges: Vec::new(),
            manifest: None,
            numbering: BlockNumbering::default(),
            blocks: Vec::new(),
            done: UnitBitmap::new(0),
            prefix: 0,
            passed: 0,
            passed_map: UnitBitmap::new(0),
            stripe_next: Vec::new(),
            pass_frontier: 0,
            held_priority: None,
            row: None,
            timers: BTreeSet::new(),
            nack_due: BTreeSet::new(),
            out: VecDeque::new(),
            next_join: None,
            next_receipt: None,
            complete: false,
            complete_acked: false,
            complete_tries: 0,
            ended: false,
            last_heard: None,
            server_lost: false,
            echo: None,
            loss_units: 0,
            expected_units: 0,
            socket: (0, 0),
            queue_max: 0,
            socket_at_receipt: (0, 0),
            events: VecDeque::new(),
            stats: ReceiverStats::default(),
            plan: None,
            next_solicit: None,
            clock_base: None,
            direct_offset: None,
            copy_lag: Duration::ZERO,
        }
    }

    /// Split mode: the time offset (local arrival - server send) of a packet, microseconds,
    /// against the first direct packet's.
    fn offset(&mut self, now: Instant, timestamp: u32) -> i64 {
        let (t0, ts0) = *self.clock_base.get_or_insert((now, timestamp));
        let local = now.saturating_duration_since(t0).as_micros() as i64;
        let remote = i64::from(timestamp.wrapping_sub(ts0) as i32);
        local - remote
    }

    /// Split mode: a packet straight from the server (announce) sets the reference delay.
    fn direct_timing(&mut self, now: Instant, timestamp: u32) {
        let o = self.offset(now, timestamp);
        self.direct_offset = Some(self.direct_offset.map_or(o, |d| d.min(o)));
    }

    /// Split mode: a unit (possibly a copy of a copy) measures the copy path's extra delay.
    fn copy_timing(&mut self, now: Instant, timestamp: u32) {
        let Some(direct) = self.direct_offset else {
            return;
        };
        let lag_us = (self.offset(now, timestamp) - direct).clamp(0, 10_000_000) as u64;
        let sample = Duration::from_micros(lag_us);
        // Rise at once, fall back slowly: a NACK sent too early costs a repair to everyone.
        self.copy_lag = if sample > self.copy_lag {
            sample
        } else {
            (self.copy_lag * 63 + sample) / 64
        };
    }

    /// Split mode: the copy path's extra delay as measured (NACKs wait for it).
    pub fn copy_lag(&self) -> Duration {
        self.copy_lag
    }

    /// Split mode: where copies of a unit with copy flags `copy` go, from the newest plan
    /// (nowhere before a plan has arrived). Units of other sessions are not to be forwarded:
    /// check [`Receiver::session`] first.
    pub fn copy_targets(&self, copy: CopyFlags) -> CopyTargets<'_> {
        match &self.plan {
            Some(p) => CopyTargets {
                zone: if copy.zone { &p.peers } else { &[] },
                next: if copy.next { p.next } else { None },
            },
            None => CopyTargets {
                zone: &[],
                next: None,
            },
        }
    }

    /// The session adopted, once announced (or configured).
    pub fn session(&self) -> Option<SessionId> {
        self.session
    }

    /// Split mode: the epoch of the newest plan taken.
    pub fn plan_epoch(&self) -> Option<u32> {
        self.plan.as_ref().map(|p| p.epoch)
    }

    pub fn stats(&self) -> &ReceiverStats {
        &self.stats
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    pub fn manifest(&self) -> Option<&Manifest> {
        self.manifest.as_ref()
    }

    pub fn announce(&self) -> Option<&AnnounceRepr> {
        self.announce.as_ref()
    }

    #[doc(hidden)]
    pub fn debug_blocks(&self) -> String {
        let mut out = format!(
            "row {:?} passed {} due {:?} timers {}\n",
            self.row,
            self.passed,
            self.nack_due,
            self.timers.len()
        );
        for (i, b) in self.blocks.iter().enumerate() {
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

    /// Every object is whole and verified.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The session is over for this receiver (ended by the server, or left).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Verified blocks in all.
    pub fn blocks_done(&self) -> u64 {
        self.done.count_ones() as u64
    }

    pub fn total_blocks(&self) -> u64 {
        self.numbering.total()
    }

    /// Blocks verified in order from the start (global numbering over the manifest's
    /// objects): what may be played.
    pub fn verified_prefix(&self) -> u64 {
        self.prefix
    }

    /// Whether block `block` of `object` is verified.
    pub fn is_verified(&self, object: ObjectId, block: BlockIndex) -> bool {
        self.numbering
            .seq(object, block)
            .is_some_and(|s| self.done.get(s as usize))
    }

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
            if first <= self.pass_frontier + PRIORITY_MARGIN {
                return;
            }
            let end = first + u64::from(count);
            // Blocks already verified, or already arriving (some units here: NACKs finish
            // them), are not asked for again.
            let untouched = |s: u64| {
                !self.done.get(s as usize)
                    && self.blocks[s as usize].as_ref().is_none_or(|b| {
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
            object,
            block: BlockIndex(block),
            unit,
            count,
        };
        if self.row.is_some() {
            self.out.push_back(Out::Priority(p));
        } else {
            // The server ignores requests from receivers it has not accepted: hold the latest
            // until it has.
            self.held_priority = Some(p);
        }
    }

    /// Leave the session (tells the server).
    pub fn leave(&mut self, reason: LeaveReason) {
        if self.session.is_some() && !self.ended {
            self.out.push_back(Out::Leave(reason));
        }
        self.ended = true;
        self.timers.clear();
    }

    fn grtt(&self) -> Duration {
        self.announce
            .as_ref()
            .map_or(Duration::from_millis(5), |a| {
                Duration::from_micros(u64::from(a.grtt_us))
            })
    }

    fn group_size(&self) -> u32 {
        self.announce.as_ref().map_or(1, |a| a.group_size.max(1))
    }

    /// Stripes of the adopted session's first pass (its Announce), once one is adopted: the
    /// node reads stripe `s` on the group's port + `s` (docs/wire.md §3.1).
    pub fn announced_stripes(&self) -> Option<u16> {
        self.announce.as_ref().map(|a| a.stripes)
    }

    fn stripes(&self) -> u64 {
        self.announce.as_ref().map_or(1, |a| u64::from(a.stripes))
    }

    /// Handles one datagram from the group or the server.
    pub fn handle_datagram(&mut self, now: Instant, _from: SocketAddr, bytes: &[u8]) {
        if self.ended {
            return;
        }
        // Units are the hot path: read them through the zero-copy view.
        if let Ok(unit) = UnitPacket::new_checked(bytes) {
            if Some(unit.session()) != self.session {
                self.stats.strangers += 1;
                return;
            }
            if self.cfg.split.is_some() {
                // Split mode: a unit may come by a chain of copies, so its timestamp does not
                // measure this member's own overhead; only the server's direct packets do.
                self.last_heard = Some(now);
                self.server_lost = false;
                self.copy_timing(now, unit.timestamp());
            } else {
                self.heard(now, unit.timestamp());
            }
            self.on_unit(now, &unit);
            return;
        }
        let packet = match Packet::parse(bytes) {
            Ok(p) => p,
            Err(e) => {
                self.stats.bad_packets += 1;
                self.events.push_back(ReceiverEvent::BadPacket(e));
                return;
            }
        };
        if self.session.is_none() {
            if let Packet::Announce(a) = &packet {
                if self.known_hash.is_some_and(|h| h != a.manifest_hash) {
                    // After a fail-over only a source of the same content will do.
                    self.stats.strangers += 1;
                    return;
                }
                self.session = Some(a.session);
            }
        }
        if Some(packet.session()) != self.session {
            self.stats.strangers += 1;
            return;
        }
        match packet {
            Packet::Announce(a) => {
                self.heard(now, a.timestamp);
                if self.cfg.split.is_some() {
                    self.direct_timing(now, a.timestamp);
                }
                self.on_announce(now, a);
            }
            Packet::Manifest(m) => {
                self.last_heard = Some(now);
                self.on_manifest_chunk(now, m.offset as usize, m.bytes);
            }
            Packet::Accept(a) if a.receiver == self.cfg.id => {
                self.last_heard = Some(now);
                if self.row.is_none() {
                    self.row = Some(a.row);
                    self.next_join = None;
                    self.events
                        .push_back(ReceiverEvent::Accepted { row: a.row });
                    let first = now + self.receipt_interval();
                    self.next_receipt = Some(first);
                    // NACKs held back until now can go.
                    let held: Vec<u64> = self.nack_due.iter().copied().collect();
                    for seq in held {
                        self.arm(seq, now);
                    }
                    self.nack_due.clear();
                }
            }
            Packet::Done(DoneRepr::Receiver { receiver, .. }) if receiver == self.cfg.id => {
                self.complete_acked = true;
            }
            Packet::Plan(p) if p.receiver == self.cfg.id && self.cfg.split.is_some() => {
                self.last_heard = Some(now);
                // The newest plan wins (epochs count up; a late, older one is ignored).
                if self.plan.as_ref().is_none_or(|old| p.epoch > old.epoch) {
                    self.plan = Some(p);
                }
            }
            Packet::Xor(x, payload) => {
                // No timestamp: the header's last slots carry unit indices.
                self.last_heard = Some(now);
                self.server_lost = false;
                self.on_xor(now, &x, payload);
            }
            Packet::Done(DoneRepr::Session { reason, .. }) => {
                self.ended = true;
                self.timers.clear();
                self.events.push_back(ReceiverEvent::SessionEnded {
                    reason,
                    complete: self.complete,
                });
            }
            _ => self.stats.strangers += 1,
        }
    }

    /// Fail over to another source of the same content (a standby relay, or the server):
    /// forget the current server, keep every block received so far, and take the next
    /// Announce whose manifest hash matches ours as the new server; join it at once. Blocks
    /// already verified are not asked for again; the new server learns what we hold from our
    /// receipt notices and repairs the rest.
    pub fn switch_source(&mut self, now: Instant) {
        if self.ended && self.complete {
            return;
        }
        self.known_hash = self
            .announce
            .as_ref()
            .map(|a| a.manifest_hash)
            .or(self.known_hash);
        self.announce = None;
        self.session = self.cfg.session;
        self.row = None;
        self.ended = false;
        self.complete_acked = false;
        self.complete_tries = 0;
        self.server_lost = false;
        self.last_heard = Some(now);
        self.echo = None;
        self.stripe_next.clear();
        self.next_receipt = None;
        self.next_join = self.manifest.is_some().then_some(now);
        self.socket = (0, 0);
        self.socket_at_receipt = (0, 0);
        if self.manifest.is_none() {
            // Start the manifest over from the new source.
            self.manifest_buf = Vec::new();
            self.manifest_ranges.clear();
        }
        self.stats.switches += 1;
    }

    /// The node's count of datagrams its data socket received and of those the socket dropped
    /// for lack of buffer space (`SO_RXQ_OVFL`, wrapping), both since it was opened. Receipt
    /// notices report the dropped share since the previous notice (`overflow_ppm`): the
    /// server slows down for that, not for loss on the way.
    pub fn note_socket(&mut self, received: u64, dropped: u32) {
        self.socket = (received, dropped);
        self.stats.socket_drops = u64::from(dropped);
    }

    /// How full the node found its data socket's receive buffer (parts per million of it),
    /// before a read. Receipt notices report the fullest since the previous one
    /// (`queue_ppm`): the server's automatic rate stops rising before the socket overflows.
    pub fn note_queue(&mut self, ppm: u32) {
        self.queue_max = self.queue_max.max(ppm.min(1_000_000));
    }

    fn heard(&mut self, now: Instant, timestamp: u32) {
        self.last_heard = Some(now);
        self.server_lost = false;
        self.echo = Some((timestamp, now));
    }

    fn on_announce(&mut self, now: Instant, a: AnnounceRepr) {
        let first = self.announce.is_none();
        if let Some(old) = &self.announce {
            // A session cannot change its manifest, geometry or control address mid-way.
            if old.manifest_hash != a.manifest_hash
                || old.manifest_len != a.manifest_len
                || old.control != a.control
                || old.unit_size != a.unit_size
                || old.units_per_block != a.units_per_block
                || old.max_parity != a.max_parity
                || old.stripes != a.stripes
            {
                // The session cannot change its manifest: ignore the impostor.
                self.stats.bad_packets += 1;
                return;
            }
        }
        if first && self.manifest.is_none() {
            self.manifest_buf = vec![0u8; a.manifest_len as usize];
        }
        if first {
            self.events.push_back(ReceiverEvent::Announced {
                session: a.session,
                control: a.control,
            });
        }
        let pass_end = if a.pass_object.0 == u32::MAX {
            Some(self.numbering.total())
        } else {
            self.numbering.seq(a.pass_object, a.pass_block)
        };
        self.announce = Some(a);
        if let Some(p) = pass_end {
            self.pass_through(now, p);
        }
    }

    fn on_manifest_chunk(&mut self, now: Instant, offset: usize, bytes: &[u8]) {
        if self.manifest.is_some() || self.manifest_buf.is_empty() {
            return;
        }
        let end = offset + bytes.len();
        if end > self.manifest_buf.len() {
            self.stats.bad_packets += 1;
            return;
        }
        self.manifest_buf[offset..end].copy_from_slice(bytes);
        self.manifest_ranges.push((offset, end));
        self.manifest_ranges.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(self.manifest_ranges.len());
        for &(s, e) in &self.manifest_ranges {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.manifest_ranges = merged;
        if self.manifest_ranges != [(0, self.manifest_buf.len())] {
            return;
        }
        let Some(a) = self.announce.clone() else {
            return;
        };
        let manifest = match (blake3::hash(&self.manifest_buf).as_bytes() == &a.manifest_hash)
            .then(|| Manifest::parse(&self.manifest_buf))
        {
            Some(Ok(m)) if m.unit_size == a.unit_size && m.units_per_block == a.units_per_block => {
                m
            }
            _ => {
                // A forged or corrupted chunk: start the manifest over.
                self.stats.bad_packets += 1;
                self.manifest_ranges.clear();
                return;
            }
        };
        if let Err(e) = self.store.prepare(&manifest) {
            self.events.push_back(ReceiverEvent::StoreFailed(e));
            self.leave(LeaveReason::Failed);
            return;
        }
        self.numbering = BlockNumbering::new(&manifest);
        let total = self.numbering.total();
        self.blocks = (0..total).map(|_| None).collect();
        self.done = UnitBitmap::new(total as usize);
        self.passed_map = UnitBitmap::new(total as usize);
        self.manifest = Some(manifest);
        self.manifest_buf = Vec::new();
        self.events.push_back(ReceiverEvent::ManifestReady);
        // Join once ready to place units: a server waiting for receivers then starts the
        // first pass only when they can use it.
        self.next_join = Some(now);
        if total == 0 {
            self.finish(now);
        }
        // Blocks the first pass has already gone by are missing entirely.
        if let Some(a) = &self.announce {
            let p = if a.pass_object.0 == u32::MAX {
                Some(total)
            } else {
                self.numbering.seq(a.pass_object, a.pass_block)
            };
            if let Some(p) = p {
                self.pass_through(now, p);
            }
        }
    }

    /// The first pass has gone by every block before `end` (the announce says so).
    fn pass_through(&mut self, now: Instant, end: u64) {
        if self.manifest.is_none() {
            return;
        }
        let end = end.min(self.numbering.total());
        while self.passed < end {
            let seq = self.passed;
            self.passed += 1;
            self.mark_passed(now, seq);
        }
    }

    /// A first-pass unit of block `seq` arrived: its stripe's sender is done with every
    /// earlier block of the same stripe (stripes send in block order, independently).
    fn pass_stripe(&mut self, now: Instant, seq: u64) {
        self.pass_frontier = self.pass_frontier.max(seq);
        let stripes = self.stripes();
        if self.stripe_next.len() as u64 != stripes {
            self.stripe_next = (0..stripes).collect();
        }
        let s = (seq % stripes) as usize;
        let seq = if self.cfg.split.is_some() {
            seq.saturating_sub(SPLIT_PASS_LAG * stripes)
        } else {
            seq
        };
        while self.stripe_next[s] < seq {
            let b = self.stripe_next[s];
            self.stripe_next[s] += stripes;
            self.mark_passed(now, b);
        }
    }

    /// Block `seq`'s first pass is over: if it is incomplete it misses units, so count them
    /// as lost and arm its NACK timer.
    fn mark_passed(&mut self, now: Instant, seq: u64) {
        if !self.passed_map.try_set(seq as usize).unwrap_or(false) {
            return;
        }
        self.expected_units += u64::from(self.numbering.units_in(seq));
        self.arm(seq, now);
    }

    /// Schedules a NACK for block `seq` after a random backoff.
    fn arm(&mut self, seq: u64, now: Instant) {
        if self.done.get(seq as usize) {
            return;
        }
        let k = self.numbering.units_in(seq);
        let grtt = self.grtt();
        let n = f64::from(self.group_size()) + 1.0;
        let x = self.rng.unit();
        let state = self.blocks[seq as usize].get_or_insert_with(|| Box::new(BlockState::new(k)));
        let missing = usize::from(k).saturating_sub(state.have.count_ones() + state.parity.len());
        // NORM-style backoff: most receivers draw near the top of the window, few early, so
        // the first NACKs' repairs reach the rest before their timers fire. Receivers that
        // miss more units go earlier: their repairs cover those that miss fewer.
        let spread = (1.0 + x.ln() / n.ln()).max(0.0);
        let bias = 0.5 + 0.5 / (missing.max(1) as f64).min(8.0);
        let window = grtt.as_secs_f64() * self.cfg.backoff_factor;
        // Split mode: copies come later than the server's own packets by the copy path's
        // delay; a NACK before that would ask for units on their way.
        let delay = Duration::from_secs_f64(window * spread * bias) + grtt / 4 + self.copy_lag;
        let at = now + delay;
        if let Some(old) = state.nack_at.replace(at) {
            self.timers.remove(&(old, seq));
        }
        self.timers.insert((at, seq));
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
        if self.done.get(seq as usize) {
            self.stats.duplicates += 1;
            return None;
        }
        Some(seq)
    }

    fn on_unit(&mut self, now: Instant, unit: &UnitPacket<&[u8]>) {
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
        } else if unit.is_repair() && index + 1 == k {
            // The last unit of a block sent whole ahead of the first pass (a priority
            // request): what is missing now was lost, so NACK it without waiting for the pass.
            self.mark_passed(now, seq);
        }
        let state = self.blocks[seq as usize].get_or_insert_with(|| Box::new(BlockState::new(k)));
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
            self.stats.parity_units += 1;
            state.parity.push((index, payload.into()));
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
        if state.have.count_ones() + state.parity.len() >= usize::from(k) {
            self.finish_block(now, seq);
        }
    }

    /// An XOR repair: if this receiver misses exactly one of its units, that unit will be
    /// rebuilt from it (and the others, held) when the block is finished.
    fn on_xor(&mut self, now: Instant, x: &XorRepr, payload: &[u8]) {
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
        let state = self.blocks[seq as usize].get_or_insert_with(|| Box::new(BlockState::new(k)));
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
        state.have.set(usize::from(unit));
        state.xors.push(XorUnit {
            unit,
            units: x.units,
            payload: payload.into(),
        });
        self.stats.xor_units += 1;
        if state.have.count_ones() + state.parity.len() >= usize::from(k) {
            self.finish_block(now, seq);
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
        let Some(state) = self.blocks[seq as usize].as_mut() else {
            return;
        };
        // Whatever happens next, the block's state is dropped (verified) or started afresh
        // (failed): its parity units can be moved out.
        let decode = state.have.count_ones() < usize::from(k);
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
    pub fn handle_verified(&mut self, now: Instant, object: ObjectId, block: BlockIndex, ok: bool) {
        let Some(seq) = self.numbering.seq(object, block) else {
            return;
        };
        if self.blocks[seq as usize]
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
        if ok {
            if let Some(state) = self.blocks[seq as usize].take() {
                if let Some(at) = state.nack_at {
                    self.timers.remove(&(at, seq));
                }
            }
            self.done.set(seq as usize);
            self.stats.blocks_verified += 1;
            self.store.block_verified(object, block);
            self.events
                .push_back(ReceiverEvent::BlockVerified { object, block });
            while self.prefix < self.numbering.total() && self.done.get(self.prefix as usize) {
                self.prefix += 1;
            }
            if self.done.is_full() {
                self.finish(now);
            }
        } else {
            // Discard what we have and fetch the block again.
            self.stats.blocks_failed += 1;
            self.events
                .push_back(ReceiverEvent::BlockFailed { object, block });
            let old = self.blocks[seq as usize].take();
            let mut fresh = BlockState::new(k);
            if let Some(old) = old {
                fresh.parity_seen = old.parity_seen;
                if let Some(at) = old.nack_at {
                    self.timers.remove(&(at, seq));
                }
            }
            self.blocks[seq as usize] = Some(Box::new(fresh));
            if self.passed_map.get(seq as usize) {
                self.arm(seq, now);
            }
        }
    }

    fn finish(&mut self, now: Instant) {
        if !self.complete {
            self.complete = true;
            self.events.push_back(ReceiverEvent::Complete);
            self.next_receipt = Some(now);
        }
    }

    fn receipt_interval(&mut self) -> Duration {
        let spread = f64::from(self.group_size()) / self.cfg.group_receipt_rate.max(1.0);
        let base = self.cfg.min_receipt_interval.as_secs_f64().max(spread);
        // Jitter so that a group that joined together does not report together.
        Duration::from_secs_f64(base * (0.75 + 0.5 * self.rng.unit()))
    }

    /// Handles timers: call when the instant from [`Receiver::poll_timeout`] has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.ended {
            return;
        }
        if self
            .last_heard
            .is_some_and(|t| now.saturating_duration_since(t) >= self.cfg.idle_timeout)
            && !self.server_lost
        {
            self.server_lost = true;
            self.events.push_back(ReceiverEvent::ServerLost);
        }
        if self.next_join.is_some_and(|t| now >= t) && self.row.is_none() {
            self.out.push_back(Out::Join);
            self.next_join = Some(now + self.cfg.join_interval.max(self.grtt() * 2));
        }
        if self.next_receipt.is_some_and(|t| now >= t) && self.row.is_some() {
            if self.complete && self.cfg.split.is_some() {
                // Split mode: still forwarding copies, so still reporting (the server times
                // out a member that falls silent, complete or not).
                self.out.push_back(Out::Receipt);
                self.next_receipt = Some(now + self.receipt_interval());
            } else if self.complete && self.complete_acked {
                self.next_receipt = None;
            } else {
                self.out.push_back(Out::Receipt);
                self.next_receipt = if self.complete {
                    self.complete_tries += 1;
                    (self.complete_tries < 20)
                        .then(|| now + (self.grtt() * 4).max(Duration::from_millis(20)))
                } else {
                    Some(now + self.receipt_interval())
                };
            }
        }
        while let Some(&(at, seq)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            self.on_nack_timer(now, seq);
        }
    }

    fn on_nack_timer(&mut self, now: Instant, seq: u64) {
        let k = self.numbering.units_in(seq);
        let grtt = self.grtt();
        let Some(state) = self.blocks[seq as usize].as_mut() else {
            return;
        };
        state.nack_at = None;
        if state.verifying {
            // Out for rebuild and hashing: the answer decides (a failure re-arms it).
            return;
        }
        let held = state.have.count_ones() + state.parity.len();
        let missing = usize::from(k).saturating_sub(held);
        if !state.loss_counted {
            // Units still missing once the backoff has passed were lost (late ones were not).
            state.loss_counted = true;
            self.loss_units += (usize::from(k) - state.have.count_ones()) as u64;
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
            self.timers.insert((at, seq));
            return;
        }
        if self.row.is_none() {
            // Not accepted yet: the server would ignore it. Send once accepted.
            self.nack_due.insert(seq);
            return;
        }
        self.nack_due.insert(seq);
        // If neither the NACK nor its repair arrives, ask again.
        let retry =
            grtt.mul_f64(2.0 + self.cfg.backoff_factor) + Duration::from_millis(1) + self.copy_lag;
        let at = now + retry;
        state.nack_at = Some(at);
        self.timers.insert((at, seq));
    }

    /// The next instant at which [`Receiver::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.ended {
            return None;
        }
        let mut t = self.timers.first().map(|&(at, _)| at);
        for x in [
            self.next_solicit
                .filter(|_| self.cfg.split.is_some() && self.manifest.is_none()),
            self.next_join.filter(|_| self.row.is_none()),
            self.next_receipt.filter(|_| self.row.is_some()),
            self.last_heard
                .filter(|_| !self.server_lost)
                .map(|h| h + self.cfg.idle_timeout),
        ]
        .into_iter()
        .flatten()
        {
            t = Some(t.map_or(x, |t| t.min(x)));
        }
        t
    }

    /// Drains one event.
    pub fn poll_event(&mut self) -> Option<ReceiverEvent> {
        self.events.pop_front()
    }

    /// The server's control address, once announced.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.announce.as_ref().map(|a| a.control)
    }

    /// Writes the next datagram for the server into `buf`, or returns `None`.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some(split) = self.cfg.split {
            // Split mode: ask the server for the announce and the manifest by unicast until
            // the manifest is here (no multicast carousel to wait for).
            if self.manifest.is_none() && !self.ended && self.next_solicit.is_none_or(|t| now >= t)
            {
                self.next_solicit = Some(now + self.cfg.join_interval);
                let len = Packet::Solicit(SolicitRepr {
                    session: self.session.unwrap_or_default(),
                    receiver: self.cfg.id,
                    zone: split.zone,
                })
                .emit(buf)
                .ok()?;
                return Some(Transmit {
                    destination: Destination::Peer(split.server),
                    len,
                    payload: None,
                });
            }
        }
        let session = self.session?;
        let control = self.control_addr()?;
        let receiver = self.cfg.id;
        let packet = if let Some(out) = self.out.pop_front() {
            match out {
                Out::Join => Packet::Join(JoinRepr { session, receiver }),
                Out::Leave(reason) => Packet::Leave(LeaveRepr {
                    session,
                    receiver,
                    reason,
                }),
                Out::Priority(p) => Packet::Priority(p),
                Out::Receipt => {
                    let r = self.receipt(now);
                    self.stats.receipts += 1;
                    self.stats.receipt_bytes += r.buffer_len() as u64;
                    Packet::Receipt(r)
                }
            }
        } else if self.row.is_some() && !self.nack_due.is_empty() && !self.ended {
            let n = self.build_nack(session);
            self.stats.nacks += 1;
            self.stats.nack_entries += n.entries.len() as u64;
            self.stats.nack_bytes += n.buffer_len() as u64;
            Packet::Nack(n)
        } else {
            return None;
        };
        let len = packet.emit(buf).ok()?;
        Some(Transmit {
            destination: Destination::Peer(control),
            len,
            payload: None,
        })
    }

    fn build_nack(&mut self, session: SessionId) -> NackRepr {
        let mut n = NackRepr {
            session,
            receiver: self.cfg.id,
            entries: Vec::new(),
        };
        let mut len = n.buffer_len();
        while let Some(&seq) = self.nack_due.first() {
            let k = self.numbering.units_in(seq);
            let Some(state) = self.blocks[seq as usize].as_ref() else {
                self.nack_due.pop_first();
                continue;
            };
            let missing =
                usize::from(k).saturating_sub(state.have.count_ones() + state.parity.len());
            if missing == 0 || state.verifying {
                self.nack_due.pop_first();
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
            self.nack_due.pop_first();
        }
        n
    }

    fn receipt(&mut self, now: Instant) -> ReceiptRepr {
        let (echo_timestamp, echo_delay_us) = match self.echo {
            Some((ts, at)) => (ts, micros(now.saturating_duration_since(at))),
            None => (0, 0),
        };
        let total = self.numbering.total();
        let (watermark_object, watermark_block) = if self.prefix >= total {
            (ObjectId(self.numbering.objects() as u32), BlockIndex(0))
        } else {
            let a = self.numbering.addr(self.prefix);
            (a.object, a.block)
        };
        let mut runs = Vec::new();
        let mut seq = self.prefix;
        while seq < total && runs.len() < 32 {
            if !self.done.get(seq as usize) {
                seq += 1;
                continue;
            }
            let BlockAddr {
                object,
                block: start,
            } = self.numbering.addr(seq);
            let obj_end = self.numbering.object_end(object);
            let mut end = seq;
            while end < obj_end && self.done.get(end as usize) {
                end += 1;
            }
            runs.push(BlockRun {
                object,
                start,
                len: (end - seq) as u32,
            });
            seq = end;
        }
        let loss_ppm = (self.loss_units * 1_000_000)
            .checked_div(self.expected_units)
            .map_or(0, |p| p.min(1_000_000) as u32);
        self.loss_units = 0;
        self.expected_units = 0;
        let (received, dropped) = self.socket;
        let (r0, d0) = self.socket_at_receipt;
        // Counters that went backwards belong to a new socket (a fail-over): count from 0.
        let (got, lost) = if received < r0 || dropped < d0 {
            (received, u64::from(dropped))
        } else {
            (received - r0, u64::from(dropped - d0))
        };
        let overflow_ppm = (lost * 1_000_000)
            .checked_div(got + lost)
            .map_or(0, |p| p.min(1_000_000) as u32);
        self.socket_at_receipt = self.socket;
        ReceiptRepr {
            session: self.session.unwrap_or_default(),
            receiver: self.cfg.id,
            complete: self.complete,
            echo_timestamp,
            echo_delay_us,
            loss_ppm,
            overflow_ppm,
            queue_ppm: std::mem::take(&mut self.queue_max),
            watermark_object,
            watermark_block,
            blocks_done: self.done.count_ones() as u64,
            runs,
        }
    }
}

impl<S: BlockStore> Endpoint for Receiver<S> {
    type Event = ReceiverEvent;

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        Receiver::handle_datagram(self, now, from, bytes)
    }

    fn handle_timeout(&mut self, now: Instant) {
        Receiver::handle_timeout(self, now)
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        Receiver::poll_transmit(self, now, buf)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Receiver::poll_timeout(self)
    }

    fn poll_event(&mut self) -> Option<ReceiverEvent> {
        Receiver::poll_event(self)
    }

    /// Over once the session ended for it (ended by the server, or left).
    fn is_finished(&self) -> bool {
        self.is_ended()
    }
}
