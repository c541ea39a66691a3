//! `RecvBatch`: batched UDP receive with `recvmmsg`, GRO-aware.
//!
//! On this machine `recvmmsg` of 64 × 64 KiB buffers on a `UDP_GRO` socket was the fastest
//! receive path (docs/DESIGN-io.md; reference/machine-limits.md §2e): the kernel hands over
//! super-datagrams of up to ~64 KB made of equal-size segments, plus the segment size in a
//! control message. [`Datagram::segments`] cuts one back into the datagrams the sender sent.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::slice::{Chunks, ChunksMut};
use std::time::{Duration, Instant};

use crate::error::IoError;
use crate::sys;

/// The most datagrams one [`RecvBatch::recv`] returns.
pub const MAX_RECV_BATCH: usize = 64;

/// A buffer size that holds any UDP datagram, so GRO super-datagrams are never truncated.
pub const GRO_BUFFER_SIZE: usize = 65_536;

/// Control-message space per datagram: room for `UDP_GRO` (an int) and a few more options.
const CMSG_ROOM: usize = 64;

#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct CmsgBuf([u8; CMSG_ROOM]);

#[derive(Clone, Copy, Debug)]
struct Meta {
    len: usize,
    source: SocketAddrV4,
    segment_size: Option<u16>,
    truncated: bool,
}

/// One datagram as received: possibly a GRO super-datagram of several segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// The sender's address.
    pub source: SocketAddrV4,
    /// The bytes received (all segments back to back).
    pub bytes: &'a [u8],
    /// The GRO segment size when the kernel coalesced segments (`UDP_GRO` control message);
    /// `None` for a plain datagram.
    pub segment_size: Option<u16>,
    /// The datagram was longer than the buffer and was cut (`MSG_TRUNC`): drop it.
    pub truncated: bool,
}

impl<'a> Datagram<'a> {
    /// The datagrams the sender sent: `bytes` cut every `segment_size` bytes (the last may be
    /// shorter), or `bytes` whole for a plain datagram.
    pub fn segments(&self) -> Chunks<'a, u8> {
        split_segments(self.bytes, self.segment_size)
    }
}

/// Cuts a GRO super-datagram into its segments: every `segment_size` bytes, the last may be
/// shorter. With `None` (or 0) the whole buffer is one segment; an empty buffer has none.
pub fn split_segments(bytes: &[u8], segment_size: Option<u16>) -> Chunks<'_, u8> {
    bytes.chunks(segment_len(bytes.len(), segment_size))
}

/// The length of each segment of a `len`-byte datagram (the last may be shorter).
fn segment_len(len: usize, segment_size: Option<u16>) -> usize {
    match segment_size {
        Some(s) if s > 0 => usize::from(s),
        _ => len.max(1),
    }
}

/// Buffers for receiving up to 64 datagrams per system call.
///
/// Create one per socket reader (64 × 64 KiB = 4 MiB with the GRO sizes), then call
/// [`recv`](Self::recv) in a loop and read the datagrams with [`iter`](Self::iter) before the
/// next call.
pub struct RecvBatch {
    bufs: Box<[u8]>,
    buf_size: usize,
    batch: usize,
    names: Box<[libc::sockaddr_in]>,
    cmsgs: Box<[CmsgBuf]>,
    meta: Vec<Meta>,
    /// Datagrams received through this batch, in all (GRO super-datagrams count once).
    received: u64,
    /// The socket's latest `SO_RXQ_OVFL` count: datagrams it dropped for lack of buffer space
    /// since it was opened (wraps).
    drops: Option<u32>,
    /// Counts the `recv` calls: bytes of one batch are told from the next one's.
    generation: u64,
    /// Where the next `recv` puts payloads ([`Self::place_next`]); used once.
    plan: Option<Plan>,
    /// How the last `recv` laid each message out: `pieces[chains[i].clone()]` for message
    /// `i` (an empty range: the message lies whole in its buffer).
    pieces: Vec<Piece>,
    chains: Vec<std::ops::Range<usize>>,
    /// The header length of the last `recv`'s layout.
    laid_head: usize,
    /// The system call's scatter lists (kept to avoid an allocation per call).
    iovs: Vec<libc::iovec>,
}

/// Where a receiver wants the payload of a datagram it expects ([`RecvBatch::place_next`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    ptr: *mut u8,
    len: usize,
}

impl Slot {
    /// `len` bytes at `ptr`; what makes them fit to be written is
    /// [`RecvBatch::place_next`]'s contract.
    pub fn new(ptr: *mut u8, len: usize) -> Self {
        Slot { ptr, len }
    }
}

/// The next `recv`'s layout: datagrams expected one after the other, each `head` bytes of
/// header and then a payload (in its [`Slot`], or in the message's buffer for a `None`).
#[derive(Debug)]
struct Plan {
    head: usize,
    /// Datagrams expected per message (GRO segments).
    per_message: usize,
    /// Payload bytes of a datagram expected without a slot.
    unit: usize,
    slots: Vec<Option<Slot>>,
}

/// A stretch of a message's bytes: `len` bytes from offset `start` of the message, written
/// to the batch's buffer at `at` or to a slot.
#[derive(Clone, Copy, Debug)]
struct Piece {
    start: usize,
    len: usize,
    at: PieceAt,
}

#[derive(Clone, Copy, Debug)]
enum PieceAt {
    Buffer(usize),
    Slot(*mut u8),
}

/// The datagrams of one message of a batch ([`RecvBatch::segments_placed`]).
pub struct PlacedSegments<'a> {
    batch: &'a RecvBatch,
    /// The message's buffer in the batch's.
    base: usize,
    /// Its layout (empty: it lies whole in its buffer).
    pieces: &'a [Piece],
    /// The piece where the next datagram starts (no earlier one can hold it).
    k: usize,
    start: usize,
    len: usize,
    size: usize,
}

impl<'a> PlacedSegments<'a> {
    /// Bytes `from..to` of the message, all in piece `p`.
    fn bytes(&self, p: &Piece, from: usize, to: usize) -> &'a [u8] {
        match p.at {
            PieceAt::Buffer(b) => &self.batch.bufs[b + from - p.start..b + to - p.start],
            // SAFETY: the slot was valid for writes of `p.len` bytes when laid out and stays
            // so until the batch's next `recv` (place_next's contract), which needs `&mut`
            // of the batch this borrows; `from..to` lies within the piece, and the kernel
            // wrote those bytes (the message reached `to`).
            PieceAt::Slot(ptr) => unsafe {
                std::slice::from_raw_parts(ptr.add(from - p.start), to - from)
            },
        }
    }
}

impl<'a> Iterator for PlacedSegments<'a> {
    type Item = Segment<'a>;

    fn next(&mut self) -> Option<Segment<'a>> {
        if self.start >= self.len {
            return None;
        }
        let (start, end) = (self.start, (self.start + self.size).min(self.len));
        self.start = end;
        if self.pieces.is_empty() {
            return Some(Segment::Whole(
                &self.batch.bufs[self.base + start..self.base + end],
            ));
        }
        let holds = |p: &Piece, from: usize, to: usize| p.start <= from && to <= p.start + p.len;
        while self.k < self.pieces.len() && !holds(&self.pieces[self.k], start, start + 1) {
            self.k += 1;
        }
        let pieces = self.pieces;
        let Some(first) = pieces.get(self.k) else {
            return Some(Segment::Joined(Vec::new()));
        };
        if holds(first, start, end) {
            return Some(match first.at {
                PieceAt::Buffer(_) => Segment::Whole(self.bytes(first, start, end)),
                PieceAt::Slot(_) => Segment::Joined(self.bytes(first, start, end).to_vec()),
            });
        }
        let split = start + self.batch.laid_head;
        if let (PieceAt::Buffer(_), Some(next)) = (first.at, pieces.get(self.k + 1)) {
            if self.batch.laid_head > 0
                && first.start + first.len == split
                && matches!(next.at, PieceAt::Slot(_))
                && holds(next, split, end)
            {
                return Some(Segment::Parts {
                    head: self.bytes(first, start, split),
                    payload: self.bytes(next, split, end),
                });
            }
        }
        let mut joined = Vec::with_capacity(end - start);
        for p in &pieces[self.k..] {
            let (from, to) = (start.max(p.start), end.min(p.start + p.len));
            if from >= to {
                break;
            }
            joined.extend_from_slice(self.bytes(p, from, to));
        }
        Some(Segment::Joined(joined))
    }
}

/// Lays one message out, piece after piece.
struct Layout<'a> {
    pieces: &'a mut Vec<Piece>,
    /// The message's first piece in `pieces`.
    first: usize,
    /// The message's buffer: where it starts in the batch's, and its length.
    base: usize,
    room: usize,
    /// Bytes of the message laid out so far, and of its buffer used.
    start: usize,
    used: usize,
}

impl Layout<'_> {
    /// `len` bytes more of the message's buffer (at most what is left of it), merged with
    /// the piece before when that was of the buffer too.
    fn buffer(&mut self, len: usize) {
        let len = len.min(self.room - self.used);
        let n = self.pieces.len();
        match self.pieces.last_mut() {
            Some(last) if n > self.first && matches!(last.at, PieceAt::Buffer(_)) => {
                last.len += len
            }
            _ => self.pieces.push(Piece {
                start: self.start,
                len,
                at: PieceAt::Buffer(self.base + self.used),
            }),
        }
        self.start += len;
        self.used += len;
    }

    fn slot(&mut self, slot: Slot) {
        self.pieces.push(Piece {
            start: self.start,
            len: slot.len,
            at: PieceAt::Slot(slot.ptr),
        });
        self.start += slot.len;
    }
}

/// One datagram of a batch received with [`RecvBatch::place_next`].
#[derive(Debug, PartialEq, Eq)]
pub enum Segment<'a> {
    /// Whole in the batch's buffer.
    Whole(&'a [u8]),
    /// Its first `head` bytes in the batch's buffer, the rest in a slot: where the receiver
    /// expected it (or another datagram, if the guess was wrong).
    Parts {
        /// The header's bytes (the layout's `head`).
        head: &'a [u8],
        /// What followed them.
        payload: &'a [u8],
    },
    /// Cut across the layout in another way (not what was expected): joined in a copy.
    Joined(Vec<u8>),
}

// SAFETY: the raw pointers a batch holds are its scatter list (into its own buffer, and the
// slots of a layout) and the slots of its last layout. They are dereferenced only through
// `&mut self` or `&self` by whichever thread owns the batch, and the slots only under
// `place_next`'s contract (valid and unshared until the batch is read), which binds the
// caller on any thread; nothing about them is tied to the thread that laid them out.
unsafe impl Send for RecvBatch {}

/// Where some bytes of a batch lie in its buffer: valid for one generation of the batch
/// (until its next `recv`), checked when read back ([`RecvBatch::bytes_at`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchRange {
    pub(crate) generation: u64,
    pub(crate) range: std::ops::Range<usize>,
}

impl BatchRange {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.range.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }
}

/// Places slices of one generation of a [`RecvBatch`] (see [`RecvBatch::locator`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLocator {
    pub(crate) base: usize,
    pub(crate) len: usize,
    pub(crate) generation: u64,
}

/// Received bytes that a store queues writes from by their place, and reads back when it
/// makes the writes: a [`RecvBatch`], or a batch of AF_XDP frames
/// ([`XskBatch`](crate::xdp::XskBatch)). A range of another batch or generation is refused.
pub trait ReceivedBytes {
    /// What places slices of this batch ([`BatchLocator::range_of`]).
    fn locator(&self) -> BatchLocator;
    /// The bytes `r` names, if `r` was taken from this batch since it last received.
    fn bytes_at(&self, r: &BatchRange) -> Option<&[u8]>;
}

impl ReceivedBytes for RecvBatch {
    fn locator(&self) -> BatchLocator {
        RecvBatch::locator(self)
    }
    fn bytes_at(&self, r: &BatchRange) -> Option<&[u8]> {
        RecvBatch::bytes_at(self, r)
    }
}

impl BatchLocator {
    /// Where `bytes` lies in the batch's buffer, if it lies there.
    pub fn range_of(&self, bytes: &[u8]) -> Option<BatchRange> {
        // Address arithmetic only: nothing is dereferenced.
        let start = (bytes.as_ptr() as usize).checked_sub(self.base)?;
        let end = start.checked_add(bytes.len())?;
        (end <= self.len).then_some(BatchRange {
            generation: self.generation,
            range: start..end,
        })
    }
}

impl RecvBatch {
    /// Allocates `batch` (1..=64) buffers of `buf_size` bytes each.
    ///
    /// On a `UDP_GRO` socket use [`GRO_BUFFER_SIZE`]: a smaller buffer truncates
    /// super-datagrams and loses their tails.
    pub fn new(batch: usize, buf_size: usize) -> Result<Self, IoError> {
        if !(1..=MAX_RECV_BATCH).contains(&batch) {
            return Err(IoError::invalid("RecvBatch::new", "batch must be 1..=64"));
        }
        if !(1..=GRO_BUFFER_SIZE).contains(&buf_size) {
            return Err(IoError::invalid(
                "RecvBatch::new",
                "buf_size must be 1..=65536",
            ));
        }
        // SAFETY: sockaddr_in is a plain C struct of integers; all-zero is a valid value.
        let zero_name: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        Ok(RecvBatch {
            bufs: vec![0u8; batch * buf_size].into_boxed_slice(),
            buf_size,
            batch,
            names: vec![zero_name; batch].into_boxed_slice(),
            cmsgs: vec![CmsgBuf([0; CMSG_ROOM]); batch].into_boxed_slice(),
            meta: Vec::with_capacity(batch),
            received: 0,
            drops: None,
            generation: 0,
            plan: None,
            pieces: Vec::new(),
            chains: Vec::new(),
            laid_head: 0,
            iovs: Vec::new(),
        })
    }

    /// Lays the next [`recv`](Self::recv) out for datagrams the caller expects: message `m`
    /// of the batch is expected to hold `per_message` datagrams (GRO segments; 1 without
    /// GRO), the `j`-th of them datagram `m * per_message + j` of `slots`. Each datagram is
    /// expected to be `head` bytes of header and then a payload: the header goes to the
    /// batch's buffer, the payload into its slot, or for a `None` into the buffer after its
    /// header (`unit` bytes expected). Whatever arrives is received whole: a message longer
    /// than expected goes on into its buffer, and one laid out otherwise than expected is
    /// joined again ([`Segment::Joined`]). Read such a batch with [`Self::segments_placed`].
    ///
    /// Messages past the slots are received as by a plain `recv`. The layout serves one call.
    ///
    /// # Safety
    /// Every slot must be valid for writes of its length, must not overlap another slot or
    /// the batch, and must stay valid, and neither read nor written by anything else, from
    /// this call until the datagrams of the next `recv` have been read (its segments dropped)
    /// and before the one after. The kernel writes any bytes that arrive into the slots,
    /// whatever datagram they belong to.
    pub unsafe fn place_next(
        &mut self,
        head: usize,
        per_message: usize,
        unit: usize,
        slots: &[Option<Slot>],
    ) {
        let mut plan = self.plan.take().unwrap_or(Plan {
            head: 0,
            per_message: 1,
            unit: 0,
            slots: Vec::new(),
        });
        plan.head = head;
        plan.per_message = per_message.clamp(1, MAX_RECV_BATCH);
        plan.unit = unit;
        plan.slots.clear();
        plan.slots.extend_from_slice(slots);
        self.plan = Some(plan);
    }

    /// Whether message `i` of the last batch was laid out by a plan ([`Self::place_next`]):
    /// its bytes are not in one piece, and only [`Self::segments_placed`] reads it.
    fn laid_out(&self, i: usize) -> bool {
        self.chains.get(i).is_some_and(|c| !c.is_empty())
    }

    /// The datagrams of message `i` of a batch received after [`Self::place_next`] (or of
    /// any batch: a message without a layout is cut as [`Datagram::segments`] does), in
    /// order; none for a truncated message.
    pub fn segments_placed(&self, i: usize) -> Option<(SocketAddrV4, PlacedSegments<'_>)> {
        let m = self.meta.get(i)?;
        if m.truncated {
            return None;
        }
        let chain = self.chains.get(i).cloned().unwrap_or(0..0);
        let pieces = if chain.is_empty() {
            &[][..]
        } else {
            &self.pieces[chain]
        };
        Some((
            m.source,
            PlacedSegments {
                batch: self,
                base: i * self.buf_size,
                pieces,
                k: 0,
                start: 0,
                len: m.len,
                size: segment_len(m.len, m.segment_size),
            },
        ))
    }

    /// Receives up to `batch` datagrams from `socket`, waiting at most `timeout` for the first.
    /// Returns how many arrived (0 when the timeout passed); they replace the previous batch.
    ///
    /// Call it in the receive loop. It never blocks longer than `timeout` whatever the
    /// socket's blocking mode (`MSG_DONTWAIT`, then `ppoll` with the time left).
    pub fn recv(&mut self, socket: &impl AsFd, timeout: Duration) -> Result<usize, IoError> {
        let fd = socket.as_fd().as_raw_fd();
        self.meta.clear();
        self.generation += 1;
        self.lay_out();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(n) = self.try_recvmmsg(fd)? {
                return Ok(n);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(0);
            }
            wait_readable(fd, left)?;
        }
    }

    /// The most messages one `recv` returns.
    pub fn capacity(&self) -> usize {
        self.batch
    }

    /// Datagrams in the last batch.
    pub fn len(&self) -> usize {
        self.meta.len()
    }

    /// The last batch was empty (timeout).
    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    /// The `i`-th datagram of the last batch.
    pub fn get(&self, i: usize) -> Option<Datagram<'_>> {
        if self.laid_out(i) {
            return None;
        }
        let m = self.meta.get(i)?;
        let start = i * self.buf_size;
        Some(Datagram {
            source: m.source,
            bytes: &self.bufs[start..start + m.len],
            segment_size: m.segment_size,
            truncated: m.truncated,
        })
    }

    /// The bytes of the `i`-th datagram of the last batch, writable (to rewrite a header in
    /// place before forwarding it).
    pub fn bytes_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        if self.laid_out(i) {
            return None;
        }
        let m = self.meta.get(i)?;
        let start = i * self.buf_size;
        Some(&mut self.bufs[start..start + m.len])
    }

    /// The sender and the segments of the `i`-th datagram of the last batch, writable (to
    /// open sealed datagrams in place); none if it was truncated.
    pub fn segments_mut(&mut self, i: usize) -> Option<(SocketAddrV4, ChunksMut<'_, u8>)> {
        if self.laid_out(i) {
            return None;
        }
        let m = *self.meta.get(i)?;
        if m.truncated {
            return None;
        }
        let start = i * self.buf_size;
        let size = segment_len(m.len, m.segment_size);
        Some((m.source, self.bufs[start..start + m.len].chunks_mut(size)))
    }

    /// Datagrams received through this batch so far (a GRO super-datagram counts once, as the
    /// socket's drop count does).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The socket's count of datagrams dropped because its receive buffer was full, as of the
    /// last datagram received (`SO_RXQ_OVFL`, wrapping u32), if the socket reports it.
    pub fn socket_drops(&self) -> Option<u32> {
        self.drops
    }

    /// Where `bytes` (a slice of a datagram of the last batch, e.g. a unit's payload) lies in
    /// the batch's buffer, to be read back after the batch has been handled and before the
    /// next `recv` (a receiver queues its file writes this way and makes them in one call).
    /// `None` if `bytes` is not inside this batch's buffer.
    pub fn range_of(&self, bytes: &[u8]) -> Option<BatchRange> {
        self.locator().range_of(bytes)
    }

    /// What [`BatchLocator::range_of`] needs to place slices of this batch, for code that
    /// sees the slices but not the batch (a store handed unit payloads by the protocol).
    pub fn locator(&self) -> BatchLocator {
        BatchLocator {
            base: self.bufs.as_ptr() as usize,
            len: self.bufs.len(),
            generation: self.generation,
        }
    }

    /// The bytes a [`BatchRange`] of this batch names, if it belongs to the current batch
    /// (it was taken since the last `recv`).
    pub fn bytes_at(&self, r: &BatchRange) -> Option<&[u8]> {
        (r.generation == self.generation)
            .then(|| self.bufs.get(r.range.clone()))
            .flatten()
    }

    /// The datagrams of the last batch, in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = Datagram<'_>> + '_ {
        (0..self.meta.len()).filter_map(move |i| self.get(i))
    }

    /// Lays out each message's bytes for the next call: the plan's pieces, or the message's
    /// buffer whole. Fills `self.pieces`, `self.chains` and `self.iovs`.
    fn lay_out(&mut self) {
        self.pieces.clear();
        self.chains.clear();
        self.iovs.clear();
        let plan = self.plan.take();
        let bufs = self.bufs.as_mut_ptr();
        for i in 0..self.batch {
            let base = i * self.buf_size;
            let first = self.pieces.len();
            if let Some(p) = &plan {
                let from = (i * p.per_message).min(p.slots.len());
                let to = ((i + 1) * p.per_message).min(p.slots.len());
                if p.slots[from..to].iter().any(Option::is_some) {
                    let mut lay = Layout {
                        pieces: &mut self.pieces,
                        first,
                        base,
                        room: self.buf_size,
                        start: 0,
                        used: 0,
                    };
                    for slot in &p.slots[from..to] {
                        match slot {
                            Some(slot) => {
                                lay.buffer(p.head);
                                lay.slot(*slot);
                            }
                            None => lay.buffer(p.head + p.unit),
                        }
                    }
                    // The rest of the buffer: a message longer than expected.
                    lay.buffer(usize::MAX);
                }
            }
            if self.pieces.len() == first {
                self.pieces.push(Piece {
                    start: 0,
                    len: self.buf_size,
                    at: PieceAt::Buffer(base),
                });
                self.chains.push(first..first);
            } else {
                self.chains.push(first..self.pieces.len());
            }
            for piece in &self.pieces[first..] {
                let ptr = match piece.at {
                    // SAFETY: every buffer piece lies within message i's buf_size bytes.
                    PieceAt::Buffer(b) => unsafe { bufs.add(b) },
                    PieceAt::Slot(ptr) => ptr,
                };
                self.iovs.push(libc::iovec {
                    iov_base: ptr.cast(),
                    iov_len: piece.len,
                });
            }
        }
        self.laid_head = plan.as_ref().map_or(0, |p| p.head);
        // Kept for its allocation.
        self.plan = plan.map(|mut p| {
            p.slots.clear();
            p
        });
    }

    /// One non-blocking `recvmmsg` into the layout of [`Self::lay_out`]; `None` when nothing
    /// is queued.
    fn try_recvmmsg(&mut self, fd: RawFd) -> Result<Option<usize>, IoError> {
        let batch = self.batch;
        // SAFETY: mmsghdr is a C struct of pointers and integers; all-zero is a valid value.
        let mut hdrs: [libc::mmsghdr; MAX_RECV_BATCH] = unsafe { std::mem::zeroed() };
        let names = self.names.as_mut_ptr();
        let cmsgs = self.cmsgs.as_mut_ptr();
        let iovs = self.iovs.as_mut_ptr();
        let mut at = 0;
        for (i, (hdr, chain)) in hdrs.iter_mut().zip(&self.chains).enumerate().take(batch) {
            // A message without a layout has one piece (its whole buffer); one with a layout,
            // its chain's pieces.
            let n = chain.len().max(1);
            // SAFETY: i < batch, and names and cmsgs hold batch entries; `iovs[at..at + n]`
            // are message i's entries (lay_out pushed them in order).
            unsafe {
                let h = &mut hdr.msg_hdr;
                h.msg_name = names.add(i).cast();
                h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                h.msg_iov = iovs.add(at);
                h.msg_iovlen = n as _;
                h.msg_control = cmsgs.add(i).cast();
                h.msg_controllen = CMSG_ROOM as _;
            }
            at += n;
        }
        let rc = loop {
            // SAFETY: `hdrs[..batch]` point at buffers owned by `self` (its scatter list
            // `iovs`, and through it its buffer and the layout's slots, which place_next's
            // caller vouched for) that stay valid and unaliased for the call; the kernel
            // writes at most the lengths given. No timeout pointer is passed.
            let rc = unsafe {
                libc::recvmmsg(
                    fd,
                    hdrs.as_mut_ptr(),
                    batch as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if rc >= 0 {
                break rc as usize;
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return Ok(None),
                _ => return Err(IoError::os("recvmmsg", format!("fd {fd}"), err)),
            }
        };
        for (i, h) in hdrs.iter().enumerate().take(rc) {
            let hdr = &h.msg_hdr;
            let truncated = hdr.msg_flags & libc::MSG_TRUNC != 0;
            let room = match self.chains.get(i) {
                Some(c) if !c.is_empty() => self.pieces[c.clone()].iter().map(|p| p.len).sum(),
                _ => self.buf_size,
            };
            let len = (h.msg_len as usize).min(room);
            let source = if hdr.msg_namelen as usize >= std::mem::size_of::<libc::sockaddr_in>()
                && i32::from(self.names[i].sin_family) == libc::AF_INET
            {
                sys::sockaddr_in_to_std(&self.names[i])
            } else {
                SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)
            };
            let (segment_size, drops) = control_values(hdr);
            if drops.is_some() {
                self.drops = drops;
            }
            self.received += 1;
            self.meta.push(Meta {
                len,
                source,
                segment_size,
                truncated,
            });
        }
        Ok(Some(rc))
    }
}

/// From a received message's control data: the `UDP_GRO` segment size, and the socket's
/// `SO_RXQ_OVFL` drop count, each if present.
fn control_values(hdr: &libc::msghdr) -> (Option<u16>, Option<u32>) {
    let (mut gro, mut drops) = (None, None);
    if hdr.msg_control.is_null() || hdr.msg_controllen == 0 {
        return (gro, drops);
    }
    // SAFETY: CMSG_LEN is pure arithmetic.
    let header_len = unsafe { libc::CMSG_LEN(0) } as usize;
    // SAFETY: hdr was filled by recvmmsg: msg_control points at our CMSG_ROOM-byte, 8-aligned
    // buffer and msg_controllen is the length the kernel wrote, so CMSG_FIRSTHDR/NXTHDR walk
    // only complete headers inside it; each data read is bounded by that header's cmsg_len.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            let cm = &*c;
            let data_len = (cm.cmsg_len as usize).saturating_sub(header_len);
            let data = libc::CMSG_DATA(c);
            if cm.cmsg_level == libc::SOL_UDP && cm.cmsg_type == libc::UDP_GRO {
                let size = if data_len >= 4 {
                    Some(std::ptr::read_unaligned(data.cast::<i32>()))
                } else if data_len >= 2 {
                    Some(i32::from(std::ptr::read_unaligned(data.cast::<u16>())))
                } else {
                    None
                };
                gro = size.and_then(|s| u16::try_from(s).ok()).filter(|&s| s > 0);
            } else if cm.cmsg_level == libc::SOL_SOCKET
                && cm.cmsg_type == libc::SO_RXQ_OVFL
                && data_len >= 4
            {
                drops = Some(std::ptr::read_unaligned(data.cast::<u32>()));
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    (gro, drops)
}

/// Blocks until `fd` is readable or `timeout` passes (`ppoll`).
fn wait_readable(fd: RawFd, timeout: Duration) -> Result<(), IoError> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd and a valid timespec on the stack, no signal mask.
    let rc = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(IoError::os("ppoll", format!("fd {fd}"), err));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_by_segment_size() {
        let b: Vec<u8> = (0..10).collect();
        let parts: Vec<&[u8]> = split_segments(&b, Some(4)).collect();
        assert_eq!(parts, vec![&b[0..4], &b[4..8], &b[8..10]]);
        assert_eq!(split_segments(&b, None).count(), 1);
        assert_eq!(split_segments(&b, Some(0)).count(), 1);
        assert_eq!(split_segments(&b, Some(10)).count(), 1);
        assert_eq!(split_segments(&[], Some(4)).count(), 0);
        assert_eq!(split_segments(&[], None).count(), 0);
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(RecvBatch::new(0, 100).is_err());
        assert!(RecvBatch::new(65, 100).is_err());
        assert!(RecvBatch::new(1, 0).is_err());
        assert!(RecvBatch::new(1, GRO_BUFFER_SIZE + 1).is_err());
    }

    #[test]
    fn times_out_and_receives_unicast() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut batch = RecvBatch::new(8, 2048).unwrap();
        let t0 = Instant::now();
        assert_eq!(batch.recv(&rx, Duration::from_millis(50)).unwrap(), 0);
        assert!(t0.elapsed() >= Duration::from_millis(50));
        assert!(batch.is_empty());

        for i in 0..3u8 {
            tx.send_to(&[i; 10], rx.local_addr().unwrap()).unwrap();
        }
        tx.send_to(&[9; 3000], rx.local_addr().unwrap()).unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < 4 && Instant::now() < deadline {
            batch.recv(&rx, Duration::from_millis(500)).unwrap();
            for d in batch.iter() {
                assert_eq!(std::net::SocketAddr::V4(d.source), tx.local_addr().unwrap());
                assert_eq!(d.segment_size, None);
                got.push((d.bytes.to_vec(), d.truncated));
            }
        }
        assert_eq!(got.len(), 4);
        for (i, (bytes, truncated)) in got.iter().take(3).enumerate() {
            assert_eq!(bytes, &vec![i as u8; 10]);
            assert!(!truncated);
        }
        assert_eq!(got[3].0.len(), 2048);
        assert!(
            got[3].1,
            "3000-byte datagram in a 2048-byte buffer is truncated"
        );
    }
}
