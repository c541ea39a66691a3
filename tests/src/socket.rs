//! A receiver's data socket and CPU, as a node has them: a receive buffer of finite bytes
//! that the kernel fills as datagrams arrive and drops from when it is full, and one receive
//! thread that empties it in batches at the rate its CPU processes datagrams. What the
//! receiver reports of them goes through the same calls the node makes: before each read the
//! buffer's fill ([`Receiver::note_queue`], the node's `SO_MEMINFO`: the fill now), after
//! each batch the socket's counts of datagrams read and dropped ([`Receiver::note_socket`],
//! the node's `SO_RXQ_OVFL`: the drop count as it was when the last datagram read was
//! queued, so news of overflow reaches the receiver a buffer's worth of time late).
//!
//! Only the data socket is modelled: datagrams to the group (units, parity, XOR repairs,
//! announces) queue; datagrams to the receiver's own address (accepts, done) go to its
//! control socket and are taken at once, as the node's poll loop does. While the thread is
//! busy with a batch its timers wait (NACKs and receipt notices leave after the batch), as
//! they do in the node's one receive loop.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use blockcast_proto::{BlockStore, Destination, Receiver};

use crate::driver::{Datagram, Driven, Host, Io};
use crate::hosts::ReceiverHooks;

/// A receiver's socket buffer and service rate ([`crate::SimConfig::receiver_limits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiverLimits {
    /// The data socket's receive buffer (bytes the kernel may hold for it).
    pub buffer: usize,
    /// What each datagram costs in the buffer beyond its own bytes (the kernel charges a
    /// buffer's true size, not the payload's).
    pub overhead: usize,
    /// Datagram bytes per second the receive thread takes out of the socket and processes.
    pub service_rate: u64,
    /// Most datagrams one read takes (the node's `recvmmsg` batch).
    pub batch: usize,
    /// The receive thread is not scheduled for `.1` once every `.0` (the first stall comes
    /// at a point of the period that differs per receiver): a host whose cores other work
    /// shares. `None`: it always runs.
    pub stalls: Option<(Duration, Duration)>,
}

impl ReceiverLimits {
    /// A socket of `buffer` bytes emptied at `service_rate` bytes per second, 64 datagrams a
    /// read, 256 bytes of overhead each.
    pub fn new(buffer: usize, service_rate: u64) -> Self {
        ReceiverLimits {
            buffer,
            overhead: 256,
            service_rate,
            batch: 64,
            stalls: None,
        }
    }
}

/// What a receiver's socket saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketStats {
    /// Datagrams the receive thread read.
    pub read: u64,
    /// Datagrams dropped because the buffer was full.
    pub dropped: u64,
    /// The fullest the buffer was, bytes.
    pub peak: usize,
    /// Times the receive thread stalled ([`ReceiverLimits::stalls`]).
    pub stalls: u64,
}

struct Queued {
    to: Destination,
    from: SocketAddr,
    bytes: Vec<u8>,
    /// The socket's drop count when it was queued: what `SO_RXQ_OVFL` hands the reader with
    /// it (the kernel stamps each datagram with the count as it queues it).
    drops: u32,
}

/// The data socket's queue and the receive thread's batch in progress.
pub(crate) struct SocketModel {
    limits: ReceiverLimits,
    queue: VecDeque<Queued>,
    /// Bytes charged to the buffer.
    used: usize,
    /// The batch being processed, handed to the receiver when the thread is done with it.
    batch: Vec<Queued>,
    busy_until: Option<Instant>,
    /// The drop count the last datagram read carried.
    drops_seen: u32,
    /// When the receive thread is next descheduled ([`ReceiverLimits::stalls`]).
    next_stall: Option<Instant>,
    stats: SocketStats,
}

impl SocketModel {
    /// `first_stall`: when this receiver's thread first stalls, if it does.
    pub(crate) fn new(limits: ReceiverLimits, first_stall: Option<Instant>) -> Self {
        SocketModel {
            next_stall: first_stall.filter(|_| limits.stalls.is_some()),
            limits: ReceiverLimits {
                service_rate: limits.service_rate.max(1),
                batch: limits.batch.max(1),
                ..limits
            },
            queue: VecDeque::new(),
            used: 0,
            batch: Vec::new(),
            busy_until: None,
            drops_seen: 0,
            stats: SocketStats::default(),
        }
    }

    fn charge(&self, len: usize) -> usize {
        len + self.limits.overhead
    }

    /// A datagram reaches the socket: queued, or dropped if the buffer is full.
    fn arrive(&mut self, d: Datagram<'_>) {
        let charge = self.charge(d.bytes.len());
        if self.used + charge > self.limits.buffer {
            self.stats.dropped += 1;
            return;
        }
        self.used += charge;
        self.stats.peak = self.stats.peak.max(self.used);
        self.queue.push_back(Queued {
            to: d.to,
            from: d.from,
            bytes: d.bytes.to_vec(),
            drops: self.stats.dropped as u32,
        });
    }

    fn busy(&self, now: Instant) -> bool {
        self.busy_until.is_some_and(|t| now < t)
    }

    /// The buffer's fill, parts per million of it.
    fn fill_ppm(&self) -> u32 {
        (self.used as u64 * 1_000_000 / self.limits.buffer.max(1) as u64).min(1_000_000) as u32
    }

    /// One read: up to a batch of datagrams out of the buffer; the thread is busy with them
    /// until they are processed.
    fn read(&mut self, now: Instant) {
        let n = self.queue.len().min(self.limits.batch);
        let mut bytes = 0u64;
        for q in self.queue.drain(..n) {
            self.used -= q.bytes.len() + self.limits.overhead;
            bytes += q.bytes.len() as u64;
            self.drops_seen = q.drops;
            self.batch.push(q);
        }
        self.stats.read += n as u64;
        let mut cost = Duration::from_nanos(bytes * 1_000_000_000 / self.limits.service_rate);
        if let (Some((every, length)), Some(at)) = (self.limits.stalls, self.next_stall) {
            if now >= at {
                cost += length;
                self.stats.stalls += 1;
                self.next_stall = Some(at.max(now - every) + every);
            }
        }
        self.busy_until = Some(now + cost);
    }
}

/// A simulated receiver: the [`Receiver`] with its hooks, behind a modelled socket or (no
/// limits) taking every datagram the instant it arrives.
pub(crate) struct ReceiverHost<T> {
    pub rx: Driven<Receiver<T>, ReceiverHooks>,
    socket: Option<SocketModel>,
}

impl<T> ReceiverHost<T> {
    pub(crate) fn new(
        rx: Driven<Receiver<T>, ReceiverHooks>,
        limits: Option<ReceiverLimits>,
        first_stall: Option<Instant>,
    ) -> Self {
        ReceiverHost {
            rx,
            socket: limits.map(|l| SocketModel::new(l, first_stall)),
        }
    }

    pub(crate) fn socket_stats(&self) -> Option<SocketStats> {
        self.socket.as_ref().map(|s| s.stats)
    }
}

impl<T: BlockStore + Send> Host for ReceiverHost<T> {
    fn handle_datagram(&mut self, now: Instant, d: Datagram<'_>, io: &mut Io<'_>) {
        match (&mut self.socket, d.to) {
            (Some(s), Destination::Group | Destination::Stripe(_)) => s.arrive(d),
            _ => self.rx.handle_datagram(now, d, io),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        // Timers fire between batches, not while the thread is busy with one.
        if !self.socket.as_ref().is_some_and(|s| s.busy(now)) {
            self.rx.handle_timeout(now);
        }
    }

    fn poll(&mut self, now: Instant, io: &mut Io<'_>) {
        if let Some(s) = self.socket.as_mut() {
            if !s.busy(now) {
                if s.busy_until.take().is_some() {
                    // The batch is processed: the receiver takes it, then hears the socket's
                    // counts (as the node does after each batch).
                    for q in std::mem::take(&mut s.batch) {
                        let d = Datagram {
                            to: q.to,
                            from: q.from,
                            bytes: &q.bytes,
                        };
                        self.rx.handle_datagram(now, d, io);
                    }
                    self.rx.ep.note_socket(s.stats.read, s.drops_seen);
                    self.rx.handle_timeout(now);
                }
                if !s.queue.is_empty() {
                    // How full the buffer is, before the read.
                    self.rx.ep.note_queue(s.fill_ppm());
                    s.read(now);
                }
            }
        }
        self.rx.poll(now, io);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match self.socket.as_ref().and_then(|s| s.busy_until) {
            // Busy with a batch: its timers wait until it is done.
            Some(t) => Some(t),
            None => self.rx.poll_timeout(),
        }
    }

    fn leave(&mut self, now: Instant) {
        self.rx.leave(now);
    }
}
