//! The server's data threads: one per stripe, pinned to a core, each with its own socket and
//! io_uring, each running one [`StripePass`] (the protocol core's striped first pass) on the
//! node's one driver. A data thread never waits for the control plane: the control thread
//! reads its progress from atomics and tells the sender, and writes the rate it may use.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use blockcast_io::{MulticastSender, SendRing, SendRingConfig};
use blockcast_proto::{Endpoint, StripePass};
use blockcast_seal::Secret;

use crate::content::Content;
use crate::driver::{self, Flow, Io, Out};
use crate::published::WaitError;
use crate::xdp::XdpOut;
use crate::NodeError;

/// What the control thread and the data threads share.
pub(crate) struct StripeShared {
    /// The first pass's rate in bytes per second (all stripes together; the control thread
    /// sets it from the sender).
    pub rate: AtomicU64,
    /// Per stripe: every block of the stripe numbered below this has been sent.
    sent_before: Vec<AtomicU64>,
    /// Per stripe: datagram bytes sent.
    bytes: Vec<AtomicU64>,
    /// Set when the session is over: the data threads stop.
    pub stop: AtomicBool,
}

impl StripeShared {
    pub(crate) fn new(stripes: usize, rate: u64) -> Self {
        StripeShared {
            rate: AtomicU64::new(rate),
            sent_before: (0..stripes).map(|s| AtomicU64::new(s as u64)).collect(),
            bytes: (0..stripes).map(|_| AtomicU64::new(0)).collect(),
            stop: AtomicBool::new(false),
        }
    }

    pub(crate) fn stripes(&self) -> usize {
        self.sent_before.len()
    }

    /// Stripes still sending.
    fn live(&self) -> u16 {
        // Relaxed: a count a moment old only delays a stripe's share by a turn.
        let done = self
            .sent_before
            .iter()
            .filter(|p| p.load(Ordering::Relaxed) == u64::MAX)
            .count();
        (self.stripes() - done).max(1) as u16
    }

    /// How far the first pass got: every block numbered below the first value has been sent
    /// by every stripe; the second is the bytes they sent.
    pub(crate) fn progress(&self) -> (u64, u64) {
        // Acquire: pairs with the data threads' Release after each turn's sends.
        let sent_before = self
            .sent_before
            .iter()
            .map(|p| p.load(Ordering::Acquire))
            .min()
            .unwrap_or(u64::MAX);
        let bytes = self.bytes.iter().map(|b| b.load(Ordering::Relaxed)).sum();
        (sent_before, bytes)
    }
}

/// Where one data thread sends.
pub(crate) struct StripeThread<'a> {
    pub core: Option<core_affinity::CoreId>,
    pub group: SocketAddrV4,
    pub iface: Ipv4Addr,
    pub ttl: u32,
    pub shared: &'a StripeShared,
    /// The group secret: this thread seals what it sends with a sender id of its own.
    pub secret: Option<&'a Secret>,
    /// `--datapath xdp`: this thread's AF_XDP socket and the interface's Ethernet address;
    /// its units leave as frames through the socket's TX ring instead of the io_uring ring.
    pub xdp: Option<(blockcast_io::xdp::XdpSocket, [u8; 6])>,
}

/// What the data threads did.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct StripeStats {
    pub cpu_seconds: f64,
    /// First-pass units and datagram bytes handed to the kernel.
    pub units: u64,
    pub bytes: u64,
    /// Units sent as AF_XDP frames, and units dropped for want of a free frame.
    pub xdp_frames: u64,
    pub xdp_dropped: u64,
}

impl StripeStats {
    pub(crate) fn add(&mut self, o: &StripeStats) {
        self.cpu_seconds += o.cpu_seconds;
        self.units += o.units;
        self.bytes += o.bytes;
        self.xdp_frames += o.xdp_frames;
        self.xdp_dropped += o.xdp_dropped;
    }
}

/// Runs one data thread to the end of its stripe (or until stopped, or until a relay's
/// upstream ends without a block it needs).
pub(crate) fn run(
    mut pass: StripePass<Content>,
    t: StripeThread<'_>,
) -> Result<StripeStats, NodeError> {
    if let Some(core) = t.core {
        core_affinity::set_for_current(core);
    }
    // Paced: waits of a GSO super-buffer's worth of time, woken close to their deadline.
    blockcast_io::os::set_timer_slack(Duration::from_micros(1));
    // Each stripe has its own port (docs/wire.md §3.1): a receiver reads it on its own socket.
    let group = SocketAddrV4::new(*t.group.ip(), t.group.port() + pass.stripe());
    let socket = MulticastSender::new(group, t.iface, t.ttl, 4 << 20)?;
    let (ring, xdp, _port) = match t.xdp {
        // The socket stays open, unused, so the frames' source port is one this host owns.
        Some((xsk, mac)) => {
            let src = socket.local_addr()?;
            let ttl = t.ttl.min(255) as u8;
            (
                None,
                Some(XdpOut::new(xsk, mac, src, group, ttl)),
                Some(socket),
            )
        }
        None => (
            Some(SendRing::new(socket, SendRingConfig::default())?),
            None,
            None,
        ),
    };
    let mut io = Io::new(
        Vec::new(),
        Out {
            ring,
            group: None,
            control: None,
            seal: None,
            xdp,
            group_ring: false,
        },
    )
    .protect(t.secret)?;
    let mut host = StripeHost {
        shared: t.shared,
        index: usize::from(pass.stripe()),
        ended: false,
    };
    driver::run(&mut pass, &mut io, &mut host)?;
    io.out.log_super_buffers(Some(pass.stripe()));
    let s = pass.stats();
    let (xdp_frames, xdp_dropped) = io
        .out
        .xdp
        .as_ref()
        .map_or((0, 0), |x| (x.frames, x.dropped));
    Ok(StripeStats {
        cpu_seconds: blockcast_io::os::thread_cpu_seconds(),
        units: s.units,
        bytes: s.bytes,
        xdp_frames,
        xdp_dropped,
    })
}

/// A data thread's part around its stripe: the shared rate in, progress out.
struct StripeHost<'a> {
    shared: &'a StripeShared,
    index: usize,
    /// A relay's upstream ended without the block the stripe waits for.
    ended: bool,
}

impl driver::Host<StripePass<Content>> for StripeHost<'_> {
    fn begin(
        &mut self,
        pass: &mut StripePass<Content>,
        _now: Instant,
        _io: &mut Io,
    ) -> Result<Flow, NodeError> {
        if self.ended || self.shared.stop.load(Ordering::Relaxed) {
            return Ok(Flow::Stop);
        }
        // Relaxed: a rate a moment old is fine.
        pass.set_rate(self.shared.rate.load(Ordering::Relaxed), self.shared.live());
        Ok(Flow::Continue)
    }

    fn on_event(
        &mut self,
        _pass: &mut StripePass<Content>,
        _now: Instant,
        _event: (),
    ) -> Result<Flow, NodeError> {
        Ok(Flow::Continue)
    }

    fn end(&mut self, pass: &mut StripePass<Content>, _now: Instant) -> Result<Flow, NodeError> {
        // Release: the control thread that reads this with Acquire sees the sends before it.
        self.shared.sent_before[self.index].store(pass.sent_before(), Ordering::Release);
        self.shared.bytes[self.index].store(pass.stats().bytes, Ordering::Relaxed);
        Ok(if pass.is_finished() {
            Flow::Stop
        } else {
            Flow::Continue
        })
    }

    /// A relay's stripe waits for the block it needs to be verified upstream (woken at once
    /// when it is), not for a timer.
    fn wait(&mut self, pass: &StripePass<Content>, deadline: Instant) -> bool {
        let (Some(ready), Some(block)) = (pass.source().ready(), pass.waiting_for()) else {
            return false;
        };
        let deadline = deadline.max(Instant::now() + Duration::from_millis(50));
        match ready.wait_verified(block.object.0, block.block.0, deadline) {
            Ok(()) | Err(WaitError::TimedOut) => {}
            // Upstream ended without it: the block will not come.
            Err(WaitError::Ended | WaitError::OutOfRange) => self.ended = true,
        }
        true
    }
}
