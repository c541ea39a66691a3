//! `SendRing`: UDP GSO sends of gathered super-buffers through io_uring.
//!
//! One submission is one `IORING_OP_SENDMSG` of a *super-buffer*: up to `max_segments`
//! segments of `segment_size` bytes (the last may be shorter), at most 65507 bytes in all,
//! with a `UDP_SEGMENT` control message so the kernel cuts it into datagrams. Each segment is
//! gathered from two pieces, `[header | payload]`: the header is copied into storage that the
//! ring owns (a few dozen bytes), the payload is referenced where it lies (a slice of a file
//! mapping or a cache), so the only copy of the payload is the kernel's.
//!
//! # Lifetimes of in-flight memory
//!
//! The ring owns `queue_depth` *slots*. A slot holds everything a submitted request points
//! at: the `msghdr`, the iovec array, the control message, the header storage, the storage
//! of segments the caller wrote in place ([`GsoBatch::push_owned`]: sealed units, whose
//! ciphertext lies nowhere else), and a clone of the `Arc` of every payload source. A slot is handed out by [`SendRing::batch`], filled,
//! submitted, and only reused after its completion has been reaped; so nothing a request
//! references is freed or rewritten before the kernel is done with it. Payload sources are
//! [`StableBytes`]: their bytes stay put for as long as an `Arc` to them lives.
//!
//! If the ring is dropped while requests are still in flight (after a bounded drain), it leaks
//! their slots rather than free memory the kernel may still read.

mod batch;
mod write;

pub use batch::GsoBatch;
pub use write::{AlignedBuf, WriteDone, WriteRing};

use std::cell::UnsafeCell;
use std::fmt;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};

use crate::error::IoError;

/// The largest UDP payload one send may carry (65535 − 20 IP − 8 UDP); the kernel answers
/// `EMSGSIZE` above it, GSO or not.
pub const MAX_SEND_BYTES: usize = 65_507;

/// The most segments one GSO send may carry (`UDP_MAX_SEGMENTS`); the kernel answers `EINVAL`
/// above it.
pub const MAX_GSO_SEGMENTS: u16 = 128;

/// Bytes whose address and contents stay fixed for as long as the value lives and is only
/// shared.
///
/// The ring keeps an `Arc` of each payload source until the kernel has sent from it, so a
/// source must not move, free or shrink the bytes it returned while any `Arc` to it exists.
///
/// # Safety
///
/// Implementors promise that every call to `stable_bytes` through a shared reference returns
/// memory that stays valid for reads (not freed, unmapped or reallocated) for as long as the
/// value is alive and no `&mut` to it exists. A memory mapping of a file qualifies (if the
/// file is truncated meanwhile the kernel reports `EFAULT` for that send; nothing worse).
pub unsafe trait StableBytes: Send + Sync + 'static {
    /// The bytes; the address must not change while the value is shared.
    fn stable_bytes(&self) -> &[u8];
}

// SAFETY: a Vec's heap buffer moves or is freed only through `&mut Vec` or by dropping it,
// neither of which can happen while it is shared.
unsafe impl StableBytes for Vec<u8> {
    fn stable_bytes(&self) -> &[u8] {
        self
    }
}

// SAFETY: as for Vec: the boxed slice is freed only when the box is dropped.
unsafe impl StableBytes for Box<[u8]> {
    fn stable_bytes(&self) -> &[u8] {
        self
    }
}

// SAFETY: 'static memory is never freed.
unsafe impl StableBytes for &'static [u8] {
    fn stable_bytes(&self) -> &[u8] {
        self
    }
}

/// A payload source as the ring holds it.
pub type Source = Arc<dyn StableBytes>;

/// How to size a [`SendRing`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendRingConfig {
    /// Super-buffers in flight at most (slots). Default 32.
    pub queue_depth: u16,
    /// Segments per super-buffer at most; 1..=128. Default 64.
    pub max_segments: u16,
    /// Header bytes per segment at most (the ring's header storage). Default 64.
    pub header_room: u16,
}

impl Default for SendRingConfig {
    fn default() -> Self {
        SendRingConfig {
            queue_depth: 32,
            max_segments: 64,
            header_room: 64,
        }
    }
}

/// Which io_uring setup flags the kernel accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingMode {
    /// `SINGLE_ISSUER | DEFER_TASKRUN` (6.1+): completions run only when this thread asks.
    DeferTaskrun,
    /// `COOP_TASKRUN` (5.19+).
    CoopTaskrun,
    /// No optional flags.
    Plain,
}

/// Counters of a [`SendRing`]. Send errors are counted here, never raised: a failed
/// super-buffer is lost like a dropped packet, and the protocol's repair recovers it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendStats {
    /// Super-buffers queued for the kernel.
    pub batches_submitted: u64,
    /// Super-buffers the kernel accepted in full.
    pub batches_sent: u64,
    /// Datagrams (segments) in the accepted super-buffers.
    pub segments_sent: u64,
    /// Payload bytes in the accepted super-buffers (UDP payload, headers included).
    pub bytes_sent: u64,
    /// Completions with `EMSGSIZE` (super-buffer or segment too large for the path).
    pub err_msgsize: u64,
    /// Completions with `EINVAL` (e.g. GSO refused by the socket or device).
    pub err_inval: u64,
    /// Completions with `ENOBUFS` (device or qdisc queue full).
    pub err_nobufs: u64,
    /// Completions with `EAGAIN` (send buffer full on a non-blocking socket).
    pub err_again: u64,
    /// Completions with any other error (`last_errno` tells which).
    pub err_other: u64,
    /// The most recent error number of a failed completion (0: none yet).
    pub last_errno: i32,
    /// Completions that reported fewer bytes than submitted (not expected for UDP).
    pub short_sends: u64,
    /// `io_uring_enter` calls made.
    pub enter_calls: u64,
}

impl SendStats {
    /// Super-buffers that completed with an error.
    pub fn batches_failed(&self) -> u64 {
        self.err_msgsize + self.err_inval + self.err_nobufs + self.err_again + self.err_other
    }
}

/// Why a super-buffer could not be built or queued. Nothing was sent; the request can be
/// corrected and retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchError {
    /// All slots are in flight: call [`SendRing::wait`] and try again.
    QueueFull,
    /// `segment_size` is 0 or above 65507.
    SegmentSize,
    /// The header is longer than the ring's `header_room`.
    HeaderTooLong,
    /// A segment of zero bytes.
    EmptySegment,
    /// A segment longer than `segment_size`.
    SegmentTooLong,
    /// A segment after a short one: only the last segment may be shorter.
    AfterShortSegment,
    /// More than `max_segments` segments.
    TooManySegments,
    /// The super-buffer would exceed 65507 bytes.
    TooLarge,
    /// The payload range lies outside its source.
    OutOfRange,
    /// Submitting a super-buffer with no segment.
    Empty,
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            BatchError::QueueFull => "all send slots are in flight",
            BatchError::SegmentSize => "segment size must be 1..=65507 bytes",
            BatchError::HeaderTooLong => "header longer than the ring's header room",
            BatchError::EmptySegment => "empty segment",
            BatchError::SegmentTooLong => "segment longer than the segment size",
            BatchError::AfterShortSegment => "only the last segment may be shorter",
            BatchError::TooManySegments => "too many segments for one GSO send",
            BatchError::TooLarge => "super-buffer above 65507 bytes",
            BatchError::OutOfRange => "payload range outside its source",
            BatchError::Empty => "super-buffer has no segment",
        };
        f.write_str(s)
    }
}

impl std::error::Error for BatchError {}

/// `CMSG_SPACE(sizeof(u16))` is 24 on 64-bit Linux; 32 bytes, 8-aligned, hold it anywhere.
#[repr(C, align(8))]
struct CmsgBuf([u8; 32]);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SlotState {
    Free,
    Building,
    InFlight,
}

/// Everything one in-flight send references. Never touched while `InFlight`.
struct Slot {
    msg: libc::msghdr,
    iov: Box<[libc::iovec]>,
    iov_len: usize,
    cmsg: CmsgBuf,
    headers: Box<[u8]>,
    /// Segments written by the caller ([`GsoBatch::push_owned`]), back to back; allocated
    /// (`MAX_SEND_BYTES`) on first use and never resized, so iovecs into it stay valid.
    owned: Box<[u8]>,
    owned_len: usize,
    keep: Vec<Source>,
    state: SlotState,
    segments: u16,
    bytes: usize,
    /// Where this send goes, when not to the socket's connected peer.
    dest: Option<libc::sockaddr_in>,
}

impl Slot {
    fn new(max_segments: u16, header_room: u16) -> Slot {
        let iov_cap = 2 * usize::from(max_segments);
        Slot {
            // SAFETY: msghdr is a C struct of pointers and integers; all-zero is a valid value
            // (null pointers, zero lengths). The pointers are set before each submission.
            msg: unsafe { std::mem::zeroed() },
            iov: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                };
                iov_cap
            ]
            .into_boxed_slice(),
            iov_len: 0,
            cmsg: CmsgBuf([0; 32]),
            headers: vec![0u8; usize::from(max_segments) * usize::from(header_room)]
                .into_boxed_slice(),
            owned: Box::default(),
            owned_len: 0,
            keep: Vec::with_capacity(usize::from(max_segments)),
            state: SlotState::Free,
            segments: 0,
            bytes: 0,
            dest: None,
        }
    }

    fn reset(&mut self) {
        self.keep.clear();
        self.owned_len = 0;
        self.iov_len = 0;
        self.segments = 0;
        self.bytes = 0;
        self.dest = None;
        self.state = SlotState::Free;
    }
}

/// Where the SQEs point: the socket registered as fixed file 0, or its plain fd.
#[derive(Clone, Copy)]
enum Target {
    Fixed,
    Fd(i32),
}

/// An io_uring that sends GSO super-buffers on one UDP socket.
///
/// Create it on the thread that will use it (with `SINGLE_ISSUER` the kernel refuses
/// submissions from any other thread; the type is not `Send`). Per super-buffer: [`batch`],
/// push segments, [`GsoBatch::submit`]; after queuing a few, [`flush`]; while
/// [`free_slots`] is 0, [`wait`]. At the end of a transfer, [`drain`].
///
/// ```no_run
/// use std::net::{Ipv4Addr, SocketAddrV4};
/// use std::sync::Arc;
/// use std::time::Duration;
/// use blockcast_io::{MulticastSender, SendRing, SendRingConfig, Source};
///
/// let group = SocketAddrV4::new(Ipv4Addr::new(239, 255, 0, 1), 5000);
/// let sender = MulticastSender::new(group, Ipv4Addr::LOCALHOST, 1, 0)?;
/// let mut ring = SendRing::new(sender, SendRingConfig::default())?;
/// let object: Source = Arc::new(vec![0u8; 1 << 20]); // e.g. a file mapping
/// let (unit, header) = (1392, [0u8; 8]);
/// while ring.free_slots() == 0 {
///     ring.wait(Duration::from_millis(10))?;
/// }
/// let mut batch = ring.batch(1400)?;
/// for i in 0..batch.room() {
///     batch.push(&header, &object, i * unit..(i + 1) * unit)?;
/// }
/// batch.submit()?;
/// ring.flush()?;
/// ring.drain(Duration::from_secs(1))?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// ```compile_fail
/// // A ring belongs to the thread that created it:
/// fn assert_send<T: Send>() {}
/// assert_send::<blockcast_io::SendRing>();
/// ```
///
/// [`batch`]: SendRing::batch
/// [`flush`]: SendRing::flush
/// [`wait`]: SendRing::wait
/// [`drain`]: SendRing::drain
/// [`free_slots`]: SendRing::free_slots
pub struct SendRing {
    ring: IoUring,
    /// In-flight memory; each slot is an `UnsafeCell` because the kernel reads it while the
    /// ring is shared with it. Leaked on drop if anything is still in flight.
    slots: Box<[UnsafeCell<Slot>]>,
    free: Vec<u16>,
    in_flight: usize,
    target: Target,
    mode: RingMode,
    config: SendRingConfig,
    stats: SendStats,
    socket: OwnedFd,
}

impl SendRing {
    /// Takes ownership of a UDP socket (normally a [`MulticastSender`](crate::MulticastSender),
    /// which is connected to its group) and sets up a ring for it.
    ///
    /// Call it once per socket, on the thread that will send. The ring tries
    /// `SINGLE_ISSUER | DEFER_TASKRUN` first, then `COOP_TASKRUN`, then no flags
    /// ([`mode`](Self::mode) tells which); io_uring being unavailable is an error that says
    /// what to change.
    pub fn new(socket: impl Into<OwnedFd>, config: SendRingConfig) -> Result<Self, IoError> {
        const OP: &str = "SendRing::new";
        let socket: OwnedFd = socket.into();
        if config.queue_depth == 0 || config.queue_depth > 4096 {
            return Err(IoError::invalid(OP, "queue_depth must be 1..=4096"));
        }
        if config.max_segments == 0 || config.max_segments > MAX_GSO_SEGMENTS {
            return Err(IoError::invalid(OP, "max_segments must be 1..=128"));
        }
        let entries = u32::from(config.queue_depth).next_power_of_two();
        let (ring, mode) = build_ring(entries)?;
        let target = match ring.submitter().register_files(&[socket.as_raw_fd()]) {
            Ok(()) => Target::Fixed,
            Err(_) => Target::Fd(socket.as_raw_fd()),
        };
        let slots: Box<[UnsafeCell<Slot>]> = (0..config.queue_depth)
            .map(|_| UnsafeCell::new(Slot::new(config.max_segments, config.header_room)))
            .collect();
        let free = (0..config.queue_depth).rev().collect();
        Ok(SendRing {
            ring,
            slots,
            free,
            in_flight: 0,
            target,
            mode,
            config,
            stats: SendStats::default(),
            socket,
        })
    }

    /// Starts a super-buffer of `segment_size`-byte segments in a free slot.
    ///
    /// Call it for each super-buffer; fill it with [`GsoBatch::push`] and queue it with
    /// [`GsoBatch::submit`] (dropping it unsubmitted frees the slot). Fails with
    /// [`BatchError::QueueFull`] when every slot is in flight; check
    /// [`free_slots`](Self::free_slots) first and [`wait`](Self::wait) while it is 0.
    pub fn batch(&mut self, segment_size: u16) -> Result<GsoBatch<'_>, BatchError> {
        if segment_size == 0 || usize::from(segment_size) > MAX_SEND_BYTES {
            return Err(BatchError::SegmentSize);
        }
        let idx = self.free.pop().ok_or(BatchError::QueueFull)?;
        let slot = self.slot_mut(idx);
        debug_assert_eq!(slot.state, SlotState::Free);
        slot.state = SlotState::Building;
        Ok(GsoBatch {
            ring: self,
            idx,
            segment_size,
            closed: false,
            submitted: false,
        })
    }

    /// Submits queued super-buffers to the kernel and reaps the completions that are ready,
    /// without blocking. Returns the number of completions reaped.
    ///
    /// Call it after queuing one or more super-buffers (several per call saves system calls),
    /// and now and then while idle so finished slots return.
    pub fn flush(&mut self) -> Result<usize, IoError> {
        self.stats.enter_calls += 1;
        match self.ring.submit() {
            Ok(_) => {}
            // EBUSY: completions are backed up; reaping below makes room. EINTR: retry later.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EINTR)) => {}
            Err(e) => return Err(IoError::os("io_uring_enter", "SendRing::flush", e)),
        }
        Ok(self.reap())
    }

    /// Submits what is queued and blocks until at least one in-flight send completes or
    /// `timeout` passes; reaps. Returns the number of completions reaped (0 on timeout or when
    /// nothing is in flight).
    ///
    /// Call it while [`free_slots`](Self::free_slots) is 0 (when [`batch`](Self::batch) would
    /// report `QueueFull`).
    pub fn wait(&mut self, timeout: Duration) -> Result<usize, IoError> {
        if self.in_flight == 0 {
            return Ok(0);
        }
        let reaped = self.reap();
        if reaped > 0 {
            // Slots are free already: submit what is queued without waiting.
            return Ok(reaped + self.flush()?);
        }
        self.stats.enter_calls += 1;
        submit_and_wait(&self.ring, timeout, "SendRing::wait")?;
        Ok(reaped + self.reap())
    }

    /// Waits until nothing is in flight or `timeout` passes. Returns whether everything
    /// completed.
    ///
    /// Call it at the end of a transfer, and before dropping a payload source whose sends must
    /// have left (the ring keeps sources alive anyway, so this is about completeness, not
    /// memory safety).
    pub fn drain(&mut self, timeout: Duration) -> Result<bool, IoError> {
        let deadline = Instant::now() + timeout;
        self.flush()?;
        while self.in_flight > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            self.wait(left)?;
        }
        Ok(true)
    }

    /// Super-buffers queued or in the kernel, not yet reaped.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Slots free for [`batch`](Self::batch).
    pub fn free_slots(&self) -> usize {
        self.free.len()
    }

    /// The counters so far.
    pub fn stats(&self) -> SendStats {
        self.stats
    }

    /// Which setup flags the kernel accepted.
    pub fn mode(&self) -> RingMode {
        self.mode
    }

    /// The sizes this ring was built with.
    pub fn config(&self) -> SendRingConfig {
        self.config
    }

    /// The socket (to read options or its local address).
    pub fn socket(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// The slot at `idx`, which must not be in flight.
    fn slot_mut(&mut self, idx: u16) -> &mut Slot {
        // SAFETY: callers pass the index of a slot that is Free or Building, i.e. not
        // referenced by any submitted request, so the kernel does not read it now; `&mut self`
        // guarantees no other Rust reference into the slots exists.
        let slot = unsafe { &mut *self.slots[usize::from(idx)].get() };
        debug_assert_ne!(slot.state, SlotState::InFlight);
        slot
    }

    /// Takes the completions in the completion queue, updates the counters and frees slots.
    fn reap(&mut self) -> usize {
        let mut n = 0;
        let cq = self.ring.completion();
        for cqe in cq {
            n += 1;
            let idx = cqe.user_data();
            let Some(cell) = usize::try_from(idx).ok().and_then(|i| self.slots.get(i)) else {
                self.stats.err_other += 1;
                continue;
            };
            // SAFETY: this completion is the kernel's last word on the request that used this
            // slot (plain SENDMSG posts exactly one CQE), so the kernel no longer reads it;
            // `&mut self` means no other Rust reference into the slots exists.
            let slot = unsafe { &mut *cell.get() };
            if slot.state != SlotState::InFlight {
                self.stats.err_other += 1;
                continue;
            }
            let res = cqe.result();
            if res >= 0 {
                self.stats.batches_sent += 1;
                self.stats.segments_sent += u64::from(slot.segments);
                self.stats.bytes_sent += res as u64;
                if res as usize != slot.bytes {
                    self.stats.short_sends += 1;
                }
            } else {
                let errno = -res;
                self.stats.last_errno = errno;
                match errno {
                    libc::EMSGSIZE => self.stats.err_msgsize += 1,
                    libc::EINVAL => self.stats.err_inval += 1,
                    libc::ENOBUFS => self.stats.err_nobufs += 1,
                    libc::EAGAIN => self.stats.err_again += 1,
                    _ => self.stats.err_other += 1,
                }
            }
            slot.reset();
            self.in_flight -= 1;
            // idx < slots.len() <= u16::MAX + 1 was checked above.
            self.free.push(idx as u16);
        }
        n
    }
}

impl Drop for SendRing {
    fn drop(&mut self) {
        if self.in_flight > 0 {
            let _ = self.drain(Duration::from_secs(1));
        }
        if self.in_flight > 0 {
            // The kernel may still read these slots and the sources they keep alive: leak them
            // rather than free memory under it.
            std::mem::forget(std::mem::take(&mut self.slots));
        }
    }
}

/// Submits what is queued on `ring` and waits up to `timeout` for a completion. The time
/// running out, a signal, or a completion queue too full to take more (the caller reaps) is
/// no error.
pub(crate) fn submit_and_wait(
    ring: &IoUring,
    timeout: Duration,
    what: &'static str,
) -> Result<(), IoError> {
    let ts = types::Timespec::new()
        .sec(timeout.as_secs())
        .nsec(timeout.subsec_nanos());
    let args = types::SubmitArgs::new().timespec(&ts);
    match ring.submitter().submit_with_args(1, &args) {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ETIME | libc::EINTR | libc::EBUSY)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(IoError::os("io_uring_enter", what, e)),
    }
}

pub(crate) fn build_ring(entries: u32) -> Result<(IoUring, RingMode), IoError> {
    let mut last = None;
    for mode in [
        RingMode::DeferTaskrun,
        RingMode::CoopTaskrun,
        RingMode::Plain,
    ] {
        let mut b = IoUring::builder();
        match mode {
            RingMode::DeferTaskrun => {
                b.setup_single_issuer()
                    .setup_defer_taskrun()
                    .setup_taskrun_flag()
                    .setup_submit_all();
            }
            RingMode::CoopTaskrun => {
                b.setup_coop_taskrun()
                    .setup_taskrun_flag()
                    .setup_submit_all();
            }
            RingMode::Plain => {}
        }
        match b.build(entries) {
            Ok(ring) => return Ok((ring, mode)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
            Err(e) => {
                return Err(IoError::os(
                    "io_uring_setup",
                    format!("{entries} entries"),
                    e,
                ))
            }
        }
    }
    Err(IoError::os(
        "io_uring_setup",
        format!("{entries} entries"),
        last.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp_pair() -> (std::net::UdpSocket, std::net::UdpSocket) {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (tx, rx)
    }

    #[test]
    fn validates_segments_before_the_kernel_sees_them() {
        let (tx, _rx) = udp_pair();
        let mut ring = SendRing::new(tx, SendRingConfig::default()).unwrap();
        let src: Source = Arc::new(vec![7u8; 200_000]);
        assert_eq!(ring.batch(0).err(), Some(BatchError::SegmentSize));
        assert_eq!(ring.batch(65_508).err(), Some(BatchError::SegmentSize));

        let mut b = ring.batch(1400).unwrap();
        assert_eq!(b.room(), 46); // 46 * 1400 = 64400 <= 65507 < 47 * 1400
        for i in 0..46 {
            b.push(&[1, 2, 3, 4], &src, i * 1396..(i + 1) * 1396)
                .unwrap();
        }
        assert_eq!(b.room(), 0);
        // The 47th full segment would make 65800 bytes: rejected, nothing panics.
        assert_eq!(b.push(&[0; 4], &src, 0..1396), Err(BatchError::TooLarge));
        assert_eq!(
            b.push(&[0; 4], &src, 0..1397),
            Err(BatchError::SegmentTooLong)
        );
        assert_eq!(b.push(&[0; 65], &src, 0..1), Err(BatchError::HeaderTooLong));
        assert_eq!(b.push(&[], &src, 0..0), Err(BatchError::EmptySegment));
        assert_eq!(
            b.push(&[], &src, 199_999..200_001),
            Err(BatchError::OutOfRange)
        );
        drop(b);
        assert_eq!(ring.free_slots(), 32);

        let mut b = ring.batch(100).unwrap();
        b.push(&[], &src, 0..50).unwrap();
        assert_eq!(b.room(), 0);
        assert_eq!(
            b.push(&[], &src, 0..100),
            Err(BatchError::AfterShortSegment)
        );
        drop(b);

        let b = ring.batch(100).unwrap();
        assert_eq!(b.submit(), Err(BatchError::Empty));
        assert_eq!(ring.free_slots(), 32);
        assert_eq!(ring.stats().batches_submitted, 0);
    }

    #[test]
    fn runs_of_contiguous_segments() {
        let (tx, rx) = udp_pair();
        let mut ring = SendRing::new(tx, SendRingConfig::default()).unwrap();
        let data: Vec<u8> = (0..70_000u32).map(|i| (i % 253) as u8).collect();
        let src: Source = Arc::new(data.clone());
        let mut b = ring.batch(1000).unwrap();
        assert_eq!(
            b.push_run(&src, 0..66_000),
            Err(BatchError::TooManySegments)
        );
        assert_eq!(b.push_run(&src, 0..0), Err(BatchError::EmptySegment));
        assert_eq!(
            b.push_run(&src, 69_000..70_001),
            Err(BatchError::OutOfRange)
        );
        b.push_run(&src, 0..3000).unwrap(); // 3 full segments
        b.push(&[1], &src, 0..999).unwrap(); // a gathered one in between
        b.push_run(&src, 10_000..11_500).unwrap(); // 1 full + a 500-byte tail
        assert_eq!((b.segments(), b.len(), b.room()), (6, 5500, 0));
        assert_eq!(
            b.push_run(&src, 0..1000),
            Err(BatchError::AfterShortSegment)
        );
        b.submit().unwrap();
        assert!(ring.drain(Duration::from_secs(5)).unwrap());
        assert_eq!(ring.stats().segments_sent, 6);
        let mut buf = [0u8; 2000];
        let expect: [&[u8]; 6] = [
            &data[0..1000],
            &data[1000..2000],
            &data[2000..3000],
            &[],
            &data[10_000..11_000],
            &data[11_000..11_500],
        ];
        for (i, want) in expect.iter().enumerate() {
            let n = rx.recv(&mut buf).unwrap();
            if i == 3 {
                assert_eq!(n, 1000);
                assert_eq!(buf[0], 1);
                assert_eq!(&buf[1..n], &data[..999]);
            } else {
                assert_eq!(&buf[..n], *want);
            }
        }
        let mut b = ring.batch(1400).unwrap();
        b.push_run(&src, 0..46 * 1400).unwrap();
        assert_eq!(b.push_run(&src, 0..1108), Err(BatchError::TooLarge)); // 65508 bytes
        b.push_run(&src, 0..1107).unwrap(); // exactly 65507 bytes, short last segment
        b.submit().unwrap();
        assert!(ring.drain(Duration::from_secs(5)).unwrap());
        let st = ring.stats();
        assert_eq!((st.batches_sent, st.batches_failed()), (2, 0), "{st:?}");
        assert_eq!(st.bytes_sent, 5500 + 65_507);
    }

    #[test]
    fn segment_count_is_bounded() {
        let (tx, _rx) = udp_pair();
        let cfg = SendRingConfig {
            max_segments: 128,
            ..SendRingConfig::default()
        };
        let mut ring = SendRing::new(tx, cfg).unwrap();
        let src: Source = Arc::new(vec![0u8; 1024]);
        let mut b = ring.batch(256).unwrap();
        for _ in 0..128 {
            b.push(&[], &src, 0..256).unwrap();
        }
        assert_eq!(b.push(&[], &src, 0..256), Err(BatchError::TooManySegments));
        let too_many = SendRingConfig {
            max_segments: 129,
            ..SendRingConfig::default()
        };
        let (tx2, _rx2) = udp_pair();
        assert!(SendRing::new(tx2, too_many).is_err());
    }

    #[test]
    fn gso_send_arrives_as_segments_and_keeps_sources_alive() {
        let (tx, rx) = udp_pair();
        let mut ring = SendRing::new(tx, SendRingConfig::default()).unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let src: Source = Arc::new(data.clone());
        let weak = Arc::downgrade(&src);
        let mut b = ring.batch(1000).unwrap();
        for i in 0..4u8 {
            let off = usize::from(i) * 998;
            b.push(&[0xAB, i], &src, off..off + 998).unwrap();
        }
        b.push(&[0xAB, 4], &src, 5000..5100).unwrap(); // short last segment
        b.submit().unwrap();
        drop(src); // the ring holds its own clone until completion
        assert!(ring.drain(Duration::from_secs(5)).unwrap());
        assert!(weak.upgrade().is_none(), "slot released its source");
        let st = ring.stats();
        assert_eq!((st.batches_sent, st.segments_sent), (1, 5));
        assert_eq!(st.bytes_sent, 4 * 1000 + 102);

        let mut buf = [0u8; 2000];
        for i in 0..5u8 {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..2], &[0xAB, i]);
            let off = usize::from(i) * 998;
            if i < 4 {
                assert_eq!(n, 1000);
                assert_eq!(&buf[2..n], &data[off..off + 998]);
            } else {
                assert_eq!(n, 102);
                assert_eq!(&buf[2..n], &data[5000..5100]);
            }
        }
    }

    #[test]
    fn owned_segments_arrive_as_written_beside_gathered_ones_and_their_storage_is_reused() {
        let (tx, rx) = udp_pair();
        let cfg = SendRingConfig {
            queue_depth: 1,
            ..SendRingConfig::default()
        };
        let mut ring = SendRing::new(tx, cfg).unwrap();
        let src: Source = Arc::new(vec![0x55u8; 4000]);
        let mut buf = [0u8; 2000];
        for round in 0..3u8 {
            let mut b = ring.batch(1000).unwrap();
            b.push_owned(1000).unwrap().fill(round);
            b.push_owned(1000).unwrap().fill(round + 10);
            b.push(&[0xAB], &src, 0..999).unwrap();
            b.push_owned(300).unwrap().fill(round + 20);
            assert_eq!(b.push_owned(10), Err(BatchError::AfterShortSegment));
            b.submit().unwrap();
            assert!(ring.drain(Duration::from_secs(5)).unwrap());
            for (len, first) in [
                (1000, round),
                (1000, round + 10),
                (1000, 0xAB),
                (300, round + 20),
            ] {
                assert_eq!(rx.recv(&mut buf).unwrap(), len);
                assert_eq!(buf[0], first);
                assert_eq!(buf[len - 1], if first == 0xAB { 0x55 } else { first });
            }
        }
        let mut b = ring.batch(1000).unwrap();
        assert_eq!(b.push_owned(1001), Err(BatchError::SegmentTooLong));
        assert_eq!(b.push_owned(0), Err(BatchError::EmptySegment));
        drop(b);
        assert_eq!(ring.stats().segments_sent, 12);
    }

    #[test]
    fn kernel_refusal_is_counted_not_raised() {
        // With SO_NO_CHECK the kernel refuses every GSO send with EINVAL (udp_send_skb).
        let (tx, _rx) = udp_pair();
        crate::sys::setsockopt_int(tx.as_raw_fd(), libc::SOL_SOCKET, libc::SO_NO_CHECK, 1, "t")
            .unwrap();
        let mut ring = SendRing::new(tx, SendRingConfig::default()).unwrap();
        let src: Source = Arc::new(vec![1u8; 4096]);
        for _ in 0..3 {
            let mut b = ring.batch(1000).unwrap();
            for k in 0..4 {
                b.push(&[], &src, k * 1000..(k + 1) * 1000).unwrap();
            }
            b.submit().unwrap();
        }
        assert!(ring.drain(Duration::from_secs(5)).unwrap());
        let st = ring.stats();
        assert_eq!(st.err_inval, 3, "{st:?}");
        assert_eq!(st.batches_failed(), 3);
        assert_eq!(st.batches_sent, 0);
        assert_eq!(st.last_errno, libc::EINVAL);
        assert_eq!(ring.free_slots(), 32);
    }

    #[test]
    fn queue_full_then_wait_frees_slots() {
        let payload = [9u8; 100];
        let (tx, rx) = udp_pair();
        let cfg = SendRingConfig {
            queue_depth: 2,
            ..SendRingConfig::default()
        };
        let mut ring = SendRing::new(tx, cfg).unwrap();
        for _ in 0..2 {
            let mut b = ring.batch(100).unwrap();
            // SAFETY: `payload` is declared before the ring, so it outlives the ring and
            // every send the ring makes from it.
            unsafe { b.push_borrowed(&[], &payload).unwrap() };
            b.submit().unwrap();
        }
        assert_eq!(ring.batch(100).err(), Some(BatchError::QueueFull));
        let deadline = Instant::now() + Duration::from_secs(5);
        while ring.free_slots() == 0 && Instant::now() < deadline {
            ring.wait(Duration::from_millis(100)).unwrap();
        }
        assert!(ring.free_slots() > 0);
        assert!(ring.drain(Duration::from_secs(5)).unwrap());
        let mut buf = [0u8; 200];
        assert_eq!(rx.recv(&mut buf).unwrap(), 100);
        assert_eq!(rx.recv(&mut buf).unwrap(), 100);
    }
}
