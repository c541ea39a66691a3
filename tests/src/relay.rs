//! Relays in the simulator: a server, tiers of relays, and receivers behind them.
//!
//! A relay is built from the real state machines: a [`Receiver`] that joins its upstream
//! source (the server or a relay of the tier above), and, once that receiver has the
//! manifest, a [`Sender`] with the same manifest and session id and its own control
//! address, serving its own multicast group. Each block the receiver verifies is copied into
//! the sender's source and becomes available ([`BlockSource::available`]) at once: the relay
//! cuts through by block. Downstream NACKs and receipt notices stop at the relay; only the
//! relay's own receiver reports upstream.
//!
//! The tree is given by fan-outs: `[R, K]` is a server, R relays and K receivers behind each;
//! `[R1, R2, K]` adds a tier; `[N]` is direct multicast to N receivers (the comparison). Every
//! link has the loss models of the plain simulator, drawn per copy from the receiving node's
//! own generator, so a run is replayed exactly by its seed whatever the number of threads.
//!
//! Fail-over: every receiver's idle timeout is set to [`RelayConfig::failover_after`]. When
//! its source falls silent that long (the receiver reports [`ReceiverEvent::ServerLost`]),
//! the simulator moves it to another source and calls [`Receiver::switch_source`]: first a
//! sibling of the silent relay (if [`FailOver::Sibling`]), then up the tree to the server.
//! The simulator never tells a receiver which relays are alive: a choice that is silent too
//! is found out by the same timeout.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockcast_proto::wire::{BlockIndex, Manifest, ObjectId, ReceiverId, SessionId};
use blockcast_proto::{
    BlockSource, BlockStore, Destination, Receiver, ReceiverEvent, Sender, StoreError,
};

use crate::net::{self, Arrival, BurstState, SimRng};
use crate::queue::{self, Clock, EventQueue, Timers};
use crate::{content, fanout, Life};
use crate::{SimConfig, SimStore, StoreKind};

/// Where a receiver whose source fell silent goes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailOver {
    /// Another relay of the same tier (chosen by the receiver's index), then up the tree.
    Sibling,
    /// Straight up the tree: the silent relay's own source, and so on to the server.
    Up,
}

/// One simulated relay tree. Loss, geometry, rate, delay, store and protocol settings come
/// from `base`; its `receivers`, `late`, `deaths`, `leaves`, `stripes`, `priority` and
/// `threads` are not used (see the fields here).
#[derive(Clone, Debug)]
pub struct RelayConfig {
    pub base: SimConfig,
    /// Children per node, tier by tier: `[R, K]` = R relays with K receivers each; `[N]` =
    /// direct multicast to N receivers.
    pub fanout: Vec<usize>,
    /// Receivers of the last tier that start late: (index among them, start time).
    pub late: Vec<(usize, Duration)>,
    /// Relays that die (stop receiving and sending for good): (tier, index in the tier,
    /// time). Tier 1 is the tier just below the server.
    pub relay_deaths: Vec<(usize, usize, Duration)>,
    pub failover: FailOver,
    /// Silence after which a receiver leaves its source (its idle timeout).
    pub failover_after: Duration,
    /// Threads delivering a multicast copy to groups of 512 or more (0: one per core).
    pub threads: usize,
}

impl RelayConfig {
    /// `fanout` over [`SimConfig::small`] with `loss` on every link, fail-over to a sibling
    /// after 200 ms of silence (10 announce intervals).
    pub fn small(seed: u64, fanout: Vec<usize>, loss: f64) -> Self {
        RelayConfig {
            base: SimConfig::small(seed, 0, loss),
            fanout,
            late: Vec::new(),
            relay_deaths: Vec::new(),
            failover: FailOver::Sibling,
            failover_after: Duration::from_millis(200),
            threads: 0,
        }
    }

    /// Applies `BLOCKCAST_SIM_SEED` if set (to replay a printed failing seed).
    pub fn with_env_seed(mut self) -> Self {
        self.base = self.base.with_env_seed();
        self
    }

    /// Receivers at the end of the tree.
    pub fn leaves(&self) -> usize {
        self.fanout.iter().product()
    }

    /// Node indices of tier `t` (0: the server; the last tier: the receivers).
    pub fn tier(&self, t: usize) -> Range<usize> {
        let mut start = 1usize;
        let mut width = 1usize;
        if t == 0 {
            return 0..1;
        }
        for (i, f) in self.fanout.iter().enumerate() {
            width *= f;
            if i + 1 == t {
                return start..start + width;
            }
            start += width;
        }
        start..start
    }
}

/// The nodes that send at one tier (the server at tier 0, relays below), and what the tier
/// below sent them.
#[derive(Clone, Debug, Default)]
pub struct TierReport {
    pub tier: usize,
    /// Senders in the tier (dead relays included).
    pub senders: usize,
    /// Data, repair and parity units sent, over all its senders.
    pub units: u64,
    /// `units` over (minimal units x senders that sent anything).
    pub units_ratio: f64,
    pub parity_units: u64,
    pub nack_packets: u64,
    pub nack_bytes: u64,
    pub receipt_packets: u64,
    pub receipt_bytes: u64,
    /// Control packets that arrived at the tier's senders (joins, leaves, NACKs, receipt
    /// notices), over the whole run.
    pub control_in: u64,
    /// Control packets per second arriving at one sender during the transfer (first data
    /// unit to the last receiver's completion): mean and max over the tier's senders.
    pub fan_in_mean: f64,
    pub fan_in_max: f64,
}

/// What a relay run did.
#[derive(Clone, Debug, Default)]
pub struct RelayReport {
    pub seed: u64,
    pub fanout: Vec<usize>,
    /// Receivers at the end of the tree.
    pub leaves: usize,
    /// Nodes expected to finish (alive relays and every receiver at the end of the tree).
    pub expected: usize,
    /// Of those, how many hold every object, verified and equal to the source.
    pub identical: usize,
    /// Blocks marked done whose bytes differ from the source (must be 0).
    pub bad_done_blocks: u64,
    /// From the server's first data unit to the last expected node's completion.
    pub completion: Duration,
    /// The server's first pass alone at the configured rate: the lossless lower bound.
    pub ideal: Duration,
    pub minimal_units: u64,
    /// Tier 0 is the server.
    pub tiers: Vec<TierReport>,
    /// NACKs and receipt notices sent by the receivers at the end of the tree.
    pub leaf_nack_bytes: u64,
    pub leaf_receipt_bytes: u64,
    /// Fail-overs made ([`Receiver::switch_source`] calls).
    pub switches: u64,
    pub failures: Vec<String>,
    pub wall: Duration,
}

impl RelayReport {
    pub fn completion_ratio(&self) -> f64 {
        self.completion.as_secs_f64() / self.ideal.as_secs_f64().max(1e-9)
    }

    /// Control packets per second arriving at the server during the transfer.
    pub fn server_fan_in(&self) -> f64 {
        self.tiers.first().map_or(0.0, |t| t.fan_in_mean)
    }

    /// Panics with the seed and the failures (for tests).
    pub fn assert_ok(&self) {
        assert!(
            self.failures.is_empty(),
            "relay simulation failed (replay with BLOCKCAST_SIM_SEED={}): {:#?}",
            self.seed,
            self.failures
        );
    }
}

/// A node's receiver store. A relay's always keeps whole objects in memory
/// ([`StoreKind::Memory`]): each block it verifies is re-hashed against the source's hash
/// and handed to the relay's sender.
enum NodeStore {
    Leaf(SimStore),
    Relay(SimStore),
}

impl BlockStore for NodeStore {
    fn prepare(&mut self, manifest: &Manifest) -> Result<(), StoreError> {
        match self {
            NodeStore::Leaf(s) => s.prepare(manifest),
            NodeStore::Relay(s) => s.prepare(manifest),
        }
    }

    fn block_mut(&mut self, object: ObjectId, block: BlockIndex, len: usize) -> &mut [u8] {
        match self {
            NodeStore::Leaf(s) => s.block_mut(object, block, len),
            NodeStore::Relay(s) => s.block_mut(object, block, len),
        }
    }

    fn block_verified(&mut self, object: ObjectId, block: BlockIndex) {
        match self {
            NodeStore::Leaf(s) => s.block_verified(object, block),
            NodeStore::Relay(s) => s.block_verified(object, block),
        }
    }
}

/// What a sender serves: the whole content (the server) or the blocks a relay has verified.
pub struct RelaySource {
    objects: Vec<Vec<u8>>,
    have: Vec<Vec<bool>>,
    block_size: usize,
}

impl RelaySource {
    fn full(content: &[Vec<u8>], block_size: usize) -> Self {
        RelaySource {
            objects: content.to_vec(),
            have: content
                .iter()
                .map(|c| vec![true; c.len().div_ceil(block_size)])
                .collect(),
            block_size,
        }
    }

    fn empty(m: &Manifest) -> Self {
        let block_size = m.block_size() as usize;
        RelaySource {
            objects: m
                .objects
                .iter()
                .map(|o| vec![0u8; o.size as usize])
                .collect(),
            have: m
                .objects
                .iter()
                .map(|o| vec![false; o.block_hashes.len()])
                .collect(),
            block_size,
        }
    }

    fn fill(&mut self, object: ObjectId, block: BlockIndex, bytes: &[u8]) {
        let start = block.0 as usize * self.block_size;
        self.objects[object.0 as usize][start..start + bytes.len()].copy_from_slice(bytes);
        self.have[object.0 as usize][block.0 as usize] = true;
    }
}

impl BlockSource for RelaySource {
    fn block(&self, object: ObjectId, block: BlockIndex) -> &[u8] {
        let o = &self.objects[object.0 as usize];
        let start = block.0 as usize * self.block_size;
        &o[start..(start + self.block_size).min(o.len())]
    }

    fn available(&self, object: ObjectId, block: BlockIndex) -> bool {
        self.have[object.0 as usize][block.0 as usize]
    }
}

fn node_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 7000))
}

fn node_index(a: SocketAddr) -> Option<usize> {
    match a {
        SocketAddr::V4(v4) if v4.port() == 7000 && v4.ip().octets()[0] == 10 => {
            let o = v4.ip().octets();
            Some((o[1] as usize) << 16 | (o[2] as usize) << 8 | o[3] as usize)
        }
        _ => None,
    }
}

enum Ev {
    /// A datagram node `from` sent to its group, arriving now at its members.
    Mcast(usize, Arc<[u8]>),
    /// A datagram for node `to`'s sender (control address) from node `from`.
    ToSender(usize, usize, Arc<[u8]>),
    /// A datagram for node `i`'s receiver (unicast, or a delayed multicast copy).
    ToReceiver(usize, Arc<[u8]>),
    Start(usize),
    Die(usize),
}

struct Node {
    tier: usize,
    /// The source it receives from now (None for the server).
    parent: Option<usize>,
    /// Its first source, for the fail-over order.
    home: Option<usize>,
    rx: Option<Receiver<NodeStore>>,
    tx: Option<Sender<RelaySource>>,
    /// Children that start on time (the sender waits for them).
    initial_children: usize,
    life: Life,
    scheduled: Option<Instant>,
    complete_at: Option<Instant>,
    failovers: u32,
    burst: BurstState,
    rng: SimRng,
    /// When control packets arrived at its sender.
    control_in: Vec<Instant>,
    first_data: Option<Instant>,
    failure: Option<String>,
}

#[derive(Default)]
struct Effects {
    events: Vec<(Instant, Ev)>,
    timers: Vec<(Instant, usize)>,
    lost: Vec<usize>,
}

struct Ctx<'a> {
    cfg: &'a RelayConfig,
}

/// Runs one relay tree to its end (or the time limit) and reports.
pub fn run_relays(cfg: &RelayConfig) -> RelayReport {
    let wall = Instant::now();
    let base_cfg = &cfg.base;
    let seed = base_cfg.seed;
    let mut failures = Vec::new();
    let mut rng = SimRng::new(seed);
    let content = content::random_content(&mut rng, &base_cfg.objects);
    let geometry = base_cfg.geometry;
    let block_size = geometry.block_size();
    let manifest = content::manifest(geometry, &content);
    let truth = content::block_hashes(&manifest);
    let tiers = cfg.fanout.len();
    let leaf_tier = cfg.tier(tiers);
    let total = leaf_tier.end;
    let late_at = |i: usize| -> Option<Duration> {
        (leaf_tier.contains(&i))
            .then(|| {
                cfg.late
                    .iter()
                    .find(|(l, _)| leaf_tier.start + l == i)
                    .map(|(_, t)| *t)
            })
            .flatten()
    };
    // Build the tree: node i of tier t+1 is child (i - start) / fanout of tier t's nodes.
    let mut nodes: Vec<Node> = Vec::with_capacity(total);
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); total];
    for t in 0..=tiers {
        for i in cfg.tier(t) {
            let parent = (t > 0).then(|| {
                let up = cfg.tier(t - 1);
                up.start + (i - cfg.tier(t).start) / cfg.fanout[t - 1]
            });
            if let Some(p) = parent {
                members[p].push(i);
            }
            let rx = parent.map(|_| {
                let mut r = base_cfg.receiver.clone();
                r.id = ReceiverId(i as u64);
                r.seed = seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                r.idle_timeout = cfg.failover_after;
                let store = if t == tiers {
                    NodeStore::Leaf(SimStore::new(base_cfg.store, truth.clone(), block_size))
                } else {
                    NodeStore::Relay(SimStore::new(StoreKind::Memory, truth.clone(), block_size))
                };
                Receiver::new(r, store)
            });
            nodes.push(Node {
                tier: t,
                parent,
                home: parent,
                rx,
                tx: None,
                initial_children: 0,
                life: Life::NotStarted,
                scheduled: None,
                complete_at: None,
                failovers: 0,
                burst: BurstState::default(),
                rng: SimRng::new(seed ^ (i as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F)),
                control_in: Vec::new(),
                first_data: None,
                failure: None,
            });
        }
    }
    for (p, m) in members.iter().enumerate() {
        nodes[p].initial_children = m.iter().filter(|&&c| late_at(c).is_none()).count();
    }
    let mut scfg = base_cfg.sender.clone();
    scfg.geometry = geometry;
    scfg.rate = base_cfg.rate;
    scfg.control = node_addr(0);
    scfg.session = SessionId((seed as u32) | 1);
    scfg.stripes = 1;
    scfg.external_first_pass = false;
    scfg.min_receivers = nodes[0].initial_children;
    match Sender::new(
        scfg,
        manifest.clone(),
        RelaySource::full(&content, block_size),
    ) {
        Ok(s) => nodes[0].tx = Some(s),
        Err(e) => {
            return RelayReport {
                seed,
                failures: vec![format!("sender config rejected: {e}")],
                ..RelayReport::default()
            }
        }
    }
    nodes[0].life = Life::Alive;
    let base = Instant::now();
    let mut sim = RelaySim {
        ctx: Ctx { cfg },
        nodes,
        members,
        events: EventQueue::new(),
        timers: Timers::new(),
        buf: vec![0u8; 65_536],
        switches: 0,
    };
    sim.timers.push(base, 0);
    sim.nodes[0].scheduled = Some(base);
    for i in 1..total {
        sim.push(base + late_at(i).unwrap_or(Duration::ZERO), Ev::Start(i));
    }
    let mut dead = vec![false; total];
    for &(t, k, at) in &cfg.relay_deaths {
        let r = cfg.tier(t);
        if t == 0 || t >= tiers || k >= r.len() {
            failures.push(format!("no relay {k} at tier {t}"));
            continue;
        }
        dead[r.start + k] = true;
        sim.push(base + at, Ev::Die(r.start + k));
    }
    failures.extend(sim.run_loop(base, base + base_cfg.time_limit));

    // Check every expected node against the source.
    let mut report = RelayReport {
        seed,
        fanout: cfg.fanout.clone(),
        leaves: leaf_tier.len(),
        switches: sim.switches,
        ..RelayReport::default()
    };
    let first = sim.nodes[0].first_data;
    let mut last_complete: Option<Instant> = None;
    for (i, n) in sim.nodes.iter().enumerate() {
        if let Some(f) = &n.failure {
            failures.push(format!("node {i}: {f}"));
        }
        let Some(rx) = &n.rx else { continue };
        let (NodeStore::Leaf(store) | NodeStore::Relay(store)) = rx.store();
        report.bad_done_blocks += store.bad_blocks();
        if n.tier == tiers {
            report.leaf_nack_bytes += rx.stats().nack_bytes;
            report.leaf_receipt_bytes += rx.stats().receipt_bytes;
        }
        if dead[i] {
            continue;
        }
        report.expected += 1;
        if !rx.is_complete() {
            failures.push(format!(
                "node {i} (tier {}) incomplete: {}/{} blocks, {} fail-overs",
                n.tier,
                rx.blocks_done(),
                rx.total_blocks(),
                n.failovers
            ));
            continue;
        }
        if let Some(t) = n.complete_at {
            last_complete = Some(last_complete.map_or(t, |l: Instant| l.max(t)));
        }
        match store.equals(&content) {
            Ok(()) => report.identical += 1,
            Err(e) => failures.push(format!("node {i}: {e}")),
        }
    }
    if report.bad_done_blocks > 0 {
        failures.push(format!(
            "{} blocks marked done differ from the source",
            report.bad_done_blocks
        ));
    }
    let (window_start, window_end) = match (first, last_complete) {
        (Some(f), Some(l)) => (f, l.max(f)),
        _ => (base, base),
    };
    report.completion = window_end.saturating_duration_since(window_start);
    report.minimal_units = content::minimal_units(&content, geometry.unit_size);
    report.ideal = content::ideal_time(&content, geometry.unit_size, base_cfg.rate, base_cfg.delay);
    let window = report.completion.as_secs_f64().max(1e-9);
    for t in 0..tiers {
        let mut tr = TierReport {
            tier: t,
            ..TierReport::default()
        };
        let mut rates = Vec::new();
        let mut sending = 0u64;
        for i in cfg.tier(t) {
            let n = &sim.nodes[i];
            tr.senders += 1;
            if let Some(tx) = &n.tx {
                let s = tx.stats();
                let units = s.data_units + s.repair_units + s.xor_units + s.parity_units;
                tr.units += units;
                sending += u64::from(units > 0);
                tr.parity_units += s.parity_units;
                tr.nack_packets += s.nacks;
                tr.nack_bytes += s.nack_bytes;
                tr.receipt_packets += s.receipts;
                tr.receipt_bytes += s.receipt_bytes;
            }
            tr.control_in += n.control_in.len() as u64;
            if !dead[i] {
                let inside = n
                    .control_in
                    .iter()
                    .filter(|&&at| at >= window_start && at <= window_end)
                    .count();
                rates.push(inside as f64 / window);
            }
        }
        tr.units_ratio = tr.units as f64 / (report.minimal_units * sending.max(1)) as f64;
        tr.fan_in_mean = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
        tr.fan_in_max = rates.iter().copied().fold(0.0, f64::max);
        report.tiers.push(tr);
    }
    report.failures = failures;
    report.wall = wall.elapsed();
    report
}

struct RelaySim<'a> {
    ctx: Ctx<'a>,
    nodes: Vec<Node>,
    /// Each sender's multicast group: the nodes that receive from it now.
    members: Vec<Vec<usize>>,
    events: EventQueue<Ev>,
    timers: Timers,
    buf: Vec<u8>,
    switches: u64,
}

impl RelaySim<'_> {
    fn push(&mut self, at: Instant, ev: Ev) {
        self.events.push(at, ev);
    }

    /// Every sender that is alive has finished.
    fn all_finished(&self) -> bool {
        let senders = self.ctx.cfg.tier(self.ctx.cfg.fanout.len()).start;
        self.nodes[..senders]
            .iter()
            .all(|n| n.life != Life::Alive || n.tx.as_ref().is_none_or(|t| t.is_finished()))
    }

    fn run_loop(&mut self, base: Instant, limit: Instant) -> Vec<String> {
        let mut clock = Clock::new(base, limit);
        loop {
            if self.nodes[0].tx.as_ref().is_some_and(|t| t.is_finished()) && self.all_finished() {
                return Vec::new();
            }
            let next =
                queue::earliest([self.events.peek_time(), self.timers.peek().map(|(t, _)| t)]);
            let now = match clock.advance(next) {
                Ok(now) => now,
                Err(halt) => return vec![halt.describe(self.ctx.cfg.base.time_limit, "senders")],
            };
            while let Some(ev) = self.events.pop_due(now) {
                self.handle_event(now, ev);
            }
            while let Some((t, i)) = self.timers.pop_due(now) {
                let n = &mut self.nodes[i];
                if n.scheduled == Some(t) {
                    n.scheduled = None;
                }
                if n.life != Life::Alive {
                    continue;
                }
                if let Some(rx) = n.rx.as_mut() {
                    if rx.poll_timeout().is_some_and(|t| t <= now) {
                        rx.handle_timeout(now);
                    }
                }
                if let Some(tx) = n.tx.as_mut() {
                    if tx.poll_timeout().is_some_and(|t| t <= now) {
                        tx.handle_timeout(now);
                    }
                }
                self.after(now, i);
            }
        }
    }

    fn handle_event(&mut self, now: Instant, ev: Ev) {
        match ev {
            Ev::Mcast(from, bytes) => self.fan_out(now, from, &bytes),
            Ev::ToSender(to, from, bytes) => {
                let n = &mut self.nodes[to];
                if n.life == Life::Alive {
                    n.control_in.push(now);
                    if let Some(tx) = n.tx.as_mut() {
                        tx.handle_datagram(now, node_addr(from), &bytes);
                        self.after(now, to);
                    }
                }
            }
            Ev::ToReceiver(i, bytes) => {
                let n = &mut self.nodes[i];
                if n.life == Life::Alive {
                    if let Some(rx) = n.rx.as_mut() {
                        rx.handle_datagram(now, node_addr(n.parent.unwrap_or(0)), &bytes);
                        self.after(now, i);
                    }
                }
            }
            Ev::Start(i) => {
                if self.nodes[i].life == Life::NotStarted {
                    self.nodes[i].life = Life::Alive;
                }
            }
            Ev::Die(i) => self.nodes[i].life = Life::Gone,
        }
    }

    fn apply(&mut self, now: Instant, fx: &mut Effects) {
        for (at, ev) in fx.events.drain(..) {
            self.push(at, ev);
        }
        for (t, i) in fx.timers.drain(..) {
            self.timers.push(t, i);
        }
        for i in std::mem::take(&mut fx.lost) {
            self.fail_over(now, i);
        }
    }

    fn after(&mut self, now: Instant, i: usize) {
        let mut fx = Effects::default();
        after_node(
            &self.ctx,
            &mut self.nodes[i],
            i,
            now,
            &mut self.buf,
            &mut fx,
        );
        self.apply(now, &mut fx);
    }

    /// Node `i`'s source fell silent: move it to the next source in its fail-over order.
    fn fail_over(&mut self, now: Instant, i: usize) {
        let cfg = self.ctx.cfg;
        let Some(old) = self.nodes[i].parent else {
            return;
        };
        let k = self.nodes[i].failovers;
        let home = self.nodes[i].home.unwrap_or(old);
        let home_tier = self.nodes[home].tier;
        let siblings = cfg.tier(home_tier);
        let new = if cfg.failover == FailOver::Sibling && k == 0 && home_tier > 0 {
            // A sibling of the home relay, spread by the receiver's index.
            let others = siblings.len() - 1;
            if others == 0 {
                self.nodes[home].parent
            } else {
                let step = 1 + i % others;
                Some(siblings.start + (home - siblings.start + step) % siblings.len())
            }
        } else {
            // Up the tree from where it is, stopping at the server.
            self.nodes[old].parent.or(Some(old))
        };
        let Some(new) = new else { return };
        self.nodes[i].failovers += 1;
        if new == old {
            // Already at the server: nowhere else to go; listen again.
            if let Some(rx) = self.nodes[i].rx.as_mut() {
                rx.switch_source(now);
            }
            self.switches += 1;
            self.after(now, i);
            return;
        }
        self.members[old].retain(|&c| c != i);
        self.members[new].push(i);
        self.nodes[i].parent = Some(new);
        if let Some(rx) = self.nodes[i].rx.as_mut() {
            rx.switch_source(now);
        }
        self.switches += 1;
        self.after(now, i);
    }

    /// One multicast datagram from node `from` to its group, on threads for large groups
    /// whose members are consecutive nodes.
    fn fan_out(&mut self, now: Instant, from: usize, bytes: &Arc<[u8]>) {
        let threads = fanout::threads(self.ctx.cfg.threads);
        let group = &self.members[from];
        let consecutive =
            group.len() >= 512 && group.windows(2).all(|w| w[1] == w[0] + 1) && threads > 1;
        if !consecutive {
            let group = std::mem::take(&mut self.members[from]);
            let mut fx = Effects::default();
            for &i in &group {
                deliver_copy(
                    &self.ctx,
                    &mut self.nodes[i],
                    i,
                    now,
                    bytes,
                    &mut self.buf,
                    &mut fx,
                );
            }
            self.members[from] = group;
            self.apply(now, &mut fx);
            return;
        }
        let range = group[0]..group[0] + group.len();
        let ctx = &self.ctx;
        let start = range.start;
        let mut results = fanout::in_parallel(
            &mut self.nodes[range],
            start,
            threads,
            |i, node, buf, fx| deliver_copy(ctx, node, i, now, bytes, buf, fx),
        );
        for fx in &mut results {
            self.apply(now, fx);
        }
    }
}

/// One multicast copy to node `i`, through the faults of its link.
fn deliver_copy(
    ctx: &Ctx<'_>,
    node: &mut Node,
    i: usize,
    now: Instant,
    bytes: &Arc<[u8]>,
    buf: &mut [u8],
    fx: &mut Effects,
) {
    if node.life != Life::Alive || node.rx.is_none() {
        return;
    }
    let from = node_addr(node.parent.unwrap_or(0));
    let rx = &mut node.rx;
    net::through_faults(
        &ctx.cfg.base.data_faults,
        &mut node.burst,
        &mut node.rng,
        bytes,
        |arrival| match arrival {
            Arrival::Now(b) => {
                if let Some(rx) = rx.as_mut() {
                    rx.handle_datagram(now, from, &b);
                }
            }
            Arrival::Later(extra, b) => fx.events.push((now + extra, Ev::ToReceiver(i, b))),
        },
    );
    after_node(ctx, node, i, now, buf, fx);
}

/// After a node ran: its receiver's events (a relay starts serving once it has the manifest
/// and passes on each block it verifies), what its receiver and sender want sent, and its
/// next timer.
fn after_node(
    ctx: &Ctx<'_>,
    node: &mut Node,
    i: usize,
    now: Instant,
    buf: &mut [u8],
    fx: &mut Effects,
) {
    let cfg = ctx.cfg;
    let delay = cfg.base.delay;
    let control_loss = &cfg.base.control_faults.loss;
    if let Some(rx) = node.rx.as_mut() {
        while let Some(e) = rx.poll_event() {
            match e {
                ReceiverEvent::Complete => {
                    node.complete_at.get_or_insert(now);
                }
                ReceiverEvent::ServerLost => fx.lost.push(i),
                ReceiverEvent::ManifestReady if node.tx.is_none() => {
                    if let NodeStore::Relay(_) = rx.store() {
                        match relay_sender(cfg, node.initial_children, i, rx) {
                            Ok(tx) => node.tx = Some(tx),
                            Err(e) => node.failure = Some(format!("relay sender: {e}")),
                        }
                    }
                }
                ReceiverEvent::BlockVerified { object, block } => {
                    if let (Some(tx), NodeStore::Relay(s)) = (node.tx.as_mut(), rx.store()) {
                        // Cut-through: the block is served as soon as it is verified.
                        if let Some(bytes) = s.block(object, block) {
                            tx.source_mut().fill(object, block, bytes);
                        }
                    }
                }
                _ => {}
            }
        }
        while let Some(t) = rx.poll_transmit(now, buf) {
            if let Destination::Peer(addr) = t.destination {
                let lost = net::lost(control_loss, &mut BurstState::default(), &mut node.rng);
                if let (false, Some(to)) = (lost, node_index(addr)) {
                    fx.events
                        .push((now + delay, Ev::ToSender(to, i, buf[..t.len].into())));
                }
            }
        }
    }
    if let Some(tx) = node.tx.as_mut() {
        while let Some(t) = tx.poll_transmit(now, buf) {
            let mut bytes = buf[..t.len].to_vec();
            if let Some(p) = t.payload {
                node.first_data.get_or_insert(now);
                bytes.extend_from_slice(p.bytes(tx.source()));
            }
            match t.destination {
                Destination::Group | Destination::Stripe(_) => {
                    fx.events.push((now + delay, Ev::Mcast(i, bytes.into())))
                }
                Destination::Peer(addr) => {
                    let lost = net::lost(control_loss, &mut BurstState::default(), &mut node.rng);
                    if let (false, Some(to)) = (lost, node_index(addr)) {
                        fx.events
                            .push((now + delay, Ev::ToReceiver(to, bytes.into())));
                    }
                }
            }
        }
        while tx.poll_event().is_some() {}
    }
    let next = match (
        node.rx.as_ref().and_then(|r| r.poll_timeout()),
        node.tx.as_ref().and_then(|t| t.poll_timeout()),
    ) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(t) = next {
        if queue::rearm(&mut node.scheduled, t) {
            fx.timers.push((t, i));
        }
    }
}

/// A relay's sender: the upstream manifest and session, its own control address.
fn relay_sender(
    cfg: &RelayConfig,
    children: usize,
    i: usize,
    rx: &Receiver<NodeStore>,
) -> Result<Sender<RelaySource>, &'static str> {
    let (Some(m), Some(a)) = (rx.manifest(), rx.announce()) else {
        return Err("manifest ready without an announce");
    };
    let mut s = cfg.base.sender.clone();
    s.geometry = blockcast_proto::Geometry {
        unit_size: m.unit_size,
        units_per_block: m.units_per_block,
        max_parity: a.max_parity,
    };
    s.rate = cfg.base.rate;
    s.control = node_addr(i);
    s.session = a.session;
    s.stripes = 1;
    s.external_first_pass = false;
    s.min_receivers = children;
    let mut source = RelaySource::empty(m);
    // Blocks verified before the sender existed (none in practice: units need the manifest).
    for (o, entry) in m.objects.iter().enumerate() {
        for b in 0..entry.block_hashes.len() {
            let (object, block) = (ObjectId(o as u32), BlockIndex(b as u32));
            if rx.is_verified(object, block) {
                if let Some(bytes) = match rx.store() {
                    NodeStore::Relay(st) => st.block(object, block),
                    NodeStore::Leaf(_) => None,
                } {
                    source.fill(object, block, bytes);
                }
            }
        }
    }
    Sender::new(s, m.clone(), source)
}
