//! A deterministic simulator of split mode (docs/wire.md §14): no multicast. The server sends
//! each unit by unicast to one member; members forward copies as their plan and the unit's
//! copy flags say, exactly as the node does (flags rewritten in the datagram). Members sit in
//! zones with their own delay to the server and between each other; every datagram on every
//! link is lost independently with the configured probability; members can die mid-transfer.
//!
//! Virtual time, one seed: a failing run is replayed exactly by its seed
//! (`BLOCKCAST_SIM_SEED`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use blockcast_proto::wire::{set_copy_flags, CopyFlags, ReceiverId, SessionId, UnitPacket};
use blockcast_proto::{
    Destination, Geometry, Receiver, ReceiverConfig, ReceiverEvent, Sender, SenderConfig,
    SliceSource, SplitConfig, SplitMember,
};

use crate::content;
use crate::queue::{self, EventQueue};
use crate::{SimRng, SimStore, StoreKind};

/// One zone of members.
#[derive(Clone, Debug)]
pub struct ZoneSpec {
    pub zone: u16,
    pub members: usize,
    /// One-way delay between the server and this zone's members.
    pub server_delay: Duration,
    /// One-way delay between two members of this zone.
    pub peer_delay: Duration,
}

/// One simulated split-mode session.
#[derive(Clone, Debug)]
pub struct SplitSimConfig {
    pub seed: u64,
    pub zones: Vec<ZoneSpec>,
    /// One-way delay between members of different zones.
    pub inter_zone_delay: Duration,
    pub object_size: usize,
    pub geometry: Geometry,
    /// Independent loss of every datagram on every link (server, copies, feedback).
    pub loss: f64,
    /// Members (global index, zones in order) that fall silent at a time.
    pub deaths: Vec<(usize, Duration)>,
    pub store: StoreKind,
    pub time_limit: Duration,
    pub sender: SenderConfig,
    pub receiver: ReceiverConfig,
}

impl SplitSimConfig {
    /// `zones` zones of `per_zone` members, the z-th (numbered `10 + zones - 1 - z`) at
    /// (1 + 2z) ms from the server, 0.5 ms
    /// between members of a zone and 3 ms between zones; one 256 KiB object of 256-byte units.
    pub fn small(seed: u64, zones: u16, per_zone: usize, loss: f64) -> Self {
        let geometry = Geometry {
            unit_size: 256,
            units_per_block: 128,
            max_parity: 128,
        };
        let members = usize::from(zones) * per_zone;
        let sender = SenderConfig {
            geometry,
            rate: 16_000_000,
            announce_interval: Duration::from_millis(100),
            initial_grtt: Duration::from_millis(5),
            min_receivers: members,
            max_wait: Duration::from_secs(2),
            receiver_timeout: Duration::from_secs(2),
            split: Some(SplitConfig::default()),
            ..SenderConfig::default()
        };
        let receiver = ReceiverConfig {
            min_receipt_interval: Duration::from_millis(100),
            join_interval: Duration::from_millis(50),
            idle_timeout: Duration::from_secs(5),
            ..ReceiverConfig::default()
        };
        SplitSimConfig {
            seed,
            zones: (0..zones)
                .map(|z| ZoneSpec {
                    // The nearest zone has the highest number: the planner must measure to
                    // serve it directly.
                    zone: 10 + (zones - 1 - z),
                    members: per_zone,
                    server_delay: Duration::from_micros(1000 + 2000 * u64::from(z)),
                    peer_delay: Duration::from_micros(500),
                })
                .collect(),
            inter_zone_delay: Duration::from_millis(3),
            object_size: 256 << 10,
            geometry,
            loss,
            deaths: Vec::new(),
            store: StoreKind::Memory,
            time_limit: Duration::from_secs(60),
            sender,
            receiver,
        }
    }

    /// Applies `BLOCKCAST_SIM_SEED` if set (to replay a printed failing seed).
    pub fn with_env_seed(mut self) -> Self {
        self.seed = crate::env_seed(self.seed);
        self
    }
}

/// What a split run did.
#[derive(Clone, Debug, Default)]
pub struct SplitReport {
    pub seed: u64,
    pub members: usize,
    /// Members expected to finish (all but the dead).
    pub expected: usize,
    /// Expected members whose store equals the source.
    pub identical: usize,
    /// Virtual time until the last expected member was complete.
    pub time: Duration,
    /// Data and parity units the server sent (first pass and repairs).
    pub server_units: u64,
    /// Units in the object.
    pub object_units: u64,
    /// Copies members forwarded.
    pub forwarded: u64,
    /// NACK packets the server got.
    pub nacks: u64,
    /// The newest plan epoch, and the zone of the first cell (served directly).
    pub plan_epoch: u32,
    pub direct_zone: Option<u16>,
    /// Members that ever received a Plan before the end.
    pub members_with_plan: usize,
    pub blocks_failed: u64,
    pub bad_done_blocks: u64,
    pub failures: Vec<String>,
    pub wall: Duration,
}

impl SplitReport {
    /// Panics with the seed and what failed, unless every expected member is complete,
    /// verified and byte-identical.
    pub fn assert_ok(&self) {
        assert!(
            self.failures.is_empty() && self.identical == self.expected && self.bad_done_blocks == 0,
            "split sim seed {} failed (replay with BLOCKCAST_SIM_SEED={}): {}/{} identical, {} bad blocks: {:?}",
            self.seed,
            self.seed,
            self.identical,
            self.expected,
            self.bad_done_blocks,
            &self.failures[..self.failures.len().min(10)]
        );
    }
}

const SERVER: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::new(10, 255, 255, 254),
    9000,
));

fn member_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 7000))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum At {
    Server,
    Member(usize),
}

enum Ev {
    Deliver {
        to: At,
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    Timer(At),
    Die(usize),
}

struct Member {
    rx: Receiver<SimStore>,
    zone: usize,
    alive: bool,
    scheduled: Option<Instant>,
    complete_at: Option<Instant>,
}

struct Sim<'a> {
    cfg: &'a SplitSimConfig,
    rng: SimRng,
    base: Instant,
    sender: Sender<SliceSource<'a>>,
    sender_scheduled: Option<Instant>,
    members: Vec<Member>,
    by_addr: HashMap<SocketAddr, usize>,
    events: EventQueue<Ev>,
    buf: Vec<u8>,
    report: SplitReport,
}

impl Sim<'_> {
    fn push(&mut self, at: Instant, ev: Ev) {
        self.events.push(at, ev);
    }

    fn delay(&self, from: At, to: At) -> Duration {
        let zone = |a: At| match a {
            At::Server => None,
            At::Member(i) => Some(self.members[i].zone),
        };
        match (zone(from), zone(to)) {
            (None, Some(z)) | (Some(z), None) => self.cfg.zones[z].server_delay,
            (Some(a), Some(b)) if a == b => self.cfg.zones[a].peer_delay,
            (Some(_), Some(_)) => self.cfg.inter_zone_delay,
            (None, None) => Duration::ZERO,
        }
    }

    /// Sends a datagram over a lossy link.
    fn send(&mut self, now: Instant, from: At, to: At, bytes: Vec<u8>) {
        if self.rng.chance(self.cfg.loss) {
            return;
        }
        let from_addr = match from {
            At::Server => SERVER,
            At::Member(i) => member_addr(i),
        };
        let at = now + self.delay(from, to);
        self.push(
            at,
            Ev::Deliver {
                to,
                from: from_addr,
                bytes,
            },
        );
    }

    fn schedule_member(&mut self, i: usize) {
        let m = &self.members[i];
        if !m.alive {
            return;
        }
        if let Some(t) = m.rx.poll_timeout() {
            if queue::rearm(&mut self.members[i].scheduled, t) {
                self.push(t, Ev::Timer(At::Member(i)));
            }
        }
    }

    fn schedule_sender(&mut self) {
        if let Some(t) = self.sender.poll_timeout() {
            if queue::rearm(&mut self.sender_scheduled, t) {
                self.push(t, Ev::Timer(At::Server));
            }
        }
    }

    fn drain_member(&mut self, now: Instant, i: usize) {
        while let Some(t) = self.members[i].rx.poll_transmit(now, &mut self.buf) {
            if let Destination::Peer(addr) = t.destination {
                let bytes = self.buf[..t.len].to_vec();
                let to = if addr == SERVER {
                    At::Server
                } else {
                    match self.by_addr.get(&addr) {
                        Some(&j) => At::Member(j),
                        None => continue,
                    }
                };
                self.send(now, At::Member(i), to, bytes);
            }
        }
        while let Some(e) = self.members[i].rx.poll_event() {
            match e {
                ReceiverEvent::Complete => self.members[i].complete_at = Some(now),
                ReceiverEvent::StoreFailed(e) => self
                    .report
                    .failures
                    .push(format!("member {i}: store failed: {e:?}")),
                _ => {}
            }
        }
        self.schedule_member(i);
    }

    fn drain_sender(&mut self, now: Instant) {
        while let Some(t) = self.sender.poll_transmit(now, &mut self.buf) {
            let mut bytes = self.buf[..t.len].to_vec();
            if let Some(u) = t.payload {
                bytes.extend_from_slice(u.bytes(self.sender.source()));
            }
            match t.destination {
                Destination::Peer(addr) => {
                    if let Some(&j) = self.by_addr.get(&addr) {
                        if UnitPacket::new_checked(&bytes[..]).is_ok() {
                            self.report.server_units += 1;
                        }
                        self.send(now, At::Server, At::Member(j), bytes);
                    }
                }
                Destination::Group | Destination::Stripe(_) => self
                    .report
                    .failures
                    .push("split mode sent to the group".into()),
            }
        }
        while self.sender.poll_event().is_some() {}
        self.schedule_sender();
    }

    /// A member got a datagram: forward copies first (as the node does), then handle it.
    fn member_gets(&mut self, now: Instant, i: usize, from: SocketAddr, mut bytes: Vec<u8>) {
        if !self.members[i].alive {
            return;
        }
        let copy = UnitPacket::new_checked(&bytes[..])
            .ok()
            .filter(|u| Some(u.session()) == self.members[i].rx.session())
            .map(|u| u.copy_flags());
        if let Some(copy) = copy.filter(|c| c.any()) {
            let targets = self.members[i].rx.copy_targets(copy);
            let zone: Vec<SocketAddr> = targets.zone.to_vec();
            let next = targets.next;
            self.members[i].rx.handle_datagram(now, from, &bytes);
            for addr in zone {
                if let Some(&j) = self.by_addr.get(&addr) {
                    let mut b = bytes.clone();
                    let _ = set_copy_flags(&mut b, CopyFlags::NONE);
                    self.report.forwarded += 1;
                    self.send(now, At::Member(i), At::Member(j), b);
                }
            }
            if let Some(&j) = next.and_then(|a| self.by_addr.get(&a)) {
                let _ = set_copy_flags(&mut bytes, CopyFlags::ALL);
                self.report.forwarded += 1;
                self.send(now, At::Member(i), At::Member(j), bytes);
            }
        } else {
            self.members[i].rx.handle_datagram(now, from, &bytes);
        }
        self.drain_member(now, i);
    }

    fn run(&mut self) {
        let limit = self.base + self.cfg.time_limit;
        for i in 0..self.members.len() {
            self.drain_member(self.base, i);
        }
        self.drain_sender(self.base);
        while let Some((at, ev)) = self.events.pop() {
            if at > limit {
                self.report
                    .failures
                    .push(format!("time limit {:?} reached", self.cfg.time_limit));
                break;
            }
            match ev {
                Ev::Deliver {
                    to: At::Server,
                    from,
                    bytes,
                } => {
                    if let Ok(blockcast_proto::wire::Packet::Nack(_)) =
                        blockcast_proto::wire::Packet::parse(&bytes)
                    {
                        self.report.nacks += 1;
                    }
                    self.sender.handle_datagram(at, from, &bytes);
                    self.drain_sender(at);
                }
                Ev::Deliver {
                    to: At::Member(i),
                    from,
                    bytes,
                } => self.member_gets(at, i, from, bytes),
                Ev::Timer(At::Server) => {
                    self.sender_scheduled = None;
                    if self.sender.poll_timeout().is_some_and(|t| t <= at) {
                        self.sender.handle_timeout(at);
                    }
                    self.drain_sender(at);
                }
                Ev::Timer(At::Member(i)) => {
                    self.members[i].scheduled = None;
                    if !self.members[i].alive {
                        continue;
                    }
                    if self.members[i].rx.poll_timeout().is_some_and(|t| t <= at) {
                        self.members[i].rx.handle_timeout(at);
                    }
                    self.drain_member(at, i);
                }
                Ev::Die(i) => self.members[i].alive = false,
            }
            if self.sender.is_finished() {
                break;
            }
        }
    }
}

/// Runs one split-mode session to its end (or the time limit) and reports.
pub fn run_split(cfg: &SplitSimConfig) -> SplitReport {
    let wall = Instant::now();
    let mut rng = SimRng::new(cfg.seed);
    let content = content::random_content(&mut rng, &[cfg.object_size]);
    let block_size = cfg.geometry.block_size();
    let manifest = content::manifest(cfg.geometry, &content);
    let source = SliceSource::new(vec![&content[0][..]], block_size);
    let mut scfg = cfg.sender.clone();
    scfg.geometry = cfg.geometry;
    scfg.control = SERVER;
    scfg.session = SessionId((cfg.seed as u32) | 1);
    scfg.external_first_pass = false;
    let mut report = SplitReport {
        seed: cfg.seed,
        object_units: (cfg.object_size as u64).div_ceil(u64::from(cfg.geometry.unit_size)),
        ..SplitReport::default()
    };
    let sender = match Sender::new(scfg, manifest.clone(), source) {
        Ok(s) => s,
        Err(e) => {
            report.failures.push(format!("sender config rejected: {e}"));
            return report;
        }
    };
    let hashes = content::block_hashes(&manifest);
    let mut members = Vec::new();
    let mut by_addr = HashMap::new();
    for (z, spec) in cfg.zones.iter().enumerate() {
        for _ in 0..spec.members {
            let i = members.len();
            let mut rcfg = cfg.receiver.clone();
            rcfg.id = ReceiverId(i as u64 + 1);
            rcfg.seed = cfg.seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            rcfg.split = Some(SplitMember {
                server: SERVER,
                zone: spec.zone,
            });
            by_addr.insert(member_addr(i), i);
            members.push(Member {
                rx: Receiver::new(rcfg, SimStore::new(cfg.store, hashes.clone(), block_size)),
                zone: z,
                alive: true,
                scheduled: None,
                complete_at: None,
            });
        }
    }
    report.members = members.len();
    let base = Instant::now();
    let mut sim = Sim {
        cfg,
        rng,
        base,
        sender,
        sender_scheduled: None,
        members,
        by_addr,
        events: EventQueue::new(),
        buf: vec![0u8; 65_536],
        report,
    };
    for &(i, t) in &cfg.deaths {
        sim.push(base + t, Ev::Die(i));
    }
    sim.run();
    let mut report = std::mem::take(&mut sim.report);
    if let Some((epoch, cells)) = sim.sender.split_plan() {
        report.plan_epoch = epoch;
        report.direct_zone = cells
            .first()
            .and_then(|c| c.first())
            .map(|id| cfg.zones[sim.members[id.0 as usize - 1].zone].zone);
    }
    let mut last = None::<Instant>;
    for (i, m) in sim.members.iter().enumerate() {
        report.blocks_failed += m.rx.stats().blocks_failed;
        report.bad_done_blocks += m.rx.store().bad_blocks();
        if m.rx.plan_epoch().is_some() {
            report.members_with_plan += 1;
        }
        if cfg.deaths.iter().any(|(d, _)| *d == i) {
            continue;
        }
        report.expected += 1;
        if !m.rx.is_complete() {
            report.failures.push(format!(
                "member {i} (zone {}) incomplete: {}/{} blocks",
                cfg.zones[m.zone].zone,
                m.rx.blocks_done(),
                m.rx.total_blocks()
            ));
            continue;
        }
        match m.rx.store().equals(&content) {
            Ok(()) => report.identical += 1,
            Err(e) => report.failures.push(format!("member {i}: {e}")),
        }
        if let Some(t) = m.complete_at {
            last = Some(last.map_or(t, |l| l.max(t)));
        }
    }
    report.time = last.map_or(Duration::ZERO, |t| t.duration_since(base));
    report.wall = wall.elapsed();
    report
}
