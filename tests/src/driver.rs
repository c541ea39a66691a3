//! The simulator's one driver: a virtual network of hosts that runs any set of sans-IO
//! endpoints on a virtual clock (quinn's `Pair`, grown to many hosts and multicast).
//!
//! - A **host** owns one or more addresses and runs one or more endpoints ([`Host`]); the
//!   generic adapter [`Driven`] runs any [`Endpoint`] as one, with the scenario's [`Hooks`]
//!   around it (what to do with its events, where its units' payload bytes come from).
//! - A datagram sent to [`Destination::Peer`] goes to the host owning that address; the host
//!   is told which of its addresses it arrived at. [`Destination::Group`] and
//!   [`Destination::Stripe`] are multicast: a copy goes to every host subscribed to the
//!   sender's group ([`Net::join`]).
//! - **Links** ([`Links`], given by the scenario) have a delay and faults per (from, to) pair.
//!   A multicast copy draws its faults from the *receiving* host's generator when it
//!   arrives; a unicast datagram draws from its link's own generator (one per (from, to),
//!   kept by the sending host) when it is sent. Either way a host's draws happen while that
//!   host runs, so a run is the same whatever the number of threads delivering to large
//!   groups; and what befalls the datagrams on one link depends only on what was sent on
//!   that link, not on the order an endpoint sends to different peers (the sender's split
//!   mode fans out to its members in hash-map order).
//! - **Time**: at each instant, every datagram due is handed to its host first (a host takes
//!   all that arrived at that instant), then every host that got input or whose timer came
//!   runs once, in host order: [`Host::handle_timeout`], then [`Host::poll`] (its
//!   datagrams onto the network, its events to the scenario), then its one timer is re-armed
//!   from [`Host::poll_timeout`]. This is the order the [`Endpoint`] contract asks of a
//!   driver.
//! - **Life**: a host is not started, alive, or gone (it died, or left politely after one
//!   last run). Only live hosts get datagrams and timers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockcast_proto::{Destination, Endpoint, Transmit, UnitRef};

use crate::fanout;
use crate::net::{self, Arrival, BurstState, LinkFaults, SimRng};
use crate::queue::{self, Clock, EventQueue, Halt, Timers};

/// Groups at least this large (members in host order) are delivered to on several threads;
/// so many hosts running at one instant run on several threads.
const PARALLEL_FROM: usize = 512;

/// The seed of the `n`-th host of a run seeded with `seed`.
pub(crate) fn host_seed(seed: u64, n: usize) -> u64 {
    seed ^ (n as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F)
}

/// A host in the network, by the order it was added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct HostId(pub usize);

/// Which way a datagram crosses a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Path {
    /// A copy of a datagram sent to a group.
    Multicast,
    /// A datagram sent to one address.
    Unicast,
}

/// The links between hosts, as the scenario builds them.
pub(crate) trait Links: Sync {
    /// One-way delay from `from` to `to`.
    fn delay(&self, from: HostId, to: HostId) -> Duration;
    /// What may happen to a datagram on the way.
    fn faults(&self, from: HostId, to: HostId, path: Path) -> &LinkFaults;
    /// The host's upload bandwidth, bytes per second (`None`: unlimited). Its datagrams leave
    /// one after another at that rate, in the order it sends them, before their link's delay.
    fn upload(&self, _from: HostId) -> Option<u64> {
        None
    }
}

/// A datagram arriving at a host.
#[derive(Clone, Copy)]
pub(crate) struct Datagram<'a> {
    /// Where it was sent: one of the host's addresses, or the group it joined.
    pub to: Destination,
    pub from: SocketAddr,
    pub bytes: &'a [u8],
}

/// What a host runs: one endpoint ([`Driven`]) or a composition of them.
pub(crate) trait Host: Send {
    /// A datagram arrived.
    fn handle_datagram(&mut self, now: Instant, d: Datagram<'_>, io: &mut Io<'_>);
    /// The host runs: fire whatever timers of its endpoints are due.
    fn handle_timeout(&mut self, now: Instant);
    /// Send what is due and act on events.
    fn poll(&mut self, now: Instant, io: &mut Io<'_>);
    /// When the host must run next (`None`: only a datagram wakes it).
    fn poll_timeout(&self) -> Option<Instant>;
    /// A polite leave: the host runs once more afterwards, then it is gone.
    fn leave(&mut self, _now: Instant) {}
}

/// What a scenario adds around an endpoint it runs with [`Driven`].
pub(crate) trait Hooks<E: Endpoint> {
    /// A datagram arrived at the endpoint, whose address is `me`, before it takes it (a
    /// split member forwards copies here).
    fn on_datagram(
        &mut self,
        _now: Instant,
        _ep: &E,
        _me: SocketAddr,
        _bytes: &[u8],
        _io: &mut Io<'_>,
    ) {
    }
    /// One event of the endpoint's.
    fn on_event(&mut self, now: Instant, ep: &mut E, event: E::Event);
    /// The payload bytes of a data unit the endpoint sends (from its block source).
    fn payload<'e>(&self, ep: &'e E, unit: UnitRef) -> &'e [u8];
    /// A whole datagram it sends, just before it leaves.
    fn on_send(&mut self, _now: Instant, _t: &Transmit, _bytes: &[u8]) {}
    /// A polite leave.
    fn leave(&mut self, _ep: &mut E) {}
}

/// The generic adapter: one endpoint, its hooks, and the address it sends from.
pub(crate) struct Driven<E, H> {
    pub ep: E,
    pub hooks: H,
    pub addr: SocketAddr,
}

impl<E: Endpoint, H: Hooks<E>> Driven<E, H> {
    pub(crate) fn new(ep: E, hooks: H, addr: SocketAddr) -> Self {
        Driven { ep, hooks, addr }
    }

    /// Its events first (so that what a hook answers, a verified block, goes out in this
    /// run), then every datagram due; again after anything was sent, which may raise events.
    fn drive(&mut self, now: Instant, io: &mut Io<'_>) {
        loop {
            while let Some(ev) = self.ep.poll_event() {
                self.hooks.on_event(now, &mut self.ep, ev);
            }
            let mut sent = false;
            while let Some(t) = self.ep.poll_transmit(now, io.buf) {
                let mut bytes = Vec::with_capacity(t.datagram_len());
                bytes.extend_from_slice(&io.buf[..t.len]);
                if let Some(unit) = t.payload {
                    bytes.extend_from_slice(self.hooks.payload(&self.ep, unit));
                }
                self.hooks.on_send(now, &t, &bytes);
                io.send(self.addr, t.destination, bytes.into());
                sent = true;
            }
            if !sent {
                return;
            }
        }
    }
}

impl<E: Endpoint + Send, H: Hooks<E> + Send> Host for Driven<E, H> {
    fn handle_datagram(&mut self, now: Instant, d: Datagram<'_>, io: &mut Io<'_>) {
        self.hooks
            .on_datagram(now, &self.ep, self.addr, d.bytes, io);
        self.ep.handle_datagram(now, d.from, d.bytes);
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.ep.poll_timeout().is_some_and(|t| t <= now) {
            self.ep.handle_timeout(now);
        }
    }

    fn poll(&mut self, now: Instant, io: &mut Io<'_>) {
        self.drive(now, io);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.ep.poll_timeout()
    }

    fn leave(&mut self, _now: Instant) {
        self.hooks.leave(&mut self.ep);
    }
}

/// What a run decides beyond the network: when it is over, and what only it can do after a
/// host ran (move a receiver whose source fell silent to another group).
pub(crate) trait Scenario<H: Host> {
    fn is_done(&self, net: &Net<H>) -> bool;
    /// After `host` ran at `now` (hosts in order).
    fn after(&mut self, _net: &mut Net<H>, _now: Instant, _host: HostId) {}
}

/// Where a host is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Life {
    NotStarted,
    Alive,
    Gone,
}

#[derive(Clone, Copy, Debug)]
enum Change {
    Start,
    Die,
    Leave,
}

enum Ev {
    /// A datagram arriving at one host: unicast, or a multicast copy held back.
    Deliver {
        to: HostId,
        at: Destination,
        from: SocketAddr,
        bytes: Arc<[u8]>,
    },
    /// A datagram `owner` sent to its group at `sent`, reaching the nearest member now.
    Multicast {
        owner: HostId,
        at: Destination,
        from: SocketAddr,
        sent: Instant,
        bytes: Arc<[u8]>,
    },
    Life(HostId, Change),
}

struct Slot<H> {
    host: H,
    life: Life,
    /// The host's next wake-up as queued in the timers.
    scheduled: Option<Instant>,
    /// Has input at this instant, or its timer came: it runs before the clock moves.
    touched: bool,
    draws: Draws,
}

/// A host's own draws.
struct Draws {
    seed: u64,
    /// The faults of the multicast copies it gets, and its own uses.
    rng: SimRng,
    burst: BurstState,
    /// The unicast links it sends on, by destination, made when first used.
    links: HashMap<HostId, Link>,
    /// With an upload bandwidth: when its uplink is free again.
    uplink_free: Option<Instant>,
}

/// One unicast link's own draws.
struct Link {
    rng: SimRng,
    burst: BurstState,
}

impl Link {
    fn new(seed: u64, to: HostId) -> Self {
        Link {
            rng: SimRng::new(seed ^ (to.0 as u64 + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93)),
            burst: BurstState::default(),
        }
    }
}

/// The network as every host sees it while running (read-only during a step).
struct Wire {
    addrs: HashMap<SocketAddr, HostId>,
    /// Each host's group: the hosts subscribed to what it multicasts, in join order.
    groups: Vec<Vec<HostId>>,
    links: Box<dyn Links>,
}

/// What hosts asked for while running, applied afterwards in host order (so that hosts can
/// run on several threads and a run stays the same).
#[derive(Default)]
struct Effects {
    events: Vec<(Instant, Ev)>,
    timers: Vec<(Instant, HostId)>,
    touched: Vec<HostId>,
}

/// A running host's way out to the network.
pub(crate) struct Io<'a> {
    now: Instant,
    host: HostId,
    wire: &'a Wire,
    draws: &'a mut Draws,
    fx: &'a mut Effects,
    /// Scratch space for [`Endpoint::poll_transmit`].
    pub(crate) buf: &'a mut [u8],
}

impl<'a> Io<'a> {
    fn new(
        now: Instant,
        host: HostId,
        wire: &'a Wire,
        draws: &'a mut Draws,
        fx: &'a mut Effects,
        buf: &'a mut [u8],
    ) -> Self {
        Io {
            now,
            host,
            wire,
            draws,
            fx,
            buf,
        }
    }

    /// When a datagram of `len` bytes sent now has left the host: now, or after the ones
    /// before it on a host with an upload bandwidth.
    fn departure(&mut self, len: usize) -> Instant {
        let Some(rate) = self.wire.links.upload(self.host).filter(|&r| r > 0) else {
            return self.now;
        };
        let start = self.draws.uplink_free.map_or(self.now, |t| t.max(self.now));
        let done = start + Duration::from_nanos((len as u64).saturating_mul(1_000_000_000) / rate);
        self.draws.uplink_free = Some(done);
        done
    }

    /// Sends `bytes` from the host's address `from`: to one address, or to its group.
    pub(crate) fn send(&mut self, from: SocketAddr, to: Destination, bytes: Arc<[u8]>) {
        let now = self.departure(bytes.len());
        let (host, wire) = (self.host, self.wire);
        match to {
            Destination::Group | Destination::Stripe(_) => {
                // The copies leave together and reach the nearest member first.
                let members = &wire.groups[host.0];
                let Some(nearest) = members.iter().map(|&m| wire.links.delay(host, m)).min() else {
                    return;
                };
                let ev = Ev::Multicast {
                    owner: host,
                    at: to,
                    from,
                    sent: now,
                    bytes,
                };
                self.fx.events.push((now + nearest, ev));
            }
            Destination::Peer(addr) => {
                let Some(&dest) = wire.addrs.get(&addr) else {
                    return;
                };
                let delay = wire.links.delay(host, dest);
                let faults = wire.links.faults(host, dest, Path::Unicast);
                let seed = self.draws.seed;
                let link = (self.draws.links)
                    .entry(dest)
                    .or_insert_with(|| Link::new(seed, dest));
                let fx = &mut *self.fx;
                net::through_faults(faults, &mut link.burst, &mut link.rng, &bytes, |arrival| {
                    let (extra, bytes) = match arrival {
                        Arrival::Now(b) => (Duration::ZERO, b),
                        Arrival::Later(extra, b) => (extra, b),
                    };
                    let ev = Ev::Deliver {
                        to: dest,
                        at: to,
                        from,
                        bytes,
                    };
                    fx.events.push((now + delay + extra, ev));
                });
            }
        }
    }

    /// The running host's own generator.
    pub(crate) fn rng(&mut self) -> &mut SimRng {
        &mut self.draws.rng
    }
}

/// The network: hosts, their addresses and groups, the links, and the virtual clock.
pub(crate) struct Net<H> {
    slots: Vec<Slot<H>>,
    wire: Wire,
    events: EventQueue<Ev>,
    timers: Timers,
    touched: Vec<HostId>,
    buf: Vec<u8>,
    threads: usize,
    start: Instant,
}

impl<H: Host> Net<H> {
    /// An empty network whose clock starts at `start`; `threads` deliver to large groups
    /// (0: one per core).
    pub(crate) fn new(start: Instant, links: impl Links + 'static, threads: usize) -> Self {
        Net {
            slots: Vec::new(),
            wire: Wire {
                addrs: HashMap::new(),
                groups: Vec::new(),
                links: Box::new(links),
            },
            events: EventQueue::new(),
            timers: Timers::new(),
            touched: Vec::new(),
            buf: vec![0u8; 65_536],
            threads: fanout::threads(threads),
            start,
        }
    }

    /// Adds a host that owns `addrs`, its draws seeded from `seed`; it starts with
    /// [`Net::start_at`].
    pub(crate) fn add_host(&mut self, host: H, addrs: &[SocketAddr], seed: u64) -> HostId {
        let id = HostId(self.slots.len());
        for &a in addrs {
            self.wire.addrs.insert(a, id);
        }
        self.wire.groups.push(Vec::new());
        self.slots.push(Slot {
            host,
            life: Life::NotStarted,
            scheduled: None,
            touched: false,
            draws: Draws {
                seed,
                rng: SimRng::new(seed),
                burst: BurstState::default(),
                links: HashMap::new(),
                uplink_free: None,
            },
        });
        id
    }

    pub(crate) fn start_at(&mut self, host: HostId, after: Duration) {
        self.life_at(host, after, Change::Start);
    }

    /// The host falls silent: it neither receives nor sends again.
    pub(crate) fn die_at(&mut self, host: HostId, after: Duration) {
        self.life_at(host, after, Change::Die);
    }

    /// The host leaves politely ([`Host::leave`]), runs once more, and is gone.
    pub(crate) fn leave_at(&mut self, host: HostId, after: Duration) {
        self.life_at(host, after, Change::Leave);
    }

    fn life_at(&mut self, host: HostId, after: Duration, change: Change) {
        self.events.push(self.start + after, Ev::Life(host, change));
    }

    /// `host` gets what `owner` multicasts from now on.
    pub(crate) fn join(&mut self, host: HostId, owner: HostId) {
        self.wire.groups[owner.0].push(host);
    }

    pub(crate) fn leave_group(&mut self, host: HostId, owner: HostId) {
        self.wire.groups[owner.0].retain(|&h| h != host);
    }

    pub(crate) fn host(&self, id: HostId) -> &H {
        &self.slots[id.0].host
    }

    pub(crate) fn host_mut(&mut self, id: HostId) -> &mut H {
        &mut self.slots[id.0].host
    }

    pub(crate) fn life(&self, id: HostId) -> Life {
        self.slots[id.0].life
    }

    pub(crate) fn hosts(&self) -> impl Iterator<Item = (HostId, &H)> {
        self.slots
            .iter()
            .enumerate()
            .map(|(i, s)| (HostId(i), &s.host))
    }

    /// Runs the host again before the clock moves (the scenario changed it).
    pub(crate) fn touch(&mut self, id: HostId) {
        let slot = &mut self.slots[id.0];
        if slot.life == Life::Alive && !slot.touched {
            slot.touched = true;
            self.touched.push(id);
        }
    }

    /// The driving loop: runs until the scenario is done, or says why it stopped (nothing
    /// left to do, past `limit` after the start, or stuck at one instant).
    pub(crate) fn run(
        &mut self,
        limit: Duration,
        scenario: &mut impl Scenario<H>,
    ) -> Result<(), Halt> {
        let mut clock = Clock::new(self.start, self.start + limit);
        loop {
            if scenario.is_done(self) {
                return Ok(());
            }
            let next =
                queue::earliest([self.events.peek_time(), self.timers.peek().map(|(t, _)| t)]);
            let now = clock.advance(next)?;
            while let Some(ev) = self.events.pop_due(now) {
                self.input(now, ev);
            }
            while let Some((t, i)) = self.timers.pop_due(now) {
                let slot = &mut self.slots[i];
                if slot.scheduled == Some(t) {
                    slot.scheduled = None;
                }
                self.touch(HostId(i));
            }
            while !self.touched.is_empty() {
                for id in self.run_touched(now) {
                    scenario.after(self, now, id);
                }
            }
        }
    }

    fn input(&mut self, now: Instant, ev: Ev) {
        let mut fx = Effects::default();
        match ev {
            Ev::Deliver {
                to,
                at,
                from,
                bytes,
            } => {
                let Net {
                    slots, wire, buf, ..
                } = self;
                let slot = &mut slots[to.0];
                if slot.life == Life::Alive {
                    take(wire, slot, to, now, at, from, &bytes, buf, &mut fx);
                }
            }
            Ev::Multicast {
                owner,
                at,
                from,
                sent,
                bytes,
            } => {
                for mut fx in self.fan_out(now, owner, at, from, sent, &bytes) {
                    self.apply(&mut fx);
                }
            }
            Ev::Life(id, change) => {
                let Net {
                    slots, wire, buf, ..
                } = self;
                let slot = &mut slots[id.0];
                match (change, slot.life) {
                    (Change::Start, Life::NotStarted) => {
                        slot.life = Life::Alive;
                        self.touch(id);
                    }
                    (Change::Leave, Life::Alive) => {
                        slot.host.leave(now);
                        run_host(wire, slot, id, now, buf, &mut fx);
                        slot.life = Life::Gone;
                    }
                    (Change::Die | Change::Leave, _) => slot.life = Life::Gone,
                    (Change::Start, _) => {}
                }
            }
        }
        self.apply(&mut fx);
    }

    /// One multicast datagram to every live member of `owner`'s group. Returns the effects
    /// in member order.
    fn fan_out(
        &mut self,
        now: Instant,
        owner: HostId,
        at: Destination,
        from: SocketAddr,
        sent: Instant,
        bytes: &Arc<[u8]>,
    ) -> Vec<Effects> {
        // Out of the wire while it is delivered to (no host multicasts to another's group).
        let group = std::mem::take(&mut self.wire.groups[owner.0]);
        let results = self.each_host(&group, |wire, id, slot, buf, fx| {
            if slot.life != Life::Alive {
                return;
            }
            // The member's own delay beyond the nearest member's, and its own faults.
            let behind = (sent + wire.links.delay(owner, id)).saturating_duration_since(now);
            let faults = wire.links.faults(owner, id, Path::Multicast);
            let mut arrivals: [Option<Arrival>; 2] = [None, None];
            let mut n = 0;
            let draws = &mut slot.draws;
            net::through_faults(faults, &mut draws.burst, &mut draws.rng, bytes, |a| {
                arrivals[n] = Some(a);
                n += 1;
            });
            for a in arrivals.into_iter().flatten() {
                let (extra, b) = match a {
                    Arrival::Now(b) => (behind, b),
                    Arrival::Later(x, b) => (behind + x, b),
                };
                if extra.is_zero() {
                    take(wire, slot, id, now, at, from, &b, buf, fx);
                } else {
                    let ev = Ev::Deliver {
                        to: id,
                        at,
                        from,
                        bytes: b,
                    };
                    fx.events.push((now + extra, ev));
                }
            }
        });
        self.wire.groups[owner.0] = group;
        results
    }

    /// Runs every touched host once, in host order. Returns the hosts that ran.
    fn run_touched(&mut self, now: Instant) -> Vec<HostId> {
        let mut ids = std::mem::take(&mut self.touched);
        ids.sort_unstable();
        let mut results = self.each_host(&ids, |wire, id, slot, buf, fx| {
            run_host(wire, slot, id, now, buf, fx);
        });
        for fx in &mut results {
            self.apply(fx);
        }
        ids
    }

    /// Calls `f` for each host of `ids` in that order; on threads when there are many and
    /// they ascend (each thread takes a run of hosts with its own buffer and effects). The
    /// effects come back in the order of `ids` either way, so applying them in that order
    /// does the same whatever the number of threads.
    fn each_host(
        &mut self,
        ids: &[HostId],
        f: impl Fn(&Wire, HostId, &mut Slot<H>, &mut [u8], &mut Effects) + Sync,
    ) -> Vec<Effects> {
        let Net {
            slots,
            wire,
            buf,
            threads,
            ..
        } = self;
        let wire = &*wire;
        let ascending = ids.windows(2).all(|w| w[0] < w[1]);
        if *threads > 1 && ids.len() >= PARALLEL_FROM && ascending {
            let (lo, hi) = (ids[0].0, ids[ids.len() - 1].0);
            return fanout::in_parallel(&mut slots[lo..=hi], lo, *threads, |i, slot, buf, fx| {
                if ids.binary_search(&HostId(i)).is_ok() {
                    f(wire, HostId(i), slot, buf, fx);
                }
            });
        }
        let mut fx = Effects::default();
        for &id in ids {
            f(wire, id, &mut slots[id.0], buf, &mut fx);
        }
        vec![fx]
    }

    fn apply(&mut self, fx: &mut Effects) {
        for (at, ev) in fx.events.drain(..) {
            self.events.push(at, ev);
        }
        for (t, id) in fx.timers.drain(..) {
            self.timers.push(t, id.0);
        }
        self.touched.append(&mut fx.touched);
    }
}

/// A datagram reaches a live host now: it takes it, and runs before the clock moves.
#[allow(clippy::too_many_arguments)]
fn take<H: Host>(
    wire: &Wire,
    slot: &mut Slot<H>,
    id: HostId,
    now: Instant,
    at: Destination,
    from: SocketAddr,
    bytes: &[u8],
    buf: &mut [u8],
    fx: &mut Effects,
) {
    let mut io = Io::new(now, id, wire, &mut slot.draws, fx, buf);
    let d = Datagram {
        to: at,
        from,
        bytes,
    };
    slot.host.handle_datagram(now, d, &mut io);
    if !slot.touched {
        slot.touched = true;
        fx.touched.push(id);
    }
}

/// One run of a host: its timers, what it sends, its events, its next wake-up.
fn run_host<H: Host>(
    wire: &Wire,
    slot: &mut Slot<H>,
    id: HostId,
    now: Instant,
    buf: &mut [u8],
    fx: &mut Effects,
) {
    slot.touched = false;
    if slot.life != Life::Alive {
        return;
    }
    slot.host.handle_timeout(now);
    let mut io = Io::new(now, id, wire, &mut slot.draws, fx, buf);
    slot.host.poll(now, &mut io);
    if let Some(t) = slot.host.poll_timeout() {
        if queue::rearm(&mut slot.scheduled, t) {
            fx.timers.push((t, id));
        }
    }
}
