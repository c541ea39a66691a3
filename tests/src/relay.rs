//! Relays in the simulator: a server, tiers of relays, and receivers behind them.
//!
//! A relay is a host of the one driver ([`crate::driver`]) with two addresses and two real
//! endpoints: a [`Receiver`] at its own address that joins its upstream source (the server
//! or a relay of the tier above), and, once that receiver has the manifest, a [`Sender`]
//! with the same manifest and session id at its control address, serving its own multicast
//! group. Datagrams are routed by the address they arrive at: the control address to the
//! sender, the rest (the upstream group, unicast from upstream) to the receiver. Each block
//! the receiver verifies is copied into the sender's source and becomes available
//! ([`BlockSource::available`]) at once: the relay cuts through by block. Downstream NACKs
//! and receipt notices stop at the relay; only the relay's own receiver reports upstream.
//!
//! The tree is given by fan-outs: `[R, K]` is a server, R relays and K receivers behind each;
//! `[R1, R2, K]` adds a tier; `[N]` is direct multicast to N receivers (the comparison). Every
//! link has the loss models of the plain simulator, drawn per copy from the receiving node's
//! own generator, so a run is replayed exactly by its seed whatever the number of threads.
//!
//! Fail-over: every receiver's idle timeout is set to [`RelayConfig::failover_after`]. When
//! its source falls silent that long (the receiver reports [`blockcast_proto::ReceiverEvent::ServerLost`]),
//! the simulator moves it to another source and calls [`Receiver::switch_source`]: first a
//! sibling of the silent relay (if [`FailOver::Sibling`]), then up the tree to the server.
//! The simulator never tells a receiver which relays are alive: a choice that is silent too
//! is found out by the same timeout.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use blockcast_proto::wire::{BlockIndex, Manifest, ObjectId, ReceiverId, SessionId};
use blockcast_proto::{
    BlockSource, BlockStore, Destination, Receiver, Sender, SenderConfig, StoreError,
};

use crate::content;
use crate::driver::{host_seed, Datagram, Driven, Host, HostId, Io, Life, Net, Scenario};
use crate::hosts::{MulticastLinks, ReceiverHooks, SenderHooks};
use crate::net::SimRng;
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

/// A node's receiver address.
fn node_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 7000))
}

/// A node's control address (its sender's, advertised in its announces).
fn control_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 7001))
}

/// One node of the tree as a host: the server (a sender), a relay (a receiver, then a
/// sender too), or a receiver at the end of the tree.
struct Node {
    tier: usize,
    /// The source it receives from now (None for the server).
    parent: Option<HostId>,
    /// Its first source, for the fail-over order.
    home: Option<HostId>,
    failovers: u32,
    rx: Option<Driven<Receiver<NodeStore>, ReceiverHooks>>,
    tx: Option<Driven<Sender<RelaySource>, SenderHooks>>,
    /// A relay's sender settings, used once its receiver has the manifest.
    relay: Option<SenderConfig>,
    control: SocketAddr,
    failure: Option<String>,
}

impl Node {
    /// A relay passes on what its receiver did: it starts serving once it has the manifest,
    /// and each block it verifies becomes available to its sender.
    fn pass_on(&mut self) {
        let Some(rx) = self.rx.as_mut() else { return };
        if self.tx.is_none() && rx.hooks.manifest_ready {
            if let Some(s) = self.relay.take() {
                match relay_sender(s, &rx.ep) {
                    Ok(tx) => self.tx = Some(Driven::new(tx, SenderHooks::default(), self.control)),
                    Err(e) => self.failure = Some(format!("relay sender: {e}")),
                }
            }
        }
        let (Some(tx), NodeStore::Relay(store)) = (self.tx.as_mut(), rx.ep.store()) else {
            return;
        };
        for (object, block) in rx.hooks.verified.drain(..) {
            if let Some(bytes) = store.block(object, block) {
                tx.ep.source_mut().fill(object, block, bytes);
            }
        }
    }
}

impl Host for Node {
    /// By the address it arrived at: the control address to the sender, the rest to the
    /// receiver.
    fn handle_datagram(&mut self, now: Instant, d: Datagram<'_>, io: &mut Io<'_>) {
        if d.to == Destination::Peer(self.control) {
            if let Some(tx) = self.tx.as_mut() {
                tx.handle_datagram(now, d, io);
            }
        } else if let Some(rx) = self.rx.as_mut() {
            rx.handle_datagram(now, d, io);
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if let Some(rx) = self.rx.as_mut() {
            rx.handle_timeout(now);
        }
        if let Some(tx) = self.tx.as_mut() {
            tx.handle_timeout(now);
        }
    }

    fn poll(&mut self, now: Instant, io: &mut Io<'_>) {
        if let Some(rx) = self.rx.as_mut() {
            rx.poll(now, io);
        }
        self.pass_on();
        if let Some(tx) = self.tx.as_mut() {
            tx.poll(now, io);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let rx = self.rx.as_ref().and_then(|r| r.poll_timeout());
        let tx = self.tx.as_ref().and_then(|t| t.poll_timeout());
        rx.into_iter().chain(tx).min()
    }
}

/// A relay's sender: the upstream manifest and session, its own control address.
fn relay_sender(
    mut s: SenderConfig,
    rx: &Receiver<NodeStore>,
) -> Result<Sender<RelaySource>, &'static str> {
    let (Some(m), Some(a)) = (rx.manifest(), rx.announce()) else {
        return Err("manifest ready without an announce");
    };
    s.geometry = blockcast_proto::Geometry {
        unit_size: m.unit_size,
        units_per_block: m.units_per_block,
        max_parity: a.max_parity,
    };
    s.session = a.session;
    let mut source = RelaySource::empty(m);
    // Blocks verified before the sender existed (none in practice: units need the manifest).
    for (o, entry) in m.objects.iter().enumerate() {
        for b in 0..entry.block_hashes.len() {
            let (object, block) = (ObjectId(o as u32), BlockIndex(b as u32));
            if rx.is_verified(object, block) {
                if let NodeStore::Relay(st) = rx.store() {
                    if let Some(bytes) = st.block(object, block) {
                        source.fill(object, block, bytes);
                    }
                }
            }
        }
    }
    Sender::new(s, m.clone(), source)
}

/// The tree's run: over when every live sender has finished; a receiver whose source fell
/// silent moves to the next source in its fail-over order.
struct Tree<'a> {
    cfg: &'a RelayConfig,
    switches: u64,
}

impl Scenario<Node> for Tree<'_> {
    fn is_done(&self, net: &Net<Node>) -> bool {
        let senders = self.cfg.tier(self.cfg.fanout.len()).start;
        let finished = |i: usize| {
            let n = net.host(HostId(i));
            net.life(HostId(i)) != Life::Alive || n.tx.as_ref().is_none_or(|t| t.ep.is_finished())
        };
        net.host(HostId(0))
            .tx
            .as_ref()
            .is_some_and(|t| t.ep.is_finished())
            && (0..senders).all(finished)
    }

    fn after(&mut self, net: &mut Net<Node>, now: Instant, id: HostId) {
        let lost = net
            .host_mut(id)
            .rx
            .as_mut()
            .is_some_and(|r| std::mem::take(&mut r.hooks.lost));
        if lost {
            self.fail_over(net, now, id);
        }
    }
}

impl Tree<'_> {
    /// Node `i`'s source fell silent: move it to the next source in its fail-over order.
    fn fail_over(&mut self, net: &mut Net<Node>, now: Instant, i: HostId) {
        let cfg = self.cfg;
        let node = net.host(i);
        let Some(old) = node.parent else { return };
        let k = node.failovers;
        let home = node.home.unwrap_or(old);
        let home_tier = net.host(home).tier;
        let siblings = cfg.tier(home_tier);
        let new = if cfg.failover == FailOver::Sibling && k == 0 && home_tier > 0 {
            // A sibling of the home relay, spread by the receiver's index.
            let others = siblings.len() - 1;
            if others == 0 {
                net.host(home).parent
            } else {
                let step = 1 + i.0 % others;
                let sibling = siblings.start + (home.0 - siblings.start + step) % siblings.len();
                Some(HostId(sibling))
            }
        } else {
            // Up the tree from where it is, stopping at the server.
            net.host(old).parent.or(Some(old))
        };
        let Some(new) = new else { return };
        if new != old {
            // Otherwise it is at the server already: nowhere else to go; it listens again.
            net.leave_group(i, old);
            net.join(i, new);
        }
        let node = net.host_mut(i);
        node.failovers += 1;
        node.parent = Some(new);
        if let Some(rx) = node.rx.as_mut() {
            rx.ep.switch_source(now);
        }
        self.switches += 1;
        net.touch(i);
    }
}

/// Runs one relay tree to its end (or the time limit) and reports.
pub fn run_relays(cfg: &RelayConfig) -> RelayReport {
    let wall = Instant::now();
    let base_cfg = &cfg.base;
    let seed = base_cfg.seed;
    let mut rng = SimRng::new(seed);
    let content = content::random_content(&mut rng, &base_cfg.objects);
    let manifest = content::manifest(base_cfg.geometry, &content);
    let mut net = match build_tree(cfg, &content, &manifest) {
        Ok(net) => net,
        Err(e) => {
            return RelayReport {
                seed,
                failures: vec![format!("sender config rejected: {e}")],
                ..RelayReport::default()
            }
        }
    };
    let tiers = cfg.fanout.len();
    let mut failures = Vec::new();
    let mut dead = vec![false; cfg.tier(tiers).end];
    for &(t, k, at) in &cfg.relay_deaths {
        let r = cfg.tier(t);
        if t == 0 || t >= tiers || k >= r.len() {
            failures.push(format!("no relay {k} at tier {t}"));
            continue;
        }
        dead[r.start + k] = true;
        net.die_at(HostId(r.start + k), at);
    }
    let mut tree = Tree { cfg, switches: 0 };
    if let Err(halt) = net.run(base_cfg.time_limit, &mut tree) {
        failures.push(halt.describe(base_cfg.time_limit, "senders"));
    }
    let mut report = RelayReport {
        seed,
        fanout: cfg.fanout.clone(),
        leaves: cfg.tier(tiers).len(),
        switches: tree.switches,
        minimal_units: content::minimal_units(&content, base_cfg.geometry.unit_size),
        ideal: content::ideal_time(
            &content,
            base_cfg.geometry.unit_size,
            base_cfg.rate,
            base_cfg.delay,
        ),
        ..RelayReport::default()
    };
    let window = check_nodes(cfg, &net, &dead, &content, &mut report, &mut failures);
    report_tiers(cfg, &net, &dead, window, &mut report);
    report.failures = failures;
    report.wall = wall.elapsed();
    report
}

/// The tree's hosts: the server (node 0, started at once) and its sender, then tier by tier
/// each node joined to its parent's group; node i is host i.
fn build_tree(
    cfg: &RelayConfig,
    content: &[Vec<u8>],
    manifest: &Manifest,
) -> Result<Net<Node>, &'static str> {
    let base_cfg = &cfg.base;
    let seed = base_cfg.seed;
    let block_size = base_cfg.geometry.block_size();
    let truth = content::block_hashes(manifest);
    let tiers = cfg.fanout.len();
    let leaf_tier = cfg.tier(tiers);
    let late_at = |i: usize| -> Option<Duration> {
        let late = cfg.late.iter().find(|(l, _)| leaf_tier.start + l == i);
        late.filter(|_| leaf_tier.contains(&i)).map(|(_, t)| *t)
    };
    let links = MulticastLinks {
        delay: base_cfg.delay,
        data: base_cfg.data_faults.clone(),
        control: base_cfg.control_faults.clone(),
    };
    let mut net = Net::new(Instant::now(), links, cfg.threads);
    for t in 0..=tiers {
        for i in cfg.tier(t) {
            let parent = (t > 0).then(|| {
                let up = cfg.tier(t - 1);
                HostId(up.start + (i - cfg.tier(t).start) / cfg.fanout[t - 1])
            });
            // The sender waits for the children that start on time.
            let children = cfg.tier(t + 1).filter(|&c| {
                let up = cfg.tier(t);
                t < tiers && (c - cfg.tier(t + 1).start) / cfg.fanout[t] == i - up.start
            });
            let initial_children = children.filter(|&c| late_at(c).is_none()).count();
            let mut sender = base_cfg.sender.clone();
            sender.rate = base_cfg.rate;
            sender.control = control_addr(i);
            sender.stripes = 1;
            sender.external_first_pass = false;
            sender.min_receivers = initial_children;
            let rx = parent.map(|_| {
                let mut r = base_cfg.receiver.clone();
                r.id = ReceiverId(i as u64);
                r.seed = seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                r.idle_timeout = cfg.failover_after;
                let (store, pass_on) = if t == tiers {
                    (
                        SimStore::new(base_cfg.store, truth.clone(), block_size),
                        false,
                    )
                } else {
                    (
                        SimStore::new(StoreKind::Memory, truth.clone(), block_size),
                        true,
                    )
                };
                let store = if pass_on {
                    NodeStore::Relay(store)
                } else {
                    NodeStore::Leaf(store)
                };
                let hooks = ReceiverHooks {
                    pass_on,
                    ..ReceiverHooks::default()
                };
                Driven::new(Receiver::new(r, store), hooks, node_addr(i))
            });
            let tx = if t == 0 {
                sender.geometry = base_cfg.geometry;
                sender.session = SessionId((seed as u32) | 1);
                let source = RelaySource::full(content, block_size);
                let tx = Sender::new(sender.clone(), manifest.clone(), source)?;
                Some(Driven::new(tx, SenderHooks::default(), control_addr(i)))
            } else {
                None
            };
            let node = Node {
                tier: t,
                parent,
                home: parent,
                failovers: 0,
                rx,
                tx,
                relay: (t > 0 && t < tiers).then_some(sender),
                control: control_addr(i),
                failure: None,
            };
            let id = net.add_host(node, &[node_addr(i), control_addr(i)], host_seed(seed, i));
            if let Some(p) = parent {
                net.join(id, p);
            }
            net.start_at(id, late_at(i).unwrap_or(Duration::ZERO));
        }
    }
    Ok(net)
}

/// Checks every expected node against the source; returns the transfer's window (the
/// server's first data unit to the last expected node's completion).
fn check_nodes(
    cfg: &RelayConfig,
    net: &Net<Node>,
    dead: &[bool],
    content: &[Vec<u8>],
    report: &mut RelayReport,
    failures: &mut Vec<String>,
) -> (Instant, Instant) {
    let tiers = cfg.fanout.len();
    let first = net
        .host(HostId(0))
        .tx
        .as_ref()
        .and_then(|t| t.hooks.first_data);
    let mut last_complete: Option<Instant> = None;
    for (HostId(i), n) in net.hosts() {
        if let Some(f) = &n.failure {
            failures.push(format!("node {i}: {f}"));
        }
        let Some(rx) = &n.rx else { continue };
        let (NodeStore::Leaf(store) | NodeStore::Relay(store)) = rx.ep.store();
        report.bad_done_blocks += store.bad_blocks();
        if n.tier == tiers {
            report.leaf_nack_bytes += rx.ep.stats().nack_bytes;
            report.leaf_receipt_bytes += rx.ep.stats().receipt_bytes;
        }
        if dead[i] {
            continue;
        }
        report.expected += 1;
        if !rx.ep.is_complete() {
            failures.push(format!(
                "node {i} (tier {}) incomplete: {}/{} blocks, {} fail-overs",
                n.tier,
                rx.ep.blocks_done(),
                rx.ep.total_blocks(),
                n.failovers
            ));
            continue;
        }
        if let Some(t) = rx.hooks.complete_at {
            last_complete = Some(last_complete.map_or(t, |l: Instant| l.max(t)));
        }
        match store.equals(content) {
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
    let base = first.unwrap_or_else(Instant::now);
    let window = match (first, last_complete) {
        (Some(f), Some(l)) => (f, l.max(f)),
        _ => (base, base),
    };
    report.completion = window.1.saturating_duration_since(window.0);
    window
}

/// What each tier's senders sent and heard.
fn report_tiers(
    cfg: &RelayConfig,
    net: &Net<Node>,
    dead: &[bool],
    (window_start, window_end): (Instant, Instant),
    report: &mut RelayReport,
) {
    let window = report.completion.as_secs_f64().max(1e-9);
    for t in 0..cfg.fanout.len() {
        let mut tr = TierReport {
            tier: t,
            ..TierReport::default()
        };
        let mut rates = Vec::new();
        let mut sending = 0u64;
        for i in cfg.tier(t) {
            let n = net.host(HostId(i));
            tr.senders += 1;
            let Some(tx) = &n.tx else {
                if !dead[i] {
                    rates.push(0.0);
                }
                continue;
            };
            let s = tx.ep.stats();
            let units = s.data_units + s.repair_units + s.xor_units + s.parity_units;
            tr.units += units;
            sending += u64::from(units > 0);
            tr.parity_units += s.parity_units;
            tr.nack_packets += s.nacks;
            tr.nack_bytes += s.nack_bytes;
            tr.receipt_packets += s.receipts;
            tr.receipt_bytes += s.receipt_bytes;
            let control_in = &tx.hooks.control_in;
            tr.control_in += control_in.len() as u64;
            if !dead[i] {
                let inside = control_in
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
}
