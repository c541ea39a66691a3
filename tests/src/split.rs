//! A deterministic simulator of split mode (docs/wire.md §14): no multicast. The server sends
//! each unit by unicast to one member; members forward copies as their plan and the unit's
//! copy flags say ([`blockcast_proto::copies`]), exactly as the node does (flags rewritten in
//! the datagram with `set_copy_flags`). Members sit in zones with their own delay to the
//! server and between each other; every datagram on every link is lost independently with
//! the configured probability; members can die mid-transfer. Runs on the one driver
//! ([`crate::driver`]): the zones are its link model.
//!
//! Virtual time, one seed: a failing run is replayed exactly by its seed
//! (`BLOCKCAST_SIM_SEED`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockcast_proto::wire::{ReceiverId, SessionId};
use blockcast_proto::{
    Geometry, Receiver, ReceiverConfig, Sender, SenderConfig, SplitConfig, SplitMember,
};

use crate::content::{self, ContentSource};
use crate::driver::{host_seed, Driven, HostId, Links, Net, Path};
use crate::hosts::{ReceiverHooks, SenderHooks, ServerHost, SimHost, UntilServerDone};
use crate::net::LinkFaults;
use crate::socket::ReceiverHost;
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
    /// Upload bandwidth of each member and of the server, bytes per second (`None`:
    /// unlimited): what a host sends leaves one datagram after another at that rate.
    pub member_upload: Option<u64>,
    pub server_upload: Option<u64>,
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
            member_upload: None,
            server_upload: None,
            store: StoreKind::Memory,
            time_limit: Duration::from_secs(60),
            sender,
            receiver,
        }
    }

    /// The copy tree at scale: `members` in three zones of 256-byte units, 512 units per
    /// block, a 256 KiB object, 1 % loss on every link (server, copies, feedback), member 7
    /// dying at 40 ms.
    pub fn at_scale(seed: u64, members: usize) -> Self {
        let mut cfg = SplitSimConfig::small(seed, 3, members / 3, 0.01);
        cfg.geometry.units_per_block = 512;
        cfg.geometry.max_parity = 256;
        cfg.object_size = 256 << 10;
        cfg.store = StoreKind::Hashed;
        cfg.deaths = vec![(7, Duration::from_millis(40))];
        cfg.time_limit = Duration::from_secs(120);
        cfg
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
    /// Copies members forwarded, in all and by the member that forwarded most.
    pub forwarded: u64,
    pub busiest_forwarded: u64,
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

/// The zones as links: host 0 is the server, host i + 1 member i.
struct ZoneLinks {
    /// Each host's zone (index into `zones`); None for the server.
    zone: Vec<Option<usize>>,
    zones: Vec<ZoneSpec>,
    inter_zone: Duration,
    faults: LinkFaults,
    member_upload: Option<u64>,
    server_upload: Option<u64>,
}

impl Links for ZoneLinks {
    fn delay(&self, from: HostId, to: HostId) -> Duration {
        match (self.zone[from.0], self.zone[to.0]) {
            (None, Some(z)) | (Some(z), None) => self.zones[z].server_delay,
            (Some(a), Some(b)) if a == b => self.zones[a].peer_delay,
            (Some(_), Some(_)) => self.inter_zone,
            (None, None) => Duration::ZERO,
        }
    }

    fn faults(&self, _from: HostId, _to: HostId, _path: Path) -> &LinkFaults {
        &self.faults
    }

    fn upload(&self, from: HostId) -> Option<u64> {
        match self.zone[from.0] {
            None => self.server_upload,
            Some(_) => self.member_upload,
        }
    }
}

type SplitHost = SimHost<ContentSource, SimStore>;

/// Runs one split-mode session to its end (or the time limit) and reports.
pub fn run_split(cfg: &SplitSimConfig) -> SplitReport {
    let wall = Instant::now();
    let mut rng = SimRng::new(cfg.seed);
    let content = Arc::new(content::random_content(&mut rng, &[cfg.object_size]));
    let block_size = cfg.geometry.block_size();
    let manifest = content::manifest(cfg.geometry, &content);
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
    let source = ContentSource::new(content.clone(), block_size);
    let sender = match Sender::new(scfg, manifest.clone(), source) {
        Ok(s) => s,
        Err(e) => {
            report.failures.push(format!("sender config rejected: {e}"));
            return report;
        }
    };
    let mut zone = vec![None];
    for (z, spec) in cfg.zones.iter().enumerate() {
        zone.extend(std::iter::repeat_n(Some(z), spec.members));
    }
    let links = ZoneLinks {
        zone,
        zones: cfg.zones.clone(),
        inter_zone: cfg.inter_zone_delay,
        faults: LinkFaults::lossy(cfg.loss),
        member_upload: cfg.member_upload,
        server_upload: cfg.server_upload,
    };
    let base = Instant::now();
    let mut net: Net<SplitHost> = Net::new(base, links, 1);
    let server = ServerHost::new(sender, SenderHooks::default(), SERVER, false);
    let members_in_all = cfg.zones.iter().map(|z| z.members).sum();
    let seed = host_seed(cfg.seed, members_in_all);
    let server = net.add_host(SimHost::Server(Box::new(server)), &[SERVER], seed);
    net.start_at(server, Duration::ZERO);
    let hashes = content::block_hashes(&manifest);
    let mut members = Vec::new();
    for spec in &cfg.zones {
        for _ in 0..spec.members {
            let i = members.len();
            let mut rcfg = cfg.receiver.clone();
            rcfg.id = ReceiverId(i as u64 + 1);
            rcfg.seed = cfg.seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            rcfg.split = Some(SplitMember {
                server: SERVER,
                zone: spec.zone,
            });
            let store = SimStore::new(cfg.store, hashes.clone(), block_size);
            let hooks = ReceiverHooks {
                forward: true,
                ..ReceiverHooks::default()
            };
            let rx = Driven::new(Receiver::new(rcfg, store), hooks, member_addr(i));
            let id = net.add_host(
                SimHost::Receiver(ReceiverHost::new(rx, None, None)),
                &[member_addr(i)],
                host_seed(cfg.seed, i),
            );
            net.start_at(id, Duration::ZERO);
            members.push((id, spec.zone));
        }
    }
    report.members = members.len();
    for &(i, t) in &cfg.deaths {
        net.die_at(members[i].0, t);
    }
    if let Err(halt) = net.run(cfg.time_limit, &mut UntilServerDone(server)) {
        report
            .failures
            .push(halt.describe(cfg.time_limit, "sender"));
    }
    let Some(server) = net.host(server).server() else {
        unreachable!("host 0 is the server")
    };
    let tx = &server.sender;
    report.server_units = tx.hooks.units;
    report.nacks = tx.hooks.nacks;
    if tx.hooks.group_sends > 0 {
        report.failures.push("split mode sent to the group".into());
    }
    if let Some((epoch, cells)) = tx.ep.split_plan() {
        report.plan_epoch = epoch;
        report.direct_zone = cells
            .first()
            .and_then(|c| c.first())
            .and_then(|id| members.get(id.0 as usize - 1))
            .map(|m| m.1);
    }
    let mut last = None::<Instant>;
    for (i, &(id, zone)) in members.iter().enumerate() {
        let Some(m) = net.host(id).receiver() else {
            continue;
        };
        report.forwarded += m.hooks.forwarded;
        report.busiest_forwarded = report.busiest_forwarded.max(m.hooks.forwarded);
        report.blocks_failed += m.ep.stats().blocks_failed;
        report.bad_done_blocks += m.ep.store().bad_blocks();
        if let Some(f) = &m.hooks.failure {
            report.failures.push(format!("member {i}: {f}"));
        }
        if m.ep.plan_epoch().is_some() {
            report.members_with_plan += 1;
        }
        if cfg.deaths.iter().any(|(d, _)| *d == i) {
            continue;
        }
        report.expected += 1;
        if !m.ep.is_complete() {
            report.failures.push(format!(
                "member {i} (zone {zone}) incomplete: {}/{} blocks",
                m.ep.blocks_done(),
                m.ep.total_blocks()
            ));
            continue;
        }
        match m.ep.store().equals(&content) {
            Ok(()) => report.identical += 1,
            Err(e) => report.failures.push(format!("member {i}: {e}")),
        }
        if let Some(t) = m.hooks.complete_at {
            last = Some(last.map_or(t, |l| l.max(t)));
        }
    }
    report.time = last.map_or(Duration::ZERO, |t| t.duration_since(base));
    report.wall = wall.elapsed();
    report
}
