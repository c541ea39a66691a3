//! A deterministic simulator of blockcast: one server and many receivers ([`run`]), a tree
//! of relays ([`run_relays`]), split mode ([`run_split`]).
//!
//! All three run on one driver ([`driver`]): a virtual network of hosts, each running the
//! real sans-IO endpoints ([`Sender`], [`Receiver`], [`blockcast_proto::StripePass`]) on a
//! virtual clock. Multicast is a fan-out with independent (or bursty) loss per receiver;
//! seeded duplication, reordering, extra delay and corruption act on each copy; feedback to
//! the server crosses a lossy unicast link. Everything random comes from one seed, so a
//! failing run is replayed exactly by its seed (`BLOCKCAST_SIM_SEED`).
//!
//! Time is virtual: a run of 10,000 receivers that takes a second of protocol time costs a
//! few seconds of CPU, not a second of waiting.

mod content;
mod driver;
mod fanout;
mod hosts;
mod net;
mod queue;
mod relay;
mod socket;
mod split;
mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockcast_proto::wire::{BlockIndex, ObjectId, ReceiverId, SessionId, UnitIndex};
use blockcast_proto::{Geometry, RateLimits, Receiver, ReceiverConfig, Sender, SenderConfig};

use content::ContentSource;
use driver::{host_seed, Driven, HostId, Net};
use hosts::{MulticastLinks, ReceiverHooks, SenderHooks, ServerHost, SimHost, UntilServerDone};
pub use net::{LinkFaults, LossModel, SimRng};
pub use relay::{run_relays, FailOver, RelayConfig, RelayReport, TierReport};
use socket::ReceiverHost;
pub use socket::{ReceiverLimits, SocketStats};
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
    /// Sender pacing, datagram bytes per second (where `--rate auto` starts, with
    /// `rate_control`).
    pub rate: u64,
    /// `--rate auto`: the sender's controller, within these bounds (`None`: a fixed rate).
    pub rate_control: Option<RateLimits>,
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
    /// than one, the server runs the sender with `external_first_pass` and one real
    /// [`blockcast_proto::StripePass`] per stripe, each starting with a random skew of up to
    /// half a millisecond, paced at the sender's first-pass rate and reporting progress to it.
    pub stripes: u16,
    /// The first pass is sent by "data threads" (real [`blockcast_proto::StripePass`]es)
    /// even with one stripe, as the node sends it; with more than one stripe it always is.
    pub external_first_pass: bool,
    /// One receiver asks for blocks first once it is accepted: (receiver, object, block, unit,
    /// count). The report says when it got the first of them and when the first pass got there.
    pub priority: Option<(usize, ObjectId, BlockIndex, UnitIndex, u32)>,
    /// Threads that deliver multicast copies to receivers (0: one per core). The run is the
    /// same whatever the number.
    pub threads: usize,
    /// Give up at this much virtual time.
    pub time_limit: Duration,
    /// Each receiver's data socket and CPU: a finite buffer emptied at a service rate,
    /// reported to the receiver as the node reports its socket (`None`: every datagram is
    /// taken the instant it arrives, nothing ever overflows).
    pub receiver_limits: Option<ReceiverLimits>,
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
            rate_control: None,
            delay: Duration::from_millis(1),
            data_faults: LinkFaults::lossy(loss),
            control_faults: LinkFaults::lossy(loss),
            late: Vec::new(),
            deaths: Vec::new(),
            leaves: Vec::new(),
            store: StoreKind::Memory,
            stripes: 1,
            external_first_pass: false,
            priority: None,
            threads: 0,
            time_limit: Duration::from_secs(60),
            receiver_limits: None,
            sender,
            receiver,
        }
    }

    /// A session set up the way the node sets one up (engine/node `serve.rs`, `receive/`):
    /// the first pass from a data thread ([`blockcast_proto::StripePass`], one stripe),
    /// pacing in 64 KiB quanta with a 500 us burst, `--rate auto` within `limits` (starting
    /// at `limits.start`), announces every 100 ms, receipt notices every 50 ms, blocks
    /// verified outside the state machine; 100 us one-way delay (a LAN, or loopback), no
    /// loss. Add [`SimConfig::receiver_limits`] for receivers that can be outrun.
    pub fn node_like(
        seed: u64,
        receivers: usize,
        object: usize,
        geometry: Geometry,
        limits: RateLimits,
    ) -> Self {
        let mut c = SimConfig::small(seed, receivers, 0.0);
        c.objects = vec![object];
        c.geometry = geometry;
        c.rate = limits.start;
        c.rate_control = Some(limits);
        c.delay = Duration::from_micros(100);
        c.external_first_pass = true;
        c.store = StoreKind::Hashed;
        c.time_limit = Duration::from_secs(600);
        c.sender = SenderConfig {
            geometry,
            burst: Duration::from_micros(500),
            pace_quantum: 65_536,
            announce_interval: Duration::from_millis(100),
            waiting_announce_interval: Some(Duration::from_millis(10)),
            initial_grtt: Duration::from_millis(2),
            min_receivers: receivers,
            max_wait: Duration::from_secs(5),
            ..SenderConfig::default()
        };
        c.receiver = ReceiverConfig {
            min_receipt_interval: Duration::from_millis(50),
            external_verify: true,
            ..ReceiverConfig::default()
        };
        c
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
    /// From the first data unit to the last first-pass unit (the tail is what follows).
    pub first_pass: Duration,
    /// The first pass alone at the configured rate: the lossless lower bound.
    pub ideal: Duration,
    pub minimal_units: u64,
    pub data_units: u64,
    pub repair_units: u64,
    /// XOR repairs (each one datagram carrying two to four units).
    pub xor_units: u64,
    pub parity_units: u64,
    /// Of those, parity added to repairs in the tail for the repairs' own loss.
    pub tail_parity: u64,
    /// Originals and XOR repairs sent twice in a small group's tail.
    pub tail_copies: u64,
    pub data_bytes: u64,
    pub parity_bytes: u64,
    pub nack_packets: u64,
    pub nack_bytes: u64,
    pub receipt_packets: u64,
    pub receipt_bytes: u64,
    /// Repair units the server's per-member repair budget refused, and members it dropped as
    /// slow (wire.md §12.12).
    pub repair_denied: u64,
    pub dropped_slow: u64,
    /// The sender finished and told the group.
    pub sender_finished: bool,
    /// Problems found; empty when the run passed.
    pub failures: Vec<String>,
    /// With `SimConfig::priority`: when the asking receiver verified the first block it asked
    /// for, and when the first pass sent that block's first unit (from the first data unit).
    pub priority_verified: Option<(Duration, Duration)>,
    /// The sender's rate at the end (datagram bytes per second): `rate`, or where the
    /// controller took it with `rate_control`.
    pub final_rate: u64,
    /// First-pass units each stripe sent, with an external first pass (`stripes` > 1).
    pub stripe_units: Vec<u64>,
    /// With `SimConfig::receiver_limits`: each receiver's socket, in receiver order.
    pub sockets: Vec<SocketStats>,
    /// Duplicate units the receivers got, in all (sent again though already held).
    pub duplicates: u64,
    /// The most the server (sender and stripes) sent to the group in any 200 ms, bytes per
    /// second.
    pub peak_rate: u64,
    /// Wall-clock time the simulation took.
    pub wall: Duration,
}

impl SimReport {
    /// Datagrams the receivers' sockets dropped for lack of buffer space, in all.
    pub fn socket_drops(&self) -> u64 {
        self.sockets.iter().map(|s| s.dropped).sum()
    }
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

type PlainHost = SimHost<ContentSource, SimStore>;

/// Runs one simulated session to its end (or the time limit) and reports.
pub fn run(cfg: &SimConfig) -> SimReport {
    let wall = Instant::now();
    let mut rng = SimRng::new(cfg.seed);
    let content = Arc::new(content::random_content(&mut rng, &cfg.objects));
    let block_size = cfg.geometry.block_size();
    let manifest = content::manifest(cfg.geometry, &content);
    let mut scfg = cfg.sender.clone();
    scfg.geometry = cfg.geometry;
    scfg.rate = cfg.rate;
    scfg.rate_control = cfg.rate_control;
    scfg.control = SERVER;
    scfg.session = SessionId((cfg.seed as u32) | 1);
    scfg.stripes = cfg.stripes.max(1);
    let external = cfg.stripes > 1 || cfg.external_first_pass;
    scfg.external_first_pass = external;
    let source = ContentSource::new(content.clone(), block_size);
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
    let links = MulticastLinks {
        delay: cfg.delay,
        data: cfg.data_faults.clone(),
        control: cfg.control_faults.clone(),
    };
    let start = Instant::now();
    let mut net: Net<PlainHost> = Net::new(start, links, cfg.threads);
    let hooks = SenderHooks {
        watch: cfg.priority.map(|(_, o, b, _, _)| (o, b)),
        ..SenderHooks::default()
    };
    let server = ServerHost::new(sender, hooks, SERVER, external);
    // The server's draws: as if it were receiver N (the receivers keep theirs as N grows).
    let seed = host_seed(cfg.seed, cfg.receivers);
    let server = net.add_host(SimHost::Server(Box::new(server)), &[SERVER], seed);
    net.start_at(server, Duration::ZERO);
    let hashes = content::block_hashes(&manifest);
    let mut receivers = Vec::with_capacity(cfg.receivers);
    for i in 0..cfg.receivers {
        let mut rcfg = cfg.receiver.clone();
        rcfg.id = ReceiverId(i as u64 + 1);
        rcfg.seed = cfg.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let store = SimStore::new(cfg.store, hashes.clone(), block_size);
        let hooks = ReceiverHooks {
            ask: cfg
                .priority
                .filter(|p| p.0 == i)
                .map(|(_, o, b, u, c)| (o, b, u, c)),
            ..ReceiverHooks::default()
        };
        let addr = receiver_addr(i);
        let rx = Driven::new(Receiver::new(rcfg, store), hooks, addr);
        let stall = first_stall(cfg, start, i);
        let host = SimHost::Receiver(ReceiverHost::new(rx, cfg.receiver_limits, stall));
        let id = net.add_host(host, &[addr], host_seed(cfg.seed, i));
        net.join(id, server);
        let start = cfg.late.iter().find(|(r, _)| *r == i).map(|(_, t)| *t);
        net.start_at(id, start.unwrap_or(Duration::ZERO));
        receivers.push(id);
    }
    let mut expected = vec![true; cfg.receivers];
    for &(i, t) in &cfg.deaths {
        expected[i] = false;
        net.die_at(receivers[i], t);
    }
    for &(i, t) in &cfg.leaves {
        expected[i] = false;
        net.leave_at(receivers[i], t);
    }
    let mut report = SimReport::default();
    if let Err(halt) = net.run(cfg.time_limit, &mut UntilServerDone(server)) {
        report
            .failures
            .push(halt.describe(cfg.time_limit, "sender"));
    }
    report.wall = wall.elapsed();
    let Some(server) = net.host(server).server() else {
        unreachable!("host 0 is the server")
    };
    check_receivers(
        cfg,
        &net,
        &receivers,
        &expected,
        &content,
        server,
        &mut report,
    );
    count_sends(cfg, &content, server, &mut report);
    report
}

/// Checks every expected receiver against the source and notes when the last finished.
/// When receiver `i`'s thread first stalls ([`ReceiverLimits::stalls`]): `(i + 1) / N` of the
/// way into the period, so that the receivers take turns.
fn first_stall(cfg: &SimConfig, start: Instant, i: usize) -> Option<Instant> {
    let (every, _) = cfg.receiver_limits?.stalls?;
    Some(start + every.mul_f64((i + 1) as f64 / cfg.receivers.max(1) as f64))
}

fn check_receivers(
    cfg: &SimConfig,
    net: &Net<PlainHost>,
    receivers: &[HostId],
    expected: &[bool],
    content: &[Vec<u8>],
    server: &ServerHost<ContentSource>,
    report: &mut SimReport,
) {
    let first = server.first_data();
    let mut last_complete: Option<Instant> = None;
    for (i, &id) in receivers.iter().enumerate() {
        let Some(r) = net.host(id).receiver() else {
            continue;
        };
        let rx = &r.ep;
        report.sockets.extend(net.host(id).socket_stats());
        report.duplicates += rx.stats().duplicates;
        report.bad_done_blocks += rx.store().bad_blocks();
        report.blocks_failed += rx.stats().blocks_failed;
        if !expected[i] {
            continue;
        }
        report.expected += 1;
        if !rx.is_complete() {
            if std::env::var("BLOCKCAST_SIM_DEBUG").is_ok() {
                eprintln!("receiver {i}: {}", rx.debug_blocks());
                eprintln!("sender: {}", server.sender.ep.debug_state());
            }
            report.failures.push(format!(
                "receiver {i} incomplete: {}/{} blocks",
                rx.blocks_done(),
                rx.total_blocks()
            ));
            continue;
        }
        if let Some(t) = r.hooks.complete_at {
            last_complete = Some(last_complete.map_or(t, |l: Instant| l.max(t)));
        }
        match rx.store().equals(content) {
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
    if let (Some(first), Some(last)) = (first, last_complete) {
        report.completion = last.saturating_duration_since(first);
    }
    if let (Some(first), Some(end)) = (first, server.last_pass_unit()) {
        report.first_pass = end.saturating_duration_since(first);
    }
    if let (Some(first), Some(p)) = (first, cfg.priority) {
        let asked = net.host(receivers[p.0]).receiver();
        if let Some(got) = asked.and_then(|r| r.hooks.asked_verified_at) {
            let reached = server
                .pass_reached()
                .map_or(Duration::MAX, |t| t.saturating_duration_since(first));
            report.priority_verified = Some((got.saturating_duration_since(first), reached));
        }
    }
}

/// What the server and its stripes sent and heard.
fn count_sends(
    cfg: &SimConfig,
    content: &[Vec<u8>],
    server: &ServerHost<ContentSource>,
    report: &mut SimReport,
) {
    let tx = &server.sender.ep;
    let s = tx.stats();
    let stripes: (u64, u64) = server
        .stripes
        .iter()
        .map(|p| (p.ep.stats().units, p.ep.stats().bytes))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    report.seed = cfg.seed;
    report.receivers = cfg.receivers;
    report.minimal_units = content::minimal_units(content, cfg.geometry.unit_size);
    report.ideal = content::ideal_time(content, cfg.geometry.unit_size, cfg.rate, cfg.delay);
    report.data_units = s.data_units + stripes.0;
    report.repair_units = s.repair_units;
    report.xor_units = s.xor_units;
    report.parity_units = s.parity_units;
    report.tail_parity = s.tail_parity;
    report.tail_copies = s.tail_copies;
    report.data_bytes = s.data_bytes + stripes.1;
    report.parity_bytes = s.parity_bytes;
    report.nack_packets = s.nacks;
    report.nack_bytes = s.nack_bytes;
    report.receipt_packets = s.receipts;
    report.receipt_bytes = s.receipt_bytes;
    report.repair_denied = s.repair_denied;
    report.dropped_slow = s.dropped_slow;
    report.sender_finished = tx.is_finished();
    report.final_rate = tx.rate();
    report.stripe_units = server.stripe_units();
    report.peak_rate = server.peak_rate(Duration::from_millis(200));
    if !report.sender_finished {
        report.failures.push("sender did not finish".into());
    }
}
