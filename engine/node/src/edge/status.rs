//! `/status`: the objects, tiers, fills and clients, as JSON.

use super::*;

impl Edge {
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
                        Some(Ok(m)) => match &m.source {
                            Some(s) => format!("from the origin as {s} ({} bytes)", m.meta.size),
                            None => format!("made ({} bytes)", m.meta.size),
                        },
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
                let switched_at = c.switched_at.load(Ordering::Relaxed);
                ClientStatus {
                    id: *id,
                    peer: c.peer.to_string(),
                    object: c.object.clone(),
                    rendition: if switched_at == u64::MAX {
                        c.rendition
                    } else {
                        "full, then critical"
                    },
                    auto: c.auto,
                    switched_at_byte: (switched_at != u64::MAX).then_some(switched_at),
                    bytes,
                    seconds: secs,
                    rate_bytes_per_sec: if secs > 0.0 { bytes as f64 / secs } else { 0.0 },
                }
            })
            .collect();
        clients.sort_by_key(|c| c.id);
        let measured = self
            .rates
            .measured()
            .into_iter()
            .map(|(ip, rate, age)| MeasuredClient {
                addr: ip.to_string(),
                delivery_bytes_per_sec: rate,
                seconds_ago: age,
            })
            .collect();
        let groups: Vec<GroupStatus> = self
            .cfg
            .groups
            .iter()
            .zip(&self.groups)
            .map(|(g, c)| GroupStatus {
                group: g.to_string(),
                receiving: c.receiving.load(Ordering::Relaxed),
                sessions: c.sessions.load(Ordering::Relaxed),
                sessions_whole: c.sessions_whole.load(Ordering::Relaxed),
                objects: c.objects.load(Ordering::Relaxed),
                bytes: c.bytes.load(Ordering::Relaxed),
                repeats_left: c.repeats_left.load(Ordering::Relaxed),
                failures: c.failures.load(Ordering::Relaxed),
            })
            .collect();
        let c = &self.counters;
        EdgeStatus {
            role: "edge",
            origin: self.cfg.client.as_ref().map(|c| c.origin.to_string()),
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
                group_bytes: groups.iter().map(|g| g.bytes).sum(),
            },
            groups,
            clients,
            measured,
            requests: c.requests.load(Ordering::Relaxed),
            sent_bytes_ram: c.sent_bytes_ram.load(Ordering::Relaxed),
            sent_bytes_disk: c.sent_bytes_disk.load(Ordering::Relaxed),
            renditions_made: c.renditions_made.load(Ordering::Relaxed),
            renditions_from_origin: c.renditions_from_origin.load(Ordering::Relaxed),
            rendition_switches: c.rendition_switches.load(Ordering::Relaxed),
        }
    }
}

#[derive(Serialize)]
pub struct EdgeStatus {
    pub role: &'static str,
    /// The origin's address (none: the edge serves what its groups announce).
    pub origin: Option<String>,
    pub uptime_seconds: f64,
    pub objects: Vec<ObjectStatus>,
    pub tiers: TiersStatus,
    pub fills: FillsStatus,
    /// The groups the edge sits on as a member.
    pub groups: Vec<GroupStatus>,
    pub clients: Vec<ClientStatus>,
    /// Each client address's latest measured delivery rate (what `?rendition=auto` compares).
    pub measured: Vec<MeasuredClient>,
    pub requests: u64,
    pub sent_bytes_ram: u64,
    pub sent_bytes_disk: u64,
    pub renditions_made: u64,
    /// Critical renditions taken from the origin (its second object) instead of made here.
    pub renditions_from_origin: u64,
    /// `auto` responses switched to the critical rendition at a key frame mid-response.
    pub rendition_switches: u64,
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
    /// Bytes the groups' sessions put into the cache.
    pub group_bytes: u64,
}

/// What the edge's member of one group took.
#[derive(Serialize)]
pub struct GroupStatus {
    pub group: String,
    /// A session's objects are being copied now.
    pub receiving: bool,
    /// Sessions whose manifest was learnt.
    pub sessions: u64,
    /// Sessions taken whole (every object in the cache).
    pub sessions_whole: u64,
    /// Objects those sessions announced.
    pub objects: u64,
    /// Bytes put into the cache from this group.
    pub bytes: u64,
    /// Sessions heard again after they were taken whole, and left.
    pub repeats_left: u64,
    /// Receives that failed (silence is no failure).
    pub failures: u64,
}

#[derive(Serialize)]
pub struct ClientStatus {
    pub id: u64,
    pub peer: String,
    pub object: String,
    pub rendition: &'static str,
    /// Present when `?rendition=auto` chose the rendition: what it compared.
    pub auto: Option<AutoChoice>,
    /// An `auto` response that switched to the critical rendition at a key frame: the body
    /// bytes sent before the switch.
    pub switched_at_byte: Option<u64>,
    pub bytes: u64,
    pub seconds: f64,
    pub rate_bytes_per_sec: f64,
}

#[derive(Serialize)]
pub struct MeasuredClient {
    pub addr: String,
    pub delivery_bytes_per_sec: f64,
    pub seconds_ago: f64,
}

/// What the edge did, when it stops.
#[derive(Clone, Debug, Serialize)]
pub struct EdgeSummary {
    pub requests: u64,
    pub fills: u64,
    pub fill_failures: u64,
    pub origin_bytes: u64,
    /// Bytes the groups' sessions put into the cache.
    pub group_bytes: u64,
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
