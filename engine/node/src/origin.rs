//! The origin node: a catalog, a request handler and many sender sessions (docs/DESIGN.md).
//!
//! - The **catalog** is a directory, scanned and hashed in the background
//!   ([`crate::catalog`]); new and changed files appear without a restart.
//! - The **request handler** (the protocol's [`RequestHandler`]) runs on the node's one
//!   driver on this thread, at the listen address: it answers requests and catalog queries
//!   and asks this host to start sessions.
//! - Each **session** serves one object on a group of its own, taken from the pool, with its
//!   own control thread and data threads (the server's `serve_content`, spread over the
//!   cores). Requests that arrive while it is being set up or running join it; its first
//!   pass waits for the batching window, then for every receiver it was granted to (or the
//!   join grace). A session whose file disappears or changes is stopped with an error; the
//!   others go on.
//!
//! Around it: an HTTP API for tools (the catalog, the sessions, requests), Prometheus
//! metrics, and events for the log.

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blockcast_io::RecvBatch;
use blockcast_proto::auth::Signer;
use blockcast_proto::origin::{
    AnswerKind, HandlerConfig, HandlerStats, OriginEvent, RequestHandler,
};
use blockcast_proto::wire::origin::Grant;
use blockcast_proto::wire::{DoneReason, Manifest};
use blockcast_proto::{Endpoint, Geometry};
use serde::Serialize;

use crate::catalog::{self, FileId, ScanConfig, Shared, Snapshot};
use crate::content::Content;
use crate::driver::{self, Flow, Input, Io, Out, Sends};
use crate::events::{EventSink, NodeEvent};
use crate::hashcache::HashCache;
use crate::http::api::{spawn_api, ApiRequest, ApiResponse, Handler};
use crate::metrics::{Delta, OriginMetrics, SessionLabels, StatusLabels};
use crate::serve::{serve_content, StartGate};
use crate::{NodeError, ServeConfig, ServeProgress, ServeSummary};

/// A pool of multicast groups: the addresses of a prefix (`239.255.3.0/24`), each session
/// taking one while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupPool {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl GroupPool {
    /// Parses `A.B.C.D/N`: a multicast prefix of at least 4 addresses.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, n) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not ADDRESS/PREFIX (e.g. 239.255.3.0/24)"))?;
        let base: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
        let prefix: u8 = n
            .parse()
            .ok()
            .filter(|p| (4..=30).contains(p))
            .ok_or_else(|| format!("/{n}: the prefix must be 4..=30"))?;
        let mask = u32::MAX << (32 - prefix);
        if u32::from(base) & !mask != 0 {
            return Err(format!(
                "{s}: host bits are set (use {}/{prefix})",
                Ipv4Addr::from(u32::from(base) & mask)
            ));
        }
        if !base.is_multicast() {
            return Err(format!(
                "{base} is not a multicast address (239.255.x.0/24 on a LAN)"
            ));
        }
        Ok(GroupPool { base, prefix })
    }

    /// The usable addresses: the prefix less its first and last address.
    fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> {
        let first = u32::from(self.base);
        let count = 1u32 << (32 - u32::from(self.prefix));
        (first + 1..first + count - 1)
            .take(65_536)
            .map(Ipv4Addr::from)
    }
}

/// How to run an origin.
#[derive(Clone, Debug)]
pub struct OriginConfig {
    /// The catalog directory.
    pub catalog: PathBuf,
    /// The interface's address: sessions send through it, their control addresses are on it.
    pub iface: Ipv4Addr,
    /// Where requests and catalog queries arrive (UDP).
    pub listen: SocketAddr,
    pub groups: GroupPool,
    /// Every session's group port (stripe `s` on port + `s`).
    pub data_port: u16,
    pub ttl: u32,
    /// Per session; `None`: each follows its receivers.
    pub rate: Option<u64>,
    pub geometry: Geometry,
    /// Requests within this long of a session's first are batched before its first pass.
    pub batch_window: Duration,
    /// After the window, how long the first pass waits for granted receivers to join.
    pub join_grace: Duration,
    /// Data threads per session.
    pub threads: usize,
    /// Sessions at once (also bounded by the pool's size).
    pub max_sessions: usize,
    pub signer: Option<Signer>,
    pub hash_cache: Option<HashCache>,
    /// Publish each MPEG-TS file's critical (key-frame) rendition as a second object, made
    /// when the file enters the catalog and kept in this directory ([`catalog`]).
    pub critical: Option<PathBuf>,
    /// How often the catalog directory is scanned.
    pub rescan: Duration,
    /// How long a file must be left alone before it is hashed and published.
    pub settle: Duration,
    /// Answers per second (a request storm is answered at this rate).
    pub answers_per_sec: f64,
    pub receiver_timeout: Duration,
    pub originals_factor: u32,
    pub xor_repairs: bool,
    /// The HTTP API's address.
    pub http: Option<SocketAddr>,
    /// The Prometheus endpoint's address.
    pub metrics: Option<SocketAddr>,
}

/// Where a running origin listens (given once everything is up).
#[derive(Clone, Copy, Debug)]
pub struct OriginReady {
    pub listen: SocketAddr,
    pub http: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
}

/// What an origin run did.
#[derive(Clone, Debug, Serialize)]
pub struct OriginSummary {
    pub listen: SocketAddr,
    pub seconds: f64,
    pub sessions: u64,
    pub session_failures: u64,
    pub requests: u64,
    pub granted: u64,
    pub not_found: u64,
    pub rate_limited: u64,
    pub catalog_objects: usize,
}

/// One session as the API shows it.
#[derive(Clone, Debug, Serialize)]
struct SessionView {
    object: String,
    session: u32,
    group: String,
    bytes: u64,
    sending: bool,
    receivers: usize,
    complete: usize,
    bytes_sent: u64,
    rate: u64,
    seconds: f64,
}

/// A session running on its own threads.
struct Running {
    name: String,
    session: u32,
    group: SocketAddrV4,
    path: PathBuf,
    id: FileId,
    bytes: u64,
    stop: Arc<AtomicBool>,
    gate: Arc<StartGate>,
    progress: Arc<Mutex<Option<ServeProgress>>>,
    thread: std::thread::JoinHandle<Result<ServeSummary, NodeError>>,
    /// Why the origin stopped it.
    failed: Option<String>,
    /// Requests still join it.
    joinable: bool,
    started: Instant,
    cores: Vec<usize>,
    delta: Delta,
    labels: SessionLabels,
}

/// Runs an origin until `stop` is set.
pub fn origin(
    cfg: &OriginConfig,
    stop: &AtomicBool,
    events: EventSink,
    ready: &mut dyn FnMut(&OriginReady),
) -> Result<OriginSummary, NodeError> {
    let started = Instant::now();
    let socket = blockcast_io::bind_unicast(cfg.listen, true)?;
    let listen = socket
        .local_addr()
        .map_err(|e| NodeError::Io(blockcast_io::IoError::os("listen socket", "bind", e)))?;
    let input = socket
        .try_clone()
        .map_err(|e| NodeError::Io(blockcast_io::IoError::os("listen socket", "dup", e)))?;
    let mut io = Io::new(
        vec![Input::new(input, RecvBatch::new(32, 2048)?)],
        Out {
            ring: None,
            group: None,
            control: Some(socket),
            seal: None,
            xdp: None,
            group_ring: false,
        },
    );
    let side_stop = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Shared::default());
    let scanner = {
        let scan = ScanConfig {
            dir: cfg.catalog.clone(),
            block_size: cfg.geometry.block_size(),
            rescan: cfg.rescan,
            settle: cfg.settle,
            hash_cache: cfg.hash_cache.clone(),
            critical: cfg.critical.clone(),
        };
        let (shared, stop) = (shared.clone(), side_stop.clone());
        std::thread::Builder::new()
            .name("bc-catalog".into())
            .spawn(move || catalog::run(scan, &shared, &stop))
            .map_err(|e| NodeError::spawn("the catalog thread", e))?
    };
    let metrics = OriginMetrics::default();
    let views: Arc<Mutex<BTreeMap<u32, SessionView>>> = Arc::default();
    let mut side = Vec::new();
    let metrics_addr = match cfg.metrics {
        Some(addr) => {
            let mut r = crate::metrics::registry();
            metrics.register(&mut r);
            let (h, a) = crate::metrics::serve(addr, r, side_stop.clone())?;
            side.push(h);
            Some(a)
        }
        None => None,
    };
    let http_addr = match cfg.http {
        Some(addr) => {
            let handler = api_handler(cfg, listen, shared.clone(), views.clone());
            let (h, a) = spawn_api(addr, "bc-origin-api", handler, side_stop.clone())?;
            side.push(h);
            Some(a)
        }
        None => None,
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut handler = RequestHandler::new(HandlerConfig {
        answers_per_sec: cfg.answers_per_sec,
        signer: cfg.signer.clone(),
        ..HandlerConfig::default()
    });
    let mut host = OriginHost {
        cfg,
        stop,
        events,
        shared,
        version: 0,
        snapshot: Arc::new(Snapshot::default()),
        free: cfg.groups.addresses().collect(),
        running: BTreeMap::new(),
        core_load: vec![0; cores],
        metrics,
        handler_delta: Delta::default(),
        views,
        next_check: started,
        sessions: 0,
        failures: 0,
    };
    ready(&OriginReady {
        listen,
        http: http_addr,
        metrics: metrics_addr,
    });
    let r = driver::run(&mut handler, &mut io, &mut host);
    // Every session ends (aborted: its receivers keep what they have), then the helpers.
    for s in host.running.values() {
        s.stop.store(true, Ordering::Relaxed);
    }
    let names: Vec<u32> = host.running.keys().copied().collect();
    for id in names {
        host.reap(&mut handler, id, true);
    }
    side_stop.store(true, Ordering::Relaxed);
    scanner.thread().unpark();
    let _ = scanner.join();
    for h in side {
        let _ = h.join();
    }
    r?;
    let st = handler.stats();
    Ok(OriginSummary {
        listen,
        seconds: started.elapsed().as_secs_f64(),
        sessions: host.sessions,
        session_failures: host.failures,
        requests: st.requests,
        granted: st.granted,
        not_found: st.not_found,
        rate_limited: st.rate_limited,
        catalog_objects: handler.catalog().entries.len(),
    })
}

impl Sends for RequestHandler {}

struct OriginHost<'a> {
    cfg: &'a OriginConfig,
    stop: &'a AtomicBool,
    events: EventSink,
    shared: Arc<Shared>,
    version: u64,
    snapshot: Arc<Snapshot>,
    /// Free groups, least recently used first.
    free: VecDeque<Ipv4Addr>,
    running: BTreeMap<u32, Running>,
    /// Data threads pinned to each core.
    core_load: Vec<usize>,
    metrics: OriginMetrics,
    handler_delta: Delta,
    views: Arc<Mutex<BTreeMap<u32, SessionView>>>,
    next_check: Instant,
    sessions: u64,
    failures: u64,
}

impl Running {
    /// Why the session's catalog file is no longer the one it serves, if it is not.
    fn file_changed(&self) -> Option<String> {
        if FileId::at(&self.path) == Some(self.id) {
            return None;
        }
        let why = if self.path.exists() {
            "changed during its session"
        } else {
            "disappeared during its session"
        };
        Some(format!("catalog file {} {why}", self.path.display()))
    }
}

impl OriginHost<'_> {
    /// Starts a session for `name`, or says why not.
    fn start(&mut self, name: &str) -> Result<Grant, String> {
        let obj = self
            .snapshot
            .objects
            .get(name)
            .cloned()
            .ok_or("not in the catalog any more")?;
        if self.running.len() >= self.cfg.max_sessions {
            return Err(format!(
                "{} sessions are running (the most)",
                self.running.len()
            ));
        }
        if FileId::at(&obj.path) != Some(obj.id) {
            return Err("changed since it was hashed".into());
        }
        let Some(addr) = self.free.pop_front() else {
            return Err("every group of the pool is taken".into());
        };
        let group = SocketAddrV4::new(addr, self.cfg.data_port);
        let content =
            match Content::map_known(&obj.path, obj.entry.size, self.cfg.geometry.block_size()) {
                Ok(c) => c,
                Err(e) => {
                    self.free.push_back(addr);
                    return Err(e.to_string());
                }
            };
        let manifest = Manifest {
            unit_size: self.cfg.geometry.unit_size,
            units_per_block: self.cfg.geometry.units_per_block,
            objects: vec![(*obj.entry).clone()],
        };
        let session = loop {
            let id =
                u32::from_le_bytes(crate::keys::random_bytes().map_err(|e| e.to_string())?) | 1;
            if !self.running.contains_key(&id) {
                break id;
            }
        };
        let threads = self.cfg.threads.clamp(1, 64);
        // The least loaded cores take this session's data threads.
        let mut order: Vec<usize> = (0..self.core_load.len()).collect();
        order.sort_by_key(|&c| self.core_load[c]);
        let offset = order[0];
        let cores: Vec<usize> = (0..threads)
            .map(|s| (offset + s) % self.core_load.len())
            .collect();
        for &c in &cores {
            self.core_load[c] += 1;
        }
        let gate = Arc::new(StartGate {
            window_end: Instant::now() + self.cfg.batch_window,
            granted: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
        });
        let scfg = ServeConfig {
            inputs: Vec::new(),
            group,
            iface: self.cfg.iface,
            control_port: 0,
            ttl: self.cfg.ttl,
            rate: self.cfg.rate,
            geometry: self.cfg.geometry,
            min_receivers: usize::MAX,
            max_wait: self.cfg.batch_window + self.cfg.join_grace,
            deadline: None,
            session,
            threads,
            split: false,
            receiver_timeout: self.cfg.receiver_timeout,
            hash_cache: None,
            originals_factor: self.cfg.originals_factor,
            xor_repairs: self.cfg.xor_repairs,
            signer: self.cfg.signer.clone(),
            statement: None,
            core_offset: offset,
            gate: Some(gate.clone()),
            // Closed groups are not offered by the origin (yet): its sessions are open.
            secret: None,
            datapath: crate::Datapath::Socket,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let progress: Arc<Mutex<Option<ServeProgress>>> = Arc::default();
        let thread = {
            let (stop, progress) = (stop.clone(), progress.clone());
            std::thread::Builder::new()
                .name(format!("bc-session-{session:08x}"))
                .spawn(move || {
                    serve_content(&scfg, manifest, content, &stop, &mut |p| {
                        *progress.lock().unwrap_or_else(|e| e.into_inner()) = Some(p.clone());
                    })
                })
        };
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                self.free.push_back(addr);
                for &c in &cores {
                    self.core_load[c] -= 1;
                }
                return Err(format!("cannot start its thread: {e}"));
            }
        };
        let grant = Grant {
            session,
            group: SocketAddr::V4(group),
            size: obj.entry.size,
            hash: obj.entry.hash,
        };
        self.sessions += 1;
        self.metrics.sessions_total.inc();
        self.metrics.sessions.inc();
        let labels = SessionLabels {
            object: name.to_owned(),
            session: format!("{session:08x}"),
        };
        (self.events)(NodeEvent::SessionStarted {
            object: name.to_owned(),
            session,
            group: group.to_string(),
            bytes: obj.entry.size,
            blake3: blockcast_proto::auth::hex(&obj.entry.hash),
        });
        tracing::info!(object = name, %group, session, "session started");
        self.running.insert(
            session,
            Running {
                name: name.to_owned(),
                session,
                group,
                path: obj.path.clone(),
                id: obj.id,
                bytes: obj.entry.size,
                stop,
                gate,
                progress,
                thread,
                failed: None,
                joinable: true,
                started: Instant::now(),
                cores,
                delta: Delta::default(),
                labels,
            },
        );
        Ok(grant)
    }

    /// Joins a finished session (`wait`: also one still running), frees its group.
    fn reap(&mut self, handler: &mut RequestHandler, id: u32, wait: bool) {
        let Some(s) = self.running.get(&id) else {
            return;
        };
        if !wait && !s.thread.is_finished() {
            return;
        }
        let mut s = self.running.remove(&id).expect("present");
        handler.close_session(&s.name, s.session);
        // The session's own check of its input may have stopped it first: say what became
        // of the catalog file either way.
        if s.failed.is_none() {
            s.failed = s.file_changed();
        }
        self.update_session(&s);
        let result = s
            .thread
            .join()
            .unwrap_or(Err(NodeError::panicked("a session thread")));
        for &c in &s.cores {
            self.core_load[c] -= 1;
        }
        self.free.push_back(*s.group.ip());
        self.metrics.sessions.dec();
        self.metrics.forget(&s.labels);
        if let Ok(mut v) = self.views.lock() {
            v.remove(&s.session);
        }
        let (reason, receivers, complete, bytes_sent, error) = match &result {
            Ok(sum) => (
                format!("{:?}", sum.reason).to_lowercase(),
                sum.receivers_ever,
                sum.receivers.iter().filter(|r| r.complete).count(),
                sum.stats.data_bytes + sum.stats.parity_bytes,
                s.failed.clone(),
            ),
            Err(e) => (
                "failed".into(),
                0,
                0,
                0,
                s.failed.clone().or_else(|| Some(e.to_string())),
            ),
        };
        let error = error.or_else(|| match &result {
            Ok(sum) if sum.reason == DoneReason::Aborted && !self.stop.load(Ordering::Relaxed) => {
                Some("aborted".into())
            }
            _ => None,
        });
        if let Some(e) = &error {
            self.failures += 1;
            self.metrics.session_failures_total.inc();
            tracing::warn!(object = %s.name, session = s.session, "session ended: {e}");
        } else {
            tracing::info!(object = %s.name, session = s.session, receivers, "session ended");
        }
        (self.events)(NodeEvent::SessionEnded {
            object: s.name.clone(),
            session: s.session,
            reason,
            seconds: s.started.elapsed().as_secs_f64(),
            receivers,
            complete,
            bytes_sent,
            error,
        });
    }

    /// Copies a session's progress into the metrics and its API view.
    fn update_session(&self, s: &Running) {
        let p = s.progress.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(p) = p else { return };
        self.metrics
            .session_members
            .get_or_create(&s.labels)
            .set(p.receivers as i64);
        self.metrics
            .session_complete
            .get_or_create(&s.labels)
            .set(p.complete as i64);
        self.metrics
            .session_rate
            .get_or_create(&s.labels)
            .set(if p.sending { p.rate as i64 } else { 0 });
        self.metrics
            .session_sent_bytes
            .get_or_create(&s.labels)
            .set(p.bytes_sent);
        if let Ok(mut v) = self.views.lock() {
            v.insert(
                s.session,
                SessionView {
                    object: s.name.clone(),
                    session: s.session,
                    group: s.group.to_string(),
                    bytes: s.bytes,
                    sending: p.sending,
                    receivers: p.receivers,
                    complete: p.complete,
                    bytes_sent: p.bytes_sent,
                    rate: p.rate,
                    seconds: s.started.elapsed().as_secs_f64(),
                },
            );
        }
    }

    /// Every few hundred milliseconds: sessions whose file went away are stopped, sessions
    /// too far into their first pass stop taking requests, progress goes to the metrics.
    fn check_sessions(&mut self, handler: &mut RequestHandler) {
        let ids: Vec<u32> = self.running.keys().copied().collect();
        for id in ids {
            let Some(s) = self.running.get_mut(&id) else {
                continue;
            };
            if s.failed.is_none() {
                if let Some(why) = s.file_changed() {
                    s.failed = Some(why);
                    s.stop.store(true, Ordering::Relaxed);
                }
            }
            // The data threads' first pass counts as sent.
            let p = s.progress.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(p) = &p {
                // A receiver that joins late gets what it missed as repairs, within its share
                // of the rate (wire.md §12.12): past that share of the object, a new session
                // serves it sooner than this one would.
                let late = p.sending
                    && p.bytes_sent as f64
                        > p.total_bytes as f64 * blockcast_proto::sender::MEMBER_REPAIR_SHARE;
                if s.joinable && (late || s.failed.is_some()) {
                    s.joinable = false;
                    handler.close_session(&s.name, s.session);
                }
            }
            if let Some(p) = p {
                let first_pass = p
                    .bytes_sent
                    .saturating_sub(p.stats.data_bytes + p.stats.parity_bytes);
                let units = first_pass / u64::from(self.cfg.geometry.unit_size).max(1);
                self.metrics.sender.update(
                    &mut s.delta,
                    &p.stats,
                    (first_pass, units),
                    p.stats.joins,
                );
            }
            let s = &self.running[&id];
            self.update_session(s);
        }
    }

    fn update_handler_metrics(&mut self, st: &HandlerStats) {
        let m = &self.metrics.requests_total;
        let d = &mut self.handler_delta;
        for (key, v) in [
            ("granted", st.granted),
            ("found", st.found),
            ("not_found", st.not_found),
            ("not_ready", st.not_ready),
            ("busy", st.busy),
            ("catalog", st.catalog_chunks),
            ("rate_limited", st.rate_limited),
            ("bad_packet", st.bad_packets),
        ] {
            d.add(
                key,
                &m.get_or_create(&StatusLabels {
                    status: key.to_string(),
                }),
                v,
            );
        }
    }
}

impl driver::Host<RequestHandler> for OriginHost<'_> {
    fn begin(
        &mut self,
        handler: &mut RequestHandler,
        now: Instant,
        _io: &mut Io,
    ) -> Result<Flow, NodeError> {
        if self.stop.load(Ordering::Relaxed) {
            return Ok(Flow::Stop);
        }
        let (version, snap) = self.shared.latest();
        if version != self.version {
            self.version = version;
            if let Err(e) =
                handler.set_catalog(snap.catalog.clone(), snap.unready.clone(), snap.issued)
            {
                tracing::warn!("the catalog cannot be published: {e}");
            } else {
                self.metrics
                    .catalog_objects
                    .set(snap.catalog.entries.len() as i64);
                self.metrics.catalog_unready.set(snap.unready.len() as i64);
                self.metrics
                    .catalog_generation
                    .set(snap.catalog.generation as i64);
                (self.events)(NodeEvent::Catalog {
                    generation: snap.catalog.generation,
                    objects: snap.catalog.entries.len(),
                    unready: snap.unready.len(),
                });
            }
            self.snapshot = snap;
        }
        let finished: Vec<u32> = self
            .running
            .iter()
            .filter(|(_, s)| s.thread.is_finished())
            .map(|(id, _)| *id)
            .collect();
        for id in finished {
            self.reap(handler, id, false);
        }
        // A session that is ending takes no more requests: checked every turn, before the
        // requests are read, since on loopback a session closes within milliseconds and a
        // receiver granted one that is over would wait for it until its timeout.
        for s in self.running.values_mut() {
            // Acquire: pairs with the session's Release.
            if s.joinable && s.gate.closing.load(Ordering::Acquire) {
                s.joinable = false;
                handler.close_session(&s.name, s.session);
            }
        }
        if now >= self.next_check {
            self.check_sessions(handler);
            self.next_check = now + Duration::from_millis(200);
        }
        Ok(Flow::Continue)
    }

    fn on_event(
        &mut self,
        handler: &mut RequestHandler,
        _now: Instant,
        event: OriginEvent,
    ) -> Result<Flow, NodeError> {
        match event {
            OriginEvent::StartSession { name } => match self.start(&name) {
                Ok(grant) => handler.open_session(&name, grant),
                Err(why) => {
                    tracing::warn!(object = %name, "cannot start a session: {why}");
                    handler.refuse_session(&name);
                }
            },
            OriginEvent::Answered { from, name, status } => {
                if status == AnswerKind::Granted {
                    if let Some(g) = handler.session(&name) {
                        if let Some(s) = self.running.get(&g.session) {
                            // Relaxed: the session's host reads it once per turn.
                            s.gate.granted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                (self.events)(NodeEvent::Request {
                    from: from.to_string(),
                    object: name,
                    status: status.as_str(),
                });
            }
            OriginEvent::BadPacket { from, error } => {
                tracing::debug!(%from, %error, "bad packet at the listen address")
            }
        }
        Ok(Flow::Continue)
    }

    fn end(&mut self, handler: &mut RequestHandler, _now: Instant) -> Result<Flow, NodeError> {
        let st = handler.stats().clone();
        self.update_handler_metrics(&st);
        Ok(if handler.is_finished() {
            Flow::Stop
        } else {
            Flow::Continue
        })
    }
}

/// The HTTP API: `GET /catalog`, `GET /sessions`, `GET /objects/NAME`,
/// `POST /objects/NAME/request` (a request over the control protocol, as any client's).
fn api_handler(
    cfg: &OriginConfig,
    listen: SocketAddr,
    shared: Arc<Shared>,
    views: Arc<Mutex<BTreeMap<u32, SessionView>>>,
) -> Arc<Handler> {
    let origin = if listen.ip().is_unspecified() {
        SocketAddr::from((cfg.iface, listen.port()))
    } else {
        listen
    };
    let client = crate::client::ClientConfig {
        origin,
        iface: match origin.ip() {
            std::net::IpAddr::V4(v4) => v4,
            std::net::IpAddr::V6(_) => cfg.iface,
        },
        timeout: Duration::from_secs(10),
        trust: Vec::new(),
    };
    let signed = cfg
        .signer
        .as_ref()
        .map(|s| blockcast_proto::auth::hex(&s.public_key()));
    Arc::new(move |r: &ApiRequest| {
        let (_, snap) = shared.latest();
        let entry_json = |name: &str| {
            snap.catalog.get(name).map(|e| {
                serde_json::json!({
                    "name": e.name,
                    "bytes": e.size,
                    "blake3": blockcast_proto::auth::hex(&e.hash),
                })
            })
        };
        let not_found = |name: &str| {
            ApiResponse::json(
                404,
                serde_json::json!({"error": format!("{name:?} is not in the catalog")}).to_string(),
            )
        };
        match (r.method.as_str(), r.path.as_str()) {
            ("GET", "/catalog") => {
                let objects: Vec<_> = snap
                    .catalog
                    .entries
                    .iter()
                    .filter_map(|e| entry_json(&e.name))
                    .collect();
                ApiResponse::json(
                    200,
                    serde_json::json!({
                        "generation": snap.catalog.generation,
                        "signer": signed,
                        "objects": objects,
                        "unready": snap.unready,
                    })
                    .to_string(),
                )
            }
            ("GET", "/sessions") => {
                let v: Vec<SessionView> = views
                    .lock()
                    .map(|v| v.values().cloned().collect())
                    .unwrap_or_default();
                ApiResponse::json(200, serde_json::to_string(&v).unwrap_or_default())
            }
            ("GET", p) if p.starts_with("/objects/") => {
                let name = &p["/objects/".len()..];
                match entry_json(name) {
                    Some(j) => ApiResponse::json(200, j.to_string()),
                    None => not_found(name),
                }
            }
            ("POST", p) if p.starts_with("/objects/") && p.ends_with("/request") => {
                let name = &p["/objects/".len()..p.len() - "/request".len()];
                match crate::client::request(&client, &[name.to_owned()], false) {
                    Ok(a) => match a.first() {
                        Some(crate::client::Answer::Granted(g)) => ApiResponse::json(
                            200,
                            serde_json::json!({
                                "name": name,
                                "session": g.session,
                                "group": g.group.to_string(),
                                "bytes": g.size,
                                "blake3": blockcast_proto::auth::hex(&g.hash),
                            })
                            .to_string(),
                        ),
                        Some(crate::client::Answer::NotFound) => not_found(name),
                        _ => ApiResponse::json(
                            503,
                            serde_json::json!({"error": "no session could be had in time (busy, or still hashing)"}).to_string(),
                        ),
                    },
                    Err(e) => ApiResponse::json(500, serde_json::json!({"error": e.to_string()}).to_string()),
                }
            }
            ("GET", "/") => ApiResponse::text(
                200,
                "GET /catalog, GET /sessions, GET /objects/NAME, POST /objects/NAME/request\n",
            ),
            (m, _) if m != "GET" && m != "POST" => ApiResponse::text(405, "GET or POST\n"),
            _ => ApiResponse::text(404, "no such resource (GET / lists them)\n"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_pools_are_multicast_prefixes_without_host_bits() {
        let p = GroupPool::parse("239.255.3.0/24").unwrap();
        let a: Vec<Ipv4Addr> = p.addresses().collect();
        assert_eq!(a.len(), 254);
        assert_eq!(a[0], Ipv4Addr::new(239, 255, 3, 1));
        assert_eq!(a[253], Ipv4Addr::new(239, 255, 3, 254));
        assert!(GroupPool::parse("239.255.3.1/24").is_err());
        assert!(GroupPool::parse("10.0.0.0/24").is_err());
        assert!(GroupPool::parse("239.255.3.0").is_err());
        assert!(GroupPool::parse("239.255.3.0/31").is_err());
    }
}
