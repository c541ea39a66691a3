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

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockcast_status::{AtomicBitmap, RowId, StatusMatrix, UnitBitmap};

use crate::coding;
use crate::endpoint::Endpoint;
use crate::numbering::{BlockAddr, BlockNumbering};
use crate::pacer::Pacer;
use crate::rate::{Congestion, RateControl, RateLimits};
use crate::split::{self, MemberInfo, SplitConfig};
use crate::store::BlockSource;
use crate::stripe::StripePass;
use crate::wire::{
    set_copy_flags, AcceptRepr, AnnounceRepr, BlockIndex, CopyFlags, DoneReason, DoneRepr, Holes,
    Manifest, ManifestChunkRepr, NackEntry, ObjectId, Packet, PlanRepr, ReceiptRepr, ReceiverId,
    SessionId, SolicitRepr, UnitHeaderRepr, WireError, XorRepr, UNIT_HEADER_LEN, XOR_NONE,
    XOR_WIDTH,
};
use crate::{micros, Destination, Geometry, Transmit, UnitRef};

/// How a sender behaves. `Default` gives the values the CLI starts from.
#[derive(Clone, Debug)]
pub struct SenderConfig {
    pub session: SessionId,
    /// The control address receivers send to (advertised in every announce).
    pub control: SocketAddr,
    pub geometry: Geometry,
    /// Stripes the blocks are dealt into (one per sending core).
    pub stripes: u16,
    /// Pacing: datagram bytes per second on the group, first pass and repairs together
    /// (with an external first pass, repairs get half of it while any are queued, and the
    /// first pass the rest: [`Sender::first_pass_rate`]). With `rate_control` this is
    /// where the automatic rate starts.
    pub rate: u64,
    /// `--rate auto`: follow congestion at the receivers within these bounds
    /// ([`crate::rate`]); `None`: a fixed `rate`.
    pub rate_control: Option<RateLimits>,
    /// How much sending time pacing may catch up at once after a stall.
    pub burst: Duration,
    pub announce_interval: Duration,
    /// Manifest chunks sent after each announce (a carousel for late joiners).
    pub manifest_chunks_per_announce: usize,
    /// Round-trip estimate until receivers have measured one.
    pub initial_grtt: Duration,
    /// Start the first pass once this many receivers are accepted...
    pub min_receivers: usize,
    /// ...or once this long has passed since the first announce.
    pub max_wait: Duration,
    /// Stop at this long after the first announce even if receivers are incomplete.
    pub deadline: Option<Duration>,
    /// A receiver not heard from for this long is dropped.
    pub receiver_timeout: Duration,
    /// Most receivers admitted (rows of the status matrix).
    pub max_receivers: usize,
    /// Blocks whose parity units are kept ready (each costs `max_parity * unit_size`).
    pub parity_cache_blocks: usize,
    /// Repair with the original units receivers name rather than with parity while that
    /// costs at most this many times parity's bandwidth. Parity serves every receiver with
    /// one set of units, but each receiver that takes one must decode its whole block
    /// (milliseconds of CPU per MiB, whatever it lost); originals only need receiving. The
    /// cost ratio is estimated as the sum of the incomplete members' loss rates over the
    /// largest (about N for N receivers that lose alike; the member count until losses are
    /// reported), so small groups get originals and large ones parity. 0: parity always.
    pub originals_factor: u32,
    /// While repairs go as originals, combine the units different receivers miss into XOR
    /// repairs (wire.md §3.2): one datagram carries up to four units, each for a receiver
    /// that holds the others, so a small group gets about its largest member's losses resent
    /// instead of the union of everyone's, and a receiver rebuilds with a few XORs, not a
    /// decode of its block. The server waits up to [`XOR_GATHER_GRTTS`] round trips after a
    /// block's first NACK for the others'. Multicast only (not in split mode).
    pub xor_repairs: bool,
    /// The node sends the first pass itself (one data thread per stripe, straight from the
    /// source) and reports how far it got with [`Sender::handle_first_pass`]; the sender then
    /// announces, repairs and tracks receivers, and never emits first-pass units.
    pub external_first_pass: bool,
    /// Split mode (wire.md §14): no multicast. Every unit goes by unicast to one member,
    /// which copies it on as its plan says; announces, manifests and done packets go to each
    /// member by unicast. Needs an internal first pass.
    pub split: Option<SplitConfig>,
}

/// The default [`SenderConfig::originals_factor`]: groups of up to about four receivers that
/// lose alike get originals (measured in docs/DESIGN.md, 2026-11-22).
pub const ORIGINALS_FACTOR: u32 = 4;

/// How long the server holds a block's XOR repairs after its first NACK, in round trips:
/// receivers draw their NACK times from a window of a few round trips, and a combination can
/// only serve the receivers whose NACKs are in.
pub const XOR_GATHER_GRTTS: u32 = 2;

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            session: SessionId(1),
            control: SocketAddr::from(([127, 0, 0, 1], 0)),
            geometry: Geometry {
                unit_size: 1400,
                units_per_block: 749,
                max_parity: 128,
            },
            stripes: 1,
            rate: 1_000_000_000,
            rate_control: None,
            burst: Duration::from_millis(2),
            announce_interval: Duration::from_millis(100),
            manifest_chunks_per_announce: 64,
            initial_grtt: Duration::from_millis(5),
            min_receivers: 0,
            max_wait: Duration::from_secs(5),
            deadline: None,
            receiver_timeout: Duration::from_secs(10),
            max_receivers: 100_000,
            parity_cache_blocks: 256,
            originals_factor: ORIGINALS_FACTOR,
            xor_repairs: true,
            external_first_pass: false,
            split: None,
        }
    }
}

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

/// How often the first pass's skip set is brought up to date from the status matrix.
const SKIP_SCAN: Duration = Duration::from_millis(20);
/// How far ahead of the first pass the skip scan looks, in blocks.
const SKIP_SCAN_AHEAD: u64 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Waiting,
    Sending,
    Closing { reason: DoneReason, left: u32 },
    Finished,
}

struct Member {
    addr: SocketAddr,
    row: RowId,
    last_heard: Instant,
    complete: bool,
    rtt: Option<Duration>,
    loss_ppm: u32,
    /// Its loss rate, smoothed over the notices that reported any (parts per million).
    loss_est_ppm: u32,
    /// Its socket's overflow share, from its latest notice (parts per million).
    overflow_ppm: u32,
    /// How full its socket's receive buffer got, from its latest notice (parts per million).
    queue_ppm: u32,
    /// Its verified blocks at its previous notice, and when that notice came.
    delivered: Option<(Instant, u64)>,
    /// Bytes per second it verified between notices, smoothed; 0 until measured.
    delivery: u64,
    /// Blocks before this are marked held in the status matrix.
    marked: u64,
    /// The zone it named (split mode; 0 otherwise).
    zone: u16,
}

/// A unicast packet split mode sends in place of one group packet.
#[derive(Clone, Copy, Debug)]
enum Fan {
    Announce,
    Chunk(usize),
    Plan(ReceiverId),
    Done(DoneReason),
}

/// A receiver that asked for the session by unicast and has not joined yet.
struct Solicitor {
    addr: SocketAddr,
    zone: u16,
    last_heard: Instant,
    answered: Option<Instant>,
}

/// Split mode's state.
struct SplitState {
    cfg: SplitConfig,
    epoch: u32,
    plan: split::Plan,
    /// Each member's current plan, as sent.
    plans: HashMap<ReceiverId, PlanRepr>,
    /// Membership changed since the plan was made.
    dirty: bool,
    last_replan: Option<Instant>,
    next_replan: Option<Instant>,
    next_plan_round: Option<Instant>,
    solicitors: HashMap<ReceiverId, Solicitor>,
    fanout: VecDeque<(SocketAddr, Fan)>,
}

/// Repair state of one block.
#[derive(Default)]
struct Repair {
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
    /// Original units to send again.
    originals: Option<UnitBitmap>,
    /// XOR repairs: what each receiver's latest NACK for the block asked for and is not yet
    /// sent (ascending unit indices).
    wants: Vec<(ReceiverId, Vec<u16>)>,
    /// XOR repairs wait until then for the other receivers' NACKs.
    gather_until: Option<Instant>,
    queued: bool,
}

impl Repair {
    /// Until when the block waits for more NACKs, if XOR repairs are all it has left to send.
    fn gathering(&self) -> Option<Instant> {
        let idle = self.parity_next >= self.parity_end
            && self.originals.as_ref().is_none_or(|o| o.count_ones() == 0);
        self.gather_until.filter(|_| idle && !self.wants.is_empty())
    }
}

/// How often a first pass waiting for an unavailable block looks again.
const STALL_RECHECK: Duration = Duration::from_millis(1);

/// Most blocks one priority request may ask for.
const PRIORITY_BLOCKS: u32 = 16;

/// The next unit of the first pass: unit `unit` of block number `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PassCursor {
    seq: u64,
    unit: u16,
}

enum Control {
    Accept(ReceiverId, u32),
    DoneReceiver(ReceiverId),
}

/// The server's state machine for one session.
pub struct Sender<S> {
    cfg: SenderConfig,
    source: S,
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    manifest_hash: [u8; 32],
    numbering: BlockNumbering,
    epoch: Option<Instant>,
    phase: Phase,
    /// Paces what this sender sends itself (repairs, and an internal first pass).
    pacer: Pacer,
    /// The automatic rate, when on; its next step, and the bytes sent at the last one.
    rate_control: Option<RateControl>,
    next_rate_step: Option<Instant>,
    rate_sent: (Instant, u64),
    /// Blocks the first pass skips: every member holds them already.
    skip: Arc<AtomicBitmap>,
    next_skip_scan: Option<Instant>,
    /// Next first-pass unit, or `None` once the first pass is done (or is external).
    pass: Option<PassCursor>,
    /// External first pass: every block before this (global numbering) has been sent.
    external_sent: u64,
    /// External first pass: datagram bytes its stripes sent.
    external_bytes: u64,
    next_announce: Option<Instant>,
    announce_now: bool,
    manifest_due: usize,
    manifest_cursor: usize,
    closing_at: Option<Instant>,
    repairs: HashMap<u64, Repair>,
    /// Repairs go as originals ([`Sender::repair_by_originals`]), as decided at this instant.
    by_originals: bool,
    originals_checked: Option<Instant>,
    repair_queue: VecDeque<u64>,
    parity_cache: HashMap<u64, Vec<u8>>,
    parity_lru: VecDeque<u64>,
    members: HashMap<ReceiverId, Member>,
    matrix: StatusMatrix,
    ever_joined: usize,
    control_out: VecDeque<(SocketAddr, Control)>,
    grtt: Duration,
    grtt_window_max: Option<Duration>,
    grtt_window_end: Option<Instant>,
    next_member_scan: Option<Instant>,
    /// The first pass waits for a block that is not available yet: look again at this time.
    stall_check: Option<Instant>,
    events: VecDeque<SenderEvent>,
    stats: SenderStats,
    split: Option<SplitState>,
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
        let manifest_bytes = manifest.emit().map_err(|_| "manifest cannot be encoded")?;
        let manifest_hash = *blake3::hash(&manifest_bytes).as_bytes();
        let numbering = BlockNumbering::new(&manifest);
        let total_blocks = numbering.total();
        let matrix = StatusMatrix::new(cfg.max_receivers, total_blocks as usize);
        // Block 0 is the first block of the first object that has any.
        let first = (total_blocks > 0 && !cfg.external_first_pass)
            .then_some(PassCursor { seq: 0, unit: 0 });
        let split = cfg.split.clone().map(|cfg| SplitState {
            cfg,
            epoch: 0,
            plan: split::Plan::default(),
            plans: HashMap::new(),
            dirty: false,
            last_replan: None,
            next_replan: None,
            next_plan_round: None,
            solicitors: HashMap::new(),
            fanout: VecDeque::new(),
        });
        let own_rate = if cfg.external_first_pass {
            cfg.rate / 2
        } else {
            cfg.rate
        };
        Ok(Sender {
            split,
            numbering,
            pacer: Pacer::new(own_rate, cfg.burst),
            rate_control: cfg.rate_control.map(|l| {
                RateControl::new(RateLimits {
                    start: cfg.rate,
                    ..l
                })
            }),
            next_rate_step: None,
            rate_sent: (Instant::now(), 0),
            skip: Arc::new(AtomicBitmap::new(total_blocks as usize)),
            next_skip_scan: None,
            external_bytes: 0,
            grtt: cfg.initial_grtt,
            cfg,
            source,
            pass: first,
            external_sent: 0,
            manifest,
            manifest_bytes,
            manifest_hash,
            epoch: None,
            phase: Phase::Waiting,
            next_announce: None,
            announce_now: true,
            manifest_due: 0,
            manifest_cursor: 0,
            closing_at: None,
            repairs: HashMap::new(),
            by_originals: false,
            originals_checked: None,
            repair_queue: VecDeque::new(),
            parity_cache: HashMap::new(),
            parity_lru: VecDeque::new(),
            members: HashMap::new(),
            matrix,
            ever_joined: 0,
            control_out: VecDeque::new(),
            grtt_window_max: None,
            grtt_window_end: None,
            next_member_scan: None,
            stall_check: None,
            events: VecDeque::new(),
            stats: SenderStats::default(),
        })
    }

    pub fn stats(&self) -> &SenderStats {
        &self.stats
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn source(&self) -> &S {
        &self.source
    }

    /// The block source, to fill in blocks as they become available (a relay).
    pub fn source_mut(&mut self) -> &mut S {
        &mut self.source
    }

    /// The status matrix: receivers x blocks, receive and request status.
    pub fn status_matrix(&self) -> &StatusMatrix {
        &self.matrix
    }

    /// Blocks waiting in the repair queue (NACK answers and priority blocks).
    pub fn repair_backlog(&self) -> usize {
        if self.first_pass_done() {
            return self.repair_queue.len();
        }
        // Blocks whose XOR repairs wait for more NACKs have nothing to send yet.
        self.repair_queue
            .iter()
            .filter(|s| self.repairs.get(s).and_then(Repair::gathering).is_none())
            .count()
    }

    /// Every accepted receiver reports holding block `seq` (global numbering).
    pub fn all_hold(&self, seq: u64) -> bool {
        !self.members.is_empty() && self.matrix.all_hold(seq as usize)
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

    /// Receivers ever accepted in this session.
    pub fn receivers_ever(&self) -> usize {
        self.ever_joined
    }

    /// Accepted receivers now.
    pub fn receivers(&self) -> usize {
        self.members.len()
    }

    /// Each member's measured send->receipt time and reported loss, by id, for the node's
    /// summary and relay choice.
    pub fn receiver_report(&self) -> Vec<MemberReport> {
        let mut v: Vec<_> = self
            .members
            .iter()
            .map(|(id, m)| MemberReport {
                id: *id,
                addr: m.addr,
                complete: m.complete,
                rtt: m.rtt,
                loss_ppm: m.loss_ppm,
            })
            .collect();
        v.sort_by_key(|r| r.id);
        v
    }

    /// What the members' latest receipt notices say of congestion, summed up for
    /// `--rate auto`.
    pub fn congestion(&self) -> Congestion {
        Congestion {
            overflow_ppm: self.worst_overflow_ppm(),
            queue_ppm: self.worst_queue_ppm(),
            loss_ppm: self.members.values().map(|m| m.loss_ppm).max().unwrap_or(0),
            slowest_delivery: self.slowest_delivery(),
        }
    }

    /// The rate now (datagram bytes per second, first pass and repairs together): the fixed
    /// one, or where `--rate auto` has taken it.
    pub fn rate(&self) -> u64 {
        self.rate_control
            .as_ref()
            .map_or(self.cfg.rate, RateControl::rate)
    }

    /// An external first pass's share of the rate: all of it, or half while repairs or
    /// priority blocks are queued (they take the other half).
    pub fn first_pass_rate(&self) -> u64 {
        let rate = self.rate();
        if self.repair_backlog() > 0 {
            (rate / 2).max(1)
        } else {
            rate
        }
    }

    /// The blocks the first pass skips because every member holds them (sent whole ahead
    /// of it for a priority request): shared with the stripes
    /// ([`StripePass`]), which read it lock-free.
    pub fn skip_set(&self) -> Arc<AtomicBitmap> {
        self.skip.clone()
    }

    /// The session's block numbering.
    pub fn numbering(&self) -> &BlockNumbering {
        &self.numbering
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
                self.skip.clone(),
                epoch,
                self.first_pass_rate(),
                self.cfg.burst,
            )
        })
    }

    /// The worst socket overflow share among the members' latest receipt notices (parts per
    /// million): congestion at a receiver, the signal `--rate auto` slows down for.
    pub fn worst_overflow_ppm(&self) -> u32 {
        self.members
            .values()
            .map(|m| m.overflow_ppm)
            .max()
            .unwrap_or(0)
    }

    /// The fullest receive buffer among the members' latest receipt notices (parts per
    /// million of the buffer): a receiver falling behind, before it overflows.
    pub fn worst_queue_ppm(&self) -> u32 {
        self.members
            .values()
            .map(|m| m.queue_ppm)
            .max()
            .unwrap_or(0)
    }

    /// The slowest incomplete member's delivery rate: bytes per second it verified between
    /// its recent notices (smoothed), among those measured; what the group demonstrably takes.
    pub fn slowest_delivery(&self) -> Option<u64> {
        self.members
            .values()
            .filter(|m| !m.complete && m.delivery > 0)
            .map(|m| m.delivery)
            .min()
    }

    /// The group round-trip time estimate.
    pub fn grtt(&self) -> Duration {
        self.grtt
    }

    #[doc(hidden)]
    pub fn debug_state(&self) -> String {
        format!(
            "phase {:?} pass {:?} queue {:?} next_send {:?} announce {:?} closing {:?} members {}",
            self.phase,
            self.pass,
            self.repair_queue,
            self.pacer.next_send(),
            self.next_announce,
            self.closing_at,
            self.members.len()
        )
    }

    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
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

    /// External first pass: every block before `sent_before` (global numbering over the
    /// manifest's objects) has been sent by every data thread. Call it as the data threads
    /// progress; a value at or past the last block ends the first pass.
    pub fn handle_first_pass(&mut self, now: Instant, progress: FirstPassProgress) {
        if !self.cfg.external_first_pass {
            return;
        }
        self.external_bytes = self.external_bytes.max(progress.bytes);
        let sent_before = progress.sent_before;
        if sent_before <= self.external_sent {
            return;
        }
        let was_done = self.first_pass_done();
        self.external_sent = sent_before.min(self.numbering.total());
        if !was_done && self.first_pass_done() {
            self.events.push_back(SenderEvent::FirstPassDone);
            self.announce_now = true;
        }
        self.advance_phase(now);
    }

    fn first_pass_done(&self) -> bool {
        if self.cfg.external_first_pass {
            self.external_sent >= self.numbering.total()
        } else {
            self.pass.is_none()
        }
    }

    /// Change the rate (datagram bytes per second, first pass and repairs together); with
    /// `--rate auto` the next step starts from the controller's own rate again.
    pub fn set_rate(&mut self, rate: u64) {
        self.cfg.rate = rate.max(1);
        self.apply_rate();
    }

    /// Paces this sender's own sends at its share of the rate.
    fn apply_rate(&mut self) {
        let rate = self.rate();
        self.pacer.set_rate(if self.cfg.external_first_pass {
            (rate / 2).max(1)
        } else {
            rate
        });
    }

    /// `--rate auto`: one step of the controller, on what went out since the last.
    fn step_rate(&mut self, now: Instant) {
        let sent = self.stats.data_bytes + self.stats.parity_bytes + self.external_bytes;
        let (t0, sent0) = self.rate_sent;
        let secs = now.saturating_duration_since(t0).as_secs_f64().max(1e-3);
        let achieved = (sent.saturating_sub(sent0) as f64 / secs) as u64;
        self.rate_sent = (now, sent);
        let congestion = self.congestion();
        if let Some(rc) = self.rate_control.as_mut() {
            rc.step(now, congestion, achieved);
        }
        self.apply_rate();
    }

    /// Brings the skip set up to date: blocks ahead of the first pass that every member
    /// holds are not sent again.
    fn scan_skips(&mut self) {
        let total = self.numbering.total();
        let from = if self.cfg.external_first_pass {
            self.external_sent
        } else {
            self.pass.map_or(total, |p| p.seq)
        };
        let from = from.min(total);
        let to = (from + SKIP_SCAN_AHEAD).min(total);
        for seq in from..to {
            if self.all_hold(seq) {
                // Release: a stripe that sees the bit skips a block every member holds.
                self.skip.set(seq as usize);
            }
        }
    }

    /// Stop: tell the group the session is over.
    pub fn abort(&mut self, now: Instant) {
        if !matches!(self.phase, Phase::Closing { .. } | Phase::Finished) {
            self.close(now, DoneReason::Aborted);
        }
    }

    fn timestamp(&self, now: Instant) -> u32 {
        micros(now.saturating_duration_since(self.epoch.unwrap_or(now)))
    }

    fn start(&mut self, now: Instant) {
        if self.epoch.is_none() {
            self.epoch = Some(now);
            self.next_member_scan = Some(now + self.cfg.receiver_timeout / 4);
            self.grtt_window_end = Some(now + self.grtt_window());
            self.rate_sent = (now, 0);
        }
    }

    fn grtt_window(&self) -> Duration {
        (self.cfg.announce_interval * 4).max(Duration::from_millis(100))
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
            Packet::Join(j) => self.on_join(now, from, j.receiver),
            Packet::Leave(l) => {
                if let Some(m) = self.members.remove(&l.receiver) {
                    self.matrix.remove_receiver(m.row);
                    self.membership_changed();
                    self.events.push_back(SenderEvent::ReceiverLeft {
                        receiver: l.receiver,
                        timed_out: false,
                    });
                }
            }
            Packet::Nack(n) => {
                self.stats.nacks += 1;
                self.stats.nack_bytes += bytes.len() as u64;
                let Some(m) = self.members.get_mut(&n.receiver) else {
                    self.stats.strangers += 1;
                    return;
                };
                m.last_heard = now;
                let incomplete = self.members.values().filter(|m| !m.complete).count();
                for e in &n.entries {
                    self.on_nack_entry(now, n.receiver, incomplete, e);
                }
            }
            Packet::Receipt(r) => {
                self.stats.receipts += 1;
                self.stats.receipt_bytes += bytes.len() as u64;
                self.on_receipt(now, &r);
            }
            Packet::Priority(p) => {
                self.stats.priority_requests += 1;
                let first = self.numbering.seq(p.object, p.block);
                if let (Some(m), Some(first)) = (self.members.get_mut(&p.receiver), first) {
                    m.last_heard = now;
                    let row = m.row;
                    // A request covers at most PRIORITY_BLOCKS blocks, inside its object: a
                    // player asks again as it goes, and one receiver cannot claim the link.
                    let obj_end = self.numbering.object_end(p.object);
                    let end = (first + u64::from(p.count.min(PRIORITY_BLOCKS))).min(obj_end);
                    // Last first: each goes to the front, so the first asked for leaves first.
                    for seq in (first..end).rev() {
                        // Request status per receiver and block; requests merge: a block
                        // already on its way (asked for by anyone) is not queued twice.
                        self.matrix.request(row, seq as usize);
                        // Not while it is queued or just went out (it may still be on its way).
                        let settle = self.grtt * 2;
                        let busy = self.repairs.get(&seq).is_some_and(|r| {
                            r.queued
                                || r.whole_sent_at
                                    .is_some_and(|t| now.saturating_duration_since(t) < settle)
                        });
                        let a = self.numbering.addr(seq);
                        if !busy && self.source.available(a.object, a.block) {
                            self.queue_priority(seq);
                        }
                    }
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

    /// Split mode: a receiver asks for the session by unicast. Answer with the announce and
    /// the whole manifest (at most once per announce interval per receiver), and remember its
    /// zone for its join.
    fn on_solicit(&mut self, now: Instant, from: SocketAddr, sol: &SolicitRepr) {
        let interval = self.cfg.announce_interval;
        let max = self.cfg.max_receivers;
        let chunks = self.manifest_chunks();
        let closing = matches!(self.phase, Phase::Closing { .. } | Phase::Finished);
        let Some(sp) = self.split.as_mut() else {
            self.stats.strangers += 1;
            return;
        };
        if (sol.session.0 != 0 && sol.session != self.cfg.session) || closing {
            self.stats.strangers += 1;
            return;
        }
        if !sp.solicitors.contains_key(&sol.receiver) && sp.solicitors.len() >= max {
            return;
        }
        let s = sp.solicitors.entry(sol.receiver).or_insert(Solicitor {
            addr: from,
            zone: sol.zone,
            last_heard: now,
            answered: None,
        });
        s.addr = from;
        s.zone = sol.zone;
        s.last_heard = now;
        if s.answered
            .is_some_and(|t| now.saturating_duration_since(t) < interval)
        {
            return;
        }
        s.answered = Some(now);
        sp.fanout.push_back((from, Fan::Announce));
        for i in 0..chunks {
            sp.fanout.push_back((from, Fan::Chunk(i)));
        }
    }

    fn manifest_chunk_len(&self) -> usize {
        usize::from(self.cfg.geometry.unit_size).clamp(1, 1200)
    }

    fn manifest_chunks(&self) -> usize {
        self.manifest_bytes
            .len()
            .div_ceil(self.manifest_chunk_len())
    }

    /// Split mode: the plan must be rebuilt (a member joined, left or timed out).
    fn membership_changed(&mut self) {
        if let Some(sp) = self.split.as_mut() {
            sp.dirty = true;
        }
    }

    /// Split mode: rebuilds the plan when membership changed (at most once per
    /// `replan_gap`) or when `replan_interval` has passed, and queues the plans that changed;
    /// repeats every plan each `plan_interval`.
    fn maybe_replan(&mut self, now: Instant) {
        if self.phase != Phase::Sending {
            // Nothing is sent before the first pass, so nothing needs a plan yet.
            return;
        }
        let grtt = self.grtt;
        let Some(sp) = self.split.as_ref() else {
            return;
        };
        let due_change = sp.dirty
            && (sp.plan.owners.is_empty()
                || sp
                    .last_replan
                    .is_none_or(|t| now.saturating_duration_since(t) >= sp.cfg.replan_gap));
        let due_refresh = sp.next_replan.is_none_or(|t| now >= t);
        if due_change || due_refresh {
            let infos: Vec<MemberInfo> = self
                .members
                .iter()
                .map(|(id, m)| MemberInfo {
                    id: *id,
                    addr: m.addr,
                    zone: m.zone,
                    rtt: m.rtt,
                    loss_ppm: m.loss_ppm,
                })
                .collect();
            let session = self.cfg.session;
            let Some(sp) = self.split.as_mut() else {
                return;
            };
            let plan = split::plan(&infos, &sp.cfg, grtt);
            sp.dirty = false;
            sp.last_replan = Some(now);
            sp.next_replan = Some(now + sp.cfg.replan_interval);
            if plan != sp.plan {
                sp.epoch = sp.epoch.wrapping_add(1);
                sp.plans.clear();
                for m in &plan.members {
                    sp.plans.insert(
                        m.id,
                        PlanRepr {
                            session,
                            receiver: m.id,
                            epoch: sp.epoch,
                            zone: m.zone,
                            next: m.next,
                            peers: m.peers.clone(),
                        },
                    );
                    sp.fanout.push_back((m.addr, Fan::Plan(m.id)));
                }
                sp.plan = plan;
                sp.next_plan_round = Some(now + sp.cfg.plan_interval);
            }
        }
        let Some(sp) = self.split.as_mut() else {
            return;
        };
        if sp.next_plan_round.is_some_and(|t| now >= t) {
            for m in &sp.plan.members {
                sp.fanout.push_back((m.addr, Fan::Plan(m.id)));
            }
            sp.next_plan_round = Some(now + sp.cfg.plan_interval);
        }
    }

    /// Split mode: the next unicast packet standing in for a group packet.
    fn poll_fanout(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        loop {
            let (addr, fan) = self.split.as_mut()?.fanout.pop_front()?;
            let session = self.cfg.session;
            let len = match fan {
                Fan::Announce => {
                    self.stats.announces += 1;
                    Packet::Announce(self.announce_repr(now)).emit(buf)
                }
                Fan::Chunk(i) => {
                    let chunk = self.manifest_chunk_len();
                    let start = i * chunk;
                    let end = (start + chunk).min(self.manifest_bytes.len());
                    if start >= end {
                        continue;
                    }
                    self.stats.manifest_chunks += 1;
                    Packet::Manifest(ManifestChunkRepr {
                        session,
                        offset: start as u32,
                        bytes: &self.manifest_bytes[start..end],
                    })
                    .emit(buf)
                }
                Fan::Plan(id) => {
                    let Some(p) = self.split.as_ref().and_then(|sp| sp.plans.get(&id)) else {
                        continue;
                    };
                    self.stats.control_sent += 1;
                    Packet::Plan(p.clone()).emit(buf)
                }
                Fan::Done(reason) => Packet::Done(DoneRepr::Session { session, reason }).emit(buf),
            };
            let Ok(len) = len else {
                continue;
            };
            return Some(Transmit {
                destination: Destination::Peer(addr),
                len,
                payload: None,
            });
        }
    }

    /// Split mode: queues one unicast copy of a group packet for every member (and, for an
    /// announce, every receiver still asking for the session).
    fn fan_out(&mut self, fan: Fan) {
        let Some(sp) = self.split.as_mut() else {
            return;
        };
        for m in self.members.values() {
            sp.fanout.push_back((m.addr, fan));
        }
        if matches!(fan, Fan::Announce) {
            for s in sp.solicitors.values() {
                sp.fanout.push_back((s.addr, fan));
            }
        }
    }

    /// Split mode: the member a unit goes to, with both copy flags set in its header.
    fn route(
        &self,
        mut t: Transmit,
        buf: &mut [u8],
        seq: u64,
        parity: bool,
        index: u16,
    ) -> Option<Transmit> {
        let Some(sp) = self.split.as_ref() else {
            return Some(t);
        };
        let owners = &sp.plan.owners;
        if owners.is_empty() {
            return None;
        }
        let slot = split::owner_slot(seq, parity, index, sp.cfg.run_units, owners.len());
        set_copy_flags(&mut buf[..t.len], CopyFlags::ALL).ok()?;
        t.destination = Destination::Peer(owners[slot]);
        Some(t)
    }

    /// Split mode: the current plan's epoch and its cells (member ids in chain order).
    pub fn split_plan(&self) -> Option<(u32, Vec<Vec<ReceiverId>>)> {
        self.split
            .as_ref()
            .map(|sp| (sp.epoch, sp.plan.cells.clone()))
    }

    fn on_join(&mut self, now: Instant, from: SocketAddr, id: ReceiverId) {
        self.stats.joins += 1;
        if let Some(m) = self.members.get_mut(&id) {
            m.last_heard = now;
            if m.addr != from {
                m.addr = from;
                if let Some(sp) = self.split.as_mut() {
                    sp.dirty = true;
                }
            }
            let row = m.row.index() as u32;
            self.control_out.push_back((from, Control::Accept(id, row)));
            return;
        }
        if matches!(self.phase, Phase::Closing { .. } | Phase::Finished) {
            return;
        }
        let Some(row) = self.matrix.add_receiver() else {
            return;
        };
        // Split mode: the zone it named when it asked for the session (zone 0 otherwise).
        let zone = self
            .split
            .as_mut()
            .and_then(|sp| sp.solicitors.remove(&id))
            .map_or(0, |s| s.zone);
        self.membership_changed();
        self.members.insert(
            id,
            Member {
                addr: from,
                row,
                last_heard: now,
                complete: false,
                rtt: None,
                loss_ppm: 0,
                loss_est_ppm: 0,
                overflow_ppm: 0,
                queue_ppm: 0,
                delivered: None,
                delivery: 0,
                marked: 0,
                zone,
            },
        );
        self.ever_joined += 1;
        self.control_out
            .push_back((from, Control::Accept(id, row.index() as u32)));
        self.events.push_back(SenderEvent::ReceiverJoined {
            receiver: id,
            addr: from,
        });
    }

    fn on_receipt(&mut self, now: Instant, r: &ReceiptRepr) {
        let ts_now = self.timestamp(now);
        let Some(m) = self.members.get_mut(&r.receiver) else {
            self.stats.strangers += 1;
            return;
        };
        m.last_heard = now;
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
        m.queue_ppm = r.queue_ppm;
        // Delivery rate: what it verified since its previous notice (at least 20 ms ago).
        match m.delivered {
            Some((t, b)) if now.saturating_duration_since(t) >= Duration::from_millis(20) => {
                let block = u64::from(self.cfg.geometry.unit_size)
                    * u64::from(self.cfg.geometry.units_per_block);
                let dt = now.saturating_duration_since(t).as_secs_f64();
                let rate = (r.blocks_done.saturating_sub(b) * block) as f64 / dt;
                m.delivery = if m.delivery == 0 {
                    rate as u64
                } else {
                    ((m.delivery as f64 + rate) / 2.0) as u64
                };
                m.delivered = Some((now, r.blocks_done));
            }
            Some(_) => {}
            None => m.delivered = Some((now, r.blocks_done)),
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
            if first {
                // Split mode: a first measurement may change the plan (which zone is served
                // directly, who relays to whom), so plan again soon.
                if let Some(sp) = self.split.as_mut() {
                    sp.dirty = true;
                }
            }
            self.grtt_window_max = Some(self.grtt_window_max.map_or(sample, |w| w.max(sample)));
        }
        let row = m.row;
        let marked = m.marked;
        let newly_complete = r.complete && !m.complete;
        if r.complete {
            m.complete = true;
            let addr = m.addr;
            self.control_out
                .push_back((addr, Control::DoneReceiver(r.receiver)));
        }
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
                self.matrix.mark_held(row, seq as usize);
            }
            if let Some(m) = self.members.get_mut(&r.receiver) {
                m.marked = wm;
            }
        }
        for run in &r.runs {
            if let Some(start) = self.numbering.seq(run.object, run.start) {
                // A run stays inside its object.
                let obj_end = self.numbering.object_end(run.object);
                let end = (start + u64::from(run.len)).min(obj_end);
                for seq in start..end {
                    self.matrix.mark_held(row, seq as usize);
                }
            }
        }
        if newly_complete {
            self.events.push_back(SenderEvent::ReceiverComplete {
                receiver: r.receiver,
            });
        }
    }

    /// Sends block `seq` whole, ahead of the repairs already queued: a receiver is waiting to
    /// play or serve it. The first pass goes on meanwhile (data threads are not held).
    fn queue_priority(&mut self, seq: u64) {
        let k = usize::from(self.numbering.units_in(seq));
        let r = self.repairs.entry(seq).or_default();
        let originals = r.originals.get_or_insert_with(|| UnitBitmap::new(k));
        for u in 0..k {
            originals.set(u);
        }
        r.whole = true;
        r.queued = true;
        self.repair_queue.push_front(seq);
    }

    /// One block of a NACK from `receiver`; `incomplete` members are still receiving (when
    /// all of them asked for a block, its XOR repairs need not wait for more NACKs).
    fn on_nack_entry(
        &mut self,
        now: Instant,
        receiver: ReceiverId,
        incomplete: usize,
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
        let gather = self.grtt * XOR_GATHER_GRTTS;
        let settle = self.grtt * 2;
        let r = self.repairs.entry(seq).or_default();
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
        let in_flight = r.parity_end.saturating_sub(e.parity_seen.max(settled));
        let want = e.missing.saturating_sub(in_flight);
        if want == 0 {
            return;
        }
        let whole = e.missing >= k;
        let listed = !matches!(&e.holes, Holes::Ranges(r) if r.is_empty());

        if !whole && !by_originals && r.parity_end + want <= max_parity {
            r.parity_end += want;
        } else if xor && !whole && listed {
            let mut list: Vec<u16> = e
                .holes
                .units()
                .take(usize::from(k))
                .filter(|&u| u < k)
                .collect();
            list.sort_unstable();
            list.dedup();
            match r.wants.iter_mut().find(|(id, _)| *id == receiver) {
                Some(w) => w.1 = list,
                None => r.wants.push((receiver, list)),
            }
            let until = *r.gather_until.get_or_insert(now + gather);
            if r.wants.len() >= incomplete {
                r.gather_until = Some(until.min(now));
            }
        } else {
            // Parity cannot cover it (or the receiver has nothing): send the originals it lists.
            let originals = r
                .originals
                .get_or_insert_with(|| UnitBitmap::new(usize::from(k)));
            let mut any = false;
            for u in e.holes.units().take(usize::from(k)) {
                if usize::from(u) < usize::from(k) {
                    any |= originals.set(usize::from(u));
                }
            }
            if matches!(&e.holes, Holes::Ranges(r) if r.is_empty()) && !any {
                for u in 0..usize::from(k) {
                    originals.set(u);
                }
            }
        }
        if !r.queued {
            r.queued = true;
            self.repair_queue.push_back(seq);
        }
    }

    /// Whether repairs go as originals now ([`SenderConfig::originals_factor`]); decided
    /// again at most every 100 ms (it looks at every member).
    fn repair_by_originals(&mut self, now: Instant) -> bool {
        let factor = u64::from(self.cfg.originals_factor);
        if factor == 0 {
            return false;
        }
        if self
            .originals_checked
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_millis(100))
        {
            return self.by_originals;
        }
        let (mut sum, mut max, mut n) = (0u64, 0u64, 0u64);
        for m in self.members.values().filter(|m| !m.complete) {
            let p = u64::from(m.loss_est_ppm);
            sum += p;
            max = max.max(p);
            n += 1;
        }
        self.by_originals = if max == 0 {
            n <= factor
        } else {
            sum <= factor * max
        };
        self.originals_checked = Some(now);
        self.by_originals
    }

    /// Handles timers: call when the instant from [`Sender::poll_timeout`] has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.start(now);
        if self.next_announce.is_some_and(|t| now >= t) {
            self.announce_now = true;
        }
        if self.grtt_window_end.is_some_and(|t| now >= t) {
            if let Some(w) = self.grtt_window_max.take() {
                // Rise at once to the slowest receiver seen; fall back slowly.
                self.grtt = if w > self.grtt {
                    w
                } else {
                    (self.grtt * 3 + w) / 4
                };
                self.grtt = self.grtt.max(Duration::from_micros(100));
            }
            self.grtt_window_end = Some(now + self.grtt_window());
        }
        if self.next_member_scan.is_some_and(|t| now >= t) {
            let timeout = self.cfg.receiver_timeout;
            // Split mode: complete members keep reporting (they still forward copies), so a
            // silent one is gone whether complete or not.
            let split = self.split.is_some();
            let gone: Vec<ReceiverId> = self
                .members
                .iter()
                .filter(|(_, m)| {
                    (split || !m.complete) && now.saturating_duration_since(m.last_heard) > timeout
                })
                .map(|(id, _)| *id)
                .collect();
            for id in gone {
                if let Some(m) = self.members.remove(&id) {
                    self.matrix.remove_receiver(m.row);
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
            }
            self.next_member_scan = Some(now + timeout / 4);
        }
        if self.phase == Phase::Sending {
            if self.next_rate_step.is_some_and(|t| now >= t) {
                self.step_rate(now);
                self.next_rate_step = Some(now + RateControl::STEP);
            }
            if self.next_skip_scan.is_some_and(|t| now >= t) {
                self.scan_skips();
                self.next_skip_scan = (!self.first_pass_done()).then(|| now + SKIP_SCAN);
            }
        }
        self.advance_phase(now);
    }

    fn since_start(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.epoch.unwrap_or(now))
    }

    fn advance_phase(&mut self, now: Instant) {
        match self.phase {
            Phase::Waiting => {
                if self.members.len() >= self.cfg.min_receivers
                    || self.since_start(now) >= self.cfg.max_wait
                {
                    self.phase = Phase::Sending;
                    self.membership_changed();
                    self.events.push_back(SenderEvent::FirstPassStarted);
                    if self.rate_control.is_some() {
                        self.next_rate_step = Some(now + RateControl::STEP);
                        self.rate_sent = (now, self.rate_sent.1);
                    }
                    self.next_skip_scan = Some(now);
                }
            }
            Phase::Sending => {
                if self
                    .cfg
                    .deadline
                    .is_some_and(|d| self.since_start(now) >= d)
                {
                    self.close(now, DoneReason::Deadline);
                } else if self.first_pass_done()
                    && self.repair_queue.is_empty()
                    && self.members.values().all(|m| m.complete)
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
        consider(self.next_announce);
        consider(self.grtt_window_end);
        consider(self.next_member_scan);
        if let Some(sp) = self.split.as_ref().filter(|_| self.phase == Phase::Sending) {
            consider(sp.next_replan);
            consider(sp.next_plan_round);
            if sp.dirty {
                consider(sp.last_replan.map(|t| t + sp.cfg.replan_gap).or(self.epoch));
            }
        }
        if let Some(epoch) = self.epoch {
            match self.phase {
                Phase::Waiting => {
                    // Enough receivers: start at once, not at the next timer (a join arrives
                    // between timers, up to an announce interval before the next one).
                    if self.members.len() >= self.cfg.min_receivers {
                        consider(Some(epoch));
                    }
                    consider(Some(epoch + self.cfg.max_wait));
                }
                Phase::Sending => {
                    consider(self.cfg.deadline.map(|d| epoch + d));
                    consider(self.next_rate_step);
                    consider(self.next_skip_scan);
                    if self.has_paced_work() {
                        // A head repair still gathering NACKs sends nothing before then.
                        let due = match (self.pacer.next_send(), self.repair_gathering()) {
                            (Some(a), Some(b)) if !self.pass_ready() => Some(a.max(b)),
                            (None, Some(b)) if !self.pass_ready() => Some(b),
                            (a, _) => a,
                        };
                        consider(due);
                    } else if self.pass.is_some() {
                        consider(self.stall_check);
                    }
                }
                Phase::Closing { .. } => consider(self.closing_at),
                Phase::Finished => {}
            }
        }
        t
    }

    fn has_paced_work(&self) -> bool {
        self.pass_ready() || !self.repair_queue.is_empty()
    }

    /// When every queued repair is an XOR repair still gathering NACKs: the earliest time one
    /// of them is done gathering.
    fn repair_gathering(&self) -> Option<Instant> {
        if self.first_pass_done() {
            return None;
        }
        let mut first: Option<Instant> = None;
        for seq in &self.repair_queue {
            let t = self.repairs.get(seq)?.gathering()?;
            first = Some(first.map_or(t, |f| f.min(t)));
        }
        first
    }

    /// The first pass has a unit to send now (its block is available).
    fn pass_ready(&self) -> bool {
        self.pass.is_some_and(|p| {
            let a = self.numbering.addr(p.seq);
            self.source.available(a.object, a.block)
        })
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
        if let Some((addr, c)) = self.control_out.pop_front() {
            let session = self.cfg.session;
            let p = match c {
                Control::Accept(receiver, row) => Packet::Accept(AcceptRepr {
                    session,
                    receiver,
                    row,
                }),
                Control::DoneReceiver(receiver) => {
                    Packet::Done(DoneRepr::Receiver { session, receiver })
                }
            };
            let len = p.emit(buf).ok()?;
            self.stats.control_sent += 1;
            return Some(Transmit {
                destination: Destination::Peer(addr),
                len,
                payload: None,
            });
        }
        if self.split.is_some() {
            self.maybe_replan(now);
            if let Some(t) = self.poll_fanout(now, buf) {
                return Some(t);
            }
        }
        if let Phase::Closing { reason, left } = self.phase {
            if left > 0 && self.closing_at.is_some_and(|t| now >= t) && self.split.is_some() {
                // Split mode: the done packet goes to every member by unicast.
                self.phase = Phase::Closing {
                    reason,
                    left: left - 1,
                };
                self.closing_at = Some(now + (self.grtt * 2).max(Duration::from_millis(1)));
                self.fan_out(Fan::Done(reason));
                return self.poll_fanout(now, buf);
            }
            if left > 0 && self.closing_at.is_some_and(|t| now >= t) {
                let len = Packet::Done(DoneRepr::Session {
                    session: self.cfg.session,
                    reason,
                })
                .emit(buf)
                .ok()?;
                self.phase = Phase::Closing {
                    reason,
                    left: left - 1,
                };
                self.closing_at = Some(now + (self.grtt * 2).max(Duration::from_millis(1)));
                return Some(self.group(len));
            }
            return None;
        }
        if self.announce_now && self.split.is_some() {
            // Split mode: one announce to each member and each receiver still asking; the
            // manifest went to those when they asked.
            self.announce_now = false;
            self.next_announce = Some(now + self.cfg.announce_interval);
            self.fan_out(Fan::Announce);
            self.advance_phase(now);
            if let Some(t) = self.poll_fanout(now, buf) {
                return Some(t);
            }
        }
        if self.announce_now {
            self.announce_now = false;
            self.next_announce = Some(now + self.cfg.announce_interval);
            self.manifest_due = self.cfg.manifest_chunks_per_announce.max(1);
            let len = Packet::Announce(self.announce_repr(now)).emit(buf).ok()?;
            self.stats.announces += 1;
            self.advance_phase(now);
            return Some(self.group(len));
        }
        if self.manifest_due > 0 {
            self.manifest_due -= 1;
            let chunk = usize::from(self.cfg.geometry.unit_size).min(buf.len().saturating_sub(64));
            if chunk == 0 {
                return None;
            }
            let chunks = self.manifest_bytes.len().div_ceil(chunk);
            let i = self.manifest_cursor % chunks;
            self.manifest_cursor = (i + 1) % chunks;
            if self.manifest_cursor == 0 {
                // One full turn per announce is enough.
                self.manifest_due = 0;
            }
            let start = i * chunk;
            let end = (start + chunk).min(self.manifest_bytes.len());
            let len = Packet::Manifest(ManifestChunkRepr {
                session: self.cfg.session,
                offset: start as u32,
                bytes: &self.manifest_bytes[start..end],
            })
            .emit(buf)
            .ok()?;
            self.stats.manifest_chunks += 1;
            return Some(self.group(len));
        }
        if self.phase != Phase::Sending {
            self.advance_phase(now);
            return None;
        }
        if self
            .split
            .as_ref()
            .is_some_and(|sp| sp.plan.owners.is_empty())
        {
            // Split mode with no member: nobody to send to, so the first pass and the repairs
            // are over.
            if self.pass.take().is_some() {
                self.events.push_back(SenderEvent::FirstPassDone);
                self.announce_now = true;
            }
            self.repair_queue.clear();
            self.repairs.clear();
        }
        // Paced data: repairs first, then the first pass.
        if !self.has_paced_work() {
            if self.pass.is_some() {
                // The first pass waits for its next block to become available.
                self.stall_check = Some(now + STALL_RECHECK);
            }
            self.advance_phase(now);
            return None;
        }
        if !self.pacer.ready(now) {
            return None;
        }
        let t = self
            .send_repair(now, buf)
            .or_else(|| self.send_first_pass(now, buf))?;
        self.pacer.spend(now, t.datagram_len());
        Some(t)
    }

    fn group(&self, len: usize) -> Transmit {
        Transmit {
            destination: Destination::Group,
            len,
            payload: None,
        }
    }

    fn announce_repr(&self, now: Instant) -> AnnounceRepr {
        let (po, pb) = match self.pass {
            _ if self.first_pass_done() => (ObjectId(u32::MAX), BlockIndex(u32::MAX)),
            Some(p) => {
                let a = self.numbering.addr(p.seq);
                (a.object, a.block)
            }
            None => {
                let a = self.numbering.addr(self.external_sent);
                (a.object, a.block)
            }
        };
        AnnounceRepr {
            session: self.cfg.session,
            control: self.cfg.control,
            unit_size: self.cfg.geometry.unit_size,
            units_per_block: self.cfg.geometry.units_per_block,
            max_parity: self.cfg.geometry.max_parity,
            stripes: self.cfg.stripes,
            object_count: self.manifest.objects.len() as u32,
            total_bytes: self.manifest.total_bytes(),
            manifest_len: self.manifest_bytes.len() as u32,
            manifest_hash: self.manifest_hash,
            group_size: (self.members.len() as u32).max(1),
            grtt_us: micros(self.grtt).max(1),
            pass_object: po,
            pass_block: pb,
            timestamp: self.timestamp(now),
        }
    }

    /// Unit `unit` of block `seq` (global numbering), a first-pass unit or a repair: the
    /// header in `buf`, the payload by reference.
    fn data_unit(
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

    fn send_first_pass(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let PassCursor { mut seq, unit } = self.pass?;
        let total = self.numbering.total();
        if unit == 0 {
            // Blocks every member holds already are not sent again.
            while self.skip.get(seq as usize) {
                if seq + 1 < total {
                    seq += 1;
                } else {
                    self.pass = None;
                    self.events.push_back(SenderEvent::FirstPassDone);
                    self.announce_now = true;
                    return None;
                }
            }
            self.pass = Some(PassCursor { seq, unit: 0 });
        }
        let a = self.numbering.addr(seq);
        if !self.source.available(a.object, a.block) {
            return None;
        }
        let units = self.numbering.units_in(seq);
        let next_unit = unit + 1;
        self.pass = if next_unit < units {
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
        if self.pass.is_none() {
            self.events.push_back(SenderEvent::FirstPassDone);
            // Tell receivers at once that the first pass is over, so they NACK the tail.
            self.announce_now = true;
        }
        self.data_unit(now, buf, seq, unit, false)
    }

    fn send_repair(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        // Blocks still gathering NACKs for their XOR repairs step aside, once each; after the
        // first pass nothing waits (the tail's round trips are the transfer's end).
        let mut rotations = self.repair_queue.len();
        let tail = self.first_pass_done();
        while let Some(&seq) = self.repair_queue.front() {
            let BlockAddr { object, block } = self.numbering.addr(seq);
            let r = self.repairs.get_mut(&seq)?;
            if r.parity_next < r.parity_end {
                let index = r.parity_next;
                let round_end = r.parity_end;
                r.parity_next += 1;
                r.last_sent = Some(now);
                return self.parity_unit(now, buf, seq, index, round_end);
            }
            if let Some(orig) = r.originals.as_mut() {
                if let Some(u) = orig.iter_ones().next() {
                    orig.clear(u);
                    if orig.count_ones() == 0 {
                        r.whole_sent_at = Some(now);
                        if std::mem::take(&mut r.whole) {
                            // The group got it whole: the first pass skips it (Release: a
                            // stripe that sees the bit skips the block). Receivers that lost
                            // some of it NACK.
                            self.skip.set(seq as usize);
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
                    self.repair_queue.rotate_left(1);
                    continue;
                }
                let (units, n) = next_combo(&mut r.wants);
                r.wants.retain(|(_, l)| !l.is_empty());
                if r.wants.is_empty() {
                    r.gather_until = None;
                }
                return match n {
                    0 => continue,
                    1 => self.data_unit(now, buf, seq, units[0], true),
                    _ => self.xor_unit(buf, seq, units, n),
                };
            }
            r.gather_until = None;
            r.queued = false;
            self.repair_queue.pop_front();
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
        if !self.parity_cache.contains_key(&seq) {
            let data = self.source.block(object, block);
            let k = self.numbering.units_in(seq);
            let parity = coding::encode_block(data, k, g.max_parity, g.unit_size).ok()?;
            if self.parity_lru.len() >= self.cfg.parity_cache_blocks.max(1) {
                if let Some(old) = self.parity_lru.pop_front() {
                    self.parity_cache.remove(&old);
                }
            }
            self.parity_cache.insert(seq, parity);
            self.parity_lru.push_back(seq);
        }
        let parity = self.parity_cache.get(&seq)?;
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

/// Picks the next XOR repair from what each receiver wants of one block: up to
/// [`XOR_WIDTH`] units such that every receiver wanting any of them holds all the others (as
/// its NACK says), so each rebuilds its unit from the one datagram. Starts from the receiver
/// that wants most; the units picked leave every list. Returns the units (ascending, unused
/// slots [`XOR_NONE`]) and how many; one unit is a plain original repair, 0 when nothing is
/// wanted.
fn next_combo(wants: &mut [(ReceiverId, Vec<u16>)]) -> ([u16; XOR_WIDTH], usize) {
    let misses = |l: &Vec<u16>, u: u16| l.binary_search(&u).is_ok();
    let mut order: Vec<usize> = (0..wants.len())
        .filter(|&i| !wants[i].1.is_empty())
        .collect();
    order.sort_by_key(|&i| std::cmp::Reverse(wants[i].1.len()));
    let Some(&first) = order.first() else {
        return ([XOR_NONE; XOR_WIDTH], 0);
    };
    let mut combo: Vec<u16> = vec![wants[first].1[0]];
    let mut covered: Vec<bool> = wants.iter().map(|(_, l)| misses(l, combo[0])).collect();
    for &i in &order[1..] {
        if combo.len() == XOR_WIDTH {
            break;
        }
        if covered[i] {
            continue;
        }
        // A unit this receiver misses that every receiver missing it can use: each of them
        // holds every unit already picked. (Then every receiver misses at most one.)
        let pick = wants[i].1.iter().copied().find(|&y| {
            wants
                .iter()
                .all(|(_, l)| !misses(l, y) || combo.iter().all(|&c| !misses(l, c)))
        });
        if let Some(y) = pick {
            for (j, (_, l)) in wants.iter().enumerate() {
                covered[j] |= misses(l, y);
            }
            combo.push(y);
        }
    }
    for (_, l) in wants.iter_mut() {
        l.retain(|u| !combo.contains(u));
    }
    combo.sort_unstable();
    let mut units = [XOR_NONE; XOR_WIDTH];
    units[..combo.len()].copy_from_slice(&combo);
    (units, combo.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ObjectEntry, UnitPacket};

    /// Two blocks of 4 units; only the blocks before `ready` are available.
    struct Gated {
        bytes: Vec<u8>,
        ready: u32,
    }

    impl BlockSource for Gated {
        fn block(&self, _o: ObjectId, b: BlockIndex) -> &[u8] {
            &self.bytes[b.0 as usize * 32..(b.0 as usize + 1) * 32]
        }
        fn available(&self, _o: ObjectId, b: BlockIndex) -> bool {
            b.0 < self.ready
        }
    }

    fn gated_sender() -> Sender<Gated> {
        let bytes: Vec<u8> = (0..64u8).collect();
        let manifest = Manifest {
            unit_size: 8,
            units_per_block: 4,
            objects: vec![ObjectEntry {
                name: "a".into(),
                size: 64,
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
            ..SenderConfig::default()
        };
        Sender::new(cfg, manifest, Gated { bytes, ready: 1 }).unwrap()
    }

    /// Data units the sender gives out at `now`, as (block, unit).
    fn units_due(s: &mut Sender<Gated>, now: Instant) -> Vec<(u32, u16)> {
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

    #[test]
    fn xor_combinations_serve_each_receiver_one_unit_at_a_time() {
        // Four receivers; units 9 and 20 are missed by two of them.
        let lists: [&[u16]; 4] = [&[1, 9, 12], &[2, 9, 30], &[3, 20], &[4, 20, 31, 40]];
        let mut wants: Vec<(ReceiverId, Vec<u16>)> = lists
            .iter()
            .enumerate()
            .map(|(i, l)| (ReceiverId(i as u64), l.to_vec()))
            .collect();
        let mut delivered: Vec<Vec<u16>> = vec![Vec::new(); 4];
        let mut datagrams = 0;
        loop {
            let before: Vec<Vec<u16>> = wants.iter().map(|(_, l)| l.clone()).collect();
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
    #[test]
    fn repairs_go_as_originals_while_they_cost_at_most_the_factor_times_parity() {
        let mut s = gated_sender();
        let t0 = Instant::now();
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        // Members with these smoothed loss rates (ppm); the decision at a fresh instant.
        let decide = |s: &mut Sender<Gated>, losses: &[u32], at: Duration| {
            for (i, &p) in losses.iter().enumerate() {
                let id = ReceiverId(i as u64 + 1);
                s.on_join(t0, addr, id);
                s.members.get_mut(&id).unwrap().loss_est_ppm = p;
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
        for (i, m) in s.members.values_mut().enumerate() {
            m.complete = i >= 3;
        }
        assert!(s.repair_by_originals(t0 + Duration::from_millis(1000)));
        // Factor 0: parity always.
        s.cfg.originals_factor = 0;
        assert!(!s.repair_by_originals(t0 + Duration::from_millis(1200)));
    }
    #[test]
    fn first_pass_starts_as_soon_as_enough_receivers_joined() {
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
        s.on_join(t1, SocketAddr::from(([127, 0, 0, 1], 9)), ReceiverId(1));
        // Due at once, not at the next announce.
        assert!(s.poll_timeout().is_some_and(|t| t <= t1));
        s.handle_timeout(t1);
        assert!(s.is_sending());
    }
    #[test]
    fn delivery_rate_is_what_the_slowest_receiver_verified_between_notices() {
        let mut s = gated_sender();
        let t0 = Instant::now();
        let notice = |id: u64, blocks_done: u64, queue_ppm: u32| ReceiptRepr {
            session: s.cfg.session,
            receiver: ReceiverId(id),
            complete: false,
            echo_timestamp: 0,
            echo_delay_us: 0,
            loss_ppm: 0,
            overflow_ppm: 0,
            queue_ppm,
            watermark_object: ObjectId(0),
            watermark_block: BlockIndex(0),
            blocks_done,
            runs: Vec::new(),
        };
        let (a, b) = (notice(1, 0, 0), notice(2, 0, 0));
        let (a2, b2) = (notice(1, 10, 0), notice(2, 4, 300_000));
        for id in [1, 2] {
            s.on_join(t0, SocketAddr::from(([127, 0, 0, 1], 9)), ReceiverId(id));
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
}
