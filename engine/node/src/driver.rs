//! The one real driver: runs any protocol [`Endpoint`] over sockets, io_uring and the clock.
//!
//! Every node thread that speaks the protocol (the server's control thread and data threads,
//! a receiver, each half of a relay) is this loop with a [`Host`] of its own: the host brings
//! what the node adds around the protocol (a verify thread's answers, a player's priority
//! asks, the data threads' progress, fail-over), never a second copy of the loop. The
//! simulator's driver (tests/src/driver.rs) runs the same endpoints on a virtual network.
//!
//! One turn: the host's inputs from elsewhere ([`Host::begin`]); every datagram queued on
//! the input sockets, a bounded number of batches each ([`Host::on_batch`]); the endpoint's
//! timers; every datagram due ([`Out::send_due`]: data units gathered into GSO super-buffers
//! straight from where they lie, the rest sent as they are); the endpoint's events
//! ([`Host::on_event`]); the host's bookkeeping ([`Host::end`]); then a wait until the next
//! datagram, the endpoint's next timer or the host's cap, whichever is first.
//!
//! With a group secret ([`Io::protect`], docs/wire.md §16) the driver is where packets are
//! protected, so the endpoint sees only opened packets: [`feed`] opens every datagram in
//! place in its batch buffer and hands on only those whose tag holds (the rest are counted
//! and never parsed); [`Out::send_due`] seals every datagram that leaves, units into storage
//! the ring owns (a sealed unit cannot be sent from the mapping), the rest through a scratch
//! buffer.

use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use blockcast_io::os::wait_readable;
use blockcast_io::xdp::{udp_payload_range, XskBatch};
use blockcast_io::{GsoBatch, MulticastSender, RecvBatch, SendRing, Source};
use blockcast_proto::{Destination, Endpoint, Transmit, UnitRef};
use blockcast_seal::{OpenStats, Opener, Sealer, Secret, TRAILER_LEN};

use crate::xdp::{XdpInputs, XdpOut};
use crate::NodeError;

/// Batches read from one socket per turn at most (the rest waits for the next turn, so
/// timers and sends are not starved by a flood). A turn also ends, after its first batch,
/// when one of the endpoint's timers falls due ([`read_inputs`]).
const MAX_BATCHES_PER_TURN: usize = 64;
/// Frames taken from an AF_XDP socket's RX ring at once (then given back to its fill ring).
const XDP_BATCH: usize = 64;
/// A wait shorter than this is not worth a system call: the next turn starts at once. Kept
/// tiny: a thread that spins through short waits takes a core from the others (on a 2-core
/// host a spinning data thread halved a receiver's throughput), and a paced thread's waits
/// are a GSO super-buffer's worth of time, tens of microseconds.
const MIN_WAIT: Duration = Duration::from_micros(2);
/// Group datagrams without a payload this long or longer go into super-buffers where the ring
/// is on the group ([`Out::group_ring`]): repairs, not announces or done notices.
const GATHERED_MIN: usize = 1024;
/// Largest datagram an endpoint writes.
const TRANSMIT_BUF: usize = 65_536;

/// Whether the loop goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Stop,
}

/// An endpoint whose data units the driver can send without a copy: where a unit's payload
/// lies (a mapped file), for the ring to gather.
pub(crate) trait Sends: Endpoint {
    /// The source holding `unit`'s bytes and their range in it.
    fn payload(&self, _unit: &UnitRef) -> Option<(&Source, Range<usize>)> {
        None
    }
}

/// One socket the driver reads, with its batch buffers.
pub(crate) struct Input {
    pub fd: OwnedFd,
    pub batch: RecvBatch,
}

impl Input {
    pub(crate) fn new(fd: impl Into<OwnedFd>, batch: RecvBatch) -> Self {
        Input {
            fd: fd.into(),
            batch,
        }
    }
}

/// Where the endpoint's datagrams leave.
pub(crate) struct Out {
    /// Data units: GSO super-buffers gathered from the payload sources. Its socket is
    /// connected to the group (or the stripe's port); unconnected in split mode, where each
    /// super-buffer names its member.
    pub ring: Option<SendRing>,
    /// Other group datagrams (announces, manifest chunks, parity, done), one at a time.
    pub group: Option<MulticastSender>,
    /// Unicast datagrams (control replies, NACKs, receipt notices, split mode's packets).
    pub control: Option<UdpSocket>,
    /// With a group secret: seals every datagram that leaves.
    pub seal: Option<Seal>,
    /// Data units as AF_XDP frames (`--datapath xdp` on a data thread), instead of the ring.
    pub xdp: Option<XdpOut>,
    /// The ring's socket is connected to the group (a server's control thread): group
    /// datagrams without a payload that are as long as units (XOR repairs, parity) are
    /// gathered into super-buffers too, one system call for many instead of one each.
    pub group_ring: bool,
}

/// What seals one thread's datagrams: its [`Sealer`] (a sender id of its own) and a buffer to
/// seal datagrams that are not gathered by the ring.
pub(crate) struct Seal {
    sealer: Sealer,
    scratch: Vec<u8>,
}

impl Seal {
    /// A sealer with a fresh random sender id (never shared: docs/wire.md §16.2).
    pub(crate) fn new(secret: &Secret) -> Result<Self, NodeError> {
        Ok(Seal {
            sealer: Sealer::new(secret, crate::keys::random_bytes()?),
            scratch: Vec::with_capacity(TRANSMIT_BUF + TRAILER_LEN),
        })
    }

    /// `bytes ‖ more` sealed, in the scratch buffer.
    fn seal(&mut self, bytes: &[u8], more: &[u8]) -> Result<&[u8], NodeError> {
        let len = bytes.len() + more.len();
        self.scratch.clear();
        self.scratch.extend_from_slice(bytes);
        self.scratch.extend_from_slice(more);
        self.scratch.resize(len + TRAILER_LEN, 0);
        let n = self
            .sealer
            .seal_in_place(&mut self.scratch, len)
            .map_err(sealing)?;
        Ok(&self.scratch[..n])
    }
}

fn sealing(e: blockcast_seal::SealError) -> NodeError {
    NodeError::Internal(format!("sealing a datagram: {e}"))
}

/// What a node adds around the protocol.
pub(crate) trait Host<E: Endpoint> {
    /// Turn start, before the sockets are read: inputs from other threads or the user.
    fn begin(&mut self, _ep: &mut E, _now: Instant, _io: &mut Io) -> Result<Flow, NodeError> {
        Ok(Flow::Continue)
    }

    /// Input `input` is about to be read into `batch`: lay the receive out
    /// ([`RecvBatch::place_next`]) if the host knows where payloads belong.
    fn before_recv(&mut self, _ep: &mut E, _input: usize, _batch: &mut RecvBatch) {}

    /// A batch arrived on input `input`: hand it to the endpoint (by default every datagram,
    /// each GRO segment apart, opened by `opener` with a group secret).
    fn on_batch(
        &mut self,
        ep: &mut E,
        now: Instant,
        _input: usize,
        batch: &mut RecvBatch,
        opener: Option<&mut Opener>,
    ) -> Result<(), NodeError> {
        feed(ep, now, batch, opener);
        Ok(())
    }

    /// A batch of AF_XDP frames arrived: hand their datagrams to the endpoint (by default
    /// each frame's UDP payload where it lies, opened in place with a group secret). The
    /// frames go back to the fill ring when this returns.
    fn on_frames(
        &mut self,
        ep: &mut E,
        now: Instant,
        batch: &mut XskBatch<'_>,
        opener: Option<&mut Opener>,
    ) -> Result<(), NodeError> {
        feed_frames(ep, now, batch, opener);
        Ok(())
    }

    /// Descriptors of other threads' wake-ups, waited on after the inputs.
    fn extra_fds(&self, _fds: &mut Vec<RawFd>) {}

    /// After the inputs were read: `ready` says which of [`Host::extra_fds`] woke the wait.
    fn after_inputs(
        &mut self,
        _ep: &mut E,
        _now: Instant,
        _io: &mut Io,
        _ready: &[bool],
    ) -> Result<(), NodeError> {
        Ok(())
    }

    /// One event of the endpoint.
    fn on_event(&mut self, ep: &mut E, now: Instant, event: E::Event) -> Result<Flow, NodeError>;

    /// Turn end: progress, completion.
    fn end(&mut self, _ep: &mut E, _now: Instant) -> Result<Flow, NodeError> {
        Ok(Flow::Continue)
    }

    /// The longest this turn's wait may be.
    fn max_wait(&self, _ep: &E) -> Duration {
        Duration::from_millis(50)
    }

    /// Waits until `deadline` the host's own way, instead of for the sockets (a relay's data
    /// thread waits for the block it needs); false leaves the wait to the driver.
    fn wait(&mut self, _ep: &E, _deadline: Instant) -> bool {
        false
    }
}

/// A driver's sockets.
pub(crate) struct Io {
    pub inputs: Vec<Input>,
    pub out: Out,
    /// With a group secret: opens every datagram that arrives.
    pub opener: Option<Opener>,
    /// The session's data over AF_XDP (`--datapath xdp`), read beside the inputs.
    pub xdp: Option<XdpInputs>,
    /// Which inputs were readable at the last wait (all, when the wait was skipped).
    ready: Vec<bool>,
    extra: Vec<RawFd>,
    buf: Vec<u8>,
}

impl Io {
    pub(crate) fn new(inputs: Vec<Input>, out: Out) -> Self {
        Io {
            ready: vec![true; inputs.len()],
            inputs,
            out,
            opener: None,
            xdp: None,
            extra: Vec::new(),
            buf: vec![0u8; TRANSMIT_BUF],
        }
    }

    /// With `secret`: from now on every datagram this thread sends is sealed (with a sender
    /// id of its own) and every one it reads is opened, or dropped and counted.
    pub(crate) fn protect(mut self, secret: Option<&Secret>) -> Result<Self, NodeError> {
        if let Some(secret) = secret {
            self.out.seal = Some(Seal::new(secret)?);
            self.opener = Some(Opener::new(secret));
        }
        Ok(self)
    }

    /// What the opener dropped and opened (`None` without a secret).
    pub(crate) fn open_stats(&self) -> Option<OpenStats> {
        self.opener.as_ref().map(Opener::stats)
    }

    /// Replaces input `i` (a fail-over to another source's socket).
    pub(crate) fn replace_input(&mut self, i: usize, input: Input) {
        self.inputs[i] = input;
        self.ready[i] = true;
    }

    /// Whether input `i` was readable at the last wait (or the wait was skipped).
    pub(crate) fn is_ready(&self, i: usize) -> bool {
        self.ready.get(i).copied().unwrap_or(true)
    }

    /// Sends what the endpoint has due now (a leave on the way out).
    pub(crate) fn flush<E: Sends>(&mut self, ep: &mut E, now: Instant) -> Result<(), NodeError> {
        self.out.send_due(ep, now, &mut self.buf)
    }

    /// Marks every input to be read at the next turn.
    fn all_ready(&mut self) {
        self.ready.resize(self.inputs.len(), true);
        self.ready.fill(true);
    }
}

/// Hands every datagram of `batch` to `ep`, each GRO segment apart (truncated ones dropped).
/// With `opener` each segment is opened in place first, and handed on only if it opened.
pub(crate) fn feed<E: Endpoint>(
    ep: &mut E,
    now: Instant,
    batch: &mut RecvBatch,
    opener: Option<&mut Opener>,
) {
    if let Some(opener) = opener {
        for i in 0..batch.len() {
            let Some((source, segments)) = batch.segments_mut(i) else {
                continue;
            };
            for seg in segments {
                if let Ok(n) = opener.open_in_place(seg) {
                    ep.handle_datagram(now, SocketAddr::V4(source), &seg[..n]);
                }
            }
        }
        return;
    }
    for d in batch.iter() {
        if d.truncated {
            continue;
        }
        for seg in d.segments() {
            ep.handle_datagram(now, SocketAddr::V4(d.source), seg);
        }
    }
}

/// Hands the UDP payload of every frame of `batch` to `ep`, where it lies in the frame (frames
/// that are not UDP over IPv4 are skipped). With `opener` each payload is opened in place
/// first, and handed on only if it opened.
pub(crate) fn feed_frames<E: Endpoint>(
    ep: &mut E,
    now: Instant,
    batch: &mut XskBatch<'_>,
    mut opener: Option<&mut Opener>,
) {
    for i in 0..batch.len() {
        let Some(frame) = batch.frame_mut(i) else {
            continue;
        };
        let Some((source, _, at)) = udp_payload_range(frame) else {
            continue;
        };
        let payload = &mut frame[at];
        match opener.as_deref_mut() {
            Some(opener) => {
                if let Ok(n) = opener.open_in_place(payload) {
                    ep.handle_datagram(now, SocketAddr::V4(source), &payload[..n]);
                }
            }
            None => ep.handle_datagram(now, SocketAddr::V4(source), payload),
        }
    }
}

/// Runs `ep` until the host or the endpoint says stop.
pub(crate) fn run<E: Sends, H: Host<E>>(
    ep: &mut E,
    io: &mut Io,
    host: &mut H,
) -> Result<(), NodeError> {
    let mut extra_ready: Vec<bool> = Vec::new();
    loop {
        let now = Instant::now();
        if host.begin(ep, now, io)? == Flow::Stop {
            break;
        }
        read_inputs(ep, io, host)?;
        // Reading may have taken a while (a flood): timers and sends go by the clock now.
        let now = Instant::now();
        host.after_inputs(ep, now, io, &extra_ready)?;
        if ep.poll_timeout().is_some_and(|t| t <= now) {
            ep.handle_timeout(now);
        }
        io.out.send_due(ep, now, &mut io.buf)?;
        let mut flow = Flow::Continue;
        while let Some(e) = ep.poll_event() {
            if host.on_event(ep, now, e)? == Flow::Stop {
                flow = Flow::Stop;
            }
        }
        // What the events asked for (a verified block's answer, a leave) goes now.
        io.out.send_due(ep, now, &mut io.buf)?;
        if flow == Flow::Stop || host.end(ep, now)? == Flow::Stop {
            break;
        }
        wait(ep, io, host, &mut extra_ready)?;
    }
    if let Some(ring) = io.out.ring.as_mut() {
        ring.drain(Duration::from_secs(1))?;
    }
    Ok(())
}

/// Reads what is queued on the inputs the last wait found readable, each batch stamped with
/// the time it was read. After the first batch of an input, reading it stops as soon as one
/// of the endpoint's timers is due (every input gets its first batch each turn, so a flooded
/// one does not starve the others while timers keep falling due). Under a flood a socket
/// never runs dry, and a turn of 64 full GRO batches (up to 32 MiB) took 100-140 ms on a
/// loaded 2-core host, every receipt notice (the sender's only news of a filling buffer) that
/// late (docs/DESIGN.md, "receipt notices that waited for the end of a turn").
fn read_inputs<E: Sends, H: Host<E>>(
    ep: &mut E,
    io: &mut Io,
    host: &mut H,
) -> Result<(), NodeError> {
    let due = |ep: &E, now: Instant| ep.poll_timeout().is_some_and(|t| t <= now);
    for (i, input) in io.inputs.iter_mut().enumerate() {
        if !io.ready.get(i).copied().unwrap_or(true) {
            continue;
        }
        for n in 0..MAX_BATCHES_PER_TURN {
            let now = Instant::now();
            if n > 0 && due(ep, now) {
                break;
            }
            host.before_recv(ep, i, &mut input.batch);
            if input.batch.recv(&input.fd, Duration::ZERO)? == 0 {
                break;
            }
            host.on_batch(ep, now, i, &mut input.batch, io.opener.as_mut())?;
        }
    }
    // AF_XDP: a look at each RX ring is a load of its producer index, no system call.
    if let Some(xdp) = io.xdp.as_mut() {
        for socket in &mut xdp.sockets {
            for n in 0..MAX_BATCHES_PER_TURN {
                let now = Instant::now();
                if n > 0 && due(ep, now) {
                    break;
                }
                let opener = io.opener.as_mut();
                let (got, r) =
                    socket.receive_batch(XDP_BATCH, |b| host.on_frames(ep, now, b, opener));
                r?;
                if got == 0 {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Waits until the next datagram, the endpoint's next timer or the host's cap.
fn wait<E: Sends, H: Host<E>>(
    ep: &E,
    io: &mut Io,
    host: &mut H,
    extra_ready: &mut Vec<bool>,
) -> Result<(), NodeError> {
    let now = Instant::now();
    let cap = host.max_wait(ep);
    let wake = ep.poll_timeout().map_or(now + cap, |t| t.min(now + cap));
    let left = wake.saturating_duration_since(now);
    io.extra.clear();
    host.extra_fds(&mut io.extra);
    extra_ready.clear();
    extra_ready.resize(io.extra.len(), false);
    if io.out.ring.as_ref().is_some_and(|r| r.free_slots() == 0) {
        // Sends in flight fill the ring: wait for one to complete instead.
        io.out
            .ring
            .as_mut()
            .map(|r| r.wait(Duration::from_millis(1)))
            .transpose()?;
        io.all_ready();
        extra_ready.fill(true);
        return Ok(());
    }
    if left < MIN_WAIT {
        io.all_ready();
        extra_ready.fill(true);
        return Ok(());
    }
    if host.wait(ep, wake) {
        io.all_ready();
        extra_ready.fill(true);
        return Ok(());
    }
    let mut fds: Vec<RawFd> = io.inputs.iter().map(|i| i.fd.as_raw_fd()).collect();
    fds.extend_from_slice(&io.extra);
    // AF_XDP sockets last: their readiness needs no flag (their rings are always looked at).
    if let Some(xdp) = &io.xdp {
        fds.extend(xdp.sockets.iter().map(AsRawFd::as_raw_fd));
    }
    let mut ready = vec![false; fds.len()];
    wait_readable(&fds, left, &mut ready);
    let n = io.inputs.len();
    io.ready.clear();
    io.ready.extend_from_slice(&ready[..n]);
    extra_ready.copy_from_slice(&ready[n..n + io.extra.len()]);
    Ok(())
}

impl Out {
    /// Logs (debug) what this thread sent in super-buffers: how many, the units in them, and
    /// how often the socket's buffer was full. `stripe`: a data thread's; `None`: the server's
    /// control thread (its repairs, and the first pass with no data thread).
    pub(crate) fn log_super_buffers(&self, stripe: Option<u16>) {
        let Some(ring) = self.ring.as_ref() else {
            return;
        };
        let r = ring.stats();
        let what = if stripe.is_some() {
            "first pass sent"
        } else {
            "repairs sent"
        };
        tracing::debug!(
            stripe = ?stripe,
            super_buffers = r.batches_sent,
            segments = r.segments_sent,
            send_buffer_full = r.err_again,
            "{what}"
        );
    }

    /// Whether `t` goes into a super-buffer: a data unit (its payload gathered from where it
    /// lies), or, where the ring's socket is the group's ([`Self::group_ring`]), a group
    /// datagram without a payload at least [`GATHERED_MIN`] long (an XOR repair, a parity
    /// unit), copied into the ring's storage.
    fn gathers(&self, t: &Transmit) -> bool {
        self.ring.is_some() && gathered(self.group_ring, t)
    }

    /// Sends every datagram the endpoint has due at `now`: data units gathered into GSO
    /// super-buffers straight from their sources (only headers are copied; sealed, they are
    /// written into the ring's own storage instead), unit-sized group datagrams (repairs)
    /// copied into super-buffers of their own, other datagrams as they are (or sealed).
    pub(crate) fn send_due<E: Sends>(
        &mut self,
        ep: &mut E,
        now: Instant,
        buf: &mut [u8],
    ) -> Result<(), NodeError> {
        // A sealed datagram is the endpoint's plus the trailer: leave room for it.
        let trailer = if self.seal.is_some() { TRAILER_LEN } else { 0 };
        let room = buf.len() - trailer;
        // A datagram that did not fit the last super-buffer: its header (a unit's) or its
        // whole bytes, kept in `spare`.
        let mut spare: Vec<u8> = Vec::new();
        let mut carry: Option<Transmit> = None;
        loop {
            if let Some(ring) = self.ring.as_mut() {
                while ring.free_slots() == 0 {
                    ring.wait(Duration::from_millis(5))?;
                }
            }
            let (t, head): (Transmit, &[u8]) = match carry.take() {
                Some(t) => (t, &spare[..t.len]),
                None => match ep.poll_transmit(now, &mut buf[..room]) {
                    Some(t) => (t, &buf[..t.len]),
                    None => {
                        if let Some(x) = self.xdp.as_mut() {
                            x.flush()?;
                        }
                        return Ok(());
                    }
                },
            };
            if let (Some(unit), Some(x)) = (t.payload, self.xdp.as_mut()) {
                if let Some((src, range)) = ep.payload(&unit) {
                    push_frame(x, head, &src.stable_bytes()[range], self.seal.as_mut())?;
                }
                continue;
            }
            if !self.gathers(&t) {
                self.send_plain(&t, head, ep)?;
                continue;
            }
            let first = match t.payload {
                Some(unit) => match ep.payload(&unit) {
                    Some((src, range)) => Some((src, range)),
                    None => continue,
                },
                None => None,
            };
            let Some(ring) = self.ring.as_mut() else {
                continue;
            };
            // Open a super-buffer for this datagram's size and fill it while the endpoint has
            // more due that fit and go to the same place.
            let seg = (t.datagram_len() + trailer) as u16;
            let mut batch = ring.batch(seg).map_err(|source| NodeError::Send {
                op: "units",
                source,
            })?;
            let dest = t.destination;
            if let Destination::Peer(SocketAddr::V4(to)) = dest {
                batch.set_destination(to);
            }
            match first {
                Some((src, range)) => push_unit(&mut batch, head, src, range, self.seal.as_mut())?,
                None => push_datagram(&mut batch, head, self.seal.as_mut())?,
            }
            while batch.room() > 0 {
                let Some(next) = ep.poll_transmit(now, &mut buf[..room]) else {
                    break;
                };
                if !gathered(self.group_ring, &next) {
                    let (group, control) = (self.group.as_ref(), self.control.as_ref());
                    send_small(&next, &buf[..next.len], group, control, self.seal.as_mut())?;
                    continue;
                }
                if next.datagram_len() + trailer > usize::from(seg) || next.destination != dest {
                    spare.clear();
                    spare.extend_from_slice(&buf[..next.len]);
                    carry = Some(next);
                    break;
                }
                match next.payload {
                    Some(u) => {
                        if let Some((src, range)) = ep.payload(&u) {
                            push_unit(
                                &mut batch,
                                &buf[..next.len],
                                src,
                                range,
                                self.seal.as_mut(),
                            )?;
                        }
                    }
                    None => push_datagram(&mut batch, &buf[..next.len], self.seal.as_mut())?,
                }
            }
            let _ = batch.submit();
            if let Some(ring) = self.ring.as_mut() {
                ring.flush()?;
            }
        }
    }

    /// A datagram with no payload to gather (or no ring to gather it in: its payload is
    /// copied after the header).
    fn send_plain<E: Sends>(&mut self, t: &Transmit, head: &[u8], ep: &E) -> Result<(), NodeError> {
        let (group, control) = (self.group.as_ref(), self.control.as_ref());
        match t.payload.and_then(|u| ep.payload(&u)) {
            None => send_small(t, head, group, control, self.seal.as_mut()),
            Some((src, range)) => match self.seal.as_mut() {
                Some(seal) => {
                    let sealed = seal.seal(head, &src.stable_bytes()[range])?;
                    send_small(t, sealed, group, control, None)
                }
                None => {
                    let mut d = head.to_vec();
                    d.extend_from_slice(&src.stable_bytes()[range]);
                    send_small(t, &d, group, control, None)
                }
            },
        }
    }
}

/// Writes one unit into an AF_XDP frame after its headers: its header and its payload copied
/// from where it lies (the mapped content), or, sealed, both written sealed.
fn push_frame(
    x: &mut XdpOut,
    head: &[u8],
    payload: &[u8],
    mut seal: Option<&mut Seal>,
) -> Result<(), NodeError> {
    x.send(|body| match seal.as_deref_mut() {
        Some(seal) => seal.sealer.seal_into(head, payload, body).ok(),
        None => {
            let n = head.len() + payload.len();
            let body = body.get_mut(..n)?;
            body[..head.len()].copy_from_slice(head);
            body[head.len()..].copy_from_slice(payload);
            Some(n)
        }
    })
}

/// Adds one unit to a super-buffer: its header copied and its payload gathered from where it
/// lies, or, sealed, both written sealed into the ring's storage.
fn push_unit(
    batch: &mut GsoBatch<'_>,
    head: &[u8],
    src: &Source,
    range: Range<usize>,
    seal: Option<&mut Seal>,
) -> Result<(), NodeError> {
    let Some(seal) = seal else {
        // The range lies inside the source: the endpoint made it from the manifest.
        let _ = batch.push(head, src, range);
        return Ok(());
    };
    let Some(payload) = src.stable_bytes().get(range) else {
        return Ok(());
    };
    let Ok(out) = batch.push_owned(head.len() + payload.len() + TRAILER_LEN) else {
        return Ok(());
    };
    seal.sealer
        .seal_into(head, payload, out)
        .map(drop)
        .map_err(sealing)
}

/// Whether `t` goes into a super-buffer when there is a ring (see [`Out::gathers`]).
fn gathered(group_ring: bool, t: &Transmit) -> bool {
    t.payload.is_some()
        || (group_ring && t.destination == Destination::Group && t.len >= GATHERED_MIN)
}

/// Adds one whole datagram (no payload to gather: an XOR repair, a parity unit) to a
/// super-buffer, copied (or sealed) into the ring's storage.
fn push_datagram(
    batch: &mut GsoBatch<'_>,
    bytes: &[u8],
    seal: Option<&mut Seal>,
) -> Result<(), NodeError> {
    let len = bytes.len() + if seal.is_some() { TRAILER_LEN } else { 0 };
    let Ok(out) = batch.push_owned(len) else {
        return Ok(());
    };
    match seal {
        Some(seal) => seal
            .sealer
            .seal_into(bytes, &[], out)
            .map(drop)
            .map_err(sealing),
        None => {
            out.copy_from_slice(bytes);
            Ok(())
        }
    }
}

/// Sends one datagram as it is, or sealed with `seal`: to a peer through the control socket,
/// to the group through the group socket. A full socket buffer drops it: the protocol treats
/// that as loss.
fn send_small(
    t: &Transmit,
    bytes: &[u8],
    group: Option<&MulticastSender>,
    control: Option<&UdpSocket>,
    seal: Option<&mut Seal>,
) -> Result<(), NodeError> {
    let bytes = match seal {
        Some(seal) => seal.seal(bytes, &[])?,
        None => bytes,
    };
    match t.destination {
        Destination::Peer(addr) => {
            if let Some(c) = control {
                let _ = c.send_to(bytes, addr);
            }
        }
        Destination::Group | Destination::Stripe(_) => {
            // Split mode sends nothing to a group (it has no group socket).
            if let Some(g) = group {
                let _ = blockcast_io::os::send_connected(&g.as_fd(), bytes);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, UdpSocket};

    /// An endpoint with one timer, counting the datagrams it is handed.
    struct Timed {
        timer: Option<Instant>,
        got: usize,
    }

    impl Endpoint for Timed {
        type Event = ();
        fn handle_datagram(&mut self, _now: Instant, _from: SocketAddr, _bytes: &[u8]) {
            self.got += 1;
        }
        fn handle_timeout(&mut self, _now: Instant) {}
        fn poll_transmit(&mut self, _now: Instant, _buf: &mut [u8]) -> Option<Transmit> {
            None
        }
        fn poll_timeout(&self) -> Option<Instant> {
            self.timer
        }
        fn poll_event(&mut self) -> Option<()> {
            None
        }
        fn is_finished(&self) -> bool {
            false
        }
    }

    impl Sends for Timed {}

    struct Plain;

    impl Host<Timed> for Plain {
        fn on_event(&mut self, _ep: &mut Timed, _now: Instant, _e: ()) -> Result<Flow, NodeError> {
            Ok(Flow::Continue)
        }
    }

    /// `inputs` loopback sockets with `n` datagrams queued on each, read one datagram per
    /// batch.
    fn flooded_inputs(inputs: usize, n: usize) -> Io {
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let inputs = (0..inputs)
            .map(|_| {
                let rx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
                for _ in 0..n {
                    tx.send_to(&[7u8; 100], rx.local_addr().unwrap()).unwrap();
                }
                Input::new(rx, RecvBatch::new(1, 2048).unwrap())
            })
            .collect();
        let out = Out {
            ring: None,
            group: None,
            control: None,
            seal: None,
            xdp: None,
            group_ring: false,
        };
        Io::new(inputs, out)
    }

    fn flooded(n: usize) -> Io {
        flooded_inputs(1, n)
    }

    #[test]
    fn a_turn_stops_reading_a_flooded_socket_once_a_timer_is_due() {
        // Nothing due: the turn reads what is queued (up to its cap).
        let mut io = flooded(10);
        let mut ep = Timed {
            timer: None,
            got: 0,
        };
        read_inputs(&mut ep, &mut io, &mut Plain).unwrap();
        assert_eq!(ep.got, 10);
        // A timer due (a receipt notice): one batch, then the turn goes to the timers; the
        // rest is read by the next turns.
        let mut io = flooded(10);
        let mut ep = Timed {
            timer: Some(Instant::now()),
            got: 0,
        };
        read_inputs(&mut ep, &mut io, &mut Plain).unwrap();
        assert_eq!(ep.got, 1, "read past a due timer");
        ep.timer = None;
        read_inputs(&mut ep, &mut io, &mut Plain).unwrap();
        assert_eq!(ep.got, 10);
        // Two flooded inputs and a timer due at every turn: each still gets a batch a turn.
        let mut io = flooded_inputs(2, 10);
        let mut ep = Timed {
            timer: Some(Instant::now()),
            got: 0,
        };
        read_inputs(&mut ep, &mut io, &mut Plain).unwrap();
        assert_eq!(ep.got, 2, "an input starved");
    }

    /// Hands out `lens` group datagrams without a payload, each filled with its index.
    struct Repairs {
        lens: Vec<usize>,
        next: usize,
    }

    impl Endpoint for Repairs {
        type Event = ();
        fn handle_datagram(&mut self, _now: Instant, _from: SocketAddr, _bytes: &[u8]) {}
        fn handle_timeout(&mut self, _now: Instant) {}
        fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Transmit> {
            let len = *self.lens.get(self.next)?;
            buf[..len].fill(self.next as u8);
            self.next += 1;
            Some(Transmit {
                destination: Destination::Group,
                len,
                payload: None,
            })
        }
        fn poll_timeout(&self) -> Option<Instant> {
            None
        }
        fn poll_event(&mut self) -> Option<()> {
            None
        }
        fn is_finished(&self) -> bool {
            false
        }
    }

    impl Sends for Repairs {}

    /// A datagram as a GRO receiver got it: its segment size, and each segment's length and
    /// first byte.
    type Arrived = (Option<u16>, Vec<(usize, u8)>);

    /// What a GRO receiver on the group gets for `lens` sent through an `Out` whose ring is on
    /// the group (`group_ring`): each datagram as (segment size, its segments' lengths and
    /// first bytes).
    fn sent_as(group_ring: bool, lens: &[usize]) -> Vec<Arrived> {
        use blockcast_io::{MulticastReceiver, SendRingConfig};
        use std::net::SocketAddrV4;
        let lo = Ipv4Addr::LOCALHOST;
        // A port no other test uses now: the kernel's pick for a unicast socket held meanwhile.
        let hold = UdpSocket::bind((lo, 0)).unwrap();
        let port = hold.local_addr().unwrap().port();
        let group = SocketAddrV4::new(Ipv4Addr::new(239, 255, 77, 9), port);
        let rx = MulticastReceiver::new(group, lo, 4 << 20, true).unwrap();
        let ring_socket = MulticastSender::new(group, lo, 1, 1 << 20).unwrap();
        let mut io = Io::new(
            Vec::new(),
            Out {
                ring: Some(SendRing::new(ring_socket, SendRingConfig::default()).unwrap()),
                group: Some(MulticastSender::new(group, lo, 1, 1 << 20).unwrap()),
                control: None,
                seal: None,
                xdp: None,
                group_ring,
            },
        );
        let mut ep = Repairs {
            lens: lens.to_vec(),
            next: 0,
        };
        let mut buf = vec![0u8; TRANSMIT_BUF];
        io.out.send_due(&mut ep, Instant::now(), &mut buf).unwrap();
        if let Some(ring) = io.out.ring.as_mut() {
            assert!(
                ring.drain(Duration::from_secs(5)).unwrap(),
                "sends not done"
            );
        }
        let rx: std::os::fd::OwnedFd = rx.into();
        let mut batch = RecvBatch::new(8, blockcast_io::GRO_BUFFER_SIZE).unwrap();
        let (mut got, mut bytes) = (Vec::new(), 0);
        let want: usize = lens.iter().sum();
        let until = Instant::now() + Duration::from_secs(5);
        while bytes < want && Instant::now() < until {
            if batch.recv(&rx, Duration::from_millis(100)).unwrap() == 0 {
                continue;
            }
            for d in batch.iter() {
                bytes += d.bytes.len();
                got.push((
                    d.segment_size,
                    d.segments().map(|s| (s.len(), s[0])).collect::<Vec<_>>(),
                ));
            }
        }
        drop(hold);
        got
    }

    #[test]
    fn unit_sized_repairs_leave_in_one_super_buffer_where_the_ring_is_on_the_group() {
        // An announce-sized datagram, five repairs as long as units, a shorter one (an
        // object's last unit), and a done notice.
        let lens = [100, 1432, 1432, 1432, 1432, 1432, 1200, 60];
        let got = sent_as(true, &lens);
        let announce = (None, vec![(100, 0)]);
        let repairs = (
            Some(1432),
            (1..=5)
                .map(|i| (1432, i as u8))
                .chain([(1200, 6)])
                .collect::<Vec<_>>(),
        );
        let done = (None, vec![(60, 7)]);
        // The plain socket's and the ring's datagrams may pass each other; each arrives whole.
        assert_eq!(got.len(), 3, "{got:?}");
        for want in [announce, repairs, done] {
            assert!(got.contains(&want), "{want:?} not in {got:?}");
        }
        // Without: each datagram on its own, in order (one socket).
        let got = sent_as(false, &lens);
        let each: Vec<_> = lens
            .iter()
            .enumerate()
            .map(|(i, &l)| (None, vec![(l, i as u8)]))
            .collect();
        assert_eq!(got, each);
    }
}
