//! [`WriteRing`]: positioned file writes through io_uring from buffers the ring owns while the
//! kernel has them, several in flight; and [`AlignedBuf`], memory aligned for `O_DIRECT`.
//!
//! A direct (`O_DIRECT`) write is synchronous for the thread that makes it with `pwrite`: one
//! writer at a time waits out each write's trip to the disk. Through the ring the caller
//! queues a few and goes on with other work, and takes their completions when it wants them.
//!
//! # Lifetimes of in-flight memory
//!
//! [`WriteRing::submit`] takes the buffer by value and keeps it (with an `Arc` of the file) in
//! a slot until the request's completion is reaped; only then is it handed back, in a
//! [`WriteDone`]. So nothing a submitted write reads is freed or written before the kernel is
//! done with it. Dropping the ring waits for what is in flight (bounded), and leaks the slots
//! of anything still out rather than free memory the kernel may read.

use std::fs::File;
use std::io;
use std::ops::{Deref, DerefMut, Range};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};

use super::{build_ring, submit_and_wait, RingMode};
use crate::error::IoError;

/// Zeroed bytes at an address that is a multiple of [`AlignedBuf::ALIGN`], their length a
/// multiple of it too: what `O_DIRECT` asks of a buffer.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: an owned mapping, like a Vec<u8>'s heap memory: nothing else points into it.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// The alignment of the address and of the length (the page size, and the logical block
    /// size of every disk we write to or a multiple of it).
    pub const ALIGN: usize = 4096;

    /// `len` zeroed bytes, rounded up to a multiple of [`Self::ALIGN`] (at least one).
    ///
    /// Its own anonymous mapping, its pages faulted in at once (`MAP_POPULATE`): the kernel
    /// hands out zeroed pages, so nothing is written here, and one call maps them all where a
    /// first touch would take a fault per page (a block buffer is 257 pages; a fault is a
    /// kernel entry and return, costly under the SRSO mitigation).
    pub fn zeroed(len: usize) -> io::Result<Self> {
        let len = len
            .max(1)
            .checked_next_multiple_of(Self::ALIGN)
            .filter(|&l| l <= isize::MAX as usize)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "buffer too large"))?;
        // SAFETY: a fresh private anonymous mapping; no memory of ours is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(AlignedBuf { ptr, len })
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len` initialized (zeroed) bytes owned by this value.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `deref`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: mapped in `zeroed` with this length, and owned by this value alone.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .finish()
    }
}

/// A write handed back by [`WriteRing::complete`]: its tag, its buffer, and how it went.
#[derive(Debug)]
pub struct WriteDone {
    /// The caller's tag from [`WriteRing::submit`].
    pub tag: u64,
    /// The buffer, the caller's again.
    pub buf: AlignedBuf,
    /// `Ok` once every byte of the range is written; the first error otherwise.
    pub result: io::Result<()>,
}

/// One write in flight: what it reads stays here until its completion.
struct WriteSlot {
    file: Arc<File>,
    buf: AlignedBuf,
    /// What is left to write of the buffer, and where in the file.
    range: Range<usize>,
    offset: u64,
    tag: u64,
}

/// The completion of the poll [`WriteRing::wake_on`] arms (no slot has this index).
const WAKE: u64 = u64::MAX;

/// Positioned writes (`IORING_OP_WRITE`) of owned buffers, up to a fixed number in flight.
pub struct WriteRing {
    ring: IoUring,
    mode: RingMode,
    slots: Vec<Option<WriteSlot>>,
    free: Vec<usize>,
    in_flight: usize,
    /// A poll for [`WriteRing::wake_on`]'s descriptor is out.
    wake_armed: bool,
    /// It completed since [`WriteRing::take_woken`] last looked.
    woken: bool,
}

impl WriteRing {
    /// A ring for up to `depth` writes in flight (1..=1024). Build it on the thread that
    /// submits and reaps (the ring may be set up for one issuer).
    pub fn new(depth: usize) -> Result<Self, IoError> {
        if !(1..=1024).contains(&depth) {
            return Err(IoError::invalid("WriteRing::new", format!("depth {depth}")));
        }
        // One entry more than the writes: the wake-up poll.
        let (ring, mode) = build_ring((depth + 1).next_power_of_two() as u32)?;
        Ok(WriteRing {
            ring,
            mode,
            slots: (0..depth).map(|_| None).collect(),
            free: (0..depth).rev().collect(),
            in_flight: 0,
            wake_armed: false,
            woken: false,
        })
    }

    /// The setup flags the kernel accepted.
    pub fn mode(&self) -> RingMode {
        self.mode
    }

    /// Writes in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether another write can be submitted now.
    pub fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    /// Queues a write of `buf[range]` at `offset` of `file` and submits it. The ring keeps
    /// `buf` until the write's [`WriteDone`] (errors of the write come there). Full (no room)
    /// or a range outside the buffer: the buffer comes back at once, with the error. For an
    /// `O_DIRECT` file, `range.start`, its length and `offset` must be multiples of the
    /// disk's block size.
    pub fn submit(
        &mut self,
        file: Arc<File>,
        buf: AlignedBuf,
        range: Range<usize>,
        offset: u64,
        tag: u64,
    ) -> Result<(), (AlignedBuf, io::Error)> {
        if range.start > range.end || range.end > buf.len() || range.len() > u32::MAX as usize {
            let e = io::Error::new(io::ErrorKind::InvalidInput, "range outside the buffer");
            return Err((buf, e));
        }
        let Some(idx) = self.free.pop() else {
            return Err((buf, io::Error::from(io::ErrorKind::WouldBlock)));
        };
        self.slots[idx] = Some(WriteSlot {
            file,
            buf,
            range,
            offset,
            tag,
        });
        self.in_flight += 1;
        self.push(idx);
        // An error here (EBUSY: completions backed up; EINTR) leaves the entry queued: the
        // next `complete` submits it again, and reports a ring that stays broken.
        let _ = self.ring.submit();
        Ok(())
    }

    /// Puts slot `idx`'s (remaining) write in the submission queue.
    fn push(&mut self, idx: usize) {
        let Some(s) = self.slots[idx].as_ref() else {
            return;
        };
        // SAFETY: `range` lies inside `buf` (checked in `submit`, and only shrunk from the
        // front since), which the slot keeps until this request's completion is reaped.
        let ptr = unsafe { s.buf.ptr.as_ptr().add(s.range.start) };
        let entry = opcode::Write::new(types::Fd(s.file.as_raw_fd()), ptr, s.range.len() as u32)
            .offset(s.offset)
            .build()
            .user_data(idx as u64);
        // SAFETY: the entry's buffer and file stay alive in the slot until its completion
        // (see above). The queue has room: it holds at least `depth` entries and at most
        // `depth` requests are out.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        debug_assert!(pushed.is_ok(), "the submission queue holds every slot");
    }

    /// Makes the next wait of [`WriteRing::complete`] end also when `fd` is readable (an
    /// eventfd another thread pokes when it hands this thread work): queues a one-shot poll
    /// for it unless one is out, which that wait (or the next submit) hands to the kernel; a
    /// poll sees a poke made before it was submitted. [`WriteRing::take_woken`] says whether
    /// it fired. `fd` must stay open while the poll is out (the ring holds the file; it is
    /// cancelled with the ring).
    pub fn wake_on(&mut self, fd: BorrowedFd<'_>) {
        if self.wake_armed {
            return;
        }
        let entry = opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(WAKE);
        // SAFETY: a poll reads no memory of ours; the queue has room for it (one entry more
        // than the writes, and at most one poll is out).
        let pushed = unsafe { self.ring.submission().push(&entry) };
        // Queued only: the wait that follows submits it with its own system call.
        self.wake_armed = pushed.is_ok();
    }

    /// Whether the poll of [`WriteRing::wake_on`] fired since the last call.
    pub fn take_woken(&mut self) -> bool {
        std::mem::take(&mut self.woken)
    }

    /// Takes the completed writes into `done` (a short write is continued, not reported).
    /// With `wait`, blocks until at least one completes first (at most `timeout`), unless
    /// nothing is in flight or the poll of [`WriteRing::wake_on`] fires.
    pub fn complete(
        &mut self,
        wait: Option<Duration>,
        done: &mut Vec<WriteDone>,
    ) -> Result<(), IoError> {
        let before = done.len();
        let (queued, work) = self.pending();
        // Entries queued and about to wait: the wait's system call submits them.
        if work || (queued && wait.is_none()) {
            self.enter(0)?;
        }
        self.reap(done);
        if let Some(timeout) = wait {
            let deadline = Instant::now() + timeout;
            while done.len() == before && !self.woken && self.in_flight > 0 {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                submit_and_wait(&self.ring, left, "WriteRing::complete")?;
                self.reap(done);
            }
        }
        // Queued for a wait that did not happen (a write had completed, or the poll had
        // fired): submitted now, not left for a later call.
        if self.pending().0 {
            self.enter(0)?;
        }
        Ok(())
    }

    /// Whether entries are queued and not submitted, and whether the kernel holds work for
    /// this thread that only a system call runs (the taskrun flag, which the ring's deferred
    /// or cooperative task work sets up; a plain ring posts its completions without one), or
    /// completions that overflowed the queue. Neither: a look at the completion queue is all
    /// a reap needs, without a system call.
    fn pending(&mut self) -> (bool, bool) {
        let mut sq = self.ring.submission();
        sq.sync();
        (!sq.is_empty(), sq.taskrun() || sq.cq_overflow())
    }

    /// Submits what is queued and runs completions the kernel holds for this thread.
    fn enter(&mut self, want: usize) -> Result<(), IoError> {
        match self.ring.submit_and_wait(want) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EINTR)) => Ok(()),
            Err(e) => Err(IoError::os("io_uring_enter", "WriteRing", e)),
        }
    }

    fn reap(&mut self, done: &mut Vec<WriteDone>) {
        let mut again = false;
        // One completion at a time off the queue (the queue's head moves as each is taken):
        // no list of them is made.
        loop {
            let Some(cqe) = self.ring.completion().next() else {
                break;
            };
            let (idx, res) = (cqe.user_data(), cqe.result());
            if idx == WAKE {
                self.wake_armed = false;
                self.woken = true;
                continue;
            }
            let idx = idx as usize;
            let Some(slot) = self.slots.get_mut(idx).and_then(|s| s.as_mut()) else {
                continue;
            };
            let result = if res == -libc::EINTR || res == -libc::EAGAIN {
                None
            } else if res < 0 {
                Some(Err(io::Error::from_raw_os_error(-res)))
            } else if res == 0 && !slot.range.is_empty() {
                Some(Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the write wrote nothing",
                )))
            } else {
                slot.range.start += res as usize;
                slot.offset += res as u64;
                slot.range.is_empty().then_some(Ok(()))
            };
            match result {
                // Short, or to try again: the rest goes out from the same slot.
                None => {
                    self.push(idx);
                    again = true;
                }
                Some(result) => {
                    // This completion is the kernel's last word on the request: the slot's
                    // buffer is no longer read.
                    let Some(s) = self.slots[idx].take() else {
                        continue;
                    };
                    self.in_flight -= 1;
                    self.free.push(idx);
                    done.push(WriteDone {
                        tag: s.tag,
                        buf: s.buf,
                        result,
                    });
                }
            }
        }
        if again {
            let _ = self.ring.submit();
        }
    }
}

impl Drop for WriteRing {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut done = Vec::new();
        while self.in_flight > 0 && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.complete(Some(left), &mut done).is_err() {
                break;
            }
            done.clear();
        }
        if self.in_flight > 0 {
            // The kernel may still read these buffers: leak them rather than free memory
            // under it.
            std::mem::forget(std::mem::take(&mut self.slots));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn aligned_buffers_are_aligned_zeroed_and_rounded_up() {
        let b = AlignedBuf::zeroed(5000).unwrap();
        assert_eq!(b.len(), 8192);
        assert_eq!(b.as_ptr() as usize % AlignedBuf::ALIGN, 0);
        assert!(b.iter().all(|&x| x == 0));
    }

    #[test]
    fn a_poked_eventfd_ends_the_wait_for_a_write_that_is_still_out() {
        use std::os::fd::{AsFd, FromRawFd, OwnedFd};
        // A write that cannot complete yet: into a pipe whose buffer is full.
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills `fds` with two fresh descriptors, owned below.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fresh descriptors nothing else owns.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: F_SETFL on our own descriptor.
        unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        let chunk = [7u8; 4096];
        // SAFETY: writes from `chunk`, until the pipe takes no more.
        while unsafe { libc::write(wr.as_raw_fd(), chunk.as_ptr().cast(), chunk.len()) } > 0 {}
        // SAFETY: F_SETFL on our own descriptor: the ring's write now waits for room.
        unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETFL, 0) };
        let file = Arc::new(File::from(wr));
        let mut ring = WriteRing::new(2).unwrap();
        let buf = AlignedBuf::zeroed(4096).unwrap();
        ring.submit(file, buf, 0..4096, 0, 9)
            .map_err(|(_, e)| e)
            .unwrap();
        let wake = crate::os::EventFd::new().unwrap();
        wake.poke();
        ring.wake_on(wake.as_fd());
        let mut done = Vec::new();
        // Without the poll this waits the whole minute: the write is stuck.
        ring.complete(Some(Duration::from_secs(60)), &mut done)
            .unwrap();
        assert!(done.is_empty());
        // Armed again before the poke is taken: that call does not wait (the poke is
        // pending), and the poll it queued must not be left unsubmitted for a later one.
        wake.clear();
        ring.wake_on(wake.as_fd());
        ring.complete(Some(Duration::from_secs(60)), &mut done)
            .unwrap();
        assert!(!ring.pending().0, "the poll was left in the queue");
        assert!(ring.take_woken());
        assert_eq!(ring.in_flight(), 1);
        // Room in the pipe: the write completes.
        let mut sink = vec![0u8; 1 << 20];
        // SAFETY: reads into `sink`, which is large enough for the pipe's whole buffer.
        unsafe { libc::read(rd.as_raw_fd(), sink.as_mut_ptr().cast(), sink.len()) };
        ring.complete(Some(Duration::from_secs(60)), &mut done)
            .unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].tag, 9);
        assert!(done[0].result.is_ok(), "{:?}", done[0].result);
        assert!(!ring.take_woken());
    }

    #[test]
    fn a_direct_write_that_completed_is_reaped_without_waiting_for_it() {
        use std::os::unix::fs::OpenOptionsExt;
        // A direct write completes after the submit, from the disk's interrupt: with deferred
        // task work only a system call posts it, and `complete(None)` must make that call
        // when the taskrun flag says so (and none when nothing waits).
        let dir = std::env::temp_dir().join(format!("bc-write-reap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.join("out"));
        let file = match opened {
            Ok(f) => Arc::new(f),
            Err(e) => {
                std::fs::remove_dir_all(&dir).unwrap();
                assert!(std::env::var("CI").is_err(), "no O_DIRECT here: {e}");
                eprintln!("skipped: {} takes no O_DIRECT ({e})", dir.display());
                return;
            }
        };
        let mut ring = WriteRing::new(2).unwrap();
        let mut buf = AlignedBuf::zeroed(1 << 20).unwrap();
        buf.fill(3);
        ring.submit(file.clone(), buf, 0..1 << 20, 0, 5)
            .map_err(|(_, e)| e)
            .unwrap();
        let mut done = Vec::new();
        let mut looks = 0u64;
        let deadline = Instant::now() + Duration::from_secs(30);
        while done.is_empty() && Instant::now() < deadline {
            ring.complete(None, &mut done).unwrap();
            looks += 1;
            std::thread::yield_now();
        }
        assert_eq!(done.len(), 1, "not reaped after {looks} looks");
        assert!(done[0].result.is_ok(), "{:?}", done[0].result);
        assert_eq!(ring.in_flight(), 0);
        let mut back = vec![0u8; 1 << 20];
        std::fs::File::open(dir.join("out"))
            .unwrap()
            .read_exact_at(&mut back, 0)
            .unwrap();
        assert!(back.iter().all(|&b| b == 3));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writes_in_flight_land_where_they_were_aimed_and_give_their_buffers_back() {
        let dir = std::env::temp_dir().join(format!("bc-write-ring-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let file = Arc::new(file);
        let mut ring = WriteRing::new(4).unwrap();
        for i in 0..4u64 {
            let mut b = AlignedBuf::zeroed(8192).unwrap();
            b.fill(i as u8 + 1);
            ring.submit(file.clone(), b, 100..8192, i * 8092, i)
                .unwrap();
        }
        assert!(!ring.has_room());
        let extra = AlignedBuf::zeroed(4096).unwrap();
        let (_, e) = ring.submit(file.clone(), extra, 0..4096, 0, 9).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        let mut done = Vec::new();
        while ring.in_flight() > 0 {
            ring.complete(Some(Duration::from_secs(5)), &mut done)
                .unwrap();
        }
        let mut tags: Vec<u64> = done.iter().map(|d| d.tag).collect();
        tags.sort_unstable();
        assert_eq!(tags, [0, 1, 2, 3]);
        assert!(done.iter().all(|d| d.result.is_ok() && d.buf.len() == 8192));
        let mut got = vec![0u8; 4 * 8092];
        file.read_exact_at(&mut got, 0).unwrap();
        for (i, chunk) in got.chunks(8092).enumerate() {
            assert!(chunk.iter().all(|&x| x == i as u8 + 1), "chunk {i}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
