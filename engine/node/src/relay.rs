//! The relay node: a receiver upstream and a server downstream, in one process.
//!
//! The relay joins the upstream group like any receiver (its own status is all that goes
//! upstream), stores the content in its cache files and verifies every block. Each downstream
//! group gets its own server session over the same cache: the same manifest and session id,
//! the relay's own control address, so downstream NACKs and receipt notices stop here. The
//! data threads send a block as soon as it is verified upstream (cut-through by block, not
//! store-and-forward of the object), and repairs are made from the cache.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blockcast_proto::wire::DoneReason;
use blockcast_proto::Geometry;

use crate::content::Content;
use crate::published::Published;
use crate::receive::receive_shared;
use crate::serve::serve_content;
use crate::{
    NodeError, ReceiveConfig, ReceiveProgress, ReceiveSummary, ServeConfig, ServeProgress,
    ServeSummary,
};

/// One downstream group.
#[derive(Clone, Copy, Debug)]
pub struct Downstream {
    pub group: SocketAddrV4,
    /// The interface's address: data leaves through it, the control address is bound on it.
    pub iface: Ipv4Addr,
    /// Control port (0: any free port; it is announced).
    pub control_port: u16,
}

/// How to relay.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// The upstream side: group, interface, cache path (`out`), timeout, fail-over sources.
    pub upstream: ReceiveConfig,
    pub downstream: Vec<Downstream>,
    pub ttl: u32,
    /// Downstream send rate (per group), or `None` to adapt to the downstream receivers.
    pub rate: Option<u64>,
    pub min_receivers: usize,
    pub max_wait: Duration,
    pub deadline: Option<Duration>,
    /// Data threads per downstream group.
    pub threads: usize,
    /// Downstream repairs: see [`ServeConfig::originals_factor`].
    pub originals_factor: u32,
    /// Downstream repairs: see [`ServeConfig::xor_repairs`].
    pub xor_repairs: bool,
    /// Sign the downstream Announces and Dones with this key (the origin's session statement
    /// is passed on unchanged either way; docs/wire.md §15.4).
    pub signer: Option<blockcast_proto::auth::Signer>,
    /// The downstream groups' secret (closed groups, docs/wire.md §16); the upstream side's
    /// is `upstream.secret`. The same secret on both sides is the usual choice; a relay
    /// that opens a closed upstream and serves it without a secret downstream publishes it.
    pub secret: Option<blockcast_seal::Secret>,
}

/// Progress of both sides, reported a few times per second.
#[derive(Clone, Debug, Default)]
pub struct RelayProgress {
    pub upstream: ReceiveProgress,
    pub downstream: Vec<Option<ServeProgress>>,
}

/// What a relay run did.
#[derive(Debug)]
pub struct RelaySummary {
    pub upstream: ReceiveSummary,
    /// One per downstream group, in order.
    pub downstream: Vec<ServeSummary>,
}

/// Relays one session until the upstream copy is whole and every downstream session is over
/// (its receivers complete, its deadline, or `stop`).
pub fn relay(
    cfg: &RelayConfig,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&RelayProgress),
) -> Result<RelaySummary, NodeError> {
    if cfg.downstream.is_empty() {
        return Err(NodeError::Config("a relay needs a downstream group".into()));
    }
    let published = Arc::new(Published::default());
    let state = Mutex::new(RelayProgress {
        downstream: vec![None; cfg.downstream.len()],
        ..RelayProgress::default()
    });
    // Downstream sessions stop on Ctrl-C, or when the upstream copy failed (it cannot be
    // completed from here; downstream receivers fail over to another source).
    let down_stop = AtomicBool::new(false);
    let up_done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let up = std::thread::Builder::new()
            .name("bc-relay-up".into())
            .spawn_scoped(scope, || {
                let r = receive_shared(
                    &cfg.upstream,
                    stop,
                    &mut |p| lock(&state).upstream = p.clone(),
                    published.clone(),
                );
                if r.is_err() {
                    down_stop.store(true, Ordering::Relaxed);
                }
                up_done.store(true, Ordering::Release);
                r
            })
            .map_err(|e| NodeError::spawn("the upstream thread", e))?;
        // The downstream sessions start once the manifest is known (the cache files exist).
        let mut manifest = None;
        while manifest.is_none() && !up_done.load(Ordering::Acquire) {
            manifest = published.wait_manifest(Instant::now() + Duration::from_millis(100));
            progress(&lock(&state));
        }
        let mut downs = Vec::new();
        // Why a downstream session could not start (the relay then fails with it).
        let mut start_error: Option<NodeError> = None;
        if let (Some(manifest), Some(paths), Some((session, _))) =
            (manifest, published.paths(), published.session())
        {
            let content = Content::cached(paths, &manifest, published.clone());
            match content {
                Ok(content) => {
                    for (i, d) in cfg.downstream.iter().enumerate() {
                        let scfg = ServeConfig {
                            inputs: Vec::new(),
                            group: d.group,
                            iface: d.iface,
                            control_port: d.control_port,
                            ttl: cfg.ttl,
                            rate: cfg.rate,
                            geometry: Geometry {
                                unit_size: manifest.unit_size,
                                units_per_block: manifest.units_per_block,
                                max_parity: manifest.units_per_block.min(128),
                            },
                            min_receivers: cfg.min_receivers,
                            max_wait: cfg.max_wait,
                            deadline: cfg.deadline,
                            // Downstream receivers can fail over between relays and the
                            // server: the session id and manifest stay the same everywhere.
                            session,
                            threads: cfg.threads.max(1),
                            split: false,
                            receiver_timeout: Duration::from_secs(10),
                            originals_factor: cfg.originals_factor,
                            xor_repairs: cfg.xor_repairs,
                            hash_cache: None,
                            signer: cfg.signer.clone(),
                            // The origin's statement, unchanged: trust reaches across tiers.
                            statement: Some(published.statement().unwrap_or((0, None))),
                            core_offset: 0,
                            gate: None,
                            secret: cfg.secret.clone(),
                            datapath: crate::Datapath::Socket,
                        };
                        let (content, manifest) = (content.share(), (*manifest).clone());
                        let (state, down_stop) = (&state, &down_stop);
                        let h = std::thread::Builder::new()
                            .name(format!("bc-relay-down-{i}"))
                            .spawn_scoped(scope, move || {
                                serve_content(&scfg, manifest, content, down_stop, &mut |p| {
                                    lock(state).downstream[i] = Some(p.clone())
                                })
                            });
                        match h {
                            Ok(h) => downs.push(h),
                            Err(e) => {
                                down_stop.store(true, Ordering::Relaxed);
                                start_error = Some(NodeError::spawn("a downstream thread", e));
                            }
                        }
                    }
                }
                Err(e) => {
                    down_stop.store(true, Ordering::Relaxed);
                    start_error = Some(e);
                }
            }
        }
        while !(up_done.load(Ordering::Acquire) && downs.iter().all(|h| h.is_finished())) {
            if stop.load(Ordering::Relaxed) {
                down_stop.store(true, Ordering::Relaxed);
            }
            progress(&lock(&state));
            std::thread::sleep(Duration::from_millis(100));
        }
        progress(&lock(&state));
        let upstream = up
            .join()
            .unwrap_or(Err(NodeError::panicked("the upstream thread")))?;
        let mut downstream = Vec::new();
        for h in downs {
            let s = h
                .join()
                .unwrap_or(Err(NodeError::panicked("a downstream thread")))?;
            downstream.push(s);
        }
        if let Some(e) = start_error {
            return Err(e);
        }
        if downstream.len() != cfg.downstream.len() {
            return Err(NodeError::Internal(
                "the upstream copy finished without a manifest for the downstream sessions".into(),
            ));
        }
        if stop.load(Ordering::Relaxed)
            && downstream.iter().any(|s| s.reason == DoneReason::Aborted)
        {
            return Err(NodeError::Interrupted);
        }
        Ok(RelaySummary {
            upstream,
            downstream,
        })
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
