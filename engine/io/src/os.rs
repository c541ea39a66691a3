//! The node's other system calls, wrapped once so that no layer above engine/io calls libc:
//! waiting for descriptors with a deadline, eventfd wake-ups, a thread's CPU time, and the
//! file calls a receiver's store needs (preallocation, vectored positioned writes, starting
//! write-out of a range).

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

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
