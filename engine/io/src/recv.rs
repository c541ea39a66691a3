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
}

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
        })
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
        let m = self.meta.get(i)?;
        let start = i * self.buf_size;
        Some(&mut self.bufs[start..start + m.len])
    }

    /// The sender and the segments of the `i`-th datagram of the last batch, writable (to
    /// open sealed datagrams in place); none if it was truncated.
    pub fn segments_mut(&mut self, i: usize) -> Option<(SocketAddrV4, ChunksMut<'_, u8>)> {
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

    /// One non-blocking `recvmmsg`; `None` when nothing is queued.
    fn try_recvmmsg(&mut self, fd: RawFd) -> Result<Option<usize>, IoError> {
        let batch = self.batch;
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_RECV_BATCH];
        // SAFETY: mmsghdr is a C struct of pointers and integers; all-zero is a valid value.
        let mut hdrs: [libc::mmsghdr; MAX_RECV_BATCH] = unsafe { std::mem::zeroed() };
        let bufs = self.bufs.as_mut_ptr();
        let names = self.names.as_mut_ptr();
        let cmsgs = self.cmsgs.as_mut_ptr();
        for i in 0..batch {
            // SAFETY: i < batch, and bufs holds batch * buf_size bytes, names and cmsgs hold
            // batch entries, so every offset stays inside its allocation.
            unsafe {
                iov[i].iov_base = bufs.add(i * self.buf_size).cast();
                iov[i].iov_len = self.buf_size;
                let h = &mut hdrs[i].msg_hdr;
                h.msg_name = names.add(i).cast();
                h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                h.msg_iov = &mut iov[i];
                h.msg_iovlen = 1;
                h.msg_control = cmsgs.add(i).cast();
                h.msg_controllen = CMSG_ROOM as _;
            }
        }
        let rc = loop {
            // SAFETY: `hdrs[..batch]` point at buffers owned by `self` (and `iov` on this
            // stack frame) that stay valid and unaliased for the call; the kernel writes at
            // most the lengths given. No timeout pointer is passed.
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
            let len = (h.msg_len as usize).min(self.buf_size);
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
