//! A fill: the origin asked for an object, its session received by the ordinary receiver,
//! each verified block copied into the cache.

use super::index::save_index;
use super::*;

impl Edge {
    /// Starts a fill of `obj` (its lock held: `st`).
    pub(super) fn start_fill(self: &Arc<Self>, obj: &Arc<Object>, st: &mut ObjState) {
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

    /// The fill thread: ask the origin, receive, copy verified blocks into the cache.
    fn fill(self: &Arc<Self>, obj: &Arc<Object>) {
        let result = self.run_fill(obj);
        self.end_fill(obj, result);
    }

    /// A fill of `obj` (from the origin or a group) ended: clients waiting for it see how.
    pub(super) fn end_fill(&self, obj: &Object, result: Result<(), EdgeError>) {
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
        let Some(client) = &self.cfg.client else {
            // No origin: what the groups have not announced is unknown.
            return Err(EdgeError::NotFound);
        };
        let answer = client::request(client, std::slice::from_ref(&obj.name), false)
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
            client: client.clone(),
            out: self.cfg.staging.clone(),
            receive_timeout: self.cfg.receive_timeout,
            rcvbuf: self.cfg.rcvbuf,
            threads: 1,
            retries: 0,
        };
        let mut rcfg = crate::fetch::receive_config(&fetch_cfg, group, staging.clone(), grant.hash)
            .map_err(|e| EdgeError::Origin(e.to_string()))?;
        // The block copier reads each block as soon as it is verified: through the page cache
        // from memory, not from the disk.
        rcfg.block_buffers = 0;
        let (r, copied) = self.receive_beside(&rcfg, |p, stop| self.copy_blocks(obj, p, stop));
        let copied =
            copied.unwrap_or_else(|| Err(EdgeError::Origin("the fill's copier panicked".into())));
        let _ = std::fs::remove_dir_all(&staging);
        match (r, copied) {
            (_, Err(e)) => Err(e),
            (Err(e), Ok(())) => Err(EdgeError::Origin(e.to_string())),
            (Ok(_), Ok(())) => Ok(()),
        }
    }

    /// Receives the session `rcfg` names (stopped when the edge stops) with a copier beside
    /// it on its own thread, which takes the blocks the receive publishes until the receive
    /// ends or the stop is set. The receive's result, and the copier's (`None`: it panicked).
    pub(super) fn receive_beside<T: Send>(
        &self,
        rcfg: &crate::receive::ReceiveConfig,
        copier: impl FnOnce(&Published, &AtomicBool) -> T + Send,
    ) -> (Result<crate::receive::ReceiveSummary, NodeError>, Option<T>) {
        let published = Arc::new(Published::default());
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let copier = {
                let (p, stop) = (published.clone(), &stop);
                s.spawn(move || copier(&p, stop))
            };
            let r = crate::receive::receive_shared(
                rcfg,
                &stop,
                &mut |_| {
                    if self.is_stopping() {
                        stop.store(true, Ordering::Relaxed);
                    }
                },
                published.clone(),
            );
            (r, copier.join().ok())
        })
    }

    /// The origin fill's copier: checks that the session carries `obj` alone, then puts each
    /// block the receiver verifies into the cache, until all are in or the receive ends.
    fn copy_blocks(
        &self,
        obj: &Arc<Object>,
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
        let meta = Meta::of(&manifest, entry);
        self.learn_meta(obj, &meta);
        let path = published
            .paths()
            .and_then(|p| p.first().cloned())
            .ok_or_else(|| EdgeError::Origin("no output file".into()))?;
        let mut targets = [CopyTarget::new(obj.clone(), meta, 0, path)];
        self.copy_verified(&mut targets, published, &self.counters.origin_bytes);
        targets[0].result()
    }

    /// Records what a fill learnt of `obj` (its lock not held): a description that is new
    /// (or whose content changed) resets which blocks were copied and goes to the index.
    pub(super) fn learn_meta(&self, obj: &Object, meta: &Meta) {
        let mut st = obj.lock();
        if st.meta.as_ref().is_none_or(|m| m.id != meta.id) {
            st.copied = vec![false; meta.blocks() as usize];
            st.meta = Some(meta.clone());
            drop(st);
            save_index(&self.cfg.index, &obj.name, meta);
        } else {
            drop(st);
        }
        obj.changed.notify_all();
    }

    /// Puts each block of `targets` the receiver verifies into the cache (RAM, written
    /// through to disk), marks it copied and wakes the object's clients, until every block
    /// is in or the receive ends. The bytes are counted in `counted`. A target whose file
    /// cannot be read stops being copied (its `error` says why); the others go on.
    pub(super) fn copy_verified(
        &self,
        targets: &mut [CopyTarget],
        published: &Published,
        counted: &AtomicU64,
    ) {
        loop {
            let seen = published.generation();
            let ended = published.is_ended();
            for t in targets.iter_mut().filter(|t| t.error.is_none()) {
                if let Err(e) = self.copy_target(t, published, counted) {
                    t.error = Some(e);
                }
            }
            if targets.iter().all(|t| t.left == 0 || t.error.is_some()) || ended {
                return;
            }
            published.wait_changed(seen, Instant::now() + Duration::from_secs(1));
        }
    }

    /// Copies the blocks of `t` verified since the last call.
    fn copy_target(
        &self,
        t: &mut CopyTarget,
        published: &Published,
        counted: &AtomicU64,
    ) -> Result<(), EdgeError> {
        let meta = &t.meta;
        for b in 0..t.done.len() {
            if t.done[b] || !published.is_verified(t.index, b as u32) {
                continue;
            }
            let read_error =
                |e: std::io::Error| EdgeError::Origin(format!("{}: {e}", t.path.display()));
            let file = match &t.file {
                Some(f) => f,
                None => t
                    .file
                    .insert(std::fs::File::open(&t.path).map_err(read_error)?),
            };
            let start = b as u64 * meta.block_size;
            let len = meta.block_size.min(meta.size - start) as usize;
            let mut bytes = vec![0u8; len];
            file.read_exact_at(&mut bytes, start).map_err(read_error)?;
            let key = BlockKey {
                object: meta.id,
                block: b as u32,
            };
            self.cache().insert(key, bytes.into());
            counted.fetch_add(len as u64, Ordering::Relaxed);
            t.done[b] = true;
            t.left -= 1;
            let mut st = t.obj.lock();
            if let Some(c) = st.copied.get_mut(b) {
                *c = true;
            }
            st.fill_bytes += len as u64;
            drop(st);
            t.obj.changed.notify_all();
        }
        Ok(())
    }
}

/// One object of a session whose verified blocks go into the cache.
pub(super) struct CopyTarget {
    pub obj: Arc<Object>,
    pub meta: Meta,
    /// Its index in the session's manifest.
    pub index: u32,
    /// The receiver's file of it.
    pub path: PathBuf,
    file: Option<std::fs::File>,
    done: Vec<bool>,
    left: usize,
    error: Option<EdgeError>,
}

impl CopyTarget {
    pub fn new(obj: Arc<Object>, meta: Meta, index: u32, path: PathBuf) -> Self {
        let n = meta.blocks() as usize;
        CopyTarget {
            obj,
            meta,
            index,
            path,
            file: None,
            done: vec![false; n],
            left: n,
            error: None,
        }
    }

    /// How the copy of this object ended: whole, or why not.
    pub fn result(&self) -> Result<(), EdgeError> {
        match &self.error {
            Some(e) => Err(e.clone()),
            None if self.left > 0 => Err(EdgeError::Origin(format!(
                "the session ended with {} of {} blocks missing",
                self.left,
                self.done.len()
            ))),
            None => Ok(()),
        }
    }
}
