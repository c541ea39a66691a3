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
}
