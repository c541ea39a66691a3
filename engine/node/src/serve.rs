//! The server node: maps the inputs, announces them on the group and sends them with
//! io_uring UDP GSO, answering the control plane on a unicast address.
//!
//! In split mode (no multicast, docs/wire.md §14) the control thread sends everything: each
//! unit by unicast to the member that owns it, runs of units to one member as one GSO
//! super-buffer addressed to it; the members copy them on.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use blockcast_io::{MulticastSender, RecvBatch, SendRing, SendRingConfig};
use blockcast_proto::wire::{BlockIndex, DoneReason, Manifest, ObjectId, ReceiverId, SessionId};
use blockcast_proto::SplitConfig;
use blockcast_proto::{
    Destination, Geometry, Sender, SenderConfig, SenderEvent, SenderStats, Transmit,
};

use crate::content::{Content, Input};
use crate::hashcache::HashCache;
use crate::stripe::{self, BlockTable, StripePlan, StripeStats};
use crate::wait::readable;
use crate::NodeError;
use blockcast_status::AtomicBitmap;

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
}

/// Where `--rate auto` starts: about what one receiver takes on this box's loopback (the
/// queue reports bring it down within a step or two where receivers take less; starting at
/// 400 MB/s instead left 256 MiB transfers ramping for most of their time: docs/DESIGN.md).
const START_RATE: u64 = 1_000_000_000;
const MIN_RATE: u64 = 10_000_000;
const MAX_RATE: u64 = 8_000_000_000;

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
    let control =
        blockcast_io::bind_unicast(SocketAddr::from((cfg.iface, cfg.control_port)), true)?;
    let control_addr = control
        .local_addr()
        .map_err(|e| NodeError::Config(format!("control socket: {e}")))?;
    let (mut ring, side) = if cfg.split {
        // Split mode: units leave from an unconnected unicast socket on the interface, each
        // super-buffer addressed to its member; small packets go from the control socket.
        let data = blockcast_io::bind_unicast(SocketAddr::from((cfg.iface, 0)), true)?;
        (SendRing::new(data, SendRingConfig::default())?, None)
    } else {
        let data = MulticastSender::new(cfg.group, cfg.iface, cfg.ttl, 4 << 20)?;
        // Small group packets (announce, manifest, parity, done) go out through a plain socket.
        let side = MulticastSender::new(cfg.group, cfg.iface, cfg.ttl, 1 << 20)?;
        (SendRing::new(data, SendRingConfig::default())?, Some(side))
    };
    let rate = cfg.rate.unwrap_or(START_RATE);
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
    let block_size = cfg.geometry.block_size();
    let sources = content.sources.clone();
    let ready = content.ready();
    let mut blocks: BlockTable = Vec::new();
    for (o, e) in manifest.objects.iter().enumerate() {
        for b in 0..e.block_hashes.len() {
            let start = b * block_size;
            let len = (e.size as usize - start).min(block_size);
            blocks.push((ObjectId(o as u32), BlockIndex(b as u32), start, len));
        }
    }
    let scfg = SenderConfig {
        session: SessionId(cfg.session),
        control: control_addr,
        geometry: cfg.geometry,
        stripes: stripes as u16,
        external_first_pass: !cfg.split,
        split: cfg.split.then(SplitConfig::default),
        receiver_timeout: cfg.receiver_timeout,
        // The data threads take half of the rate for the first pass; in split mode the
        // control thread sends everything.
        rate: if cfg.split { rate } else { (rate / 2).max(1) },
        burst: Duration::from_micros(500),
        announce_interval: Duration::from_millis(100),
        min_receivers: cfg.min_receivers,
        max_wait: cfg.max_wait,
        deadline: cfg.deadline,
        initial_grtt: Duration::from_millis(2),
        originals_factor: cfg.originals_factor,
        xor_repairs: cfg.xor_repairs,
        ..SenderConfig::default()
    };
    let mut sender =
        Sender::new(scfg, manifest, content).map_err(|e| NodeError::Config(e.into()))?;
    let cpu_start = crate::thread_cpu_seconds();
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let shared_rate = AtomicU64::new(rate);
    let progress: Vec<AtomicU64> = (0..stripes).map(|s| AtomicU64::new(s as u64)).collect();
    let skip = AtomicBitmap::new(blocks.len());
    let data_stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let mut threads = Vec::new();
        let mut spawn_error = None;
        let r = control_loop(
            cfg,
            stop,
            progress_cb,
            &mut sender,
            &mut ring,
            side.as_ref(),
            &control,
            total_bytes,
            &shared_rate,
            &progress,
            &skip,
            &mut |epoch| {
                for s in 0..stripes {
                    let plan = StripePlan {
                        stripe: s,
                        stripes,
                        core: (!cores.is_empty()).then(|| cores[s % cores.len()]),
                        group: cfg.group,
                        iface: cfg.iface,
                        ttl: cfg.ttl,
                        session: SessionId(cfg.session),
                        unit_size: cfg.geometry.unit_size,
                        epoch,
                        sources: &sources,
                        blocks: &blocks,
                        rate: &shared_rate,
                        progress: &progress[s],
                        skip: &skip,
                        ready: ready.as_deref(),
                        stop: &data_stop,
                    };
                    let t = std::thread::Builder::new()
                        .name(format!("bc-data-{s}"))
                        .spawn_scoped(scope, move || stripe::run(plan));
                    match t {
                        Ok(t) => threads.push(t),
                        Err(e) => {
                            spawn_error = Some(NodeError::Config(format!(
                                "cannot start a data thread: {e}"
                            )))
                        }
                    }
                }
            },
        );
        data_stop.store(true, Ordering::Relaxed);
        let mut first_err = spawn_error;
        let mut data = StripeStats::default();
        for t in threads {
            match t.join() {
                Ok(Ok(s)) => {
                    data.cpu_seconds += s.cpu_seconds;
                    data.units += s.units;
                    data.bytes += s.bytes;
                }
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(_) => {
                    first_err =
                        first_err.or(Some(NodeError::Config("a data thread panicked".into())))
                }
            }
        }
        match (r, first_err) {
            (Err(e), _) | (Ok(_), Some(e)) => Err(e),
            (Ok((reason, secs)), None) => Ok((
                reason,
                secs,
                data.cpu_seconds + crate::thread_cpu_seconds() - cpu_start,
                data,
            )),
        }
    })
    .map(|(reason, seconds, cpu_seconds, data)| {
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
        ServeSummary {
            objects: sender.manifest().objects.len(),
            bytes: total_bytes,
            seconds,
            reason,
            stats: {
                // The data threads sent the first pass; the protocol core counted the rest.
                let mut s = sender.stats().clone();
                s.data_units += data.units;
                s.data_bytes += data.bytes;
                s
            },
            receivers,
            control: control_addr,
            cpu_seconds,
            receivers_ever: sender.receivers_ever(),
        }
    })
}

/// The control thread: the protocol core, the control socket, repairs; starts the data
/// threads once the first pass may begin. Returns why the session ended and how long it took.
#[allow(clippy::too_many_arguments)]
fn control_loop(
    cfg: &ServeConfig,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&ServeProgress),
    sender: &mut Sender<Content>,
    ring: &mut SendRing,
    side: Option<&MulticastSender>,
    control: &UdpSocket,
    total_bytes: u64,
    shared_rate: &AtomicU64,
    stripe_progress: &[AtomicU64],
    skip: &AtomicBitmap,
    start_data: &mut dyn FnMut(Instant),
) -> Result<(DoneReason, f64), NodeError> {
    let mut data_started = false;
    let mut next_skip_scan = Instant::now();
    let mut rx = RecvBatch::new(16, 2048)?;
    let mut hdr = vec![0u8; 65_536];
    let started = Instant::now();
    let mut rate = shared_rate.load(Ordering::Relaxed);
    let mut next_rate_check = started + Duration::from_millis(100);
    let mut pace = RateControl::new(rate);
    let (mut last_sent, mut last_step) = (0u64, started);
    let mut next_progress = started;
    let mut reason = DoneReason::Complete;
    let mut complete = 0usize;
    loop {
        let now = Instant::now();
        if stop.load(Ordering::Relaxed) {
            sender.abort(now);
        }
        // Control plane in.
        while rx.recv(&control, Duration::ZERO)? > 0 {
            for d in rx.iter() {
                if !d.truncated {
                    sender.handle_datagram(now, SocketAddr::V4(d.source), d.bytes);
                }
            }
        }
        if sender.poll_timeout().is_some_and(|t| t <= now) {
            sender.handle_timeout(now);
        }
        if !data_started && sender.is_sending() && !cfg.split {
            tracing::debug!(
                receivers = sender.receivers(),
                seconds = started.elapsed().as_secs_f64(),
                "first pass starts"
            );
            data_started = true;
            start_data(sender.epoch().unwrap_or(now));
        }
        if data_started {
            // Acquire: pairs with the data threads' Release after each finished block.
            let sent_before = stripe_progress
                .iter()
                .map(|p| p.load(Ordering::Acquire))
                .min()
                .unwrap_or(u64::MAX);
            sender.handle_first_pass(
                now,
                blockcast_proto::FirstPassProgress {
                    sent_before,
                    bytes: 0,
                },
            );
            if now >= next_skip_scan {
                // Blocks ahead of the first pass that every receiver already holds (they were
                // sent for a priority request) are not sent again.
                next_skip_scan = now + Duration::from_millis(20);
                let from = sent_before.min(sender.total_blocks());
                let to = (from + 4096).min(sender.total_blocks());
                for seq in from..to {
                    if sender.all_hold(seq) {
                        // Release: a data thread that sees the bit skips a block all hold.
                        skip.set(seq as usize);
                    }
                }
            }
            // Repairs and priority blocks share the rate with the first pass: while any are
            // queued, each gets half (Relaxed: the data threads read it once per batch).
            let data_rate = if sender.repair_backlog() > 0 {
                rate / 2
            } else {
                rate
            };
            shared_rate.store(data_rate.max(1), Ordering::Relaxed);
        }
        // Everything due now: data units gathered into GSO super-buffers straight from the
        // mapping, other packets sent as they are.
        send_due(sender, ring, side, control, now, &mut hdr)?;
        ring.flush()?;
        while let Some(e) = sender.poll_event() {
            match e {
                SenderEvent::ReceiverComplete { receiver } => {
                    tracing::debug!(
                        receiver = receiver.0,
                        seconds = started.elapsed().as_secs_f64(),
                        "receiver complete"
                    );
                    complete += 1
                }
                SenderEvent::ReceiverJoined { receiver, addr } => tracing::debug!(
                    receiver = receiver.0,
                    %addr,
                    seconds = started.elapsed().as_secs_f64(),
                    "receiver joined"
                ),
                SenderEvent::FirstPassDone => tracing::debug!(
                    seconds = started.elapsed().as_secs_f64(),
                    repair_backlog = sender.repair_backlog(),
                    "first pass done"
                ),
                SenderEvent::Finished { reason: r } => reason = r,
                SenderEvent::SentWhole { object, block } => {
                    // The group got this block whole: the first pass skips it (Release: a
                    // data thread that sees the bit skips the block).
                    if let Some(seq) = sender.global_block(object, block) {
                        skip.set(seq as usize);
                    }
                }
                _ => {}
            }
        }
        if sender.is_finished() {
            break;
        }
        if cfg.rate.is_none() && now >= next_rate_check {
            // What went out since the last step: first-pass blocks from the data threads,
            // repairs and parity from here.
            let stripes = stripe_progress.len().max(1) as u64;
            let blocks = stripe_progress
                .iter()
                .map(|p| p.load(Ordering::Relaxed).min(sender.total_blocks()))
                .sum::<u64>()
                / stripes;
            let st = sender.stats();
            let sent = blocks * cfg.geometry.block_size() as u64 + st.data_bytes + st.parity_bytes;
            let secs = now.saturating_duration_since(last_step).as_secs_f64();
            let achieved = (sent.saturating_sub(last_sent) as f64 / secs.max(1e-3)) as u64;
            (last_sent, last_step) = (sent, now);
            rate = pace.step(sender, now, achieved);
            tracing::debug!(
                rate,
                achieved,
                overflow_ppm = sender.worst_overflow_ppm(),
                queue_ppm = sender.worst_queue_ppm(),
                delivery = sender.slowest_delivery(),
                grtt_us = sender.grtt().as_micros() as u64,
                "rate step"
            );
            sender.set_rate(if cfg.split { rate } else { (rate / 2).max(1) });
            next_rate_check = now + Duration::from_millis(100);
        }
        if now >= next_progress {
            let s = sender.stats();
            progress(&ServeProgress {
                receivers: sender.receivers(),
                complete,
                bytes_sent: s.data_bytes + s.parity_bytes,
                total_bytes,
                rate,
                control: control
                    .local_addr()
                    .unwrap_or(SocketAddr::from((cfg.iface, 0))),
            });
            next_progress = now + Duration::from_millis(200);
        }
        // Sleep until the next thing is due or a control packet arrives.
        let wake = sender
            .poll_timeout()
            .unwrap_or(now + Duration::from_millis(50));
        let wait = wake.saturating_duration_since(Instant::now());
        if ring.free_slots() == 0 {
            ring.wait(Duration::from_millis(1))?;
        } else if wait > Duration::from_micros(50) {
            readable(&[control.as_raw_fd()], wait.min(Duration::from_millis(50)));
        }
    }
    ring.drain(Duration::from_secs(1))?;
    Ok((reason, started.elapsed().as_secs_f64()))
}

/// Loss (not overflow) a receiver may report before `--rate auto` takes it for congestion on
/// the way: a link that collapses under the rate. Steady loss below it is left to the repairs.
const HEAVY_LOSS_PPM: u32 = 200_000;

/// `--rate auto`: follows congestion at the receivers. Each receipt notice carries the share of
/// datagrams the receiver's own socket dropped for lack of buffer space (`overflow_ppm`, from
/// `SO_RXQ_OVFL`) and how full that buffer got (`queue_ppm`, from `SO_MEMINFO`).
/// - Overflow, or a buffer found more than half full: the sender is too fast for that
///   receiver. Back off (hard under real overflow, gently otherwise), then hold for
///   [`RateControl::SETTLE`]: notices lag the sends by up to a notice interval, and backing
///   off again on the same stale news would take the rate far below what the receivers take.
/// - A little overflow, or a buffer more than a quarter full: no faster.
/// - Neither: faster, by a quarter per step until the first sign of a queue (slow start, as
///   TCP's), by 12 % per step after, never more than twice what actually went out in the last
///   step (a rate the sender cannot reach says nothing, and would take many steps to come
///   down). The receivers' delivery rate is not a cap here: under loss, blocks are verified
///   late (after their repairs), so it understates what they take.
///
/// Loss on the way (a lossy link, nftables in the tests) does not slow the sender down unless
/// it is heavy (over 20 %): slowing down does not make a lossy link lose less, and the repairs
/// cover it (docs/DESIGN.md, 2026-11-22).
struct RateControl {
    rate: u64,
    slow_start: bool,
    hold_until: Option<Instant>,
}

impl RateControl {
    const SETTLE: Duration = Duration::from_millis(300);

    fn new(rate: u64) -> Self {
        RateControl {
            rate,
            slow_start: true,
            hold_until: None,
        }
    }

    /// One step (every 100 ms): `achieved` is what went out since the last, bytes per second.
    fn step(&mut self, sender: &Sender<Content>, now: Instant, achieved: u64) -> u64 {
        let loss = sender
            .receiver_report()
            .iter()
            .map(|r| r.loss_ppm)
            .max()
            .unwrap_or(0);
        let congestion =
            sender
                .worst_overflow_ppm()
                .max(if loss > HEAVY_LOSS_PPM { loss } else { 0 });
        let queue = sender.worst_queue_ppm();
        let rate = self.rate;
        let settled = self.hold_until.is_none_or(|t| now >= t);
        self.rate = if congestion > 1_000 || queue > QUEUE_HIGH_PPM {
            self.slow_start = false;
            if settled {
                self.hold_until = Some(now + Self::SETTLE);
                let backed_off = if congestion > 10_000 {
                    rate * 7 / 10
                } else {
                    rate * 9 / 10
                };
                // Straight down to what the slowest receiver verified lately, if that is
                // lower (but no lower than half): one step instead of many.
                match sender.slowest_delivery() {
                    Some(d) => backed_off.min(d.max(rate / 2)),
                    None => backed_off,
                }
            } else {
                rate
            }
        } else if congestion > 100 || queue > QUEUE_RISING_PPM {
            self.slow_start = false;
            rate
        } else {
            // Not far past what went out.
            let up = if self.slow_start { rate / 4 } else { rate / 8 };
            (rate + up).min(achieved.saturating_mul(2).max(START_RATE))
        }
        .clamp(MIN_RATE, MAX_RATE);
        self.rate
    }
}

/// A receiver whose socket buffer was found more than half full is falling behind.
const QUEUE_HIGH_PPM: u32 = 500_000;
/// More than a quarter: no faster.
const QUEUE_RISING_PPM: u32 = 250_000;

fn send_due(
    sender: &mut Sender<Content>,
    ring: &mut SendRing,
    side: Option<&MulticastSender>,
    control: &UdpSocket,
    now: Instant,
    hdr: &mut [u8],
) -> Result<(), NodeError> {
    // A data unit that did not fit the last super-buffer, its header kept in `spare`.
    let mut spare = [0u8; 64];
    let mut carry: Option<Transmit> = None;
    let block_size = sender.manifest().block_size() as usize;
    loop {
        while ring.free_slots() == 0 {
            ring.wait(Duration::from_millis(5))?;
        }
        let (t, head): (Transmit, &[u8]) = match carry.take() {
            Some(t) => (t, &spare[..t.len]),
            None => match sender.poll_transmit(now, hdr) {
                Some(t) => (t, &hdr[..t.len]),
                None => return Ok(()),
            },
        };
        let Some(unit) = t.payload else {
            send_plain(t, head, side, control);
            continue;
        };
        // Open a super-buffer for this unit's size and fill it while the sender has more
        // units due that fit: payloads go from the mapping, only headers are copied.
        let seg = t.datagram_len() as u16;
        let mut batch = ring
            .batch(seg)
            .map_err(|e| NodeError::Config(format!("send: {e:?}")))?;
        // Split mode: the super-buffer goes to the unit's owner, and only units for the same
        // owner join it.
        let dest = t.destination;
        if let Destination::Peer(SocketAddr::V4(to)) = dest {
            batch.set_destination(to);
        }
        let src = &sender.source().sources[unit.object.0 as usize];
        let base = unit.block.0 as usize * block_size + unit.offset;
        // The range lies inside the object: the sender made it from the manifest.
        let _ = batch.push(head, src, base..base + unit.len);
        while batch.room() > 0 {
            let Some(next) = sender.poll_transmit(now, hdr) else {
                break;
            };
            match next.payload {
                Some(u) if next.datagram_len() <= usize::from(seg) && next.destination == dest => {
                    let src = &sender.source().sources[u.object.0 as usize];
                    let base = u.block.0 as usize * block_size + u.offset;
                    let _ = batch.push(&hdr[..next.len], src, base..base + u.len);
                }
                Some(_) => {
                    spare[..next.len].copy_from_slice(&hdr[..next.len]);
                    carry = Some(next);
                    break;
                }
                None => send_plain(next, &hdr[..next.len], side, control),
            }
        }
        let _ = batch.submit();
    }
}

fn send_plain(t: Transmit, bytes: &[u8], side: Option<&MulticastSender>, control: &UdpSocket) {
    match t.destination {
        // Control replies are small; a full socket buffer drops them, which the protocol
        // treats as loss.
        Destination::Peer(addr) => {
            let _ = control.send_to(bytes, addr);
        }
        Destination::Group | Destination::Stripe(_) => {
            // Split mode sends nothing to a group (it has no group socket).
            let Some(side) = side else {
                return;
            };
            // SAFETY: `side` is a connected UDP socket; the pointer and length describe the
            // initialized slice `bytes`, which lives across the call.
            unsafe {
                libc::send(side.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0);
            }
        }
    }
}
