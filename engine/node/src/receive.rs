//! The receiver node: joins the group, stores every object in a preallocated file, verifies
//! each block, and reports to the server's control address.
//!
//! In split mode (no multicast, docs/wire.md §14) it is a member: one unicast socket on its
//! interface carries data and control; it asks the server for the session, and forwards
//! copies of the units it gets as their copy flags and its plan say, straight from the
//! received (GRO super-)datagram with the flags rewritten in place, one GSO send per peer.

use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use blockcast_io::{MulticastReceiver, RecvBatch, GRO_BUFFER_SIZE};
use blockcast_proto::wire::{
    set_copy_flags, BlockIndex, CopyFlags, LeaveReason, Manifest, ObjectId, ReceiverId, UnitIndex,
    UnitPacket,
};
use blockcast_proto::{
    BlockStore, Destination, Rebuild, Receiver, ReceiverConfig, ReceiverEvent, ReceiverStats,
    SplitMember, StoreError,
};
use memmap2::MmapMut;
use std::os::fd::OwnedFd;

use std::net::TcpListener;
use std::sync::mpsc;
use std::sync::Arc;

use crate::play::{self, PlaySummary, PlayTo, StartAt};
use crate::published::{Ask, Published};
use crate::stripe_rx::StripeSockets;
use crate::wait::readable;
use crate::NodeError;

/// How to receive.
#[derive(Clone, Debug)]
pub struct ReceiveConfig {
    /// The multicast group (ignored in split mode).
    pub group: SocketAddrV4,
    pub iface: Ipv4Addr,
    /// Where to store: a directory (objects under their names), or a file path when the
    /// session carries one object and `out` does not name an existing directory.
    pub out: PathBuf,
    /// Give up if no server is heard for this long.
    pub timeout: Duration,
    /// Receive buffer to ask for.
    pub rcvbuf: usize,
    pub id: u64,
    /// Play the verified bytes in order while receiving.
    pub play: Option<PlayTo>,
    /// Where playback starts (a priority request fetches it first).
    pub start_at: Option<StartAt>,
    /// Serve the objects over HTTP on this address while they arrive (and after, until
    /// stopped).
    pub http: Option<SocketAddr>,
    /// Other sources of the same content (standby relays, the server's group), tried in
    /// turn when the current one goes quiet for `failover_after`.
    pub fallback: Vec<SocketAddrV4>,
    pub failover_after: Duration,
    /// Split mode: no multicast; the server's control address and this member's zone.
    pub split: Option<SplitMember>,
    /// Receive threads: a session striped over `S` data threads sends stripe `s` to the
    /// group's port + `s`; `min(S, threads)` threads read those sockets (this one included),
    /// each doing the kernel's copy for its stripes, while the protocol stays on one.
    pub threads: usize,
}

/// Progress, reported a few times per second.
#[derive(Clone, Debug, Default)]
pub struct ReceiveProgress {
    pub objects: Vec<(String, u64)>,
    pub bytes_verified: u64,
    pub total_bytes: u64,
    pub blocks_done: u64,
    pub blocks: u64,
}

/// What a receive run did.
#[derive(Clone, Debug)]
pub struct ReceiveSummary {
    pub files: Vec<PathBuf>,
    pub bytes: u64,
    /// From start until every block was verified (in the page cache).
    pub seconds: f64,
    /// From the first data unit until every block was verified.
    pub transfer_seconds: f64,
    /// Flushing the files to disk at the end (fsync).
    pub sync_seconds: f64,
    /// CPU time of the receiving thread, its verify thread and its stripe readers.
    pub cpu_seconds: f64,
    pub stats: ReceiverStats,
    /// The receive buffer the kernel granted, and whether `net.core.rmem_max` capped it.
    pub rcvbuf: (usize, bool),
    /// What playback did, when playing.
    pub play: Option<PlaySummary>,
    /// Block-completion latency (first unit written -> block verified), microseconds:
    /// p50, p99, p99.9, max.
    pub block_latency_us: [u64; 4],
    /// Split mode: copies forwarded to other members (datagrams).
    pub forwarded: u64,
    /// Datagrams read from the sockets of stripes 1.. of a striped first pass (a GRO
    /// super-datagram counts once).
    pub stripe_datagrams: u64,
}

/// Objects stored in preallocated files: units written with `pwritev` (queued per receive
/// batch), blocks read, rebuilt and hashed through shared mappings of the same files.
struct FileStore {
    out: PathBuf,
    files: Vec<(PathBuf, Option<(File, MmapMut)>)>,
    /// Per object and block, when its first unit was written.
    touched: Vec<Vec<Option<Instant>>>,
    /// Per object, the mapping's base address and length (null and 0 for empty objects).
    /// Blocks are handed out as slices of their own range only, so the receive thread can
    /// write one block while the verify thread reads another.
    bases: Vec<(*mut u8, usize)>,
    block_size: usize,
    /// Unit writes not made yet: (file, offset in it, bytes, length). The bytes lie in the
    /// receive batch's buffer, which holds them until its next `recv`; the receive loop calls
    /// [`FileStore::flush_writes`] after handling each batch, before that.
    pending: Vec<(RawFd, u64, *const u8, usize)>,
    /// The iovecs of one `pwritev`, kept to be reused (no allocation per write).
    iov: Vec<libc::iovec>,
}

impl FileStore {
    /// Makes the queued unit writes: each run of writes that follow each other in one file is
    /// one `pwritev` (a GRO super-datagram of consecutive units is one call). Writing with
    /// `pwritev` rather than through the mapping spares the kernel zeroing each fresh page
    /// before the unit is copied over it (measured: 1 GiB into a fresh file, 0.27 s of CPU
    /// against 0.48-0.72 through a mapping).
    fn flush_writes(&mut self) -> std::io::Result<()> {
        let mut i = 0;
        while i < self.pending.len() {
            let (fd, start, _, _) = self.pending[i];
            let mut end = start;
            let mut j = i;
            while j < self.pending.len()
                && j - i < MAX_IOV
                && self.pending[j].0 == fd
                && self.pending[j].1 == end
            {
                end += self.pending[j].3 as u64;
                j += 1;
            }
            let iov = &mut self.iov;
            iov.clear();
            iov.extend(
                self.pending[i..j]
                    .iter()
                    .map(|&(_, _, ptr, len)| libc::iovec {
                        iov_base: ptr as *mut libc::c_void,
                        iov_len: len,
                    }),
            );
            let mut at = start;
            let mut first = 0;
            while first < iov.len() {
                // SAFETY: every iovec points at bytes of the receive batch's buffer, alive and
                // unchanged until its next `recv`, which comes after this call (see `pending`);
                // `fd` is the open output file, sized (fallocate) to hold [start, end).
                let n = unsafe {
                    libc::pwritev(
                        fd,
                        iov[first..].as_ptr(),
                        (iov.len() - first) as libc::c_int,
                        at as libc::off_t,
                    )
                };
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    self.pending.clear();
                    return Err(e);
                }
                // A short write: skip what was written and go on with the rest.
                let mut n = n as usize;
                at += n as u64;
                while first < iov.len() && n >= iov[first].iov_len {
                    n -= iov[first].iov_len;
                    first += 1;
                }
                if n > 0 {
                    iov[first].iov_base = (iov[first].iov_base as usize + n) as *mut libc::c_void;
                    iov[first].iov_len -= n;
                }
            }
            i = j;
        }
        self.pending.clear();
        Ok(())
    }

    fn path_for(&self, manifest: &Manifest, name: &str) -> PathBuf {
        if manifest.objects.len() == 1 && !self.out.is_dir() {
            self.out.clone()
        } else {
            self.out.join(name)
        }
    }

    fn sync(&mut self) -> Result<(), NodeError> {
        for (path, f) in &self.files {
            if let Some((file, map)) = f {
                let err = |source| NodeError::Output {
                    path: path.clone(),
                    source,
                };
                map.flush().map_err(err)?;
                file.sync_all().map_err(err)?;
            }
        }
        Ok(())
    }
}

fn preallocate(path: &Path, size: u64) -> Result<(File, Option<MmapMut>), std::io::Error> {
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent)?;
        }
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    if size == 0 {
        return Ok((file, None));
    }
    // Reserve every block on disk first, so a write through the mapping can never fault for
    // lack of space (SIGBUS): a full disk is reported here, as an error.
    // SAFETY: fallocate on an open file descriptor with a valid range.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size as libc::off_t) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the file is ours (just created and truncated) and sized; no one else maps it.
    let map = unsafe { MmapMut::map_mut(&file)? };
    Ok((file, Some(map)))
}

impl BlockStore for FileStore {
    fn prepare(&mut self, manifest: &Manifest) -> Result<(), StoreError> {
        self.block_size = manifest.block_size() as usize;
        self.touched = manifest
            .objects
            .iter()
            .map(|o| vec![None; o.block_hashes.len()])
            .collect();
        for o in &manifest.objects {
            let path = self.path_for(manifest, &o.name);
            match preallocate(&path, o.size) {
                Ok((file, map)) => {
                    let mut map = map.unwrap_or_else(|| {
                        // Zero-length objects have no mapping: an anonymous empty one stands in.
                        MmapMut::map_anon(1).expect("one anonymous page")
                    });
                    let base = if o.size == 0 {
                        (std::ptr::null_mut(), 0)
                    } else {
                        (map.as_mut_ptr(), map.len())
                    };
                    self.bases.push(base);
                    self.files.push((path, Some((file, map))));
                }
                Err(e) => {
                    return Err(StoreError(format!("cannot create {}: {e}", path.display())));
                }
            }
        }
        Ok(())
    }

    fn block_mut(&mut self, object: ObjectId, block: BlockIndex, len: usize) -> &mut [u8] {
        let start = block.0 as usize * self.block_size;
        let (base, map_len) = self.bases[object.0 as usize];
        assert!(start + len <= map_len, "block outside its object");
        let touched = &mut self.touched[object.0 as usize][block.0 as usize];
        if touched.is_none() {
            // Fault the block's pages in with one call instead of one fault per page (the
            // kernel zeroes them either way). Advice only: on failure pages fault one by one.
            *touched = Some(Instant::now());
            if let Some((_, map)) = &self.files[object.0 as usize].1 {
                let _ = map.advise_range(memmap2::Advice::PopulateWrite, start, len);
            }
        }
        // SAFETY: [start, start+len) lies inside the live mapping (checked above; the mapping
        // is owned by `self.files` and unmapped only when the store is dropped, after the
        // verify thread has been joined). The slice covers this block only: the protocol core
        // writes a block only while it is not being verified, and the verify thread reads only
        // a block the core has handed out (`VerifyBlock`) and does not write until answered.
        unsafe { std::slice::from_raw_parts_mut(base.add(start), len) }
    }

    fn write_unit(
        &mut self,
        object: ObjectId,
        block: BlockIndex,
        len: usize,
        offset: usize,
        bytes: &[u8],
    ) {
        let start = block.0 as usize * self.block_size;
        let (_, map_len) = self.bases[object.0 as usize];
        assert!(
            offset + bytes.len() <= len && start + len <= map_len,
            "unit outside its block"
        );
        let touched = &mut self.touched[object.0 as usize][block.0 as usize];
        if touched.is_none() {
            *touched = Some(Instant::now());
        }
        let Some((file, _)) = &self.files[object.0 as usize].1 else {
            return;
        };
        self.pending.push((
            file.as_raw_fd(),
            (start + offset) as u64,
            bytes.as_ptr(),
            bytes.len(),
        ));
    }
}

/// Writes the units the protocol core queued ([`FileStore::flush_writes`]).
fn flush_writes(rx: &mut Receiver<FileStore>, out: &Path) -> Result<(), NodeError> {
    rx.store_mut()
        .flush_writes()
        .map_err(|source| NodeError::Output {
            path: out.to_path_buf(),
            source,
        })
}

/// Most iovecs one `pwritev` takes (`IOV_MAX`).
const MAX_IOV: usize = 1024;

impl FileStore {
    /// The output file's descriptor and block `block`'s offset in it, for write-out.
    fn writeback(&self, object: ObjectId, block: BlockIndex) -> Option<(RawFd, u64)> {
        let (_, f) = self.files.get(object.0 as usize)?;
        let (file, _) = f.as_ref()?;
        Some((file.as_raw_fd(), block.0 as u64 * self.block_size as u64))
    }

    /// Where block `block` of `object` lies, for the verify thread.
    fn block_ptr(
        &self,
        object: ObjectId,
        block: BlockIndex,
        len: usize,
    ) -> Option<(*mut u8, usize)> {
        let start = block.0 as usize * self.block_size;
        let (base, map_len) = *self.bases.get(object.0 as usize)?;
        // SAFETY: in bounds of the mapping, checked first.
        (start + len <= map_len && len > 0).then(|| (unsafe { base.add(start) }, len))
    }
}

/// A block to rebuild (when parity stands in for some units) and hash on the verify thread.
struct VerifyJob {
    object: ObjectId,
    block: BlockIndex,
    ptr: *mut u8,
    len: usize,
    expected: [u8; 32],
    rebuild: Option<Rebuild>,
    /// The file and the block's offset in it: once verified, its pages are handed to the disk
    /// at once (`sync_file_range`, write-out started, not waited for), so the `fsync` at the end
    /// finds little left to write.
    writeback: Option<(RawFd, u64)>,
}

// SAFETY: the pointer is into a file mapping that outlives the verify thread (joined before
// the store is dropped), and the block it covers is neither read nor written by the receive
// thread until the job is answered.
unsafe impl Send for VerifyJob {}

impl VerifyJob {
    fn run(&self) -> bool {
        // SAFETY: see `unsafe impl Send for VerifyJob`: valid for reads and writes of `len`
        // bytes, and this job is the only user of them while it is outstanding.
        let bytes = unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) };
        if self.rebuild.as_ref().is_some_and(|r| !r.apply(bytes)) {
            return false;
        }
        let ok = blake3::hash(bytes).as_bytes() == &self.expected;
        if let (true, Some((fd, offset))) = (ok, self.writeback) {
            // SAFETY: `fd` is the open output file (closed only after this thread is joined);
            // the call only starts write-out of that byte range. Advice: errors are ignored
            // (the final fsync reports them).
            unsafe {
                libc::sync_file_range(
                    fd,
                    offset as libc::off64_t,
                    self.len as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
        ok
    }
}

/// Receives one session into `cfg.out`. Returns when every object is whole and verified (and
/// played, when playing; with `http`, once `stop` is set after that).
pub fn receive(
    cfg: &ReceiveConfig,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&ReceiveProgress),
) -> Result<ReceiveSummary, NodeError> {
    receive_shared(cfg, stop, progress, Arc::new(Published::default()))
}

/// [`receive`], publishing what is verified to `published` (a relay sends from it).
pub(crate) fn receive_shared(
    cfg: &ReceiveConfig,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&ReceiveProgress),
    published: Arc<Published>,
) -> Result<ReceiveSummary, NodeError> {
    let (ask_tx, ask_rx) = mpsc::channel::<Ask>();
    let listener = match cfg.http {
        Some(addr) => {
            Some(TcpListener::bind(addr).map_err(|source| NodeError::Listen { addr, source })?)
        }
        None => None,
    };
    let started = Instant::now();
    let side_stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let player = cfg.play.clone().map(|to| {
            let (p, a, start) = (published.clone(), ask_tx.clone(), cfg.start_at);
            let wait = cfg.timeout;
            std::thread::Builder::new()
                .name("bc-play".into())
                .spawn_scoped(scope, move || play::run(to, start, p, a, started, wait))
        });
        let http = listener.map(|l| {
            let (p, a) = (published.clone(), ask_tx.clone());
            let side_stop = &side_stop;
            std::thread::Builder::new()
                .name("bc-http-accept".into())
                .spawn_scoped(scope, move || {
                    crate::http::serve_http(l, p, a, crate::http::HttpConfig::default(), side_stop)
                })
        });
        let result = receive_loop(cfg, stop, progress, &published, &ask_rx);
        published.end();
        // Playback drains what was verified, at the player's pace.
        let play = match player {
            Some(Ok(h)) => match h.join() {
                Ok(Ok(s)) => Some(s),
                Ok(Err(e)) => {
                    tracing::warn!("playback stopped: {e}");
                    None
                }
                Err(_) => None,
            },
            Some(Err(e)) => {
                tracing::warn!("cannot start playback: {e}");
                None
            }
            None => None,
        };
        if let Some(Ok(h)) = http {
            if result.is_ok() {
                // Complete: keep serving until asked to stop.
                tracing::info!("transfer complete; still serving HTTP until stopped");
                while !stop.load(Ordering::Relaxed) {
                    std::thread::park_timeout(Duration::from_millis(100));
                }
            }
            side_stop.store(true, Ordering::Relaxed);
            let _ = h.join();
        }
        result.map(|mut s| {
            s.play = play;
            s
        })
    })
}

fn receive_loop(
    cfg: &ReceiveConfig,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&ReceiveProgress),
    published: &Published,
    asks: &mpsc::Receiver<Ask>,
) -> Result<ReceiveSummary, NodeError> {
    let sources: Vec<SocketAddrV4> = std::iter::once(cfg.group)
        .chain(cfg.fallback.iter().copied())
        .collect();
    let mut source = 0usize;
    // Split mode: one unicast socket for data and control (`control` is a second handle to
    // it, for the sends); otherwise the group's socket and a control socket.
    let (mut data, control, granted): (OwnedFd, std::net::UdpSocket, _) = match cfg.split {
        Some(_) => {
            let (sock, granted) =
                blockcast_io::bind_data_unicast(SocketAddrV4::new(cfg.iface, 0), cfg.rcvbuf)?;
            let control = sock
                .try_clone()
                .map_err(|e| NodeError::Config(format!("member socket: {e}")))?;
            (sock.into(), control, granted)
        }
        None => {
            let data = MulticastReceiver::new(cfg.group, cfg.iface, cfg.rcvbuf, true)?;
            let granted = data.recv_buffer();
            let control = blockcast_io::bind_unicast(SocketAddr::from((cfg.iface, 0)), true)?;
            (data.into(), control, granted)
        }
    };
    if granted.capped_by_sysctl {
        tracing::warn!(
            "the kernel capped the receive buffer at {} bytes (asked for {}): raise net.core.rmem_max (sysctl -w net.core.rmem_max=67108864), or bursts will be lost and repaired",
            granted.effective,
            granted.requested
        );
    }
    let store = FileStore {
        out: cfg.out.clone(),
        files: Vec::new(),
        touched: Vec::new(),
        bases: Vec::new(),
        block_size: 0,
        pending: Vec::new(),
        iov: Vec::with_capacity(MAX_IOV),
    };
    let rcfg = ReceiverConfig {
        id: ReceiverId(cfg.id),
        seed: cfg.id,
        idle_timeout: cfg.timeout,
        min_receipt_interval: Duration::from_millis(50),
        external_verify: true,
        split: cfg.split,
        ..ReceiverConfig::default()
    };
    let mut rx = Receiver::new(rcfg, store);
    let mut batch = RecvBatch::new(8, GRO_BUFFER_SIZE)?;
    let mut cbatch = RecvBatch::new(8, 2048)?;
    let mut out = vec![0u8; 2048];
    let started = Instant::now();
    let cpu_start = crate::thread_cpu_seconds();
    let mut heard = false;
    let mut next_progress = started;
    let mut complete_at: Option<Instant> = None;
    let mut first_unit: Option<Instant> = None;
    let mut asked: std::collections::HashMap<(u32, u32), Instant> =
        std::collections::HashMap::new();
    let mut fds = vec![data.as_raw_fd(), control.as_raw_fd()];
    let mut last_packet = started;
    // The current source ended the session before we were complete (fail over, if we can).
    let mut source_ended = false;
    let mut verifying = 0usize;
    let mut forwarded = 0u64;
    let mut targets: Vec<SocketAddrV4> = Vec::new();
    let mut server_gone = false;
    // Microseconds, 1 us .. 1 h, 3 significant digits.
    let mut latency = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
        .map_err(|e| NodeError::Config(format!("histogram: {e}")))?;
    // CPU of the helper threads (verify, stripe readers), added to this thread's.
    let mut helper_cpu = 0.0;
    let mut stripe_datagrams = 0u64;
    std::thread::scope(|scope| -> Result<(), NodeError> {
        // Sockets (and threads) for stripes 1.. of a striped first pass, once announced.
        let mut stripes: Option<StripeSockets<'_>> = None;
        // Blocks are hashed on their own thread (another core, where there is one), so the
        // receive thread only places units.
        let (job_tx, job_rx) = mpsc::channel::<VerifyJob>();
        let (res_tx, res_rx) = mpsc::channel::<(ObjectId, BlockIndex, bool)>();
        let worker = std::thread::Builder::new()
            .name("bc-verify".into())
            .spawn_scoped(scope, move || {
                for job in job_rx {
                    if res_tx.send((job.object, job.block, job.run())).is_err() {
                        break;
                    }
                }
                crate::thread_cpu_seconds()
            })
            .map_err(|e| NodeError::Config(format!("cannot start the verify thread: {e}")))?;
        let result = (|| -> Result<(), NodeError> {
            loop {
                let now = Instant::now();
                if stop.load(Ordering::Relaxed) {
                    rx.leave(LeaveReason::Stopped);
                    flush(&mut rx, &control, now, &mut out);
                    return Err(NodeError::Interrupted);
                }
                let wake = rx
                    .poll_timeout()
                    .unwrap_or(now + Duration::from_millis(100));
                // While blocks are out for hashing, come back soon for the answers.
                let cap = if verifying > 0 {
                    Duration::from_millis(1)
                } else {
                    Duration::from_millis(100)
                };
                let wait = wake.saturating_duration_since(now).min(cap);
                let ready = readable(&fds, wait);
                let now = Instant::now();
                if ready[0] || ready[1] {
                    last_packet = now;
                }
                let quiet = !(ready[0] || ready[1])
                    && now.duration_since(last_packet) >= cfg.failover_after;
                if sources.len() > 1
                    && cfg.split.is_none()
                    && heard
                    && !rx.is_complete()
                    && (quiet || source_ended)
                {
                    // The source went quiet or gave up (a relay whose upstream failed): fail
                    // over to the next one, keeping every block.
                    source = (source + 1) % sources.len();
                    source_ended = false;
                    tracing::warn!(
                        "{}: failing over to {}",
                        if quiet {
                            format!("no packet for {:.1} s", cfg.failover_after.as_secs_f64())
                        } else {
                            "the source ended the session".to_string()
                        },
                        sources[source]
                    );
                    data = MulticastReceiver::new(sources[source], cfg.iface, cfg.rcvbuf, true)?
                        .into();
                    if let Some(s) = stripes.take() {
                        let (cpu, n) = s.shutdown();
                        helper_cpu += cpu;
                        stripe_datagrams += n;
                    }
                    fds.truncate(2);
                    fds[0] = data.as_raw_fd();
                    // A new socket counts its drops from 0.
                    batch = RecvBatch::new(8, GRO_BUFFER_SIZE)?;
                    rx.switch_source(now);
                    last_packet = now;
                    continue;
                }
                // Stripes 1.. (their readers' batches, or sockets this thread reads itself).
                let striped = match stripes.as_mut() {
                    Some(st) => {
                        let got = st.drain(&ready[2..], &mut |b| {
                            handle_batch(&mut rx, b, now);
                            flush_writes(&mut rx, &cfg.out)
                        })?;
                        rx.note_queue(st.take_queue_ppm());
                        got
                    }
                    None => false,
                };
                if striped {
                    last_packet = now;
                }
                if (ready[0] || striped) && first_unit.is_none() && rx.manifest().is_some() {
                    first_unit = Some(now);
                }
                if ready[0] {
                    // How far behind this receiver is, for the server's rate (one getsockopt
                    // per turn, not per datagram).
                    if let Some(q) = blockcast_io::receive_queue_ppm(&data) {
                        rx.note_queue(q);
                    }
                    // Drain what is queued, a bounded number of batches per turn.
                    for _ in 0..64 {
                        if batch.recv(&data, Duration::ZERO)? == 0 {
                            break;
                        }
                        if cfg.split.is_some() {
                            forwarded += forward_and_handle(
                                &mut rx,
                                &mut batch,
                                &control,
                                &mut targets,
                                now,
                            );
                        } else {
                            handle_batch(&mut rx, &batch, now);
                        }
                        // The units were queued for writing from the batch's buffer: write
                        // them before the next `recv` reuses it.
                        flush_writes(&mut rx, &cfg.out)?;
                    }
                }
                if ready[0] || striped {
                    // What every data socket received and dropped (for the loss reports).
                    let (more, more_drops) = stripes.as_ref().map_or((0, 0), |s| s.socket_totals());
                    rx.note_socket(
                        batch.received() + more,
                        batch.socket_drops().unwrap_or(0).wrapping_add(more_drops),
                    );
                }
                // Split mode: control packets arrive on the data socket (read above).
                if ready[1] && cfg.split.is_none() {
                    while cbatch.recv(&control, Duration::ZERO)? > 0 {
                        for d in cbatch.iter() {
                            rx.handle_datagram(now, SocketAddr::V4(d.source), d.bytes);
                        }
                        // Control packets carry no units, but a stray one would be queued
                        // from this buffer like any other.
                        flush_writes(&mut rx, &cfg.out)?;
                    }
                }
                // A striped session: open its other stripes' sockets before this turn's
                // packets go out (the join among them), so the first pass finds them joined.
                if stripes.is_none() && cfg.split.is_none() {
                    if let Some(n) = rx.announced_stripes().filter(|&n| n > 1) {
                        let st = StripeSockets::open(
                            scope,
                            sources[source],
                            cfg.iface,
                            cfg.rcvbuf,
                            n,
                            cfg.threads,
                        )?;
                        fds.truncate(2);
                        fds.extend(st.fds());
                        stripes = Some(st);
                    }
                }
                while let Ok((object, block, ok)) = res_rx.try_recv() {
                    verifying -= 1;
                    rx.handle_verified(now, object, block, ok);
                }
                if rx.poll_timeout().is_some_and(|t| t <= now) {
                    rx.handle_timeout(now);
                }
                flush(&mut rx, &control, now, &mut out);
                // Priority asks from the player and the HTTP endpoint (merged: one per block per
                // 200 ms).
                while let Ok(a) = asks.try_recv() {
                    let key = (a.object, a.block);
                    if asked
                        .get(&key)
                        .is_none_or(|t| now.duration_since(*t) > Duration::from_millis(200))
                    {
                        asked.insert(key, now);
                        rx.request_priority(
                            ObjectId(a.object),
                            BlockIndex(a.block),
                            UnitIndex(0),
                            a.count,
                        );
                    }
                }
                let mut published_any = false;
                while let Some(e) = rx.poll_event() {
                    match e {
                        ReceiverEvent::ManifestReady => {
                            if let Some(m) = rx.manifest() {
                                let paths =
                                    rx.store().files.iter().map(|(p, _)| p.clone()).collect();
                                published.publish_manifest(m, paths);
                            }
                        }
                        ReceiverEvent::VerifyBlock {
                            object,
                            block,
                            expected,
                            rebuild,
                        } => {
                            let len = rx
                                .manifest()
                                .and_then(|m| m.block_len(object, block.0))
                                .unwrap_or(0);
                            match rx.store().block_ptr(object, block, len) {
                                Some((ptr, len)) => {
                                    let job = VerifyJob {
                                        object,
                                        block,
                                        ptr,
                                        len,
                                        expected,
                                        rebuild,
                                        writeback: rx.store().writeback(object, block),
                                    };
                                    if job_tx.send(job).is_ok() {
                                        verifying += 1;
                                    }
                                }
                                None => rx.handle_verified(now, object, block, false),
                            }
                        }
                        ReceiverEvent::BlockVerified { object, block } => {
                            // Block-completion latency: its first unit written -> verified.
                            if let Some(Some(t)) = rx
                                .store()
                                .touched
                                .get(object.0 as usize)
                                .and_then(|o| o.get(block.0 as usize))
                            {
                                let us = now.saturating_duration_since(*t).as_micros() as u64;
                                let _ = latency.record(us.max(1));
                            }
                            published.publish_block(object.0, block.0);
                            published_any = true;
                        }
                        ReceiverEvent::Announced { session, control } => {
                            heard = true;
                            published.publish_session(session.0, control);
                        }
                        ReceiverEvent::Complete => complete_at = Some(now),
                        ReceiverEvent::ServerLost if rx.is_complete() => server_gone = true,
                        ReceiverEvent::ServerLost => {
                            return Err(NodeError::Incomplete {
                                blocks_done: rx.blocks_done(),
                                blocks: rx.total_blocks(),
                                why: "the server went quiet",
                            })
                        }
                        ReceiverEvent::SessionEnded {
                            complete: false, ..
                        } if sources.len() > 1 && cfg.split.is_none() => source_ended = true,
                        ReceiverEvent::SessionEnded {
                            complete: false, ..
                        } => {
                            return Err(NodeError::Incomplete {
                                blocks_done: rx.blocks_done(),
                                blocks: rx.total_blocks(),
                                why: "the server ended the session",
                            })
                        }
                        ReceiverEvent::StoreFailed(e) => {
                            return Err(NodeError::Output {
                                path: cfg.out.clone(),
                                source: std::io::Error::other(e.0),
                            })
                        }
                        _ => {}
                    }
                }
                if published_any {
                    published.notify();
                }
                if !heard && now.duration_since(started) >= cfg.timeout {
                    return Err(NodeError::NoServer {
                        waited_secs: cfg.timeout.as_secs_f64(),
                    });
                }
                if now >= next_progress || complete_at.is_some() {
                    progress(&report(&rx));
                    next_progress = now + Duration::from_millis(200);
                }
                // Done: complete, and the server has recorded it (or has ended the session, or a
                // short grace period for its acknowledgement has passed).
                if complete_at.is_some() && cfg.split.is_some() {
                    // Split mode: others may still need the copies this member forwards, so it
                    // stays until the server ends the session (or falls silent).
                    if rx.is_ended() || server_gone {
                        break;
                    }
                } else if let Some(at) = complete_at {
                    if rx.poll_timeout().is_none()
                        || rx.is_ended()
                        || now.duration_since(at) > Duration::from_secs(2)
                    {
                        break;
                    }
                }
            }
            Ok(())
        })();
        drop(job_tx);
        if let Some(s) = stripes.take() {
            let (cpu, n) = s.shutdown();
            helper_cpu += cpu;
            stripe_datagrams += n;
        }
        helper_cpu += worker.join().unwrap_or(0.0);
        result
    })?;
    let done = complete_at.unwrap_or_else(Instant::now);
    let seconds = done.duration_since(started).as_secs_f64();
    let transfer_seconds =
        first_unit.map_or(0.0, |f| done.saturating_duration_since(f).as_secs_f64());
    let bytes = rx.manifest().map_or(0, |m| m.total_bytes());
    let sync_start = Instant::now();
    rx.store_mut().sync()?;
    let sync_seconds = sync_start.elapsed().as_secs_f64();
    let files = rx.store().files.iter().map(|(p, _)| p.clone()).collect();
    Ok(ReceiveSummary {
        files,
        bytes,
        seconds,
        transfer_seconds,
        sync_seconds,
        cpu_seconds: crate::thread_cpu_seconds() - cpu_start + helper_cpu,
        stats: rx.stats().clone(),
        rcvbuf: (granted.effective, granted.capped_by_sysctl),
        play: None,
        block_latency_us: [
            latency.value_at_quantile(0.5),
            latency.value_at_quantile(0.99),
            latency.value_at_quantile(0.999),
            latency.max(),
        ],
        forwarded,
        stripe_datagrams,
    })
}

/// Hands every unit of a received batch to the protocol (multicast mode).
fn handle_batch(rx: &mut Receiver<FileStore>, batch: &RecvBatch, now: Instant) {
    for d in batch.iter() {
        if d.truncated {
            continue;
        }
        for seg in d.segments() {
            rx.handle_datagram(now, SocketAddr::V4(d.source), seg);
        }
    }
}

/// Split mode: forwards copies of the units of the last batch as their copy flags and the
/// member's plan say, then hands every datagram to the protocol. A GRO super-datagram whose
/// segments all carry the same flags goes to each peer whole (one GSO send per peer), its
/// flags rewritten in place; otherwise segment by segment. Returns the datagrams forwarded.
fn forward_and_handle(
    rx: &mut Receiver<FileStore>,
    batch: &mut RecvBatch,
    socket: &std::net::UdpSocket,
    targets: &mut Vec<SocketAddrV4>,
    now: Instant,
) -> u64 {
    let mut sent = 0u64;
    for i in 0..batch.len() {
        let Some(d) = batch.get(i) else { continue };
        if d.truncated {
            continue;
        }
        let (source, seg) = (d.source, d.segment_size);
        let Some(bytes) = batch.bytes_mut(i) else {
            continue;
        };
        let size = match seg {
            Some(s) if s > 0 => usize::from(s),
            _ => bytes.len().max(1),
        };
        // The copy flags of every segment, if they are all the same and the segments are
        // units of this session (nothing else is forwarded).
        let session = rx.session();
        let mut common: Option<CopyFlags> = None;
        let mut uniform = true;
        for s in bytes.chunks(size) {
            match UnitPacket::new_checked(s) {
                Ok(u) if Some(u.session()) == session => {
                    let c = u.copy_flags();
                    if common.is_some_and(|x| x != c) {
                        uniform = false;
                    }
                    common = Some(c);
                }
                _ => uniform = false,
            }
        }
        if uniform {
            if let Some(copy) = common.filter(|c| c.any()) {
                sent += forward(rx, bytes, size, seg, copy, socket, targets);
            }
        } else {
            for s in bytes.chunks_mut(size) {
                let copy = match UnitPacket::new_checked(&*s) {
                    Ok(u) if Some(u.session()) == session => u.copy_flags(),
                    _ => continue,
                };
                if copy.any() {
                    let len = s.len();
                    sent += forward(rx, s, len, None, copy, socket, targets);
                }
            }
        }
        for s in bytes.chunks(size) {
            rx.handle_datagram(now, SocketAddr::V4(source), s);
        }
    }
    sent
}

/// Sends `bytes` (segments of `size` bytes, all units with copy flags `copy`) to the peers
/// the plan names: with no flags to the cell, with both to the next cell's member.
fn forward(
    rx: &Receiver<FileStore>,
    bytes: &mut [u8],
    size: usize,
    seg: Option<u16>,
    copy: CopyFlags,
    socket: &std::net::UdpSocket,
    targets: &mut Vec<SocketAddrV4>,
) -> u64 {
    let t = rx.copy_targets(copy);
    targets.clear();
    targets.extend(t.zone.iter().filter_map(|a| match a {
        SocketAddr::V4(v4) => Some(*v4),
        SocketAddr::V6(_) => None,
    }));
    let next = match t.next {
        Some(SocketAddr::V4(v4)) => Some(v4),
        _ => None,
    };
    let segments = bytes.len().div_ceil(size) as u64;
    let mut sent = 0;
    let rewrite = |bytes: &mut [u8], flags: CopyFlags| {
        for s in bytes.chunks_mut(size) {
            let _ = set_copy_flags(s, flags);
        }
    };
    if !targets.is_empty() {
        rewrite(bytes, CopyFlags::NONE);
        for to in targets.iter() {
            // A full send buffer drops the copy: the protocol treats it as loss.
            if blockcast_io::send_segments(socket, *to, bytes, seg).is_ok() {
                sent += segments;
            }
        }
    }
    if let Some(to) = next {
        rewrite(bytes, CopyFlags::ALL);
        if blockcast_io::send_segments(socket, to, bytes, seg).is_ok() {
            sent += segments;
        }
    }
    sent
}

fn flush(
    rx: &mut Receiver<FileStore>,
    control: &std::net::UdpSocket,
    now: Instant,
    out: &mut [u8],
) {
    while let Some(t) = rx.poll_transmit(now, out) {
        if let Destination::Peer(addr) = t.destination {
            // A dropped control packet is like a lost one: the protocol repeats what matters.
            let _ = control.send_to(&out[..t.len], addr);
        }
    }
}

fn report(rx: &Receiver<FileStore>) -> ReceiveProgress {
    let Some(m) = rx.manifest() else {
        return ReceiveProgress::default();
    };
    let mut objects = Vec::with_capacity(m.objects.len());
    let mut verified = 0u64;
    for (i, o) in m.objects.iter().enumerate() {
        let mut v = 0u64;
        for b in 0..o.block_hashes.len() as u32 {
            if rx.is_verified(ObjectId(i as u32), BlockIndex(b)) {
                v += m.block_len(ObjectId(i as u32), b).unwrap_or(0) as u64;
            }
        }
        verified += v;
        objects.push((o.name.clone(), v));
    }
    ReceiveProgress {
        objects,
        bytes_verified: verified,
        total_bytes: m.total_bytes(),
        blocks_done: rx.blocks_done(),
        blocks: rx.total_blocks(),
    }
}
