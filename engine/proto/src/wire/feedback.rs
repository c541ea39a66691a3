//! Receiver -> server packets: join, leave, NACK, receipt notice and priority request.

use super::cursor::{Reader, Writer};
use super::{BlockIndex, ObjectId, ReceiverId, SessionId, UnitIndex, WireError, HEADER_LEN};

/// Receiver -> server: please count me in (wire.md §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JoinRepr {
    pub session: SessionId,
    pub receiver: ReceiverId,
    /// The cookie of the server's challenge to this address (0 before one: wire.md §6.1).
    pub cookie: u64,
}

/// Why a receiver leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum LeaveReason {
    /// Asked to stop (Ctrl-C, shutdown).
    Stopped = 0,
    /// A local failure (disk full, cannot write).
    Failed = 1,
}

/// Receiver -> server: I am leaving (wire.md §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaveRepr {
    pub session: SessionId,
    pub receiver: ReceiverId,
    /// The cookie of this receiver's Accept (wire.md §6.1).
    pub cookie: u64,
    pub reason: LeaveReason,
}

/// Which units of a block a receiver misses (wire.md §7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holes {
    /// Runs of missing units: (first unit, count).
    Ranges(Vec<(u16, u16)>),
    /// Bit `i` (MSB first in each byte) set = unit `i` is missing.
    Bitmap(Vec<u8>),
}

impl Holes {
    fn buffer_len(&self) -> usize {
        3 + match self {
            Holes::Ranges(r) => 4 * r.len(),
            Holes::Bitmap(b) => b.len(),
        }
    }

    /// Iterates the missing unit indices described.
    pub fn units(&self) -> Box<dyn Iterator<Item = u16> + '_> {
        match self {
            Holes::Ranges(r) => {
                Box::new(r.iter().flat_map(|&(s, n)| {
                    (u32::from(s)..u32::from(s) + u32::from(n)).map(|u| u as u16)
                }))
            }
            Holes::Bitmap(b) => Box::new(
                (0..b.len() * 8)
                    .filter(move |i| b[i / 8] & (0x80 >> (i % 8)) != 0)
                    .map(|i| i as u16),
            ),
        }
    }
}

/// One block's entry in a NACK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NackEntry {
    pub object: ObjectId,
    pub block: BlockIndex,
    /// How many more units (data or parity) the receiver needs to rebuild the block.
    pub missing: u16,
    /// The receiver has seen parity indices below this for the block (so the server does not
    /// send again what is already on its way).
    pub parity_seen: u16,
    pub holes: Holes,
}

impl NackEntry {
    fn buffer_len(&self) -> usize {
        12 + self.holes.buffer_len()
    }
}

/// Receiver -> server: blocks with missing units (wire.md §7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NackRepr {
    pub session: SessionId,
    pub receiver: ReceiverId,
    /// The cookie of this receiver's Accept (wire.md §6.1).
    pub cookie: u64,
    pub entries: Vec<NackEntry>,
}

impl NackRepr {
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
            + 8
            + 8
            + 2
            + self
                .entries
                .iter()
                .map(NackEntry::buffer_len)
                .sum::<usize>()
    }

    /// Bytes one more entry would add.
    pub fn entry_len(entry: &NackEntry) -> usize {
        entry.buffer_len()
    }
}

/// A run of verified blocks in a receipt notice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRun {
    pub object: ObjectId,
    pub start: BlockIndex,
    pub len: u32,
}

/// Receiver -> server: receive-status summary and echoed timestamp (wire.md §8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptRepr {
    pub session: SessionId,
    pub receiver: ReceiverId,
    /// The cookie of this receiver's Accept (wire.md §6.1).
    pub cookie: u64,
    /// Every object is whole and verified.
    pub complete: bool,
    /// The latest server timestamp the receiver saw, echoed.
    pub echo_timestamp: u32,
    /// Microseconds between receiving that timestamp and sending this notice.
    pub echo_delay_us: u32,
    /// Loss the receiver measured since its last notice, parts per million.
    pub loss_ppm: u32,
    /// Datagrams the receiver's own socket dropped for lack of buffer space since its last
    /// notice, per million datagrams that reached it: congestion at the receiver (the sender
    /// is too fast for it), as opposed to loss on the way.
    pub overflow_ppm: u32,
    /// The fullest its socket's receive buffer was found since its last notice, per million
    /// of the buffer: a queue that fills warns of overflow before any datagram is dropped.
    pub queue_ppm: u32,
    /// Verified-block watermark: every block before (object, block) in manifest order is
    /// verified.
    pub watermark_object: ObjectId,
    pub watermark_block: BlockIndex,
    /// Verified blocks in all.
    pub blocks_done: u64,
    /// Runs of verified blocks past the watermark (as many as fit).
    pub runs: Vec<BlockRun>,
}

impl ReceiptRepr {
    /// Length of a notice without runs (receiver id, cookie, flags, seven u32s, blocks done,
    /// run count).
    pub const BASE_LEN: usize = HEADER_LEN + 8 + 8 + 1 + 4 * 7 + 8 + 2;
    /// Length of one run.
    pub const RUN_LEN: usize = 12;

    pub fn buffer_len(&self) -> usize {
        Self::BASE_LEN + Self::RUN_LEN * self.runs.len()
    }
}

/// Receiver -> server: send these blocks next (wire.md §9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PriorityRepr {
    pub session: SessionId,
    pub receiver: ReceiverId,
    /// The cookie of this receiver's Accept (wire.md §6.1).
    pub cookie: u64,
    pub object: ObjectId,
    pub block: BlockIndex,
    pub unit: UnitIndex,
    /// How many blocks from `block` on.
    pub count: u32,
}

/// Bounds on what a single datagram may claim (wire.md §7, §8).
const MAX_NACK_ENTRIES: usize = 4096;

pub(super) fn read_nack(session: SessionId, r: &mut Reader<'_>) -> Result<NackRepr, WireError> {
    let receiver = ReceiverId(r.u64()?);
    let cookie = r.u64()?;
    let count = usize::from(r.u16()?);
    // Each entry takes at least 15 bytes: a count that cannot fit is rejected before allocating.
    if count == 0 || count > MAX_NACK_ENTRIES || count * 15 > r.remaining() {
        return Err(WireError::Malformed);
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let object = ObjectId(r.u32()?);
        let block = BlockIndex(r.u32()?);
        let missing = r.u16()?;
        let parity_seen = r.u16()?;
        let encoding = r.u8()?;
        let len = usize::from(r.u16()?);
        let holes = match encoding {
            0 => {
                let raw = r.bytes(len.checked_mul(4).ok_or(WireError::Malformed)?)?;
                let mut ranges = Vec::with_capacity(len);
                for c in raw.chunks_exact(4) {
                    let start = u16::from_be_bytes([c[0], c[1]]);
                    let n = u16::from_be_bytes([c[2], c[3]]);
                    if n == 0 || u32::from(start) + u32::from(n) > 65_536 {
                        return Err(WireError::Malformed);
                    }
                    ranges.push((start, n));
                }
                Holes::Ranges(ranges)
            }
            1 => {
                if len > 8192 {
                    return Err(WireError::Malformed);
                }
                Holes::Bitmap(r.bytes(len)?.to_vec())
            }
            _ => return Err(WireError::Malformed),
        };
        if missing == 0 {
            return Err(WireError::Malformed);
        }
        entries.push(NackEntry {
            object,
            block,
            missing,
            parity_seen,
            holes,
        });
    }
    Ok(NackRepr {
        session,
        receiver,
        cookie,
        entries,
    })
}

pub(super) fn write_nack(n: &NackRepr, w: &mut Writer<'_>) -> Result<(), WireError> {
    if n.entries.is_empty() || n.entries.len() > MAX_NACK_ENTRIES {
        return Err(WireError::Malformed);
    }
    w.u64(n.receiver.0)?;
    w.u64(n.cookie)?;
    w.u16(n.entries.len() as u16)?;
    for e in &n.entries {
        w.u32(e.object.0)?;
        w.u32(e.block.0)?;
        w.u16(e.missing)?;
        w.u16(e.parity_seen)?;
        match &e.holes {
            Holes::Ranges(ranges) => {
                w.u8(0)?;
                w.u16(u16::try_from(ranges.len()).map_err(|_| WireError::Malformed)?)?;
                for &(s, len) in ranges {
                    w.u16(s)?;
                    w.u16(len)?;
                }
            }
            Holes::Bitmap(bits) => {
                w.u8(1)?;
                w.u16(u16::try_from(bits.len()).map_err(|_| WireError::Malformed)?)?;
                w.bytes(bits)?;
            }
        }
    }
    Ok(())
}

pub(super) fn read_receipt(
    session: SessionId,
    r: &mut Reader<'_>,
) -> Result<ReceiptRepr, WireError> {
    let receiver = ReceiverId(r.u64()?);
    let cookie = r.u64()?;
    let flags = r.u8()?;
    if flags & !1 != 0 {
        return Err(WireError::Malformed);
    }
    let echo_timestamp = r.u32()?;
    let echo_delay_us = r.u32()?;
    let loss_ppm = r.u32()?;
    let overflow_ppm = r.u32()?;
    let queue_ppm = r.u32()?;
    if loss_ppm > 1_000_000 || overflow_ppm > 1_000_000 || queue_ppm > 1_000_000 {
        return Err(WireError::Malformed);
    }
    let watermark_object = ObjectId(r.u32()?);
    let watermark_block = BlockIndex(r.u32()?);
    let blocks_done = r.u64()?;
    let count = usize::from(r.u16()?);
    if count * 12 != r.remaining() {
        return Err(WireError::Malformed);
    }
    let mut runs = Vec::with_capacity(count);
    for _ in 0..count {
        let run = BlockRun {
            object: ObjectId(r.u32()?),
            start: BlockIndex(r.u32()?),
            len: r.u32()?,
        };
        if run.len == 0 || u64::from(run.start.0) + u64::from(run.len) > u64::from(u32::MAX) + 1 {
            return Err(WireError::Malformed);
        }
        runs.push(run);
    }
    Ok(ReceiptRepr {
        session,
        receiver,
        cookie,
        complete: flags & 1 != 0,
        echo_timestamp,
        echo_delay_us,
        loss_ppm,
        overflow_ppm,
        queue_ppm,
        watermark_object,
        watermark_block,
        blocks_done,
        runs,
    })
}

pub(super) fn write_receipt(n: &ReceiptRepr, w: &mut Writer<'_>) -> Result<(), WireError> {
    w.u64(n.receiver.0)?;
    w.u64(n.cookie)?;
    w.u8(u8::from(n.complete))?;
    w.u32(n.echo_timestamp)?;
    w.u32(n.echo_delay_us)?;
    w.u32(n.loss_ppm)?;
    w.u32(n.overflow_ppm)?;
    w.u32(n.queue_ppm)?;
    w.u32(n.watermark_object.0)?;
    w.u32(n.watermark_block.0)?;
    w.u64(n.blocks_done)?;
    w.u16(u16::try_from(n.runs.len()).map_err(|_| WireError::Malformed)?)?;
    for run in &n.runs {
        w.u32(run.object.0)?;
        w.u32(run.start.0)?;
        w.u32(run.len)?;
    }
    Ok(())
}
