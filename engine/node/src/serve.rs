//! The server node: maps the inputs, announces them on the group and sends them with
//! io_uring UDP GSO, answering the control plane on a unicast address.
//!
//! In split mode (no multicast, docs/wire.md §14) the control thread sends everything: each
//! unit by unicast to the member that owns it, runs of units to one member as one GSO
//! super-buffer addressed to it; the members copy them on.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockcast_io::{MulticastSender, RecvBatch, SendRing, SendRingConfig, Source};
use blockcast_proto::auth::{Signature, Signer};
use blockcast_proto::wire::{DoneReason, Manifest, ReceiverId, SessionId, UNIT_HEADER_LEN};
use blockcast_proto::{
    FirstPassProgress, Geometry, RateLimits, Sender, SenderConfig, SenderEvent, SenderStats,
    SplitConfig, StripePass, UnitRef,
};
use blockcast_seal::{OpenStats, Secret, TRAILER_LEN};

use crate::content::{Content, Input, CHECK_INTERVAL};
use crate::driver::{self, Flow, Input as DriverInput, Io, Out, Sends};
use crate::hashcache::HashCache;
use crate::stripe::{self, StripeShared, StripeStats, StripeThread};
use crate::NodeError;

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub inputs: Vec<Input>,
    /// The multicast group (ignored in split mode).
    pub group: SocketAddrV4,
    /// The interface's address: data leaves through it, the control address is bound on it.
    pub iface: Ipv4Addr,
    /// Control port (0: any free port; it is announced).
    pub control_port: u16,
    pub ttl: u32,
    /// Fixed rate in bytes per second, or `None` to adapt to the receivers' reported loss.
    pub rate: Option<u64>,
    pub geometry: Geometry,
    pub min_receivers: usize,
    pub max_wait: Duration,
    pub deadline: Option<Duration>,
    pub session: u32,
    /// Data threads (stripes), each pinned to a core with its own socket and ring (one, the
    /// control thread, in split mode). Stripe `s` sends its first pass to the group's port +
    /// `s`, so receivers can read each stripe on its own socket and thread.
    pub threads: usize,
    /// Split mode: no multicast; units go by unicast to one member each and members copy
    /// them on (docs/wire.md §14).
    pub split: bool,
    /// A receiver not heard from for this long is dropped (in split mode: planned without).
    pub receiver_timeout: Duration,
    /// Where each input's hashes are kept between runs, so that serving the same file again
    /// does not read and hash it first (`None`: hash every time).
    pub hash_cache: Option<HashCache>,
    /// Repair with originals while they cost at most this many times parity's bandwidth
    /// ([`blockcast_proto::SenderConfig::originals_factor`]; 0: parity always).
    pub originals_factor: u32,
    /// Combine the originals different receivers miss into XOR repairs
    /// ([`blockcast_proto::SenderConfig::xor_repairs`]).
    pub xor_repairs: bool,
    /// Sign the session statement, every Announce and every session Done with this key
    /// (docs/wire.md §15).
    pub signer: Option<Signer>,
    /// A relay: the origin's session statement (when it was made, and its signature, if
    /// signed), passed on unchanged.
    pub statement: Option<(u64, Option<Signature>)>,
    /// Data thread `s` is pinned to core `core_offset + s` (modulo the cores): an origin
    /// spreads its sessions' data threads over the cores.
    pub core_offset: usize,
    /// An origin's session: when its first pass may start ([`StartGate`]).
    pub gate: Option<Arc<StartGate>>,
    /// A closed group: every datagram is sealed with this secret, and only sealed ones are
    /// taken (docs/wire.md §16).
    pub secret: Option<Secret>,
    /// How the data threads send the first pass: io_uring on sockets, or AF_XDP frames
    /// (at most one data thread per tx queue of the interface). Repairs, announces and
    /// control traffic stay on the control thread's sockets.
    pub datapath: crate::Datapath,
}

/// When an origin's session may start its first pass: not before `window_end` (the batching
/// window: requests until then join before anything is sent), then as soon as every receiver
/// the session was granted to has joined (or the session's `max_wait` has passed).
#[derive(Debug)]
pub struct StartGate {
    pub window_end: Instant,
    /// Requests granted this session so far.
    pub granted: AtomicUsize,
    /// Set by the session once it is ending: the origin grants it to no one more.
    pub closing: AtomicBool,
}

/// Progress, reported a few times per second.
#[derive(Clone, Debug)]
pub struct ServeProgress {
    pub receivers: usize,
    pub complete: usize,
    /// First-pass and repair bytes sent so far.
    pub bytes_sent: u64,
    pub total_bytes: u64,
    pub rate: u64,
    /// Where receivers send to (split-mode members are given it as `--server`).
    pub control: SocketAddr,
    /// The first pass has started.
    pub sending: bool,
    /// The protocol core's counters (the data threads' first pass is in `bytes_sent`).
    pub stats: SenderStats,
}

/// One receiver as the server saw it.
#[derive(Clone, Debug)]
pub struct ReceiverSummary {
    pub id: ReceiverId,
    pub addr: SocketAddr,
    pub complete: bool,
    pub rtt_us: Option<u64>,
    pub loss_ppm: u32,
}

/// What a serve run did.
#[derive(Clone, Debug)]
pub struct ServeSummary {
    pub objects: usize,
    pub bytes: u64,
    pub seconds: f64,
    pub reason: DoneReason,
    pub stats: SenderStats,
    pub receivers: Vec<ReceiverSummary>,
    pub control: SocketAddr,
    /// CPU time of the control thread and of the data threads.
    pub cpu_seconds: f64,
    /// Receivers ever accepted (some may have left or timed out since).
    pub receivers_ever: usize,
    /// BLAKE3 of the manifest: what `receive --expect` pins.
    pub manifest_hash: [u8; 32],
    /// The key the session statement is signed with (the origin's, for a relay).
    pub signer: Option<[u8; 32]>,
    /// A closed group: what the control thread opened and dropped (datagrams without the
    /// secret, forged, replayed).
    pub sealed: Option<OpenStats>,
    /// How the first pass left: `socket` or `xdp`.
    pub datapath: &'static str,
    /// First-pass units sent as AF_XDP frames, and dropped for want of a free frame.
    pub xdp_frames: u64,
    pub xdp_dropped: u64,
}

/// Serves until every accepted receiver is complete, the deadline passes, or `stop` is set.
pub fn serve(
    cfg: &ServeConfig,
    stop: &AtomicBool,
    progress_cb: &mut dyn FnMut(&ServeProgress),
) -> Result<ServeSummary, NodeError> {
    let block_size = cfg.geometry.block_size();
    let hashing = Instant::now();
    let (content, objects, cached) =
        Content::open(&cfg.inputs, block_size, cfg.hash_cache.as_ref())?;
    tracing::debug!(
        objects = objects.len(),
        from_cache = cached,
        seconds = hashing.elapsed().as_secs_f64(),
        "inputs mapped and hashed"
    );
    let manifest = Manifest {
        unit_size: cfg.geometry.unit_size,
        units_per_block: cfg.geometry.units_per_block,
        objects,
    };
    serve_content(cfg, manifest, content, stop, progress_cb)
}

/// Serves `content` as `manifest` describes it (a server's mapped inputs, or a relay's cache
/// that fills as blocks are verified upstream).
pub(crate) fn serve_content(
    cfg: &ServeConfig,
    manifest: Manifest,
    content: Content,
    stop: &AtomicBool,
    progress_cb: &mut dyn FnMut(&ServeProgress),
) -> Result<ServeSummary, NodeError> {
    let total_bytes = manifest.total_bytes();
    if cfg.split && cfg.secret.is_some() {
        return Err(NodeError::Config(
            "a closed group (--secret) needs multicast: split mode does not seal its copies".into(),
        ));
    }
    let stripes = if cfg.split {
        1
    } else {
        cfg.threads.clamp(1, 64)
    };
    // Stripe s sends its first pass to the group's port + s (docs/wire.md §3.1).
    if usize::from(cfg.group.port()) + stripes - 1 > usize::from(u16::MAX) {
        return Err(NodeError::Config(format!(
            "{} data threads need ports {}..={} of the group (one per stripe): pick a lower port",
            stripes,
            cfg.group.port(),
            usize::from(cfg.group.port()) + stripes - 1
        )));
    }
    let mut xdp = match (cfg.split, cfg.datapath) {
        (true, crate::Datapath::Xdp) => return Err(NodeError::Datapath(
            "--datapath xdp is for a multicast group: split mode's unicast data stays on sockets"
                .into(),
        )),
        (true, _) => None,
        (false, choice) => {
            let trailer = if cfg.secret.is_some() { TRAILER_LEN } else { 0 };
            let datagram = usize::from(cfg.geometry.unit_size) + UNIT_HEADER_LEN + trailer;
            crate::xdp::choose_send(choice, cfg.iface, stripes, datagram)?
        }
    };
    // One data thread per AF_XDP socket (per tx queue).
    let stripes = xdp.as_ref().map_or(stripes, |x| x.sockets.len());
    let datapath = crate::Datapath::name(xdp.is_some());
    let (mut io, control_addr) = open_sockets(cfg)?;
    let scfg = sender_config(cfg, stripes, control_addr)?;
    let mut sender =
        Sender::new(scfg, manifest, content).map_err(|e| NodeError::Config(e.into()))?;
    let cpu_start = blockcast_io::os::thread_cpu_seconds();
    let shared = StripeShared::new(stripes, sender.first_pass_rate());
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let started = Instant::now();
    let (reason, data) = std::thread::scope(|scope| {
        let mut threads = Vec::new();
        let mut spawn_error = None;
        let mut start = |passes: Vec<StripePass<Content>>| {
            for pass in passes {
                let s = usize::from(pass.stripe());
                let t = StripeThread {
                    core: (!cores.is_empty()).then(|| cores[(cfg.core_offset + s) % cores.len()]),
                    group: cfg.group,
                    iface: cfg.iface,
                    ttl: cfg.ttl,
                    shared: &shared,
                    secret: cfg.secret.as_ref(),
                    xdp: xdp.as_mut().and_then(|x| Some((x.sockets.pop()?, x.mac))),
                };
                match std::thread::Builder::new()
                    .name(format!("bc-data-{s}"))
                    .spawn_scoped(scope, move || stripe::run(pass, t))
                {
                    Ok(h) => threads.push(h),
                    Err(e) => spawn_error = Some(NodeError::spawn("a data thread", e)),
                }
            }
        };
        let mut host = ServeHost {
            cfg,
            stop,
            progress_cb,
            shared: &shared,
            start: &mut start,
            data_started: false,
            started,
            next_progress: started,
            reason: DoneReason::Complete,
            complete: 0,
            total_bytes,
            control: control_addr,
            rate: 0,
            checked: 0..0,
            next_check: started,
            input_error: None,
        };
        let r = driver::run(&mut sender, &mut io, &mut host);
        io.out.log_super_buffers(None);
        let reason = host.reason;
        let input_error = host.input_error.take();
        shared.stop.store(true, Ordering::Relaxed);
        let mut first_err = spawn_error;
        let mut data = StripeStats::default();
        for t in threads {
            match t.join() {
                Ok(Ok(s)) => data.add(&s),
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(_) => first_err = first_err.or(Some(NodeError::panicked("a data thread"))),
            }
        }
        match (r, input_error.or(first_err)) {
            (Err(e), _) | (Ok(()), Some(e)) => Err(e),
            (Ok(()), None) => Ok((reason, data)),
        }
    })?;
    let receivers = sender
        .receiver_report()
        .into_iter()
        .map(|r| ReceiverSummary {
            id: r.id,
            addr: r.addr,
            complete: r.complete,
            rtt_us: r.rtt.map(|d| d.as_micros() as u64),
            loss_ppm: r.loss_ppm,
        })
        .collect();
    let mut stats = sender.stats().clone();
    // The data threads sent the first pass; the protocol core counted the rest.
    stats.data_units += data.units;
    stats.data_bytes += data.bytes;
    Ok(ServeSummary {
        objects: sender.manifest().objects.len(),
        bytes: total_bytes,
        seconds: started.elapsed().as_secs_f64(),
        reason,
        stats,
        receivers,
        control: control_addr,
        cpu_seconds: data.cpu_seconds + blockcast_io::os::thread_cpu_seconds() - cpu_start,
        receivers_ever: sender.receivers_ever(),
        manifest_hash: sender.manifest_hash(),
        signer: sender.statement_signer(),
        sealed: io.open_stats(),
        datapath,
        xdp_frames: data.xdp_frames,
        xdp_dropped: data.xdp_dropped,
    })
}

/// The control socket (the driver's input and its unicast output), and where data leaves: a
/// ring on the group (a side socket for small group packets) or, in split mode, a ring on an
/// unconnected unicast socket whose super-buffers each name their member.
fn open_sockets(cfg: &ServeConfig) -> Result<(Io, SocketAddr), NodeError> {
    let control =
        blockcast_io::bind_unicast(SocketAddr::from((cfg.iface, cfg.control_port)), true)?;
    let socket_err = |e| NodeError::Io(blockcast_io::IoError::os("control socket", "bind", e));
    let control_addr = control.local_addr().map_err(socket_err)?;
    let (ring, group) = if cfg.split {
        let data = blockcast_io::bind_unicast(SocketAddr::from((cfg.iface, 0)), true)?;
        (SendRing::new(data, SendRingConfig::default())?, None)
    } else {
        let data = MulticastSender::new(cfg.group, cfg.iface, cfg.ttl, 4 << 20)?;
        // Small group packets (announce, manifest, parity, done) go out through a plain socket.
        let side = MulticastSender::new(cfg.group, cfg.iface, cfg.ttl, 1 << 20)?;
        (SendRing::new(data, SendRingConfig::default())?, Some(side))
    };
    let input = DriverInput::new(
        control.try_clone().map_err(socket_err)?,
        RecvBatch::new(16, 2048)?,
    );
    let out = Out {
        ring: Some(ring),
        group,
        control: Some(control),
        seal: None,
        xdp: None,
        // In split mode the ring is on a unicast socket, and nothing goes to a group.
        group_ring: !cfg.split,
    };
    let io = Io::new(vec![input], out).protect(cfg.secret.as_ref())?;
    Ok((io, control_addr))
}

/// The protocol's configuration for this server: `--rate auto` unless a rate is fixed, an
/// external (striped) first pass except in split mode, a fresh cookie secret, the signing key
/// (and a relay's origin statement).
fn sender_config(
    cfg: &ServeConfig,
    stripes: usize,
    control: SocketAddr,
) -> Result<SenderConfig, NodeError> {
    let limits = RateLimits::default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (issued, statement) = cfg.statement.unwrap_or((now, None));
    Ok(SenderConfig {
        cookie_key: crate::keys::random_bytes()?,
        signer: cfg.signer.clone(),
        statement,
        issued,
        session: SessionId(cfg.session),
        control,
        geometry: cfg.geometry,
        stripes: stripes as u16,
        external_first_pass: !cfg.split,
        split: cfg.split.then(SplitConfig::default),
        receiver_timeout: cfg.receiver_timeout,
        rate: cfg.rate.unwrap_or(limits.start),
        rate_control: cfg.rate.is_none().then_some(limits),
        burst: Duration::from_micros(500),
        // Paced threads send whole GSO super-buffers and sleep between them.
        pace_quantum: blockcast_io::MAX_SEND_BYTES,
        announce_interval: Duration::from_millis(100),
        // Receivers that are listening (an origin's, granted the session a moment ago; a
        // fleet started before the server) join within milliseconds of the announce and the
        // manifest: a tenth of the interval while the first pass waits, so that one that lost
        // the announce or a manifest chunk does not wait a whole interval, and the first pass
        // with it (measured in docs/DESIGN.md, 2026-12-02).
        waiting_announce_interval: Some(Duration::from_millis(10)),
        min_receivers: cfg.min_receivers,
        max_wait: cfg.max_wait,
        deadline: cfg.deadline,
        initial_grtt: Duration::from_millis(2),
        originals_factor: cfg.originals_factor,
        xor_repairs: cfg.xor_repairs,
        member_repair_share: if cfg.split {
            blockcast_proto::SPLIT_MEMBER_REPAIR_SHARE
        } else {
            blockcast_proto::MEMBER_REPAIR_SHARE
        },
        ..SenderConfig::default()
    })
}

/// The control thread's part around the sender: the user's stop, the data threads' progress
/// and rate, starting them, events, progress reports.
struct ServeHost<'a> {
    cfg: &'a ServeConfig,
    stop: &'a AtomicBool,
    progress_cb: &'a mut dyn FnMut(&ServeProgress),
    shared: &'a StripeShared,
    start: &'a mut dyn FnMut(Vec<StripePass<Content>>),
    data_started: bool,
    started: Instant,
    next_progress: Instant,
    reason: DoneReason,
    complete: usize,
    total_bytes: u64,
    control: SocketAddr,
    /// The rate last logged.
    rate: u64,
    /// The inputs the last check looked at, and when the next is due.
    checked: std::ops::Range<usize>,
    next_check: Instant,
    /// An input changed: the session was stopped for it.
    input_error: Option<NodeError>,
}

impl driver::Host<Sender<Content>> for ServeHost<'_> {
    fn begin(
        &mut self,
        sender: &mut Sender<Content>,
        now: Instant,
        _io: &mut Io,
    ) -> Result<Flow, NodeError> {
        if self.stop.load(Ordering::Relaxed) {
            sender.abort(now);
        }
        if let (Some(g), false) = (&self.cfg.gate, sender.is_sending()) {
            // Relaxed: a count a turn old only delays the start by a turn.
            let n = if now < g.window_end {
                usize::MAX
            } else {
                g.granted.load(Ordering::Relaxed).max(1)
            };
            sender.set_min_receivers(n);
        }
        if self.input_error.is_none() && now >= self.next_check {
            self.next_check = now + CHECK_INTERVAL;
            self.checked = sender.source().next_check(&self.checked);
            let mut turn = self.checked.clone();
            if let Err(e) = sender.source().check_inputs(&mut turn) {
                // What receivers would get of it no longer matches its hashes: end the
                // session (they keep what they verified) and report it.
                tracing::error!("{e}");
                self.input_error = Some(e);
                sender.abort(now);
            }
        }
        if self.data_started {
            let (sent_before, bytes) = self.shared.progress();
            sender.handle_first_pass(now, FirstPassProgress { sent_before, bytes });
            // Relaxed: the data threads read it once per turn; a rate a moment old is fine.
            self.shared
                .rate
                .store(sender.first_pass_rate(), Ordering::Relaxed);
        }
        Ok(Flow::Continue)
    }

    fn on_event(
        &mut self,
        sender: &mut Sender<Content>,
        _now: Instant,
        event: SenderEvent,
    ) -> Result<Flow, NodeError> {
        let seconds = self.started.elapsed().as_secs_f64();
        match event {
            SenderEvent::ReceiverComplete { receiver } => {
                tracing::debug!(receiver = receiver.0, seconds, "receiver complete");
                self.complete += 1;
            }
            SenderEvent::ReceiverJoined { receiver, addr } => {
                tracing::debug!(receiver = receiver.0, %addr, seconds, "receiver joined")
            }
            SenderEvent::FirstPassDone => tracing::debug!(
                seconds,
                repair_backlog = sender.repair_backlog(),
                "first pass done"
            ),
            SenderEvent::Finished { reason } => self.reason = reason,
            SenderEvent::ReceiverDropped { receiver, reason } => tracing::warn!(
                receiver = receiver.0,
                ?reason,
                "receiver dropped: it asked for more repairs than its share and made no progress"
            ),
            _ => {}
        }
        Ok(Flow::Continue)
    }

    fn end(&mut self, sender: &mut Sender<Content>, now: Instant) -> Result<Flow, NodeError> {
        if let (Some(g), true) = (&self.cfg.gate, sender.is_closing()) {
            // Release: pairs with the origin's Acquire; nothing else rides on it.
            g.closing.store(true, Ordering::Release);
        }
        if !self.data_started && sender.is_sending() && !self.cfg.split {
            tracing::debug!(
                receivers = sender.receivers(),
                seconds = self.started.elapsed().as_secs_f64(),
                "first pass starts"
            );
            self.data_started = true;
            let passes = (0..self.shared.stripes() as u16)
                .filter_map(|s| sender.stripe_pass(s))
                .collect();
            (self.start)(passes);
        }
        if sender.rate() != self.rate {
            self.rate = sender.rate();
            let c = sender.rate_congestion();
            tracing::debug!(
                rate = self.rate,
                overflow_ppm = c.overflow_ppm,
                queue_ppm = c.queue_ppm,
                fresh_overflow_ppm = c.fresh_overflow_ppm,
                fresh_queue_ppm = c.fresh_queue_ppm,
                take = c.slowest_take,
                delivery = c.slowest_delivery,
                grtt_us = sender.grtt().as_micros() as u64,
                "rate step"
            );
        }
        if now >= self.next_progress {
            let s = sender.stats();
            (self.progress_cb)(&ServeProgress {
                receivers: sender.receivers(),
                complete: self.complete,
                bytes_sent: s.data_bytes + s.parity_bytes + self.shared.progress().1,
                total_bytes: self.total_bytes,
                rate: sender.rate(),
                control: self.control,
                sending: sender.is_sending(),
                stats: s.clone(),
            });
            self.next_progress = now + Duration::from_millis(200);
        }
        Ok(if sender.is_finished() {
            Flow::Stop
        } else {
            Flow::Continue
        })
    }
}

impl Content {
    /// Where a unit's bytes lie, for a send straight from the mapping.
    fn unit_payload(&self, unit: &UnitRef) -> Option<(&Source, Range<usize>)> {
        let src = self.sources.get(unit.object.0 as usize)?;
        let base = unit.block.0 as usize * self.block_size() + unit.offset;
        Some((src, base..base + unit.len))
    }
}

impl Sends for Sender<Content> {
    fn payload(&self, unit: &UnitRef) -> Option<(&Source, Range<usize>)> {
        self.source().unit_payload(unit)
    }
}

impl Sends for StripePass<Content> {
    fn payload(&self, unit: &UnitRef) -> Option<(&Source, Range<usize>)> {
        self.source().unit_payload(unit)
    }
}
