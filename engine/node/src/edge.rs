//! The edge: objects from an origin served to HTTP clients from a RAM tier and a disk tier
//! (`blockcast_edge::cache`), with the critical (key-frame) rendition made on request.
//!
//! **Objects and fills.** The edge knows an object by the name a client asked for. The first
//! request for a name starts a *fill*: the origin is asked for the object (as `fetch` does,
//! [`crate::client`]), its session is received into a staging directory by the ordinary
//! receiver, and a copier thread puts each block into the cache as soon as the receiver has
//! verified it (write-through: RAM and disk). One fill per object at a time, whatever the
//! number of clients: clients never talk to the origin, they wait for blocks of the fill.
//! An unknown name is answered by the origin at once and gives `404`.
//!
//! **Clients read from the tiers.** A client's response goes block by block: each block is
//! looked up in the cache (RAM, else disk, re-verified against the manifest's block hash,
//! the disk read and the hash outside the cache's lock), or waited for while the fill runs.
//! A client holds one block at a time, so a slow client costs one block of memory, and the
//! fill never waits for any client. A block in neither tier (evicted from both) starts a new
//! fill of its object.
//!
//! **The critical rendition** of an object is made once, from the full object's blocks in
//! order, by [`CriticalFilter`]; its output is cut into blocks of the object's block size and
//! stored in the same cache under a content id of its own. Clients get it once it is whole,
//! so a stream that is not MPEG-TS or has no H.264/H.265 key frame is answered `415`/`422`
//! before any byte of a body goes out.
//!
//! **Restarts.** Each object's description (name, size, block size, BLAKE3, block hashes) is
//! written to the index directory when its fill learns it, and read back at start: with the
//! disk tier, which takes its blocks back and re-verifies each as it is read, a name filled
//! before a restart is served after it without the origin. A name keeps the content it was
//! filled with while its blocks stay cached (the origin is not asked whether it changed).
//! The critical renditions are not indexed: they are made again after a restart.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use blockcast_edge::cache::CacheConfig;
use blockcast_edge::cache::{BlockCache, BlockKey, CacheStats, ContentId, Lookup, Tier};
use blockcast_edge::ts::{CriticalFilter, RenditionConfig, RenditionError};
use blockcast_proto::auth::hex;
use serde::Serialize;

use crate::client::{self, Answer, ClientConfig};
use crate::events::{EventSink, NodeEvent};
use crate::fetch::FetchConfig;
use crate::published::Published;
use crate::NodeError;

/// How the edge runs.
#[derive(Clone, Debug)]
pub struct EdgeConfig {
    /// The origin and how to ask it.
    pub client: ClientConfig,
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

/// The critical rendition of one object, once made (or found impossible).
type Critical = Result<Meta, RenditionError>;

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
    pub started: Instant,
    pub bytes: AtomicU64,
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
        Ok(Arc::new(Edge {
            cfg,
            cache: Mutex::new(cache),
            objects: Mutex::new(objects),
            clients: Mutex::new(HashMap::new()),
            next_client: AtomicU64::new(1),
            counters: EdgeCounters::default(),
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
                        self.start_fill(&obj, &mut st);
                    }
                }
            }
            seen_end.get_or_insert(st.fill_ends);
            st = wait(&obj, st, deadline)?;
        }
    }

    /// Starts a fill of `obj` (its lock held: `st`).
    fn start_fill(self: &Arc<Self>, obj: &Arc<Object>, st: &mut ObjState) {
        st.filling = true;
        st.fills += 1;
        st.failed = None;
        st.fill_bytes = 0;
        st.fill_started = Some(Instant::now());
        st.copied.iter_mut().for_each(|c| *c = false);
        let (edge, o) = (self.clone(), obj.clone());
        let spawned = std::thread::Builder::new()
            .name("bc-edge-fill".into())
            .spawn(move || edge.fill(&o));
        if let Err(e) = spawned {
            st.filling = false;
            st.fill_ends += 1;
            st.failed = Some(EdgeError::Origin(format!(
                "cannot start a fill thread: {e}"
            )));
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

    /// The fill thread: ask the origin, receive, copy verified blocks into the cache.
    fn fill(self: &Arc<Self>, obj: &Arc<Object>) {
        let result = self.run_fill(obj);
        let mut st = obj.lock();
        st.filling = false;
        st.fill_ends += 1;
        match result {
            Ok(()) => {
                st.last_fill_seconds = st.fill_started.map(|t| t.elapsed().as_secs_f64());
            }
            Err(e) => {
                if e == EdgeError::NotFound {
                    self.counters.not_found.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.counters.fill_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(object = obj.name, "edge: fill failed: {e}");
                }
                st.failed = Some(e);
            }
        }
        drop(st);
        obj.changed.notify_all();
    }

    fn run_fill(self: &Arc<Self>, obj: &Arc<Object>) -> Result<(), EdgeError> {
        let answer = client::request(&self.cfg.client, std::slice::from_ref(&obj.name), false)
            .map_err(|e| EdgeError::Origin(e.to_string()))?
            .pop();
        let grant = match answer {
            Some(Answer::Granted(g)) => g,
            Some(Answer::NotFound) => return Err(EdgeError::NotFound),
            _ => return Err(EdgeError::Origin("no answer from the origin".into())),
        };
        // A fill counts once the origin grants it (an unknown name is no fill).
        self.counters.fills.fetch_add(1, Ordering::Relaxed);
        let SocketAddr::V4(group) = grant.group else {
            return Err(EdgeError::Origin("an IPv6 group: not supported".into()));
        };
        (self.events)(NodeEvent::TransferStarted {
            object: obj.name.clone(),
            session: grant.session,
            group: grant.group.to_string(),
        });
        let staging = self.cfg.staging.join(hex(&grant.hash));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)
            .map_err(|e| EdgeError::Origin(format!("{}: {e}", staging.display())))?;
        let fetch_cfg = FetchConfig {
            client: self.cfg.client.clone(),
            out: self.cfg.staging.clone(),
            receive_timeout: self.cfg.receive_timeout,
            rcvbuf: self.cfg.rcvbuf,
            threads: 1,
            retries: 0,
        };
        let rcfg = crate::fetch::receive_config(&fetch_cfg, group, staging.clone(), grant.hash)
            .map_err(|e| EdgeError::Origin(e.to_string()))?;
        let published = Arc::new(Published::default());
        let fill_stop = AtomicBool::new(false);
        let result = std::thread::scope(|s| {
            let copier = {
                let (p, fill_stop) = (published.clone(), &fill_stop);
                s.spawn(move || self.copy_blocks(obj, &p, fill_stop))
            };
            let r = crate::receive::receive_shared(
                &rcfg,
                &fill_stop,
                &mut |_| {
                    if self.is_stopping() {
                        fill_stop.store(true, Ordering::Relaxed);
                    }
                },
                published.clone(),
            );
            let copied = copier
                .join()
                .unwrap_or(Err(EdgeError::Origin("the fill's copier panicked".into())));
            match (r, copied) {
                (_, Err(e)) => Err(e),
                (Err(e), Ok(())) => Err(EdgeError::Origin(e.to_string())),
                (Ok(_), Ok(())) => Ok(()),
            }
        });
        let _ = std::fs::remove_dir_all(&staging);
        result
    }

    /// Puts each block the receiver verifies into the cache, until all are in or the
    /// receive ends.
    fn copy_blocks(
        &self,
        obj: &Object,
        published: &Published,
        fill_stop: &AtomicBool,
    ) -> Result<(), EdgeError> {
        let Some(manifest) = published.wait_manifest(Instant::now() + self.cfg.receive_timeout)
        else {
            return Err(EdgeError::Origin("no manifest from the session".into()));
        };
        let [entry] = &manifest.objects[..] else {
            fill_stop.store(true, Ordering::Relaxed);
            return Err(EdgeError::Origin(
                "the session carries several objects".into(),
            ));
        };
        if entry.name != obj.name {
            fill_stop.store(true, Ordering::Relaxed);
            return Err(EdgeError::Origin(format!(
                "the session carries {:?}",
                entry.name
            )));
        }
        let meta = Meta {
            size: entry.size,
            block_size: manifest.block_size(),
            id: ContentId(entry.hash),
            block_hashes: entry.block_hashes.clone().into(),
        };
        let n = meta.blocks() as usize;
        {
            let mut st = obj.lock();
            if st.meta.as_ref().is_none_or(|m| m.id != meta.id) {
                st.copied = vec![false; n];
                st.meta = Some(meta.clone());
                drop(st);
                save_index(&self.cfg.index, &obj.name, &meta);
            }
        }
        obj.changed.notify_all();
        let path = published
            .paths()
            .and_then(|p| p.first().cloned())
            .ok_or_else(|| EdgeError::Origin("no output file".into()))?;
        let mut file = None;
        let mut done = vec![false; n];
        let mut left = n;
        while left > 0 {
            let seen = published.generation();
            let ended = published.is_ended();
            for (b, d) in done.iter_mut().enumerate() {
                if *d || !published.is_verified(0, b as u32) {
                    continue;
                }
                if file.is_none() {
                    file = Some(
                        std::fs::File::open(&path)
                            .map_err(|e| EdgeError::Origin(format!("{}: {e}", path.display())))?,
                    );
                }
                let f = file.as_ref().expect("opened above");
                let start = b as u64 * meta.block_size;
                let len = meta.block_size.min(meta.size - start) as usize;
                let mut bytes = vec![0u8; len];
                f.read_exact_at(&mut bytes, start)
                    .map_err(|e| EdgeError::Origin(format!("{}: {e}", path.display())))?;
                let key = BlockKey {
                    object: meta.id,
                    block: b as u32,
                };
                self.cache().insert(key, bytes.into());
                self.counters
                    .origin_bytes
                    .fetch_add(len as u64, Ordering::Relaxed);
                *d = true;
                left -= 1;
                let mut st = obj.lock();
                if let Some(c) = st.copied.get_mut(b) {
                    *c = true;
                }
                st.fill_bytes += len as u64;
                drop(st);
                obj.changed.notify_all();
            }
            if left == 0 {
                break;
            }
            if ended {
                return Err(EdgeError::Origin(format!(
                    "the session ended with {left} of {n} blocks missing"
                )));
            }
            published.wait_changed(seen, Instant::now() + Duration::from_secs(1));
        }
        Ok(())
    }

    /// The critical rendition of `name`: made now from the full object if not made yet.
    /// Clients of an object whose rendition is being made wait for it.
    pub fn critical(self: &Arc<Self>, name: &str) -> Result<Meta, EdgeError> {
        let full = self.meta(name)?;
        let obj = self.object(name);
        let mut made = obj.critical.lock().unwrap_or_else(|e| e.into_inner());
        match &*made {
            Some(Ok(m)) if m.block_size == full.block_size && self.holds_all(m) => {
                return Ok(m.clone())
            }
            Some(Err(e)) => return Err(EdgeError::Rendition(*e)),
            _ => {}
        }
        let result = self.make_critical(name, &full)?;
        *made = Some(result.clone());
        result.map_err(EdgeError::Rendition)
    }

    fn holds_all(&self, m: &Meta) -> bool {
        let cache = self.cache();
        (0..m.blocks()).all(|block| {
            cache
                .holds(&BlockKey {
                    object: m.id,
                    block,
                })
                .is_some()
        })
    }

    /// Runs the filter over the full object's blocks in order; stores its output as blocks.
    fn make_critical(self: &Arc<Self>, name: &str, full: &Meta) -> Result<Critical, EdgeError> {
        let id = critical_id(&full.id);
        let mut filter = CriticalFilter::new(RenditionConfig::default());
        let mut out = Vec::new();
        let mut hashes = Vec::new();
        let mut size = 0u64;
        let bs = full.block_size as usize;
        let mut store = |out: &mut Vec<u8>, all: bool, hashes: &mut Vec<[u8; 32]>| {
            while out.len() >= bs || (all && !out.is_empty()) {
                let take = out.len().min(bs);
                let block: Vec<u8> = out.drain(..take).collect();
                let key = BlockKey {
                    object: id,
                    block: hashes.len() as u32,
                };
                hashes.push(*blake3::hash(&block).as_bytes());
                size += block.len() as u64;
                self.cache().insert(key, block.into());
            }
        };
        for block in 0..full.blocks() {
            let served = self.full_block(name, block)?;
            if let Err(e) = filter.push(&served.bytes, &mut out) {
                return Ok(Err(e));
            }
            store(&mut out, false, &mut hashes);
        }
        if let Err(e) = filter.finish(&mut out) {
            return Ok(Err(e));
        }
        store(&mut out, true, &mut hashes);
        self.counters
            .renditions_made
            .fetch_add(1, Ordering::Relaxed);
        Ok(Ok(Meta {
            size,
            block_size: full.block_size,
            id,
            block_hashes: hashes.into(),
        }))
    }

    /// Block `block` of the critical rendition `meta` (made by [`Edge::critical`]).
    pub fn critical_block(&self, meta: &Meta, block: u32) -> Result<Served, EdgeError> {
        let hash = meta
            .block_hashes
            .get(block as usize)
            .ok_or_else(|| EdgeError::Origin("block out of range".into()))?;
        self.lookup(
            &BlockKey {
                object: meta.id,
                block,
            },
            hash,
        )
        .ok_or_else(|| EdgeError::Origin("the rendition's block left both tiers".into()))
    }

    /// Registers a client being served, until the returned guard drops.
    pub fn client(
        self: &Arc<Self>,
        peer: SocketAddr,
        object: &str,
        rendition: &'static str,
    ) -> ClientGuard {
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(ClientEntry {
            peer,
            object: object.to_owned(),
            rendition,
            started: Instant::now(),
            bytes: AtomicU64::new(0),
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

    /// `/status` as JSON. `objects`: list each object with where its blocks are (a walk over
    /// every block under the cache's lock: `/status` does it, the metrics' twice-a-second
    /// copy does not).
    pub fn status(&self, objects_too: bool) -> EdgeStatus {
        let objects: Vec<Arc<Object>> = self
            .objects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let cache = self.cache();
        let mut list: Vec<ObjectStatus> = objects
            .iter()
            .filter(|_| objects_too)
            .map(|o| {
                let st = o.lock();
                let (mut ram, mut disk) = (0, 0);
                if let Some(m) = &st.meta {
                    for block in 0..m.blocks() {
                        match cache.holds(&BlockKey {
                            object: m.id,
                            block,
                        }) {
                            Some(Tier::Ram) => ram += 1,
                            Some(Tier::Disk) => disk += 1,
                            None => {}
                        }
                    }
                }
                let critical = match o.critical.try_lock() {
                    Ok(c) => match &*c {
                        None => "none".to_string(),
                        Some(Ok(m)) => format!("made ({} bytes)", m.size),
                        Some(Err(e)) => format!("impossible: {e}"),
                    },
                    Err(_) => "being made".to_string(),
                };
                ObjectStatus {
                    name: o.name.clone(),
                    size: st.meta.as_ref().map(|m| m.size),
                    blake3: st.meta.as_ref().map(|m| hex(&m.id.0)),
                    blocks: st.meta.as_ref().map_or(0, |m| m.blocks()),
                    blocks_ram: ram,
                    blocks_disk: disk,
                    filling: st.filling,
                    fills: st.fills,
                    fill_bytes: st.fill_bytes,
                    last_fill_seconds: st.last_fill_seconds,
                    failed: st.failed.as_ref().map(|e| e.to_string()),
                    critical,
                }
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        let stats = cache.stats();
        drop(cache);
        let now = Instant::now();
        let mut clients: Vec<ClientStatus> = self
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, c)| {
                let secs = now.duration_since(c.started).as_secs_f64();
                let bytes = c.bytes.load(Ordering::Relaxed);
                ClientStatus {
                    id: *id,
                    peer: c.peer.to_string(),
                    object: c.object.clone(),
                    rendition: c.rendition,
                    bytes,
                    seconds: secs,
                    rate_bytes_per_sec: if secs > 0.0 { bytes as f64 / secs } else { 0.0 },
                }
            })
            .collect();
        clients.sort_by_key(|c| c.id);
        let c = &self.counters;
        EdgeStatus {
            role: "edge",
            origin: self.cfg.client.origin.to_string(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            objects: list,
            tiers: TiersStatus {
                ram_bytes: stats.ram_bytes,
                ram_capacity: self.cfg.cache.ram_bytes,
                disk_bytes: stats.disk_bytes,
                disk_capacity: self.cfg.cache.disk_bytes,
                ram_hits: stats.ram_hits,
                disk_hits: stats.disk_hits,
                misses: stats.misses,
                ram_evictions: stats.ram_evictions,
                disk_evictions: stats.disk.evictions,
                disk_corrupt: stats.disk.corrupt,
                disk_restored: stats.disk.restored,
                disk_write_failures: stats.disk.write_failures,
            },
            fills: FillsStatus {
                started: c.fills.load(Ordering::Relaxed),
                failed: c.fill_failures.load(Ordering::Relaxed),
                running: objects.iter().filter(|o| o.lock().filling).count() as u64,
                origin_bytes: c.origin_bytes.load(Ordering::Relaxed),
            },
            clients,
            requests: c.requests.load(Ordering::Relaxed),
            sent_bytes_ram: c.sent_bytes_ram.load(Ordering::Relaxed),
            sent_bytes_disk: c.sent_bytes_disk.load(Ordering::Relaxed),
            renditions_made: c.renditions_made.load(Ordering::Relaxed),
        }
    }
}

/// An object's description as the index keeps it (one JSON file per name).
#[derive(Serialize, serde::Deserialize)]
struct IndexEntry {
    name: String,
    size: u64,
    block_size: u64,
    blake3: String,
    block_hashes: Vec<String>,
}

/// The index file of `name`: named by the name's BLAKE3, so any name is a safe file name.
fn index_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{}.json", blake3::hash(name.as_bytes()).to_hex()))
}

/// Records `name`'s description (written whole, then renamed into place). A failure is
/// logged: the object is still served, only not known by name after a restart.
fn save_index(dir: &Path, name: &str, meta: &Meta) {
    let entry = IndexEntry {
        name: name.to_owned(),
        size: meta.size,
        block_size: meta.block_size,
        blake3: hex(&meta.id.0),
        block_hashes: meta.block_hashes.iter().map(|h| hex(h)).collect(),
    };
    let path = index_path(dir, name);
    let tmp = path.with_extension("tmp");
    let written = serde_json::to_vec(&entry)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::warn!(object = name, path = %path.display(), "edge: cannot keep the object's description: {e}");
    }
}

/// The objects the index describes (a file that does not parse is skipped and removed).
fn load_index(dir: &Path) -> HashMap<String, Arc<Object>> {
    let mut objects = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return objects;
    };
    for path in entries.flatten().map(|e| e.path()) {
        let entry = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<IndexEntry>(&b).ok())
            .and_then(|e| {
                let id = blockcast_proto::auth::from_hex::<32>(&e.blake3)?;
                let hashes = e
                    .block_hashes
                    .iter()
                    .map(|h| blockcast_proto::auth::from_hex::<32>(h))
                    .collect::<Option<Vec<_>>>()?;
                let blocks = e.size.div_ceil(e.block_size.max(1));
                let fits = e.block_size > 0
                    && hashes.len() as u64 == blocks
                    && index_path(dir, &e.name) == path;
                fits.then(|| {
                    let n = hashes.len();
                    let meta = Meta {
                        size: e.size,
                        block_size: e.block_size,
                        id: ContentId(id),
                        block_hashes: hashes.into(),
                    };
                    (e.name, meta, n)
                })
            });
        match entry {
            Some((name, meta, n)) => {
                let state = ObjState {
                    meta: Some(meta),
                    copied: vec![false; n],
                    ..ObjState::default()
                };
                objects.insert(
                    name.clone(),
                    Arc::new(Object {
                        name,
                        state: Mutex::new(state),
                        changed: Condvar::new(),
                        critical: Mutex::new(None),
                    }),
                );
            }
            None => {
                tracing::warn!(path = %path.display(), "edge: not an object description, removed");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    objects
}

/// The cache id of an object's critical rendition: derived from the object's, so the two
/// never share blocks.
fn critical_id(full: &ContentId) -> ContentId {
    let mut h = blake3::Hasher::new_derive_key("blockcast edge critical rendition (key frames)");
    h.update(&full.0);
    ContentId(*h.finalize().as_bytes())
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

#[derive(Serialize)]
pub struct EdgeStatus {
    pub role: &'static str,
    pub origin: String,
    pub uptime_seconds: f64,
    pub objects: Vec<ObjectStatus>,
    pub tiers: TiersStatus,
    pub fills: FillsStatus,
    pub clients: Vec<ClientStatus>,
    pub requests: u64,
    pub sent_bytes_ram: u64,
    pub sent_bytes_disk: u64,
    pub renditions_made: u64,
}

#[derive(Serialize)]
pub struct ObjectStatus {
    pub name: String,
    pub size: Option<u64>,
    pub blake3: Option<String>,
    pub blocks: u32,
    pub blocks_ram: u32,
    pub blocks_disk: u32,
    pub filling: bool,
    pub fills: u64,
    pub fill_bytes: u64,
    pub last_fill_seconds: Option<f64>,
    pub failed: Option<String>,
    pub critical: String,
}

#[derive(Serialize)]
pub struct TiersStatus {
    pub ram_bytes: u64,
    pub ram_capacity: u64,
    pub disk_bytes: u64,
    pub disk_capacity: u64,
    pub ram_hits: u64,
    pub disk_hits: u64,
    pub misses: u64,
    pub ram_evictions: u64,
    pub disk_evictions: u64,
    pub disk_corrupt: u64,
    pub disk_restored: u64,
    pub disk_write_failures: u64,
}

#[derive(Serialize)]
pub struct FillsStatus {
    pub started: u64,
    pub failed: u64,
    pub running: u64,
    /// Bytes the fills took from the origin into the cache.
    pub origin_bytes: u64,
}

#[derive(Serialize)]
pub struct ClientStatus {
    pub id: u64,
    pub peer: String,
    pub object: String,
    pub rendition: &'static str,
    pub bytes: u64,
    pub seconds: f64,
    pub rate_bytes_per_sec: f64,
}

/// What the edge did, when it stops.
#[derive(Clone, Debug, Serialize)]
pub struct EdgeSummary {
    pub requests: u64,
    pub fills: u64,
    pub fill_failures: u64,
    pub origin_bytes: u64,
    pub sent_bytes_ram: u64,
    pub sent_bytes_disk: u64,
    pub seconds: f64,
}

/// Where the edge listens, once it does.
#[derive(Clone, Copy, Debug)]
pub struct EdgeReady {
    pub http: SocketAddr,
    pub metrics: Option<SocketAddr>,
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
    ready(&EdgeReady {
        http,
        metrics: metrics.as_ref().map(|((_, a), _)| *a),
    });
    let served = crate::http::edge::serve_edge(listener, edge.clone(), &stop);
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
        sent_bytes_ram: c.sent_bytes_ram.load(Ordering::Relaxed),
        sent_bytes_disk: c.sent_bytes_disk.load(Ordering::Relaxed),
        seconds: edge.started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
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
