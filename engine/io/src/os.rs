//! The node's other system calls, wrapped once so that no layer above engine/io calls libc:
//! waiting for descriptors with a deadline, eventfd wake-ups, a thread's CPU time, the file
//! calls a receiver's store needs (preallocation, vectored positioned writes, starting
//! write-out of a range, syncing a directory), and a guard that keeps a read of a mapping
//! whose file shrank from killing the process ([`MappingGuard`]).

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};
use std::time::Duration;

/// Waits until one of `fds` is readable (or in error) or `timeout` passes; sets `ready[i]`
/// for each that is. `ready` must be as long as `fds`. With no descriptors it just sleeps.
pub fn wait_readable(fds: &[RawFd], timeout: Duration, ready: &mut [bool]) {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structs that lives across the
    // call; `ts` is a valid timespec; a null sigmask leaves the mask unchanged.
    let n = unsafe {
        libc::ppoll(
            pfds.as_mut_ptr(),
            pfds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
    for (r, p) in ready.iter_mut().zip(&pfds) {
        *r = n > 0 && p.revents & (libc::POLLIN | libc::POLLERR) != 0;
    }
}

/// An eventfd: one thread pokes it, another waits for it among its sockets.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// A non-blocking, close-on-exec eventfd.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the descriptor it returns (if any) is owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes it readable (a full counter means a wake-up is pending anyway).
    pub fn poke(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from `one` to the eventfd, which the kernel only reads.
        unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Resets it (nothing pending is fine).
    pub fn clear(&self) {
        let mut v = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `v`; a non-blocking eventfd read only resets its
        // counter (EAGAIN when it was already 0).
        unsafe { libc::read(self.0.as_raw_fd(), v.as_mut_ptr().cast(), v.len()) };
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// CPU time the calling thread has used, in seconds.
pub fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec the call writes into.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Asks the kernel to wake this thread from timed waits within `slack` of the deadline
/// (`PR_SET_TIMERSLACK`; the default is 50 us). A paced sender waits tens of microseconds
/// between GSO super-buffers, so the default slack alone would stretch each wait by half.
pub fn set_timer_slack(slack: Duration) {
    // SAFETY: a plain prctl with an integer argument; it changes only this thread's slack.
    unsafe {
        libc::prctl(
            libc::PR_SET_TIMERSLACK,
            slack.as_nanos().max(1) as libc::c_ulong,
        );
    }
}

/// Sends `bytes` as one datagram on a connected socket, without blocking; a full buffer drops
/// it (the protocol treats that as loss).
pub fn send_connected(socket: &impl AsFd, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe the initialized slice `bytes`, which lives
    // across the call; the kernel only reads it.
    let n = unsafe {
        libc::send(
            socket.as_fd().as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Reserves `len` bytes of `file` on disk from offset 0 (`fallocate`), so that later writes
/// cannot fail for lack of space. `Unsupported` when the filesystem cannot preallocate.
pub fn preallocate(file: &impl AsFd, len: u64) -> io::Result<()> {
    // SAFETY: fallocate on an open file descriptor with a valid range.
    let rc = unsafe { libc::fallocate(file.as_fd().as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {
            Err(io::Error::new(io::ErrorKind::Unsupported, e))
        }
        _ => Err(e),
    }
}

/// Writes all of `bufs`, back to back, at `offset` of `file` (`pwritev`, again after a short
/// write or an interrupt).
pub fn write_all_vectored_at(
    file: &impl AsFd,
    offset: u64,
    bufs: &[IoSlice<'_>],
) -> io::Result<()> {
    const MAX_IOV: usize = 1024;
    let fd = file.as_fd().as_raw_fd();
    let mut at = offset;
    let mut first = 0;
    // How much of `bufs[first]` is already written.
    let mut skip = 0usize;
    while first < bufs.len() {
        let mut iov: Vec<libc::iovec> = bufs[first..bufs.len().min(first + MAX_IOV)]
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        iov[0].iov_base = (iov[0].iov_base as usize + skip) as *mut libc::c_void;
        iov[0].iov_len -= skip;
        // SAFETY: every iovec points into a slice of `bufs`, borrowed for this call and only
        // read by the kernel.
        let n = unsafe {
            libc::pwritev(
                fd,
                iov.as_ptr(),
                iov.len() as libc::c_int,
                at as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "pwritev wrote nothing",
            ));
        }
        let mut n = n as usize;
        at += n as u64;
        while first < bufs.len() && n >= bufs[first].len() - skip {
            n -= bufs[first].len() - skip;
            skip = 0;
            first += 1;
        }
        skip += n;
    }
    Ok(())
}

/// Starts write-out of `len` bytes at `offset` of `file` to the disk, without waiting
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). Advice: errors surface at the next fsync.
pub fn start_writeback(file: &impl AsFd, offset: u64, len: u64) {
    // SAFETY: the call only starts write-out of that byte range of an open descriptor.
    unsafe {
        libc::sync_file_range(
            file.as_fd().as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// A second descriptor on the file `file` is open on, for writing with `O_DIRECT` (past the
/// page cache): opened again through `/proc/self/fd`, so it is the same file whatever its
/// name is now. `EINVAL` where the file system refuses `O_DIRECT` (tmpfs); an error too where
/// `/proc` is not mounted.
pub fn reopen_direct(file: &impl AsFd) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = format!("/proc/self/fd/{}", file.as_fd().as_raw_fd());
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
        .open(path)
}

/// Guarded mappings come in chunks of this many slots, allocated as they are needed.
const GUARD_CHUNK: usize = 1 << 12;
/// Chunks at most: [`MAX_GUARDED_MAPPINGS`] slots in all.
const GUARD_CHUNKS: usize = 1 << 12;
/// Most mappings guarded at once ([`MappingGuard`]): one per input file served.
pub const MAX_GUARDED_MAPPINGS: usize = GUARD_CHUNK * GUARD_CHUNKS;

/// One guarded mapping: `len == 0` is a free slot, `len == usize::MAX` one being filled.
struct GuardSlot {
    start: AtomicUsize,
    len: AtomicUsize,
    damaged: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE_SLOT: GuardSlot = GuardSlot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    damaged: AtomicBool::new(false),
};

/// The slots, chunk by chunk: a chunk is allocated (and never freed) by the first guard that
/// needs it; the signal handler only reads the table, so it never allocates.
static GUARDS: [AtomicPtr<[GuardSlot; GUARD_CHUNK]>; GUARD_CHUNKS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; GUARD_CHUNKS];
/// Where the search for a free slot starts (slots are freed rarely: a mapping lives as long as
/// a session), so taking a slot costs about the same however many are taken.
static GUARD_NEXT: AtomicUsize = AtomicUsize::new(0);
/// Set once any guarded mapping was damaged: one load tells a caller there is nothing to look
/// for.
static ANY_DAMAGED: AtomicBool = AtomicBool::new(false);
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);
static GUARD_INSTALL: Once = Once::new();
/// The SIGBUS action before ours: faults outside guarded mappings go to it.
static PREVIOUS_SIGBUS: OnceLock<libc::sigaction> = OnceLock::new();

/// The chunk of slots `c`, if it is allocated.
fn guard_chunk(c: usize) -> Option<&'static [GuardSlot; GUARD_CHUNK]> {
    // Acquire: pairs with the Release that published the chunk, so its slots are initialized.
    let chunk = GUARDS.get(c)?.load(Ordering::Acquire);
    // SAFETY: a non-null chunk pointer came from a leaked Box and is never freed.
    (!chunk.is_null()).then(|| unsafe { &*chunk })
}

/// Slot `i`, if its chunk is allocated.
fn guard_slot(i: usize) -> Option<&'static GuardSlot> {
    guard_chunk(i / GUARD_CHUNK).map(|c| &c[i % GUARD_CHUNK])
}

/// Slot `i`, allocating its chunk if it is not yet.
fn guard_slot_or_new(i: usize) -> Option<&'static GuardSlot> {
    if let Some(s) = guard_slot(i) {
        return Some(s);
    }
    let cell = GUARDS.get(i / GUARD_CHUNK)?;
    let fresh = Box::into_raw(Box::new([FREE_SLOT; GUARD_CHUNK]));
    // Release: the chunk's slots are initialized before anyone can see the pointer.
    if cell
        .compare_exchange(
            std::ptr::null_mut(),
            fresh,
            Ordering::Release,
            Ordering::Acquire,
        )
        .is_err()
    {
        // SAFETY: `fresh` was never published: it is ours to free.
        drop(unsafe { Box::from_raw(fresh) });
    }
    guard_slot(i)
}

/// A read-only file mapping whose reads cannot kill the process when the file shrinks.
///
/// A read of a page of a shared file mapping past the file's end raises SIGBUS, and its
/// default action kills the process: a server whose input is truncated while it is served
/// (parity, XOR repairs and hashing read the mapping) would die of it. While a guard lives, a
/// SIGBUS inside its range maps a page of zeros over the faulting page (so the read completes,
/// reading zeros) and marks the mapping damaged; whoever reads it checks
/// [`MappingGuard::is_damaged`] before trusting what it read, and stops. A fault anywhere else
/// goes to the handler that was there before (the Rust runtime's, or the default action).
/// The kernel's own copies from a mapping (a send of its pages) fail with EFAULT instead and
/// need no guard.
///
/// The guard must not outlive the mapping's use, nor the mapping the guard: drop the mapping
/// first (it is unmapped before the range is released), then the guard. The zero pages map
/// over the mapping's own range, so unmapping it removes them too.
#[derive(Debug)]
pub struct MappingGuard {
    slot: usize,
}

impl MappingGuard {
    /// Guards the `len` bytes of a read-only mapping at `addr`.
    pub fn new(addr: *const u8, len: usize) -> io::Result<Self> {
        install_sigbus_handler()?;
        if len == 0 || len == usize::MAX {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
        }
        let from = GUARD_NEXT.load(Ordering::Relaxed) % MAX_GUARDED_MAPPINGS;
        for i in (from..MAX_GUARDED_MAPPINGS).chain(0..from) {
            let Some(g) = guard_slot_or_new(i) else {
                break;
            };
            // Acquire/Release on `len`: the slot's `start` and `damaged` are set before its
            // length says the slot is in use, and the handler reads the length first.
            if g.len
                .compare_exchange(0, usize::MAX, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                g.start.store(addr as usize, Ordering::Relaxed);
                g.damaged.store(false, Ordering::Relaxed);
                g.len.store(len, Ordering::Release);
                GUARD_NEXT.store(i + 1, Ordering::Relaxed);
                return Ok(MappingGuard { slot: i });
            }
        }
        Err(io::Error::other(format!(
            "more than {MAX_GUARDED_MAPPINGS} mappings to guard"
        )))
    }

    /// A read of the mapping found a page past the file's end (the file shrank): what was
    /// read there is zeros, not the file's bytes.
    pub fn is_damaged(&self) -> bool {
        // Acquire: pairs with the handler's Release; a caller that sees it true stops.
        guard_slot(self.slot).is_some_and(|g| g.damaged.load(Ordering::Acquire))
    }

    /// Whether any guarded mapping was ever damaged (one load: the common answer is no).
    pub fn any_damaged() -> bool {
        ANY_DAMAGED.load(Ordering::Acquire)
    }
}

impl Drop for MappingGuard {
    fn drop(&mut self) {
        if let Some(g) = guard_slot(self.slot) {
            // Release: the slot is free for a new mapping only after this one is done with.
            g.len.store(0, Ordering::Release);
        }
    }
}

fn install_sigbus_handler() -> io::Result<()> {
    let mut result = Ok(());
    GUARD_INSTALL.call_once(|| {
        // SAFETY: sysconf only reads a system value.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        PAGE_SIZE.store(
            if page > 0 { page as usize } else { 4096 },
            Ordering::Relaxed,
        );
        // SAFETY: a zeroed sigaction is a valid value to fill in; `on_sigbus` has the
        // SA_SIGINFO signature and only makes async-signal-safe calls (mmap, sigaction)
        // besides atomics; `previous` receives the old action before ours can run.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                on_sigbus;
            action.sa_sigaction = handler as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            let mut previous: libc::sigaction = std::mem::zeroed();
            // The old action is kept before ours is installed (a fault between the two calls
            // would find no previous action and take the default one).
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut previous) != 0 {
                result = Err(io::Error::last_os_error());
                return;
            }
            let _ = PREVIOUS_SIGBUS.set(previous);
            if libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) != 0 {
                result = Err(io::Error::last_os_error());
            }
        }
    });
    result
}

/// The guarded slot whose mapping holds `addr`, if any.
fn guarded_at(addr: usize) -> Option<&'static GuardSlot> {
    (0..GUARD_CHUNKS)
        .filter_map(guard_chunk)
        .flat_map(|c| c.iter())
        .find(|g| {
            let len = g.len.load(Ordering::Acquire);
            let start = g.start.load(Ordering::Relaxed);
            len != 0 && len != usize::MAX && addr >= start && addr - start < len
        })
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for a SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    let page = PAGE_SIZE.load(Ordering::Relaxed).max(1);
    if let Some(g) = guarded_at(addr) {
        let at = addr & !(page - 1);
        // SAFETY: the page lies in a mapping the guard's owner keeps mapped while the guard
        // lives (MappingGuard's contract); MAP_FIXED replaces that page only, with private
        // zeros readable as the mapping was.
        let p = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                page,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            // Release: whoever sees the flag sees a mapping that reads zeros there.
            g.damaged.store(true, Ordering::Release);
            ANY_DAMAGED.store(true, Ordering::Release);
            return;
        }
    }
    // Not a guarded mapping: what was there before decides.
    match PREVIOUS_SIGBUS.get() {
        Some(prev) if prev.sa_sigaction != libc::SIG_DFL && prev.sa_sigaction != libc::SIG_IGN => {
            if prev.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous handler was installed with SA_SIGINFO, so it has this
                // signature; it is called as the kernel would have called it.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(prev.sa_sigaction) };
                f(sig, info, ctx);
            } else {
                // SAFETY: a handler without SA_SIGINFO takes the signal number only.
                let f: extern "C" fn(libc::c_int) =
                    unsafe { std::mem::transmute(prev.sa_sigaction) };
                f(sig);
            }
        }
        _ => {
            // The default action: put it back; returning re-runs the faulting access, which
            // faults again and ends the process as if no handler had been there.
            // SAFETY: a zeroed sigaction with SIG_DFL is the default action.
            unsafe {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
    }
}

/// Takes an exclusive advisory lock on `file` (`flock`) without waiting: `Ok(false)` when
/// another open file description holds it. The lock goes with the descriptor: closing it (or
/// the process ending, however it ends) releases it.
pub fn try_lock_exclusive(file: &impl AsFd) -> io::Result<bool> {
    loop {
        // SAFETY: flock on an open descriptor.
        let rc = unsafe { libc::flock(file.as_fd().as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

/// Makes a directory's entries durable (a file created or renamed in it): `fsync` on the
/// directory.
pub fn sync_dir(dir: &std::path::Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The parts of the kernel's `struct tcp_info` (linux/tcp.h) a sample needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpDelivery {
    /// Bytes the peer acknowledged over the connection's life (`tcpi_bytes_acked`).
    pub bytes_acked: u64,
    /// Segments sent and not acknowledged (`tcpi_unacked`).
    pub unacked: u32,
    /// Bytes written and not sent yet (`tcpi_notsent_bytes`).
    pub notsent: u32,
}

/// Offsets in `struct tcp_info` (stable: the kernel only appends fields).
const UNACKED_AT: usize = 24;
const BYTES_ACKED_AT: usize = 120;
const NOTSENT_AT: usize = 144;
const TCP_INFO_LEN: usize = 232;

/// Reads `TCP_INFO` from the TCP socket `stream`; `None` when the kernel is too old to give the fields
/// (before Linux 4.6) or the call fails.
pub fn tcp_delivery(stream: &impl AsFd) -> Option<TcpDelivery> {
    let mut buf = [0u8; TCP_INFO_LEN];
    let mut len = TCP_INFO_LEN as libc::socklen_t;
    // SAFETY: `buf` is a live, writable buffer of `len` bytes for the whole call; the kernel
    // writes at most `len` bytes into it and stores the length it wrote in `len`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 || (len as usize) < NOTSENT_AT + 4 {
        return None;
    }
    let u32_at = |at: usize| u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |at: usize| u64::from_ne_bytes(buf[at..at + 8].try_into().unwrap_or([0; 8]));
    Some(TcpDelivery {
        bytes_acked: u64_at(BYTES_ACKED_AT),
        unacked: u32_at(UNACKED_AT),
        notsent: u32_at(NOTSENT_AT),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn guards_are_not_limited_to_one_chunk() {
        let taken: Vec<MappingGuard> = (0..GUARD_CHUNK + 100)
            .map(|i| MappingGuard::new((0x1000 * (i + 1)) as *const u8, 0x1000).expect("guard"))
            .collect();
        assert!(taken.iter().any(|g| g.slot >= GUARD_CHUNK));
        assert!(taken.iter().all(|g| !g.is_damaged()));
    }

    #[test]
    fn a_guarded_mapping_reads_zeros_past_a_truncation_instead_of_killing_the_process() {
        let dir = std::env::temp_dir().join(format!("bc-guard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("f");
        let page = 4096usize;
        std::fs::write(&path, vec![7u8; 4 * page]).expect("file");
        let f = std::fs::File::open(&path).expect("open");
        // SAFETY: a fresh read-only shared mapping of a 4-page file, unmapped below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4 * page,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let base = base as *const u8;
        let guard = MappingGuard::new(base, 4 * page).expect("guard");
        // SAFETY: in bounds of the live mapping.
        let read = |at: usize| unsafe { std::ptr::read_volatile(base.add(at)) };
        assert_eq!(read(3 * page), 7);
        assert!(!guard.is_damaged());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open for writing")
            .set_len(page as u64)
            .expect("truncate");
        // Page 0 is still the file's; page 3 is past its end now.
        assert_eq!(read(0), 7);
        assert!(!guard.is_damaged());
        assert_eq!(read(3 * page + 5), 0, "a page past the end reads as zeros");
        assert!(guard.is_damaged() && MappingGuard::any_damaged());
        drop(guard);
        // SAFETY: the mapping made above, no longer read.
        unsafe { libc::munmap(base as *mut libc::c_void, 4 * page) };
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn vectored_writes_land_back_to_back_at_the_offset() {
        let dir = std::env::temp_dir().join(format!("bc-os-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("f");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("file");
        preallocate(&f, 16).expect("fallocate on the temp dir");
        let parts: Vec<Vec<u8>> = (0..2000u32).map(|i| vec![(i % 251) as u8; 3]).collect();
        let slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        write_all_vectored_at(&f, 5, &slices).expect("write");
        let mut got = Vec::new();
        std::fs::File::open(&path)
            .expect("open")
            .read_to_end(&mut got)
            .expect("read");
        assert_eq!(got.len(), 5 + 6000);
        assert!(got[..5].iter().all(|&b| b == 0));
        assert_eq!(&got[5..], &parts.concat()[..]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_eventfd_wakes_a_waiter_until_cleared() {
        let e = EventFd::new().expect("eventfd");
        let mut ready = [false];
        wait_readable(&[e.as_raw_fd()], Duration::ZERO, &mut ready);
        assert!(!ready[0]);
        e.poke();
        wait_readable(&[e.as_raw_fd()], Duration::from_secs(5), &mut ready);
        assert!(ready[0]);
        e.clear();
        wait_readable(&[e.as_raw_fd()], Duration::ZERO, &mut ready);
        assert!(!ready[0]);
    }
}
