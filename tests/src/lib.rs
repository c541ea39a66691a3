//! A deterministic simulator of one blockcast server and many receivers.
//!
//! It drives the sans-IO [`Sender`] and [`Receiver`] state machines on a virtual clock.
//! Multicast is a fan-out with independent (or bursty) loss per receiver; seeded
//! duplication, reordering, extra delay and corruption act on each copy; feedback to the
//! server crosses a lossy unicast link. Everything random comes from one seed, so a failing
//! run is replayed exactly by its seed (`BLOCKCAST_SIM_SEED`).
//!
//! Time is virtual: a run of 10,000 receivers that takes a second of protocol time costs a
//! few seconds of CPU, not a second of waiting.

mod content;
mod fanout;
mod net;
mod queue;
mod relay;
mod split;
mod store;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockcast_proto::wire::{BlockIndex, LeaveReason, ObjectId, ReceiverId, SessionId, UnitIndex};
use blockcast_proto::{BlockSource, BlockStore};
use blockcast_proto::{
    Destination, Geometry, Receiver, ReceiverConfig, ReceiverEvent, Sender, SenderConfig,
    SliceSource,
};

use net::Arrival;
pub use net::{LinkFaults, LossModel, SimRng};
use queue::{Clock, EventQueue, Halt, Timers};
pub use relay::{run_relays, FailOver, RelayConfig, RelayReport, TierReport};
pub use split::{run_split, SplitReport, SplitSimConfig, ZoneSpec};
pub use store::{SimStore, StoreKind};

/// One simulated session.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub receivers: usize,
    /// Object sizes in bytes (content is random from the seed).
    pub objects: Vec<usize>,
    pub geometry: Geometry,
    /// Sender pacing, datagram bytes per second.
    pub rate: u64,
    /// One-way delay of every link.
    pub delay: Duration,
    /// Faults on the multicast copies each receiver gets.
    pub data_faults: LinkFaults,
    /// Faults on receiver -> server and server -> receiver unicast.
    pub control_faults: LinkFaults,
    /// Receivers that start late: (receiver index, start time).
    pub late: Vec<(usize, Duration)>,
    /// Receivers that fall silent (crash) at a time: they neither receive nor send again.
    pub deaths: Vec<(usize, Duration)>,
    /// Receivers that leave politely at a time.
    pub leaves: Vec<(usize, Duration)>,
    pub store: StoreKind,
    /// Stripes sent by separate "data threads" (the node's thread-per-core shape): with more
    /// than one, the simulator sends the first pass itself, stripe by stripe with random skew
    /// between them, and reports progress to the sender (`external_first_pass`).
    pub stripes: u16,
    /// One receiver asks for blocks first once it is accepted: (receiver, object, block, unit,
    /// count). The report says when it got the first of them and when the first pass got there.
    pub priority: Option<(usize, ObjectId, BlockIndex, UnitIndex, u32)>,
    /// Threads that deliver multicast copies to receivers (0: one per core). The run is the
    /// same whatever the number.
    pub threads: usize,
    /// Give up at this much virtual time.
    pub time_limit: Duration,
    pub sender: SenderConfig,
    pub receiver: ReceiverConfig,
}

impl SimConfig {
    /// A small session: `receivers` receivers, one 256 KiB object, 64 KiB blocks of 256-byte
    /// units, 1 ms one-way delay, paced at 16 MB/s, `loss` independent loss on data copies.
    pub fn small(seed: u64, receivers: usize, loss: f64) -> Self {
        let geometry = Geometry {
            unit_size: 256,
            units_per_block: 128,
            max_parity: 128,
        };
        let mut sender = SenderConfig {
            geometry,
            rate: 16_000_000,
            announce_interval: Duration::from_millis(20),
            initial_grtt: Duration::from_millis(2),
            min_receivers: receivers,
            max_wait: Duration::from_millis(500),
            receiver_timeout: Duration::from_secs(2),
            ..SenderConfig::default()
        };
        sender.control = SERVER;
        let receiver = ReceiverConfig {
            min_receipt_interval: Duration::from_millis(50),
            join_interval: Duration::from_millis(20),
            idle_timeout: Duration::from_secs(5),
            max_datagram: 1400,
            ..ReceiverConfig::default()
        };
        SimConfig {
            seed,
            receivers,
            objects: vec![256 << 10],
            geometry,
            rate: sender.rate,
            delay: Duration::from_millis(1),
            data_faults: LinkFaults::lossy(loss),
            control_faults: LinkFaults::lossy(loss),
            late: Vec::new(),
            deaths: Vec::new(),
            leaves: Vec::new(),
            store: StoreKind::Memory,
            stripes: 1,
            priority: None,
            threads: 0,
            time_limit: Duration::from_secs(60),
            sender,
            receiver,
        }
    }

    /// Applies `BLOCKCAST_SIM_SEED` if set (to replay a printed failing seed).
    pub fn with_env_seed(mut self) -> Self {
        self.seed = env_seed(self.seed);
        self
    }
}

/// `BLOCKCAST_SIM_SEED` if set (to replay a printed failing seed), else `seed`.
fn env_seed(seed: u64) -> u64 {
    std::env::var("BLOCKCAST_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(seed)
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    pub seed: u64,
    pub receivers: usize,
    /// Receivers expected to finish (not dead, not left).
    pub expected: usize,
    /// Of those, how many hold every object, verified and equal to the source.
    pub identical: usize,
    /// Blocks marked done whose bytes differ from the source (must be 0).
    pub bad_done_blocks: u64,
    /// Blocks that failed verification and were fetched again.
    pub blocks_failed: u64,
    /// From the first data unit to the last expected receiver's completion.
    pub completion: Duration,
    /// The first pass alone at the configured rate: the lossless lower bound.
    pub ideal: Duration,
    pub minimal_units: u64,
    pub data_units: u64,
    pub repair_units: u64,
    /// XOR repairs (each one datagram carrying two to four units).
    pub xor_units: u64,
    pub parity_units: u64,
    pub data_bytes: u64,
    pub parity_bytes: u64,
    pub nack_packets: u64,
    pub nack_bytes: u64,
    pub receipt_packets: u64,
    pub receipt_bytes: u64,
    /// The sender finished and told the group.
    pub sender_finished: bool,
    /// Problems found; empty when the run passed.
    pub failures: Vec<String>,
    /// With `SimConfig::priority`: when the asking receiver verified the first block it asked
    /// for, and when the first pass sent that block's first unit (from the first data unit).
    pub priority_verified: Option<(Duration, Duration)>,
    /// Wall-clock time the simulation took.
    pub wall: Duration,
}

impl SimReport {
    /// Units sent (data, repairs, XOR repairs and parity) per unit of content.
    pub fn units_ratio(&self) -> f64 {
        (self.data_units + self.repair_units + self.xor_units + self.parity_units) as f64
            / self.minimal_units.max(1) as f64
    }

    pub fn completion_ratio(&self) -> f64 {
        self.completion.as_secs_f64() / self.ideal.as_secs_f64().max(1e-9)
    }

    pub fn nack_share(&self) -> f64 {
        self.nack_bytes as f64 / (self.data_bytes + self.parity_bytes).max(1) as f64
    }

    /// Panics with the seed and the failures (for tests).
    pub fn assert_ok(&self) {
        assert!(
            self.failures.is_empty(),
            "simulation failed (replay with BLOCKCAST_SIM_SEED={}): {:#?}",
            self.seed,
            self.failures
        );
    }
}

const SERVER: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::new(127, 0, 0, 1),
    4000,
));

fn receiver_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, (i >> 16) as u8 | 0x80, (i >> 8) as u8, i as u8], 7000))
}

fn receiver_index(a: SocketAddr) -> Option<usize> {
    match a {
        SocketAddr::V4(v4) if v4.port() == 7000 => {
            let o = v4.ip().octets();
            Some(((o[1] & 0x7f) as usize) << 16 | (o[2] as usize) << 8 | o[3] as usize)
        }
        _ => None,
    }
}

enum Ev {
    /// A datagram for the server from receiver `i`.
    ToServer(usize, Arc<[u8]>),
    /// A datagram for receiver `i` (unicast, or a delayed multicast copy).
    ToReceiver(usize, Arc<[u8]>),
    Start(usize),
    Die(usize),
    Leave(usize),
}

/// Where a simulated node is in its life.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Life {
    NotStarted,
    Alive,
    Gone,
}

struct Node {
    rx: Receiver<SimStore>,
    life: Life,
    expected: bool,
    scheduled: Option<Instant>,
    complete_at: Option<Instant>,
    burst: net::BurstState,
    /// Blocks to ask for first once accepted, and when the first of them was verified.
    ask: Option<(ObjectId, BlockIndex, UnitIndex, u32)>,
    asked_verified_at: Option<Instant>,
    /// This receiver's own draws (loss, faults of its copies and of its feedback), so a run
    /// is the same whichever thread delivers to it.
    rng: SimRng,
}

struct Sim<'a> {
    cfg: &'a SimConfig,
    rng: SimRng,
    base: Instant,
    sender: Sender<SliceSource<'a>>,
    nodes: Vec<Node>,
    mcast: VecDeque<(Instant, Arc<[u8]>)>,
    events: EventQueue<Ev>,
    timers: Timers,
    buf: Vec<u8>,
    first_data: Option<Instant>,
    /// External first pass: per stripe, the next (global block, unit) to send.
    stripe_cursor: Vec<(u64, u16)>,
    block_addrs: Vec<(ObjectId, BlockIndex, u16)>,
    next_data: Option<Instant>,
    /// First-pass units the simulated data threads sent.
    stripe_units: u64,
    stripe_bytes: u64,
    /// When the first pass sent the first unit of the block asked for first.
    pass_reached: Option<Instant>,
}

/// Runs one simulated session to its end (or the time limit) and reports.
pub fn run(cfg: &SimConfig) -> SimReport {
    let wall = Instant::now();
    let mut rng = SimRng::new(cfg.seed);
    let content = content::random_content(&mut rng, &cfg.objects);
    let block_size = cfg.geometry.block_size();
    let manifest = content::manifest(cfg.geometry, &content);
    let source = SliceSource::new(content.iter().map(|c| &c[..]).collect(), block_size);
    let mut scfg = cfg.sender.clone();
    scfg.geometry = cfg.geometry;
    scfg.rate = cfg.rate;
    scfg.control = SERVER;
    scfg.session = SessionId((cfg.seed as u32) | 1);
    scfg.stripes = cfg.stripes.max(1);
    scfg.external_first_pass = cfg.stripes > 1;
    let sender = match Sender::new(scfg, manifest.clone(), source) {
        Ok(s) => s,
        Err(e) => {
            return SimReport {
                seed: cfg.seed,
                failures: vec![format!("sender config rejected: {e}")],
                ..SimReport::default()
            }
        }
    };
    let base = Instant::now();
    let hashes = content::block_hashes(&manifest);
    let mut nodes = Vec::with_capacity(cfg.receivers);
    for i in 0..cfg.receivers {
        let mut rcfg = cfg.receiver.clone();
        rcfg.id = ReceiverId(i as u64 + 1);
        rcfg.seed = cfg.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let store = SimStore::new(cfg.store, hashes.clone(), block_size);
        nodes.push(Node {
            rx: Receiver::new(rcfg, store),
            life: Life::NotStarted,
            expected: true,
            scheduled: None,
            complete_at: None,
            burst: net::BurstState::default(),
            rng: SimRng::new(cfg.seed ^ (i as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F)),
            ask: cfg
                .priority
                .filter(|p| p.0 == i)
                .map(|(_, o, b, u, c)| (o, b, u, c)),
            asked_verified_at: None,
        });
    }
    let mut sim = Sim {
        cfg,
        rng,
        base,
        sender,
        nodes,
        mcast: VecDeque::new(),
        events: EventQueue::new(),
        timers: Timers::new(),
        buf: vec![0u8; 65_536],
        first_data: None,
        stripe_cursor: (0..u64::from(cfg.stripes.max(1))).map(|s| (s, 0)).collect(),
        block_addrs: manifest
            .objects
            .iter()
            .enumerate()
            .flat_map(|(o, e)| {
                let units = |b: usize| -> u16 {
                    let len = (e.size as usize - b * block_size).min(block_size);
                    len.div_ceil(usize::from(cfg.geometry.unit_size)) as u16
                };
                (0..e.block_hashes.len())
                    .map(move |b| (ObjectId(o as u32), BlockIndex(b as u32), units(b)))
            })
            .collect(),
        next_data: None,
        stripe_units: 0,
        stripe_bytes: 0,
        pass_reached: None,
    };
    for i in 0..cfg.receivers {
        let start = cfg
            .late
            .iter()
            .find(|(r, _)| *r == i)
            .map_or(Duration::ZERO, |(_, t)| *t);
        sim.push(base + start, Ev::Start(i));
    }
    for &(i, t) in &cfg.deaths {
        sim.nodes[i].expected = false;
        sim.push(base + t, Ev::Die(i));
    }
    for &(i, t) in &cfg.leaves {
        sim.nodes[i].expected = false;
        sim.push(base + t, Ev::Leave(i));
    }
    let mut report = sim.run_loop();
    report.wall = wall.elapsed();
    // Check every expected receiver against the source.
    report.minimal_units = content::minimal_units(&content, cfg.geometry.unit_size);
    report.ideal = content::ideal_time(&content, cfg.geometry.unit_size, cfg.rate, cfg.delay);
    let mut last_complete: Option<Instant> = None;
    for (i, n) in sim.nodes.iter().enumerate() {
        report.bad_done_blocks += n.rx.store().bad_blocks();
        report.blocks_failed += n.rx.stats().blocks_failed;
        if !n.expected {
            continue;
        }
        report.expected += 1;
        if !n.rx.is_complete() {
            if std::env::var("BLOCKCAST_SIM_DEBUG").is_ok() {
                eprintln!("receiver {i}: {}", n.rx.debug_blocks());
                eprintln!("sender: {}", sim.sender.debug_state());
            }
            report.failures.push(format!(
                "receiver {i} incomplete: {}/{} blocks",
                n.rx.blocks_done(),
                n.rx.total_blocks()
            ));
            continue;
        }
        if let Some(t) = n.complete_at {
            last_complete = Some(last_complete.map_or(t, |l: Instant| l.max(t)));
        }
        match n.rx.store().equals(&content) {
            Ok(()) => report.identical += 1,
            Err(e) => report.failures.push(format!("receiver {i}: {e}")),
        }
    }
    if report.bad_done_blocks > 0 {
        report.failures.push(format!(
            "{} blocks marked done differ from the source",
            report.bad_done_blocks
        ));
    }
    if let (Some(first), Some(last)) = (sim.first_data, last_complete) {
        report.completion = last.saturating_duration_since(first);
    }
    let s = sim.sender.stats();
    report.seed = cfg.seed;
    report.receivers = cfg.receivers;
    report.data_units = s.data_units + sim.stripe_units;
    report.repair_units = s.repair_units;
    report.xor_units = s.xor_units;
    report.parity_units = s.parity_units;
    report.data_bytes = s.data_bytes + sim.stripe_bytes;
    report.parity_bytes = s.parity_bytes;
    report.nack_packets = s.nacks;
    report.nack_bytes = s.nack_bytes;
    report.receipt_packets = s.receipts;
    report.receipt_bytes = s.receipt_bytes;
    report.sender_finished = sim.sender.is_finished();
    if let (Some(first), Some(p)) = (sim.first_data, cfg.priority) {
        if let Some(got) = sim.nodes[p.0].asked_verified_at {
            let reached = sim
                .pass_reached
                .map_or(Duration::MAX, |t| t.saturating_duration_since(first));
            report.priority_verified = Some((got.saturating_duration_since(first), reached));
        }
    }
    if !report.sender_finished {
        report.failures.push("sender did not finish".into());
    }
    report
}

impl<'a> Sim<'a> {
    fn push(&mut self, at: Instant, ev: Ev) {
        self.events.push(at, ev);
    }

    fn run_loop(&mut self) -> SimReport {
        let mut report = SimReport::default();
        let mut clock = Clock::new(self.base, self.base + self.cfg.time_limit);
        loop {
            let now = clock.now();
            self.flush_sender(now);
            if self.sender.is_finished() {
                break;
            }
            let striping = self.cfg.stripes > 1 && self.sender.is_sending() && self.stripes_left();
            let next = queue::earliest([
                self.sender.poll_timeout(),
                self.mcast.front().map(|(t, _)| *t),
                self.events.peek_time(),
                self.timers.peek().map(|(t, _)| t),
                striping.then(|| self.next_data.unwrap_or(now)),
            ]);
            let step = clock.advance(next);
            if matches!(step, Ok(_) | Err(Halt::NoProgress))
                && clock.stuck() > queue::STUCK_LIMIT - 5
            {
                eprintln!(
                    "stuck: {} sender {:?} mcast {:?} events {:?} timers {:?} now {:?}",
                    self.sender.debug_state(),
                    self.sender.poll_timeout().map(|t| t - self.base),
                    self.mcast.front().map(|(t, _)| *t - self.base),
                    self.events.peek_time().map(|t| t - self.base),
                    self.timers.peek().map(|(t, i)| (t - self.base, i)),
                    now - self.base
                );
            }
            let now = match step {
                Ok(now) => now,
                Err(halt) => {
                    report
                        .failures
                        .push(halt.describe(self.cfg.time_limit, "sender"));
                    break;
                }
            };
            while self.mcast.front().is_some_and(|(t, _)| *t <= now) {
                let (_, bytes) = self.mcast.pop_front().expect("checked");
                self.fan_out(now, &bytes);
            }
            while let Some(ev) = self.events.pop_due(now) {
                self.handle_event(now, ev);
            }
            if self.sender.poll_timeout().is_some_and(|t| t <= now) {
                self.sender.handle_timeout(now);
            }
            if self.cfg.stripes > 1 && self.sender.is_sending() {
                self.send_stripes(now);
            }
            while let Some((t, i)) = self.timers.pop_due(now) {
                if self.nodes[i].scheduled == Some(t) {
                    self.nodes[i].scheduled = None;
                }
                if self.nodes[i].life == Life::Alive {
                    if self.nodes[i].rx.poll_timeout().is_some_and(|t| t <= now) {
                        self.nodes[i].rx.handle_timeout(now);
                    }
                    self.after_receiver(now, i);
                }
            }
        }
        report
    }

    fn handle_event(&mut self, now: Instant, ev: Ev) {
        match ev {
            Ev::ToServer(i, bytes) => {
                self.sender.handle_datagram(now, receiver_addr(i), &bytes);
            }
            Ev::ToReceiver(i, bytes) => {
                if self.nodes[i].life == Life::Alive {
                    self.nodes[i].rx.handle_datagram(now, SERVER, &bytes);
                    self.after_receiver(now, i);
                }
            }
            Ev::Start(i) => {
                if self.nodes[i].life == Life::NotStarted {
                    self.nodes[i].life = Life::Alive;
                }
            }
            Ev::Die(i) => self.nodes[i].life = Life::Gone,
            Ev::Leave(i) => {
                if self.nodes[i].life == Life::Alive {
                    self.nodes[i].rx.leave(LeaveReason::Stopped);
                    self.after_receiver(now, i);
                }
                self.nodes[i].life = Life::Gone;
            }
        }
    }

    /// Applies what receivers asked for, in receiver order (so threads do not change a run).
    fn apply(&mut self, fx: &mut Effects) {
        for (at, ev) in fx.events.drain(..) {
            self.push(at, ev);
        }
        for (t, i) in fx.timers.drain(..) {
            self.timers.push(t, i);
        }
    }

    /// After a receiver ran outside the fan-out: send what it wants sent, re-arm its timer.
    fn after_receiver(&mut self, now: Instant, i: usize) {
        let mut fx = Effects::default();
        after_node(self.cfg, &mut self.nodes[i], i, now, &mut self.buf, &mut fx);
        self.apply(&mut fx);
    }

    /// One multicast datagram to every receiver, on `threads` threads for large groups.
    fn fan_out(&mut self, now: Instant, bytes: &Arc<[u8]>) {
        let threads = fanout::threads(self.cfg.threads);
        let cfg = self.cfg;
        if threads <= 1 || self.nodes.len() < 512 {
            let mut fx = Effects::default();
            for (i, node) in self.nodes.iter_mut().enumerate() {
                deliver_copy(cfg, node, i, now, bytes, &mut self.buf, &mut fx);
            }
            self.apply(&mut fx);
            return;
        }
        let mut results = fanout::in_parallel(&mut self.nodes, 0, threads, |i, node, buf, fx| {
            deliver_copy(cfg, node, i, now, bytes, buf, fx)
        });
        for fx in &mut results {
            self.apply(fx);
        }
    }

    fn stripes_left(&self) -> bool {
        self.stripe_cursor
            .iter()
            .any(|&(seq, _)| (seq as usize) < self.block_addrs.len())
    }

    /// The data threads: each stripe sends its blocks in order; which stripe goes next is
    /// random (threads are not in lock step), all paced together at the configured rate.
    fn send_stripes(&mut self, now: Instant) {
        let total = self.block_addrs.len() as u64;
        while self.next_data.is_none_or(|t| t <= now) && self.stripes_left() {
            let live: Vec<usize> = (0..self.stripe_cursor.len())
                .filter(|&s| self.stripe_cursor[s].0 < total)
                .collect();
            let s = live[self.rng.below(live.len() as u64) as usize];
            let (seq, unit) = self.stripe_cursor[s];
            let (object, block, units) = self.block_addrs[seq as usize];
            let epoch = self.sender.epoch().unwrap_or(now);
            let hdr = blockcast_proto::wire::UnitHeaderRepr {
                session: SessionId((self.cfg.seed as u32) | 1),
                parity: false,
                repair: false,
                object,
                block,
                index: unit,
                round_end: 0,
                timestamp: now.saturating_duration_since(epoch).as_micros() as u32,
            };
            let mut bytes = vec![0u8; blockcast_proto::wire::UNIT_HEADER_LEN];
            let _ = hdr.emit(&mut bytes);
            let us = usize::from(self.cfg.geometry.unit_size);
            let b = self.sender.source().block(object, block);
            let start = usize::from(unit) * us;
            bytes.extend_from_slice(&b[start..(start + us).min(b.len())]);
            let cost = Duration::from_secs_f64(bytes.len() as f64 / self.cfg.rate as f64);
            self.next_data = Some(self.next_data.unwrap_or(now).max(now - cost) + cost);
            if self.first_data.is_none() {
                self.first_data = Some(now);
            }
            self.stripe_units += 1;
            self.stripe_bytes += bytes.len() as u64;
            self.mcast.push_back((now + self.cfg.delay, bytes.into()));
            self.stripe_cursor[s] = if unit + 1 < units {
                (seq, unit + 1)
            } else {
                (seq + self.stripe_cursor.len() as u64, 0)
            };
            let sent_before = self
                .stripe_cursor
                .iter()
                .map(|c| c.0)
                .min()
                .unwrap_or(total);
            self.sender.handle_first_pass(
                now,
                blockcast_proto::FirstPassProgress {
                    sent_before,
                    bytes: self.stripe_bytes,
                },
            );
        }
    }

    fn flush_sender(&mut self, now: Instant) {
        while let Some(t) = self.sender.poll_transmit(now, &mut self.buf) {
            let mut bytes = self.buf[..t.len].to_vec();
            if let Some(p) = t.payload {
                if self.first_data.is_none() {
                    self.first_data = Some(now);
                }
                let first_pass = bytes
                    .get(4)
                    .is_none_or(|f| f & blockcast_proto::wire::FLAG_REPAIR == 0);
                if first_pass
                    && self.pass_reached.is_none()
                    && self
                        .cfg
                        .priority
                        .is_some_and(|(_, o, b, _, _)| (o, b) == (p.object, p.block))
                {
                    self.pass_reached = Some(now);
                }
                bytes.extend_from_slice(p.bytes(self.sender.source()));
            }
            let bytes: Arc<[u8]> = bytes.into();
            match t.destination {
                Destination::Group | Destination::Stripe(_) => {
                    self.mcast.push_back((now + self.cfg.delay, bytes))
                }
                Destination::Peer(addr) => {
                    if let Some(i) = receiver_index(addr) {
                        if !net::lost(
                            &self.cfg.control_faults.loss,
                            &mut net::BurstState::default(),
                            &mut self.rng,
                        ) {
                            self.push(now + self.cfg.delay, Ev::ToReceiver(i, bytes));
                        }
                    }
                }
            }
        }
        // The sender's events are not needed: completion is measured from the first unit.
        while self.sender.poll_event().is_some() {}
    }
}

/// What receivers asked the simulator to do, collected so that deliveries can run on several
/// threads and be applied afterwards in a fixed order.
#[derive(Default)]
struct Effects {
    events: Vec<(Instant, Ev)>,
    timers: Vec<(Instant, usize)>,
}

/// One multicast copy to receiver `i`, through its faults.
fn deliver_copy(
    cfg: &SimConfig,
    node: &mut Node,
    i: usize,
    now: Instant,
    bytes: &Arc<[u8]>,
    buf: &mut [u8],
    fx: &mut Effects,
) {
    if node.life != Life::Alive {
        return;
    }
    let rx = &mut node.rx;
    net::through_faults(
        &cfg.data_faults,
        &mut node.burst,
        &mut node.rng,
        bytes,
        |arrival| match arrival {
            Arrival::Now(b) => rx.handle_datagram(now, SERVER, &b),
            Arrival::Later(extra, b) => fx.events.push((now + extra, Ev::ToReceiver(i, b))),
        },
    );
    after_node(cfg, node, i, now, buf, fx);
}

/// After a receiver ran: what it wants sent (through the feedback link's loss), its events,
/// and its next timer.
fn after_node(
    cfg: &SimConfig,
    node: &mut Node,
    i: usize,
    now: Instant,
    buf: &mut [u8],
    fx: &mut Effects,
) {
    while let Some(e) = node.rx.poll_event() {
        match e {
            ReceiverEvent::Complete => node.complete_at = Some(now),
            ReceiverEvent::VerifyBlock {
                object,
                block,
                expected,
                rebuild,
            } => {
                // External verification, answered at once (the node does it on another core).
                let len = node
                    .rx
                    .manifest()
                    .and_then(|m| m.block_len(object, block.0))
                    .unwrap_or(0);
                let bytes = node.rx.store_mut().block_mut(object, block, len);
                let ok = rebuild.is_none_or(|r| r.apply(bytes))
                    && blake3::hash(bytes).as_bytes() == &expected;
                node.rx.handle_verified(now, object, block, ok);
            }
            ReceiverEvent::Accepted { .. } => {
                if let Some((o, b, u, c)) = node.ask {
                    node.rx.request_priority(o, b, u, c);
                }
            }
            ReceiverEvent::BlockVerified { object, block }
                if node
                    .ask
                    .is_some_and(|(o, b, _, _)| (o, b) == (object, block)) =>
            {
                node.asked_verified_at.get_or_insert(now);
            }
            _ => {}
        }
    }
    while let Some(t) = node.rx.poll_transmit(now, buf) {
        if !net::lost(
            &cfg.control_faults.loss,
            &mut net::BurstState::default(),
            &mut node.rng,
        ) {
            fx.events
                .push((now + cfg.delay, Ev::ToServer(i, buf[..t.len].into())));
        }
    }
    if let Some(t) = node.rx.poll_timeout() {
        if queue::rearm(&mut node.scheduled, t) {
            fx.timers.push((t, i));
        }
    }
}
