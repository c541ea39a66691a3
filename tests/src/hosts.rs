//! The hosts the scenarios are made of, on the one driver ([`crate::driver`]): what a
//! simulated receiver does with its events, what a server counts of what it sends, a server
//! with its striped first pass, and the links of a multicast network.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use blockcast_proto::wire::{
    set_copy_flags, BlockIndex, LeaveReason, ObjectId, Packet, UnitIndex, UnitPacket,
};
use blockcast_proto::{
    copies, BlockSource, BlockStore, Destination, Endpoint, FirstPassProgress, Receiver,
    ReceiverEvent, Sender, SenderEvent, StripePass, Transmit, UnitRef,
};

use crate::driver::{Datagram, Driven, Hooks, Host, HostId, Io, Links, Net, Path, Scenario};
use crate::net::LinkFaults;
use crate::socket::{ReceiverHost, SocketStats};

/// What a simulated receiver does with its events, as the node would: verifies blocks
/// inline when asked to (the node does it on another core), asks for priority blocks once
/// accepted, and notes what the scenario reports.
#[derive(Default)]
pub(crate) struct ReceiverHooks {
    pub complete_at: Option<Instant>,
    /// Blocks to ask for first once accepted, and when the first of them was verified.
    pub ask: Option<(ObjectId, BlockIndex, UnitIndex, u32)>,
    pub asked_verified_at: Option<Instant>,
    /// Keep the blocks verified, for the host to pass on (a relay).
    pub pass_on: bool,
    pub verified: Vec<(ObjectId, BlockIndex)>,
    pub manifest_ready: bool,
    /// Its source fell silent (taken by the scenario).
    pub lost: bool,
    /// Split mode: forward copies of units as the plan says, before taking them.
    pub forward: bool,
    pub forwarded: u64,
    pub failure: Option<String>,
}

impl<S: BlockStore> Hooks<Receiver<S>> for ReceiverHooks {
    fn on_datagram(
        &mut self,
        _now: Instant,
        rx: &Receiver<S>,
        me: SocketAddr,
        bytes: &[u8],
        io: &mut Io<'_>,
    ) {
        if !self.forward {
            return;
        }
        let Some(copy) = UnitPacket::new_checked(bytes)
            .ok()
            .filter(|u| Some(u.session()) == rx.session())
            .map(|u| u.copy_flags())
            .filter(|c| c.any())
        else {
            return;
        };
        for (to, flags) in copies(rx.copy_targets(copy)) {
            let mut b = bytes.to_vec();
            let _ = set_copy_flags(&mut b, flags);
            self.forwarded += 1;
            io.send(me, Destination::Peer(to), b.into());
        }
    }

    fn on_event(&mut self, now: Instant, rx: &mut Receiver<S>, event: ReceiverEvent) {
        match event {
            ReceiverEvent::Complete => {
                self.complete_at.get_or_insert(now);
            }
            ReceiverEvent::VerifyBlock {
                object,
                block,
                expected,
                rebuild,
            } => {
                let len = rx
                    .manifest()
                    .and_then(|m| m.block_len(object, block.0))
                    .unwrap_or(0);
                let bytes = rx.store_mut().block_mut(object, block, len);
                let ok = rebuild.is_none_or(|r| r.apply(bytes))
                    && blake3::hash(bytes).as_bytes() == &expected;
                rx.handle_verified(now, object, block, ok);
            }
            ReceiverEvent::Accepted { .. } => {
                if let Some((o, b, u, c)) = self.ask {
                    rx.request_priority(o, b, u, c);
                }
            }
            ReceiverEvent::BlockVerified { object, block } => {
                if self
                    .ask
                    .is_some_and(|(o, b, _, _)| (o, b) == (object, block))
                {
                    self.asked_verified_at.get_or_insert(now);
                }
                if self.pass_on {
                    self.verified.push((object, block));
                }
            }
            ReceiverEvent::ManifestReady => self.manifest_ready = true,
            ReceiverEvent::ServerLost => self.lost = true,
            ReceiverEvent::StoreFailed(e) => self.failure = Some(format!("store failed: {e:?}")),
            _ => {}
        }
    }

    /// A receiver sends no data units.
    fn payload<'e>(&self, _rx: &'e Receiver<S>, _unit: UnitRef) -> &'e [u8] {
        &[]
    }

    fn leave(&mut self, rx: &mut Receiver<S>) {
        rx.leave(LeaveReason::Stopped);
    }
}

/// What a server (or one of its stripes) counts of what it sends and hears.
#[derive(Default)]
pub(crate) struct SenderHooks {
    /// When it sent its first data unit.
    pub first_data: Option<Instant>,
    /// The block asked for first, and when the first pass sent its first unit.
    pub watch: Option<(ObjectId, BlockIndex)>,
    pub pass_reached: Option<Instant>,
    /// When it sent its latest first-pass unit (neither a repair nor parity).
    pub last_pass_unit: Option<Instant>,
    /// Units and parity units sent (datagrams that parse as units).
    pub units: u64,
    /// Datagrams sent to the group.
    pub group_sends: u64,
    /// When each group datagram left, and its bytes.
    pub group_log: Vec<(Instant, u32)>,
    /// When control datagrams arrived, and how many were NACKs.
    pub control_in: Vec<Instant>,
    pub nacks: u64,
}

impl SenderHooks {
    fn count_send(&mut self, now: Instant, t: &Transmit, bytes: &[u8]) {
        if matches!(t.destination, Destination::Group | Destination::Stripe(_)) {
            self.group_sends += 1;
            self.group_log.push((now, bytes.len() as u32));
        }
        let Ok(unit) = UnitPacket::new_checked(bytes) else {
            return;
        };
        self.units += 1;
        if t.payload.is_none() {
            return;
        }
        self.first_data.get_or_insert(now);
        if !unit.is_repair() && !unit.is_parity() {
            self.last_pass_unit = Some(now);
        }
        if !unit.is_repair() && self.watch == Some((unit.object(), unit.block())) {
            self.pass_reached.get_or_insert(now);
        }
    }
}

impl<S: BlockSource> Hooks<Sender<S>> for SenderHooks {
    fn on_datagram(
        &mut self,
        now: Instant,
        _tx: &Sender<S>,
        _me: SocketAddr,
        bytes: &[u8],
        _io: &mut Io<'_>,
    ) {
        self.control_in.push(now);
        if let Ok(Packet::Nack(_)) = Packet::parse(bytes) {
            self.nacks += 1;
        }
    }

    /// The node reports these; the simulator measures from what was sent.
    fn on_event(&mut self, _now: Instant, _tx: &mut Sender<S>, _event: SenderEvent) {}

    fn payload<'e>(&self, tx: &'e Sender<S>, unit: UnitRef) -> &'e [u8] {
        unit.bytes(tx.source())
    }

    fn on_send(&mut self, now: Instant, t: &Transmit, bytes: &[u8]) {
        self.count_send(now, t, bytes);
    }
}

impl<S: BlockSource> Hooks<StripePass<S>> for SenderHooks {
    fn on_event(&mut self, _now: Instant, _p: &mut StripePass<S>, _event: ()) {}

    fn payload<'e>(&self, p: &'e StripePass<S>, unit: UnitRef) -> &'e [u8] {
        unit.bytes(p.source())
    }

    fn on_send(&mut self, now: Instant, t: &Transmit, bytes: &[u8]) {
        self.count_send(now, t, bytes);
    }
}

/// Data threads are not in lock step: each stripe starts up to this long after the first
/// pass may begin (drawn from the server's generator), and keeps that offset.
pub(crate) const STRIPE_START_SKEW: Duration = Duration::from_micros(500);

/// How often `BLOCKCAST_SIM_TRACE` prints the sender's state when its rate holds.
const TRACE_EVERY: Duration = Duration::from_millis(25);

/// A server: the [`Sender`], and with an external first pass one [`StripePass`] per stripe
/// (the node's data threads), made once the sender is sending, paced at
/// [`Sender::first_pass_rate`] and reporting their progress back.
pub(crate) struct ServerHost<S> {
    pub sender: Driven<Sender<S>, SenderHooks>,
    /// The sender was made with `external_first_pass`: the stripes send the first pass.
    external: bool,
    pub stripes: Vec<Driven<StripePass<S>, SenderHooks>>,
    /// When each stripe starts (its data thread's skew).
    starts: Vec<Instant>,
    /// The sender's rate each time it changed, and every [`TRACE_EVERY`] between: (when,
    /// bytes per second).
    pub rate_trace: Vec<(Instant, u64)>,
}

impl<S: BlockSource + Clone> ServerHost<S> {
    pub(crate) fn new(
        sender: Sender<S>,
        hooks: SenderHooks,
        addr: SocketAddr,
        external: bool,
    ) -> Self {
        ServerHost {
            sender: Driven::new(sender, hooks, addr),
            external,
            stripes: Vec::new(),
            starts: Vec::new(),
            rate_trace: Vec::new(),
        }
    }

    /// Makes the stripes once the first pass may begin.
    fn start_stripes(&mut self, now: Instant, io: &mut Io<'_>) {
        let tx = &self.sender.ep;
        if !self.external || !self.stripes.is_empty() || !tx.is_sending() {
            return;
        }
        // Stripe by stripe until the sender has no more.
        let passes: Vec<_> = (0..).map_while(|s| tx.stripe_pass(s)).collect();
        let watch = self.sender.hooks.watch;
        for p in passes {
            let skew = STRIPE_START_SKEW.mul_f64(io.rng().unit());
            self.starts.push(now + skew);
            let hooks = SenderHooks {
                watch,
                ..SenderHooks::default()
            };
            self.stripes.push(Driven::new(p, hooks, self.sender.addr));
        }
    }

    /// The whole first pass as the stripes sent it: (least block not sent by all, bytes).
    fn progress(&self) -> FirstPassProgress {
        FirstPassProgress {
            sent_before: self
                .stripes
                .iter()
                .map(|s| s.ep.sent_before())
                .min()
                .unwrap_or(0),
            bytes: self.stripes.iter().map(|s| s.ep.stats().bytes).sum(),
        }
    }

    /// First-pass units each stripe sent.
    pub(crate) fn stripe_units(&self) -> Vec<u64> {
        self.stripes.iter().map(|s| s.ep.stats().units).collect()
    }

    /// When the last first-pass unit left, from the sender or a stripe.
    pub(crate) fn last_pass_unit(&self) -> Option<Instant> {
        self.all_hooks().filter_map(|h| h.last_pass_unit).max()
    }

    /// When the first data unit left, from the sender or a stripe.
    pub(crate) fn first_data(&self) -> Option<Instant> {
        self.all_hooks().filter_map(|h| h.first_data).min()
    }

    /// When the first pass sent the first unit of the block asked for first.
    pub(crate) fn pass_reached(&self) -> Option<Instant> {
        self.all_hooks().filter_map(|h| h.pass_reached).min()
    }

    /// The most bytes the server sent to the group in any `window` (sliding), per second.
    pub(crate) fn peak_rate(&self, window: Duration) -> u64 {
        let mut log: Vec<(Instant, u32)> = self
            .all_hooks()
            .flat_map(|h| h.group_log.iter().copied())
            .collect();
        log.sort_unstable_by_key(|&(t, _)| t);
        let (mut from, mut bytes, mut peak) = (0, 0u64, 0u64);
        for (i, &(t, len)) in log.iter().enumerate() {
            bytes += u64::from(len);
            while log[from].0 + window <= t {
                bytes -= u64::from(log[from].1);
                from += 1;
            }
            if i > 0 {
                peak = peak.max(bytes);
            }
        }
        (peak as f64 / window.as_secs_f64()) as u64
    }

    fn all_hooks(&self) -> impl Iterator<Item = &SenderHooks> {
        std::iter::once(&self.sender.hooks).chain(self.stripes.iter().map(|s| &s.hooks))
    }
}

impl<S: BlockSource + Clone + Send> Host for ServerHost<S> {
    fn handle_datagram(&mut self, now: Instant, d: Datagram<'_>, io: &mut Io<'_>) {
        self.sender.handle_datagram(now, d, io);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.sender.handle_timeout(now);
    }

    fn poll(&mut self, now: Instant, io: &mut Io<'_>) {
        self.sender.poll(now, io);
        let rate = self.sender.ep.rate();
        let changed = self.rate_trace.last().is_none_or(|&(_, r)| r != rate);
        // With the trace on: every rate change, and every 25 ms of virtual time between.
        let due = self
            .rate_trace
            .last()
            .is_some_and(|&(t, _)| now.saturating_duration_since(t) >= TRACE_EVERY);
        if changed || due {
            if std::env::var_os("BLOCKCAST_SIM_TRACE").is_some() {
                let tx = &self.sender.ep;
                eprintln!(
                    "{:?} rate {rate} {:?} backlog {} grtt {:?} first pass bytes {} stats {:?}",
                    now.saturating_duration_since(tx.epoch().unwrap_or(now)),
                    tx.rate_congestion(),
                    tx.repair_backlog(),
                    tx.grtt(),
                    self.progress().bytes,
                    tx.stats()
                );
            }
            self.rate_trace.push((now, rate));
        }
        self.start_stripes(now, io);
        if self.stripes.is_empty() {
            return;
        }
        let rate = self.sender.ep.first_pass_rate();
        let live = self.stripes.iter().filter(|p| !p.ep.is_finished()).count() as u16;
        for (p, &start) in self.stripes.iter_mut().zip(&self.starts) {
            if now >= start {
                p.ep.set_rate(rate, live);
                p.poll(now, io);
            }
        }
        self.sender.ep.handle_first_pass(now, self.progress());
        // What the progress lets the sender send now (the first pass done: an announce).
        self.sender.poll(now, io);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let stripes = self
            .stripes
            .iter()
            .zip(&self.starts)
            .filter_map(|(p, &start)| p.ep.poll_timeout().map(|t| t.max(start)));
        stripes.chain(self.sender.poll_timeout()).min()
    }
}

/// A host of a plain or split session: the server, or one receiver.
// All hosts but one are receivers: the one server is boxed, the receivers are not (a box each
// would cost thousands of allocations and an indirection per delivery for nothing).
#[allow(clippy::large_enum_variant)]
pub(crate) enum SimHost<S, T> {
    Server(Box<ServerHost<S>>),
    Receiver(ReceiverHost<T>),
}

impl<S, T> SimHost<S, T> {
    pub(crate) fn server(&self) -> Option<&ServerHost<S>> {
        match self {
            SimHost::Server(s) => Some(s),
            SimHost::Receiver(_) => None,
        }
    }

    pub(crate) fn receiver(&self) -> Option<&Driven<Receiver<T>, ReceiverHooks>> {
        match self {
            SimHost::Server(_) => None,
            SimHost::Receiver(r) => Some(&r.rx),
        }
    }

    /// A receiver's modelled socket, if it has one.
    pub(crate) fn socket_stats(&self) -> Option<SocketStats> {
        match self {
            SimHost::Server(_) => None,
            SimHost::Receiver(r) => r.socket_stats(),
        }
    }
}

impl<S: BlockSource + Clone + Send, T: BlockStore + Send> Host for SimHost<S, T> {
    fn handle_datagram(&mut self, now: Instant, d: Datagram<'_>, io: &mut Io<'_>) {
        match self {
            SimHost::Server(s) => s.handle_datagram(now, d, io),
            SimHost::Receiver(r) => r.handle_datagram(now, d, io),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self {
            SimHost::Server(s) => s.handle_timeout(now),
            SimHost::Receiver(r) => r.handle_timeout(now),
        }
    }

    fn poll(&mut self, now: Instant, io: &mut Io<'_>) {
        match self {
            SimHost::Server(s) => s.poll(now, io),
            SimHost::Receiver(r) => r.poll(now, io),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            SimHost::Server(s) => s.poll_timeout(),
            SimHost::Receiver(r) => r.poll_timeout(),
        }
    }

    fn leave(&mut self, now: Instant) {
        match self {
            SimHost::Server(_) => {}
            SimHost::Receiver(r) => r.leave(now),
        }
    }
}

/// Links of a multicast session: one delay everywhere; multicast copies and unicast
/// (control) datagrams each with their own faults.
pub(crate) struct MulticastLinks {
    pub delay: Duration,
    pub data: LinkFaults,
    pub control: LinkFaults,
}

impl Links for MulticastLinks {
    fn delay(&self, _from: HostId, _to: HostId) -> Duration {
        self.delay
    }

    fn faults(&self, _from: HostId, _to: HostId, path: Path) -> &LinkFaults {
        match path {
            Path::Multicast => &self.data,
            Path::Unicast => &self.control,
        }
    }
}

/// A plain or split run is over once the server's sender has finished.
pub(crate) struct UntilServerDone(pub HostId);

impl<S: BlockSource + Clone + Send, T: BlockStore + Send> Scenario<SimHost<S, T>>
    for UntilServerDone
{
    fn is_done(&self, net: &Net<SimHost<S, T>>) -> bool {
        net.host(self.0)
            .server()
            .is_some_and(|s| s.sender.ep.is_finished())
    }
}
