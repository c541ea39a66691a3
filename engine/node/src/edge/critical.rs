//! The critical rendition of an object: the origin's (its second object, linked to the full
//! one by name: `.critical/<BLAKE3 of the full object>`), filled like any object; or, when
//! the origin has none, made here from the full object and kept in the tiers.

use super::*;

impl Edge {
    /// The critical rendition of `name`: the origin's, or made now from the full object if
    /// not made yet (clients of an object whose rendition is being made wait for it), with
    /// the full rendition's bitrate when it was measured as the rendition was made.
    pub fn critical_made(self: &Arc<Self>, name: &str) -> Result<MadeCritical, EdgeError> {
        let obj = self.object(name);
        let known = obj.lock().meta.clone();
        let mut made = obj.critical.lock().unwrap_or_else(|e| e.into_inner());
        match (&*made, &known) {
            // The origin's rendition of the content this name holds: its blocks come back by
            // a fill if they leave the tiers.
            (Some(Ok(m)), Some(full))
                if m.source.as_ref() == Some(&crate::catalog::critical_name(&full.id.0)) =>
            {
                return Ok(m.clone())
            }
            // Taken from the origin for a name never filled here: kept as a name keeps what
            // it was filled with.
            (Some(Ok(m)), None) if m.source.is_some() => return Ok(m.clone()),
            (Some(Ok(m)), Some(full))
                if m.source.is_none()
                    && m.meta.block_size == full.block_size
                    && self.holds_all(&m.meta) =>
            {
                return Ok(m.clone())
            }
            (Some(Err(e)), _) => return Err(EdgeError::Rendition(*e)),
            _ => {}
        }
        // The full object's BLAKE3 names the origin's rendition: known here, or asked of the
        // origin (a lookup: no session, so the full object is not sent for it).
        let full_hash = match &known {
            Some(m) => Some(m.id),
            None => self.origin_hash(name)?,
        };
        if let Some(hash) = full_hash {
            if let Some(m) = self.origin_critical(&hash)? {
                *made = Some(Ok(m.clone()));
                return Ok(m);
            }
        }
        let full = self.meta(name)?;
        let result = self.make_critical(name, &full)?;
        *made = Some(result.clone());
        result.map_err(EdgeError::Rendition)
    }

    /// The BLAKE3 of `name` as the origin's catalog has it (a lookup): `None` without an
    /// origin or an answer in time; `NotFound` when the origin has no such name.
    fn origin_hash(&self, name: &str) -> Result<Option<ContentId>, EdgeError> {
        let Some(client) = &self.cfg.client else {
            return Ok(None);
        };
        match client::request(client, &[name.to_owned()], true).map(|mut a| a.pop()) {
            Ok(Some(Answer::Found { hash, .. })) => Ok(Some(ContentId(hash))),
            Ok(Some(Answer::NotFound)) => Err(EdgeError::NotFound),
            Ok(_) => Ok(None),
            Err(e) => {
                tracing::warn!(object = name, "edge: cannot look the object up: {e}");
                Ok(None)
            }
        }
    }

    /// The full rendition's bitrate (bytes per second) for `?rendition=auto`: exact once the
    /// critical rendition is made (the whole object's clock), else estimated from the
    /// object's first blocks the tiers hold (up to [`BITRATE_BLOCKS`]), waiting for block 0
    /// only, so a client that turns out fast enough never waits for the rendition.
    pub fn full_bitrate(self: &Arc<Self>, name: &str) -> Result<Option<f64>, EdgeError> {
        let obj = self.object(name);
        if let Ok(made) = obj.critical.try_lock() {
            if let Some(Ok(MadeCritical {
                full_bytes_per_sec: Some(rate),
                ..
            })) = &*made
            {
                return Ok(Some(*rate));
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

    /// The origin's critical rendition of the full object whose BLAKE3 is `full`, if it publishes
    /// one: its description, learnt by starting its fill (clients then read it block by block
    /// as it arrives, as any object). `None` when there is no origin, the origin has none, or
    /// cannot be asked: then the edge makes the rendition itself.
    fn origin_critical(
        self: &Arc<Self>,
        full: &ContentId,
    ) -> Result<Option<MadeCritical>, EdgeError> {
        if self.cfg.client.is_none() {
            return Ok(None);
        }
        let linked = crate::catalog::critical_name(&full.0);
        match self.meta(&linked) {
            Ok(meta) => {
                self.counters
                    .renditions_from_origin
                    .fetch_add(1, Ordering::Relaxed);
                Ok(Some(MadeCritical {
                    meta,
                    source: Some(linked),
                    full_bytes_per_sec: None,
                }))
            }
            Err(EdgeError::Stopping) => Err(EdgeError::Stopping),
            Err(EdgeError::NotFound) => Ok(None),
            Err(e) => {
                tracing::warn!(
                    object = linked,
                    "edge: the origin's critical rendition: {e}; made here instead"
                );
                Ok(None)
            }
        }
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
            source: None,
            meta: Meta {
                size,
                block_size: full.block_size,
                id,
                block_hashes: hashes.into(),
            },
            full_bytes_per_sec: bitrate.bytes_per_sec(),
        }))
    }

    /// Block `block` of the critical rendition `made` (by [`Edge::critical_made`]): the
    /// origin's from the tiers or its fill, one made here from the tiers.
    pub fn critical_block(
        self: &Arc<Self>,
        made: &MadeCritical,
        block: u32,
    ) -> Result<Served, EdgeError> {
        if let Some(source) = &made.source {
            return self.full_block(source, block);
        }
        let meta = &made.meta;
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
