//! An AF_XDP socket: its UMEM (frames in one anonymous mapping) and its four rings.
//!
//! Who owns each frame: a frame address is at any moment in exactly one place, our free list,
//! the fill ring (the kernel may write a received frame into it), the RX ring (received, ours to
//! read until we advance the consumer), the TX ring (the kernel may read it) or the completion
//! ring (sent, ours again once we read it). Frames move between these only here, so a frame the
//! kernel can touch is never handed to a caller, and the UMEM is unmapped only after the socket
//! (and with it the kernel's references) is closed.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::error::IoError;
use crate::recv::{BatchLocator, BatchRange, ReceivedBytes};

/// Generations of AF_XDP batches start here, so a range of a socket batch (counted from 0)
/// is never taken for one of a frame batch.
const XSK_GENERATIONS: u64 = 1 << 63;

/// How the socket binds: zero-copy (the driver DMAs into the UMEM) or copy mode (the kernel
/// copies between its buffers and the UMEM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindMode {
    /// Zero-copy where the driver supports it, copy mode otherwise.
    Auto,
    /// Copy mode only.
    Copy,
    /// Zero-copy only (fails on drivers without it, e.g. veth).
    ZeroCopy,
}

/// Sizes of an AF_XDP socket.
#[derive(Clone, Copy, Debug)]
pub struct XskConfig {
    /// Frames in the UMEM (a power of two).
    pub frames: u32,
    /// Bytes per frame: 2048 or 4096; one Ethernet frame each.
    pub frame_size: u32,
    /// Entries of each ring (a power of two).
    pub ring_size: u32,
    /// Frames kept for sending; the rest are given to the fill ring for receiving.
    pub tx_frames: u32,
    /// Zero-copy or copy mode.
    pub mode: BindMode,
}

impl Default for XskConfig {
    fn default() -> Self {
        XskConfig {
            frames: 4096,
            frame_size: 4096,
            ring_size: 2048,
            tx_frames: 1024,
            mode: BindMode::Auto,
        }
    }
}

/// What [`XdpSocket::push`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// The frame is queued (sent at the next [`XdpSocket::flush`]).
    Queued,
    /// No frame or TX entry was free; nothing was written.
    Full,
    /// The writer returned no length (or one beyond the frame); the frame stays free.
    Refused,
}

/// The kernel's AF_XDP counters for one socket (`XDP_STATISTICS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskStats {
    /// Frames dropped for reasons other than a full ring.
    pub rx_dropped: u64,
    /// Frames dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Times the fill ring was empty when a frame arrived.
    pub rx_fill_ring_empty: u64,
    /// Invalid descriptors on the TX ring.
    pub tx_invalid: u64,
}

/// A mapping unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize, fd: Option<(RawFd, i64)>, what: &str) -> Result<Mapping, IoError> {
        let (flags, fd, off) = match fd {
            Some((fd, off)) => (libc::MAP_SHARED | libc::MAP_POPULATE, fd, off),
            None => (
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            ),
        };
        // SAFETY: a fresh mapping at an address the kernel picks; nothing else refers to it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                off as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(IoError::last_os("mmap", format!("{what} ({len} bytes)")));
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr..ptr+len` is a mapping this value made and nothing borrows past its life.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// One ring shared with the kernel: a producer index, a consumer index, flags and `size`
/// descriptors of type `T`. We own one of the two indexes (the one we advance) and keep a copy.
struct Ring<T> {
    _map: Mapping,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    descs: *mut T,
    mask: u32,
    /// Our copy of the index we advance.
    local: u32,
}

impl<T: Copy> Ring<T> {
    fn map(
        fd: RawFd,
        off: &libc::xdp_ring_offset,
        entries: u32,
        pgoff: i64,
        what: &str,
    ) -> Result<Ring<T>, IoError> {
        let len = off.desc as usize + entries as usize * std::mem::size_of::<T>();
        let map = Mapping::new(len, Some((fd, pgoff)), what)?;
        let at = |o: u64| map.ptr.wrapping_add(o as usize);
        let ring = Ring {
            producer: at(off.producer).cast::<AtomicU32>(),
            consumer: at(off.consumer).cast::<AtomicU32>(),
            flags: at(off.flags).cast::<AtomicU32>(),
            descs: at(off.desc).cast::<T>(),
            mask: entries - 1,
            local: 0,
            _map: map,
        };
        Ok(ring)
    }

    fn index(&self, which: *const AtomicU32) -> &AtomicU32 {
        // SAFETY: `which` is one of the ring's index words, inside the live mapping `_map`,
        // 4-byte aligned (the kernel's offsets), and only ever accessed atomically.
        unsafe { &*which }
    }

    fn needs_wakeup(&self) -> bool {
        // Relaxed: the flag is a hint re-read on every flush; a stale read costs one syscall.
        self.index(self.flags).load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    /// As a consumer: descriptors the kernel has produced and we have not read.
    fn available(&self) -> u32 {
        // Acquire: pairs with the kernel's release of the producer, so the descriptors it wrote
        // before moving the index are visible.
        self.index(self.producer)
            .load(Ordering::Acquire)
            .wrapping_sub(self.local)
    }

    /// As a producer: entries free for us to fill.
    fn free(&self) -> u32 {
        // Acquire: the kernel has finished reading the entries it has consumed.
        let consumed = self.index(self.consumer).load(Ordering::Acquire);
        (self.mask + 1) - self.local.wrapping_sub(consumed)
    }

    fn read(&self, i: u32) -> T {
        // SAFETY: the index is masked into the ring's `mask + 1` descriptors of the live mapping;
        // as consumer we read only entries between our index and the producer's (the kernel
        // does not write them until we release them).
        unsafe { self.descs.add((i & self.mask) as usize).read_volatile() }
    }

    fn write(&mut self, i: u32, value: T) {
        // SAFETY: as above; as producer we write only entries between our index and the
        // consumer's plus the ring size, which the kernel does not read until we publish them.
        unsafe {
            self.descs
                .add((i & self.mask) as usize)
                .write_volatile(value)
        }
    }

    /// Publishes our index: as consumer, releases what we read; as producer, hands over what
    /// we wrote.
    fn publish(&self, which: *const AtomicU32) {
        // Release: our reads of (or writes to) the descriptors happen before the kernel sees
        // the index move.
        self.index(which).store(self.local, Ordering::Release);
    }
}

/// An AF_XDP socket bound to one queue of one interface, with its own UMEM.
///
/// Receiving: [`XdpSocket::receive`] hands each frame to a closure where it lies in the UMEM
/// and gives the batch's frames back to the fill ring at once. Sending: [`XdpSocket::push`]
/// writes a frame into a free UMEM frame and queues it, [`XdpSocket::flush`] makes the kernel
/// send what is queued. Not `Send`: the rings are driven by one thread.
pub struct XdpSocket {
    // Field order is drop order: the socket closes (dropping the kernel's references to the
    // rings and the UMEM) before the rings and the UMEM are unmapped.
    fd: OwnedFd,
    fill: Ring<u64>,
    comp: Ring<u64>,
    rx: Ring<libc::xdp_desc>,
    tx: Ring<libc::xdp_desc>,
    umem: Mapping,
    frame_size: u32,
    /// Frames ours to send with.
    free: Vec<u64>,
    /// TX descriptors written but not yet handed to the kernel.
    queued: u32,
    zero_copy: bool,
    ifindex: u32,
    queue: u32,
    /// The frames of the batch being handed out: (address, length), each inside the UMEM.
    batch: Vec<(usize, usize)>,
    generation: u64,
    received: u64,
}

/// The frames of one receive: each one's bytes where they lie in the UMEM, ours until the
/// batch is handed back to the fill ring (after the closure given to
/// [`XdpSocket::receive_batch`] returns). As a [`ReceivedBytes`], a store can queue writes
/// from the frames by place and read them back before then.
pub struct XskBatch<'a> {
    base: *mut u8,
    umem_len: usize,
    frames: &'a [(usize, usize)],
    generation: u64,
}

impl XskBatch<'_> {
    /// Frames in the batch.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The `i`-th frame (an Ethernet frame).
    pub fn frame(&self, i: usize) -> Option<&[u8]> {
        let &(addr, len) = self.frames.get(i)?;
        // SAFETY: `addr..addr+len` lies inside the UMEM (checked when the batch was made);
        // the frame is ours (taken from the RX ring, not yet on the fill ring) for the
        // batch's life, and the shared borrow of the batch excludes `frame_mut`.
        Some(unsafe { std::slice::from_raw_parts(self.base.add(addr), len) })
    }

    /// The `i`-th frame, writable (to open a sealed datagram in place).
    pub fn frame_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        let &(addr, len) = self.frames.get(i)?;
        // SAFETY: as in `frame`; the exclusive borrow of the batch makes this the only
        // reference to the frame, and frames of one batch do not overlap (distinct chunks).
        Some(unsafe { std::slice::from_raw_parts_mut(self.base.add(addr), len) })
    }
}

impl ReceivedBytes for XskBatch<'_> {
    fn locator(&self) -> BatchLocator {
        BatchLocator {
            base: self.base as usize,
            len: self.umem_len,
            generation: self.generation,
        }
    }

    fn bytes_at(&self, r: &BatchRange) -> Option<&[u8]> {
        if r.generation != self.generation {
            return None;
        }
        // Only bytes inside one frame of this batch: never a frame the kernel may be writing.
        let i = self
            .frames
            .iter()
            .position(|&(a, l)| a <= r.range.start && r.range.end <= a + l)?;
        let (addr, _) = self.frames[i];
        self.frame(i)?.get(r.range.start - addr..r.range.end - addr)
    }
}

fn setsockopt<T>(fd: RawFd, name: libc::c_int, value: &T, op: &'static str) -> Result<(), IoError> {
    // SAFETY: `value` is a live, initialised `T` whose exact size we pass; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(IoError::last_os(op, format!("AF_XDP socket fd {fd}")))
    }
}

/// C structs the kernel fills, for which all-zero bytes are a valid value.
///
/// # Safety
/// Implement only for `#[repr(C)]` structs of integers.
unsafe trait Plain: Sized {
    fn zeroed() -> Self {
        // SAFETY: the trait's contract: all-zero bytes are a valid value of `Self`.
        unsafe { std::mem::zeroed() }
    }
}
// SAFETY: both are repr(C) structs of u64 fields.
unsafe impl Plain for libc::xdp_mmap_offsets {}
// SAFETY: as above.
unsafe impl Plain for libc::xdp_statistics {}

fn getsockopt<T: Plain>(fd: RawFd, name: libc::c_int, op: &'static str) -> Result<T, IoError> {
    let mut value = T::zeroed();
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes during the call; the kernel writes at most
    // `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_XDP,
            name,
            (&mut value as *mut T).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(IoError::last_os(op, format!("AF_XDP socket fd {fd}")))
    }
}

impl XdpSocket {
    /// Opens a socket on queue `queue` of interface `ifindex`. With [`BindMode::Auto`] it tries
    /// zero-copy first and, when the driver refuses, opens a fresh socket in copy mode.
    pub fn open(ifindex: u32, queue: u32, config: XskConfig) -> Result<XdpSocket, IoError> {
        match config.mode {
            BindMode::Copy => XdpSocket::open_as(ifindex, queue, config, false),
            BindMode::ZeroCopy => XdpSocket::open_as(ifindex, queue, config, true),
            BindMode::Auto => XdpSocket::open_as(ifindex, queue, config, true)
                .or_else(|_| XdpSocket::open_as(ifindex, queue, config, false)),
        }
    }

    fn open_as(
        ifindex: u32,
        queue: u32,
        config: XskConfig,
        zero_copy: bool,
    ) -> Result<XdpSocket, IoError> {
        let XskConfig {
            frames,
            frame_size,
            ring_size,
            tx_frames,
            ..
        } = config;
        if !frames.is_power_of_two()
            || !ring_size.is_power_of_two()
            || !(frame_size == 2048 || frame_size == 4096)
            || tx_frames > frames
        {
            return Err(IoError::invalid(
                "XdpSocket::open",
                format!("{config:?}: frames and ring size powers of two, frame size 2048 or 4096, tx frames <= frames"),
            ));
        }
        // SAFETY: plain socket(2); the result is checked and owned below.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(IoError::last_os(
                "socket(AF_XDP)",
                format!("interface index {ifindex}"),
            ));
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let umem = Mapping::new(frames as usize * frame_size as usize, None, "the UMEM")?;
        let reg = libc::xdp_umem_reg {
            addr: umem.ptr as u64,
            len: umem.len as u64,
            chunk_size: frame_size,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setsockopt(raw, libc::XDP_UMEM_REG, &reg, "setsockopt(XDP_UMEM_REG)")?;
        for (name, op) in [
            (libc::XDP_UMEM_FILL_RING, "setsockopt(XDP_UMEM_FILL_RING)"),
            (
                libc::XDP_UMEM_COMPLETION_RING,
                "setsockopt(XDP_UMEM_COMPLETION_RING)",
            ),
            (libc::XDP_RX_RING, "setsockopt(XDP_RX_RING)"),
            (libc::XDP_TX_RING, "setsockopt(XDP_TX_RING)"),
        ] {
            setsockopt(raw, name, &(ring_size as libc::c_int), op)?;
        }
        let off: libc::xdp_mmap_offsets =
            getsockopt(raw, libc::XDP_MMAP_OFFSETS, "getsockopt(XDP_MMAP_OFFSETS)")?;
        let fill = Ring::map(
            raw,
            &off.fr,
            ring_size,
            libc::XDP_UMEM_PGOFF_FILL_RING as i64,
            "the fill ring",
        )?;
        let comp = Ring::map(
            raw,
            &off.cr,
            ring_size,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING as i64,
            "the completion ring",
        )?;
        let rx = Ring::map(
            raw,
            &off.rx,
            ring_size,
            libc::XDP_PGOFF_RX_RING,
            "the RX ring",
        )?;
        let tx = Ring::map(
            raw,
            &off.tx,
            ring_size,
            libc::XDP_PGOFF_TX_RING,
            "the TX ring",
        )?;
        let mut socket = XdpSocket {
            fd,
            fill,
            comp,
            rx,
            tx,
            umem,
            frame_size,
            free: (0..tx_frames)
                .map(|i| u64::from(i) * u64::from(frame_size))
                .collect(),
            queued: 0,
            zero_copy,
            ifindex,
            queue,
            batch: Vec::with_capacity(ring_size as usize),
            generation: XSK_GENERATIONS,
            received: 0,
        };
        // Every frame not kept for sending waits on the fill ring (at most a ring's worth).
        let rx_frames = (tx_frames..frames).take(ring_size as usize);
        for (n, i) in rx_frames.enumerate() {
            socket
                .fill
                .write(n as u32, u64::from(i) * u64::from(frame_size));
            socket.fill.local = n as u32 + 1;
        }
        socket.fill.publish(socket.fill.producer);
        bind_xsk(raw, ifindex, queue, zero_copy)?;
        Ok(socket)
    }

    /// True when bound in zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// The interface index and queue this socket is bound to.
    pub fn queue(&self) -> (u32, u32) {
        (self.ifindex, self.queue)
    }

    /// Bytes per frame (the largest Ethernet frame this socket sends or receives).
    pub fn frame_size(&self) -> usize {
        self.frame_size as usize
    }

    /// Waits up to `timeout` for received frames; true when some are ready.
    pub fn wait_rx(&self, timeout: Duration) -> bool {
        if self.rx.available() > 0 {
            return true;
        }
        let mut ready = [false];
        crate::os::wait_readable(&[self.fd.as_raw_fd()], timeout, &mut ready);
        self.rx.available() > 0
    }

    /// Hands up to `max` received frames to `each` (the Ethernet frame's bytes where they lie
    /// in the UMEM), then gives those frames back to the fill ring in one batch. Returns how
    /// many frames were handed over.
    pub fn receive(&mut self, max: usize, mut each: impl FnMut(&[u8])) -> usize {
        self.receive_batch(max, |batch| {
            for i in 0..batch.len() {
                if let Some(f) = batch.frame(i) {
                    each(f);
                }
            }
        })
        .0
    }

    /// Takes up to `max` received frames as one [`XskBatch`] for `with`, then gives them back
    /// to the fill ring at once. Returns how many frames were taken and what `with` returned.
    pub fn receive_batch<R>(
        &mut self,
        max: usize,
        with: impl FnOnce(&mut XskBatch<'_>) -> R,
    ) -> (usize, R) {
        // The fill ring has room for every frame we take back: the kernel consumed from it
        // each frame it put on the RX ring, and both rings have the same size.
        let n = self.rx.available().min(max as u32).min(self.fill.free());
        let frame_mask = !(u64::from(self.frame_size) - 1);
        self.batch.clear();
        for k in 0..n {
            let desc = self.rx.read(self.rx.local.wrapping_add(k));
            let (addr, len) = (desc.addr as usize, desc.len as usize);
            // A descriptor outside the UMEM (never from a sane kernel) is skipped, not read.
            if addr
                .checked_add(len)
                .is_some_and(|end| end <= self.umem.len)
            {
                self.batch.push((addr, len));
            }
        }
        self.generation = self.generation.wrapping_add(1) | XSK_GENERATIONS;
        let mut batch = XskBatch {
            base: self.umem.ptr,
            umem_len: self.umem.len,
            frames: &self.batch,
            generation: self.generation,
        };
        let r = with(&mut batch);
        // The frames go back only now, after `with` and every borrow of the batch ended.
        for k in 0..n {
            let desc = self.rx.read(self.rx.local.wrapping_add(k));
            let at = self.fill.local;
            self.fill.write(at, desc.addr & frame_mask);
            self.fill.local = at.wrapping_add(1);
        }
        self.rx.local = self.rx.local.wrapping_add(n);
        self.rx.publish(self.rx.consumer);
        self.fill.publish(self.fill.producer);
        self.received += u64::from(n);
        if n > 0 && self.fill.needs_wakeup() {
            // A zero-copy driver asks to be told that the fill ring has frames again.
            // SAFETY: a wake-up with no buffer; the kernel writes nothing.
            unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
        }
        (n as usize, r)
    }

    /// Frames received in all.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Takes back the frames the kernel has sent (the completion ring).
    pub fn complete(&mut self) -> usize {
        let n = self.comp.available();
        for k in 0..n {
            let addr = self.comp.read(self.comp.local.wrapping_add(k));
            self.free.push(addr);
        }
        self.comp.local = self.comp.local.wrapping_add(n);
        self.comp.publish(self.comp.consumer);
        n as usize
    }

    /// Writes one frame with `fill` (given the frame's bytes, it returns the length written,
    /// or `None` to send nothing) and queues it for sending. [`Push::Full`] when no frame or
    /// TX entry is free: call [`XdpSocket::flush`] and try again.
    pub fn push(&mut self, fill: impl FnOnce(&mut [u8]) -> Option<usize>) -> Push {
        if self.free.is_empty() {
            self.complete();
        }
        if self.tx.free() == 0 {
            return Push::Full;
        }
        let Some(addr) = self.free.pop() else {
            return Push::Full;
        };
        // SAFETY: `addr` came from our free list, so the kernel holds no reference to this
        // frame; it lies inside the UMEM (frames are `frame_size` apart below its length).
        let frame = unsafe {
            std::slice::from_raw_parts_mut(
                self.umem.ptr.add(addr as usize),
                self.frame_size as usize,
            )
        };
        let Some(len) = fill(frame).filter(|&n| n > 0 && n <= self.frame_size as usize) else {
            self.free.push(addr);
            return Push::Refused;
        };
        let at = self.tx.local;
        self.tx.write(
            at,
            libc::xdp_desc {
                addr,
                len: len as u32,
                options: 0,
            },
        );
        self.tx.local = at.wrapping_add(1);
        self.queued += 1;
        Push::Queued
    }

    /// Frames free for [`XdpSocket::push`] without waiting for completions.
    pub fn free_frames(&self) -> usize {
        self.free.len()
    }

    /// Hands the queued frames to the kernel and, when it asks for it, wakes it with `sendto`.
    /// In copy mode the kernel sends a limited batch per call, so this calls again while frames
    /// remain, taking back completions in between (at most `frames / 16` calls).
    pub fn flush(&mut self) -> Result<(), IoError> {
        if self.queued == 0 {
            return Ok(());
        }
        self.tx.publish(self.tx.producer);
        self.queued = 0;
        let mut calls = 0;
        while self.tx.needs_wakeup() && self.tx.free() < self.tx.mask + 1 {
            calls += 1;
            // SAFETY: a wake-up with no buffer and no address; the kernel reads neither.
            let rc = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            self.complete();
            if rc < 0 {
                let err = std::io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::ENETDOWN) => {}
                    _ => {
                        return Err(IoError::os(
                            "sendto(AF_XDP wake-up)",
                            format!("queue {} of interface index {}", self.queue, self.ifindex),
                            err,
                        ))
                    }
                }
            }
            if calls > (self.tx.mask + 1) / 16 {
                break;
            }
        }
        Ok(())
    }

    /// The kernel's counters for this socket.
    pub fn stats(&self) -> Result<XskStats, IoError> {
        let s: libc::xdp_statistics = getsockopt(
            self.fd.as_raw_fd(),
            libc::XDP_STATISTICS,
            "getsockopt(XDP_STATISTICS)",
        )?;
        Ok(XskStats {
            rx_dropped: s.rx_dropped,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty: s.rx_fill_ring_empty_descs,
            tx_invalid: s.tx_invalid_descs,
        })
    }
}

/// Binds the AF_XDP socket `raw` to queue `queue` of interface `ifindex`, in zero-copy or copy
/// mode, with the kernel's reason (and what it usually means) if it refuses.
fn bind_xsk(raw: libc::c_int, ifindex: u32, queue: u32, zero_copy: bool) -> Result<(), IoError> {
    let addr = libc::sockaddr_xdp {
        sxdp_family: libc::AF_XDP as u16,
        sxdp_flags: libc::XDP_USE_NEED_WAKEUP
            | if zero_copy {
                libc::XDP_ZEROCOPY
            } else {
                libc::XDP_COPY
            },
        sxdp_ifindex: ifindex,
        sxdp_queue_id: queue,
        sxdp_shared_umem_fd: 0,
    };
    // SAFETY: `addr` is a live sockaddr_xdp whose size we pass; the kernel only reads it.
    let rc = unsafe {
        libc::bind(
            raw,
            (&addr as *const libc::sockaddr_xdp).cast(),
            std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let mode = if zero_copy {
            "XDP_ZEROCOPY"
        } else {
            "XDP_COPY"
        };
        let err = std::io::Error::last_os_error();
        let hint = match err.raw_os_error() {
            Some(libc::EBUSY) => ": another AF_XDP socket is bound to this queue",
            Some(libc::EOPNOTSUPP) if zero_copy => ": the driver has no zero-copy mode",
            Some(libc::EINVAL) => ": the interface has no such queue",
            _ => "",
        };
        return Err(IoError::os(
            "bind(AF_XDP)",
            format!("queue {queue} of interface index {ifindex}, {mode}{hint}"),
            err,
        ));
    }
    Ok(())
}

// SAFETY: the raw pointers refer to mappings this value owns and frees; every access goes
// through `&mut self` or atomics, so moving the socket to another thread is sound (it is not
// `Sync`: one thread drives it at a time).
unsafe impl Send for XdpSocket {}

impl AsRawFd for XdpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
