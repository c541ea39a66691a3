//! The critical rendition of an object, made from the full object and kept in the tiers.

use super::*;

impl Edge {
    /// The critical rendition of `name`: made now from the full object if not made yet.
    /// Clients of an object whose rendition is being made wait for it.
    pub fn critical(self: &Arc<Self>, name: &str) -> Result<Meta, EdgeError> {
        self.critical_made(name).map(|m| m.meta)
    }

    /// The critical rendition of `name` with the full rendition's bitrate (measured as the
    /// rendition was made).
    pub fn critical_made(self: &Arc<Self>, name: &str) -> Result<MadeCritical, EdgeError> {
        let full = self.meta(name)?;
        let obj = self.object(name);
        let mut made = obj.critical.lock().unwrap_or_else(|e| e.into_inner());
        match &*made {
            Some(Ok(m)) if m.meta.block_size == full.block_size && self.holds_all(&m.meta) => {
                return Ok(m.clone())
            }
            Some(Err(e)) => return Err(EdgeError::Rendition(*e)),
            _ => {}
        }
        let result = self.make_critical(name, &full)?;
        *made = Some(result.clone());
        result.map_err(EdgeError::Rendition)
    }

    /// The full rendition's bitrate (bytes per second) for `?rendition=auto`: exact once the
    /// critical rendition is made (the whole object's clock), else estimated from the
    /// object's first blocks the tiers hold (up to [`BITRATE_BLOCKS`]), waiting for block 0
    /// only, so a client that turns out fast enough never waits for the rendition.
    pub fn full_bitrate(self: &Arc<Self>, name: &str) -> Result<Option<f64>, EdgeError> {
        let obj = self.object(name);
        if let Ok(made) = obj.critical.try_lock() {
            if let Some(Ok(m)) = &*made {
                return Ok(m.full_bytes_per_sec);
            }
        }
        let meta = self.meta(name)?;
        let mut rate = super::auto::TsBitrate::default();
        rate.push(&self.full_block(name, 0)?.bytes);
        for block in 1..meta.blocks().min(BITRATE_BLOCKS) {
            let key = BlockKey {
                object: meta.id,
                block,
            };
            match self.lookup(&key, &meta.block_hashes[block as usize]) {
                Some(s) => rate.push(&s.bytes),
                None => break,
            }
        }
        Ok(rate.bytes_per_sec())
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
        let mut bitrate = super::auto::TsBitrate::default();
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
            bitrate.push(&served.bytes);
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
        Ok(Ok(MadeCritical {
            meta: Meta {
                size,
                block_size: full.block_size,
                id,
                block_hashes: hashes.into(),
            },
            full_bytes_per_sec: bitrate.bytes_per_sec(),
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
}

/// Blocks at an object's start that estimate its bitrate before its critical rendition is made.
const BITRATE_BLOCKS: u32 = 4;

/// The cache id of an object's critical rendition: derived from the object's, so the two
/// never share blocks.
pub(super) fn critical_id(full: &ContentId) -> ContentId {
    let mut h = blake3::Hasher::new_derive_key("blockcast edge critical rendition (key frames)");
    h.update(&full.0);
    ContentId(*h.finalize().as_bytes())
}
