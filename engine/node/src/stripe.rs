//! The server's data threads: one per stripe, pinned to a core, each with its own socket and
//! io_uring. A data thread sends the first pass of its stripe's blocks (block `b` belongs to
//! stripe `b mod S`) straight from the mapping in GSO super-buffers, paced, and publishes how
//! far it got. It never waits for the control plane: the control thread reads its progress
//! from an atomic and tells the protocol core.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use blockcast_io::{MulticastSender, SendRing, SendRingConfig, Source};
use blockcast_proto::wire::{BlockIndex, ObjectId, SessionId, UnitHeaderRepr, UNIT_HEADER_LEN};
use blockcast_status::AtomicBitmap;

use crate::published::{Published, WaitError};
use crate::NodeError;

/// Where each block lies: (object, block address, byte offset in the object, length).
pub(crate) type BlockTable = Vec<(ObjectId, BlockIndex, usize, usize)>;

/// What one data thread needs.
pub(crate) struct StripePlan<'a> {
    pub stripe: usize,
    pub stripes: usize,
    pub core: Option<core_affinity::CoreId>,
    pub group: SocketAddrV4,
    pub iface: Ipv4Addr,
    pub ttl: u32,
    pub session: SessionId,
    pub unit_size: u16,
    pub epoch: Instant,
    pub sources: &'a [Source],
    pub blocks: &'a BlockTable,
    /// Total send rate in bytes per second (shared by the stripes; the control thread adapts it).
    pub rate: &'a AtomicU64,
    /// Every block of this stripe before this global block number has been sent.
    pub progress: &'a AtomicU64,
    /// Blocks every receiver already holds (sent ahead for a priority request): skipped.
    pub skip: &'a AtomicBitmap,
    /// A relay: send a block only once it is verified here (cut-through by block).
    pub ready: Option<&'a Published>,
    pub stop: &'a AtomicBool,
}

/// How far a pacing catch-up may go after a stall.
const BURST: Duration = Duration::from_micros(500);

/// What a data thread did.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct StripeStats {
    pub cpu_seconds: f64,
    /// First-pass units and datagram bytes handed to the kernel.
    pub units: u64,
    pub bytes: u64,
}

/// Runs one data thread to the end of its stripe (or until `stop`, or until a relay's upstream
/// ends without a block); returns what the thread did.
pub(crate) fn run(p: StripePlan<'_>) -> Result<StripeStats, NodeError> {
    if let Some(core) = p.core {
        core_affinity::set_for_current(core);
    }
    // Each stripe has its own port (docs/wire.md §3.1): a receiver reads it on its own socket.
    let group = SocketAddrV4::new(*p.group.ip(), p.group.port() + p.stripe as u16);
    let socket = MulticastSender::new(group, p.iface, p.ttl, 4 << 20)?;
    let mut ring = SendRing::new(socket, SendRingConfig::default())?;
    let mut stats = StripeStats::default();
    first_pass(&p, &mut ring, &mut stats)?;
    ring.drain(Duration::from_secs(1))?;
    stats.cpu_seconds = crate::thread_cpu_seconds();
    Ok(stats)
}

/// Sends the stripe's blocks in order; returns early (Ok) when stopped.
fn first_pass(
    p: &StripePlan<'_>,
    ring: &mut SendRing,
    stats: &mut StripeStats,
) -> Result<(), NodeError> {
    let us = usize::from(p.unit_size);
    let seg = (UNIT_HEADER_LEN + us) as u16;
    let mut hdr = [0u8; UNIT_HEADER_LEN];
    let mut next_send = Instant::now();
    let total = p.blocks.len();
    let mut seq = p.stripe;
    while seq < total {
        if p.skip.get(seq) {
            // Release: as below, the control thread sees this block as done.
            p.progress
                .store((seq + p.stripes) as u64, Ordering::Release);
            seq += p.stripes;
            continue;
        }
        let (object, block, base, len) = p.blocks[seq];
        if let Some(ready) = p.ready {
            // A relay sends a block as soon as it is verified upstream, not before.
            loop {
                if p.stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let deadline = Instant::now() + Duration::from_millis(50);
                match ready.wait_verified(object.0, block.0, deadline) {
                    Ok(()) => break,
                    Err(WaitError::TimedOut) => continue,
                    // Upstream ended without it: the block will not come.
                    Err(_) => {
                        return Ok(());
                    }
                }
            }
            // Pacing restarts after a wait: no burst to catch up on time spent waiting.
            next_send = next_send.max(Instant::now());
        }
        let source = &p.sources[object.0 as usize];
        let units = len.div_ceil(us);
        let mut u = 0usize;
        while u < units {
            if p.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            // Pacing: this stripe's share of the rate (Relaxed: a rate a moment old is fine).
            let rate = (p.rate.load(Ordering::Relaxed) / p.stripes as u64).max(1);
            let mut now = Instant::now();
            if now < next_send {
                // Sleep the wait off; the burst allowance absorbs the timer's slack, so no spinning.
                std::thread::sleep(next_send - now);
                now = Instant::now();
            }
            while ring.free_slots() == 0 {
                ring.wait(Duration::from_millis(5))?;
            }
            let timestamp = now.saturating_duration_since(p.epoch).as_micros() as u32;
            let mut batch = ring
                .batch(seg)
                .map_err(|e| NodeError::Config(format!("send ring: {e:?}")))?;
            let mut bytes = 0usize;
            while u < units && batch.room() > 0 {
                let off = u * us;
                let plen = us.min(len - off);
                UnitHeaderRepr {
                    session: p.session,
                    parity: false,
                    repair: false,
                    object,
                    block,
                    index: u as u16,
                    round_end: 0,
                    timestamp,
                }
                .emit(&mut hdr)
                .map_err(|e| NodeError::Config(format!("unit header: {e}")))?;
                batch
                    .push(&hdr, source, base + off..base + off + plen)
                    .map_err(|e| NodeError::Config(format!("send batch: {e:?}")))?;
                bytes += UNIT_HEADER_LEN + plen;
                stats.units += 1;
                u += 1;
            }
            let _ = batch.submit();
            ring.flush()?;
            stats.bytes += bytes as u64;
            let cost = Duration::from_nanos((bytes as u64).saturating_mul(1_000_000_000) / rate);
            next_send = next_send.max(now.checked_sub(BURST).unwrap_or(now)) + cost;
        }
        // Release: the control thread that reads this with Acquire sees a finished block.
        p.progress
            .store((seq + p.stripes) as u64, Ordering::Release);
        seq += p.stripes;
    }
    p.progress.store(u64::MAX, Ordering::Release);
    Ok(())
}
