//! The receive store and the verify thread together, fed by the protocol's own sender in
//! memory (no sockets): blocks assembled in buffers and written past the page cache, blocks
//! on the page-cache path beside them, rebuilt blocks of both, and the file's bytes checked.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use blockcast_proto::wire::{ObjectEntry, UnitPacket};
use blockcast_proto::{
    Destination, Geometry, Receiver, ReceiverConfig, ReceiverEvent, Sender, SenderConfig,
    SliceSource,
};

use super::place::Placer;
use super::store::{FileStore, StoreOptions};
use super::verify::Verifier;
use blockcast_io::RecvBatch;
use std::net::UdpSocket;

const SERVER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7);
const MEMBER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8);

/// 9 units of 1,000 bytes: blocks of 9,000 bytes, never a multiple of 4 KiB, at offsets that
/// are not either.
const GEOMETRY: Geometry = Geometry {
    unit_size: 1000,
    units_per_block: 9,
    max_parity: 9,
};

fn content(len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A fresh directory for one test's output under `base`.
fn scratch(base: &Path, name: &str) -> PathBuf {
    let dir = base.join(format!("bc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// What one in-memory receive did.
struct Received {
    bytes: Vec<u8>,
    /// Blocks assembled in buffers, and in the file.
    attempts: (u64, u64),
    writes_direct: bool,
    /// Units XOR repairs or parity stood in for.
    rebuilt: u64,
    /// Units the receive wrote where they belong, and units read in two pieces.
    in_place: u64,
    parts: u64,
}

/// Sends `data` from a sender to a receiver storing into `out`, dropping the first-pass
/// units `lost` says, with `buffers` bytes of block buffers (without `direct`: as where the
/// file system refuses `O_DIRECT`); the host's part (verify thread, verdicts) as the node
/// does it. With `socket` the datagrams go through a loopback socket ([`Link`]: first-pass
/// units in GRO batches) and are read as the node reads them, each read laid out for the
/// units expected ([`Placer`]), and units 5 and 6 of blocks 10-12 are sent the other way round
/// (where the guess is wrong).
fn receive_in_memory(
    data: &[u8],
    out: &Path,
    buffers: usize,
    direct: bool,
    socket: bool,
    lost: impl Fn(u32, u16) -> bool,
) -> Received {
    let block_size = GEOMETRY.block_size();
    let manifest = blockcast_proto::wire::Manifest {
        unit_size: GEOMETRY.unit_size,
        units_per_block: GEOMETRY.units_per_block,
        objects: vec![ObjectEntry::from_content("object", data, block_size)],
    };
    let scfg = SenderConfig {
        control: SERVER,
        geometry: GEOMETRY,
        min_receivers: 1,
        // Parity for every repair: blocks are rebuilt by decoding.
        originals_factor: 0,
        ..SenderConfig::default()
    };
    let source = SliceSource::new(vec![data], block_size);
    let mut sender =
        Sender::new(scfg, manifest, SliceSource::new(vec![data], block_size)).expect("sender");
    let options = StoreOptions {
        preallocate: true,
        verify_existing: false,
        overwrite: false,
        block_buffer_bytes: buffers,
    };
    let rcfg = ReceiverConfig {
        external_verify: true,
        ..ReceiverConfig::default()
    };
    let mut rx = Receiver::new(rcfg, FileStore::new(out.to_path_buf(), options, None));
    let mut placer = Placer::new(true);
    let mut pair = socket.then(Link::new);
    let mut batch = RecvBatch::new(8, blockcast_io::GRO_BUFFER_SIZE).expect("batch");
    let mut held: Option<Vec<u8>> = None;
    std::thread::scope(|scope| {
        let mut verifier = Verifier::start(scope).expect("verify thread");
        let mut now = Instant::now();
        let mut buf = vec![0u8; 65_536];
        for _ in 0..1_000_000 {
            if sender.poll_timeout().is_some_and(|t| t <= now) {
                sender.handle_timeout(now);
            }
            while let Some(t) = sender.poll_transmit(now, &mut buf) {
                let mut datagram = buf[..t.len].to_vec();
                if let Some(u) = t.payload {
                    datagram.extend_from_slice(u.bytes(&source));
                }
                let first_pass = UnitPacket::new_checked(&datagram[..])
                    .ok()
                    .filter(|p| !p.is_repair() && !p.is_parity());
                if first_pass.is_some_and(|p| lost(p.block().0, p.index())) {
                    continue;
                }
                if !matches!(t.destination, Destination::Group | Destination::Peer(_)) {
                    continue;
                }
                let Some(link) = pair.as_mut() else {
                    rx.handle_datagram(now, SERVER, &datagram);
                    continue;
                };
                // Read before the socket's buffer fills (every 32 datagrams or so).
                if link.sent >= 32 {
                    link.sent = 0;
                    drain(&mut placer, &mut rx, &mut batch, &link.rx, now);
                }
                match first_pass.map(|p| (p.block().0, p.index())) {
                    Some((10..=12, 5)) => held = Some(datagram),
                    Some((10..=12, 6)) => {
                        link.unit(&datagram);
                        if let Some(five) = held.take() {
                            link.unit(&five);
                        }
                    }
                    Some(_) => link.unit(&datagram),
                    None => link.alone(&datagram),
                }
            }
            if let Some(link) = pair.as_mut() {
                link.flush();
                drain(&mut placer, &mut rx, &mut batch, &link.rx, now);
            }
            // As the node does after each batch: the queued units written (no batch staged:
            // from the store's own copies).
            rx.store_mut().flush(None).expect("flush");
            if rx.poll_timeout().is_some_and(|t| t <= now) {
                rx.handle_timeout(now);
            }
            while let Some(t) = rx.poll_transmit(now, &mut buf) {
                sender.handle_datagram(now, MEMBER, &buf[..t.len]);
            }
            while let Some(e) = rx.poll_event() {
                if e == ReceiverEvent::ManifestReady && !direct {
                    rx.store_mut().refuse_direct();
                }
                if let ReceiverEvent::VerifyBlock {
                    object,
                    block,
                    expected,
                    rebuild,
                } = e
                {
                    let len = rx
                        .manifest()
                        .and_then(|m| m.block_len(object, block.0))
                        .expect("a block of the manifest");
                    let at = rx
                        .store_mut()
                        .block_for_verify(object, block, len)
                        .expect("block in the file");
                    assert!(verifier.submit(object, block, at, expected, rebuild));
                }
            }
            while verifier.outstanding() > 0 {
                let v = verifier
                    .wait_verdict(Duration::from_secs(10))
                    .expect("a verdict");
                assert!(v.error.is_none(), "write failed: {:?}", v.error);
                rx.store_mut().attempt_over(v.object, v.block, v.buffer);
                rx.handle_verified(now, v.object, v.block, v.ok);
            }
            if rx.is_complete() {
                break;
            }
            let next = [sender.poll_timeout(), rx.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(now);
            now = next.max(now + Duration::from_micros(50));
        }
        assert!(rx.is_complete(), "the receive did not complete");
        verifier.finish();
    });
    rx.store_mut().sync().expect("sync");
    rx.store_mut().finish_state();
    let path = rx.store().paths()[0].clone();
    Received {
        bytes: std::fs::read(path).expect("the output"),
        attempts: rx.store().attempts(),
        writes_direct: rx.store().writes_direct(),
        rebuilt: rx.stats().xor_units + rx.stats().parity_units,
        in_place: rx.store().in_place,
        parts: placer.parts,
    }
}

/// A loopback link as a server's data thread uses one: first-pass units that follow each
/// other leave in GSO super-datagrams of up to eight, and arrive as GRO batches.
struct Link {
    tx: UdpSocket,
    rx: UdpSocket,
    to: std::net::SocketAddrV4,
    run: Vec<u8>,
    segment: usize,
    /// Datagrams sent since the receiver last read.
    sent: usize,
}

impl Link {
    fn new() -> Self {
        let lo = std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 0);
        let (tx, _) = blockcast_io::bind_data_unicast(lo, 1 << 20).expect("bind");
        let (rx, _) = blockcast_io::bind_data_unicast(lo, 4 << 20).expect("bind");
        rx.set_nonblocking(true).expect("nonblocking");
        let to = match rx.local_addr().expect("address") {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!("bound to IPv4"),
        };
        Link {
            tx,
            rx,
            to,
            run: Vec::new(),
            segment: 0,
            sent: 0,
        }
    }

    /// A first-pass unit: into the current super-datagram if it is as long as those in it.
    fn unit(&mut self, d: &[u8]) {
        if d.len() != self.segment || self.run.len() >= 8 * self.segment {
            self.flush();
            self.segment = d.len();
        }
        self.run.extend_from_slice(d);
    }

    /// Anything else, after what is waiting.
    fn alone(&mut self, d: &[u8]) {
        self.flush();
        blockcast_io::send_segments(&self.tx, self.to, d, None).expect("send");
        self.sent += 1;
    }

    fn flush(&mut self) {
        if !self.run.is_empty() {
            let seg = u16::try_from(self.segment).expect("a datagram's length");
            blockcast_io::send_segments(&self.tx, self.to, &self.run, Some(seg)).expect("send");
            self.sent += self.run.len() / self.segment;
            self.run.clear();
        }
    }
}

/// Reads what `sock` holds as the node reads its data socket: each read laid out for the
/// units expected, the batch handled, its units written before the next read.
fn drain(
    placer: &mut Placer,
    rx: &mut Receiver<FileStore>,
    batch: &mut RecvBatch,
    sock: &UdpSocket,
    now: Instant,
) {
    loop {
        placer.plan(rx, batch);
        if batch.recv(sock, Duration::ZERO).expect("recv") == 0 {
            break;
        }
        rx.store_mut().stage(batch);
        placer.feed(rx, now, batch);
        rx.store_mut().flush(Some(batch)).expect("flush");
    }
}

/// 23 blocks of 9,000 bytes and a short last one of 4,321.
fn sample() -> Vec<u8> {
    content(23 * 9000 + 4321)
}

/// Units lost on the first pass: one in blocks 1 and 2 (held in buffers while they wait for
/// repairs, so a pool of three runs out), two in block 3, one in block 12 (on the file
/// path then) and the last unit of the short last block.
fn lossy(block: u32, unit: u16) -> bool {
    matches!(
        (block, unit),
        (1, 4) | (2, 0) | (3, 2) | (3, 8) | (12, 5) | (23, 4)
    )
}

#[test]
fn blocks_in_buffers_and_in_the_page_cache_land_whole_in_one_receive_rebuilt_ones_too() {
    let data = sample();
    let dir = scratch(&std::env::temp_dir(), "buffered");
    let out = dir.join("copy.bin");
    // Three buffers: blocks 1-3 hold them while they wait for repairs.
    let buf_len = (9000 + 4095usize).next_multiple_of(4096);
    let got = receive_in_memory(&data, &out, 3 * buf_len, true, false, lossy);
    assert!(
        got.bytes == data,
        "the received file differs from the source"
    );
    assert!(
        got.rebuilt >= 5,
        "repairs stood in for {} units",
        got.rebuilt
    );
    // Blocks 0-2 take the three buffers whatever the interleaving (blocks 1 and 2, rebuilt,
    // hold theirs until their repairs), and later ones find the pool empty.
    let (buffered, file) = got.attempts;
    assert!(
        buffered >= 3 && file >= 1,
        "buffered {buffered}, file {file}"
    );
    // Where the disk takes O_DIRECT the middles went that way (this test's temp directory
    // is on such a disk where it runs; a tmpfs one is the fallback's test).
    let tmpfs = is_tmpfs(&dir);
    assert_eq!(
        got.writes_direct, !tmpfs,
        "O_DIRECT used: {}",
        got.writes_direct
    );
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn units_read_into_their_place_and_units_read_into_another_s_land_whole() {
    let data = sample();
    let dir = scratch(&std::env::temp_dir(), "placed");
    let out = dir.join("copy.bin");
    // Two units lost: each repaired later, wherever the guess of that read put it.
    let lost = |b, u| matches!((b, u), (7, 3) | (15, 0));
    let got = receive_in_memory(&data, &out, 64 << 20, true, true, lost);
    assert!(
        got.bytes == data,
        "the received file differs from the source"
    );
    // Every block in a buffer; units read where they belong: all but the first read's
    // (before a GRO batch was seen), the swapped ones, the repairs, and those after a loss
    // in the same read of about 32 units (a loss puts the rest of its read out of step):
    // 92 of 212 here.
    assert!(got.attempts.0 >= 24, "buffered {:?}", got.attempts);
    assert!(
        got.in_place >= 80,
        "{} of {} units read into their place ({} in two pieces)",
        got.in_place,
        data.len().div_ceil(1000),
        got.parts
    );
    // Units 5 and 6 of three blocks came the other way round: read in each other's place,
    // and copied to their own.
    assert!(
        got.parts >= got.in_place + 4,
        "{} units read in two pieces, {} in their place",
        got.parts,
        got.in_place
    );
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn without_buffers_every_block_takes_the_page_cache_path() {
    let data = sample();
    let dir = scratch(&std::env::temp_dir(), "unbuffered");
    let out = dir.join("copy.bin");
    let got = receive_in_memory(&data, &out, 0, true, false, lossy);
    assert!(
        got.bytes == data,
        "the received file differs from the source"
    );
    assert_eq!(got.attempts.0, 0);
    assert!(!got.writes_direct);
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn where_o_direct_is_refused_blocks_in_buffers_go_through_the_page_cache() {
    let data = sample();
    let dir = scratch(&std::env::temp_dir(), "refused");
    let out = dir.join("copy.bin");
    let got = receive_in_memory(&data, &out, 64 << 20, false, false, lossy);
    assert!(
        got.bytes == data,
        "the received file differs from the source"
    );
    assert!(!got.writes_direct);
    assert!(got.attempts.0 >= 24, "buffered {:?}", got.attempts);
    std::fs::remove_dir_all(&dir).expect("clean up");
}

/// tmpfs takes `O_DIRECT` since Linux 6.6 (and refuses it before): either way the blocks
/// land whole.
#[test]
fn on_tmpfs_blocks_in_buffers_land_whole() {
    let shm = Path::new("/dev/shm");
    if !is_tmpfs(shm) {
        assert!(
            std::env::var_os("CI").is_none(),
            "/dev/shm is not a tmpfs here: the tmpfs case is not tested"
        );
        eprintln!("skipped: /dev/shm is not a tmpfs here");
        return;
    }
    let data = sample();
    let dir = scratch(shm, "tmpfs");
    let out = dir.join("copy.bin");
    let got = receive_in_memory(&data, &out, 64 << 20, true, false, lossy);
    assert!(
        got.bytes == data,
        "the received file differs from the source"
    );
    assert!(got.attempts.0 >= 24, "buffered {:?}", got.attempts);
    std::fs::remove_dir_all(&dir).expect("clean up");
}

/// Block `b` (of `block` bytes) of `data` in a buffer, for the verify thread, with the file
/// and the descriptor its middle is to be written through; and its hash.
fn buffered_block(
    data: &[u8],
    b: usize,
    block: usize,
    file: &std::sync::Arc<std::fs::File>,
    direct: &std::sync::Arc<std::fs::File>,
) -> (super::store::BlockAccess, [u8; 32]) {
    use blockcast_io::AlignedBuf;

    use super::store::{BlockAccess, BlockBytes};
    let offset = b * block;
    let head = offset % AlignedBuf::ALIGN;
    let mut buf = AlignedBuf::zeroed(block + AlignedBuf::ALIGN).expect("buffer");
    let bytes = &data[offset..offset + block];
    buf[head..head + block].copy_from_slice(bytes);
    let at = BlockAccess {
        bytes: BlockBytes::Buffered { buf, head },
        len: block,
        file: file.clone(),
        direct: Some(direct.clone()),
        offset: offset as u64,
    };
    (at, *blake3::hash(bytes).as_bytes())
}

/// A file of `len` bytes in a fresh directory, opened to read and write.
fn sized_file(name: &str, len: u64) -> (PathBuf, PathBuf, std::sync::Arc<std::fs::File>) {
    let dir = scratch(&std::env::temp_dir(), name);
    let path = dir.join("copy.bin");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("output");
    file.set_len(len).expect("size");
    (dir, path, std::sync::Arc::new(file))
}

/// A direct write the file system answers with `EINVAL` (here: a descriptor that takes no
/// writes at all, a timerfd, standing in for it) is made again through the page cache, and
/// the blocks after it go that way.
#[test]
fn a_direct_write_refused_with_einval_is_made_through_the_page_cache() {
    use std::os::fd::FromRawFd;

    use blockcast_proto::wire::{BlockIndex, ObjectId};

    let block = 9000usize;
    let (dir, path, file) = sized_file("einval", 3 * block as u64);
    // SAFETY: timerfd_create takes no pointers; the descriptor is checked and then owned.
    let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC) };
    assert!(fd >= 0, "timerfd_create");
    // SAFETY: a fresh descriptor nothing else owns.
    let refusing = std::sync::Arc::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let data = content(3 * block);
    std::thread::scope(|scope| {
        let mut verifier = Verifier::start(scope).expect("verify thread");
        for b in 1..3usize {
            let (at, expected) = buffered_block(&data, b, block, &file, &refusing);
            assert!(verifier.submit(ObjectId(0), BlockIndex(b as u32), at, expected, None));
            let v = verifier
                .wait_verdict(Duration::from_secs(10))
                .expect("a verdict");
            assert!(v.ok && v.error.is_none(), "block {b}: {:?}", v.error);
            assert!(v.buffer.is_some(), "the buffer comes back");
        }
        verifier.finish();
    });
    let got = std::fs::read(&path).expect("the output");
    assert!(got[block..] == data[block..], "the blocks did not land");
    std::fs::remove_dir_all(&dir).expect("clean up");
}

/// A direct write that fails otherwise (here: a descriptor open for reading only) is an
/// error in the block's verdict (the receive stops with it), the buffer back with it.
#[test]
fn a_failed_direct_write_is_an_error_in_the_verdict() {
    use blockcast_proto::wire::{BlockIndex, ObjectId};

    let block = 9000usize;
    let (dir, path, file) = sized_file("write-error", 2 * block as u64);
    let read_only = std::sync::Arc::new(std::fs::File::open(&path).expect("read only"));
    let data = content(2 * block);
    std::thread::scope(|scope| {
        let mut verifier = Verifier::start(scope).expect("verify thread");
        let (at, expected) = buffered_block(&data, 1, block, &file, &read_only);
        assert!(verifier.submit(ObjectId(0), BlockIndex(1), at, expected, None));
        let v = verifier
            .wait_verdict(Duration::from_secs(10))
            .expect("a verdict");
        assert!(!v.ok, "a block that was not written passed");
        assert!(v.error.is_some(), "the write's error was lost");
        assert!(v.buffer.is_some(), "the buffer comes back");
        verifier.finish();
    });
    std::fs::remove_dir_all(&dir).expect("clean up");
}

/// Whether `path` lies on a tmpfs (`statfs`).
fn is_tmpfs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a zeroed statfs is a valid out-parameter; `c` is a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the call writes only into `st`.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type == libc::TMPFS_MAGIC
}
