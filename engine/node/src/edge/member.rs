//! Plain relay membership: the edge sits on a group as an ordinary receiver and takes every
//! object of every session announced there into its tiers, without asking the origin.
//!
//! Each group has a member thread that runs one receive after another into a staging
//! directory of its own (`DIR/staging/group-ADDR-PORT/`, emptied before each session), with a
//! copier beside each receive, as an origin fill has: every object of the session is a fill
//! of its name (clients asking for it wait block by block, and no origin fill starts while it
//! runs), and each block the receiver verifies goes into the cache (RAM, written through to
//! disk) and is counted as a group byte, not an origin byte. A session already taken whole is
//! not taken again: when the server still announces it (it waits for other receivers), the
//! member leaves it and listens again a second later.

use super::fill::CopyTarget;
use super::*;
use crate::receive::ReceiveConfig;

/// What a member has taken from one group, for `/status`.
#[derive(Debug, Default)]
pub struct GroupCounters {
    /// Sessions whose manifest the member learnt.
    pub sessions: AtomicU64,
    /// Sessions every object of which went into the cache whole.
    pub sessions_whole: AtomicU64,
    /// Objects announced in those sessions.
    pub objects: AtomicU64,
    /// Bytes put into the cache from this group.
    pub bytes: AtomicU64,
    /// Sessions heard again after they were taken whole, and left.
    pub repeats_left: AtomicU64,
    /// Receives that ended in an error other than silence.
    pub failures: AtomicU64,
    /// A session is being received now.
    pub receiving: AtomicBool,
}

/// A session the member took whole: its id and its objects' contents.
type TakenSession = (u32, Vec<ContentId>);

/// How long a member waits before listening again after leaving a session it already took
/// (its server is still announcing it to others) or after a receive failed.
const REJOIN_PAUSE: Duration = Duration::from_secs(1);

impl Edge {
    /// The member thread of group `index`: receives every session announced there until the
    /// edge stops.
    pub(super) fn member(self: &Arc<Self>, index: usize) {
        let group = self.cfg.groups[index];
        let counters = &self.groups[index];
        let staging = self
            .cfg
            .staging
            .join(format!("group-{}-{}", group.ip(), group.port()));
        let mut taken: Option<TakenSession> = None;
        while !self.is_stopping() {
            let pause = match self.member_session(group, counters, &staging, &mut taken) {
                Ok(again) => again,
                Err(e) => {
                    counters.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%group, "edge: group session: {e}");
                    true
                }
            };
            let _ = std::fs::remove_dir_all(&staging);
            if pause {
                let until = Instant::now() + REJOIN_PAUSE;
                while !self.is_stopping() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// One receive on `group`. Returns whether to pause before the next (the session was
    /// one already taken); silence (no server heard within the timeout) is no error.
    fn member_session(
        self: &Arc<Self>,
        group: SocketAddrV4,
        counters: &GroupCounters,
        staging: &Path,
        taken: &mut Option<TakenSession>,
    ) -> Result<bool, NodeError> {
        let _ = std::fs::remove_dir_all(staging);
        std::fs::create_dir_all(staging).map_err(|source| NodeError::Output {
            path: staging.to_path_buf(),
            source,
        })?;
        let rcfg = ReceiveConfig {
            group,
            iface: self.cfg.iface,
            out: staging.to_path_buf(),
            timeout: self.cfg.receive_timeout,
            rcvbuf: self.cfg.rcvbuf,
            id: u64::from_le_bytes(crate::keys::random_bytes()?),
            play: None,
            start_at: None,
            http: None,
            fallback: Vec::new(),
            failover_after: Duration::from_secs(3),
            split: None,
            threads: 1,
            trust: self.cfg.trust.clone(),
            expect: None,
            secret: None,
            preallocate: true,
            verify_existing: false,
            // The staging directory is the member's own, emptied above.
            overwrite: true,
            // The block copier reads each block as soon as it is verified: through the page
            // cache from memory, not from the disk.
            block_buffers: 0,
            datapath: crate::Datapath::Socket,
        };
        let taken_now = &*taken;
        // The copier ends with the receive (published ends it).
        let (received, copied) = self.receive_beside(&rcfg, |p, stop| {
            self.copy_session(group, counters, p, stop, taken_now)
        });
        let copied = copied.unwrap_or(Copied::Nothing);
        counters.receiving.store(false, Ordering::Relaxed);
        match (received, copied) {
            (_, Copied::AlreadyTaken) => Ok(true),
            (Err(NodeError::NoServer { .. }), _) => Ok(false),
            (Err(NodeError::Interrupted), _) if self.is_stopping() => Ok(false),
            (Ok(_), Copied::Whole(t)) => {
                counters.sessions_whole.fetch_add(1, Ordering::Relaxed);
                *taken = Some(t);
                Ok(false)
            }
            (Err(e), _) => Err(e),
            (Ok(_), _) => Err(NodeError::Internal(
                "the session ended before its objects were copied".into(),
            )),
        }
    }

    /// The member's copier: once the session's manifest is known, every object of it becomes
    /// a fill of its name, and its verified blocks go into the cache.
    fn copy_session(
        self: &Arc<Self>,
        group: SocketAddrV4,
        counters: &GroupCounters,
        published: &Published,
        session_stop: &AtomicBool,
        taken: &Option<TakenSession>,
    ) -> Copied {
        // Ends early when the receive ends (silence, a stop).
        let Some(manifest) = published.wait_manifest(Instant::now() + Duration::from_secs(3600))
        else {
            return Copied::Nothing;
        };
        let session = published.session().map_or(0, |(s, _)| s);
        let contents: Vec<ContentId> = manifest.objects.iter().map(|o| ContentId(o.hash)).collect();
        if taken
            .as_ref()
            .is_some_and(|(s, c)| *s == session && *c == contents)
        {
            session_stop.store(true, Ordering::Relaxed);
            counters.repeats_left.fetch_add(1, Ordering::Relaxed);
            return Copied::AlreadyTaken;
        }
        counters.sessions.fetch_add(1, Ordering::Relaxed);
        counters
            .objects
            .fetch_add(manifest.objects.len() as u64, Ordering::Relaxed);
        counters.receiving.store(true, Ordering::Relaxed);
        let paths = published.paths().unwrap_or_default();
        let mut targets = Vec::new();
        for (i, entry) in manifest.objects.iter().enumerate() {
            let Some(path) = paths.get(i) else { continue };
            let obj = self.object(&entry.name);
            if !self.claim(&obj) {
                // An origin fill of this name runs: it will have the object whole.
                continue;
            }
            let meta = Meta::of(&manifest, entry);
            self.learn_meta(&obj, &meta);
            (self.events)(NodeEvent::TransferStarted {
                object: entry.name.clone(),
                session,
                group: group.to_string(),
            });
            targets.push(CopyTarget::new(obj, meta, i as u32, path.clone()));
        }
        self.copy_verified(&mut targets, published, &counters.bytes);
        let mut whole = true;
        for t in &targets {
            let r = t.result();
            whole &= r.is_ok();
            self.end_fill(&t.obj, r);
        }
        if whole {
            Copied::Whole((session, contents))
        } else {
            Copied::Partly
        }
    }

    /// Makes a group session's copy the fill of `obj`, unless a fill of it runs already.
    fn claim(&self, obj: &Object) -> bool {
        let mut st = obj.lock();
        if st.filling {
            return false;
        }
        st.filling = true;
        st.fills += 1;
        st.failed = None;
        st.fill_bytes = 0;
        st.fill_started = Some(Instant::now());
        st.copied.iter_mut().for_each(|c| *c = false);
        true
    }
}

/// What a member's copier did with a session.
enum Copied {
    /// No manifest (the receive ended first).
    Nothing,
    /// The session was taken whole before: left.
    AlreadyTaken,
    /// Every object whole in the cache.
    Whole(TakenSession),
    /// Not every object.
    Partly,
}
