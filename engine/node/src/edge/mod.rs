//! The edge: objects from an origin served to HTTP clients from a RAM tier and a disk tier
//! (`blockcast_edge::cache`), with the critical (key-frame) rendition made on request.
//!
//! **Objects and fills.** The edge knows an object by the name a client asked for. The first
//! request for a name starts a *fill*: the origin is asked for the object (as `fetch` does,
//! [`crate::client`]), its session is received into a staging directory by the ordinary
//! receiver, and a copier thread puts each block into the cache as soon as the receiver has
//! verified it (write-through: RAM and disk). One fill per object at a time, whatever the
//! number of clients: clients never talk to the origin, they wait for blocks of the fill.
//! An unknown name is answered by the origin at once and gives `404`. An edge may also sit
//! on groups as a member (`member.rs`): every object of every session announced there is a
//! fill of its name, without the origin.
//!
//! **Clients read from the tiers.** A client's response goes block by block: each block is
//! looked up in the cache (RAM, else disk, re-verified against the manifest's block hash,
//! the disk read and the hash outside the cache's lock), or waited for while the fill runs.
//! A client holds one block at a time, so a slow client costs one block of memory, and the
//! fill never waits for any client. A block in neither tier (evicted from both) starts a new
//! fill of its object.
//!
//! **The critical rendition** of an object is the origin's when it publishes one (the object
//! `.critical/<BLAKE3 of the full object>`, filled like any other); else it is made once,
//! from the full object's blocks in
//! order, by [`CriticalFilter`]; its output is cut into blocks of the object's block size and
//! stored in the same cache under a content id of its own. Clients get it once it is whole,
//! so a stream that is not MPEG-TS or has no H.264/H.265 key frame is answered `415`/`422`
//! before any byte of a body goes out. `?rendition=auto` gives it to clients measured slower
//! than the full rendition's bitrate ([`auto`]), at a response's start or, for a response
//! from byte 0 without a `Range`, at a key frame in its middle (`http/switch.rs`).
//!
//! **Restarts.** Each object's description (name, size, block size, BLAKE3, block hashes) is
//! written to the index directory when its fill learns it, and read back at start: with the
//! disk tier, which takes its blocks back and re-verifies each as it is read, a name filled
//! before a restart is served after it without the origin. A name keeps the content it was
//! filled with while its blocks stay cached (the origin is not asked whether it changed).
//! The critical renditions are not indexed: they are made again after a restart.

pub mod auto;
mod critical;
mod fill;
mod index;
mod member;
mod status;

use index::load_index;

pub use status::{
    ClientStatus, EdgeReady, EdgeStatus, EdgeSummary, FillsStatus, GroupStatus, MeasuredClient,
    ObjectStatus, TiersStatus,
};

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use blockcast_edge::cache::CacheConfig;
use blockcast_edge::cache::{BlockCache, BlockKey, CacheStats, ContentId, Lookup, Tier};
use blockcast_edge::ts::{CriticalFilter, RenditionConfig, RenditionError};
use blockcast_proto::auth::hex;
use blockcast_proto::wire::{Manifest, ObjectEntry};
use serde::Serialize;

use crate::client::{self, Answer, ClientConfig};
use crate::events::{EventSink, NodeEvent};
use crate::fetch::FetchConfig;
use crate::published::Published;
use crate::NodeError;

/// How the edge runs.
#[derive(Clone, Debug)]
pub struct EdgeConfig {
    /// The origin and how to ask it; `None`: the edge serves only what its groups announce
    /// (a name it has not seen is `404`).
    pub client: Option<ClientConfig>,
    /// Groups the edge sits on as a member, taking every object announced there into its
    /// tiers (`member.rs`).
    pub groups: Vec<SocketAddrV4>,
    /// This host's interface toward the origin and the groups.
    pub iface: Ipv4Addr,
    /// Keys the groups' sessions must be signed by (empty: any session).
    pub trust: Vec<[u8; 32]>,
    /// Where clients connect.
    pub http: SocketAddr,
    /// The tiers.
    pub cache: CacheConfig,
    /// Where fills receive their sessions (staging files, removed once the fill ends).
    pub staging: PathBuf,
    /// Where each object's description (name, size, block hashes) is kept, so the disk
    /// tier's blocks serve its name after a restart.
    pub index: PathBuf,
    /// Give up on a session not heard from for this long.
    pub receive_timeout: Duration,
    pub rcvbuf: usize,
    /// How long a client waits for the object's description or one block before the answer
    /// is `504` (or the response is closed short).
    pub wait_timeout: Duration,
    /// Client connections at once; more get `503`.
    pub max_connections: usize,
    /// Serve Prometheus metrics here.
    pub metrics: Option<SocketAddr>,
}

/// What the edge knows of one object's full rendition.
#[derive(Clone, Debug)]
pub struct Meta {
    pub size: u64,
    pub block_size: u64,
    /// The cache's key for its blocks.
    pub id: ContentId,
    pub block_hashes: Arc<[[u8; 32]]>,
}

impl Meta {
    /// The description of `entry`, an object of `manifest`.
    fn of(manifest: &Manifest, entry: &ObjectEntry) -> Self {
        Meta {
            size: entry.size,
            block_size: manifest.block_size(),
            id: ContentId(entry.hash),
            block_hashes: entry.block_hashes.clone().into(),
        }
    }

    fn blocks(&self) -> u32 {
        self.block_hashes.len() as u32
    }
}

/// Why an object cannot be described or a block given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EdgeError {
    /// The origin does not have it (`404`).
    NotFound,
    /// The origin could not be reached or the fill failed (`502`).
    Origin(String),
    /// Not in time (`504`).
    TimedOut,
    /// The edge is stopping.
    Stopping,
    /// The critical rendition cannot be made from this object (`415`/`422`).
    Rendition(RenditionError),
}

impl std::fmt::Display for EdgeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EdgeError::NotFound => write!(f, "not in the origin's catalog"),
            EdgeError::Origin(why) => write!(f, "the origin: {why}"),
            EdgeError::TimedOut => write!(f, "not received in time"),
            EdgeError::Stopping => write!(f, "the edge is stopping"),
            EdgeError::Rendition(e) => write!(f, "{e}"),
        }
    }
}

/// The fill of one object, as the object's lock guards it.
#[derive(Debug, Default)]
struct ObjState {
    meta: Option<Meta>,
    /// Blocks the current (or last) fill put into the cache.
    copied: Vec<bool>,
    filling: bool,
    /// Fills started for this object.
    fills: u64,
    /// Bumped when a fill ends, so waiters see it.
    fill_ends: u64,
    /// How the last fill ended, if it failed.
    failed: Option<EdgeError>,
    /// Bytes the current fill has put into the cache.
    fill_bytes: u64,
    fill_started: Option<Instant>,
    /// Seconds the last whole fill took.
    last_fill_seconds: Option<f64>,
}

/// A critical rendition, and the bitrate of the full rendition it was made from.
#[derive(Clone, Debug)]
pub struct MadeCritical {
    pub meta: Meta,
    /// The origin's object it is (`.critical/<BLAKE3>`, filled like any object), or `None`
    /// when the edge made it from the full object.
    pub source: Option<String>,
    /// The full rendition's size over its duration (first to last PCR), bytes per second;
    /// `None` when its clock could not be read.
    pub full_bytes_per_sec: Option<f64>,
}

/// The critical rendition of one object, once made (or found impossible).
type Critical = Result<MadeCritical, RenditionError>;

/// One object the edge knows (by name).
#[derive(Debug)]
struct Object {
    name: String,
    state: Mutex<ObjState>,
    changed: Condvar,
    /// Held while the critical rendition is made: one maker per object.
    critical: Mutex<Option<Critical>>,
}

impl Object {
    fn lock(&self) -> MutexGuard<'_, ObjState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A block handed to a client, and where it came from.
pub struct Served {
    pub bytes: Arc<[u8]>,
    pub tier: Tier,
}

/// A client being served, for `/status`.
#[derive(Debug)]
pub struct ClientEntry {
    pub peer: SocketAddr,
    pub object: String,
    pub rendition: &'static str,
    /// How the rendition was chosen: `auto` with the figures it compared, or asked for.
    pub auto: Option<AutoChoice>,
    pub started: Instant,
    pub bytes: AtomicU64,
    /// Body bytes sent before an `auto` response switched to the critical rendition
    /// (`u64::MAX`: it did not).
    pub switched_at: AtomicU64,
}

/// What `?rendition=auto` compared for a response.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct AutoChoice {
    /// The client's latest measured delivery rate, bytes per second (none yet: full).
    pub measured_bytes_per_sec: Option<f64>,
    /// The full rendition's bitrate, bytes per second.
    pub full_bytes_per_sec: Option<f64>,
    /// Kept from an earlier response for this name (a `Range` past byte 0).
    pub kept: bool,
}

/// The edge's counters.
#[derive(Debug, Default)]
pub struct EdgeCounters {
    pub requests: AtomicU64,
    /// Fills the origin granted.
    pub fills: AtomicU64,
    pub fill_failures: AtomicU64,
    /// Bytes the fills put into the cache (what came from the origin).
    pub origin_bytes: AtomicU64,
    pub sent_bytes_ram: AtomicU64,
    pub sent_bytes_disk: AtomicU64,
    pub renditions_made: AtomicU64,
    /// Critical renditions taken from the origin (its second object) instead of made here.
    pub renditions_from_origin: AtomicU64,
    /// `auto` responses switched to the critical rendition mid-response.
    pub rendition_switches: AtomicU64,
    pub not_found: AtomicU64,
}

/// The edge's shared state: the cache, the objects, the clients.
pub struct Edge {
    cfg: EdgeConfig,
    cache: Mutex<BlockCache>,
    objects: Mutex<HashMap<String, Arc<Object>>>,
    clients: Mutex<HashMap<u64, Arc<ClientEntry>>>,
    next_client: AtomicU64,
    pub counters: EdgeCounters,
    /// Clients' measured delivery rates, for `?rendition=auto`.
    pub rates: auto::PeerRates,
    /// What each group's member took (in the order of `cfg.groups`).
    groups: Vec<member::GroupCounters>,
    stop: Arc<AtomicBool>,
    events: EventSink,
    started: Instant,
}

/// The most fills one block request may start (a block evicted from both tiers while its
/// object is filled again, repeatedly, gives up after this).
const MAX_REFILLS: u32 = 2;

impl Edge {
    /// Opens the cache (the disk tier takes back what its directory holds).
    pub fn open(
        cfg: EdgeConfig,
        stop: Arc<AtomicBool>,
        events: EventSink,
    ) -> Result<Arc<Self>, NodeError> {
        let cache = BlockCache::open(&cfg.cache).map_err(|e| NodeError::Config(e.to_string()))?;
        // Fills cut short by the last stop left their staging files: the cache holds what
        // they had verified.
        let _ = std::fs::remove_dir_all(&cfg.staging);
        std::fs::create_dir_all(&cfg.staging).map_err(|source| NodeError::Output {
            path: cfg.staging.clone(),
            source,
        })?;
        std::fs::create_dir_all(&cfg.index).map_err(|source| NodeError::Output {
            path: cfg.index.clone(),
            source,
        })?;
        let objects = load_index(&cfg.index);
        let groups = cfg.groups.iter().map(|_| Default::default()).collect();
        Ok(Arc::new(Edge {
            groups,
            cfg,
            cache: Mutex::new(cache),
            objects: Mutex::new(objects),
            clients: Mutex::new(HashMap::new()),
            next_client: AtomicU64::new(1),
            counters: EdgeCounters::default(),
            rates: auto::PeerRates::default(),
            stop,
            events,
            started: Instant::now(),
        }))
    }

    pub fn config(&self) -> &EdgeConfig {
        &self.cfg
    }

    pub fn is_stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn cache(&self) -> MutexGuard<'_, BlockCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.cache().stats()
    }

    fn object(&self, name: &str) -> Arc<Object> {
        let mut objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        objects
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(Object {
                    name: name.to_owned(),
                    state: Mutex::new(ObjState::default()),
                    changed: Condvar::new(),
                    critical: Mutex::new(None),
                })
            })
            .clone()
    }

    /// Forgets a name the origin does not have (a later request asks again).
    fn forget(&self, name: &str) {
        let mut objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        if objects
            .get(name)
            .is_some_and(|o| o.lock().meta.is_none() && !o.lock().filling)
        {
            objects.remove(name);
        }
    }

    /// The object's description: known already, or from a fill started now (its manifest).
    pub fn meta(self: &Arc<Self>, name: &str) -> Result<Meta, EdgeError> {
        let obj = self.object(name);
        let deadline = Instant::now() + self.cfg.wait_timeout;
        let mut st = obj.lock();
        let mut seen_end = None;
        loop {
            if let Some(m) = &st.meta {
                return Ok(m.clone());
            }
            if self.is_stopping() {
                return Err(EdgeError::Stopping);
            }
            if !st.filling {
                match (seen_end, &st.failed) {
                    // A fill this request waited for failed: say why.
                    (Some(e), Some(why)) if e != st.fill_ends => {
                        let why = why.clone();
                        drop(st);
                        if why == EdgeError::NotFound {
                            self.forget(name);
                        }
                        return Err(why);
                    }
                    _ => {
                        seen_end = Some(st.fill_ends);
                        self.start_fill(&obj, &mut st);
                        if !st.filling {
                            // It could not start (no thread): its failure is read above.
                            continue;
                        }
                    }
                }
            }
            seen_end.get_or_insert(st.fill_ends);
            st = wait(&obj, st, deadline)?;
        }
    }

    /// Block `block` of the full object: from a tier, or waited for from the fill.
    pub fn full_block(self: &Arc<Self>, name: &str, block: u32) -> Result<Served, EdgeError> {
        let obj = self.object(name);
        let deadline = Instant::now() + self.cfg.wait_timeout;
        let mut refills = 0;
        loop {
            let meta = self.meta(name)?;
            if block >= meta.blocks() {
                return Err(EdgeError::Origin("block out of range".into()));
            }
            let key = BlockKey {
                object: meta.id,
                block,
            };
            if let Some(s) = self.lookup(&key, &meta.block_hashes[block as usize]) {
                return Ok(s);
            }
            let mut st = obj.lock();
            // The fill may have changed the object meanwhile (the origin's content changed).
            if st.meta.as_ref().is_some_and(|m| m.id != meta.id) {
                continue;
            }
            if !st.filling {
                if refills >= MAX_REFILLS {
                    return Err(st
                        .failed
                        .clone()
                        .unwrap_or(EdgeError::Origin("the block did not stay cached".into())));
                }
                refills += 1;
                self.start_fill(&obj, &mut st);
                if !st.filling {
                    return Err(st
                        .failed
                        .clone()
                        .unwrap_or(EdgeError::Origin("the fill did not start".into())));
                }
            }
            let ends = st.fill_ends;
            let copied = |st: &ObjState| st.copied.get(block as usize).copied().unwrap_or(false);
            // Copied by this fill and gone from both tiers already: wait for the fill to end
            // (a refill starts then).
            let was_copied = copied(&st);
            loop {
                if !was_copied && copied(&st) {
                    break;
                }
                if st.fill_ends != ends {
                    if let Some(e) = &st.failed {
                        return Err(e.clone());
                    }
                    break;
                }
                st = wait(&obj, st, deadline)?;
            }
        }
    }

    /// A block from RAM, or from disk once it matches `hash` (read and hashed outside the
    /// cache's lock).
    fn lookup(&self, key: &BlockKey, hash: &[u8; 32]) -> Option<Served> {
        let read = match self.cache().lookup(key) {
            Lookup::Ram(bytes) => {
                return Some(Served {
                    bytes,
                    tier: Tier::Ram,
                })
            }
            Lookup::Disk(read) => read,
            Lookup::Miss => return None,
        };
        let load = read.read(&blake3::Hash::from_bytes(*hash));
        self.cache().finish_read(key, load).map(|b| Served {
            bytes: b.bytes,
            tier: b.tier,
        })
    }

    /// Registers a client being served, until the returned guard drops.
    pub fn client(
        self: &Arc<Self>,
        peer: SocketAddr,
        object: &str,
        rendition: &'static str,
        auto: Option<AutoChoice>,
    ) -> ClientGuard {
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(ClientEntry {
            peer,
            object: object.to_owned(),
            rendition,
            auto,
            started: Instant::now(),
            bytes: AtomicU64::new(0),
            switched_at: AtomicU64::new(u64::MAX),
        });
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, entry.clone());
        ClientGuard {
            edge: self.clone(),
            id,
            entry,
        }
    }

    /// Counts bytes sent to a client from `tier`.
    pub fn count_sent(&self, tier: Tier, bytes: u64) {
        let c = match tier {
            Tier::Ram => &self.counters.sent_bytes_ram,
            Tier::Disk => &self.counters.sent_bytes_disk,
        };
        c.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Names the edge knows.
    pub fn names(&self) -> Vec<(String, Option<u64>)> {
        let objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = objects
            .values()
            .map(|o| (o.name.clone(), o.lock().meta.as_ref().map(|m| m.size)))
            .collect();
        v.sort();
        v
    }
}

/// Waits on the object's condition until `deadline` (or a stop: checked each second).
fn wait<'a>(
    obj: &'a Object,
    st: MutexGuard<'a, ObjState>,
    deadline: Instant,
) -> Result<MutexGuard<'a, ObjState>, EdgeError> {
    let now = Instant::now();
    if now >= deadline {
        return Err(EdgeError::TimedOut);
    }
    let step = (deadline - now).min(Duration::from_secs(1));
    Ok(obj
        .changed
        .wait_timeout(st, step)
        .unwrap_or_else(|e| e.into_inner())
        .0)
}

/// Removes a client from `/status` when its response ends.
pub struct ClientGuard {
    edge: Arc<Edge>,
    id: u64,
    pub entry: Arc<ClientEntry>,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.edge
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// Runs the edge until `stop` is set.
pub fn edge(
    cfg: EdgeConfig,
    stop: Arc<AtomicBool>,
    events: EventSink,
    ready: &mut dyn FnMut(&EdgeReady),
) -> Result<EdgeSummary, NodeError> {
    let listener = TcpListener::bind(cfg.http).map_err(|source| NodeError::Listen {
        addr: cfg.http,
        source,
    })?;
    let http = listener.local_addr().map_err(|source| NodeError::Listen {
        addr: cfg.http,
        source,
    })?;
    let edge = Edge::open(cfg, stop.clone(), events)?;
    let metrics = match edge.cfg.metrics {
        Some(addr) => {
            let mut registry = crate::metrics::registry();
            let m = crate::metrics::EdgeMetrics::default();
            m.register(&mut registry);
            let served = crate::metrics::serve(addr, registry, stop.clone())?;
            // The edge's counters are copied into the registry's twice a second.
            let (e, stop) = (edge.clone(), stop.clone());
            let updater = std::thread::Builder::new()
                .name("bc-edge-metrics".into())
                .spawn(move || {
                    let mut d = crate::metrics::Delta::default();
                    while !stop.load(Ordering::Relaxed) {
                        m.update(&mut d, &e.status(false));
                        std::thread::park_timeout(Duration::from_millis(500));
                    }
                })
                .map_err(|e| NodeError::spawn("the metrics thread", e))?;
            Some((served, updater))
        }
        None => None,
    };
    let mut members = Vec::new();
    for i in 0..edge.cfg.groups.len() {
        let e = edge.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("bc-edge-group-{i}"))
            .spawn(move || e.member(i));
        match spawned {
            Ok(h) => members.push(h),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                for h in members {
                    let _ = h.join();
                }
                return Err(NodeError::spawn("a group member thread", e));
            }
        }
    }
    ready(&EdgeReady {
        http,
        metrics: metrics.as_ref().map(|((_, a), _)| *a),
    });
    let served = crate::http::edge::serve_edge(listener, edge.clone(), &stop);
    // The members see the stop at their next progress (a few times a second).
    stop.store(true, Ordering::Relaxed);
    for h in members {
        let _ = h.join();
    }
    if let Some(((h, _), updater)) = metrics {
        let _ = h.join();
        updater.thread().unpark();
        let _ = updater.join();
    }
    served.map_err(|source| NodeError::Listen {
        addr: edge.cfg.http,
        source,
    })?;
    let c = &edge.counters;
    Ok(EdgeSummary {
        requests: c.requests.load(Ordering::Relaxed),
        fills: c.fills.load(Ordering::Relaxed),
        fill_failures: c.fill_failures.load(Ordering::Relaxed),
        origin_bytes: c.origin_bytes.load(Ordering::Relaxed),
        group_bytes: edge
            .groups
            .iter()
            .map(|g| g.bytes.load(Ordering::Relaxed))
            .sum(),
        sent_bytes_ram: c.sent_bytes_ram.load(Ordering::Relaxed),
        sent_bytes_disk: c.sent_bytes_disk.load(Ordering::Relaxed),
        seconds: edge.started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::critical::critical_id;
    use super::index::{index_path, save_index};
    use super::*;

    fn meta(blocks: usize) -> Meta {
        Meta {
            size: blocks as u64 * 1000 - 10,
            block_size: 1000,
            id: ContentId([7; 32]),
            block_hashes: (0..blocks).map(|b| [b as u8; 32]).collect(),
        }
    }

    #[test]
    fn the_index_gives_back_each_description_and_removes_what_is_not_one() {
        let dir = std::env::temp_dir().join(format!("bc-edge-index-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        save_index(&dir, "films/a b.ts", &meta(3));
        save_index(&dir, "c.bin", &meta(1));
        // Garbage, and a description filed under another name's file.
        std::fs::write(dir.join("junk.json"), b"{").unwrap();
        std::fs::copy(index_path(&dir, "c.bin"), index_path(&dir, "d.bin")).unwrap();
        let objects = load_index(&dir);
        let mut names: Vec<&String> = objects.keys().collect();
        names.sort();
        assert_eq!(names, ["c.bin", "films/a b.ts"]);
        let st = objects["films/a b.ts"].lock();
        let m = st.meta.as_ref().unwrap();
        let want = meta(3);
        assert_eq!((m.size, m.block_size, m.id), (want.size, 1000, want.id));
        assert_eq!(m.block_hashes, want.block_hashes);
        assert_eq!(st.copied, [false; 3]);
        assert!(!dir.join("junk.json").exists());
        assert!(!index_path(&dir, "d.bin").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_critical_rendition_has_a_content_id_of_its_own() {
        let full = ContentId([1; 32]);
        assert_ne!(critical_id(&full), full);
        assert_eq!(critical_id(&full), critical_id(&ContentId([1; 32])));
        assert_ne!(critical_id(&full), critical_id(&ContentId([2; 32])));
    }
}
