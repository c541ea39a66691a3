//! The receiver node: joins the group, stores every object in a preallocated file, verifies
//! each block, and reports to the server's control address.
//!
//! In split mode (no multicast, docs/wire.md §14) it is a member: one unicast socket on its
//! interface carries data and control; it asks the server for the session, and forwards
//! copies of the units it gets as their copy flags and its plan say, straight from the
//! received (GRO super-)datagram with the flags rewritten in place, one GSO send per peer.

mod buffers;
mod host;
mod place;
mod split;
mod state;
mod store;
#[cfg(test)]
mod tests;
mod verify;

use std::net::{SocketAddr, SocketAddrV4, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use std::net::Ipv4Addr;

use blockcast_io::{MulticastReceiver, RecvBatch, GRO_BUFFER_SIZE};
use blockcast_proto::wire::{BlockIndex, LeaveReason, ObjectId, ReceiverId};
use blockcast_proto::{Receiver, ReceiverConfig, ReceiverStats, SplitMember};
use blockcast_seal::{OpenStats, Secret};

use crate::driver::{self, Input, Io, Out, Sends};
use crate::play::{self, PlaySummary, PlayTo, StartAt};
use crate::published::{Ask, Published};
use crate::NodeError;
pub use buffers::DEFAULT_BLOCK_BUFFER_BYTES;
use host::ReceiveHost;
use state::StateLock;
pub use state::{fuzz_state_file, is_own_partial};
use store::{FileStore, StoreOptions};
use verify::Verifier;

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
    /// Accept only sessions signed by one of these keys (docs/wire.md §15); empty: any
    /// session, unauthenticated.
    pub trust: Vec<[u8; 32]>,
    /// Pin the content without keys: the manifest hash, or a one-object session's BLAKE3.
    pub expect: Option<[u8; 32]>,
    /// A closed group: take only datagrams sealed with this secret, and seal what is sent
    /// (docs/wire.md §16).
    pub secret: Option<Secret>,
    /// Reserve each file's space before writing (`fallocate`), so a full disk shows at the
    /// start; without it files are sparse and a disk that fills stops the transfer midway
    /// (exit with the state kept; a later receive resumes).
    pub preallocate: bool,
    /// Hash the blocks a state file says are verified (an earlier run into the same `out`)
    /// instead of trusting it.
    pub verify_existing: bool,
    /// The datapath for the session's data: sockets, AF_XDP, or AF_XDP where it works.
    pub datapath: crate::Datapath,
    /// Write over files under `out` that are not partial files of an earlier receive (no
    /// state file of ours names them); without it such a file stops the receive
    /// ([`NodeError::OutputExists`]) and is kept.
    pub overwrite: bool,
    /// Bytes of block buffers at most: blocks are assembled in them, hashed there and
    /// written past the page cache ([`DEFAULT_BLOCK_BUFFER_BYTES`]); 0: every block is
    /// written through the page cache.
    pub block_buffers: usize,
}

/// What the receiver knows of the session's authenticity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionTrust {
    /// BLAKE3 of the manifest (what `--expect` pins).
    pub manifest_hash: [u8; 32],
    /// The trusted key the session statement is signed with; `None`: unauthenticated.
    pub signer: Option<[u8; 32]>,
    /// Its announces and its Done are signed by a trusted key too (not behind a relay
    /// without a key).
    pub control_signed: bool,
}

/// Progress, reported a few times per second.
#[derive(Clone, Debug, Default)]
pub struct ReceiveProgress {
    pub objects: Vec<(String, u64)>,
    pub bytes_verified: u64,
    pub total_bytes: u64,
    pub blocks_done: u64,
    pub blocks: u64,
    /// Once the manifest is known: the session's authenticity.
    pub session: Option<SessionTrust>,
    /// The protocol core's counters (for metrics).
    pub stats: Option<ReceiverStats>,
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
    /// When the first data unit was kept (the manifest known), if any came.
    pub first_unit_at: Option<Instant>,
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
    /// Split mode: copies the kernel refused (a full send buffer), datagrams.
    pub forward_dropped: u64,
    /// Datagrams read from the sockets of stripes 1.. of a striped first pass (a GRO
    /// super-datagram counts once).
    pub stripe_datagrams: u64,
    /// The session's authenticity.
    pub session: Option<SessionTrust>,
    /// A closed group: what the receive thread opened and dropped (datagrams without the
    /// secret, forged, replayed).
    pub sealed: Option<OpenStats>,
    /// The datapath the data came through: `socket` or `xdp`.
    pub datapath: &'static str,
    /// Frames received through AF_XDP (0 on the socket path).
    pub xdp_frames: u64,
    /// Attempts at blocks assembled in block buffers (written past the page cache), and
    /// through the page cache (the pool was used up, or none was asked for).
    pub blocks_buffered: u64,
    pub blocks_page_cache: u64,
    /// Data units the socket read wrote straight into their place in a block buffer (no
    /// copy after the kernel's).
    pub units_in_place: u64,
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
        let result = receive_session(cfg, stop, progress, &published, &ask_rx);
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

/// The receive thread's sockets: in split mode one unicast socket for data and control (and
/// a clone for forwarding copies); otherwise the group's socket and a control socket. Warns
/// when the kernel capped the receive buffer.
fn open_sockets(cfg: &ReceiveConfig) -> Result<Sockets, NodeError> {
    let socket_err = |e| NodeError::Io(blockcast_io::IoError::os("dup", "receive socket", e));
    let sockets = match cfg.split {
        Some(_) => {
            let (sock, granted) =
                blockcast_io::bind_data_unicast(SocketAddrV4::new(cfg.iface, 0), cfg.rcvbuf)?;
            let control = sock.try_clone().map_err(socket_err)?;
            let forward = sock.try_clone().map_err(socket_err)?;
            Sockets {
                inputs: vec![Input::new(sock, RecvBatch::new(8, GRO_BUFFER_SIZE)?)],
                control,
                split_socket: Some(forward),
                granted,
            }
        }
        None => {
            let data = MulticastReceiver::new(cfg.group, cfg.iface, cfg.rcvbuf, true)?;
            let granted = data.recv_buffer();
            let control = blockcast_io::bind_unicast(SocketAddr::from((cfg.iface, 0)), true)?;
            let inputs = vec![
                Input::new(data, RecvBatch::new(8, GRO_BUFFER_SIZE)?),
                Input::new(
                    control.try_clone().map_err(socket_err)?,
                    RecvBatch::new(8, 2048)?,
                ),
            ];
            Sockets {
                inputs,
                control,
                split_socket: None,
                granted,
            }
        }
    };
    let granted = sockets.granted;
    if granted.capped_by_sysctl {
        tracing::warn!(
            "the kernel capped the receive buffer at {} bytes (asked for {}): raise net.core.rmem_max (sysctl -w net.core.rmem_max=67108864), or bursts will be lost and repaired",
            granted.effective,
            granted.requested
        );
    }
    Ok(sockets)
}

/// What [`open_sockets`] opened.
struct Sockets {
    inputs: Vec<Input>,
    control: std::net::UdpSocket,
    /// Split mode: the socket copies are forwarded through.
    split_socket: Option<std::net::UdpSocket>,
    granted: blockcast_io::BufferSize,
}

/// The receive thread: sockets, the protocol core on the node's driver, the summary.
fn receive_session(
    cfg: &ReceiveConfig,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&ReceiveProgress),
    published: &Published,
    asks: &mpsc::Receiver<Ask>,
) -> Result<ReceiveSummary, NodeError> {
    if cfg.split.is_some() && cfg.secret.is_some() {
        return Err(NodeError::Config(
            "a closed group (--secret) needs multicast: split mode does not seal its copies".into(),
        ));
    }
    let Sockets {
        inputs,
        control,
        split_socket,
        granted,
    } = open_sockets(cfg)?;
    let trust = blockcast_proto::auth::TrustedKeys::new(&cfg.trust)
        .map_err(|e| NodeError::Config(format!("--trust: {e}")))?;
    let rcfg = ReceiverConfig {
        id: ReceiverId(cfg.id),
        seed: cfg.id,
        trust,
        expect: cfg.expect,
        idle_timeout: cfg.timeout,
        min_receipt_interval: Duration::from_millis(50),
        external_verify: true,
        split: cfg.split,
        ..ReceiverConfig::default()
    };
    // An earlier receive into `out` left state files: lock `out` now (a second receive into
    // it stops here, before anything), and offer their manifests, so the content is adopted
    // at its announce.
    let (state_dir, resumable) = state::find(&cfg.out);
    let lock = if resumable.is_empty() {
        None
    } else {
        Some(StateLock::acquire(&state_dir).map_err(|e| store::lock_error(&cfg.out, e))?)
    };
    let options = StoreOptions {
        preallocate: cfg.preallocate,
        verify_existing: cfg.verify_existing,
        overwrite: cfg.overwrite,
        block_buffer_bytes: cfg.block_buffers,
    };
    let mut rx = Receiver::new(rcfg, FileStore::new(cfg.out.clone(), options, lock));
    for r in resumable {
        rx.offer_manifest(r.hash, r.manifest);
    }
    let mut io = Io::new(
        inputs,
        Out {
            ring: None,
            group: None,
            control: Some(control),
            seal: None,
            xdp: None,
            group_ring: false,
        },
    )
    .protect(cfg.secret.as_ref())?;
    io.xdp = match (cfg.split, cfg.datapath) {
        (Some(_), crate::Datapath::Xdp) => return Err(NodeError::Datapath(
            "--datapath xdp is for a multicast group: split mode's unicast data stays on sockets"
                .into(),
        )),
        (Some(_), _) => None,
        (None, choice) => crate::xdp::choose_receive(choice, cfg.group, cfg.iface)?,
    };
    let datapath = crate::Datapath::name(io.xdp.is_some());
    let started = Instant::now();
    let cpu_start = blockcast_io::os::thread_cpu_seconds();
    let run = std::thread::scope(|scope| {
        let verifier = Verifier::start(scope)?;
        let mut host = ReceiveHost::new(
            cfg,
            stop,
            progress,
            published,
            asks,
            scope,
            verifier,
            split_socket,
            started,
        )?;
        let r = driver::run(&mut rx, &mut io, &mut host);
        // The helper threads end whatever the result.
        let tally = host.finish();
        r.map(|()| tally)
    });
    let (tally, latency) = match run {
        Ok(t) => t,
        Err(e) => {
            // Tell the server we are gone (a stop has told it already), and record what is
            // verified: a later receive into the same place resumes from it.
            if !matches!(e, NodeError::Interrupted) {
                rx.leave(LeaveReason::Failed);
                let _ = io.flush(&mut rx, Instant::now());
            }
            rx.store_mut().finish_state();
            return Err(e);
        }
    };
    let (blocks_buffered, blocks_page_cache) = rx.store().attempts();
    tracing::debug!(
        "units received into their place: {} of {} (read in two pieces: {})",
        rx.store().in_place,
        rx.stats().data_units,
        tally.parts
    );
    let done = tally.complete_at.unwrap_or_else(Instant::now);
    let sync_start = Instant::now();
    let synced = rx.store_mut().sync();
    rx.store_mut().finish_state();
    synced?;
    let sync_seconds = sync_start.elapsed().as_secs_f64();
    Ok(ReceiveSummary {
        files: rx.store().paths(),
        bytes: rx.manifest().map_or(0, |m| m.total_bytes()),
        seconds: done.duration_since(started).as_secs_f64(),
        transfer_seconds: tally
            .first_unit
            .map_or(0.0, |f| done.saturating_duration_since(f).as_secs_f64()),
        first_unit_at: tally.first_unit,
        sync_seconds,
        cpu_seconds: blockcast_io::os::thread_cpu_seconds() - cpu_start
            + tally.helper_cpu
            + rx.store().buffers_cpu(),
        stats: rx.stats().clone(),
        rcvbuf: (granted.effective, granted.capped_by_sysctl),
        play: None,
        block_latency_us: [
            latency.value_at_quantile(0.5),
            latency.value_at_quantile(0.99),
            latency.value_at_quantile(0.999),
            latency.max(),
        ],
        forwarded: tally.forwarded,
        forward_dropped: tally.forward_dropped,
        stripe_datagrams: tally.stripe_datagrams,
        session: session_trust(&rx),
        sealed: io.open_stats(),
        datapath,
        xdp_frames: io.xdp.as_ref().map_or(0, |x| x.received()),
        blocks_buffered,
        blocks_page_cache,
        units_in_place: rx.store().in_place,
    })
}

impl<S: blockcast_proto::BlockStore> Sends for Receiver<S> {}

/// The session's authenticity, once its manifest is known.
fn session_trust<S: blockcast_proto::BlockStore>(rx: &Receiver<S>) -> Option<SessionTrust> {
    rx.manifest()?;
    Some(SessionTrust {
        manifest_hash: rx.manifest_hash()?,
        signer: rx.signer(),
        control_signed: rx.control_signed(),
    })
}

pub(crate) fn report(rx: &Receiver<FileStore>) -> ReceiveProgress {
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
        session: session_trust(rx),
        stats: Some(rx.stats().clone()),
    }
}
