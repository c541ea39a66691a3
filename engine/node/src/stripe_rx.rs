//! The receiving side of a striped first pass: stripe `s` of an `S`-stripe session arrives on
//! the group's port + `s` (docs/wire.md §3.1), so each stripe has its own socket and the
//! kernel's copy out of those sockets (about half of a receiver's CPU) runs on as many threads
//! as the receiver is given. The protocol core stays on the receive thread: readers hand it
//! whole batches (GRO super-datagrams as they came) through a channel, wake it with an
//! eventfd, and get the emptied batches back; no lock is taken per datagram or per batch.
//!
//! With `threads` receive threads in all, stripe `s >= 1` is read by thread `s mod threads`,
//! where thread 0 is the receive thread itself (which also reads stripe 0 on the group's own
//! port, with the announces, parity and repairs).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::{Scope, ScopedJoinHandle};
use std::time::Duration;

use blockcast_io::os::{wait_readable, EventFd};
use blockcast_io::{IoError, MulticastReceiver, RecvBatch, GRO_BUFFER_SIZE};

use crate::NodeError;

/// Batches each reader thread cycles through (8 datagrams of up to 64 KiB each).
const BATCHES_PER_READER: usize = 4;
/// Longest a reader waits in one call (for its sockets, or for a batch to come back).
const READER_TICK: Duration = Duration::from_millis(50);

/// What one stripe socket saw, for the receiver's reports.
#[derive(Default)]
struct Counters {
    /// Datagrams received (a GRO super-datagram counts once).
    received: AtomicU64,
    /// The socket's overflow count (`SO_RXQ_OVFL`) at its last read.
    drops: AtomicU32,
    /// Fullest receive queue seen since the receive thread last asked, ppm.
    queue_ppm: AtomicU32,
}

impl Counters {
    /// Notes how full `sock`'s receive queue is (once per turn, one `getsockopt`).
    fn note_queue(&self, sock: &OwnedFd) {
        if let Some(q) = blockcast_io::receive_queue_ppm(sock) {
            self.queue_ppm.fetch_max(q, Ordering::Relaxed);
        }
    }

    /// One `recvmmsg` from `sock` into `batch`, counted; returns the datagrams received.
    fn recv(&self, batch: &mut RecvBatch, sock: &OwnedFd) -> Result<usize, IoError> {
        let before = batch.received();
        let n = batch.recv(sock, Duration::ZERO)?;
        self.received
            .fetch_add(batch.received() - before, Ordering::Relaxed);
        if let Some(d) = batch.socket_drops() {
            self.drops.store(d, Ordering::Relaxed);
        }
        Ok(n)
    }
}

enum Msg {
    /// A filled batch from reader `reader`.
    Batch {
        reader: usize,
        batch: RecvBatch,
    },
    Failed(IoError),
}

/// The sockets of stripes 1..S of the current source, and the threads reading them.
pub(crate) struct StripeSockets<'scope> {
    /// Stripes the receive thread reads itself: (stripe, socket).
    own: Vec<(usize, OwnedFd)>,
    own_batch: RecvBatch,
    /// Per stripe 1..S (index `stripe - 1`).
    counters: Arc<[Counters]>,
    filled: mpsc::Receiver<Msg>,
    /// Where each reader's emptied batches go back.
    free: Vec<mpsc::Sender<RecvBatch>>,
    wake: Arc<EventFd>,
    /// Written at shutdown: the readers end when they see it.
    halt: Arc<EventFd>,
    readers: Vec<ScopedJoinHandle<'scope, f64>>,
}

impl<'scope> StripeSockets<'scope> {
    /// Joins `group`'s ports + 1 ..= + `stripes - 1` on `iface` and starts
    /// `min(stripes, threads) - 1` reader threads in `scope`.
    pub(crate) fn open<'env>(
        scope: &'scope Scope<'scope, 'env>,
        group: SocketAddrV4,
        iface: Ipv4Addr,
        rcvbuf: usize,
        stripes: u16,
        threads: usize,
    ) -> Result<Self, NodeError> {
        let stripes = usize::from(stripes.max(1));
        let threads = threads.clamp(1, stripes);
        if usize::from(group.port()) + stripes - 1 > usize::from(u16::MAX) {
            return Err(NodeError::Config(format!(
                "the session has {stripes} stripes, more ports than {group} has above it"
            )));
        }
        let counters: Arc<[Counters]> = (1..stripes).map(|_| Counters::default()).collect();
        let eventfd = || EventFd::new().map_err(|e| NodeError::Internal(format!("eventfd: {e}")));
        let wake = Arc::new(eventfd()?);
        let halt = Arc::new(eventfd()?);
        let mut per_thread: Vec<Vec<(usize, OwnedFd)>> = (0..threads).map(|_| Vec::new()).collect();
        for s in 1..stripes {
            let addr = SocketAddrV4::new(*group.ip(), group.port() + s as u16);
            let sock: OwnedFd = MulticastReceiver::new(addr, iface, rcvbuf, true)?.into();
            per_thread[s % threads].push((s, sock));
        }
        let own = std::mem::take(&mut per_thread[0]);
        let own_batch = RecvBatch::new(8, GRO_BUFFER_SIZE)?;
        // Everything that can fail is made before the first reader starts.
        let (filled_tx, filled) = mpsc::channel::<Msg>();
        let mut free = Vec::new();
        let mut to_start = Vec::new();
        for (r, socks) in per_thread.into_iter().enumerate().skip(1) {
            let (free_tx, free_rx) = mpsc::channel::<RecvBatch>();
            for _ in 0..BATCHES_PER_READER {
                let _ = free_tx.send(RecvBatch::new(8, GRO_BUFFER_SIZE)?);
            }
            free.push(free_tx);
            to_start.push(Reader {
                index: r - 1,
                socks,
                counters: counters.clone(),
                free: free_rx,
                filled: filled_tx.clone(),
                wake: wake.clone(),
                halt: halt.clone(),
            });
        }
        let mut readers = Vec::new();
        for reader in to_start {
            let name = format!("bc-recv-{}", reader.index + 1);
            match std::thread::Builder::new()
                .name(name)
                .spawn_scoped(scope, move || reader.run())
            {
                Ok(h) => readers.push(h),
                Err(e) => {
                    // The readers already started end at the halt.
                    halt.poke();
                    return Err(NodeError::spawn("a receive thread", e));
                }
            }
        }
        Ok(StripeSockets {
            own,
            own_batch,
            counters,
            filled,
            free,
            wake,
            halt,
            readers,
        })
    }

    /// Stripes of the session these sockets were opened for (stripe 0 included).
    pub(crate) fn count(&self) -> u16 {
        (self.counters.len() + 1) as u16
    }

    /// Descriptors the receive thread waits on for these stripes: the readers' eventfd first,
    /// then its own stripe sockets (the order [`drain`](Self::drain) takes `ready` in).
    pub(crate) fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        std::iter::once(self.wake.as_raw_fd()).chain(self.own.iter().map(|(_, s)| s.as_raw_fd()))
    }

    /// Hands every batch that arrived on these stripes to `handle`: the receive thread's own
    /// sockets that `ready` (in [`fds`](Self::fds) order) marks, then what the readers filled.
    /// Returns whether any datagram came.
    pub(crate) fn drain(
        &mut self,
        ready: &[bool],
        handle: &mut dyn FnMut(&mut RecvBatch) -> Result<(), NodeError>,
    ) -> Result<bool, NodeError> {
        let mut any = false;
        if ready.first().copied().unwrap_or(false) {
            self.wake.clear();
        }
        for (k, (stripe, sock)) in self.own.iter().enumerate() {
            if !ready.get(k + 1).copied().unwrap_or(false) {
                continue;
            }
            let c = &self.counters[stripe - 1];
            c.note_queue(sock);
            for _ in 0..64 {
                if c.recv(&mut self.own_batch, sock)? == 0 {
                    break;
                }
                any = true;
                handle(&mut self.own_batch)?;
            }
        }
        while let Ok(msg) = self.filled.try_recv() {
            match msg {
                Msg::Batch { reader, mut batch } => {
                    any = true;
                    let r = handle(&mut batch);
                    // The reader may have stopped (shutdown); then the batch is just dropped.
                    let _ = self.free[reader].send(batch);
                    r?;
                }
                Msg::Failed(e) => return Err(e.into()),
            }
        }
        Ok(any)
    }

    /// Datagrams received and the overflow count, summed over these stripes' sockets.
    pub(crate) fn socket_totals(&self) -> (u64, u32) {
        self.counters.iter().fold((0, 0), |(r, d), c| {
            (
                r + c.received.load(Ordering::Relaxed),
                d.wrapping_add(c.drops.load(Ordering::Relaxed)),
            )
        })
    }

    /// The fullest these stripes' sockets were since the last call, ppm.
    pub(crate) fn take_queue_ppm(&self) -> u32 {
        self.counters
            .iter()
            .map(|c| c.queue_ppm.swap(0, Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }

    /// Stops and joins the readers; returns their CPU seconds and the datagrams these
    /// stripes' sockets received.
    pub(crate) fn shutdown(self) -> (f64, u64) {
        self.halt.poke();
        drop(self.free);
        let cpu = self
            .readers
            .into_iter()
            .map(|h| h.join().unwrap_or(0.0))
            .sum();
        let received = self
            .counters
            .iter()
            .map(|c| c.received.load(Ordering::Relaxed))
            .sum();
        (cpu, received)
    }
}

/// One reader thread: its stripe sockets, batches in and out.
struct Reader {
    index: usize,
    socks: Vec<(usize, OwnedFd)>,
    counters: Arc<[Counters]>,
    free: mpsc::Receiver<RecvBatch>,
    filled: mpsc::Sender<Msg>,
    wake: Arc<EventFd>,
    halt: Arc<EventFd>,
}

impl Reader {
    /// Reads until halted (or the receive thread is gone); returns the thread's CPU seconds.
    fn run(self) -> f64 {
        if let Err(e) = self.read() {
            let _ = self.filled.send(Msg::Failed(e));
            self.wake.poke();
        }
        blockcast_io::os::thread_cpu_seconds()
    }

    fn read(&self) -> Result<(), IoError> {
        // The sockets, then the halt eventfd (never read: once written, the reader ends).
        let fds: Vec<RawFd> = self
            .socks
            .iter()
            .map(|(_, s)| s.as_raw_fd())
            .chain(std::iter::once(self.halt.as_raw_fd()))
            .collect();
        let mut spare: Option<RecvBatch> = None;
        let mut ready = vec![false; fds.len()];
        loop {
            wait_readable(&fds, READER_TICK, &mut ready);
            if ready[self.socks.len()] {
                return Ok(());
            }
            for (k, (stripe, sock)) in self.socks.iter().enumerate() {
                if !ready[k] {
                    continue;
                }
                let c = &self.counters[stripe - 1];
                c.note_queue(sock);
                for _ in 0..64 {
                    let mut batch = match spare.take() {
                        Some(b) => b,
                        // Every batch is with the receive thread: wait for one (the socket
                        // buffer holds what arrives meanwhile).
                        None => match self.free.recv_timeout(READER_TICK) {
                            Ok(b) => b,
                            Err(mpsc::RecvTimeoutError::Timeout) => break,
                            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
                        },
                    };
                    if c.recv(&mut batch, sock)? == 0 {
                        spare = Some(batch);
                        break;
                    }
                    let msg = Msg::Batch {
                        reader: self.index,
                        batch,
                    };
                    if self.filled.send(msg).is_err() {
                        return Ok(());
                    }
                    self.wake.poke();
                }
            }
        }
    }
}
